"""Scaffolding shared by the backbone tests that compare with fixtures made by the official code
(tests/test_{axlstm,ssast,equiav}.py).

A test module sets `FIX` (its fixture folder: expected.pt, audio.npy) and imports the `expected` and
`clips` fixtures from here; they read `FIX` from the requesting module.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HEARSCAN = Path(sys.executable).parent / "hearscan"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The shared 2-core test machine: oversubscribed intra-op threads make the reference loops 10x slower.
    Imported by a test module, it runs that module on one thread (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def expected(request):
    """The official outputs recorded in `FIX/expected.pt`."""
    return torch.load(request.module.FIX / "expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def clips(request, expected):
    """The fixture's audio clips, each cut to its recorded length, as (1, samples) tensors."""
    audio = np.load(request.module.FIX / "audio.npy")
    return [torch.from_numpy(audio[i : i + 1, :n]) for i, n in enumerate(expected["lengths"].tolist())]


def assert_fbank_close(got, want):
    """A log-mel fbank against the official one.  float32 FFT and mel sums round differently with the CPU's
    vector width: on AVX-512 machines the official fbanks are matched within 1e-5, on AVX2 ones single bins
    near the log floor (near-silent frames) differ by up to 5e-4 (there the fixture and ours are both
    7-8e-4 from a float64 computation).  So: every value within 1e-3, and on average within 1e-5."""
    diff = (got - want).abs()
    assert diff.max().item() <= 1e-3, diff.max().item()
    assert diff.mean().item() <= 1e-5, diff.mean().item()


def rel_fro(a, b):
    """Relative Frobenius error |a - b| / |b|."""
    return ((a - b).norm() / b.norm()).item()


def assert_logmel_matches_official(model, clips, expected):
    """The module's log-mel frontend vs the official one, within 1e-3."""
    for i, clip in enumerate(clips):
        torch.testing.assert_close(model.frontend(clip)[:, None], expected[f"logmel_{i}"], atol=1e-3, rtol=0)


def assert_scene_embeddings_match_official(hear_module, model, clips, outputs, expected):
    """Scene embeddings (the mean of the timestamp embeddings, and from audio) vs the official ones."""
    assert (outputs[0][0].mean(dim=1)[0] - expected["scene"][0]).abs().max().item() < 1e-4
    scene1 = hear_module.get_scene_embeddings(clips[1], model)
    assert (scene1[0] - expected["scene"][1]).abs().max().item() < 1e-4


def assert_timestamp_outputs_match_official(outputs, expected):
    """get_timestamp_embeddings outputs vs the official ones: shape, max error 1e-3, relative 1e-4."""
    for i, (emb, ts) in enumerate(outputs):
        ref = expected[f"timestamp_embeddings_{i}"]
        assert emb.shape == ref.shape
        assert (emb - ref).abs().max().item() < 1e-3
        assert rel_fro(emb, ref) < 1e-4
        assert (ts - expected[f"timestamps_{i}"]).abs().max().item() < 1e-3


@functools.cache
def hearscan_validate_available() -> bool:
    """Whether the `hearscan` command is installed beside this Python (it is not where the repository is
    only on the path, e.g. on a GPU machine that runs the CUDA tests)."""
    if not HEARSCAN.exists():
        return False
    out = subprocess.run([str(HEARSCAN), "validate", "--help"], capture_output=True, text=True)
    return out.returncode == 0


needs_hearscan_validate = pytest.mark.skipif(
    not hearscan_validate_available(), reason="`hearscan validate` not available"
)


def assert_hear_validator_passes(module: str, model_path=None):
    """`hearscan validate <module>` (random weights when `model_path` is None) passes hear-validator."""
    cmd = [str(HEARSCAN), "validate", module, "--device", "cpu"]
    if model_path is not None:
        cmd += ["--model", str(model_path)]
    env = {k: v for k, v in os.environ.items() if k != "PT_AXLSTM_MODEL_DIR"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "passed hear-validator" in out.stdout
