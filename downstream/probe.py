"""`hearscan probe`: score frozen embeddings of HEAR tasks over many seeds, with three protocols.

- `linear`: hearscan's batched linear probe (downstream/linear.py) over seeds x grid points.
- `heareval`: heareval's own predictions runner (stock grid, 8 points) once per seed, via hearscan.compat.
- `heareval-fork`: the seed papers' grid (1 hidden layer, lr 1e-4, dropout {0.1, 0.25}, xavier_normal)
  once per seed, via hearscan.compat.

Output, per (module, task, protocol, seed): `OUT/<module>/<task>/<protocol>/seed-NN/` holding
`test.predicted-scores.json` in heareval's layout (one entry per test fold, `aggregated_scores` over
folds, `hparams`, `postprocessing`, `score_mode`, `embedding_path`) and `probe.json` (what hearscan
adds: module, task, protocol, seed, settings, per-fold choices, the chance level).  A seed directory is
written under a temporary name and renamed when complete, so a finished (task, seed) is skipped when
the command is run again and an interrupted one is redone.

Linear-probe protocol, fold by fold (heareval's semantics: `embeddings.data_splits`):
1. split 0: train every (seed, grid point); early-stop each on validation (the task's first metric in
   batched form for scene tasks; the validation loss for event tasks, whose metric needs sed_eval);
   per seed, pick the grid point (and for events the post-processing) with the best validation score
   computed by heareval's own score functions;
2. other splits: train each seed's chosen grid point (heareval also searches on split 0 only);
3. score test predictions with heareval's score functions; events go through heareval's own
   `get_events_for_all_files` (median filter, minimum duration) with the post-processing chosen on
   that split's validation fold (heareval also chooses it per split model).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from downstream import metrics
from downstream.linear import GridPoint, ProbeSettings, loss_per_model, train_linear
from formats.embeddings import TaskEmbeddings, data_splits, find_task_dirs, load_task, make_seed_view
from formats.predictions import (
    PROBE_FILE, SCORES_FILE, aggregate_folds, headline_score, is_done, seed_dir, write_seed_dir,
)
from hearscan_core.errors import UserFacingError
from hearscan_core.files import fresh_temp_dir, publish_dir

PROTOCOLS = ("linear", "heareval", "heareval-fork")


# --- the linear protocol ---------------------------------------------------------------------------------


def _stack(task: TaskEmbeddings, names: list[str]):
    x = np.concatenate([task.splits[s].embeddings for s in names])
    y = np.concatenate([task.target_matrix(s) for s in names])
    return x, y


def _frames(task: TaskEmbeddings, names: list[str]) -> tuple[list[str], list[float]]:
    files, stamps = [], []
    for s in names:
        for f, t in task.splits[s].filename_timestamps:
            files.append(f)
            stamps.append(t)
    return files, stamps


def _probabilities(logits: torch.Tensor, prediction_type: str) -> torch.Tensor:
    # heareval's activations: Softmax (multiclass) / Sigmoid (multilabel)
    return logits.softmax(dim=-1) if prediction_type == "multiclass" else torch.sigmoid(logits)


class _EventScorer:
    """heareval's event path: frame probabilities -> events (its own `get_events_for_all_files`) -> score."""

    def __init__(self, task: TaskEmbeddings, scores: list):
        from heareval.predictions.task_predictions import EVENT_POSTPROCESSING_GRID, get_events_for_all_files

        self.get_events = get_events_for_all_files
        self.grid = task.metadata.get("evaluation_params", {}).get("event_postprocessing_grid", EVENT_POSTPROCESSING_GRID)
        self.idx_to_label = dict(enumerate(task.labels))
        self.task = task
        self.scores = scores

    def events(self, probs: torch.Tensor, names: list[str], postprocessing=None) -> dict:
        files, stamps = _frames(self.task, names)
        return self.get_events(probs, files, torch.tensor(stamps), self.idx_to_label, self.grid, postprocessing)

    def best_postprocessing(self, probs: torch.Tensor, names: list[str]) -> tuple[float, tuple]:
        """heareval's choice on validation: primary score per post-processing (NaN -> 0), then
        `sort(reverse=True)` on (score, postprocessing) tuples."""
        target = self.task.target_events(names)
        ranked = []
        for pp, events in self.events(probs, names).items():
            value = metrics.primary_value(self.scores[0](events, target))
            ranked.append((0.0 if np.isnan(value) else value, pp))
        ranked.sort(reverse=True)
        return ranked[0]


