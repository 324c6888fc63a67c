// The HTTP transport: listening sockets, connections (sessions), admission at the header,
// keep-alive, timeouts and the drain. Routing and the codecs live in router.cc and its
// neighbours; this file only moves bytes.
#include "kiln/serve/http/http_server.h"

#include <linux/filter.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "message.h"
#include "router.h"

namespace kiln::serve {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using rest::Response;

// A connection accepted during the drain that has not sent a byte yet: waited for this long,
// since its request is probably on the wire; later it counts as idle.
constexpr auto kFreshGrace = std::chrono::seconds(1);
// After answering a refused request without reading its body, the rest of the body is read and
// dropped for at most this long before the socket closes, so that the client reads the answer
// instead of a connection reset.
constexpr auto kLinger = std::chrono::seconds(2);
// How long the listeners stay open at the start of a drain, refusing new handshakes but letting
// those already under way complete (an RTT on most networks), before they are closed.
constexpr auto kHandshakeSettle = std::chrono::milliseconds(200);

// Makes the kernel drop new connection attempts (a TCP segment with SYN and without ACK) to a
// listening socket, while handshakes under way still complete into the accept queue. Closing a
// listener resets the connections whose handshake completed since the last accept(), and a
// client that has sent its request then sees "connection reset"; with the SYNs dropped first,
// nothing new can land in the queue, and the client whose SYN was dropped retries it and is
// refused once the listener is closed ("connection refused": nothing was sent). A classic BPF
// socket filter; for TCP the packet starts at the TCP header, whose byte 13 holds the flags.
bool DropNewHandshakes(tcp::acceptor& a) {
  static sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 13),            // A = TCP flags
      BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0x12),         // A &= SYN | ACK
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x02, 0, 1),  // SYN alone: a new connection
      BPF_STMT(BPF_RET | BPF_K, 0),                      // drop it
      BPF_STMT(BPF_RET | BPF_K, 0xFFFFFFFF),             // keep everything else
  };
  sock_fprog program{static_cast<unsigned short>(std::size(code)), code};
  return setsockopt(a.native_handle(), SOL_SOCKET, SO_ATTACH_FILTER, &program,
                    sizeof program) == 0;
}

class Session;

class Server final : public HttpServer {
 public:
  Server(const HttpOptions& o, Engine* e, metrics::Registry* r, Admission* a)
      : opt_(o), admission_(a), ioc_(std::make_unique<net::io_context>(o.network_threads)),
        strand_(net::make_strand(*ioc_)),
        router_(std::make_unique<rest::Router>(o, e, r)) {}

  ~Server() override {
    Stop(std::chrono::milliseconds(0));
    // Explicit order: everything that points into the io_context goes before it, and the
    // sessions that its queued handlers still own go with it, while the counters they update
    // are alive.
    http_acceptor_.reset();
    metrics_acceptor_.reset();
    drain_timer_.reset();
    work_.reset();  // still held when a drain was aborted
    router_.reset();
    strand_.reset();
    ioc_.reset();
  }

  Status Bind();
  int port() const override { return port_; }
  int metrics_port() const override { return metrics_port_; }
  void Start() override;
  void Stop(std::chrono::milliseconds drain) override;
  void Abort() override { ioc_->stop(); }

  const HttpOptions& options() const { return opt_; }
  rest::Router& router() { return *router_; }
  Admission* admission() const { return admission_; }
  bool draining() const { return draining_.load(); }

  std::atomic<int> connections{0};
  // Sessions between the first byte of a request and the end of writing its answer.
  std::atomic<int64_t> busy{0};
  // Sessions that have not received a byte yet.
  std::atomic<int64_t> fresh{0};

 private:
  void Accept(tcp::acceptor& a, bool metrics_only);
  void BeginDrain(std::chrono::milliseconds drain);
  void CloseListeners();
  void Tick();

