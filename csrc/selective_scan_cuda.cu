// Selective scan (Mamba-1 SSM) forward on CUDA.  The recurrence and the reference are in
// csrc/selective_scan.py; the CPU kernel is csrc/selective_scan_cpu.cpp and this file takes the same
// arguments (u, delta, z: (B, D, L); A: (D, N); B, C transposed to (B, L, N) float32).
//
// A group of G lanes of one warp scans one channel (b, d): lane l keeps the states n = l, l + G, ... in
// registers, and the G lanes sum C . h with shuffles.  The channel's u, delta and z are read G steps at a
// time (lane l reads step t0 + l) and passed to the group by shuffles; lane s keeps y of step t0 + s,
// so each group writes G consecutive outputs at once.  d_state up to 64.
#include "cuda_common.cuh"

namespace {

using namespace hearscan::cuda;

struct Params {
  int64_t channels, dim, length, dstate;
  bool softplus;
  const float *A, *Bt, *Ct, *D, *delta_bias, *s_in;
  float* s_out;
};

template <typename T, int G, int NS>
__global__ void __launch_bounds__(128) scan_kernel(Params p, const T* __restrict__ u, const T* __restrict__ delta,
                                                   const T* __restrict__ z, T* __restrict__ out) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % G;
  const bool live = thread / G < p.channels;
  // Groups past the last channel repeat it without writing: every lane must take part in the shuffles.
  const int64_t c = live ? thread / G : p.channels - 1;
  const int64_t bi = c / p.dim, d = c % p.dim, L = p.length, N = p.dstate;
  float A[NS], h[NS];
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    const int64_t n = lane + s * G;
    A[s] = n < N ? p.A[d * N + n] : 0.f;
    h[s] = (n < N && p.s_in) ? p.s_in[c * N + n] : 0.f;
  }
  const float Dd = p.D ? p.D[d] : 0.f, bias = p.delta_bias ? p.delta_bias[d] : 0.f;
  const T* uc = u + c * L;
  const T* dc = delta + c * L;
  const float* Bb = p.Bt + bi * L * N;
  const float* Cb = p.Ct + bi * L * N;

  for (int64_t t0 = 0; t0 < L; t0 += G) {
    const int64_t tl = t0 + lane;
    const bool in = tl < L;
    const float u_l = in ? to_float(uc[tl]) : 0.f;
    float dt_l = (in ? to_float(dc[tl]) : 0.f) + bias;
    if (p.softplus) dt_l = softplus(dt_l);
    float y_l = 0.f;
    const int steps = static_cast<int>(L - t0 < G ? L - t0 : G);  // the same for every lane of the warp
    for (int s_ = 0; s_ < steps; ++s_) {
      const float uu = __shfl_sync(0xffffffffu, u_l, s_, G);
      const float dt = __shfl_sync(0xffffffffu, dt_l, s_, G);
      const int64_t row = (t0 + s_) * N;
      float part = 0.f;
#pragma unroll
      for (int s = 0; s < NS; ++s) {
        const int64_t n = lane + s * G;
        if (n < N) {
          h[s] = expf(dt * A[s]) * h[s] + dt * Bb[row + n] * uu;
          part += h[s] * Cb[row + n];
        }
      }
      part = group_sum<G>(part);
      if (lane == s_) y_l = part;
    }
    if (in && live) {
      float y = y_l + Dd * u_l;
      if (z) {
        const float zz = to_float(z[c * L + tl]);
        y *= zz / (1.f + expf(-zz));
      }
      out[c * L + tl] = from_float<T>(y);
    }
  }
  if (p.s_out && live) {
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      const int64_t n = lane + s * G;
      if (n < N) p.s_out[c * N + n] = h[s];
    }
  }
}

template <typename T, int G, int NS>
void launch(const Params& p, const at::Tensor& u, const at::Tensor& delta, const c10::optional<at::Tensor>& z,
            at::Tensor& out) {
  constexpr int threads = 128;
  const int64_t blocks = (p.channels * G + threads - 1) / threads;
  if (blocks == 0) return;
  scan_kernel<T, G, NS><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p, u.data_ptr<T>(), delta.data_ptr<T>(), z.has_value() ? z->data_ptr<T>() : nullptr, out.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void dispatch(const Params& p, const at::Tensor& u, const at::Tensor& delta, const c10::optional<at::Tensor>& z,
              at::Tensor& out) {
  if (p.dstate <= 8) launch<T, 8, 1>(p, u, delta, z, out);
  else if (p.dstate <= 16) launch<T, 16, 1>(p, u, delta, z, out);
  else if (p.dstate <= 32) launch<T, 32, 1>(p, u, delta, z, out);
  else launch<T, 32, 2>(p, u, delta, z, out);
}

std::vector<torch::Tensor> forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                   torch::Tensor Ct, c10::optional<torch::Tensor> Dskip,
                                   c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> delta_bias,
                                   bool delta_softplus, c10::optional<torch::Tensor> state) {
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes() && delta.scalar_type() == u.scalar_type(),
              "selective_scan CUDA kernel: u and delta must be (B, D, L) of one dtype");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kBFloat16,
              "selective_scan CUDA kernel: u must be float32 or bfloat16");
  check_cuda("selective_scan", u, {u, delta, A, Bt, Ct});
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2), dstate = A.size(1);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.scalar_type() == at::kFloat,
              "selective_scan CUDA kernel: A must be float32 (D, N)");
  TORCH_CHECK(dstate <= 64, "selective_scan CUDA kernel: d_state=", dstate, " is above 64");
  for (const auto& t : {Bt, Ct})
    TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(1) == length && t.size(2) == dstate &&
                    t.scalar_type() == at::kFloat,
                "selective_scan CUDA kernel: B and C must be float32 (B, L, N)");
  for (const auto* t : {&Dskip, &delta_bias})
    if (t->has_value()) {
      TORCH_CHECK((*t)->numel() == dim && (*t)->scalar_type() == at::kFloat,
                  "selective_scan CUDA kernel: D and delta_bias must be float32 (D,)");
      check_cuda("selective_scan", u, {**t});
    }
  if (z.has_value()) {
    TORCH_CHECK(z->sizes() == u.sizes() && z->scalar_type() == u.scalar_type(),
                "selective_scan CUDA kernel: z must be like u");
    check_cuda("selective_scan", u, {*z});
  }
  check_state("selective_scan", state, {batch, dim, dstate}, u);
  const c10::cuda::CUDAGuard guard(u.device());

  auto out = torch::empty_like(u);
  auto last_state = torch::empty({batch, dim, dstate}, u.options().dtype(at::kFloat));
  const Params p{batch * dim, dim, length, dstate, delta_softplus, A.data_ptr<float>(), Bt.data_ptr<float>(),
                 Ct.data_ptr<float>(), data_or_null(Dskip), data_or_null(delta_bias), data_or_null(state),
                 last_state.data_ptr<float>()};
  if (u.scalar_type() == at::kFloat)
    dispatch<float>(p, u, delta, z, out);
  else
    dispatch<c10::BFloat16>(p, u, delta, z, out);
  return {out, last_state};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hearscan selective scan (Mamba-1) CUDA forward kernel";
  m.def("forward", &forward, "selective scan forward: (out, last_state)");
}
