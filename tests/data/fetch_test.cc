#include "kiln/data/fetch.h"

#include <gtest/gtest.h>

#include "../test_util.h"
#include "kiln/core/hash.h"

namespace kiln::data {
namespace {

namespace fs = std::filesystem;

// libcurl reads file:// URLs, so the real download path runs here without internet.
TEST(FetchTest, DownloadsAndVerifiesTheChecksum) {
  testing::TempDir dir;
  const fs::path archive = fs::absolute(testing::DataArchive());
  auto md5 = FileDigest(archive, DigestKind::kMd5);
  KILN_ASSERT_RESULT_OK(md5);
  FetchOptions o;
  o.out_dir = dir.path() / "data";
  o.url = "file://" + archive.string();
  o.md5 = *md5;
  auto got = FetchArchive(o, nullptr);
  KILN_ASSERT_RESULT_OK(got);
  EXPECT_EQ(*got, o.out_dir / "cifar-10-binary.tar.gz");
  EXPECT_EQ(fs::file_size(*got), fs::file_size(archive));
  // Nothing but the archive: no temporary download file left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(o.out_dir), fs::directory_iterator()), 1);
  // A second fetch reuses the verified copy.
  auto again = FetchArchive(o, nullptr);
  KILN_ASSERT_RESULT_OK(again);
}

TEST(FetchTest, ChecksumMismatchIsAnErrorAndLeavesNothing) {
  // The shared archive was rebuilt from PNGs, so it does not match the official MD5.
  testing::TempDir dir;
  FetchOptions o;
  o.out_dir = dir.path();
  o.url = "file://" + fs::absolute(testing::DataArchive()).string();
  auto got = FetchArchive(o, nullptr);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(
      got.status().message().find("does not match the published c32a1d4ab5d03f1284b67883e8d87530"),
      std::string::npos)
      << got.status().ToString();
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(FetchTest, UnreachableServerSaysHowToProceedOffline) {
  testing::TempDir dir;
  FetchOptions o;
  o.out_dir = dir.path();
  o.url = "http://127.0.0.1:9/cifar-10-binary.tar.gz";  // loopback, nothing listens on port 9
  o.connect_timeout_s = 5;
  auto got = FetchArchive(o, nullptr);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(got.status().message().find("--data/--archive"), std::string::npos)
      << got.status().ToString();
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

}  // namespace
}  // namespace kiln::data
