"""The compiled mLSTM equals the official quadratic parallel form and the recurrent reference.

Tolerances, per dtype (the kernel and the references all compute in float32 from the same inputs):
- float32: rtol 1e-4 and atol 1e-5 * max|h| (at least 1e-5).  The output is num / den, and where
  |den| is small next to the sum of its terms (condition ~40 on these random inputs) float32 rounding is
  amplified: the official float32 form itself differs from a float64 evaluation by up to ~4e-6 * max|h|,
  and the kernel by the same amount (measured: 5.7e-4 vs 5.2e-4 at max|h| = 118).
- bfloat16: outputs are rounded to bfloat16 once, so they may differ by one bfloat16 ulp (2^-8
  relative): rtol 1e-2, atol 1e-2 * max|h|.
- state (float32): rtol 1e-4, atol 1e-5.
"""

import importlib
import math

import pytest
import torch

import csrc
from _kernel_helpers import (
    DEVICES,
    DTYPES,
    needs_cuda,
    scaled_close,
    to_device,
    assert_bad_input_raises,
    assert_reference_never_calls_kernel,
    kernel_marker,
    run_in_chunks,
    well_formed_bench_cases,
)

mlstm_mod = importlib.import_module("csrc.mlstm")  # the package re-exports the function under this name

HAVE_KERNEL, needs_kernel = kernel_marker("mlstm")

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
STATE_TOL = dict(rtol=1e-4, atol=1e-5)


def assert_close(got, want, dtype=torch.float32):
    """Compare in float32 with the per-dtype tolerance, atol scaled by the output's magnitude."""
    got, want = got.float(), want.float()
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    tol = TOL[dtype]
    torch.testing.assert_close(got, want, rtol=tol["rtol"], atol=tol["atol"] * scale)


def make_inputs(B, H, T, DH, dtype=torch.float32, seed=0, DV=None):
    """xLSTM-like gates: forget-gate pre-activations around +3 (bias init 3..6), input gates ~N(0, 2)."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, DH, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(B, H, T, DV or DH, generator=g).to(dtype)
    ig = torch.randn(B, H, T, generator=g) * 2
    fg = torch.randn(B, H, T, generator=g) * 2 + 3
    return dict(q=q, k=k, v=v, igate=ig, fgate=fg)


def compiled(kw, **extra):
    return csrc.mlstm(**kw, **extra, backend="compiled")


@pytest.fixture
def chunk(monkeypatch):
    """Force the kernel's chunk size, to exercise the carried state between chunks at small T."""
    def force(size):
        monkeypatch.setattr(mlstm_mod, "chunk_size", lambda length, dqk, dv: size)
    return force


SHAPES = [  # (B, H, T, DH)
    (1, 1, 1, 1),       # T = 1
    (2, 4, 1, 16),
    (2, 3, 37, 16),     # odd T
    (1, 4, 100, 24),    # T not a multiple of 16
    (3, 2, 251, 32),    # AxLSTM's 251 tokens
]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}xH{}xT{}xDH{}".format(*s))
@pytest.mark.parametrize("chunk_len", [None, 7], ids=["auto-chunk", "chunk7"])
def test_compiled_equals_official_parallel_form(shape, dtype, chunk_len, chunk):
    if chunk_len:
        chunk(chunk_len)
    kw = make_inputs(*shape, dtype=dtype)
    got = compiled(kw)
    want = csrc.mlstm_parallel_reference(**kw)  # official quadratic form, float32 inside
    assert got.dtype == dtype and got.shape == want.shape
    assert_close(got, want, dtype)


@needs_kernel
@pytest.mark.parametrize("dh", [96, 192])
def test_axlstm_head_widths(dh):
    """AxLSTM tiny/small heads (2D/4 dims), 4 heads, 251 tokens."""
    kw = make_inputs(2, 4, 251, dh, seed=1)
    assert_close(compiled(kw), csrc.mlstm_parallel_reference(**kw))


