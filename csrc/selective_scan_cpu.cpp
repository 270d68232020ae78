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
// segments of TS steps: a prologue computes dt and dt*u of the segment along time and transposes them
// into (TS, CB) tiles, the scan runs over the tiles, an epilogue transposes y back, adds D*u, applies the
// z gate and writes the (B, D, L) output; the prologue also prefetches the next segment's rows.  All of
// it is vec16 code (AVX-512: one instruction per 16 lanes, AVX2: two): 16 channels per step in the scan,
// 16 steps of one channel around it.
//
// The Python binding passes B and C already transposed to (B, L, N) float32, A, D and delta_bias as
// float32, and u, delta, z contiguous in one dtype (float32 or bfloat16).  State is float32.  `reverse`
// scans from the last token to the first (AuM's backward direction without flipped copies): u, delta, z
// and the output are read and written backwards, B and C come from the binding already in step order.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "simd.h"  // vec16, load16/store16, exp2_vec/exp_vec, prefetch_l2 (and <immintrin.h> with AVX-512)

namespace {

using namespace hearscan;

constexpr int64_t CB = 16;  // channels per task (vector width)
constexpr int64_t TS = 64;  // time steps per tile segment: tiles stay in L1

// The scan step works on CB = 16 channels at once in GCC/Clang vector types (vec16 from csrc/simd.h):
// one AVX-512 register (two AVX2 ones), so the code generation does not depend on the auto-vectoriser's
// mood.
static_assert(CB == 16, "one task is one vec16 of channels");

// The prologue's softplus and the epilogue's silu work on 16 time steps of one channel.  Each needs one
// division; vdivps on 16 lanes is a slow instruction (up to 16 cycles), and as scalar-loop code the two
// took a third of the kernel.  With AVX-512 a / b is a * rcp14(b) refined by one Newton step (within 2 ulp).
inline vec16 div16(vec16 a, vec16 b) {
#if defined(__AVX512F__)
  const __m512 r0 = _mm512_rcp14_ps(reinterpret_cast<const __m512&>(b));
  const vec16 r = reinterpret_cast<const vec16&>(r0);
  return a * (r * (2.0f - b * r));
#else
  return a / b;
#endif
}

// log(1 + y) for y in [0, 1] as 2 atanh(s), s = y / (2 + y) <= 1/3: the odd series to s^15 is
// accurate to float precision and keeps full relative precision for tiny y.
inline vec16 log1p_unit16(vec16 y) {
  const vec16 s = div16(y, 2.0f + y);
  const vec16 s2 = s * s;
  vec16 p = splat16(1.0f / 15.0f);
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}

// torch.nn.functional.softplus (beta 1, threshold 20), in the overflow-free form max(x,0)+log1p(e^-|x|);
// NaN stays NaN.
inline vec16 softplus16(vec16 x) {
  const vec16 abs_x = x < 0.0f ? -x : x;
  const vec16 sp = (x > 0.0f ? x : splat16(0.0f)) + log1p_unit16(exp_vec(-abs_x));
  return x > 20.0f ? x : sp;
}

// x sigmoid(x); e^-x is capped at e^80 so that 1 + e^-x stays finite (x < -80 gives ~x e^-80, not 0).
inline vec16 silu16(vec16 x) {
  const vec16 neg = -x;
  return div16(x, 1.0f + exp_vec(neg < 80.0f ? neg : splat16(80.0f)));
}

// n <= 16 consecutive values of one channel as float32 lanes (zero-padded), and back.  Through a float
// buffer and whole-vector loads and stores: setting lanes one by one goes through the stack and stalls.
template <typename scalar_t>
inline vec16 load_run(const scalar_t* src, int64_t n) {
  if (std::is_same<scalar_t, float>::value && n == 16) return load16(reinterpret_cast<const float*>(src));
  alignas(64) float buf[16] = {};
  to_float(src, buf, static_cast<int>(n));
  return load16(buf);
}

template <typename scalar_t>
inline void store_run(scalar_t* dst, vec16 x, int64_t n) {
  if (std::is_same<scalar_t, float>::value && n == 16) return store16(reinterpret_cast<float*>(dst), x);
  alignas(64) float buf[16];
  store16(buf, x);
  from_float(buf, dst, static_cast<int>(n));
}

// Steps s .. s + n - 1 (n <= 16) of one channel's row x of L tokens as lanes 0 .. n - 1, and back: tokens
// s .. s + n - 1, or for a reverse scan tokens L - 1 - s down to L - s - n.
template <typename scalar_t>
inline vec16 load_steps(const scalar_t* x, int64_t L, int64_t s, int64_t n, bool reverse) {
  if (!reverse) return load_run(x + s, n);
  const scalar_t* src = x + (L - s - n);  // the lowest of the n tokens
  if (n == 16) return reverse16(load_run(src, 16));
  alignas(64) float buf[16] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(src[n - 1 - i]);
  return load16(buf);
}

template <typename scalar_t>
inline void store_steps(scalar_t* x, int64_t L, int64_t s, vec16 v, int64_t n, bool reverse) {
  if (!reverse) return store_run(x + s, v, n);
  scalar_t* dst = x + (L - s - n);
  if (n == 16) return store_run(dst, reverse16(v), 16);
  alignas(64) float buf[16];
  store16(buf, v);
  for (int64_t i = 0; i < n; ++i) dst[n - 1 - i] = static_cast<scalar_t>(buf[i]);
}

// Elements [t0, t0 + n) of the row starting at x[row] of a (B, D, L) tensor into L2, a cache line at a
// time (nothing for n <= 0).
template <typename scalar_t>
inline void prefetch_run(const scalar_t* x, int64_t row, int64_t t0, int64_t n) {
  if (!x || n <= 0) return;
  const uintptr_t first = reinterpret_cast<uintptr_t>(x + row + t0) & ~uintptr_t(63);  // its cache line
  const uintptr_t last = reinterpret_cast<uintptr_t>(x + row + t0 + n - 1);
  for (uintptr_t q = first; q <= last; q += 64) prefetch_l2(reinterpret_cast<const void*>(q));
}

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
  bool reverse;             // step s is token L - 1 - s (Bt and Ct come already in step order)
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
  alignas(64) float scratch_dt[CB][TS] = {}, scratch_du[CB][TS] = {};  // (channel, time)
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
  // The next block of channels, (b, c0 + CB) or (b + 1, 0), usually this thread's next task: its first
  // segment is prefetched during this block's last one.  next_cb = 0 after the very last block.
  const bool next_same_b = c0 + CB < p.dim;
  const int64_t next_c0 = next_same_b ? c0 + CB : 0, next_b = next_same_b ? b : b + 1;
  const int64_t next_cb = next_b < p.batch ? std::min(CB, p.dim - next_c0) : 0;
  const int64_t next_row0 = (next_b * p.dim + next_c0) * L;

