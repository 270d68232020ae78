"""Con-RWKV: RWKV-6 ("Finch", x060) blocks with the Con block of Con-RWKV, over log-mel time patches.

NO AUDIO WEIGHTS ARE PUBLISHED for this model.  Con-RWKV (RWKV-ASR, Maple3126/Con-RWKV) is an ASR system -
speech encoder + adapter + frozen RWKV-6 World language model - not an audio encoder; what carries over is
its block.  This module is the architecture with seeded random weights (default) or weights you trained
yourself and saved in the format below.  Its embeddings are a random-feature baseline until then.

Owns: the frontend and patching (our design, below), RWKV-6 blocks on the `csrc.wkv6` scan with the Con
block, and strict loading of a state_dict whose block keys are the official RWKV-6 / Con-RWKV `Block` keys:
  blocks.{i}.ln0.* (layer 0 only), ln1.*, ln2.*,
  blocks.{i}.att.{time_maa_x,w,k,v,r,g, time_maa_w1, time_maa_w2, time_decay, time_decay_w1,
                  time_decay_w2, time_faaaa, receptance|key|value|output|gate.weight, ln_x.*},
  blocks.{i}.ffn.{time_maa_k, time_maa_r, key|receptance|value.weight},
  blocks.{i}.layer_norm.*, blocks.{i}.depthwise_conv.{weight,bias};
plus our stem `patch_embed.{weight,bias}` and `ln_out.*`.  The official Block also carries `ln_even.*` and
`batch_norm.*`, which its forward never uses: accepted and ignored.

Block (official RWKV-ASR `Block.forward`, dropout 0): x = ln0(x) in layer 0; x += att(ln1 x);
Con: x += LN_c(DWConv1d_k(causal left pad k-1; LN_c(x))) with one LayerNorm used twice and a conv with
bias (k = 5); x += ffn(ln2 x).  Time-mix x060: token shift by one step, data-dependent mixing (5-way
LoRA), decay w = time_decay + tanh(x_w W1) W2 (per-step decay exp(-exp(w))), bonus u = time_faaaa,
y = output(GroupNorm_H(wkv6) * silu(gate)), GroupNorm eps 6.4e-4.  Channel-mix: sigmoid(r) * value(relu(key)^2).

Frontend and patching (our design): 16 kHz audio, Kaldi fbank (htk_compat, hanning, 128 mel bins,
25 ms window, 10 ms shift, dither 0, waveform mean removed), normalised with the AudioSet statistics used
by AST/AuM, (fb + 4.2677393) / (2 * 4.5689974).  Frames are grouped into time patches of 4 frames x all
128 bins (a Conv2d with kernel = stride = (4, 128)): a 1-D token sequence at 40 ms, which is what a
causal, recurrent RWKV wants (no 2-D grid, no position embedding: the recurrence knows the order).
Clips of any length run in one pass (linear time; no windows).  Scene embedding = ln_out(mean of tokens).
Timestamp embeddings = ln_out(token); token p covers frames 4p..4p+3 = 40p .. 40p+55 ms, stamped at its
centre 40p + 27.5 ms, hop 40 ms (below hear-validator's 50 ms); tokens whose centre lies past the end of
the clip are not reported.  Clips under 400 samples (one frame) are an AudioInputError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import csrc
from hear_modules._audio import check_audio_batch
from hear_modules._checkpoint import load_strict, read_checkpoint, strip_prefix
from hear_modules._frontend import kaldi_fbank
from hear_modules._options import common, parse_options, warn_random_weights
from hear_modules._windows import batch_timestamps, column_centres_ms, timestamps_inside
from hearscan_core.errors import CheckpointError, UserFacingError

SAMPLE_RATE = 16000
NUM_MELS = 128
PATCH_FRAMES = 4
FBANK_MEAN = -4.2677393
FBANK_STD = 4.5689974
FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0
MIN_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)
HEAD_SIZE = 64
CONV_KERNEL = 5
SIZES = {"tiny": 192, "small": 384, "base": 768}
DEPTH = 12



@dataclass
class ConRWKVConfig:
    n_embd: int = 192
    n_layer: int = DEPTH
    head_size: int = HEAD_SIZE
    dim_ffn: int = 672
    mix_lora: int = 32  # TIME_MIX_EXTRA_DIM
    decay_lora: int = 64  # TIME_DECAY_EXTRA_DIM
    conv_kernel: int = CONV_KERNEL
    num_mels: int = NUM_MELS
    patch_frames: int = PATCH_FRAMES

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @classmethod
    def for_width(cls, width: int) -> "ConRWKVConfig":
        # RWKV-6 training defaults: dim_ffn = 3.5 C rounded down to a multiple of 32
        return cls(n_embd=width, dim_ffn=int((width * 3.5) // 32 * 32))


def _shift(x: torch.Tensor) -> torch.Tensor:
    """RWKV token shift (ZeroPad2d((0, 0, 1, -1))): the previous token, zeros at t = 0, minus nothing."""
    return F.pad(x, (0, 0, 1, -1))


class TimeMix6(nn.Module):
    """RWKV-6 (x060) time-mix; parameter names are the official ones."""

    def __init__(self, cfg: ConRWKVConfig):
        super().__init__()
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        self.n_head, self.head_size = H, N
        for name in ("x", "w", "k", "v", "r", "g"):
            setattr(self, f"time_maa_{name}", nn.Parameter(torch.zeros(1, 1, C)))
        self.time_maa_w1 = nn.Parameter(torch.zeros(C, 5 * cfg.mix_lora))
        self.time_maa_w2 = nn.Parameter(torch.zeros(5, cfg.mix_lora, C))
        self.time_decay = nn.Parameter(torch.zeros(1, 1, C))
        self.time_decay_w1 = nn.Parameter(torch.zeros(C, cfg.decay_lora))
        self.time_decay_w2 = nn.Parameter(torch.zeros(cfg.decay_lora, C))
        self.time_faaaa = nn.Parameter(torch.zeros(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.gate = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=6.4e-4)  # 1e-5 * head_size_divisor**2 (8), as official

    def forward(self, x, scan_backend):
        B, T, C = x.shape
        H, N = self.n_head, self.head_size
        xx = _shift(x) - x
        xxx = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
        mw, mk, mv, mr, mg = torch.bmm(xxx, self.time_maa_w2).view(5, B, T, C).unbind(0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2  # log-log decay

        def heads(t):
            return t.view(B, T, H, N)

        y = csrc.wkv6(heads(r), heads(k), heads(v), heads(w), self.time_faaaa, backend=scan_backend)
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        return self.output(y * g)


class ChannelMix6(nn.Module):
    def __init__(self, cfg: ConRWKVConfig):
        super().__init__()
        C = cfg.n_embd
        self.time_maa_k = nn.Parameter(torch.zeros(1, 1, C))
        self.time_maa_r = nn.Parameter(torch.zeros(1, 1, C))
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def forward(self, x):
        xx = _shift(x) - x
        k = torch.relu(self.key(x + xx * self.time_maa_k)) ** 2
        return torch.sigmoid(self.receptance(x + xx * self.time_maa_r)) * self.value(k)


class ConBlock(nn.Module):
    """RWKV-6 block with the Con block after the attention residual (official key names)."""

    def __init__(self, cfg: ConRWKVConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        self.att = TimeMix6(cfg)
        self.ffn = ChannelMix6(cfg)
        self.layer_norm = nn.LayerNorm(C)  # LN_c, used before and after the conv
        self.depthwise_conv = nn.Conv1d(C, C, kernel_size=cfg.conv_kernel, groups=C)
        self.kernel_size = cfg.conv_kernel

    def forward(self, x, scan_backend):
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        x = x + self.att(self.ln1(x), scan_backend)
        c = F.pad(self.layer_norm(x).transpose(1, 2), (self.kernel_size - 1, 0))  # causal: left pad k-1
        x = x + self.layer_norm(self.depthwise_conv(c).transpose(1, 2))
        return x + self.ffn(self.ln2(x))


class ConRWKV(nn.Module):
    sample_rate = SAMPLE_RATE

    def __init__(self, cfg: ConRWKVConfig, scan_backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.scan_backend = scan_backend
        self.scene_embedding_size = cfg.n_embd
        self.timestamp_embedding_size = cfg.n_embd
        p = (cfg.patch_frames, cfg.num_mels)
        self.patch_embed = nn.Conv2d(1, cfg.n_embd, kernel_size=p, stride=p)
        self.blocks = nn.ModuleList(ConBlock(cfg, i) for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)

    @property
    def device(self) -> torch.device:
        return self.ln_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.ln_out.weight.dtype

    def fbank(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz -> (B, F, 128) normalised fbank, F padded up to a multiple of the patch."""
        win, hop = MIN_SAMPLES, int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)
        n_frames = 1 + (audio.shape[1] - win) // hop
        n_frames = self.cfg.patch_frames * math.ceil(n_frames / self.cfg.patch_frames)
        fb, _ = kaldi_fbank(audio.float(), SAMPLE_RATE, n_frames, self.cfg.num_mels, subtract_mean=True)
        return (fb - FBANK_MEAN) / (2 * FBANK_STD)  # padded frames: 0 after normalisation (the mean)

    def tokens(self, fb: torch.Tensor) -> torch.Tensor:
        """(B, F, 128) normalised fbank -> (B, F / 4, C) last-block tokens (before ln_out)."""
        x = self.patch_embed(fb.to(self.dtype).unsqueeze(1)).flatten(2).transpose(1, 2)
        for block in self.blocks:
            x = block(x, self.scan_backend)
        return x


