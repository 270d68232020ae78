"""EquiAV's audio encoder (JongSuk1/EquiAV, fine-tuned audio-only model) as a HEAR module.

Owns the audio branch of the EquiAV fine-tuning model: frontend, ViT encoder, the long-clip rule and the
timestamp grid.

Frontend (as the EquiAV dataset code): subtract the clip's mean; Kaldi fbank (htk_compat, 16 kHz,
128 mels, Hanning, no energy, dither 0, 10 ms shift, 25 ms frames); zero-pad at the end or cut to 1024
frames; normalise after padding `(fbank + 4.346) / 4.332`; repeat into 3 channels.

Encoder: the (B, 3, 1024, 128) input is transposed to (B, 3, 128, 1024); 16x16 patches -> an 8 x 64 grid
(frequency-major: token = band * 64 + column); + fixed sin-cos `pos_embed_a` (from the checkpoint) +
`modality_a`; pre-norm ViT blocks (qkv bias, GELU MLP x4, LayerNorm eps 1e-5, D / 64 heads); `norm_a`.
Scene embedding = mean of the `norm_a` tokens (D = 768 for the released model), exactly as the official
forward pass pools before its projection head.  Width, depth and MLP width are read from the keys.

Checkpoint: the fine-tuned state dict as the trainer saves it, every key prefixed `__M__.`; loaded
strictly.  The official format also carries weights the audio-only forward never uses —
`pred_v_inter.*` and each block's `norm1_a/norm1_v/norm2_a/norm2_v` — which are accepted by name and
dropped; any other unexpected key fails.  `pred_a_inter` and `mlp_head` (linear or MLP head) are kept
to reproduce the official logits.

Timestamp embeddings: each of the 64 patch columns (16 frames = 160 ms) averaged over the 8 frequency
bands, stamped at the column centre (a 160 ms hop from 87.5 ms); columns centred after the clip's end
are dropped (they hold mostly padding, and HEAR wants no timestamp past the audio).

Long-clip rule: the model sees 1024 frames (10.24 s).  A clip of up to 1024 frames is one window, padded
as the official code does (so its scene embedding is the official one).  A longer clip is cut into
consecutive 1024-frame windows, the last one aligned to the clip's end (no padding, overlapping its
neighbour); timestamp frames come from each window in turn, the last window contributing only the
columns after the previous window's; the scene embedding is the mean of the window embeddings.  Time
and memory are linear in clip length (attention is quadratic only within the fixed window).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from hear_modules._audio import check_audio_batch
from hear_modules._checkpoint import load_strict, read_checkpoint
from hear_modules._frontend import kaldi_fbank
from hear_modules._layers import Block, PatchEmbed, sincos_2d
from hear_modules._options import Option, common, parse_options, positive_int, seeded, warn_random_weights
from hear_modules._windows import (
    batch_timestamps, column_centres_ms, merge_columns, run_in_batches, timestamps_inside, window_starts,
)
from hearscan_core.errors import CheckpointError, UserFacingError

SAMPLE_RATE = 16000
N_MELS = 128
TARGET_FRAMES = 1024
PATCH = 16
GRID_F, GRID_T = N_MELS // PATCH, TARGET_FRAMES // PATCH  # 8 x 64
FBANK_MEAN, FBANK_STD = -4.346, 4.332
HEAD_DIM = 64
PREFIX = "__M__."
SIZES = {"base": 768}



def sincos_positions(dim: int) -> torch.Tensor:
    """EquiAV's fixed table for the random-weights default (checkpoints carry their own): frequency-major,
    the first half encoding the band, computed in float64."""
    return sincos_2d(dim, GRID_F, GRID_T, first="row", dtype=torch.float64)[None]


class EquiAVAudio(nn.Module):
    """The audio branch: (B, 1024, 128) normalised fbank -> tokens, embedding, projection, logits."""

    sample_rate = SAMPLE_RATE

    def __init__(self, dim: int = 768, depth: int = 12, hidden: int | None = None, proj_dim: int = 512,
                 head: list[int] | None = None, head_type: str = "linear"):
        super().__init__()
        self.dim = dim
        self.patch_embed_a = PatchEmbed(3, dim, PATCH)
        self.pos_embed_a = nn.Parameter(sincos_positions(dim), requires_grad=False)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks_a = nn.ModuleList(Block(dim, max(1, dim // HEAD_DIM), hidden or 4 * dim) for _ in range(depth))
        self.norm_a = nn.LayerNorm(dim)
        self.pred_a_inter = nn.Linear(dim, proj_dim)
        self.mlp_head = None
        if head is not None:  # [label_dim] for the linear head, [head_dim, label_dim] for the MLP head
            if head_type == "linear":
                self.mlp_head = nn.Sequential(nn.Linear(proj_dim, head[-1]))
            else:
                self.mlp_head = nn.Sequential(
                    nn.Linear(proj_dim, head[0]), nn.BatchNorm1d(head[0]), nn.ReLU(), nn.Linear(head[0], head[-1])
                )
        self.scene_embedding_size = dim
        self.timestamp_embedding_size = dim
        self.compute_dtype = torch.float32
        self.chunk_batch = 16

    @property
    def device(self) -> torch.device:
        return self.modality_a.device

    def tokens(self, fbank: torch.Tensor) -> torch.Tensor:
        """(N, 1024, 128) -> (N, 512, D) `norm_a` tokens, frequency-major."""
        x = fbank.to(self.compute_dtype)[:, None].expand(-1, 3, -1, -1).transpose(2, 3)  # (N, 3, 128, 1024)
        x = self.patch_embed_a(x)
        x = x + self.pos_embed_a + self.modality_a
        for block in self.blocks_a:
            x = block(x)
        return self.norm_a(x)

    def forward(self, fbank: torch.Tensor) -> dict:
        """All official outputs for a batch of normalised fbanks (used by the parity tests)."""
        tokens = self.tokens(fbank).float()
        weight_dtype = self.pred_a_inter.weight.dtype
        proj = self.pred_a_inter(tokens.to(weight_dtype)).mean(dim=1)
        out = {"tokens": tokens, "embedding": tokens.mean(dim=1), "proj": proj.float()}
        if self.mlp_head is not None:
            out["logits"] = self.mlp_head(proj).float()
        return out

    def fbank(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) audio -> (B, frames, 128) normalised fbank (at least 1024 frames, padded), frame counts."""
        n_frames = 1 + (audio.shape[1] - 400) // 160
        fb, _ = kaldi_fbank(audio.cpu(), SAMPLE_RATE, max(n_frames, TARGET_FRAMES), num_mel_bins=N_MELS, subtract_mean=True)
        return ((fb - FBANK_MEAN) / FBANK_STD).to(self.device), n_frames

    @torch.no_grad()
    def embed(self, audio) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Timestamp embeddings (B, frames, D), timestamps (B, frames) ms, scene embeddings (B, D)."""
        audio = check_audio_batch(audio, "equiav")
        fb, n_frames = self.fbank(audio)
        B = fb.shape[0]
        starts = windows(n_frames)
        batch = torch.stack([fb[:, s:s + TARGET_FRAMES] for s in starts], dim=1).flatten(0, 1)  # (B * W, 1024, 128)
        toks = run_in_batches(lambda x: self.tokens(x).float(), batch, self.chunk_batch)
        toks = toks.unflatten(0, (B, len(starts)))  # (B, W, 512, D)
        scene = toks.mean(dim=2).mean(dim=1)
        columns = toks.unflatten(2, (GRID_F, GRID_T)).mean(dim=2)  # (B, W, 64, D): pooled over bands
        columns, first_frames = merge_columns(columns, starts, PATCH)
        ts = timestamps_inside(column_centres_ms(first_frames, PATCH), audio.shape[1], SAMPLE_RATE)
        emb = columns[:, :len(ts)].contiguous()
        ts = batch_timestamps(ts, B, emb.device)
        return emb, ts, scene


def windows(n_frames: int) -> list[int]:
    """Start frames of the 1024-frame windows: one (padded) window up to 1024 frames, else
    consecutive windows with the last one aligned to the clip's end."""
    return window_starts(n_frames, TARGET_FRAMES, last="end")


