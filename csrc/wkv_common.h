// Pieces shared by the WKV-6 and WKV-7 CPU kernels (csrc/wkv6_cpu.cpp, csrc/wkv7_cpu.cpp): both keep
// the per-head N x N float32 state transposed, split the work over batch x heads, and specialise the
// head sizes 16/32/64/128.  The reasons for that layout are in csrc/wkv7_cpu.cpp.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "simd.h"

namespace hearscan {
namespace wkv {

constexpr int64_t kMaxHeadSize = 1024;

// Head size N = 16 NV known at compile time: St[j * NV + iv] holds S[16 iv .. 16 iv + 15][j] (key
// column j, 16 value rows).  s0 is the (N, N) state S[i][j] of this head, or nullptr for zeros.
template <int NV>
inline void load_state_fixed(const float* s0, vec16* St) {
  constexpr int N = 16 * NV;
  for (int j = 0; j < N; ++j)
    for (int iv = 0; iv < NV; ++iv)
      for (int l = 0; l < 16; ++l) St[j * NV + iv][l] = s0 ? s0[(16 * iv + l) * N + j] : 0.0f;
}

template <int NV>
inline void store_state_fixed(const vec16* St, float* s1) {
  constexpr int N = 16 * NV;
  for (int j = 0; j < N; ++j)
    for (int iv = 0; iv < NV; ++iv)
      for (int l = 0; l < 16; ++l) s1[(16 * iv + l) * N + j] = St[j * NV + iv][l];
}

// The states of heads h0 .. h0 + nh - 1 of batch row bi, one after the other (N * NV vectors each), from
// the (B, H, N, N) state s0 (nullptr for zeros), and back to s1.
template <int NV>
inline void load_group_states(const float* s0, int64_t H, int64_t bi, int64_t h0, int64_t nh, vec16* St) {
  constexpr int N = 16 * NV;
  for (int64_t h = 0; h < nh; ++h)
    load_state_fixed<NV>(s0 ? s0 + (bi * H + h0 + h) * N * N : nullptr, St + h * N * NV);
}

template <int NV>
inline void store_group_states(const vec16* St, int64_t H, int64_t bi, int64_t h0, int64_t nh, float* s1) {
  constexpr int N = 16 * NV;
  for (int64_t h = 0; h < nh; ++h) store_state_fixed<NV>(St + h * N * NV, s1 + (bi * H + h0 + h) * N * N);
}

// Any head size: St[j * N + i] = S[i][j].
inline void load_state_generic(const float* s0, float* St, int N) {
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) St[j * N + i] = s0 ? s0[i * N + j] : 0.0f;
}

inline void store_state_generic(const float* St, float* s1, int N) {
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) s1[i * N + j] = St[j * N + i];
}

// Token blocks and head groups.  One head's rows of a (B, T, H, N) input lie H * N floats apart, so a
// step's rows come from pages that the hardware prefetcher does not follow.  The fixed-size kernels
// therefore take a group of adjacent heads of one batch row at a time and work on blocks of kBlock tokens
// of every input for the whole group, held in contiguous float32 buffers, head-major (the bfloat16
// conversion happens when a row is copied in).  They run the recurrence head by head over the buffers (a
// head's state stays in L1 for its kBlock steps) and write the outputs back a block at a time.
constexpr int64_t kBlock = 16;

// Scan step t reads and writes token t, or token T - 1 - t for a scan that runs backwards in time (WKV-7's
// `reverse`, A-RWKV's backward direction without a flipped copy of its inputs).
inline int64_t token(int64_t t, int64_t T, bool reverse) { return reverse ? T - 1 - t : t; }

// Steps t0 .. t0 + n - 1 of heads h0 .. h0 + nh - 1 of batch row bi of x (B, T, H, N) -> dst, laid out
// [head][row][N] with `rows` rows per head.
template <typename scalar_t>
inline void gather_heads(const void* x, int64_t T, int64_t H, int64_t N, int64_t bi, int64_t h0, int64_t nh,
                         int64_t t0, int64_t n, float* dst, int64_t rows, bool reverse) {
  for (int64_t t = 0; t < n; ++t) {
    const scalar_t* src = static_cast<const scalar_t*>(x) + ((bi * T + token(t0 + t, T, reverse)) * H + h0) * N;
    for (int64_t h = 0; h < nh; ++h) to_float(src + h * N, dst + (h * rows + t) * N, static_cast<int>(N));
  }
}

// The cache lines of step t's row of head h of batch row bi of each of the nx inputs xs (each
// (B, T, H, N); past the end: the last step's row again), to be brought into L2 one at a time: plan() at
// the start of a step, then at(j) for each key column j of the step's loop, which issues one line every
// Stride columns (room for N / Stride lines).  Issued as one burst (24 lines per step for WKV-7) the
// prefetches ran out of line-fill buffers and stalled the core: perf put 20 % of WKV-7's time on them
// (B=4 T=496 H=12); spread out, WKV-7 was 1.02-1.14x faster than with the burst (same process, 1 thread).
template <int N, int Stride>
struct RowPrefetch {
  const char* lines[N / Stride];
  int n = 0;

