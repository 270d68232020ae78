// WKV-7 (RWKV-7 "x070") forward scan on the CPU.  The recurrence and the reference are in csrc/wkv7.py.
//
// Per (batch, head) the state is an N x N float32 matrix S[i][j] (i = value row, j = key column):
//     sa_i = sum_j a_j S_ij;   S_ij = S_ij * decay_j + sa_i * b_j + v_i * k_j;   y_i = sum_j S_ij r_j
//
// Why it is laid out this way:
// - Work is split over groups of adjacent heads of one batch row with at::parallel_for (torch's own
//   thread pool, so torch.set_num_threads applies and no second OpenMP runtime is started); each group
//   works on blocks of 16 tokens of all its heads held in contiguous buffers (kBlock in wkv_common.h),
//   and copies the next block into a second set of buffers a row per step while it computes the current
//   one, with L2 prefetches a few rows ahead, a cache line every second key column (BlockStream).
// - Inside a head the state is kept transposed, St[j][i], so that every operation runs along i with
//   j as a broadcast scalar: sa and y become vector accumulations (no horizontal sums) and each
//   key column j is one contiguous row of N floats = N/16 AVX-512 registers.
// - The state is kept at a per-column scale that absorbs the decays (below), which saves one vector
//   multiply in five in the state update.
// - GCC/Clang vector extensions (vec16 = 16 floats) keep the code readable; with -march=native they
//   become AVX-512 (or pairs of AVX2) instructions, and -ffp-contract=fast fuses the multiply-adds.
// - Common head sizes (16, 32, 64, 128) are compiled with N known at compile time, so the i loop is
//   fully unrolled and sa, y, v stay in registers; other sizes take a plain scalar-loop path.
// - Inputs are float32 or bfloat16 and are converted to float32 when a block's rows are copied in; the
//   output is written in the input dtype.  The decay exp(-exp(w)) is wkv_decay16 (csrc/simd.h), two
//   vector 2^x, because a libm call per element would cost more than the state update itself.

// Narrow includes instead of <torch/extension.h>: the build takes half the time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "simd.h"        // vec16, load16/store16, to_float/from_float, wkv_decay16
#include "wkv_common.h"  // transposed state load/store, head-size dispatch, input checks

