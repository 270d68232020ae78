// SIMD helpers shared by the CPU scan kernels (csrc/*_cpu.cpp).
//
// Every kernel is its own extension (its own translation unit), so everything here is inline.
// csrc/_build.py hashes csrc/*.h into every kernel's cache key: editing this file rebuilds them all.
//
// - vec16 / ivec16: 16 floats / int32s as GCC/Clang vector extensions; with -march=native they become
//   one AVX-512 register (or a pair of AVX2 ones), and the code reads like scalar arithmetic.
// - load16 / store16 / splat16: unaligned loads and stores (memcpy, which compiles to one vmovups).
// - reverse16: the lanes in reverse order (the selective scan's reverse scan).
// - recip16 / any_below16: 1 / x, and whether a lane is below a bound (WKV-7's state scale).
// - to_float / from_float: a row of float32 or bfloat16 values to float32 and back.
// - prefetch_l2: one cache line into L2 (the WKV kernels' next token block, the selective scan's next
//   segment).
// - Two exps, on purpose with different trade-offs (each kernel's accuracy tests rely on its own):
//     exp2_vec(x)         16 lanes, 2^x, degree-5 minimax (< 2e-7 relative): the selective scan's decays,
//                         softplus and silu, and the inner exp of wkv_decay16(w) = exp(-exp(w)), the WKV
//                         decays, whose outer exp is exp2_nearest16 (about an ulp near 2^0 = 1).
//     exp_fast(x)         one float, branch-free so loops calling it vectorise (relative error < 1e-7);
//                         x is clamped, so -inf gives ~1e-38, not 0.
//     exp_fast_or_zero(x) exp_fast, but exactly 0 for x = -inf (the mLSTM causal mask relies on it).
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace hearscan {

// Threads pay only for enough work: a task (a run of at::parallel_for) of fewer floating-point operations
// than this runs on the calling thread.  Waking a pooled thread costs tens of microseconds on an idle
// machine, but on a shared one a descheduled worker makes the call wait for a scheduler tick (4 ms): with
// a grain of 1, two threads beside another 2-thread job took 3.8-5.3x the 1-thread time of a WKV-6 call.
// Measured on a 2-core AVX2 VM, Con-RWKV's per-layer WKV-6 of a 1-s clip (B=1 T=25 H=3, 1.8 MFLOP) on 2
// threads beside a busy process per core: 0.36-8.0 ms with a grain of 1 (one run in three waited a 4 ms
// tick), 0.62 ms every time with this one (the 1-thread time).  2^24 FLOP is about 5 ms of kernel work on
// that VM and 0.3 ms on an AVX-512 core: the models' scans of short clips run on one thread, long or wide
// ones still spread; `hearscan bench kernels --contended` times every op that way (docs/benchmarks.md).
constexpr double kMinFlopsPerTask = 16777216.0;

// The grain for at::parallel_for over tasks of `flops_per_task` each: enough tasks per thread to reach
// kMinFlopsPerTask (a range at most one grain long runs inline, with no thread woken).
inline int64_t grain_for(double flops_per_task) {
  const double tasks = kMinFlopsPerTask / (flops_per_task > 1.0 ? flops_per_task : 1.0);
  return tasks >= 1.0 ? static_cast<int64_t>(tasks) + 1 : 1;
}

typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t ivec16 __attribute__((vector_size(64)));

inline vec16 splat16(float v) { return vec16{} + v; }

// The 16 lanes in reverse order (one permute with AVX-512).
inline vec16 reverse16(vec16 x) {
#if defined(__clang__)
  return __builtin_shufflevector(x, x, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
#else
  return __builtin_shuffle(x, ivec16{15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0});
#endif
}

inline vec16 load16(const float* p) {
  vec16 x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

inline void store16(float* p, vec16 x) { std::memcpy(p, &x, sizeof(x)); }

template <typename scalar_t>
inline void to_float(const scalar_t* src, float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename scalar_t>
inline void from_float(const float* src, scalar_t* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// 2^x on 16 lanes, for the decays (the selective scan's exp(dt A) = 2^(dt A log2 e) as in mamba's CUDA
// kernel, and wkv_decay16): x = n + f with n = round(x), |f| <= 1/2, 2^f by a degree-5 polynomial fitted
// for least maximum relative error (9e-8; 1.9e-7 evaluated in float32), scaled by 2^n.  It is the hot
// spot of the selective scan (one call per channel, state and step).  x is clamped below at -126, so
// results under ~1e-38 come out as ~1e-38 rather than as denormals; above, 2^x overflows to inf like exp.
inline vec16 exp2_poly(vec16 f) {
  vec16 p = splat16(1.32647271e-3f);
  p = p * f + 9.67151286e-3f;
  p = p * f + 5.55073375e-2f;
  p = p * f + 2.40222421e-1f;
  p = p * f + 6.93146978e-1f;
  return p * f + 1.0f;
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// With AVX-512 the reduction is one instruction: f = x - floor(x) in [0, 1) (vreduceps), and vscalefps
// multiplies by 2^floor(x) itself.  2^f on [0, 1) is the same polynomial moved by 1/2,
// sqrt(2) p(f - 1/2), expanded (1.95e-7 evaluated in float32): 8 operations in all.
inline vec16 exp2_vec(vec16 x) {
  // vmaxps returns its second operand when either is NaN: x goes second so that NaN propagates
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-126.0f), reinterpret_cast<const __m512&>(x));
  const __m512 f = _mm512_reduce_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const vec16 g = reinterpret_cast<const vec16&>(f);
  vec16 p = splat16(1.87591568e-3f);
  p = p * g + 8.98779556e-3f;
  p = p * g + 5.58338501e-2f;
  p = p * g + 2.40148440e-1f;
  p = p * g + 6.93153918e-1f;
  p = p * g + 9.99999881e-1f;
  const __m512 r = _mm512_scalef_ps(reinterpret_cast<const __m512&>(p), v);
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

// One cache line into L2.  On x86 as volatile asm: GCC 12 deleted loops of __builtin_prefetch (and of
// _mm_prefetch) in several of the shapes tried here, silently (tests/test_kernel_build.py checks the builds).
inline void prefetch_l2(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 2);
#endif
}

// 1 / x on 16 lanes: with AVX-512 an approximate reciprocal (2^-14) and one Newton step, within an ulp
// or two of the division and several times cheaper than vdivps (the WKV-7 state scale, once per token).
inline vec16 recip16(vec16 x) {
#if defined(__AVX512F__)
  const __m512 r = _mm512_rcp14_ps(reinterpret_cast<const __m512&>(x));
  const vec16 y = reinterpret_cast<const vec16&>(r);
  return y + y * (1.0f - x * y);
#else
  return 1.0f / x;
#endif
}

// Whether any lane of x is below lo, or NaN (one compare to a mask with AVX-512).
inline bool any_below16(vec16 x, float lo) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(reinterpret_cast<const __m512&>(x), _mm512_set1_ps(lo), _CMP_NGE_UQ) != 0;
#else
  bool any = false;
  for (int l = 0; l < 16; ++l) any |= !(x[l] >= lo);
  return any;
#endif
}

// e^x on 16 lanes as 2^(x log2 e) (the selective scan's softplus and silu, the WKV decays).
inline vec16 exp_vec(vec16 x) { return exp2_vec(x * 1.44269504088896341f); }

// 2^x with the reduction to the nearest integer, x = n + f, |f| <= 1/2 (one operation more than
// exp2_vec with AVX-512, whose f = x - floor(x) is 1 + x for small negative x, which rounds away x's low
// bits): for x near 0, 2^x is then within about an ulp of 1 - |x| ln 2 instead of 3.  Without AVX-512,
// exp2_vec reduces to the nearest integer already.
inline vec16 exp2_nearest16(vec16 x) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  const __m512 v = _mm512_max_ps(_mm512_set1_ps(-126.0f), reinterpret_cast<const __m512&>(x));
  const __m512 n = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(v, n);
  const vec16 p = exp2_poly(reinterpret_cast<const vec16&>(f));
  const __m512 r = _mm512_scalef_ps(reinterpret_cast<const __m512&>(p), n);
  return reinterpret_cast<const vec16&>(r);
#else
  return exp2_vec(x);
#endif
}

// The WKV decay exp(-exp(w)) from the log-log decay w (about 20 operations for 16 lanes).  Relative
// error at most 3.4e-7 for w <= 0.5 (A-RWKV's and RWKV-6's decays have w < 0); decays below ~1e-38 come
// out as ~1e-38.  The outer exp reduces to the nearest integer: decays near 1 (long memory) are then
// within about an ulp, where a floor reduction was 2-3 ulp off, and that error adds up over the ~1 /
// (1 - decay) steps a channel remembers (4e-6 of max|y| against a float64 recurrence in
// tests/test_wkv7.py's mixed-decay case, ten times the float32 reference's).
inline vec16 wkv_decay16(vec16 w) { return exp2_nearest16(exp_vec(w) * -1.44269504088896341f); }

// e^x, branch-free so that loops calling it vectorise; relative error < 1e-7 over the whole range.
// Cody-Waite reduction x = n ln2 + r (ln2 split in two so r stays exact), e^r by its Taylor series to
// degree 7 (truncation < 5e-9 on |r| <= 0.347), then scaled by 2^n through the exponent bits.  x is
// clamped to [-87.3, 88.7]: results below ~1e-38 come out as ~1e-38 instead of underflowing to 0
// (x = -inf included; see exp_fast_or_zero).
inline float exp_fast(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  // Round x log2(e) to the nearest integer by adding 1.5 * 2^23 (std::floor would stay scalar: GCC
  // only vectorises it under -fno-trapping-math).
  const float n = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// exp_fast(x), except that x = -inf gives exactly 0 (still branch-free: a select after the polynomial).
inline float exp_fast_or_zero(float x) {
  const bool neg_inf = x == -std::numeric_limits<float>::infinity();
  const float e = exp_fast(x);
  return neg_inf ? 0.0f : e;
}

}  // namespace hearscan
