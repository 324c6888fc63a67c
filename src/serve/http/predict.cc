#include <algorithm>
#include <cmath>
#include <memory>

#include "multipart.h"
#include "router.h"

// POST /predict: an image (multipart/form-data field "file", or the raw body with an image/*
// Content-Type) -> the top-k labels with their probabilities and the time each stage took.

namespace kiln::serve::rest {

namespace {

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


}  // namespace

std::string Label(const ModelInfo& m, int64_t c) {
  return c < static_cast<int64_t>(m.labels.size()) ? m.labels[static_cast<size_t>(c)]
                                                   : std::to_string(c);
}

void Router::Predict(Request req, Reply reply) {
  const auto start = Clock::now();
  const std::string content_type = req.Header("Content-Type");
  const std::string lower = Lower(content_type);
  std::map<std::string, std::string> fields = req.query;
  std::string_view image;
  const std::string& body = req.body;
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
  ImageTimings timings;
  auto tensor = ImageToInput(*model, image, opt_.image_limits, &timings);
  if (!tensor.ok()) return reply(Error(tensor.status()));
  const double decode_ms = timings.decode_ms;
  const double preprocess_ms = timings.preprocess_ms;
  engine_->Infer(
      model, std::move(tensor).value(), 1,
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
        window_.Add(total_ms / 1000.0, 1);
        reply(Json({{"model_name", mi.name},
                    {"model_version", std::to_string(r.version > 0 ? r.version : mi.version)},
                    {"predictions", preds},
                    {"decode_ms", decode_ms},
                    {"preprocess_ms", preprocess_ms},
                    {"queue_ms", static_cast<double>(r.queue_ns) / 1e6},
                    {"inference_ms", static_cast<double>(r.compute_infer_ns) / 1e6},
                    {"batch_size", r.executed_batch},
                    {"total_ms", total_ms}}));
      },
      InferOptions{version.empty(), req.Header(kRoutingKeyHeader)});
}

}  // namespace kiln::serve::rest
