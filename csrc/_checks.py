"""Input validation and backend plumbing shared by the kernel bindings (csrc/<op>.py).

Every error names the operator and the argument, so the messages read the same for all four ops
("wkv7: k has shape ..., expected r's shape ...").  Op-specific checks stay in each binding.
"""

from __future__ import annotations

import os
import warnings

import torch

from csrc._build import requested_backend, resolve_backend

KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # what the compiled kernels read and write


def require_tensors(op: str, named: dict) -> None:
    """TypeError for any argument that is not a tensor (None entries are optional arguments)."""
    for name, x in named.items():
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")


def require_floating(op: str, name: str, x: torch.Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{op}: {name} must be a real floating tensor, got {x.dtype}")


def require_device(op: str, name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{op}: {name} is on {x.device} but {ref_name} is on {ref.device}")


def require_real_tensors(op: str, named: dict, ref_name: str, ref) -> None:
    """Each argument (None = absent, skipped) is a real floating tensor on `ref`'s device."""
    for name, x in named.items():
        if x is None:
            continue
        require_tensors(op, {name: x})
        require_floating(op, name, x)
        require_device(op, name, x, ref_name, ref)


def require_like(op: str, name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor, dtype_hint: str) -> None:
    """x must have ref's shape and dtype (`dtype_hint` says which inputs share one dtype)."""
    if x.shape != ref.shape:
        raise ValueError(f"{op}: {name} has shape {tuple(x.shape)}, expected {ref_name}'s shape {tuple(ref.shape)}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} is {x.dtype} but {ref_name} is {ref.dtype}; pass {dtype_hint} in one dtype")


def require_kernel_dtype(op: str, x: torch.Tensor) -> None:
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: inputs must be float32 or bfloat16, got {x.dtype}")


def require_wkv_head_and_state(op: str, r: torch.Tensor, state, max_head_size: int) -> None:
    """WKV layouts: r is (B, T, H, N) with 1 <= N <= max_head_size, state (B, H, N, N) or None."""
    B, _, H, N = r.shape
    if not 1 <= N <= max_head_size:
        raise ValueError(f"{op}: head size N={N} is outside 1..{max_head_size}")
    if state is not None and tuple(state.shape) != (B, H, N, N):
        raise ValueError(f"{op}: state has shape {tuple(state.shape)}, expected (B, H, N, N) = {(B, H, N, N)}")


def within_cuda_limit(op: str, device, value: int, limit: int, what: str, backend: str | None) -> bool:
    """The CUDA kernels take `what` up to `limit` (the CPU kernels have no such limit): beyond it "auto"
    uses the reference and "compiled" raises.  True on any other device."""
    if device.type != "cuda" or value <= limit:
        return True
    if requested_backend(backend) == "compiled":
        raise ValueError(
            f"{op}: the CUDA kernel takes {what} up to {limit}, got {value}; use backend='reference' "
            "(or 'auto', which falls back to it)"
        )
    return False


def needs_grad(*tensors) -> bool:
    """Whether autograd needs a gradient through any of `tensors` (None and tuples of tensors allowed)."""
    if not torch.is_grad_enabled():
        return False
    flat = [t for x in tensors if x is not None for t in (x if isinstance(x, (tuple, list)) else (x,))]
    return any(t.requires_grad for t in flat)


def wants_compiled(op: str, backend: str | None, device, tensors) -> bool:
    """True to run the compiled kernel, False for the reference (WKV bindings).

    The compiled kernels are forward-only: when an input requires grad, "compiled" raises and "auto"
    warns and uses the differentiable reference.
    """
    if needs_grad(*tensors):
        if requested_backend(backend) == "compiled":
            raise ValueError(
                f"{op}: the compiled kernel is forward-only and an input requires grad; "
                "use backend='reference' or 'auto' (which falls back to it), or run under torch.no_grad()"
            )
        warnings.warn(
            f"{op}: an input requires grad, so the slow differentiable reference runs instead of the compiled "
            "kernel; wrap inference in torch.no_grad() or torch.inference_mode()",
            stacklevel=3,  # the caller of the binding
        )
        return False
    return resolve_backend(backend, op, device) == "compiled"


def kernel_for(op: str, kernels: dict, device, backend: str | None, needs_grad: bool = False):
    """The compiled kernel for `device` from `kernels` (by device type); None (use the reference) under
    "auto" when there is none or autograd needs a gradient, ValueError under "compiled"."""
    kernel = None if needs_grad else kernels.get(device.type)
    if kernel is None and (backend or os.environ.get("HEARSCAN_SCAN_BACKEND", "")).lower() == "compiled":
        why = ("is forward-only and an input requires grad" if needs_grad
               else f"does not exist for {device.type} tensors yet")
        raise ValueError(
            f"{op}: the compiled kernel {why}; use backend='reference' (or 'auto', which falls back to it)"
        )
    return kernel


def bench_case(name, shape, make_inputs, flops, tokens, reference=True, scaling_T=None) -> dict:
    """One case for `hearscan bench kernels` (the protocol csrc/bench.py reads)."""
    return {
        "name": name,
        "shape": shape,
        "make_inputs": make_inputs,
        "flops": flops,
        "tokens": tokens,
        "reference": reference,
        "scaling_T": scaling_T,
    }
