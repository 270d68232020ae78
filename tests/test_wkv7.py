"""The compiled WKV-7 kernel equals the reference recurrence over a sweep of shapes and both dtypes.

Tolerances: float32 outputs within 1e-4 (absolute and relative; the kernel reorders float32 sums and keeps
the state at a per-column scale, which changes roundings only: 2-3e-7 relative in practice);
bfloat16 outputs within 1e-2 (both paths compute in float32 from the same bfloat16 inputs, so they
differ by at most one or two bfloat16 roundings of the output, 2^-8 relative each).
"""

import dataclasses
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import csrc
from _kernel_helpers import (
    DEVICES,
    DTYPES,
    WKV_DEVICE_SHAPES,
    WKV_STATE_TOL,
    WKV_TOL as TOL,
    assert_empty_sequence_keeps_the_state,
    assert_wkv_cuda_checks,
    assert_wkv_compiled_equals_reference,
    assert_wkv_head_groups_equal_reference,
    assert_wkv_long_sequence,
    assert_wkv_on_device_equals_reference,
    restoring_threads,
    needs_cuda,
    run_in_chunks,
    to_device,
)
from benchmarks import kernel_cases
from csrc import dispatch
from csrc import _build

wkv7_module = importlib.import_module("csrc.wkv7")  # the package attribute `csrc.wkv7` is the function