def unused_official_keys(depth: int) -> list[str]:
    """Keys of the official format that the audio-only forward pass never reads."""
    keys = ["pred_v_inter.weight", "pred_v_inter.bias"]
    for i in range(depth):
        for norm in ("norm1_a", "norm1_v", "norm2_a", "norm2_v"):
            keys += [f"blocks_a.{i}.{norm}.weight", f"blocks_a.{i}.{norm}.bias"]
    return keys


def _depth(state: dict) -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(r"blocks_a\.(\d+)\.", k))})


def config_from_state_dict(state: dict, source: str) -> dict:
    for key in ("patch_embed_a.proj.weight", "pos_embed_a", "norm_a.weight", "pred_a_inter.weight"):
        if key not in state:
            raise CheckpointError(
                f"checkpoint {source} has no '{key}' (after removing the '{PREFIX}' prefix): not an EquiAV "
                "fine-tuned checkpoint with an audio branch"
            )
    dim = state["norm_a.weight"].shape[0]
    if tuple(state["pos_embed_a"].shape) != (1, GRID_F * GRID_T, dim):
        raise CheckpointError(
            f"checkpoint {source}: pos_embed_a is {tuple(state['pos_embed_a'].shape)}, expected (1, 512, {dim}) "
            "(1024 frames x 128 mels in 16x16 patches)"
        )
    config = {
        "dim": dim,
        "depth": _depth(state),
        "hidden": state["blocks_a.0.mlp.fc1.weight"].shape[0] if "blocks_a.0.mlp.fc1.weight" in state else 4 * dim,
        "proj_dim": state["pred_a_inter.weight"].shape[0],
        "head": None,
        "head_type": "linear",
    }
    if "mlp_head.3.weight" in state:
        config["head"] = [state["mlp_head.0.weight"].shape[0], state["mlp_head.3.weight"].shape[0]]
        config["head_type"] = "mlp"
    elif "mlp_head.0.weight" in state:
        config["head"] = [state["mlp_head.0.weight"].shape[0]]
    return config


