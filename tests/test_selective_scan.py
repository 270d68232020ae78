"""The compiled selective scan equals its reference recurrence (csrc/selective_scan.py).

Tolerances, per dtype (the kernel and the reference both compute in float32 from the same inputs):
- float32: rtol 1e-4, atol 1e-4 (outputs reach ~200 here; the observed max error is ~1-2e-7 * max|y|:
  the kernel's exp/softplus are polynomial approximations accurate to ~1e-7); state rtol/atol 1e-4.
- bfloat16: outputs are rounded to bfloat16 once, so they may differ by one bfloat16 ulp
  (2^-8 relative): rtol 1e-2, atol 1e-2; the float32 state as for float32.
"""

import importlib

import pytest
import torch

import dataclasses

import csrc
from benchmarks import kernel_cases
from csrc import dispatch
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

ss_mod = importlib.import_module("csrc.selective_scan")  # the package re-exports the function under this name

HAVE_KERNEL, needs_kernel = kernel_marker("selective_scan")

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
STATE_TOL = dict(rtol=1e-4, atol=1e-4)


def make_inputs(batch, dim, dstate, length, dtype=torch.float32, seed=0, full=True):
    """Mamba-like inputs: A = -exp(A_log) < 0, delta around softplus(-2 + bias)."""
    g = torch.Generator().manual_seed(seed)
    kw = {
        "u": torch.randn(batch, dim, length, generator=g).to(dtype),
        "delta": (torch.randn(batch, dim, length, generator=g) * 2 - 1).to(dtype),
        "A": -torch.exp(torch.randn(dim, dstate, generator=g)),
        "B": torch.randn(batch, dstate, length, generator=g).to(dtype),
        "C": torch.randn(batch, dstate, length, generator=g).to(dtype),
    }
    if full:
        kw.update(
            D=torch.randn(dim, generator=g),
            z=torch.randn(batch, dim, length, generator=g).to(dtype),
            delta_bias=torch.randn(dim, generator=g) * 0.5,
            delta_softplus=True,
        )
    else:  # without softplus delta must be positive to be a step size
        kw["delta"] = kw["delta"].float().abs().to(dtype)
    return kw


def run_both(kw, **extra):
    got = csrc.selective_scan(**kw, **extra, backend="compiled")
    want = csrc.selective_scan(**kw, **extra, backend="reference")
    return got, want


SHAPES = [  # (batch, channels, d_state, length)
    (1, 1, 1, 1),        # T = 1
    (2, 5, 16, 1),
    (2, 37, 16, 37),     # odd T, channels not a multiple of the 16-channel block
    (3, 16, 16, 100),    # T not a multiple of 16, several time segments of the kernel
    (2, 48, 16, 129),
    (1, 20, 4, 255),     # small d_state
    (2, 8, 33, 70),      # d_state not a power of two
]


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}xD{}xN{}xL{}".format(*s))
@pytest.mark.parametrize("full", [True, False], ids=["D-z-bias-softplus", "plain"])
def test_compiled_equals_reference(shape, dtype, full):
    kw = make_inputs(*shape, dtype=dtype, full=full)
    kw["state"] = torch.randn(shape[0], shape[1], shape[2])
    (y, h), (y_ref, h_ref) = run_both(kw, return_state=True)
    assert y.dtype == dtype and h.dtype == torch.float32
    assert y.shape == y_ref.shape and h.shape == h_ref.shape
    torch.testing.assert_close(y.float(), y_ref.float(), **TOL[dtype])
    torch.testing.assert_close(h, h_ref, **STATE_TOL)


@needs_kernel
def test_aum_shape_float32():
    """One AuM-small layer's scan (d_inner 768, 513 tokens)."""
    kw = make_inputs(1, 768, 16, 513, seed=1)
    y, y_ref = run_both(kw)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float32])


