#include "kiln/serve/http_server.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sys/resource.h>
#include <thread>

#include "kiln/core/version.h"

namespace kiln::serve {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// Requests, responses, errors.

struct Response {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};
using Reply = std::function<void(Response)>;

// The one place that maps a Status to an HTTP status code.
unsigned HttpCodeFromStatus(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kInvalidArgument:
      return 400;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kAlreadyExists:
      return 409;
    case StatusCode::kResourceExhausted:
      return 413;
    case StatusCode::kUnimplemented:
      return 501;
    case StatusCode::kUnavailable:
    case StatusCode::kCancelled:
      return 503;
    case StatusCode::kInternal:
      break;
  }
  return 500;
}

Response Error(unsigned code, const std::string& message) {
  return {code, "application/json", json{{"error", message}}.dump(-1, ' ', false, json::error_handler_t::replace), {}};
}
Response Error(const Status& s) { return Error(HttpCodeFromStatus(s), s.message()); }
Response Json(const json& j, unsigned code = 200) {
  return {code, "application/json", j.dump(-1, ' ', false, json::error_handler_t::replace), {}};
}

struct Request {
  std::string method;
  std::string path;
  std::map<std::string, std::string> query;
  http::request<http::string_body> raw;
  std::string Header(std::string_view name) const {
    auto it = raw.find(beast::string_view(name.data(), name.size()));
    return it == raw.end() ? std::string() : std::string(it->value());
  }
};

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() &&
               std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(sep, start);
    parts.emplace_back(s.substr(start, end == std::string_view::npos ? s.size() - start : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return parts;
}

struct TooDeep {};

Result<json> ParseJson(std::string_view text, const HttpOptions& o) {
  if (static_cast<int64_t>(text.size()) > o.max_json_bytes) {
    return ResourceExhaustedError("JSON body of " + std::to_string(text.size()) +
                                  " bytes is over the limit of " +
                                  std::to_string(o.max_json_bytes) + " (--max-json-bytes)");
  }
  const int max_depth = o.max_json_depth;
  try {
    json::parser_callback_t cb = [max_depth](int depth, json::parse_event_t, json&) {
      if (depth > max_depth) throw TooDeep{};
      return true;
    };
    return json::parse(text.begin(), text.end(), cb);
  } catch (const TooDeep&) {
    return InvalidArgumentError("JSON nested deeper than " + std::to_string(max_depth) +
                                " levels (--max-json-depth)");
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("malformed JSON: ") + e.what());
  }
}

// Appends every number of a (possibly nested) JSON array to `out`.
Status Flatten(const json& j, std::vector<float>* out, int depth = 0) {
  if (j.is_array()) {
    for (const auto& x : j) KILN_RETURN_IF_ERROR(Flatten(x, out, depth + 1));
    return Status::Ok();
  }
  if (j.is_number()) {
    out->push_back(j.get<float>());
    return Status::Ok();
  }
  return InvalidArgumentError("tensor 'data' must hold numbers, found " +
                              std::string(j.type_name()));
}

// Softmax in double, then the indices of the k largest probabilities.
std::vector<std::pair<int64_t, double>> TopK(const float* row, int64_t classes, int64_t k) {
  const double top = *std::max_element(row, row + classes);
  std::vector<double> p(static_cast<size_t>(classes));
  double sum = 0;
  for (int64_t c = 0; c < classes; ++c) sum += p[static_cast<size_t>(c)] = std::exp(row[c] - top);
  std::vector<int64_t> order(static_cast<size_t>(classes));
  for (int64_t c = 0; c < classes; ++c) order[static_cast<size_t>(c)] = c;
  k = std::min(k, classes);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)];
  });
  std::vector<std::pair<int64_t, double>> out;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t c = order[static_cast<size_t>(i)];
    out.emplace_back(c, p[static_cast<size_t>(c)] / sum);
  }
  return out;
}

std::string Label(const ModelInfo& m, int64_t c) {
  return c < static_cast<int64_t>(m.labels.size()) ? m.labels[static_cast<size_t>(c)]
                                                   : std::to_string(c);
}

// The page's icon: a kiln (a dome with a glowing door).
constexpr std::string_view kFavicon =
    R"(<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">)"
    R"(<path d="M3 29V17a13 13 0 0 1 26 0v12z" fill="#8a4b2d"/>)"
    R"(<path d="M11 29v-7a5 5 0 0 1 10 0v7z" fill="#f5a623"/></svg>)";

// What /stats counts as an error: what an operator would call one, a request the server failed
// (5xx) or an inference a client did not get (any 4xx of /infer or /predict). A 404 for a path
// nobody serves (a browser's own probes) is a client error, not a server error.
bool IsError(const std::string& handler, unsigned code) {
  if (code >= 500) return true;
  return code >= 400 && (handler.ends_with("/infer") || handler == "/predict");
}

// Recent inference requests, for /stats (images/s and latency percentiles over the last minute).
class Window {
 public:
  void Add(double latency_s, int64_t images) {
    std::lock_guard l(mu_);
    const auto now = Clock::now();
    samples_.push_back({now, latency_s, images});
    Trim(now);
  }
  json Summary() {
    std::lock_guard l(mu_);
    const auto now = Clock::now();
    Trim(now);
    std::vector<double> lat;
    int64_t images = 0;
    for (const auto& s : samples_) {
      lat.push_back(s.latency_s);
      images += s.images;
    }
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double q) -> json {
      if (lat.empty()) return nullptr;
      size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(lat.size()))) - 1;
      return lat[std::min(i, lat.size() - 1)] * 1000.0;
    };
    const double span = samples_.empty()
                            ? 60.0
                            : std::max(1.0, std::min(60.0, std::chrono::duration<double>(
                                                               now - started_).count()));
    return {{"window_seconds", span},
            {"requests_last_minute", lat.size()},
            {"images_per_second", static_cast<double>(images) / span},
            {"latency_ms", {{"p50", pct(0.5)}, {"p90", pct(0.9)}, {"p95", pct(0.95)},
                            {"p99", pct(0.99)}}}};
  }

 private:
  struct Sample {
    Clock::time_point at;
    double latency_s;
    int64_t images;
  };
  void Trim(Clock::time_point now) {
    while (!samples_.empty() && now - samples_.front().at > std::chrono::seconds(60))
      samples_.pop_front();
    while (samples_.size() > 200000) samples_.pop_front();
  }
  std::mutex mu_;
  std::deque<Sample> samples_;
  const Clock::time_point started_ = Clock::now();
};

