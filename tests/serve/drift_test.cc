// Prediction drift end to end: a small trained seed-cnn whose export carries a drift reference
// (computed on test images 0..4999), served by the real `kiln serve`. In-distribution traffic
// (test images 5000..9999) keeps every score under the alert thresholds; shifted traffic (one
// class only, brighter or darker images, strong noise, synthetic shapes) pushes a score over
// them; /drift and /metrics give the same figures.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "kiln/backend/model_metadata.h"
#include "kiln/data/loader.h"
#include "kiln/data/shift.h"
#include "kiln/export/drift_reference.h"
#include "kiln/export/onnx_export.h"
#include "../test_models.h"
#include "serve_client.h"

namespace kiln::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The thresholds of the KilnPredictionDrift alert (deploy/prometheus), chosen with
// `kiln drift calibrate` (docs/monitoring.md, "Drift thresholds").
constexpr double kClassPsi = 0.1, kConfidencePsi = 0.1, kInputZ = 0.5;
constexpr int64_t kWindow = 1000;

constexpr const char* kConfig = R"(
name: "cifar"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
)";

data::ImageSet Range(const data::ImageSet& set, int64_t from, int64_t to) {
  std::vector<int64_t> idx;
  for (int64_t i = from; i < to && i < set.size(); ++i) idx.push_back(i);
  return set.Subset(idx);
}

class ServeDriftTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    ckpt_ = new train::Checkpoint(SmallTrainedModel("seed-cnn", 5, 300));
    const auto& test = SharedDataset().test;
    auto ref = exporter::ComputeDriftReference(*ckpt_, Range(test, 0, 5000), "test 0..4999");
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    exporter::OnnxExportOptions o;
    o.extra_metadata[backend::kDriftReferenceKey] = backend::DriftReferenceJson(*ref);
    auto bytes = exporter::BuildOnnxModel(*ckpt_, o);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    Write(dir_->path() / "cifar" / "config.pbtxt", kConfig);
    Write(dir_->path() / "cifar" / "1" / "model.onnx", *bytes);
    // The same model without a reference: confidence histogram only, /drift says why.
    exporter::OnnxExportOptions plain;
    auto plain_bytes = exporter::BuildOnnxModel(*ckpt_, plain);
    ASSERT_TRUE(plain_bytes.ok());
    Write(dir_->path() / "plain" / "1" / "model.onnx", *plain_bytes);
    server_ = new ServerProcess(dir_->path(), {"--drift-window-size", std::to_string(kWindow),
                                               "--drift-window-seconds", "3600"});
    ASSERT_TRUE(server_->started()) << server_->Log();
  }
  static void TearDownTestSuite() {
    if (server_ != nullptr) {
      EXPECT_EQ(server_->Terminate(), 0) << server_->Log();
    }
    delete server_;
    delete ckpt_;
    delete dir_;
  }

  // Sends `count` images of `set` (cycling through it) in requests of 8 to `model`.
  static void Send(const data::ImageSet& set, int64_t count, const std::string& model = "cifar") {
    ASSERT_GT(set.size(), 0);
    const auto& norm = ckpt_->meta.normalization;
    const int64_t per = set.image_bytes();
    for (int64_t done = 0; done < count;) {
      const int64_t batch = std::min<int64_t>(8, count - done);
      std::vector<float> input(static_cast<size_t>(batch * per));
      for (int64_t i = 0; i < batch; ++i) {
        data::NormalizeImage(set.image((done + i) % set.size()), set.channels,
                             set.height * set.width, norm, input.data() + i * per);
      }
      HttpRequest r;
      r.method = "POST";
      r.body = InferJson(input, batch);
      auto res = Http(server_->url() + "/v2/models/" + model + "/infer", r);
      ASSERT_EQ(res.status, 200) << res.body;
      done += batch;
    }
    if (model != "cifar") return;
    // The instance thread adds a batch to the drift window right after sending its answers:
    // wait until every image sent so far is counted.
    sent_ += count;
    for (int i = 0; i < 500 && Metric("kiln_prediction_confidence_count") < sent_; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_GE(Metric("kiln_prediction_confidence_count"), sent_);
  }

  static json Drift(const std::string& model = "cifar") {
    auto res = Http(server_->url() + "/v2/models/" + model + "/drift");
    EXPECT_EQ(res.status, 200) << res.body;
    return json::parse(res.body);
  }

  // The value of `name{model="cifar",version="1"<extra>}` in /metrics.
  static double Metric(const std::string& name, const std::string& extra = "") {
    auto res = Http(server_->metrics_url() + "/metrics");
    const std::regex re("(^|\n)" + name + R"(\{model="cifar",version="1")" + extra +
                        R"(\} ([^\n]+))");
    std::smatch m;
    EXPECT_TRUE(std::regex_search(res.body, m, re)) << name << extra << " not in /metrics";
    return m.size() > 2 ? std::stod(m[2].str()) : -1;
  }

  static bool OverAThreshold(const json& s) {
    bool over = s["class_psi"].get<double>() > kClassPsi ||
                s["confidence_psi"].get<double>() > kConfidencePsi;
    for (double z : s["input_mean_zscore"].get<std::vector<double>>()) over |= std::abs(z) > kInputZ;
    return over;
  }

  static TempDir* dir_;
  static train::Checkpoint* ckpt_;
  static ServerProcess* server_;
  static inline int64_t sent_ = 0;  // images sent to "cifar"
};
TempDir* ServeDriftTest::dir_ = nullptr;
train::Checkpoint* ServeDriftTest::ckpt_ = nullptr;
ServerProcess* ServeDriftTest::server_ = nullptr;

