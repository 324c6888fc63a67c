// The load generator (see loadgen.h).
//
// In rate mode a request's latency runs from the time it was scheduled to be sent, not from when
// a sender thread got to it: if the senders fall behind, the wait shows in the latency (no
// "coordinated omission"), and the requests that left late are counted. latency_from "send"
// measures from the moment it left instead, as perf_analyzer does (to compare the two tools).
#include "kiln/bench/loadgen/loadgen.h"

#include <curl/curl.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "kiln/core/file.h"
#include "kiln/core/statistics.h"
#include "grpc_service.grpc.pb.h"

namespace kiln::loadgen {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// "1:64:x2" -> 1 2 4 ... 64; "1:8:2" -> 1 3 5 7; "8" -> 8; rates may be fractional ("0.5").
Result<std::vector<double>> ParseLevels(const std::string& flag, const std::string& spec) {
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  auto number = [](const std::string& text) {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used != text.size() || !std::isfinite(v)) throw std::invalid_argument(text);
    return v;
  };
  try {
    if (parts.size() == 1 && number(parts[0]) > 0) return std::vector<double>{number(parts[0])};
    if (parts.size() == 3) {
      const double lo = number(parts[0]), hi = number(parts[1]);
      const bool mul = !parts[2].empty() && parts[2][0] == 'x';
      const double step = number(mul ? parts[2].substr(1) : parts[2]);
      if (lo <= 0 || hi < lo || step < (mul ? 2 : 1e-9)) throw std::invalid_argument("range");
      std::vector<double> out;
      for (double c = lo; c <= hi * (1 + 1e-9) && out.size() < 1000;
           c = mul ? c * step : c + step) {
        out.push_back(c);
      }
      return out;
    }
  } catch (const std::exception&) {
  }
  return InvalidArgumentError(flag + " '" + spec +
                              "': expected N, START:END:STEP or START:END:xFACTOR (N > 0)");
}

namespace {

struct ServerSplit {
  double count = 0, queue_ns = 0, input_ns = 0, infer_ns = 0, output_ns = 0;
};

// The model's one FP32 input, as the server's metadata gives it (-1: the batch dimension).
struct InputSpec {
  std::string name;
  std::vector<int64_t> shape;
};

Status NotOneFp32Input(const std::string& model) {
  return UnimplementedError("model '" + model + "' must have one FP32 input");
}

// What one request came to: answered, refused (HTTP 503, gRPC UNAVAILABLE or RESOURCE_EXHAUSTED:
// queue full, over the admission budget, shutting down), or failed otherwise.
enum class Outcome { kOk, kRefused, kError };

// One sender thread's own connection to the server.
class Sender {
 public:
  virtual ~Sender() = default;
  // Sends prepared request number `request` (wrapping around) and waits for its answer.
  virtual Outcome Send(size_t request) = 0;
  // Seconds of the last Send spent waiting for the response (see Options::csv).
  virtual double ResponseWait() const = 0;
};

// How the server is reached: its metadata and statistics, the requests prepared once, and a
// Sender per thread. Not thread-safe itself; each Sender is used by one thread.
class Target {
 public:
  virtual ~Target() = default;
  virtual Result<InputSpec> ReadInput() = 0;
  // One request per batch for input `input` (each `shape`-sized, row-major); `binary`: raw bytes
  // instead of typed values (HTTP: the binary tensor extension; gRPC: raw_input_contents).
  virtual void Prepare(const std::string& input, const std::vector<int64_t>& shape,
                       const std::vector<std::vector<float>>& batches, bool binary) = 0;
  virtual std::unique_ptr<Sender> NewSender() = 0;
  // The model's cumulative statistics (all zero when they cannot be read).
  virtual ServerSplit ReadStats() = 0;
};

// --- HTTP (libcurl; one keep-alive connection per sender) ---------------------------------------

size_t Sink(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

struct Http {
  Http() : curl(curl_easy_init()) {}
  ~Http() { curl_easy_cleanup(curl); }
  Http(const Http&) = delete;
  Http& operator=(const Http&) = delete;
  // Returns the HTTP status (0 on a transport error).
  long Request(const std::string& url, const std::string* body, const curl_slist* headers,
               std::string* out) {
    out->clear();
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Sink);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    if (body != nullptr) {
      curl_easy_setopt(curl, CURLOPT_POST, 1L);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
    } else {
      curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    }
    if (curl_easy_perform(curl) != CURLE_OK) return 0;
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    return status;
  }
  // The last request's wait for its response, in seconds: from the moment the transfer began
  // (connection ready, request about to be sent) to the first byte of the response. Includes the
  // upload, which libcurl 7.88 cannot time on its own.
  double ResponseWait() const {
    curl_off_t pre = 0, first = 0;
    curl_easy_getinfo(curl, CURLINFO_PRETRANSFER_TIME_T, &pre);
    curl_easy_getinfo(curl, CURLINFO_STARTTRANSFER_TIME_T, &first);
    return static_cast<double>(std::max<curl_off_t>(0, first - pre)) / 1e6;
  }
  CURL* curl;
};

class HttpSender final : public Sender {
 public:
  HttpSender(const std::string& url, const std::vector<std::string>& bodies,
             const std::vector<std::string>& header_lines)
      : url_(url), bodies_(bodies) {
    for (const auto& line : header_lines) headers_ = curl_slist_append(headers_, line.c_str());
    headers_ = curl_slist_append(headers_, "Expect:");
  }
  ~HttpSender() override { curl_slist_free_all(headers_); }

