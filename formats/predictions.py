"""A predictions directory (`hearscan probe`'s output), and heareval's score files wherever they lie.

    PRED/<module>/<task>/<protocol>/seed-NN/
        test.predicted-scores.json   heareval's layout: one entry per test fold ("test" for train/valid/test
                                     tasks), `aggregated_scores` over folds (k-fold tasks), hparams, ...
        probe.json                   what hearscan adds: module, task, protocol, seed, settings, chance level

A seed folder is written under a temporary name and renamed when complete, so a folder that exists is
finished (`is_done`), and an interrupted one is redone.  heareval's own runner writes
`test.predicted-scores.json` into an embeddings task folder; `read_run` reads both kinds.

The headline score - the number the seed papers report - is defined here once (`headline_score`):
`aggregated_scores.test_score_mean` for fold tasks, else the one test fold's `test_score`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hearscan_core.errors import UserFacingError
from hearscan_core.files import fresh_temp_dir, publish_dir

SCORES_FILE = "test.predicted-scores.json"
PROBE_FILE = "probe.json"
_SEED_RE = re.compile(r"seed[-_]?(\d+)$")


def seed_dir(out_root: Path, module: str, task: str, protocol: str, seed: int) -> Path:
    return Path(out_root) / module / task / protocol / f"seed-{seed:02d}"


def is_done(path: Path) -> bool:
    return (path / SCORES_FILE).is_file() and (path / PROBE_FILE).is_file()


def write_seed_dir(final: Path, files: dict[str, object]) -> None:
    """Write JSON files into a temporary sibling, then rename it to `final` (nothing half-written)."""
    tmp = fresh_temp_dir(final)
    tmp.mkdir()
    for name, obj in files.items():
        (tmp / name).write_text(json.dumps(obj, indent=4))
    publish_dir(tmp, final)


def headline_score(results: dict) -> float:
    """The task's test score: `aggregated_scores.test_score_mean` for fold tasks, else the `test_score` of
    the one test fold.  ValueError when the file has neither (or several folds without an aggregate)."""
    if "aggregated_scores" in results:
        return float(results["aggregated_scores"]["test_score_mean"])
    folds = [v for v in results.values() if isinstance(v, dict) and "test_score" in v]
    if len(folds) != 1:
        raise ValueError(f"{len(folds)} test folds and no aggregated_scores")
    return float(folds[0]["test_score"])


def all_metrics(results: dict) -> dict[str, float]:
    """Every test metric of a score file (the fold mean for fold tasks), by name without the `test_`."""
    if "aggregated_scores" in results:
        agg = results["aggregated_scores"]
        return {k[5:-5]: float(v) for k, v in agg.items() if k.startswith("test_") and k.endswith("_mean")}
    fold = next(v for v in results.values() if isinstance(v, dict) and "test_score" in v)
    return {k[5:]: float(v) for k, v in fold.items() if k.startswith("test_")}


def aggregate_folds(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean and standard deviation (pandas, ddof=1) of every key over folds: heareval's
    `aggregate_test_results`.  A fold with a perfect AUC has d' = inf, so the mean is inf and the
    standard deviation NaN, as in heareval; numpy's "invalid value" warning on the way is silenced."""
    import pandas as pd

    df = pd.DataFrame.from_dict(results, orient="index")
    out = {}
    with np.errstate(invalid="ignore"):
        for key in df:
            out[f"{key}_mean"] = float(df[key].mean())
            out[f"{key}_std"] = float(df[key].std())
    return out


# --- reading ---------------------------------------------------------------------------------------------------


@dataclass
class Run:
    protocol: str
    module: str
    task: str
    seed: int | None
    score: float
    metric: str
    score_mode: str
    metrics: dict[str, float]  # every test metric (fold mean for fold tasks)
    chance: float | None
    path: Path


def read_run(path: Path) -> Run:
    """One `test.predicted-scores.json` (and `probe.json` beside it when hearscan wrote it)."""
    try:
        results = json.loads(path.read_text())
        score = headline_score(results)
    except (json.JSONDecodeError, ValueError, KeyError, StopIteration) as err:
        raise UserFacingError(f"{path}: not a heareval score file ({err}); delete it or re-run that seed") from None
    note_path = path.parent / PROBE_FILE
    if note_path.is_file():
        note = json.loads(note_path.read_text())
        return Run(
            note["protocol"], note["module"], note["task"], note.get("seed"), score, note.get("primary_metric", "score"),
            note.get("score_mode", results.get("score_mode", "max")), all_metrics(results), note.get("chance_level"), path,
        )
    # heareval's runner output: <embeddings>/<module>/<task>/test.predicted-scores.json (maybe under seed dirs)
    parts = list(path.parent.parts)
    seed = None
    for i, part in reversed(list(enumerate(parts))):
        m = _SEED_RE.search(part)
        if m:
            seed = int(m.group(1))
            if i == len(parts) - 1:
                parts = parts[:-1]  # .../<task>/seed-N/ layout
            break
    task, module = parts[-1], parts[-2] if len(parts) > 1 else "?"
    metric = "score"
    meta_path = path.parent / "task_metadata.json"
    if meta_path.is_file():
        metric = json.loads(meta_path.read_text())["evaluation"][0]
    return Run("heareval", module, task, seed, score, metric, results.get("score_mode", "max"), all_metrics(results), None, path)


def collect(dirs: list[str | Path]) -> list[Run]:
    """Every score file under `dirs` (hidden folders - unfinished work - left out)."""
    runs = []
    for d in map(Path, dirs):
        if d.is_file() and d.name == SCORES_FILE:
            runs.append(read_run(d))
            continue
        if not d.is_dir():
            raise UserFacingError(f"{d}: no such directory (give the folders `hearscan probe --out` wrote)")
        found = sorted(p for p in d.rglob(SCORES_FILE) if not any(x.startswith(".") for x in p.relative_to(d).parts))
        runs.extend(read_run(p) for p in found)
    if not runs:
        raise UserFacingError(f"no {SCORES_FILE} under {', '.join(map(str, dirs))}; run `hearscan probe` first")
    return runs