def _inputs(B, T, H, N, dtype=torch.float32, seed=0):
    """Inputs in the ranges A-RWKV produces: w <= -0.5, a = -kappa, b = kappa * a_rate, |kappa| = 1."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    r = torch.randn(shape, generator=g)
    w = -F.softplus(-torch.randn(shape, generator=g) * 2) - 0.5
    k = torch.randn(shape, generator=g) * 0.5
    v = torch.randn(shape, generator=g)
    kappa = F.normalize(torch.randn(shape, generator=g), dim=-1)
    a = -kappa
    b = kappa * torch.rand(shape, generator=g)
    return [x.to(dtype) for x in (r, w, k, v, a, b)]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    return _build.load("wkv7")


SHAPES = [
    (1, 1, 1, 64),  # T = 1
    (2, 37, 3, 64),  # odd T, batch > 1, several heads (A-RWKV tiny has 3 heads)
    (1, 61, 2, 64),  # T not a multiple of 16
    (3, 16, 2, 32),  # another compiled head size
    (2, 17, 2, 20),  # a head size without a specialised path
    (1, 9, 1, 128),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}T{t}H{h}N{n}" for b, t, h, n in SHAPES])
def test_compiled_equals_reference(shape, dtype):
    assert_wkv_compiled_equals_reference(csrc.wkv7, _inputs(*shape, dtype=dtype), shape, dtype)


def test_head_groups_with_uneven_sizes_and_thread_counts():
    assert_wkv_head_groups_equal_reference(csrc.wkv7, lambda B, T, H, N: _inputs(B, T, H, N))


def test_zero_state_is_the_default():
    x = _inputs(2, 11, 2, 64)
    zeros = torch.zeros(2, 2, 64, 64)
    torch.testing.assert_close(csrc.wkv7(*x, backend="compiled"), csrc.wkv7(*x, state=zeros, backend="compiled"))


def test_long_sequence_t8192():
    """T = 8192 against the reference (B = H = 1 keeps the reference loop to about a second)."""
    assert_wkv_long_sequence(csrc.wkv7, _inputs(1, 8192, 1, 64, seed=3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_with_carried_state_equals_one_pass(dtype):
    x = _inputs(2, 100, 3, 64, dtype=dtype, seed=4)
    full, s_full = csrc.wkv7(*x, return_state=True, backend="compiled")
    ys, state = run_in_chunks(
        lambda lo, hi, s: csrc.wkv7(*(t[:, lo:hi] for t in x), state=s, return_state=True, backend="compiled"),
        [(0, 1), (1, 38), (38, 64), (64, 100)],
    )
    # each chunk's last step folds the state's scale back in (csrc/wkv7_cpu.cpp), so equal to rounding
    torch.testing.assert_close(torch.cat(ys, dim=1), full, **TOL[dtype])
    torch.testing.assert_close(state, s_full, **WKV_STATE_TOL)


@pytest.mark.parametrize("decay", [0.5, 1e-30, "mixed"])
def test_scaled_state_folds_match_the_reference(decay):
    """The kernel keeps the state at a per-column scale, the product of the decays since its last fold,
    and folds when a lane of that product would fall below 2^-24.  Decays of 0.5 fold every 25 steps,
    decays of 1e-30 (far below anything A-RWKV makes) at every step, and decays near 1 with a rare one
    near 0 fold at a fifth of the steps, for one column's sake, while between folds every column carries
    its scale: all equal the reference (without the folds the scale underflows and the output is NaN),
    the decays near 1 to within 2e-6 of max|y|."""
    B, T, H, N = 2, 70, 2, 64
    x = _inputs(B, T, H, N, seed=12)
    if decay == "mixed":
        g = torch.Generator().manual_seed(13)
        tiny = torch.rand(B, T, H, N, generator=g) < 0.003  # decay exp(-e^4.2) = 1e-29
        w = torch.where(tiny, torch.full_like(x[1], 4.2), x[1] - 6.0)  # else decays of 0.998 and more
        folding_steps = tiny.any(-1).float().mean().item()
        assert 0.05 < folding_steps < 0.5
    else:
        w = torch.full_like(x[1], math.log(-math.log(decay)))  # exp(-exp(w)) = decay
        assert torch.allclose(torch.exp(-torch.exp(w)), torch.tensor(decay), rtol=1e-5)
    x[1] = w
    s0 = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(14)) * 0.1
    y_ref, s_ref = csrc.wkv7(*x, state=s0, return_state=True, backend="reference")
    with restoring_threads():
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            y, s = csrc.wkv7(*x, state=s0, return_state=True, backend="compiled")
            assert torch.isfinite(y).all() and torch.isfinite(s).all()
            # relative to the largest value, as for long sequences (decays near 1 let the state grow to
            # ~100): within 2e-6 here (0.1-5e-7 measured).  Decays near 1 computed with a floor-reduced
            # exp, 2-3 ulp off, were 4e-6 off (wkv_decay16 in csrc/simd.h)
            assert (y - y_ref).abs().max() <= 2e-6 * y_ref.abs().max()
            assert (s - s_ref).abs().max() <= 2e-6 * s_ref.abs().max()


def test_bidirectional_use_on_flipped_and_strided_inputs():
    """The official A-RWKV scans [X; flip_T(X)] as one batch of 2B (hearscan's uses reverse=True, tested
    below); that and views that are not contiguous work."""
    B, T, H, N = 2, 29, 3, 64
    x = _inputs(B, T, H, N, seed=5)
    # (B, H, T, N) storage seen as (B, T, H, N): a non-contiguous view, as after a head transpose
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in x]
    assert not strided[0].is_contiguous()
    backward = [t.flip(1) for t in strided]
    both = [torch.cat([f, bwd]) for f, bwd in zip(strided, backward)]
    y_both = csrc.wkv7(*both, backend="compiled")
    y_fwd_ref = csrc.wkv7(*x, backend="reference")
    y_bwd_ref = csrc.wkv7(*(t.flip(1) for t in x), backend="reference")
    torch.testing.assert_close(y_both[:B], y_fwd_ref, **TOL[torch.float32])
    torch.testing.assert_close(y_both[B:], y_bwd_ref, **TOL[torch.float32])
    # the flipped copy of a strided view, fed on its own
    torch.testing.assert_close(csrc.wkv7(*backward, backend="compiled"), y_bwd_ref, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_reverse_is_the_scan_of_the_flipped_sequence(dtype):
    """reverse=True (A-RWKV's backward direction without flipped copies) reads the tokens last to first:
    bit for bit the forward kernel on flipped inputs, flipped back, and the reference's reverse, for the
    fixed head sizes and the generic one (48), token blocks crossed, uneven head groups, 1-3 threads."""
    with restoring_threads():
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            for B, T, H, N in ((2, 1, 3, 64), (1, 40, 5, 64), (3, 19, 2, 32), (2, 21, 2, 48)):
                x = _inputs(B, T, H, N, dtype=dtype, seed=7)
                s0 = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(8)) * 0.1
                y, s = csrc.wkv7(*x, state=s0, return_state=True, backend="compiled", reverse=True)
                flipped = [t.flip(1) for t in x]
                y_flip, s_flip = csrc.wkv7(*flipped, state=s0, return_state=True, backend="compiled")
                torch.testing.assert_close(y, y_flip.flip(1), atol=0, rtol=0)
                torch.testing.assert_close(s, s_flip, atol=0, rtol=0)
                y_ref, s_ref = csrc.wkv7(*x, state=s0, return_state=True, backend="reference", reverse=True)
                torch.testing.assert_close(y, y_ref, **TOL[dtype])
                torch.testing.assert_close(s, s_ref, **WKV_STATE_TOL)


def test_reverse_by_flipped_copies_for_kernels_without_it(monkeypatch):
    """The CUDA kernel has no reverse: the binding flips the inputs and the output instead.  That path,
    taken here by the CPU kernel, gives the same result and state as the CPU kernel's own reverse."""
    x = _inputs(2, 37, 3, 64, seed=10)
    s0 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11)) * 0.1
    y, s = csrc.wkv7(*x, state=s0, return_state=True, backend="compiled", reverse=True)
    cpu = dispatch.kernel_for("wkv7", "cpu")
    with dispatch.registered(dataclasses.replace(cpu, reverse=False)):
        y_flip, s_flip = csrc.wkv7(*x, state=s0, return_state=True, backend="compiled", reverse=True)
    torch.testing.assert_close(y_flip, y, atol=0, rtol=0)
    torch.testing.assert_close(s_flip, s, atol=0, rtol=0)


