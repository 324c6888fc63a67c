// kiln drift calibrate: how a model's drift scores behave on in-distribution windows (the
// false-alarm rate of the alert thresholds) and on shifted traffic (their detection rate).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "commands.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/core/drift.h"
#include "kiln/core/file.h"
#include "kiln/core/statistics.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/shift.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct DriftArgs {
  std::string model;
  std::string backend = "auto";
  std::string data = DefaultDataPath();
  int64_t window = 1000;
  int64_t windows = 300;
  int64_t images = 0;  // per scenario; 0 = the whole test split
  uint64_t seed = 1;
  int threads = 2;
  double class_psi = 0.1, confidence_psi = 0.1, z = 0.5;
  std::string json_out;
};

// What the server's window keeps of one prediction.
struct Sample {
  int64_t top1;
  double confidence;
  std::vector<double> means;
};

Result<std::vector<Sample>> Predict(backend::InferenceBackend& engine, const data::ImageSet& set,
                                    const data::Normalization& norm, int64_t channels) {
  const int64_t classes = engine.OutputElementsPerSample();
  const int64_t hw = set.height * set.width;
  const int64_t batch = 256;
  std::vector<float> in(static_cast<size_t>(batch * set.image_bytes()));
  std::vector<float> out(static_cast<size_t>(batch * classes));
  std::vector<Sample> samples;
  for (int64_t start = 0; start < set.size(); start += batch) {
    const int64_t n = std::min(batch, set.size() - start);
    for (int64_t i = 0; i < n; ++i) {
      data::NormalizeImage(set.image(start + i), set.channels, hw, norm,
                           in.data() + i * set.image_bytes());
    }
    KILN_RETURN_IF_ERROR(engine.Run(in.data(), n, out.data()));
    for (int64_t i = 0; i < n; ++i) {
      const drift::Top1 t = drift::TopProbability(out.data() + i * classes, classes);
      Sample s{t.index, t.probability, std::vector<double>(static_cast<size_t>(channels))};
      drift::ChannelMeans(in.data() + i * set.image_bytes(), channels, hw, s.means.data());
      samples.push_back(std::move(s));
    }
  }
  return samples;
}