TEST_F(ServeDriftTest, InDistributionStaysUnderShiftedGoesOverTheThresholds) {
  const auto& test = SharedDataset().test;
  const data::ImageSet held_out = Range(test, 5000, 10000);
  // Each scenario sends a whole window, so the window holds only that scenario's predictions.
  Send(held_out, kWindow);
  json d = Drift();
  ASSERT_EQ(d["window"]["predictions"], kWindow);
  const json in = d["scores"];
  std::printf("drift scores, in-distribution: %s\n", in.dump().c_str());
  SCOPED_TRACE("in-distribution: " + in.dump());
  EXPECT_LT(in["class_psi"].get<double>(), kClassPsi);
  EXPECT_LT(in["confidence_psi"].get<double>(), kConfidencePsi);
  for (double z : in["input_mean_zscore"].get<std::vector<double>>()) EXPECT_LT(std::abs(z), kInputZ);
  EXPECT_FALSE(OverAThreshold(in));
  EXPECT_NEAR(in["mean_confidence"].get<double>(), in["reference_mean_confidence"].get<double>(),
              0.05);

  // /metrics renders the same computation on the same window.
  EXPECT_NEAR(Metric("kiln_drift_class_psi"), in["class_psi"].get<double>(), 1e-9);
  EXPECT_NEAR(Metric("kiln_drift_confidence_psi"), in["confidence_psi"].get<double>(), 1e-9);
  EXPECT_EQ(Metric("kiln_drift_window_samples"), kWindow);
  EXPECT_NEAR(Metric("kiln_drift_input_mean_zscore", R"(,channel="0")"),
              in["input_mean_zscore"][0].get<double>(), 1e-9);

  struct Scenario {
    std::string name;
    data::ImageSet images;
  };
  const std::vector<Scenario> shifted = {
      {"one class only", data::OnlyClass(held_out, 3)},
      {"brightness +0.2", data::ShiftImages(held_out, data::Shift::kBrightness, 0.2, 1)},
      {"brightness -0.2", data::ShiftImages(held_out, data::Shift::kBrightness, -0.2, 1)},
      {"noise sd 0.2", data::ShiftImages(held_out, data::Shift::kNoise, 0.2, 1)},
      {"synthetic shapes", data::SyntheticShapes(kWindow, 3, 32, 32, 9)},
  };
  for (const auto& s : shifted) {
    Send(s.images, kWindow);
    const json scores = Drift()["scores"];
    std::printf("drift scores, %s: %s\n", s.name.c_str(), scores.dump().c_str());
    SCOPED_TRACE(s.name + ": " + scores.dump());
    EXPECT_TRUE(OverAThreshold(scores));
  }
  // One class only moves the class distribution itself.
  Send(data::OnlyClass(held_out, 3), kWindow);
  EXPECT_GT(Drift()["scores"]["class_psi"].get<double>(), 2 * kClassPsi);
  EXPECT_LT(Drift()["scores"]["class_chi2_pvalue"].get<double>(), 1e-6);
  // Back to normal traffic: the scores come back under the thresholds.
  Send(held_out, kWindow);
  EXPECT_FALSE(OverAThreshold(Drift()["scores"])) << Drift()["scores"].dump();
}

