"""WKV-6 (RWKV-6 "Finch") scan: reference recurrence and dispatching binding.

Per head (N = 64), state S is N x N float32, S[i, j] with i = value row, j = key column:
    y_i  = sum_j r_j * (S_ij + u_j * k_j * v_i)
    S_ij = S_ij * exp(-exp(w_j)) + k_j * v_i
Inputs r, k, v, w: (B, T, H, N); bonus u: (H, N).  `w` is the log-log decay (time_decay + LoRA term),
decay = exp(-exp(w)); the scale is 1 (as `naive_recurrent_rwkv6(scale=1.0)`).
"""

from __future__ import annotations

import torch

from csrc import dispatch
from csrc._build import load
from csrc._checks import (
    require_device, require_kernel_dtype, require_like, require_tensors, require_wkv_head_and_state,
)

MAX_HEAD_SIZE = 1024  # the CPU kernel's limit (kMaxHeadSize in wkv6_cpu.cpp)
CUDA_MAX_HEAD_SIZE = 128  # the CUDA kernel's (wkv6_cuda.cu)


def wkv6_reference(r, k, v, w, u, state=None, return_state=False, backend=None):
    """Plain per-step recurrence in float32.  Same signature as `wkv6` (`backend` is ignored)."""
    B, T, H, N = r.shape
    dtype = r.dtype
    r, k, v, w, u = (x.float() for x in (r, k, v, w, u))
    decay = torch.exp(-torch.exp(w))
    S = r.new_zeros(B, H, N, N) if state is None else state.float().clone()
    ys = []
    for t in range(T):
        kv = v[:, t, :, :, None] * k[:, t, :, None, :]  # (B, H, i, j)
        ys.append(torch.einsum("bhij,bhj->bhi", S + u[None, :, None, :] * kv, r[:, t]))
        S = S * decay[:, t, :, None, :] + kv
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(B, 0, H, N)
    y = y.to(dtype)
    return (y, S) if return_state else y


def _check_inputs(r, k, v, w, u, state):
    """Clear errors for what the kernel cannot take (the reference would fail obscurely or silently)."""
    named = {"r": r, "k": k, "v": v, "w": w, "u": u}
    require_tensors("wkv6", named)
    if r.dim() != 4:
        raise ValueError(f"wkv6: r must be (B, T, H, N), got shape {tuple(r.shape)}")
    for name in ("r", "k", "v", "w"):
        require_like("wkv6", name, named[name], "r", r, dtype_hint="r, k, v, w")
    for name, x in named.items():
        require_device("wkv6", name, x, "r", r)
    require_kernel_dtype("wkv6", r)
    _, _, H, N = r.shape
    if tuple(u.shape) != (H, N):
        raise ValueError(f"wkv6: u has shape {tuple(u.shape)}, expected (H, N) = {(H, N)}")
    if not u.is_floating_point():
        raise TypeError(f"wkv6: u must be a floating-point tensor, got {u.dtype}")
    require_wkv_head_and_state("wkv6", r, state, MAX_HEAD_SIZE)


def wkv6(r, k, v, w, u, state=None, return_state=False, backend=None):
    """WKV-6 scan.  r, k, v, w: (B, T, H, N); u: (H, N); state: (B, H, N, N) float32 or None.

    Returns y (B, T, H, N) in the input dtype, and the final state (float32) when `return_state`.
    `backend`: "auto" | "compiled" | "reference" (default: $HEARSCAN_SCAN_BACKEND or auto); the kernel for
    the tensors' device is chosen by `csrc.dispatch`.
    """
    _check_inputs(r, k, v, w, u, state)
    kernel = dispatch.select("wkv6", r.device, backend, inputs=(r, k, v, w, u, state),
                             sizes={"head sizes": r.shape[3]})
    if kernel is None:
        return wkv6_reference(r, k, v, w, u, state=state, return_state=return_state)
    y, final = dispatch.run(kernel, r, k, v, w, u, state, bool(return_state))
    return (y, final) if return_state else y


def _runner(device_type: str):
    def run(r, k, v, w, u, state, return_state):
        out = load("wkv6", device_type).forward(
            *(x.contiguous() for x in (r, k, v, w)), u.float().contiguous(),
            None if state is None else state.float().contiguous(), return_state,
        )
        return out[0], (out[1] if return_state else None)
    return run


dispatch.register(dispatch.Kernel("wkv6", "cpu", _runner("cpu"), lambda: load("wkv6", "cpu"),
                                  limits={"head sizes": MAX_HEAD_SIZE}))
dispatch.register(dispatch.Kernel("wkv6", "cuda", _runner("cuda"), lambda: load("wkv6", "cuda"),
                                  limits={"head sizes": CUDA_MAX_HEAD_SIZE}))
