#include "kiln/core/hash.h"

#include <gtest/gtest.h>

#include <fstream>

#include "../test_util.h"

namespace kiln {
namespace {

TEST(HashTest, KnownDigests) {
  testing::TempDir dir;
  auto file = dir.path() / "abc.txt";
  std::ofstream(file) << "abc";
  auto md5 = FileDigest(file, DigestKind::kMd5);
  KILN_ASSERT_RESULT_OK(md5);
  EXPECT_EQ(*md5, "900150983cd24fb0d6963f7d28e17f72");
  auto sha = FileDigest(file, DigestKind::kSha256);
  KILN_ASSERT_RESULT_OK(sha);
  EXPECT_EQ(*sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(HashTest, MissingFileIsNotFound) {
  auto r = FileDigest("/nonexistent/kiln", DigestKind::kMd5);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
}

TEST(HashTest, SharedArchiveMatchesItsPublishedSha256) {
  auto archive = testing::DataArchive();
  std::ifstream in(archive.string() + ".sha256");
  std::string want;
  in >> want;
  ASSERT_EQ(want.size(), 64U) << "cannot read " << archive << ".sha256";
  auto got = FileDigest(archive, DigestKind::kSha256);
  KILN_ASSERT_RESULT_OK(got);
  EXPECT_EQ(*got, want);
}

}  // namespace
}  // namespace kiln