def get_scene_embeddings(audio: torch.Tensor, model: ConRWKV) -> torch.Tensor:
    audio = check_audio_batch(audio, "conrwkv").to(model.device)
    with torch.no_grad():
        return model.ln_out(model.tokens(model.fbank(audio)).mean(dim=1)).float()


def get_timestamp_embeddings(audio: torch.Tensor, model: ConRWKV):
    audio = check_audio_batch(audio, "conrwkv").to(model.device)
    with torch.no_grad():
        tokens = model.tokens(model.fbank(audio))
        patch = model.cfg.patch_frames
        centres = column_centres_ms([patch * p for p in range(tokens.shape[1])], patch)
        ts = timestamps_inside(centres, audio.shape[1], SAMPLE_RATE)
        emb = model.ln_out(tokens[:, :len(ts)]).float()
    return emb, batch_timestamps(ts, audio.shape[0], emb.device)


# --- loading ----------------------------------------------------------------------------------------
_UNUSED_OFFICIAL = ("ln_even.", "batch_norm.")  # carried by the official Block, never used in forward
_REQUIRED = ("patch_embed.weight", "ln_out.weight", "blocks.0.att.time_faaaa", "blocks.0.att.time_maa_w2",
             "blocks.0.att.time_decay_w1", "blocks.0.ffn.key.weight", "blocks.0.depthwise_conv.weight")


