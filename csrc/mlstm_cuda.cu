// mLSTM (xLSTM matrix-memory cell) forward on CUDA, recurrent.  The recurrence, the official quadratic
// form and the references are in csrc/mlstm.py; the CPU kernel (chunkwise) is csrc/mlstm_cpu.cpp and this
// file takes the same arguments (the chunk size is unused: the recurrence has no chunks).
//
// A warp owns R value rows of one (batch row, head) for the whole sequence: lane l keeps the columns
// j = l, l + 32, ... (COLS of them) of those rows of C, and of the normaliser n, in registers.  Per step
// every warp of the head recomputes the scalar gates (m, forget and input weights), reads k_t and q_t
// one step ahead (cached in L1/L2: all warps of the head read the same), updates its rows, and sums
// C q and n . q over its lanes with shuffles.  Warps never wait for each other.  q/k widths up to 512.
#include "cuda_common.cuh"

namespace {

using namespace hearscan::cuda;

constexpr int kWarps = 4;  // warps per block

struct Params {
  int64_t H, T, dqk, dv;
  float eps, scale;
  const float *ig, *fg, *C0, *n0, *m0;
  float *h, *C1, *n1, *m1;
};

template <typename T, int COLS, int R>
__global__ void __launch_bounds__(kWarps * 32) mlstm_kernel(Params p, const T* __restrict__ q,
                                                            const T* __restrict__ k, const T* __restrict__ v) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t bh = blockIdx.y, row0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * R;
  if (row0 >= p.dv) return;  // whole warps only: the shuffles below stay full
  const int64_t DQK = p.dqk, DV = p.dv, T_len = p.T;
  float C[R][COLS], n[COLS];
#pragma unroll
  for (int c = 0; c < COLS; ++c) {
    const int64_t j = lane + 32 * c;
    n[c] = (j < DQK && p.n0) ? p.n0[bh * DQK + j] : 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r)
      C[r][c] = (j < DQK && row0 + r < DV && p.C0) ? p.C0[(bh * DV + row0 + r) * DQK + j] : 0.f;
  }
  float m = p.m0 ? p.m0[bh] : -INFINITY;
  const T* qh = q + bh * T_len * DQK;
  const T* kh = k + bh * T_len * DQK;
  const T* vh = v + bh * T_len * DV;
  const float* igh = p.ig + bh * T_len;
  const float* fgh = p.fg + bh * T_len;
  float* hh = p.h + bh * T_len * DV;

  // The inputs of step t + 1 are loaded during step t, so their memory latency overlaps the arithmetic.
  float kj[COLS], qj[COLS], vr[R], fg_t, ig_t;
  auto fetch = [&](int64_t t, float* kk, float* qq, float* vv, float& f, float& i) {
    const bool in = t < T_len;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t j = lane + 32 * c;
      kk[c] = (in && j < DQK) ? to_float(kh[t * DQK + j]) * p.scale : 0.f;
      qq[c] = (in && j < DQK) ? to_float(qh[t * DQK + j]) : 0.f;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) vv[r] = (in && row0 + r < DV) ? to_float(vh[t * DV + row0 + r]) : 0.f;
    f = in ? fgh[t] : 0.f;
    i = in ? igh[t] : 0.f;
  };
  fetch(0, kj, qj, vr, fg_t, ig_t);

  // Two steps per iteration where registers allow (up to 8 columns per lane): the shuffle sums of one step
  // overlap with the arithmetic of the other (measured on an H100: 1.2-1.6x at DH 192 and at long T;
  // at 12 columns the doubled registers cost more than that).
#pragma unroll(COLS <= 8 ? 2 : 1)
  for (int64_t t = 0; t < T_len; ++t) {
    float kn[COLS], qn[COLS], vn[R], fg_n, ig_n;
    fetch(t + 1, kn, qn, vn, fg_n, ig_n);
    const float log_f = log_sigmoid(fg_t);
    const float m_new = fmaxf(log_f + m, ig_t);
    const float fw = expf(log_f + m - m_new), iw = expf(ig_t - m_new);
    m = m_new;
    float nq = 0.f;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      n[c] = fw * n[c] + iw * kj[c];
      nq += n[c] * qj[c];
    }
    nq = group_sum(nq);
    const float inv_den = 1.f / (fmaxf(fabsf(nq), expf(-m)) + p.eps);
    float mine = 0.f;  // lane r keeps row r's output
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float vi = vr[r] * iw;
      float acc = 0.f;
#pragma unroll
      for (int c = 0; c < COLS; ++c) {
        C[r][c] = fw * C[r][c] + vi * kj[c];
        acc += C[r][c] * qj[c];
      }
      acc = group_sum(acc);
      if (lane == r) mine = acc;
    }
    if (lane < R && row0 + lane < DV) hh[t * DV + row0 + lane] = mine * inv_den;
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      kj[c] = kn[c];
      qj[c] = qn[c];
    }
