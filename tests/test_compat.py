"""The compat layer's fixes, one by one: each test shows the upstream failure still exists without the fix
(where that can be shown without a GPU) and that the fixed path works.  Runs of the whole tools are in
tests/test_compat_runs.py and tests/test_e2e_heareval.py."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hearscan.compat import fixes
from hearscan_core.errors import UserFacingError

PY = sys.executable


def run_py(code: str, cwd=None, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def load_standin():
    """The stand-in module, loaded under another name so this test process never gets a `tensorflow`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "hearscan_tf_standin_under_test", fixes.STANDIN_DIR / "tensorflow" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ tf
@pytest.mark.skipif(fixes.real_tensorflow_importable(), reason="a real tensorflow is installed here")
def test_tools_need_tensorflow_without_the_fix_and_import_with_it(tmp_path):
    bare = run_py("import hearvalidator.validate", cwd=tmp_path)
    assert bare.returncode != 0 and "No module named 'tensorflow'" in bare.stderr
    fixed = subprocess.run([PY, "-m", "hearscan.compat.launch", "validator", "--", "--help"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert fixed.returncode == 0, fixed.stderr
    assert "hear-validator" in fixed.stdout and "stand-in" in fixed.stderr


def test_standin_reports_the_gpu_torch_sees_and_refuses_tf_models():
    tf = load_standin()
    assert tf.HEARSCAN_STANDIN
    assert tf.test.is_gpu_available(cuda_only=False, min_cuda_compute_capability=None) == torch.cuda.is_available()
    assert not isinstance(torch.nn.Linear(2, 2), tf.Module)  # torch models take the torch path
    with pytest.raises(RuntimeError, match="tensorflow-cpu"):
        tf.convert_to_tensor([1.0])
    with pytest.raises(RuntimeError, match="tensorflow-cpu"):
        tf.random.uniform((2, 3))


def test_standin_never_shadows_a_real_tensorflow(tmp_path):
    # A directory holding another `tensorflow` package plays the real installation.
    real = tmp_path / "site" / "tensorflow"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = run_py(
        """
        from hearscan.compat import fixes
        print(fixes.install_tf_standin())
        import tensorflow
        print("REAL" if getattr(tensorflow, "REAL", False) else "STANDIN")
        """,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "real installation found" in out.stdout and out.stdout.strip().endswith("REAL")


def test_standin_is_only_added_to_the_launched_process(tmp_path):
    if fixes.real_tensorflow_importable():
        pytest.skip("a real tensorflow is installed here")
    out = run_py(
        """
        from hearscan.compat import fixes
        print(fixes.install_tf_standin())
        import tensorflow, sys
        print(tensorflow.HEARSCAN_STANDIN, sys.path[-1])
        """
    )
    assert out.returncode == 0, out.stderr
    assert "stand-in" in out.stdout and str(fixes.STANDIN_DIR) in out.stdout
    assert str(fixes.STANDIN_DIR) not in sys.path  # the calling (test) process is untouched


# --------------------------------------------------------------------------------- weights_only
def _heareval_like_checkpoint(path: Path) -> None:
    """What heareval's Lightning checkpoints carry besides tensors: its grid point as hyper-parameters."""
    from heareval.predictions.task_predictions import FASTER_PARAM_GRID
    from sklearn.model_selection import ParameterGrid

    conf = list(ParameterGrid(FASTER_PARAM_GRID))[0]
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}, "hyper_parameters": conf}, path)


def test_weights_only_refuses_heareval_checkpoints_and_allowlist_loads_them(tmp_path):
    ckpt = tmp_path / "epoch=3.ckpt"
    _heareval_like_checkpoint(ckpt)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(ckpt)  # torch >= 2.6 default: weights_only=True
    with torch.serialization.safe_globals(fixes.lightning_checkpoint_globals()):
        loaded = torch.load(ckpt)
    assert loaded["epoch"] == 3
    assert loaded["hyper_parameters"]["hidden_norm"] is torch.nn.BatchNorm1d


def test_allowlist_still_refuses_other_globals(tmp_path):
    class Sneaky:
        def __reduce__(self):
            return (os.getcwd, ())

    ckpt = tmp_path / "bad.ckpt"
    torch.save({"x": Sneaky()}, ckpt)
    with torch.serialization.safe_globals(fixes.lightning_checkpoint_globals()):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(ckpt)
    names = {f"{g.__module__}.{g.__qualname__}" for g in fixes.lightning_checkpoint_globals()}
    assert names <= {
        "torch.nn.modules.batchnorm.BatchNorm1d", "torch.nn.modules.linear.Identity", "torch.optim.adam.Adam",
        "torch.nn.init.xavier_uniform_", "torch.nn.init.xavier_normal_",
        "pytorch_lightning.utilities.parsing.AttributeDict",
    }


