"""The CUDA scan kernels (csrc/<op>_cuda.cu) against the references, on a GPU; reported as skipped without one.

Each kernel runs on CUDA tensors and is compared with the float32 reference recurrence run on the CPU copies
of the same inputs (the truth), with the CPU kernels' tolerances: float32 within 1e-4 (the kernels reorder
float32 sums, and the GPU's expf differs from glibc's by an ulp or two), bfloat16 within 1e-2 (one or two
bfloat16 roundings of the output).  mLSTM is compared with the official quadratic parallel form.
"""

import pytest
import torch

import csrc
from benchmarks import kernel_cases
from _kernel_helpers import WKV_STATE_TOL, WKV_TOL, run_in_chunks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def cuda(x):
    if isinstance(x, dict):
        return {k: cuda(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(cuda(v) for v in x)
    return x.cuda() if isinstance(x, torch.Tensor) else x


def scaled_close(got, want, rtol, atol):
    """assert_close in float32 with atol scaled by the largest |want| (long sequences grow large values)."""
    got, want = got.float().cpu(), want.float().cpu()
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale)


# ------------------------------------------------------------------------------------------------ WKV-7/6

def wkv_inputs(op, B, T, H, N, dtype):
    """Positional inputs of csrc.wkv7 (r, w, k, v, a, b) or csrc.wkv6 (r, k, v, w, u), in the models' ranges."""
    if op == "wkv7":
        x = kernel_cases.wkv7_inputs(B, T, H, N, dtype)
        return [x[name] for name in ("r", "w", "k", "v", "a", "b")]
    x = kernel_cases.wkv6_inputs(B, T, H, N, dtype)
    return [x[name] for name in ("r", "k", "v", "w", "u")]


WKV_OPS = {"wkv7": csrc.wkv7, "wkv6": csrc.wkv6}
WKV_SHAPES = [
    (1, 1, 1, 64),     # T = 1
    (2, 37, 3, 64),    # odd T, batch > 1, A-RWKV-T's 3 heads
    (1, 61, 2, 64),    # T not a multiple of 16
    (3, 16, 2, 32),
    (2, 17, 2, 20),    # a head size padded to the next block size
    (1, 9, 1, 128),
    (4, 496, 12, 64),  # A-RWKV-B, bidirectional batch of 2 clips
]


@pytest.mark.parametrize("op", WKV_OPS)
@DTYPES
@pytest.mark.parametrize("shape", WKV_SHAPES, ids=lambda s: "B{}T{}H{}N{}".format(*s))
def test_wkv_cuda_equals_reference(op, shape, dtype):
    fn = WKV_OPS[op]
    x = wkv_inputs(op, *shape, dtype)
    g = torch.Generator().manual_seed(1)
    s0 = torch.randn(shape[0], shape[2], shape[3], shape[3], generator=g) * 0.1
    y_ref, s_ref = fn(*x, state=s0, return_state=True, backend="reference")
    y, s = fn(*cuda(x), state=s0.cuda(), return_state=True, backend="compiled")
    assert y.is_cuda and y.dtype == dtype and y.shape == x[0].shape
    assert s.dtype == torch.float32 and s.shape == s0.shape
    torch.testing.assert_close(y.cpu(), y_ref, **WKV_TOL[dtype])
    torch.testing.assert_close(s.cpu(), s_ref, **WKV_STATE_TOL)


@pytest.mark.parametrize("op", WKV_OPS)
def test_wkv_cuda_long_sequence_t8192(op):
    x = wkv_inputs(op, 1, 8192, 2, 64, torch.float32)
    y_ref, s_ref = WKV_OPS[op](*x, return_state=True, backend="reference")
    y, s = WKV_OPS[op](*cuda(x), return_state=True, backend="compiled")
    assert (y.cpu() - y_ref).abs().max() <= 1e-4 * y_ref.abs().max()
    assert (s.cpu() - s_ref).abs().max() <= 1e-4 * s_ref.abs().max()


@pytest.mark.parametrize("op", WKV_OPS)
def test_wkv_cuda_chunked_with_carried_state_equals_one_pass(op):
    """The same kernel over [0, 50), [50, 51), [51, 130) with the state carried equals one pass, bit for bit."""
    fn = WKV_OPS[op]
    x = cuda(wkv_inputs(op, 2, 130, 3, 64, torch.float32))
    full, s_full = fn(*x, return_state=True, backend="compiled")

    def run(lo, hi, state):
        seq = [t[:, lo:hi] for t in x[:4]] + ([x[4][:, lo:hi], x[5][:, lo:hi]] if op == "wkv7" else [x[4]])
        return fn(*seq, state=state, return_state=True, backend="compiled")

    ys, state = run_in_chunks(run, [(0, 50), (50, 51), (51, 130)])
    torch.testing.assert_close(torch.cat(ys, dim=1), full, atol=0, rtol=0)
    torch.testing.assert_close(state, s_full, atol=0, rtol=0)


def test_wkv7_cuda_bidirectional_on_flipped_views():
    """A-RWKV's use: [X; flip(X)] through one call, and a time-flipped (non-contiguous) view directly."""
    x = wkv_inputs("wkv7", 2, 45, 3, 64, torch.float32)
    flipped = [t.flip(1) for t in x]
    both = cuda([torch.cat([a, b]) for a, b in zip(x, flipped)])
    y = csrc.wkv7(*both, backend="compiled").cpu()
    torch.testing.assert_close(y[:2], csrc.wkv7(*x, backend="reference"), **WKV_TOL[torch.float32])
    y_bwd_ref = csrc.wkv7(*flipped, backend="reference")
    torch.testing.assert_close(y[2:], y_bwd_ref, **WKV_TOL[torch.float32])
    views = [t.cuda().flip(1)[:, :, :, :] for t in x]
    torch.testing.assert_close(csrc.wkv7(*views, backend="compiled").cpu(), y_bwd_ref, **WKV_TOL[torch.float32])
    # reverse=True (flipped copies on CUDA) equals the backward direction in token order
    y_rev = csrc.wkv7(*cuda(x), backend="compiled", reverse=True).cpu()
    torch.testing.assert_close(y_rev, y_bwd_ref.flip(1), **WKV_TOL[torch.float32])


@pytest.mark.parametrize("op", WKV_OPS)
def test_wkv_cuda_empty_sequence_keeps_the_state(op):
    x = cuda(wkv_inputs(op, 2, 0, 3, 64, torch.float32))
    s0 = torch.randn(2, 3, 64, 64, device="cuda")
    y, s = WKV_OPS[op](*x, state=s0, return_state=True, backend="compiled")
    assert y.shape == (2, 0, 3, 64)
    torch.testing.assert_close(s, s0, atol=0, rtol=0)


@pytest.mark.parametrize("op", WKV_OPS)
def test_wkv_cuda_equals_the_cpu_kernel(op):
    x = wkv_inputs(op, 2, 100, 6, 64, torch.float32)
    torch.testing.assert_close(WKV_OPS[op](*cuda(x), backend="compiled").cpu(),
                               WKV_OPS[op](*x, backend="compiled"), **WKV_TOL[torch.float32])


@pytest.mark.parametrize("op", WKV_OPS)
def test_wkv_cuda_head_size_above_its_limit(op):
    """N = 160 > 128: "auto" runs the reference on the GPU, "compiled" says why not."""
    x = cuda(wkv_inputs(op, 1, 5, 1, 160, torch.float32))
    y = WKV_OPS[op](*x)  # auto
    torch.testing.assert_close(y, WKV_OPS[op](*x, backend="reference"))
    with pytest.raises(ValueError, match="CUDA kernel takes head sizes up to 128, got 160"):
        WKV_OPS[op](*x, backend="compiled")


# ------------------------------------------------------------------------------------------ selective scan

def ss_inputs(batch, dim, dstate, length, dtype, full=True):
    kw = kernel_cases.selective_scan_inputs(batch, dim, dstate, length)(dtype)
    if not full:
        for name in ("z", "D", "delta_bias"):
            kw[name] = None
        kw["delta_softplus"] = False
        kw["delta"] = kw["delta"].float().sigmoid().to(dtype)  # positive steps without the softplus
    return kw


SS_SHAPES = [  # (batch, channels, d_state, length)
    (1, 1, 16, 1),
    (1, 2, 16, 5000),   # three chunks of 2048 steps, the last one partial
    (1, 2, 16, 1100),   # one chunk of 2048 steps, mostly past the end
    (2, 3, 16, 700),    # two warps of 16 steps (the block's shapes change at 128, 256, 512 and 1024 steps)
    (2, 3, 16, 200),
    (2, 5, 16, 37),
    (2, 7, 8, 100),
    (1, 3, 24, 65),     # d_state not a power of two
    (2, 4, 64, 33),     # more states than a one-warp group has threads (its carries loop over them)
    (2, 384, 16, 513),  # AuM-tiny
]


@DTYPES
@pytest.mark.parametrize("full", [True, False], ids=["z-D-bias-softplus", "bare"])
@pytest.mark.parametrize("shape", SS_SHAPES, ids=lambda s: "B{}D{}N{}L{}".format(*s))
def test_selective_scan_cuda_equals_reference(shape, dtype, full):
    kw = ss_inputs(*shape, dtype, full)
    g = torch.Generator().manual_seed(2)
    kw["state"] = torch.randn(shape[0], shape[1], shape[2], generator=g) * 0.1
    y_ref, h_ref = csrc.selective_scan(**kw, return_state=True, backend="reference")
    y, h = csrc.selective_scan(**cuda(kw), return_state=True, backend="compiled")
    assert y.is_cuda and y.dtype == dtype and h.dtype == torch.float32
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    scaled_close(y, y_ref, **tol)
    scaled_close(h, h_ref, rtol=1e-4, atol=1e-4)


def test_selective_scan_cuda_long_and_chunked():
    kw = ss_inputs(1, 48, 16, 4096, torch.float32)
    y_ref, h_ref = csrc.selective_scan(**kw, return_state=True, backend="reference")
    kw = cuda(kw)
    y, h = csrc.selective_scan(**kw, return_state=True, backend="compiled")
    scaled_close(y, y_ref, rtol=1e-4, atol=1e-4)
    scaled_close(h, h_ref, rtol=1e-4, atol=1e-4)

    def run(lo, hi, state):
        part = dict(kw, **{n: kw[n][..., lo:hi] for n in ("u", "delta", "z", "B", "C")})
        return csrc.selective_scan(**part, state=state, return_state=True, backend="compiled")

    ys, state = run_in_chunks(run, [(0, 1000), (1000, 1001), (1001, 4096)])
    # Not bit for bit: the kernel splits time over a thread block, so where a call starts changes how
    # the float32 products are grouped (measured differences are a few ulp).
    scaled_close(torch.cat(ys, dim=-1), y, rtol=1e-5, atol=1e-6)
    scaled_close(state, h, rtol=1e-5, atol=1e-6)


def test_selective_scan_cuda_fo_bi_on_flipped_views():
    """AuM's backward direction: time-flipped (non-contiguous) inputs, as the module passes them."""
    kw = ss_inputs(2, 32, 16, 77, torch.float32)
    flipped = {n: (v.flip(-1) if n in ("u", "delta", "z", "B", "C") else v) for n, v in kw.items()}
    want = csrc.selective_scan(**flipped, backend="reference")
    got_views = {n: (v.cuda().flip(-1) if n in ("u", "delta", "z", "B", "C") else cuda(v)) for n, v in kw.items()}
    scaled_close(csrc.selective_scan(**got_views, backend="compiled"), want, rtol=1e-4, atol=1e-4)
    # reverse=True (flipped copies on CUDA) equals the backward direction in step order
    got_rev = csrc.selective_scan(**cuda(kw), backend="compiled", reverse=True)
    scaled_close(got_rev, want.flip(-1), rtol=1e-4, atol=1e-4)


def test_selective_scan_cuda_mixed_dtypes():
    """bfloat16 u, delta and z with float32 B and C: the kernel reads all of them in one dtype (float32 here)."""
    kw = ss_inputs(2, 8, 16, 300, torch.bfloat16)
    kw["B"], kw["C"] = kw["B"].float() * 1.001, kw["C"].float() * 1.001  # not representable in bfloat16
    want = csrc.selective_scan(**kw, backend="reference")
    got = csrc.selective_scan(**cuda(kw), backend="compiled")
    assert got.dtype == torch.bfloat16
    scaled_close(got, want, rtol=1e-2, atol=1e-2)


def test_selective_scan_cuda_zero_length_and_large_d_state():
    kw = cuda(ss_inputs(2, 3, 16, 0, torch.float32))
    kw["state"] = torch.randn(2, 3, 16, device="cuda")
    y, h = csrc.selective_scan(**kw, return_state=True, backend="compiled")
    assert y.shape == (2, 3, 0)
    torch.testing.assert_close(h, kw["state"], atol=0, rtol=0)
    big = cuda(ss_inputs(1, 2, 80, 9, torch.float32))
    torch.testing.assert_close(csrc.selective_scan(**big), csrc.selective_scan(**big, backend="reference"))
    with pytest.raises(ValueError, match="CUDA kernel takes d_state up to 64, got 80"):
        csrc.selective_scan(**big, backend="compiled")


# ------------------------------------------------------------------------------------------------ mLSTM

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


@DTYPES
@pytest.mark.parametrize("shape", MLSTM_SHAPES, ids=lambda s: "B{}H{}T{}DH{}".format(*s))
def test_mlstm_cuda_equals_official_parallel_form(shape, dtype):
    kw = mlstm_inputs(*shape, dtype)
    want = csrc.mlstm_parallel_reference(**kw)
    got = csrc.mlstm(**cuda(kw), backend="compiled")
    assert got.is_cuda and got.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    scaled_close(got, want, **tol)


def test_mlstm_cuda_state_value_width_and_chunks():
    """A value width unlike q/k's, an initial state, and chunks with the state carried (bit for bit)."""
    kw = mlstm_inputs(2, 2, 90, 40, torch.float32, DV=72)
    first = {n: v[:, :, :30] for n, v in kw.items()}
    _, state = csrc.mlstm(**first, return_state=True, backend="reference")
    rest = {n: v[:, :, 30:] for n, v in kw.items()}
    h_ref, (C_ref, n_ref, m_ref) = csrc.mlstm(**rest, state=state, return_state=True, backend="reference")
    h, (C, n, m) = csrc.mlstm(**cuda(rest), state=cuda(state), return_state=True, backend="compiled")
    scaled_close(h, h_ref, rtol=1e-4, atol=1e-5)
    for got, want in ((C, C_ref), (n, n_ref), (m, m_ref)):
        scaled_close(got, want, rtol=1e-4, atol=1e-5)
    kw = cuda(kw)
    full, s_full = csrc.mlstm(**kw, return_state=True, backend="compiled")

    def run(lo, hi, st):
        return csrc.mlstm(**{n: v[:, :, lo:hi] for n, v in kw.items()}, state=st, return_state=True,
                          backend="compiled")

    ys, st = run_in_chunks(run, [(0, 45), (45, 46), (46, 90)])
    torch.testing.assert_close(torch.cat(ys, dim=2), full, atol=0, rtol=0)
    for got, want in zip(st, s_full):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_mlstm_cuda_empty_and_wide():
    kw = cuda(mlstm_inputs(1, 2, 0, 32, torch.float32))
    h, (C, n, m) = csrc.mlstm(**kw, return_state=True, backend="compiled")
    assert h.shape == (1, 2, 0, 32) and torch.isinf(m).all() and not C.any() and not n.any()
    wide = cuda(mlstm_inputs(1, 1, 5, 520, torch.float32))
    scaled_close(csrc.mlstm(**wide), csrc.mlstm_parallel_reference(**wide), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="CUDA kernel takes q/k widths up to 512, got 520"):
        csrc.mlstm(**wide, backend="compiled")