@needs_kernel
def test_value_dim_differs_from_key_dim(chunk):
    chunk(16)
    kw = make_inputs(2, 2, 40, 8, DV=12, seed=2)
    h, (C, n, m) = compiled(kw, return_state=True)
    assert h.shape == (2, 2, 40, 12) and C.shape == (2, 2, 12, 8)
    assert_close(h, csrc.mlstm_parallel_reference(**kw))


def test_reference_with_a_value_dim_unlike_the_key_dim():
    """The recurrent reference's state is (DV, DQK) when v is wider than q and k (it once assumed DV = DQK)."""
    kw = make_inputs(2, 2, 40, 8, DV=12, seed=2)
    h, (C, n, m) = csrc.mlstm_reference(**kw, return_state=True)
    assert C.shape == (2, 2, 12, 8) and n.shape == (2, 2, 8)
    assert_close(h, csrc.mlstm_parallel_reference(**kw))


@needs_kernel
@pytest.mark.parametrize("chunk_len", [None, 5, 64])
def test_state_equals_recurrent_reference(chunk_len, chunk):
    """The final (C, n, m) and a given initial state follow the recurrent reference exactly."""
    if chunk_len:
        chunk(chunk_len)
    kw = make_inputs(2, 3, 50, 16, seed=3)
    g = torch.Generator().manual_seed(9)
    state0 = (torch.randn(2, 3, 16, 16, generator=g) * 0.1, torch.randn(2, 3, 16, generator=g) * 0.1,
              torch.randn(2, 3, generator=g))
    h, st = compiled(kw, state=state0, return_state=True)
    h_ref, st_ref = csrc.mlstm_reference(**kw, state=state0, return_state=True)
    assert_close(h, h_ref)
    for s, s_ref in zip(st, st_ref):
        torch.testing.assert_close(s, s_ref, **STATE_TOL)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_with_carried_state_equals_one_pass(dtype):
    kw = make_inputs(2, 4, 120, 16, dtype=dtype, seed=4)
    full = compiled(kw)
    outs, state = run_in_chunks(
        lambda lo, hi, s: compiled({k: v[:, :, lo:hi] for k, v in kw.items()}, state=s, return_state=True),
        [(0, 1), (1, 45), (45, 120)],
    )
    assert_close(torch.cat(outs, dim=2), full, dtype)


@needs_kernel
def test_long_sequence_against_float64():
    """T = 8192 (128 chunks of 64), checked against the official recurrent step evaluated in float64."""
    kw = make_inputs(1, 2, 8192, 8, seed=5)
    assert mlstm_mod.chunk_size(8192, 8, 8) < 8192
    got = compiled(kw)
    torch.testing.assert_close(got.double(), _recurrent_float64(**kw), rtol=1e-3, atol=1e-4)


def _recurrent_float64(q, k, v, igate, fgate, eps=1e-6):
    """The official `recurrent_step_stabilized_simple`, step by step in float64 (C indexed [value, key])."""
    q, k, v, ig, fg = (x.double() for x in (q, k, v, igate, fgate))
    B, H, T, DH = q.shape
    k = k / math.sqrt(DH)
    log_f = torch.nn.functional.logsigmoid(fg)
    C = q.new_zeros(B, H, DH, DH)
    n = q.new_zeros(B, H, DH)
    m = q.new_full((B, H), -math.inf)
    out = []
    for t in range(T):
        m_new = torch.maximum(log_f[..., t] + m, ig[..., t])
        f_act, i_act = torch.exp(log_f[..., t] + m - m_new), torch.exp(ig[..., t] - m_new)
        C = f_act[..., None, None] * C + i_act[..., None, None] * v[..., t, :, None] * k[..., t, None, :]
        n = f_act[..., None] * n + i_act[..., None] * k[..., t, :]
        m = m_new
        den = torch.maximum((n * q[..., t, :]).sum(-1).abs(), torch.exp(-m)) + eps
        out.append((C @ q[..., t, :, None])[..., 0] / den[..., None])
    return torch.stack(out, dim=2)