  const HttpOptions opt_;
  Admission* const admission_;
  std::unique_ptr<net::io_context> ioc_;
  // Acceptors, the drain timer and the drain; optional so that it goes before the io_context.
  std::optional<net::strand<net::io_context::executor_type>> strand_;
  std::unique_ptr<rest::Router> router_;
  std::optional<tcp::acceptor> http_acceptor_, metrics_acceptor_;
  std::optional<net::steady_timer> drain_timer_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_;
  int port_ = 0, metrics_port_ = 0;
  std::atomic<bool> draining_{false};
  bool listening_ = false;  // the drain has not closed the listeners yet
  Clock::time_point drain_start_, drain_deadline_, close_listeners_at_;
  int quiet_ticks_ = 0;
  std::vector<std::thread> threads_;
  std::mutex stop_mu_;  // one Stop at a time
  bool started_ = false, stopped_ = false;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, Server* server, bool metrics_only)
      : stream_(std::move(socket)), server_(server), metrics_only_(metrics_only) {
    ++server_->connections;
    ++server_->fresh;
  }
  ~Session() {
    SetBusy(false);
    NotFresh();
    --server_->connections;
  }

  void Start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->WaitRequest(); });
  }

 private:
  // Keep-alive: wait (idle timeout) for the first bytes of the next request.
  void WaitRequest() {
    if (buffer_.size() > 0) return BeginRequest();  // pipelined: already here
    stream_.expires_after(std::chrono::seconds(server_->options().idle_timeout_s));
    stream_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](beast::error_code ec, size_t n) {
                              self->buffer_.commit(n);
                              if (ec && n == 0) return self->Close();
                              self->BeginRequest();
                            });
  }

  void BeginRequest() {
    NotFresh();
    SetBusy(true);
    const auto& o = server_->options();
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(o.max_header_bytes));
    parser_->body_limit(static_cast<uint64_t>(o.max_body_bytes));
    stream_.expires_after(std::chrono::seconds(o.read_timeout_s));
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->OnHeader(ec);
                            });
  }

  // Probes and scrapes are never refused for lack of budget: an overloaded server must still
  // say that it is alive, and be watched.
  bool Exempt(const http::request<http::string_body>& h) const {
    if (metrics_only_) return true;
    if (h.method() != http::verb::get && h.method() != http::verb::head) return false;
    const std::string_view t(h.target().data(), h.target().size());
    return t.starts_with("/v2/health/") || t == "/health" || t == "/metrics";
  }

  void OnHeader(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    const auto& h = parser_->get();
    version_ = h.version();
    keep_alive_ = h.keep_alive();
    method_ = std::string(h.method_string());
    start_ = Clock::now();
    if (server_->admission() != nullptr && !Exempt(h)) {
      // The body's size is known now (chunked bodies are charged the largest one allowed).
      const auto length = parser_->content_length();
      const int64_t bytes =
          static_cast<int64_t>(length ? *length : (parser_->chunked()
                                                        ? static_cast<uint64_t>(
                                                              server_->options().max_body_bytes)
                                                        : 0)) +
          static_cast<int64_t>(buffer_.size());
      auto ticket = server_->admission()->Admit(bytes, "http");
      if (!ticket.ok()) {
        handler_ = "admission";
        counted_ = true;
        Response r = rest::Error(ticket.status());
        if (r.status == 503) r.headers.emplace_back("Retry-After", "1");
        unread_body_ = !parser_->is_done();
        return SendAndClose(std::move(r));
      }
      ticket_ = std::move(ticket).value();
    }
    if (beast::iequals(h[http::field::expect], "100-continue") && !parser_->is_done()) {
      // The client waits for this before sending a large body (curl does for > 1 MiB).
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_,
                                                                      version_);
      return http::async_write(stream_, *cont,
                               [self = shared_from_this(), cont](beast::error_code ec2, size_t) {
                                 if (ec2) return self->Close();
                                 self->ReadBody();
                               });
    }
    ReadBody();
  }

  void ReadBody() {
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->OnRead(ec);
                     });
  }

  void OnReadError(beast::error_code ec) {
    const auto& o = server_->options();
    unread_body_ = true;
    if (ec == http::error::header_limit) {
      return SendAndClose(rest::Error(431, "request header too large (limit " +
                                               std::to_string(o.max_header_bytes) +
                                               " bytes, --max-header-bytes)"));
    }
    if (ec == http::error::body_limit) {
      return SendAndClose(rest::Error(413, "request body too large (limit " +
                                               std::to_string(o.max_body_bytes) +
                                               " bytes, --max-body-bytes)"));
    }
    if (&ec.category() == &http::make_error_code(http::error::bad_method).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message) {
      return SendAndClose(rest::Error(400, "malformed HTTP request: " + ec.message()));
    }
    Close();  // closed, reset or timed out: nothing to answer
  }

  void OnRead(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    stream_.expires_never();
    auto raw = parser_->release();
    rest::Request req;
    req.method = method_;
    rest::ParseTarget(std::string_view(raw.target().data(), raw.target().size()), &req);
    for (const auto& f : raw) {
      req.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    }
    req.body = std::move(raw.body());
    counted_ = true;
    // Exactly once, whoever calls it (a handler, or the catch below).
    auto once = std::make_shared<std::atomic<bool>>(false);
    rest::Reply reply = [self = shared_from_this(), once](Response r) {
      if (once->exchange(true)) return;
      net::post(self->stream_.get_executor(),
                [self, r = std::move(r)]() mutable { self->Write(std::move(r)); });
    };
    try {
      server_->router().Dispatch(std::move(req), reply, metrics_only_, &handler_);
    } catch (const std::exception& e) {
      reply(rest::Error(500, std::string("internal error: ") + e.what()));
    } catch (...) {
      reply(rest::Error(500, "internal error"));
    }
  }

  void Write(Response r) {
    auto res = std::make_shared<http::response<http::string_body>>(
        static_cast<http::status>(r.status), version_);
    res->set(http::field::server, "kiln");
    res->set(http::field::content_type, r.content_type);
    for (const auto& [k, v] : r.headers) res->set(k, v);
    res->body() = std::move(r.body);
    // Draining: this connection's last answer.
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
      server_->router().RecordHttp(handler_.empty() ? "other" : handler_, method_, status_, secs);
    }
    ticket_.Release();
    SetBusy(false);
    if (ec) return Close();
    if (close) return unread_body_ ? Linger() : Close();
    WaitRequest();
  }

  void SendAndClose(Response r) {
    keep_alive_ = false;
    if (version_ == 0) version_ = 11;
    Write(std::move(r));
  }

  // The answer is out; read and drop what the client still sends, then close.
  void Linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(kLinger);
    auto drop = std::make_shared<std::array<char, 16384>>();
    stream_.async_read_some(net::buffer(*drop),
                            [self = shared_from_this(), drop](beast::error_code ec, size_t) {
                              if (ec) return self->Close();
                              self->Linger();
                            });
  }

  void Close() {
    SetBusy(false);
    NotFresh();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  void SetBusy(bool b) {
    if (b == busy_) return;
    busy_ = b;
    b ? ++server_->busy : --server_->busy;
  }
  void NotFresh() {
    if (!fresh_) return;
    fresh_ = false;
    --server_->fresh;
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
  bool busy_ = false, fresh_ = true, unread_body_ = false;
  Admission::Ticket ticket_;
  Clock::time_point start_ = Clock::now();
};

Status Server::Bind() {
  // 1,000+ keep-alive connections need as many descriptors: raise the soft limit to the hard one.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  auto open = [&](int port, std::optional<tcp::acceptor>* out) -> Result<int> {
    beast::error_code ec;
    auto addr = net::ip::make_address(opt_.host, ec);
    if (ec) return InvalidArgumentError("--host '" + opt_.host + "': " + ec.message());
    tcp::endpoint ep(addr, static_cast<unsigned short>(port));
    out->emplace(*strand_);
    auto& a = **out;
    a.open(ep.protocol(), ec);
    if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) a.bind(ep, ec);
    if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
      return UnavailableError("cannot listen on " + opt_.host + ":" + std::to_string(port) +
                              ": " + ec.message());
    }
    return static_cast<int>(a.local_endpoint().port());
  };
  KILN_ASSIGN_OR_RETURN(port_, open(opt_.port, &http_acceptor_));
  if (opt_.metrics_port > 0) {
    KILN_ASSIGN_OR_RETURN(metrics_port_, open(opt_.metrics_port, &metrics_acceptor_));
  }
  return Status::Ok();
}

