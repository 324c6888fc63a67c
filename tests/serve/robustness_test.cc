// `kiln serve` under the faults a deployment meets: SIGTERM with requests at every stage, an
// admission budget that is spent, a corrupt model appearing in a polled repository, slow
// clients, and an engine called with a request that does not fit.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "kiln/serve/engine/engine.h"
#include "serve_client.h"

namespace kiln::serve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::Http;
using testing::HttpRequest;
using testing::InferJson;
using testing::MakeRepository;
using testing::RandomInput;
using testing::ServerProcess;
using Clock = std::chrono::steady_clock;

HttpRequest Post(std::string body) {
  HttpRequest r;
  r.method = "POST";
  r.body = std::move(body);
  return r;
}

int PortOf(const std::string& url) { return std::stoi(url.substr(url.rfind(':') + 1)); }

// A raw TCP connection, for requests sent in pieces at chosen moments.
class Connection {
 public:
  explicit Connection(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Connection() { close(fd_); }
  bool connected() const { return connected_; }
  bool Send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // One HTTP response (headers + Content-Length body), or what came before the peer closed.
  std::string ReadResponse(int timeout_ms = 30000) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      const size_t end = buffer_.find("\r\n\r\n");
      if (end != std::string::npos) {
        size_t length = 0;
        const std::string head = buffer_.substr(0, end);
        std::string lower = head;
        for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        const size_t cl = lower.find("content-length:");
        if (cl != std::string::npos) length = std::stoul(head.substr(cl + 15));
        if (buffer_.size() >= end + 4 + length) {
          std::string out = buffer_.substr(0, end + 4 + length);
          buffer_.erase(0, end + 4 + length);
          return out;
        }
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return buffer_;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return buffer_;
      char chunk[65536];
      const ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) return buffer_;
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

std::string InferRequestBytes(const std::string& model, const std::string& body,
                              bool keep_alive = true) {
  return "POST /v2/models/" + model + "/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
         "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n" + (keep_alive ? "" : "Connection: close\r\n") + "\r\n" + body;
}

// Requests queued or running in model `queue`, from the metrics port (never refused).
int64_t Pending(const ServerProcess& server) {
  auto r = Http(server.metrics_url() + "/metrics");
  const std::string series = "nv_inference_pending_request_count{model=\"queue\",version=\"1\"} ";
  const size_t at = r.body.find(series);
  return at == std::string::npos ? -1 : std::stoll(r.body.substr(at + series.size()));
}

// Two requests to the queue model, which holds them up to 5 s for a batch; returns once both
// are queued (or after 5 s), with their HTTP statuses to come.
std::vector<std::future<long>> HoldTwoInTheQueue(const ServerProcess& server,
                                                 const std::string& body) {
  std::vector<std::future<long>> held;
  for (int i = 0; i < 2; ++i) {
    held.push_back(std::async(std::launch::async, [&server, body] {
      return Http(server.url() + "/v2/models/queue/infer", Post(body)).status;
    }));
  }
  for (int i = 0; i < 500 && Pending(server) < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return held;
}

// SIGTERM with requests at every stage: queued in the engine, running, sent in full but not
// yet read, half sent, and a request sent during the drain on a connection that was already
// open. Every one is answered 200; each answer after the signal says Connection: close; a new
// connection is refused; the exit code is 0.
TEST(DrainTest, EveryRequestAlreadyOnItsWayIsAnswered) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {"--drain-timeout", "30"});
  ASSERT_TRUE(server.started()) << server.Log();
  const int port = PortOf(server.url());
  const std::string one = InferJson(RandomInput(1, 3), 1);
  const std::string four = InferJson(RandomInput(4, 5), 4);

  // Queued: the queue model holds two requests up to 5 s for a batch.
  auto queued = HoldTwoInTheQueue(server, one);
  ASSERT_GE(Pending(server), 2);

  // Running: clients that keep sending on their keep-alive connections until they are closed.
  std::atomic<bool> stop{false};
  std::atomic<int> running_ok{0}, running_bad{0};
  std::vector<std::thread> loaders;
  for (int t = 0; t < 3; ++t) {
    loaders.emplace_back([&] {
      Connection c(port);
      while (!stop && c.connected()) {
        if (!c.Send(InferRequestBytes("cifar", four))) break;
        const std::string res = c.ReadResponse();
        if (res.empty()) break;  // closed after its last answer: fine
        if (res.rfind("HTTP/1.1 200", 0) == 0) {
          ++running_ok;
        } else {
          ++running_bad;
        }
        if (res.find("Connection: close") != std::string::npos) break;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  // Idle keep-alive connection (one request answered), half-sent and fully sent requests.
  Connection idle(port), half(port), sent(port);
  ASSERT_TRUE(idle.connected() && half.connected() && sent.connected());
  ASSERT_TRUE(idle.Send(InferRequestBytes("cifar", one)));
  ASSERT_EQ(idle.ReadResponse().rfind("HTTP/1.1 200", 0), 0U);
  const std::string half_bytes = InferRequestBytes("cifar", one, false);
  ASSERT_TRUE(half.Send(half_bytes.substr(0, half_bytes.size() / 2)));
  ASSERT_TRUE(sent.Send(InferRequestBytes("cifar", one, false)));

  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  // After the signal: the rest of the half-sent request, and a new request on the idle one.
  ASSERT_TRUE(half.Send(half_bytes.substr(half_bytes.size() / 2)));
  ASSERT_TRUE(idle.Send(InferRequestBytes("cifar", one)));
  Connection late(port);
  EXPECT_FALSE(late.connected()) << "a new connection was accepted during the drain";

  for (auto* c : {&sent, &half, &idle}) {
    const std::string res = c->ReadResponse();
    EXPECT_EQ(res.rfind("HTTP/1.1 200", 0), 0U) << res.substr(0, 300);
    EXPECT_NE(res.find("Connection: close"), std::string::npos) << res.substr(0, 300);
  }
  for (auto& q : queued) EXPECT_EQ(q.get(), 200);
  stop = true;
  for (auto& t : loaders) t.join();
  EXPECT_GT(running_ok.load(), 0);
  EXPECT_EQ(running_bad.load(), 0);
  EXPECT_EQ(server.Wait(), 0) << server.Log();
  EXPECT_EQ(server.Log().find("not answered"), std::string::npos) << server.Log();
}

// A second signal during the drain stops at once, still with exit code 0.
TEST(DrainTest, SecondSignalStopsAtOnce) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  const std::string one = InferJson(RandomInput(1, 3), 1);
  auto queued = HoldTwoInTheQueue(server, one);
  ASSERT_GE(Pending(server), 2);
  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
  EXPECT_NE(server.Log().find("second signal"), std::string::npos) << server.Log();
  for (auto& q : queued) q.get();  // cut: any answer or none
}

// The admission budget: once it is spent, a request is answered 503 + Retry-After at once
// (before its body is read), probes and scrapes still answer, and service is normal again as
// soon as the budget is given back.
TEST(AdmissionTest, OverBudgetIsRefusedAtTheDoorAndProbesStillAnswer) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {"--max-inflight-requests", "2"});
  ASSERT_TRUE(server.started()) << server.Log();
  const std::string one = InferJson(RandomInput(1, 3), 1);
  auto held = HoldTwoInTheQueue(server, one);
  ASSERT_GE(Pending(server), 2);
  // A body far larger than anything the client sends first: the answer comes before it is read.
  Connection c(PortOf(server.url()));
  const std::string big = InferJson(RandomInput(8, 4), 8);
  ASSERT_TRUE(c.Send(InferRequestBytes("cifar", big).substr(0, 300)));
  const std::string refused = c.ReadResponse(5000);
  EXPECT_EQ(refused.rfind("HTTP/1.1 503", 0), 0U) << refused;
  EXPECT_NE(refused.find("Retry-After: 1"), std::string::npos) << refused;
  EXPECT_NE(refused.find("admission budget"), std::string::npos) << refused;
  auto full = Http(server.url() + "/v2/models/cifar/infer", Post(one));
  EXPECT_EQ(full.status, 503) << full.body;
  EXPECT_EQ(json::parse(full.body).contains("error"), true);
  EXPECT_EQ(Http(server.url() + "/v2/health/live").status, 200);
  EXPECT_EQ(Http(server.url() + "/v2/health/ready").status, 200);
  auto metrics = Http(server.metrics_url() + "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("kiln_admission_rejected_total{protocol=\"http\"} 2"),
            std::string::npos);
  EXPECT_NE(metrics.body.find("kiln_inflight_requests 2"), std::string::npos);
  for (auto& h : held) EXPECT_EQ(h.get(), 200);
  EXPECT_EQ(Http(server.url() + "/v2/models/cifar/infer", Post(one)).status, 200);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// A truncated model file appears as a new version of a polled model while clients are being
// served: that version is UNAVAILABLE with the reason, version 1 goes on serving, and not one
// request fails.
TEST(FaultTest, CorruptNewVersionUnderLoadLeavesTheOldOneServing) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(),
                       {"--model-control-mode", "poll", "--repository-poll-secs", "1"});
  ASSERT_TRUE(server.started()) << server.Log();
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::string failure;
  std::mutex mu;
  std::vector<std::thread> clients;
  for (int t = 0; t < 2; ++t) {
    clients.emplace_back([&, t] {
      const std::string body = InferJson(RandomInput(2, 20 + t), 2);
      while (!stop) {
        auto r = Http(server.url() + "/v2/models/cifar/infer", Post(body));
        if (r.status == 200) {
          ++ok;
        } else {
          ++failed;
          std::lock_guard l(mu);
          failure = std::to_string(r.status) + " " + r.body + r.error;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string& good = repo->onnx;
  testing::Write(repo->path() / "cifar" / "2" / "model.onnx", good.substr(0, good.size() / 3));
  json entry;
  for (int i = 0; i < 100 && entry.is_null(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    HttpRequest index = Post("");
    for (const auto& e : json::parse(Http(server.url() + "/v2/repository/index", index).body)) {
      if (e["name"] == "cifar" && e.value("version", "") == "2") entry = e;
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // traffic after the failed load
  stop = true;
  for (auto& t : clients) t.join();
  ASSERT_FALSE(entry.is_null()) << "version 2 never appeared in the index";
  EXPECT_EQ(entry["state"], "UNAVAILABLE") << entry.dump();
  EXPECT_FALSE(entry.value("reason", "").empty()) << entry.dump();
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(failed.load(), 0) << failure;
  auto v1 = Http(server.url() + "/v2/models/cifar/versions/1/ready");
  EXPECT_EQ(v1.status, 200);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// Unloading a model takes its series off /metrics; loading it again brings them back.
TEST(MetricsTest, AnUnloadedVersionLeavesNoSeriesBehind) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {"--model-control-mode", "explicit", "--load-model", "cifar"});
  ASSERT_TRUE(server.started()) << server.Log();
  ASSERT_EQ(Http(server.url() + "/v2/models/cifar/infer", Post(InferJson(RandomInput(1, 2), 1)))
                .status,
            200);
  const std::string series = "nv_inference_request_success{model=\"cifar\",version=\"1\"} 1";
  EXPECT_NE(Http(server.metrics_url() + "/metrics").body.find(series), std::string::npos);
  ASSERT_EQ(Http(server.url() + "/v2/repository/models/cifar/unload", Post("")).status, 200);
  const std::string after = Http(server.metrics_url() + "/metrics").body;
  EXPECT_EQ(after.find("model=\"cifar\",version=\"1\""), std::string::npos) << after;
  ASSERT_EQ(Http(server.url() + "/v2/repository/models/cifar/load", Post("")).status, 200);
  EXPECT_NE(Http(server.metrics_url() + "/metrics").body.find(
                "nv_inference_request_success{model=\"cifar\",version=\"1\"} 0"),
            std::string::npos);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// The HTTP method is the client's word: unknown ones share one series, so no client can add
// series to /metrics at will.
TEST(MetricsTest, UnknownHttpMethodsShareOneSeries) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  for (const char* method : {"KILNFROB1", "KILNFROB2"}) {
    Connection c(PortOf(server.url()));
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.Send(std::string(method) + " /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"));
    const std::string answer = c.ReadResponse();
    EXPECT_EQ(answer.rfind("HTTP/1.1 405", 0), 0u) << answer;
  }
  const std::string metrics = Http(server.metrics_url() + "/metrics").body;
  EXPECT_EQ(metrics.find("KILNFROB"), std::string::npos);
  EXPECT_NE(metrics.find("method=\"other\""), std::string::npos) << metrics;
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// 1,000 slow clients each sending a byte a second do not keep another client from being served.
TEST(SlowClientTest, ThousandByteASecondClientsDoNotStopOthers) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {});
  ASSERT_TRUE(server.started()) << server.Log();
  const int port = PortOf(server.url());
  std::vector<std::unique_ptr<Connection>> slow;
  for (int i = 0; i < 1000; ++i) {
    slow.push_back(std::make_unique<Connection>(port));
    ASSERT_TRUE(slow.back()->connected()) << i;
  }
  const std::string request = InferRequestBytes("cifar", InferJson(RandomInput(1, 7), 1));
  std::atomic<bool> stop{false};
  std::thread dribble([&] {
    for (size_t at = 0; !stop && at < request.size(); ++at) {
      for (auto& c : slow) c->Send(request.substr(at, 1));
      for (int i = 0; i < 10 && !stop; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  int served = 0;
  for (int i = 0; i < 20; ++i) {
    HttpRequest r = Post(InferJson(RandomInput(1, 30 + i), 1));
    r.fresh_connection = true;
    r.timeout_ms = 10000;
    if (Http(server.url() + "/v2/models/cifar/infer", r).status == 200) ++served;
  }
  stop = true;
  dribble.join();
  EXPECT_EQ(served, 20);
  EXPECT_EQ(Http(server.url() + "/v2/health/live").status, 200);
  slow.clear();
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// Peak resident memory of a process (VmHWM), in MiB.
double PeakRssMib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

// The numbers of loadgen's result row (the line after its header).
std::vector<std::string> ResultRow(const std::string& output) {
  std::istringstream in(output);
  std::vector<std::string> row;
  bool header = false;
  for (std::string line; std::getline(in, line);) {
    if (line.find("infer/s") != std::string::npos) {
      header = true;
      continue;
    }
    if (header && !line.empty() && line[0] != ' ') {
      std::istringstream cells(line);
      for (std::string c; cells >> c;) row.push_back(c);
      break;
    }
  }
  return row;
}

// Open-loop traffic at twice the measured capacity, against a small admission budget: the
// server stays up, every request is either served or refused with 503 (nothing else fails),
// memory stays under a stated bound, and service is normal right after. The figures (offered
// and admitted rate, p99, 503 latency, peak RSS) are printed for the record.
TEST(OverloadTest, TwiceTheCapacityIsRefusedAtTheDoorAndNothingElseBreaks) {
  auto repo = MakeRepository();
  ServerProcess server(repo->path(), {"--max-inflight-requests", "16"});
  ASSERT_TRUE(server.started()) << server.Log();
  const std::string common = "loadgen -m cifar --url " + server.url() + " --window-ms 1000 ";
  auto closed = testing::RunKiln(common + "--concurrency 8 --max-windows 4", false);
  ASSERT_EQ(closed.exit_code, 0) << closed.output;
  const auto capacity_row = ResultRow(closed.output);
  ASSERT_GE(capacity_row.size(), 2U) << closed.output;
  const double capacity = std::stod(capacity_row[1]);
  ASSERT_GT(capacity, 0) << closed.output;
  const double offered = 2 * capacity;
  auto open = testing::RunKiln(common + "--request-rate " + std::to_string(offered) +
                                   " --max-threads 96 --max-windows 5",
                               false);
  ASSERT_EQ(open.exit_code, 0) << open.output;
  const auto row = ResultRow(open.output);
  ASSERT_GE(row.size(), 10U) << open.output;
  const double peak_mib = PeakRssMib(server.pid());
  std::cout << "capacity (closed loop, c=8): " << capacity << " infer/s\n"
            << "offered " << offered << " request/s (open loop):\n" << open.output
            << "server peak RSS " << peak_mib << " MiB\n";
  EXPECT_EQ(row[8], "0") << "requests that failed other than by a 503:\n" << open.output;
  // The bound: the admission budget caps what requests can hold (16 x 2 MiB bodies at most)
  // above the models and runtimes themselves (~250 MiB measured at rest).
  EXPECT_LT(peak_mib, 1024.0);
  EXPECT_EQ(Http(server.url() + "/v2/health/ready").status, 200);
  EXPECT_EQ(Http(server.url() + "/v2/models/cifar/infer", Post(InferJson(RandomInput(1, 2), 1)))
                .status,
            200);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// The engine checks what it is given, whoever calls it: a batch outside [1, max_batch_size] or
// a buffer of the wrong size fails with InvalidArgument instead of overrunning the batch buffer.
TEST(EngineTest, RequestsThatDoNotFitAreRefusedByTheEngine) {
  auto repo = MakeRepository();
  metrics::Registry registry;
  EngineOptions o;
  o.repository = repo->path().string();
  auto engine = Engine::Create(o, &registry);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  auto model = (*engine)->Find("cifar", "");
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const int64_t per = (*model)->input_elements;
  ASSERT_EQ((*model)->max_batch_size, 8);
  auto run = [&](size_t floats, int64_t batch) {
    std::promise<Status> done;
    (*engine)->Infer(*model, std::vector<float>(floats, 0.5f), batch,
                     [&](Status s, InferResult) { done.set_value(s); });
    return done.get_future().get();
  };
  EXPECT_TRUE(run(static_cast<size_t>(2 * per), 2).ok());
  for (auto [floats, batch] : std::vector<std::pair<size_t, int64_t>>{
           {static_cast<size_t>(9 * per), 9},       // over max_batch_size
           {static_cast<size_t>(100 * per), 1},     // far more data than the batch says
           {static_cast<size_t>(per) - 1, 1},       // too little
           {0, 0},                                  // empty
           {static_cast<size_t>(per), -3}}) {       // nonsense batch
    Status s = run(floats, batch);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << floats << " x " << batch << ": "
                                                      << s.ToString();
  }
  (*engine)->Shutdown();
}

}  // namespace
}  // namespace kiln::serve