def test_reverse_in_chunks_last_chunk_first_equals_one_pass():
    """A long recording scanned backwards in chunks: the last chunk first, its state carried to the one
    before it."""
    x = _inputs(2, 100, 3, 64, seed=9)
    full, s_full = csrc.wkv7(*x, return_state=True, backend="compiled", reverse=True)
    ys, state = run_in_chunks(
        lambda lo, hi, s: csrc.wkv7(*(t[:, lo:hi] for t in x), state=s, return_state=True, backend="compiled",
                                    reverse=True),
        [(64, 100), (38, 64), (37, 38), (0, 37)],
    )
    torch.testing.assert_close(torch.cat(ys[::-1], dim=1), full, **TOL[torch.float32])
    torch.testing.assert_close(state, s_full, **WKV_STATE_TOL)


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_empty_sequence_returns_empty_output_and_the_state(backend):
    x = _inputs(2, 0, 3, 64)
    assert_empty_sequence_keeps_the_state(csrc.wkv7, x, torch.randn(2, 3, 64, 64), backend)
    y, s = csrc.wkv7(*x, return_state=True, backend=backend)
    assert y.shape == (2, 0, 3, 64) and torch.count_nonzero(s) == 0


def test_bad_inputs_give_clear_errors():
    x = _inputs(1, 5, 2, 64)
    with pytest.raises(ValueError, match="k has shape"):
        csrc.wkv7(x[0], x[1], x[2][:, :4], *x[3:])
    with pytest.raises(ValueError, match=r"r must be \(B, T, H, N\)"):
        csrc.wkv7(*(t[0] for t in x))
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        csrc.wkv7(*(t.half() for t in x))
    with pytest.raises(TypeError, match="v is torch.bfloat16 but r is torch.float32"):
        csrc.wkv7(*x[:3], x[3].bfloat16(), *x[4:])
    with pytest.raises(ValueError, match="state has shape"):
        csrc.wkv7(*x, state=torch.zeros(1, 2, 64, 32))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        csrc.wkv7(*x[:5], x[5].numpy())
    with pytest.raises(ValueError, match="unknown scan backend"):
        csrc.wkv7(*x, backend="fast")


