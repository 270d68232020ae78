"""Audio Mamba (AuM, kaistmm/Audio-Mamba-AuM): HEAR module for the Fo-Bi and Bi-Bi variants.

What this file owns: the AuM network (patch stem, middle class token, bidirectional Mamba blocks), the
official frontend, loading of the official checkpoints (a raw `state_dict`, optionally with DataParallel's
`module.` prefix), and the HEAR API on top of it.  The selective scan itself is `csrc.selective_scan`.

Frontend (official evaluation dataloader, 16 kHz): subtract the clip's waveform mean; Kaldi fbank
(128 mel, 25 ms Hanning window, 10 ms shift, htk_compat, no energy, no dither); pad with 0.0 in the
log-mel domain / cut to 1024 frames; normalise `(fb - mean) / (2 * std)` with the AudioSet constants
(mean -4.2677393, std 4.5689974; option `norm="vggsound"`: -5.0767093, 4.4533687, the constants of the
official VGGSound recipes `exps/vggsound/*.sh`).

Network: the (1024 time, 128 mel) input is transposed to (128, 1024) and cut into 16x16 patches, giving an
8 (frequency) x 64 (time) grid flattened frequency-major (token j = f*64 + t).  The class token is inserted
before patch 256 (index 256 of 513); row 0 of `pos_embed.pos_embed` is the class token's position, row 1+j
patch j's.  Blocks: `residual += h; h = mixer(RMSNorm(residual))` with the residual in fp32 and RMSNorm
eps 1e-5; the output is `norm_f(residual + h)`.  Mixer: Mamba (d_state 16, conv 4, expand 2) with two
bidirectional schemes, exactly as the official code:
  * Fo-Bi (`bimamba v1`): one conv/x_proj/dt_proj/D; the backward scan runs over the time-flipped
    *forward-conv output*, delta, B, C and z with its own A_b; outputs summed.  Here that scan is
    `selective_scan(..., reverse=True)` on the same tensors: no flipped copies, the output in step order.
  * Bi-Bi (`bimamba v2`): the backward branch has its own conv1d_b/x_proj_b/dt_proj_b/A_b/D_b and runs on
    the flipped in_proj output; `(y_f + flip(y_b)) / 2`.
On CUDA the forward and backward scans go to the kernel in one call (batch 2B) when both directions share
A (Mamba's initialisation gives A_log == A_b_log, so random-init models take this path); trained
checkpoints have A != A_b and the kernel's single (D, N) A then needs two calls.  On the CPU two calls are
faster (the copies into the 2B batch cost more than the second call saves; see Mixer.batch_directions).

Embeddings:
  * Scene: the class token after norm_f -- what the official `forward(x, return_features=True)` returns
    and what the classifier head reads, i.e. AuM's clip-level summary.  For clips up to 1024 frames
    (10.24 s) this is exactly the official embedding.
  * Longer clips: the fbank of the whole clip is cut into non-overlapping windows of 1024 frames
    (the native 10.24 s input); the last window is zero-padded in the log-mel domain exactly as the
    official dataloader pads a short clip.  Scene = mean of the window class tokens weighted by the number
    of real frames in each window (a 0.3 s tail does not count as much as a full 10 s window).
  * Timestamps: from the patch tokens (after norm_f), the 8 frequency patches of each time column are
    averaged: one embedding of size D per 16 frames = 160 ms, which is the model's native time resolution
    (interpolating to HEAR's suggested 50 ms would add no information).  Column g of the whole clip covers
    frames 16g..16g+15 and is stamped at their centre, 160*g + 87.5 ms (frame i spans 10i..10i+25 ms).
    Columns whose centre lies past the clip end are dropped, so timestamps are regular and never past the
    end; a clip shorter than one column centre (< 87.5 ms) gets a single embedding stamped at its middle.
  * Clips shorter than one 25 ms analysis frame (400 samples) are rejected with AudioInputError.
    Silence is valid (the fbank's log floor keeps it finite).

Options of `load_model`: `size` (tiny/small/base, random init only, default tiny; a checkpoint defines its own width),
`variant` (fobi/bibi, random init only; default: the released pairing, small -> bibi, tiny/base -> fobi),
`norm` (audioset/vggsound), `device` (cpu/cuda/None = CUDA when available), `dtype` (float32/bfloat16),
`scan_backend` (auto/compiled/reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import csrc
from hear_modules._audio import check_audio_batch
from hear_modules._checkpoint import load_strict, read_checkpoint, strip_prefix
from hear_modules._frontend import kaldi_fbank
from hear_modules._layers import PatchEmbed, RMSNorm
from hear_modules._options import Option, common, parse_options, seeded, warn_random_weights
from hear_modules._windows import batch_timestamps, column_centres_ms, run_in_batches, timestamps_inside, window_starts
from hearscan_core.errors import CheckpointError, UserFacingError

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
TARGET_FRAMES = 1024  # 10.24 s: the native input length
PATCH = 16
GRID_F, GRID_T = NUM_MEL_BINS // PATCH, TARGET_FRAMES // PATCH  # 8 x 64
NUM_PATCHES = GRID_F * GRID_T  # 512
CLS_POSITION = NUM_PATCHES // 2  # 256
FRAME_SAMPLES, HOP_SAMPLES = 400, 160  # Kaldi's 25 ms window, 10 ms shift at 16 kHz
WINDOW_BATCH = 16  # windows per forward pass: bounds memory on hour-long recordings

NORM_STATS = {  # (mean, std) of the training set's fbank, from the official recipes
    "audioset": (-4.2677393, 4.5689974),
    "vggsound": (-5.0767093, 4.4533687),
}
SIZES = {"tiny": 192, "small": 384, "base": 768}
VARIANTS = ("fobi", "bibi")
RELEASED_VARIANT = {"tiny": "fobi", "small": "bibi", "base": "fobi"}
DEPTH, D_STATE, D_CONV, EXPAND, NUM_CLASSES = 24, 16, 4, 2, 527
BIBI_ONLY = ("D_b", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight", "dt_proj_b.bias")



# ----------------------------------------------------------------------------------------------- network
class PosEmbed(nn.Module):
    """Holds `pos_embed` (1, 513, D) whose row 0 belongs to the class token (official key layout)."""

    def __init__(self, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES + 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 513, D) with the class token at index 256; add row 0 there and rows 1.. to the patches."""
        pe = self.pos_embed
        pe = torch.cat([pe[:, 1:CLS_POSITION + 1], pe[:, :1], pe[:, CLS_POSITION + 1:]], dim=1)
        return x + pe.to(x.dtype)