  Outcome Send(size_t request) override {
    const long status = http_.Request(url_, &bodies_[request % bodies_.size()], headers_, &out_);
    if (status == 503) return Outcome::kRefused;
    return status == 200 ? Outcome::kOk : Outcome::kError;
  }
  double ResponseWait() const override { return http_.ResponseWait(); }

 private:
  Http http_;
  const std::string url_;
  const std::vector<std::string>& bodies_;
  curl_slist* headers_ = nullptr;
  std::string out_;
};

class HttpTarget final : public Target {
 public:
  HttpTarget(std::string url, std::string model) : url_(std::move(url)), model_(std::move(model)) {}

  Result<InputSpec> ReadInput() override {
    std::string body;
    if (http_.Request(url_ + "/v2/models/" + model_, nullptr, nullptr, &body) != 200) {
      return UnavailableError("cannot read the metadata of model '" + model_ + "' at " + url_ +
                              ": " + body);
    }
    auto meta = json::parse(body, nullptr, false);
    if (!meta.is_object() || !meta.contains("inputs") || meta["inputs"].size() != 1 ||
        meta["inputs"][0]["datatype"] != "FP32") {
      return NotOneFp32Input(model_);
    }
    const auto& in = meta["inputs"][0];
    return InputSpec{in["name"].get<std::string>(), in["shape"].get<std::vector<int64_t>>()};
  }

  void Prepare(const std::string& input, const std::vector<int64_t>& shape,
               const std::vector<std::vector<float>>& batches, bool binary) override {
    path_ = "/v2/models/" + model_ + "/infer";
    for (const auto& data : batches) {
      json req = {{"inputs", {{{"name", input}, {"shape", shape}, {"datatype", "FP32"}}}}};
      if (binary) {
        req["inputs"][0]["parameters"] = {{"binary_data_size", data.size() * sizeof(float)}};
        req["parameters"] = {{"binary_data_output", true}};
        const std::string h = req.dump();
        std::string b = h;
        b.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
        bodies_.push_back(b);
        // Every body's JSON header has the same length (same shape, same sizes).
        if (header_lines_.empty()) {
          header_lines_.push_back("Inference-Header-Content-Length: " + std::to_string(h.size()));
          header_lines_.push_back("Content-Type: application/octet-stream");
        }
      } else {
        req["inputs"][0]["data"] = data;
        bodies_.push_back(req.dump());
        if (header_lines_.empty()) header_lines_.push_back("Content-Type: application/json");
      }
    }
  }

