// The dynamic batcher and the repository manager, deterministically: the engine runs on a
// ManualClock (time passes only when a test says so) over fake backends (each Run is recorded,
// can be held, and answers with values the test can check), so batch formation, preferred
// sizes, the queue delay, timeouts, a full queue, draining and version swaps are asserted
// exactly, with no sleep and no wall-clock bound. The only real-time wait is a 30 s guard
// against a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kiln/core/clock.h"
#include "kiln/serve/engine/engine.h"
#include "kiln/serve/metrics/metrics.h"
#include "../test_util.h"

namespace kiln::serve {
namespace {

using std::chrono::milliseconds;
namespace fs = std::filesystem;

constexpr int64_t kFeatures = 4;  // input floats per batch element
constexpr int64_t kClasses = 2;   // output floats per batch element

// What every fake backend of a test shares: the runs so far, a gate, and the clock.
struct FakeModel {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int64_t> runs;  // batch size of each Run, in order
  std::vector<int64_t> run_versions;
  bool hold = false;  // Run blocks while true
  int running = 0;
  ManualClock* clock = nullptr;
  Clock::duration compute{};  // each Run advances the clock by this much
  std::set<int64_t> failing;  // versions whose Run fails (a broken canary)

  // Waits (30 s of real time at most, a guard against a hang) until `pred` holds.
  template <typename Pred>
  bool WaitFor(Pred pred) {
    std::unique_lock l(mu);
    return cv.wait_for(l, std::chrono::seconds(30), pred);
  }
  std::vector<int64_t> Runs() {
    std::lock_guard l(mu);
    return runs;
  }
  std::vector<int64_t> RunVersions() {
    std::lock_guard l(mu);
    return run_versions;
  }
  void Hold(bool on) {
    {
      std::lock_guard l(mu);
      hold = on;
    }
    cv.notify_all();
  }
};

// For state no condition variable announces (the engine's routing): polls every millisecond,
// for 30 s of real time at most (a guard against a hang).
template <typename Pred>
bool Eventually(Pred pred) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

// Output row i = {sum of input row i, version}: a test sees which request's data came back and
// which version ran it.
class FakeBackend : public backend::InferenceBackend {
 public:
  FakeBackend(FakeModel* model, int64_t version) : model_(model), version_(version) {}
  const std::string& name() const override { return name_; }
  const std::vector<backend::TensorInfo>& inputs() const override { return inputs_; }
  const std::vector<backend::TensorInfo>& outputs() const override { return outputs_; }
  backend::Capabilities capabilities() const override { return {true, 0, "cpu"}; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  Status Run(const float* input, int64_t batch, float* output) override {
    std::unique_lock l(model_->mu);
    model_->runs.push_back(batch);
    model_->run_versions.push_back(version_);
    ++model_->running;
    model_->cv.notify_all();
    model_->cv.wait(l, [&] { return !model_->hold; });
    if (model_->failing.count(version_) > 0) {
      --model_->running;
      model_->cv.notify_all();
      return InternalError("version " + std::to_string(version_) + " is broken");
    }
    for (int64_t i = 0; i < batch; ++i) {
      float sum = 0;
      for (int64_t j = 0; j < kFeatures; ++j) sum += input[i * kFeatures + j];
      output[i * kClasses] = sum;
      output[i * kClasses + 1] = static_cast<float>(version_);
    }
    model_->clock->Advance(model_->compute);
    --model_->running;
    model_->cv.notify_all();
    return Status::Ok();
  }

 private:
  FakeModel* model_;
  int64_t version_;
  std::string name_ = "fake";
  std::vector<backend::TensorInfo> inputs_ = {{"x", backend::DataType::kFloat32, {-1, kFeatures}}};
  std::vector<backend::TensorInfo> outputs_ = {{"y", backend::DataType::kFloat32, {-1, kClasses}}};
  std::map<std::string, std::string> metadata_;
};

// A request's answer, once it comes.
struct Answer {
  std::promise<std::pair<Status, InferResult>> promise;
  std::future<std::pair<Status, InferResult>> future = promise.get_future();
  std::pair<Status, InferResult> Get() {
    EXPECT_EQ(future.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    return future.get();
  }
  bool Ready() { return future.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
};

class BatcherTest : public ::testing::Test {
 protected:
  // A repository with model "fake", versions `versions`, and `config` (dynamic_batching etc.)
  // appended to the common part of its config.pbtxt.
  void WriteModel(const std::string& batching, const std::vector<int>& versions) {
    const fs::path dir = repo_.path() / "fake";
    fs::create_directories(dir);
    std::ofstream(dir / "config.pbtxt")
        << "platform: \"onnxruntime_onnx\"\nmax_batch_size: 8\n"
        << "input [{ name: \"x\" data_type: TYPE_FP32 dims: [4] }]\n"
        << "output [{ name: \"y\" data_type: TYPE_FP32 dims: [2] }]\n"
        << batching;
    for (int v : versions) AddVersion(v);
  }
  void AddVersion(int v) {
    const fs::path vdir = repo_.path() / "fake" / std::to_string(v);
    fs::create_directories(vdir);
    std::ofstream(vdir / "model.onnx") << "opened by the fake backend factory";
  }

  void Start(ModelControlMode mode = ModelControlMode::kNone) {
    EngineOptions o;
    o.repository = repo_.path().string();
    o.control_mode = mode;
    if (mode == ModelControlMode::kExplicit) o.startup_models = {"fake"};
    o.drift_window_size = 0;
    o.clock = &clock_;
    o.backend_factory = [this](const std::string&, const backend::BackendOptions& b)
        -> Result<std::unique_ptr<backend::InferenceBackend>> {
      const int64_t version = std::stoll(fs::path(b.model_path).parent_path().filename());
      return std::unique_ptr<backend::InferenceBackend>(new FakeBackend(&fake_, version));
    };
    fake_.clock = &clock_;
    auto e = Engine::Create(o, &registry_);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value();
    auto m = engine_->Find("fake", "");
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    model_ = *m;
  }

  // Queues `batch` elements whose values are all `value`; the answer comes in the result.
  std::shared_ptr<Answer> Submit(float value, int64_t batch = 1, InferOptions options = {}) {
    auto a = std::make_shared<Answer>();
    engine_->Infer(model_, std::vector<float>(static_cast<size_t>(batch * kFeatures), value),
                   batch, [a](Status s, InferResult r) {
                     a->promise.set_value({std::move(s), std::move(r)});
                   }, options);
    return a;
  }
  // The version that answered one request (0 when it failed).
  int64_t AnsweredBy(float value, const std::string& key = "") {
    auto [s, r] = Submit(value, 1, {true, key})->Get();
    EXPECT_TRUE(s.ok()) << s.ToString();
    return s.ok() ? r.version : 0;
  }
  nlohmann::json Routing() {
    auto r = engine_->Routing("fake");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return nlohmann::json::parse(r.ok() ? *r : "{}");
  }

  void TearDown() override {
    fake_.Hold(false);
    if (engine_) engine_->Shutdown();
  }

  testing::TempDir repo_;
  ManualClock clock_;
  FakeModel fake_;
  metrics::Registry registry_;
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<const ModelInfo> model_;
};

constexpr const char* kPreferred4 =
    "dynamic_batching { preferred_batch_size: [4] max_queue_delay_microseconds: 100000 }\n";
constexpr const char* kDelayOnly = "dynamic_batching { max_queue_delay_microseconds: 100000 }\n";

TEST_F(BatcherTest, APreferredSizeCutsTheBatchWithoutWaitingForTheDelay) {
  WriteModel(kPreferred4, {1});
  Start();
  std::vector<std::shared_ptr<Answer>> answers;
  for (int i = 0; i < 4; ++i) answers.push_back(Submit(static_cast<float>(i)));
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.runs.size() == 1; }));
  // Time never moved: only the preferred size can have released the batch, and it ran whole.
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{4}));
  for (int i = 0; i < 4; ++i) {
    auto [s, r] = answers[static_cast<size_t>(i)]->Get();
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(r.executed_batch, 4);
    EXPECT_EQ(r.queue_ns, 0);
    ASSERT_EQ(r.output.size(), 2u);
    EXPECT_FLOAT_EQ(r.output[0], static_cast<float>(i * kFeatures));  // its own data came back
  }
}

