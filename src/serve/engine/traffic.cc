#include "traffic.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

namespace kiln::serve {

namespace {

using json = nlohmann::json;

constexpr size_t kWindow = 2048;  // latencies kept per arm for the p99

// A key's place in [0, 1): FNV-1a, then a 64-bit finalizer (splitmix64) so that keys that
// differ in one character land far apart.
double KeyFraction(const std::string& key) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : key) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

double RandomFraction() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

double P99(const std::deque<double>& window) {
  if (window.empty()) return 0.0;
  std::vector<double> v(window.begin(), window.end());
  const size_t k = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(v.size()))) - 1;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

void Push(std::deque<double>& window, double v) {
  window.push_back(v);
  if (window.size() > kWindow) window.pop_front();
}

Result<int64_t> Version(const std::string& field, const json& v) {
  int64_t n = 0;
  if (v.is_number_integer()) {
    n = v.get<int64_t>();
  } else if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s.empty() || s.size() > 18 || !std::all_of(s.begin(), s.end(), ::isdigit)) {
      return InvalidArgumentError(field + ": '" + s + "' is not a version number");
    }
    n = std::stoll(s);
  } else {
    return InvalidArgumentError(field + " must be a version number");
  }
  if (n < 1) return InvalidArgumentError(field + " must be a version number >= 1");
  return n;
}

Result<double> Number(const json& o, const std::string& key, double fallback, double lo,
                      double hi) {
  if (!o.contains(key)) return fallback;
  const json& v = o[key];
  if (!v.is_number()) return InvalidArgumentError("'" + key + "' must be a number");
  const double d = v.get<double>();
  if (!(d >= lo && d <= hi)) {
    return InvalidArgumentError("'" + key + "' must be in [" + json(lo).dump() + ", " +
                                json(hi).dump() + "]");
  }
  return d;
}

Status OnlyKeys(const json& o, const std::string& what, std::set<std::string> keys) {
  for (const auto& [k, v] : o.items()) {
    if (keys.count(k) == 0) {
      std::string known;
      for (const auto& x : keys) known += (known.empty() ? "" : ", ") + x;
      return InvalidArgumentError(what + ": unknown field '" + k + "' (fields: " + known + ")");
    }
  }
  return Status::Ok();
}

}  // namespace

std::vector<int64_t> RoutingPolicy::Versions() const {
  std::set<int64_t> v;
  for (const auto& [version, w] : weights) v.insert(version);
  if (shadow_version > 0) v.insert(shadow_version);
  if (rollout) v.insert(rollout->canary);
  return {v.begin(), v.end()};
}

