// WKV-6 (RWKV-6 "Finch") forward scan on the CPU.  The recurrence and the reference are in csrc/wkv6.py.
//
// Per (batch, head) the state is an N x N float32 matrix S[i][j] (i = value row, j = key column):
//     y_i = sum_j r_j S_ij + v_i * sum_j r_j u_j k_j;   S_ij = S_ij * decay_j + k_j * v_i
//
// The layout follows csrc/wkv7_cpu.cpp (see the reasons there): threads over groups of heads with
// at::parallel_for, token blocks per head group (each copied a row per step during the block before),
// the state kept transposed (St[j][i]) so every update is a vector operation along i with j broadcast,
// 16-float vector extensions, head sizes 16/32/64/128 specialised, inputs float32 or bfloat16 converted
// when copied in, a vectorisable exp for the decay exp(-exp(w)).

// Narrow includes instead of <torch/extension.h>: the build takes half the time.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"        // vec16, load16/store16, to_float/from_float, wkv_decay16
#include "wkv_common.h"  // transposed state load/store, head-size dispatch, input checks

namespace {

using namespace hearscan;
using namespace hearscan::wkv;

struct Problem {
  int64_t B, T, H, N;
  const void *r, *k, *v, *w;  // (B, T, H, N), contiguous, all of one dtype
  const float* u;             // (H, N) float32
  void* y;                    // (B, T, H, N), same dtype as r
  const float* state_in;      // (B, H, N, N) or nullptr
  float* state_out;           // (B, H, N, N) or nullptr
};

// Heads h0 .. h1 - 1 of batch row bi, with N = 16 * NV known at compile time.  Tokens come in blocks for
// the whole head group, the next one copied during each step (BlockStream in wkv_common.h); one pass over
// the state per step.
template <typename scalar_t, int NV>
void wkv6_heads_fixed(const Problem& p, int64_t bi, int64_t h0, int64_t h1) {
  constexpr int N = 16 * NV;
  const int64_t nh = h1 - h0, T = p.T, H = p.H;
  // States of the group: St[h][j * NV + iv] holds S[16 iv .. 16 iv + 15][j] of head h0 + h.
  std::vector<vec16> states(nh * N * NV);
  load_group_states<NV>(p.state_in, H, bi, h0, nh, states.data());

  enum { R, K, V, W };
  const void* const inputs[4] = {p.r, p.k, p.v, p.w};
  // 4 N / 16 cache lines per step's rows: a prefetch every fourth key column
  BlockStream<scalar_t, N, 4, 4> blocks(inputs, T, H, bi, h0, nh, false);
  std::vector<vec16> ybuf(nh * kBlock * NV);
  float* y = reinterpret_cast<float*>(ybuf.data());

  for (int64_t t0 = 0; t0 < T; t0 += kBlock) {
    const int64_t n = std::min(kBlock, T - t0);
    for (int64_t h = 0; h < nh; ++h) {
      vec16* St = &states[h * N * NV];
      const float* u = p.u + (h0 + h) * N;
      const int64_t o = h * kBlock * N;
      const float *rh = blocks.rows(t0, R) + o, *kh = blocks.rows(t0, K) + o, *vh = blocks.rows(t0, V) + o;
      float *dh = blocks.rows(t0, W) + o, *yh = y + o;
      for (int64_t i = 0; i < n * NV; ++i) store16(dh + 16 * i, wkv_decay16(load16(dh + 16 * i)));

      for (int64_t t = 0; t < n; ++t) {
        const auto next = blocks.step(t0, h * n + t);  // copies a row of the next block
        const float *rt = rh + t * N, *kt = kh + t * N, *dt = dh + t * N;
        // the bonus term: v_i * sum_j r_j u_j k_j
        vec16 ruk16 = {};
        for (int iv = 0; iv < NV; ++iv) ruk16 += load16(rt + 16 * iv) * load16(u + 16 * iv) * load16(kt + 16 * iv);
        float ruk = 0.0f;
        for (int l = 0; l < 16; ++l) ruk += ruk16[l];

        vec16 vv[NV], acc[NV];
        for (int iv = 0; iv < NV; ++iv) {
          vv[iv] = load16(vh + t * N + 16 * iv);
          acc[iv] = vv[iv] * ruk;
        }
        for (int j = 0; j < N; ++j) {
          next.at(j);
          // in locals: else GCC may re-broadcast them after every state store (see wkv7_cpu.cpp)
          const float rj = rt[j], dj = dt[j], kj = kt[j];
          for (int iv = 0; iv < NV; ++iv) {
            const vec16 s = St[j * NV + iv];
            acc[iv] += s * rj;  // y uses the state before this step's update
            St[j * NV + iv] = s * dj + vv[iv] * kj;
          }
        }
        for (int iv = 0; iv < NV; ++iv) store16(yh + t * N + 16 * iv, acc[iv]);
      }
    }
    scatter_heads<scalar_t>(y, T, H, N, bi, h0, nh, t0, n, kBlock, p.y, false);
  }

  if (p.state_out) store_group_states<NV>(states.data(), H, bi, h0, nh, p.state_out);
}

// Any head size: the same algorithm with runtime N and plain loops.
template <typename scalar_t>
void wkv6_head_generic(const Problem& p, int64_t bi, int64_t hi) {
  const int N = static_cast<int>(p.N);
  std::vector<float> St(N * N), buf(5 * N);
  float *r = buf.data(), *k = r + N, *v = k + N, *decay = v + N, *y = decay + N;
  const float* u = p.u + hi * N;
  load_state_generic(p.state_in ? p.state_in + (bi * p.H + hi) * N * N : nullptr, St.data(), N);

  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t off = ((bi * p.T + t) * p.H + hi) * N;
    to_float(static_cast<const scalar_t*>(p.r) + off, r, N);
    to_float(static_cast<const scalar_t*>(p.k) + off, k, N);
    to_float(static_cast<const scalar_t*>(p.v) + off, v, N);
    to_float(static_cast<const scalar_t*>(p.w) + off, decay, N);
    float ruk = 0.0f;
    for (int j = 0; j < N; ++j) {
      decay[j] = std::exp(-std::exp(decay[j]));
      ruk += r[j] * u[j] * k[j];
    }
    for (int i = 0; i < N; ++i) y[i] = v[i] * ruk;
    for (int j = 0; j < N; ++j) {
      float* row = St.data() + j * N;
      for (int i = 0; i < N; ++i) {
        y[i] += row[i] * r[j];
        row[i] = row[i] * decay[j] + v[i] * k[j];
      }
    }
    from_float(y, static_cast<scalar_t*>(p.y) + off, N);
  }

