"""WKV-6 (RWKV-6 "Finch") scan: reference recurrence and dispatching binding.

Per head (N = 64), state S is N x N float32, S[i, j] with i = value row, j = key column:
    y_i  = sum_j r_j * (S_ij + u_j * k_j * v_i)
    S_ij = S_ij * exp(-exp(w_j)) + k_j * v_i
Inputs r, k, v, w: (B, T, H, N); bonus u: (H, N).  `w` is the log-log decay (time_decay + LoRA term),
decay = exp(-exp(w)); the scale is 1 (as `naive_recurrent_rwkv6(scale=1.0)`).
"""

from __future__ import annotations

import warnings

import torch

from csrc._build import load, requested_backend, resolve_backend

MAX_HEAD_SIZE = 1024  # the compiled kernel's limit (kMaxHeadSize in wkv6_cpu.cpp)


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
    names = ("r", "k", "v", "w", "u")
    tensors = (r, k, v, w, u)
    for name, x in zip(names, tensors):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"wkv6: {name} must be a torch.Tensor, got {type(x).__name__}")
    if r.dim() != 4:
        raise ValueError(f"wkv6: r must be (B, T, H, N), got shape {tuple(r.shape)}")
    for name, x in zip(names[:4], tensors[:4]):
        if x.shape != r.shape:
            raise ValueError(f"wkv6: {name} has shape {tuple(x.shape)}, expected r's shape {tuple(r.shape)}")
        if x.dtype != r.dtype:
            raise TypeError(f"wkv6: {name} is {x.dtype} but r is {r.dtype}; pass r, k, v, w in one dtype")
    for name, x in zip(names, tensors):
        if x.device != r.device:
            raise ValueError(f"wkv6: {name} is on {x.device} but r is on {r.device}")
    if r.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"wkv6: inputs must be float32 or bfloat16, got {r.dtype}")
    B, _, H, N = r.shape
    if tuple(u.shape) != (H, N):
        raise ValueError(f"wkv6: u has shape {tuple(u.shape)}, expected (H, N) = {(H, N)}")
    if not u.is_floating_point():
        raise TypeError(f"wkv6: u must be a floating-point tensor, got {u.dtype}")
    if not 1 <= N <= MAX_HEAD_SIZE:
        raise ValueError(f"wkv6: head size N={N} is outside 1..{MAX_HEAD_SIZE}")
    if state is not None and tuple(state.shape) != (B, H, N, N):
        raise ValueError(f"wkv6: state has shape {tuple(state.shape)}, expected (B, H, N, N) = {(B, H, N, N)}")


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def wkv6(r, k, v, w, u, state=None, return_state=False, backend=None):
    """WKV-6 scan.  r, k, v, w: (B, T, H, N); u: (H, N); state: (B, H, N, N) float32 or None.

    Returns y (B, T, H, N) in the input dtype, and the final state (float32) when `return_state`.
    `backend`: "auto" | "compiled" | "reference" (default: $HEARSCAN_SCAN_BACKEND or auto).
    """
    _check_inputs(r, k, v, w, u, state)
    if _needs_grad(r, k, v, w, u, state):
        # the compiled kernel is forward-only; the reference is differentiable
        if requested_backend(backend) == "compiled":
            raise ValueError(
                "wkv6: the compiled kernel is forward-only and an input requires grad; "
                "use backend='reference' or 'auto' (which falls back to it), or run under torch.no_grad()"
            )
        warnings.warn(
            "wkv6: an input requires grad, so the slow differentiable reference runs instead of the compiled "
            "kernel; wrap inference in torch.no_grad() or torch.inference_mode()",
            stacklevel=2,
        )
        return wkv6_reference(r, k, v, w, u, state=state, return_state=return_state)
    if resolve_backend(backend, "wkv6", r.device) == "reference":
        return wkv6_reference(r, k, v, w, u, state=state, return_state=return_state)
    # Only CPU kernels exist; resolve_backend sends other devices to the reference (or raises), so a
    # CUDA kernel would be one more branch here on r.device.
    kernel = load("wkv6", r.device)
    out = kernel.forward(
        *(x.contiguous() for x in (r, k, v, w)),
        u.float().contiguous(),
        None if state is None else state.float().contiguous(),
        bool(return_state),
    )
    return (out[0], out[1]) if return_state else out[0]


def _bench_inputs(B, T, H, N, dtype, seed=0):
    """RWKV-6-like ranges: w around -1 (decay about 0.7), bonus u ~ 0.5."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    x = dict(
        r=torch.randn(shape, generator=g), k=torch.randn(shape, generator=g) * 0.3,
        v=torch.randn(shape, generator=g), w=torch.randn(shape, generator=g) - 1.0,
    )
    x = {name: t.to(dtype) for name, t in x.items()}
    x["u"] = torch.randn(H, N, generator=g) * 0.5
    return x


def bench_cases(long: bool) -> list[dict]:
    """Cases for `hearscan bench kernels`: ggml's anchor shape, RWKV-6 widths and a T-scaling series.

    FLOP count 6 N^2 per head-token, as ggml counts WKV-6.
    """
    N = 64

    def case(name, B, T, H, reference=True, scaling_T=None):
        return {
            "name": name,
            "shape": f"B={B} T={T} H={H} N={N}",
            "make_inputs": lambda dtype: _bench_inputs(B, T, H, N, dtype),
            "flops": 6 * N * N * B * T * H,
            "tokens": B * T,
            "reference": reference,
            "scaling_T": scaling_T,
        }

    cases = [
        case("ggml anchor C=384", 2, 496, 6),
        case("C=768 (12 heads)", 2, 496, 12),
    ]
    for T in (512, 2048, 8192) + ((32768,) if long else ()):
        cases.append(case(f"T-scaling T={T}", 2, T, 6, reference=T == 512 or (long and T == 2048), scaling_T=T))
    return cases
