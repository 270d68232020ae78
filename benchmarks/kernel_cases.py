"""The cases `hearscan bench kernels` times, one list per op in csrc's op registry (`csrc.OPS`), at the real
models' shapes (and ggml's anchor shapes), plus a T-scaling series; each case's inputs are in the ranges the
models produce.  The kernel tests reuse the input makers (`<op>_inputs`).

A case is a dict (`case`):
    {"name": str, "shape": str, "make_inputs": callable(dtype) -> kwargs for the op,
     "flops": int (per call), "tokens": int (per call)}
with optional keys
    "reference": bool   time the reference too (default True; False where its loop is too slow),
    "scaling_T": int    the case belongs to the op's T-scaling line (cost per token against T).
"""

from __future__ import annotations

import torch


def case(name, shape, make_inputs, flops, tokens, reference=True, scaling_T=None) -> dict:
    return {"name": name, "shape": shape, "make_inputs": make_inputs, "flops": flops, "tokens": tokens,
            "reference": reference, "scaling_T": scaling_T}


def cases(op: str, long: bool) -> list[dict]:
    """The cases of one op (`long`: add T = 32768 and slower references)."""
    return CASES[op](long)


# --- wkv7 ------------------------------------------------------------------------------------------------

def wkv7_inputs(B, T, H, N, dtype, seed=0):
    """Inputs in A-RWKV's ranges: w <= -0.5 (decay in [0.55, 1)), a = -kappa, b = kappa * a_rate."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, H, N)
    w = -torch.nn.functional.softplus(-torch.randn(shape, generator=g) * 2) - 0.5
    kappa = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    x = dict(
        r=torch.randn(shape, generator=g), w=w, k=torch.randn(shape, generator=g) * 0.5,
        v=torch.randn(shape, generator=g), a=-kappa, b=kappa * torch.rand(shape, generator=g),
    )
    return {name: t.to(dtype) for name, t in x.items()}


def wkv7_cases(long: bool) -> list[dict]:
    """Cases for `hearscan bench kernels`: A-RWKV's shapes, ggml's anchor shapes and a T-scaling series.

    A-RWKV: T = 496 tokens, C = 192/384/768 (H = 3/6/12, N = 64); the bidirectional pass scans both
    directions (officially one batch [X; flip(X)], in hearscan a second call with reverse=True: the same
    work), so a batch of 2 clips is a kernel batch of 4.  FLOP count 8 N^2 per head-token, as ggml.
    """
    shapes = [("ggml anchor C=384", 2, 496, 6), ("A-RWKV-T bi (2 clips)", 4, 496, 3),
              ("A-RWKV-S bi (2 clips)", 4, 496, 6), ("A-RWKV-B bi (2 clips)", 4, 496, 12),
              ("ggml anchor H=32", 4, 128, 32)]
    return _wkv_cases(wkv7_inputs, 8, shapes, long)


def _wkv_cases(inputs, flops_per_state_element: int, shapes, long: bool) -> list[dict]:
    """WKV cases at `shapes` (name, B, T, H), N = 64, plus the T-scaling series at B=2 H=6 (the reference
    timed at T = 512, and 2048 with `long`); FLOPs = flops_per_state_element * N^2 per head-token, as ggml."""
    N = 64

    def make(name, B, T, H, reference=True, scaling_T=None):
        return case(name, f"B={B} T={T} H={H} N={N}", lambda dtype: inputs(B, T, H, N, dtype),
                    flops=flops_per_state_element * N * N * B * T * H, tokens=B * T, reference=reference,
                    scaling_T=scaling_T)

    cases = [make(*shape) for shape in shapes]
    for T in (512, 2048, 8192) + ((32768,) if long else ()):
        cases.append(make(f"T-scaling T={T}", 2, T, 6, reference=T == 512 or (long and T == 2048), scaling_T=T))
    return cases


# --- wkv6 ------------------------------------------------------------------------------------------------

def wkv6_inputs(B, T, H, N, dtype, seed=0):
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


def wkv6_cases(long: bool) -> list[dict]:
    """Cases for `hearscan bench kernels`: ggml's anchor shape, RWKV-6 widths and a T-scaling series.

    FLOP count 6 N^2 per head-token, as ggml counts WKV-6.
    """
    return _wkv_cases(wkv6_inputs, 6, [("ggml anchor C=384", 2, 496, 6), ("C=768 (12 heads)", 2, 496, 12)], long)


# --- selective_scan --------------------------------------------------------------------------------------

def selective_scan_cases(long: bool) -> list[dict]:
    """Benchmark cases for `hearscan bench kernels`: AuM's real shapes, and T-scaling at d_inner = 768.

    AuM: d_inner = 2 D = 384 / 768 / 1536 (tiny / small / base), d_state 16, 513 tokens, B = 2; the
    small case uses T = 512, the shape of the ggml anchor (anchors.md).  FLOPs follow anchors.md:
    6 * d_inner * d_state per token.  The reference loop is timed at the real shapes only.
    """
    shapes = [(2, 384, 513, "AuM-tiny", True, None), (2, 768, 512, "AuM-small, ggml shape", True, 512),
              (2, 1536, 513, "AuM-base", True, None),
              (2, 768, 2048, "T-scaling", False, 2048), (2, 768, 8192, "T-scaling", False, 8192)]
    if long:
        shapes += [(1, 768, 32768, "T-scaling", False, 32768)]
    cases = []
    for batch, dim, length, label, with_reference, scaling_T in shapes:
        cases.append(case(label, f"B={batch} D={dim} N=16 L={length}",
                                selective_scan_inputs(batch, dim, 16, length),
                                flops=6 * dim * 16 * length * batch, tokens=length * batch,
                                reference=with_reference, scaling_T=scaling_T))
    return cases


def selective_scan_inputs(batch, dim, dstate, length):
    def make(dtype):
        g = torch.Generator().manual_seed(0)
        A = -torch.exp(torch.randn(dim, dstate, generator=g) * 0.5)
        return {
            "u": torch.randn(batch, dim, length, generator=g).to(dtype),
            "delta": (torch.randn(batch, dim, length, generator=g) - 2).to(dtype),
            "A": A,
            "B": torch.randn(batch, dstate, length, generator=g).to(dtype),
            "C": torch.randn(batch, dstate, length, generator=g).to(dtype),
            "D": torch.randn(dim, generator=g),
            "z": torch.randn(batch, dim, length, generator=g).to(dtype),
            "delta_bias": torch.randn(dim, generator=g) * 0.1,
            "delta_softplus": True,
        }

    return make


# --- mlstm -----------------------------------------------------------------------------------------------

def mlstm_cases(long: bool) -> list[dict]:
    """Benchmark cases for `hearscan bench kernels`: AxLSTM's real shapes, and T-scaling at DH = 192.

    AxLSTM runs 4 heads of 2D/4 dims on 251-token chunks (250 patches + CLS), B = 8 clips per batch.
    FLOPs count the linear (recurrent) form, 4 * DH^2 per head-token (C update and C q; one multiply-add
    = 2 FLOP), so they do not depend on the algorithm.  The recurrent reference loop is timed at the
    real shapes only.
    """
    shapes = [(8, 4, 251, 96, "AxLSTM-tiny", True, None), (8, 4, 251, 192, "AxLSTM-small", True, None),
              (8, 4, 251, 384, "AxLSTM-base", True, None),
              (1, 4, 1024, 192, "T-scaling", False, 1024), (1, 4, 4096, 192, "T-scaling", False, 4096)]
    if long:
        shapes += [(1, 4, 32768, 192, "T-scaling", False, 32768)]
    cases = []
    for batch, heads, length, dh, label, with_reference, scaling_T in shapes:
        cases.append(case(label, f"B={batch} H={heads} T={length} DH={dh}",
                                mlstm_inputs(batch, heads, length, dh),
                                flops=4 * dh * dh * heads * length * batch, tokens=length * batch,
                                reference=with_reference, scaling_T=scaling_T))
    return cases


def mlstm_inputs(batch, heads, length, dh):
    def make(dtype):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(batch, heads, length, dh, generator=g).to(dtype) for _ in range(3))
        return {
            "q": q, "k": k, "v": v,
            "igate": torch.randn(batch, heads, length, generator=g),
            "fgate": torch.randn(batch, heads, length, generator=g) + 3,
        }

    return make


CASES = {"wkv7": wkv7_cases, "wkv6": wkv6_cases, "selective_scan": selective_scan_cases, "mlstm": mlstm_cases}
