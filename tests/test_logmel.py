"""hear_modules.logmel: the weights-free baseline's embeddings mean what its docstring says (hear-validator:
tests/test_modules.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hear_modules.logmel as logmel
from hearscan_core.errors import AudioInputError, UserFacingError

SR = logmel.SAMPLE_RATE


def tone(freq: float, seconds: float, start: float = 0.0, stop: float | None = None) -> torch.Tensor:
    n = int(seconds * SR)
    t = np.arange(n) / SR
    wave = 0.02 * np.random.default_rng(0).standard_normal(n)
    a, b = int(start * SR), int((seconds if stop is None else stop) * SR)
    wave[a:b] += 0.5 * np.sin(2 * np.pi * freq * t[a:b])
    return torch.from_numpy(wave.astype(np.float32))


@pytest.fixture(scope="module")
def model():
    return logmel.load_model(device="cpu")


def test_sizes_and_types(model):
    assert model.sample_rate == 16000
    assert model.scene_embedding_size == 128 and model.timestamp_embedding_size == 64
    audio = torch.stack([tone(440, 1.0), tone(880, 1.0)])
    scene = logmel.get_scene_embeddings(audio, model)
    emb, ts = logmel.get_timestamp_embeddings(audio, model)
    assert scene.shape == (2, 128) and scene.dtype == torch.float32
    assert emb.shape == (2, 51, 64) and emb.dtype == torch.float32 and ts.shape == (2, 51)


def test_scene_is_mean_and_std_of_log_mel_frames(model):
    audio = torch.stack([tone(440, 1.3), tone(3000, 1.3)])
    frames = torch.log(model.mel(audio) + 1e-6).transpose(1, 2)  # (B, F, 64)
    scene = logmel.get_scene_embeddings(audio, model)
    torch.testing.assert_close(scene[:, :64], frames.mean(1))
    torch.testing.assert_close(scene[:, 64:], frames.std(1, unbiased=False))
    # the loudest band follows the tone's pitch
    assert scene[0, :64].argmax() < scene[1, :64].argmax()


def test_timestamps_every_20ms_within_the_clip(model):
    for seconds in (0.5, 1.07, 4.0):
        emb, ts = logmel.get_timestamp_embeddings(tone(500, seconds)[None], model)
        n = int(seconds * SR)
        assert ts.shape[1] == n // 320 + 1
        np.testing.assert_allclose(np.diff(ts[0].numpy()), 20.0, atol=1e-3)
        assert ts[0, 0] == 0 and ts[0, -1] <= seconds * 1000


def test_timestamp_embedding_is_the_50ms_mean_around_its_stamp(model):
    audio = tone(700, 1.0)[None]
    frames = torch.log(model.mel(audio) + 1e-6).transpose(1, 2)[0]  # frame i centred at 10 i ms
    emb, ts = logmel.get_timestamp_embeddings(audio, model)
    for j in (3, 10, 40):
        i = int(round(ts[0, j].item() / 10))
        torch.testing.assert_close(emb[0, j], frames[i - 2 : i + 3].mean(0))


def test_events_show_up_at_their_timestamps(model):
    audio = tone(1000, 2.0, start=0.8, stop=1.3)[None]
    emb, ts = logmel.get_timestamp_embeddings(audio, model)
    energy = emb[0].max(dim=1).values
    loud = ts[0][energy > energy.min() + 0.5 * (energy.max() - energy.min())]
    assert 760 <= loud.min() <= 840 and 1260 <= loud.max() <= 1340


def test_batching_does_not_change_embeddings(model):
    a, b = tone(300, 1.0), tone(2000, 1.0)
    both, _ = logmel.get_timestamp_embeddings(torch.stack([a, b]), model)
    alone, _ = logmel.get_timestamp_embeddings(b[None], model)
    torch.testing.assert_close(both[1], alone[0])
    silence = logmel.get_scene_embeddings(torch.zeros(1, SR), model)
    assert torch.isfinite(silence).all()


def test_bad_input_and_options_are_clear_errors(model):
    with pytest.raises(UserFacingError, match="no weights"):
        logmel.load_model("weights.pt")
    with pytest.raises(UserFacingError, match="unknown options"):
        logmel.load_model(size="tiny")
    with pytest.raises(UserFacingError, match="device must be one of"):
        logmel.load_model(device="tpu")
    with pytest.raises(AudioInputError, match="stereo"):
        logmel.get_scene_embeddings(torch.zeros(1, 2, SR), model)
    with pytest.raises(AudioInputError, match="NaN"):
        logmel.get_timestamp_embeddings(torch.full((1, SR), float("nan")), model)