  for (int64_t t0 = 0; t0 < L; t0 += TS) {
    const int64_t ts = std::min(TS, L - t0);
    // Prologue: dt = softplus(delta + bias) and dt * u of the segment, 16 steps of one channel at a time
    // in (channel, time) scratch, then transposed to the (time, channel) tiles the scan reads.  Padding
    // lanes stay 0.
    const bool last_segment = t0 + ts >= L;
    for (int64_t c = 0; c < cb; ++c) {
      const scalar_t* dl = delta + row0 + c * L;  // this channel's rows
      const scalar_t* ul = u + row0 + c * L;
      // This channel's rows of the next segment (after the last one: of the next block's first segment)
      // into L2 while this one is scanned.  Each task reads 16 channels x 3 tensors in runs of TS steps,
      // too many short streams for the hardware prefetcher: without this, stalls on the loads of delta, u
      // and z took a fifth of the kernel's time (perf annotate, AuM-small shape).  The output rows come
      // too, for the epilogue's stores.
      const int64_t pf_row = last_segment ? next_row0 + c * L : row0 + c * L;
      const int64_t pf_t = last_segment ? 0 : t0 + ts;
      const int64_t pf_n = (last_segment && c >= next_cb) ? 0 : std::min(TS, L - pf_t);
      for (const scalar_t* x : {delta, u, z, static_cast<const scalar_t*>(out)})
        prefetch_run(x, pf_row, p.reverse ? L - pf_t - pf_n : pf_t, pf_n);
      for (int64_t t = 0; t < ts; t += 16) {
        const int64_t n = std::min<int64_t>(16, ts - t);
        vec16 d = load_steps(dl, L, t0 + t, n, p.reverse) + bias[c];
        if (p.softplus) d = softplus16(d);
        store16(scratch_dt[c] + t, d);
        store16(scratch_du[c] + t, d * load_steps(ul, L, t0 + t, n, p.reverse));
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
    // Epilogue: y back to (channel, time), then skip connection, z gate and (B, D, L) output in the input
    // dtype, 16 steps of one channel at a time.
    float (*yc)[TS] = scratch_dt;  // dt's (channel, time) scratch is free again
    for (int64_t t = 0; t < ts; ++t)
      for (int64_t c = 0; c < CB; ++c) yc[c][t] = y[t][c];
    for (int64_t c = 0; c < cb; ++c) {
      const scalar_t* ul = u + row0 + c * L;
      const scalar_t* zl = z ? z + row0 + c * L : nullptr;
      scalar_t* ol = out + row0 + c * L;
      for (int64_t t = 0; t < ts; t += 16) {
        const int64_t n = std::min<int64_t>(16, ts - t);
        vec16 o = load16(yc[c] + t) + dskip[c] * load_steps(ul, L, t0 + t, n, p.reverse);
        if (zl) o *= silu16(load_steps(zl, L, t0 + t, n, p.reverse));
        store_steps(ol, L, t0 + t, o, n, p.reverse);
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
                                   bool delta_softplus, c10::optional<torch::Tensor> state, bool reverse) {
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
            last_state.data_ptr<float>(), reverse};
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
    // a block: CB channels x dstate states x length steps, ~12 operations each (the exp, the update, C h)
    const double flops_per_block = 12.0 * CB * dstate * length;
    at::parallel_for(0, batch * blocks, grain_for(flops_per_block), [&](int64_t begin, int64_t end) {
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
