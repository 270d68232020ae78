// Selective scan (Mamba-1 SSM) forward on the CPU.
//
// Semantics: csrc/selective_scan.py (the reference).  Per batch b, channel d, state n:
//     dt = softplus(delta + delta_bias)            (if delta_softplus; torch's threshold-20 softplus)
//     h  = exp(dt * A[d, n]) * h + dt * B[b, n, t] * u
//     y  = sum_n C[b, n, t] * h  +  D[d] * u;      y *= silu(z)   (if z)
//
// Layout of the work: one task = one batch row x a block of CB = 16 channels (one AVX-512 vector of
// fp32).  Vectorising over channels, not over d_state, keeps the y reduction lane-wise (no horizontal
// sum per step) and gives d_state independent dependency chains per step.  Time is processed in
// segments of TS steps: a prologue transposes dt and dt*u of the segment into (TS, CB) tiles, the scan
// runs over the tiles, an epilogue adds D*u, applies the z gate and writes the (B, D, L) output.
// All loops over the CB lanes are plain `omp simd` loops with branch-free math so that -O3
// -march=native vectorises them (AVX-512: one instruction per 16 lanes, AVX2: two).
//
// The Python binding passes B and C already transposed to (B, L, N) float32, A, D and delta_bias as
// float32, and u, delta, z contiguous in one dtype (float32 or bfloat16).  State is float32.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"  // vec16, splat16/load16, exp_fast

namespace {

using namespace hearscan;

constexpr int64_t CB = 16;  // channels per task (vector width)
constexpr int64_t TS = 64;  // time steps per tile segment: tiles stay in L1

// The scan step works on CB = 16 channels at once in GCC/Clang vector types (vec16 from csrc/simd.h):
// one AVX-512 register (two AVX2 ones), so the code generation does not depend on the auto-vectoriser's
// mood.  The scalar exp_fast (csrc/simd.h, clamped: -inf gives ~1e-38) serves softplus and silu.
static_assert(CB == 16, "one task is one vec16 of channels");

// 2^x on CB lanes, for the decays exp(dt A) = 2^(dt A log2 e) as in mamba's CUDA kernel: x = n + f with
// n = round(x), |f| <= 1/2, 2^f by a degree-5 polynomial fitted for least maximum relative error (9e-8;
// 1.9e-7 evaluated in float32), scaled by 2^n.  This is the hot spot of the scan (one call per channel,
// state and step), so with AVX-512 the rounding and the scaling are single instructions (vrndscaleps,
// vscalefps): 9 operations in all.  x is clamped below at -126, so results under ~1e-38 come out as
// ~1e-38 rather than as denormals; above, 2^x overflows to inf like exp itself.
inline vec16 exp2_poly(vec16 f) {
  vec16 p = splat16(1.32647271e-3f);
  p = p * f + 9.67151286e-3f;
  p = p * f + 5.55073375e-2f;
  p = p * f + 2.40222421e-1f;
  p = p * f + 6.93146978e-1f;
  return p * f + 1.0f;
}

#if defined(__AVX512F__)
inline vec16 exp2_vec(vec16 x) {
  // vmaxps returns its second operand when either is NaN: x goes second so that NaN propagates
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-126.0f), reinterpret_cast<const __m512&>(x));
  const __m512 n = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vec16 p = exp2_poly(reinterpret_cast<const vec16&>(v) - reinterpret_cast<const vec16&>(n));
  const __m512 r = _mm512_scalef_ps(reinterpret_cast<const __m512&>(p), n);
  return reinterpret_cast<const vec16&>(r);
}
#else
// Without AVX-512: round with the 1.5 * 2^23 trick and apply 2^n by adding n to the exponent bits of p
// (x also clamped above at 127 to keep that addition valid).
inline vec16 exp2_vec(vec16 x) {
  x = x < splat16(-126.0f) ? splat16(-126.0f) : x;
  x = x > splat16(127.0f) ? splat16(127.0f) : x;
  const vec16 shifted = x + 12582912.0f;   // 1.5 * 2^23: n = round(x) sits in the low mantissa bits
  const vec16 p = exp2_poly(x - (shifted - 12582912.0f));
  const ivec16 n_bits = reinterpret_cast<const ivec16&>(shifted) << 23;  // n << 23 (mod 2^32)
  const ivec16 r = reinterpret_cast<const ivec16&>(p) + n_bits;
  return reinterpret_cast<const vec16&>(r);
}
#endif

