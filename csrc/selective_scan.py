"""Selective scan (Mamba-1 SSM): reference recurrence and dispatching binding.

Signature and semantics follow mamba's `selective_scan_fn` / `selective_scan_ref` (single group):
    u, delta, z: (B, D, L);  A: (D, N) real;  B, C: (B, N, L) input-dependent;  D: (D,);  delta_bias: (D,)
    delta = softplus(delta + delta_bias) if delta_softplus (torch's softplus: identity above 20)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (state h: (B, D, N) float32)
    y_t = C_t . h_t + D * u_t;   out = y * silu(z) if z is given
AuM's bidirectional schemes are built from two calls, the backward one on the time-flipped sequence
(see hear_modules/aum.py): `reverse=True` scans from the last step to the first without flipped copies,
equal to flip(selective_scan(flip(u), flip(delta), A, flip(B), flip(C), D, flip(z))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from csrc import dispatch
from csrc._build import load
from csrc._checks import KERNEL_DTYPES, require_real_tensors

CUDA_MAX_DSTATE = 64  # the CUDA kernel's limit (selective_scan_cuda.cu)


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    state=None, return_state=False, backend=None, reverse=False,
):
    """Plain per-step recurrence in float32.  Same signature as `selective_scan` (`backend` ignored)."""
    if reverse:  # the definition: the scan of the time-flipped sequence, its output flipped back
        u, delta, B, C, z = (None if x is None else x.flip(-1) for x in (u, delta, B, C, z))
        out = selective_scan_reference(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                       delta_softplus=delta_softplus, state=state, return_state=return_state)
        return (out[0].flip(-1), out[1]) if return_state else out.flip(-1)
    dtype = u.dtype
    u, delta, A, B, C = (x.float() for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1]) if state is None else state.float().clone()
    dA = torch.exp(torch.einsum("bdl,dn->bldn", delta, A))  # (B, L, D, N)
    dBu = torch.einsum("bdl,bnl,bdl->bldn", delta, B, u)
    ys = []
    for t in range(length):
        h = dA[:, t] * h + dBu[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, h) if return_state else y


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    state=None, return_state=False, backend=None, reverse=False,
):
    """Selective scan; returns out (B, D, L) in u's dtype, and the final state (B, D, N) if asked.

    u, delta and z may be float32 or bfloat16 (any layout: time-flipped views are fine); mixed dtypes
    are computed in float32.  The state is float32.  The compiled kernel is forward-only: when autograd
    needs a gradient, "auto" uses the (differentiable) reference.
    `backend`: "auto" | "compiled" | "reference" (default: $HEARSCAN_SCAN_BACKEND or auto); the kernel for
    the tensors' device is chosen by `csrc.dispatch`.
    `reverse`: scan from the last step to the first (AuM's backward direction): out in step order, equal to
    the scan of the time-flipped u, delta, B, C, z flipped back, and the state after step 0.  The CPU
    kernel reads u, delta, z backwards; on CUDA they are flipped.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, state)
    kernel = dispatch.select("selective_scan", u.device, backend, inputs=(u, delta, A, B, C, D, z, delta_bias, state),
                             sizes={"d_state": A.shape[1]})
    if kernel is None:
        return selective_scan_reference(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            state=state, return_state=return_state, reverse=reverse,
        )
    flip = bool(reverse) and not kernel.reverse  # a kernel without a reverse scan gets flipped copies
    if flip:
        u, delta, B, C, z = (None if x is None else x.flip(-1) for x in (u, delta, B, C, z))
    out_dtype = u.dtype
    out, last_state = dispatch.run(kernel, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), state,
                                   bool(reverse) and not flip)
    out = out.to(out_dtype)
    if flip:
        out = out.flip(-1)
    return (out, last_state) if return_state else out


def _io_dtype(u, *same):
    """The one dtype the kernel reads u, delta, z (and on CUDA B, C) in: u's, or float32 when they differ."""
    io_dtype = u.dtype if u.dtype in KERNEL_DTYPES else torch.float32
    if any(x is not None and x.dtype != io_dtype for x in same):
        io_dtype = torch.float32
    return io_dtype


def _small(*xs):
    """A, D, delta_bias and the state, as the kernels read them: float32, contiguous."""
    return [None if x is None else x.float().contiguous() for x in xs]


def _run_cpu(u, delta, A, B, C, D, z, delta_bias, softplus, state, reverse):
    """The CPU kernel takes B and C as float32, transposed to (B, L, N) so that one time step's d_state values
    are contiguous; for a reverse scan they are time-flipped in that same copy (it reads u, delta, z backwards)."""
    io_dtype = _io_dtype(u, delta, z)
    u, delta = u.to(io_dtype).contiguous(), delta.to(io_dtype).contiguous()
    z = None if z is None else z.to(io_dtype).contiguous()
    A, D, delta_bias, state = _small(A, D, delta_bias, state)
    B, C = (x.float().transpose(1, 2) for x in (B, C))
    B, C = (x.flip(1).contiguous() if reverse else x.contiguous() for x in (B, C))
    return load("selective_scan", "cpu").forward(u, delta, A, B, C, D, z, delta_bias, softplus, state, reverse)


def _run_cuda(u, delta, A, B, C, D, z, delta_bias, softplus, state, reverse):
    """The CUDA kernel takes B and C as they come, (B, N, L) (one state's steps contiguous), in u's dtype."""
    assert not reverse, "the CUDA kernel has no reverse scan: the binding flips its inputs"
    io_dtype = _io_dtype(u, delta, z, B, C)
    u, delta, B, C = (x.to(io_dtype).contiguous() for x in (u, delta, B, C))
    z = None if z is None else z.to(io_dtype).contiguous()
    A, D, delta_bias, state = _small(A, D, delta_bias, state)
    return load("selective_scan", "cuda").forward(u, delta, A, B, C, D, z, delta_bias, softplus, state)


dispatch.register(dispatch.Kernel("selective_scan", "cpu", _run_cpu, lambda: load("selective_scan", "cpu"),
                                  reverse=True))
dispatch.register(dispatch.Kernel("selective_scan", "cuda", _run_cuda, lambda: load("selective_scan", "cuda"),
                                  limits={"d_state": CUDA_MAX_DSTATE}))


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, state):
    """Raise ValueError/TypeError naming the argument, its shape and the expected one."""
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
             "delta_bias": delta_bias, "state": state}
    require_real_tensors("selective_scan", named, "u", u)
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, channels, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (channels={dim}, d_state), got {tuple(A.shape)}")
    dstate = A.shape[1]
    expect = {
        "delta": (batch, dim, length), "z": (batch, dim, length),
        "B": (batch, dstate, length), "C": (batch, dstate, length),
        "D": (dim,), "delta_bias": (dim,), "state": (batch, dim, dstate),
    }
    for name, shape in expect.items():
        x = named[name]
        if x is not None and tuple(x.shape) != shape:
            hint = " (only input-dependent, single-group B and C are supported)" if name in "BC" else ""
            raise ValueError(
                f"selective_scan: {name} must have shape {shape}, got {tuple(x.shape)}{hint}"
            )
