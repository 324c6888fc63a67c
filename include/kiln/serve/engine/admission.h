// The server's admission budget: how many requests, and how many request bytes, may be in
// flight at once over every frontend (HTTP and gRPC together). A frontend asks as soon as it
// knows a request's size (HTTP: the header's Content-Length; gRPC: the received message) and
// holds the ticket until the answer is written, so everything the process keeps for a request
// -- its body, its queue entries before and inside the engine, its formatted answer -- is
// bounded by the budget. Over budget, the request is refused at once (HTTP 503 with
// Retry-After, gRPC RESOURCE_EXHAUSTED), before its body is read or any work is queued.
//
//   Admission admission({.max_requests = 1024, .max_bytes = 256 << 20}, &registry);
//   KILN_ASSIGN_OR_RETURN(Admission::Ticket t, admission.Admit(content_length, "http"));
//   ...                                  // answer the request; ~Ticket gives the budget back
//
// Thread-safe; Admit never blocks. Tickets must not outlive the Admission.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "kiln/core/status.h"
#include "kiln/serve/metrics/metrics.h"

namespace kiln::serve {

struct AdmissionLimits {
  int64_t max_requests = 1024;      // requests in flight, every protocol together
  int64_t max_bytes = 256ll << 20;  // their bodies (HTTP) / messages (gRPC), in bytes

  Status Validate() const;
};

class Admission {
 public:
  // `registry` (optional) gets kiln_inflight_requests, kiln_inflight_bytes and
  // kiln_admission_rejected_total{protocol}; it must outlive the Admission.
  explicit Admission(const AdmissionLimits& limits, metrics::Registry* registry = nullptr);
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  // Holds one request's share of the budget; gives it back when destroyed. Movable.
  class Ticket {
   public:
    Ticket() = default;
    Ticket(Ticket&& o) noexcept : owner_(o.owner_), bytes_(o.bytes_) { o.owner_ = nullptr; }
    Ticket& operator=(Ticket&& o) noexcept;
    ~Ticket() { Release(); }
    void Release();
    bool held() const { return owner_ != nullptr; }

   private:
    friend class Admission;
    Ticket(Admission* owner, int64_t bytes) : owner_(owner), bytes_(bytes) {}
    Admission* owner_ = nullptr;
    int64_t bytes_ = 0;
  };

  // A ticket for a request of `bytes` bytes, or Unavailable ("over the admission budget ...")
  // when the budget is spent right now (retry later), or ResourceExhausted when the request
  // alone is larger than the whole byte budget (it can never be admitted). `protocol` labels
  // the rejection counter ("http", "grpc").
  Result<Ticket> Admit(int64_t bytes, const std::string& protocol);

  int64_t requests() const { return requests_.load(); }
  int64_t bytes() const { return bytes_.load(); }
  const AdmissionLimits& limits() const { return limits_; }

 private:
  void Give(int64_t bytes);
  void Publish();

  const AdmissionLimits limits_;
  metrics::Registry* registry_;
  metrics::Series* requests_gauge_ = nullptr;
  metrics::Series* bytes_gauge_ = nullptr;
  std::atomic<int64_t> requests_{0}, bytes_{0};
};

}  // namespace kiln::serve
