// Pieces shared by the CUDA scan kernels (csrc/<op>_cuda.cu): dtype conversion, warp sums, and the
// launch plumbing.  Each kernel keeps its state in float32 registers and reads float32 or bfloat16 inputs.
#pragma once

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <torch/extension.h>

namespace hearscan {
namespace cuda {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(c10::BFloat16 x) { return static_cast<float>(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x) { return static_cast<T>(x); }  // bfloat16: round to nearest even

// Sum over `Width` consecutive lanes (a power of two <= 32); every lane of the group gets the sum.
// All 32 lanes of the warp must call it.
template <int Width = 32>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int offset = Width / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset, Width);
  return x;
}

// torch.nn.functional.softplus (beta 1, threshold 20) and logsigmoid, as the references compute them.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float log_sigmoid(float x) { return fminf(x, 0.f) - log1pf(expf(-fabsf(x))); }

inline const float* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// Checks of the direct callers of a CUDA kernel (the Python bindings validate with clearer messages).
inline void check_cuda(const char* op, const at::Tensor& ref, std::initializer_list<at::Tensor> all) {
  for (const auto& x : all) {
    TORCH_CHECK(x.is_cuda() && x.get_device() == ref.get_device(), op, " CUDA kernel: every tensor must be on ",
                ref.device());
    TORCH_CHECK(x.is_contiguous(), op, " CUDA kernel: inputs must be contiguous");
  }
}

inline void check_state(const char* op, const c10::optional<at::Tensor>& s, at::IntArrayRef shape,
                        const at::Tensor& ref) {
  if (!s.has_value()) return;
  TORCH_CHECK(s->sizes() == shape && s->scalar_type() == at::kFloat, op,
              " CUDA kernel: the state must be float32 of shape ", shape);
  check_cuda(op, ref, {*s});
}

}  // namespace cuda
}  // namespace hearscan