TEST_F(BatcherTest, ThePartialBatchWaitsExactlyTheQueueDelay) {
  WriteModel(kPreferred4, {1});
  Start();
  auto a = Submit(1), b = Submit(2);
  clock_.Advance(milliseconds(99));
  auto c = Submit(3);
  EXPECT_TRUE(fake_.Runs().empty());
  clock_.Advance(milliseconds(1));  // 100 ms after the oldest request: the delay is up
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.runs.size() == 1; }));
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{3}));
  EXPECT_EQ(a->Get().second.queue_ns, 100'000'000);
  EXPECT_EQ(b->Get().second.queue_ns, 100'000'000);
  EXPECT_EQ(c->Get().second.queue_ns, 1'000'000);
}

TEST_F(BatcherTest, MaxBatchSizeSplitsAndARequestIsNeverSplit) {
  WriteModel(kDelayOnly, {1});
  Start();
  std::vector<std::shared_ptr<Answer>> answers;
  for (int i = 0; i < 10; ++i) answers.push_back(Submit(1));
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.runs.size() == 1; }));
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{8}));  // full: no need to wait
  clock_.Advance(milliseconds(100));
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.runs.size() == 2; }));
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{8, 2}));
  for (auto& a : answers) EXPECT_TRUE(a->Get().first.ok());

  // 5 + 4 elements do not fit in 8: two batches, each request whole.
  auto five = Submit(1, 5), four = Submit(1, 4);
  clock_.Advance(milliseconds(100));
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.runs.size() == 4; }));
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{8, 2, 5, 4}));
  EXPECT_EQ(five->Get().second.output.size(), static_cast<size_t>(5 * kClasses));
  EXPECT_EQ(four->Get().second.output.size(), static_cast<size_t>(4 * kClasses));
}

