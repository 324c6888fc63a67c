// The load generator (see loadgen.h).
//
// In rate mode a request's latency runs from the time it was scheduled to be sent, not from when
// a sender thread got to it: if the senders fall behind, the wait shows in the latency (no
// "coordinated omission"), and the requests that left late are counted.
#include "kiln/bench/loadgen/loadgen.h"

#include <curl/curl.h>

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

size_t Sink(char* data, size_t size, size_t n, void* out) {
  static_cast<std::string*>(out)->append(data, size * n);
  return size * n;
}

struct Http {
  Http() : curl(curl_easy_init()) {}
  ~Http() { curl_easy_cleanup(curl); }
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
  double ResponseWait() {
    curl_off_t pre = 0, first = 0;
    curl_easy_getinfo(curl, CURLINFO_PRETRANSFER_TIME_T, &pre);
    curl_easy_getinfo(curl, CURLINFO_STARTTRANSFER_TIME_T, &first);
    return static_cast<double>(std::max<curl_off_t>(0, first - pre)) / 1e6;
  }
  CURL* curl;
};

struct ServerSplit {
  double count = 0, queue_ns = 0, input_ns = 0, infer_ns = 0, output_ns = 0;
};

ServerSplit ReadStats(Http& http, const std::string& base, const std::string& model) {
  std::string body;
  ServerSplit s;
  if (http.Request(base + "/v2/models/" + model + "/stats", nullptr, nullptr, &body) != 200)
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

}  // namespace

Status Run(const Options& options) { return Measure(options).status(); }

Result<std::vector<LevelResult>> Measure(const Options& a) {
  std::vector<LevelResult> results;
  const bool rate_mode = a.rate_mode;
  if (a.levels.empty()) return InvalidArgumentError("no load levels to measure");
  if (a.mode == "image" && a.images.empty())
    return InvalidArgumentError("--mode image needs --images");
  auto stop_requested = [&a] { return a.stop && a.stop(); };
  curl_global_init(CURL_GLOBAL_ALL);
  Http http;
  std::string body;
  // The request every client sends (one prepared body per mode; image mode cycles files).
  std::vector<std::string> bodies;
  std::vector<std::string> header_lines;
  std::string path = "/v2/models/" + a.model + "/infer";
  if (a.mode == "image") {
    path = "/predict?model=" + a.model;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(a.images, ec)) {
      if (!e.is_regular_file(ec)) continue;
      std::ifstream in(e.path(), std::ios::binary);
      bodies.emplace_back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
    if (bodies.empty()) return InvalidArgumentError("--images '" + a.images + "' holds no files");
    header_lines.push_back("Content-Type: image/png");
  } else {
    if (http.Request(a.url + "/v2/models/" + a.model, nullptr, nullptr, &body) != 200) {
      return UnavailableError("cannot read the metadata of model '" + a.model + "' at " + a.url +
                              ": " + body);
    }
    auto meta = json::parse(body, nullptr, false);
    if (!meta.is_object() || !meta.contains("inputs") || meta["inputs"].size() != 1 ||
        meta["inputs"][0]["datatype"] != "FP32") {
      return UnimplementedError("model '" + a.model + "' must have one FP32 input");
    }
    const auto& in = meta["inputs"][0];
    std::vector<int64_t> shape = in["shape"].get<std::vector<int64_t>>();
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
    // Without inputs, one body of seeded noise; with them, a body per batch_size samples in turn
    // (at most 256 bodies; the samples wrap around).
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
    for (const auto& data : batches) {
      json req = {{"inputs", {{{"name", in["name"]}, {"shape", shape}, {"datatype", "FP32"}}}}};
      if (a.mode == "binary") {
        req["inputs"][0]["parameters"] = {{"binary_data_size", data.size() * sizeof(float)}};
        req["parameters"] = {{"binary_data_output", true}};
        const std::string h = req.dump();
        std::string b = h;
        b.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
        bodies.push_back(b);
        // Every body's JSON header has the same length (same shape, same sizes).
        if (header_lines.empty()) {
          header_lines.push_back("Inference-Header-Content-Length: " + std::to_string(h.size()));
          header_lines.push_back("Content-Type: application/octet-stream");
        }
      } else {
        req["inputs"][0]["data"] = data;
        bodies.push_back(req.dump());
        if (header_lines.empty()) header_lines.push_back("Content-Type: application/json");
      }
    }
  }
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
    // Answered 503 (refused: queue full, admission budget, shutting down), with their latencies.
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
        Http h;
        curl_slist* headers = nullptr;
        for (const auto& line : header_lines) headers = curl_slist_append(headers, line.c_str());
        headers = curl_slist_append(headers, "Expect:");
        std::string out;
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
            if (Clock::now() - t0 > std::chrono::milliseconds(1)) ++late;
            next = i;
          } else {
            t0 = Clock::now();
          }
          const std::string& b = bodies[next++ % bodies.size()];
          ++sent;
          const long status = h.Request(a.url + path, &b, headers, &out);
          const double s = std::chrono::duration<double>(Clock::now() - t0).count();
          if (status == 503) {
            ++refused;
            std::lock_guard l(mu);
            refused_latencies.push_back(s);
            continue;
          }
          if (status != 200) {
            ++errors;
            continue;
          }
          const double wait = h.ResponseWait();
          std::lock_guard l(mu);
          latencies.push_back(s);
          wait_sum += wait;
        }
        curl_slist_free_all(headers);
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
      cuts.push_back(ReadStats(http, a.url, a.model));  // window 0 warms up: its cut opens 1
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
            "  refused (503): %lld of %lld sent (%.1f%%), answered in p50 %.2f ms, p99 %.2f ms\n",
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
                     "is too low); latencies count from the due time\n",
                     static_cast<long long>(late.load()), static_cast<long long>(sent.load()),
                     a.max_threads);
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
