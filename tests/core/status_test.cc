#include "kiln/core/status.h"

#include <gtest/gtest.h>

namespace kiln {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError(std::to_string(x) + " is odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  KILN_ASSIGN_OR_RETURN(int h, Half(x));
  KILN_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  KILN_RETURN_IF_ERROR(Half(x).status());
  return Status::Ok();
}

TEST(StatusTest, OkAndErrorStrings) {
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().ToString(), "OK");
  Status s = NotFoundError("model 'x'");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "not found: model 'x'");
  EXPECT_EQ(s.WithContext("loading").ToString(), "not found: loading: model 'x'");
}

TEST(StatusTest, EveryCodeHasAName) {
  const StatusCode codes[] = {StatusCode::kInvalidArgument,   StatusCode::kNotFound,
                              StatusCode::kAlreadyExists,     StatusCode::kUnavailable,
                              StatusCode::kResourceExhausted, StatusCode::kUnimplemented,
                              StatusCode::kCancelled,         StatusCode::kInternal};
  for (StatusCode c : codes) EXPECT_NE(StatusCodeName(c), "unknown");
}

TEST(ResultTest, MacrosPropagate) {
  auto q = Quarter(12);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(*q, 3);
  auto bad = Quarter(6);  // 6 -> 3 -> odd
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "3 is odd");
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_FALSE(CheckEven(5).ok());
}

}  // namespace
}  // namespace kiln