namespace {

using namespace hearscan;
using namespace hearscan::wkv;

struct Problem {
  int64_t B, T, H, N;
  const void *r, *w, *k, *v, *a, *b;  // (B, T, H, N), contiguous, all of one dtype
  void* y;                            // (B, T, H, N), same dtype
  const float* state_in;              // (B, H, N, N) or nullptr
  float* state_out;                   // (B, H, N, N) or nullptr
  bool reverse;                       // scan from the last token to the first (step t = token T - 1 - t)
};

// The state is held at a per-column scale (why: four vector FP operations per 16 state elements and step
// instead of five).  S = S' * D column-wise, where D_t = decay_s * ... * decay_t is the product of the
// decays since the last "fold" (step s).  Then the decay multiply drops out of the update:
//     S'_t = S'_{t-1} + sa_t (b_t / D_t) + v_t (k_t / D_t),   y_t = S'_t (r_t * D_t),
//     sa_{t+1} = S'_t (a_{t+1} * D_t)
// and the scaled rows r D, k / D, b / D, a D cost O(N) per step, not O(N^2).  A folding step is the
// plain update, with multiplier D_{t-1} * decay_t, after which D = 1.  The scan's last step folds, so
// the state it returns is unscaled, and so does every step at which a lane of D would fall below
// kMinScale, so that S' = S / D stays within 2^24 of S.  RWKV-7's decays are > 0.54, so that is a fold
// every 28 steps or more; arbitrary w only folds more often, at worst every step.  The rounding is that
// of the plain update: D_t / D_{t-1} is the decay with one rounding, and S' is S rescaled column by
// column, which floating point does not see (error against a float64 recurrence: 1.9e-7 rms, as before).
// Chunks scanned one after another fold at each chunk's end, so they equal one pass to rounding, not to
// the bit.
constexpr float kMinScale = 1.0f / (1 << 24);

// Heads h0 .. h1 - 1 of batch row bi, with N = 16 * NV known at compile time.
//
// One pass over the state per step: it updates S', accumulates y_t and, with the next token's a, already
// sa_{t+1} (a separate sa pass is a chain of dependent FMAs that leaves the FMA units idle).  Four vector
// FP operations per 16 state elements and step (five on folding steps), one load and one store.  Tokens
// come in blocks for the whole head group, the next one copied during each step (BlockStream in
// wkv_common.h).  The step's scaled rows go to a small buffer; scaling the block's rows in place, or all
// of a block's at its start, was no faster.
template <typename scalar_t, int NV>
void wkv7_heads_fixed(const Problem& p, int64_t bi, int64_t h0, int64_t h1) {
  constexpr int N = 16 * NV;
  const int64_t nh = h1 - h0, T = p.T, H = p.H;
  // States of the group: St[h][j * NV + iv] holds S[16 iv .. 16 iv + 15][j] of head h0 + h.
  std::vector<vec16> states(nh * N * NV), sa_all(nh * NV, splat16(0.0f)), scales(nh * NV, splat16(1.0f));
  load_group_states<NV>(p.state_in, H, bi, h0, nh, states.data());

  enum { R, W, K, V, A, Bv };
  const void* const inputs[6] = {p.r, p.w, p.k, p.v, p.a, p.b};
  // 6 N / 16 cache lines per step's rows: a prefetch every second key column
  BlockStream<scalar_t, N, 6, 2> blocks(inputs, T, H, bi, h0, nh, p.reverse);
  std::vector<vec16> ybuf(nh * kBlock * NV);
  float* y = reinterpret_cast<float*>(ybuf.data());

  for (int64_t t0 = 0; t0 < T; t0 += kBlock) {
    const int64_t n = std::min(kBlock, T - t0);
    for (int64_t h = 0; h < nh; ++h) {
      vec16* St = &states[h * N * NV];
      vec16* sa = &sa_all[h * NV];  // S a for the coming step
      vec16* D = &scales[h * NV];  // the state's scale, D_{t-1} at step t
      const int64_t o = h * kBlock * N;
      float *rh = blocks.rows(t0, R) + o, *dh = blocks.rows(t0, W) + o, *kh = blocks.rows(t0, K) + o,
            *vh = blocks.rows(t0, V) + o, *ah = blocks.rows(t0, A) + o, *bh = blocks.rows(t0, Bv) + o,
            *yh = y + o;
      // the a row after this block's last: the next block's first (copied at this block's copy step h,
      // no later than this head's last step), or at the very end the last row again (its sa is unused)
      const float* a_after = t0 + n < T ? blocks.rows(t0 + kBlock, A) + o : ah + (n - 1) * N;
      for (int64_t i = 0; i < n * NV; ++i) store16(dh + 16 * i, wkv_decay16(load16(dh + 16 * i)));
      if (t0 == 0)  // the state is unscaled here, and so is a's first row
        for (int j = 0; j < N; ++j)
          for (int iv = 0; iv < NV; ++iv) sa[iv] += St[j * NV + iv] * ah[j];

      for (int64_t t = 0; t < n; ++t) {
        const auto next = blocks.step(t0, h * n + t);  // copies a row of the next block
        const float *rt = rh + t * N, *kt = kh + t * N, *bt = bh + t * N;
        const float* an = t + 1 < n ? ah + (t + 1) * N : a_after;  // the next step's a
        // the scale: D_t = D_{t-1} * decay_t, unless the step folds (see above)
        vec16 Dn[NV], mult[NV], scaled[4 * NV];  // scaled: r D, k / D, b / D, a_{t+1} D
        bool low = false;
        for (int iv = 0; iv < NV; ++iv) {
          Dn[iv] = D[iv] * load16(dh + t * N + 16 * iv);
          low |= any_below16(Dn[iv], kMinScale);
        }
        const bool fold = low || t0 + t == T - 1;
        if (fold) {
          for (int iv = 0; iv < NV; ++iv) mult[iv] = Dn[iv], D[iv] = splat16(1.0f);
        } else {
          for (int iv = 0; iv < NV; ++iv) {
            const vec16 inv = recip16(Dn[iv]);
            scaled[iv] = load16(rt + 16 * iv) * Dn[iv];
            scaled[NV + iv] = load16(kt + 16 * iv) * inv;
            scaled[2 * NV + iv] = load16(bt + 16 * iv) * inv;
            scaled[3 * NV + iv] = load16(an + 16 * iv) * Dn[iv];
            D[iv] = Dn[iv];
          }
          const float* sc = reinterpret_cast<const float*>(scaled);
          rt = sc, kt = sc + N, bt = sc + 2 * N, an = sc + 3 * N;
        }
        const float* dt = reinterpret_cast<const float*>(mult);
        // sa and the row values in locals: GCC cannot always prove that the state stores leave them
        // alone, and then reloads sa and re-broadcasts each row value for every 16 state rows (20 loads
        // per key column instead of 5: 0.8-0.9x)
        vec16 vv[NV], sa_t[NV], acc[NV] = {}, sa_next[NV] = {};
        for (int iv = 0; iv < NV; ++iv) vv[iv] = load16(vh + t * N + 16 * iv), sa_t[iv] = sa[iv];
        auto update = [&](auto folds) {
          for (int j = 0; j < N; ++j) {
            next.at(j);
            const float bj = bt[j], kj = kt[j], rj = rt[j], aj = an[j];
            for (int iv = 0; iv < NV; ++iv) {
              vec16 s = St[j * NV + iv];
              if constexpr (decltype(folds)::value) s = s * dt[j];
              s = s + sa_t[iv] * bj + vv[iv] * kj;  // (s + sa b) + v k: two fused multiply-adds
              St[j * NV + iv] = s;
              acc[iv] += s * rj;
              sa_next[iv] += s * aj;
            }
          }
        };
        if (fold)
          update(std::true_type{});
        else
          update(std::false_type{});
        for (int iv = 0; iv < NV; ++iv) {
          store16(yh + t * N + 16 * iv, acc[iv]);
          sa[iv] = sa_next[iv];
        }
      }
    }
    scatter_heads<scalar_t>(y, T, H, N, bi, h0, nh, t0, n, kBlock, p.y, p.reverse);
  }

  if (p.state_out) store_group_states<NV>(states.data(), H, bi, h0, nh, p.state_out);
}

// Any head size: the same algorithm with runtime N and plain loops (the compiler vectorises the i loops).
template <typename scalar_t>
void wkv7_head_generic(const Problem& p, int64_t bi, int64_t hi) {
  const int N = static_cast<int>(p.N);
  std::vector<float> St(N * N), buf(8 * N);
  float *r = buf.data(), *decay = r + N, *k = decay + N, *v = k + N, *a = v + N, *b = a + N, *sa = b + N,
        *y = sa + N;
  load_state_generic(p.state_in ? p.state_in + (bi * p.H + hi) * N * N : nullptr, St.data(), N);

  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t off = ((bi * p.T + token(t, p.T, p.reverse)) * p.H + hi) * N;
    to_float(static_cast<const scalar_t*>(p.r) + off, r, N);
    to_float(static_cast<const scalar_t*>(p.w) + off, decay, N);
    to_float(static_cast<const scalar_t*>(p.k) + off, k, N);
    to_float(static_cast<const scalar_t*>(p.v) + off, v, N);
    to_float(static_cast<const scalar_t*>(p.a) + off, a, N);
    to_float(static_cast<const scalar_t*>(p.b) + off, b, N);
    for (int j = 0; j < N; ++j) decay[j] = std::exp(-std::exp(decay[j]));
    for (int i = 0; i < N; ++i) sa[i] = 0.0f, y[i] = 0.0f;
    for (int j = 0; j < N; ++j)
      for (int i = 0; i < N; ++i) sa[i] += St[j * N + i] * a[j];
    for (int j = 0; j < N; ++j) {
      float* row = St.data() + j * N;
      for (int i = 0; i < N; ++i) {
        row[i] = row[i] * decay[j] + sa[i] * b[j] + v[i] * k[j];
        y[i] += row[i] * r[j];
      }
    }
    from_float(y, static_cast<scalar_t*>(p.y) + off, N);
  }

