"""Quick difficulty check for a task suite: `hear_modules.logmel` + logistic regression.

    python -m hearscan.tasks.baseline TASK_DIR... [--json OUT.json]

For each task: log-mel scene embeddings (scene tasks) or timestamp embeddings (event tasks, one row per
frame) are standardised and fed to scikit-learn's logistic regression trained on the training split(s)
(train+valid; for fold tasks every fold but the test fold, averaged over all folds), then scored on the test
split with heareval's own score functions (`heareval.score.available_scores`).  Event predictions become
events with heareval's `get_events_for_all_files` (threshold 0.5, 250 ms median filter, 125 ms minimum).
It is the "is this task neither trivial nor impossible" check used to tune the mini suite, not the
project's probe (that is `downstream/`), and takes about a minute for the whole mini suite on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf


def _embed(task: Path, split: str, entries: dict, meta: dict, model):
    import torch

    from hear_modules import logmel

    out = []
    for name in sorted(entries):
        audio, sr = sf.read(str(task / "16000" / split / name), dtype="float32")
        x = torch.from_numpy(audio)[None]
        if meta["embedding_type"] == "scene":
            out.append((name, logmel.get_scene_embeddings(x, model)[0].numpy(), None))
        else:
            emb, ts = logmel.get_timestamp_embeddings(x, model)
            out.append((name, emb[0].numpy(), ts[0].numpy()))
    return out


def _fit_predict(xtr, ytr, xte, multilabel: bool):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    if not multilabel:
        clf = LogisticRegression(max_iter=2000, C=0.1).fit(xtr, ytr.argmax(1))
        probs = np.zeros((len(xte), ytr.shape[1]))
        probs[:, clf.classes_] = clf.predict_proba(xte)
        return probs
    probs = np.zeros((len(xte), ytr.shape[1]))
    for j in range(ytr.shape[1]):
        if ytr[:, j].min() == ytr[:, j].max():  # a label never (or always) present in training
            probs[:, j] = ytr[0, j]
            continue
        clf = LogisticRegression(max_iter=2000, C=0.1).fit(xtr, ytr[:, j])
        probs[:, j] = clf.predict_proba(xte)[:, 1]
    return probs


def score_task(task: Path, model) -> dict[str, float]:
    from heareval.score import available_scores

    meta = json.loads((task / "task_metadata.json").read_text())
    vocab = [l.split(",", 1)[1] for l in (task / "labelvocabulary.csv").read_text().splitlines()[1:] if l]
    label_to_idx = {l: i for i, l in enumerate(vocab)}
    splits = {s: json.loads((task / f"{s}.json").read_text()) for s in meta["splits"]}
    emb = {s: _embed(task, s, splits[s], meta, model) for s in meta["splits"]}
    event = meta["embedding_type"] == "event"
    multilabel = meta["prediction_type"] == "multilabel"

    def rows(split):
        xs, ys, keys = [], [], []
        for name, e, ts in emb[split]:
            labels = splits[split][name]
            if not event:
                y = np.zeros(len(vocab))
                y[[label_to_idx[str(l)] for l in labels]] = 1
                xs.append(e), ys.append(y), keys.append((name, None))
                continue
            for frame, t in zip(e, ts):
                y = np.zeros(len(vocab))
                for ev in labels:
                    if ev["start"] <= t <= ev["end"] + 1e-4:
                        y[label_to_idx[ev["label"]]] = 1
                xs.append(frame), ys.append(y), keys.append((name, float(t)))
        return np.array(xs), np.array(ys), keys

    if meta["split_mode"] == "trainvaltest":
        plans = [(["train", "valid"], "test")]
    else:
        plans = [([f for f in meta["splits"] if f != test], test) for test in meta["splits"]]
    results: dict[str, list[float]] = {}
    for train_splits, test_split in plans:
        parts = [rows(s) for s in train_splits]
        xtr = np.concatenate([p[0] for p in parts])
        ytr = np.concatenate([p[1] for p in parts])
        xte, yte, keys = rows(test_split)
        probs = _fit_predict(xtr, ytr, xte, multilabel or event)
        for metric in meta["evaluation"]:
            fn = available_scores[metric](label_to_idx=label_to_idx)
            if event:
                import torch
                from heareval.predictions.task_predictions import get_events_for_all_files

                post = (("median_filter_ms", 250), ("min_duration", 125))
                predicted = get_events_for_all_files(
                    torch.tensor(probs), [k[0] for k in keys], torch.tensor([k[1] for k in keys]),
                    {i: l for l, i in label_to_idx.items()}, {}, post)[post]
                value = fn(predicted, {n: splits[test_split][n] for n in splits[test_split]})
            else:
                value = fn(probs, yte)
            value = value[0][1] if isinstance(value, tuple) else value
            results.setdefault(metric, []).append(float(value))
    return {m: float(np.mean(v)) for m, v in results.items()}


def chance_level(task: Path) -> dict[str, float]:
    """What guessing the training set's most frequent class (or label rates) would score, roughly."""
    meta = json.loads((task / "task_metadata.json").read_text())
    vocab_size = len((task / "labelvocabulary.csv").read_text().splitlines()) - 1
    out = {}
    for m in meta["evaluation"]:
        if m in ("top1_acc", "pitch_acc"):
            out[m] = 1 / vocab_size
        elif m == "chroma_acc":
            out[m] = 1 / min(12, vocab_size)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    from hear_modules import logmel

    model = logmel.load_model()
    from hearscan.tasks.cli import find_task_dirs

    all_scores = {}
    for task in find_task_dirs(args.tasks):
        scores = score_task(task, model)
        all_scores[task.name] = scores
        chance = chance_level(task)
        text = ", ".join(f"{m} {v:.3f}" + (f" (chance {chance[m]:.3f})" if m in chance else "")
                         for m, v in scores.items())
        print(f"{task.name:40s} {text}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(all_scores, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