// ---------------------------------------------------------------------------------------------
// The server.

class Session;

class Server {
 public:
  Server(const HttpOptions& o, Engine* e, metrics::Registry* r)
      : opt_(o), engine_(e), registry_(r), pool_(static_cast<size_t>(o.worker_threads)),
        ioc_(o.network_threads) {}

  Status Run();

  // Routes one request; `reply` may be called later from any thread, exactly once.
  void Dispatch(Request req, Reply reply, bool metrics_only, std::string* handler);

  const HttpOptions& options() const { return opt_; }
  bool draining() const { return draining_.load(); }
  std::atomic<int> connections{0};
  std::atomic<int64_t> in_flight{0};
  // Connections that have not yet sent their first request (may be one in transit): a drain
  // waits for them too, so a request racing SIGTERM is answered rather than cut.
  std::atomic<int64_t> unread{0};

  void RecordHttp(const std::string& handler, const std::string& method, unsigned code,
                  double seconds) {
    registry_
        ->Histogram("http_request_duration_seconds", "HTTP request duration by handler",
                    {{"handler", handler}, {"method", method}, {"code", std::to_string(code)}},
                    metrics::DefaultLatencyBuckets())
        ->Observe(seconds);
    requests_.fetch_add(1);
    if (IsError(handler, code)) errors_.fetch_add(1);
    if (code >= 400 && code < 500) client_errors_.fetch_add(1);
  }
  void RecordInference(double seconds, int64_t images) { window_.Add(seconds, images); }

 private:
  void Accept(tcp::acceptor& a, bool metrics_only);
  void BeginDrain();

  void Infer(Request req, const std::string& model, const std::string& version, Reply reply);
  void Predict(Request req, Reply reply);
  Response Health();
  Response Stats();
  Response ModelStatsJson(const std::string& model, const std::string& version);
  Response ModelDriftJson(const std::string& model, const std::string& version);
  json DriftSummary(const std::string& model, const std::string& version);
  Response ModelMetadata(const std::string& model, const std::string& version);

  HttpOptions opt_;
  Engine* engine_;
  metrics::Registry* registry_;
  Window window_;
  std::atomic<uint64_t> requests_{0}, errors_{0}, client_errors_{0};
  std::atomic<bool> draining_{false};
  const Clock::time_point started_ = Clock::now();
  std::optional<tcp::acceptor> http_acceptor_, metrics_acceptor_;
  std::optional<net::signal_set> signals_;
  std::optional<net::steady_timer> drain_timer_;
  Clock::time_point drain_deadline_;
  net::thread_pool pool_;
  // Last member: destroyed first, with every session it still owns.
  net::io_context ioc_;

  friend class Session;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, Server* server, bool metrics_only)
      : stream_(std::move(socket)), server_(server), metrics_only_(metrics_only) {
    ++server_->connections;
    ++server_->unread;
  }
  ~Session() {
    --server_->connections;
    MarkRead();
  }

  void Start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadHeader(); });
  }

 private:
  void ReadHeader() {
    // Draining: a kept-alive connection is closed between requests; a new one still gets its
    // answer (503) so that no client sees a reset.
    if (server_->draining() && served_ > 0) return Close();
    const auto& o = server_->options();
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(o.max_header_bytes));
    parser_->body_limit(static_cast<uint64_t>(o.max_body_bytes));
    stream_.expires_after(std::chrono::seconds(o.idle_timeout_s));
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->OnHeader(ec);
                            });
  }

  void OnHeader(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    stream_.expires_after(std::chrono::seconds(server_->options().read_timeout_s));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec2, size_t) {
                       self->OnRead(ec2);
                     });
  }

  void OnReadError(beast::error_code ec) {
    if (ec == http::error::header_limit) {
      return SendAndClose(Error(431, "request header too large (limit " +
                                         std::to_string(server_->options().max_header_bytes) +
                                         " bytes, --max-header-bytes)"));
    }
    if (ec == http::error::body_limit) {
      return SendAndClose(Error(413, "request body too large (limit " +
                                         std::to_string(server_->options().max_body_bytes) +
                                         " bytes, --max-body-bytes)"));
    }
    if (&ec.category() == &http::make_error_code(http::error::bad_method).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return SendAndClose(Error(400, "malformed HTTP request: " + ec.message()));
    }
    Close();  // closed, reset or timed out: nothing to answer
  }

  void MarkRead() {
    if (!read_once_) {
      read_once_ = true;
      --server_->unread;
    }
  }

  void OnRead(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    MarkRead();
    stream_.expires_never();
    Request req;
    req.raw = parser_->release();
    keep_alive_ = req.raw.keep_alive();
    version_ = req.raw.version();
    req.method = std::string(req.raw.method_string());
    const std::string target(req.raw.target());
    const size_t q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) {
      for (const auto& kv : Split(std::string_view(target).substr(q + 1), '&')) {
        if (kv.empty()) continue;
        const size_t eq = kv.find('=');
        req.query[PercentDecode(kv.substr(0, eq))] =
            eq == std::string::npos ? "" : PercentDecode(kv.substr(eq + 1));
      }
    }
    method_ = req.method;
    start_ = Clock::now();
    ++server_->in_flight;
    counted_ = true;
    if (server_->draining()) {
      keep_alive_ = false;
      handler_ = "draining";
      return Write(Error(503, "the server is shutting down"));
    }
    auto self = shared_from_this();
    Reply reply = [self](Response r) {
      net::post(self->stream_.get_executor(),
                [self, r = std::move(r)]() mutable { self->Write(std::move(r)); });
    };
    server_->Dispatch(std::move(req), std::move(reply), metrics_only_, &handler_);
  }

  void Write(Response r) {
    auto res = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(r.status), version_);
    res->set(http::field::server, "kiln");
    res->set(http::field::content_type, r.content_type);
    for (const auto& [k, v] : r.headers) res->set(k, v);
    res->body() = std::move(r.body);
    res->keep_alive(keep_alive_ && !server_->draining());
    res->prepare_payload();
    status_ = r.status;
    stream_.expires_after(std::chrono::seconds(server_->options().read_timeout_s));
    http::async_write(stream_, *res,
                      [self = shared_from_this(), res](beast::error_code ec, size_t) {
                        self->OnWrite(ec, res->need_eof());
                      });
  }

  void OnWrite(beast::error_code ec, bool close) {
    if (counted_) {
      counted_ = false;
      const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
      server_->RecordHttp(handler_.empty() ? "other" : handler_, method_, status_, secs);
      --server_->in_flight;
    }
    ++served_;
    if (ec || close) return Close();
    ReadHeader();
  }

  void SendAndClose(Response r) {
    keep_alive_ = false;
    if (version_ == 0) version_ = 11;
    Write(std::move(r));
  }

  void Close() {
    MarkRead();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.close();
  }

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Server* server_;
  bool metrics_only_;
  bool keep_alive_ = false;
  unsigned version_ = 11;
  std::string method_ = "GET", handler_;
  unsigned status_ = 0;
  bool counted_ = false;
  int64_t served_ = 0;
  bool read_once_ = false;
  Clock::time_point start_;
};