  // Image mode: every file of `folder` is a request body for /predict.
  Status PrepareImages(const std::string& folder) {
    path_ = "/predict?model=" + model_;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(folder, ec)) {
      if (!e.is_regular_file(ec)) continue;
      std::ifstream in(e.path(), std::ios::binary);
      bodies_.emplace_back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
    if (bodies_.empty()) return InvalidArgumentError("--images '" + folder + "' holds no files");
    header_lines_.push_back("Content-Type: image/png");
    return Status::Ok();
  }

  std::unique_ptr<Sender> NewSender() override {
    return std::make_unique<HttpSender>(url_ + path_, bodies_, header_lines_);
  }

  ServerSplit ReadStats() override {
    std::string body;
    ServerSplit s;
    if (http_.Request(url_ + "/v2/models/" + model_ + "/stats", nullptr, nullptr, &body) != 200)
      return s;
    auto j = json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("model_stats")) return s;
    for (const auto& m : j["model_stats"]) {
      const auto& st = m["inference_stats"];
      s.count += st["success"]["count"].get<double>();
      s.queue_ns += st["queue"]["ns"].get<double>();
      s.input_ns += st["compute_input"]["ns"].get<double>();
      s.infer_ns += st["compute_infer"]["ns"].get<double>();
      s.output_ns += st["compute_output"]["ns"].get<double>();
    }
    return s;
  }

 private:
  const std::string url_, model_;
  Http http_;  // metadata and statistics, from the measuring thread
  std::string path_;
  std::vector<std::string> bodies_;
  std::vector<std::string> header_lines_;
};

// --- gRPC (Triton's GRPCInferenceService; one channel, so one connection, per sender) -----------

constexpr auto kGrpcDeadline = std::chrono::seconds(60);

std::shared_ptr<grpc::Channel> NewChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  // A connection of its own, as each HTTP sender has (channels share connections otherwise).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

class GrpcSender final : public Sender {
 public:
  GrpcSender(const std::string& address, const std::vector<inference::ModelInferRequest>& requests)
      : stub_(inference::GRPCInferenceService::NewStub(NewChannel(address))),
        requests_(requests) {}

  Outcome Send(size_t request) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kGrpcDeadline);
    inference::ModelInferResponse response;
    const auto t0 = Clock::now();
    const auto& req = requests_[request % requests_.size()];
    const grpc::Status s = stub_->ModelInfer(&ctx, req, &response);
    wait_ = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s.ok()) return Outcome::kOk;
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
        s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      return Outcome::kRefused;
    }
    return Outcome::kError;
  }
  // The whole call: the synchronous client does not show its send and receive apart.
  double ResponseWait() const override { return wait_; }

 private:
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
  const std::vector<inference::ModelInferRequest>& requests_;
  double wait_ = 0;
};

class GrpcTarget final : public Target {
 public:
  GrpcTarget(std::string address, std::string model)
      : address_(std::move(address)),
        model_(std::move(model)),
        stub_(inference::GRPCInferenceService::NewStub(NewChannel(address_))) {}

