// The model repository manager, as Triton's ModelRepositoryManager: reads a Triton-layout
// folder (<model>/config.pbtxt, <model>/<version>/model.*), loads the versions a model's
// version_policy chooses into Batchers, swaps a reloaded model in whole, polls the folder for
// changes (poll mode) or loads and unloads on request (explicit mode), and publishes each
// version's readiness. Internal to kiln_serve_engine.
//
// Loads run one at a time (load_mu_) and outside mu_, the lock that request routing (Find)
// takes, so a slow load never holds up inference. A failed reload keeps the versions that were
// serving (as Triton). A replaced or unloaded version is stopped after the swap: it finishes its
// queued requests, new ones go to its successor. Thread-safe.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "batcher.h"
#include "traffic.h"
#include "kiln/serve/engine/engine.h"
#include "kiln/serve/metrics/metrics.h"

namespace kiln::serve {

class ModelRepository {
 public:
  // `registry` must outlive the repository. Nothing is read until Start().
  ModelRepository(const EngineOptions& options, metrics::Registry* registry);
  ~ModelRepository();

  // Loads the startup models per the control mode and starts polling (poll mode). NotFound
  // when the repository is not a folder; models that fail are UNAVAILABLE, not an error.
  Status Start();
  // `version` "" means the highest READY version. NotFound for an unknown model or version,
  // Unavailable for one that is not ready, InvalidArgument for a version that is not a number.
  Result<std::shared_ptr<Batcher>> Find(const std::string& name, const std::string& version);
  // The READY versions of `name` ("" = of every model): NotFound for an unknown model,
  // Unavailable when none is ready (an empty list only for "").
  Result<std::vector<std::shared_ptr<Batcher>>> Ready(const std::string& name);
  std::vector<ModelIndexEntry> Index();
  // `config_json`: Triton's configuration override (ParseModelConfigJson), used instead of
  // config.pbtxt for this load; a config that does not parse or load is InvalidArgument and the
  // versions serving go on serving.
  Status Load(const std::string& name, const std::optional<std::string>& config_json);
  Status Unload(const std::string& name);
  // The model's traffic policy (null when it has none, or the model is unknown).
  std::shared_ptr<Traffic> TrafficOf(const std::string& name);
  // Engine::Routing / SetRouting.
  Result<std::string> Routing(const std::string& name);
  Result<std::string> SetRouting(const std::string& name, const std::string& policy_json);
  // Stops polling and every version (each finishes its queued requests). Idempotent.
  void Shutdown();

 private:
  struct VersionState {
    std::shared_ptr<Batcher> model;  // null when unavailable
    std::string state = "UNAVAILABLE";
    std::string reason;
  };
  struct ModelEntry {
    std::map<int64_t, VersionState> versions;
    std::string reason;  // model-level failure (bad config, no versions) or "unloaded"
    std::string fingerprint;
    bool loaded = false;
    std::shared_ptr<Traffic> traffic;  // null: the highest READY version takes every request
  };

  std::vector<std::string> ScanNames() const;
  std::shared_ptr<DriftTracker> MakeDriftTracker(const ModelInfo& info);
  void PublishReady(const std::string& name, const ModelEntry& old, const ModelEntry& entry);
  Result<std::shared_ptr<Batcher>> LoadVersion(const std::string& name, int64_t version,
                                               const inference::ModelConfig& base,
                                               const std::vector<std::string>& warnings);
  // `override_config`: use it instead of the model's config.pbtxt (null: read the file). OK when
  // a version of the new state is READY; else InvalidArgument with the reasons, while the
  // versions that were serving go on serving.
  Status LoadModel(const std::string& name,
                   const inference::ModelConfig* override_config = nullptr);
  void UnloadModel(const std::string& name, const std::string& reason);
  static void Retire(ModelEntry& old);
  void Poll();

  const EngineOptions options_;
  metrics::Registry* const registry_;
  const BackendFactory backend_factory_;
  std::mutex load_mu_;  // one load or unload at a time
  std::mutex mu_;
  std::map<std::string, ModelEntry> models_;  // guarded by mu_
  bool shut_down_ = false;                    // guarded by mu_
  std::condition_variable poll_cv_;
  std::thread poller_;
};

}  // namespace kiln::serve