@needs_kernel
@pytest.mark.parametrize("d_state", [16, 5], ids=["dstate16", "dstate5"])
def test_nan_propagates_like_the_reference(d_state):
    """A NaN in A or delta must reach the same outputs as in the reference, not be clamped into a decay."""
    kw = make_inputs(1, 20, d_state, 33, seed=4)
    kw["A"][3, 2] = float("nan")
    kw["delta"][0, 11, 7] = float("nan")
    y, y_ref = run_both(kw)
    assert torch.isnan(y_ref).any()
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gates_at_extreme_inputs(dtype):
    """softplus and silu are vectorised approximations in the kernel: every regime of theirs (softplus's
    threshold at 20, silu's capped e^-z below -80, underflowing and overflowing exponentials, a NaN in z)
    must match the reference, over a length that is not a multiple of 16."""
    kw = make_inputs(2, 19, 16, 45, dtype=dtype, seed=9)
    extremes = torch.tensor([-100.0, -80.5, -30.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 19.99, 20.01, 30.0, 100.0])
    n = extremes.numel()
    kw["delta"][0, :, :n] = extremes.to(dtype)  # delta + bias spans softplus's regimes
    kw["delta_bias"][:] = 0.0
    kw["z"][1, :, :n] = extremes.to(dtype)
    kw["z"][1, 3, 20] = float("nan")
    y, y_ref = run_both(kw)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref)) and torch.isnan(y_ref).any()
    finite = ~torch.isnan(y_ref)
    torch.testing.assert_close(y[finite], y_ref[finite], **TOL[dtype])