def _silence(fn, *args, **kwargs):
    """heareval's event helpers print tqdm bars per call; keep the probe's own bar readable."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*args, **kwargs)


def probe_linear(task: TaskEmbeddings, seeds: list[int], settings: ProbeSettings = ProbeSettings()) -> dict:
    """Run the linear protocol for `seeds` on one task.  Returns {seed: (scores_json, probe_json)}."""
    meta = task.metadata
    ptype = task.prediction_type
    scores = metrics.score_functions(meta["evaluation"], task.label_to_idx)
    primary = scores[0]
    maximize = bool(primary.maximize)
    event = task.embedding_type == "event"
    scorer = _EventScorer(task, scores) if event else None
    if event:
        # validation loss decides early stopping: sed_eval at every check is what makes heareval slow
        selection = lambda logits, yv: loss_per_model(logits, yv, ptype)  # noqa: E731
        select_max = False
    else:
        name = meta["evaluation"][0]
        selection = lambda logits, yv: metrics.selection_scores(name, logits, yv, ptype)  # noqa: E731
        select_max = maximize

    splits = data_splits(meta)
    chosen: dict[int, GridPoint] = {}
    chosen_pp: dict[int, tuple] = {}
    fold_results: dict[int, dict] = {s: {} for s in seeds}
    fold_notes: dict[int, dict] = {s: {} for s in seeds}
    chance: dict[str, float] = {}
    for i, split in enumerate(splits):
        t0 = time.time()
        x_tr, y_tr = _stack(task, split["train"])
        x_va, y_va = _stack(task, split["valid"])
        x_te, y_te = _stack(task, split["test"])
        if i == 0:
            model_seeds = [s for s in seeds for _ in settings.grid]
            model_points = [p for _ in seeds for p in settings.grid]
        else:
            model_seeds = list(seeds)
            model_points = [chosen[s] for s in seeds]
        models = train_linear(x_tr, y_tr, x_va, y_va, ptype, model_seeds, model_points, selection, select_max, settings)
        valid_probs = _probabilities(models.logits(x_va), ptype)  # (M, n, C)
        # validation score of each model with heareval's primary score (and, for events, its best post-processing)
        valid_score = np.zeros(models.n_models)
        valid_pp: list = [[] for _ in range(models.n_models)]
        for m in range(models.n_models):
            if event:
                valid_score[m], valid_pp[m] = _silence(scorer.best_postprocessing, valid_probs[m], split["valid"])
            else:
                valid_score[m] = metrics.primary_value(primary(valid_probs[m].numpy(), y_va))
        if i == 0:
            for s in seeds:
                idx = [m for m in range(models.n_models) if model_seeds[m] == s]
                vals = np.nan_to_num(valid_score[idx], nan=-np.inf if maximize else np.inf)
                best = idx[int(np.argmax(vals) if maximize else np.argmin(vals))]  # ties -> first grid point
                chosen[s] = model_points[best]
                chosen_pp[s] = valid_pp[best]
        test_logits = models.logits(x_te)
        test_probs = _probabilities(test_logits, ptype)
        y_te_t = torch.as_tensor(y_te)
        fold = "|".join(split["test"])
        elapsed_min = (time.time() - t0) / 60
        for s in seeds:
            m = next(m for m in range(models.n_models) if model_seeds[m] == s and model_points[m] == chosen[s])
            if event:
                # as in heareval, each split's model uses the post-processing chosen on its own validation fold
                pp = valid_pp[m]
                events = _silence(scorer.events, test_probs[m], split["test"], pp)[pp]
                result = metrics.heareval_scores("test", scores, (events, task.target_events(split["test"])))
            else:
                result = metrics.heareval_scores("test", scores, (test_probs[m].numpy(), y_te))
            loss = float(loss_per_model(test_logits[m : m + 1], y_te_t, ptype)[0])
            fold_results[s][fold] = {
                "test_loss": loss,
                **result,
                "validation_score": float(valid_score[m]),
                "epoch": int(models.best_step[m]),
                "time_in_min": elapsed_min / models.n_models,
            }
            fold_notes[s][fold] = {
                "train": split["train"], "valid": split["valid"], "test": split["test"],
                "n_train": int(len(x_tr)), "n_valid": int(len(x_va)), "n_test": int(len(x_te)),
                "best_step": int(models.best_step[m]), "steps_run": int(models.steps_run),
                "postprocessing": valid_pp[m],
                "models_trained_together": int(models.n_models), "fold_wall_s": round(elapsed_min * 60, 3),
            }
        chance[fold] = _chance_score(task, scores, scorer, y_tr, split["test"], x_te.shape[0])

    chance_level = float(np.mean(list(chance.values())))
    out = {}
    for s in seeds:
        results: dict = dict(fold_results[s])
        if len(splits) > 1:
            results["aggregated_scores"] = aggregate_folds(fold_results[s])
        results.update(
            {
                "hparams": {"protocol": "linear", **chosen[s].as_dict(), "seed": s},
                "postprocessing": chosen_pp[s],
                "score_mode": "max" if maximize else "min",
                "embedding_path": str(task.path),
            }
        )
        note = {
            "protocol": "linear",
            "module": task.module,
            "task": task.name,
            "seed": s,
            "primary_metric": meta["evaluation"][0],
            "score_mode": "max" if maximize else "min",
            "test_score": headline_score(results),
            "chance_level": chance_level,
            "chance_level_by_fold": chance,
            "chosen": {**chosen[s].as_dict(), "postprocessing": chosen_pp[s]},
            "folds": fold_notes[s],
            "settings": settings.as_dict(),
            "embedding_path": str(task.path),
            "embedding_dim": task.dim,
        }
        out[s] = (results, note)
    return out


def _chance_score(task, scores, scorer, y_train, test_names, n_test) -> float:
    """The primary test score of a trivial predictor — the train label prior repeated for every test row —
    computed with heareval's own score functions (majority-class accuracy, prevalence mAP, AUC 0.5, ...)."""
    prior = np.tile(y_train.mean(axis=0, keepdims=True), (n_test, 1)).astype(np.float32)
    if scorer is not None:
        events = _silence(scorer.events, torch.from_numpy(prior), test_names)
        first = next(iter(events.values()))
        ret = scores[0](first, task.target_events(test_names))
    else:
        ret = scores[0](prior, np.concatenate([task.target_matrix(s) for s in test_names]))
    value = metrics.primary_value(ret)
    # sed_eval's F-measure of a predictor that emits no event is 0/0: score it 0 (heareval does so on validation)
    return 0.0 if np.isnan(value) else value


