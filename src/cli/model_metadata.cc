#include "kiln/backend/factory/factory.h"
#include "kiln/backend/model_metadata.h"

#include "commands.h"

namespace kiln::cli {

Result<std::unique_ptr<backend::InferenceBackend>> OpenModelFile(const std::string& model_path,
                                                                 const std::string& backend,
                                                                 int threads) {
  std::string engine_name = backend;
  if (engine_name == "auto") engine_name = model_path.ends_with(".pt") ? "libtorch" : "onnxruntime";
  backend::BackendOptions bo;
  bo.model_path = model_path;
  bo.intra_op_threads = threads;
  return backend::CreateBackend(engine_name, bo);
}

Result<ModelMetadata> ReadModelMetadata(const backend::InferenceBackend& engine,
                                        const std::string& model_path) {
  KILN_ASSIGN_OR_RETURN(backend::KilnModelMetadata meta,
                        backend::ReadKilnMetadata(engine.metadata(), model_path));
  if (!meta.has_labels() || !meta.has_normalization()) {
    return InvalidArgumentError(
        model_path +
        ": no Kiln metadata (kiln.normalization, kiln.labels); export it with kiln export");
  }
  ModelMetadata out;
  out.normalization.mean = std::move(meta.mean);
  out.normalization.std = std::move(meta.stddev);
  out.labels = std::move(meta.labels);
  return out;
}

}  // namespace kiln::cli