void Server::Accept(tcp::acceptor& a, bool metrics_only) {
  a.async_accept(net::make_strand(*ioc_), [this, &a, metrics_only](beast::error_code ec,
                                                                   tcp::socket socket) {
    if (!a.is_open()) return;
    if (ec) {
      // Out of file descriptors and similar: retry shortly rather than spin.
      auto t = std::make_shared<net::steady_timer>(*strand_, std::chrono::milliseconds(50));
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

void Server::Start() {
  std::lock_guard l(stop_mu_);
  if (started_) return;
  started_ = true;
  work_.emplace(ioc_->get_executor());
  net::post(*strand_, [this] {
    Accept(*http_acceptor_, false);
    if (metrics_acceptor_) Accept(*metrics_acceptor_, true);
  });
  std::cerr << "kiln serve: listening on http://" << opt_.host << ":" << port_;
  if (metrics_port_ > 0) std::cerr << " (metrics on port " << metrics_port_ << ")";
  std::cerr << std::endl;
  for (int i = 0; i < opt_.network_threads; ++i) {
    threads_.emplace_back([this] {
      for (;;) {
        try {
          ioc_->run();
          return;
        } catch (const std::exception& e) {
          // A handler threw: log it and keep serving (the session it belonged to is gone).
          std::cerr << "kiln serve: error on a network thread (ignored): " << e.what()
                    << std::endl;
        }
      }
    });
  }
}

void Server::BeginDrain(std::chrono::milliseconds drain) {
  draining_ = true;
  router_->BeginDrain();
  std::cerr << "kiln serve: shutting down, finishing " << busy.load()
            << " request(s) in flight\n";
  // New connections are refused from now on; handshakes under way get kHandshakeSettle to land
  // in the accept queue (the accept loop goes on, and their requests are answered "shutting
  // down"). Where the filter is unavailable the listeners close at once.
  bool filtered = true;
  for (auto* a : {&http_acceptor_, &metrics_acceptor_}) {
    if (*a && !DropNewHandshakes(**a)) filtered = false;
  }
  drain_start_ = Clock::now();
  drain_deadline_ = drain_start_ + drain;
  close_listeners_at_ = filtered ? drain_start_ + kHandshakeSettle : drain_start_;
  listening_ = true;
  drain_timer_.emplace(*strand_);
  Tick();
}

void Server::CloseListeners() {
  listening_ = false;
  // Connections already in the accept queue would be reset by close(): take them; their
  // requests are served.
  for (auto* a : {&http_acceptor_, &metrics_acceptor_}) {
    if (!*a) continue;
    beast::error_code ec;
    (*a)->non_blocking(true, ec);
    for (;;) {
      tcp::socket socket(net::make_strand(*ioc_));
      (*a)->accept(socket, ec);
      if (ec) break;
      std::make_shared<Session>(std::move(socket), this, a == &metrics_acceptor_)->Start();
    }
    (*a)->close(ec);
  }
}

void Server::Tick() {
  auto now = Clock::now();
  if (listening_ && (now >= close_listeners_at_ || now >= drain_deadline_)) {
    CloseListeners();
    now = Clock::now();
  }
  const bool quiet = !listening_ && busy.load() == 0 &&
                     (fresh.load() == 0 || now >= drain_start_ + kFreshGrace);
  // Two quiet looks 10 ms apart: a request whose bytes are arriving right now gets its turn.
  quiet_ticks_ = quiet ? quiet_ticks_ + 1 : 0;
  if (quiet_ticks_ >= 2 || now >= drain_deadline_) {
    if (!quiet) {
      std::cerr << "kiln serve: drain timeout, " << busy.load()
                << " request(s) not answered\n";
    }
    work_.reset();
    ioc_->stop();
    return;
  }
  drain_timer_->expires_after(std::chrono::milliseconds(10));
  drain_timer_->async_wait([this](beast::error_code) { Tick(); });
}

void Server::Stop(std::chrono::milliseconds drain) {
  std::lock_guard l(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  if (started_) {
    net::post(*strand_, [this, drain] { BeginDrain(drain); });
    for (auto& t : threads_) t.join();
    threads_.clear();
  }
  router_->Join();
  std::cerr << "kiln serve: HTTP stopped" << std::endl;
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

Result<std::unique_ptr<HttpServer>> HttpServer::Create(const HttpOptions& options,
                                                       Engine* engine,
                                                       metrics::Registry* registry,
                                                       Admission* admission) {
  KILN_RETURN_IF_ERROR(options.Validate());
  auto server = std::make_unique<Server>(options, engine, registry, admission);
  KILN_RETURN_IF_ERROR(server->Bind());
  return std::unique_ptr<HttpServer>(std::move(server));
}

}  // namespace kiln::serve
