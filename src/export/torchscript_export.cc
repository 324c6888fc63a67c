#include "kiln/export/torchscript_export.h"

#include <torch/script.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/file.h"
#include "kiln/export/lowered_model.h"

namespace kiln::exporter {

namespace {

struct Emitted {
  std::string source;
  std::vector<std::pair<std::string, torch::Tensor>> params;  // attribute name -> tensor
};

Emitted Emit(const LoweredModel& lowered) {
  using Kind = LoweredOp::Kind;
  Emitted e;
  std::ostringstream src;
  src << "def forward(self, x):\n";
  // Test-time augmentation: the views as one batch, their logits averaged at the end (as
  // train::ApplyTta does).
  const bool tta = lowered.tta.size() > 1;
  if (tta) {
    src << "    n = x.size(0)\n";
    std::string views;
    for (size_t i = 0; i < lowered.tta.size(); ++i) {
      const train::TtaView& v = lowered.tta[i];
      const std::string name = "v" + std::to_string(i);
      std::string expr = "x";
      if (v.shift != 0) {
        const int64_t p = std::abs(v.shift);
        const int64_t y0 = p + v.shift;
        expr = "torch.reflection_pad2d(x, [" + std::to_string(p) + ", " + std::to_string(p) + ", " +
               std::to_string(p) + ", " + std::to_string(p) + "])[:, :, " + std::to_string(y0) +
               ":" + std::to_string(y0 + lowered.height) + ", " + std::to_string(y0) + ":" +
               std::to_string(y0 + lowered.width) + "]";
      }
      if (v.mirror) expr = "torch.flip(" + expr + ", [3])";
      src << "    " << name << " = " << expr << "\n";
      views += (views.empty() ? "" : ", ") + name;
    }
    src << "    x = torch.cat([" << views << "], 0)\n";
  }
  std::vector<std::string> skips;
  int n = 0;
  auto param = [&](const std::string& what, const torch::Tensor& t) {
    std::string name = "p" + std::to_string(e.params.size()) + "_" + what;
    e.params.emplace_back(name, t);
    return "self." + name;
  };
  for (const LoweredOp& op : lowered.ops) {
    switch (op.kind) {
      case Kind::kConv: {
        const std::string w = param("w", op.weight);
        const std::string b = op.bias.defined() ? param("b", op.bias) : "None";
        src << "    x = torch.conv2d(x, " << w << ", " << b << ", [1, 1], [" << op.padding << ", "
            << op.padding << "])\n";
        break;
      }
      case Kind::kRelu:
        src << "    x = torch.relu(x)\n";
        break;
      case Kind::kGelu:
        src << "    x = torch.gelu(x)\n";
        break;
      case Kind::kMaxPool2:
        src << "    x = torch.max_pool2d(x, [2, 2], [2, 2])\n";
        break;
      case Kind::kBias:
        src << "    x = x + " << param("shift", op.bias.view({1, -1, 1, 1})) << "\n";
        break;
      case Kind::kPushSkip:
        skips.push_back("skip" + std::to_string(n++));
        src << "    " << skips.back() << " = x\n";
        break;
      case Kind::kAddSkip:
        src << "    x = " << skips.back() << " + x\n";
        skips.pop_back();
        break;
      case Kind::kGlobalMaxPool:
        src << "    x = torch.amax(x, [2, 3], True)\n";
        break;
      case Kind::kFlatten:
        src << "    x = torch.flatten(x, 1)\n";
        break;
      case Kind::kLinear: {
        const std::string w = param("w", op.weight);
        if (op.bias.defined()) {
          const std::string b = param("b", op.bias);
          src << "    x = torch.addmm(" << b << ", x, " << w << ".t())\n";
        } else {
          src << "    x = torch.mm(x, " << w << ".t())\n";
        }
        break;
      }
    }
  }
  if (tta) {
    std::vector<float> weights;
    for (const auto& v : lowered.tta) weights.push_back(static_cast<float>(v.weight));
    const auto count = static_cast<int64_t>(weights.size());
    const std::string w = param("tta", torch::tensor(weights).view({count, 1, 1}));
    src << "    x = (x.view(" << count << ", n, -1) * " << w << ").sum(0)\n";
  }
  src << "    return x\n";
  e.source = src.str();
  return e;
}

}  // namespace

Result<std::string> TorchScriptSource(const train::Checkpoint& checkpoint) {
  KILN_ASSIGN_OR_RETURN(LoweredModel lowered, LowerModel(checkpoint));
  return Emit(lowered).source;
}

Status ExportTorchScript(const train::Checkpoint& checkpoint, const std::filesystem::path& file,
                         const std::string& training_summary_json,
                         const std::map<std::string, std::string>& extra_metadata) {
  KILN_ASSIGN_OR_RETURN(LoweredModel lowered, LowerModel(checkpoint));
  const Emitted emitted = Emit(lowered);
  if (!training_summary_json.empty() && !nlohmann::json::accept(training_summary_json)) {
    return InvalidArgumentError("training summary is not valid JSON");
  }
  const nlohmann::json info(ExportMetadata(checkpoint, training_summary_json, extra_metadata));
  std::ostringstream bytes;
  try {
    torch::jit::Module module(c10::QualifiedName("__torch__.kiln.Classifier"));
    for (const auto& [name, tensor] : emitted.params)
      module.register_parameter(name, tensor, false);
    module.define(emitted.source);
    module.eval();
    torch::jit::ExtraFilesMap extra{{backend::kTorchScriptMetadataFile, info.dump()}};
    module.save(bytes, extra);
  } catch (const std::exception& e) {
    return InternalError("writing TorchScript failed: " + std::string(e.what()).substr(0, 500));
  }
  return WriteFileAtomic(file, bytes.view());
}

}  // namespace kiln::exporter
