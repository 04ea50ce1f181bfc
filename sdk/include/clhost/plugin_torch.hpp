// plugin_torch.hpp — optional LibTorch helpers for plug-ins that use the LibTorch C++ API.
// Including it makes the plug-in link LibTorch; plug-ins that only read DLTensors don't need it.
#ifndef CLHOST_SDK_PLUGIN_TORCH_HPP
#define CLHOST_SDK_PLUGIN_TORCH_HPP

#include <clhost/plugin.hpp>

#include <ATen/DLConvertor.h>
#include <torch/types.h>
#include <torch/version.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

namespace clhost::sdk {

// A tensor that aliases the DLTensor's memory (no copy, no ownership). Valid as long as the
// DLTensor is (for host tensors: the current hook).
inline torch::Tensor tensor_view(const DLTensor& tensor) {
  if (tensor.data == nullptr) {
    throw Error("tensor has no data (gradient not computed yet?)", CLHOST_STATUS_INVALID_ARGUMENT);
  }
  const c10::ScalarType dtype = at::toScalarType(tensor.dtype);
  std::vector<int64_t> sizes(tensor.shape, tensor.shape + tensor.ndim);
  std::vector<int64_t> strides;
  if (tensor.strides != nullptr) {
    strides.assign(tensor.strides, tensor.strides + tensor.ndim);
  } else {
    strides.resize(static_cast<size_t>(tensor.ndim));
    int64_t stride = 1;
    for (int32_t dim = tensor.ndim - 1; dim >= 0; --dim) {
      strides[static_cast<size_t>(dim)] = stride;
      stride *= sizes[static_cast<size_t>(dim)];
    }
  }
  auto options = torch::TensorOptions().dtype(dtype);
  if (tensor.device.device_type == kDLCUDA) {
    options = options.device(torch::kCUDA, tensor.device.device_id);
  }
  auto* base = static_cast<char*>(tensor.data) + tensor.byte_offset;
  return torch::from_blob(base, sizes, strides, options);
}

// A tensor in a plug-in's saved state: dtype, shape, then the elements (CPU, contiguous).
// An undefined tensor is written as such and read back undefined.
inline void write_tensor(StateWriter& out, const torch::Tensor& tensor) {
  out.value<int8_t>(tensor.defined() ? 1 : 0);
  if (!tensor.defined()) return;
  const torch::Tensor plain = tensor.to(torch::kCPU).contiguous();
  out.value(static_cast<int32_t>(plain.scalar_type()));
  out.vector(plain.sizes().vec());
  out.bytes(plain.data_ptr(), static_cast<size_t>(plain.nbytes()));
}

// Reads what write_tensor wrote. The dtype, the shape and the bytes it needs are checked against
// the bytes left before anything is allocated: forged or truncated state is an Error naming
// what is wrong, never an unknown dtype or a huge allocation.
inline torch::Tensor read_tensor(StateReader& in) {
  if (in.value<int8_t>() == 0) return {};
  const auto code = in.value<int32_t>();
  static constexpr c10::ScalarType kWritten[] = {c10::ScalarType::Float, c10::ScalarType::Double,
                                                 c10::ScalarType::Half,  c10::ScalarType::BFloat16,
                                                 c10::ScalarType::Byte,  c10::ScalarType::Char,
                                                 c10::ScalarType::Short, c10::ScalarType::Int,
                                                 c10::ScalarType::Long,  c10::ScalarType::Bool};
  const auto* known =
      std::find_if(std::begin(kWritten), std::end(kWritten),
                   [code](c10::ScalarType type) { return static_cast<int32_t>(type) == code; });
  if (known == std::end(kWritten)) {
    throw Error("saved state: tensor dtype code " + std::to_string(code) +
                    " is not one a clhost state holds",
                CLHOST_STATUS_INVALID_ARGUMENT);
  }
  const std::vector<int64_t> sizes = in.vector<int64_t>();
  const size_t element_bytes = c10::elementSize(*known);
  uint64_t elements = 1;
  for (const int64_t size : sizes) {
    if (size < 0 ||
        (size > 0 && elements > in.remaining() / element_bytes / static_cast<uint64_t>(size))) {
      std::string shape;
      for (const int64_t each : sizes) shape += (shape.empty() ? "" : " x ") + std::to_string(each);
      throw Error("saved state: a tensor of shape [" + shape + "] does not fit in the " +
                      std::to_string(in.remaining()) +
                      " bytes left (truncated or not a clhost state)",
                  CLHOST_STATUS_INVALID_ARGUMENT);
    }
    elements *= static_cast<uint64_t>(size);
  }
  torch::Tensor tensor = torch::empty(sizes, torch::TensorOptions().dtype(*known));
  in.bytes(tensor.data_ptr(), static_cast<size_t>(tensor.nbytes()));
  return tensor;
}

}  // namespace clhost::sdk

#ifndef _GLIBCXX_USE_CXX11_ABI
#define CLHOST_CXX11_ABI_VALUE (-1)
#else
#define CLHOST_CXX11_ABI_VALUE _GLIBCXX_USE_CXX11_ABI
#endif

// Use as the FINGERPRINT argument of CLHOST_DEFINE_PLUGIN.
#define CLHOST_TORCH_FINGERPRINT                                                                 \
  ([]() -> const clhost_build_fingerprint_t* {                                                   \
    static const clhost_build_fingerprint_t fingerprint{                                         \
        sizeof(clhost_build_fingerprint_t), TORCH_VERSION, CLHOST_CXX11_ABI_VALUE, __VERSION__}; \
    return &fingerprint;                                                                         \
  }())

#endif  // CLHOST_SDK_PLUGIN_TORCH_HPP
