// The kiln command line: one Register* per subcommand (one file each). Each registers its
// options on `app` and sets `*run` to the function that executes it, returning the exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "kiln/backend/inference_backend.h"
#include "kiln/data/loader.h"

namespace kiln::cli {

using Runner = std::function<int()>;

void RegisterDataCommand(CLI::App& app, Runner* run);
void RegisterTrainCommand(CLI::App& app, Runner* run);
void RegisterEvalCommand(CLI::App& app, Runner* run);
void RegisterExportCommand(CLI::App& app, Runner* run);
void RegisterPredictCommand(CLI::App& app, Runner* run);
void RegisterOptimizeCommand(CLI::App& app, Runner* run);
void RegisterBenchCommand(CLI::App& app, Runner* run);
void RegisterPipelineCommand(CLI::App& app, Runner* run);
void RegisterVersionCommand(CLI::App& app, Runner* run);
void RegisterServeCommand(CLI::App& app, Runner* run);
void RegisterLoadgenCommand(CLI::App& app, Runner* run);
void RegisterDriftCommand(CLI::App& app, Runner* run);
void RegisterRepoCommand(CLI::App& app, Runner* run);
void RegisterTuneCommand(CLI::App& app, Runner* run);

// What an exported model says about its input and output (Kiln metadata, see
// exporter::ExportMetadata): normalization and label names. InvalidArgument naming
// `model_path` when the file has none or it is malformed.
struct ModelMetadata {
  data::Normalization normalization;
  std::vector<std::string> labels;
};
Result<ModelMetadata> ReadModelMetadata(const backend::InferenceBackend& engine,
                                        const std::string& model_path);

// Opens an exported model file with `backend` ("auto": libtorch for .pt, else onnxruntime).
Result<std::unique_ptr<backend::InferenceBackend>> OpenModelFile(const std::string& model_path,
                                                                 const std::string& backend,
                                                                 int threads);

// The command line kiln was started with (for reports).
const std::string& CommandLine();

// Set by the first SIGINT/SIGTERM; long commands poll it and stop cleanly.
const std::atomic<bool>& StopRequested();

// The default data location shown in --help ("data/cifar-10-binary.tar.gz").
const char* DefaultDataPath();

// Exit codes: 0 success, 1 failure of the work, 2 bad command line, 130 interrupted.
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitInterrupted = 130;

}  // namespace kiln::cli
