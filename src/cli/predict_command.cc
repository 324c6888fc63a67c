// kiln predict
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/data/image.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct PredictArgs {
  std::string model;
  std::string backend = "auto";
  std::vector<std::string> inputs;
  int top_k = 5;
  bool json = false;
  int64_t batch_size = 64;
  int threads = 2;
  data::ImageLimits limits;
};

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

struct Prepared {
  std::string path;
  std::vector<float> tensor;
  double decode_ms = 0;
  double preprocess_ms = 0;
};

// Files named on the command line, with folders expanded to their regular files (sorted).
std::vector<std::string> ExpandInputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> inside;
      for (const auto& e : fs::directory_iterator(in, ec)) {
        if (e.is_regular_file(ec)) inside.push_back(e.path().string());
      }
      std::sort(inside.begin(), inside.end());
      files.insert(files.end(), inside.begin(), inside.end());
    } else {
      files.push_back(in);
    }
  }
  return files;
}

Result<Prepared> Prepare(const std::string& path, const data::ImageLimits& limits, int64_t height,
                         int64_t width, const data::Normalization& norm) {
  Prepared p{path, {}, 0, 0};
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return NotFoundError("no such file");
  const auto size = static_cast<int64_t>(fs::file_size(path, ec));
  if (ec) return InvalidArgumentError("cannot read: " + ec.message());
  if (size > limits.max_encoded_bytes) {
    return ResourceExhaustedError(std::to_string(size) + " bytes, over the limit of " +
                                  std::to_string(limits.max_encoded_bytes) + " (--max-bytes)");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError("cannot open");
  std::string bytes(static_cast<size_t>(size), '\0');
  in.read(bytes.data(), size);
  const auto t0 = Clock::now();
  KILN_ASSIGN_OR_RETURN(data::RgbImage img, data::DecodeImage(bytes, limits));
  const auto t1 = Clock::now();
  p.tensor.resize(static_cast<size_t>(3 * height * width));
  KILN_RETURN_IF_ERROR(data::PreprocessImage(img, height, width, norm, p.tensor.data()));
  p.decode_ms = Ms(t0, t1);
  p.preprocess_ms = Ms(t1, Clock::now());
  return p;
}

int RunPredict(const PredictArgs& a) {
  auto engine = OpenModelFile(a.model, a.backend, a.threads);
  if (!engine.ok()) {
    std::cerr << "kiln predict: " << engine.status().ToString() << "\n";
    return kExitFailure;
  }
  const auto& shape = (*engine)->inputs()[0].shape;
  if (shape.size() != 4 || shape[1] != 3) {
    std::cerr << "kiln predict: " << a.model
              << ": expected an image classifier with input [N,3,H,W]\n";
    return kExitFailure;
  }
  auto info = ReadModelMetadata(**engine, a.model);
  if (!info.ok()) {
    std::cerr << "kiln predict: " << info.status().ToString() << "\n";
    return kExitFailure;
  }
  const data::Normalization& norm = info->normalization;
  const std::vector<std::string>& labels = info->labels;
  const int64_t classes = (*engine)->OutputElementsPerSample();
  const int64_t k = std::min<int64_t>(a.top_k, classes);
  const std::vector<std::string> files = ExpandInputs(a.inputs);
  if (files.empty()) {
    std::cerr << "kiln predict: no image files in the given folders\n";
    return kExitUsage;
  }
  int failures = 0;
  nlohmann::json results = nlohmann::json::array();

  for (size_t begin = 0; begin < files.size(); begin += static_cast<size_t>(a.batch_size)) {
    const size_t end = std::min(files.size(), begin + static_cast<size_t>(a.batch_size));
    std::vector<Prepared> batch;
    for (size_t i = begin; i < end; ++i) {
      auto p = Prepare(files[i], a.limits, shape[2], shape[3], norm);
      if (!p.ok()) {
        std::cerr << files[i] << ": error: " << p.status().message() << "\n";
        if (a.json) results.push_back({{"file", files[i]}, {"error", p.status().message()}});
        ++failures;
        continue;
      }
      batch.push_back(std::move(p).value());
    }
    if (batch.empty()) continue;
    const auto n = static_cast<int64_t>(batch.size());
    std::vector<float> input;
    input.reserve(static_cast<size_t>(n) * batch[0].tensor.size());
    for (const auto& p : batch) input.insert(input.end(), p.tensor.begin(), p.tensor.end());
    std::vector<float> logits(static_cast<size_t>(n * classes));
    const auto t0 = Clock::now();
    Status s = (*engine)->Run(input.data(), n, logits.data());
    const double infer_ms = Ms(t0, Clock::now());
    if (!s.ok()) {
      std::cerr << "kiln predict: " << s.ToString() << "\n";
      return kExitFailure;
    }
    for (int64_t i = 0; i < n; ++i) {
      // Softmax in double for stable probabilities.
      const float* row = logits.data() + i * classes;
      const double top = *std::max_element(row, row + classes);
      std::vector<double> prob(static_cast<size_t>(classes));
      double sum = 0;
      for (int64_t c = 0; c < classes; ++c)
        sum += prob[static_cast<size_t>(c)] = std::exp(row[c] - top);
      std::vector<int64_t> order(static_cast<size_t>(classes));
      for (int64_t c = 0; c < classes; ++c) order[static_cast<size_t>(c)] = c;
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t x, int64_t y) {
        return prob[static_cast<size_t>(x)] > prob[static_cast<size_t>(y)];
      });
      const Prepared& p = batch[static_cast<size_t>(i)];
      auto label = [&](int64_t c) {
        return c < static_cast<int64_t>(labels.size()) ? labels[static_cast<size_t>(c)]
                                                       : std::to_string(c);
      };
      if (a.json) {
        nlohmann::json top_k = nlohmann::json::array();
        for (int64_t j = 0; j < k; ++j) {
          const int64_t c = order[static_cast<size_t>(j)];
          top_k.push_back({{"label", label(c)},
                           {"index", c},
                           {"probability", prob[static_cast<size_t>(c)] / sum}});
        }
        results.push_back({{"file", p.path},
                           {"top_k", top_k},
                           {"decode_ms", p.decode_ms},
                           {"preprocess_ms", p.preprocess_ms},
                           {"infer_ms", infer_ms},
                           {"batch_size", n}});
      } else {
        std::printf("%s\n", p.path.c_str());
        for (int64_t j = 0; j < k; ++j) {
          const int64_t c = order[static_cast<size_t>(j)];
          std::printf("  %-12s %6.2f%%\n", label(c).c_str(),
                      100.0 * prob[static_cast<size_t>(c)] / sum);
        }
        std::printf("  decode %.2f ms, preprocess %.2f ms, inference %.2f ms for a batch of %lld\n",
                    p.decode_ms, p.preprocess_ms, infer_ms, static_cast<long long>(n));
      }
    }
  }
  if (a.json) std::cout << results.dump(2) << "\n";
  return failures == 0 ? 0 : kExitFailure;
}

}  // namespace

void RegisterPredictCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<PredictArgs>();
  auto* cmd = app.add_subcommand(
      "predict", "Classify image files (JPEG, PNG, BMP, WebP, GIF, TIFF) with an exported model");
  cmd->add_option("--model", a->model, "model.onnx or model.pt from kiln export")->required();
  cmd->add_option("--backend", a->backend, "auto (by extension), onnxruntime, libtorch or openvino")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "onnxruntime", "libtorch", "openvino"}));
  cmd->add_option("images", a->inputs, "Image files or folders (every file in a folder, batched)")
      ->required();
  cmd->add_option("-k,--top-k", a->top_k, "Labels to show per image")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  cmd->add_flag("--json", a->json, "Machine-readable output");
  cmd->add_option("--batch-size", a->batch_size, "Images per inference call")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--threads", a->threads, "Engine threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--max-bytes", a->limits.max_encoded_bytes, "Largest accepted file")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-pixels", a->limits.max_pixels, "Largest accepted decoded width x height")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->footer(
      "Unreadable or broken files are reported on stderr and skipped; the exit code is 0 when "
      "every "
      "file was classified, 1 otherwise.");
  cmd->callback([run, a] { *run = [a] { return RunPredict(*a); }; });
}

}  // namespace kiln::cli
