"""Scaffolding shared by the kernel tests (tests/test_{wkv7,wkv6,selective_scan,mlstm}.py).

Only plumbing lives here; every tolerance is passed in by (or named for) the test that uses it, and each
test keeps its own shapes and inputs.
"""

import contextlib

import pytest
import torch

from csrc import dispatch
from csrc._build import KernelBuildError, load

# WKV-6/7: float32 outputs within 1e-4 (the kernels reorder float32 sums; WKV-7's also rescales its state,
# which changes roundings only); bfloat16 within 1e-2 (one
# or two bfloat16 roundings of the output, 2^-8 relative each); the float32 state within 1e-4.
WKV_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=1e-2, rtol=1e-2)}
WKV_STATE_TOL = dict(atol=1e-4, rtol=1e-4)


# Every op's test file runs its kernel tests on each device here: the CPU always, CUDA when present.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


def to_device(x, device="cuda"):
    """Tensors (in a dict, list or tuple) moved to `device`; anything else unchanged."""
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x.to(device) if isinstance(x, torch.Tensor) else x


def scaled_close(got, want, rtol, atol):
    """assert_close in float32 with atol scaled by the largest |want| (long sequences grow large values)."""
    got, want = got.float().cpu(), want.float().cpu()
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale)


def kernel_marker(op):
    """(whether the compiled `op` kernel builds here, a skipif marker for tests that need it)."""
    try:
        load(op)
        have = True
    except KernelBuildError:  # no compiler: the tests of the compiled path cannot run
        have = False
    return have, pytest.mark.skipif(not have, reason=f"{op} kernel could not be built")


def run_in_chunks(run, bounds):
    """Call `run(lo, hi, state) -> (y, state)` on consecutive time ranges, carrying the state.

    Returns the list of outputs and the final state.
    """
    ys, state = [], None
    for lo, hi in bounds:
        y, state = run(lo, hi, state)
        ys.append(y)
    return ys, state


def assert_wkv_compiled_equals_reference(op, x, shape, dtype):
    """`op` (csrc.wkv7 / csrc.wkv6) with a random initial state: compiled == reference, y and state."""
    g = torch.Generator().manual_seed(1)
    s0 = torch.randn(shape[0], shape[2], shape[3], shape[3], generator=g) * 0.1
    y_ref, s_ref = op(*x, state=s0, return_state=True, backend="reference")
    y, s = op(*x, state=s0, return_state=True, backend="compiled")
    assert y.dtype == dtype and y.shape == x[0].shape
    assert s.dtype == torch.float32 and s.shape == s0.shape
    torch.testing.assert_close(y, y_ref, **WKV_TOL[dtype])
    torch.testing.assert_close(s, s_ref, **WKV_STATE_TOL)


@contextlib.contextmanager
def restoring_threads():
    """Torch's thread count as it was, after a block that sweeps thread counts (even when it fails)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def assert_wkv_head_groups_equal_reference(op, make_inputs):
    """The compiled WKV kernels split heads into groups per thread (run_head_groups in wkv_common.h): odd
    head counts, one batch row and several thread counts give groups of uneven size, all equal to the
    reference (H = 0 included).  T = 19 and 40 cross token blocks (BlockStream copies each block, in
    memory order across the group's heads, during the one before; 40 = two full blocks and a partial
    one).  make_inputs(B, T, H, N) -> the op's positional inputs."""
    with restoring_threads():
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            for shape in ((1, 19, 5, 64), (3, 40, 7, 64), (3, 7, 7, 32), (2, 5, 1, 16), (2, 5, 0, 64)):
                assert_wkv_compiled_equals_reference(op, make_inputs(*shape), shape, torch.float32)


def assert_wkv_long_sequence(op, x, device="cpu"):
    """A long sequence on `device` against the reference: y and the state within 1e-4 of their largest value."""
    y_ref, s_ref = op(*x, return_state=True, backend="reference")
    y, s = op(*to_device(x, device), return_state=True, backend="compiled")
    assert (y.cpu() - y_ref).abs().max() <= 1e-4 * y_ref.abs().max()
    assert (s.cpu() - s_ref).abs().max() <= 1e-4 * s_ref.abs().max()


def assert_empty_sequence_keeps_the_state(op, x, s0, backend):
    """T = 0: an empty output of shape (B, 0, H, N) and the initial state back unchanged."""
    y, s = op(*x, state=s0, return_state=True, backend=backend)
    assert y.shape == (x[0].shape[0], 0, *x[0].shape[2:])
    torch.testing.assert_close(s, s0)


