#include <gtest/gtest.h>

#include "../test_util.h"
#include "kiln/backend/onnxruntime/onnxruntime_backend.h"

namespace kiln::backend {
namespace {

// ONNX Runtime is provisioned by scripts/setup.sh (library 1.30.0 with 1.21.0 headers) or
// comes from the system: creating an Ort::Env must work and report a 1.x version.
TEST(OnnxRuntimeTest, EnvCreatesAndReportsItsVersion) {
  auto v = OnnxRuntimeVersion();
  KILN_ASSERT_RESULT_OK(v);
  std::cout << "ONNX Runtime version: " << *v << "\n";
  EXPECT_EQ(v->rfind("1.", 0), 0U) << *v;
}

}  // namespace
}  // namespace kiln::backend
