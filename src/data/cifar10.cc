#include "kiln/data/cifar10.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>

namespace kiln::data {

namespace fs = std::filesystem;

namespace {

constexpr const char* kMetaName = "batches.meta.txt";
constexpr const char* kTestName = "test_batch.bin";
constexpr int kTrainBatches = 5;

std::vector<std::string> ExpectedBatchNames() {
  std::vector<std::string> names;
  for (int i = 1; i <= kTrainBatches; ++i)
    names.push_back("data_batch_" + std::to_string(i) + ".bin");
  names.emplace_back(kTestName);
  return names;
}

bool IsWanted(const std::string& base) {
  if (base == kMetaName) return true;
  auto names = ExpectedBatchNames();
  return std::find(names.begin(), names.end(), base) != names.end();
}

// Raw bytes of the data set's files, keyed by base name.
using FileMap = std::map<std::string, std::string>;

Result<FileMap> ReadArchive(const fs::path& archive_path) {
  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_filter_gzip(a.get());
  archive_read_support_format_tar(a.get());
  const std::string where = archive_path.string();
  if (archive_read_open_filename(a.get(), where.c_str(), 1 << 20) != ARCHIVE_OK) {
    return InvalidArgumentError(where + ": not a gzip-compressed tar archive (" +
                                archive_error_string(a.get()) + ")");
  }
  if (archive_filter_code(a.get(), 0) != ARCHIVE_FILTER_GZIP) {
    return InvalidArgumentError(where + ": not gzip-compressed (expected " + kCifarArchiveName +
                                ")");
  }
  FileMap files;
  archive_entry* entry = nullptr;
  while (true) {
    int rc = archive_read_next_header(a.get(), &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK) {
      return InvalidArgumentError(where + ": corrupt or truncated archive (" +
                                  archive_error_string(a.get()) + ")");
    }
    std::string base = fs::path(archive_entry_pathname(entry)).filename().string();
    if (archive_entry_filetype(entry) != AE_IFREG || !IsWanted(base)) continue;
    std::string data;
    if (archive_entry_size_is_set(entry)) {
      data.reserve(static_cast<size_t>(archive_entry_size(entry)));
    }
    char buf[1 << 16];
    la_ssize_t n = 0;
    while ((n = archive_read_data(a.get(), buf, sizeof buf)) > 0) {
      data.append(buf, static_cast<size_t>(n));
    }
    if (n < 0) {
      return InvalidArgumentError(where + ": corrupt or truncated archive while reading " +
                                  archive_entry_pathname(entry) + " (" +
                                  archive_error_string(a.get()) + ")");
    }
    files[base] = std::move(data);
  }
  return files;
}

Result<FileMap> ReadFolder(const fs::path& dir) {
  fs::path folder = dir;
  if (!fs::exists(folder / kMetaName) && fs::is_directory(folder / "cifar-10-batches-bin")) {
    folder /= "cifar-10-batches-bin";
  }
  FileMap files;
  for (const auto& name : ExpectedBatchNames()) {
    fs::path p = folder / name;
    if (!fs::exists(p)) continue;  // reported as missing by Validate()
    std::ifstream in(p, std::ios::binary);
    if (!in) return NotFoundError(p.string() + ": cannot open");
    std::ostringstream ss;
    ss << in.rdbuf();
    files[name] = ss.str();
  }
  if (fs::exists(folder / kMetaName)) {
    std::ifstream in(folder / kMetaName);
    std::ostringstream ss;
    ss << in.rdbuf();
    files[kMetaName] = ss.str();
  }
  return files;
}

Status AppendBatch(const std::string& name, const std::string& bytes, ImageSet* set,
                   std::vector<FileReport>* reports) {
  const auto size = static_cast<int64_t>(bytes.size());
  constexpr int64_t kWant = kCifarRecordsPerBatch * kCifarRecordBytes;
  if (size != kWant) {
    std::string why = size < kWant ? "truncated" : "has extra bytes";
    if (size % kCifarRecordBytes != 0) why += ", and is not a whole number of records";
    return InvalidArgumentError(name + ": " + std::to_string(size) + " bytes, expected " +
                                std::to_string(kWant) + " (10000 records of 3073 bytes): " + why);
  }
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t base = set->labels.size();
  set->labels.resize(base + kCifarRecordsPerBatch);
  set->pixels.resize((base + kCifarRecordsPerBatch) * kCifarImageBytes);
  for (int64_t r = 0; r < kCifarRecordsPerBatch; ++r) {
    const uint8_t* rec = p + r * kCifarRecordBytes;
    if (rec[0] >= kCifarClasses) {
      return InvalidArgumentError(name + ": record " + std::to_string(r) + " has label " +
                                  std::to_string(rec[0]) + " (valid labels are 0-9)");
    }
    set->labels[base + r] = rec[0];
    std::copy(rec + 1, rec + kCifarRecordBytes,
              set->pixels.begin() + static_cast<int64_t>((base + r) * kCifarImageBytes));
  }
  reports->push_back({name, size, kCifarRecordsPerBatch});
  return Status::Ok();
}

Result<std::vector<std::string>> ParseMeta(const std::string& text) {
  std::vector<std::string> names;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (static_cast<int64_t>(names.size()) != kCifarClasses) {
    return InvalidArgumentError(std::string(kMetaName) + ": " + std::to_string(names.size()) +
                                " class names, expected 10");
  }
  return names;
}

}  // namespace

ImageSet ImageSet::Subset(const std::vector<int64_t>& indices) const {
  ImageSet out;
  out.channels = channels;
  out.height = height;
  out.width = width;
  const int64_t bytes = image_bytes();
  out.labels.resize(indices.size());
  out.pixels.resize(indices.size() * static_cast<size_t>(bytes));
  for (size_t i = 0; i < indices.size(); ++i) {
    out.labels[i] = labels[static_cast<size_t>(indices[i])];
    std::copy_n(image(indices[i]), bytes, out.pixels.begin() + static_cast<int64_t>(i) * bytes);
  }
  return out;
}

std::vector<int64_t> ImageSet::ClassCounts(int64_t num_classes) const {
  std::vector<int64_t> counts(static_cast<size_t>(num_classes), 0);
  for (uint8_t l : labels) {
    if (l >= counts.size()) counts.resize(l + 1, 0);
    ++counts[l];
  }
  return counts;
}

Result<Dataset> LoadCifar10(const fs::path& source) {
  std::error_code ec;
  if (!fs::exists(source, ec)) {
    return NotFoundError(source.string() +
                         ": no such file or folder (get the data with "
                         "`kiln data fetch`, or pass --data PATH to a cifar-10-binary.tar.gz)");
  }
  Result<FileMap> files = fs::is_directory(source) ? ReadFolder(source) : ReadArchive(source);
  if (!files.ok()) return files.status();

  Dataset ds;
  ds.source = source.string();
  for (const auto& name : ExpectedBatchNames()) {
    auto it = files->find(name);
    if (it == files->end()) {
      return NotFoundError(name + ": missing from " + source.string() +
                           " (a CIFAR-10 binary data set has data_batch_1..5.bin and "
                           "test_batch.bin)");
    }
    ImageSet* set = name == kTestName ? &ds.test : &ds.train;
    KILN_RETURN_IF_ERROR(AppendBatch(name, it->second, set, &ds.files));
    it->second.clear();
    it->second.shrink_to_fit();
  }
  auto meta = files->find(kMetaName);
  if (meta == files->end()) {
    return NotFoundError(std::string(kMetaName) + ": missing from " + source.string() +
                         " (it holds the class names)");
  }
  KILN_ASSIGN_OR_RETURN(ds.class_names, ParseMeta(meta->second));
  ds.files.push_back({kMetaName, static_cast<int64_t>(meta->second.size()), kCifarClasses});
  return ds;
}

Result<std::pair<ImageSet, ImageSet>> SplitValidation(const ImageSet& train,
                                                      int64_t validation_size, uint64_t seed) {
  if (validation_size < 0 || validation_size >= train.size()) {
    return InvalidArgumentError("validation size " + std::to_string(validation_size) +
                                " must be in [0, " + std::to_string(train.size()) + ")");
  }
  std::vector<int64_t> order(static_cast<size_t>(train.size()));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed ^ 0x5eedf00dULL);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int64_t> val(order.begin(), order.begin() + validation_size);
  std::vector<int64_t> rest(order.begin() + validation_size, order.end());
  std::sort(val.begin(), val.end());
  std::sort(rest.begin(), rest.end());
  return std::make_pair(train.Subset(rest), train.Subset(val));
}

}  // namespace kiln::data