@needs_kernel
def test_long_sequence():
    """T = 8192 (few channels to bound the reference's cost); the state must not drift."""
    kw = make_inputs(1, 3, 16, 8192, seed=2)
    (y, h), (y_ref, h_ref) = run_both(kw, return_state=True)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float32])
    torch.testing.assert_close(h, h_ref, **STATE_TOL)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_with_carried_state_equals_one_pass(dtype):
    kw = make_inputs(2, 21, 16, 150, dtype=dtype, seed=3)
    full, h_full = csrc.selective_scan(**kw, return_state=True, backend="compiled")

    def run(lo, hi, state):
        part = {k: (v[..., lo:hi] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        return csrc.selective_scan(**part, state=state, return_state=True, backend="compiled")

    outs, state = run_in_chunks(run, [(0, 1), (1, 38), (38, 150)])
    torch.testing.assert_close(torch.cat(outs, dim=-1), full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, h_full, rtol=1e-6, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}xD{}xN{}xL{}".format(*s))
def test_reverse_is_the_scan_of_the_flipped_sequence(shape, dtype):
    """reverse=True (AuM's backward direction without flipped copies) reads u, delta, z backwards and
    writes the output in step order: bit for bit the kernel on flipped inputs, flipped back, with the
    same final state; and equal to the reference's reverse."""
    kw = make_inputs(*shape, dtype=dtype, seed=11)
    state = torch.randn(shape[0], shape[1], shape[2], generator=torch.Generator().manual_seed(12)) * 0.1
    y, h = csrc.selective_scan(**kw, state=state, return_state=True, backend="compiled", reverse=True)
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
    y_flip, h_flip = csrc.selective_scan(**flipped, state=state, return_state=True, backend="compiled")
    torch.testing.assert_close(y, y_flip.flip(-1), atol=0, rtol=0)
    torch.testing.assert_close(h, h_flip, atol=0, rtol=0)
    y_ref = csrc.selective_scan(**kw, state=state, backend="reference", reverse=True)
    torch.testing.assert_close(y.float(), y_ref.float(), **TOL[dtype])


@needs_kernel
def test_reverse_by_flipped_copies_for_kernels_without_it(monkeypatch):
    """The CUDA kernel has no reverse: the binding flips u, delta, z (and B, C in their transposed copy)
    and the output instead.  That path, taken here by the CPU kernel, equals the CPU kernel's reverse."""
    kw = make_inputs(2, 21, 16, 70, seed=14)
    state = torch.randn(2, 21, 16, generator=torch.Generator().manual_seed(15)) * 0.1
    y, h = csrc.selective_scan(**kw, state=state, return_state=True, backend="compiled", reverse=True)
    cpu = dispatch.kernel_for("selective_scan", "cpu")
    with dispatch.registered(dataclasses.replace(cpu, reverse=False)):
        y_flip, h_flip = csrc.selective_scan(**kw, state=state, return_state=True, backend="compiled", reverse=True)
    torch.testing.assert_close(y_flip, y, atol=0, rtol=0)
    torch.testing.assert_close(h_flip, h, atol=0, rtol=0)


@needs_kernel
def test_reverse_in_chunks_last_chunk_first_equals_one_pass():
    kw = make_inputs(2, 21, 16, 150, seed=13)
    full, h_full = csrc.selective_scan(**kw, return_state=True, backend="compiled", reverse=True)

    def run(lo, hi, state):
        part = {k: (v[..., lo:hi] if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
        return csrc.selective_scan(**part, state=state, return_state=True, backend="compiled", reverse=True)

    outs, state = run_in_chunks(run, [(38, 150), (1, 38), (0, 1)])
    torch.testing.assert_close(torch.cat(outs[::-1], dim=-1), full, atol=0, rtol=0)
    torch.testing.assert_close(state, h_full, atol=0, rtol=0)


@needs_kernel
def test_zero_length_passes_state_through():
    kw = make_inputs(2, 3, 4, 0)
    state = torch.randn(2, 3, 4)
    y, h = csrc.selective_scan(**kw, state=state, return_state=True, backend="compiled")
    assert y.shape == (2, 3, 0)
    torch.testing.assert_close(h, state)


# --- AuM's bidirectional schemes: two causal calls, the second on time-flipped inputs ------------------

def flip(x):
    return x.flip(-1)


def fo_bi(kw, A_b, backend):
    """Fo-Bi ('v1'): the backward scan reuses delta, B, C, D, z (time-flipped) with its own A_b."""
    y_f = csrc.selective_scan(**kw, backend=backend)
    back = {k: (flip(v) if k in ("u", "delta", "z", "B", "C") else v) for k, v in kw.items()}
    back["A"] = A_b
    return y_f + flip(csrc.selective_scan(**back, backend=backend))


def bi_bi(kw_f, kw_b, backend):
    """Bi-Bi ('v2'): separate everything; the backward inputs come from the flipped sequence."""
    y_f = csrc.selective_scan(**kw_f, backend=backend)
    y_b = csrc.selective_scan(**{k: (flip(v) if k in ("u", "delta", "z", "B", "C") else v)
                                 for k, v in kw_b.items()}, backend=backend)
    return (y_f + flip(y_b)) / 2


def strided_views(kw):
    """The layouts AuM produces: (B, L, D) projections seen as (B, D, L) -> non-contiguous inputs."""
    return {k: (v.transpose(1, 2).contiguous().transpose(1, 2) if k in ("u", "delta", "z", "B", "C") else v)
            for k, v in kw.items()}


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fo_bi_composition(dtype):
    kw = strided_views(make_inputs(2, 40, 16, 65, dtype=dtype, seed=4))
    assert not kw["u"].is_contiguous()
    A_b = -torch.exp(torch.randn(40, 16))
    got, want = fo_bi(kw, A_b, "compiled"), fo_bi(kw, A_b, "reference")
    torch.testing.assert_close(got.float(), want.float(), **{k: 2 * v for k, v in TOL[dtype].items()})


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bi_bi_composition(dtype):
    kw_f = strided_views(make_inputs(2, 40, 16, 65, dtype=dtype, seed=5))
    kw_b = make_inputs(2, 40, 16, 65, dtype=dtype, seed=6)
    got, want = bi_bi(kw_f, kw_b, "compiled"), bi_bi(kw_f, kw_b, "reference")
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@needs_kernel
def test_bidirectional_output_sees_the_future():
    """Independent check of the flip convention: the backward output at t depends on inputs >= t only."""
    kw = make_inputs(1, 4, 16, 30, seed=7)
    A_b = -torch.exp(torch.randn(4, 16))
    y = fo_bi(kw, A_b, "compiled")
    kw2 = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    kw2["u"][..., 20:] += 1.0  # change the future only
    y2 = fo_bi(kw2, A_b, "compiled")
    fwd = csrc.selective_scan(**kw, backend="compiled")
    fwd2 = csrc.selective_scan(**kw2, backend="compiled")
    torch.testing.assert_close(fwd[..., :20], fwd2[..., :20])  # causal forward: past unchanged
    assert not torch.allclose(y[..., :20], y2[..., :20])       # bidirectional: the past sees the future


@needs_kernel
def test_mixed_dtypes_compute_in_float32():
    kw = make_inputs(1, 6, 16, 20, seed=8)
    kw["u"] = kw["u"].bfloat16()
    y, y_ref = run_both(kw)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), **TOL[torch.bfloat16])


# --- dispatch and errors -------------------------------------------------------------------------------

def test_reference_backend_never_calls_the_kernel(monkeypatch):
    kw = make_inputs(1, 3, 4, 5)
    assert_reference_never_calls_kernel(monkeypatch, "selective_scan",
                                        lambda **extra: csrc.selective_scan(**kw, **extra))


@needs_kernel
def test_auto_backend_uses_the_kernel(monkeypatch):
    monkeypatch.delenv("HEARSCAN_SCAN_BACKEND", raising=False)
    before = csrc.kernel_calls().get(("selective_scan", "cpu"), 0)
    csrc.selective_scan(**make_inputs(1, 3, 4, 5))
    assert csrc.kernel_calls()[("selective_scan", "cpu")] == before + 1


def test_device_without_kernel(monkeypatch):
    """Under 'auto' a device with no compiled kernel falls back to the reference; 'compiled' says so."""
    cpu = dispatch.kernel_for("selective_scan", "cpu")
    kw = make_inputs(1, 3, 4, 5)
    try:
        del dispatch._KERNELS["selective_scan"]["cpu"]
        torch.testing.assert_close(csrc.selective_scan(**kw), csrc.selective_scan_reference(**kw))
        with pytest.raises(ValueError, match="does not exist for cpu tensors"):
            csrc.selective_scan(**kw, backend="compiled")
    finally:
        dispatch.register(cpu)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(u=torch.randn(2, 3)), ValueError, r"u must be \(batch, channels, length\)"),
        (dict(A=torch.randn(4, 16)), ValueError, r"A must be \(channels=3, d_state\)"),
        (dict(B=torch.randn(2, 1, 16, 7)), ValueError, "single-group B and C"),
        (dict(C=torch.randn(2, 16, 6)), ValueError, r"C must have shape \(2, 16, 7\)"),
        (dict(delta=torch.randn(2, 3, 8)), ValueError, r"delta must have shape \(2, 3, 7\)"),
        (dict(D=torch.randn(4)), ValueError, r"D must have shape \(3,\)"),
        (dict(state=torch.randn(2, 3, 15)), ValueError, r"state must have shape \(2, 3, 16\)"),
        (dict(u=torch.ones(2, 3, 7, dtype=torch.int64)), TypeError, "real floating tensor"),
        (dict(A=torch.randn(3, 16, dtype=torch.complex64)), TypeError, "real floating tensor"),
        (dict(z=[1.0]), TypeError, "z must be a torch.Tensor"),
    ],
)
@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_bad_inputs_give_clear_errors(change, error, match, backend):
    assert_bad_input_raises(csrc.selective_scan, make_inputs(2, 3, 16, 7), change, error, match, backend, HAVE_KERNEL)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="unknown scan backend"):
        csrc.selective_scan(**make_inputs(1, 2, 4, 3), backend="fast")


