"""A-RWKV (AudioRWKV, Xiong et al.): bidirectional RWKV-7 over a 2-D patch grid, as a HEAR module.

Owns: the official frontend, the A-RWKV backbone on the `csrc.wkv7` scan, strict loading of the official
AudioRWKV checkpoints (raw state_dicts, with or without DataParallel's `module.` prefix, bf16 or fp32; the
configuration - width, heads, LoRA widths, depth, token grid, class count - is read from keys and shapes),
and the rules that turn the fixed 10-s model into scene and timestamp embeddings for any clip length.

Frontend (official validation loader): the module takes 16 kHz audio (`sample_rate` 16000) and resamples
it to 32 kHz with torchaudio's `Resample(16000, 32000)` at default settings, as the official loader does
for AudioSet's 16 kHz files; Kaldi fbank at 32 kHz (htk_compat, hanning, 128 bins, 50-14000 Hz, dither 0,
25 ms window, 10 ms shift, no mean removal); frames are zero-padded in the log domain or cut to 992, then
normalised `(fb + 4.421761) / 4.32408`.

Backbone: Conv2d(1, C, 16, stride 16) stem -> 62 x 8 (time x mel) tokens, time-major, + learned position
embedding; pre-LN blocks whose token shift is a depthwise 3x3 convolution on the grid (ConvShift), RWKV-7
time-mix with value residual, in-context rate, output gate and bonus; Bi-WKV: the causal scan runs on X
and on flip_T(X) (the official code scans [X; flip_T(X)] as one batch; here a second call reads X
backwards, `reverse=True`, without flipped copies) and a per-token, per-head sigmoid gate mixes both
directions; GroupNorm(H, eps 6.4e-4); channel-mix relu^2 with biases.  Embedding = ln_out(mean of tokens).

Clip-length rules (F = fbank frames of the clip, 992 = one native window, 998 = frames of a 10.0 s clip):
- F <= 998 (clips up to 10.0 s): exactly the official pipeline - one window, padded or cut to 992 frames,
  scene embedding = ln_out(mean of all 496 tokens), padded tokens included as in the official model.
  This is the parity case (tests/test_arwkv.py, fixture made by the official code).
- F > 998: K = ceil(F / 992) windows of 992 frames.  Windows 0..K-2 are back to back; the last window
  starts at the latest 16-frame-aligned position that still reaches the end of the clip (it overlaps its
  neighbour and carries < 16 frames of official zero padding), so every window is a full 10-s input like
  the ones the model was trained on, instead of a mostly-padded tail.  The token time-patches of all
  windows form one regular grid of ceil(F / 16) patches (where windows overlap, the earlier window's
  patch is kept).  Scene embedding = ln_out(mean of the tokens of that grid) - the official definition,
  applied to the whole clip.
Timestamp embeddings: the natural time resolution of the model is one token time-patch = 16 frames =
160 ms.  Each time patch's 8 mel-patch tokens are averaged and passed through ln_out (the scene operation
restricted to one time step), stamped at the patch centre: frames 16p..16p+15 span 160p .. 160p+175 ms,
centre 160p + 87.5 ms.  Hop 160 ms, first stamp 87.5 ms; patches whose centre lies past the end of the
clip (padding) are not reported.  hear-validator warns above a 50 ms hop; interpolating the token grid
would invent resolution the model does not have, so the coarse, stated hop is kept.
Very short clips: fewer than 400 samples (25 ms, one fbank frame) is an AudioInputError asking to pad;
a clip shorter than 87.5 ms gets one timestamp at its middle.  Silence is fine (log floor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

import csrc
from hear_modules._audio import check_audio_batch
from hear_modules._checkpoint import load_strict, read_checkpoint, strip_prefix
from hear_modules._frontend import kaldi_fbank
from hear_modules._options import common, parse_options, warn_random_weights
from hear_modules._windows import (
    batch_timestamps, column_centres_ms, merge_columns, run_in_batches, timestamps_inside, window_starts,
)
from hearscan_core.errors import CheckpointError, UserFacingError

SAMPLE_RATE = 16000
MODEL_RATE = 32000
NUM_MELS = 128
PATCH = 16
TARGET_FRAMES = 992
FBANK_MEAN = -4.421761
FBANK_STD = 4.32408
FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0
HEAD_SIZE = 64
DEPTH = 12
NUM_CLASSES = 527
SIZES = {"tiny": 192, "small": 384, "base": 768}
WINDOW_BATCH = 16  # windows per backbone call: bounds memory on long clips
FBANK_BLOCK_FRAMES = 3000  # fbank frames computed at once (30 s): bounds the frontend's memory



_RESAMPLERS: dict[torch.device, torchaudio.transforms.Resample] = {}


def _resample(audio: torch.Tensor) -> torch.Tensor:
    """16 -> 32 kHz with torchaudio's Resample transform at default settings, as the official loader.

    Kept outside the model: its float32 kernel must not join the state_dict or be cast to bf16.
    """
    if audio.device not in _RESAMPLERS:
        _RESAMPLERS[audio.device] = torchaudio.transforms.Resample(SAMPLE_RATE, MODEL_RATE).to(audio.device)
    return _RESAMPLERS[audio.device](audio)


def frames_for(n_samples: int, rate: int = MODEL_RATE) -> int:
    """Kaldi frames (snip_edges) of a clip of `n_samples` at `rate`."""
    win, hop = int(rate * FRAME_LENGTH_MS / 1000), int(rate * FRAME_SHIFT_MS / 1000)
    return 0 if n_samples < win else 1 + (n_samples - win) // hop


# Clips up to 10.0 s follow the official pad/cut exactly; 998 frames is a 10.0 s clip at 32 kHz.
OFFICIAL_MAX_FRAMES = frames_for(10 * MODEL_RATE)


@dataclass
class ARWKVConfig:
    n_embd: int = 192
    n_layer: int = DEPTH
    head_size: int = HEAD_SIZE
    dim_ffn: int = 768
    lora_decay: int = 32
    lora_aaa: int = 32
    lora_mv: int = 32
    lora_gate: int = 32
    num_classes: int = NUM_CLASSES
    grid_t: int = TARGET_FRAMES // PATCH  # 62
    grid_f: int = NUM_MELS // PATCH  # 8

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def for_width(cls, width: int) -> "ARWKVConfig":
        """The official configuration rule (LoRA widths from the RWKV-7 'suggestion' formulas)."""
        def lora(factor, power):
            return max(32, int(round(factor * width**power / 32) * 32))
        return cls(
            n_embd=width, dim_ffn=4 * width, lora_decay=lora(1.8, 0.5), lora_aaa=lora(1.8, 0.5),
            lora_mv=lora(1.3, 0.5), lora_gate=lora(0.6, 0.8),
        )


def _conv_shift(conv: nn.Conv2d, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """ConvShift: depthwise 3x3 convolution on the (time, mel) token grid minus the input."""
    B, T, C = x.shape
    y = conv(x.transpose(1, 2).reshape(B, C, *grid)).reshape(B, C, T).transpose(1, 2)
    return y - x


class TimeMix(nn.Module):
    """RWKV-7 time-mix with ConvShift and the bidirectional (Bi-WKV) scan."""

    def __init__(self, cfg: ARWKVConfig, layer_id: int):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.layer_id, self.n_head, self.head_size = layer_id, H, N
        self.grid = (cfg.grid_t, cfg.grid_f)
        for name in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g", "w0", "a0", "v0", "k_k", "k_a"):
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, C)))
        for name, d in (("w", cfg.lora_decay), ("a", cfg.lora_aaa), ("v", cfg.lora_mv), ("g", cfg.lora_gate)):
            setattr(self, f"{name}1", nn.Parameter(torch.zeros(C, d)))
            setattr(self, f"{name}2", nn.Parameter(torch.zeros(d, C)))
        self.r_k = nn.Parameter(torch.zeros(H, N))
        self.gate = nn.Conv1d(C, H, kernel_size=1, groups=H, bias=False)
        self.time_shift = nn.Conv2d(C, C, kernel_size=3, padding=1, groups=C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=6.4e-4)  # 1e-5 * head_size_divisor**2, as official

    def forward(self, x, v_first, scan_backend):
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        xx = _conv_shift(self.time_shift, x, self.grid)
        xr, xw, xk, xv, xa, xg = (x + xx * mu for mu in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = self.receptance(xr)
        w = -F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5  # log-log decay, < -0.5
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:  # value residual towards layer 0's values
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)

        # Bi-WKV: the causal scan over X and over flip_T(X).  The official code flips copies of the six
        # inputs into one batch [X; flip_T(X)] and flips the output back; reverse=True reads X backwards
        # and writes y_bwd in token order, which is the same scan without the copies (tests/test_wkv7.py).
        scan_in = [t.view(B, T, H, N) for t in (r, w, k, v, -kk, kk * a)]
        y_fwd = csrc.wkv7(*scan_in, backend=scan_backend)
        y_bwd = csrc.wkv7(*scan_in, backend=scan_backend, reverse=True)
        gate = torch.sigmoid(self.gate(xx.transpose(1, 2))).transpose(1, 2).unsqueeze(3)  # (B, T, H, 1)
        y = gate * y_fwd + (1.0 - gate) * y_bwd

        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (r.view(B, T, H, N) * k.view(B, T, H, N) * self.r_k).sum(-1, keepdim=True) * v.view(B, T, H, N)
        y = y + bonus.view(B, T, C)
        return self.output(y * g), v_first


class ChannelMix(nn.Module):
    def __init__(self, cfg: ARWKVConfig):
        super().__init__()
        C = cfg.n_embd
        self.grid = (cfg.grid_t, cfg.grid_f)
        self.x_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_shift = nn.Conv2d(C, C, kernel_size=3, padding=1, groups=C, bias=False)
        self.key = nn.Linear(C, cfg.dim_ffn)
        self.value = nn.Linear(cfg.dim_ffn, C)

    def forward(self, x):
        k = x + _conv_shift(self.time_shift, x, self.grid) * self.x_k
        return self.value(torch.relu(self.key(k)) ** 2)


class Block(nn.Module):
    def __init__(self, cfg: ARWKVConfig, layer_id: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.att = TimeMix(cfg, layer_id)
        self.ffn = ChannelMix(cfg)

    def forward(self, x, v_first, scan_backend):
        dx, v_first = self.att(self.ln1(x), v_first, scan_backend)
        x = x + dx
        return x + self.ffn(self.ln2(x)), v_first


class AudioRWKV(nn.Module):
    """The A-RWKV backbone plus the HEAR attributes.  Parameter names follow the official state_dict."""

    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: ARWKVConfig, scan_backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.scan_backend = scan_backend
        self.scene_embedding_size = cfg.n_embd
        self.timestamp_embedding_size = cfg.n_embd
        self.target_frames = cfg.grid_t * PATCH
        self.emb = nn.Conv2d(1, cfg.n_embd, kernel_size=PATCH, stride=PATCH)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_t * cfg.grid_f, cfg.n_embd))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.num_classes, bias=False)

    @property
    def device(self) -> torch.device:
        return self.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.dtype

    # --- frontend ---------------------------------------------------------------------------------
    def log_fbank(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz float32 -> (B, F, 128) un-normalised log-mel at 32 kHz, all frames of the clip."""
        audio32 = _resample(audio.float())
        n_frames = max(frames_for(audio32.shape[1]), 1)
        win, hop = int(MODEL_RATE * FRAME_LENGTH_MS / 1000), int(MODEL_RATE * FRAME_SHIFT_MS / 1000)
        # Kaldi frames (snip_edges) depend only on their own 25 ms of samples, so the fbank of a long clip
        # is computed in blocks of frames: identical values, memory bounded by the block, not the clip.
        pieces = []
        for first in range(0, n_frames, FBANK_BLOCK_FRAMES):
            count = min(FBANK_BLOCK_FRAMES, n_frames - first)
            chunk = audio32[:, first * hop: (first + count - 1) * hop + win]
            fb, _ = kaldi_fbank(chunk, MODEL_RATE, count, NUM_MELS, low_freq=50, high_freq=14000)
            pieces.append(fb)
        return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

    @staticmethod
    def normalise(fb: torch.Tensor) -> torch.Tensor:
        return (fb - FBANK_MEAN) / FBANK_STD

    def window_starts(self, n_frames: int) -> list[int]:
        """Start frames of the native windows for a clip of `n_frames` (see the module docstring)."""
        L = self.target_frames
        return window_starts(n_frames, L, last="end", align=PATCH, single_up_to=max(OFFICIAL_MAX_FRAMES, L))

    def windows(self, fb: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """(B, F, 128) log fbank -> normalised windows (B, K, L, 128) with official zero padding/cut."""
        B, n_frames, M = fb.shape
        L = self.target_frames
        starts = self.window_starts(n_frames)
        end = starts[-1] + L
        if end > n_frames:  # pad with zeros in the log domain, before normalising (as official)
            fb = torch.cat([fb, fb.new_zeros(B, end - n_frames, M)], dim=1)
        wins = torch.stack([fb[:, s:s + L] for s in starts], dim=1)
        return self.normalise(wins), starts

    # --- backbone ---------------------------------------------------------------------------------
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, 128) normalised fbank -> (B, grid_t * grid_f, C) last-block tokens (time-major)."""
        x = self.emb(x.to(self.dtype).unsqueeze(1))  # (B, C, grid_t, grid_f)
        x = x.flatten(2).transpose(1, 2) + self.pos_embed
        v_first = x
        for block in self.blocks:
            x, v_first = block(x, v_first, self.scan_backend)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Official forward: normalised fbank (B, L, 128) -> logits."""
        return self.head(self.ln_out(self.tokens(x).mean(dim=1)))

    def token_grid(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Audio (B, N) -> (token grid (B, P, grid_f, C) over the clip's time patches, their first frames)."""
        fb = self.log_fbank(audio.to(self.device))
        wins, starts = self.windows(fb)
        B, K = wins.shape[:2]
        toks = run_in_batches(self.tokens, wins.flatten(0, 1), WINDOW_BATCH)
        return merge_columns(toks.view(B, K, self.cfg.grid_t, self.cfg.grid_f, -1), starts, PATCH)


def get_scene_embeddings(audio: torch.Tensor, model: AudioRWKV) -> torch.Tensor:
    audio = check_audio_batch(audio, "arwkv")
    with torch.no_grad():
        grid, _ = model.token_grid(audio)
        emb = model.ln_out(grid.mean(dim=(1, 2)))
    return emb.float()


def get_timestamp_embeddings(audio: torch.Tensor, model: AudioRWKV):
    audio = check_audio_batch(audio, "arwkv")
    with torch.no_grad():
        grid, first_frames = model.token_grid(audio)
        ts = timestamps_inside(column_centres_ms(first_frames, PATCH), audio.shape[1], SAMPLE_RATE)
        emb = model.ln_out(grid[:, :len(ts)].mean(dim=2)).float()
    return emb, batch_timestamps(ts, audio.shape[0], emb.device)


# --- loading ----------------------------------------------------------------------------------------
_REQUIRED_FOR_INFERENCE = ("emb.weight", "pos_embed", "head.weight", "blocks.0.att.r_k", "blocks.0.att.w1",
                           "blocks.0.att.a1", "blocks.0.att.v1", "blocks.0.att.g1", "blocks.0.ffn.key.weight")


def checkpoint_filter_fn(state_dict: dict) -> dict:
    """The official checkpoint's quirks: a raw state_dict, bf16 or fp32 (load_strict casts), saved with or
    without DataParallel's `module.` prefix."""
    return strip_prefix(state_dict, "module.")


def config_from_state_dict(sd: dict, source: str) -> ARWKVConfig:
    """Read the configuration off an official state_dict's keys and shapes."""
    missing = [k for k in _REQUIRED_FOR_INFERENCE if k not in sd]
    if missing:
        raise CheckpointError(
            f"checkpoint {source} is not an AudioRWKV state_dict: missing keys {', '.join(missing)} "
            f"(it has {len(sd)} keys, e.g. {', '.join(list(sd)[:5])})"
        )
    n_embd = sd["emb.weight"].shape[0]
    H, N = sd["blocks.0.att.r_k"].shape
    if H * N != n_embd:
        raise CheckpointError(f"checkpoint {source}: r_k {tuple(sd['blocks.0.att.r_k'].shape)} does not split width {n_embd} into heads")
    grid_f = NUM_MELS // PATCH
    n_tokens = sd["pos_embed"].shape[1]
    if n_tokens % grid_f:
        raise CheckpointError(f"checkpoint {source}: pos_embed has {n_tokens} tokens, not a multiple of {grid_f} mel patches")
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    return ARWKVConfig(
        n_embd=n_embd, n_layer=max(layers) + 1, head_size=N, dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0],
        lora_decay=sd["blocks.0.att.w1"].shape[1], lora_aaa=sd["blocks.0.att.a1"].shape[1],
        lora_mv=sd["blocks.0.att.v1"].shape[1], lora_gate=sd["blocks.0.att.g1"].shape[1],
        num_classes=sd["head.weight"].shape[0], grid_t=n_tokens // grid_f, grid_f=grid_f,
    )


def _random_init(model: AudioRWKV, seed: int = 0) -> None:
    """Seeded random weights with roughly the spread of trained ones (the recipe of the parity fixture),
    so that untrained embeddings are not degenerate (the official init zeroes several projections)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(p, mean, std):
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)

    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            parent = name.split(".")[-2] if "." in name else ""
            if parent.startswith("ln"):  # ln1, ln2, ln_out, ln_x
                normal(p, 1.0, 0.1) if leaf == "weight" else normal(p, 0.0, 0.05)
            elif leaf.startswith("x_"):  # token-shift mixing coefficients in [0, 1]
                p.copy_(torch.rand(p.shape, generator=gen))
            elif leaf == "w0":  # per-step decay exp(-exp(w)) roughly in [0.64, 0.9975]
                p.copy_(torch.rand(p.shape, generator=gen) * 5.5 - 5.0)
            elif leaf in ("a0", "v0", "k_k", "k_a"):
                normal(p, {"a0": -0.2, "v0": 0.5, "k_k": 0.7, "k_a": 1.0}[leaf], 0.5 if leaf in ("a0", "v0") else 0.2)
            elif leaf in ("w1", "a1", "v1", "g1"):
                normal(p, 0.0, 0.05)
            elif leaf in ("w2", "a2", "v2", "g2") or parent in ("gate", "head") or name == "pos_embed":
                normal(p, 0.0, 0.1)
            elif leaf == "r_k" or parent == "time_shift":
                normal(p, 0.0, 0.2)
            elif leaf == "bias":
                normal(p, 0.0, 0.05)
            else:  # emb and projection weights: unit-variance outputs, smaller on the residual outputs
                scale = 0.5 if parent == "output" or name.endswith("ffn.value.weight") else 1.0
                fan_in = p[0].numel()
                normal(p, 0.0, scale / math.sqrt(fan_in))


OPTIONS = common(SIZES)


def load_model(model_file_path: str = "", **options) -> AudioRWKV:
    """Load an official AudioRWKV checkpoint (strict), or build a seeded random model of `size`.

    Options: size (tiny|small|base, random init only; a checkpoint's size is read from it), device
    (cpu|cuda, default CUDA when present), dtype (float32|bfloat16), scan_backend (auto|compiled|reference).
    """
    opts = parse_options("arwkv", options, OPTIONS, ops=("wkv7",))
    backend = opts["scan_backend"]  # None: $HEARSCAN_SCAN_BACKEND, else auto (csrc.dispatch)
    if model_file_path:
        if opts["size"] is not None:
            raise UserFacingError("hear_modules.arwkv: `size` is for random init; a checkpoint's size is read from the checkpoint")
        sd = checkpoint_filter_fn(read_checkpoint(model_file_path))
        cfg = config_from_state_dict(sd, str(model_file_path))
        model = AudioRWKV(cfg, scan_backend=backend)
        load_strict(model, sd, str(model_file_path))
    else:
        size = opts["size"] or "tiny"
        warn_random_weights("arwkv", f"no checkpoint given - A-RWKV-{size[0].upper()} (seed 0)",
                            "Pass the path of an official AudioRWKV .pth.")
        model = AudioRWKV(ARWKVConfig.for_width(SIZES[size]), scan_backend=backend)
        _random_init(model)
    return model.to(device=opts["device"], dtype=opts["dtype"]).eval()