int RunCalibrate(const DriftArgs& a) {
  auto engine = OpenModelFile(a.model, a.backend, a.threads);
  if (!engine.ok()) {
    std::cerr << "kiln drift: " << engine.status().ToString() << "\n";
    return kExitFailure;
  }
  auto meta = backend::ReadKilnMetadata((*engine)->metadata(), a.model);
  if (!meta.ok()) {
    std::cerr << "kiln drift: " << meta.status().ToString() << "\n";
    return kExitFailure;
  }
  if (!meta->drift_reference || !meta->has_normalization()) {
    std::cerr << "kiln drift: " << a.model
              << " has no drift reference or normalization (export it with kiln export)\n";
    return kExitFailure;
  }
  const drift::Reference& ref = *meta->drift_reference;
  const data::Normalization norm{meta->mean, meta->stddev};
  auto ds = data::LoadCifar10(a.data);
  if (!ds.ok()) {
    std::cerr << "kiln drift: " << ds.status().ToString() << "\n";
    return kExitFailure;
  }
  data::ImageSet test = ds->test;
  if (a.images > 0 && a.images < test.size()) {
    std::vector<int64_t> idx(static_cast<size_t>(a.images));
    for (int64_t i = 0; i < a.images; ++i) idx[static_cast<size_t>(i)] = i;
    test = test.Subset(idx);
  }
  const std::string first_label = meta->has_labels() ? meta->labels[0] : "0";
  std::vector<std::pair<std::string, data::ImageSet>> scenarios;
  scenarios.emplace_back("in-distribution (test split)", test);
  scenarios.emplace_back("one class only (" + first_label + ")", data::OnlyClass(test, 0));
  scenarios.emplace_back("brightness +0.2",
                         data::ShiftImages(test, data::Shift::kBrightness, 0.2, a.seed));
  scenarios.emplace_back("brightness -0.2",
                         data::ShiftImages(test, data::Shift::kBrightness, -0.2, a.seed));
  scenarios.emplace_back("contrast x0.5", data::ShiftImages(test, data::Shift::kContrast, 0.5, a.seed));
  scenarios.emplace_back("noise sd 0.1", data::ShiftImages(test, data::Shift::kNoise, 0.1, a.seed));
  scenarios.emplace_back("synthetic shapes (another data set)",
                         data::SyntheticShapes(test.size(), test.channels, test.height,
                                               test.width, a.seed));

  std::printf("reference: %lld images of the %s; windows of %lld predictions, %lld windows per "
              "scenario (drawn with replacement, seed %llu)\n",
              static_cast<long long>(ref.images), ref.source.c_str(),
              static_cast<long long>(a.window), static_cast<long long>(a.windows),
              static_cast<unsigned long long>(a.seed));
  std::printf("thresholds: class PSI > %.3g, confidence PSI > %.3g, |input z| > %.3g\n\n",
              a.class_psi, a.confidence_psi, a.z);
  std::printf("%-38s %10s %10s %10s %10s %10s %10s %9s\n", "scenario (medians over windows)",
              "class PSI", "class JS", "chi2 p", "conf PSI", "mean conf", "max |z|", "alerting");
  json report = {{"model", a.model},
                 {"reference", {{"images", ref.images}, {"source", ref.source}}},
                 {"window", a.window},
                 {"windows", a.windows},
                 {"thresholds",
                  {{"class_psi", a.class_psi}, {"confidence_psi", a.confidence_psi}, {"input_z", a.z}}},
                 {"scenarios", json::array()}};
  const int64_t channels = ref.channels();
  for (const auto& [name, set] : scenarios) {
    if (StopRequested()) return kExitInterrupted;
    if (set.size() == 0) continue;
    auto samples = Predict(**engine, set, norm, channels);
    if (!samples.ok()) {
      std::cerr << "kiln drift: " << samples.status().ToString() << "\n";
      return kExitFailure;
    }
    std::mt19937_64 rng(a.seed);
    std::uniform_int_distribution<size_t> pick(0, samples->size() - 1);
    std::vector<double> cpsi, cjs, cp, fpsi, mconf, zmax;
    int64_t alerting = 0, over_class = 0, over_conf = 0, over_z = 0;
    for (int64_t w = 0; w < a.windows; ++w) {
      drift::Profile p(ref.classes(), channels);
      for (int64_t k = 0; k < a.window; ++k) {
        const Sample& s = (*samples)[pick(rng)];
        p.Add(s.top1, s.confidence, s.means.data());
      }
      const drift::Scores sc = drift::Compare(ref, p);
      double z = 0;
      for (double v : sc.input_z) z = std::max(z, std::abs(v));
      cpsi.push_back(sc.class_psi);
      cjs.push_back(sc.class_js);
      cp.push_back(sc.class_chi2_pvalue);
      fpsi.push_back(sc.confidence_psi);
      mconf.push_back(sc.mean_confidence);
      zmax.push_back(z);
      const bool c1 = sc.class_psi > a.class_psi, c2 = sc.confidence_psi > a.confidence_psi,
                 c3 = z > a.z;
      over_class += c1;
      over_conf += c2;
      over_z += c3;
      alerting += (c1 || c2 || c3);
    }
    const double share = static_cast<double>(alerting) / static_cast<double>(a.windows);
    std::printf("%-38s %10.4f %10.4f %10.3g %10.4f %10.4f %10.3f %8.1f%%\n", name.c_str(),
                Quantile(cpsi, 0.5), Quantile(cjs, 0.5), Quantile(cp, 0.5), Quantile(fpsi, 0.5),
                Quantile(mconf, 0.5), Quantile(zmax, 0.5),
                100 * share);
    auto summary = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return json{{"median", QuantileOfSorted(v, 0.5)},
                  {"p01", QuantileOfSorted(v, 0.01)},
                  {"p99", QuantileOfSorted(v, 0.99)},
                  {"min", v.front()},
                  {"max", v.back()}};
    };
    report["scenarios"].push_back(
        {{"name", name},
         {"images", set.size()},
         {"class_psi", summary(cpsi)},
         {"class_js_divergence", summary(cjs)},
         {"class_chi2_pvalue", summary(cp)},
         {"confidence_psi", summary(fpsi)},
         {"mean_confidence", summary(mconf)},
         {"max_abs_input_z", summary(zmax)},
         {"share_over", {{"class_psi", static_cast<double>(over_class) / a.windows},
                         {"confidence_psi", static_cast<double>(over_conf) / a.windows},
                         {"input_z", static_cast<double>(over_z) / a.windows},
                         {"any", share}}}});
  }
  std::printf("\n'alerting': share of windows with at least one score over its threshold (for "
              "in-distribution windows, the false-alarm rate per evaluation).\n");
  if (!a.json_out.empty()) {
    const fs::path out(a.json_out);
    if (Status s = WriteFileAtomic(out, report.dump(2) + "\n"); !s.ok()) {
      std::cerr << "kiln drift: " << s.ToString() << "\n";
      return kExitFailure;
    }
    std::printf("wrote %s\n", out.c_str());
  }
  return 0;
}

}  // namespace

void RegisterDriftCommand(CLI::App& app, Runner* run) {
  auto* drift = app.add_subcommand("drift", "Prediction drift: calibrate the alert thresholds");
  drift->require_subcommand(1);
  auto a = std::make_shared<DriftArgs>();
  auto* cmd = drift->add_subcommand(
      "calibrate",
      "Score in-distribution and shifted windows of test images against a model's drift "
      "reference, as kiln serve does");
  cmd->add_option("--model", a->model, "An exported model with a drift reference (.onnx, .pt)")
      ->required();
  cmd->add_option("--backend", a->backend, "auto, onnxruntime, libtorch or openvino")
      ->capture_default_str();
  cmd->add_option("--data,--archive", a->data, "CIFAR-10 data (the test split is used)")
      ->capture_default_str();
  cmd->add_option("--window", a->window, "Predictions per window (kiln serve --drift-window-size)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{10}, int64_t{1'000'000}));
  cmd->add_option("--windows", a->windows, "Windows drawn per scenario")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100'000}));
  cmd->add_option("--images", a->images, "Test images per scenario (0 = all)")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the shifts and the window draws")
      ->capture_default_str();
  cmd->add_option("--threads", a->threads, "Engine threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--class-psi-threshold", a->class_psi, "Alert threshold of the class PSI")
      ->capture_default_str();
  cmd->add_option("--confidence-psi-threshold", a->confidence_psi,
                  "Alert threshold of the confidence PSI")
      ->capture_default_str();
  cmd->add_option("--z-threshold", a->z, "Alert threshold of |input mean z-score|")
      ->capture_default_str();
  cmd->add_option("--json", a->json_out, "Also write the figures as JSON to this file");
  cmd->footer(
      "Scenarios: the test split as is; one class only; brightness +-0.2; contrast x0.5; "
      "Gaussian noise of sd 0.1; synthetic shapes (another data set). Each window draws "
      "--window predictions with replacement from a scenario's images.");
  cmd->callback([run, a] { *run = [a] { return RunCalibrate(*a); }; });
}

}  // namespace kiln::cli