void Server::Accept(tcp::acceptor& a, bool metrics_only) {
  a.async_accept(net::make_strand(ioc_), [this, &a, metrics_only](beast::error_code ec,
                                                                  tcp::socket socket) {
    if (!a.is_open()) return;
    if (ec) {
      // Out of file descriptors and similar: retry shortly rather than spin.
      auto t = std::make_shared<net::steady_timer>(ioc_, std::chrono::milliseconds(50));
      t->async_wait([this, &a, metrics_only, t](beast::error_code) {
        if (a.is_open()) Accept(a, metrics_only);
      });
      return;
    }
    if (connections.load() >= opt_.max_connections) {
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      std::make_shared<Session>(std::move(socket), this, metrics_only)->Start();
    }
    Accept(a, metrics_only);
  });
}

void Server::BeginDrain() {
  if (draining_.exchange(true)) {
    ioc_.stop();  // a second signal: stop at once
    return;
  }
  std::cerr << "kiln serve: shutting down, finishing " << in_flight.load()
            << " request(s) in flight\n";
  // Connections already in the listen backlog would be reset by close(): accept them first;
  // their requests are answered 503 "shutting down". Later connections are refused.
  for (auto* a : {&http_acceptor_, &metrics_acceptor_}) {
    if (!*a) continue;
    beast::error_code ec;
    (*a)->non_blocking(true, ec);
    for (;;) {
      tcp::socket socket(net::make_strand(ioc_));
      (*a)->accept(socket, ec);
      if (ec) break;
      std::make_shared<Session>(std::move(socket), this, a == &metrics_acceptor_)->Start();
    }
    (*a)->close(ec);
  }
  drain_deadline_ = Clock::now() + std::chrono::seconds(opt_.drain_timeout_s);
  drain_timer_.emplace(ioc_);
  std::function<void()> check;
  auto tick = std::make_shared<std::function<void()>>();
  *tick = [this, tick] {
    if ((in_flight.load() == 0 && unread.load() == 0) || Clock::now() >= drain_deadline_) {
      if (in_flight.load() > 0) {
        std::cerr << "kiln serve: drain timeout, " << in_flight.load()
                  << " request(s) not answered\n";
      }
      ioc_.stop();
      return;
    }
    drain_timer_->expires_after(std::chrono::milliseconds(10));
    drain_timer_->async_wait([tick](beast::error_code) { (*tick)(); });
  };
  (*tick)();
}

Status Server::Run() {
  // 1,000+ keep-alive connections need as many descriptors: raise the soft limit to the hard one.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  auto open = [&](int port, std::optional<tcp::acceptor>* out) -> Status {
    beast::error_code ec;
    auto addr = net::ip::make_address(opt_.host, ec);
    if (ec) return InvalidArgumentError("--host '" + opt_.host + "': " + ec.message());
    tcp::endpoint ep(addr, static_cast<unsigned short>(port));
    out->emplace(ioc_);
    auto& a = **out;
    a.open(ep.protocol(), ec);
    if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) a.bind(ep, ec);
    if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
      return UnavailableError("cannot listen on " + opt_.host + ":" + std::to_string(port) +
                              ": " + ec.message());
    }
    return Status::Ok();
  };
  KILN_RETURN_IF_ERROR(open(opt_.port, &http_acceptor_));
  if (opt_.metrics_port > 0) KILN_RETURN_IF_ERROR(open(opt_.metrics_port, &metrics_acceptor_));
  signals_.emplace(ioc_, SIGINT, SIGTERM);
  std::function<void()> wait_signal = [&] {
    signals_->async_wait([&](beast::error_code ec, int) {
      if (ec) return;
      BeginDrain();
      wait_signal();
    });
  };
  wait_signal();
  Accept(*http_acceptor_, false);
  if (metrics_acceptor_) Accept(*metrics_acceptor_, true);
  std::cerr << "kiln serve: listening on http://" << opt_.host << ":"
            << http_acceptor_->local_endpoint().port();
  if (metrics_acceptor_) std::cerr << " (metrics on port " << opt_.metrics_port << ")";
  std::cerr << std::endl;
  std::vector<std::thread> threads;
  for (int i = 1; i < opt_.network_threads; ++i) threads.emplace_back([this] { ioc_.run(); });
  ioc_.run();
  for (auto& t : threads) t.join();
  engine_->Shutdown();
  pool_.join();
  std::cerr << "kiln serve: stopped" << std::endl;
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Routes.