TEST_F(BatcherTest, ComputeTimesComeFromTheClock) {
  WriteModel(kPreferred4, {1});
  Start();
  fake_.compute = milliseconds(7);
  std::vector<std::shared_ptr<Answer>> answers;
  for (int i = 0; i < 4; ++i) answers.push_back(Submit(1));
  for (auto& a : answers) {
    auto [s, r] = a->Get();
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(r.compute_infer_ns, 7'000'000);
    EXPECT_EQ(r.compute_input_ns, 0);
  }
  auto stats = engine_->Statistics("fake", "1");
  ASSERT_TRUE(stats.ok());
  ASSERT_EQ(stats->size(), 1u);
  EXPECT_EQ((*stats)[0].inference_count, 4u);
  EXPECT_EQ((*stats)[0].execution_count, 1u);
  EXPECT_EQ((*stats)[0].compute_infer.ns, 4u * 7'000'000u);  // per request, as Triton counts
  ASSERT_EQ((*stats)[0].batch_stats.size(), 1u);
  EXPECT_EQ((*stats)[0].batch_stats[0].batch_size, 4);
}

TEST_F(BatcherTest, ARequestPastItsTimeoutFailsWithoutRunning) {
  WriteModel("dynamic_batching { max_queue_delay_microseconds: 100000 "
             "default_queue_policy { default_timeout_microseconds: 50000 } }\n",
             {1});
  Start();
  auto a = Submit(1);
  clock_.Advance(milliseconds(60));
  auto [s, r] = a->Get();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "request timed out after waiting 60 ms in the queue of model 'fake'");
  EXPECT_TRUE(fake_.Runs().empty());
  auto stats = engine_->Statistics("fake", "");
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ((*stats)[0].fail.count, 1u);
  EXPECT_EQ((*stats)[0].fail.ns, 60'000'000u);
}

TEST_F(BatcherTest, AFullQueueRefusesAtOnceAndServesTheRest) {
  WriteModel("dynamic_batching { max_queue_delay_microseconds: 100000 "
             "default_queue_policy { max_queue_size: 2 } }\n",
             {1});
  Start();
  auto a = Submit(1), b = Submit(2), refused = Submit(3);
  // Answered inline, before any time passed or any batch ran.
  ASSERT_TRUE(refused->Ready());
  auto [s, r] = refused->Get();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "model 'fake' queue is full (2 requests): retry later");
  EXPECT_EQ(engine_->Pending(), 2);
  clock_.Advance(milliseconds(100));
  EXPECT_TRUE(a->Get().first.ok());
  EXPECT_TRUE(b->Get().first.ok());
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{2}));
}

TEST_F(BatcherTest, ShutdownRunsWhatIsQueuedWithoutWaitingForTheDelay) {
  WriteModel(kDelayOnly, {1});
  Start();
  auto a = Submit(1), b = Submit(2), c = Submit(3);
  engine_->Shutdown();  // returns once every queued request is answered
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{3}));
  for (auto* x : {&a, &b, &c}) {
    ASSERT_TRUE((*x)->Ready());
    EXPECT_TRUE((*x)->Get().first.ok());
  }
  // After shutdown the model is gone and a request fails at once.
  auto late = Submit(4);
  ASSERT_TRUE(late->Ready());
  EXPECT_FALSE(late->Get().first.ok());
}

