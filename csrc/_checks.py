"""Input validation shared by the kernel bindings (csrc/<op>.py); which implementation runs is csrc.dispatch's.

Every error names the operator and the argument, so the messages read the same for all four ops
("wkv7: k has shape ..., expected r's shape ...").  Op-specific checks stay in each binding.
"""

from __future__ import annotations

import torch

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
