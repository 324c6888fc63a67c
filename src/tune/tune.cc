// kiln tune (see tune.h).
//
// One server process for the whole run: every point is a load request with a config override,
// so no point pays a server start and all of them meet the same process. The client (loadgen)
// runs in this process, on the same machine: on a small host it takes CPU from the server, as
// any load generator on the same host does; the numbers are for this host with its client.
#include "kiln/tune/tune.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "kiln/bench/loadgen/loadgen.h"
#include "kiln/core/file.h"
#include "kiln/core/process.h"
#include "kiln/core/statistics.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"
#include "kiln/plot/chart.h"
#include "kiln/serve/repo/repo.h"

namespace kiln::tune {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string Config::Key() const {
  return engine + "/b" + std::to_string(max_batch_size) + "/d" + std::to_string(queue_delay_us) +
         "/i" + std::to_string(instances) + "/t" + std::to_string(threads);
}

Config DefaultConfig() {
  const serve::repo::WriteOptions w;
  Config c;
  c.engine = w.onnx_backend;
  c.max_batch_size = w.max_batch_size;
  c.queue_delay_us = w.max_queue_delay_us;
  c.instances = w.instances;
  c.threads = w.threads;
  return c;
}

Status Options::Validate() const {
  if (repo.empty()) return InvalidArgumentError("--repo: the repository folder is required");
  if (manifest.empty() && models.empty()) {
    return InvalidArgumentError("give --manifest, or --model NAME for models of --repo");
  }
  if (data.empty()) return InvalidArgumentError("--data: the CIFAR-10 archive is required");
  if (kiln_binary.empty()) return InvalidArgumentError("the kiln binary to serve with is unknown");
  if (!(slo_p99_ms > 0)) return InvalidArgumentError("--slo-p99-ms must be > 0");
  if (min_throughput < 0) return InvalidArgumentError("--min-throughput must be >= 0");
  if (accuracy_budget < 0) return InvalidArgumentError("--accuracy-budget must be >= 0");
  if (search != "grid" && search != "climb") {
    return InvalidArgumentError("--search must be grid or climb");
  }
  if (engines.empty() || max_batch_sizes.empty() || queue_delays_us.empty() || instances.empty() ||
      threads.empty()) {
    return InvalidArgumentError("every grid dimension needs at least one value");
  }
  for (const auto& e : engines) {
    if (e != "onnxruntime" && e != "openvino") {
      return InvalidArgumentError("--engines: '" + e + "' is not onnxruntime or openvino");
    }
  }
  for (int b : max_batch_sizes) {
    if (b < 1 || b > 4096) return InvalidArgumentError("--max-batch values must be in [1, 4096]");
  }
  for (int64_t d : queue_delays_us) {
    if (d < 0) return InvalidArgumentError("--queue-delay-us values must be >= 0");
  }
  for (int i : instances) {
    if (i < 1 || i > 64) return InvalidArgumentError("--instances values must be in [1, 64]");
  }
  for (int t : threads) {
    if (t < 1 || t > 256) return InvalidArgumentError("--threads values must be in [1, 256]");
  }
  if (rate_fractions.empty()) return InvalidArgumentError("no rate fractions");
  if (window_ms < 100) return InvalidArgumentError("--window-ms must be >= 100");
  if (max_windows < 4) return InvalidArgumentError("--max-windows must be >= 4");
  if (images < 1) return InvalidArgumentError("--images must be >= 1");
  if (compare_rounds < 0) return InvalidArgumentError("--compare-rounds must be >= 0");
  return Status::Ok();
}

namespace {

// A model to tune: where it comes from and what the manifest says about its accuracy.
struct Candidate {
  serve::repo::ModelSource source;
  double accuracy = -1;
  double accuracy_delta = 0;
};

size_t Sink(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

// One HTTP exchange with the server; the status (0 when there was no answer).
long HttpCall(const std::string& url, const std::string* body, std::string* out,
              long timeout_ms = 300000) {
  out->clear();
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return 0;
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Sink);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, out);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms);
  if (body != nullptr) {
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
  }
  long status = 0;
  if (curl_easy_perform(curl) == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return status;
}

// A free TCP port on 127.0.0.1 (bound, then released).
Result<int> FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return InternalError("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return InternalError("cannot find a free port on 127.0.0.1");
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

json StepJson(const Step& s) {
  return {
      {"offered", s.offered}, {"achieved", s.achieved}, {"p50_ms", s.p50_ms}, {"p99_ms", s.p99_ms},
      {"errors", s.errors},   {"refused", s.refused},   {"stable", s.stable}, {"ok", s.ok}};
}

json ConfigJson(const Config& c) {
  return {{"engine", c.engine},
          {"max_batch_size", c.max_batch_size},
          {"queue_delay_us", c.queue_delay_us},
          {"instances", c.instances},
          {"threads", c.threads}};
}

json PointJson(const PointResult& p) {
  json steps = json::array();
  for (const auto& s : p.steps) steps.push_back(StepJson(s));
  return {{"model", p.model},
          {"variant", p.variant},
          {"key", p.model + "/" + p.config.Key()},
          {"config", ConfigJson(p.config)},
          {"accuracy", p.accuracy},
          {"accuracy_delta_points", p.accuracy_delta},
          {"probe_throughput", p.probe_throughput},
          {"probe_p99_ms", p.probe_p99_ms},
          {"max_rate", p.max_rate},
          {"p99_ms", p.p99_ms},
          {"steps", steps},
          {"error", p.error}};
}

PointResult PointFromJson(const json& j) {
  PointResult p;
  p.model = j.value("model", "");
  p.variant = j.value("variant", "");
  const auto& c = j["config"];
  p.config.engine = c.value("engine", "onnxruntime");
  p.config.max_batch_size = c.value("max_batch_size", 1);
  p.config.queue_delay_us = c.value("queue_delay_us", int64_t{0});
  p.config.instances = c.value("instances", 1);
  p.config.threads = c.value("threads", 1);
  p.accuracy = j.value("accuracy", -1.0);
  p.accuracy_delta = j.value("accuracy_delta_points", 0.0);
  p.probe_throughput = j.value("probe_throughput", 0.0);
  p.probe_p99_ms = j.value("probe_p99_ms", 0.0);
  p.max_rate = j.value("max_rate", 0.0);
  p.p99_ms = j.value("p99_ms", 0.0);
  p.error = j.value("error", "");
  for (const auto& s : j.value("steps", json::array())) {
    Step st;
    st.offered = s.value("offered", 0.0);
    st.achieved = s.value("achieved", 0.0);
    st.p50_ms = s.value("p50_ms", 0.0);
    st.p99_ms = s.value("p99_ms", 0.0);
    st.errors = s.value("errors", int64_t{0});
    st.refused = s.value("refused", int64_t{0});
    st.stable = s.value("stable", false);
    st.ok = s.value("ok", false);
    p.steps.push_back(st);
  }
  return p;
}

std::string Fixed(double v, int decimals) {
  char b[64];
  std::snprintf(b, sizeof(b), "%.*f", decimals, v);
  return b;
}

// Everything one run holds: the server child, the inputs, the results file.
class Tuner {
 public:
  explicit Tuner(const Options& o) : o_(o) {}
  ~Tuner() {
    if (server_.pid() > 0) (void)server_.Stop(std::chrono::seconds(30));
  }

  Result<Report> Run();

 private:
  bool Stopped() const { return o_.stop && o_.stop(); }
  void Log(const std::string& line) const {
    if (o_.log == nullptr) return;
    std::fprintf(o_.log, "%s\n", line.c_str());
    std::fflush(o_.log);
  }
  Result<std::vector<Candidate>> Candidates();
  Status PrepareRepository(const std::vector<Candidate>& candidates);
  Status StartServer();
  serve::repo::WriteOptions WriteOptionsFor(const Config& c) const;
  Status LoadModel(const Candidate& m, const std::string& config_json);
  // Measures (model, config); a load failure is recorded in the result, not returned.
  Result<PointResult> MeasurePoint(const Candidate& m, const Config& c);
  // Measures the point unless results.jsonl has it; appends it there.
  Result<PointResult> Point(const Candidate& m, const Config& c);
  Status Append(const PointResult& p);
  std::vector<Config> Grid(const Candidate& m) const;
  Status Search(const Candidate& m);
  Status Compare(const Candidate& base, const Candidate& m, const Config& winner, Comparison* out);
  Status WriteOutputs(const Report& r);

  const Options& o_;
  ChildProcess server_;
  std::string url_;
  std::string loaded_;                      // the model the server holds now
  std::vector<std::vector<float>> inputs_;  // normalized test images (one model's normalization)
  std::string inputs_for_;                  // ... of this model
  data::ImageSet test_;
  data::RgbImage warmup_image_;              // the first test image, for the model_warmup sample
  std::map<std::string, PointResult> done_;  // key -> result (resumed or measured)
  std::vector<PointResult> points_;
  size_t planned_ = 0, measured_ = 0;
  Clock::time_point started_ = Clock::now();
  double seconds_per_point_ = 0;
};

Result<std::vector<Candidate>> Tuner::Candidates() {
  std::vector<Candidate> out;
  if (o_.manifest.empty()) {
    for (const auto& name : o_.models) {
      const fs::path file = o_.repo / name / "1" / "model.onnx";
      std::error_code ec;
      if (!fs::exists(file, ec)) {
        return NotFoundError(file.string() + ": no ONNX model (kiln tune tunes ONNX models)");
      }
      out.push_back({{name, file, name, false}, -1, 0});
    }
    return out;
  }
  std::vector<std::string> skipped;
  KILN_ASSIGN_OR_RETURN(auto sources, serve::repo::SourcesFromManifest(o_.manifest, "", &skipped));
  std::ifstream in(o_.manifest);
  const json m = json::parse(in, nullptr, false);
  std::map<std::string, json> variants;
  for (const auto& v : m["variants"]) variants[v.value("name", "")] = v;
  for (const auto& s : skipped) Log("skipped " + s);
  for (auto& s : sources) {
    if (s.file.extension() != ".onnx") {
      Log("skipped " + s.name + ": TorchScript (kiln tune tunes the ONNX variants)");
      continue;
    }
    if (!o_.models.empty() &&
        std::find(o_.models.begin(), o_.models.end(), s.variant) == o_.models.end() &&
        std::find(o_.models.begin(), o_.models.end(), s.name) == o_.models.end()) {
      continue;
    }
    const json& v = variants[s.variant];
    Candidate c{s, v.value("test_accuracy", -1.0), v.value("accuracy_delta_points", 0.0)};
    if (-c.accuracy_delta > o_.accuracy_budget + 1e-9) {
      Log("skipped " + s.name + ": " + Fixed(-c.accuracy_delta, 2) +
          " points below FP32, over the accuracy budget of " + Fixed(o_.accuracy_budget, 2));
      continue;
    }
    out.push_back(std::move(c));
  }
  if (out.empty()) return InvalidArgumentError("no variant to tune (budget or --model filter)");
  return out;
}

Status Tuner::PrepareRepository(const std::vector<Candidate>& candidates) {
  std::vector<serve::repo::ModelSource> missing;
  std::error_code ec;
  for (const auto& c : candidates) {
    if (!fs::exists(o_.repo / c.source.name / "config.pbtxt", ec)) missing.push_back(c.source);
  }
  if (missing.empty()) return Status::Ok();
  serve::repo::WriteOptions w = WriteOptionsFor(DefaultConfig());
  w.out = o_.repo;
  w.models = missing;
  for (const auto& m : missing) Log("writing " + (o_.repo / m.name).string() + " (defaults)");
  return serve::repo::WriteRepository(w).status();
}

serve::repo::WriteOptions Tuner::WriteOptionsFor(const Config& c) const {
  serve::repo::WriteOptions w;
  w.onnx_backend = c.engine;
  w.max_batch_size = c.max_batch_size;
  w.max_queue_delay_us = c.queue_delay_us;
  w.instances = c.instances;
  w.threads = c.threads;
  w.gpu = false;  // a tune measures this host's CPU: never KIND_GPU
  w.warmup_image = warmup_image_;
  return w;
}

Status Tuner::StartServer() {
  KILN_ASSIGN_OR_RETURN(const int port, FreePort());
  url_ = "http://127.0.0.1:" + std::to_string(port);
  const std::vector<std::string> argv = {o_.kiln_binary,
                                         "serve",
                                         "--models",
                                         o_.repo.string(),
                                         "--model-control-mode",
                                         "explicit",
                                         "--disable-auto-complete-config",
                                         "--host",
                                         "127.0.0.1",
                                         "--port",
                                         std::to_string(port),
                                         "--metrics-port",
                                         "0",
                                         "--grpc-port",
                                         "0"};
  const fs::path log = o_.out / "serve.log";
  Log("starting " + CommandLineForDisplay(argv) + " (log: " + log.string() + ")");
  KILN_ASSIGN_OR_RETURN(server_, ChildProcess::Start(argv, log));
  std::string body;
  for (int i = 0; i < 1200; ++i) {  // 60 s
    if (HttpCall(url_ + "/v2/health/live", nullptr, &body, 1000) == 200) return Status::Ok();
    if (!server_.Running()) break;
    if (Stopped()) return CancelledError("interrupted");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return UnavailableError("kiln serve did not come up; see " + log.string());
}

Status Tuner::LoadModel(const Candidate& m, const std::string& config) {
  std::string body;
  if (!loaded_.empty() && loaded_ != m.source.name) {
    const std::string unload = "{}";
    HttpCall(url_ + "/v2/repository/models/" + loaded_ + "/unload", &unload, &body);
    loaded_.clear();
  }
  const std::string request = json{{"parameters", {{"config", config}}}}.dump();
  const long status =
      HttpCall(url_ + "/v2/repository/models/" + m.source.name + "/load", &request, &body);
  if (status != 200) {
    if (!server_.Running()) return UnavailableError("kiln serve exited; see its serve.log");
    return InvalidArgumentError("load answered " + std::to_string(status) + ": " + body);
  }
  loaded_ = m.source.name;
  return Status::Ok();
}

Result<PointResult> Tuner::MeasurePoint(const Candidate& m, const Config& c) {
  PointResult p;
  p.model = m.source.name;
  p.variant = m.source.variant;
  p.config = c;
  p.accuracy = m.accuracy;
  p.accuracy_delta = m.accuracy_delta;
  KILN_ASSIGN_OR_RETURN(const std::string config,
                        serve::repo::ModelConfigJson(WriteOptionsFor(c), m.source));
  Status loaded = LoadModel(m, config);
  if (loaded.code() == StatusCode::kUnavailable) return loaded;
  if (!loaded.ok()) {
    p.error = loaded.message();
    return p;
  }
  if (inputs_for_ != m.source.name) {
    KILN_ASSIGN_OR_RETURN(const data::Normalization norm,
                          serve::repo::ModelNormalization(m.source));
    inputs_.clear();
    const int64_t n = std::min<int64_t>(o_.images, test_.size());
    for (int64_t i = 0; i < n; ++i) {
      std::vector<float> x(static_cast<size_t>(test_.image_bytes()));
      data::NormalizeImage(test_.image(i), test_.channels, test_.height * test_.width, norm,
                           x.data());
      inputs_.push_back(std::move(x));
    }
    inputs_for_ = m.source.name;
  }
  loadgen::Options lo;
  lo.url = url_;
  lo.model = m.source.name;
  lo.mode = "binary";
  lo.inputs = inputs_;
  lo.window_ms = o_.window_ms;
  lo.max_windows = o_.max_windows;
  lo.out = nullptr;
  lo.stop = o_.stop;
  // The probe: enough closed-loop clients to fill every instance's batches.
  lo.levels = {static_cast<double>(std::clamp(2 * c.max_batch_size * c.instances, 4, 64))};
  KILN_ASSIGN_OR_RETURN(auto probe, loadgen::Measure(lo));
  if (probe.empty() || probe[0].throughput <= 0) {
    p.error = "the closed-loop probe measured nothing (every request failed?)";
    return p;
  }
  p.probe_throughput = probe[0].throughput;
  p.probe_p99_ms = probe[0].p99_ms;
  lo.rate_mode = true;
  lo.max_threads = 64;
  auto measure = [&](double rate) -> Result<Step> {
    lo.levels = {rate};
    KILN_ASSIGN_OR_RETURN(auto r, loadgen::Measure(lo));
    Step s;
    s.offered = rate;
    if (r.empty()) return s;
    s.achieved = r[0].throughput;
    s.p50_ms = r[0].p50_ms;
    s.p99_ms = r[0].p99_ms;
    s.errors = r[0].errors;
    s.refused = r[0].refused;
    s.stable = r[0].stable;
    s.ok =
        s.p99_ms <= o_.slo_p99_ms && s.achieved >= 0.95 * rate && s.errors == 0 && s.refused == 0;
    return s;
  };
  auto record = [&](const Step& s) {
    p.steps.push_back(s);
    if (s.ok && s.offered > p.max_rate) {
      p.max_rate = s.offered;
      p.p99_ms = s.p99_ms;
    }
  };
  // Up through the fractions until a rate fails; when the first fails, down by halves (three
  // times at most) until one passes; when the last passes, on by 15% steps (three at most).
  // Then one rate between the highest pass and the lowest failure above it.
  const auto& fractions = o_.rate_fractions;
  bool any_ok = false;
  size_t i = 0;
  for (; i < fractions.size(); ++i) {
    KILN_ASSIGN_OR_RETURN(Step s, measure(fractions[i] * p.probe_throughput));
    record(s);
    if (!s.ok) break;
    any_ok = true;
  }
  double f = i < fractions.size() ? fractions[0] : fractions.back();
  for (int k = 0; k < 3 && (!any_ok || i == fractions.size()); ++k) {
    f = any_ok ? f * 1.15 : f / 2;
    KILN_ASSIGN_OR_RETURN(Step s, measure(f * p.probe_throughput));
    record(s);
    if (any_ok && !s.ok) break;
    if (!any_ok && s.ok) break;
  }
  // Refine: the midpoint between the highest passing rate and the lowest failing one above it,
  // once, halving the step's resolution.
  double lowest_fail = 0;
  for (const auto& s : p.steps) {
    if (!s.ok && s.offered > p.max_rate && (lowest_fail == 0 || s.offered < lowest_fail)) {
      lowest_fail = s.offered;
    }
  }
  if (p.max_rate > 0 && lowest_fail > 0) {
    KILN_ASSIGN_OR_RETURN(Step s, measure((p.max_rate + lowest_fail) / 2));
    record(s);
  }
  return p;
}

Result<PointResult> Tuner::Point(const Candidate& m, const Config& c) {
  const std::string key = m.source.name + "/" + c.Key();
  if (auto it = done_.find(key); it != done_.end()) return it->second;
  if (Stopped()) return CancelledError("interrupted");
  const auto t0 = Clock::now();
  KILN_ASSIGN_OR_RETURN(PointResult p, MeasurePoint(m, c));
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  ++measured_;
  seconds_per_point_ += (secs - seconds_per_point_) / static_cast<double>(measured_);
  KILN_RETURN_IF_ERROR(Append(p));
  done_[key] = p;
  points_.push_back(p);
  std::string line = "[" + std::to_string(points_.size()) +
                     (planned_ > 0 ? "/" + std::to_string(planned_) : std::string()) + "] " +
                     p.model + " " + c.Key() + ": ";
  if (!p.error.empty()) {
    line += "not measured: " + p.error;
  } else {
    line += "probe " + Fixed(p.probe_throughput, 0) + " infer/s; ";
    line += p.max_rate > 0
                ? "max " + Fixed(p.max_rate, 0) + " req/s at p99 " + Fixed(p.p99_ms, 2) + " ms"
                : "no rate met p99 <= " + Fixed(o_.slo_p99_ms, 1) + " ms";
  }
  if (planned_ > points_.size()) {
    const double eta = seconds_per_point_ * static_cast<double>(planned_ - points_.size());
    line += " (" + Fixed(secs, 0) + " s; about " + Fixed(eta / 60, 1) + " min left)";
  }
  Log(line);
  return p;
}

Status Tuner::Append(const PointResult& p) {
  const fs::path file = o_.out / "results.jsonl";
  std::FILE* f = std::fopen(file.c_str(), "a");
  if (f == nullptr) return InternalError("cannot append to " + file.string());
  json j = PointJson(p);
  j["slo_p99_ms"] = o_.slo_p99_ms;
  j["window_ms"] = o_.window_ms;
  const std::string line = j.dump() + "\n";
  const bool ok = std::fwrite(line.data(), 1, line.size(), f) == line.size() &&
                  std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!ok) return InternalError("cannot append to " + file.string());
  return Status::Ok();
}

// The grid, with points over max_cores left out; the default configuration always included.
std::vector<Config> Tuner::Grid(const Candidate&) const {
  std::vector<Config> grid;
  for (const auto& e : o_.engines) {
    for (int b : o_.max_batch_sizes) {
      for (int64_t d : o_.queue_delays_us) {
        for (int i : o_.instances) {
          for (int t : o_.threads) {
            if (o_.max_cores > 0 && i * t > o_.max_cores) continue;
            grid.push_back({e, b, d, i, t});
          }
        }
      }
    }
  }
  const Config def = DefaultConfig();
  if (std::find(grid.begin(), grid.end(), def) == grid.end()) grid.insert(grid.begin(), def);
  return grid;
}

// Grid: every point. Climb: per engine, from the default configuration to the best neighbour
// (the next grid value up or down in one dimension) while it gains more than plateau_percent.
Status Tuner::Search(const Candidate& m) {
  const std::vector<Config> grid = Grid(m);
  if (o_.search == "grid") {
    for (const auto& c : grid) KILN_RETURN_IF_ERROR(Point(m, c).status());
    return Status::Ok();
  }
  // The default configuration, under ONNX Runtime, is the baseline of every engine's climb.
  KILN_RETURN_IF_ERROR(Point(m, DefaultConfig()).status());
  for (const auto& engine : o_.engines) {
    Config current = DefaultConfig();
    current.engine = engine;
    KILN_ASSIGN_OR_RETURN(PointResult best, Point(m, current));
    auto neighbours = [&](const Config& c) {
      std::vector<Config> out;
      auto around = [&](auto values, auto value, auto set) {
        std::sort(values.begin(), values.end());
        auto hi = std::upper_bound(values.begin(), values.end(), value);
        auto lo = std::lower_bound(values.begin(), values.end(), value);
        if (hi != values.end()) {
          Config n = c;
          set(n, *hi);
          out.push_back(n);
        }
        if (lo != values.begin()) {
          Config n = c;
          set(n, *(lo - 1));
          out.push_back(n);
        }
      };
      around(o_.max_batch_sizes, c.max_batch_size, [](Config& n, int v) { n.max_batch_size = v; });
      around(o_.queue_delays_us, c.queue_delay_us,
             [](Config& n, int64_t v) { n.queue_delay_us = v; });
      around(o_.instances, c.instances, [](Config& n, int v) { n.instances = v; });
      around(o_.threads, c.threads, [](Config& n, int v) { n.threads = v; });
      out.erase(std::remove_if(out.begin(), out.end(),
                               [&](const Config& n) {
                                 return o_.max_cores > 0 && n.instances * n.threads > o_.max_cores;
                               }),
                out.end());
      return out;
    };
    while (true) {
      PointResult next = best;
      for (const auto& n : neighbours(current)) {
        KILN_ASSIGN_OR_RETURN(PointResult r, Point(m, n));
        if (r.max_rate > next.max_rate) next = r;
      }
      if (next.max_rate <= best.max_rate * (1 + o_.plateau_percent / 100)) break;
      Log("  climb: " + next.config.Key() + " gains " +
          Fixed(best.max_rate > 0 ? (next.max_rate / best.max_rate - 1) * 100 : 100, 1) +
          "% over " + current.Key());
      best = next;
      current = next.config;
    }
  }
  return Status::Ok();
}

Status Tuner::Compare(const Candidate& base, const Candidate& m, const Config& winner,
                      Comparison* out) {
  std::vector<double> gains;
  out->default_model = base.source.name;
  for (int r = 0; r < o_.compare_rounds; ++r) {
    KILN_ASSIGN_OR_RETURN(PointResult d, MeasurePoint(base, DefaultConfig()));
    KILN_ASSIGN_OR_RETURN(PointResult w, MeasurePoint(m, winner));
    out->default_rates.push_back(d.max_rate);
    out->winner_rates.push_back(w.max_rate);
    if (d.max_rate > 0) gains.push_back(w.max_rate / d.max_rate);
    Log("compare round " + std::to_string(r + 1) + "/" + std::to_string(o_.compare_rounds) +
        ": default " + Fixed(d.max_rate, 0) + " req/s, winner " + Fixed(w.max_rate, 0) + " req/s");
  }
  out->default_median = Quantile(out->default_rates, 0.5);
  out->winner_median = Quantile(out->winner_rates, 0.5);
  if (!gains.empty()) {
    out->gain_median = Quantile(gains, 0.5);
    out->gain_min = *std::min_element(gains.begin(), gains.end());
    out->gain_max = *std::max_element(gains.begin(), gains.end());
  }
  return Status::Ok();
}

Status Tuner::WriteOutputs(const Report& r) {
  json points = json::array();
  for (const auto& p : r.points) points.push_back(PointJson(p));
  json j = {{"slo_p99_ms", o_.slo_p99_ms},
            {"min_throughput", o_.min_throughput},
            {"accuracy_budget_points", o_.accuracy_budget},
            {"search", o_.search},
            {"command", o_.command_line},
            {"points", points},
            {"winner",
             r.winner >= 0 ? PointJson(r.points[static_cast<size_t>(r.winner)]) : json(nullptr)},
            {"default_config", ConfigJson(DefaultConfig())},
            {"nginx_limit_req_rate", r.nginx_rate},
            {"hpa_target_requests_per_second", r.hpa_target}};
  if (!r.comparison.winner_rates.empty()) {
    const auto& c = r.comparison;
    j["comparison"] = {{"default_model", c.default_model},
                       {"default_config", ConfigJson(DefaultConfig())},
                       {"default_rates", c.default_rates},
                       {"winner_rates", c.winner_rates},
                       {"default_median", c.default_median},
                       {"winner_median", c.winner_median},
                       {"gain_median", c.gain_median},
                       {"gain_min", c.gain_min},
                       {"gain_max", c.gain_max}};
  }
  KILN_RETURN_IF_ERROR(WriteFileAtomic(o_.out / "tune.json", j.dump(2) + "\n"));

  // TUNE.md: per model, its points from the highest rate under the SLO down.
  std::ostringstream md;
  md << "# kiln tune\n\n";
  if (!o_.command_line.empty()) md << "```\n" << o_.command_line << "\n```\n\n";
  md << "SLO: p99 <= " << Fixed(o_.slo_p99_ms, 1) << " ms";
  if (o_.min_throughput > 0) md << ", at least " << Fixed(o_.min_throughput, 0) << " requests/s";
  md << ". Accuracy budget: " << Fixed(o_.accuracy_budget, 2)
     << " points below FP32. Search: " << o_.search << ". Requests: one CIFAR-10 test image each "
     << "(KServe binary tensors), open loop at constant rates; a rate passes when its p99 is "
        "within the SLO, the server achieves >= 95% of it, and nothing failed or was refused.\n\n";
  md << "| model | engine | max batch | queue delay us | instances | threads | probe infer/s "
        "| max req/s under SLO | p99 ms there | accuracy | |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
  std::vector<size_t> order(r.points.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto &pa = r.points[a], &pb = r.points[b];
    if (pa.model != pb.model) return pa.model < pb.model;
    return pa.max_rate > pb.max_rate;
  });
  const Config def = DefaultConfig();
  for (size_t i : order) {
    const auto& p = r.points[i];
    md << "| " << p.model << " | " << p.config.engine << " | " << p.config.max_batch_size << " | "
       << p.config.queue_delay_us << " | " << p.config.instances << " | " << p.config.threads
       << " | " << (p.error.empty() ? Fixed(p.probe_throughput, 0) : "-") << " | "
       << (p.max_rate > 0 ? Fixed(p.max_rate, 0) : "none") << " | "
       << (p.max_rate > 0 ? Fixed(p.p99_ms, 2) : "-") << " | "
       << (p.accuracy >= 0 ? Fixed(p.accuracy * 100, 2) + "%" : "-") << " | "
       << (static_cast<int>(i) == r.winner ? "**winner**" : "")
       << (p.config == def ? " default" : "") << (p.error.empty() ? "" : " " + p.error) << " |\n";
  }
  if (r.winner >= 0) {
    const auto& w = r.points[static_cast<size_t>(r.winner)];
    md << "\n## Winner\n\n"
       << w.model << " (" << w.variant << ") with " << w.config.Key() << ": "
       << Fixed(w.max_rate, 0) << " requests/s at p99 " << Fixed(w.p99_ms, 2)
       << " ms. Its config.pbtxt: `winner/" << w.model << "/config.pbtxt`"
       << (o_.apply ? ", also written into " + o_.repo.string() : std::string()) << ".\n";
    md << "\n## Deployment figures (per replica, from the winner's measured capacity C = "
       << Fixed(w.max_rate, 0) << " requests/s)\n\n"
       << "- nginx: `limit_req_zone ... rate=" << Fixed(r.nginx_rate, 0)
       << "r/s;` per replica behind it (0.8 C: the 20% margin covers the spread between runs "
          "and a replica that shares its node).\n"
       << "- autoscaler: target " << Fixed(r.hpa_target, 0)
       << " requests/s per replica (0.7 C: it adds a replica before the rate limit starts "
          "refusing).\n";
  } else {
    md << "\nNo configuration met the SLO.\n";
  }
  if (!r.comparison.winner_rates.empty()) {
    const auto& c = r.comparison;
    md << "\n## Winner vs default, side by side\n\n"
       << "Default: " << c.default_model << " with kiln repo write's defaults ("
       << DefaultConfig().Key() << "), what an untuned repository serves. " << c.winner_rates.size()
       << " alternating rounds (default, winner, ...) on the same "
       << "server, each a full measurement of the max rate under the SLO.\n\n"
       << "| round | default req/s | winner req/s |\n|---:|---:|---:|\n";
    for (size_t i = 0; i < c.winner_rates.size(); ++i) {
      md << "| " << i + 1 << " | " << Fixed(c.default_rates[i], 0) << " | "
         << Fixed(c.winner_rates[i], 0) << " |\n";
    }
    md << "\nMedian: default " << Fixed(c.default_median, 0) << ", winner "
       << Fixed(c.winner_median, 0) << " requests/s; gain (winner / default, per round): median "
       << Fixed(c.gain_median, 2) << "x, range " << Fixed(c.gain_min, 2) << "x - "
       << Fixed(c.gain_max, 2) << "x.\n";
  }
  KILN_RETURN_IF_ERROR(WriteFileAtomic(o_.out / "TUNE.md", md.str()));

  // Throughput vs p99: every measured rate of every point, one colour per model; the SLO as a
  // horizontal line.
  std::vector<std::string> models;
  double x1 = 1, y1 = o_.slo_p99_ms * 2;
  for (const auto& p : r.points) {
    if (std::find(models.begin(), models.end(), p.model) == models.end()) models.push_back(p.model);
    for (const auto& s : p.steps) x1 = std::max(x1, s.achieved);
  }
  plot::Canvas canvas(1300, 560);
  canvas.Text(
      "kiln tune: achieved throughput vs p99 (each dot one offered rate of one "
      "configuration; lines: each model's best configuration)",
      10, 24, 0.5);
  plot::AxesOptions ao;
  ao.area = {80, 56, 720, 440};
  ao.x0 = 0;
  ao.x1 = x1 * 1.05;
  ao.y0 = 0;
  ao.y1 = y1;
  for (int i = 0; i <= 5; ++i) ao.x_ticks.push_back(ao.x1 * i / 5);
  ao.x_format = [](double v) { return plot::Format("%.0f", v); };
  ao.y_format = [](double v) { return plot::Format("%.0f ms", v); };
  ao.x_label = "inferences/s achieved";
  plot::Axes axes(&canvas, ao);
  axes.Line({0, ao.x1}, {o_.slo_p99_ms, o_.slo_p99_ms}, plot::kHighlight, 1, 0);
  for (size_t mi = 0; mi < models.size(); ++mi) {
    const plot::Rgb color = plot::PaletteColor(mi);
    const PointResult* best = nullptr;
    for (const auto& p : r.points) {
      if (p.model != models[mi]) continue;
      for (const auto& s : p.steps) axes.Dot(s.achieved, std::min(s.p99_ms, y1), 2, color);
      if (best == nullptr || p.max_rate > best->max_rate) best = &p;
    }
    if (best != nullptr && !best->steps.empty()) {
      std::vector<Step> steps = best->steps;
      std::sort(steps.begin(), steps.end(),
                [](const Step& a, const Step& b) { return a.achieved < b.achieved; });
      std::vector<double> xs, ys;
      for (const auto& s : steps) {
        xs.push_back(s.achieved);
        ys.push_back(std::min(s.p99_ms, y1));
      }
      axes.Line(xs, ys, color, 2, 3);
    }
    axes.Legend(static_cast<int>(mi), models[mi] + (best ? " (" + best->config.Key() + ")" : ""),
                color);
  }
  axes.Legend(static_cast<int>(models.size()), "SLO p99 " + Fixed(o_.slo_p99_ms, 1) + " ms",
              plot::kHighlight);
  return canvas.SavePng(o_.out / "throughput-vs-p99.png");
}

Result<Report> Tuner::Run() {
  KILN_RETURN_IF_ERROR(o_.Validate());
  std::error_code ec;
  fs::create_directories(o_.out, ec);
  if (ec) return InternalError("cannot create " + o_.out.string() + ": " + ec.message());
  KILN_ASSIGN_OR_RETURN(data::Dataset ds, data::LoadCifar10(o_.data));
  test_ = std::move(ds.test);
  if (test_.size() == 0 || test_.channels != 3) {
    return InvalidArgumentError(o_.data.string() + ": no RGB test images");
  }
  const int64_t hw = test_.height * test_.width;
  warmup_image_.width = test_.width;
  warmup_image_.height = test_.height;
  warmup_image_.pixels.resize(static_cast<size_t>(hw * 3));
  for (int64_t i = 0; i < hw; ++i) {  // planar CHW -> interleaved RGB
    for (int64_t ch = 0; ch < 3; ++ch) {
      warmup_image_.pixels[static_cast<size_t>(i * 3 + ch)] = test_.image(0)[ch * hw + i];
    }
  }
  KILN_ASSIGN_OR_RETURN(const std::vector<Candidate> candidates, Candidates());
  KILN_RETURN_IF_ERROR(PrepareRepository(candidates));
  // Resume: the points of an earlier run with the same SLO and windows.
  {
    std::ifstream in(o_.out / "results.jsonl");
    size_t resumed = 0;
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line, nullptr, false);
      if (!j.is_object() || !j.contains("config") || j.value("slo_p99_ms", 0.0) != o_.slo_p99_ms ||
          j.value("window_ms", 0) != o_.window_ms) {
        continue;  // a torn last line, or another run's settings
      }
      PointResult p = PointFromJson(j);
      const std::string key = p.model + "/" + p.config.Key();
      if (done_.emplace(key, p).second) {
        points_.push_back(p);
        ++resumed;
      }
    }
    if (resumed > 0) Log("resuming: " + std::to_string(resumed) + " points from results.jsonl");
  }
  if (o_.search == "grid") {
    for (const auto& c : candidates) planned_ += Grid(c).size();
  }
  KILN_RETURN_IF_ERROR(StartServer());
  for (const auto& c : candidates) KILN_RETURN_IF_ERROR(Search(c));

  Report report;
  // Only the points of this run's candidates and grid count (results.jsonl may hold more).
  std::set<std::string> names;
  for (const auto& c : candidates) names.insert(c.source.name);
  for (const auto& p : points_) {
    if (names.count(p.model) > 0) report.points.push_back(p);
  }
  for (size_t i = 0; i < report.points.size(); ++i) {
    const auto& p = report.points[i];
    if (p.max_rate <= 0 || p.max_rate < o_.min_throughput) continue;
    if (report.winner < 0) {
      report.winner = static_cast<int>(i);
      continue;
    }
    const auto& w = report.points[static_cast<size_t>(report.winner)];
    if (p.max_rate > w.max_rate || (p.max_rate == w.max_rate && p.p99_ms < w.p99_ms)) {
      report.winner = static_cast<int>(i);
    }
  }
  if (report.winner >= 0) {
    const PointResult& w = report.points[static_cast<size_t>(report.winner)];
    report.nginx_rate = std::floor(0.8 * w.max_rate);
    report.hpa_target = std::floor(0.7 * w.max_rate);
    const Candidate* model = nullptr;
    const Candidate* base = nullptr;
    for (const auto& c : candidates) {
      if (c.source.name == w.model) model = &c;
      if (c.source.variant == "fp32") base = &c;
    }
    if (base == nullptr) base = model;
    if (o_.compare_rounds > 0) {
      KILN_RETURN_IF_ERROR(Compare(*base, *model, w.config, &report.comparison));
    }
    // The winner's folder, written by kiln repo write's writer with the winning options.
    serve::repo::WriteOptions wo = WriteOptionsFor(w.config);
    wo.out = o_.out / "winner";
    wo.models = {model->source};
    wo.force = true;
    KILN_RETURN_IF_ERROR(serve::repo::WriteRepository(wo).status());
    if (o_.apply) {
      wo.out = o_.repo;
      KILN_RETURN_IF_ERROR(serve::repo::WriteRepository(wo).status());
      // The written config must load as it is (no override).
      std::string body;
      const std::string empty = "{}";
      const long status =
          HttpCall(url_ + "/v2/repository/models/" + w.model + "/load", &empty, &body);
      if (status != 200) {
        return InternalError("the winner's config.pbtxt written into " + o_.repo.string() +
                             " does not load: " + body);
      }
      Log("wrote " + (o_.repo / w.model / "config.pbtxt").string() + " (loads)");
    }
  }
  KILN_RETURN_IF_ERROR(WriteOutputs(report));
  return report;
}

}  // namespace

Result<Report> Tune(const Options& options) {
  curl_global_init(CURL_GLOBAL_ALL);
  Tuner tuner(options);
  return tuner.Run();
}

}  // namespace kiln::tune
