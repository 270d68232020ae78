"""The official AxLSTM/SSAST HEAR wrapper, shared by `hear_modules.axlstm` and `hear_modules.ssast`.

Both families come from SarthakYadav/axlstm-official and go through the same `hear_api/runtime.py`
(RuntimeSSAST).  What lives here is everything but the transformer/xLSTM blocks:

- frontend: torchaudio MelSpectrogram (16 kHz, 400-point FFT and window, hop 160, 80 mels 50-8000 Hz,
  power 2, centred), `log(x + float32 eps)`, then per-clip normalisation `(x - mean) / (std + 1e-8)`
  over all (mel, frame) values (unbiased std), laid out time first;
- chunking: the normalised log-mel is zero-padded by `200 - T % 200` frames (a FULL extra chunk when T is
  a multiple of 200: the official rule), cut into 200-frame chunks that run through the encoder
  independently (here all chunks of all clips as one batch, at most `chunk_batch` at a time), and the
  last `pad // 4` output frames are dropped;
- stem: 4 x 16 patches -> a 50 x 5 token grid, time-major, fixed 2-D sin-cos positions (read from the
  checkpoint), a CLS token in front (dropped at the output), `encoder_norm` (LayerNorm eps 1e-6);
- output arrangement: 50 frames of 5 * D per chunk.  The official code regroups the time-major tokens
  with `'b (f t) d -> b t (f d)'`, i.e. as if they were frequency-major, so output frame t' slot f' holds
  token f' * 50 + t' (patch time 10 f' + t' // 5, band t' % 5): frames are not in time order.
  `arrangement="official"` (default) reproduces that exactly (it is what the published HEAR numbers
  used); `arrangement="time"` gives frame t = the 5 bands of patch time t, stamped at the patch centre
  (40 t + 15 ms) — time-correct, but not the official embeddings.
- checkpoints: the official weights folder `<dir>/checkpoints/checkpoint-N.pth` (highest N) or one
  `.pth`; a dict with `model`, `args` (argparse.Namespace holding an ml_collections ConfigDict),
  `optimizer`, `scaler`, `epoch`, read with `torch.load(weights_only=True)` plus exactly two allowed
  types: `argparse.Namespace` and a data-only stand-in for ml_collections' ConfigDict (it only records
  the pickled fields; no ml_collections code runs).  `$PT_AXLSTM_MODEL_DIR` + the official folder names
  are a convenience, as in the official `hear_configs/*.py`.

Long clips: chunks are independent, so time and memory grow linearly with clip length for both
families in the official mode.  `chunk_frames` (a multiple of 4, or "whole") changes the chunk length,
e.g. to show that attention (SSAST) grows quadratically with it while the mLSTM scan (AxLSTM) stays
linear; positions beyond the trained 50-patch grid come from the same sin-cos formula.  Embeddings
from non-default chunk lengths are outside what the models were trained on.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from hear_modules._audio import check_audio_batch
from hear_modules._checkpoint import load_strict, read_checkpoint
from hear_modules.registry import AXLSTM_MODEL_DIR as ENV_MODEL_DIR
from hear_modules._layers import PatchEmbed, sincos_2d
from hear_modules._options import Option, common, parse_options, positive_int, seeded, warn_random_weights
from hearscan_core.errors import CheckpointError, UserFacingError

SAMPLE_RATE = 16000
N_MELS = 80
HOP_MS = 10.0
CHUNK_FRAMES = 200  # the official unit: 2 s of log-mel
PATCH_T, PATCH_F = 4, 16
GRID_F = N_MELS // PATCH_F  # 5 frequency bands
WIDTHS = {"tiny": 192, "small": 384, "base": 768}
DEFAULT_DEPTH = 12
# official weights folder names (hear_configs/*.py), looked up under $PT_AXLSTM_MODEL_DIR
OFFICIAL_FOLDERS = {
    ("axlstm", "tiny"): "axlstm_tiny_200_16x4_4x256_fp16_r1",
    ("axlstm", "small"): "axlstm_small_200_16x4_4x256_fp16_r1",
    ("axlstm", "base"): "axlstm_base_200_16x4_8x128_fp16_r1",
    ("ssast", "tiny"): "ssast_tiny_200_16x4_4x256_fp16_r1",
    ("ssast", "small"): "ssast_small_200_16x4_4x256_fp16_r1",
    ("ssast", "base"): "ssast_base_200_16x4_4x256_fp16_r1",
}
ARRANGEMENTS = ("official", "time")


# ----------------------------------------------------------------------------------------------------
# checkpoints


class ConfigDictState:
    """Data-only stand-in for `ml_collections.ConfigDict` inside the checkpoint's `args`.

    The official train.py stores `args.config = <ConfigDict>`; unpickling the real class would run
    foreign code.  This class is allow-listed under the real class's name and only keeps the pickled
    `_fields` (nested ConfigDicts become ConfigDictState too).
    """

    def __setstate__(self, state):
        self.fields = dict(state.get("_fields", {})) if isinstance(state, dict) else {}

    def __repr__(self):
        return f"ConfigDict({self.fields!r})"


ConfigDictState.__module__ = "ml_collections.config_dict.config_dict"
ConfigDictState.__qualname__ = ConfigDictState.__name__ = "ConfigDict"
OFFICIAL_CHECKPOINT_GLOBALS = (argparse.Namespace, ConfigDictState)


def _checkpoint_number(path: Path) -> int | None:
    match = re.fullmatch(r".*-(\d+)", path.stem)
    return int(match.group(1)) if match else None


def find_checkpoint(path: str | os.PathLike, family: str, size: str | None) -> Path | None:
    """Resolve the user's path to one .pth file, following the official folder layout.

    "" -> `$PT_AXLSTM_MODEL_DIR/<official folder for family+size>` if the variable is set, else None
    (random weights).  A folder -> `<folder>/checkpoints/checkpoint-N.pth` with the highest N (or
    `<folder>/checkpoint-N.pth`).  A name that does not exist is also tried under $PT_AXLSTM_MODEL_DIR.
    """
    env_dir = os.environ.get(ENV_MODEL_DIR)
    if not str(path):
        if not env_dir:
            return None
        folder = OFFICIAL_FOLDERS[(family, size or "tiny")]
        candidate = Path(env_dir) / folder
        if not candidate.exists():
            raise CheckpointError(
                f"${ENV_MODEL_DIR} is set to {env_dir} but it has no folder {folder} (the official "
                f"{family} {size or 'tiny'} weights); download them there, pass the weights path, or unset "
                f"${ENV_MODEL_DIR} to get random weights"
            )
        path = candidate
    path = Path(path).expanduser()
    if not path.exists() and env_dir and (Path(env_dir) / path).exists():
        path = Path(env_dir) / path
    if path.is_file():
        return path
    if not path.is_dir():
        raise CheckpointError(
            f"{family} weights not found: {path} (pass the official weights folder, which holds "
            f"checkpoints/checkpoint-N.pth, or one .pth file)"
        )
    for folder in (path / "checkpoints", path):
        numbered = [(n, p) for p in folder.glob("*.pth") if (n := _checkpoint_number(p)) is not None]
        if numbered:
            return max(numbered)[1]
    raise CheckpointError(
        f"no checkpoint-N.pth in {path}/checkpoints or {path}: is this the official {family} weights folder?"
    )


def read_official_state_dict(path: Path) -> dict:
    """The `model` state dict of an official checkpoint (or a bare state dict)."""
    ckpt = read_checkpoint(path, allowed_globals=OFFICIAL_CHECKPOINT_GLOBALS)
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} has no state dict of tensors under 'model'")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def common_config_from_state_dict(state: dict, source: str) -> dict:
    """Width and depth from the keys; check the stem matches the official 4x16 patches on 200x80."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise CheckpointError(f"checkpoint {source} has no '{key}': not an official AxLSTM/SSAST checkpoint")
    dim = state["cls_token"].shape[-1]
    proj = tuple(state["patch_embed.proj.weight"].shape)
    if proj != (dim, 1, PATCH_T, PATCH_F):
        raise CheckpointError(
            f"checkpoint {source}: patch_embed.proj.weight is {proj}, expected {(dim, 1, PATCH_T, PATCH_F)} "
            "(the official 4x16 patches, time first); other patch layouts are not supported"
        )
    n_pos = 1 + (CHUNK_FRAMES // PATCH_T) * GRID_F
    if tuple(state["pos_embed"].shape) != (1, n_pos, dim):
        raise CheckpointError(
            f"checkpoint {source}: pos_embed is {tuple(state['pos_embed'].shape)}, expected (1, {n_pos}, {dim})"
        )
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    return {"dim": dim, "depth": depth}


# ----------------------------------------------------------------------------------------------------
# frontend, positions, encoder stem


class LogMelFrontend(nn.Module):
    """Official LogMelSpec: (B, N) waveform -> (B, T, 80) per-clip normalised log-mel, T = 1 + N // 160."""

    def __init__(self):
        super().__init__()
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=160,
            f_min=50.0, f_max=8000.0, n_mels=N_MELS, power=2.0,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = torch.log(self.melspec(audio) + torch.finfo(torch.float32).eps)  # (B, 80, T)
        mean = x.mean(dim=(1, 2), keepdim=True)
        std = x.std(dim=(1, 2), keepdim=True)
        return ((x - mean) / (std + 1e-8)).transpose(1, 2)


def sincos_positions(dim: int, grid_t: int, grid_f: int = GRID_F) -> torch.Tensor:
    """The MAE-style 2-D sin-cos table the official code builds: (1, 1 + grid_t * grid_f, dim), in float32.

    Row 0 (CLS) is zero; token n = t * grid_f + f; the first dim/2 values encode f, the last dim/2 t.
    """
    table = sincos_2d(dim, grid_t, grid_f, first="col")
    return torch.cat([table.new_zeros(1, dim), table])[None]


class ChunkEncoder(nn.Module):
    """Stem + blocks + encoder_norm for one chunk: (N, 1, frames, 80) -> (N, frames/4 * 5, D) time-major.

    Subclasses fill `self.blocks`.  `mask_token` and `pred` (the pre-training head) are kept only so the
    official checkpoint loads strictly; the embeddings never use them.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.patch_embed = PatchEmbed(1, dim, (PATCH_T, PATCH_F))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_positions(dim, CHUNK_FRAMES // PATCH_T), requires_grad=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, PATCH_T * PATCH_F))
        self.blocks = nn.ModuleList()

    def positions(self, grid_t: int) -> torch.Tensor:
        if grid_t == self.pos_embed.shape[1] // GRID_F:
            return self.pos_embed  # the checkpoint's own table (bit-exact official path)
        return sincos_positions(self.dim, grid_t).to(self.pos_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed.proj(x)  # (N, D, frames/4, 5)
        grid_t = tokens.shape[2]
        tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)  # time-major: n = t * 5 + f
        pos = self.positions(grid_t)
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens + pos[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.encoder_norm(x)[:, 1:]

    def init_random(self, generator: torch.Generator | None = None) -> None:
        """Plausible random weights for the no-checkpoint default (the official init, roughly)."""
        for name, p in self.named_parameters():
            if name == "pos_embed":
                continue
            if name.endswith("bias") or p.ndim == 1:
                continue  # module constructors already set biases / norm weights sensibly
            with torch.no_grad():
                p.normal_(0.0, 0.02, generator=generator)


# ----------------------------------------------------------------------------------------------------
# the HEAR model


class OfficialWrapper(nn.Module):
    """A HEAR model: frontend -> chunks -> encoder -> (B, frames, 5 * D) + timestamps."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: ChunkEncoder, name: str, arrangement: str = "official",
                 chunk_frames: int | str = CHUNK_FRAMES, chunk_batch: int = 256, dtype=torch.float32):
        super().__init__()
        self.encoder = encoder
        self.frontend = LogMelFrontend()
        self.name = name
        self.arrangement = arrangement
        self.chunk_frames = chunk_frames
        self.chunk_batch = chunk_batch
        self.compute_dtype = dtype
        self.scene_embedding_size = GRID_F * encoder.dim
        self.timestamp_embedding_size = GRID_F * encoder.dim

    @property
    def device(self) -> torch.device:
        return self.encoder.cls_token.device

    def chunk(self, logmel: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(B, T, 80) -> (B * n, 1, frames, 80) chunks, n, pad frames (official padding rule)."""
        B, T, _ = logmel.shape
        if self.chunk_frames == "whole":
            size = -(-T // PATCH_T) * PATCH_T  # the clip as one chunk, padded to whole patches
            pad = size - T
        else:
            size = self.chunk_frames
            pad = size - T % size  # a full extra chunk when T % size == 0, as the official wrapper
        x = F.pad(logmel, (0, 0, 0, pad))
        n = x.shape[1] // size
        return x.reshape(B * n, 1, size, N_MELS), n, pad

    def arrange(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, grid_t * 5, D) time-major tokens -> (N, grid_t, 5 * D) output frames."""
        N, L, D = tokens.shape
        grid_t = L // GRID_F
        if self.arrangement == "official":
            # einops 'b (f t) d -> b t (f d)' with f=5 applied to time-major tokens (the official quirk)
            return tokens.reshape(N, GRID_F, grid_t, D).transpose(1, 2).reshape(N, grid_t, GRID_F * D)
        return tokens.reshape(N, grid_t, GRID_F * D)

    @torch.no_grad()
    def encode_logmel(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, T, 80) normalised log-mel -> (B, frames, 5 * D) timestamp embeddings (float32)."""
        B = logmel.shape[0]
        chunks, n, pad = self.chunk(logmel.to(self.device))
        outs = []
        for start in range(0, chunks.shape[0], self.chunk_batch):
            part = chunks[start:start + self.chunk_batch].to(self.compute_dtype)
            outs.append(self.arrange(self.encoder(part)).float())
        emb = torch.cat(outs).reshape(B, -1, self.timestamp_embedding_size)
        crop = pad // PATCH_T  # = int(50 * pad / 200) of the official wrapper
        return emb[:, : emb.shape[1] - crop] if crop else emb

    def timestamps(self, n_sounds: int, n_samples: int, n_frames: int) -> torch.Tensor:
        if self.arrangement == "official":
            # official get_timestamps: step = clip seconds / frames, in float64, then float32
            step = n_samples / SAMPLE_RATE / n_frames * 1000.0
            ts = torch.arange(n_frames, dtype=torch.float64) * step
        else:
            # frame t covers log-mel frames 4t .. 4t+3 centred at 10 ms * i (center=True): 40 t + 15 ms
            ts = torch.arange(n_frames, dtype=torch.float64) * PATCH_T * HOP_MS + (PATCH_T - 1) / 2 * HOP_MS
        return ts.float()[None].expand(n_sounds, n_frames).contiguous().to(self.device)

    @torch.no_grad()
    def embed(self, audio) -> tuple[torch.Tensor, torch.Tensor]:
        audio = check_audio_batch(audio, self.name).to(self.device)
        logmel = self.frontend(audio)
        emb = self.encode_logmel(logmel)
        return emb, self.timestamps(audio.shape[0], audio.shape[1], emb.shape[1])


def _chunk_frames(value):
    if value == "whole":
        return value
    value = int(value)
    if value <= 0 or value % PATCH_T:
        raise ValueError
    return value


OPTIONS = common(tuple(WIDTHS)) + [
    Option("arrangement", ARRANGEMENTS, default="official"),
    Option("chunk_frames", convert=_chunk_frames, rule="a positive multiple of 4, or 'whole'", default=CHUNK_FRAMES),
    Option("chunk_batch", convert=positive_int, rule="a positive integer", default=256),
]


def build_wrapper(family: str, make_encoder, config_fn, model_file_path: str, options: dict,
                  ops: tuple[str, ...] = (), checkpoint_filter_fn=lambda state: state) -> OfficialWrapper:
    """Shared `load_model`: options, checkpoint resolution, strict load, random-init warning."""
    opts = parse_options(family, options, OPTIONS, ops=ops)
    size = opts["size"]
    ckpt = find_checkpoint(model_file_path, family, size)
    if ckpt is None:
        size = size or "tiny"
        with seeded(0):
            encoder = make_encoder({"dim": WIDTHS[size], "depth": DEFAULT_DEPTH}, opts)
        encoder.init_random(torch.Generator().manual_seed(0))
        warn_random_weights(family, f"NO WEIGHTS GIVEN - {size}", f"Pass the official weights folder, or set ${ENV_MODEL_DIR}.")
    else:
        state = checkpoint_filter_fn(read_official_state_dict(ckpt))
        config = config_fn(state, str(ckpt))
        if size is not None and WIDTHS[size] != config["dim"]:
            inferred = {v: k for k, v in WIDTHS.items()}.get(config["dim"], f"width {config['dim']}")
            raise UserFacingError(
                f"hear_modules.{family}: size={size!r} but {ckpt} holds a {inferred} model; drop the size option"
            )
        encoder = make_encoder(config, opts)
        load_strict(encoder, state, str(ckpt))
    encoder.eval()
    model = OfficialWrapper(
        encoder, family, arrangement=opts["arrangement"], chunk_frames=opts["chunk_frames"],
        chunk_batch=opts["chunk_batch"], dtype=opts["dtype"],
    )
    model.checkpoint_path = str(ckpt) if ckpt else None
    model.to(opts["device"])
    model.encoder.to(opts["dtype"])
    return model.eval()


def check_model(model, family: str) -> OfficialWrapper:
    if not isinstance(model, OfficialWrapper):
        raise UserFacingError(f"hear_modules.{family}: pass the model returned by hear_modules.{family}.load_model()")
    return model


def layer_norm_plus_one(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """xLSTM's LayerNorm without bias whose stored weight w is applied as 1 + w."""
    return F.layer_norm(x, (x.shape[-1],), weight=1.0 + weight, eps=eps)


__all__ = [
    "OfficialWrapper", "ChunkEncoder", "build_wrapper", "check_model", "common_config_from_state_dict",
    "sincos_positions", "layer_norm_plus_one",
]
