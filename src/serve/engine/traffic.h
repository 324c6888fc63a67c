// Traffic between the versions of one model (docs/rollout.md): a weighted split of the requests
// that name no version (sticky on a routing key, random otherwise), a shadow version that gets a
// copy of a share of them and whose answers are only compared, and an optional automatic
// promotion or rollback of a canary version. Internal to kiln_serve_engine; the engine asks
// Pick/Shadow per request and reports each outcome back.
//
// The policy is JSON, in config.pbtxt under the parameter key "kiln.routing" (Triton ignores
// Kiln's parameters, so the file still loads there) or POSTed to
// /v2/repository/models/{m}/routing:
//   {"weights": {"1": 90, "2": 10},                 // versions -> relative weights
//    "shadow": {"version": 2, "share": 0.25},        // copy 25% of the requests to version 2
//    "rollout": {"canary": 2, "min_requests": 200,   // decide after 200 canary requests
//                "max_error_ratio_increase": 0.01,   // canary errors <= stable's + 1 point
//                "max_p99_ratio": 1.5,               // canary p99 <= 1.5 x stable's
//                "min_agreement": 0.99}}             // shadow top-1 agreement (when compared)
//
// Thread-safe; one mutex per model, held for a few arithmetic operations per request.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/serve/metrics/metrics.h"

namespace kiln::serve {

inline constexpr const char* kRoutingParameter = "kiln.routing";

struct RolloutRule {
  int64_t canary = 0;
  int64_t min_requests = 200;
  double max_error_ratio_increase = 0.01;
  double max_p99_ratio = 1.5;
  double min_agreement = 0.0;  // 0: agreement is not a condition
};

struct RoutingPolicy {
  std::map<int64_t, double> weights;  // empty: the highest READY version takes every request
  int64_t shadow_version = 0;         // 0: no shadow
  double shadow_share = 0.0;
  std::optional<RolloutRule> rollout;

  // Every version the policy names.
  std::vector<int64_t> Versions() const;
};

// Parses and checks the JSON form (weights >= 0 summing to more than 0, a share in (0, 1], a
// canary that is weighted or the shadow, a stable weighted version beside it). InvalidArgument
// naming the field.
Result<RoutingPolicy> ParseRoutingPolicy(std::string_view json);
std::string RoutingPolicyJson(const RoutingPolicy& policy);

class Traffic {
 public:
  Traffic(std::string model, RoutingPolicy policy, metrics::Registry* registry);

  const std::string& model() const { return model_; }
  // The version for a request that names none; sticky when `key` is not empty (the same key,
  // the same version while the weights stay). 0: no weights (the highest READY version).
  int64_t Pick(const std::string& key);
  // Whether to copy this request to the shadow version (sticky on `key` too); 0 when not.
  int64_t Shadow(const std::string& key);
  // The version a failed request of `version` falls back to: the weighted version with the
  // largest weight other than it (0: none, the highest READY version).
  int64_t Fallback(int64_t version) const;
  // Whether requests of `version` keep a copy of their input for a fallback (the canary of an
  // undecided rollout).
  bool KeepsInput(int64_t version) const;

  // Outcomes. A primary request that failed on `version` and was answered by its fallback
  // reports ok = false and fell_back = true.
  void RecordPrimary(int64_t version, bool ok, double seconds, bool fell_back);
  void RecordShadowDropped(int64_t version);
  // A shadow copy that finished: `images` compared with the primary's top-1, `disagreements`
  // of them differing (both 0 when the primary or the shadow failed).
  void RecordShadow(int64_t version, bool ok, double seconds, int64_t images,
                    int64_t disagreements);

  // The policy, per version the requests, errors, fallbacks, p99 and weight, the shadow's
  // counts and every rollout decision, as JSON.
  std::string StateJson() const;
  RoutingPolicy policy() const;

 private:
  struct Arm {
    int64_t requests = 0, errors = 0, fallbacks = 0;
    std::deque<double> latencies;  // the last kWindow, seconds
    metrics::Series *requests_total = nullptr, *errors_total = nullptr, *fallbacks_total = nullptr,
                    *duration = nullptr, *weight = nullptr;
  };
  struct ShadowStats {
    int64_t requests = 0, failed = 0, dropped = 0, images = 0, disagreements = 0;
    std::deque<double> latencies;
    metrics::Series *requests_total = nullptr, *dropped_total = nullptr,
                    *disagreement_total = nullptr, *images_total = nullptr;
  };
  Arm& ArmOf(int64_t version);                                      // mu_ held
  ShadowStats& ShadowOf(int64_t version);                           // mu_ held
  void PublishWeights();                                            // mu_ held
  void Decide();                                                    // mu_ held
  void Apply(const std::string& decision, const std::string& why);  // mu_ held

  const std::string model_;
  metrics::Registry* const registry_;
  mutable std::mutex mu_;
  RoutingPolicy policy_;
  std::map<int64_t, Arm> arms_;
  std::map<int64_t, ShadowStats> shadows_;
  std::vector<std::string> decisions_;  // "<decision>: <why>", in order
  int64_t since_check_ = 0;
};

}  // namespace kiln::serve
