"""SSAST (ViT encoder of SarthakYadav/axlstm-official): HEAR module identical to the official wrapper.

Owns the ViT blocks; the frontend, 2-s chunking, output arrangement, timestamps and checkpoint handling
are the official HEAR wrapper's, shared with AxLSTM in `hear_modules._ast_wrapper`: 16 kHz -> 80-band
log-mel normalised per clip -> 200-frame chunks (a full extra zero chunk when the frame count is a
multiple of 200) -> 250 patch tokens + CLS per chunk -> 12 pre-norm ViT blocks (LayerNorm eps 1e-6,
qkv bias, MLP x4 GELU, D / 64 heads) -> 50 frames of 5 * D per chunk (960/1920/3840 for tiny/small/base).

Long clips: the official wrapper chunks, so cost is linear in clip length; inside a chunk attention is
quadratic in tokens, which shows when `chunk_frames` is raised (or "whole").  Timestamp hop: about
40 ms (`i * clip_seconds / n_frames`, as official); `arrangement="time"` gives time-ordered frames at
patch centres (40 t + 15 ms).
"""

from __future__ import annotations

import torch
from torch import nn

from hear_modules import _ast_wrapper as wrapper
from hear_modules._layers import Block
from hearscan_core.errors import CheckpointError

HEAD_DIM = 64  # official configs: tiny 3, small 6, base 12 heads = D / 64



class SSASTEncoder(wrapper.ChunkEncoder):
    def __init__(self, dim: int, depth: int, heads: int | None = None, hidden: int | None = None):
        super().__init__(dim)
        heads = heads or max(1, dim // HEAD_DIM)
        hidden = hidden or 4 * dim
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, eps=1e-6) for _ in range(depth))


# the official ViT's parameter names -> the shared layers' (timm's)
_RENAMES = (("attn.qkv_layer.", "attn.qkv."), ("attn.proj_layer.", "attn.proj."), ("mlp.layer1.", "mlp.fc1."),
            ("mlp.layer2.", "mlp.fc2."))


def checkpoint_filter_fn(state: dict) -> dict:
    """The official SSAST keys on the shared layers: qkv_layer/proj_layer -> qkv/proj, layer1/2 -> fc1/2."""
    out = {}
    for key, value in state.items():
        for old, new in _RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def config_from_state_dict(state: dict, source: str) -> dict:
    config = wrapper.common_config_from_state_dict(state, source)
    if "blocks.0.layer.proj_up.weight" in state:
        raise CheckpointError(f"{source} is an AxLSTM checkpoint: load it with hear_modules.axlstm")
    key = "blocks.0.mlp.fc1.weight"
    if key not in state:
        raise CheckpointError(f"{source} has no {key}: not an SSAST checkpoint")
    config["hidden"] = state[key].shape[0]
    # heads are not visible in the weights; every official config uses 64-wide heads
    config["heads"] = max(1, config["dim"] // HEAD_DIM)
    return config


def _make_encoder(config: dict, options: dict) -> SSASTEncoder:
    return SSASTEncoder(config["dim"], config["depth"], config.get("heads"), config.get("hidden"))


def load_model(model_file_path: str = "", **options) -> wrapper.OfficialWrapper:
    """Options: size (tiny/small/base), device, dtype, scan_backend (accepted for uniformity: SSAST
    has no scan), arrangement (official/time), chunk_frames (200 = official), chunk_batch."""
    return wrapper.build_wrapper("ssast", _make_encoder, config_from_state_dict, model_file_path, options,
                                 checkpoint_filter_fn=checkpoint_filter_fn)


def get_timestamp_embeddings(audio: torch.Tensor, model: wrapper.OfficialWrapper):
    return wrapper.check_model(model, "ssast").embed(audio)


def get_scene_embeddings(audio: torch.Tensor, model: wrapper.OfficialWrapper) -> torch.Tensor:
    emb, _ = wrapper.check_model(model, "ssast").embed(audio)
    return emb.mean(dim=1)
