"""A tiny writer of HEAR task directories made of real .wav files, for the compat tests.

Independent of `hearscan.tasks` on purpose: the compat layer's tests must stand on their own.  The
layout is the one heareval reads (see the HEAR task format):

    <name>-<version>-full/task_metadata.json, labelvocabulary.csv, <split>.json, 16000/<split>/*.wav

Sounds are deterministic numpy signals (tones per class over a little noise) written with soundfile, so
a linear probe on log-mel features can learn them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
# Three well separated tones: one per class (scene tasks) or per event label.
TONES = {"low": 330.0, "mid": 990.0, "high": 2970.0}


def _tone(freq: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    return 0.4 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))


def _write_common(task_dir: Path, metadata: dict, labels: list[str]) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "task_metadata.json").write_text(json.dumps(metadata, indent=2))
    vocab = "idx,label\n" + "".join(f"{i},{lab}\n" for i, lab in enumerate(labels))
    (task_dir / "labelvocabulary.csv").write_text(vocab)


def write_scene_task(
    root: Path,
    name: str,
    splits: dict[str, int],
    split_mode: str = "trainvaltest",
    duration: float = 1.0,
    evaluation: tuple[str, ...] = ("top1_acc",),
    seed: int = 0,
) -> Path:
    """A multiclass scene task: `splits` maps split name -> clips per class (classes cycle over TONES)."""
    rng = np.random.default_rng(seed)
    labels = list(TONES)
    task_dir = Path(root) / f"{name}-v1.0.0-full"
    n = int(round(duration * SR))
    for split, per_class in splits.items():
        audio_dir = task_dir / str(SR) / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        targets = {}
        for label in labels:
            for i in range(per_class):
                fname = f"{split}_{label}_{i}.wav"
                wave = _tone(TONES[label], n, rng) + 0.05 * rng.standard_normal(n)
                sf.write(audio_dir / fname, wave.astype(np.float32), SR, subtype="PCM_16")
                targets[fname] = [label]
        (task_dir / f"{split}.json").write_text(json.dumps(targets, indent=2))
    metadata = {
        "task_name": name,
        "version": "v1.0.0",
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": split_mode,
        "sample_duration": duration,
        "evaluation": list(evaluation),
        "splits": list(splits),
        "mode": "full",
        "sample_rate": SR,
    }
    if split_mode != "trainvaltest":
        metadata["nfolds"] = len(splits)
    _write_common(task_dir, metadata, labels)
    return task_dir


def write_event_task(
    root: Path,
    name: str,
    splits: dict[str, int],
    duration: float = 2.0,
    seed: int = 0,
) -> Path:
    """A multilabel event task: `splits` maps split name -> number of clips; each clip holds two or
    three tone events (labels from TONES, possibly overlapping) at random times over a noise floor."""
    rng = np.random.default_rng(seed)
    labels = list(TONES)
    task_dir = Path(root) / f"{name}-v1.0.0-full"
    n = int(round(duration * SR))
    for split, count in splits.items():
        audio_dir = task_dir / str(SR) / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        targets = {}
        for i in range(count):
            wave = 0.02 * rng.standard_normal(n)
            events = []
            for _ in range(int(rng.integers(2, 4))):
                label = labels[int(rng.integers(len(labels)))]
                length = float(rng.uniform(0.3, 0.7))
                start = float(rng.uniform(0.0, duration - length))
                a, b = int(start * SR), int((start + length) * SR)
                wave[a:b] += _tone(TONES[label], b - a, rng)
                events.append({"label": label, "start": round(start * 1000, 3), "end": round((start + length) * 1000, 3)})
            fname = f"{split}_{i}.wav"
            sf.write(audio_dir / fname, np.clip(wave, -1, 1).astype(np.float32), SR, subtype="PCM_16")
            targets[fname] = sorted(events, key=lambda e: e["start"])
        (task_dir / f"{split}.json").write_text(json.dumps(targets, indent=2))
    metadata = {
        "task_name": name,
        "version": "v1.0.0",
        "embedding_type": "event",
        "prediction_type": "multilabel",
        "split_mode": "trainvaltest",
        "sample_duration": duration,
        "evaluation": ["event_onset_200ms_fms", "segment_1s_er"],
        "splits": list(splits),
        "mode": "full",
        "sample_rate": SR,
    }
    _write_common(task_dir, metadata, labels)
    return task_dir


def write_tiny_suite(root: Path) -> dict[str, Path]:
    """The three tasks of the end-to-end test: scene trainvaltest, 3-fold scene, event."""
    root = Path(root)
    return {
        "scene": write_scene_task(root, "tiny_scene", {"train": 6, "valid": 3, "test": 3}),
        "folds": write_scene_task(
            root, "tiny_folds", {"fold00": 3, "fold01": 3, "fold02": 3},
            split_mode="presplit_kfold", evaluation=("top1_acc", "mAP"), seed=1,
        ),
        "event": write_event_task(root, "tiny_event", {"train": 6, "valid": 3, "test": 3}, seed=2),
    }