void Server::Dispatch(Request req, Reply reply, bool metrics_only, std::string* handler) {
  const std::string& m = req.method;
  const std::string path = req.path.size() > 1 && req.path.back() == '/'
                               ? req.path.substr(0, req.path.size() - 1)
                               : req.path;
  auto only = [&](const char* method) {
    if (m == method) return true;
    Response r = Error(405, "method " + m + " not allowed on " + path + " (use " + method + ")");
    r.headers.emplace_back("Allow", method);
    reply(std::move(r));
    return false;
  };
  if (metrics_only && path != "/metrics") {
    *handler = "other";
    return reply(Error(404, "this port serves /metrics only"));
  }
  if (path == "/metrics") {
    *handler = "/metrics";
    if (!only("GET")) return;
    return reply({200, "text/plain; version=0.0.4; charset=utf-8", registry_->Render(), {}});
  }
  if (path == "/favicon.ico" || path == "/favicon.svg") {
    // Browsers ask for it on every page load; a 404 here would read as an error.
    *handler = "/favicon";
    if (!only("GET")) return;
    return reply({200, "image/svg+xml", std::string(kFavicon), {}});
  }
  if (path == "/" || path == "/index.html") {
    *handler = "/";
    if (!only("GET")) return;
    return reply({200, "text/html; charset=utf-8", std::string(WebPage()), {}});
  }
  if (path == "/health") {
    *handler = "/health";
    if (!only("GET")) return;
    return reply(Health());
  }
  if (path == "/stats") {
    *handler = "/stats";
    if (!only("GET")) return;
    return reply(Stats());
  }
  if (path == "/predict") {
    *handler = "/predict";
    if (!only("POST")) return;
    net::post(pool_, [this, req = std::move(req), reply = std::move(reply)]() mutable {
      Predict(std::move(req), std::move(reply));
    });
    return;
  }
  auto seg = Split(path, '/');  // "", "v2", ...
  if (seg.size() < 2 || seg[1] != "v2") {
    *handler = "other";
    return reply(Error(404, "no such endpoint: " + path));
  }
  if (seg.size() == 2) {
    *handler = "/v2";
    if (!only("GET")) return;
    return reply(Json({{"name", "kiln"},
                       {"version", Version()},
                       {"extensions",
                        {"classification", "binary_tensor_data", "model_repository",
                         "model_repository(unload_dependents)", "statistics"}}}));
  }
  if (seg.size() == 4 && seg[2] == "health" && (seg[3] == "live" || seg[3] == "ready")) {
    *handler = "/v2/health/" + seg[3];
    if (!only("GET")) return;
    if (seg[3] == "ready" && draining()) return reply(Error(400, "the server is shutting down"));
    return reply({200, "application/json", "", {}});
  }
  if (seg.size() == 4 && seg[2] == "models" && seg[3] == "stats") {
    *handler = "/v2/models/stats";
    if (!only("GET")) return;
    return reply(ModelStatsJson("", ""));
  }
  if (seg.size() >= 3 && seg[2] == "repository") {
    if (seg.size() == 4 && seg[3] == "index") {
      *handler = "/v2/repository/index";
      if (!only("POST")) return;
      bool ready_only = false;
      if (!req.raw.body().empty()) {
        auto j = ParseJson(req.raw.body(), opt_);
        if (!j.ok()) return reply(Error(j.status()));
        if (j->is_object() && j->contains("ready") && (*j)["ready"].is_boolean())
          ready_only = (*j)["ready"].get<bool>();
      }
      json out = json::array();
      for (const auto& e : engine_->Index()) {
        if (ready_only && e.state != "READY") continue;
        json x = {{"name", e.name}, {"state", e.state}};
        if (!e.version.empty()) x["version"] = e.version;
        if (!e.reason.empty()) x["reason"] = e.reason;
        out.push_back(x);
      }
      return reply(Json(out));
    }
    if (seg.size() == 6 && seg[3] == "models" && (seg[5] == "load" || seg[5] == "unload")) {
      *handler = "/v2/repository/models/{model}/" + seg[5];
      if (!only("POST")) return;
      const std::string name = PercentDecode(seg[4]);
      const bool load = seg[5] == "load";
      net::post(pool_, [this, name, load, reply = std::move(reply)] {
        Status s = load ? engine_->Load(name) : engine_->Unload(name);
        reply(s.ok() ? Response{200, "application/json", "", {}} : Error(s));
      });
      return;
    }
    *handler = "other";
    return reply(Error(404, "no such endpoint: " + path));
  }
  if (seg.size() >= 4 && seg[2] == "models") {
    const std::string model = PercentDecode(seg[3]);
    std::string version;
    size_t next = 4;
    if (seg.size() >= 6 && seg[4] == "versions") {
      version = PercentDecode(seg[5]);
      next = 6;
    }
    const std::string action = seg.size() > next ? seg[next] : "";
    if (seg.size() > next + 1) {
      *handler = "other";
      return reply(Error(404, "no such endpoint: " + path));
    }
    const std::string base = std::string("/v2/models/{model}") +
                             (version.empty() ? "" : "/versions/{version}");
    if (action.empty()) {
      *handler = base;
      if (!only("GET")) return;
      return reply(ModelMetadata(model, version));
    }
    if (action == "ready") {
      *handler = base + "/ready";
      if (!only("GET")) return;
      auto f = engine_->Find(model, version);
      return reply(f.ok() ? Response{200, "application/json", "", {}}
                          : Error(400, f.status().message()));
    }
    if (action == "config") {
      *handler = base + "/config";
      if (!only("GET")) return;
      auto f = engine_->Find(model, version);
      if (!f.ok()) return reply(Error(f.status()));
      return reply({200, "application/json", ModelConfigToJson((*f)->config), {}});
    }
    if (action == "stats") {
      *handler = base + "/stats";
      if (!only("GET")) return;
      return reply(ModelStatsJson(model, version));
    }
    if (action == "drift") {
      *handler = base + "/drift";
      if (!only("GET")) return;
      return reply(ModelDriftJson(model, version));
    }
    if (action == "infer") {
      *handler = base + "/infer";
      if (!only("POST")) return;
      net::post(pool_, [this, req = std::move(req), model, version,
                        reply = std::move(reply)]() mutable {
        Infer(std::move(req), model, version, std::move(reply));
      });
      return;
    }
  }
  *handler = "other";
  reply(Error(404, "no such endpoint: " + path));
}

Response Server::ModelMetadata(const std::string& model, const std::string& version) {
  auto f = engine_->Find(model, version);
  if (!f.ok()) return Error(f.status());
  const ModelInfo& m = **f;
  json versions = json::array();
  for (const auto& r : engine_->ReadyModels()) {
    if (r->name == model) versions.push_back(std::to_string(r->version));
  }
  const auto& c = m.config;
  return Json({{"name", m.name},
               {"versions", versions},
               {"platform", m.platform},
               {"inputs",
                {{{"name", m.input_name},
                  {"datatype", KServeDataType(c.input(0).data_type())},
                  {"shape", BatchedShape(m, m.input_dims)}}}},
               {"outputs",
                {{{"name", m.output_name},
                  {"datatype", KServeDataType(c.output(0).data_type())},
                  {"shape", BatchedShape(m, m.output_dims)}}}}});
}

