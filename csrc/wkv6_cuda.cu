// WKV-6 (RWKV-6 "Finch") forward scan on CUDA.  The recurrence and the reference are in csrc/wkv6.py; the
// CPU kernel is csrc/wkv6_cpu.cpp and this file has the same Python signature.
//
// Same layout as csrc/wkv7_cuda.cu: one thread block per (batch row, head), thread i keeps state row
// S[i][0..N) in registers; r, k and the decay of each step are staged in double-buffered shared memory,
// the bonus u of the head once.  Head sizes up to 128 (padding rows and columns stay zero).
#include "cuda_common.cuh"

namespace {

using namespace hearscan::cuda;

template <typename T, int N>
__global__ void __launch_bounds__(N) wkv6_kernel(int T_len, int H, int n, const T* __restrict__ r,
                                                 const T* __restrict__ k, const T* __restrict__ v,
                                                 const T* __restrict__ w, const float* __restrict__ u,
                                                 T* __restrict__ y, const float* __restrict__ s_in,
                                                 float* __restrict__ s_out) {
  const int bh = blockIdx.x, bi = bh / H, h = bh % H, i = threadIdx.x;
  const bool live = i < n;
  __shared__ float sr[2][N], sk[2][N], sd[2][N], su[N];
  su[i] = live ? u[h * n + i] : 0.f;
  float S[N];
  const float* s0 = s_in ? s_in + (static_cast<int64_t>(bh) * n + i) * n : nullptr;
#pragma unroll
  for (int j = 0; j < N; ++j) S[j] = (s0 && live && j < n) ? s0[j] : 0.f;

  for (int t = 0; t < T_len; ++t) {
    const int buf = t & 1;
    const int64_t idx = ((static_cast<int64_t>(bi) * T_len + t) * H + h) * n + i;
    float vi = 0.f;
    if (live) {
      sr[buf][i] = to_float(r[idx]);
      sk[buf][i] = to_float(k[idx]);
      sd[buf][i] = expf(-expf(to_float(w[idx])));
      vi = to_float(v[idx]);
    } else {
      sr[buf][i] = sk[buf][i] = sd[buf][i] = 0.f;
    }
    __syncthreads();  // (the buffer written here was last read two steps ago, before the previous barrier)
    float yi = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float kv = sk[buf][j] * vi;
      yi += sr[buf][j] * (S[j] + su[j] * kv);
      S[j] = S[j] * sd[buf][j] + kv;
    }
    if (live) y[idx] = from_float<T>(yi);
  }
  if (s_out && live) {
    float* s1 = s_out + (static_cast<int64_t>(bh) * n + i) * n;
#pragma unroll
    for (int j = 0; j < N; ++j)
      if (j < n) s1[j] = S[j];
  }
}

template <typename T, int N>
void launch(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
            const at::Tensor& u, at::Tensor& y, const float* s_in, float* s_out) {
  const int B = r.size(0), T_len = r.size(1), H = r.size(2), n = r.size(3);
  if (B * H == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();
  wkv6_kernel<T, N><<<B * H, N, 0, stream>>>(T_len, H, n, r.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(),
                                             w.data_ptr<T>(), u.data_ptr<float>(), y.data_ptr<T>(), s_in, s_out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void dispatch(const at::Tensor& r, const at::Tensor& k, const at::Tensor& v, const at::Tensor& w,
              const at::Tensor& u, at::Tensor& y, const float* s_in, float* s_out) {
  const int64_t n = r.size(3);
  if (n <= 16) launch<T, 16>(r, k, v, w, u, y, s_in, s_out);
  else if (n <= 32) launch<T, 32>(r, k, v, w, u, y, s_in, s_out);
  else if (n <= 64) launch<T, 64>(r, k, v, w, u, y, s_in, s_out);
  else launch<T, 128>(r, k, v, w, u, y, s_in, s_out);
}

// Returns [y] or [y, final_state], as the CPU kernel.
std::vector<at::Tensor> wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                     c10::optional<at::Tensor> state, bool return_state) {
  TORCH_CHECK(r.dim() == 4, "wkv6: r must be (B, T, H, N)");
  for (const auto& x : {k, v, w})
    TORCH_CHECK(x.sizes() == r.sizes() && x.scalar_type() == r.scalar_type(),
                "wkv6: r, k, v, w must have one shape and one dtype");
  TORCH_CHECK(r.scalar_type() == at::kFloat || r.scalar_type() == at::kBFloat16,
              "wkv6: inputs must be float32 or bfloat16");
  check_cuda("wkv6", r, {r, k, v, w, u});
  const int64_t B = r.size(0), H = r.size(2), N = r.size(3);
  TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 2 && u.size(0) == H && u.size(1) == N,
              "wkv6: u must be float32 (H, N)");
  TORCH_CHECK(N >= 1 && N <= 128, "wkv6 CUDA kernel: head size N=", N, " is outside 1..128");
  check_state("wkv6", state, {B, H, N, N}, r);
  const c10::cuda::CUDAGuard guard(r.device());
  auto y = at::empty_like(r);
  at::Tensor s_out;
  if (return_state) s_out = at::empty({B, H, N, N}, r.options().dtype(at::kFloat));
  const float* s_in = data_or_null(state);
  float* s_out_p = return_state ? s_out.data_ptr<float>() : nullptr;
  if (r.scalar_type() == at::kFloat)
    dispatch<float>(r, k, v, w, u, y, s_in, s_out_p);
  else
    dispatch<c10::BFloat16>(r, k, v, w, u, y, s_in, s_out_p);
  if (return_state) return {y, s_out};
  return {y};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &wkv6_forward, "WKV-6 forward scan (CUDA)", py::arg("r"), py::arg("k"), py::arg("v"),
        py::arg("w"), py::arg("u"), py::arg("state") = py::none(), py::arg("return_state") = false);
}