  if (p.state_out) store_state_generic(St.data(), p.state_out + (bi * p.H + hi) * N * N, N);
}

template <typename scalar_t>
void wkv6_run(const Problem& p) {
  run_wkv<Problem>(p, {wkv6_heads_fixed<scalar_t, 1>, wkv6_heads_fixed<scalar_t, 2>,
                       wkv6_heads_fixed<scalar_t, 4>, wkv6_heads_fixed<scalar_t, 8>},
                   wkv6_head_generic<scalar_t>);
}

}  // namespace

// Returns [y] or [y, final_state].  The Python binding (csrc/wkv6.py) validates shapes with clear
// messages, makes the inputs contiguous and u float32; the checks here guard direct callers.
std::vector<at::Tensor> wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor w, at::Tensor u,
                                     c10::optional<at::Tensor> state, bool return_state) {
  TORCH_CHECK(r.dim() == 4, "wkv6: r must be (B, T, H, N)");
  for (const auto& x : {k, v, w}) {
    TORCH_CHECK(x.sizes() == r.sizes(), "wkv6: r, k, v, w must have one shape");
    TORCH_CHECK(x.scalar_type() == r.scalar_type(), "wkv6: r, k, v, w must have one dtype");
  }
  check_inputs("wkv6", r, {r, k, v, w, u});
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 2 && u.size(0) == H && u.size(1) == N,
              "wkv6: u must be float32 (H, N)");
  const at::Tensor s_in = state_in("wkv6", state, r);
  auto y = at::empty_like(r);
  const at::Tensor s_out = state_out(return_state, r);

  Problem p{B, T, H, N,
            r.data_ptr(), k.data_ptr(), v.data_ptr(), w.data_ptr(), u.data_ptr<float>(),
            y.data_ptr(),
            data_or_null(s_in), data_or_null(s_out)};
  if (r.scalar_type() == at::kFloat)
    wkv6_run<float>(p);
  else
    wkv6_run<c10::BFloat16>(p);

  if (return_state) return {y, s_out};
  return {y};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &wkv6_forward, "WKV-6 forward scan (CPU)", py::arg("r"), py::arg("k"), py::arg("v"),
        py::arg("w"), py::arg("u"), py::arg("state") = py::none(), py::arg("return_state") = false);
}
