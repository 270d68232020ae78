// mLSTM (xLSTM matrix-memory cell) forward on the CPU, chunkwise: matmuls within a chunk, the
// (C, n, m) recurrence across chunks.
//
// Semantics: csrc/mlstm.py (the official quadratic `parallel_stabilized_simple` and the recurrent
// form).  With log f_t = logsigmoid(fgate_t), i_t = igate_t, keys scaled by 1/sqrt(DH), and for a chunk
// that starts with the state (C, n, m) carried from earlier tokens, F_t = sum of log f over the chunk
// up to and including t:
//     log D_ts = F_t - F_s + i_s                    (s <= t inside the chunk)
//     m_t      = max(m + F_t, max_s log D_ts)       (the official row maximum, earlier tokens included)
//     num_t    = e^(m + F_t - m_t) C q_t + sum_s e^(log D_ts - m_t) (q_t . k_s) v_s
//     den_t    = e^(m + F_t - m_t) n . q_t + sum_s e^(log D_ts - m_t) (q_t . k_s)
//     h_t      = num_t / (max(|den_t|, e^(-m_t)) + eps)
// and the state after the chunk (last step l):  m' = m_l,
//     C' = e^(m + F_l - m') C + sum_s e^(F_l - F_s + i_s - m') v_s k_s^T,   n' likewise with k_s.
// A single chunk without a carried state is exactly the official parallel form; chunks bound the cost
// to O(T * chunk * DH + T * DH^2), linear in T.
//
// Layout: one task = one (batch, head); tasks run in parallel (at::parallel_for).  The three products
// per chunk (Q K^T, S V and, with a state, Q C^T plus the state update) are ATen matmuls on the task's
// float32 slices (MKL or the BLAS torch was built with, single-threaded inside the parallel region);
// the gate/stabiliser loops are plain loops that the compiler vectorises.
//
// The Python binding passes q, k, v contiguous (B, H, T, DH) in float32 or bfloat16, gates float32
// (B, H, T), and the state (C (B, H, DHV, DHQK) with C[i][j]: value row i, key column j; n (B, H, DHQK);
// m (B, H)) float32.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

// exp_fast_or_zero: branch-free (the loops calling it vectorise), relative error < 1e-7, and exactly 0
// for x = -inf, which the causal mask relies on.
#include "simd.h"

