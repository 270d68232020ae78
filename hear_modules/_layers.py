"""Layers shared by the families: ViT attention, MLP and block, patch embedding, 2-D sin-cos positions,
RMSNorm.  Parameter names follow timm's (qkv, proj, fc1, fc2, norm1, norm2); a family whose official
checkpoint names them otherwise renames its keys in its `checkpoint_filter_fn`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (with bias): softmax(q k^T / sqrt(dh)) v."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        # the official explicit softmax form; SDPA keeps long sequences in memory
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches of a spectrogram image: `proj` is a Conv2d with kernel = stride = `patch`."""

    def __init__(self, in_chans: int, dim: int, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, H' * W', dim), row-major over the patch grid."""
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_2d(dim: int, rows: int, cols: int, first: str, dtype=torch.float32) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos positions, (rows * cols, dim) float32, token r * cols + c.

    The first dim/2 values encode the `first` coordinate ("row" or "col"), the last dim/2 the other; each
    half is [sin, cos] of position x 1/10000^(i / (d/2)), computed in `dtype` (the official code's precision).
    """
    def one_d(pos, d):
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=dtype) / (d / 2))
        out = pos[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    r, c = torch.meshgrid(torch.arange(rows, dtype=dtype), torch.arange(cols, dtype=dtype), indexing="ij")
    a, b = (r, c) if first == "row" else (c, r)
    return torch.cat([one_d(a.reshape(-1), dim // 2), one_d(b.reshape(-1), dim // 2)], dim=1).float()


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (eps 1e-5, no bias), as Mamba's fused add+norm path; `out_dtype` on return."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        x = x.float()
        y = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(out_dtype)
