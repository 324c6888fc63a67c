// kiln repo write | check: Triton model repositories.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "commands.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/image.h"
#include "kiln/serve/repo/repo.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

struct RepoWriteArgs {
  std::string manifest;
  std::vector<std::string> models;  // [NAME=]FILE
  std::string name;                 // prefix for a manifest's models
  std::string warmup_image;
  std::string data = DefaultDataPath();
  serve::repo::WriteOptions options;
  std::string out;
};

struct RepoCheckArgs {
  std::string dir;
  bool strict = false;
};

// "NAME=FILE" or "FILE" (named after the file: model.onnx -> model, model.pt ->
// model-torchscript).
serve::repo::ModelSource ParseModelArg(const std::string& arg) {
  serve::repo::ModelSource m;
  const size_t eq = arg.find('=');
  m.file = eq == std::string::npos ? arg : arg.substr(eq + 1);
  m.variant = m.file.extension() == ".pt" ? "torchscript" : "onnx";
  m.name = eq != std::string::npos       ? arg.substr(0, eq)
           : m.file.extension() == ".pt" ? m.file.stem().string() + "-torchscript"
                                         : m.file.stem().string();
  return m;
}

// The warmup sample: --warmup-image, else the first test image of --data.
Result<data::RgbImage> WarmupImage(const RepoWriteArgs& a) {
  if (!a.warmup_image.empty()) {
    std::ifstream in(a.warmup_image, std::ios::binary);
    if (!in) return NotFoundError("--warmup-image " + a.warmup_image + ": cannot read it");
    std::stringstream ss;
    ss << in.rdbuf();
    return data::DecodeImage(ss.str(), data::ImageLimits{});
  }
  auto set = data::LoadCifar10(a.data);
  if (!set.ok()) {
    return Status(set.status().code(), "the warmup sample comes from --data's first test image: " +
                                           set.status().message() +
                                           " (or give --warmup-image FILE)");
  }
  const data::ImageSet& test = set->test;
  data::RgbImage image;
  image.width = test.width;
  image.height = test.height;
  image.pixels.resize(static_cast<size_t>(test.width * test.height * 3));
  const uint8_t* chw = test.image(0);
  const int64_t plane = test.width * test.height;
  for (int64_t p = 0; p < plane; ++p) {
    for (int64_t c = 0; c < 3; ++c)
      image.pixels[static_cast<size_t>(p * 3 + c)] = chw[c * plane + p];
  }
  return image;
}

int RunWrite(RepoWriteArgs a) {
  auto& o = a.options;
  o.out = a.out;
  if (a.manifest.empty() && a.models.empty()) {
    std::cerr << "kiln repo write: give --manifest or --model\n";
    return kExitUsage;
  }
  std::vector<std::string> skipped;
  if (!a.manifest.empty()) {
    auto sources = serve::repo::SourcesFromManifest(a.manifest, a.name, &skipped);
    if (!sources.ok()) {
      std::cerr << "kiln repo write: " << sources.status().message() << "\n";
      return kExitFailure;
    }
    o.models = std::move(sources).value();
  }
  for (const auto& m : a.models) o.models.push_back(ParseModelArg(m));
  auto image = WarmupImage(a);
  if (!image.ok()) {
    std::cerr << "kiln repo write: " << image.status().message() << "\n";
    return kExitFailure;
  }
  o.warmup_image = std::move(image).value();
  if (Status s = o.Validate(); !s.ok()) {
    std::cerr << "kiln repo write: " << s.message() << "\n";
    return kExitUsage;
  }
  for (const auto& s : skipped) std::cout << "skipped " << s << "\n";
  for (const auto& m : o.models) {
    if (o.gpu && m.integer) {
      std::cout << "skipped " << m.name << ": an integer (INT8) model is not written for GPU "
                << "hosts (TensorRT's FP16 path does not run its kernels)\n";
    }
  }
  auto written = serve::repo::WriteRepository(o);
  if (!written.ok()) {
    std::cerr << "kiln repo write: " << written.status().message() << "\n";
    return kExitFailure;
  }
  for (const auto& m : *written) {
    std::cout << "wrote " << m.dir.string() << " (" << m.platform << ")\n";
    if (!m.reason.empty() && a.options.onnx_backend == "auto")
      std::cout << "  " << m.reason << "\n";
  }
  // The written repository must pass the strict check (as Triton with auto-completion off).
  auto findings = serve::repo::CheckRepository(o.out, {/*strict=*/true});
  if (!findings.ok()) {
    std::cerr << "kiln repo write: " << findings.status().message() << "\n";
    return kExitFailure;
  }
  int errors = 0;
  for (const auto& f : *findings) {
    const bool ours = std::any_of(written->begin(), written->end(),
                                  [&](const auto& m) { return m.name == f.model; });
    if (!ours) continue;
    errors += f.severity == serve::repo::Severity::kError ? 1 : 0;
    std::cerr << f.model << ": "
              << (f.severity == serve::repo::Severity::kError ? "error" : "warning") << ": "
              << f.problem << "\n";
  }
  if (errors > 0) return kExitFailure;
  std::cout << written->size() << " model(s) written to " << o.out.string()
            << "; every config.pbtxt is complete (kiln repo check --strict passes)\n";
  return 0;
}

