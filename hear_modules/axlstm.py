"""AxLSTM (xLSTM_SSAST, SarthakYadav/axlstm-official): HEAR module identical to the official wrapper.

Owns the ViL (Vision-LSTM) blocks; the frontend, 2-s chunking, output arrangement, timestamps and
checkpoint handling are the official HEAR wrapper's and live in `hear_modules._ast_wrapper` (shared with
SSAST).  In short: 16 kHz -> 80-band log-mel normalised per clip -> 200-frame chunks (a full extra zero
chunk when the frame count is a multiple of 200) -> 250 patch tokens + CLS per chunk -> 12 ViL blocks ->
50 frames of 5 * D per chunk (D = 192/384/768 for tiny/small/base: 960/1920/3840 values per frame).

Block (pre-norm, residual): LayerNorm (no bias, weight applied as 1 + w, eps 1e-5) -> proj_up D -> 2 x 2D
(x, z); x -> causal depthwise conv (k=4) -> SiLU = c; q, k from c and v from x through block-diagonal
4x4 projections; mLSTM with 4 heads (gates: Linear(6D -> 4) on [q, k, v]); per-head group norm
(1 + w); + learnable_skip * c; * SiLU(z); proj_down 2D -> D.  Odd blocks reverse the whole sequence
(CLS included) and reverse back: the official bidirectional alternation.

The mLSTM runs on `csrc.mlstm`, the linear-time recurrent form (the official code uses the quadratic
parallel form; both agree to float rounding), so a chunk costs O(tokens) and, with `chunk_frames`
longer than 200, the encoder stays linear in clip length.  `scan_backend` picks the csrc backend.

Timestamp hop: 50 frames per 2-s chunk, stamped `i * clip_seconds / n_frames` (about 40 ms) as the
official wrapper does; `arrangement="time"` gives time-ordered frames stamped at patch centres
(40 t + 15 ms) instead of the official order (see `_ast_wrapper`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import csrc
from hear_modules import _ast_wrapper as wrapper
from hearscan_core.errors import CheckpointError

N_CELL_HEADS = 4  # mLSTM heads (the official qkv_block_size), independent of width
QKV_BLOCK = 4  # block-diagonal q/k/v projections of 4x4 blocks
CONV_KERNEL = 4



class HeadwiseLinear(nn.Module):
    """Block-diagonal projection (official LinearHeadwiseExpand): weight (n_blocks, out, in), no bias."""

    def __init__(self, dim: int, block: int = QKV_BLOCK):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim // block, block, block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nb, out, inp = self.weight.shape
        y = torch.einsum("...hd,hod->...ho", x.unflatten(-1, (nb, inp)), self.weight)
        return y.flatten(-2)


class CausalConv1d(nn.Module):
    def __init__(self, dim: int, kernel: int = CONV_KERNEL):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, groups=dim, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, C)
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


class HeadNorm(nn.Module):
    """Per-head group norm without bias, weight applied as 1 + w (official MultiHeadLayerNorm)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, NH, S, DH) -> (B, S, NH * DH)
        B, NH, S, DH = h.shape
        flat = h.transpose(1, 2).reshape(B * S, NH * DH)
        return F.group_norm(flat, NH, weight=1.0 + self.weight, eps=1e-5).view(B, S, NH * DH)


class MLSTMCell(nn.Module):
    def __init__(self, inner: int, heads: int = N_CELL_HEADS, scan_backend: str | None = None):
        super().__init__()
        self.heads = heads
        self.igate = nn.Linear(3 * inner, heads)
        self.fgate = nn.Linear(3 * inner, heads)
        self.outnorm = HeadNorm(inner)
        self.scan_backend = scan_backend

    def forward(self, q, k, v):  # (B, S, inner) each
        gates_in = torch.cat([q, k, v], dim=-1)
        ig = self.igate(gates_in).transpose(1, 2)  # (B, NH, S)
        fg = self.fgate(gates_in).transpose(1, 2)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, NH, S, DH)
        h = csrc.mlstm(q, k, v, ig, fg, backend=self.scan_backend)
        return self.outnorm(h.to(q.dtype))