  // elem: bytes per element of the inputs.
  void plan(const void* const* xs, int nx, int64_t elem, int64_t T, int64_t H, int64_t bi, int64_t h, int64_t t,
            bool reverse) {
    t = token(std::min(t, T - 1), T, reverse);
    const int64_t offset = ((bi * T + t) * H + h) * N * elem, bytes = N * elem;
    n = 0;
    for (int x = 0; x < nx; ++x) {
      const char* row = static_cast<const char*>(xs[x]) + offset;
      for (int64_t off = 0; off < bytes && n < N / Stride; off += 64) lines[n++] = row + off;
    }
  }

  void at(int j) const {
    if (j % Stride == 0 && j / Stride < n) prefetch_l2(lines[j / Stride]);
  }
};

// The token blocks of NX inputs for heads h0 .. h0 + nh - 1 of batch row bi, double-buffered: block 0 is
// gathered up front, and every later block is copied while the one before it is computed.  At each step
// of the current block (head h, token t: copy step c = h * n + t, n its tokens) the kernel calls
// step(t0, c), which converts one row of every input of the next block into the other buffer set, in
// memory order (token-major, the group's heads within a token; tokens descending when reverse), and
// plans the L2 prefetch of the row
// kAhead copy steps later; the kernel issues it a line at a time inside the step's loop (at(j)).  Each
// step copies one row per input, so a block of n tokens has room for nh * n rows, and the next block
// never has more than the current one.
//
// Why: the inputs do not fit in cache (A-RWKV-B, B=4 T=496 H=12: 36.6 MB of float32 per call, about
// 5 ms at this VM's 7.6 GB/s single-core read bandwidth, against 8-10 ms of recurrence).  Gathering a
// whole block between blocks (the earlier design) left the FMA units idle while it ran (WKV-7 on stale
// buffers, without gathers, decays and prefetches, ran 1.4-1.55x faster).  Copied during the steps,
// WKV-6 became 1.01-1.27x faster (median 1.06; 1 thread, side by side, six runs at two shapes); WKV-7,
// whose loop is busier, 0.89-1.14x (median 1.01).  A synthetic FMA loop on this VM hides 6 cache lines
// of sequential reads per 400 ns step completely, but 24 (WKV-7's rows per step) cost it 20-50 %
// however they are prefetched: the memory traffic is a floor here.
template <typename scalar_t, int N, int NX, int Stride>
class BlockStream {
 public:
  static constexpr int64_t kAhead = 4;

  // reverse: step t is token T - 1 - t (see token()).
  BlockStream(const void* const (&xs)[NX], int64_t T, int64_t H, int64_t bi, int64_t h0, int64_t nh,
              bool reverse)
      : T_(T), H_(H), bi_(bi), h0_(h0), nh_(nh), reverse_(reverse), buf_(2 * NX * nh * kBlock * N / 16) {
    for (int x = 0; x < NX; ++x) xs_[x] = xs[x];
    for (int x = 0; x < NX; ++x)
      gather_heads<scalar_t>(xs_[x], T, H, N, bi, h0, nh, 0, std::min(kBlock, T), rows(0, x), kBlock, reverse);
  }

  // Input x of the token block starting at t0: [head][row][N], kBlock rows per head.
  float* rows(int64_t t0, int x) {
    return reinterpret_cast<float*>(buf_.data()) + (((t0 / kBlock) % 2) * NX + x) * nh_ * kBlock * N;
  }

  // Copy step c of the block starting at t0 (see above).  Returns the prefetch plan, which the kernel
  // keeps in a local for its at(j) calls.
  RowPrefetch<N, Stride> step(int64_t t0, int64_t c) {
    const int64_t t1 = t0 + kBlock, n_next = std::min(kBlock, T_ - t1);
    if (c < nh_ * n_next) {
      const int64_t t = c / nh_, h = c % nh_;
      const int64_t src = ((bi_ * T_ + token(t1 + t, T_, reverse_)) * H_ + h0_ + h) * N;
      for (int x = 0; x < NX; ++x)
        to_float(static_cast<const scalar_t*>(xs_[x]) + src, rows(t1, x) + (h * kBlock + t) * N, N);
    }
    const int64_t ahead = c + kAhead;
    RowPrefetch<N, Stride> next;
    next.plan(xs_, NX, sizeof(scalar_t), T_, H_, bi_, h0_ + ahead % nh_, t1 + ahead / nh_, reverse_);
    return next;
  }

