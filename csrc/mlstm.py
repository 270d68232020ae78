"""mLSTM cell (xLSTM): official quadratic parallel form, linear-time reference, dispatching binding.

Layout as the official `parallel_stabilized_simple`: q, k, v: (B, H, T, DH); igate, fgate: (B, H, T)
pre-activations.  With log f_t = logsigmoid(fgate_t), i_t = igate_t:
    m_t = max(log f_t + m_{t-1}, i_t)                    (m_0 = -inf)
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i_t - m_t) v_t (k_t / sqrt(DH))^T
    n_t = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(i_t - m_t) k_t / sqrt(DH)
    h_t = C_t q_t / (max(|n_t . q_t|, exp(-m_t)) + eps)
which equals the parallel form row by row (m_t is its row maximum of log D).
State: (C (B, H, DH, DH), n (B, H, DH), m (B, H)), float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from csrc._build import resolve_backend


def mlstm_parallel_reference(q, k, v, igate, fgate, eps=1e-6):
    """The official quadratic form (O(T^2) memory); no state.  Used to check the linear forms."""
    dtype = q.dtype
    q, k, v, igate, fgate = (x.float() for x in (q, k, v, igate, fgate))
    T, DH = q.shape[-2], q.shape[-1]
    log_f = F.logsigmoid(fgate)[..., None]  # (B, H, T, 1)
    cum = torch.cat([log_f.new_zeros(*log_f.shape[:-2], 1, 1), torch.cumsum(log_f, dim=-2)], dim=-2)
    rep = cum.repeat(1, 1, 1, T + 1)
    log_fg = (rep - rep.transpose(-2, -1))[..., 1:, 1:]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    log_fg = torch.where(causal, log_fg, -float("inf"))
    log_D = log_fg + igate[..., None, :]
    max_log_D = torch.max(log_D, dim=-1, keepdim=True).values
    D = torch.exp(log_D - max_log_D)
    Cm = (q @ (k / math.sqrt(DH)).transpose(-2, -1)) * D
    normalizer = torch.maximum(Cm.sum(dim=-1, keepdim=True).abs(), torch.exp(-max_log_D))
    return ((Cm / (normalizer + eps)) @ v).to(dtype)


def mlstm_reference(q, k, v, igate, fgate, state=None, return_state=False, eps=1e-6, backend=None):
    """Linear-time recurrent form in float32.  Same signature as `mlstm` (`backend` is ignored)."""
    dtype = q.dtype
    q, k, v, igate, fgate = (x.float() for x in (q, k, v, igate, fgate))
    B, H, T, DH = q.shape
    k = k / math.sqrt(DH)
    log_f = F.logsigmoid(fgate)
    if state is None:
        Cs = q.new_zeros(B, H, DH, DH)
        n = q.new_zeros(B, H, DH)
        m = q.new_full((B, H), -float("inf"))
    else:
        Cs, n, m = (s.float().clone() for s in state)
    hs = []
    for t in range(T):
        m_new = torch.maximum(log_f[..., t] + m, igate[..., t])
        fw = torch.exp(log_f[..., t] + m - m_new)
        iw = torch.exp(igate[..., t] - m_new)
        Cs = fw[..., None, None] * Cs + iw[..., None, None] * v[..., t, :, None] * k[..., t, None, :]
        n = fw[..., None] * n + iw[..., None] * k[..., t, :]
        m = m_new
        num = torch.einsum("bhij,bhj->bhi", Cs, q[..., t, :])
        den = torch.maximum((n * q[..., t, :]).sum(-1).abs(), torch.exp(-m)) + eps
        hs.append(num / den[..., None])
    h = torch.stack(hs, dim=2) if hs else q.new_zeros(B, H, 0, DH)
    h = h.to(dtype)
    return (h, (Cs, n, m)) if return_state else h


def mlstm(q, k, v, igate, fgate, state=None, return_state=False, eps=1e-6, backend=None):
    """mLSTM in linear time.  Returns h (B, H, T, DH) in q's dtype, and (C, n, m) if `return_state`."""
    if resolve_backend(backend, "mlstm") == "reference":
        return mlstm_reference(q, k, v, igate, fgate, state=state, return_state=return_state, eps=eps)
    raise NotImplementedError("compiled mlstm binding not written yet")
