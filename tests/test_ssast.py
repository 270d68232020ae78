"""SSAST HEAR module: parity with the official wrapper's outputs, and the wrapper rules shared with AxLSTM
(chunk padding, output arrangement, batching, checkpoint folders, options)."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from _model_helpers import (  # expected, clips: fixtures that read this module's FIX
    assert_hear_validator_passes,
    assert_logmel_matches_official,
    assert_scene_embeddings_match_official,
    assert_timestamp_outputs_match_official,
    clips,
    expected,
    needs_hearscan_validate,
    rel_fro,
)
from hear_modules import _ast_wrapper, ssast
from hearscan_core.errors import CheckpointError, UserFacingError

FIX = Path(__file__).parent / "fixtures" / "ssast"
CKPT_DIR = FIX / "model_dir"


@pytest.fixture(scope="module")
def model():
    return ssast.load_model(str(CKPT_DIR), device="cpu")


@pytest.fixture(scope="module")
def outputs(model, clips):
    return [ssast.get_timestamp_embeddings(clip, model) for clip in clips]


def test_logmel_matches_official(model, clips, expected):
    assert_logmel_matches_official(model, clips, expected)


def test_timestamp_embeddings_and_timestamps_match_official(outputs, expected):
    assert_timestamp_outputs_match_official(outputs, expected)


def test_scene_embeddings_match_official(model, clips, outputs, expected):
    assert_scene_embeddings_match_official(ssast, model, clips, outputs, expected)


def test_parity_from_reference_logmel(model, expected):
    emb = model.encode_logmel(expected["logmel_1"][:, 0])
    assert (emb - expected["timestamp_embeddings_1"]).abs().max().item() < 1e-4


def test_sincos_table_equals_checkpoint_positions(model):
    # the formula used for longer chunks reproduces the official table on the trained 50x5 grid
    # (to float32 sin/pow rounding: numpy and torch differ by a few 1e-6)
    torch.testing.assert_close(_ast_wrapper.sincos_positions(192, 50), model.encoder.pos_embed.detach(), atol=1e-5, rtol=0)


def test_full_extra_chunk_when_frames_are_a_multiple_of_200(model):
    calls = []
    hook = model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        audio = torch.randn(1, 399 * 160) * 0.1  # 1 + n // 160 = 400 frames -> pad 200 -> 3 chunks
        emb, ts = ssast.get_timestamp_embeddings(audio, model)
    finally:
        hook.remove()
    assert calls == [3]
    assert emb.shape == (1, 150 - 50, 960)  # 3 chunks x 50 frames, minus the 50 frames of padding
    assert ts.shape == (1, 100)


def test_time_arrangement_is_a_permutation_of_the_official_one(model, clips):
    timed = ssast.load_model(str(CKPT_DIR), device="cpu", arrangement="time")
    audio = clips[1][:, : 199 * 160]  # 200 frames -> 1 real chunk + 1 padding chunk, 50 frames kept
    official, _ = ssast.get_timestamp_embeddings(audio, model)
    in_time, ts = ssast.get_timestamp_embeddings(audio, timed)
    D = 192
    off = official[0].reshape(50, 5, D)  # [t', f'] = token f' * 50 + t'
    tim = in_time[0].reshape(50, 5, D)  # [t, f] = token t * 5 + f
    tokens = tim.reshape(250, D)
    for t_ in (0, 7, 49):
        for f_ in range(5):
            torch.testing.assert_close(off[t_, f_], tokens[f_ * 50 + t_])
    assert torch.allclose(ts[0, :3], torch.tensor([15.0, 55.0, 95.0]))


def test_batch_equals_clips_one_by_one(model, clips):
    a = clips[0][:, :48000]
    b = clips[0][:, 48000:96000]
    both, _ = ssast.get_timestamp_embeddings(torch.cat([a, b]), model)
    one, _ = ssast.get_timestamp_embeddings(b, model)
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


def test_longer_chunks_run_and_whole_clip_mode(clips):
    whole = ssast.load_model(str(CKPT_DIR), device="cpu", chunk_frames="whole")
    emb, ts = ssast.get_timestamp_embeddings(clips[1], whole)
    assert emb.shape == (1, 93, 960)  # 371 frames padded to 372: one chunk of 93 patch times
    assert ts.shape == (1, 93) and torch.isfinite(emb).all()


def test_weights_folder_picks_highest_numbered_checkpoint(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copy(CKPT_DIR / "checkpoints" / "checkpoint-99.pth", ckpts / "checkpoint-10.pth")
    (ckpts / "checkpoint-9.pth").write_bytes(b"not a checkpoint")  # sorts after -10 as text, not as a number
    model = ssast.load_model(str(tmp_path / "run"), device="cpu")
    assert model.checkpoint_path.endswith("checkpoint-10.pth")
    with pytest.raises(CheckpointError, match="checkpoint-N.pth"):
        ssast.load_model(str(tmp_path), device="cpu")


def test_env_model_dir_finds_official_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ssast_tiny_200_16x4_4x256_fp16_r1" / "checkpoints"
    folder.mkdir(parents=True)
    os.symlink(CKPT_DIR / "checkpoints" / "checkpoint-99.pth", folder / "checkpoint-99.pth")
    monkeypatch.setenv("PT_AXLSTM_MODEL_DIR", str(tmp_path))
    model = ssast.load_model("", size="tiny", device="cpu")
    assert "ssast_tiny_200_16x4_4x256_fp16_r1" in model.checkpoint_path
    with pytest.raises(CheckpointError, match="ssast_small_200_16x4_4x256_fp16_r1"):
        ssast.load_model("", size="small", device="cpu")


def test_strict_load_lists_problems(tmp_path):
    ckpt = torch.load(CKPT_DIR / "checkpoints" / "checkpoint-99.pth", weights_only=True)
    del ckpt["model"]["blocks.1.norm2.weight"]
    ckpt["model"]["blocks.1.extra"] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\): blocks.1.norm2.weight.*unexpected keys \(1\): blocks.1.extra"):
        ssast.load_model(str(tmp_path / "bad.pth"), device="cpu")


def test_axlstm_checkpoint_is_refused_with_a_pointer():
    axlstm_dir = Path(__file__).parent / "fixtures" / "axlstm" / "model_dir"
    with pytest.raises(CheckpointError, match="hear_modules.axlstm"):
        ssast.load_model(str(axlstm_dir), device="cpu")


def test_options_are_checked():
    with pytest.raises(UserFacingError, match="unknown option"):
        ssast.load_model(str(CKPT_DIR), colour="red")
    with pytest.raises(UserFacingError, match="arrangement"):
        ssast.load_model(str(CKPT_DIR), arrangement="sideways")
    with pytest.raises(UserFacingError, match="chunk_frames"):
        ssast.load_model(str(CKPT_DIR), chunk_frames=201)
    with pytest.raises(UserFacingError, match="size='base'"):
        ssast.load_model(str(CKPT_DIR), size="base", device="cpu")


def test_random_default_warns_loudly(capsys, monkeypatch):
    monkeypatch.delenv("PT_AXLSTM_MODEL_DIR", raising=False)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = ssast.load_model(device="cpu")
    assert "RANDOM weights" in capsys.readouterr().err
    assert model.scene_embedding_size == 960 and len(model.encoder.blocks) == 12
    emb = ssast.get_scene_embeddings(torch.zeros(2, 8000), model)  # silence is valid input
    assert emb.shape == (2, 960) and torch.isfinite(emb).all()


@needs_hearscan_validate
def test_hear_validator_passes_with_weights():
    """(Without weights: tests/test_modules.py, for every module.)"""
    assert_hear_validator_passes("hear_modules.ssast", CKPT_DIR)
