"""Python API over the HEAR-stack tools: each call starts `python -m hearscan.compat.launch` in a fresh
subprocess (so the fixes never leak into the caller) with its working directory in a scratch folder
(so Lightning's ./logs and any other relative writes stay out of the caller's directory).

    run_validator(module, model_path=None)                         -> ToolRun
    run_embeddings(module, model_path, tasks_dir, embeddings_dir)  -> EmbeddingsRun
    run_predictions(emb_task_dirs, seed=None, grid="default", ...) -> list[PredictionResult]

Failures raise `HearToolError` (a UserFacingError) carrying the tool's exit status and last output lines;
bad arguments (unknown module, missing folders) raise UserFacingError before anything is started.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from formats.predictions import headline_score
from hearscan_core.errors import UserFacingError
from hearscan_core.files import atomic_write_json

GRIDS = ("default", "fast", "faster", "fork")
DEFAULT_GRID_POINTS = 8  # heareval's default
SETTINGS_FILE = "prediction-hearscan.json"  # our record of the settings a task dir was predicted with
PREDICTION_OUTPUTS = ("prediction-done.json", "test.predicted-scores.json", "prediction.log", SETTINGS_FILE)


class HearToolError(UserFacingError):
    """A HEAR tool (hear-validator, heareval's runners) exited with an error."""

    def __init__(self, tool: str, returncode: int, tail: str):
        self.tool, self.returncode, self.tail = tool, returncode, tail
        super().__init__(f"{tool} failed (exit status {returncode}); its last output lines:\n{tail}")


@dataclass
class ToolRun:
    tool: str
    returncode: int
    output_tail: str
    seconds: float


@dataclass
class EmbeddingsRun(ToolRun):
    module_dir: Path = None  # E/<module name>[-k=v options]
    task_dirs: list[Path] = field(default_factory=list)  # one per task, each with .done.embeddings


@dataclass
class PredictionResult:
    task_dir: Path
    scores: dict  # test.predicted-scores.json as written by heareval
    metric: str  # the task's primary metric (first of `evaluation`)
    test_score: float  # test.test_score, or aggregated_scores.test_score_mean for fold tasks
    settings: dict  # seed, grid, grid_points, grid_overrides, deterministic
    skipped: bool = False  # True when the task was already predicted with the same settings


# ----------------------------------------------------------------------------------- subprocess
class _Tail:
    """The last lines of a tool's output, for error messages (progress-bar redraws collapsed)."""

    def __init__(self, lines: int = 40):
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self.partial = ""

    def add(self, chunk: bytes) -> None:
        parts = (self.partial + chunk.decode(errors="replace")).split("\n")
        self.partial = parts.pop()
        for line in parts:
            self.lines.append(line.split("\r")[-1][:2000])
        self.partial = self.partial[-20000:]

    def text(self) -> str:
        last = [self.partial.split("\r")[-1][:2000]] if self.partial.strip() else []
        return "\n".join([*self.lines, *last])


def resolve_module(module: str) -> str:
    """`logmel` -> `hear_modules.logmel` for hearscan's own modules; other names unchanged."""
    from hear_modules import registry

    return registry.module_name(module)


def _check_module(module: str) -> None:
    """Unknown module -> UserFacingError, before a subprocess is spent on it."""
    if module.startswith(".") or not module.replace(".", "").replace("_", "").isalnum():
        raise UserFacingError(f"{module!r} is not a Python module name (for example hear_modules.logmel)")
    saved = list(sys.path)
    sys.path.insert(0, os.getcwd())
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path[:] = saved
    if spec is None:
        raise UserFacingError(
            f"unknown module {module!r}: it cannot be imported from here; give an installed HEAR module "
            f"(for example hear_modules.logmel) or run from the folder that holds it"
        )


def _check_importable(module: str) -> None:
    """Import `module` in a scratch process first: a module that raises on import gets one line naming it,
    the exception and the fix, instead of the HEAR tool's traceback."""
    code = ("import importlib, sys, traceback\n"
            f"sys.path.insert(0, {os.getcwd()!r})\n"
            f"try:\n    importlib.import_module({module!r})\n"
            "except BaseException as err:\n"
            "    print(f'{type(err).__name__}: {err}'.splitlines()[0] if str(err) else type(err).__name__)\n"
            "    sys.exit(1)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        why = (out.stdout.strip().splitlines() or out.stderr.strip().splitlines() or ["?"])[-1]
        raise UserFacingError(
            f"{module} cannot be imported ({why}); fix the module or install what it needs "
            f"(`python -c 'import {module}'` shows the traceback)"
        )


def _model_path(model_path) -> str | None:
    if model_path in (None, ""):
        return None
    path = Path(model_path).expanduser().resolve()
    if not path.exists():
        raise UserFacingError(f"model file {model_path} does not exist; give the checkpoint's path with --model")
    return str(path)


def launch(tool: str, launcher_args: list[str], tool_args: list[str], verbose: bool = True,
           cwd: Path | None = None, timeout: float | None = None) -> ToolRun:
    """Run `python -m hearscan.compat.launch TOOL ...` with cwd in a scratch folder; stream its output
    (when verbose) and keep the last lines for the error message."""
    import time

    scratch = None
    if cwd is None:
        scratch = tempfile.mkdtemp(prefix=f"hearscan-{tool}-")
        cwd = Path(scratch)
    cmd = [sys.executable, "-m", "hearscan.compat.launch", tool, "--origin-cwd", os.getcwd(), *launcher_args,
           "--", *tool_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    tail = _Tail()
    start = time.time()
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            # Raw chunks, not lines: tqdm redraws with carriage returns and must show as it goes.
            while chunk := proc.stdout.read1(65536):
                if verbose:
                    sys.stdout.buffer.write(chunk) if hasattr(sys.stdout, "buffer") else sys.stdout.write(
                        chunk.decode(errors="replace"))
                    sys.stdout.flush()
                tail.add(chunk)
            proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    run = ToolRun(tool, proc.returncode, tail.text(), time.time() - start)
    if proc.returncode != 0:
        raise HearToolError(tool, proc.returncode, run.output_tail)
    return run


# ------------------------------------------------------------------------------------ validator
def run_validator(module: str, model_path=None, device: str | None = None, verbose: bool = True,
                  disable_fixes: tuple[str, ...] = ()) -> ToolRun:
    """hear-validator on `module` (+ weights file).  Raises HearToolError when the module fails it."""
    module = resolve_module(module)
    _check_module(module)
    _check_importable(module)
    tool_args = [module]
    path = _model_path(model_path)
    if path:
        tool_args += ["--model", path]
    if device:
        tool_args += ["--device", device]
    return launch("validator", _disable(disable_fixes), tool_args, verbose=verbose)


def _disable(names) -> list[str]:
    return ["--disable", ",".join(names)] if names else []


# ----------------------------------------------------------------------------------- embeddings
def run_embeddings(module: str, model_path=None, tasks_dir=None, embeddings_dir=None, task: str = "all",
                   model_options: dict | None = None, verbose: bool = True,
                   disable_fixes: tuple[str, ...] = ()) -> EmbeddingsRun:
    """heareval's embeddings runner: every task under `tasks_dir` (or only `task`) -> `embeddings_dir`.

    Returns the module's embeddings folder `embeddings_dir/<module>[-k=v...]` and its task folders.
    Tasks already marked `.done.embeddings` are skipped by heareval (resume after an interruption).
    """
    module = resolve_module(module)
    _check_module(module)
    if tasks_dir is None or embeddings_dir is None:
        raise UserFacingError("run_embeddings needs tasks_dir and embeddings_dir")
    tasks = Path(tasks_dir).expanduser().resolve()
    if not tasks.is_dir():
        raise UserFacingError(f"tasks folder {tasks_dir} does not exist; build tasks first (hearscan tasks build)")
    task_paths = [tasks / task] if task != "all" else sorted(p for p in tasks.iterdir() if p.is_dir())
    for path in task_paths:
        if not (path / "task_metadata.json").is_file():
            raise UserFacingError(f"{path} is not a HEAR task folder (no task_metadata.json)")
    out = Path(embeddings_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    tool_args = [module, "--tasks-dir", str(tasks), "--embeddings-dir", str(out), "--task", task]
    path = _model_path(model_path)
    if path:
        tool_args += ["--model", path]
    if model_options:
        tool_args += ["--model-options", json.dumps(model_options)]
    run = launch("embeddings", _disable(disable_fixes), tool_args, verbose=verbose)
    module_dir = out / (module + _options_suffix(model_options or {}))
    done = [module_dir / p.name for p in task_paths if (module_dir / p.name / ".done.embeddings").exists()]
    if len(done) != len(task_paths):
        missing = sorted({p.name for p in task_paths} - {d.name for d in done})
        raise HearToolError("heareval.embeddings.runner", 0, f"no .done.embeddings for {missing} in {module_dir}")
    return EmbeddingsRun(run.tool, run.returncode, run.output_tail, run.seconds, module_dir=module_dir, task_dirs=done)


def _options_suffix(options: dict) -> str:
    """The folder suffix heareval derives from --model-options (slugified k=v pairs)."""
    if not options:
        return ""
    from slugify import slugify

    return "-" + "-".join(f"{slugify(k)}={slugify(str(v))}" for k, v in options.items())


# ---------------------------------------------------------------------------------- predictions
def _check_emb_task_dir(path: Path) -> dict:
    meta_file = path / "task_metadata.json"
    if not meta_file.is_file():
        raise UserFacingError(f"{path} is not an embeddings task folder (no task_metadata.json); run hearscan heareval-embed first")
    metadata = json.loads(meta_file.read_text())
    for split in metadata["splits"]:
        if not (path / f"{split}.embedding-dimensions.json").is_file():
            raise UserFacingError(f"{path} has no embeddings for split {split!r}; its embedding run did not finish — rerun hearscan heareval-embed")
    return metadata


def _clear_predictions(path: Path) -> None:
    for name in PREDICTION_OUTPUTS:
        (path / name).unlink(missing_ok=True)
    for pkl in path.glob("*.predictions.pkl"):
        pkl.unlink()


def run_predictions(emb_task_dirs, seed: int | None = None, grid: str = "default",
                    grid_points: int | None = None, gpus=None, grid_overrides: dict | None = None,
                    deterministic: bool = True, in_memory: bool = True, rerun: bool = False,
                    log_dir=None, verbose: bool = True, disable_fixes: tuple[str, ...] = ()) -> list[PredictionResult]:
    """heareval's predictions runner on embeddings task folders.

    seed: replaces heareval's fixed seed 42 (None keeps 42).  grid: default|fast|faster (heareval's) or
    fork (the seed papers' 2-point grid).  grid_points: how many shuffled grid points to train (default:
    8, or both points of the fork grid).  gpus: None (heareval's default: [0] when CUDA is present, else
    CPU), [] for CPU, or a list of device ids like [0].  grid_overrides: plain
    numeric grid values, e.g. {"max_epochs": [3]}.  Outputs are written inside each task folder by
    heareval; `prediction-hearscan.json` records the settings.  A folder already predicted with the same
    settings is skipped (resume); with other settings it raises unless rerun=True.  Lightning logs go to
    `log_dir` (kept, checkpoints removed) or to a temp folder that is deleted.
    """
    if grid not in GRIDS:
        raise UserFacingError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")
    if isinstance(emb_task_dirs, (str, Path)):
        emb_task_dirs = [emb_task_dirs]
    paths = [Path(p).expanduser().resolve() for p in emb_task_dirs]
    if not paths:
        raise UserFacingError("give at least one embeddings task folder")
    if grid_points is None:
        grid_points = 2 if grid == "fork" else DEFAULT_GRID_POINTS
    if grid_points < 1:
        raise UserFacingError(f"--grid-points must be at least 1, got {grid_points}")
    overrides = dict(grid_overrides or {})
    from hearscan.compat.fixes import OVERRIDABLE_GRID_KEYS

    bad = sorted(set(overrides) - set(OVERRIDABLE_GRID_KEYS))
    if bad:
        raise UserFacingError(f"grid overrides {bad} are not allowed; allowed keys: {', '.join(OVERRIDABLE_GRID_KEYS)}")
    settings = {"seed": 42 if seed is None else int(seed), "grid": grid, "grid_points": grid_points,
                "grid_overrides": overrides, "deterministic": bool(deterministic)}

    metadata, todo, skipped = {}, [], set()
    for path in paths:
        metadata[path] = _check_emb_task_dir(path)
        if rerun:
            _clear_predictions(path)
        elif (path / "prediction-done.json").exists():
            recorded = path / SETTINGS_FILE
            previous = json.loads(recorded.read_text()) if recorded.exists() else None
            if previous != settings:
                raise UserFacingError(
                    f"{path} was already predicted with other settings ({previous or 'unknown: run outside hearscan'}); "
                    f"pass --rerun (rerun=True) to replace its scores, or predict a copy of the folder"
                )
            skipped.add(path)
            continue
        else:
            _clear_predictions(path)  # a half-finished earlier run: start the task over
        todo.append(path)

    if todo:
        launcher_args = ["--grid", grid, "--grid-overrides", json.dumps(overrides), *_disable(disable_fixes)]
        if seed is not None:
            launcher_args += ["--seed", str(int(seed))]
        temp_logs = None
        if log_dir is None:
            temp_logs = tempfile.mkdtemp(prefix="hearscan-lightning-")
            log_dir = temp_logs
        launcher_args += ["--log-dir", str(Path(log_dir).expanduser().resolve())]
        tool_args = [str(p) for p in todo] + ["--grid-points", str(grid_points),
                                              "--deterministic", str(bool(deterministic)),
                                              "--in-memory", str(bool(in_memory))]
        if gpus is not None:  # [] or 0 -> CPU even where CUDA is present
            tool_args += ["--gpus", json.dumps(gpus or None)]
        for path in todo:
            # Written first, so that heareval's done marker always has the settings beside it.
            atomic_write_json(path / SETTINGS_FILE, settings, indent=2)
        try:
            launch("predictions", launcher_args, tool_args, verbose=verbose)
        finally:
            if temp_logs:
                shutil.rmtree(temp_logs, ignore_errors=True)
        for path in todo:
            if not (path / "prediction-done.json").exists():
                raise HearToolError("heareval.predictions.runner", 0, f"{path} has no prediction-done.json")

    results = []
    for path in paths:
        scores = json.loads((path / "test.predicted-scores.json").read_text())
        score = headline_score(scores)
        if not math.isfinite(score):
            raise HearToolError("heareval.predictions.runner", 0, f"non-finite test score {score} in {path}")
        results.append(PredictionResult(path, scores, metadata[path]["evaluation"][0], score, settings,
                                        skipped=path in skipped))
    return results
