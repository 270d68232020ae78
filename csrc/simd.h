// SIMD helpers shared by the CPU scan kernels (csrc/*_cpu.cpp).
//
// Every kernel is its own extension (its own translation unit), so everything here is inline.
// csrc/_build.py hashes csrc/*.h into every kernel's cache key: editing this file rebuilds them all.
//
// - vec16 / ivec16: 16 floats / int32s as GCC/Clang vector extensions; with -march=native they become
//   one AVX-512 register (or a pair of AVX2 ones), and the code reads like scalar arithmetic.
// - load16 / store16 / splat16: unaligned loads and stores (memcpy, which compiles to one vmovups).
// - to_float / from_float: a row of float32 or bfloat16 values to float32 and back.
// - Two exps, on purpose with different trade-offs (each kernel's accuracy tests rely on its own):
//     exp16(x)            16 lanes, Cephes polynomial (~1 ulp): the WKV decays exp(-exp(w)).
//     exp_fast(x)         one float, branch-free so loops calling it vectorise (relative error < 1e-7);
//                         x is clamped, so -inf gives ~1e-38, not 0 (the selective scan's softplus/silu).
//     exp_fast_or_zero(x) exp_fast, but exactly 0 for x = -inf (the mLSTM causal mask relies on it).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace hearscan {

typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t ivec16 __attribute__((vector_size(64)));

inline vec16 splat16(float v) { return vec16{} + v; }

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

// exp(x) for 16 floats: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then the Cephes
// degree-7 polynomial for e^r (about 1 ulp), scaled by 2^n built from the exponent bits.  x is clamped
// to [-87.34, 88.38].
inline vec16 exp16(vec16 x) {
  const vec16 hi = vec16{} + 88.3762626647949f, lo = vec16{} - 87.3365447504019f;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  // round(x / ln2) with the 1.5 * 2^23 trick (exact for |x / ln2| < 2^22)
  vec16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vec16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vec16 p = vec16{} + 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  ivec16 e = (__builtin_convertvector(n, ivec16) + 127) << 23;
  vec16 scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return p * scale;
}

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