int RunCheck(const RepoCheckArgs& a) {
  auto findings = serve::repo::CheckRepository(a.dir, {a.strict});
  if (!findings.ok()) {
    std::cerr << "kiln repo check: " << findings.status().message() << "\n";
    return kExitFailure;
  }
  int errors = 0, warnings = 0;
  for (const auto& f : *findings) {
    const bool error = f.severity == serve::repo::Severity::kError;
    (error ? errors : warnings)++;
    std::cout << (f.model.empty() ? a.dir : f.model) << ": " << (error ? "error" : "warning")
              << ": " << f.problem << "\n";
    if (!f.fix.empty()) std::cout << "  fix: " << f.fix << "\n";
  }
  std::cout << a.dir << ": " << errors << " error(s), " << warnings << " warning(s)\n";
  return errors > 0 ? kExitFailure : 0;
}

}  // namespace

void RegisterRepoCommand(CLI::App& app, Runner* run) {
  auto* repo = app.add_subcommand("repo", "Write or check a Triton model repository");
  repo->require_subcommand(1);

  auto w = std::make_shared<RepoWriteArgs>();
  auto* write = repo->add_subcommand(
      "write",
      "Write Kiln's models as a Triton model repository whose every config.pbtxt is complete "
      "(loads in Triton and in kiln serve --disable-auto-complete-config)");
  write->add_option("--manifest", w->manifest,
                    "kiln optimize's manifest.json: every variant that passed its accuracy gate, "
                    "and the TorchScript export");
  write->add_option("--model", w->models,
                    "[NAME=]FILE: a model file exported by Kiln (.onnx or TorchScript .pt); "
                    "repeatable");
  write->add_option("--name", w->name,
                    "With --manifest: the models' name prefix (default: the architecture)");
  write->add_option("-o,--out", w->out, "The repository folder")->required();
  write->add_flag("--force", w->options.force, "Replace model folders that exist");
  write->add_option("--max-batch-size", w->options.max_batch_size, "max_batch_size")
      ->capture_default_str();
  write
      ->add_option("--preferred-batch-sizes", w->options.preferred_batch_sizes,
                   "dynamic_batching.preferred_batch_size (default: 8, 16, ... up to "
                   "--max-batch-size)")
      ->delimiter(',');
  write
      ->add_option("--queue-delay-us", w->options.max_queue_delay_us,
                   "dynamic_batching.max_queue_delay_microseconds")
      ->capture_default_str();
  write->add_option("--instances", w->options.instances, "instance_group count")
      ->capture_default_str();
  write
      ->add_option("--threads", w->options.threads,
                   "Threads per instance (ONNX Runtime, libtorch and OpenVINO parameters)")
      ->capture_default_str();
  write
      ->add_option("--backend", w->options.onnx_backend,
                   "Engine of the ONNX models: onnxruntime, openvino (Triton's OpenVINO backend) "
                   "or auto (per model, the faster of the two in --bench-report)")
      ->capture_default_str()
      ->check(CLI::IsMember({"onnxruntime", "openvino", "auto"}));
  write->add_option("--bench-report", w->options.bench_report,
                    "With --backend auto: a kiln bench report.json of the same variants");
  write
      ->add_option("--graph-level", w->options.graph_level,
                   "ONNX Runtime graph optimization level (Triton: -1 basic, 0 all, 1 extended)")
      ->capture_default_str();
  write->add_flag("--gpu", w->options.gpu,
                  "For GPU hosts: KIND_GPU instances and TensorRT FP16 for ONNX models; INT8 "
                  "variants left out (untested here: no GPU)");
  write->add_option("--warmup-image", w->warmup_image,
                    "The model_warmup sample (any image file); default: --data's first test "
                    "image");
  write->add_option("--data", w->data, "CIFAR-10 archive or folder, for the warmup sample")
      ->capture_default_str();
  write->callback([run, w] { *run = [w] { return RunWrite(*w); }; });

  auto c = std::make_shared<RepoCheckArgs>();
  auto* check = repo->add_subcommand(
      "check",
      "Lint a Triton model repository for the known reasons a model ends up UNAVAILABLE in "
      "Triton; prints each finding with its fix, exit 1 on any error");
  check->add_option("dir", c->dir, "The repository folder")->required();
  check->add_flag("--strict", c->strict,
                  "As Triton with --disable-auto-complete-config: a config.pbtxt must be "
                  "complete on its own");
  check->callback([run, c] { *run = [c] { return RunCheck(*c); }; });
}

}  // namespace kiln::cli
