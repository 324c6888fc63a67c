// kiln version
#include <iostream>
#include <opencv2/core/version.hpp>

#include "commands.h"
#include "kiln/backend/onnxruntime/onnxruntime_backend.h"
#include "kiln/backend/openvino/openvino_backend.h"
#include "kiln/core/version.h"
#include "kiln/train/checkpoint.h"

namespace kiln::cli {

void RegisterVersionCommand(CLI::App& app, Runner* run) {
  auto* cmd = app.add_subcommand("version", "Print Kiln's version and the versions of its engines");
  cmd->callback([run] {
    *run = [] {
      std::cout << "kiln " << Version() << "\n"
                << train::TorchVersion() << " (threads: " << torch::get_num_threads()
                << " default)\n";
      auto ort = backend::OnnxRuntimeVersion();
      if (ort.ok()) {
        std::cout << "onnxruntime " << *ort << "\n";
      } else {
        std::cout << "onnxruntime: " << ort.status().ToString() << "\n";
      }
      auto ov = backend::OpenVinoVersion();
      std::cout << "openvino " << (ov.ok() ? *ov : ov.status().ToString()) << "\n";
      std::cout << "opencv " << CV_VERSION << "\n";
      return ort.ok() ? 0 : kExitFailure;
    };
  });
}

}  // namespace kiln::cli