def test_backend_selected_by_argument_or_environment(monkeypatch):
    x = _inputs(1, 3, 1, 64)
    monkeypatch.setattr(wkv7_module, "wkv7_reference", lambda *args, **kwargs: "reference was called")
    monkeypatch.setenv("HEARSCAN_SCAN_BACKEND", "reference")
    assert csrc.wkv7(*x) == "reference was called"
    assert isinstance(csrc.wkv7(*x, backend="compiled"), torch.Tensor)  # the argument wins
    monkeypatch.setenv("HEARSCAN_SCAN_BACKEND", "auto")
    assert isinstance(csrc.wkv7(*x), torch.Tensor)  # auto picks the compiled kernel when it builds


def test_inputs_requiring_grad_use_the_differentiable_reference():
    x = [t.requires_grad_() for t in _inputs(1, 6, 2, 64)]
    with pytest.warns(UserWarning, match="requires grad"):
        y = csrc.wkv7(*x)  # auto: falls back to the reference, which autograd can differentiate
    y.sum().backward()
    assert x[0].grad is not None
    with pytest.raises(ValueError, match="forward-only"):
        csrc.wkv7(*x, backend="compiled")
    with torch.no_grad():
        y_ng = csrc.wkv7(*x, backend="compiled")
    torch.testing.assert_close(y_ng, y.detach(), **TOL[torch.float32])


# --- on each device: the CPU always, CUDA when present (the CUDA kernel: csrc/wkv7_cuda.cu) -----------

def device_inputs(B, T, H, N, dtype):
    """Positional inputs of csrc.wkv7 ("r", "w", "k", "v", "a", "b"), in the models' ranges."""
    x = kernel_cases.wkv7_inputs(B, T, H, N, dtype)
    return [x[name] for name in ("r", "w", "k", "v", "a", "b")]


@pytest.mark.parametrize("device", DEVICES)
@DTYPES
@pytest.mark.parametrize("shape", WKV_DEVICE_SHAPES, ids=lambda s: "B{}T{}H{}N{}".format(*s))
def test_compiled_on_each_device_equals_reference(shape, dtype, device):
    assert_wkv_on_device_equals_reference(csrc.wkv7, device_inputs, shape, dtype, device)


@needs_cuda
def test_cuda_long_chunked_empty_and_limits():
    assert_wkv_cuda_checks(csrc.wkv7, device_inputs, per_token=6)


@needs_cuda
def test_wkv7_cuda_bidirectional_on_flipped_views():
    """A-RWKV's use: [X; flip(X)] through one call, and a time-flipped (non-contiguous) view directly."""
    x = device_inputs(2, 45, 3, 64, torch.float32)
    flipped = [t.flip(1) for t in x]
    both = to_device([torch.cat([a, b]) for a, b in zip(x, flipped)])
    y = csrc.wkv7(*both, backend="compiled").cpu()
    torch.testing.assert_close(y[:2], csrc.wkv7(*x, backend="reference"), **TOL[torch.float32])
    y_bwd_ref = csrc.wkv7(*flipped, backend="reference")
    torch.testing.assert_close(y[2:], y_bwd_ref, **TOL[torch.float32])
    views = [t.to("cuda").flip(1)[:, :, :, :] for t in x]
    torch.testing.assert_close(csrc.wkv7(*views, backend="compiled").cpu(), y_bwd_ref, **TOL[torch.float32])
    # reverse=True (flipped copies on CUDA) equals the backward direction in token order
    y_rev = csrc.wkv7(*to_device(x), backend="compiled", reverse=True).cpu()
    torch.testing.assert_close(y_rev, y_bwd_ref.flip(1), **TOL[torch.float32])