// GET /v2/models/{m}[/versions/{v}]/drift: the window, the reference and the scores that
// /metrics exports as kiln_drift_* (same computation).
Response Server::ModelDriftJson(const std::string& model, const std::string& version) {
  auto d = engine_->Drift(model, version);
  if (!d.ok()) return Error(d.status());
  auto f = engine_->Find(model, version);
  const std::vector<std::string> labels = f.ok() ? (*f)->labels : std::vector<std::string>{};
  auto by_class = [&](const std::vector<double>& v) {
    json o = json::object();
    for (size_t c = 0; c < v.size(); ++c) o[c < labels.size() ? labels[c] : std::to_string(c)] = v[c];
    return o;
  };
  json out = {{"model_name", d->name},
              {"model_version", d->version},
              {"confidence_bounds", drift::ConfidenceBounds()},
              {"window",
               {{"max_predictions", d->window_size},
                {"max_seconds", d->window_seconds},
                {"predictions", d->window.count}}},
              {"reference", nullptr},
              {"scores", nullptr}};
  if (!d->reference) {
    out["note"] = "the model has no drift reference (kiln.drift_reference): export it with "
                  "kiln export to get drift scores";
    return Json(out);
  }
  const auto& r = *d->reference;
  const auto& w = d->window;
  out["window"]["class_counts"] = by_class(w.class_counts);
  out["window"]["confidence_counts"] = w.confidence_counts;
  out["reference"] = {{"images", r.images},
                      {"source", r.source},
                      {"class_share", by_class(r.class_share)},
                      {"confidence_share", r.confidence_share},
                      {"mean_confidence", r.mean_confidence},
                      {"channel_mean", r.channel_mean},
                      {"channel_std", r.channel_std}};
  const auto& s = d->scores;
  out["scores"] = {{"class_psi", s.class_psi},
                   {"class_js_divergence", s.class_js},
                   {"class_chi2", s.class_chi2},
                   {"class_chi2_pvalue", s.class_chi2_pvalue},
                   {"confidence_psi", s.confidence_psi},
                   {"mean_confidence", s.mean_confidence},
                   {"reference_mean_confidence", r.mean_confidence},
                   {"input_mean_zscore", s.input_z}};
  return Json(out);
}

json DurationJson(const Duration& d) { return {{"count", d.count}, {"ns", d.ns}}; }

Response Server::ModelStatsJson(const std::string& model, const std::string& version) {
  auto stats = engine_->Statistics(model, version);
  if (!stats.ok()) return Error(stats.status());
  json out = json::array();
  for (const auto& s : *stats) {
    json batches = json::array();
    for (const auto& b : s.batch_stats) {
      batches.push_back({{"batch_size", b.batch_size},
                         {"compute_input", DurationJson(b.compute_input)},
                         {"compute_infer", DurationJson(b.compute_infer)},
                         {"compute_output", DurationJson(b.compute_output)}});
    }
    out.push_back({{"name", s.name},
                   {"version", s.version},
                   {"last_inference", s.last_inference_ms},
                   {"inference_count", s.inference_count},
                   {"execution_count", s.execution_count},
                   {"inference_stats",
                    {{"success", DurationJson(s.success)},
                     {"fail", DurationJson(s.fail)},
                     {"queue", DurationJson(s.queue)},
                     {"compute_input", DurationJson(s.compute_input)},
                     {"compute_infer", DurationJson(s.compute_infer)},
                     {"compute_output", DurationJson(s.compute_output)},
                     {"cache_hit", DurationJson({})},
                     {"cache_miss", DurationJson({})}}},
                   {"batch_stats", batches}});
  }
  return Json({{"model_stats", out}});
}

Response Server::Health() {
  json models = json::array();
  bool any_ready = false, any_failed = false;
  for (const auto& e : engine_->Index()) {
    json x = {{"name", e.name}, {"state", e.state}};
    if (!e.version.empty()) x["version"] = e.version;
    if (!e.reason.empty()) x["reason"] = e.reason;
    any_ready |= e.state == "READY";
    any_failed |= e.state != "READY";
    models.push_back(x);
  }
  const std::string status = draining()      ? "shutting_down"
                             : !any_ready    ? "unavailable"
                             : any_failed    ? "degraded"
                                             : "ok";
  return Json({{"status", status},
               {"uptime_seconds",
                std::chrono::duration<double>(Clock::now() - started_).count()},
               {"models", models}});
}

// The drift scores the page shows (null when the model has none).
json Server::DriftSummary(const std::string& model, const std::string& version) {
  auto d = engine_->Drift(model, version);
  if (!d.ok() || !d->reference) return nullptr;
  double z = 0;
  for (double v : d->scores.input_z) z = std::max(z, std::abs(v));
  return {{"predictions", d->scores.samples},
          {"class_psi", d->scores.class_psi},
          {"confidence_psi", d->scores.confidence_psi},
          {"max_abs_input_z", z},
          {"mean_confidence", d->scores.mean_confidence},
          {"reference_mean_confidence", d->reference->mean_confidence}};
}

Response Server::Stats() {
  json out = window_.Summary();
  out["requests_total"] = requests_.load();
  out["errors_total"] = errors_.load();
  out["client_errors_total"] = client_errors_.load();
  auto stats = engine_->Statistics("", "");
  json by_class = json::object();
  json models = json::array();
  uint64_t inferences = 0, executions = 0;
  if (stats.ok()) {
    for (const auto& s : *stats) {
      inferences += s.inference_count;
      executions += s.execution_count;
      auto info = engine_->Find(s.name, s.version);
      for (size_t c = 0; c < s.class_counts.size(); ++c) {
        const std::string label =
            info.ok() ? Label(**info, static_cast<int64_t>(c)) : std::to_string(c);
        by_class[label] = by_class.value(label, uint64_t{0}) + s.class_counts[c];
      }
      auto avg_ms = [](const Duration& d) -> json {
        return d.count ? json(static_cast<double>(d.ns) / static_cast<double>(d.count) / 1e6)
                       : json(nullptr);
      };
      models.push_back(
          {{"name", s.name},
           {"version", s.version},
           {"inference_count", s.inference_count},
           {"execution_count", s.execution_count},
           {"average_batch_size",
            s.execution_count ? static_cast<double>(s.inference_count) /
                                    static_cast<double>(s.execution_count)
                              : 0.0},
           {"queue_ms_avg", avg_ms(s.queue)},
           {"compute_ms_avg", avg_ms(s.compute_infer)},
           {"failures", s.fail.count},
           {"drift", DriftSummary(s.name, s.version)}});
    }
  }
  out["predictions_by_class"] = by_class;
  out["average_batch_size"] =
      executions ? static_cast<double>(inferences) / static_cast<double>(executions) : 0.0;
  out["pending_requests"] = engine_->Pending();
  out["models"] = models;
  return Json(out);
}