@needs_kernel
def test_extreme_gates_stay_finite(chunk):
    """Saturated gates (forget ~0 or ~1, large input gates) are where stabilisation matters."""
    chunk(10)
    kw = make_inputs(1, 2, 60, 8, seed=6)
    kw["igate"] = kw["igate"] * 20
    kw["fgate"] = torch.where(torch.arange(60) % 2 == 0, -30.0, 30.0).expand(1, 2, 60).clone()
    got = compiled(kw)
    assert torch.isfinite(got).all()
    assert_close(got, csrc.mlstm_parallel_reference(**kw))


@needs_kernel
def test_official_gate_layout_and_strided_inputs():
    """Gates as (B, H, T, 1) like the official cell; q/k/v as transposed views of (B, T, H, DH)."""
    kw = make_inputs(2, 4, 33, 16, seed=7)
    want = csrc.mlstm_parallel_reference(**kw)
    views = {k: v.transpose(1, 2).contiguous().transpose(1, 2) for k, v in kw.items() if k in "qkv"}
    assert not views["q"].is_contiguous()
    got = csrc.mlstm(**views, igate=kw["igate"][..., None], fgate=kw["fgate"][..., None], backend="compiled")
    assert_close(got, want)


@needs_kernel
def test_autograd_uses_the_reference():
    kw = make_inputs(1, 2, 9, 4, seed=8)
    kw["q"].requires_grad_(True)
    with pytest.warns(UserWarning, match="requires grad"):
        h = csrc.mlstm(**kw)  # auto: the kernel is forward-only, so the reference runs
    h.sum().backward()
    assert kw["q"].grad is not None
    with pytest.raises(ValueError, match="forward-only"):
        csrc.mlstm(**kw, backend="compiled")
    with torch.no_grad():
        csrc.mlstm(**kw, backend="compiled")


def test_chunk_size_rule():
    assert mlstm_mod.chunk_size(251, 384, 384) == 251  # AxLSTM: one chunk = the official form
    assert mlstm_mod.chunk_size(251, 96, 96) == 251
    assert mlstm_mod.chunk_size(8192, 192, 192) == 192
    assert mlstm_mod.chunk_size(100000, 4096, 4096) == 512
    assert mlstm_mod.chunk_size(0, 16, 16) == 1


def test_reference_backend_never_calls_the_kernel(monkeypatch):
    kw = make_inputs(1, 2, 5, 4)
    assert_reference_never_calls_kernel(monkeypatch, "mlstm", lambda **extra: csrc.mlstm(**kw, **extra))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(q=torch.randn(2, 3, 7)), ValueError, r"q must be \(batch, heads, time, head_dim\)"),
        (dict(k=torch.randn(2, 3, 7, 5)), ValueError, r"k must have q's shape \(2, 3, 7, 4\)"),
        (dict(v=torch.randn(2, 3, 6, 4)), ValueError, r"v must be \(2, 3, 7\)"),
        (dict(igate=torch.randn(2, 3, 8)), ValueError, r"igate must have shape \(2, 3, 7\)"),
        (dict(fgate=torch.randn(2, 7, 3)), ValueError, r"fgate must have shape \(2, 3, 7\)"),
        (dict(q=torch.ones(2, 3, 7, 4, dtype=torch.int32)), TypeError, "real floating tensor"),
        (dict(state=(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4))), TypeError, r"\(C, n, m\) tuple"),
        (dict(state=(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3))), ValueError,
         r"state n must have shape \(2, 3, 4\)"),
    ],
)
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_bad_inputs_give_clear_errors(change, error, match, backend):
    assert_bad_input_raises(csrc.mlstm, make_inputs(2, 3, 7, 4), change, error, match, backend, HAVE_KERNEL)


