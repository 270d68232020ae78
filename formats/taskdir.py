"""A HEAR task directory (heareval's on-disk input format): reading it with checks, and writing it atomically.

    <task_name>-<version>-<mode>/
        task_metadata.json      task_name, version, embedding_type, prediction_type, split_mode,
                                sample_duration (s or null), evaluation, splits, [nfolds, mode, ...]
        labelvocabulary.csv     header ``idx,label``
        <split>.json            scene: {"a.wav": ["label", ...]}
                                event: {"a.wav": [{"label": "x", "start": ms, "end": ms}, ...]}
        <sample rate>/<split>/*.wav

Reading (`find_tasks`, `read_task`, `audio_dir`, `probe_wav`, `read_wav`) checks everything and names the
file and the fix.  `TaskWriter` builds a task into a hidden temporary directory beside the final one and
renames it into place only once every file is written, so an interrupted build never leaves a directory
that looks complete; what it writes is byte-deterministic (wavs are 16-bit PCM quantised in numpy without
dither, json with sorted keys, listings sorted).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from hearscan_core.errors import AudioInputError, UserFacingError
from hearscan_core.files import publish_dir

SAMPLE_RATE = 16000  # the rate the task builders write (hearscan's modules all take 16 kHz)
SPLIT_MODES = ("trainvaltest", "presplit_kfold", "new_split_kfold")
EMBEDDING_TYPES = ("scene", "event")
PREDICTION_TYPES = ("multiclass", "multilabel")
TRAINVALTEST_SPLITS = ["train", "valid", "test"]


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


def wav_truncation(path: Path) -> tuple[int, int] | None:
    """(bytes of audio the header declares, bytes the file holds) for a RIFF/WAVE file whose data chunk is
    cut short; None when it is whole or not a WAV (libsndfile reads what is there and says nothing)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            size = os.fstat(f.fileno()).st_size
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                declared = int.from_bytes(chunk[4:], "little")
                if chunk[:4] == b"data":
                    held = size - f.tell()
                    # 0xFFFFFFFF (and 0): a streaming writer that never knew the size
                    return (declared, held) if 0 < declared < 0xFFFFFFF0 and held < declared else None
                f.seek(declared + (declared & 1), os.SEEK_CUR)
    except OSError:
        return None


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
    cut = wav_truncation(path)
    if cut:
        raise AudioInputError(
            f"{path} is truncated: its header declares {cut[0]} bytes of audio but the file holds {cut[1]}; "
            "restore or re-export it, or pass --skip-bad to leave it out"
        )
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


# --- writing ---------------------------------------------------------------------------------------------

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
        publish_dir(self.tmp, self.path)


def is_complete(out_root: Path | str, metadata: dict) -> bool:
    """A published task directory exists (publication is a rename, so existence means complete)."""
    return (Path(out_root) / task_dir_name({"mode": "full", **metadata}) / "task_metadata.json").is_file()