TEST_F(BatcherTest, WithoutDynamicBatchingEachRequestRunsAlone) {
  WriteModel("", {1});
  Start();
  fake_.Hold(true);
  auto a = Submit(1, 2);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.running == 1; }));
  auto b = Submit(1, 3), c = Submit(1, 1);
  fake_.Hold(false);
  for (auto* x : {&a, &b, &c}) EXPECT_TRUE((*x)->Get().first.ok());
  EXPECT_EQ(fake_.Runs(), (std::vector<int64_t>{2, 3, 1}));
}

TEST_F(BatcherTest, AVersionSwapFinishesTheOldVersionsRequestsAndRoutesNewOnesToTheNew) {
  WriteModel("dynamic_batching { preferred_batch_size: [1] }\n", {1});
  Start(ModelControlMode::kExplicit);
  fake_.Hold(true);
  auto running = Submit(1);  // version 1 runs it and is held there
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.running == 1; }));
  auto queued = Submit(2);   // queued behind it in version 1
  AddVersion(2);
  // The reload swaps version 2 in, then waits for version 1 to finish its queue.
  auto reload = std::async(std::launch::async, [&] { return engine_->Load("fake"); });
  ASSERT_TRUE(Eventually([&] {
    auto m = engine_->Find("fake", "");
    return m.ok() && (*m)->version == 2;
  }));
  // A client that named no version follows the latest: its old ModelInfo says version 1.
  auto routed = Submit(3);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.runs.size() == 2; }));
  EXPECT_EQ(fake_.RunVersions(), (std::vector<int64_t>{1, 2}));
  fake_.Hold(false);
  EXPECT_TRUE(reload.get().ok());
  auto r1 = running->Get(), r2 = queued->Get(), r3 = routed->Get();
  ASSERT_TRUE(r1.first.ok() && r2.first.ok() && r3.first.ok());
  EXPECT_FLOAT_EQ(r1.second.output[1], 1);  // ran on version 1
  EXPECT_FLOAT_EQ(r2.second.output[1], 1);  // queued on version 1: finished there, not dropped
  EXPECT_FLOAT_EQ(r3.second.output[1], 2);
  EXPECT_FLOAT_EQ(r2.second.output[0], 2 * kFeatures);
  // Version 1 is gone; asking for it by number fails.
  EXPECT_EQ(engine_->Find("fake", "1").status().code(), StatusCode::kNotFound);
}

TEST_F(BatcherTest, TheEngineChecksEveryRequestItself) {
  WriteModel(kPreferred4, {1});
  Start();
  auto a = std::make_shared<Answer>();
  engine_->Infer(model_, std::vector<float>(3), 1,
                 [a](Status s, InferResult r) { a->promise.set_value({s, r}); });
  EXPECT_EQ(a->Get().first.code(), StatusCode::kInvalidArgument);
  auto big = std::make_shared<Answer>();
  engine_->Infer(model_, std::vector<float>(9 * kFeatures), 9,
                 [big](Status s, InferResult r) { big->promise.set_value({s, r}); });
  EXPECT_EQ(big->Get().first.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(fake_.Runs().empty());
}

// --- traffic between versions (docs/rollout.md) ---------------------------------------------

constexpr const char* kAllVersions = "version_policy: { all {} }\n";

// Versions chosen by weight over many requests: the share of version 2 is 0.25 within 4.5
// binomial standard deviations (a false failure once in ~150,000 runs); a pinned request is
// never routed.
TEST_F(BatcherTest, AWeightedSplitFollowsTheWeights) {
  WriteModel(kAllVersions, {1, 2});
  Start();
  KILN_ASSERT_RESULT_OK(engine_->SetRouting("fake", R"({"weights": {"1": 75, "2": 25}})"));
  const int n = 2000;
  int second = 0;
  for (int i = 0; i < n; ++i) second += AnsweredBy(1.f) == 2 ? 1 : 0;
  const double sd = std::sqrt(n * 0.25 * 0.75);
  EXPECT_NEAR(second, n * 0.25, 4.5 * sd);
  auto v1 = engine_->Find("fake", "1");
  KILN_ASSERT_RESULT_OK(v1);
  for (int i = 0; i < 50; ++i) {
    auto a = std::make_shared<Answer>();
    engine_->Infer(*v1, std::vector<float>(kFeatures, 1.f), 1,
                   [a](Status s, InferResult r) { a->promise.set_value({s, r}); },
                   {/*follow_latest=*/false, ""});
    EXPECT_EQ(a->Get().second.version, 1);
  }
  const auto state = Routing();
  EXPECT_EQ(state["versions"]["1"]["requests"].get<int>() + state["versions"]["2"]["requests"].get<int>(), n);
  EXPECT_NE(registry_.Render().find("kiln_routing_weight{model=\"fake\",version=\"2\"} 0.25"),
            std::string::npos);
}

TEST_F(BatcherTest, StickyKeysAlwaysReachTheSameVersion) {
  WriteModel(kAllVersions, {1, 2});
  Start();
  KILN_ASSERT_RESULT_OK(engine_->SetRouting("fake", R"({"weights": {"1": 50, "2": 50}})"));
  std::set<int64_t> seen;
  for (int k = 0; k < 100; ++k) {
    const std::string key = "user-" + std::to_string(k);
    const int64_t first = AnsweredBy(1.f, key);
    seen.insert(first);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(AnsweredBy(1.f, key), first) << key;
  }
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2}));
}

