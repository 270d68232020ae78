"""AxLSTM HEAR module: parity with the official wrapper (fp32, reference and compiled mLSTM), the mLSTM
layer against the official quadratic form, and the official checkpoint format (argparse.Namespace args
holding an ml_collections ConfigDict) loaded without unpickling anything else."""

import argparse
import os
import shutil
from pathlib import Path

import pytest
import torch

import csrc
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
from hear_modules import axlstm
from hearscan_core.errors import CheckpointError, UserFacingError

FIX = Path(__file__).parent / "fixtures" / "axlstm"
CKPT_DIR = FIX / "model_dir"
CKPT = CKPT_DIR / "checkpoints" / "checkpoint-99.pth"


def compiled_mlstm_available() -> bool:
    q = torch.zeros(1, 1, 2, 4)
    try:
        csrc.mlstm(q, q, q, q[..., 0], q[..., 0], backend="compiled")
        return True
    except Exception:
        return False


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The reference mLSTM scan is a loop of small ops; on a loaded 2-core machine OpenMP's two threads
    wait on each other and it runs ~15x slower than on one thread.  Restored after this module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return axlstm.load_model(str(CKPT_DIR), device="cpu", scan_backend="reference")


@pytest.fixture(scope="module")
def outputs(model, clips):
    return [axlstm.get_timestamp_embeddings(clip, model) for clip in clips]


def test_logmel_matches_official(model, clips, expected):
    assert_logmel_matches_official(model, clips, expected)


def test_timestamp_embeddings_and_timestamps_match_official(outputs, expected):
    assert_timestamp_outputs_match_official(outputs, expected)


def test_scene_embeddings_match_official(model, clips, outputs, expected):
    assert_scene_embeddings_match_official(axlstm, model, clips, outputs, expected)


@pytest.mark.skipif(not compiled_mlstm_available(), reason="compiled csrc.mlstm kernel not available")
def test_compiled_scan_matches_official(expected):
    fast = axlstm.load_model(str(CKPT_DIR), device="cpu", scan_backend="compiled")
    emb = fast.encode_logmel(expected["logmel_0"][:, 0])
    ref = expected["timestamp_embeddings_0"]
    assert (emb - ref).abs().max().item() < 1e-3 and rel_fro(emb, ref) < 1e-4
    assert (emb.mean(dim=1)[0] - expected["scene"][0]).abs().max().item() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_kernel_matches_official(expected):
    """On a GPU the model runs csrc/mlstm_cuda.cu, with the CPU kernel's tolerances against the official outputs."""
    gpu = axlstm.load_model(str(CKPT_DIR), device="cuda", scan_backend="compiled")
    emb = gpu.encode_logmel(expected["logmel_0"][:, 0].cuda()).cpu()
    ref = expected["timestamp_embeddings_0"]
    assert (emb - ref).abs().max().item() < 1e-3 and rel_fro(emb, ref) < 1e-4
    assert (emb.mean(dim=1)[0] - expected["scene"][0]).abs().max().item() < 1e-4


def test_mlstm_layer_equals_official_parallel_form(model):
    """The cell on csrc's linear-time scan equals the official quadratic `parallel_stabilized_simple`."""
    cell = model.encoder.blocks[1].layer.mlstm_cell
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 120, 384, generator=g) for _ in range(3))
    with torch.no_grad():
        got = cell(q, k, v)
        gates = torch.cat([q, k, v], dim=-1)
        heads = lambda t: t.unflatten(-1, (4, -1)).transpose(1, 2)
        h = csrc.mlstm_parallel_reference(heads(q), heads(k), heads(v), cell.igate(gates).transpose(1, 2),
                                          cell.fgate(gates).transpose(1, 2))
        want = cell.outnorm(h)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_odd_blocks_reverse_the_sequence_including_cls(model):
    layer = model.encoder.blocks[1].layer
    x = torch.randn(1, 9, 192)
    with torch.no_grad():
        flipped_in = layer(x.flip(1)).flip(1)
        layer.reverse = False
        try:
            forward = layer(x)
        finally:
            layer.reverse = True
    torch.testing.assert_close(flipped_in, forward, atol=1e-5, rtol=1e-5)


def test_official_format_checkpoint_with_namespace_and_configdict_loads(tmp_path):
    """Real train.py checkpoints: model, optimizer, epoch, scaler, args = Namespace(config=ConfigDict)."""
    folder = tmp_path / "axlstm_run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(FIX / "official_format_checkpoint.pth", folder / "checkpoint-99.pth")
    model = axlstm.load_model(str(tmp_path / "axlstm_run"), device="cpu")
    assert model.scene_embedding_size == 5 * 16 and len(model.encoder.blocks) == 2
    emb, ts = axlstm.get_timestamp_embeddings(torch.randn(1, 4000) * 0.1, model)
    assert emb.shape == (1, 7, 80) and torch.isfinite(emb).all()


