"""In-process fixes that let heareval 2021.1.3 and hear-validator 2021.0.6 run on torch 2.11,
pytorch-lightning 1.9.5, numpy 2 and Python 3.11.

These functions run only inside the tool processes started by `python -m hearscan.compat.launch`
(never in the caller's process, never by editing site-packages).  Each one fixes one failure seen on this
stack; the module docstring of `hearscan.compat` lists them with the reason.  All of them are
idempotent, and each returns a short description of what it did (the launcher prints it).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shutil
import sys
import types
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent / "tf_standin"

# Names a caller may disable one by one (the tests do, to show each failure mode still exists upstream).
FIX_NAMES = ("tf", "weights_only", "epoch", "pynvml", "logs", "numpy")

# The seed papers' grid (AxLSTM, SSAM): heareval's default grid cut to one hidden layer, lr 1e-4,
# xavier_normal and dropout {0.1, 0.25}, so exactly two configurations, both trained.
FORK_GRID_UPDATE_NAMES = {"hidden_layers": [1], "lr": [1e-4], "dropout": [0.1, 0.25]}

# Grid keys a caller may override from JSON (plain numbers only: the type-valued keys stay upstream's).
OVERRIDABLE_GRID_KEYS = (
    "hidden_layers", "hidden_dim", "dropout", "lr", "patience", "max_epochs",
    "check_val_every_n_epoch", "batch_size",
)


# --------------------------------------------------------------------------------------------- tf
def real_tensorflow_importable() -> bool:
    """True when a real TensorFlow is installed (then it is used and the stand-in stays out)."""
    spec = importlib.util.find_spec("tensorflow") if "tensorflow" not in sys.modules else True
    if spec is None:
        return False
    if spec is True:
        return not getattr(sys.modules["tensorflow"], "HEARSCAN_STANDIN", False)
    return Path(spec.origin or "").parent.parent != STANDIN_DIR


def install_tf_standin() -> str:
    """Put the TensorFlow stand-in on sys.path for this process, unless a real TensorFlow exists."""
    if real_tensorflow_importable():
        return "tensorflow: real installation found, stand-in not used"
    if str(STANDIN_DIR) not in sys.path:
        sys.path.append(str(STANDIN_DIR))  # appended: can never shadow anything installed
    import tensorflow  # noqa: F401  - fail here, with a clear frame, if the stand-in is broken

    return "tensorflow: hearscan stand-in (no real tensorflow installed)"


# ------------------------------------------------------------------------------------------ numpy
def numpy_inf_alias() -> str:
    """pytorch-lightning 1.9.5's EarlyStopping and ModelCheckpoint use `np.Inf`, removed in numpy 2.
    torchmetrics happens to put it back when imported; do not depend on that."""
    import numpy as np

    if hasattr(np, "Inf"):
        return "numpy: np.Inf present"
    np.Inf = np.inf
    return "numpy: np.Inf aliased to np.inf for pytorch-lightning 1.9"


# ----------------------------------------------------------------------------------- weights_only
def lightning_checkpoint_globals() -> list:
    """The exact non-tensor globals inside the checkpoints heareval's predictions runner writes.

    heareval saves its grid point (`save_hyperparameters(conf)`) into every Lightning checkpoint; the
    grid holds classes and functions, which torch >= 2.6's `weights_only=True` default refuses to
    unpickle.  Listing them (instead of turning weights_only off) keeps every other pickle global
    forbidden, so a foreign or tampered checkpoint still cannot run code.
    """
    import torch
    from heareval.predictions import task_predictions as tp

    allowed = set()
    for grid in (tp.PARAM_GRID, tp.FAST_PARAM_GRID, tp.FASTER_PARAM_GRID):
        for values in grid.values():
            for value in values:
                if isinstance(value, type) or callable(value):
                    allowed.add(value)
    # Besides the grid: Lightning's hparams container and the init function it may name.
    from pytorch_lightning.utilities.parsing import AttributeDict

    allowed.update({AttributeDict, torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_})
    return sorted(allowed, key=lambda obj: f"{obj.__module__}.{obj.__qualname__}")


def allow_lightning_checkpoints() -> str:
    import torch

    names = lightning_checkpoint_globals()
    torch.serialization.add_safe_globals(names)
    return f"weights_only: allowlisted {len(names)} globals of heareval's own checkpoints"


# ------------------------------------------------------------------------------------------ epoch
def patch_event_epoch() -> str:
    """heareval picks the event post-processing of the best validation epoch with
    `trainer.fit_loop.current_epoch = grid_point.epoch`.  On pytorch-lightning >= 1.6 that attribute is
    no longer what `trainer.current_epoch` reads (it reads `fit_loop.epoch_progress.current.completed`),
    so the test step looks up the post-processing of the *last* epoch and raises KeyError.  Set the
    counter Lightning really reads, then run heareval's own test function unchanged.
    """
    from heareval.predictions import task_predictions as tp

    original = tp.task_predictions_test
    if getattr(original, "_hearscan_fixed", False):
        return "epoch: already patched"

    @functools.wraps(original)
    def task_predictions_test(*args, **kwargs):
        grid_point = kwargs["grid_point"] if "grid_point" in kwargs else args[1]
        grid_point.trainer.fit_loop.epoch_progress.current.completed = grid_point.epoch
        return original(*args, **kwargs)

    task_predictions_test._hearscan_fixed = True
    tp.task_predictions_test = task_predictions_test
    return "epoch: test step uses the best validation epoch's post-processing"


# ----------------------------------------------------------------------------------------- pynvml
def _decoded(name) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def _pynvml_importable() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True


def patch_gpu_max_mem() -> str:
    """heareval.gpu_max_mem calls `.decode()` on `nvmlDeviceGetName`, which returns `str` in recent
    pynvml, and imports pynvml whenever CUDA is up.  On a CUDA machine: decode only bytes; without
    pynvml, measure with torch.cuda instead so the runners still import.  Nothing to do without CUDA.
    """
    import torch

    if not torch.cuda.is_available():
        return "pynvml: no CUDA, nothing to patch"
    if _pynvml_importable():
        import heareval.gpu_max_mem as gmm
        import pynvml

        def device_name(device_index: int = 0) -> str:
            return _decoded(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(device_index)))

        gmm.device_name = device_name
        return "pynvml: device_name decodes bytes only"

    # No pynvml: a stand-in module with the same three functions, from torch's CUDA counters.
    gmm = types.ModuleType("heareval.gpu_max_mem")
    state = {"max": None}

    def reset():
        state["max"] = None

    def measure():
        try:
            free, total = torch.cuda.mem_get_info(0)
        except Exception:  # a driver that cannot report: measure nothing rather than crash the run
            return state["max"]
        used = (total - free) / 1024**3
        state["max"] = used if state["max"] is None else max(state["max"], used)
        return state["max"]

    def device_name(device_index: int = 0) -> str:
        return torch.cuda.get_device_name(device_index)

    gmm.reset, gmm.measure, gmm.device_name = reset, measure, device_name
    import heareval

    sys.modules["heareval.gpu_max_mem"] = gmm
    heareval.gpu_max_mem = gmm
    return "pynvml: not installed, GPU memory measured with torch.cuda"


# ------------------------------------------------------------------------------------------- logs
def _log_subdir(save_dir) -> str:
    # heareval passes Path("logs") / embedding_path; keep the last two parts (module / task) readable.
    parts = [p for p in Path(save_dir).parts if p not in ("/", "logs", "..", ".")]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "__".join(parts[-2:])) or "task"


def redirect_lightning_logs(log_root: Path) -> str:
    """heareval writes Lightning logs and one checkpoint per grid point under `./logs/<embedding path>`
    (or, for an absolute path, inside the embeddings folder itself).  Send them under `log_root`, and
    delete the checkpoints once each task is scored: they are only needed until its test step.
    """
    from heareval.predictions import runner
    from heareval.predictions import task_predictions as tp
    from pytorch_lightning.loggers import CSVLogger

    log_root = Path(log_root)
    if getattr(tp.CSVLogger, "_hearscan_fixed", False):
        return "logs: already redirected"

    def csv_logger(save_dir, *args, **kwargs):
        return CSVLogger(log_root / _log_subdir(save_dir), *args, **kwargs)

    csv_logger._hearscan_fixed = True
    tp.CSVLogger = csv_logger

    original = runner.task_predictions

    @functools.wraps(original)
    def task_predictions(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            remove_checkpoints(log_root)

    runner.task_predictions = task_predictions
    return f"logs: Lightning logs under {log_root}, checkpoints removed after each task"


def remove_checkpoints(log_root: Path) -> int:
    """Delete the Lightning checkpoint files under `log_root`; returns how many were removed."""
    count = 0
    for ckpt in Path(log_root).rglob("*.ckpt"):
        ckpt.unlink(missing_ok=True)
        count += 1
    for folder in sorted(Path(log_root).rglob("checkpoints"), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    return count


# ------------------------------------------------------------------------------------ seed, grids
def patch_seed(seed: int) -> str:
    """heareval seeds with `seed_everything(42, workers=False)` (when --deterministic, the default)
    before shuffling its grid and training; use `seed` there instead."""
    from heareval.predictions import task_predictions as tp
    from pytorch_lightning import seed_everything

    def seeded(_upstream_seed=None, workers: bool = False):
        return seed_everything(seed, workers=workers)

    tp.seed_everything = seeded
    return f"seed: {seed} instead of heareval's 42"


def build_grid(name: str, overrides: dict | None = None) -> tuple[str, dict]:
    """Return (grid name to pass heareval, the grid dict to install).  `fork` is installed in place of
    heareval's default grid."""
    import torch
    from heareval.predictions import task_predictions as tp

    upstream = {"default": tp.PARAM_GRID, "fast": tp.FAST_PARAM_GRID, "faster": tp.FASTER_PARAM_GRID}
    if name == "fork":
        grid = copy.copy(tp.PARAM_GRID)
        grid.update(FORK_GRID_UPDATE_NAMES)
        grid["initialization"] = [torch.nn.init.xavier_normal_]
        passed = "default"
    elif name in upstream:
        grid = copy.copy(upstream[name])
        passed = name
    else:
        raise ValueError(f"unknown grid {name!r}: use one of default, fast, faster, fork")
    for key, values in (overrides or {}).items():
        if key not in OVERRIDABLE_GRID_KEYS:
            raise ValueError(f"grid override {key!r} is not allowed; allowed: {', '.join(OVERRIDABLE_GRID_KEYS)}")
        grid[key] = list(values) if isinstance(values, (list, tuple)) else [values]
    return passed, grid


def install_grid(name: str, overrides: dict | None = None) -> tuple[str, str]:
    """Install the grid for `name` (+ overrides) into heareval; returns (name to pass, description)."""
    from heareval.predictions import task_predictions as tp

    passed, grid = build_grid(name, overrides)
    attr = {"default": "PARAM_GRID", "fast": "FAST_PARAM_GRID", "faster": "FASTER_PARAM_GRID"}[passed]
    setattr(tp, attr, grid)
    return passed, f"grid: {name}" + (f" with overrides {overrides}" if overrides else "")
