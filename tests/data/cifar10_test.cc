#include "kiln/data/cifar10.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>

#include "../test_util.h"

namespace kiln::data {
namespace {

namespace fs = std::filesystem;

TEST(Cifar10Test, RealArchiveVerifies) {
  const Dataset& ds = testing::SharedDataset();
  EXPECT_EQ(ds.train.size(), 50000);
  EXPECT_EQ(ds.test.size(), 10000);
  EXPECT_EQ(ds.train.pixels.size(), 50000U * 3072U);
  ASSERT_EQ(ds.class_names.size(), 10U);
  EXPECT_EQ(ds.class_names[0], "airplane");
  EXPECT_EQ(ds.class_names[9], "truck");
  for (int64_t c : ds.train.ClassCounts(10)) EXPECT_EQ(c, 5000);
  for (int64_t c : ds.test.ClassCounts(10)) EXPECT_EQ(c, 1000);
  ASSERT_EQ(ds.files.size(), 7U);
  EXPECT_EQ(ds.files[0].name, "data_batch_1.bin");
  EXPECT_EQ(ds.files[0].bytes, 30730000);
}

// One extracted copy of the archive shared by the corruption cases below.
class Cifar10CorruptionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    std::string cmd =
        "tar -xzf '" + testing::DataArchive().string() + "' -C '" + dir_->path().string() + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    good_ = dir_->path() / "cifar-10-batches-bin";
    ASSERT_TRUE(fs::exists(good_ / "data_batch_1.bin"));
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // A folder of links to the good files, except `replaced`, which `write` produces.
  static fs::path CopyWith(const fs::path& root, const std::string& replaced,
                           const std::function<void(const fs::path&)>& write) {
    fs::path out = root / "cifar-10-batches-bin";
    fs::create_directories(out);
    for (const auto& e : fs::directory_iterator(good_)) {
      if (e.path().filename() != replaced) fs::create_symlink(e.path(), out / e.path().filename());
    }
    if (write) write(out / replaced);
    return root;
  }

  static std::string ReadAll(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }

  static testing::TempDir* dir_;
  static fs::path good_;
};

testing::TempDir* Cifar10CorruptionTest::dir_ = nullptr;
fs::path Cifar10CorruptionTest::good_;

TEST_F(Cifar10CorruptionTest, ExtractedFolderReadsLikeTheArchive) {
  auto ds = LoadCifar10(good_.parent_path());
  KILN_ASSERT_RESULT_OK(ds);
  const Dataset& ref = testing::SharedDataset();
  EXPECT_EQ(ds->train.labels, ref.train.labels);
  EXPECT_EQ(ds->test.pixels, ref.test.pixels);
  auto direct = LoadCifar10(good_);  // the batches folder itself works too
  KILN_ASSERT_RESULT_OK(direct);
}

struct CorruptionCase {
  const char* name;
  const char* file;  // the file replaced, or left out when `mutate` is null
  std::function<std::string(std::string)> mutate;  // good bytes -> written bytes; null = delete
  StatusCode code;
  const char* message;  // expected substring
};

TEST_F(Cifar10CorruptionTest, BadFilesFailWithTheirNameAndReason) {
  const CorruptionCase cases[] = {
      {"truncated", "data_batch_2.bin", [](std::string s) { return s.substr(0, 30000000); },
       StatusCode::kInvalidArgument, "data_batch_2.bin: 30000000 bytes, expected 30730000"},
      {"extra bytes", "test_batch.bin", [](std::string s) { return s + "x"; },
       StatusCode::kInvalidArgument, "test_batch.bin: 30730001 bytes, expected 30730000"},
      {"label 11", "data_batch_3.bin",
       [](std::string s) {
         s.replace(17 * 3073, 1, 1, static_cast<char>(11));
         return s;
       },
       StatusCode::kInvalidArgument, "data_batch_3.bin: record 17 has label 11"},
      {"missing batch", "data_batch_4.bin", nullptr, StatusCode::kNotFound,
       "data_batch_4.bin: missing"},
      {"missing names", "batches.meta.txt", nullptr, StatusCode::kNotFound,
       "batches.meta.txt: missing"},
      {"nine names", "batches.meta.txt",
       [](std::string s) { return s.substr(0, s.rfind("truck")); }, StatusCode::kInvalidArgument,
       "batches.meta.txt: 9 class names, expected 10"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    testing::TempDir scratch;
    fs::path root = CopyWith(scratch.path(), c.file, [&](const fs::path& p) {
      if (c.mutate) std::ofstream(p, std::ios::binary) << c.mutate(ReadAll(good_ / c.file));
    });
    auto ds = LoadCifar10(root);
    ASSERT_FALSE(ds.ok());
    EXPECT_EQ(ds.status().code(), c.code) << ds.status().ToString();
    EXPECT_NE(ds.status().message().find(c.message), std::string::npos) << ds.status().ToString();
  }
}

TEST(Cifar10ArchiveTest, NotGzipAndTruncatedArchivesFail) {
  testing::TempDir dir;
  fs::path text = dir.path() / "cifar-10-binary.tar.gz";
  std::ofstream(text) << "this is not an archive\n";
  auto a = LoadCifar10(text);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find(text.string()), std::string::npos) << a.status().ToString();
  EXPECT_NE(a.status().message().find("not a gzip"), std::string::npos) << a.status().ToString();

  // The first 20 MB of the real archive: gzip and tar headers are fine, the data stops.
  fs::path cut = dir.path() / "cut.tar.gz";
  {
    std::ifstream in(testing::DataArchive(), std::ios::binary);
    std::string head(20 << 20, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    std::ofstream(cut, std::ios::binary) << head;
  }
  auto b = LoadCifar10(cut);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(b.status().message().find("cut.tar.gz"), std::string::npos) << b.status().ToString();

  auto c = LoadCifar10(dir.path() / "nope.tar.gz");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("kiln data fetch"), std::string::npos);
}

TEST(Cifar10Test, ValidationSplitIsDisjointAndSeeded) {
  const Dataset& ds = testing::SharedDataset();
  ImageSet small = ds.train.Subset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  auto a = SplitValidation(small, 4, 7);
  auto b = SplitValidation(small, 4, 7);
  auto c = SplitValidation(small, 4, 8);
  KILN_ASSERT_RESULT_OK(a);
  KILN_ASSERT_RESULT_OK(b);
  KILN_ASSERT_RESULT_OK(c);
  EXPECT_EQ(a->first.size(), 8);
  EXPECT_EQ(a->second.size(), 4);
  EXPECT_EQ(a->second.pixels, b->second.pixels);
  EXPECT_NE(a->second.pixels, c->second.pixels);
  // Together the two halves hold every image exactly once.
  std::vector<std::string> all;
  for (const ImageSet* s : {&a->first, &a->second}) {
    for (int64_t i = 0; i < s->size(); ++i)
      all.emplace_back(reinterpret_cast<const char*>(s->image(i)), 3072);
  }
  std::vector<std::string> want;
  for (int64_t i = 0; i < small.size(); ++i)
    want.emplace_back(reinterpret_cast<const char*>(small.image(i)), 3072);
  std::sort(all.begin(), all.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(all, want);
  EXPECT_FALSE(SplitValidation(small, 12, 1).ok());
  EXPECT_FALSE(SplitValidation(small, -1, 1).ok());
}

}  // namespace
}  // namespace kiln::data