Result<RoutingPolicy> ParseRoutingPolicy(std::string_view text) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("the routing policy is not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("the routing policy must be a JSON object");
  KILN_RETURN_IF_ERROR(OnlyKeys(j, "routing policy", {"weights", "shadow", "rollout"}));
  RoutingPolicy p;
  if (j.contains("weights")) {
    if (!j["weights"].is_object()) {
      return InvalidArgumentError(
          "'weights' must map versions to weights, e.g. {\"1\": 90, \"2\": 10}");
    }
    double total = 0;
    for (const auto& [k, w] : j["weights"].items()) {
      KILN_ASSIGN_OR_RETURN(int64_t v, Version("weights", json(k)));
      if (!w.is_number() || !(w.get<double>() >= 0) || !std::isfinite(w.get<double>())) {
        return InvalidArgumentError("weights: version " + k + "'s weight must be a number >= 0");
      }
      p.weights[v] = w.get<double>();
      total += w.get<double>();
    }
    if (!p.weights.empty() && total <= 0) {
      return InvalidArgumentError("weights: at least one version needs a weight above 0");
    }
  }
  if (j.contains("shadow") && !j["shadow"].is_null()) {
    const json& s = j["shadow"];
    if (!s.is_object()) return InvalidArgumentError("'shadow' must be an object {version, share}");
    KILN_RETURN_IF_ERROR(OnlyKeys(s, "shadow", {"version", "share"}));
    if (!s.contains("version")) return InvalidArgumentError("shadow: 'version' is required");
    KILN_ASSIGN_OR_RETURN(p.shadow_version, Version("shadow.version", s["version"]));
    KILN_ASSIGN_OR_RETURN(p.shadow_share, Number(s, "share", 1.0, 0.0, 1.0));
    if (p.shadow_share <= 0) return InvalidArgumentError("shadow: 'share' must be above 0");
    if (p.weights.count(p.shadow_version) > 0 && p.weights[p.shadow_version] > 0) {
      return InvalidArgumentError("shadow: version " + std::to_string(p.shadow_version) +
                                  " also takes weighted traffic; a shadow only gets copies");
    }
  }
  if (j.contains("rollout") && !j["rollout"].is_null()) {
    const json& r = j["rollout"];
    if (!r.is_object()) return InvalidArgumentError("'rollout' must be an object");
    KILN_RETURN_IF_ERROR(OnlyKeys(
        r, "rollout",
        {"canary", "min_requests", "max_error_ratio_increase", "max_p99_ratio", "min_agreement"}));
    RolloutRule rule;
    if (!r.contains("canary")) return InvalidArgumentError("rollout: 'canary' is required");
    KILN_ASSIGN_OR_RETURN(rule.canary, Version("rollout.canary", r["canary"]));
    KILN_ASSIGN_OR_RETURN(double min_requests, Number(r, "min_requests", 200, 1, 1e9));
    rule.min_requests = static_cast<int64_t>(min_requests);
    KILN_ASSIGN_OR_RETURN(rule.max_error_ratio_increase,
                          Number(r, "max_error_ratio_increase", 0.01, 0.0, 1.0));
    KILN_ASSIGN_OR_RETURN(rule.max_p99_ratio, Number(r, "max_p99_ratio", 1.5, 1.0, 1e6));
    KILN_ASSIGN_OR_RETURN(rule.min_agreement, Number(r, "min_agreement", 0.0, 0.0, 1.0));
    const bool weighted = p.weights.count(rule.canary) > 0 && p.weights[rule.canary] > 0;
    const bool shadowed = p.shadow_version == rule.canary;
    if (!weighted && !shadowed) {
      return InvalidArgumentError("rollout: canary version " + std::to_string(rule.canary) +
                                  " gets no traffic: give it a weight, or make it the shadow");
    }
    const bool stable = std::any_of(p.weights.begin(), p.weights.end(), [&](const auto& w) {
      return w.first != rule.canary && w.second > 0;
    });
    if (!stable) {
      return InvalidArgumentError(
          "rollout: no stable version to compare the canary with (give "
          "another version a weight)");
    }
    if (rule.min_agreement > 0 && p.shadow_version != rule.canary) {
      return InvalidArgumentError(
          "rollout: min_agreement needs the canary as the shadow "
          "(agreement is measured on shadow copies)");
    }
    p.rollout = rule;
  }
  return p;
}

std::string RoutingPolicyJson(const RoutingPolicy& p) {
  json j = json::object();
  json w = json::object();
  for (const auto& [v, x] : p.weights) w[std::to_string(v)] = x;
  j["weights"] = w;
  if (p.shadow_version > 0) {
    j["shadow"] = {{"version", p.shadow_version}, {"share", p.shadow_share}};
  }
  if (p.rollout) {
    const RolloutRule& r = *p.rollout;
    j["rollout"] = {{"canary", r.canary},
                    {"min_requests", r.min_requests},
                    {"max_error_ratio_increase", r.max_error_ratio_increase},
                    {"max_p99_ratio", r.max_p99_ratio},
                    {"min_agreement", r.min_agreement}};
  }
  return j.dump();
}

Traffic::Traffic(std::string model, RoutingPolicy policy, metrics::Registry* registry)
    : model_(std::move(model)), registry_(registry), policy_(std::move(policy)) {
  std::lock_guard l(mu_);
  PublishWeights();
}

RoutingPolicy Traffic::policy() const {
  std::lock_guard l(mu_);
  return policy_;
}

Traffic::Arm& Traffic::ArmOf(int64_t version) {
  auto [it, added] = arms_.try_emplace(version);
  Arm& a = it->second;
  if (added) {
    const metrics::Labels l = {{"model", model_}, {"version", std::to_string(version)}};
    a.requests_total = registry_->Counter(
        "kiln_routing_requests_total",
        "Requests without a version that the routing policy sent to this version", l);
    a.errors_total = registry_->Counter("kiln_routing_errors_total",
                                        "Routed requests that failed on this version", l);
    a.fallbacks_total = registry_->Counter(
        "kiln_routing_fallbacks_total",
        "Routed requests that failed on this version and were answered by the fallback version", l);
    a.duration = registry_->Histogram("kiln_routing_request_duration_seconds",
                                      "Routed requests' time in the engine, per version (arm)", l,
                                      metrics::DefaultLatencyBuckets());
    a.weight = registry_->Gauge("kiln_routing_weight",
                                "Share of the requests without a version this version gets", l);
  }
  return a;
}