# --- heareval's runner, once per seed ---------------------------------------------------------------------

def probe_heareval(
    task_dir: Path, seed: int, protocol: str, final: Path, grid_points: int | None = None,
    grid_overrides: dict | None = None, verbose: bool = True,
) -> None:
    """heareval's predictions runner for one seed, writing into `final` (atomically, via a temp sibling)."""
    try:
        from hearscan import compat
        run_predictions = compat.run_predictions
    except (ImportError, AttributeError):
        raise UserFacingError(
            f"--protocol {protocol} needs hearscan.compat.run_predictions (the HEAR-stack compat layer), "
            "which this installation lacks; use --protocol linear"
        ) from None
    grid = "fork" if protocol == "heareval-fork" else "default"
    work = fresh_temp_dir(final)
    make_seed_view(task_dir, work)  # links to the embedding files: nothing copied, the original untouched
    t0 = time.time()
    run_predictions([work], seed=seed, grid=grid, grid_points=grid_points, grid_overrides=grid_overrides, verbose=verbose)
    scores_path = work / SCORES_FILE
    if not scores_path.is_file():
        raise UserFacingError(f"task {task_dir.name}: heareval's runner wrote no {SCORES_FILE} in {work}; see {work / 'prediction.log'}")
    results = json.loads(scores_path.read_text())
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    note = {
        "protocol": protocol,
        "module": task_dir.parent.name,
        "task": task_dir.name,
        "seed": seed,
        "primary_metric": meta["evaluation"][0],
        "score_mode": results.get("score_mode", "max"),
        "test_score": headline_score(results),
        "grid": grid,
        "grid_points": grid_points,
        "grid_overrides": grid_overrides or {},
        "wall_s": round(time.time() - t0, 3),
        "embedding_path": str(task_dir),
    }
    (work / PROBE_FILE).write_text(json.dumps(note, indent=4))
    publish_dir(work, final)


