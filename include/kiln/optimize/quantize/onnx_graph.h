// Small helpers over ONNX graphs held as onnx::ModelProto (libonnx): reading and writing files,
// validation, and the numbers a manifest reports (parameters, FLOPs, operator counts).
#pragma once

#include <onnx/onnx_pb.h>

#include <filesystem>
#include <map>
#include <string>

#include "kiln/core/status.h"

namespace kiln::optimize {

// Reads an .onnx file. NotFound for a missing file, InvalidArgument for one that does not parse.
Result<onnx::ModelProto> LoadOnnx(const std::filesystem::path& file);

// Writes `model` atomically (temporary file + rename).
Status SaveOnnx(const onnx::ModelProto& model, const std::filesystem::path& file);

// onnx::checker plus strict shape inference; InvalidArgument with the checker's message.
Status CheckOnnx(const onnx::ModelProto& model);

// Multiply-adds x 2 of one sample through Conv, Gemm and MatMul nodes (float or quantized
// forms: QLinearConv, ConvInteger, MatMulInteger, QGemm), with the batch dimension set to 1 and
// shapes from ONNX shape inference. Other operators (pooling, additions) are not counted.
Result<int64_t> FlopsPerSample(const onnx::ModelProto& model);

// Elements of the weights and biases stored in the graph: every initializer except the
// quantization scales and zero points Kiln writes (names ending in "_scale"/"_zero_point").
int64_t CountParameters(const onnx::ModelProto& model);

// Number of nodes of each operator type ("QLinearConv" -> 8).
std::map<std::string, int64_t> CountOperators(const onnx::ModelProto& model);

// The version of the default ONNX operator set the model imports (0 when none).
int64_t OnnxOpset(const onnx::ModelProto& model);

// Sets (or replaces) a metadata_props entry.
void SetMetadata(onnx::ModelProto* model, const std::string& key, const std::string& value);
std::string GetMetadata(const onnx::ModelProto& model, const std::string& key);

}  // namespace kiln::optimize