Traffic::ShadowStats& Traffic::ShadowOf(int64_t version) {
  auto [it, added] = shadows_.try_emplace(version);
  ShadowStats& s = it->second;
  if (added) {
    const metrics::Labels l = {{"model", model_}, {"version", std::to_string(version)}};
    s.requests_total = registry_->Counter("kiln_shadow_requests_total",
                                          "Copies of requests the shadow version answered", l);
    s.dropped_total = registry_->Counter(
        "kiln_shadow_dropped_total",
        "Copies not sent to the shadow version because a queue was over half full", l);
    s.images_total = registry_->Counter(
        "kiln_shadow_images_total", "Images whose shadow top-1 was compared with the primary's", l);
    s.disagreement_total =
        registry_->Counter("kiln_shadow_disagreement_total",
                           "Images whose shadow top-1 differed from the primary version's", l);
  }
  return s;
}

void Traffic::PublishWeights() {
  double total = 0;
  for (const auto& [v, w] : policy_.weights) total += w;
  for (auto& [v, a] : arms_) a.weight->Set(0);
  for (const auto& [v, w] : policy_.weights) ArmOf(v).weight->Set(total > 0 ? w / total : 0);
}

int64_t Traffic::Pick(const std::string& key) {
  std::lock_guard l(mu_);
  if (policy_.weights.empty()) return 0;
  double total = 0;
  for (const auto& [v, w] : policy_.weights) total += w;
  const double u = (key.empty() ? RandomFraction() : KeyFraction(key)) * total;
  double acc = 0;
  int64_t last = 0;
  for (const auto& [v, w] : policy_.weights) {
    if (w <= 0) continue;
    acc += w;
    last = v;
    if (u < acc) return v;
  }
  return last;
}

int64_t Traffic::Shadow(const std::string& key) {
  std::lock_guard l(mu_);
  if (policy_.shadow_version == 0) return 0;
  const double u = key.empty() ? RandomFraction() : KeyFraction(key + "\x1fshadow");
  return u < policy_.shadow_share ? policy_.shadow_version : 0;
}

int64_t Traffic::Fallback(int64_t version) const {
  std::lock_guard l(mu_);
  int64_t best = 0;
  double best_weight = 0;
  for (const auto& [v, w] : policy_.weights) {
    if (v != version && w > best_weight) {
      best = v;
      best_weight = w;
    }
  }
  return best;
}

bool Traffic::KeepsInput(int64_t version) const {
  std::lock_guard l(mu_);
  return policy_.rollout && policy_.rollout->canary == version;
}

void Traffic::RecordPrimary(int64_t version, bool ok, double seconds, bool fell_back) {
  std::lock_guard l(mu_);
  Arm& a = ArmOf(version);
  ++a.requests;
  a.requests_total->Add(1);
  if (!ok) {
    ++a.errors;
    a.errors_total->Add(1);
  }
  if (fell_back) {
    ++a.fallbacks;
    a.fallbacks_total->Add(1);
  }
  if (ok) {
    Push(a.latencies, seconds);
    a.duration->Observe(seconds);
  }
  Decide();
}

void Traffic::RecordShadowDropped(int64_t version) {
  std::lock_guard l(mu_);
  ShadowStats& s = ShadowOf(version);
  ++s.dropped;
  s.dropped_total->Add(1);
}

void Traffic::RecordShadow(int64_t version, bool ok, double seconds, int64_t images,
                           int64_t disagreements) {
  std::lock_guard l(mu_);
  ShadowStats& s = ShadowOf(version);
  ++s.requests;
  s.requests_total->Add(1);
  if (!ok) ++s.failed;
  if (ok) Push(s.latencies, seconds);
  s.images += images;
  s.disagreements += disagreements;
  s.images_total->Add(static_cast<double>(images));
  s.disagreement_total->Add(static_cast<double>(disagreements));
  Decide();
}