def checkpoint_filter_fn(state_dict: dict) -> dict:
    """The official Block's quirks: DataParallel's `module.` prefix, and `ln_even.*` / `batch_norm.*`, which
    its forward never uses (dropped)."""
    sd = strip_prefix(state_dict, "module.")
    return {k: v for k, v in sd.items()
            if not (k.startswith("blocks.") and k.split(".", 2)[2].startswith(_UNUSED_OFFICIAL))}


def config_from_state_dict(sd: dict, source: str) -> ConRWKVConfig:
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise CheckpointError(
            f"checkpoint {source} is not a Con-RWKV state_dict: missing keys {', '.join(missing)} "
            f"(it has {len(sd)} keys, e.g. {', '.join(list(sd)[:5])})"
        )
    H, N = sd["blocks.0.att.time_faaaa"].shape
    pe = sd["patch_embed.weight"].shape  # (C, 1, patch_frames, num_mels)
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    return ConRWKVConfig(
        n_embd=sd["ln_out.weight"].shape[0], n_layer=max(layers) + 1, head_size=N,
        dim_ffn=sd["blocks.0.ffn.key.weight"].shape[0], mix_lora=sd["blocks.0.att.time_maa_w2"].shape[1],
        decay_lora=sd["blocks.0.att.time_decay_w1"].shape[1],
        conv_kernel=sd["blocks.0.depthwise_conv.weight"].shape[-1], num_mels=pe[3], patch_frames=pe[2],
    )