def assert_reference_never_calls_kernel(monkeypatch, op, call):
    """With backend="reference" (argument or environment) `call(**extra)` must not touch the kernel."""

    def boom(*args, **kwargs):
        raise AssertionError("compiled kernel called")

    with dispatch.registered(dispatch.Kernel(op, "cpu", boom)):
        call(backend="reference")
        monkeypatch.setenv("HEARSCAN_SCAN_BACKEND", "reference")
        call()


def assert_bad_input_raises(op, kw, change, error, match, backend, have_kernel):
    """`op(**kw)` with the arguments in `change` replaced raises `error` matching `match`."""
    if backend == "compiled" and not have_kernel:
        pytest.skip("no kernel")
    kw.update(change)
    with pytest.raises(error, match=match):
        op(**kw, backend=backend)


def well_formed_bench_cases(op):
    """The bench-case protocol: more cases with `long`, every case has the fields benchmarks/kernels.py reads.

    Returns the short list, for the op's own checks of inputs and FLOP counts.
    """
    from benchmarks.kernel_cases import cases as bench_cases

    cases = bench_cases(op, long=True)
    short = bench_cases(op, long=False)
    assert len(cases) > len(short)
    for case in cases:
        assert set(case) >= {"name", "shape", "make_inputs", "flops", "tokens"}
    return short


# --- the WKV checks on each device (the CPU always, CUDA when present); `inputs(B, T, H, N, dtype)` gives
# the op's positional inputs in the models' ranges -----------------------------------------------------------

WKV_DEVICE_SHAPES = [
    (1, 1, 1, 64),     # T = 1
    (2, 37, 3, 64),    # odd T, batch > 1, A-RWKV-T's 3 heads
    (1, 61, 2, 64),    # T not a multiple of 16
    (3, 16, 2, 32),
    (2, 17, 2, 20),    # a head size padded to the next block size
    (1, 9, 1, 128),
    (4, 496, 12, 64),  # A-RWKV-B, bidirectional batch of 2 clips
]


def assert_wkv_on_device_equals_reference(op, inputs, shape, dtype, device):
    """The device's kernel (compiled) against the reference on the CPU copies of the same inputs."""
    x = inputs(*shape, dtype)
    g = torch.Generator().manual_seed(1)
    s0 = torch.randn(shape[0], shape[2], shape[3], shape[3], generator=g) * 0.1
    y_ref, s_ref = op(*x, state=s0, return_state=True, backend="reference")
    y, s = op(*to_device(x, device), state=s0.to(device), return_state=True, backend="compiled")
    assert y.device.type == device and y.dtype == dtype and y.shape == x[0].shape
    assert s.dtype == torch.float32 and s.shape == s0.shape
    torch.testing.assert_close(y.cpu(), y_ref, **WKV_TOL[dtype])
    torch.testing.assert_close(s.cpu(), s_ref, **WKV_STATE_TOL)


def assert_wkv_cuda_checks(op, inputs, per_token: int):
    """On CUDA: T = 8192 against the reference; chunks [0, 50), [50, 51), [51, 130) with the state carried equal
    one pass bit for bit (`per_token`: how many leading inputs have a time axis); T = 0 keeps the state; equal
    to the CPU kernel; a head size over 128 runs the reference under "auto" and is refused under "compiled"."""
    assert_wkv_long_sequence(op, inputs(1, 8192, 2, 64, torch.float32), device="cuda")
    x = to_device(inputs(2, 130, 3, 64, torch.float32))
    full, s_full = op(*x, return_state=True, backend="compiled")

    def run(lo, hi, state):
        seq = [t[:, lo:hi] for t in x[:per_token]] + list(x[per_token:])
        return op(*seq, state=state, return_state=True, backend="compiled")

    ys, state = run_in_chunks(run, [(0, 50), (50, 51), (51, 130)])
    torch.testing.assert_close(torch.cat(ys, dim=1), full, atol=0, rtol=0)
    torch.testing.assert_close(state, s_full, atol=0, rtol=0)
    s0 = torch.randn(2, 3, 64, 64, device="cuda")
    assert_empty_sequence_keeps_the_state(op, to_device(inputs(2, 0, 3, 64, torch.float32)), s0, "compiled")
    x = inputs(2, 100, 6, 64, torch.float32)
    torch.testing.assert_close(op(*to_device(x), backend="compiled").cpu(), op(*x, backend="compiled"),
                               **WKV_TOL[torch.float32])
    x = to_device(inputs(1, 5, 1, 160, torch.float32))
    torch.testing.assert_close(op(*x), op(*x, backend="reference"))  # auto
    with pytest.raises(ValueError, match="CUDA kernel takes head sizes up to 128, got 160"):
        op(*x, backend="compiled")
