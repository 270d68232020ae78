"""Embedding directories with a known, learnable structure, written in heareval's format.

For tests and `hearscan bench probe`: each label owns a random direction in embedding space; an
example's embedding is the sum of its labels' directions times `separation`, plus unit Gaussian noise.
Scene tasks label clips; event tasks label 20 ms frames of clips that hold a few labelled segments, with
the reference events in `<split>.json` (milliseconds), as heareval's embeddings runner writes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from formats.embeddings import write_split, write_task_files

HOP_MS = 20.0


def write_synthetic_task(
    root: str | Path,
    name: str,
    module: str = "synthetic",
    embedding_type: str = "scene",
    prediction_type: str = "multiclass",
    split_mode: str = "trainvaltest",
    n_per_split: int = 60,
    n_folds: int = 5,
    n_labels: int = 4,
    dim: int = 32,
    separation: float = 1.0,
    clip_s: float = 2.0,
    evaluation: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write `root/<module>/<name>/` and return it.  `n_per_split` = clips per split (or fold)."""
    rng = np.random.default_rng(seed)
    labels = [f"label{i}" for i in range(n_labels)]
    directions = rng.standard_normal((n_labels, dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True) / np.sqrt(dim) * 4.0
    splits = ["train", "valid", "test"] if split_mode == "trainvaltest" else [f"fold{i:02d}" for i in range(n_folds)]
    if evaluation is None:
        if embedding_type == "event":
            evaluation = ["event_onset_200ms_fms", "segment_1s_er"]
        elif prediction_type == "multiclass":
            evaluation = ["top1_acc"]
        else:
            evaluation = ["mAP", "d_prime", "aucroc"]
    task_dir = Path(root) / module / name
    targets: dict[str, dict] = {}
    for split in splits:
        if embedding_type == "scene":
            x, rows, target = _scene_split(rng, split, n_per_split, labels, directions, prediction_type, separation)
            write_split(task_dir, split, x, rows)
        else:
            x, rows, ft, target = _event_split(rng, split, n_per_split, labels, directions, separation, clip_s)
            write_split(task_dir, split, x, rows, ft)
        targets[split] = target
    metadata = {
        "task_name": name,
        "version": "synthetic",
        "embedding_type": embedding_type,
        "prediction_type": prediction_type,
        "split_mode": split_mode,
        "sample_duration": clip_s,
        "evaluation": evaluation,
        "splits": splits,
    }
    if split_mode != "trainvaltest":
        metadata["nfolds"] = n_folds
    write_task_files(task_dir, metadata, labels, targets)
    return task_dir


def _scene_split(rng, split, n, labels, directions, prediction_type, separation):
    rows, target = [], {}
    x = rng.standard_normal((n, directions.shape[1])).astype(np.float32)
    for i in range(n):
        if prediction_type == "multiclass":
            chosen = [int(rng.integers(len(labels)))]
        else:
            chosen = [j for j in range(len(labels)) if rng.random() < 0.35]
        x[i] += separation * directions[chosen].sum(axis=0) if chosen else 0.0
        names = [labels[j] for j in chosen]
        rows.append(names)
        target[f"{split}_{i:04d}.wav"] = names
    return x, rows, target


def _event_split(rng, split, n_clips, labels, directions, separation, clip_s):
    n_frames = int(clip_s * 1000 / HOP_MS)
    stamps = np.arange(n_frames) * HOP_MS
    xs, rows, ft, target = [], [], [], {}
    for c in range(n_clips):
        fname = f"{split}_{c:04d}.wav"
        active = np.zeros((n_frames, len(labels)), dtype=bool)
        events = []
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(len(labels)))
            length = float(rng.uniform(0.2, 0.6)) * clip_s
            start = float(rng.uniform(0, clip_s - length)) * 1000
            end = start + length * 1000
            active[:, j] |= (stamps >= start) & (stamps <= end)
            events.append({"label": labels[j], "start": round(start, 3), "end": round(end, 3)})
        x = rng.standard_normal((n_frames, directions.shape[1])).astype(np.float32)
        x += separation * active.astype(np.float32) @ directions
        xs.append(x)
        rows.extend([[labels[j] for j in np.where(a)[0]] for a in active])
        ft.extend((fname, float(t)) for t in stamps)
        target[fname] = sorted(events, key=lambda e: e["start"])
    return np.concatenate(xs), rows, ft, target
