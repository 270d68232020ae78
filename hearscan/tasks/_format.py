"""The HEAR 2021 task-directory format, written atomically.

A task directory (what heareval's runners read) is

    <task_name>-<version>-<mode>/
        task_metadata.json      task_name, version, embedding_type, prediction_type, split_mode,
                                sample_duration (s or null), evaluation, splits, [nfolds, mode, ...]
        labelvocabulary.csv     header ``idx,label``
        <split>.json            scene: {"a.wav": ["label", ...]}
                                event: {"a.wav": [{"label": "x", "start": ms, "end": ms}, ...]}
        16000/<split>/*.wav

`TaskWriter` builds one into a hidden temporary directory beside the final one and renames it into place
only once every file is written, so an interrupted build never leaves a directory that looks complete.
Everything it writes is byte-deterministic: wavs are 16-bit PCM quantised in numpy (no dither), json is
written with sorted keys, and listings are sorted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
SPLIT_MODES = ("trainvaltest", "presplit_kfold", "new_split_kfold")
EMBEDDING_TYPES = ("scene", "event")
PREDICTION_TYPES = ("multiclass", "multilabel")
TRAINVALTEST_SPLITS = ["train", "valid", "test"]
# name -> (scene, event): which embedding types a metric applies to (heareval/score.py)
METRICS = {
    "top1_acc": ("scene",),
    "pitch_acc": ("scene",),
    "chroma_acc": ("scene",),
    "mAP": ("scene",),
    "d_prime": ("scene",),
    "aucroc": ("scene",),
    "event_onset_200ms_fms": ("event",),
    "event_onset_50ms_fms": ("event",),
    "event_onset_offset_50ms_20perc_fms": ("event",),
    "segment_1s_er": ("event",),
}


def fold_names(nfolds: int) -> list[str]:
    return [f"fold{i:02d}" for i in range(nfolds)]


def task_dir_name(metadata: dict) -> str:
    return f"{metadata['task_name']}-{metadata['version']}-{metadata.get('mode', 'full')}"


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float waveform in [-1, 1] -> int16, rounded (not dithered) so the same input gives the same bytes."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
        raise ValueError("waveform contains NaN or inf")
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    sf.write(str(path), to_pcm16(audio), sample_rate, subtype="PCM_16", format="WAV")


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


class TaskWriter:
    """Collects clips split by split and publishes the task directory atomically.

    Usage::

        with TaskWriter(out_root, metadata, vocabulary) as tw:
            tw.add("train", "a.wav", audio, ["dog"])
        # tw.path now exists; on an exception nothing is left behind.
    """

    def __init__(self, out_root: Path | str, metadata: dict, vocabulary: list[str]):
        self.metadata = dict(metadata)
        self.metadata.setdefault("mode", "full")
        self.vocabulary = list(vocabulary)
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError(f"{metadata['task_name']}: duplicate labels in the vocabulary")
        self.out_root = Path(out_root)
        self.path = self.out_root / task_dir_name(self.metadata)
        self.tmp = self.out_root / f".{self.path.name}.partial"
        self.labels: dict[str, dict] = {s: {} for s in self.metadata["splits"]}

    def __enter__(self) -> "TaskWriter":
        self.out_root.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():  # left over from an interrupted build
            shutil.rmtree(self.tmp)
        for split in self.labels:
            (self.tmp / str(SAMPLE_RATE) / split).mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._publish()
        elif self.tmp.exists():
            shutil.rmtree(self.tmp)

    def add(self, split: str, filename: str, audio: np.ndarray, labels: list) -> None:
        if split not in self.labels:
            raise KeyError(f"unknown split {split!r}; this task has {list(self.labels)}")
        if filename in self.labels[split]:
            raise ValueError(f"{split}/{filename} added twice")
        for label in labels:
            name = label["label"] if isinstance(label, dict) else label
            if name not in self.vocabulary:
                raise ValueError(f"{filename}: label {name!r} is not in the vocabulary")
        if self.metadata["embedding_type"] == "scene" and not labels:
            raise ValueError(f"{filename}: a scene clip needs at least one label")
        duration = self.metadata.get("sample_duration")
        if duration is not None and len(audio) != round(duration * SAMPLE_RATE):
            raise ValueError(f"{filename}: {len(audio)} samples, the task says {duration} s")
        write_wav(self.tmp / str(SAMPLE_RATE) / split / filename, audio)
        self.labels[split][filename] = labels

    def _publish(self) -> None:
        for split, entries in self.labels.items():
            if not entries:
                raise ValueError(f"{self.metadata['task_name']}: split {split} is empty")
            write_json(self.tmp / f"{split}.json", entries)
        write_json(self.tmp / "task_metadata.json", self.metadata)
        lines = ["idx,label"] + [f"{i},{label}" for i, label in enumerate(self.vocabulary)]
        (self.tmp / "labelvocabulary.csv").write_text("\n".join(lines) + "\n")
        if self.path.exists():
            shutil.rmtree(self.path)
        os.rename(self.tmp, self.path)


def is_complete(out_root: Path | str, metadata: dict) -> bool:
    """A published task directory exists (publication is a rename, so existence means complete)."""
    return (Path(out_root) / task_dir_name({"mode": "full", **metadata}) / "task_metadata.json").is_file()
