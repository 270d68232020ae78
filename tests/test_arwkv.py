"""A-RWKV HEAR module: parity with the official AudioRWKV code (fixture made by it), strict checkpoint
loading, the long-clip and timestamp rules, options, and hear-validator."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from _model_helpers import HEARSCAN, assert_fbank_close, hearscan_validate_available, one_thread  # noqa: F401 (autouse)
from hear_modules import arwkv
from hearscan_core.errors import AudioInputError, CheckpointError, UserFacingError

FIXTURE = Path(__file__).parent / "fixtures" / "arwkv"
CHECKPOINT = FIXTURE / "checkpoint.pth"
LENGTHS = [160000, 52800]  # true lengths of the two fixture clips (10.0 s and 3.3 s at 16 kHz)
ATOL = 1e-4


def _compiled_available() -> str | None:
    """None if the compiled WKV-7 kernel runs, else the reason it cannot."""
    r = torch.randn(1, 16, 1, 64)
    try:
        from csrc.wkv7 import wkv7

        wkv7(r, -torch.rand_like(r) - 0.6, r, r, -r * 0.1, r * 0.1, backend="compiled")
    except Exception as err:  # KernelBuildError (no compiler / compile error) or a binding not written yet
        return f"{type(err).__name__}: {err}"
    return None


def _backend_param(name):
    if name == "compiled":
        return pytest.param(name, marks=pytest.mark.skipif(
            _compiled_available() is not None, reason=f"compiled wkv7 unavailable: {_compiled_available()}"))
    return name


BACKENDS = [_backend_param("reference"), _backend_param("compiled")]


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE / "expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def audio():
    return torch.from_numpy(np.load(FIXTURE / "audio.npy"))


@pytest.fixture(scope="module")
def model():
    """The fixture checkpoint on the fastest available scan (parity tests pin the backend themselves)."""
    return arwkv.load_model(str(CHECKPOINT), device="cpu", scan_backend="auto")


def _fixture_fbank(model, audio):
    """Normalised model input of each clip at its true length, as the official loader builds it."""
    wins = []
    for row, n in zip(audio, LENGTHS):
        w, starts = model.windows(model.log_fbank(row[None, :n]))
        assert starts == [0]
        wins.append(w[:, 0])
    return torch.cat(wins)


def test_fbank_matches_official(model, audio, expected):
    fb = _fixture_fbank(model, audio)
    assert fb.shape == (2, 992, 128)
    assert_fbank_close(fb, expected["fbank"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tokens_embedding_logits_match_official(expected, backend):
    model = arwkv.load_model(str(CHECKPOINT), device="cpu", scan_backend=backend)
    with torch.no_grad():
        tokens = model.tokens(expected["fbank"])
        emb = model.ln_out(tokens.mean(dim=1))
        logits = model.head(emb)
    torch.testing.assert_close(tokens, expected["tokens"], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(emb, expected["embedding"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, expected["logits"], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scene_embedding_api_matches_official(audio, expected, backend):
    """The public HEAR call on each clip (<= 10.0 s) gives the official ln_out(mean of tokens)."""
    model = arwkv.load_model(str(CHECKPOINT), device="cpu", scan_backend=backend)
    for i, n in enumerate(LENGTHS):
        emb = arwkv.get_scene_embeddings(audio[i:i + 1, :n], model)
        assert emb.dtype == torch.float32 and emb.shape == (1, 192)
        assert (emb[0] - expected["embedding"][i]).abs().max() <= ATOL


def test_checkpoint_variants_fp32_without_prefix(tmp_path, model, expected):
    """The same weights saved in float32 without the DataParallel prefix load to the same model."""
    sd = torch.load(CHECKPOINT, weights_only=True)
    assert all(k.startswith("module.") for k in sd) and next(iter(sd.values())).dtype == torch.bfloat16
    plain = {k[len("module."):]: v.float() for k, v in sd.items()}
    torch.save(plain, tmp_path / "plain.pth")
    other = arwkv.load_model(str(tmp_path / "plain.pth"), device="cpu", scan_backend="reference")
    for (k, a), (k2, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_config_inferred_from_checkpoint(model):
    cfg = model.cfg
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.head_size, cfg.dim_ffn) == (192, 2, 3, 64, 768)
    assert (cfg.lora_decay, cfg.lora_aaa, cfg.lora_mv, cfg.lora_gate) == (32, 32, 32, 32)
    assert (cfg.num_classes, cfg.grid_t, cfg.grid_f) == (527, 62, 8)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 192
    assert model.sample_rate == 16000


@pytest.mark.parametrize("size,width,params_m", [("tiny", 192, 6.2), ("small", 384, 23.4), ("base", 768, 91.6)])
def test_official_sizes(size, width, params_m):
    """T/S/B configurations have the published parameter counts (the model is built on the meta device)."""
    cfg = arwkv.ARWKVConfig.for_width(width)
    with torch.device("meta"):
        model = arwkv.AudioRWKV(cfg)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - params_m) < 0.15, n


def _bad_checkpoint(tmp_path, edit):
    sd = torch.load(CHECKPOINT, weights_only=True)
    edit(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    return str(path)


def test_strict_loading_lists_every_mismatch(tmp_path):
    def edit(sd):
        del sd["module.blocks.1.att.k_a"]
        sd["module.blocks.0.att.extra"] = torch.zeros(3)
        sd["module.blocks.1.ffn.value.bias"] = torch.zeros(5)

    with pytest.raises(CheckpointError) as err:
        arwkv.load_model(_bad_checkpoint(tmp_path, edit), device="cpu")
    text = str(err.value)
    assert "blocks.1.att.k_a" in text and "blocks.0.att.extra" in text and "blocks.1.ffn.value.bias" in text


def test_not_an_arwkv_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not an AudioRWKV state_dict"):
        arwkv.load_model(str(path))
    with pytest.raises(CheckpointError, match="not found"):
        arwkv.load_model(str(tmp_path / "missing.pth"))


def test_random_init_warns_loudly(capsys):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = arwkv.load_model(device="cpu")
    assert "RANDOM weights" in capsys.readouterr().err
    assert model.cfg.n_embd == 192 and model.cfg.n_layer == 12


def test_options_are_checked():
    with pytest.raises(UserFacingError, match="unknown option"):
        arwkv.load_model(colour="blue")
    with pytest.raises(UserFacingError, match="size"):
        arwkv.load_model(size="huge")
    with pytest.raises(UserFacingError, match="dtype"):
        arwkv.load_model(dtype="float16")
    with pytest.raises(UserFacingError, match="size"):
        arwkv.load_model(str(CHECKPOINT), size="small")


def test_window_rule():
    model = arwkv.load_model(str(CHECKPOINT), device="cpu")
    assert arwkv.OFFICIAL_MAX_FRAMES == 998
    assert model.window_starts(300) == [0]
    assert model.window_starts(998) == [0]  # a 10.0 s clip: official cut
    assert model.window_starts(999) == [0, 16]  # last window aligned to the patch grid, reaches the end
    assert model.window_starts(1998) == [0, 992, 1008]
    assert model.window_starts(992 * 3) == [0, 992, 1984]


def test_long_clip_grid_and_timestamps(model, audio):
    """A long clip: windows are real official windows, the grid is regular, timestamps cover the clip."""
    clip = torch.cat([audio[0], audio[1, :LENGTHS[1]], audio[0, :88000]])[None]  # 18.8 s: 2 windows
    n_frames = arwkv.frames_for(2 * clip.shape[1])
    starts = model.window_starts(n_frames)
    with torch.no_grad():
        grid, _ = model.token_grid(clip)
    assert grid.shape[1] == math.ceil(n_frames / 16)
    # each piece of the grid is the tokens of the corresponding official window
    wins, _ = model.windows(model.log_fbank(clip))
    with torch.no_grad():
        last = model.tokens(wins[:, -1]).view(1, 62, 8, -1)
        first = model.tokens(wins[:, 0]).view(1, 62, 8, -1)
    torch.testing.assert_close(grid[:, :62], first)
    torch.testing.assert_close(grid[:, -1], last[:, -1])
    assert starts[-1] + 992 >= n_frames

    emb, ts = arwkv.get_timestamp_embeddings(clip, model)
    diffs = np.diff(ts[0].numpy())
    assert np.allclose(diffs, 160.0)
    assert ts[0, 0] == pytest.approx(87.5)
    duration_ms = 1000 * clip.shape[1] / 16000
    assert len(starts) == 2 and duration_ms - 160 < ts[0, -1] <= duration_ms
    torch.testing.assert_close(emb, model.ln_out(grid[:, :ts.shape[1]].mean(dim=2)))
    scene = arwkv.get_scene_embeddings(clip, model)
    torch.testing.assert_close(scene, model.ln_out(grid.mean(dim=(1, 2))))


def test_timestamps_of_a_10s_clip(model, audio, expected):
    emb, ts = arwkv.get_timestamp_embeddings(audio[:1], model)
    assert emb.shape == (1, 62, 192) and ts.shape == (1, 62)
    assert ts[0, 0] == pytest.approx(87.5) and ts[0, -1] == pytest.approx(87.5 + 61 * 160)
    tokens = expected["tokens"][0].view(62, 8, 192)
    torch.testing.assert_close(emb[0], model.ln_out(tokens.mean(dim=1)), atol=ATOL, rtol=ATOL)


def test_short_clips_and_silence(model):
    with pytest.raises(AudioInputError, match="shorter than one analysis frame"):
        arwkv.get_scene_embeddings(torch.zeros(1, 399), model)
    emb, ts = arwkv.get_timestamp_embeddings(torch.zeros(2, 800), model)  # 50 ms of silence
    assert emb.shape == (2, 1, 192) and torch.isfinite(emb).all()
    assert ts[0, 0] == pytest.approx(25.0)
    _, ts = arwkv.get_timestamp_embeddings(torch.zeros(1, 17120), model)  # 1.07 s: the validator's length
    assert ts.shape == (1, 7) and ts[0, -1] == pytest.approx(1047.5)


def test_bfloat16_runs_close_to_float32(audio, expected):
    model = arwkv.load_model(str(CHECKPOINT), device="cpu", dtype="bfloat16")
    assert model.pos_embed.dtype == torch.bfloat16
    emb = arwkv.get_scene_embeddings(audio[:1], model)
    assert emb.dtype == torch.float32
    assert (emb[0] - expected["embedding"][0]).abs().max() < 0.05  # measured 8.2e-3 (max |emb| 3.7)


@pytest.mark.skipif(not hearscan_validate_available(), reason="`hearscan validate` not available yet")
def test_hear_validator_passes_with_checkpoint():
    """(Without weights: tests/test_modules.py, for every module.)"""
    cmd = [str(HEARSCAN), "validate", "hear_modules.arwkv", "--device", "cpu", "--model", str(CHECKPOINT)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(UserFacingError, match="no CUDA device"):
        arwkv.load_model(str(CHECKPOINT), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype,tol", [("float32", ATOL), ("bfloat16", 0.05)])
def test_cuda_matches_official(audio, expected, dtype, tol):
    model = arwkv.load_model(str(CHECKPOINT), device="cuda", dtype=dtype)
    for i, n in enumerate(LENGTHS):
        emb = arwkv.get_scene_embeddings(audio[i:i + 1, :n].cuda(), model)
        assert emb.dtype == torch.float32
        assert (emb[0].cpu() - expected["embedding"][i]).abs().max() <= tol


def test_fbank_in_blocks_equals_whole_clip(model, audio, monkeypatch):
    """Long clips get their fbank in blocks of frames (bounded memory); the values must not change."""
    from hear_modules._frontend import kaldi_fbank

    clip = audio[:1, :52800]
    whole, _ = kaldi_fbank(arwkv._resample(clip), 32000, arwkv.frames_for(2 * 52800), 128, low_freq=50, high_freq=14000)
    monkeypatch.setattr(arwkv, "FBANK_BLOCK_FRAMES", 100)
    blocks = model.log_fbank(clip)
    assert blocks.shape == whole.shape == (1, 328, 128)
    torch.testing.assert_close(blocks, whole, atol=0, rtol=0)