// KServe v2 inference (JSON, binary tensor extension, classification extension).
void Server::Infer(Request req, const std::string& model_name, const std::string& version,
                   Reply reply) {
  const auto start = Clock::now();
  auto found = engine_->Find(model_name, version);
  if (!found.ok()) return reply(Error(found.status()));
  std::shared_ptr<const ModelInfo> model = *found;
  const ModelInfo& m = *model;
  const std::string& body = req.raw.body();
  const std::string header_len = req.Header("Inference-Header-Content-Length");
  json j;
  std::string_view binary;
  std::vector<float> data;
  int64_t batch = 1;
  if (!header_len.empty()) {
    size_t n = 0;
    try {
      size_t used = 0;
      n = std::stoul(header_len, &used);
      if (used != header_len.size()) throw std::invalid_argument("x");
    } catch (const std::exception&) {
      return reply(Error(400, "Inference-Header-Content-Length '" + header_len +
                                  "' is not a number"));
    }
    if (n > body.size()) {
      return reply(Error(400, "Inference-Header-Content-Length " + std::to_string(n) +
                                  " is larger than the body (" + std::to_string(body.size()) +
                                  " bytes)"));
    }
    if (n == 0) {
      // The whole body is one raw tensor: single-input model, batch 1.
      const size_t want = static_cast<size_t>(m.input_elements) * sizeof(float);
      if (body.size() != want) {
        return reply(Error(400, "raw binary input of " + std::to_string(body.size()) +
                                    " bytes, expected " + std::to_string(want) + " (FP32 " +
                                    ShapeString(m.input_dims) + ", batch 1)"));
      }
      data.resize(static_cast<size_t>(m.input_elements));
      std::memcpy(data.data(), body.data(), want);
      j = json::object();
    } else {
      auto parsed = ParseJson(std::string_view(body).substr(0, n), opt_);
      if (!parsed.ok()) return reply(Error(parsed.status()));
      j = std::move(parsed).value();
      binary = std::string_view(body).substr(n);
    }
  } else {
    auto parsed = ParseJson(body, opt_);
    if (!parsed.ok()) return reply(Error(parsed.status()));
    j = std::move(parsed).value();
  }
  if (!j.is_object()) return reply(Error(400, "the inference request must be a JSON object"));
  json id;
  if (j.contains("id")) {
    if (!j["id"].is_string()) return reply(Error(400, "'id' must be a string"));
    id = j["id"];
  }
  if (header_len != "0") {
    if (!j.contains("inputs") || !j["inputs"].is_array()) {
      return reply(Error(400, "the request has no 'inputs' array"));
    }
    const json& inputs = j["inputs"];
    if (inputs.size() != 1) {
      return reply(Error(400, "model '" + m.name + "' expects 1 input, the request has " +
                                  std::to_string(inputs.size())));
    }
    const json& in = inputs[0];
    if (!in.is_object() || !in.contains("name") || !in["name"].is_string()) {
      return reply(Error(400, "input must be an object with a 'name'"));
    }
    if (in["name"] != m.input_name) {
      return reply(Error(400, "unexpected inference input '" + in["name"].get<std::string>() +
                                  "' for model '" + m.name + "' (its input is '" + m.input_name +
                                  "')"));
    }
    if (!in.contains("datatype") || !in["datatype"].is_string()) {
      return reply(Error(400, "input '" + m.input_name + "' has no 'datatype'"));
    }
    if (in["datatype"] != "FP32") {
      return reply(Error(400, "input '" + m.input_name + "' datatype " +
                                  in["datatype"].get<std::string>() +
                                  " does not match the model's FP32"));
    }
    if (!in.contains("shape") || !in["shape"].is_array()) {
      return reply(Error(400, "input '" + m.input_name + "' has no 'shape' array"));
    }
    std::vector<int64_t> shape;
    for (const auto& d : in["shape"]) {
      if (!d.is_number_integer()) return reply(Error(400, "shape must hold integers"));
      shape.push_back(d.get<int64_t>());
    }
    auto checked = CheckInputShape(m, shape);
    if (!checked.ok()) return reply(Error(400, checked.status().message()));
    batch = *checked;
    const size_t elements = static_cast<size_t>(batch * m.input_elements);
    const json* params = in.contains("parameters") ? &in["parameters"] : nullptr;
    if (params != nullptr && params->is_object() && params->contains("binary_data_size")) {
      const json& size = (*params)["binary_data_size"];
      if (!size.is_number_unsigned()) {
        return reply(Error(400, "binary_data_size must be a non-negative integer"));
      }
      const size_t bytes = size.get<size_t>();
      if (bytes != elements * sizeof(float)) {
        return reply(Error(400, "input '" + m.input_name + "': binary_data_size " +
                                    std::to_string(bytes) + " but shape " + ShapeString(shape) +
                                    " FP32 needs " + std::to_string(elements * sizeof(float))));
      }
      if (binary.size() != bytes) {
        return reply(Error(400, "the binary part of the body has " +
                                    std::to_string(binary.size()) + " bytes, binary_data_size "
                                    "says " + std::to_string(bytes)));
      }
      data.resize(elements);
      std::memcpy(data.data(), binary.data(), bytes);
    } else {
      if (!in.contains("data")) {
        return reply(Error(400, "input '" + m.input_name + "' has neither 'data' nor "
                                "parameters.binary_data_size"));
      }
      data.reserve(elements);
      Status s = Flatten(in["data"], &data);
      if (!s.ok()) return reply(Error(s));
      if (data.size() != elements) {
        return reply(Error(400, "input '" + m.input_name + "' has " +
                                    std::to_string(data.size()) + " values but shape " +
                                    ShapeString(shape) + " needs " + std::to_string(elements)));
      }
    }
  }
  // Requested outputs.
  bool binary_default = false;
  if (j.contains("parameters") && j["parameters"].is_object()) {
    const auto& p = j["parameters"];
    if (p.contains("binary_data_output") && p["binary_data_output"].is_boolean())
      binary_default = p["binary_data_output"].get<bool>();
  }
  struct Wanted {
    bool binary = false;
    int64_t classification = 0;
  };
  Wanted wanted{binary_default, 0};
  if (j.contains("outputs")) {
    if (!j["outputs"].is_array()) return reply(Error(400, "'outputs' must be an array"));
    for (const auto& o : j["outputs"]) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
        return reply(Error(400, "each requested output needs a 'name'"));
      if (o["name"] != m.output_name) {
        return reply(Error(400, "unexpected inference output '" + o["name"].get<std::string>() +
                                    "' for model '" + m.name + "' (its output is '" +
                                    m.output_name + "')"));
      }
      if (o.contains("parameters") && o["parameters"].is_object()) {
        const auto& p = o["parameters"];
        if (p.contains("binary_data") && p["binary_data"].is_boolean())
          wanted.binary = p["binary_data"].get<bool>();
        if (p.contains("classification")) {
          if (!p["classification"].is_number_integer() ||
              p["classification"].get<int64_t>() < 1) {
            return reply(Error(400, "classification must be a positive integer"));
          }
          wanted.classification = p["classification"].get<int64_t>();
        }
      }
    }
  }
  const bool follow_latest = version.empty();
  engine_->Infer(
      model, std::move(data), batch,
      [this, model, id, wanted, batch, start, reply = std::move(reply)](Status s,
                                                                        InferResult r) mutable {
        if (!s.ok()) return reply(Error(s));
        net::post(pool_, [this, model, id, wanted, batch, start, r = std::move(r),
                          reply = std::move(reply)]() mutable {
          const ModelInfo& m = *model;
          json out = {{"model_name", m.name}, {"model_version", std::to_string(m.version)}};
          if (!id.is_null()) out["id"] = id;
          std::vector<int64_t> shape;
          if (m.max_batch_size > 0) shape.push_back(batch);
          shape.insert(shape.end(), m.output_dims.begin(), m.output_dims.end());
          json o = {{"name", m.output_name}};
          std::string blob;
          const int64_t classes = m.output_elements;
          if (wanted.classification > 0) {
            const int64_t k = std::min(wanted.classification, classes);
            const int64_t rows = static_cast<int64_t>(r.output.size()) / classes;
            const json strings = ClassificationStrings(m, r.output, k);
            o["datatype"] = "BYTES";
            o["shape"] = m.max_batch_size > 0 ? json{rows, k} : json{k};
            if (wanted.binary) {
              for (const auto& e : strings) {
                const std::string str = e.get<std::string>();
                const uint32_t len = static_cast<uint32_t>(str.size());
                blob.append(reinterpret_cast<const char*>(&len), 4);
                blob += str;
              }
              o["parameters"] = {{"binary_data_size", blob.size()}};
            } else {
              o["data"] = strings;
            }
          } else {
            o["datatype"] = "FP32";
            o["shape"] = shape;
            if (wanted.binary) {
              blob.assign(reinterpret_cast<const char*>(r.output.data()),
                          r.output.size() * sizeof(float));
              o["parameters"] = {{"binary_data_size", blob.size()}};
            } else {
              o["data"] = r.output;
            }
          }
          out["outputs"] = json::array({o});
          RecordInference(std::chrono::duration<double>(Clock::now() - start).count(), batch);
          Response resp = Json(out);
          if (!blob.empty()) {
            resp.headers.emplace_back("Inference-Header-Content-Length",
                                      std::to_string(resp.body.size()));
            resp.content_type = "application/octet-stream";
            resp.body += blob;
          }
          reply(std::move(resp));
        });
      },
      follow_latest);
}

