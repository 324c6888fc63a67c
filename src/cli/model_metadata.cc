#include "kiln/backend/model_metadata.h"

#include "commands.h"

namespace kiln::cli {

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
