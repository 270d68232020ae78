// WKV-7 (RWKV-7 "x070") forward scan on the CPU.  The recurrence and the reference are in csrc/wkv7.py.
//
// Per (batch, head) the state is an N x N float32 matrix S[i][j] (i = value row, j = key column):
//     sa_i = sum_j a_j S_ij;   S_ij = S_ij * decay_j + sa_i * b_j + v_i * k_j;   y_i = sum_j S_ij r_j
//
// Why it is laid out this way:
// - Work is split over batch x heads with at::parallel_for (torch's own thread pool, so
//   torch.set_num_threads applies and no second OpenMP runtime is started).
// - Inside a head the state is kept transposed, St[j][i], so that every operation runs along i with
//   j as a broadcast scalar: sa and y become vector accumulations (no horizontal sums) and each
//   key column j is one contiguous row of N floats = N/16 AVX-512 registers.
// - GCC/Clang vector extensions (vec16 = 16 floats) keep the code readable; with -march=native they
//   become AVX-512 (or pairs of AVX2) instructions, and -ffp-contract=fast fuses the multiply-adds.
// - Common head sizes (16, 32, 64, 128) are compiled with N known at compile time, so the i loop is
//   fully unrolled and sa, y, v stay in registers; other sizes take a plain scalar-loop path.
// - Inputs are float32 or bfloat16 and are converted to float32 when a token's rows are loaded; the
//   output is written in the input dtype.  The decay exp(-exp(w)) uses a vectorisable exp (below)
//   because a libm call per element would cost more than the state update itself.

// Narrow includes instead of <torch/extension.h>: the build takes half the time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float vec16 __attribute__((vector_size(64)));
typedef int32_t ivec16 __attribute__((vector_size(64)));

constexpr int64_t kMaxHeadSize = 1024;

// exp(x) for 16 floats: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then the Cephes
// degree-7 polynomial for e^r (about 1 ulp), scaled by 2^n built from the exponent bits.
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

struct Problem {
  int64_t B, T, H, N;
  const void *r, *w, *k, *v, *a, *b;  // (B, T, H, N), contiguous, all of one dtype
  void* y;                            // (B, T, H, N), same dtype
  const float* state_in;              // (B, H, N, N) or nullptr
  float* state_out;                   // (B, H, N, N) or nullptr
};

// One (batch, head) with N = 16 * NV known at compile time.
template <typename scalar_t, int NV>
void wkv7_head_fixed(const Problem& p, int64_t bi, int64_t hi) {
  constexpr int N = 16 * NV;
  // St[j * NV + iv] holds S[16 iv .. 16 iv + 15][j]: key column j, 16 value rows.
  std::vector<vec16> St_buf(N * NV);
  vec16* St = St_buf.data();
  const float* s0 = p.state_in ? p.state_in + (bi * p.H + hi) * N * N : nullptr;
  for (int j = 0; j < N; ++j)
    for (int iv = 0; iv < NV; ++iv)
      for (int l = 0; l < 16; ++l) St[j * NV + iv][l] = s0 ? s0[(16 * iv + l) * N + j] : 0.0f;

  alignas(64) float r[N], decay[N], k[N], a[N], b[N], v[N], y[N];
  const scalar_t* R = static_cast<const scalar_t*>(p.r);
  const scalar_t* W = static_cast<const scalar_t*>(p.w);
  const scalar_t* K = static_cast<const scalar_t*>(p.k);
  const scalar_t* V = static_cast<const scalar_t*>(p.v);
  const scalar_t* A = static_cast<const scalar_t*>(p.a);
  const scalar_t* Bv = static_cast<const scalar_t*>(p.b);
  scalar_t* Y = static_cast<scalar_t*>(p.y);

  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t off = ((bi * p.T + t) * p.H + hi) * N;
    to_float(R + off, r, N);
    to_float(W + off, decay, N);
    to_float(K + off, k, N);
    to_float(V + off, v, N);
    to_float(A + off, a, N);
    to_float(Bv + off, b, N);
    for (int iv = 0; iv < NV; ++iv) store16(decay + 16 * iv, exp16(-exp16(load16(decay + 16 * iv))));

    // sa = S a  (uses the state before this step's update)
    vec16 sa[NV] = {};
    for (int j = 0; j < N; ++j)
      for (int iv = 0; iv < NV; ++iv) sa[iv] += St[j * NV + iv] * a[j];

    vec16 vv[NV], acc[NV] = {};
    for (int iv = 0; iv < NV; ++iv) vv[iv] = load16(v + 16 * iv);
    for (int j = 0; j < N; ++j) {
      for (int iv = 0; iv < NV; ++iv) {
        vec16 s = St[j * NV + iv] * decay[j] + sa[iv] * b[j] + vv[iv] * k[j];
        St[j * NV + iv] = s;
        acc[iv] += s * r[j];
      }
    }
    for (int iv = 0; iv < NV; ++iv) store16(y + 16 * iv, acc[iv]);
    from_float(y, Y + off, N);
  }

  if (p.state_out) {
    float* s1 = p.state_out + (bi * p.H + hi) * N * N;
    for (int j = 0; j < N; ++j)
      for (int iv = 0; iv < NV; ++iv)
        for (int l = 0; l < 16; ++l) s1[(16 * iv + l) * N + j] = St[j * NV + iv][l];
  }
}