def test_no_weights_only_escape_hatch_is_used():
    # The fix is an allowlist; the blanket switch must not appear in the compat code.
    source = "".join(p.read_text() for p in Path(fixes.__file__).parent.glob("*.py"))
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in source and "weights_only=False" not in source


# --------------------------------------------------------------------------------------- pynvml
FAKE_CUDA_AND_PYNVML = """
    import sys, types, torch
    torch.cuda.is_available = lambda: True   # a CUDA machine, as far as heareval can tell
    nv = types.ModuleType("pynvml")
    class NVMLError(Exception): pass
    nv.NVMLError = NVMLError
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2 * 1024**3)
    nv.nvmlDeviceGetName = lambda h: "NVIDIA H100"   # recent pynvml returns str, old returned bytes
    sys.modules["pynvml"] = nv
"""


def test_gpu_device_name_decode_fails_upstream_and_is_fixed():
    out = run_py(FAKE_CUDA_AND_PYNVML + """
    import heareval.gpu_max_mem as g
    try:
        g.device_name()
    except AttributeError as err:
        print("UPSTREAM", err)
    from hearscan.compat import fixes
    print(fixes.patch_gpu_max_mem())
    print("NAME", g.device_name(), g.measure())
    nv = sys.modules["pynvml"]
    nv.nvmlDeviceGetName = lambda h: b"Tesla T4"   # old pynvml: bytes still decoded
    print("NAME", g.device_name())
    """)
    assert out.returncode == 0, out.stderr
    assert "UPSTREAM 'str' object has no attribute 'decode'" in out.stdout
    assert "NAME NVIDIA H100 2.0" in out.stdout and "NAME Tesla T4" in out.stdout


def test_gpu_max_mem_without_pynvml_does_not_break_the_runners():
    out = run_py("""
    import sys, torch
    torch.cuda.is_available = lambda: True
    sys.modules["pynvml"] = None   # not installed
    from hearscan.compat import fixes
    print(fixes.patch_gpu_max_mem())
    import heareval.gpu_max_mem as g   # upstream would fail here: from pynvml import ...
    g.reset(); print("MEASURE", g.measure())
    """)
    assert out.returncode == 0, out.stderr
    assert "torch.cuda" in out.stdout and "MEASURE" in out.stdout


def test_gpu_patch_is_a_no_op_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert "no CUDA" in fixes.patch_gpu_max_mem()


# ---------------------------------------------------------------------------------- seed, grid
def test_seed_replaces_heareval_42():
    import random

    from heareval.predictions import task_predictions as tp

    upstream = tp.seed_everything
    try:
        fixes.patch_seed(7)
        tp.seed_everything(42, workers=False)  # heareval's own call
        a = (random.random(), torch.rand(1).item())
    finally:
        tp.seed_everything = upstream
    random.seed(7)
    torch.manual_seed(7)
    assert a == (random.random(), torch.rand(1).item())


def test_fork_grid_is_the_seed_papers_two_points():
    from sklearn.model_selection import ParameterGrid

    passed, grid = fixes.build_grid("fork")
    points = list(ParameterGrid(grid))
    assert passed == "default" and len(points) == 2
    assert {p["dropout"] for p in points} == {0.1, 0.25}
    for p in points:
        assert p["hidden_layers"] == 1 and p["lr"] == 1e-4
        assert p["initialization"] is torch.nn.init.xavier_normal_
        assert p["hidden_dim"] == 1024 and p["max_epochs"] == 500 and p["patience"] == 20


def test_grid_overrides_and_their_limits():
    from heareval.predictions import task_predictions as tp

    before = dict(tp.FASTER_PARAM_GRID)
    passed, grid = fixes.build_grid("faster", {"max_epochs": 3, "patience": [1]})
    assert passed == "faster" and grid["max_epochs"] == [3] and grid["patience"] == [1]
    assert tp.FASTER_PARAM_GRID == before  # building does not touch heareval's module
    with pytest.raises(ValueError, match="not allowed"):
        fixes.build_grid("default", {"optim": ["sgd"]})
    with pytest.raises(ValueError, match="unknown grid"):
        fixes.build_grid("huge")


# ---------------------------------------------------------------------------------------- numpy
def test_numpy_inf_removed_upstream_and_aliased():
    out = run_py("""
    import numpy as np
    try:
        np.Inf
    except AttributeError:
        print("REMOVED")
    from hearscan.compat import fixes
    print(fixes.numpy_inf_alias(), np.Inf == np.inf)
    """)
    assert out.returncode == 0, out.stderr
    if not out.stdout.startswith("REMOVED"):
        pytest.skip("numpy < 2 here: np.Inf still exists")
    assert "aliased" in out.stdout and out.stdout.strip().endswith("True")