// Multipart/form-data: the parts' names, optional file names and bodies.
struct Part {
  std::string name, filename, content_type;
  std::string_view body;
};

Result<std::vector<Part>> ParseMultipart(std::string_view body, const std::string& content_type) {
  const size_t b = content_type.find("boundary=");
  if (b == std::string::npos) return InvalidArgumentError("multipart/form-data without a boundary");
  std::string boundary = content_type.substr(b + 9);
  const size_t semi = boundary.find(';');
  if (semi != std::string::npos) boundary = boundary.substr(0, semi);
  if (boundary.size() >= 2 && boundary.front() == '"') boundary = boundary.substr(1, boundary.size() - 2);
  if (boundary.empty()) return InvalidArgumentError("multipart/form-data with an empty boundary");
  const std::string delim = "--" + boundary;
  std::vector<Part> parts;
  size_t pos = body.find(delim);
  if (pos == std::string_view::npos) return InvalidArgumentError("multipart body without its boundary");
  for (;;) {
    pos += delim.size();
    if (body.substr(pos, 2) == "--") break;  // closing delimiter
    if (body.substr(pos, 2) != "\r\n") return InvalidArgumentError("malformed multipart body");
    pos += 2;
    const size_t headers_end = body.find("\r\n\r\n", pos);
    if (headers_end == std::string_view::npos) return InvalidArgumentError("malformed multipart part headers");
    Part part;
    for (const auto& line : Split(body.substr(pos, headers_end - pos), '\n')) {
      std::string l = line;
      if (!l.empty() && l.back() == '\r') l.pop_back();
      std::string lower = l;
      std::transform(lower.begin(), lower.end(), lower.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (lower.rfind("content-disposition:", 0) == 0) {
        auto value = [&](const std::string& key) -> std::string {
          const size_t k = lower.find(key + "=\"");
          if (k == std::string::npos) return "";
          const size_t s = k + key.size() + 2;
          const size_t e = l.find('"', s);
          return e == std::string::npos ? "" : l.substr(s, e - s);
        };
        part.name = value(" name");
        if (part.name.empty()) part.name = value(";name");
        part.filename = value("filename");
      } else if (lower.rfind("content-type:", 0) == 0) {
        part.content_type = l.substr(13);
      }
    }
    const size_t data_start = headers_end + 4;
    const size_t next = body.find("\r\n" + delim, data_start);
    if (next == std::string_view::npos) return InvalidArgumentError("multipart part is not terminated");
    part.body = body.substr(data_start, next - data_start);
    parts.push_back(std::move(part));
    pos = next + 2;
  }
  return parts;
}

void Server::Predict(Request req, Reply reply) {
  const auto start = Clock::now();
  std::string content_type = req.Header("Content-Type");
  std::string lower = content_type;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::map<std::string, std::string> fields = req.query;
  std::string_view image;
  const std::string& body = req.raw.body();
  if (lower.rfind("multipart/form-data", 0) == 0) {
    auto parts = ParseMultipart(body, content_type);
    if (!parts.ok()) return reply(Error(parts.status()));
    bool found = false;
    for (const auto& p : *parts) {
      if (p.name == "file" || (!found && !p.filename.empty())) {
        image = p.body;
        found = true;
      } else if (!p.name.empty()) {
        fields[p.name] = std::string(p.body);
      }
    }
    if (!found) return reply(Error(400, "multipart/form-data without a 'file' field"));
  } else if (lower.rfind("image/", 0) == 0 || lower == "application/octet-stream") {
    image = body;
  } else {
    return reply(Error(415, "send an image as multipart/form-data (field 'file') or as the raw "
                            "body with an image/* Content-Type (got '" + content_type + "')"));
  }
  if (image.empty()) return reply(Error(400, "empty image"));
  std::string model_name = fields.count("model") ? fields["model"] : "";
  const std::string version = fields.count("version") ? fields["version"] : "";
  if (model_name.empty()) {
    auto ready = engine_->ReadyModels();
    if (ready.empty()) return reply(Error(503, "no model is ready"));
    model_name = ready.front()->name;
  }
  int64_t top_k = opt_.default_top_k;
  if (fields.count("top_k")) {
    try {
      size_t used = 0;
      top_k = std::stoll(fields["top_k"], &used);
      if (used != fields["top_k"].size() || top_k < 1) throw std::invalid_argument("k");
    } catch (const std::exception&) {
      return reply(Error(400, "top_k must be a positive integer"));
    }
  }
  auto found = engine_->Find(model_name, version);
  if (!found.ok()) return reply(Error(found.status()));
  std::shared_ptr<const ModelInfo> model = *found;
  const ModelInfo& m = *model;
  std::vector<int64_t> chw = m.input_dims;
  if (m.max_batch_size == 0 && !chw.empty() && chw[0] == 1) chw.erase(chw.begin());
  if (chw.size() != 3 || chw[0] != 3) {
    return reply(Error(400, "model '" + m.name + "' does not take images (input " +
                                ShapeString(m.input_dims) + ", expected [3,H,W])"));
  }
  const auto t0 = Clock::now();
  auto img = data::DecodeImage(image, opt_.image_limits);
  if (!img.ok()) return reply(Error(img.status()));
  const auto t1 = Clock::now();
  std::vector<float> tensor(static_cast<size_t>(m.input_elements));
  Status s = data::PreprocessImage(*img, chw[1], chw[2], m.normalization, tensor.data());
  if (!s.ok()) return reply(Error(s));
  const auto t2 = Clock::now();
  const double decode_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double preprocess_ms = std::chrono::duration<double, std::milli>(t2 - t1).count();
  engine_->Infer(
      model, std::move(tensor), 1,
      [this, model, top_k, start, decode_ms, preprocess_ms, reply = std::move(reply)](
          Status st, InferResult r) mutable {
        if (!st.ok()) return reply(Error(st));
        const ModelInfo& mi = *model;
        json preds = json::array();
        for (const auto& [c, p] : TopK(r.output.data(), mi.output_elements, top_k)) {
          preds.push_back({{"label", Label(mi, c)}, {"index", c}, {"probability", p}});
        }
        const double total_ms =
            std::chrono::duration<double, std::milli>(Clock::now() - start).count();
        RecordInference(total_ms / 1000.0, 1);
        reply(Json({{"model_name", mi.name},
                    {"model_version", std::to_string(mi.version)},
                    {"predictions", preds},
                    {"decode_ms", decode_ms},
                    {"preprocess_ms", preprocess_ms},
                    {"queue_ms", static_cast<double>(r.queue_ns) / 1e6},
                    {"inference_ms", static_cast<double>(r.compute_infer_ns) / 1e6},
                    {"batch_size", r.executed_batch},
                    {"total_ms", total_ms}}));
      },
      version.empty());
}

// CPU and memory gauges of Triton's family, read from /proc at scrape time.
void AddSystemGauges(metrics::Registry* r) {
  auto* cpu = r->Gauge("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", {});
  auto* total = r->Gauge("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", {});
  auto* used = r->Gauge("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", {});
  auto last = std::make_shared<std::pair<uint64_t, uint64_t>>(0, 0);  // busy, total jiffies
  auto mu = std::make_shared<std::mutex>();
  r->OnRender([cpu, total, used, last, mu] {
    std::ifstream stat("/proc/stat");
    std::string tag;
    uint64_t v[8] = {};
    stat >> tag;
    for (auto& x : v) stat >> x;
    const uint64_t idle = v[3] + v[4];
    uint64_t all = 0;
    for (auto x : v) all += x;
    {
      std::lock_guard l(*mu);
      if (all > last->second) {
        const double d_all = static_cast<double>(all - last->second);
        const double d_busy = static_cast<double>((all - idle) - last->first);
        cpu->Set(std::clamp(d_busy / d_all, 0.0, 1.0));
      }
      *last = {all - idle, all};
    }
    std::ifstream mem("/proc/meminfo");
    std::string key, unit;
    uint64_t value = 0, mem_total = 0, mem_avail = 0;
    while (mem >> key >> value >> unit) {
      if (key == "MemTotal:") mem_total = value * 1024;
      if (key == "MemAvailable:") mem_avail = value * 1024;
    }
    total->Set(static_cast<double>(mem_total));
    used->Set(static_cast<double>(mem_total - std::min(mem_total, mem_avail)));
  });
}

}  // namespace