class ViLLayer(nn.Module):
    def __init__(self, dim: int, reverse: bool, expansion: int = 2, scan_backend: str | None = None):
        super().__init__()
        inner = expansion * dim
        self.reverse = reverse
        self.proj_up = nn.Linear(dim, 2 * inner, bias=False)
        self.q_proj = HeadwiseLinear(inner)
        self.k_proj = HeadwiseLinear(inner)
        self.v_proj = HeadwiseLinear(inner)
        self.conv1d = CausalConv1d(inner)
        self.mlstm_cell = MLSTMCell(inner, scan_backend=scan_backend)
        self.learnable_skip = nn.Parameter(torch.ones(inner))
        self.proj_down = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reverse:  # bidirectional by alternation: the whole sequence, CLS included
            x = x.flip(1)
        x_mlstm, z = self.proj_up(x).chunk(2, dim=-1)
        c = F.silu(self.conv1d(x_mlstm))
        h = self.mlstm_cell(self.q_proj(c), self.k_proj(c), self.v_proj(x_mlstm))
        y = self.proj_down((h + self.learnable_skip * c) * F.silu(z))
        return y.flip(1) if self.reverse else y


class ViLBlock(nn.Module):
    def __init__(self, dim: int, reverse: bool, expansion: int = 2, scan_backend: str | None = None):
        super().__init__()
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.zeros(dim))
        self.layer = ViLLayer(dim, reverse, expansion, scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(wrapper.layer_norm_plus_one(x, self.norm.weight))


class AxLSTMEncoder(wrapper.ChunkEncoder):
    def __init__(self, dim: int, depth: int, expansion: int = 2, scan_backend: str | None = None):
        super().__init__(dim)
        self.blocks = nn.ModuleList(
            ViLBlock(dim, reverse=i % 2 == 1, expansion=expansion, scan_backend=scan_backend) for i in range(depth)
        )

    def init_random(self, generator=None) -> None:
        super().init_random(generator)
        with torch.no_grad():
            for block in self.blocks:
                cell = block.layer.mlstm_cell
                cell.fgate.weight.zero_()
                cell.igate.weight.zero_()
                cell.fgate.bias.copy_(torch.linspace(3.0, 6.0, cell.fgate.bias.numel()))  # official init
                cell.igate.bias.normal_(0.0, 0.1, generator=generator)
                for proj in (block.layer.q_proj, block.layer.k_proj, block.layer.v_proj):
                    proj.weight.normal_(0.0, math.sqrt(2 / (5 * self.dim)), generator=generator)


def config_from_state_dict(state: dict, source: str) -> dict:
    config = wrapper.common_config_from_state_dict(state, source)
    if "blocks.0.attn.qkv_layer.weight" in state:
        raise CheckpointError(f"{source} is an SSAST (ViT) checkpoint: load it with hear_modules.ssast")
    key = "blocks.0.layer.proj_up.weight"
    if key not in state:
        raise CheckpointError(f"{source} has no {key}: not an AxLSTM checkpoint")
    config["expansion"] = state[key].shape[0] // (2 * config["dim"])
    return config


def _make_encoder(config: dict, options: dict) -> AxLSTMEncoder:
    return AxLSTMEncoder(
        config["dim"], config["depth"], config.get("expansion", 2), scan_backend=options.get("scan_backend")
    )


def load_model(model_file_path: str = "", **options) -> wrapper.OfficialWrapper:
    """Options: size (tiny/small/base), device, dtype, scan_backend, arrangement (official/time),
    chunk_frames (200 = official), chunk_batch (chunks per encoder call)."""
    return wrapper.build_wrapper("axlstm", _make_encoder, config_from_state_dict, model_file_path, options,
                                 ops=("mlstm",))


def get_timestamp_embeddings(audio: torch.Tensor, model: wrapper.OfficialWrapper):
    return wrapper.check_model(model, "axlstm").embed(audio)


def get_scene_embeddings(audio: torch.Tensor, model: wrapper.OfficialWrapper) -> torch.Tensor:
    emb, _ = wrapper.check_model(model, "axlstm").embed(audio)
    return emb.mean(dim=1)
