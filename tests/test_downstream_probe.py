"""The linear probe: learns, follows heareval's folds and score-file layout, is deterministic, resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from formats import predictions
from hearscan_core.seeds import parse_seeds
from downstream import probe
from formats.embeddings import data_splits, load_task
from downstream.linear import ProbeSettings
from downstream.synthetic import write_synthetic_task

FAST = ProbeSettings(max_steps=200, eval_every=5, patience=8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the machine is shared; one thread is also what makes timings here stable
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def emb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    write_synthetic_task(root, "scene_mc", separation=2.0, n_per_split=60, n_labels=4, seed=1)
    write_synthetic_task(
        root, "scene_folds", split_mode="presplit_kfold", n_folds=4, n_per_split=30, separation=2.0,
        evaluation=["top1_acc", "mAP"], seed=2,
    )
    write_synthetic_task(root, "scene_ml", prediction_type="multilabel", separation=2.0, n_per_split=60, seed=3)
    write_synthetic_task(
        root, "events", embedding_type="event", prediction_type="multilabel", n_per_split=6, n_labels=3,
        separation=1.5, clip_s=3.0, seed=4,
    )
    return root


def _scores(out, task, seed, protocol="linear"):
    d = predictions.seed_dir(out, "synthetic", task, protocol, seed)
    return json.loads((d / predictions.SCORES_FILE).read_text()), json.loads((d / predictions.PROBE_FILE).read_text())


def test_fold_semantics_equal_heareval():
    from heareval.predictions.task_predictions import get_splits_from_metadata

    for meta in (
        {"split_mode": "trainvaltest", "splits": ["train", "valid", "test"]},
        {"split_mode": "presplit_kfold", "splits": ["fold02", "fold00", "fold04", "fold01", "fold03"]},
        {"split_mode": "new_split_kfold", "splits": ["fold01", "fold00", "fold02"]},
    ):
        assert data_splits(meta) == get_splits_from_metadata(meta)
    five = data_splits({"split_mode": "presplit_kfold", "splits": [f"fold{i:02d}" for i in range(5)]})
    assert five[4] == {"train": ["fold01", "fold02", "fold03"], "valid": ["fold00"], "test": ["fold04"]}


def test_parse_seeds():
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("3,1,1,5-6") == [1, 3, 5, 6]
    with pytest.raises(probe.UserFacingError):
        parse_seeds("9-2")
    with pytest.raises(probe.UserFacingError):
        parse_seeds("a")


def test_probe_beats_chance_multiclass(emb_root, tmp_path):
    probe.run_probe([emb_root / "synthetic" / "scene_mc"], [0, 1, 2], out=tmp_path, settings=FAST, quiet=True)
    values = []
    for seed in (0, 1, 2):
        scores, note = _scores(tmp_path, "scene_mc", seed)
        assert set(scores) == {"test", "hparams", "postprocessing", "score_mode", "embedding_path"}
        test = scores["test"]
        assert test["test_score"] == test["test_top1_acc"]
        assert {"test_loss", "validation_score", "epoch", "time_in_min"} <= set(test)
        assert note["seed"] == seed and note["module"] == "synthetic" and note["task"] == "scene_mc"
        assert 0 < test["epoch"] <= FAST.max_steps
        values.append(test["test_score"])
    chance = note["chance_level"]
    assert 0.2 <= chance <= 0.45  # majority class of 4 balanced-ish classes
    assert np.mean(values) > chance + 0.3, (values, chance)


def test_probe_folds_multilabel_and_aggregation(emb_root, tmp_path):
    from heareval.predictions.task_predictions import aggregate_test_results

    probe.run_probe([emb_root / "synthetic"], [0, 1], out=tmp_path, settings=FAST, quiet=True)  # a root
    scores, note = _scores(tmp_path, "scene_folds", 1)
    folds = [k for k in scores if k.startswith("fold")]
    assert folds == ["fold00", "fold01", "fold02", "fold03"]
    # fold i was tested with valid = fold i+1 and the rest as train
    assert note["folds"]["fold03"]["valid"] == ["fold00"] and note["folds"]["fold03"]["train"] == ["fold01", "fold02"]
    expected = aggregate_test_results({k: scores[k] for k in folds})
    assert scores["aggregated_scores"].keys() == expected.keys()
    for key, value in expected.items():
        assert scores["aggregated_scores"][key] == pytest.approx(value, rel=1e-12, abs=1e-15)
    assert note["test_score"] == scores["aggregated_scores"]["test_score_mean"]
    # every fold uses the grid point chosen on split 0, as heareval does
    assert scores["hparams"]["lr"] == note["chosen"]["lr"]
    assert scores["aggregated_scores"]["test_score_mean"] > note["chance_level"] + 0.3

    ml, ml_note = _scores(tmp_path, "scene_ml", 0)
    assert {"test_mAP", "test_d_prime", "test_aucroc"} <= set(ml["test"])
    assert ml["test"]["test_score"] == ml["test"]["test_mAP"]
    assert ml["test"]["test_mAP"] > ml_note["chance_level"] + 0.3

    ev, ev_note = _scores(tmp_path, "events", 0)
    test = ev["test"]
    assert {"test_event_onset_200ms_fms_precision", "test_segment_1s_er_error_rate"} <= set(test)
    # post-processing was chosen from heareval's grid on validation
    assert [k for k, _ in ev["postprocessing"]] == ["median_filter_ms", "min_duration"]
    assert ev["postprocessing"][1][1] in (125, 250)
    assert test["test_score"] > 0.5 and test["test_segment_1s_er"] < 0.8


def test_aggregation_of_an_infinite_d_prime_equals_heareval_without_warnings():
    """A perfect AUC in one fold gives d' = inf: mean inf, std NaN (as heareval), and no RuntimeWarning."""
    import warnings

    from heareval.predictions.task_predictions import aggregate_test_results

    folds = {"fold00": {"test_mAP": 1.0, "test_d_prime": float("inf")},
             "fold01": {"test_mAP": 0.9, "test_d_prime": 2.5}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = aggregate_test_results(folds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = predictions.aggregate_folds(folds)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert np.isnan(got[key]) if np.isnan(value) else got[key] == pytest.approx(value, rel=1e-12)
    assert got["test_d_prime_mean"] == float("inf") and np.isnan(got["test_d_prime_std"])
    assert got["test_mAP_std"] == pytest.approx(np.std([1.0, 0.9], ddof=1))


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if k not in ("time_in_min", "fold_wall_s")
                and not k.startswith("time_in_min")}
    if isinstance(obj, (list, tuple)):
        return [_strip_times(v) for v in obj]
    return obj


def test_deterministic_and_seeds_differ(emb_root, tmp_path):
    task = emb_root / "synthetic" / "scene_mc"
    for out in ("a", "b"):
        probe.run_probe([task], [0, 1], out=tmp_path / out, settings=FAST, quiet=True)
    for seed in (0, 1):
        a = _strip_times(_scores(tmp_path / "a", "scene_mc", seed))
        b = _strip_times(_scores(tmp_path / "b", "scene_mc", seed))
        assert a == b
    # different seeds start from different weights: their losses differ
    assert _scores(tmp_path / "a", "scene_mc", 0)[0]["test"]["test_loss"] != _scores(tmp_path / "a", "scene_mc", 1)[0]["test"]["test_loss"]


def test_resume_skips_finished_seeds_and_redoes_partial(emb_root, tmp_path):
    task = emb_root / "synthetic" / "scene_mc"
    probe.run_probe([task], [0, 1], out=tmp_path, settings=FAST, quiet=True)
    done0 = predictions.seed_dir(tmp_path, "synthetic", "scene_mc", "linear", 0) / predictions.SCORES_FILE
    stamp = os.stat(done0).st_mtime_ns
    # an interrupted seed: a directory without its score file, and a stray temporary folder
    partial = predictions.seed_dir(tmp_path, "synthetic", "scene_mc", "linear", 2)
    partial.mkdir(parents=True)
    (partial / predictions.PROBE_FILE).write_text("{}")
    probe.run_probe([task], [0, 1, 2], out=tmp_path, settings=FAST, quiet=True)
    assert os.stat(done0).st_mtime_ns == stamp
    scores, note = _scores(tmp_path, "scene_mc", 2)
    assert note["seed"] == 2 and "test" in scores
    # seed 2 computed alone equals seed 2 computed with others: models are independent
    probe.run_probe([task], [2], out=tmp_path / "alone", settings=FAST, quiet=True)
    assert _strip_times(_scores(tmp_path / "alone", "scene_mc", 2)) == _strip_times((scores, note))
    assert not [p for p in partial.parent.iterdir() if p.name.startswith(".")]


def test_temporary_folders_of_killed_runs_are_removed(emb_root, tmp_path):
    """A killed run leaves `.seed-NN.tmp-PID` behind; the next run removes it once that process is gone, and
    leaves the folder of a run that is still alive alone."""
    task = emb_root / "synthetic" / "scene_mc"
    final = predictions.seed_dir(tmp_path, "synthetic", "scene_mc", "linear", 0)
    final.parent.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = final.with_name(f".{final.name}.tmp-{gone.pid}")
    alive = final.with_name(f".{final.name}.tmp-{os.getppid()}")
    for d in (dead, alive):
        d.mkdir()
        (d / "train.embeddings.npy").write_bytes(b"partial")
    probe.run_probe([task], [0], out=tmp_path, settings=FAST, quiet=True)
    assert predictions.is_done(final)
    assert not dead.exists()
    assert alive.exists()


def test_batched_models_equal_single_models(emb_root):
    """Training (seed, grid point) pairs together gives each the same weights as training it alone."""
    from downstream.linear import train_linear
    from downstream.metrics import selection_scores

    task = load_task(emb_root / "synthetic" / "scene_mc")
    x, y = task.splits["train"].embeddings, task.target_matrix("train")
    xv, yv = task.splits["valid"].embeddings, task.target_matrix("valid")
    sel = lambda logits, t: selection_scores("top1_acc", logits, t, "multiclass")  # noqa: E731
    seeds = [0, 0, 1, 1]
    points = [FAST.grid[0], FAST.grid[3], FAST.grid[0], FAST.grid[3]]
    together = train_linear(x, y, xv, yv, "multiclass", seeds, points, sel, True, FAST)
    for m in range(4):
        alone = train_linear(x, y, xv, yv, "multiclass", [seeds[m]], [points[m]], sel, True, FAST)
        torch.testing.assert_close(together.logits(xv)[m], alone.logits(xv)[0], rtol=1e-4, atol=1e-5)
        assert together.best_step[m] == alone.best_step[0]