# --- driver ------------------------------------------------------------------------------------------------


def run_probe(
    paths: list[str | Path],
    seeds: list[int],
    protocol: str = "linear",
    out: str | Path = "predictions",
    settings: ProbeSettings = ProbeSettings(),
    grid_points: int | None = None,
    threads: int | None = None,
    quiet: bool = False,
    grid_overrides: dict | None = None,
) -> list[Path]:
    """Probe every task under `paths` for every seed; returns the seed directories (done or skipped)."""
    if protocol not in PROTOCOLS:
        raise UserFacingError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if threads:
        torch.set_num_threads(int(threads))
    task_dirs = find_task_dirs(paths)
    out = Path(out)
    written: list[Path] = []
    summary = []
    for task_dir in tqdm(task_dirs, desc=f"probe {protocol}", disable=quiet or len(task_dirs) < 2):
        module, name = task_dir.parent.name, task_dir.name
        todo = [s for s in seeds if not is_done(seed_dir(out, module, name, protocol, s))]
        skipped = len(seeds) - len(todo)
        t0 = time.time()
        if protocol == "linear":
            if todo:
                task = load_task(task_dir)
                for s, (results, note) in probe_linear(task, todo, settings).items():
                    write_seed_dir(seed_dir(out, module, name, protocol, s), {SCORES_FILE: results, PROBE_FILE: note})
        else:
            for s in tqdm(todo, desc=f"{name} seeds", disable=quiet):
                load_task(task_dir)  # the same input checks before heareval's bare asserts
                probe_heareval(
                    task_dir, s, protocol, seed_dir(out, module, name, protocol, s), grid_points, grid_overrides, not quiet
                )
        dirs = [seed_dir(out, module, name, protocol, s) for s in seeds]
        written.extend(dirs)
        values = [json.loads((d / PROBE_FILE).read_text())["test_score"] for d in dirs]
        summary.append((module, name, len(todo), skipped, time.time() - t0, values))
    if not quiet:
        print(f"\n{'module':<24} {'task':<36} {'seeds':>5} {'mean':>8} {'std':>8}  time")
        for module, name, ran, skipped, wall, values in summary:
            v = np.asarray(values, dtype=float)
            std = v.std(ddof=1) if len(v) > 1 else float("nan")
            note = f"{wall:.1f} s" + (f" ({skipped} seeds already done)" if skipped else "")
            print(f"{module:<24} {name:<36} {len(v):>5} {v.mean():>8.4f} {std:>8.4f}  {note}")
        print(f"predictions under {out}/<module>/<task>/{protocol}/seed-NN/; tables: hearscan results {out} --out DIR")
        sys.stdout.flush()
    return written