// The canary against the stable versions: roll back at the first breach (errors after a few
// requests, latency and agreement after min_requests), promote after min_requests without one.
void Traffic::Decide() {
  if (!policy_.rollout) return;
  const RolloutRule& r = *policy_.rollout;
  const bool weighted = policy_.weights.count(r.canary) > 0 && policy_.weights[r.canary] > 0;
  int64_t c_requests = 0, c_errors = 0;
  const std::deque<double>* c_latencies = nullptr;
  if (weighted) {
    const Arm& a = ArmOf(r.canary);
    c_requests = a.requests;
    c_errors = a.errors;
    c_latencies = &a.latencies;
  } else {
    const ShadowStats& s = ShadowOf(r.canary);
    c_requests = s.requests;
    c_errors = s.failed;
    c_latencies = &s.latencies;
  }
  int64_t s_requests = 0, s_errors = 0;
  std::deque<double> s_latencies;
  for (const auto& [v, w] : policy_.weights) {
    if (v == r.canary || w <= 0) continue;
    const Arm& a = ArmOf(v);
    s_requests += a.requests;
    s_errors += a.errors;
    s_latencies.insert(s_latencies.end(), a.latencies.begin(), a.latencies.end());
  }
  auto ratio = [](int64_t a, int64_t b) { return b > 0 ? static_cast<double>(a) / b : 0.0; };
  char why[256];
  const double c_err = ratio(c_errors, c_requests), s_err = ratio(s_errors, s_requests);
  if (c_requests >= std::min<int64_t>(20, r.min_requests) &&
      c_err > s_err + r.max_error_ratio_increase) {
    std::snprintf(why, sizeof why,
                  "error ratio %.4f > stable %.4f + %.4f after %lld canary requests", c_err, s_err,
                  r.max_error_ratio_increase, static_cast<long long>(c_requests));
    return Apply("rollback", why);
  }
  double agreement = 1.0;
  int64_t images = 0;
  if (policy_.shadow_version == r.canary) {
    const ShadowStats& s = ShadowOf(r.canary);
    images = s.images;
    agreement = s.images > 0 ? 1.0 - ratio(s.disagreements, s.images) : 1.0;
    if (r.min_agreement > 0 && images >= r.min_requests && agreement < r.min_agreement) {
      std::snprintf(why, sizeof why, "top-1 agreement %.4f < %.4f over %lld images", agreement,
                    r.min_agreement, static_cast<long long>(images));
      return Apply("rollback", why);
    }
  }
  if (c_requests < r.min_requests) return;
  if (r.min_agreement > 0 && images < r.min_requests) return;
  // The p99s from the last windows; checked every 16 canary outcomes (a sort of <= 4096).
  if (++since_check_ < 16 && c_requests > r.min_requests) return;
  since_check_ = 0;
  if (s_latencies.size() < 20 || c_latencies->size() < 20) return;
  const double c_p99 = P99(*c_latencies), s_p99 = P99(s_latencies);
  if (c_p99 > r.max_p99_ratio * s_p99) {
    std::snprintf(why, sizeof why, "p99 %.2f ms > %.2f x stable %.2f ms after %lld requests",
                  c_p99 * 1e3, r.max_p99_ratio, s_p99 * 1e3, static_cast<long long>(c_requests));
    return Apply("rollback", why);
  }
  std::snprintf(why, sizeof why,
                "%lld requests, error ratio %.4f (stable %.4f), p99 %.2f ms (stable %.2f ms), "
                "agreement %.4f over %lld images",
                static_cast<long long>(c_requests), c_err, s_err, c_p99 * 1e3, s_p99 * 1e3,
                agreement, static_cast<long long>(images));
  Apply("promote", why);
}

void Traffic::Apply(const std::string& decision, const std::string& why) {
  const int64_t canary = policy_.rollout->canary;
  if (decision == "promote") {
    policy_.weights = {{canary, 1.0}};
  } else {
    policy_.weights.erase(canary);
  }
  if (policy_.shadow_version == canary) {
    policy_.shadow_version = 0;
    policy_.shadow_share = 0;
  }
  policy_.rollout.reset();
  PublishWeights();
  decisions_.push_back(decision + " version " + std::to_string(canary) + ": " + why);
  registry_
      ->Counter("kiln_rollout_decisions_total", "Automatic canary promotions and rollbacks",
                {{"model", model_}, {"version", std::to_string(canary)}, {"decision", decision}})
      ->Add(1);
  std::cerr << "kiln serve: model '" << model_ << "': canary version " << canary << " "
            << (decision == "promote" ? "promoted to 100%" : "rolled back") << ": " << why
            << std::endl;
}

std::string Traffic::StateJson() const {
  std::lock_guard l(mu_);
  json versions = json::object();
  double total = 0;
  for (const auto& [v, w] : policy_.weights) total += w;
  for (const auto& [v, a] : arms_) {
    const auto w = policy_.weights.find(v);
    versions[std::to_string(v)] = {
        {"weight", w != policy_.weights.end() && total > 0 ? w->second / total : 0.0},
        {"requests", a.requests},
        {"errors", a.errors},
        {"fallbacks", a.fallbacks},
        {"p99_ms", P99(a.latencies) * 1e3}};
  }
  json shadow = json::object();
  for (const auto& [v, s] : shadows_) {
    shadow[std::to_string(v)] = {
        {"requests", s.requests},
        {"failed", s.failed},
        {"dropped", s.dropped},
        {"images", s.images},
        {"disagreements", s.disagreements},
        {"agreement", s.images > 0 ? 1.0 - static_cast<double>(s.disagreements) / s.images : 1.0},
        {"p99_ms", P99(s.latencies) * 1e3}};
  }
  return json{{"model", model_},
              {"policy", json::parse(RoutingPolicyJson(policy_))},
              {"versions", versions},
              {"shadow", shadow},
              {"decisions", decisions_}}
      .dump();
}

}  // namespace kiln::serve
