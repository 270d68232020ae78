"""The compiled WKV-6 kernel equals the reference recurrence over a sweep of shapes and both dtypes.

Tolerances as for WKV-7: float32 outputs within 1e-4 (absolute and relative); bfloat16 outputs within
1e-2 (both paths compute in float32 from the same bfloat16 inputs; the output rounding differs by at
most a bfloat16 unit or two, 2^-8 relative each).
"""

import importlib

import pytest
import torch

import csrc
from benchmarks import kernel_cases
from _kernel_helpers import (
    DEVICES,
    DTYPES,
    needs_cuda,
    WKV_DEVICE_SHAPES,
    WKV_TOL as TOL,
    assert_empty_sequence_keeps_the_state,
    assert_wkv_cuda_checks,
    assert_wkv_compiled_equals_reference,
    assert_wkv_head_groups_equal_reference,
    assert_wkv_long_sequence,
    assert_wkv_on_device_equals_reference,
    run_in_chunks,
)
from csrc import _build

wkv6_module = importlib.import_module("csrc.wkv6")  # the package attribute `csrc.wkv6` is the function


def _inputs(B, T, H, N, dtype=torch.float32, seed=0):
    """RWKV-6-like ranges: w = time_decay + LoRA term around -2..1 (decay 0.07..0.87), u ~ 0.5."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    r = torch.randn(shape, generator=g)
    k = torch.randn(shape, generator=g) * 0.3
    v = torch.randn(shape, generator=g)
    w = torch.randn(shape, generator=g) - 1.0
    u = torch.randn(H, N, generator=g) * 0.5
    return [x.to(dtype) for x in (r, k, v, w)] + [u]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    return _build.load("wkv6")


SHAPES = [
    (1, 1, 1, 64),  # T = 1
    (2, 37, 3, 64),  # odd T, batch > 1, several heads
    (1, 61, 2, 64),  # T not a multiple of 16
    (3, 16, 2, 32),  # another compiled head size
    (2, 17, 2, 20),  # a head size without a specialised path
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{b}T{t}H{h}N{n}" for b, t, h, n in SHAPES])
def test_compiled_equals_reference(shape, dtype):
    assert_wkv_compiled_equals_reference(csrc.wkv6, _inputs(*shape, dtype=dtype), shape, dtype)


def test_head_groups_with_uneven_sizes_and_thread_counts():
    assert_wkv_head_groups_equal_reference(csrc.wkv6, lambda B, T, H, N: _inputs(B, T, H, N))


def test_bfloat16_bonus_is_accepted():
    """u may come in the model's dtype; it is used in float32."""
    x = _inputs(1, 7, 2, 64)
    y32 = csrc.wkv6(*x[:4], x[4].bfloat16().float(), backend="compiled")
    torch.testing.assert_close(csrc.wkv6(*x[:4], x[4].bfloat16(), backend="compiled"), y32, atol=0, rtol=0)


def test_long_sequence_t8192():
    """T = 8192 against the reference (B = H = 1 keeps the reference loop to about a second)."""
    assert_wkv_long_sequence(csrc.wkv6, _inputs(1, 8192, 1, 64, seed=3))


def test_decays_near_one_keep_their_accuracy():
    """Long-memory channels: decays mostly of 0.99 and more (0.92-0.99999) over 500 steps, where the
    state grows to ~100 and an error of a few ulp in each decay adds up over the hundreds of steps a
    channel remembers.  Within 3e-6 of max|y| of the reference (8e-7 measured; a decay exp reduced with
    floor, 2-3 ulp off near 1, was 2e-5 off: wkv_decay16 in csrc/simd.h)."""
    x = _inputs(2, 500, 2, 64, seed=3)
    x[3] = x[3] - 6.0  # w around -7: decays exp(-exp(w)) mostly of 0.99 and more
    y, y_ref = csrc.wkv6(*x, backend="compiled"), csrc.wkv6(*x, backend="reference")
    assert (y - y_ref).abs().max() <= 3e-6 * y_ref.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_chunked_with_carried_state_equals_one_pass(dtype):
    x = _inputs(2, 100, 3, 64, dtype=dtype, seed=4)
    full, s_full = csrc.wkv6(*x, return_state=True, backend="compiled")
    ys, state = run_in_chunks(
        lambda lo, hi, s: csrc.wkv6(*(t[:, lo:hi] for t in x[:4]), x[4], state=s, return_state=True,
                                    backend="compiled"),
        [(0, 1), (1, 38), (38, 64), (64, 100)],
    )
    torch.testing.assert_close(torch.cat(ys, dim=1), full, atol=0, rtol=0)
    torch.testing.assert_close(state, s_full, atol=0, rtol=0)