Status HttpOptions::Validate() const {
  auto positive = [](int64_t v, const char* flag) -> Status {
    if (v < 1) return InvalidArgumentError(std::string(flag) + " must be positive");
    return Status::Ok();
  };
  if (port < 0 || port > 65535) return InvalidArgumentError("--port must be in [0, 65535]");
  if (metrics_port < 0 || metrics_port > 65535)
    return InvalidArgumentError("--metrics-port must be in [0, 65535]");
  if (metrics_port != 0 && metrics_port == port)
    return InvalidArgumentError("--metrics-port must differ from --port");
  KILN_RETURN_IF_ERROR(positive(network_threads, "--http-threads"));
  KILN_RETURN_IF_ERROR(positive(worker_threads, "--worker-threads"));
  KILN_RETURN_IF_ERROR(positive(max_body_bytes, "--max-body-bytes"));
  KILN_RETURN_IF_ERROR(positive(max_header_bytes, "--max-header-bytes"));
  KILN_RETURN_IF_ERROR(positive(max_json_bytes, "--max-json-bytes"));
  KILN_RETURN_IF_ERROR(positive(max_json_depth, "--max-json-depth"));
  KILN_RETURN_IF_ERROR(positive(max_connections, "--max-connections"));
  KILN_RETURN_IF_ERROR(positive(idle_timeout_s, "--idle-timeout"));
  KILN_RETURN_IF_ERROR(positive(read_timeout_s, "--read-timeout"));
  KILN_RETURN_IF_ERROR(positive(drain_timeout_s, "--drain-timeout"));
  KILN_RETURN_IF_ERROR(positive(default_top_k, "--top-k"));
  return image_limits.Validate();
}

Status RunHttpServer(const HttpOptions& options, Engine* engine, metrics::Registry* registry) {
  KILN_RETURN_IF_ERROR(options.Validate());
  AddSystemGauges(registry);
  Server server(options, engine, registry);
  return server.Run();
}

}  // namespace kiln::serve
