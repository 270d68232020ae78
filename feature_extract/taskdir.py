"""Reading HEAR task directories: metadata, splits, labels and audio, with checks that name the fix.

A task directory (heareval's on-disk format) holds `task_metadata.json`, `labelvocabulary.csv`,
`<split>.json` per split and `<sample rate>/<split>/*.wav`.  Everything here is read-only.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from hearscan.errors import AudioInputError, UserFacingError

SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)


@dataclass
class Task:
    path: Path
    metadata: dict
    vocabulary: list[str]
    splits: dict[str, dict] = field(default_factory=dict)  # split -> {filename: labels}

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_event(self) -> bool:
        return self.metadata["embedding_type"] == "event"


def find_tasks(tasks_dir: Path) -> list[Path]:
    """Task directories directly under `tasks_dir` (or `tasks_dir` itself), sorted by name."""
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise UserFacingError(f"tasks directory not found: {tasks_dir}")
    if (tasks_dir / "task_metadata.json").is_file():
        return [tasks_dir]
    tasks = sorted(p for p in tasks_dir.iterdir() if (p / "task_metadata.json").is_file())
    if not tasks:
        raise UserFacingError(
            f"no HEAR task directories (folders with task_metadata.json) in {tasks_dir}; "
            "build some with `hearscan tasks build OUT --suite mini` or point at a HEAR download"
        )
    return tasks


def read_task(path: Path) -> Task:
    path = Path(path)
    meta_path = path / "task_metadata.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserFacingError(f"cannot read {meta_path}: {err}; run `hearscan tasks check {path}`") from err
    for key in ("embedding_type", "prediction_type", "splits", "sample_duration"):
        if key not in metadata:
            raise UserFacingError(f"{meta_path} has no {key!r}; run `hearscan tasks check {path}`")
    vocab_path = path / "labelvocabulary.csv"
    try:
        with vocab_path.open() as f:
            vocabulary = [row["label"] for row in csv.DictReader(f)]
    except (OSError, KeyError) as err:
        raise UserFacingError(f"cannot read {vocab_path} (header idx,label expected): {err}") from err
    task = Task(path, metadata, vocabulary)
    known = set(vocabulary)
    for split in metadata["splits"]:
        split_path = path / f"{split}.json"
        try:
            data = json.loads(split_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserFacingError(f"cannot read {split_path}: {err}; run `hearscan tasks check {path}`") from err
        if not data:
            raise UserFacingError(f"split {split} of task {task.name} is empty ({split_path})")
        for filename, labels in data.items():
            names = [e["label"] for e in labels] if task.is_event else labels
            unknown = [n for n in names if n not in known]
            if unknown:
                raise UserFacingError(
                    f"{split_path}: {filename} has labels {unknown} that are not in {vocab_path}; "
                    "add them to the vocabulary or fix the labels"
                )
            if metadata["prediction_type"] == "multiclass" and not task.is_event and len(labels) != 1:
                raise UserFacingError(f"{split_path}: {filename} has {len(labels)} labels in a multiclass task")
        task.splits[split] = data
    return task


def audio_dir(task: Task, sample_rate: int) -> Path:
    """`<task>/<sample_rate>/`, or an error naming the rates that are present."""
    folder = task.path / str(sample_rate)
    if not folder.is_dir():
        present = sorted(p.name for p in task.path.iterdir() if p.is_dir() and p.name.isdigit())
        raise UserFacingError(
            f"task {task.name} has no {sample_rate} Hz audio folder ({folder}); rates present: "
            f"{', '.join(present) or 'none'}. The module needs {sample_rate} Hz: resample the task "
            f"(e.g. heareval's preprocessing or `sox in.wav -r {sample_rate} out.wav`) into {folder}"
        )
    return folder


def probe_wav(path: Path, sample_rate: int) -> int:
    """Check a wav's header and return its length in samples; errors name the file and the fix."""
    if not path.is_file():
        raise AudioInputError(f"missing audio file {path}: restore it, or pass --skip-bad to leave it out")
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises RuntimeError/LibsndfileError on corrupt files
        raise AudioInputError(
            f"unreadable audio file {path} ({err}); re-export it as 16-bit PCM wav, or pass --skip-bad"
        ) from err
    if info.samplerate != sample_rate:
        raise AudioInputError(
            f"{path} is {info.samplerate} Hz but sits in the {sample_rate} Hz folder; resample it "
            f"(`sox in.wav -r {sample_rate} out.wav`) or pass --skip-bad"
        )
    if info.channels != 1:
        raise AudioInputError(
            f"{path} has {info.channels} channels; HEAR tasks are mono: mix it down "
            "(`sox in.wav -c 1 out.wav`) or pass --skip-bad"
        )
    if info.frames == 0:
        raise AudioInputError(f"{path} is empty (0 samples); replace it or pass --skip-bad")
    return int(info.frames)


def read_wav(path: Path, sample_rate: int) -> np.ndarray:
    """Read a mono float32 wav, checking what `probe_wav` checks plus NaN/Inf samples."""
    probe_wav(path, sample_rate)
    try:
        audio, _ = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as err:
        raise AudioInputError(f"unreadable audio file {path} ({err}); re-export it, or pass --skip-bad") from err
    if not np.isfinite(audio).all():
        raise AudioInputError(f"{path} contains NaN or Inf samples; re-export it, or pass --skip-bad")
    return audio
