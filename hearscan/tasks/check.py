"""`hearscan tasks check`: find what would make heareval fail (or quietly mis-score) on a task directory.

Works on any HEAR 2021 task directory, ours or a downloaded one.  Each problem is a `Defect` naming the
file, what is wrong and what to do.  Kinds:

    metadata      task_metadata.json missing, not JSON, a key missing or of the wrong type, a bad
                  split_mode / embedding_type / prediction_type / metric, folds inconsistent with nfolds
    vocabulary    labelvocabulary.csv missing, bad header, idx not 0..n-1, duplicate labels
    split_file    a <split>.json missing, not JSON, not a {file: labels} mapping, or empty
    labels        a label not in the vocabulary, a scene clip without labels, a multiclass clip with
                  several labels, an event without label/start/end or with end < start
    audio         a wav listed but missing or unreadable, wrong sample rate, not mono, wrong duration,
                  non-finite, or a wav on disk that no split lists; a silent clip is only a warning (silence
                  is valid input for every module and for `hearscan extract`)
    sample_rate   no 16000/ folder for the task
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from formats.taskdir import EMBEDDING_TYPES, METRICS, PREDICTION_TYPES, SAMPLE_RATE, SPLIT_MODES, wav_truncation

REQUIRED_KEYS = {
    "task_name": str,
    "version": str,
    "embedding_type": str,
    "prediction_type": str,
    "split_mode": str,
    "sample_duration": (int, float, type(None)),
    "evaluation": list,
    "splits": list,
}
# a clip whose length differs from sample_duration by more than this many samples is a defect
DURATION_TOLERANCE = 1


@dataclass(frozen=True)
class Defect:
    kind: str
    path: str
    message: str
    fix: str
    warning: bool = False  # worth a look, but valid input (a silent clip): `tasks check` still passes

    def __str__(self) -> str:
        return f"[{self.kind}{' warning' if self.warning else ''}] {self.path}: {self.message} -> {self.fix}"


def _load_json(path: Path, kind: str, defects: list[Defect], what: str):
    if not path.is_file():
        defects.append(Defect(kind, str(path), "missing", f"write {path.name} ({what})"))
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        defects.append(Defect(kind, str(path), f"not valid JSON ({err})", f"rewrite {path.name} as JSON ({what})"))
        return None


def _check_metadata(task: Path, defects: list[Defect]) -> dict | None:
    path = task / "task_metadata.json"
    meta = _load_json(path, "metadata", defects, "the task's metadata")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        defects.append(Defect("metadata", str(path), "is not a JSON object", "write a JSON object with "
                              + ", ".join(REQUIRED_KEYS)))
        return None
    bad = False
    for key, typ in REQUIRED_KEYS.items():
        if key not in meta:
            defects.append(Defect("metadata", str(path), f"key {key!r} missing", f"add {key!r}"))
            bad = True
        elif not isinstance(meta[key], typ) or isinstance(meta[key], bool):
            defects.append(Defect("metadata", str(path), f"{key!r} has the wrong type ({type(meta[key]).__name__})",
                                  f"make {key!r} a {getattr(typ, '__name__', 'number or null')}"))
            bad = True
    choices = {"embedding_type": EMBEDDING_TYPES, "prediction_type": PREDICTION_TYPES, "split_mode": SPLIT_MODES}
    for key, valid in choices.items():
        if isinstance(meta.get(key), str) and meta[key] not in valid:
            defects.append(Defect("metadata", str(path), f"{key} {meta[key]!r} is not valid",
                                  f"use one of {', '.join(valid)}"))
            bad = True
    duration = meta.get("sample_duration")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) and not duration > 0:
        defects.append(Defect("metadata", str(path), f"sample_duration {duration} is not positive",
                              "give the clip length in seconds, or null for variable-length clips"))
        bad = True
    evaluation = meta.get("evaluation")
    if isinstance(evaluation, list):
        if not evaluation:
            defects.append(Defect("metadata", str(path), "evaluation is empty", "list at least one metric"))
        for metric in evaluation:
            if metric not in METRICS:
                defects.append(Defect("metadata", str(path), f"unknown metric {metric!r}",
                                      f"use heareval's: {', '.join(METRICS)}"))
            elif meta.get("embedding_type") in EMBEDDING_TYPES and meta["embedding_type"] not in METRICS[metric]:
                defects.append(Defect("metadata", str(path),
                                      f"metric {metric!r} does not apply to {meta['embedding_type']} tasks",
                                      "pick a metric for this embedding_type"))
    splits = meta.get("splits")
    if isinstance(splits, list):
        if not splits or not all(isinstance(s, str) and s for s in splits):
            defects.append(Defect("metadata", str(path), "splits must be a non-empty list of names",
                                  "list the split names, e.g. [\"train\", \"valid\", \"test\"]"))
            bad = True
        elif len(set(splits)) != len(splits):
            defects.append(Defect("metadata", str(path), f"duplicate split names {splits}", "list each split once"))
        elif meta.get("split_mode") == "trainvaltest" and sorted(splits) != ["test", "train", "valid"]:
            defects.append(Defect("metadata", str(path), f"trainvaltest needs splits train, valid, test; got {splits}",
                                  "rename the splits or change split_mode to a k-fold mode"))
        elif meta.get("split_mode") in ("presplit_kfold", "new_split_kfold"):
            if len(splits) < 3:
                defects.append(Defect("metadata", str(path), f"{len(splits)} folds; heareval needs at least 3 "
                                      "(test, valid, train)", "add folds"))
            nfolds = meta.get("nfolds")
            if nfolds is not None and nfolds != len(splits):
                defects.append(Defect("metadata", str(path), f"nfolds is {nfolds} but {len(splits)} splits are listed",
                                      "make nfolds equal the number of folds"))
    return None if bad else meta


def _check_vocabulary(task: Path, defects: list[Defect]) -> list[str] | None:
    path = task / "labelvocabulary.csv"
    if not path.is_file():
        defects.append(Defect("vocabulary", str(path), "missing", "write labelvocabulary.csv with header idx,label"))
        return None
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    if not lines or [c.strip() for c in lines[0].split(",")] != ["idx", "label"]:
        defects.append(Defect("vocabulary", str(path), f"header is {lines[0] if lines else '(empty)'!r}",
                              "the first line must be idx,label"))
        return None
    labels, idxs = [], []
    for n, line in enumerate(lines[1:], start=2):
        idx, sep, label = line.partition(",")
        label = label.strip()
        if not sep or not label or not idx.strip().lstrip("-").isdigit():
            defects.append(Defect("vocabulary", f"{path}:{n}", f"malformed row {line!r}", "write rows as <idx>,<label>"))
            return None
        idxs.append(int(idx))
        labels.append(label)
    if not labels:
        defects.append(Defect("vocabulary", str(path), "no labels", "list every label, one per row"))
        return None
    if sorted(idxs) != list(range(len(idxs))):
        defects.append(Defect("vocabulary", str(path), "idx values are not 0..n-1", "number the labels 0..n-1"))
    dups = sorted({l for l in labels if labels.count(l) > 1})
    if dups:
        defects.append(Defect("vocabulary", str(path), f"duplicate labels {dups}", "list each label once"))
    return labels


def _check_labels(path: Path, name: str, entry, meta: dict, vocab: set[str] | None, defects: list[Defect]) -> None:
    where = f"{path} [{name}]"
    if not isinstance(entry, list):
        defects.append(Defect("labels", where, f"labels are a {type(entry).__name__}, not a list",
                              "give each file a list of labels (scene) or of events (event)"))
        return
    event = meta["embedding_type"] == "event"
    if event:
        for e in entry:
            if not isinstance(e, dict) or not {"label", "start", "end"} <= set(e):
                defects.append(Defect("labels", where, f"event {e!r} lacks label/start/end",
                                      "write events as {\"label\": ..., \"start\": ms, \"end\": ms}"))
                continue
            ok = all(isinstance(e[k], (int, float)) and not isinstance(e[k], bool) and math.isfinite(e[k])
                     for k in ("start", "end"))
            if not ok or e["start"] < 0 or e["end"] < e["start"]:
                defects.append(Defect("labels", where, f"event times start={e['start']!r} end={e['end']!r} invalid",
                                      "start and end are milliseconds with 0 <= start <= end"))
            if vocab is not None and str(e["label"]) not in vocab:
                defects.append(Defect("labels", where, f"label {e['label']!r} is not in labelvocabulary.csv",
                                      "add it to the vocabulary or fix the label"))
        return
    if not entry:
        defects.append(Defect("labels", where, "no labels", "give every scene clip at least one label"))
    if meta["prediction_type"] == "multiclass" and len(entry) > 1:
        defects.append(Defect("labels", where, f"{len(entry)} labels in a multiclass task",
                              "give one label per clip, or make the task multilabel"))
    for label in entry:
        if not isinstance(label, (str, int)) or (vocab is not None and str(label) not in vocab):
            defects.append(Defect("labels", where, f"label {label!r} is not in labelvocabulary.csv",
                                  "add it to the vocabulary or fix the label"))


def _check_audio(wav: Path, meta: dict, defects: list[Defect]) -> None:
    if not wav.is_file():
        defects.append(Defect("audio", str(wav), "listed in the split file but missing",
                              "restore the file or remove its entry from the split json"))
        return
    try:
        info = sf.info(str(wav))
        data, _ = sf.read(str(wav), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt files
        defects.append(Defect("audio", str(wav), f"unreadable ({err})", "re-create the file (16-bit PCM wav)"))
        return
    if info.samplerate != SAMPLE_RATE:
        defects.append(Defect("audio", str(wav), f"sample rate {info.samplerate} Hz in the {SAMPLE_RATE}/ folder",
                              f"resample to {SAMPLE_RATE} Hz"))
    if info.channels != 1:
        defects.append(Defect("audio", str(wav), f"{info.channels} channels", "mix down to mono"))
    if data.shape[0] == 0:
        defects.append(Defect("audio", str(wav), "no samples", "re-create the file"))
        return
    cut = wav_truncation(wav)
    if cut:
        defects.append(Defect("audio", str(wav), f"truncated: the header declares {cut[0]} bytes of audio, the "
                              f"file holds {cut[1]}", "restore or re-export the file (it is corrupt, not short)"))
        return
    duration = meta.get("sample_duration")
    if isinstance(duration, (int, float)) and duration > 0:
        want = round(duration * info.samplerate)
        if abs(data.shape[0] - want) > DURATION_TOLERANCE:
            defects.append(Defect("audio", str(wav), f"{data.shape[0] / info.samplerate:.3f} s, the task says "
                                  f"sample_duration {duration} s",
                                  "trim or pad every clip to sample_duration (or set it to null)"))
    import numpy as np

    if not np.all(np.isfinite(data)):
        defects.append(Defect("audio", str(wav), "contains NaN or inf", "re-create the file"))
    elif not np.any(data):
        defects.append(Defect("audio", str(wav), "all zeros (silent)",
                              "check the source clip (silence is valid input; this is only a warning)", warning=True))


def check_task_dir(path: Path | str) -> list[Defect]:
    """Every defect found in one HEAR task directory (an empty list means it is usable)."""
    task = Path(path)
    if not task.is_dir():
        return [Defect("metadata", str(task), "not a directory", "pass a task directory (it holds task_metadata.json)")]
    defects: list[Defect] = []
    meta = _check_metadata(task, defects)
    vocab = _check_vocabulary(task, defects)
    if meta is None:
        return defects
    audio_root = task / str(SAMPLE_RATE)
    if not audio_root.is_dir():
        defects.append(Defect("sample_rate", str(audio_root), f"no {SAMPLE_RATE} Hz audio folder",
                              f"resample the audio into {SAMPLE_RATE}/<split>/ (hearscan modules run at 16 kHz)"))
    vocab_set = set(vocab) if vocab is not None else None
    for split in meta["splits"]:
        split_path = task / f"{split}.json"
        entries = _load_json(split_path, "split_file", defects, "{file: labels} for this split")
        if entries is None:
            continue
        if not isinstance(entries, dict):
            defects.append(Defect("split_file", str(split_path), "is not a {file: labels} object",
                                  "write a JSON object mapping each wav name to its labels"))
            continue
        if not entries:
            defects.append(Defect("split_file", str(split_path), "empty split", "put clips in every split"))
            continue
        for name in sorted(entries):
            _check_labels(split_path, name, entries[name], meta, vocab_set, defects)
            if audio_root.is_dir():
                _check_audio(audio_root / split / name, meta, defects)
        listed = set(entries)
        split_dir = audio_root / split
        if split_dir.is_dir():
            for extra in sorted(p.name for p in split_dir.iterdir() if p.name not in listed):
                defects.append(Defect("audio", str(split_dir / extra), "on disk but not listed in "
                                      f"{split}.json", "list it in the split file or delete it"))
    return defects

