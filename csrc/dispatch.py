"""The one place that decides which implementation of a scan runs.

Each operator's binding (`csrc/<op>.py`) registers its compiled kernels here, one per device type, with
the limits of what each takes (`Kernel`).  A model calls the public op (`csrc.wkv7(...)`, ...) with the
user's `scan_backend` and decides nothing; the binding asks `select`, which looks at the tensors' device,
the request and the inputs and returns a kernel to run or None (run the PyTorch reference):

    request      a kernel exists for the device, builds, takes these sizes, and no gradient is needed
    "reference"  None
    "compiled"   that kernel; whatever is missing raises (KernelBuildError or ValueError) with the reason
    "auto"       that kernel; whatever is missing gives None, with a warning that says why

The request is the op's `backend` argument, else `$HEARSCAN_SCAN_BACKEND`, else "auto".  A kernel runs
through `run`, which counts the calls per (op, device type) (`kernel_calls`), so a test can check that a
model reached the kernel of its device rather than only that its output is right.  `registered` swaps a
kernel in for a test (a stand-in for a device this machine lacks, or a call counter).
"""

from __future__ import annotations

import collections
import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from csrc._build import KernelBuildError, load

BACKENDS = ("auto", "compiled", "reference")
ENV = "HEARSCAN_SCAN_BACKEND"


@dataclass(frozen=True)
class Kernel:
    """A compiled implementation of `op` for tensors of one device type.

    `run` takes the op's arguments in the reference's layout and returns what the kernel returns;
    `ensure` builds or imports it (raising KernelBuildError with the reason); `limits` maps what a
    kernel bounds (e.g. "head sizes") to the largest value it takes; `reverse` says whether `run` scans
    backwards itself (otherwise the binding flips its inputs and output).
    """

    op: str
    device_type: str
    run: Callable
    ensure: Callable[[], object] | None = None
    limits: dict = field(default_factory=dict)
    reverse: bool = False


_KERNELS: dict[str, dict[str, Kernel]] = collections.defaultdict(dict)
_CALLS: collections.Counter = collections.Counter()
_warned: set[tuple] = set()


def register(kernel: Kernel) -> Kernel | None:
    """Make `kernel` the compiled implementation of its op on its device type; returns the one it replaces."""
    previous = _KERNELS[kernel.op].get(kernel.device_type)
    _KERNELS[kernel.op][kernel.device_type] = kernel
    return previous


@contextlib.contextmanager
def registered(kernel: Kernel):
    """`kernel` in place of the registered one (or of none) for the duration of the block."""
    previous = register(kernel)
    try:
        yield kernel
    finally:
        if previous is None:
            del _KERNELS[kernel.op][kernel.device_type]
        else:
            register(previous)


def kernel_for(op: str, device_type: str) -> Kernel | None:
    """The registered kernel of `op` for `device_type` (None when there is none)."""
    return _KERNELS[op].get(device_type)


def requested_backend(backend: str | None) -> str:
    """The user's choice: `backend`, else `$HEARSCAN_SCAN_BACKEND`, else "auto" (validated)."""
    choice = (backend or os.environ.get(ENV) or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(
            f"unknown scan backend {choice!r} (from {'argument' if backend else '$' + ENV}); "
            f"choose one of {', '.join(BACKENDS)}"
        )
    return choice


def _device_type(device) -> str:
    return "cpu" if device is None else torch.device(device).type


def resolve_backend(backend: str | None, op: str, device=None) -> str:
    """"compiled" or "reference" for `op` on `device` (default CPU), before any inputs are seen: whether
    the request can be met by a kernel that builds.  "compiled" raises KernelBuildError when it cannot;
    "auto" then warns once and gives "reference"."""
    choice = requested_backend(backend)
    if choice == "reference":
        return "reference"
    try:
        _ensure(op, _device_type(device))
        return "compiled"
    except KernelBuildError as err:
        if choice == "compiled":
            raise
        _warn_once((op, _device_type(device), "build"), f"{err}; using the (much slower) PyTorch reference for {op}")
        return "reference"


def _ensure(op: str, device_type: str) -> Kernel:
    kernel = kernel_for(op, device_type)
    if kernel is None:
        # the build system explains what is missing (no CUDA, no compiler, a device type without kernels)
        load(op, device_type)
        raise KernelBuildError(f"no compiled {op} kernel is registered for {device_type} tensors")
    if kernel.ensure is not None:
        kernel.ensure()
    return kernel


def _warn_once(key: tuple, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=4)


def needs_grad(*tensors) -> bool:
    """Whether autograd needs a gradient through any of `tensors` (None and tuples of tensors allowed)."""
    if not torch.is_grad_enabled():
        return False
    flat = [t for x in tensors if x is not None for t in (x if isinstance(x, (tuple, list)) else (x,))]
    return any(t.requires_grad for t in flat)


def select(op: str, device, backend: str | None = None, inputs=(), sizes: dict | None = None) -> Kernel | None:
    """The kernel to run `op` on `device` with, or None for the reference (see the module docstring).

    `inputs`: the tensors autograd may need a gradient through (the kernels are forward-only);
    `sizes`: what the kernels bound, e.g. {"head sizes": N}, checked against each kernel's `limits`.
    """
    choice = requested_backend(backend)
    if choice == "reference":
        return None
    device_type = _device_type(device)
    compiled = choice == "compiled"
    if needs_grad(*inputs):
        if compiled:
            raise ValueError(
                f"{op}: the compiled kernel is forward-only and an input requires grad; "
                "use backend='reference' or 'auto' (which falls back to it), or run under torch.no_grad()"
            )
        warnings.warn(
            f"{op}: an input requires grad, so the slow differentiable reference runs instead of the compiled "
            "kernel; wrap inference in torch.no_grad() or torch.inference_mode()",
            stacklevel=3,  # the caller of the op
        )
        return None
    kernel = kernel_for(op, device_type)
    if kernel is None:
        if compiled:
            raise ValueError(f"{op}: the compiled kernel does not exist for {device_type} tensors yet; "
                             "use backend='reference' (or 'auto', which falls back to it)")
        return None
    for what, value in (sizes or {}).items():
        limit = kernel.limits.get(what)
        if limit is not None and value > limit:
            if compiled:
                raise ValueError(
                    f"{op}: the {device_type.upper()} kernel takes {what} up to {limit}, got {value}; use "
                    "backend='reference' (or 'auto', which falls back to it)"
                )
            return None
    if resolve_backend(choice, op, device_type) == "reference":
        return None
    return kernel


def run(kernel: Kernel, *args, **kwargs):
    """Run a selected kernel, counting the call."""
    _CALLS[(kernel.op, kernel.device_type)] += 1
    return kernel.run(*args, **kwargs)


def kernel_calls() -> dict[tuple[str, str], int]:
    """How often each (op, device type) kernel has run in this process."""
    return dict(_CALLS)