// The shadow gets a copy of every request, never answers, and counts the images whose top-1
// differs from the primary's. Fake outputs are {4 x value, version}: value 0.3 -> top-1 0 on
// version 1 and 1 on version 2 (they disagree), value 1 -> top-1 0 on both.
TEST_F(BatcherTest, TheShadowComparesTopOneAndNeverAnswers) {
  WriteModel(kAllVersions, {1, 2});
  Start();
  KILN_ASSERT_RESULT_OK(engine_->SetRouting(
      "fake", R"({"weights": {"1": 1}, "shadow": {"version": 2, "share": 1.0}})"));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(AnsweredBy(0.3f), 1);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(AnsweredBy(1.f), 1);
  ASSERT_TRUE(Eventually([&] { return Routing()["shadow"]["2"]["requests"] == 20; }))
      << Routing().dump();
  const auto shadow = Routing()["shadow"]["2"];
  EXPECT_EQ(shadow["images"], 20);
  EXPECT_EQ(shadow["disagreements"], 10);
  EXPECT_EQ(shadow["dropped"], 0);
  const std::string text = registry_.Render();
  EXPECT_NE(text.find("kiln_shadow_disagreement_total{model=\"fake\",version=\"2\"} 10"),
            std::string::npos) << text;
}

// Shadow work is dropped first: with the queues over half full no copy is made, and every
// primary request is still answered.
TEST_F(BatcherTest, ShadowWorkIsDroppedWhenQueuesFill) {
  WriteModel(std::string(kAllVersions) + "dynamic_batching { default_queue_policy { max_queue_size: 8 } }\n",
             {1, 2});
  Start();
  KILN_ASSERT_RESULT_OK(engine_->SetRouting(
      "fake", R"({"weights": {"1": 1}, "shadow": {"version": 2, "share": 1.0}})"));
  fake_.Hold(true);
  std::vector<std::shared_ptr<Answer>> answers;
  for (int i = 0; i < 7; ++i) answers.push_back(Submit(1.f));
  fake_.Hold(false);
  for (auto& a : answers) {
    auto [s, r] = a->Get();
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(r.version, 1);
  }
  const auto shadow = Routing()["shadow"]["2"];
  EXPECT_GT(shadow["dropped"].get<int>(), 0) << shadow;
  ASSERT_TRUE(Eventually([&] {
    const auto s = Routing()["shadow"]["2"];
    return s["requests"].get<int>() + s["dropped"].get<int>() == 7;
  })) << Routing().dump();
}

// A canary that fails is rolled back once its error ratio breaches the bound, and the stable
// version answers every request meanwhile: no client sees a failure.
TEST_F(BatcherTest, AFailingCanaryIsRolledBackAndNoRequestFails) {
  WriteModel(kAllVersions, {1, 2});
  fake_.failing = {2};
  Start();
  KILN_ASSERT_RESULT_OK(engine_->SetRouting(
      "fake", R"({"weights": {"1": 50, "2": 50}, "rollout": {"canary": 2, "min_requests": 20}})"));
  int failed = 0;
  for (int i = 0; i < 200; ++i) failed += AnsweredBy(1.f) == 1 ? 0 : 1;
  EXPECT_EQ(failed, 0);
  const auto state = Routing();
  ASSERT_EQ(state["decisions"].size(), 1u) << state;
  EXPECT_NE(state["decisions"][0].get<std::string>().find("rollback version 2: error ratio 1.0000"),
            std::string::npos) << state;
  EXPECT_EQ(state["versions"]["2"]["requests"], 20);  // rolled back at the 20th
  EXPECT_EQ(state["versions"]["2"]["fallbacks"], 20);
  EXPECT_FALSE(state["policy"].contains("rollout"));
  EXPECT_NE(registry_.Render().find("kiln_rollout_decisions_total{model=\"fake\",version=\"2\",decision=\"rollback\"} 1"),
            std::string::npos) << registry_.Render();
}