def test_bench_cases_are_well_formed():
    for case in well_formed_bench_cases("mlstm"):
        kw = case["make_inputs"](torch.bfloat16)
        B, H, T, DH = kw["q"].shape
        assert kw["q"].dtype == torch.bfloat16 and case["tokens"] == B * T
        assert case["flops"] == 4 * DH * DH * H * T * B


# --- on each device: the CPU always, CUDA when present (the CUDA kernel: csrc/mlstm_cuda.cu) -----------

def mlstm_inputs(B, H, T, DH, dtype, DV=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, DH, generator=g).to(dtype) for _ in range(2))
    v = torch.randn(B, H, T, DV or DH, generator=g).to(dtype)
    return dict(q=q, k=k, v=v, igate=torch.randn(B, H, T, generator=g) * 2,
                fgate=torch.randn(B, H, T, generator=g) * 2 + 3)


MLSTM_SHAPES = [  # (B, H, T, DH): AxLSTM's 4 heads of 96 / 192 / 384 on 251 tokens among them
    (1, 1, 1, 1),
    (2, 4, 1, 16),
    (2, 3, 37, 16),
    (1, 4, 100, 24),
    (2, 4, 251, 96),
    (1, 4, 251, 192),
    (1, 2, 251, 384),
]


@pytest.mark.parametrize("device", DEVICES)
@DTYPES
@pytest.mark.parametrize("shape", MLSTM_SHAPES, ids=lambda s: "B{}H{}T{}DH{}".format(*s))
def test_compiled_on_each_device_equals_official_parallel_form(shape, dtype, device):
    kw = mlstm_inputs(*shape, dtype)
    want = csrc.mlstm_parallel_reference(**kw)
    got = csrc.mlstm(**to_device(kw, device), backend="compiled")
    assert got.device.type == device and got.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    scaled_close(got, want, **tol)


@needs_cuda
def test_mlstm_cuda_state_value_width_and_chunks():
    """A value width unlike q/k's, an initial state, and chunks with the state carried (bit for bit)."""
    kw = mlstm_inputs(2, 2, 90, 40, torch.float32, DV=72)
    first = {n: v[:, :, :30] for n, v in kw.items()}
    _, state = csrc.mlstm(**first, return_state=True, backend="reference")
    rest = {n: v[:, :, 30:] for n, v in kw.items()}
    h_ref, (C_ref, n_ref, m_ref) = csrc.mlstm(**rest, state=state, return_state=True, backend="reference")
    h, (C, n, m) = csrc.mlstm(**to_device(rest), state=to_device(state), return_state=True, backend="compiled")
    scaled_close(h, h_ref, rtol=1e-4, atol=1e-5)
    for got, want in ((C, C_ref), (n, n_ref), (m, m_ref)):
        scaled_close(got, want, rtol=1e-4, atol=1e-5)
    kw = to_device(kw)
    full, s_full = csrc.mlstm(**kw, return_state=True, backend="compiled")

    def run(lo, hi, st):
        return csrc.mlstm(**{n: v[:, :, lo:hi] for n, v in kw.items()}, state=st, return_state=True,
                          backend="compiled")

    ys, st = run_in_chunks(run, [(0, 45), (45, 46), (46, 90)])
    torch.testing.assert_close(torch.cat(ys, dim=2), full, atol=0, rtol=0)
    for got, want in zip(st, s_full):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@needs_cuda
def test_mlstm_cuda_empty_and_wide():
    kw = to_device(mlstm_inputs(1, 2, 0, 32, torch.float32))
    h, (C, n, m) = csrc.mlstm(**kw, return_state=True, backend="compiled")
    assert h.shape == (1, 2, 0, 32) and torch.isinf(m).all() and not C.any() and not n.any()
    wide = to_device(mlstm_inputs(1, 1, 5, 520, torch.float32))
    scaled_close(csrc.mlstm(**wide), csrc.mlstm_parallel_reference(**wide), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="CUDA kernel takes q/k widths up to 512, got 520"):
        csrc.mlstm(**wide, backend="compiled")