  if (p.state_out) store_state_generic(St.data(), p.state_out + (bi * p.H + hi) * N * N, N);
}

template <typename scalar_t>
void wkv7_run(const Problem& p) {
  run_wkv<Problem>(p, {wkv7_heads_fixed<scalar_t, 1>, wkv7_heads_fixed<scalar_t, 2>,
                       wkv7_heads_fixed<scalar_t, 4>, wkv7_heads_fixed<scalar_t, 8>},
                   wkv7_head_generic<scalar_t>);
}

}  // namespace

// Returns [y] or [y, final_state].  reverse: run the scan from the last token to the first (y stays in
// token order; the state is the one after token 0), as on time-flipped inputs without the flipped copies.
// The Python binding (csrc/wkv7.py) validates shapes with clear messages and makes the inputs
// contiguous; the checks here guard direct callers.
std::vector<at::Tensor> wkv7_forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v,
                                        at::Tensor a, at::Tensor b, c10::optional<at::Tensor> state,
                                        bool return_state, bool reverse) {
  TORCH_CHECK(r.dim() == 4, "wkv7: r must be (B, T, H, N)");
  for (const auto& x : {w, k, v, a, b}) {
    TORCH_CHECK(x.sizes() == r.sizes(), "wkv7: all inputs must have the shape of r");
    TORCH_CHECK(x.scalar_type() == r.scalar_type(), "wkv7: all inputs must have the dtype of r");
  }
  check_inputs("wkv7", r, {r, w, k, v, a, b});
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  const at::Tensor s_in = state_in("wkv7", state, r);
  auto y = at::empty_like(r);
  const at::Tensor s_out = state_out(return_state, r);

  Problem p{B, T, H, N,
            r.data_ptr(), w.data_ptr(), k.data_ptr(), v.data_ptr(), a.data_ptr(), b.data_ptr(),
            y.data_ptr(),
            data_or_null(s_in), data_or_null(s_out), reverse};
  if (r.scalar_type() == at::kFloat)
    wkv7_run<float>(p);
  else
    wkv7_run<c10::BFloat16>(p);

  if (return_state) return {y, s_out};
  return {y};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &wkv7_forward, "WKV-7 forward scan (CPU)", py::arg("r"), py::arg("w"), py::arg("k"),
        py::arg("v"), py::arg("a"), py::arg("b"), py::arg("state") = py::none(),
        py::arg("return_state") = false, py::arg("reverse") = false);
}