#pragma unroll
    for (int r = 0; r < R; ++r) vr[r] = vn[r];
    fg_t = fg_n;
    ig_t = ig_n;
  }
  if (p.C1) {
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      const int64_t j = lane + 32 * c;
      if (j >= DQK) continue;
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (row0 + r < DV) p.C1[(bh * DV + row0 + r) * DQK + j] = C[r][c];
      if (row0 == 0) p.n1[bh * DQK + j] = n[c];
    }
    if (row0 == 0 && lane == 0) p.m1[bh] = m;
  }
}

template <typename T, int COLS, int R>
void launch(const Params& p, int64_t B, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const dim3 grid((p.dv + kWarps * R - 1) / (kWarps * R), B * p.H);
  if (grid.x == 0 || grid.y == 0) return;
  mlstm_kernel<T, COLS, R><<<grid, kWarps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p, q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Columns per lane: the smallest of 1, 2, 3, 4, 6, 8, 12, 16 that covers DQK; 4 rows per warp (each row
// reuses the lane's k and q), 2 at 16 columns (so C stays within 48 registers).
template <typename T>
void dispatch(const Params& p, int64_t B, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t cols = (p.dqk + 31) / 32;
  if (cols <= 1) launch<T, 1, 4>(p, B, q, k, v);
  else if (cols <= 2) launch<T, 2, 4>(p, B, q, k, v);
  else if (cols <= 3) launch<T, 3, 4>(p, B, q, k, v);
  else if (cols <= 4) launch<T, 4, 4>(p, B, q, k, v);
  else if (cols <= 6) launch<T, 6, 4>(p, B, q, k, v);
  else if (cols <= 8) launch<T, 8, 4>(p, B, q, k, v);
  else if (cols <= 12) launch<T, 12, 4>(p, B, q, k, v);
  else launch<T, 16, 2>(p, B, q, k, v);
}

std::vector<at::Tensor> forward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor igate, at::Tensor fgate,
                                c10::optional<at::Tensor> C0, c10::optional<at::Tensor> n0,
                                c10::optional<at::Tensor> m0, double eps, int64_t chunk, bool need_state) {
  (void)chunk;
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "mlstm CUDA kernel: q, k, v must be float32 or bfloat16");
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 && v.size(0) == q.size(0) &&
                  v.size(1) == q.size(1) && v.size(2) == q.size(2) && k.scalar_type() == q.scalar_type() &&
                  v.scalar_type() == q.scalar_type(),
              "mlstm CUDA kernel: q, k (B, H, T, DQK) and v (B, H, T, DV) do not match");
  check_cuda("mlstm", q, {q, k, v, igate, fgate});
  const int64_t B = q.size(0), H = q.size(1), T_len = q.size(2), DQK = q.size(3), DV = v.size(3);
  TORCH_CHECK(DQK <= 512, "mlstm CUDA kernel: q/k width ", DQK, " is above 512");
  for (const auto& g : {igate, fgate})
    TORCH_CHECK(g.dim() == 3 && g.size(0) == B && g.size(1) == H && g.size(2) == T_len &&
                    g.scalar_type() == at::kFloat,
                "mlstm CUDA kernel: gates must be float32 (B, H, T)");
  const bool has_state = C0.has_value();
  TORCH_CHECK(has_state == n0.has_value() && has_state == m0.has_value(),
              "mlstm CUDA kernel: the state is (C, n, m) or nothing");
  check_state("mlstm", C0, {B, H, DV, DQK}, q);
  check_state("mlstm", n0, {B, H, DQK}, q);
  check_state("mlstm", m0, {B, H}, q);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto f32 = q.options().dtype(at::kFloat);
  at::Tensor h = at::empty({B, H, T_len, DV}, f32);
  at::Tensor C = at::empty({B, H, DV, DQK}, f32), n = at::empty({B, H, DQK}, f32), m = at::empty({B, H}, f32);
  if (DV == 0) {  // no rows, so no warp writes n and m
    if (has_state) { n.copy_(*n0); m.copy_(*m0); } else { n.zero_(); m.fill_(-INFINITY); }
  }
  const Params p{H, T_len, DQK, DV, static_cast<float>(eps), static_cast<float>(1.0 / std::sqrt(double(DQK))),
                 igate.data_ptr<float>(), fgate.data_ptr<float>(), data_or_null(C0), data_or_null(n0),
                 data_or_null(m0), h.data_ptr<float>(), C.data_ptr<float>(), n.data_ptr<float>(),
                 m.data_ptr<float>()};
  if (q.scalar_type() == at::kFloat)
    dispatch<float>(p, B, q, k, v);
  else
    dispatch<c10::BFloat16>(p, B, q, k, v);
  (void)need_state;  // the final state costs one write per element; it is always returned
  return {h.to(q.scalar_type()), C, n, m};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hearscan mLSTM CUDA forward kernel (recurrent)";
  m.def("forward", &forward, "mLSTM forward: (h, C, n, m)");
}
