// Reading and verifying the CIFAR-10 "binary version" data set.
//
//   KILN_ASSIGN_OR_RETURN(kiln::data::Dataset ds,
//                         kiln::data::LoadCifar10("cifar-10-binary.tar.gz"));
//   ds.train.size();  // 50000
//
// Accepts the official `cifar-10-binary.tar.gz` (read in memory with libarchive, nothing is
// extracted to disk) or a folder holding the extracted files (either the
// `cifar-10-batches-bin/` folder itself or its parent). Every load fully verifies the data:
// all five training batches, the test batch and `batches.meta.txt` present; each batch exactly
// 10,000 records of 3,073 bytes; every label in 0-9; ten class names. Any problem is an
// InvalidArgument/NotFound Status whose message names the file and what is wrong.
// Thread-safe (no shared state).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::data {

inline constexpr int64_t kCifarSide = 32;
inline constexpr int64_t kCifarChannels = 3;
inline constexpr int64_t kCifarImageBytes = kCifarChannels * kCifarSide * kCifarSide;  // 3072
inline constexpr int64_t kCifarRecordBytes = 1 + kCifarImageBytes;                     // 3073
inline constexpr int64_t kCifarRecordsPerBatch = 10000;
inline constexpr int64_t kCifarClasses = 10;

// The official archive, for `kiln data fetch`.
inline constexpr const char* kCifarUrl = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
inline constexpr const char* kCifarMd5 = "c32a1d4ab5d03f1284b67883e8d87530";
inline constexpr const char* kCifarArchiveName = "cifar-10-binary.tar.gz";

// A set of same-sized uint8 images with labels. Pixels are planar (CHW) per image, as in the
// CIFAR binary format: R plane, then G, then B, each row-major.
struct ImageSet {
  int64_t channels = kCifarChannels;
  int64_t height = kCifarSide;
  int64_t width = kCifarSide;
  std::vector<uint8_t> pixels;  // size() * channels * height * width
  std::vector<uint8_t> labels;  // one per image

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t image_bytes() const { return channels * height * width; }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * image_bytes(); }

  // The images at `indices`, in that order.
  ImageSet Subset(const std::vector<int64_t>& indices) const;
  // Per-class image counts (classes = max label + 1, at least `num_classes`).
  std::vector<int64_t> ClassCounts(int64_t num_classes) const;
};

// What verification found in one file of the data set.
struct FileReport {
  std::string name;  // e.g. "data_batch_1.bin"
  int64_t bytes = 0;
  int64_t records = 0;
};

struct Dataset {
  std::string source;                    // the archive or folder it was read from
  std::vector<std::string> class_names;  // from batches.meta.txt, in label order
  ImageSet train;                        // data_batch_1..5, in file order
  ImageSet test;                         // test_batch
  std::vector<FileReport> files;         // every file checked, in canonical order
};

// Loads and verifies the data set from a .tar.gz archive or an extracted folder.
Result<Dataset> LoadCifar10(const std::filesystem::path& archive_or_dir);

// Splits `train` into (train, validation): `validation_size` images chosen by a seeded shuffle
// go to validation, the rest (in their original order) stay for training.
// validation_size must be in [0, train.size()).
Result<std::pair<ImageSet, ImageSet>> SplitValidation(const ImageSet& train,
                                                      int64_t validation_size, uint64_t seed);

}  // namespace kiln::data