// log(1 + y) for y in [0, 1] as 2 atanh(s), s = y / (2 + y) <= 1/3: the odd series to s^15 is
// accurate to float precision and keeps full relative precision for tiny y.
inline float log1p_unit(float y) {
  const float s = y / (2.0f + y);
  const float s2 = s * s;
  float p = 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

// torch.nn.functional.softplus (beta 1, threshold 20), in the overflow-free form max(x,0)+log1p(e^-|x|).
inline float softplus(float x) {
  const float sp = std::max(x, 0.0f) + log1p_unit(exp_fast(-std::fabs(x)));
  return x > 20.0f ? x : sp;
}

inline float silu(float x) { return x / (1.0f + exp_fast(-x)); }

struct Problem {
  int64_t batch, dim, length, dstate;
  bool softplus;
  const float* A;           // (D, N)
  const float* Bt;          // (B, L, N)
  const float* Ct;          // (B, L, N)
  const float* Dskip;       // (D,) or null
  const float* delta_bias;  // (D,) or null
  const float* state;       // (B, D, N) or null
  float* last_state;        // (B, D, N)
};

// The recurrence over one segment of ts steps: sequential in time, CB channels per vector, one dependency
// chain per state n.  NS = d_state when known at compile time (then h lives in registers), 0 otherwise.
template <int NS>
inline void scan_steps(int64_t ts, int64_t N, const float (*dt)[CB], const float (*du)[CB], const float* Bs,
                       const float* Cs, const vec16* A, vec16* h_mem, float (*y)[CB]) {
  const int64_t n_state = NS ? NS : N;
  vec16 h_reg[NS ? NS : 1];
  vec16* h = NS ? h_reg : h_mem;
  if (NS)
    for (int64_t n = 0; n < n_state; ++n) h[n] = h_mem[n];
  for (int64_t t = 0; t < ts; ++t) {
    const vec16 dtv = load16(dt[t]), duv = load16(du[t]);
    vec16 acc = splat16(0.0f);
#pragma GCC unroll 16
    for (int64_t n = 0; n < n_state; ++n) {
      h[n] = exp2_vec(dtv * A[n]) * h[n] + duv * Bs[t * N + n];
      acc += h[n] * Cs[t * N + n];
    }
    store16(y[t], acc);
  }
  if (NS)
    for (int64_t n = 0; n < n_state; ++n) h_mem[n] = h[n];
}

// One task: batch row b, channels [c0, c0 + cb), cb <= CB.  Lanes >= cb are padding: dt = du = 0
// and A = 0 keep their state at zero, and they are never written out.
template <typename scalar_t>
void scan_block(const Problem& p, const scalar_t* u, const scalar_t* delta, const scalar_t* z,
                scalar_t* out, int64_t b, int64_t c0, int64_t cb) {
  const int64_t L = p.length, N = p.dstate;
  std::vector<vec16> A(N, splat16(0.0f)), h(N, splat16(0.0f));  // A log2(e) and state; lane c = channel c0 + c
  alignas(64) float dt[TS][CB], du[TS][CB];  // (time, channel) tiles of the segment
  alignas(64) float y[TS][CB];               // (time, channel): one vector store per step
  alignas(64) float scratch_dt[CB][TS] = {}, scratch_du[CB][TS] = {};
  float bias[CB], dskip[CB];
  for (int64_t c = 0; c < CB; ++c) {
    bias[c] = (c < cb && p.delta_bias) ? p.delta_bias[c0 + c] : 0.0f;
    dskip[c] = (c < cb && p.Dskip) ? p.Dskip[c0 + c] : 0.0f;
  }
  for (int64_t c = 0; c < cb; ++c) {
    for (int64_t n = 0; n < N; ++n) {
      A[n][c] = p.A[(c0 + c) * N + n] * 1.44269504089f;  // e^(dt A) = 2^(dt A log2 e)
      if (p.state) h[n][c] = p.state[(b * p.dim + c0 + c) * N + n];
    }
  }
  const int64_t row0 = (b * p.dim + c0) * L;  // offset of (b, c0, 0) in the (B, D, L) tensors

  for (int64_t t0 = 0; t0 < L; t0 += TS) {
    const int64_t ts = std::min(TS, L - t0);
    // Prologue: dt and dt*u of the segment, computed along time (vectorised) in (channel, time)
    // scratch, then transposed to the (time, channel) tiles the scan reads.  Padding lanes stay 0.
    for (int64_t c = 0; c < cb; ++c) {
      const scalar_t* dl = delta + row0 + c * L + t0;
      const scalar_t* ul = u + row0 + c * L + t0;
      float* dtc = scratch_dt[c];
      float* duc = scratch_du[c];
#pragma omp simd
      for (int64_t t = 0; t < ts; ++t) {
        float d = static_cast<float>(dl[t]) + bias[c];
        if (p.softplus) d = softplus(d);
        dtc[t] = d;
        duc[t] = d * static_cast<float>(ul[t]);
      }
    }
    for (int64_t t = 0; t < ts; ++t)
      for (int64_t c = 0; c < CB; ++c) {
        dt[t][c] = scratch_dt[c][t];
        du[t][c] = scratch_du[c][t];
      }
    // The recurrence: sequential in time, CB channels per vector, one dependency chain per state n.
    const float* Bs = p.Bt + (b * L + t0) * N;
    const float* Cs = p.Ct + (b * L + t0) * N;
    if (N == 16)  // Mamba's d_state: the state stays in 16 registers across the steps
      scan_steps<16>(ts, N, dt, du, Bs, Cs, A.data(), h.data(), y);
    else
      scan_steps<0>(ts, N, dt, du, Bs, Cs, A.data(), h.data(), y);
    // Epilogue: skip connection, z gate, back to (B, D, L) in the input dtype; vectorised along time.
    for (int64_t c = 0; c < cb; ++c) {
      const scalar_t* ul = u + row0 + c * L + t0;
      const scalar_t* zl = z ? z + row0 + c * L + t0 : nullptr;
      scalar_t* ol = out + row0 + c * L + t0;
      if (zl) {
#pragma omp simd
        for (int64_t t = 0; t < ts; ++t)
          ol[t] = static_cast<scalar_t>((y[t][c] + dskip[c] * static_cast<float>(ul[t])) *
                                        silu(static_cast<float>(zl[t])));
      } else {
#pragma omp simd
        for (int64_t t = 0; t < ts; ++t)
          ol[t] = static_cast<scalar_t>(y[t][c] + dskip[c] * static_cast<float>(ul[t]));
      }
    }
  }
  for (int64_t c = 0; c < cb; ++c)
    for (int64_t n = 0; n < N; ++n) p.last_state[(b * p.dim + c0 + c) * N + n] = h[n][c];
}

const float* data_or_null(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// Shapes and dtypes are validated by the Python binding (csrc/selective_scan.py); the checks here only
// guard memory safety.
std::vector<torch::Tensor> forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                   torch::Tensor Ct, c10::optional<torch::Tensor> Dskip,
                                   c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> delta_bias,
                                   bool delta_softplus, c10::optional<torch::Tensor> state) {
  TORCH_CHECK(u.device().is_cpu(), "selective_scan CPU kernel: tensors must be on the CPU");
  TORCH_CHECK(u.dim() == 3 && u.is_contiguous() && delta.sizes() == u.sizes() && delta.is_contiguous() &&
                  delta.scalar_type() == u.scalar_type(),
              "selective_scan CPU kernel: u and delta must be contiguous (B, D, L) of one dtype");
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2), dstate = A.size(1);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.is_contiguous() && A.scalar_type() == at::kFloat,
              "selective_scan CPU kernel: A must be contiguous float32 (D, N)");
  for (const auto& t : {Bt, Ct})
    TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && t.size(1) == length && t.size(2) == dstate &&
                    t.is_contiguous() && t.scalar_type() == at::kFloat,
                "selective_scan CPU kernel: B and C must be contiguous float32 (B, L, N)");
  for (const auto* t : {&Dskip, &delta_bias})
    if (t->has_value())
      TORCH_CHECK((*t)->numel() == dim && (*t)->is_contiguous() && (*t)->scalar_type() == at::kFloat,
                  "selective_scan CPU kernel: D and delta_bias must be contiguous float32 (D,)");
  if (z.has_value())
    TORCH_CHECK(z->sizes() == u.sizes() && z->is_contiguous() && z->scalar_type() == u.scalar_type(),
                "selective_scan CPU kernel: z must be contiguous like u");
  if (state.has_value())
    TORCH_CHECK(state->dim() == 3 && state->size(0) == batch && state->size(1) == dim &&
                    state->size(2) == dstate && state->is_contiguous() && state->scalar_type() == at::kFloat,
                "selective_scan CPU kernel: state must be contiguous float32 (B, D, N)");

  auto out = torch::empty_like(u);
  auto last_state = torch::empty({batch, dim, dstate}, u.options().dtype(at::kFloat));
  Problem p{batch, dim, length, dstate, delta_softplus, A.data_ptr<float>(), Bt.data_ptr<float>(),
            Ct.data_ptr<float>(), data_or_null(Dskip), data_or_null(delta_bias), data_or_null(state),
            last_state.data_ptr<float>()};
  const int64_t blocks = (dim + CB - 1) / CB;

  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kBFloat16,
              "selective_scan CPU kernel: u must be float32 or bfloat16");
  auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t* dp = delta.data_ptr<scalar_t>();
    const scalar_t* zp = z.has_value() ? z->data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    if (length == 0) {
      // No steps: the state passes through unchanged.
      if (state.has_value()) last_state.copy_(*state); else last_state.zero_();
      return;
    }
    at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, c0 = (task % blocks) * CB;
        scan_block<scalar_t>(p, up, dp, zp, op, b, c0, std::min(CB, dim - c0));
      }
    });
  };
  if (u.scalar_type() == at::kFloat) run(float{}); else run(at::BFloat16{});
  return {out, last_state};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "hearscan selective scan (Mamba-1) CPU forward kernel";
  m.def("forward", &forward, "selective scan forward: (out, last_state)");
}
