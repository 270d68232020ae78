"""hear_modules.aum against the official AuM code's outputs (tests/fixtures/aum/{fobi,bibi}, made by
kaistmm/Audio-Mamba-AuM on CPU in fp32 with a tiny random-weight model), plus checkpoint handling,
long/short clips and the HEAR validator."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from _model_helpers import HEARSCAN, assert_fbank_close
from csrc._build import KernelBuildError, load
from hear_modules import aum
from hearscan_core.errors import AudioInputError, CheckpointError, UserFacingError

FIXTURES = Path(__file__).parent / "fixtures" / "aum"
VARIANTS = ["fobi", "bibi"]
ATOL = 1e-4  # the parity bound for fp32


def _compiled_reason() -> str | None:
    try:
        load("selective_scan")
        return None
    except KernelBuildError as err:
        return str(err)


BACKENDS = [
    "reference",
    pytest.param("compiled", marks=pytest.mark.skipif(
        _compiled_reason() is not None, reason=f"compiled selective_scan unavailable: {_compiled_reason()}")),
]


def _fixture(variant):
    d = FIXTURES / variant
    expected = torch.load(d / "expected.pt", weights_only=True)
    audio = torch.from_numpy(np.load(d / "audio.npy"))
    clips = [audio[i:i + 1, :n] for i, n in enumerate(expected["lengths"].tolist())]  # true lengths only
    return d / "checkpoint.pth", clips, expected


def _load(variant, **options):
    path, clips, expected = _fixture(variant)
    return aum.load_model(str(path), device="cpu", **options), clips, expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_official_outputs(variant, backend):
    model, clips, expected = _load(variant, scan_backend=backend)
    assert model.variant == variant and len(model.layers) == 2 and model.scene_embedding_size == 192
    for i, clip in enumerate(clips):  # 10.0 s (998 frames) and 4.2 s (418 frames, padded)
        fb, n_frames = model.fbank(clip)
        assert n_frames.item() == expected["n_frames"][i]
        assert_fbank_close(fb[0], expected["fbank"][i])
        with torch.no_grad():
            tokens = model.forward_tokens(expected["fbank"][i:i + 1])
            logits = model(expected["fbank"][i:i + 1])
        assert (tokens[0] - expected["tokens"][i]).abs().max() < ATOL
        assert (logits[0] - expected["logits"][i]).abs().max() < ATOL
        scene = aum.get_scene_embeddings(clip, model)  # the HEAR path, from the waveform
        assert scene.dtype == torch.float32 and scene.shape == (1, 192)
        assert (scene[0] - expected["features"][i]).abs().max() < ATOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_timestamp_embeddings_pool_official_tokens_over_frequency(variant):
    model, clips, expected = _load(variant)
    clip = clips[1]  # 4.2 s
    emb, ts = aum.get_timestamp_embeddings(clip, model)
    # columns centred at 87.5 + 160 g ms that lie inside 4200 ms: g = 0..25
    assert ts.shape == (1, 26) and emb.shape == (1, 26, 192)
    torch.testing.assert_close(ts[0], 87.5 + 160.0 * torch.arange(26, dtype=torch.float32))
    official = expected["tokens"][1]
    patches = torch.cat([official[:256], official[257:]]).view(8, 64, 192)  # frequency-major grid
    assert (emb[0] - patches.mean(dim=0)[:26]).abs().max() < ATOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_both_directions_in_one_kernel_call_equals_two_calls(variant):
    """With A == A_b (Mamba's init) the scans can be batched (by default only on CUDA; forced here); Bi-Bi
    then applies D_b and delta_bias_b itself."""
    model, clips, _ = _load(variant)
    for layer in model.layers:
        layer.mixer.A_b_log.data.copy_(layer.mixer.A_log.data)
        layer.mixer.batch_directions = True
    fb, _ = model.fbank(clips[1])
    with torch.no_grad():
        batched = model.forward_tokens(fb)
        for layer in model.layers:
            layer.mixer.batch_directions = False
        separate = model.forward_tokens(fb)
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)


def test_long_clip_windows_and_timestamps():
    """12 s = 1198 frames: two 1024-frame windows; scene = frame-weighted mean of the window class tokens."""
    model, clips, _ = _load("fobi")
    g = torch.Generator().manual_seed(0)
    clip = torch.cat([clips[0], 0.1 * torch.randn(1, 32000, generator=g)], dim=1)  # 12.0 s
    n_frames = 1 + (clip.shape[1] - 400) // 160
    assert n_frames == 1198
    scene = aum.get_scene_embeddings(clip, model)
    emb, ts = aum.get_timestamp_embeddings(clip, model)
    fb, _ = model.fbank(clip, 2048)  # the whole clip's fbank, zero-padded (log domain) to two windows
    with torch.no_grad():
        tokens = model.forward_tokens(fb.view(2, 1024, 128))
    real = torch.tensor([1024.0, n_frames - 1024.0])
    expected = (tokens[:, 256] * real[:, None]).sum(0) / real.sum()
    torch.testing.assert_close(scene[0], expected, atol=1e-5, rtol=1e-5)
    # timestamps: regular 160 ms hop, covering the clip, never past its end (12000 ms)
    n = int((12000 - 87.5) // 160) + 1
    assert ts.shape == (1, n) and emb.shape == (1, n, 192)
    assert float(ts.max()) <= 12000.0 and float(ts.max()) > 12000.0 - 160.0
    torch.testing.assert_close(torch.diff(ts[0]), torch.full((n - 1,), 160.0))
    patches = torch.cat([tokens[:, :256], tokens[:, 257:]], dim=1).view(2, 8, 64, 192).mean(1).flatten(0, 1)
    torch.testing.assert_close(emb[0], patches[:n], atol=1e-5, rtol=1e-5)


def test_short_clips_and_silence():
    model, _, _ = _load("bibi")
    with pytest.raises(AudioInputError, match="400 samples"):
        aum.get_scene_embeddings(torch.zeros(2, 399), model)
    emb, ts = aum.get_timestamp_embeddings(torch.zeros(2, 400), model)  # one 25 ms frame of silence
    assert emb.shape == (2, 1, 192) and torch.isfinite(emb).all()
    torch.testing.assert_close(ts, torch.full((2, 1), 12.5))  # shorter than a column: stamped at its middle
    scene = aum.get_scene_embeddings(torch.zeros(3, 16000), model)
    assert torch.isfinite(scene).all() and scene.shape == (3, 192)
    with pytest.raises(AudioInputError):
        aum.get_scene_embeddings(torch.zeros(1, 2, 16000), model)


def test_checkpoint_loading_rules(tmp_path):
    path, _, _ = _fixture("bibi")
    sd = torch.load(path, weights_only=True)
    # DataParallel prefix
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "dp.pth")
    assert aum.load_model(str(tmp_path / "dp.pth"), device="cpu").variant == "bibi"
    # a missing Bi-Bi tensor and a wrong shape are both listed
    bad = dict(sd)
    del bad["layers.1.mixer.x_proj_b.weight"]
    bad["layers.0.mixer.D"] = torch.zeros(5)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        aum.load_model(str(tmp_path / "bad.pth"), device="cpu")
    assert "layers.1.mixer.x_proj_b.weight" in str(err.value) and "layers.0.mixer.D" in str(err.value)
    # not an AuM checkpoint at all
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an official AuM"):
        aum.load_model(str(tmp_path / "other.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        aum.load_model(str(tmp_path / "missing.pth"))
    # options that contradict the checkpoint, unknown options and values
    with pytest.raises(UserFacingError, match="contradict"):
        aum.load_model(str(path), variant="fobi")
    with pytest.raises(UserFacingError, match="valid options"):
        aum.load_model(str(path), sise="tiny")
    with pytest.raises(UserFacingError, match="'audioset', 'vggsound'"):
        aum.load_model(str(path), norm="esc50")


def test_vggsound_normalisation():
    model, clips, expected = _load("fobi", norm="vggsound")
    fb, _ = model.fbank(clips[0])
    raw = expected["fbank"][0] * (2 * 4.5689974) - 4.2677393  # undo the AudioSet normalisation
    assert_fbank_close(fb[0], (raw + 5.0767093) / (2 * 4.4533687))


def test_random_init_sizes_and_warning(capsys):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        tiny = aum.load_model(size="tiny", variant="bibi", device="cpu")
    assert "RANDOM weights" in capsys.readouterr().err
    small = aum.load_model(size="small", device="cpu")
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # published sizes (depth 24, 527 classes): tiny ~7.0M, small Bi-Bi 25.5M, base Fo-Bi 92.1M
    assert tiny.variant == "bibi" and abs(n_params(tiny) / 1e6 - 7.0) < 0.05
    assert small.variant == "bibi" and abs(n_params(small) / 1e6 - 25.5) < 0.05  # released pairing
    assert abs(n_params(aum.AudioMamba(768, 24, "fobi")) / 1e6 - 92.1) < 0.05
    assert tiny.scene_embedding_size == 192 and small.timestamp_embedding_size == 384
    # Mamba's init gives A == A_b, so random-init models batch both directions into one kernel call
    assert torch.equal(tiny.layers[0].mixer.A_log, tiny.layers[0].mixer.A_b_log)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_close_to_float32(variant):
    model32, clips, expected = _load(variant)
    model16, _, _ = _load(variant, dtype="bfloat16")
    assert model16.layers[0].mixer.in_proj.weight.dtype == torch.bfloat16
    assert model16.layers[0].mixer.A_log.dtype == torch.float32  # SSM parameters stay fp32
    scene = aum.get_scene_embeddings(clips[1], model16)
    assert scene.dtype == torch.float32
    rel = (scene[0] - expected["features"][1]).norm() / expected["features"][1].norm()
    assert rel < 0.05, rel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_matches_fixture(variant):
    model, clips, expected = _load(variant)
    model = model.to("cuda")
    scene = aum.get_scene_embeddings(clips[0], model)
    assert (scene[0].cpu() - expected["features"][0]).abs().max() < ATOL


def _hearscan_validate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(HEARSCAN), "validate", "hear_modules.aum", "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=1200, env=dict(os.environ))


def test_hearscan_validate_with_checkpoint():
    run = _hearscan_validate("--model", str(FIXTURES / "bibi" / "checkpoint.pth"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Looks good!" in run.stdout + run.stderr and "passed hear-validator" in run.stdout