TEST_F(ServeDriftTest, ReferenceAndHistogramsAreExportedForRecomputationAcrossReplicas) {
  Send(SharedDataset().test, 64);
  const json d = Drift();
  ASSERT_TRUE(d["reference"].is_object());
  EXPECT_EQ(d["reference"]["images"], 5000);
  EXPECT_EQ(d["reference"]["source"], "test 0..4999");
  // The reference shares as gauges, by class label and confidence bucket.
  const std::string first = SharedDataset().class_names[0];
  EXPECT_NEAR(Metric("kiln_drift_reference_class_ratio", ",class=\"" + first + "\""),
              d["reference"]["class_share"][first].get<double>(), 1e-9);
  EXPECT_NEAR(Metric("kiln_drift_reference_confidence_ratio", R"(,le="0.99")"),
              d["reference"]["confidence_share"][9].get<double>(), 1e-9);
  // The raw confidence histogram counts every prediction.
  EXPECT_GE(Metric("kiln_prediction_confidence_count"), 64);
  EXPECT_NEAR(Metric("kiln_drift_reference_mean_confidence"),
              d["reference"]["mean_confidence"].get<double>(), 1e-9);
  // /stats (the web page's live panel) carries the same scores per model version.
  const json stats = json::parse(Http(server_->url() + "/stats").body);
  bool seen = false;
  for (const json& m : stats["models"]) {
    if (m["name"] != "cifar") continue;
    seen = true;
    ASSERT_TRUE(m["drift"].is_object()) << m.dump();
    EXPECT_NEAR(m["drift"]["class_psi"].get<double>(), Drift()["scores"]["class_psi"].get<double>(),
                1e-9);
    EXPECT_EQ(m["drift"]["predictions"], Drift()["window"]["predictions"]);
  }
  EXPECT_TRUE(seen) << stats.dump();
}

// The web page's live panel (headless Chromium, as in serve_test) shows the drift scores of a
// model with a reference.
TEST_F(ServeDriftTest, WebPageShowsTheDriftScores) {
  // A full window: the page's own upload then moves the scores by one prediction in 1,000.
  Send(SharedDataset().test, kWindow);
  TempDir dir;
  const WebPageRun run = RunWebPage(server_->url(), "cifar", dir.path());
  if (!run.skip.empty()) GTEST_SKIP() << run.skip;
  const std::string& out = run.output;
  ASSERT_EQ(run.exit_code, 0) << out;
  auto j = json::parse(out.substr(out.find('{')), nullptr, false);
  ASSERT_TRUE(j.is_object()) << out;
  for (const char* row : {"cifar v1 drift: class PSI", "cifar v1 drift: confidence PSI",
                          "cifar v1 drift: max |input z|", "cifar v1 mean confidence",
                          "cifar v1 drift window", "p95 ms", "images/s"}) {
    EXPECT_TRUE(j["live"].contains(row)) << row << ": " << out;
  }
  // The page shows what /drift says (to the 3 decimals it prints, give or take the upload).
  const double psi = Drift()["scores"]["class_psi"].get<double>();
  EXPECT_NEAR(std::stod(j["live"]["cifar v1 drift: class PSI"].get<std::string>()), psi, 0.003)
      << out;
}

TEST_F(ServeDriftTest, ModelWithoutReferenceHasNoScoresAndSaysWhy) {
  Send(SharedDataset().test, 16, "plain");
  const json d = Drift("plain");
  EXPECT_TRUE(d["reference"].is_null());
  EXPECT_TRUE(d["scores"].is_null());
  for (const json& m : json::parse(Http(server_->url() + "/stats").body)["models"]) {
    if (m["name"] == "plain") {
      EXPECT_TRUE(m["drift"].is_null()) << m.dump();
    }
  }
  EXPECT_NE(d["note"].get<std::string>().find("no drift reference"), std::string::npos);
  auto metrics = Http(server_->metrics_url() + "/metrics").body;
  EXPECT_EQ(metrics.find("kiln_drift_class_psi{model=\"plain\""), std::string::npos);
  EXPECT_NE(metrics.find("kiln_prediction_confidence_count{model=\"plain\""), std::string::npos);
  // Unknown models and versions: the usual 404.
  EXPECT_EQ(Http(server_->url() + "/v2/models/nope/drift").status, 404);
  EXPECT_EQ(Http(server_->url() + "/v2/models/cifar/versions/7/drift").status, 404);
  EXPECT_EQ(Http(server_->url() + "/v2/models/cifar/versions/1/drift").status, 200);
}

}  // namespace
}  // namespace kiln::testing