# ------------------------------------------------------------------------------- logs helpers
def test_log_subdir_and_checkpoint_removal(tmp_path):
    assert fixes._log_subdir(Path("logs") / "emb/hear_modules.logmel/task-v1-full") == "hear_modules.logmel__task-v1-full"
    assert fixes._log_subdir(Path("/abs/emb/mod/task")) == "mod__task"
    ck = tmp_path / "a/lightning_logs/version_0/checkpoints"
    ck.mkdir(parents=True)
    (ck / "epoch=1-step=2.ckpt").write_bytes(b"x")
    (ck.parent / "metrics.csv").write_text("a\n")
    assert fixes.remove_checkpoints(tmp_path) == 1
    assert not ck.exists() and (ck.parent / "metrics.csv").exists()


# ------------------------------------------------------------------------------------- the API
def test_api_rejects_bad_input_before_starting_anything(tmp_path):
    from hearscan.compat import run_embeddings, run_predictions, run_validator

    with pytest.raises(UserFacingError, match="unknown module 'no_such_module'"):
        run_validator("no_such_module")
    with pytest.raises(UserFacingError, match="not a Python module name"):
        run_validator("rm -rf")
    with pytest.raises(UserFacingError, match="does not exist"):
        run_validator("hear_modules.logmel", model_path=tmp_path / "missing.pt")
    with pytest.raises(UserFacingError, match="tasks folder"):
        run_embeddings("hear_modules.logmel", None, tmp_path / "nope", tmp_path / "emb")
    with pytest.raises(UserFacingError, match="not an embeddings task folder"):
        run_predictions([tmp_path])
    with pytest.raises(UserFacingError, match="unknown grid"):
        run_predictions([tmp_path], grid="huge")
    with pytest.raises(UserFacingError, match="not allowed"):
        run_predictions([tmp_path], grid_overrides={"optim": 1})


def test_cli_errors_are_clear(tmp_path, capsys):
    from hearscan.cli import main

    assert main(["validate", "no_such_module"]) == 2
    assert "unknown module 'no_such_module'" in capsys.readouterr().err
    assert main(["heareval-predict", str(tmp_path)]) == 2
    assert "not an embeddings task folder" in capsys.readouterr().err
    assert main(["heareval-predict", str(tmp_path), "--gpus", "[0"]) == 2
    assert "--gpus: not valid JSON" in capsys.readouterr().err
    assert main(["heareval-embed", "hear_modules.logmel", "--tasks-dir", str(tmp_path / "x"),
                 "--embeddings-dir", str(tmp_path / "e")]) == 2
    assert "tasks folder" in capsys.readouterr().err


BROKEN_MODULE = """
import torch
class Model(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = 8
    timestamp_embedding_size = 8
def load_model(model_file_path=""):
    return Model()
def get_timestamp_embeddings(audio, model):
    n = audio.shape[1] // 1600
    ts = torch.arange(n, dtype=torch.float32)[None].expand(audio.shape[0], n) * 100.0
    return torch.zeros(audio.shape[0], n, 7), ts   # 7 != timestamp_embedding_size
def get_scene_embeddings(audio, model):
    return torch.zeros(audio.shape[0], 8)
"""


def test_validator_rejects_a_broken_module_from_the_callers_folder(tmp_path, monkeypatch):
    from hearscan.compat import HearToolError, run_validator

    (tmp_path / "broken_hear_module.py").write_text(BROKEN_MODULE)
    monkeypatch.chdir(tmp_path)  # importable from here, as `python -m` would make it
    with pytest.raises(HearToolError) as err:
        run_validator("broken_hear_module", verbose=False)
    assert "Output embedding size is 7" in err.value.tail
    assert {p.name for p in tmp_path.iterdir()} <= {"broken_hear_module.py", "__pycache__"}  # nothing written here


def test_validate_a_module_that_does_not_import_names_it_without_a_traceback(tmp_path, monkeypatch, capsys):
    from hearscan.cli import main

    (tmp_path / "unimportable_hear_module.py").write_text("import no_such_package_for_hearscan\n")
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "unimportable_hear_module"]) == 2
    err = capsys.readouterr().err
    assert "unimportable_hear_module cannot be imported" in err and "no_such_package_for_hearscan" in err
    assert "Traceback" not in err


def test_launcher_rejects_unknown_fix_names():
    out = subprocess.run([PY, "-m", "hearscan.compat.launch", "validator", "--disable", "everything"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown fixes" in out.stderr
