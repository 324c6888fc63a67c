// The OpenVINO backend: runs an ONNX model (FP32, or Kiln's and other tools' QDQ INT8 graphs)
// or OpenVINO IR (model.xml) through OpenVINO's CPU plugin, with the C++ runtime of the pinned
// `openvino` wheel that scripts/setup.sh provisions into third_party/openvino (its libstdc++
// ABI is the new one, like Kiln's: docs/decisions.md, "OpenVINO").
// Prefer CreateBackend("openvino", ...) from factory/factory.h; this header is for code that
// needs this engine specifically.
//
// Options used (BackendOptions): intra_op_threads (INFERENCE_NUM_THREADS), performance_hint
// (LATENCY, the default: one stream; THROUGHPUT: the plugin picks several streams),
// streams (NUM_STREAMS; 0 = the hint's choice), inference_precision ("f32" by default, so
// results match ONNX Runtime's; "bf16" where the CPU has it), cpu_pinning. A model with a
// dynamic batch is compiled once with that dimension dynamic. With more than one stream,
// Run() splits a batch into one contiguous slice per stream and runs the slices concurrently,
// one infer request each. Kiln metadata comes from the ONNX metadata_props (OpenVINO keeps them
// under the model's rt_info "framework"). Exceptions from OpenVINO never escape.
// See InferenceBackend for Run().
#pragma once

#include <memory>
#include <string>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/status.h"

namespace kiln::backend {

Result<std::unique_ptr<InferenceBackend>> CreateOpenVinoBackend(const BackendOptions& options);

// The runtime's build number (e.g. "2026.4.1-..."), for reports; Unavailable when the runtime
// cannot be loaded.
Result<std::string> OpenVinoVersion();

}  // namespace kiln::backend