// Any head size: the same algorithm with runtime N and plain loops (the compiler vectorises the i loops).
template <typename scalar_t>
void wkv7_head_generic(const Problem& p, int64_t bi, int64_t hi) {
  const int N = static_cast<int>(p.N);
  std::vector<float> St(N * N), buf(8 * N);
  float *r = buf.data(), *decay = r + N, *k = decay + N, *v = k + N, *a = v + N, *b = a + N, *sa = b + N,
        *y = sa + N;
  const float* s0 = p.state_in ? p.state_in + (bi * p.H + hi) * N * N : nullptr;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) St[j * N + i] = s0 ? s0[i * N + j] : 0.0f;

  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t off = ((bi * p.T + t) * p.H + hi) * N;
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

  if (p.state_out) {
    float* s1 = p.state_out + (bi * p.H + hi) * N * N;
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) s1[i * N + j] = St[j * N + i];
  }
}

template <typename scalar_t>
void wkv7_run(const Problem& p) {
  void (*head)(const Problem&, int64_t, int64_t);
  switch (p.N) {
    case 16: head = wkv7_head_fixed<scalar_t, 1>; break;
    case 32: head = wkv7_head_fixed<scalar_t, 2>; break;
    case 64: head = wkv7_head_fixed<scalar_t, 4>; break;
    case 128: head = wkv7_head_fixed<scalar_t, 8>; break;
    default: head = wkv7_head_generic<scalar_t>;
  }
  at::parallel_for(0, p.B * p.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) head(p, bh / p.H, bh % p.H);
  });
}

}  // namespace

// Returns [y] or [y, final_state].  The Python binding (csrc/wkv7.py) validates shapes with clear
// messages and makes the inputs contiguous; the checks here guard direct callers.
std::vector<at::Tensor> wkv7_forward(at::Tensor r, at::Tensor w, at::Tensor k, at::Tensor v,
                                        at::Tensor a, at::Tensor b, c10::optional<at::Tensor> state,
                                        bool return_state) {
  TORCH_CHECK(r.dim() == 4, "wkv7: r must be (B, T, H, N)");
  for (const auto& x : {w, k, v, a, b}) {
    TORCH_CHECK(x.sizes() == r.sizes(), "wkv7: all inputs must have the shape of r");
    TORCH_CHECK(x.scalar_type() == r.scalar_type(), "wkv7: all inputs must have the dtype of r");
  }
  for (const auto& x : {r, w, k, v, a, b}) {
    TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "wkv7: inputs must be contiguous CPU tensors");
  }
  TORCH_CHECK(r.scalar_type() == at::kFloat || r.scalar_type() == at::kBFloat16,
              "wkv7: inputs must be float32 or bfloat16");
  const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
  TORCH_CHECK(N >= 1 && N <= kMaxHeadSize, "wkv7: head size must be in 1..", kMaxHeadSize);

  at::Tensor s_in;
  if (state.has_value()) {
    s_in = state->to(at::kFloat).contiguous();
    TORCH_CHECK(s_in.dim() == 4 && s_in.size(0) == B && s_in.size(1) == H && s_in.size(2) == N &&
                    s_in.size(3) == N,
                "wkv7: state must be (B, H, N, N)");
  }
  auto y = at::empty_like(r);
  at::Tensor s_out;
  if (return_state) s_out = at::empty({B, H, N, N}, r.options().dtype(at::kFloat));

  Problem p{B, T, H, N,
            r.data_ptr(), w.data_ptr(), k.data_ptr(), v.data_ptr(), a.data_ptr(), b.data_ptr(),
            y.data_ptr(),
            s_in.defined() ? s_in.data_ptr<float>() : nullptr,
            s_out.defined() ? s_out.data_ptr<float>() : nullptr};
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
        py::arg("return_state") = false);
}
