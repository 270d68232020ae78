"""EquiAV audio encoder: parity with the official fine-tuned model (fbank, tokens, embedding, logits),
strict loading of the `__M__.` state dict, timestamp grid and the long-clip rule."""

from pathlib import Path

import pytest
import torch

from _model_helpers import (  # expected, clips: fixtures that read this module's FIX
    assert_fbank_close,
    assert_hear_validator_passes,
    clips,
    expected,
    needs_hearscan_validate,
)
from hear_modules import equiav
from hearscan_core.errors import CheckpointError, UserFacingError

FIX = Path(__file__).parent / "fixtures" / "equiav"
CKPT = FIX / "checkpoint.pth"


@pytest.fixture(scope="module")
def model():
    return equiav.load_model(str(CKPT), device="cpu")


def test_fbank_matches_official(model, clips, expected):
    for i, clip in enumerate(clips):
        fb, n_frames = model.fbank(clip)
        assert n_frames == [998, 368][i]
        assert_fbank_close(fb[0, :1024], expected["fbank"][i])


def test_tokens_embedding_logits_match_official(model, expected):
    with torch.no_grad():
        out = model(expected["fbank"])
    for key in ("tokens", "embedding", "proj", "logits"):
        assert (out[key] - expected[key]).abs().max().item() < 1e-4, key


def test_scene_embedding_from_audio_is_the_official_embedding(model, clips, expected):
    for i, clip in enumerate(clips):
        scene = equiav.get_scene_embeddings(clip, model)
        assert (scene[0] - expected["embedding"][i]).abs().max().item() < 1e-4


def test_timestamp_embeddings_pool_the_token_grid_over_frequency(model, clips, expected):
    emb, ts = equiav.get_timestamp_embeddings(clips[1], model)
    assert emb.shape == (1, 23, 192)  # 368 frames -> the 23 columns of 16 frames that hold audio
    pooled = expected["tokens"][1].reshape(8, 64, 192).mean(dim=0)[:23]  # frequency-major grid
    assert (emb[0] - pooled).abs().max().item() < 1e-4
    hop = ts[0, 1:] - ts[0, :-1]
    assert torch.allclose(hop, torch.full_like(hop, 160.0)) and ts[0, 0].item() == pytest.approx(87.5)


def test_long_clip_rule_windows_cover_the_clip_once(model):
    assert equiav.windows(1024) == [0]
    assert equiav.windows(2500) == [0, 1024, 1476]
    audio = torch.randn(2, 16000 * 25) * 0.05  # 25 s: 2498 frames -> three windows, last end-aligned
    emb, ts = equiav.get_timestamp_embeddings(audio, model)
    assert torch.all(ts[:, 1:] > ts[:, :-1])  # increasing, no frame twice
    assert ts[0, -1].item() < 25000 and emb.shape[:2] == ts.shape and emb.shape[0] == 2
    scene = equiav.get_scene_embeddings(audio, model)
    assert scene.shape == (2, 192) and torch.isfinite(scene).all()


def test_unused_official_keys_accepted_but_anything_else_fails(tmp_path):
    state = torch.load(CKPT, weights_only=True)
    assert any(".norm1_v." in k for k in state) and "__M__.pred_v_inter.weight" in state
    bad = dict(state, **{"__M__.blocks_a.0.surprise": torch.zeros(1)})
    torch.save(bad, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected keys \\(1\\): blocks_a.0.surprise"):
        equiav.load_model(str(tmp_path / "extra.pth"), device="cpu")
    missing = {k: v for k, v in state.items() if k != "__M__.norm_a.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing keys \\(1\\): norm_a.bias"):
        equiav.load_model(str(tmp_path / "missing.pth"), device="cpu")
    unprefixed = {k[len("__M__."):]: v for k, v in state.items()}
    torch.save(unprefixed, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="__M__"):
        equiav.load_model(str(tmp_path / "plain.pth"), device="cpu")


def test_config_is_inferred_from_keys(model):
    assert model.dim == 192 and len(model.blocks_a) == 2 and model.blocks_a[0].attn.heads == 3
    assert model.scene_embedding_size == model.timestamp_embedding_size == 192


def test_options_and_random_default(capsys):
    with pytest.raises(UserFacingError, match="unknown option"):
        equiav.load_model(str(CKPT), arrangement="time")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = equiav.load_model(device="cpu")
    assert "RANDOM weights" in capsys.readouterr().err
    assert model.scene_embedding_size == 768 and len(model.blocks_a) == 12


@needs_hearscan_validate
def test_hear_validator_passes_with_weights():
    """(Without weights: tests/test_modules.py, for every module.)"""
    assert_hear_validator_passes("hear_modules.equiav", CKPT)
