// Test helper: declares an ONNX graph input/output as an FP32 tensor of `dims` (a negative
// dimension becomes the symbolic "batch"). Header-only, for the tests and fuzz targets that
// build small ONNX graphs by hand.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::testing {

inline void SetFloatTensorType(onnx::ValueInfoProto* v, const std::string& name,
                               const std::vector<int64_t>& dims) {
  v->set_name(name);
  auto* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) {
    auto* dim = t->mutable_shape()->add_dim();
    if (d < 0) {
      dim->set_dim_param("batch");
    } else {
      dim->set_dim_value(d);
    }
  }
}

}  // namespace kiln::testing
