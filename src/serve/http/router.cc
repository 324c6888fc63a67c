#include "router.h"

#include <algorithm>
#include <array>

#include <boost/asio/post.hpp>
#include <cmath>
#include <memory>

#include "kiln/core/version.h"
#include "kserve_codec.h"

namespace kiln::serve::rest {

Router::Router(const HttpOptions& options, Engine* engine, metrics::Registry* registry)
    : opt_(options), engine_(engine), registry_(registry),
      workers_(static_cast<size_t>(options.worker_threads)) {}

Router::~Router() { Join(); }

void Router::Join() {
  workers_.join();
  control_.join();
  observer_.join();
}

template <class F>
void Router::Spawn(boost::asio::thread_pool& pool, Reply reply, F f) {
  boost::asio::post(pool, [reply = std::move(reply), f = std::move(f)]() mutable {
    try {
      f(reply);
    } catch (const std::exception& e) {
      reply(Error(500, std::string("internal error: ") + e.what()));
    } catch (...) {
      reply(Error(500, "internal error"));
    }
  });
}

template <class F>
void Router::Post(boost::asio::thread_pool& pool, Reply reply, F f) {
  Spawn(pool, std::move(reply), [f = std::move(f)](Reply& r) mutable { r(f()); });
}

namespace {

// What /stats counts as an error: what an operator would call one, a request the server failed
// (5xx) or an inference a client did not get (any 4xx of /infer or /predict). A 404 for a path
// nobody serves (a browser's own probes) is a client error, not a server error.
bool IsError(const std::string& handler, unsigned code) {
  if (code >= 500) return true;
  return code >= 400 && (handler.ends_with("/infer") || handler == "/predict");
}

}  // namespace

void Router::RecordHttp(const std::string& handler, const std::string& method, unsigned code,
                        double seconds) {
  // The method is the client's word: any other token would add a series per distinct string (a
  // client could grow /metrics without bound, or put bytes that are not UTF-8 into it).
  static constexpr std::array<std::string_view, 7> kMethods = {"GET",     "POST",  "HEAD", "PUT",
                                                               "DELETE",  "PATCH", "OPTIONS"};
  const bool known = std::find(kMethods.begin(), kMethods.end(), method) != kMethods.end();
  registry_
      ->Histogram("http_request_duration_seconds", "HTTP request duration by handler",
                  {{"handler", handler}, {"method", known ? method : "other"},
                   {"code", std::to_string(code)}},
                  metrics::DefaultLatencyBuckets())
      ->Observe(seconds);
  requests_.fetch_add(1);
  if (IsError(handler, code)) errors_.fetch_add(1);
  if (code >= 400 && code < 500) client_errors_.fetch_add(1);
}

// ---------------------------------------------------------------------------------------------
// Routes.

void Router::Dispatch(Request req, Reply reply, bool metrics_only, std::string* handler) {
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
    return Post(observer_, std::move(reply), [this] {
      return Response{200, "text/plain; version=0.0.4; charset=utf-8", registry_->Render(), {}};
    });
  }
  if (path == "/favicon.ico" || path == "/favicon.svg") {
    // Browsers ask for it on every page load; a 404 here would read as an error.
    *handler = "/favicon";
    if (!only("GET")) return;
    return reply({200, "image/svg+xml", std::string(Favicon()), {}});
  }
  if (path == "/" || path == "/index.html") {
    *handler = "/";
    if (!only("GET")) return;
    return reply({200, "text/html; charset=utf-8", std::string(WebPage()), {}});
  }
  if (path == "/health") {
    *handler = "/health";
    if (!only("GET")) return;
    return Post(observer_, std::move(reply), [this] { return Health(); });
  }
  if (path == "/stats") {
    *handler = "/stats";
    if (!only("GET")) return;
    return Post(observer_, std::move(reply), [this] { return Stats(); });
  }
  if (path == "/predict") {
    *handler = "/predict";
    if (!only("POST")) return;
    return Spawn(workers_, std::move(reply), [this, req = std::move(req)](Reply& r) mutable {
      Predict(std::move(req), r);
    });
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
    return Post(observer_, std::move(reply), [this] { return ModelStatsJson("", ""); });
  }
  if (seg.size() >= 3 && seg[2] == "repository") {
    if (seg.size() == 4 && seg[3] == "index") {
      *handler = "/v2/repository/index";
      if (!only("POST")) return;
      return Post(observer_, std::move(reply),
                  [this, body = std::move(req.body)] { return RepositoryIndex(body); });
    }
    if (seg.size() == 6 && seg[3] == "models" && (seg[5] == "load" || seg[5] == "unload")) {
      *handler = "/v2/repository/models/{model}/" + seg[5];
      if (!only("POST")) return;
      const std::string name = PercentDecode(seg[4]);
      const bool load = seg[5] == "load";
      return Post(control_, std::move(reply), [this, name, load, body = std::move(req.body)] {
        return RepositoryControl(name, load, body);
      });
    }
    // Kiln's routing extension: the traffic policy between a model's versions (GET: the policy
    // with per-version counts and decisions; POST: replace it). docs/rollout.md.
    if (seg.size() == 6 && seg[3] == "models" && seg[5] == "routing") {
      *handler = "/v2/repository/models/{model}/routing";
      const std::string name = PercentDecode(seg[4]);
      if (m == "GET") {
        return Post(observer_, std::move(reply), [this, name] {
          auto r = engine_->Routing(name);
          return r.ok() ? Response{200, "application/json", *r, {}} : Error(r.status());
        });
      }
      if (!only("POST")) return;
      return Post(control_, std::move(reply), [this, name, body = std::move(req.body)] {
        if (static_cast<int64_t>(body.size()) > json_limits().max_bytes) {
          return Error(413, "routing policy over --max-json-bytes");
        }
        auto r = engine_->SetRouting(name, body);
        return r.ok() ? Response{200, "application/json", *r, {}} : Error(r.status());
      });
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
      return Post(observer_, std::move(reply),
                  [this, model, version] { return ModelMetadata(model, version); });
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
      return Post(observer_, std::move(reply),
                  [this, model, version] { return ModelStatsJson(model, version); });
    }
    if (action == "drift") {
      *handler = base + "/drift";
      if (!only("GET")) return;
      return Post(observer_, std::move(reply),
                  [this, model, version] { return ModelDriftJson(model, version); });
    }
    if (action == "infer") {
      *handler = base + "/infer";
      if (!only("POST")) return;
      return Spawn(workers_, std::move(reply),
                   [this, req = std::move(req), model, version](Reply& r) mutable {
                     Infer(std::move(req), model, version, r);
                   });
    }
  }
  *handler = "other";
  reply(Error(404, "no such endpoint: " + path));
}

