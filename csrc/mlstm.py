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

from csrc import dispatch
from csrc._build import load
from csrc._checks import KERNEL_DTYPES, require_real_tensors

CUDA_MAX_QK_WIDTH = 512  # the CUDA kernel's limit on the q/k head width (mlstm_cuda.cu)


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
        Cs = q.new_zeros(B, H, v.shape[-1], DH)
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
    """mLSTM in linear time.  Returns h (B, H, T, DH) in q's dtype, and (C, n, m) if `return_state`.

    q, k: (B, H, T, DH); v: (B, H, T, DHV) (DHV = DH in xLSTM); igate, fgate: (B, H, T) (or (B, H, T, 1),
    the official layout) pre-activations.  q, k, v may be float32 or bfloat16 in any layout; gates and
    state are computed in float32.  The compiled kernel is forward-only: when autograd needs a gradient,
    "auto" uses the (differentiable) reference.  `backend`: "auto" | "compiled" | "reference" (default:
    $HEARSCAN_SCAN_BACKEND or auto); the kernel for the tensors' device is chosen by `csrc.dispatch`.
    """
    igate, fgate = _check_inputs(q, k, v, igate, fgate, state)
    kernel = dispatch.select("mlstm", q.device, backend, inputs=(q, k, v, igate, fgate, state),
                             sizes={"q/k widths": q.shape[3]})
    if kernel is None:
        return mlstm_reference(q, k, v, igate, fgate, state=state, return_state=return_state, eps=eps)
    out_dtype = q.dtype
    io_dtype = q.dtype if q.dtype in KERNEL_DTYPES and k.dtype == v.dtype == q.dtype else torch.float32
    q, k, v = (x.to(io_dtype).contiguous() for x in (q, k, v))
    igate, fgate = (x.float().contiguous() for x in (igate, fgate))
    C0, n0, m0 = (None, None, None) if state is None else (s.float().contiguous() for s in state)
    h, C, n, m = dispatch.run(kernel, q, k, v, igate, fgate, C0, n0, m0, float(eps),
                              chunk_size(q.shape[2], q.shape[3], v.shape[3]), bool(return_state))
    h = h.to(out_dtype)
    return (h, (C, n, m)) if return_state else h


def chunk_size(length: int, dqk: int, dv: int) -> int:
    """Tokens per chunk of the compiled kernel.

    Per token a chunk of size c costs ~4*c*DH FLOPs inside the chunk and ~4*DH^2 for carrying the state,
    so one chunk (the plain parallel form) is cheapest for short sequences; beyond that chunks of ~DH
    tokens balance the two terms.  Capped so the (c, c) score matrix stays small and cost stays linear.
    """
    width = max(dqk, dv)
    one_pass_limit = max(256, 2 * width)  # AxLSTM: T = 251 tokens -> one chunk at every size
    if length <= one_pass_limit:
        return max(length, 1)
    return int(min(max(64, width), 512))


def _runner(device_type: str):
    def run(*args):
        return load("mlstm", device_type).forward(*args)
    return run


# One signature on both devices (the CUDA kernel is recurrent and ignores the chunk size).
dispatch.register(dispatch.Kernel("mlstm", "cpu", _runner("cpu"), lambda: load("mlstm", "cpu")))
dispatch.register(dispatch.Kernel("mlstm", "cuda", _runner("cuda"), lambda: load("mlstm", "cuda"),
                                  limits={"q/k widths": CUDA_MAX_QK_WIDTH}))


def _check_inputs(q, k, v, igate, fgate, state):
    """Validate shapes/dtypes (ValueError/TypeError naming the argument); return gates as (B, H, T)."""
    named = {"q": q, "k": k, "v": v, "igate": igate, "fgate": fgate}
    require_real_tensors("mlstm", named, "q", q)
    if q.dim() != 4:
        raise ValueError(f"mlstm: q must be (batch, heads, time, head_dim), got shape {tuple(q.shape)}")
    B, H, T, DH = q.shape
    if tuple(k.shape) != (B, H, T, DH):
        raise ValueError(f"mlstm: k must have q's shape {(B, H, T, DH)}, got {tuple(k.shape)}")
    if v.dim() != 4 or tuple(v.shape[:3]) != (B, H, T):
        raise ValueError(f"mlstm: v must be {(B, H, T)} + (value_dim,), got {tuple(v.shape)}")
    gates = []
    for name in ("igate", "fgate"):
        g = named[name]
        if g.dim() == 4 and g.shape[-1] == 1:  # the official (B, H, T, 1) layout
            g = g[..., 0]
        if tuple(g.shape) != (B, H, T):
            raise ValueError(
                f"mlstm: {name} must have shape {(B, H, T)} (or {(B, H, T, 1)}), got {tuple(named[name].shape)}"
            )
        gates.append(g)
    if state is not None:
        if not isinstance(state, (tuple, list)) or len(state) != 3:
            raise TypeError("mlstm: state must be the (C, n, m) tuple returned with return_state=True")
        expect = {"C": (B, H, v.shape[3], DH), "n": (B, H, DH), "m": (B, H)}
        for (name, shape), s in zip(expect.items(), state):
            if not isinstance(s, torch.Tensor) or tuple(s.shape) != shape:
                got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
                raise ValueError(f"mlstm: state {name} must have shape {shape}, got {got}")
    return gates
