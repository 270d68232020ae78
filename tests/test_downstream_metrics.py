"""Scores: the probe's numbers are heareval's numbers for the same predictions.

heareval computes test scores inside its Lightning models (`_score_epoch_end` -> `log_scores`).  These
tests build heareval's own ScenePredictionModel / EventPredictionModel, feed them predictions, capture
what they log, and compare with what the probe writes for the identical predictions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import ParameterGrid

from downstream import metrics
from formats.embeddings import load_task
from downstream.linear import loss_per_model
from downstream.probe import _EventScorer, _probabilities
from downstream.synthetic import write_synthetic_task


def _heareval_logged(model_cls, outputs, **kwargs):
    """Run heareval's test-epoch scoring on `outputs` and return what it logs."""
    from heareval.predictions.task_predictions import PARAM_GRID

    class Captured(model_cls):
        def log(self, name, value, *args, **kw):  # Lightning's logger needs a Trainer; keep the values
            self.logged[name] = float(value)

    conf = list(ParameterGrid(PARAM_GRID))[0]
    model = Captured(conf=conf, **kwargs)
    model.logged = {}
    if hasattr(model, "epoch_best_postprocessing"):
        model.epoch_best_postprocessing[0] = kwargs["postprocessing_grid"]["_chosen"]
    model._score_epoch_end("test", outputs)
    return model.logged


def _scene_case(prediction_type, evaluation, seed):
    rng = np.random.default_rng(seed)
    n, C = 80, 6
    if prediction_type == "multiclass":
        y = np.eye(C, dtype=np.float32)[rng.integers(C, size=n)]
    else:
        y = (rng.random((n, C)) < 0.3).astype(np.float32)
        y[:2] = 1.0  # every class has a positive
        y[2:4] = 0.0
    logits = torch.tensor(2.0 * y + rng.standard_normal((n, C)), dtype=torch.float32)
    return y, logits


@pytest.mark.parametrize(
    "prediction_type,evaluation",
    [("multiclass", ["top1_acc", "mAP", "d_prime", "aucroc"]),
     ("multiclass", ["pitch_acc", "chroma_acc"]),
     ("multilabel", ["mAP", "d_prime", "aucroc"])],
)
def test_scene_scores_equal_heareval(prediction_type, evaluation):
    from heareval.predictions.task_predictions import ScenePredictionModel

    labels = [str(i) for i in range(6)]
    label_to_idx = {label: i for i, label in enumerate(labels)}
    y, logits = _scene_case(prediction_type, evaluation, seed=len(evaluation))
    probs = _probabilities(logits, prediction_type)
    scores = metrics.score_functions(evaluation, label_to_idx)
    ours = metrics.heareval_scores("test", scores, (probs.numpy(), y))
    ours["test_loss"] = float(loss_per_model(logits[None], torch.tensor(y), prediction_type)[0])
    half = len(y) // 2  # two "batches", as Lightning would hand them over
    outputs = [
        {"target": torch.tensor(y[s]), "prediction": probs[s], "prediction_logit": logits[s]}
        for s in (slice(0, half), slice(half, None))
    ]
    theirs = _heareval_logged(
        ScenePredictionModel, outputs, nfeatures=8, label_to_idx=label_to_idx, nlabels=6,
        prediction_type=prediction_type, scores=metrics.score_functions(evaluation, label_to_idx),
    )
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), key


def test_event_scores_equal_heareval(tmp_path):
    from heareval.predictions.task_predictions import EventPredictionModel

    task = load_task(write_synthetic_task(tmp_path, "ev", embedding_type="event", prediction_type="multilabel",
                                          n_per_split=5, n_labels=3, seed=7))
    y = task.target_matrix("test")
    rng = np.random.default_rng(0)
    logits = torch.tensor(4.0 * y - 2.0 + rng.standard_normal(y.shape), dtype=torch.float32)
    probs = torch.sigmoid(logits)
    scores = metrics.score_functions(task.metadata["evaluation"], task.label_to_idx)
    scorer = _EventScorer(task, scores)
    pp = (("median_filter_ms", 250), ("min_duration", 125))
    events = scorer.events(probs, ["test"], pp)[pp]
    ours = metrics.heareval_scores("test", scores, (events, task.target_events(["test"])))
    ours["test_loss"] = float(loss_per_model(logits[None], torch.tensor(y), "multilabel")[0])
    files = [f for f, _ in task.splits["test"].filename_timestamps]
    stamps = torch.tensor([t for _, t in task.splits["test"].filename_timestamps])
    outputs = [{"target": torch.tensor(y), "prediction": probs, "prediction_logit": logits,
                "filename": files, "timestamp": stamps}]
    grid = {"median_filter_ms": [250], "min_duration": [125, 250]}
    theirs = _heareval_logged(
        EventPredictionModel, outputs, nfeatures=8, label_to_idx=task.label_to_idx, nlabels=3,
        prediction_type="multilabel", scores=metrics.score_functions(task.metadata["evaluation"], task.label_to_idx),
        validation_target_events=task.target_events(["valid"]), test_target_events=task.target_events(["test"]),
        postprocessing_grid={**grid, "_chosen": pp},
    )
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), key
    assert ours["test_score"] > 0.5  # the case is not degenerate


@pytest.mark.parametrize(
    "name,prediction_type",
    [(n, "multiclass") for n in ("top1_acc", "pitch_acc", "chroma_acc", "mAP", "aucroc", "d_prime")]
    + [(n, "multilabel") for n in ("mAP", "aucroc", "d_prime")],
)
def test_batched_selection_scores_equal_heareval(name, prediction_type):
    from heareval.score import available_scores

    C = 14 if name == "chroma_acc" else 5
    rng = np.random.default_rng(3)
    n, M = 60, 4
    if prediction_type == "multiclass":
        y = np.eye(C, dtype=np.float32)[rng.integers(C, size=n)]
    else:
        y = (rng.random((n, C)) < 0.4).astype(np.float32)
    logits = torch.tensor(rng.standard_normal((M, n, C)) + 1.5 * y[None], dtype=torch.float32)
    batched = metrics.selection_scores(name, logits, torch.tensor(y), prediction_type)
    score = available_scores[name](label_to_idx={str(i): i for i in range(C)})
    for m in range(M):
        expected = score(_probabilities(logits[m], prediction_type).numpy(), y)
        assert float(batched[m]) == pytest.approx(expected, rel=1e-4, abs=1e-5)