def test_checkpoint_with_argparse_namespace_args_loads(tmp_path):
    ckpt = torch.load(CKPT, weights_only=True)
    ckpt["args"] = argparse.Namespace(lr=1e-4, output_dir="/runs/x", precision="float16", batch=[1, 2])
    ckpt["scaler"] = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 3}
    ckpt["optimizer"] = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0, 1]}]}
    torch.save(ckpt, tmp_path / "checkpoint-5.pth")
    model = axlstm.load_model(str(tmp_path / "checkpoint-5.pth"), device="cpu", scan_backend="reference")
    assert model.checkpoint_path.endswith("checkpoint-5.pth")


class NotAllowed:
    """Any class other than argparse.Namespace (and the ConfigDict stand-in) must not be unpickled."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_with_any_other_class_is_refused(tmp_path):
    ckpt = torch.load(CKPT, weights_only=True)
    ckpt["args"] = NotAllowed()
    torch.save(ckpt, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="will not unpickle"):
        axlstm.load_model(str(tmp_path / "evil.pth"), device="cpu")
    ckpt["args"] = argparse.Namespace(payload=NotAllowed())  # hidden inside the allowed Namespace
    torch.save(ckpt, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="will not unpickle"):
        axlstm.load_model(str(tmp_path / "evil2.pth"), device="cpu")


def test_env_model_dir_finds_official_folder(tmp_path, monkeypatch):
    folder = tmp_path / "axlstm_tiny_200_16x4_4x256_fp16_r1" / "checkpoints"
    folder.mkdir(parents=True)
    os.symlink(CKPT, folder / "checkpoint-99.pth")
    monkeypatch.setenv("PT_AXLSTM_MODEL_DIR", str(tmp_path))
    model = axlstm.load_model("", size="tiny", device="cpu")
    assert "axlstm_tiny_200_16x4_4x256_fp16_r1" in model.checkpoint_path
    # a folder name alone is looked up under $PT_AXLSTM_MODEL_DIR as well
    model = axlstm.load_model("axlstm_tiny_200_16x4_4x256_fp16_r1", device="cpu")
    assert model.checkpoint_path.endswith("checkpoint-99.pth")
    with pytest.raises(CheckpointError, match="axlstm_base_200_16x4_8x128_fp16_r1"):
        axlstm.load_model("", size="base", device="cpu")


def test_strict_load_and_family_errors(tmp_path):
    ckpt = torch.load(CKPT, weights_only=True)
    ckpt["model"]["blocks.0.layer.q_proj.weight"] = torch.zeros(96, 2, 8)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): blocks.0.layer.q_proj.weight"):
        axlstm.load_model(str(tmp_path / "bad.pth"), device="cpu")
    ssast_dir = Path(__file__).parent / "fixtures" / "ssast" / "model_dir"
    with pytest.raises(CheckpointError, match="hear_modules.ssast"):
        axlstm.load_model(str(ssast_dir), device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        axlstm.load_model(str(tmp_path / "nowhere"), device="cpu")


def test_options_are_checked():
    with pytest.raises(UserFacingError, match="scan_backend"):
        axlstm.load_model(str(CKPT_DIR), scan_backend="fast")
    with pytest.raises(UserFacingError, match="dtype"):
        axlstm.load_model(str(CKPT_DIR), dtype="float16")
    with pytest.raises(UserFacingError, match="unknown option"):
        axlstm.load_model(str(CKPT_DIR), depth=3)


def test_random_default_warns_loudly(capsys, monkeypatch):
    monkeypatch.delenv("PT_AXLSTM_MODEL_DIR", raising=False)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = axlstm.load_model(size="small", device="cpu", scan_backend="reference")
    assert "RANDOM weights" in capsys.readouterr().err
    assert model.scene_embedding_size == 1920 and len(model.encoder.blocks) == 12


def test_bfloat16_runs_close_to_float32(model, expected):
    bf = axlstm.load_model(str(CKPT_DIR), device="cpu", dtype="bfloat16", scan_backend="reference")
    logmel = expected["logmel_1"][:, 0, :120]  # one chunk keeps this cheap
    emb = bf.encode_logmel(logmel)
    ref = model.encode_logmel(logmel)
    assert emb.dtype == torch.float32 and rel_fro(emb, ref) < 0.05


@needs_hearscan_validate
def test_hear_validator_passes_with_weights():
    """(Without weights: tests/test_modules.py, for every module.)"""
    assert_hear_validator_passes("hear_modules.axlstm", CKPT_DIR)
