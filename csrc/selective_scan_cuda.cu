// Selective scan (Mamba-1 SSM) forward on CUDA.  The recurrence and the reference are in
// csrc/selective_scan.py; the CPU kernel is csrc/selective_scan_cpu.cpp and this file takes the same
// arguments (u, delta, z: (B, D, L); A: (D, N); B, C transposed to (B, L, N) float32).
//
// One thread block of 128 threads per channel (b, d), the time axis split over its threads: a chunk of
// 128 * kItems consecutive steps, kItems per thread.  For each state n, h_t = a_t h_{t-1} + b_t with
// a_t = exp(dt_t A_n), b_t = dt_t B_t u_t is a composition of affine maps, which is associative: each
// thread composes its own steps, a block-wide scan (warp shuffles, then the 4 warp totals) gives every
// thread the map from the chunk's start to its first step, and the state carried from the previous chunk
// goes through it; the thread then replays its steps and adds C_t h_t to its outputs.  The same splitting
// of time is what makes mamba's own kernel fast.  d_state up to 64.
#include "cuda_common.cuh"

namespace {

using namespace hearscan::cuda;

struct Params {
  int64_t channels, dim, length, dstate;
  bool softplus;
  const float *A, *Bt, *Ct, *D, *delta_bias, *s_in;
  float* s_out;
};

constexpr int kThreads = 128, kWarps = kThreads / 32, kItems = 4, kMaxState = 64;

// An affine map h -> a h + b; `then(first, second)` is second after first.
struct Affine {
  float a, b;
};
__device__ __forceinline__ Affine then(Affine first, Affine second) {
  return {second.a * first.a, second.a * first.b + second.b};
}

template <typename T>
__global__ void __launch_bounds__(kThreads) scan_kernel(Params p, const T* __restrict__ u,
                                                        const T* __restrict__ delta, const T* __restrict__ z,
                                                        T* __restrict__ out) {
  const int64_t c = blockIdx.x, bi = c / p.dim, d = c % p.dim, L = p.length, N = p.dstate;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  __shared__ float carry[kMaxState], carry_next[kMaxState];
  __shared__ Affine warp_total[kWarps];
  if (tid < N) carry[tid] = p.s_in ? p.s_in[c * N + tid] : 0.f;
  const float Dd = p.D ? p.D[d] : 0.f, bias = p.delta_bias ? p.delta_bias[d] : 0.f;
  const float* Bb = p.Bt + bi * L * N;
  const float* Cb = p.Ct + bi * L * N;
  __syncthreads();

  for (int64_t c0 = 0; c0 < L; c0 += kThreads * kItems) {
    const int64_t t0 = c0 + static_cast<int64_t>(tid) * kItems;  // this thread's first step
    float uu[kItems], dt[kItems], y[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const bool in = t0 + i < L;
      uu[i] = in ? to_float(u[c * L + t0 + i]) : 0.f;
      float x = (in ? to_float(delta[c * L + t0 + i]) : 0.f) + bias;
      dt[i] = in ? (p.softplus ? softplus(x) : x) : 0.f;  // dt = 0 past the end: a = 1, b = 0
      y[i] = 0.f;
    }
    for (int64_t n = 0; n < N; ++n) {
      const float An = p.A[d * N + n];
      float a[kItems], b[kItems];
      Affine mine{1.f, 0.f};
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const bool in = t0 + i < L;
        a[i] = expf(dt[i] * An);
        b[i] = in ? dt[i] * Bb[(t0 + i) * N + n] * uu[i] : 0.f;
        mine = then(mine, Affine{a[i], b[i]});
      }
      // Inclusive scan over the warp's lanes, then over the warps' totals.
      Affine inc = mine;
#pragma unroll
      for (int off = 1; off < 32; off *= 2) {
        const Affine up{__shfl_up_sync(0xffffffffu, inc.a, off), __shfl_up_sync(0xffffffffu, inc.b, off)};
        if (lane >= off) inc = then(up, inc);
      }
      __syncthreads();  // the previous state's readers of warp_total are done
      if (lane == 31) warp_total[warp] = inc;
      __syncthreads();
      Affine before{1.f, 0.f};  // the steps of the earlier warps
      for (int w = 0; w < warp; ++w) before = then(before, warp_total[w]);
      Affine lane_before{__shfl_up_sync(0xffffffffu, inc.a, 1), __shfl_up_sync(0xffffffffu, inc.b, 1)};
      if (lane == 0) lane_before = Affine{1.f, 0.f};
      const Affine prefix = then(before, lane_before);
      float h = prefix.a * carry[n] + prefix.b;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        h = a[i] * h + b[i];
        if (t0 + i < L) y[i] += Cb[(t0 + i) * N + n] * h;
      }
      if (tid == kThreads - 1) carry_next[n] = h;  // the state at the chunk's last step
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (t0 + i >= L) break;
      float yi = y[i] + Dd * uu[i];
      if (z) {
        const float zz = to_float(z[c * L + t0 + i]);
        yi *= zz / (1.f + expf(-zz));
      }
      out[c * L + t0 + i] = from_float<T>(yi);
    }
    __syncthreads();
    if (tid < N) carry[tid] = carry_next[tid];
    __syncthreads();
  }
  if (p.s_out && tid < N) p.s_out[c * N + tid] = carry[tid];
}

template <typename T>
void launch(const Params& p, const at::Tensor& u, const at::Tensor& delta, const c10::optional<at::Tensor>& z,
            at::Tensor& out) {
  if (p.channels == 0) return;
  scan_kernel<T><<<p.channels, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p, u.data_ptr<T>(), delta.data_ptr<T>(), z.has_value() ? z->data_ptr<T>() : nullptr, out.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  TORCH_CHECK(dstate <= kMaxState, "selective_scan CUDA kernel: d_state=", dstate, " is above ", kMaxState);
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
    launch<float>(p, u, delta, z, out);
  else
    launch<c10::BFloat16>(p, u, delta, z, out);
  return {out, last_state};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hearscan selective scan (Mamba-1) CUDA forward kernel";
  m.def("forward", &forward, "selective scan forward: (out, last_state)");
}
