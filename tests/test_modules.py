"""Every registered module (hear_modules.registry) through the same checks: hear-validator, bad input, a
batch equals its clips one at a time, determinism, and the kernel dispatch of its scans (CPU, and a
non-CPU device through a stand-in kernel).  A new family gets all of this by its registry line."""

from __future__ import annotations

import importlib
import os
import subprocess
import warnings

import pytest
import torch

import csrc
from _model_helpers import HEARSCAN, hearscan_validate_available, one_thread  # noqa: F401 (autouse)
from csrc import dispatch
from hear_modules import registry
from hearscan_core.errors import AudioInputError

FAMILIES = registry.FAMILIES
IDS = [f.name for f in FAMILIES]


def load(family, **options):
    module = importlib.import_module(family.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning: expected here
        return module, module.load_model(device="cpu", **family.smallest, **options)


def clips(n=2, seconds=1.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, int(seconds * 16000), generator=g) * 0.1


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_bad_input_is_refused_by_name(family):
    module, model = load(family)
    for audio, match in ((torch.zeros(1, 399), "shorter than one analysis frame"),
                         (torch.full((1, 16000), float("nan")), "NaN"),
                         (torch.zeros(1, 2, 16000), "stereo"),
                         (torch.zeros(1, 16000, dtype=torch.int16), "floating point")):
        for call in (module.get_scene_embeddings, module.get_timestamp_embeddings):
            with pytest.raises(AudioInputError, match=match) as err:
                call(audio, model)
            assert family.name in str(err.value)
    emb, ts = module.get_timestamp_embeddings(torch.zeros(2, 400), model)  # one 25 ms frame of silence
    assert emb.shape[:2] == ts.shape and ts.shape[1] >= 1 and torch.isfinite(emb).all()


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_a_batch_equals_its_clips_one_at_a_time(family):
    module, model = load(family)
    audio = clips()
    scene = module.get_scene_embeddings(audio, model)
    emb, ts = module.get_timestamp_embeddings(audio, model)
    assert scene.shape == (2, model.scene_embedding_size) and scene.dtype == torch.float32
    assert emb.shape[2] == model.timestamp_embedding_size and emb.shape[:2] == ts.shape
    for i in range(2):
        one = audio[i:i + 1]
        torch.testing.assert_close(module.get_scene_embeddings(one, model), scene[i:i + 1], atol=1e-4, rtol=1e-4)
        e, t = module.get_timestamp_embeddings(one, model)
        torch.testing.assert_close(e, emb[i:i + 1], atol=1e-4, rtol=1e-4)
        assert torch.equal(t, ts[i:i + 1])


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_deterministic(family):
    """The seeded random default loads the same weights every time, and a call gives the same bytes twice."""
    module, first = load(family)
    _, second = load(family)
    for (k, a), (k2, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    audio = clips(1, seed=3)
    assert torch.equal(module.get_scene_embeddings(audio, first), module.get_scene_embeddings(audio, second))


SCANNING = [f for f in FAMILIES if f.ops]


@pytest.mark.parametrize("family", SCANNING, ids=[f.name for f in SCANNING])
def test_cpu_dispatch_reaches_the_compiled_kernel_and_reference_never_does(family, monkeypatch):
    monkeypatch.delenv("HEARSCAN_SCAN_BACKEND", raising=False)
    for op in family.ops:
        if dispatch.resolve_backend("auto", op) != "compiled":
            pytest.skip(f"the compiled {op} kernel does not build here")
    module, model = load(family)
    before = csrc.kernel_calls()
    module.get_scene_embeddings(clips(1), model)
    after = csrc.kernel_calls()
    for op in family.ops:
        assert after.get((op, "cpu"), 0) > before.get((op, "cpu"), 0), op
    module, model = load(family, scan_backend="reference")
    before = csrc.kernel_calls()
    module.get_scene_embeddings(clips(1), model)
    assert csrc.kernel_calls() == before


# Each scanning family's backbone on prepared inputs of a device (its frontend runs on the CPU in the
# official code too).  A family with scans must be listed here: the test below says so when it is not.
BACKBONE = {
    "arwkv": lambda model, device: model.tokens(torch.zeros(1, model.target_frames, 128, device=device)),
    "conrwkv": lambda model, device: model.tokens(torch.zeros(1, 40, model.cfg.num_mels, device=device)),
    "aum": lambda model, device: model.forward_tokens(torch.zeros(1, 1024, 128, device=device)),
    "axlstm": lambda model, device: model.encoder(torch.zeros(1, 1, 200, 80, device=device)),
}


@pytest.mark.parametrize("family", SCANNING, ids=[f.name for f in SCANNING])
def test_a_non_cpu_device_reaches_its_own_kernel(family, monkeypatch):
    """The kernel is chosen in csrc alone, by the tensors' device: with the model on another device (here
    `meta`, which every torch has, standing in for CUDA) its forward reaches the kernel registered for that
    device, under "auto" and "compiled", and never the CPU's.  A model that chose the backend itself (as
    A-RWKV and Con-RWKV once did on any GPU) would run the reference instead and fail here."""
    assert family.name in BACKBONE, f"add {family.name}'s backbone call to BACKBONE"
    monkeypatch.delenv("HEARSCAN_SCAN_BACKEND", raising=False)
    calls = []

    def stand_in(op):
        def run(*args, **kwargs):  # outputs of the right shapes on the meta device
            calls.append(op)
            first = args[0]
            if op == "mlstm":
                q, k, v = args[:3]
                B, H, T, DH = q.shape
                return (torch.empty(B, H, T, v.shape[3], device="meta", dtype=q.dtype),
                        torch.empty(B, H, v.shape[3], DH, device="meta"), torch.empty(B, H, DH, device="meta"),
                        torch.empty(B, H, device="meta"))
            if op == "selective_scan":
                B, D, _ = first.shape
                return torch.empty_like(first), torch.empty(B, D, args[2].shape[1], device="meta")
            B, _, H, N = first.shape
            return torch.empty_like(first), torch.empty(B, H, N, N, device="meta")
        return run

    for backend in ("auto", "compiled"):
        module, model = load(family, scan_backend=backend)
        model = model.to("meta")
        calls.clear()
        before = csrc.kernel_calls()
        with _stand_ins([dispatch.Kernel(op, "meta", stand_in(op), reverse=True) for op in family.ops]):
            with torch.no_grad():
                BACKBONE[family.name](model, "meta")
        assert set(calls) == set(family.ops), (backend, calls)
        after = csrc.kernel_calls()
        for op in family.ops:
            assert after.get((op, "meta"), 0) > before.get((op, "meta"), 0)
            assert after.get((op, "cpu"), 0) == before.get((op, "cpu"), 0)


class _stand_ins:
    def __init__(self, kernels):
        self.contexts = [dispatch.registered(k) for k in kernels]

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family", SCANNING, ids=[f.name for f in SCANNING])
def test_cuda_model_runs_its_cuda_kernels(family, monkeypatch):
    monkeypatch.delenv("HEARSCAN_SCAN_BACKEND", raising=False)
    module = importlib.import_module(family.module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = module.load_model(device="cuda", **family.smallest)
    before = csrc.kernel_calls()
    module.get_scene_embeddings(clips(1).cuda(), model)
    after = csrc.kernel_calls()
    for op in family.ops:
        assert after.get((op, "cuda"), 0) > before.get((op, "cuda"), 0), op


@pytest.mark.skipif(not hearscan_validate_available(), reason="`hearscan validate` not available")
@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_hear_validator_passes_with_random_weights(family):
    """hear-validator on every module's default (random weights, or none for logmel), through the compat layer."""
    env = {k: v for k, v in os.environ.items() if k != "PT_AXLSTM_MODEL_DIR"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([str(HEARSCAN), "validate", family.module, "--device", "cpu"], capture_output=True,
                         text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "passed hear-validator" in out.stdout
