"""WKV-7 (RWKV-7 "x070") scan: reference recurrence and dispatching binding.

Per head (N = head size, 64 in A-RWKV), state S is N x N float32 with S[i, j], i = value row,
j = key column.  For each step t:
    sa   = sum_j a_j S_ij
    S_ij = S_ij * exp(-exp(w_j)) + sa_i * b_j + v_i * k_j
    y_i  = sum_j S_ij * r_j
Inputs r, w, k, v, a, b: (B, T, H, N), float32 or bfloat16.  `w` is the log-log decay as in the official
kernel (decay = exp(-exp(w))).  A-RWKV passes a = -kappa, b = kappa * a_rate, and runs the same causal
scan on the time-flipped sequence for its backward direction: `reverse=True` runs it from the last token to
the first without flipped copies, equal to flip_T(wkv7(flip_T(inputs))).
"""

from __future__ import annotations

import torch

from csrc import dispatch
from csrc._build import load
from csrc._checks import (
    require_device, require_kernel_dtype, require_like, require_tensors, require_wkv_head_and_state,
)

MAX_HEAD_SIZE = 1024  # the CPU kernel's limit (kMaxHeadSize in wkv7_cpu.cpp)
CUDA_MAX_HEAD_SIZE = 128  # the CUDA kernel's (wkv7_cuda.cu)


def wkv7_reference(r, w, k, v, a, b, state=None, return_state=False, backend=None, reverse=False):
    """Plain per-step recurrence in float32.  Same signature as `wkv7` (`backend` is ignored)."""
    if reverse:  # the definition: the forward scan on the time-flipped sequence, its output flipped back
        out = wkv7_reference(*(x.flip(1) for x in (r, w, k, v, a, b)), state=state, return_state=return_state)
        return (out[0].flip(1), out[1]) if return_state else out.flip(1)
    B, T, H, N = r.shape
    dtype = r.dtype
    r, w, k, v, a, b = (x.float() for x in (r, w, k, v, a, b))
    decay = torch.exp(-torch.exp(w))
    S = r.new_zeros(B, H, N, N) if state is None else state.float().clone()
    ys = []
    for t in range(T):
        sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])
        S = (
            S * decay[:, t, :, None, :]
            + sa[..., :, None] * b[:, t, :, None, :]
            + v[:, t, :, :, None] * k[:, t, :, None, :]
        )
        ys.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N)
    y = y.to(dtype)
    return (y, S) if return_state else y


def _check_inputs(r, w, k, v, a, b, state):
    """Clear errors for what the kernel cannot take (the reference would fail obscurely or silently)."""
    named = {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b}
    require_tensors("wkv7", named)
    if r.dim() != 4:
        raise ValueError(f"wkv7: r must be (B, T, H, N), got shape {tuple(r.shape)}")
    for name, x in named.items():
        require_like("wkv7", name, x, "r", r, dtype_hint="all inputs")
        require_device("wkv7", name, x, "r", r)
    require_kernel_dtype("wkv7", r)
    require_wkv_head_and_state("wkv7", r, state, MAX_HEAD_SIZE)


def wkv7(r, w, k, v, a, b, state=None, return_state=False, backend=None, reverse=False):
    """WKV-7 scan.  r, w, k, v, a, b: (B, T, H, N); state: (B, H, N, N) float32 or None.

    Returns y (B, T, H, N) in the input dtype, and the final state (float32) when `return_state`.
    `backend`: "auto" | "compiled" | "reference" (default: $HEARSCAN_SCAN_BACKEND or auto); the kernel for
    the tensors' device is chosen by `csrc.dispatch`.
    `reverse`: scan from the last token to the first (A-RWKV's backward direction): y in token order, equal
    to flip_T(wkv7(flip_T(inputs))), and the state after token 0 (chunks of a long recording then go
    last chunk first).  The CPU kernel reads the tokens backwards; on CUDA the inputs are flipped.
    Inputs may be non-contiguous (e.g. time-flipped views); the compiled path copies them.
    """
    _check_inputs(r, w, k, v, a, b, state)
    kernel = dispatch.select("wkv7", r.device, backend, inputs=(r, w, k, v, a, b, state),
                             sizes={"head sizes": r.shape[3]})
    if kernel is None:
        return wkv7_reference(r, w, k, v, a, b, state=state, return_state=return_state, reverse=reverse)
    inputs = (r, w, k, v, a, b)
    flip = bool(reverse) and not kernel.reverse  # a kernel without a reverse scan gets flipped copies
    if flip:
        inputs = tuple(x.flip(1) for x in inputs)
    y, final = dispatch.run(kernel, *inputs, state, bool(return_state), bool(reverse) and not flip)
    y = y.flip(1) if flip else y
    return (y, final) if return_state else y


def _run_cpu(r, w, k, v, a, b, state, return_state, reverse):
    out = load("wkv7", "cpu").forward(
        *(x.contiguous() for x in (r, w, k, v, a, b)),
        None if state is None else state.float().contiguous(), return_state, reverse,
    )
    return out[0], (out[1] if return_state else None)


def _run_cuda(r, w, k, v, a, b, state, return_state, reverse):
    assert not reverse, "the CUDA kernel has no reverse scan: the binding flips its inputs"
    out = load("wkv7", "cuda").forward(
        *(x.contiguous() for x in (r, w, k, v, a, b)),
        None if state is None else state.float().contiguous(), return_state,
    )
    return out[0], (out[1] if return_state else None)


dispatch.register(dispatch.Kernel("wkv7", "cpu", _run_cpu, lambda: load("wkv7", "cpu"),
                                  limits={"head sizes": MAX_HEAD_SIZE}, reverse=True))
dispatch.register(dispatch.Kernel("wkv7", "cuda", _run_cuda, lambda: load("wkv7", "cuda"),
                                  limits={"head sizes": CUDA_MAX_HEAD_SIZE}))