  Result<InputSpec> ReadInput() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    inference::ModelMetadataRequest req;
    req.set_name(model_);
    inference::ModelMetadataResponse meta;
    const grpc::Status s = stub_->ModelMetadata(&ctx, req, &meta);
    if (!s.ok()) {
      return UnavailableError("cannot read the metadata of model '" + model_ + "' at " +
                              address_ + " (gRPC): " + s.error_message());
    }
    if (meta.inputs_size() != 1 || meta.inputs(0).datatype() != "FP32") {
      return NotOneFp32Input(model_);
    }
    return InputSpec{meta.inputs(0).name(),
                     {meta.inputs(0).shape().begin(), meta.inputs(0).shape().end()}};
  }

  void Prepare(const std::string& input, const std::vector<int64_t>& shape,
               const std::vector<std::vector<float>>& batches, bool binary) override {
    for (const auto& data : batches) {
      inference::ModelInferRequest req;
      req.set_model_name(model_);
      auto* tensor = req.add_inputs();
      tensor->set_name(input);
      tensor->set_datatype("FP32");
      for (int64_t d : shape) tensor->add_shape(d);
      if (binary) {
        req.add_raw_input_contents(reinterpret_cast<const char*>(data.data()),
                                   data.size() * sizeof(float));
      } else {
        tensor->mutable_contents()->mutable_fp32_contents()->Add(data.begin(), data.end());
      }
      requests_.push_back(std::move(req));
    }
  }

  std::unique_ptr<Sender> NewSender() override {
    return std::make_unique<GrpcSender>(address_, requests_);
  }

  ServerSplit ReadStats() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    inference::ModelStatisticsRequest req;
    req.set_name(model_);
    inference::ModelStatisticsResponse res;
    ServerSplit s;
    if (!stub_->ModelStatistics(&ctx, req, &res).ok()) return s;
    for (const auto& m : res.model_stats()) {
      const auto& st = m.inference_stats();
      s.count += static_cast<double>(st.success().count());
      s.queue_ns += static_cast<double>(st.queue().ns());
      s.input_ns += static_cast<double>(st.compute_input().ns());
      s.infer_ns += static_cast<double>(st.compute_infer().ns());
      s.output_ns += static_cast<double>(st.compute_output().ns());
    }
    return s;
  }

 private:
  const std::string address_, model_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;  // metadata and statistics
  std::vector<inference::ModelInferRequest> requests_;
};

// The target of `a`, its requests prepared.
Result<std::unique_ptr<Target>> Connect(const Options& a) {
  if (a.protocol != "http" && a.protocol != "grpc") {
    return InvalidArgumentError("protocol '" + a.protocol + "': expected http or grpc");
  }
  if (a.mode == "image") {
    if (a.protocol != "http") {
      return InvalidArgumentError("--mode image uploads to /predict, which is HTTP only");
    }
    if (a.images.empty()) return InvalidArgumentError("--mode image needs --images");
    auto http = std::make_unique<HttpTarget>(a.url, a.model);
    KILN_RETURN_IF_ERROR(http->PrepareImages(a.images));
    return std::unique_ptr<Target>(std::move(http));
  }
  std::unique_ptr<Target> target;
  if (a.protocol == "grpc") {
    if (a.url.find("://") != std::string::npos) {
      return InvalidArgumentError("gRPC takes host:port (e.g. 127.0.0.1:8001), not '" + a.url +
                                  "'");
    }
    target = std::make_unique<GrpcTarget>(a.url, a.model);
  } else {
    target = std::make_unique<HttpTarget>(a.url, a.model);
  }
  KILN_ASSIGN_OR_RETURN(InputSpec in, target->ReadInput());
  std::vector<int64_t> shape = in.shape;
  int64_t elements = 1;
  for (auto& d : shape) {
    if (d == -1) d = a.batch_size;
    elements *= d;
  }
  const size_t sample = static_cast<size_t>(elements / std::max<int64_t>(1, a.batch_size));
  for (const auto& x : a.inputs) {
    if (x.size() != sample) {
      return InvalidArgumentError("an input sample holds " + std::to_string(x.size()) +
                                  " values; model '" + a.model + "' takes " +
                                  std::to_string(sample) + " per sample");
    }
  }
  // Without inputs, one request of seeded noise; with them, a request per batch_size samples in
  // turn (at most 256 requests; the samples wrap around).
  std::vector<std::vector<float>> batches;
  if (a.inputs.empty()) {
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> data(static_cast<size_t>(elements));
    for (auto& x : data) x = dist(rng);
    batches.push_back(std::move(data));
  } else {
    const size_t n = std::min<size_t>(
        256, std::max<size_t>(1, a.inputs.size() / static_cast<size_t>(a.batch_size)));
    for (size_t i = 0, next = 0; i < n; ++i) {
      std::vector<float> data;
      data.reserve(static_cast<size_t>(elements));
      for (int64_t k = 0; k < a.batch_size; ++k, ++next) {
        const auto& x = a.inputs[next % a.inputs.size()];
        data.insert(data.end(), x.begin(), x.end());
      }
      batches.push_back(std::move(data));
    }
  }
  target->Prepare(in.name, shape, batches, a.mode == "binary");
  return target;
}

}  // namespace

