"""WKV-6 (RWKV-6 "Finch") scan: reference recurrence and dispatching binding.

Per head (N = 64), state S is N x N float32, S[i, j] with i = value row, j = key column:
    y_i  = sum_j r_j * (S_ij + u_j * k_j * v_i)
    S_ij = S_ij * exp(-exp(w_j)) + k_j * v_i
Inputs r, k, v, w: (B, T, H, N); bonus u: (H, N).  `w` is the log-log decay (time_decay + LoRA term),
decay = exp(-exp(w)); the scale is 1 (as `naive_recurrent_rwkv6(scale=1.0)`).
"""

from __future__ import annotations

import torch

from csrc._build import resolve_backend


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


def wkv6(r, k, v, w, u, state=None, return_state=False, backend=None):
    """WKV-6 scan.  r, k, v, w: (B, T, H, N); u: (H, N); state: (B, H, N, N) float32 or None.

    Returns y (B, T, H, N) in the input dtype, and the final state when `return_state`.
    """
    if resolve_backend(backend, "wkv6") == "reference":
        return wkv6_reference(r, k, v, w, u, state=state, return_state=return_state)
    raise NotImplementedError("compiled wkv6 binding not written yet")