OPTIONS = common(tuple(SIZES)) + [Option("chunk_batch", convert=positive_int, rule="a positive integer", default=16)]


def checkpoint_filter_fn(raw: dict, source: str) -> dict:
    """The fine-tuned checkpoint's quirks: every key prefixed `__M__.` (a `{'state_dict': ...}` wrapper is
    tolerated), and the weights the audio-only forward never reads (`pred_v_inter.*`, each block's
    `norm1_a/norm1_v/norm2_a/norm2_v`), which are dropped by name; any other unexpected key fails."""
    if isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not raw or not all(k.startswith(PREFIX) for k in raw):
        others = sorted(k for k in raw if not k.startswith(PREFIX))[:5]
        raise CheckpointError(
            f"checkpoint {source}: expected the EquiAV fine-tuned state dict with every key prefixed "
            f"'{PREFIX}' (as the EquiAV trainer saves it); found keys like {others}"
        )
    state = {k[len(PREFIX):]: v for k, v in raw.items()}
    unused = set(unused_official_keys(_depth(state)))
    return {k: v for k, v in state.items() if k not in unused}


def load_model(model_file_path: str = "", **options) -> EquiAVAudio:
    """Options: size ("base", the released model; ignored with a checkpoint), device, dtype,
    chunk_batch (windows per encoder call); scan_backend is accepted for uniformity (no scan here)."""
    opts = parse_options("equiav", options, OPTIONS)
    if model_file_path:
        path = Path(model_file_path).expanduser()
        state = checkpoint_filter_fn(read_checkpoint(path), str(path))
        config = config_from_state_dict(state, str(path))
        model = EquiAVAudio(**config)
        load_strict(model, state, str(path))
        model.checkpoint_path = str(path)
    else:
        with seeded(0):
            model = EquiAVAudio()
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim > 1 and name != "pos_embed_a":
                    p.normal_(0.0, 0.02, generator=g)
        warn_random_weights("equiav", "NO WEIGHTS GIVEN - ViT-B", "Pass the fine-tuned EquiAV checkpoint (.pth).")
        model.checkpoint_path = None
    model.chunk_batch = opts["chunk_batch"]
    model.compute_dtype = opts["dtype"]
    model.to(device=opts["device"], dtype=model.compute_dtype)
    return model.eval()


def _check(model) -> EquiAVAudio:
    if not isinstance(model, EquiAVAudio):
        raise UserFacingError("hear_modules.equiav: pass the model returned by hear_modules.equiav.load_model()")
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: EquiAVAudio):
    emb, ts, _ = _check(model).embed(audio)
    return emb, ts


def get_scene_embeddings(audio: torch.Tensor, model: EquiAVAudio) -> torch.Tensor:
    return _check(model).embed(audio)[2]