Status Run(const Options& options) { return Measure(options).status(); }

Result<std::vector<LevelResult>> Measure(const Options& a) {
  std::vector<LevelResult> results;
  const bool rate_mode = a.rate_mode;
  const bool from_send = a.latency_from == "send";
  if (a.levels.empty()) return InvalidArgumentError("no load levels to measure");
  if (a.latency_from != "due" && a.latency_from != "send") {
    return InvalidArgumentError("latency_from '" + a.latency_from + "': expected due or send");
  }
  auto stop_requested = [&a] { return a.stop && a.stop(); };
  curl_global_init(CURL_GLOBAL_ALL);
  KILN_ASSIGN_OR_RETURN(std::unique_ptr<Target> target, Connect(a));
  const int64_t per_request = a.mode == "image" ? 1 : a.batch_size;
  // Rewritten (atomically) after every level, so an interrupted sweep keeps the finished rows.
  std::ostringstream csv;
  if (!a.csv.empty()) {
    csv << (rate_mode ? "Request Rate" : "Concurrency")
        << ",Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
           "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
           "p50 latency,p90 latency,p95 latency,p99 latency,request/response,response wait\n";
  }
  if (a.out != nullptr) {
    std::fprintf(a.out, "%-12s %12s %10s %10s %10s %10s %10s %10s %8s %8s%s\n",
                 rate_mode ? "request/s" : "concurrency", "infer/s", "p50 ms", "p90 ms", "p95 ms",
                 "p99 ms", "queue ms", "compute ms", "errors", "refused",
                 rate_mode ? "  late" : "");
  }
  for (double level : a.levels) {
    if (stop_requested()) return CancelledError("interrupted");
    std::mutex mu;
    std::vector<double> latencies;  // seconds, current window
    double wait_sum = 0;            // seconds, the current window's response waits added up
    // Refused (HTTP 503, gRPC UNAVAILABLE / RESOURCE_EXHAUSTED: queue full, admission budget,
    // shutting down), with their latencies.
    std::vector<double> refused_latencies;
    std::atomic<int64_t> errors{0}, late{0}, sent{0}, refused{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    // Rate mode: each sender takes the next request's index and due time together; the due
    // times advance by 1/rate or by exponential gaps (Poisson arrivals).
    std::mutex schedule_mu;
    size_t next_request = 0;
    double next_due_s = 0;  // seconds after `begin`
    std::mt19937_64 arrivals(42);
    std::exponential_distribution<double> gaps(level);
    const auto begin = Clock::now() + std::chrono::milliseconds(20);
    auto take_next = [&]() -> std::pair<size_t, Clock::time_point> {
      std::lock_guard l(schedule_mu);
      const auto due = begin + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(next_due_s));
      next_due_s += a.distribution == "poisson" ? gaps(arrivals) : 1.0 / level;
      return {next_request++, due};
    };
    const int senders = rate_mode ? a.max_threads : static_cast<int>(level);
    for (int t = 0; t < senders; ++t) {
      clients.emplace_back([&, t] {
        const std::unique_ptr<Sender> sender = target->NewSender();
        size_t next = static_cast<size_t>(t);
        while (!stop && !stop_requested()) {
          Clock::time_point t0;
          if (rate_mode) {
            const auto [i, due] = take_next();
            t0 = due;
            // Sleep in short steps so that the end of a level is not held up.
            while (Clock::now() < t0 && !stop) {
              std::this_thread::sleep_until(
                  std::min(t0, Clock::now() + std::chrono::milliseconds(50)));
            }
            if (stop) break;
            const auto sent_at = Clock::now();
            if (sent_at - t0 > std::chrono::milliseconds(1)) ++late;
            if (from_send) t0 = sent_at;
            next = i;
          } else {
            t0 = Clock::now();
          }
          ++sent;
          const Outcome outcome = sender->Send(next++);
          const double s = std::chrono::duration<double>(Clock::now() - t0).count();
          if (outcome == Outcome::kRefused) {
            ++refused;
            std::lock_guard l(mu);
            refused_latencies.push_back(s);
            continue;
          }
          if (outcome == Outcome::kError) {
            ++errors;
            continue;
          }
          const double wait = sender->ResponseWait();
          std::lock_guard l(mu);
          latencies.push_back(s);
          wait_sum += wait;
        }
      });
    }
    // Windows until the last three agree within --stability percent (throughput and p99). The
    // windows are contiguous: each starts where the previous one was cut, and the server's
    // statistics are read at every cut.
    std::vector<double> rates, p99s;
    std::vector<std::vector<double>> windows;  // each measured window's sorted latencies
    std::vector<double> window_secs, window_waits;
    std::vector<ServerSplit> cuts;  // the server's statistics at the end of every window
    bool stable = false;
    auto cut = Clock::now();
    for (int w = 0; w < a.max_windows && !stop_requested(); ++w) {
      const auto start = cut;
      std::this_thread::sleep_until(start + std::chrono::milliseconds(a.window_ms));
      std::vector<double> window;
      {
        std::lock_guard l(mu);
        window.swap(latencies);
        window_waits.push_back(wait_sum);
        wait_sum = 0;
      }
      cut = Clock::now();
      const double secs = std::chrono::duration<double>(cut - start).count();
      cuts.push_back(target->ReadStats());  // window 0 warms up: its cut opens 1
      if (w == 0) {
        window_waits.clear();
        continue;
      }
      rates.push_back(static_cast<double>(window.size() * static_cast<size_t>(per_request)) / secs);
      std::sort(window.begin(), window.end());
      p99s.push_back(QuantileOfSorted(window, 0.99));
      windows.push_back(std::move(window));
      window_secs.push_back(secs);
      if (rates.size() >= 3) {
        auto within = [&](const std::vector<double>& v) {
          const size_t n = v.size();
          const double mean = (v[n - 1] + v[n - 2] + v[n - 3]) / 3;
          for (size_t i = n - 3; i < n; ++i) {
            if (mean <= 0 || std::fabs(v[i] - mean) / mean * 100 > a.stability) return false;
          }
          return true;
        };
        if (within(rates) && within(p99s)) {
          stable = true;
          break;
        }
      }
    }
    stop = true;
    for (auto& t : clients) t.join();
    if (windows.empty()) break;
    // The report merges the last (up to) three windows the way perf_analyzer merges its stable
    // ones: throughput is their requests over their time, the percentiles and the average are
    // over their latencies pooled, and the server's split is over the same stretch of time.
    const size_t k = std::min<size_t>(3, windows.size());
    std::vector<double> pooled;
    double pooled_secs = 0, pooled_wait = 0;
    for (size_t i = windows.size() - k; i < windows.size(); ++i) {
      pooled.insert(pooled.end(), windows[i].begin(), windows[i].end());
      pooled_secs += window_secs[i];
      pooled_wait += window_waits[i];
    }
    std::sort(pooled.begin(), pooled.end());
    double sum = 0;
    for (double x : pooled) sum += x;
    const double throughput =
        static_cast<double>(pooled.size() * static_cast<size_t>(per_request)) / pooled_secs;
    const double p50 = QuantileOfSorted(pooled, 0.50), p90 = QuantileOfSorted(pooled, 0.90);
    const double p95 = QuantileOfSorted(pooled, 0.95), p99 = QuantileOfSorted(pooled, 0.99);
    // cuts has one entry per window including the warm-up: the measured window i (0-based) ran
    // from cuts[i] to cuts[i + 1].
    const ServerSplit& before = cuts[cuts.size() - 1 - k];
    const ServerSplit& after = cuts.back();
    const double requests = std::max(1.0, after.count - before.count);
    const double queue_us = (after.queue_ns - before.queue_ns) / requests / 1e3;
    const double input_us = (after.input_ns - before.input_ns) / requests / 1e3;
    const double infer_us = (after.infer_ns - before.infer_ns) / requests / 1e3;
    const double output_us = (after.output_ns - before.output_ns) / requests / 1e3;
    const double avg_us = pooled.empty() ? 0 : sum / static_cast<double>(pooled.size()) * 1e6;
    const double wait_us =
        pooled.empty() ? 0 : pooled_wait / static_cast<double>(pooled.size()) * 1e6;
    std::string late_column;
    if (rate_mode) {
      late_column =
          "  " + std::to_string(sent.load() > 0 ? 100 * late.load() / sent.load() : 0) + "%";
    }
    LevelResult r;
    r.level = level;
    r.throughput = throughput;
    r.p50_ms = p50 * 1e3;
    r.p90_ms = p90 * 1e3;
    r.p95_ms = p95 * 1e3;
    r.p99_ms = p99 * 1e3;
    r.avg_ms = avg_us / 1e3;
    r.queue_ms = queue_us / 1e3;
    r.compute_ms = (input_us + infer_us + output_us) / 1e3;
    r.sent = sent.load();
    r.errors = errors.load();
    r.refused = refused.load();
    r.late = late.load();
    r.stable = stable;
    results.push_back(r);
    if (a.out != nullptr) {
      std::fprintf(a.out,
                   "%-12g %12.1f %10.2f %10.2f %10.2f %10.2f %10.2f %10.2f %8lld %8lld%s%s\n",
                   level, throughput, p50 * 1e3, p90 * 1e3, p95 * 1e3, p99 * 1e3, queue_us / 1e3,
                   (input_us + infer_us + output_us) / 1e3,
                   static_cast<long long>(errors.load()), static_cast<long long>(refused.load()),
                   late_column.c_str(), stable ? "" : "  (not stable)");
      if (!refused_latencies.empty()) {
        std::lock_guard l(mu);
        std::sort(refused_latencies.begin(), refused_latencies.end());
        std::fprintf(
            a.out,
            "  refused (%s): %lld of %lld sent (%.1f%%), answered in p50 %.2f ms, p99 %.2f ms\n",
            a.protocol == "grpc" ? "UNAVAILABLE / RESOURCE_EXHAUSTED" : "503",
            static_cast<long long>(refused.load()), static_cast<long long>(sent.load()),
            100.0 * static_cast<double>(refused.load()) /
                static_cast<double>(std::max<int64_t>(1, sent.load())),
            QuantileOfSorted(refused_latencies, 0.50) * 1e3,
            QuantileOfSorted(refused_latencies, 0.99) * 1e3);
      }
      if (rate_mode && sent.load() > 0 && late.load() * 10 > sent.load()) {
        std::fprintf(a.out,
                     "  note: %lld of %lld requests left more than 1 ms after their due time: the "
                     "%d sender threads cannot keep up (the server is saturated or --max-threads "
                     "is too low); latencies count from the %s time\n",
                     static_cast<long long>(late.load()), static_cast<long long>(sent.load()),
                     a.max_threads, from_send ? "send" : "due");
      }
      std::fflush(a.out);
    }
    if (!a.csv.empty()) {
      const double server_us = queue_us + input_us + infer_us + output_us;
      csv << level << "," << throughput << ",0," << std::max(0.0, avg_us - server_us) << ","
          << queue_us << "," << input_us << "," << infer_us << "," << output_us << ",0,"
          << p50 * 1e6 << "," << p90 * 1e6 << "," << p95 * 1e6 << "," << p99 * 1e6 << ","
          << std::max(0.0, avg_us - wait_us) << "," << wait_us << "\n";
      KILN_RETURN_IF_ERROR(WriteFileAtomic(a.csv, csv.str()));
    }
  }
  if (stop_requested()) return CancelledError("interrupted");
  return results;
}

}  // namespace kiln::loadgen
