#include "kiln/serve/engine/admission.h"

#include <algorithm>

namespace kiln::serve {

Status AdmissionLimits::Validate() const {
  if (max_requests < 1) return InvalidArgumentError("--max-inflight-requests must be positive");
  if (max_bytes < 1) return InvalidArgumentError("--max-inflight-bytes must be positive");
  return Status::Ok();
}

Admission::Admission(const AdmissionLimits& limits, metrics::Registry* registry)
    : limits_(limits), registry_(registry) {
  if (registry_ == nullptr) return;
  requests_gauge_ = registry_->Gauge("kiln_inflight_requests",
                                     "Requests admitted and not yet answered (every protocol)", {});
  bytes_gauge_ = registry_->Gauge("kiln_inflight_bytes",
                                  "Bytes of the requests admitted and not yet answered", {});
  registry_->Gauge("kiln_admission_max_requests", "Admission budget: requests in flight", {})
      ->Set(static_cast<double>(limits_.max_requests));
  registry_->Gauge("kiln_admission_max_bytes", "Admission budget: request bytes in flight", {})
      ->Set(static_cast<double>(limits_.max_bytes));
  for (const char* p : {"http", "grpc"}) {
    registry_->Counter("kiln_admission_rejected_total",
                       "Requests refused at the door because the admission budget was spent",
                       {{"protocol", p}});
  }
}

Admission::Ticket& Admission::Ticket::operator=(Ticket&& o) noexcept {
  if (this != &o) {
    Release();
    owner_ = o.owner_;
    bytes_ = o.bytes_;
    o.owner_ = nullptr;
  }
  return *this;
}

void Admission::Ticket::Release() {
  if (owner_ == nullptr) return;
  owner_->Give(bytes_);
  owner_ = nullptr;
}

Result<Admission::Ticket> Admission::Admit(int64_t bytes, const std::string& protocol) {
  bytes = std::max<int64_t>(bytes, 0);
  auto reject = [&](Status s) -> Result<Ticket> {
    if (registry_ != nullptr) {
      registry_
          ->Counter("kiln_admission_rejected_total",
                    "Requests refused at the door because the admission budget was spent",
                    {{"protocol", protocol}})
          ->Add(1);
    }
    return s;
  };
  if (bytes > limits_.max_bytes) {
    return reject(ResourceExhaustedError(
        "request of " + std::to_string(bytes) + " bytes is larger than the whole admission "
        "budget of " + std::to_string(limits_.max_bytes) + " bytes (--max-inflight-bytes)"));
  }
  // Take first, then check: two racing requests cannot both slip under the limit.
  const int64_t n = requests_.fetch_add(1) + 1;
  const int64_t b = bytes_.fetch_add(bytes) + bytes;
  if (n > limits_.max_requests || b > limits_.max_bytes) {
    requests_.fetch_sub(1);
    bytes_.fetch_sub(bytes);
    return reject(UnavailableError(
        "the server is over its admission budget (" + std::to_string(limits_.max_requests) +
        " requests / " + std::to_string(limits_.max_bytes) +
        " bytes in flight, --max-inflight-requests / --max-inflight-bytes): retry later"));
  }
  Publish();
  return Ticket(this, bytes);
}

void Admission::Give(int64_t bytes) {
  requests_.fetch_sub(1);
  bytes_.fetch_sub(bytes);
  Publish();
}

void Admission::Publish() {
  if (requests_gauge_ == nullptr) return;
  requests_gauge_->Set(static_cast<double>(requests_.load()));
  bytes_gauge_->Set(static_cast<double>(bytes_.load()));
}

}  // namespace kiln::serve
