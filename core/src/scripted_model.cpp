#include "scripted_model.hpp"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>
#include <sstream>
#include <unordered_map>

#include "clhost/errors.hpp"
#include "io.hpp"

namespace clhost {
namespace {

using torch::jit::Module;

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// "__torch__.torch.nn.modules.conv.___torch_mangle_0.Conv2d" -> "__torch__.torch.nn.modules.conv.
// Conv2d": the mangled part only tells two compiled copies of one class apart.
std::string unmangled_type(const Module& module) {
  const auto name = module.type()->name();
  if (!name) return "";
  std::string out;
  std::stringstream parts(name->qualifiedName());
  std::string part;
  while (std::getline(parts, part, '.')) {
    if (part.rfind("___torch_mangle_", 0) == 0) continue;
    out += (out.empty() ? "" : ".") + part;
  }
  return out;
}

std::string first_line(const std::string& text) {
  const size_t end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

size_t parameter_count(const Module& module) {
  return module.named_parameters(true).size();
}

// The submodules the forward calls one after another, each on the previous one's output, when that
// is all the forward does (nn.Sequential, scripted or traced); nullopt otherwise.
std::optional<std::vector<std::string>> chain_of(const Module& module) {
  const auto method = module.find_method("forward");
  if (!method) return std::nullopt;
  const auto graph = method->graph();
  if (graph->inputs().size() != 2) return std::nullopt;
  std::unordered_map<const torch::jit::Value*, std::string> child_of;
  const torch::jit::Value* current = graph->inputs()[1];
  std::vector<std::string> chain;
  for (const torch::jit::Node* node : graph->nodes()) {
    if (node->kind() == c10::prim::GetAttr && node->input() == graph->inputs()[0]) {
      const auto type = node->output()->type()->cast<c10::ClassType>();
      if (!type || !type->is_module()) return std::nullopt;
      child_of[node->output()] = node->s(c10::attr::name);
      continue;
    }
    if (node->kind() == c10::prim::CallMethod && node->s(c10::attr::name) == "forward" &&
        node->inputs().size() == 2 && child_of.count(node->inputs()[0]) != 0 &&
        node->inputs()[1] == current) {
      const std::string& child = child_of[node->inputs()[0]];
      // A submodule called twice shares its weights between two links: keep the parent whole.
      if (std::find(chain.begin(), chain.end(), child) != chain.end()) return std::nullopt;
      chain.push_back(child);
      current = node->output();
      continue;
    }
    return std::nullopt;
  }
  if (chain.empty() || graph->outputs().size() != 1 || graph->outputs()[0] != current) {
    return std::nullopt;
  }
  // Parameters outside the chain (the parent's own, or an unused child's) would not be trained.
  size_t in_chain = 0;
  for (const auto& child : chain) in_chain += parameter_count(module.attr(child).toModule());
  if (in_chain != parameter_count(module)) return std::nullopt;
  return chain;
}

std::optional<std::vector<int64_t>> int_list_constant(const torch::jit::Value* value) {
  const auto constant = torch::jit::toIValue(value);
  if (!constant || !constant->isIntList()) return std::nullopt;
  return constant->toIntVector();
}

// Stride, padding and dilation of a torch.nn.Conv2d whose forward, inlined and constant-folded,
// is one 2-D convolution with zero padding and one group; nullopt for anything else.
std::optional<ScriptedLayer::Conv2dShape> conv2d_shape(const Module& module,
                                                       const torch::Tensor& weight) {
  const auto method = module.find_method("forward");
  if (!method || !weight.defined() || weight.dim() != 4) return std::nullopt;
  std::shared_ptr<torch::jit::Graph> graph = method->graph()->copy();
  torch::jit::Inline(*graph);
  torch::jit::ConstantPropagation(graph);
  const torch::jit::Node* conv = nullptr;
  for (const torch::jit::Node* node : graph->nodes()) {
    const std::string kind = node->kind().toQualString();
    if (kind.rfind("prim::", 0) == 0) continue;
    if (conv != nullptr) return std::nullopt;  // padding modes other than zeros add an op
    if (kind != "aten::conv2d" && kind != "aten::_convolution") return std::nullopt;
    conv = node;
  }
  if (conv == nullptr) return std::nullopt;
  const bool convolution = std::string(conv->kind().toQualString()) == "aten::_convolution";
  if (conv->inputs().size() < 7) return std::nullopt;
  ScriptedLayer::Conv2dShape shape;
  const auto stride = int_list_constant(conv->inputs()[3]);
  const auto padding = int_list_constant(conv->inputs()[4]);  // a string for "same"/"valid"
  const auto dilation = int_list_constant(conv->inputs()[5]);
  const auto groups = torch::jit::toIValue(conv->inputs()[convolution ? 8 : 6]);
  if (!stride || !padding || !dilation || !groups || !groups->isInt() || groups->toInt() != 1) {
    return std::nullopt;
  }
  if (convolution) {
    const auto transposed = torch::jit::toIValue(conv->inputs()[6]);
    if (!transposed || !transposed->isBool() || transposed->toBool()) return std::nullopt;
  }
  auto pair = [](std::vector<int64_t> values) {
    if (values.size() == 1) values.push_back(values[0]);
    return values;
  };
  shape.kernel = {weight.size(2), weight.size(3)};
  shape.stride = pair(*stride);
  shape.padding = pair(*padding);
  shape.dilation = pair(*dilation);
  if (shape.stride.size() != 2 || shape.padding.size() != 2 || shape.dilation.size() != 2) {
    return std::nullopt;
  }
  return shape;
}

// Registers the module's parameters, buffers and children on `holder` under the same names.
void mirror(torch::nn::Module& holder, const Module& module) {
  for (const auto& parameter : module.named_parameters(false)) {
    holder.register_parameter(parameter.name, parameter.value, parameter.value.requires_grad());
  }
  for (const auto& buffer : module.named_buffers(false)) {
    holder.register_buffer(buffer.name, buffer.value);
  }
  for (const auto& child : module.named_children()) {
    auto sub = std::make_shared<torch::nn::Module>();
    mirror(*sub, child.value);
    holder.register_module(child.name, sub);
  }
}

void decompose(const std::shared_ptr<Module>& module, const std::string& python_name,
               std::vector<std::shared_ptr<ScriptedLayer>>& layers) {
  if (const auto chain = chain_of(*module)) {
    for (const auto& child : *chain) {
      decompose(std::make_shared<Module>(module->attr(child).toModule()),
                join_name(python_name, child), layers);
    }
    return;
  }
  layers.push_back(std::make_shared<ScriptedLayer>(module, python_name));
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace

ScriptedLayer::ScriptedLayer(std::shared_ptr<torch::jit::Module> module, std::string python_name)
    : module_(std::move(module)), python_name_(std::move(python_name)) {
  mirror(*this, *module_);
  const std::string type = unmangled_type(*module_);
  type_name_ = type.substr(type.rfind('.') + 1);
  const bool torch_nn = type.rfind("__torch__.torch.nn.modules.", 0) == 0;
  if (torch_nn && type_name_ == "Linear" && weight().defined() && weight().dim() == 2) {
    kind_ = Kind::kLinear;
  } else if (torch_nn && type_name_ == "Conv2d") {
    conv2d_ = conv2d_shape(*module_, weight());
    if (conv2d_) kind_ = Kind::kConv2d;
  }
}

torch::Tensor ScriptedLayer::forward(const torch::Tensor& input) {
  return module_->forward({input}).toTensor();
}

void ScriptedLayer::train(bool on) {
  module_->train(on);
  torch::nn::Module::train(on);
}

torch::Tensor ScriptedLayer::weight() const {
  const auto parameters = named_parameters(false);  // find() points into it: keep it alive
  const auto* found = parameters.find("weight");
  return found != nullptr ? *found : torch::Tensor();
}

torch::Tensor ScriptedLayer::bias() const {
  const auto parameters = named_parameters(false);  // find() points into it: keep it alive
  const auto* found = parameters.find("bias");
  return found != nullptr ? *found : torch::Tensor();
}

ScriptedModel load_scripted_model(const ModelSection& model, int64_t input_size,
                                  int64_t num_classes) {
  const std::string where = "model.path = \"" + model.path + "\"";
  if (!std::filesystem::is_regular_file(model.path)) {
    throw RunError(where + ": no such file (write it in Python with torch.jit.save)");
  }
  auto module = std::make_shared<Module>();
  try {
    *module = torch::jit::load(model.path, torch::kCPU);
  } catch (const std::exception& e) {
    throw RunError(where + ": not a TorchScript archive (torch.jit.save of a scripted or traced " +
                   "module): " + first_line(e.what()));
  }
  const auto forward = module->find_method("forward");
  if (!forward) throw RunError(where + ": the module has no forward method");
  const c10::FunctionSchema& schema = forward->function().getSchema();
  const auto& arguments = schema.arguments();
  const bool tensor_in =
      arguments.size() == 2 && arguments[1].type()->kind() == c10::TypeKind::TensorType;
  const bool tensor_out = schema.returns().size() == 1 &&
                          schema.returns()[0].type()->kind() == c10::TypeKind::TensorType;
  if (!tensor_in || !tensor_out) {
    std::ostringstream signature;
    signature << schema;
    throw RunError(where +
                   ": forward must take one Tensor and return one Tensor (logits over the " +
                   "classes); it is " + signature.str());
  }
  bool converted = false;
  for (const auto& parameter : module->parameters()) {
    if (parameter.scalar_type() != torch::kFloat32) converted = true;
  }
  if (converted) module->to(torch::kFloat32);

  ScriptedModel out;
  out.module = module;
  std::vector<int64_t> sample_shape = model.input_shape;
  if (sample_shape.empty()) sample_shape = {input_size};
  int64_t values = 1;
  for (int64_t dim : sample_shape) values *= dim;
  if (values != input_size) {
    throw RunError(where + ": model.input_shape = " + shape_text(sample_shape) + " holds " +
                   std::to_string(values) + " values per sample, but the data has " +
                   std::to_string(input_size));
  }
  if (sample_shape.size() > 1) {
    out.net->push_back("unflatten",
                       torch::nn::Unflatten(torch::nn::UnflattenOptions(1, sample_shape)));
  }
  std::vector<std::shared_ptr<ScriptedLayer>> layers;
  decompose(module, "", layers);
  // Weights tied across links would be updated once per link: keep such a model whole.
  std::set<const void*> seen;
  bool tied = false;
  for (const auto& layer : layers) {
    for (const auto& parameter : layer->parameters()) {
      tied = tied || !seen.insert(parameter.unsafeGetTensorImpl()).second;
    }
  }
  if (tied) layers = {std::make_shared<ScriptedLayer>(module, "")};
  std::set<std::string> names;
  for (const auto& layer : layers) {
    std::string name = layer->python_name().empty() ? "model" : layer->python_name();
    std::replace(name.begin(), name.end(), '.', '_');  // LibTorch module names have no dots
    while (!names.insert(name).second) name += "_";
    out.net->push_back(name, layer);
    for (const auto& parameter : layer->named_parameters(true)) {
      out.parameter_names.push_back(join_name(layer->python_name(), parameter.key()));
    }
    const bool has_parameters = !layer->parameters().empty();
    const std::string path = !has_parameters                                ? "no parameters"
                             : layer->kind() == ScriptedLayer::Kind::kOther ? "per-sample loop"
                                                                            : "batched exact";
    out.layer_notes.push_back(
        (layer->python_name().empty() ? "(whole model)" : layer->python_name()) + " (" +
        layer->type_name() + "): " + path);
  }

  // Two zero samples through the model: the shapes and the forward are checked before training.
  torch::NoGradGuard no_grad;
  const bool was_training = module->is_training();
  out.net->eval();
  torch::Tensor output;
  try {
    output = out.net->forward(torch::zeros({2, input_size}));
  } catch (const std::exception& e) {
    std::vector<int64_t> batch_shape = {2};
    batch_shape.insert(batch_shape.end(), sample_shape.begin(), sample_shape.end());
    throw RunError(where + ": forward on a zero batch of shape " + shape_text(batch_shape) +
                   " failed (set model.input_shape to the shape of one sample your model takes): " +
                   first_line(e.what()));
  }
  out.net->train(was_training);
  if (output.dim() != 2 || output.size(0) != 2 || output.size(1) != num_classes) {
    throw RunError(where + ": forward returns " + shape_text(output.sizes().vec()) +
                   " for 2 samples; it must return logits [N, data.num_classes] = [2, " +
                   std::to_string(num_classes) + "]");
  }
  return out;
}

void save_scripted_model(const torch::jit::Module& module, const std::string& path) {
  std::ostringstream bytes;
  module.save(bytes);
  write_file_atomic(path, bytes.str());
}

}  // namespace clhost