 private:
  const void* xs_[NX];
  int64_t T_, H_, bi_, h0_, nh_;
  bool reverse_;
  std::vector<vec16> buf_;  // vec16 for 64-byte aligned rows
};

// The inverse: src [head][row][N] (rows per head) -> steps t0 .. t0 + n - 1 of heads h0 .. of y.
template <typename scalar_t>
inline void scatter_heads(const float* src, int64_t T, int64_t H, int64_t N, int64_t bi, int64_t h0, int64_t nh,
                          int64_t t0, int64_t n, int64_t rows, void* y, bool reverse) {
  for (int64_t t = 0; t < n; ++t) {
    scalar_t* dst = static_cast<scalar_t*>(y) + ((bi * T + token(t0 + t, T, reverse)) * H + h0) * N;
    for (int64_t h = 0; h < nh; ++h) from_float(src + (h * rows + t) * N, dst + h * N, static_cast<int>(N));
  }
}

// Runs fn(bi, h0, h1) over head groups on torch's thread pool: about two groups per thread in all, each
// a run of adjacent heads of one batch row; `flops_per_head` (per batch row) sets the grain (grain_for).
template <typename Fn>
void run_head_groups(int64_t B, int64_t H, double flops_per_head, const Fn& fn) {
  if (B <= 0 || H <= 0) return;
  const int64_t threads = at::get_num_threads();
  const int64_t groups = std::min<int64_t>(H, std::max<int64_t>(1, (2 * threads + B - 1) / B));
  const int64_t size = (H + groups - 1) / groups;
  at::parallel_for(0, B * groups, grain_for(flops_per_head * size), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / groups, h0 = (task % groups) * size, h1 = std::min(H, h0 + size);
      if (h0 < h1) fn(bi, h0, h1);
    }
  });
}

template <typename Problem>
using GroupFn = void (*)(const Problem&, int64_t, int64_t, int64_t);
template <typename Problem>
using HeadFn = void (*)(const Problem&, int64_t, int64_t);

// Runs a kernel on torch's thread pool (so torch.set_num_threads applies): groups[0..3], compiled for
// N = 16, 32, 64, 128, take head groups (run_head_groups); any other N runs `generic` per (batch, head).
template <typename Problem>
void run_wkv(const Problem& p, const GroupFn<Problem> (&groups)[4], HeadFn<Problem> generic) {
  GroupFn<Problem> group = nullptr;
  switch (p.N) {
    case 16: group = groups[0]; break;
    case 32: group = groups[1]; break;
    case 64: group = groups[2]; break;
    case 128: group = groups[3]; break;
  }
  const double flops_per_head = 8.0 * p.N * p.N * p.T;  // the recurrence's multiply-adds, both scans alike
  if (group) {
    run_head_groups(p.B, p.H, flops_per_head, [&](int64_t bi, int64_t h0, int64_t h1) { group(p, bi, h0, h1); });
    return;
  }
  at::parallel_for(0, p.B * p.H, grain_for(flops_per_head), [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) generic(p, bh / p.H, bh % p.H);
  });
}

// Checks that guard direct callers of a kernel (the Python bindings validate with clear messages
// first): (B, T, H, N) inputs on the CPU, contiguous, float32 or bfloat16, 1 <= N <= kMaxHeadSize.
inline void check_inputs(const char* op, const at::Tensor& r, std::initializer_list<at::Tensor> all) {
  for (const auto& x : all)
    TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), op, ": inputs must be contiguous CPU tensors");
  TORCH_CHECK(r.scalar_type() == at::kFloat || r.scalar_type() == at::kBFloat16,
              op, ": inputs must be float32 or bfloat16");
  const int64_t N = r.size(3);
  TORCH_CHECK(N >= 1 && N <= kMaxHeadSize, op, ": head size must be in 1..", kMaxHeadSize);
}

// The initial state as contiguous float32 (B, H, N, N), checked; an undefined tensor when absent.
inline at::Tensor state_in(const char* op, const c10::optional<at::Tensor>& state, const at::Tensor& r) {
  if (!state.has_value()) return at::Tensor();
  const int64_t B = r.size(0), H = r.size(2), N = r.size(3);
  at::Tensor s = state->to(at::kFloat).contiguous();
  TORCH_CHECK(s.dim() == 4 && s.size(0) == B && s.size(1) == H && s.size(2) == N && s.size(3) == N,
              op, ": state must be (B, H, N, N)");
  return s;
}

// The final state's (B, H, N, N) float32 buffer when it is asked for, else an undefined tensor.
inline at::Tensor state_out(bool return_state, const at::Tensor& r) {
  if (!return_state) return at::Tensor();
  return at::empty({r.size(0), r.size(2), r.size(3), r.size(3)}, r.options().dtype(at::kFloat));
}

inline float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

}  // namespace wkv
}  // namespace hearscan
