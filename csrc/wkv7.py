"""WKV-7 (RWKV-7 "x070") scan: reference recurrence and dispatching binding.

Per head (N = head size, 64 in A-RWKV), state S is N x N float32 with S[i, j], i = value row,
j = key column.  For each step t:
    sa   = sum_j a_j S_ij
    S_ij = S_ij * exp(-exp(w_j)) + sa_i * b_j + v_i * k_j
    y_i  = sum_j S_ij * r_j
Inputs r, w, k, v, a, b: (B, T, H, N), float32 or bfloat16.  `w` is the log-log decay as in the official
kernel (decay = exp(-exp(w))).  A-RWKV passes a = -kappa, b = kappa * a_rate, and runs the same causal
scan on the time-flipped sequence for its backward direction.
"""

from __future__ import annotations

import torch

from csrc._build import resolve_backend


def wkv7_reference(r, w, k, v, a, b, state=None, return_state=False, backend=None):
    """Plain per-step recurrence in float32.  Same signature as `wkv7` (`backend` is ignored)."""
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


def wkv7(r, w, k, v, a, b, state=None, return_state=False, backend=None):
    """WKV-7 scan.  r, w, k, v, a, b: (B, T, H, N); state: (B, H, N, N) float32 or None.

    Returns y (B, T, H, N) in the input dtype, and the final state when `return_state`.
    `backend`: "auto" | "compiled" | "reference" (default: $HEARSCAN_SCAN_BACKEND or auto).
    """
    if resolve_backend(backend, "wkv7") == "reference":
        return wkv7_reference(r, w, k, v, a, b, state=state, return_state=return_state)
    raise NotImplementedError("compiled wkv7 binding not written yet")
