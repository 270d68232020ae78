"""End to end through the compat layer: real .wav task folders (scene, 3-fold, event) -> heareval's
embeddings runner on hear_modules.logmel -> heareval's predictions runner (2 grid points) -> score files.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest

from hearscan.compat import run_embeddings, run_predictions
from hearscan_core.errors import UserFacingError
from helpers_tasks import write_tiny_suite

pytestmark = pytest.mark.slow

# heareval's "faster" grid (hidden_dim 64/128, validation every epoch), cut to 6 epochs so the event
# task's sed_eval scoring stays cheap on 2 cores.  A tiny task is one batch, so 6 epochs are 6 steps:
# a larger lr (and patience covering them) lets the probe really learn the tones in that time.
TINY = {"grid": "faster", "grid_points": 2, "grid_overrides": {"max_epochs": [6], "patience": [6], "lr": [0.03]}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def tasks(workdir):
    return write_tiny_suite(workdir / "tasks")


@pytest.fixture(scope="module")
def embeddings(workdir, tasks):
    return run_embeddings("hear_modules.logmel", None, workdir / "tasks", workdir / "embeddings", verbose=False)


@pytest.fixture(scope="module")
def predictions(workdir, embeddings):
    import os

    cwd = os.getcwd()
    os.chdir(workdir)  # so a stray ./logs would be seen
    try:
        results = run_predictions(embeddings.task_dirs, log_dir=workdir / "lightning", verbose=False, **TINY)
    finally:
        os.chdir(cwd)
    return {r.task_dir.name.split("-")[0]: r for r in results}


def test_embeddings_in_heareval_layout(embeddings, tasks):
    assert embeddings.module_dir.name == "hear_modules.logmel"
    assert sorted(p.name for p in embeddings.task_dirs) == sorted(p.name for p in tasks.values())
    for task_dir in embeddings.task_dirs:
        meta = json.loads((task_dir / "task_metadata.json").read_text())
        dim = 128 if meta["embedding_type"] == "scene" else 64
        assert (task_dir / ".done.embeddings").exists() and (task_dir / "labelvocabulary.csv").exists()
        for split in meta["splits"]:
            n, d = json.loads((task_dir / f"{split}.embedding-dimensions.json").read_text())
            assert d == dim
            raw = np.memmap(task_dir / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=(n, d))
            assert np.isfinite(raw).all()
            labels = pickle.loads((task_dir / f"{split}.target-labels.pkl").read_bytes())
            assert len(labels) == n
            if meta["embedding_type"] == "event":
                stamps = json.loads((task_dir / f"{split}.filename-timestamps.json").read_text())
                assert len(stamps) == n and n == len(json.loads((task_dir / f"{split}.json").read_text())) * 101
            else:
                assert n == len(json.loads((task_dir / f"{split}.json").read_text()))


def _check_range(name: str, value: float) -> None:
    assert math.isfinite(value), (name, value)
    if name.endswith("_er") or "error_rate" in name:
        assert value >= 0, (name, value)
    elif any(key in name for key in ("acc", "mAP", "fms", "f_measure", "precision", "recall")):
        assert 0 <= value <= 1, (name, value)


def test_scene_task_scores(predictions):
    r = predictions["tiny_scene"]
    assert (r.task_dir / "prediction-done.json").exists() and (r.task_dir / "test.predictions.pkl").exists()
    test = r.scores["test"]
    assert r.metric == "top1_acc" and r.test_score == test["test_top1_acc"]
    for name, value in test.items():
        if name.startswith("test_"):
            _check_range(name, value)
    assert r.scores["hparams"]["max_epochs"] == 6 and r.scores["hparams"]["hidden_dim"] in (64, 128)
    assert r.test_score >= 2 / 3  # three pure tones: log-mel statistics separate them (chance is 1/3)


def test_fold_task_scores_every_fold(predictions):
    r = predictions["tiny_folds"]
    assert {"fold00", "fold01", "fold02", "aggregated_scores"} <= set(r.scores)
    for fold in ("fold00", "fold01", "fold02"):
        _check_range("test_top1_acc", r.scores[fold]["test_top1_acc"])
        _check_range("test_mAP", r.scores[fold]["test_mAP"])
        assert (r.task_dir / f"{fold}.predictions.pkl").exists()
    agg = r.scores["aggregated_scores"]
    folds = [r.scores[f]["test_score"] for f in ("fold00", "fold01", "fold02")]
    assert r.test_score == pytest.approx(np.mean(folds)) == pytest.approx(agg["test_score_mean"])
    assert r.test_score >= 2 / 3


def test_event_task_scores(predictions):
    # Upstream heareval crashes here on Lightning >= 1.6 (see test_compat_runs); the compat layer scores it.
    r = predictions["tiny_event"]
    test = r.scores["test"]
    assert r.metric == "event_onset_200ms_fms"
    _check_range("test_event_onset_200ms_fms", test["test_event_onset_200ms_fms"])
    _check_range("test_segment_1s_er", test["test_segment_1s_er"])
    assert dict(r.scores["postprocessing"])["median_filter_ms"] == 250
    assert (r.task_dir / "prediction-done.json").exists()


def test_no_lightning_litter(workdir, predictions, embeddings):
    assert not (workdir / "logs").exists()
    for task_dir in embeddings.task_dirs:
        assert not (task_dir / "lightning_logs").exists()
    assert not list((workdir / "lightning").rglob("*.ckpt"))
    assert list((workdir / "lightning").rglob("metrics.csv"))  # the logs asked for are kept


def test_resume_skips_and_other_settings_refuse(predictions, embeddings):
    again = run_predictions(embeddings.task_dirs, verbose=False, **TINY)
    assert all(r.skipped for r in again)
    assert [r.test_score for r in again] == [predictions[r.task_dir.name.split("-")[0]].test_score for r in again]
    with pytest.raises(UserFacingError, match="other settings"):
        run_predictions(embeddings.task_dirs[:1], seed=3, verbose=False, **TINY)
    recorded = json.loads((embeddings.task_dirs[0] / "prediction-hearscan.json").read_text())
    assert recorded == {"seed": 42, "grid": "faster", "grid_points": 2, "grid_overrides": TINY["grid_overrides"],
                        "deterministic": True}


# ------------------------------------------------------------------------------------------------
# The upstream failures, on real runs of heareval: each fix left out in turn breaks the run again.
def _fresh_copy(task_dir: Path, dest: Path) -> Path:
    import shutil

    copy = dest / task_dir.parent.name / task_dir.name
    shutil.copytree(task_dir, copy, ignore=shutil.ignore_patterns("prediction*", "test.predicted-scores.json",
                                                                   "*.predictions.pkl"))
    return copy


def test_upstream_event_task_crash_and_log_litter_without_fixes(workdir, embeddings):
    from hearscan.compat import HearToolError

    event = next(p for p in embeddings.task_dirs if p.name.startswith("tiny_event"))
    copy = _fresh_copy(event, workdir / "no_epoch_fix")
    with pytest.raises(HearToolError) as err:
        run_predictions([copy], grid="faster", grid_points=1, grid_overrides={"max_epochs": [2]}, verbose=False,
                        disable_fixes=("epoch", "logs"))
    assert "KeyError" in err.value.tail  # heareval looks up the post-processing of the wrong epoch
    # without the logs fix, Lightning's checkpoints land inside the embeddings folder
    assert list((copy / "lightning_logs").rglob("*.ckpt"))


def test_upstream_weights_only_failure_without_allowlist(workdir, embeddings):
    from hearscan.compat import HearToolError

    scene = next(p for p in embeddings.task_dirs if p.name.startswith("tiny_scene"))
    copy = _fresh_copy(scene, workdir / "no_allowlist")
    with pytest.raises(HearToolError) as err:
        run_predictions([copy], grid="faster", grid_points=1, grid_overrides={"max_epochs": [1]}, verbose=False,
                        disable_fixes=("weights_only",))
    assert "Weights only load failed" in err.value.tail


def test_fork_grid_with_seed_from_the_command_line(workdir, embeddings, capsys):
    from hearscan.cli import main

    scene = next(p for p in embeddings.task_dirs if p.name.startswith("tiny_scene"))
    copy = _fresh_copy(scene, workdir / "fork")
    assert main(["heareval-predict", str(copy), "--seed", "3", "--grid", "fork", "--max-epochs", "4"]) == 0
    out = capsys.readouterr().out
    assert "seed 3, grid fork (2 points)" in out and f"{copy.name}  top1_acc = " in out
    scores = json.loads((copy / "test.predicted-scores.json").read_text())
    hp = scores["hparams"]
    assert hp["lr"] == 1e-4 and hp["hidden_layers"] == 1 and hp["dropout"] in (0.1, 0.25)
    assert "xavier_normal_" in hp["initialization"] and hp["max_epochs"] == 4
    settings = json.loads((copy / "prediction-hearscan.json").read_text())
    assert settings["seed"] == 3 and settings["grid"] == "fork" and settings["grid_points"] == 2
    log = (copy / "prediction.log").read_text()
    assert "Grid point 2 of 2" in log  # both fork configurations trained
    _check_range("test_top1_acc", scores["test"]["test_top1_acc"])
