// kiln export
#include <cstdio>
#include <fstream>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/data/cifar10.h"
#include "kiln/eval/parity.h"
#include "kiln/export/drift_reference.h"
#include "kiln/export/onnx_export.h"
#include "kiln/export/torchscript_export.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/evaluate.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

struct ExportArgs {
  std::string checkpoint;
  std::string out_dir;
  std::string data = DefaultDataPath();
  exporter::OnnxExportOptions onnx;
  double tolerance = 1e-4;
  bool skip_check = false;
  bool skip_drift_reference = false;
  int threads = 2;
};

int RunExport(ExportArgs a) {
  torch::set_num_threads(a.threads);
  auto ckpt = train::LoadCheckpoint(a.checkpoint);
  if (!ckpt.ok()) {
    std::cerr << "kiln export: " << ckpt.status().ToString() << "\n";
    return kExitFailure;
  }
  const fs::path out =
      a.out_dir.empty() ? fs::path(a.checkpoint).parent_path() / "export" : fs::path(a.out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  // The training run's summary travels with the model when it sits beside the checkpoint.
  const fs::path summary = fs::path(a.checkpoint).parent_path() / "summary.json";
  if (fs::exists(summary)) {
    std::ifstream in(summary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (nlohmann::json::accept(text))
      a.onnx.training_summary_json = nlohmann::json::parse(text).dump();
  }
  // The data set serves the drift reference (validation split) and the parity check (test).
  std::optional<data::Dataset> ds;
  if (!a.skip_check || !a.skip_drift_reference) {
    auto loaded = data::LoadCifar10(a.data);
    if (!loaded.ok()) {
      std::cerr << "kiln export: cannot read the data for the parity check and the drift "
                   "reference: "
                << loaded.status().ToString()
                << " (pass --data, or --skip-check --skip-drift-reference)\n";
      return kExitFailure;
    }
    ds = std::move(loaded).value();
  }
  if (!a.skip_drift_reference) {
    auto ref = exporter::ComputeDriftReference(*ckpt, *ds);
    if (!ref.ok()) {
      std::cerr << "kiln export: " << ref.status().ToString() << "\n";
      return kExitFailure;
    }
    a.onnx.extra_metadata[backend::kDriftReferenceKey] = backend::DriftReferenceJson(*ref);
    std::printf("drift reference: %lld images of the %s, mean confidence %.4f\n",
                static_cast<long long>(ref->images), ref->source.c_str(), ref->mean_confidence);
  }
  const fs::path onnx_file = out / "model.onnx";
  if (Status s = exporter::ExportOnnx(*ckpt, a.onnx, onnx_file); !s.ok()) {
    std::cerr << "kiln export: " << s.ToString() << "\n";
    return s.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  std::printf(
      "wrote %s (opset %lld, %lld bytes; passes the ONNX checker and strict shape inference)\n",
      onnx_file.c_str(), static_cast<long long>(a.onnx.opset),
      static_cast<long long>(fs::file_size(onnx_file)));
  const fs::path ts_file = out / "model.pt";
  if (Status s = exporter::ExportTorchScript(*ckpt, ts_file, a.onnx.training_summary_json,
                                              a.onnx.extra_metadata);
      !s.ok()) {
    std::cerr << "kiln export: " << s.ToString() << "\n";
    return kExitFailure;
  }
  std::printf("wrote %s (TorchScript, %lld bytes)\n", ts_file.c_str(),
              static_cast<long long>(fs::file_size(ts_file)));
  if (a.skip_check) return 0;

  // The checkpoint's logits on the test set, once: the reference both exports must match.
  auto logits = train::PredictLogits(*ckpt->model, ds->test, ckpt->meta.normalization);
  if (!logits.ok()) {
    std::cerr << "kiln export: " << logits.status().ToString() << "\n";
    return kExitFailure;
  }
  const torch::Tensor flat = logits->contiguous();
  const std::vector<float> reference(flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel());
  int failures = 0;
  for (const auto& [engine_name, file] :
       {std::pair<std::string, fs::path>{"onnxruntime", onnx_file},
        std::pair<std::string, fs::path>{"libtorch", ts_file}}) {
    backend::BackendOptions bo;
    bo.model_path = file.string();
    bo.intra_op_threads = a.threads;
    auto engine = backend::CreateBackend(engine_name, bo);
    if (!engine.ok()) {
      std::cerr << "kiln export: " << engine.status().ToString() << "\n";
      return kExitFailure;
    }
    eval::ParityReport report;
    Status parity =
        eval::CheckParity(reference, ckpt->meta.shape.num_classes, **engine, ds->test,
                          ckpt->meta.normalization, a.tolerance, &report);
    std::printf(
        "check on %lld test images, %s via %s vs the checkpoint in libtorch: max |diff| %.3g, "
        "top-1 mismatches %lld, accuracy %.2f%%\n",
        static_cast<long long>(report.images), file.filename().c_str(), report.backend.c_str(),
        report.max_abs_diff, static_cast<long long>(report.top1_mismatches), 100 * report.accuracy);
    if (!parity.ok()) {
      std::cerr << "kiln export: " << parity.ToString() << "\n";
      ++failures;
    }
  }
  if (failures > 0) return kExitFailure;
  return 0;
}

}  // namespace

void RegisterExportCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<ExportArgs>();
  auto* cmd =
      app.add_subcommand("export", "Write a checkpoint as ONNX and check it against libtorch");
  cmd->add_option("--checkpoint", a->checkpoint, "A Kiln checkpoint (best.ckpt)")->required();
  cmd->add_option("--out", a->out_dir, "Output folder (default: <checkpoint folder>/export)");
  cmd->add_option("--opset", a->onnx.opset, "ONNX opset")
      ->capture_default_str()
      ->check(CLI::Range(13, 17));
  cmd->add_option("--input-name", a->onnx.input_name, "Name of the graph input")
      ->capture_default_str();
  cmd->add_option("--output-name", a->onnx.output_name, "Name of the graph output")
      ->capture_default_str();
  cmd->add_option("--data,--archive", a->data, "CIFAR-10 data for the parity check (test split)")
      ->capture_default_str();
  cmd->add_option("--tolerance", a->tolerance, "Largest accepted |logit difference|")
      ->capture_default_str();
  cmd->add_flag("--skip-check", a->skip_check, "Do not run the parity check");
  cmd->add_flag("--skip-drift-reference", a->skip_drift_reference,
                "Do not store the drift reference (the server then has no drift metrics for it)");
  cmd->add_option("--threads", a->threads, "Threads for both engines")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->footer(
      "After writing, export runs ONNX Runtime and libtorch on the whole test set: a max "
      "|difference| above "
      "--tolerance or any top-1 disagreement is an error (exit 1). Before writing, export "
      "runs the checkpoint on the validation split its training held out and stores the "
      "result as the drift reference (kiln.drift_reference: class shares, confidence "
      "histogram, input channel statistics) that kiln serve compares its traffic with.");
  cmd->callback([run, a] { *run = [a] { return RunExport(*a); }; });
}

}  // namespace kiln::cli