class Mixer(nn.Module):
    """Bidirectional Mamba mixer; `variant` "fobi" (bimamba v1) or "bibi" (bimamba v2, divide by 2)."""

    def __init__(self, dim: int, variant: str, d_state: int, d_conv: int, expand: int, dt_rank: int,
                 scan_backend: str | None = None):
        super().__init__()
        inner = expand * dim
        self.variant, self.d_state, self.dt_rank, self.scan_backend = variant, d_state, dt_rank, scan_backend
        # One kernel call on a 2B batch for both directions when A == A_b (Mamba's init, so random weights;
        # trained checkpoints differ): True / False force it, None = only on CUDA.  On the CPU the batch's
        # concatenated copies cost more than the call saves: two calls were 0.99-1.05x / 1.11-1.15x /
        # 1.07-1.16x faster than one (AuM tiny / small / base, two 10-s clips, 2 threads, side by side).
        self.batch_directions: bool | None = None
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        self.A_log = nn.Parameter(torch.zeros(inner, d_state))
        self.A_b_log = nn.Parameter(torch.zeros(inner, d_state))
        self.D = nn.Parameter(torch.ones(inner))
        if variant == "bibi":
            self.conv1d_b = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
            self.x_proj_b = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
            self.dt_proj_b = nn.Linear(dt_rank, inner)
            self.D_b = nn.Parameter(torch.ones(inner))

    def _branch(self, x, conv, x_proj, dt_proj):
        """x (B, E, L) -> scan inputs: u = SiLU(causal conv), delta (pre-bias), B, C (B, N, L)."""
        length = x.shape[-1]
        u = F.silu(conv(x)[..., :length])
        x_dbl = x_proj(u.transpose(1, 2))  # (B, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # bias goes to the kernel as delta_bias
        return u, delta, b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous()

    def _scan(self, u, delta, A, B, C, D, z, delta_bias, reverse=False):
        return csrc.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True,
                                   backend=self.scan_backend, reverse=reverse)

    def _scan_pair(self, fwd: dict, bwd: dict):
        """Run the forward and backward scans; one kernel call on a 2B batch when they share A and
        batch_directions allows it.  bwd may say reverse=True (Fo-Bi): its output is then in step order."""
        batched = self.batch_directions if self.batch_directions is not None else fwd["u"].device.type == "cuda"
        if not (batched and torch.equal(self.A_log, self.A_b_log)):
            return self._scan(**fwd), self._scan(**bwd)
        bwd = dict(bwd)
        reverse = bwd.pop("reverse", False)
        if reverse:  # one batch needs the backward inputs in their own step order
            bwd = {k: (v.flip(-1) if k in ("u", "delta", "B", "C", "z") else v) for k, v in bwd.items()}
        cat = lambda key: torch.cat([fwd[key], bwd[key]], dim=0)  # noqa: E731
        batch = fwd["u"].shape[0]
        if torch.equal(fwd["D"], bwd["D"]) and torch.equal(fwd["delta_bias"], bwd["delta_bias"]):
            y = self._scan(cat("u"), cat("delta"), fwd["A"], cat("B"), cat("C"), fwd["D"], cat("z"),
                           fwd["delta_bias"])
        else:  # Bi-Bi: per-direction delta bias added here, D and the gate applied after the kernel
            delta = torch.cat([fwd["delta"] + fwd["delta_bias"][:, None].to(fwd["delta"].dtype),
                               bwd["delta"] + bwd["delta_bias"][:, None].to(bwd["delta"].dtype)], dim=0)
            u = cat("u")
            y = self._scan(u, delta, fwd["A"], cat("B"), cat("C"), None, None, None).float()
            d = torch.cat([fwd["D"][None].expand(batch, -1), bwd["D"][None].expand(batch, -1)], dim=0)
            y = ((y + u.float() * d[:, :, None]) * F.silu(cat("z").float())).to(u.dtype)
        return y[:batch], (y[batch:].flip(-1) if reverse else y[batch:])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, L, D) -> (B, L, D)."""
        xz = (h @ self.in_proj.weight.t()).transpose(1, 2)  # (B, 2E, L)
        x, z = xz.chunk(2, dim=1)
        A = -torch.exp(self.A_log.float())
        A_b = -torch.exp(self.A_b_log.float())
        u, delta, b, c = self._branch(x, self.conv1d, self.x_proj, self.dt_proj)
        fwd = dict(u=u, delta=delta, A=A, B=b, C=c, D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float())
        if self.variant == "fobi":  # the same inputs scanned backwards (official: flipped copies, flipped back)
            bwd = dict(fwd, A=A_b, reverse=True)
            y_f, y_b = self._scan_pair(fwd, bwd)
            y = y_f + y_b
        else:
            x_b, z_b = x.flip(-1), z.flip(-1)
            u_b, delta_b, b_b, c_b = self._branch(x_b, self.conv1d_b, self.x_proj_b, self.dt_proj_b)
            bwd = dict(u=u_b, delta=delta_b, A=A_b, B=b_b, C=c_b, D=self.D_b.float(), z=z_b,
                       delta_bias=self.dt_proj_b.bias.float())
            y_f, y_b = self._scan_pair(fwd, bwd)
            y = (y_f + y_b.flip(-1)) / 2
        return y.transpose(1, 2) @ self.out_proj.weight.t()


class Block(nn.Module):
    def __init__(self, dim: int, mixer: Mixer):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.mixer = mixer

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None):
        residual = h.float() if residual is None else residual + h.float()  # fp32 residual stream
        return self.mixer(self.norm(residual, h.dtype)), residual


class AudioMamba(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, dim: int, depth: int, variant: str, num_classes: int = NUM_CLASSES, d_state: int = D_STATE,
                 d_conv: int = D_CONV, expand: int = EXPAND, dt_rank: int | None = None, norm: str = "audioset",
                 scan_backend: str | None = None):
        super().__init__()
        self.variant = variant
        self.norm_mean, self.norm_std = NORM_STATS[norm]
        self.scene_embedding_size = self.timestamp_embedding_size = dim
        dt_rank = dt_rank or math.ceil(dim / 16)
        self.patch_embed = PatchEmbed(1, dim, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = PosEmbed(dim)
        self.layers = nn.ModuleList(
            Block(dim, Mixer(dim, variant, d_state, d_conv, expand, dt_rank, scan_backend)) for _ in range(depth)
        )
        self.norm_f = RMSNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @property
    def device(self) -> torch.device:
        return self.cls_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.cls_token.dtype

    # frontend ------------------------------------------------------------------------------------------
    def fbank(self, audio: torch.Tensor, target_length: int = TARGET_FRAMES):
        """(B, N) float32 waveform -> (normalised fbank (B, target_length, 128), frames before padding)."""
        fb, n_frames = kaldi_fbank(audio.float().cpu(), SAMPLE_RATE, target_length, NUM_MEL_BINS, subtract_mean=True)
        return (fb - self.norm_mean) / (self.norm_std * 2), n_frames

    # network -------------------------------------------------------------------------------------------
    def forward_tokens(self, fbank: torch.Tensor) -> torch.Tensor:
        """Normalised fbank windows (B, 1024, 128) -> final sequence (B, 513, D) after norm_f, fp32."""
        x = fbank.to(self.device, self.dtype).unsqueeze(1).transpose(2, 3)  # (B, 1, 128 freq, 1024 time)
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :CLS_POSITION], cls, x[:, CLS_POSITION:]], dim=1)
        h, residual = self.pos_embed(x), None
        for layer in self.layers:
            h, residual = layer(h, residual)
        return self.norm_f(residual + h.float(), torch.float32)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """Official default output: AudioSet logits (B, num_classes) from the class token."""
        tokens = self.forward_tokens(fbank)
        return F.linear(tokens[:, CLS_POSITION], self.head.weight.float(), self.head.bias.float())

    # long clips ----------------------------------------------------------------------------------------
    def embed(self, audio: torch.Tensor):
        """(B, N) waveform -> (scene (B, D), columns (B, W * 64, D), n_frames) over 1024-frame windows."""
        n_frames = 1 + (audio.shape[1] - FRAME_SAMPLES) // HOP_SAMPLES  # equal for every clip of a batch
        n_windows = len(window_starts(n_frames, TARGET_FRAMES, last="pad"))
        fb, _ = self.fbank(audio, n_windows * TARGET_FRAMES)
        windows = fb.reshape(audio.shape[0] * n_windows, TARGET_FRAMES, NUM_MEL_BINS)
        tokens = run_in_batches(self.forward_tokens, windows, WINDOW_BATCH)
        tokens = tokens.view(audio.shape[0], n_windows, NUM_PATCHES + 1, -1)
        real = torch.clamp(n_frames - TARGET_FRAMES * torch.arange(n_windows), max=TARGET_FRAMES).float()
        weights = (real / real.sum()).to(tokens.device)
        scene = (tokens[:, :, CLS_POSITION] * weights[None, :, None]).sum(dim=1)
        patches = torch.cat([tokens[:, :, :CLS_POSITION], tokens[:, :, CLS_POSITION + 1:]], dim=2)
        columns = patches.view(audio.shape[0], n_windows, GRID_F, GRID_T, -1).mean(dim=2)  # pool frequency
        return scene, columns.flatten(1, 2), n_frames


# ------------------------------------------------------------------------------------------------ HEAR API
def get_scene_embeddings(audio: torch.Tensor, model: AudioMamba) -> torch.Tensor:
    audio = check_audio_batch(audio, "aum")
    with torch.no_grad():
        scene, _, _ = model.embed(audio)
    return scene.float()


def get_timestamp_embeddings(audio: torch.Tensor, model: AudioMamba):
    audio = check_audio_batch(audio, "aum")
    with torch.no_grad():
        _, columns, _ = model.embed(audio)
    centres = column_centres_ms([PATCH * g for g in range(columns.shape[1])], PATCH)
    ts = timestamps_inside(centres, audio.shape[1], SAMPLE_RATE)
    emb = columns[:, : len(ts)].float().contiguous()
    return emb, batch_timestamps(ts, audio.shape[0], emb.device)


# ----------------------------------------------------------------------------------------------- loading
def checkpoint_filter_fn(state_dict: dict) -> dict:
    """The official checkpoint's quirks: a raw state_dict, saved with or without DataParallel's `module.`."""
    return strip_prefix(state_dict, "module.")


def config_from_state_dict(state_dict: dict, source: str) -> dict:
    """Width, depth, class count, variant and mixer sizes from the official key names and shapes."""
    needed = ["patch_embed.proj.weight", "head.weight", "layers.0.mixer.A_log", "layers.0.mixer.in_proj.weight",
              "layers.0.mixer.conv1d.weight", "layers.0.mixer.dt_proj.weight"]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        sample = ", ".join(sorted(state_dict)[:8])
        raise CheckpointError(
            f"checkpoint {source} is not an official AuM state_dict: missing {', '.join(missing)} "
            f"(it has {len(state_dict)} keys, e.g. {sample}). Pass the best_audio_model.pth saved by the "
            "AuM training code."
        )
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("layers.") and k.split(".")[1].isdigit())
    dim = state_dict["patch_embed.proj.weight"].shape[0]
    variant = "bibi" if any(k.endswith("mixer." + name) for k in state_dict for name in BIBI_ONLY) else "fobi"
    return dict(
        dim=dim, depth=depth, variant=variant, num_classes=state_dict["head.weight"].shape[0],
        d_state=state_dict["layers.0.mixer.A_log"].shape[1],
        expand=state_dict["layers.0.mixer.in_proj.weight"].shape[0] // (2 * dim),
        d_conv=state_dict["layers.0.mixer.conv1d.weight"].shape[-1],
        dt_rank=state_dict["layers.0.mixer.dt_proj.weight"].shape[1],
    )


def _random_init(model: AudioMamba) -> None:
    """Mamba/Vim initialisation (seed 0, the global RNG untouched): S4D-real A, dt in [1e-3, 0.1]."""
    with seeded(0):
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                module.reset_parameters()
        nn.init.trunc_normal_(model.cls_token, std=0.02)
        nn.init.trunc_normal_(model.pos_embed.pos_embed, std=0.02)
        for layer in model.layers:
            m = layer.mixer
            a_log = torch.log(torch.arange(1, m.d_state + 1, dtype=torch.float32)).expand_as(m.A_log)
            m.A_log.data.copy_(a_log)
            m.A_b_log.data.copy_(a_log)
            for dt_proj in [m.dt_proj] + ([m.dt_proj_b] if m.variant == "bibi" else []):
                nn.init.uniform_(dt_proj.weight, -m.dt_rank ** -0.5, m.dt_rank ** -0.5)
                dt = torch.exp(torch.rand(dt_proj.bias.shape) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                dt = dt.clamp(min=1e-4)
                dt_proj.bias.data.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            # rescale out_proj like Mamba (prenorm residual: 1/sqrt(n_layer))
            nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
            m.out_proj.weight.data /= math.sqrt(len(model.layers))


OPTIONS = common(SIZES) + [Option("variant", VARIANTS), Option("norm", tuple(NORM_STATS), default="audioset")]


def load_model(model_file_path: str = "", **options) -> AudioMamba:
    """Official AuM checkpoint (strict) or, with no path, random weights (with a loud warning)."""
    opts = parse_options("aum", options, OPTIONS, ops=("selective_scan",))
    # scan_backend None defers to $HEARSCAN_SCAN_BACKEND (else "auto") at every call (csrc.dispatch)
    norm, backend, device, dtype = opts["norm"], opts["scan_backend"], opts["device"], opts["dtype"]
    size, variant = opts["size"], opts["variant"]
    if model_file_path:
        state_dict = checkpoint_filter_fn(read_checkpoint(model_file_path))
        config = config_from_state_dict(state_dict, str(model_file_path))
        if (size is not None and SIZES[size] != config["dim"]) or variant not in (None, config["variant"]):
            raise UserFacingError(
                f"hear_modules.aum: options size={size!r} variant={variant or config['variant']!r} contradict the "
                f"checkpoint {model_file_path} (width {config['dim']}, variant {config['variant']}); the checkpoint "
                "defines the model, drop these options"
            )
        model = AudioMamba(**config, norm=norm, scan_backend=backend)
        load_strict(model, state_dict, str(model_file_path))
    else:
        size = size or "tiny"  # like A-RWKV: the smallest, fast to validate
        variant = variant or RELEASED_VARIANT[size]
        warn_random_weights("aum", f"no checkpoint given - AuM {size} {variant}",
                            "Pass the path of an official AuM checkpoint.")
        model = AudioMamba(SIZES[size], DEPTH, variant, norm=norm, scan_backend=backend)
        _random_init(model)
    model.to(device=device)
    if dtype != torch.float32:
        # matmuls, convs and the embeddings run in bf16; the SSM parameters (A_log, D), the norms and the
        # residual stream stay fp32, as in the official mixed-precision runs
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                module.to(dtype)
        model.cls_token.data = model.cls_token.data.to(dtype)
        model.pos_embed.pos_embed.data = model.pos_embed.pos_embed.data.to(dtype)
    return model.eval()