// A healthy canary is promoted to 100% after min_requests.
TEST_F(BatcherTest, AHealthyCanaryIsPromoted) {
  WriteModel(kAllVersions, {1, 2});
  Start();
  KILN_ASSERT_RESULT_OK(engine_->SetRouting(
      "fake", R"({"weights": {"1": 50, "2": 50}, "rollout": {"canary": 2, "min_requests": 30}})"));
  for (int i = 0; i < 200 && Routing()["decisions"].empty(); ++i) AnsweredBy(1.f);
  const auto state = Routing();
  ASSERT_EQ(state["decisions"].size(), 1u) << state;
  EXPECT_EQ(state["decisions"][0].get<std::string>().rfind("promote version 2", 0), 0u) << state;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(AnsweredBy(1.f), 2);
}

// A shadow canary is judged on agreement: rolled back when its top-1 disagrees too often.
TEST_F(BatcherTest, AShadowCanaryThatDisagreesIsRolledBack) {
  WriteModel(kAllVersions, {1, 2});
  Start();
  KILN_ASSERT_RESULT_OK(engine_->SetRouting(
      "fake", R"({"weights": {"1": 1}, "shadow": {"version": 2, "share": 1.0},
                  "rollout": {"canary": 2, "min_requests": 20, "min_agreement": 0.9}})"));
  for (int i = 0; i < 40; ++i) AnsweredBy(i % 2 ? 0.3f : 1.f);  // half disagree
  ASSERT_TRUE(Eventually([&] { return !Routing()["decisions"].empty(); })) << Routing().dump();
  EXPECT_NE(Routing()["decisions"][0].get<std::string>().find("top-1 agreement 0.5"),
            std::string::npos) << Routing().dump();
}

// Policies are checked before they replace the one in force; config.pbtxt's applies at load.
TEST_F(BatcherTest, RoutingPoliciesAreCheckedAndLoadFromTheConfig) {
  WriteModel(std::string(kAllVersions) +
                 "parameters { key: \"kiln.routing\" value: { string_value: "
                 "\"{\\\"weights\\\": {\\\"2\\\": 1}}\" } }\n",
             {1, 2});
  Start();
  EXPECT_EQ(Routing()["policy"]["weights"], nlohmann::json({{"2", 1.0}}));
  EXPECT_EQ(AnsweredBy(1.f), 2);
  const std::pair<const char*, const char*> bad[] = {
      {"not json", "not valid JSON"},
      {R"({"weights": {"3": 1}})", "version 3 of 'fake' is not READY"},
      {R"({"weights": {"1": -1}})", "must be a number >= 0"},
      {R"({"weights": {"1": 0}})", "at least one version needs a weight above 0"},
      {R"({"weights": {"1": 1}, "shadow": {"version": 1}})", "also takes weighted traffic"},
      {R"({"weights": {"2": 1}, "rollout": {"canary": 2}})", "no stable version"},
      {R"({"weights": {"1": 1, "2": 1}, "rollout": {"canary": 2, "min_agreement": 0.9}})",
       "min_agreement needs the canary as the shadow"},
      {R"({"weigths": {}})", "unknown field 'weigths'"},
  };
  for (const auto& [policy, message] : bad) {
    auto r = engine_->SetRouting("fake", policy);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << policy;
    EXPECT_NE(r.status().message().find(message), std::string::npos)
        << policy << ": " << r.status().message();
  }
  EXPECT_EQ(AnsweredBy(1.f), 2);  // the policy in force stayed
  EXPECT_EQ(engine_->SetRouting("nope", "{}").status().code(), StatusCode::kNotFound);
  KILN_ASSERT_RESULT_OK(engine_->SetRouting("fake", "{}"));
  EXPECT_EQ(AnsweredBy(1.f), 2);  // no policy: the highest READY version
}

}  // namespace
}  // namespace kiln::serve