def test_bench_cases_are_well_formed():
    for case in well_formed_bench_cases("selective_scan"):
        kw = case["make_inputs"](torch.bfloat16)
        assert kw["u"].dtype == torch.bfloat16
        assert case["flops"] == 6 * kw["u"].shape[1] * kw["A"].shape[1] * case["tokens"]


# --- on each device: the CPU always, CUDA when present (the CUDA kernel: csrc/selective_scan_cuda.cu) -----

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


@pytest.mark.parametrize("device", DEVICES)
@DTYPES
@pytest.mark.parametrize("full", [True, False], ids=["z-D-bias-softplus", "bare"])
@pytest.mark.parametrize("shape", SS_SHAPES, ids=lambda s: "B{}D{}N{}L{}".format(*s))
def test_compiled_on_each_device_equals_reference(shape, dtype, full, device):
    """The device's kernel (compiled) against the reference on the CPU copies of the same inputs."""
    kw = ss_inputs(*shape, dtype, full)
    g = torch.Generator().manual_seed(2)
    kw["state"] = torch.randn(shape[0], shape[1], shape[2], generator=g) * 0.1
    y_ref, h_ref = csrc.selective_scan(**kw, return_state=True, backend="reference")
    y, h = csrc.selective_scan(**to_device(kw, device), return_state=True, backend="compiled")
    assert y.device.type == device and y.dtype == dtype and h.dtype == torch.float32
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    scaled_close(y, y_ref, **tol)
    scaled_close(h, h_ref, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_selective_scan_cuda_long_and_chunked():
    kw = ss_inputs(1, 48, 16, 4096, torch.float32)
    y_ref, h_ref = csrc.selective_scan(**kw, return_state=True, backend="reference")
    kw = to_device(kw)
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


@needs_cuda
def test_selective_scan_cuda_fo_bi_on_flipped_views():
    """AuM's backward direction: time-flipped (non-contiguous) inputs, as the module passes them."""
    kw = ss_inputs(2, 32, 16, 77, torch.float32)
    flipped = {n: (v.flip(-1) if n in ("u", "delta", "z", "B", "C") else v) for n, v in kw.items()}
    want = csrc.selective_scan(**flipped, backend="reference")
    got_views = {n: (v.to("cuda").flip(-1) if n in ("u", "delta", "z", "B", "C") else to_device(v)) for n, v in kw.items()}
    scaled_close(csrc.selective_scan(**got_views, backend="compiled"), want, rtol=1e-4, atol=1e-4)
    # reverse=True (flipped copies on CUDA) equals the backward direction in step order
    got_rev = csrc.selective_scan(**to_device(kw), backend="compiled", reverse=True)
    scaled_close(got_rev, want.flip(-1), rtol=1e-4, atol=1e-4)


@needs_cuda
def test_selective_scan_cuda_mixed_dtypes():
    """bfloat16 u, delta and z with float32 B and C: the kernel reads all of them in one dtype (float32 here)."""
    kw = ss_inputs(2, 8, 16, 300, torch.bfloat16)
    kw["B"], kw["C"] = kw["B"].float() * 1.001, kw["C"].float() * 1.001  # not representable in bfloat16
    want = csrc.selective_scan(**kw, backend="reference")
    got = csrc.selective_scan(**to_device(kw), backend="compiled")
    assert got.dtype == torch.bfloat16
    scaled_close(got, want, rtol=1e-2, atol=1e-2)


@needs_cuda
def test_selective_scan_cuda_zero_length_and_large_d_state():
    kw = to_device(ss_inputs(2, 3, 16, 0, torch.float32))
    kw["state"] = torch.randn(2, 3, 16, device="cuda")
    y, h = csrc.selective_scan(**kw, return_state=True, backend="compiled")
    assert y.shape == (2, 3, 0)
    torch.testing.assert_close(h, kw["state"], atol=0, rtol=0)
    big = to_device(ss_inputs(1, 2, 80, 9, torch.float32))
    torch.testing.assert_close(csrc.selective_scan(**big), csrc.selective_scan(**big, backend="reference"))
    with pytest.raises(ValueError, match="CUDA kernel takes d_state up to 64, got 80"):
        csrc.selective_scan(**big, backend="compiled")
