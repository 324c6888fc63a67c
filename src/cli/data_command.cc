// kiln data verify | fetch | images
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kiln/core/file.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/fetch.h"
#include "kiln/data/image.h"

namespace kiln::cli {

namespace {

struct VerifyArgs {
  std::string data = DefaultDataPath();
  bool json = false;
};

int RunVerify(const VerifyArgs& args) {
  auto ds = data::LoadCifar10(args.data);
  if (!ds.ok()) {
    std::cerr << "kiln data verify: " << ds.status().ToString() << "\n";
    return kExitFailure;
  }
  const auto k = static_cast<int64_t>(ds->class_names.size());
  auto train = ds->train.ClassCounts(k);
  auto test = ds->test.ClassCounts(k);
  if (args.json) {
    nlohmann::json j;
    j["source"] = ds->source;
    j["ok"] = true;
    for (const auto& f : ds->files)
      j["files"].push_back({{"name", f.name}, {"bytes", f.bytes}, {"records", f.records}});
    for (int64_t c = 0; c < k; ++c) {
      j["classes"].push_back(
          {{"label", c}, {"name", ds->class_names[c]}, {"train", train[c]}, {"test", test[c]}});
    }
    j["train_images"] = ds->train.size();
    j["test_images"] = ds->test.size();
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << "CIFAR-10 data set at " << ds->source << ": OK\n\n";
  for (const auto& f : ds->files) {
    std::cout << "  " << std::left << std::setw(20) << f.name << std::right << std::setw(12)
              << f.bytes << " bytes  " << std::setw(6) << f.records
              << (f.name.ends_with(".txt") ? " names" : " records") << "  ok\n";
  }
  std::cout << "\n  " << std::left << std::setw(4) << "id" << std::setw(12) << "class" << std::right
            << std::setw(8) << "train" << std::setw(8) << "test"
            << "\n";
  for (int64_t c = 0; c < k; ++c) {
    std::cout << "  " << std::left << std::setw(4) << c << std::setw(12) << ds->class_names[c]
              << std::right << std::setw(8) << train[c] << std::setw(8) << test[c] << "\n";
  }
  std::cout << "  " << std::left << std::setw(16) << "total" << std::right << std::setw(8)
            << ds->train.size() << std::setw(8) << ds->test.size() << "\n";
  return 0;
}

int RunFetch(const data::FetchOptions& options) {
  auto path = data::FetchArchive(options, &std::cerr);
  if (!path.ok()) {
    std::cerr << "kiln data fetch: " << path.status().ToString() << "\n";
    return kExitFailure;
  }
  std::cout << "downloaded and verified (MD5 " << options.md5 << "): " << path->string() << "\n";
  auto ds = data::LoadCifar10(*path);
  if (!ds.ok()) {
    std::cerr << "kiln data fetch: " << ds.status().ToString() << "\n";
    return kExitFailure;
  }
  std::cout << "contents verified: " << ds->train.size() << " training and " << ds->test.size()
            << " test images. Train with: kiln train --data " << path->string() << "\n";
  return 0;
}

struct ImagesArgs {
  std::string data = DefaultDataPath();
  std::string out = "images";
  std::string split = "test";
  std::string format = "png";
  int64_t count = 100;
  int64_t first = 0;
};

// Writes images of the data set as ordinary image files named <index>_<class>.<ext>, e.g. to
// try `kiln predict`, the server's /predict and web page, or `kiln loadgen --mode image`.
int RunImages(const ImagesArgs& a) {
  auto ds = data::LoadCifar10(a.data);
  if (!ds.ok()) {
    std::cerr << "kiln data images: " << ds.status().ToString() << "\n";
    return kExitFailure;
  }
  const data::ImageSet& set = a.split == "train" ? ds->train : ds->test;
  if (a.first >= set.size()) {
    std::cerr << "kiln data images: --first " << a.first << " is past the " << set.size()
              << " images of the " << a.split << " split\n";
    return kExitUsage;
  }
  const data::ImageFormat format = a.format == "jpg"    ? data::ImageFormat::kJpeg
                                   : a.format == "bmp"  ? data::ImageFormat::kBmp
                                   : a.format == "webp" ? data::ImageFormat::kWebp
                                                        : data::ImageFormat::kPng;
  std::error_code ec;
  std::filesystem::create_directories(a.out, ec);
  if (ec) {
    std::cerr << "kiln data images: cannot create " << a.out << ": " << ec.message() << "\n";
    return kExitFailure;
  }
  const int64_t end = std::min(set.size(), a.first + a.count);
  for (int64_t i = a.first; i < end; ++i) {
    auto bytes = data::EncodeImage(set.image(i), set.channels, set.height, set.width, format);
    if (!bytes.ok()) {
      std::cerr << "kiln data images: " << bytes.status().ToString() << "\n";
      return kExitFailure;
    }
    char name[64];
    std::snprintf(name, sizeof name, "%05lld_", static_cast<long long>(i));
    const std::filesystem::path file =
        std::filesystem::path(a.out) / (name + ds->class_names[set.labels[i]] + "." + a.format);
    if (Status s = WriteFileAtomic(file, *bytes); !s.ok()) {
      std::cerr << "kiln data images: " << s.ToString() << "\n";
      return kExitFailure;
    }
  }
  std::cout << "wrote " << (end - a.first) << " " << a.split << " images to " << a.out << "\n";
  return 0;
}

}  // namespace

void RegisterDataCommand(CLI::App& app, Runner* run) {
  auto* data = app.add_subcommand(
      "data", "Verify or download the CIFAR-10 data set, or write its images as files");
  data->require_subcommand(1);

  auto verify_args = std::make_shared<VerifyArgs>();
  auto* verify = data->add_subcommand(
      "verify", "Check every file of a CIFAR-10 binary archive or folder and summarise it");
  verify
      ->add_option("--data,--archive", verify_args->data,
                   "cifar-10-binary.tar.gz or the folder it extracts to")
      ->capture_default_str();
  verify->add_flag("--json", verify_args->json, "Print the summary as JSON");
  verify->callback(
      [run, verify_args] { *run = [verify_args] { return RunVerify(*verify_args); }; });

  auto fetch_opts = std::make_shared<data::FetchOptions>();
  auto* fetch = data->add_subcommand(
      "fetch", "Download the official CIFAR-10 binary archive and verify its published MD5");
  fetch->add_option("--out", fetch_opts->out_dir, "Folder to download into")->capture_default_str();
  fetch->add_option("--url", fetch_opts->url, "Where to download from")->capture_default_str();
  fetch->add_option("--md5", fetch_opts->md5, "Expected MD5 of the download")
      ->capture_default_str();
  fetch
      ->add_option("--connect-timeout", fetch_opts->connect_timeout_s,
                   "Seconds to wait for a connection")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  fetch->add_flag("--force", fetch_opts->force, "Download again even if a verified copy exists");
  fetch->callback([run, fetch_opts] { *run = [fetch_opts] { return RunFetch(*fetch_opts); }; });

  auto images_args = std::make_shared<ImagesArgs>();
  auto* images = data->add_subcommand(
      "images",
      "Write images of the data set as image files (<index>_<class>.png), e.g. to try "
      "kiln predict or the server");
  images
      ->add_option("--data,--archive", images_args->data,
                   "cifar-10-binary.tar.gz or the folder it extracts to")
      ->capture_default_str();
  images->add_option("--out", images_args->out, "Folder to write into")->capture_default_str();
  images->add_option("--split", images_args->split, "test or train")
      ->capture_default_str()
      ->check(CLI::IsMember({"test", "train"}));
  images->add_option("--count,-n", images_args->count, "How many images")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{60000}));
  images->add_option("--first", images_args->first, "Index of the first image")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  images->add_option("--format", images_args->format, "png, jpg, bmp or webp")
      ->capture_default_str()
      ->check(CLI::IsMember({"png", "jpg", "bmp", "webp"}));
  images->callback(
      [run, images_args] { *run = [images_args] { return RunImages(*images_args); }; });
}

}  // namespace kiln::cli