def _random_init(model: ConRWKV, seed: int = 0) -> None:
    """Seeded random weights in the spread of trained RWKV-6 ones (decays in a useful range, unit-scale
    projections), so the untrained model's embeddings are not degenerate."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf, parent = name.split(".")[-1], (name.split(".")[-2] if "." in name else "")
            if parent.startswith("ln") or parent == "layer_norm":
                val = 1.0 + 0.1 * torch.randn(p.shape, generator=gen) if leaf == "weight" else 0.05 * torch.randn(p.shape, generator=gen)
            elif leaf.startswith("time_maa_") and leaf[-1] in "xwkvrg":
                val = torch.rand(p.shape, generator=gen)
            elif leaf == "time_decay":  # per-step decay exp(-exp(w)) roughly in [0.64, 0.9975]
                val = torch.rand(p.shape, generator=gen) * 5.5 - 5.0
            elif leaf in ("time_maa_w1", "time_decay_w1"):
                val = 0.05 * torch.randn(p.shape, generator=gen)
            elif leaf in ("time_maa_w2", "time_decay_w2", "time_faaaa"):
                val = 0.1 * torch.randn(p.shape, generator=gen)
            elif leaf == "bias":
                val = 0.05 * torch.randn(p.shape, generator=gen)
            else:
                fan_in = p[0].numel()
                scale = 0.5 if parent == "output" or name.endswith("ffn.value.weight") else 1.0
                val = torch.randn(p.shape, generator=gen) * scale / math.sqrt(fan_in)
            p.copy_(val)


OPTIONS = common(SIZES)


def load_model(model_file_path: str = "", **options) -> ConRWKV:
    """A Con-RWKV state_dict (strict; configuration read from it), or a seeded random model of `size`.

    Options: size (tiny|small|base), device (cpu|cuda, default CUDA when present), dtype
    (float32|bfloat16), scan_backend (auto|compiled|reference).
    """
    opts = parse_options("conrwkv", options, OPTIONS, ops=("wkv6",))
    backend = opts["scan_backend"]  # None: $HEARSCAN_SCAN_BACKEND, else auto (csrc.dispatch)
    if model_file_path:
        if opts["size"] is not None:
            raise UserFacingError("hear_modules.conrwkv: `size` is for random init; a checkpoint's size is read from the checkpoint")
        sd = checkpoint_filter_fn(read_checkpoint(model_file_path))
        cfg = config_from_state_dict(sd, str(model_file_path))
        model = ConRWKV(cfg, scan_backend=backend)
        load_strict(model, sd, str(model_file_path))
    else:
        size = opts["size"] or "tiny"
        warn_random_weights("conrwkv", f"a {size} RWKV-6 Con model (seed 0)",
                            "No audio weights are published for Con-RWKV: a random-feature baseline.")
        model = ConRWKV(ConRWKVConfig.for_width(SIZES[size]), scan_backend=backend)
        _random_init(model)
    return model.to(device=opts["device"], dtype=opts["dtype"]).eval()