def test_strided_and_flipped_inputs():
    B, T, H, N = 2, 29, 3, 64
    x = _inputs(B, T, H, N, seed=5)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in x[:4]]
    assert not strided[0].is_contiguous()
    y_ref = csrc.wkv6(*x, backend="reference")
    torch.testing.assert_close(csrc.wkv6(*strided, x[4], backend="compiled"), y_ref, **TOL[torch.float32])
    y_bwd_ref = csrc.wkv6(*(t.flip(1) for t in x[:4]), x[4], backend="reference")
    y_bwd = csrc.wkv6(*(t.flip(1) for t in strided), x[4], backend="compiled")
    torch.testing.assert_close(y_bwd, y_bwd_ref, **TOL[torch.float32])


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_empty_sequence_returns_empty_output_and_the_state(backend):
    assert_empty_sequence_keeps_the_state(csrc.wkv6, _inputs(2, 0, 3, 64), torch.randn(2, 3, 64, 64), backend)


def test_bad_inputs_give_clear_errors():
    x = _inputs(1, 5, 2, 64)
    r, k, v, w, u = x
    with pytest.raises(ValueError, match="v has shape"):
        csrc.wkv6(r, k, v[:, :4], w, u)
    with pytest.raises(ValueError, match=r"u has shape \(64,\), expected \(H, N\) = \(2, 64\)"):
        csrc.wkv6(r, k, v, w, u[0])
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        csrc.wkv6(r.double(), k.double(), v.double(), w.double(), u)
    with pytest.raises(TypeError, match="w is torch.bfloat16 but r is torch.float32"):
        csrc.wkv6(r, k, v, w.bfloat16(), u)
    with pytest.raises(ValueError, match="state has shape"):
        csrc.wkv6(*x, state=torch.zeros(2, 2, 64, 64))


def test_backend_selected_by_argument_or_environment(monkeypatch):
    x = _inputs(1, 3, 1, 64)
    monkeypatch.setattr(wkv6_module, "wkv6_reference", lambda *args, **kwargs: "reference was called")
    monkeypatch.setenv("HEARSCAN_SCAN_BACKEND", "reference")
    assert csrc.wkv6(*x) == "reference was called"
    assert isinstance(csrc.wkv6(*x, backend="compiled"), torch.Tensor)


def test_inputs_requiring_grad_use_the_differentiable_reference():
    x = _inputs(1, 6, 2, 64)
    x[4].requires_grad_()
    with pytest.warns(UserWarning, match="requires grad"):
        y = csrc.wkv6(*x)
    y.sum().backward()
    assert x[4].grad is not None
    with pytest.raises(ValueError, match="forward-only"):
        csrc.wkv6(*x, backend="compiled")
    with torch.inference_mode():
        torch.testing.assert_close(csrc.wkv6(*x, backend="compiled"), y.detach(), **TOL[torch.float32])


# --- on each device: the CPU always, CUDA when present (the CUDA kernel: csrc/wkv6_cuda.cu) -----------

def device_inputs(B, T, H, N, dtype):
    """Positional inputs of csrc.wkv6 ("r", "k", "v", "w", "u"), in the models' ranges."""
    x = kernel_cases.wkv6_inputs(B, T, H, N, dtype)
    return [x[name] for name in ("r", "k", "v", "w", "u")]


@pytest.mark.parametrize("device", DEVICES)
@DTYPES
@pytest.mark.parametrize("shape", WKV_DEVICE_SHAPES, ids=lambda s: "B{}T{}H{}N{}".format(*s))
def test_compiled_on_each_device_equals_reference(shape, dtype, device):
    assert_wkv_on_device_equals_reference(csrc.wkv6, device_inputs, shape, dtype, device)


@needs_cuda
def test_cuda_long_chunked_empty_and_limits():
    assert_wkv_cuda_checks(csrc.wkv6, device_inputs, per_token=4)