Response Router::ModelMetadata(const std::string& model, const std::string& version) {
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
Response Router::ModelDriftJson(const std::string& model, const std::string& version) {
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

Response Router::ModelStatsJson(const std::string& model, const std::string& version) {
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

Response Router::Health() {
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


// KServe v2 inference (JSON, binary tensor extension, classification extension).
void Router::Infer(Request req, const std::string& model_name, const std::string& version,
                   Reply reply) {
  const auto start = Clock::now();
  auto found = engine_->Find(model_name, version);
  if (!found.ok()) return reply(Error(found.status()));
  std::shared_ptr<const ModelInfo> model = *found;
  auto parsed = ParseInferRequest(*model, req.body, req.Header("Inference-Header-Content-Length"),
                                  json_limits());
  if (!parsed.ok()) return reply(Error(parsed.status()));
  auto request = std::make_shared<InferRequest>(std::move(parsed).value());
  std::vector<float> input = std::move(request->input);
  const int64_t batch = request->batch;
  engine_->Infer(
      model, std::move(input), batch,
      [this, model, request, start, reply = std::move(reply)](Status s, InferResult r) mutable {
        if (!s.ok()) return reply(Error(s));
        // Formatting (JSON of every value) is the workers' job, not the instance thread's.
        Spawn(workers_, std::move(reply),
              [this, model, request, start, r = std::move(r)](Reply& out) {
                Response resp = FormatInferResponse(*model, *request, r);
                window_.Add(std::chrono::duration<double>(Clock::now() - start).count(),
                            request->batch);
                out(std::move(resp));
              });
      },
      InferOptions{version.empty(), req.Header(kRoutingKeyHeader)});
}

// Triton's load / unload body: {"parameters": {...}}. Load takes "config" (a JSON ModelConfig
// in a string, used instead of config.pbtxt); unload takes "unload_dependents" (Kiln has no
// ensembles, so there are none). Any other parameter, such as Triton's "file:<path>" model
// overrides, is refused rather than ignored.
Response Router::RepositoryControl(const std::string& name, bool load, const std::string& body) {
  std::optional<std::string> config;
  if (!body.empty()) {
    auto j = ParseJson(body, json_limits());
    if (!j.ok()) return Error(j.status());
    if (!j->is_object()) return Error(400, "the request body must be a JSON object");
    if (j->contains("parameters")) {
      const json& parameters = (*j)["parameters"];
      if (!parameters.is_object()) return Error(400, "'parameters' must be a JSON object");
      for (const auto& [key, value] : parameters.items()) {
        if (load && key == "config") {
          if (!value.is_string()) {
            return Error(400, "load parameter 'config' must be a string holding the model "
                              "configuration as JSON");
          }
          config = value.get<std::string>();
        } else if (!load && key == "unload_dependents") {
          if (!value.is_boolean()) {
            return Error(400, "unload parameter 'unload_dependents' must be true or false");
          }
        } else if (load && key.rfind("file:", 0) == 0) {
          return Error(400, "load parameter '" + key + "' is not supported: Kiln loads model "
                            "files from the repository (a 'config' override is supported)");
        } else {
          return Error(400, std::string(load ? "load" : "unload") + " parameter '" + key +
                                "' is not supported");
        }
      }
    }
  }
  Status s = load ? engine_->Load(name, config) : engine_->Unload(name);
  return s.ok() ? Response{200, "application/json", "", {}} : Error(s);
}

Response Router::RepositoryIndex(const std::string& body) {
  bool ready_only = false;
  if (!body.empty()) {
    auto j = ParseJson(body, json_limits());
    if (!j.ok()) return Error(j.status());
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
  return Json(out);
}

}  // namespace kiln::serve::rest
