"""Selective scan (Mamba-1 SSM): reference recurrence and dispatching binding.

Signature and semantics follow mamba's `selective_scan_fn` / `selective_scan_ref` (single group):
    u, delta, z: (B, D, L);  A: (D, N) real;  B, C: (B, N, L) input-dependent;  D: (D,);  delta_bias: (D,)
    delta = softplus(delta + delta_bias) if delta_softplus (torch's softplus: identity above 20)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (state h: (B, D, N) float32)
    y_t = C_t . h_t + D * u_t;   out = y * silu(z) if z is given
AuM's bidirectional schemes are built from two calls on time-flipped inputs (see hear_modules/aum.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from csrc._build import resolve_backend


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    state=None, return_state=False, backend=None,
):
    """Plain per-step recurrence in float32.  Same signature as `selective_scan` (`backend` ignored)."""
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
    state=None, return_state=False, backend=None,
):
    """Selective scan; returns out (B, D, L) in u's dtype, and the final state (B, D, N) if asked."""
    if resolve_backend(backend, "selective_scan") == "reference":
        return selective_scan_reference(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            state=state, return_state=return_state,
        )
    raise NotImplementedError("compiled selective_scan binding not written yet")