namespace {

using hearscan::exp_fast_or_zero;

// logsigmoid(x) = min(x, 0) - log1p(e^-|x|), stable for any x (a few values per chunk: libm is fine).
inline float log_sigmoid(float x) { return std::min(x, 0.0f) - std::log1p(std::exp(-std::fabs(x))); }

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kRowBlock = 64;  // query rows per block of the intra-chunk products

struct Problem {
  int64_t heads, length, dqk, dv, chunk;
  float eps;
  bool has_state;    // an initial state was passed
  bool need_state;   // the final state must be computed
};

// One (batch, head).  q, k, v: (T, DQK|DV) float32 views; ig, fg: (T,) float32; out: (T, DV) float32.
// C (DV, DQK), n (DQK), m: the state, updated in place.
void mlstm_head(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const float* ig, const float* fg, at::Tensor& out, at::Tensor& C, at::Tensor& n, float& m) {
  const int64_t T = p.length;
  // Keys are scaled by 1/sqrt(DQK); the scale is folded into the gate weights instead of copying k.
  const float kscale = 1.0f / std::sqrt(static_cast<float>(p.dqk));
  std::vector<float> F, pmax, mrow, sfac;
  bool state_live = p.has_state;  // C, n, m hold earlier tokens (else C = 0, n = 0, m = -inf)
  for (int64_t t0 = 0; t0 < T; t0 += p.chunk) {
    const int64_t L = std::min(p.chunk, T - t0);
    const bool last = t0 + L == T;
    const at::Tensor Qc = q.narrow(0, t0, L), Kc = k.narrow(0, t0, L), Vc = v.narrow(0, t0, L);
    // Cumulative log forget gates inside the chunk, inclusive, accumulated in double like torch.cumsum
    // on the CPU: a float running sum drifts by ~1e-6, which the normaliser can amplify ~100x.
    F.resize(L);
    double acc = 0.0;
    for (int64_t t = 0; t < L; ++t) F[t] = static_cast<float>(acc += log_sigmoid(fg[t0 + t]));
    const float* it = ig + t0;
    // Row maxima m_t = max(m + F_t, F_t + max_{s<=t} (i_s - F_s)) (a running maximum), and the
    // weight of the carried state in each row.
    pmax.resize(L);
    for (int64_t t = 0; t < L; ++t) pmax[t] = std::max(t ? pmax[t - 1] : kNegInf, it[t] - F[t]);
    mrow.resize(L);
    sfac.resize(L);
    for (int64_t t = 0; t < L; ++t) {
      mrow[t] = std::max(state_live ? m + F[t] : kNegInf, F[t] + pmax[t]);
      sfac[t] = state_live ? exp_fast_or_zero(m + F[t] - mrow[t]) : 0.0f;
    }
    at::Tensor num = out.narrow(0, t0, L);  // (L, DV): numerators, normalised in place below
    at::Tensor den = at::zeros({L}, q.options());
    if (state_live) {
      // Contribution of the earlier tokens: e^(m + F_t - m_t) (C q_t, n . q_t).
      const at::Tensor sf = at::from_blob(sfac.data(), {L}, q.options());
      at::mm_out(num, Qc, C.t()).mul_(sf.unsqueeze(1));
      den.copy_(at::mv(Qc, n)).mul_(sf);
    } else {
      num.zero_();
    }
    // Intra-chunk part, by blocks of query rows: rows [r0, r1) only see keys [0, r1), which skips
    // most of the masked upper triangle.  S_ts = (q_t . k_s) e^(log D_ts - m_t) for s <= t, else 0.
    float* denp = den.data_ptr<float>();
    for (int64_t r0 = 0; r0 < L; r0 += kRowBlock) {
      const int64_t r1 = std::min(L, r0 + kRowBlock);
      at::Tensor S = at::mm(Qc.narrow(0, r0, r1 - r0), Kc.narrow(0, 0, r1).t());  // (r1 - r0, r1)
      float* Sp = S.data_ptr<float>();
      for (int64_t t = r0; t < r1; ++t) {
        float* row = Sp + (t - r0) * r1;
        const float Ft = F[t], mt = mrow[t];
        float rsum = 0.0f;
#pragma omp simd reduction(+ : rsum)
        for (int64_t s = 0; s <= t; ++s) {
          row[s] *= kscale * exp_fast_or_zero(Ft - F[s] + it[s] - mt);
          rsum += row[s];
        }
        std::fill(row + t + 1, row + r1, 0.0f);
        denp[t] += rsum;
      }
      num.narrow(0, r0, r1 - r0).addmm_(S, Vc.narrow(0, 0, r1));
    }
    // h_t = num_t / (max(|den_t|, e^-m_t) + eps)
    float* np_ = num.data_ptr<float>();
    for (int64_t t = 0; t < L; ++t) {
      const float scale = 1.0f / (std::max(std::fabs(denp[t]), std::exp(-mrow[t])) + p.eps);
#pragma omp simd
      for (int64_t j = 0; j < p.dv; ++j) np_[t * p.dv + j] *= scale;
    }

    if (last && !p.need_state) break;
    // Carry the state past this chunk: m' = m_l; weights g_s = e^(F_l - F_s + i_s - m').
    const float m_new = mrow[L - 1], Fl = F[L - 1];
    std::vector<float> g(L);
    for (int64_t s = 0; s < L; ++s) g[s] = kscale * exp_fast_or_zero(Fl - F[s] + it[s] - m_new);
    const at::Tensor gt = at::from_blob(g.data(), {L, 1}, q.options());
    const at::Tensor Kg = Kc * gt;  // (L, DQK): scaled keys times their weights
    const float decay = state_live ? exp_fast_or_zero(m + Fl - m_new) : 0.0f;
    C.mul_(decay).addmm_(Vc.t(), Kg);        // C' = decay C + V^T diag(g) K
    n.mul_(decay).add_(Kg.sum(0));           // n' = decay n + K^T g
    m = m_new;
    state_live = true;
  }
}

// Shapes and dtypes are validated by the Python binding (csrc/mlstm.py); the checks here only guard
// memory safety.
std::vector<at::Tensor> forward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor igate, at::Tensor fgate,
                                c10::optional<at::Tensor> C0, c10::optional<at::Tensor> n0,
                                c10::optional<at::Tensor> m0, double eps, int64_t chunk, bool need_state) {
  TORCH_CHECK(q.device().is_cpu(), "mlstm CPU kernel: tensors must be on the CPU");
  at::NoGradGuard no_grad;  // forward only: the binding routes autograd to the reference
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16,
              "mlstm CPU kernel: q, k, v must be float32 or bfloat16");
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.dim() == 4 && v.size(0) == q.size(0) &&
                  v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "mlstm CPU kernel: q, k (B, H, T, DQK) and v (B, H, T, DV) do not match");
  for (const auto& x : {q, k, v})
    TORCH_CHECK(x.is_contiguous() && x.scalar_type() == q.scalar_type(),
                "mlstm CPU kernel: q, k, v must be contiguous and of one dtype");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), DQK = q.size(3), DV = v.size(3);
  for (const auto& g : {igate, fgate})
    TORCH_CHECK(g.dim() == 3 && g.size(0) == B && g.size(1) == H && g.size(2) == T && g.is_contiguous() &&
                    g.scalar_type() == at::kFloat,
                "mlstm CPU kernel: gates must be contiguous float32 (B, H, T)");
  const bool has_state = C0.has_value();
  TORCH_CHECK(has_state == n0.has_value() && has_state == m0.has_value(),
              "mlstm CPU kernel: the state is (C, n, m) or nothing");
  TORCH_CHECK(chunk > 0, "mlstm CPU kernel: chunk must be positive");

  const auto f32 = q.options().dtype(at::kFloat);
  // The state is updated in place, so start from copies (or zeros / -inf).
  at::Tensor C = has_state ? C0->to(at::kFloat).contiguous().clone() : at::zeros({B, H, DV, DQK}, f32);
  at::Tensor n = has_state ? n0->to(at::kFloat).contiguous().clone() : at::zeros({B, H, DQK}, f32);
  at::Tensor m = has_state ? m0->to(at::kFloat).contiguous().clone() : at::full({B, H}, kNegInf, f32);
  TORCH_CHECK(C.sizes() == at::IntArrayRef({B, H, DV, DQK}) && n.sizes() == at::IntArrayRef({B, H, DQK}) &&
                  m.sizes() == at::IntArrayRef({B, H}),
              "mlstm CPU kernel: state shapes must be C (B, H, DV, DQK), n (B, H, DQK), m (B, H)");
  at::Tensor out = at::empty({B, H, T, DV}, f32);
  const Problem p{H, T, DQK, DV, std::min(chunk, std::max<int64_t>(T, 1)), static_cast<float>(eps),
                  has_state, need_state};
  const float* igp = igate.data_ptr<float>();
  const float* fgp = fgate.data_ptr<float>();
  float* mp = m.data_ptr<float>();

  if (T > 0) {
    // per head: the chunk products (T x chunk x (DQK + DV)) and the state's (T x DQK x DV), two FLOPs each
    const double flops_per_head = 2.0 * T * (p.chunk * (DQK + DV) + 2.0 * DQK * DV);
    at::parallel_for(0, B * H, hearscan::grain_for(flops_per_head), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / H, h = task % H;
        // float32 copies of this head's inputs (a view when they already are float32)
        const at::Tensor qh = q[b][h].to(at::kFloat), kh = k[b][h].to(at::kFloat), vh = v[b][h].to(at::kFloat);
        at::Tensor oh = out[b][h], Ch = C[b][h], nh = n[b][h];
        mlstm_head(p, qh, kh, vh, igp + task * T, fgp + task * T, oh, Ch, nh, mp[task]);
      }
    });
  }
  return {out.to(q.scalar_type()), C, n, m};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hearscan mLSTM CPU forward kernel (chunkwise)";
  m.def("forward", &forward, "mLSTM forward: (h, C, n, m)");
}
