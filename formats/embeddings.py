"""heareval's on-disk embedding format for one task: reading it with checks, and writing it.

A task's embedding directory (`E/<module>/<task>/`, written by heareval's embeddings runner or by
`hearscan extract`) holds, per split named in `task_metadata.json`:

    <split>.embeddings.npy              raw float32 memmap, no .npy header, shape from the next file
    <split>.embedding-dimensions.json   [n, dim]
    <split>.target-labels.pkl           n lists of labels (per clip; per frame for event tasks)
    <split>.filename-timestamps.json    event tasks: n [filename, timestamp_ms] pairs
    <split>.json                        copy of the task's targets (event tasks: the reference events)

plus copies of `task_metadata.json` and `labelvocabulary.csv`, and when finished `.done.embeddings`
(`hearscan extract` adds `hearscan-manifest.json`: what made the embeddings).  Rows are in heareval's
order: each split's files shuffled by one `Random(0)` per task (`heareval_file_order`); event tasks have one
row per timestamp, labelled with the events active at it (`labels_for_timestamps`).  heareval checks these
files with bare asserts (or not at all); here every defect is a UserFacingError naming the task and the file.

Per-seed views (`make_seed_view`): heareval's predictions runner writes its outputs into the embedding task
folder itself, so several seeds need several folders; a view is a folder of symbolic links to the embedding
files (nothing copied), so each seed's outputs stay apart.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from intervaltree import IntervalTree

from formats.taskdir import SPLIT_MODES
from hearscan_core.errors import DiskFullError, UserFacingError
from hearscan_core.files import atomic_write, temp_sibling

DONE = ".done.embeddings"  # a finished embeddings task folder carries it (heareval's runner writes it too)
MANIFEST = "hearscan-manifest.json"  # what `hearscan extract` ran: module, checkpoint, options, versions
METADATA_FILES = ("task_metadata.json", "labelvocabulary.csv")
# the per-split files of the format; everything else in a task folder is a downstream output
SPLIT_SUFFIXES = (
    ".embeddings.npy", ".embedding-dimensions.json", ".target-labels.pkl", ".filename-timestamps.json",
)


@dataclass
class Split:
    name: str
    embeddings: np.ndarray  # (n, dim) float32
    labels: list[list[str]]  # n label lists, as strings (heareval looks labels up with str(label))
    filename_timestamps: list[tuple[str, float]] | None = None  # event tasks only


@dataclass
class TaskEmbeddings:
    """Everything the probe needs from one task's embedding directory."""

    path: Path
    metadata: dict
    labels: list[str]  # vocabulary, index order
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def module(self) -> str:
        return self.path.parent.name

    @property
    def label_to_idx(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def embedding_type(self) -> str:
        return self.metadata["embedding_type"]

    @property
    def prediction_type(self) -> str:
        return self.metadata["prediction_type"]

    @property
    def dim(self) -> int:
        return next(iter(self.splits.values())).embeddings.shape[1]

    def target_matrix(self, split: str) -> np.ndarray:
        """(n, nlabels) multi-hot float32 targets of one split."""
        index = self.label_to_idx
        rows = self.splits[split].labels
        y = np.zeros((len(rows), len(self.labels)), dtype=np.float32)
        for i, row in enumerate(rows):
            for label in row:
                y[i, index[label]] = 1.0
        return y

    def target_events(self, split_names: list[str]) -> dict:
        """Reference events {file: [{label, start, end}]} of the given splits (from `<split>.json`)."""
        events: dict = {}
        for split in split_names:
            events.update(_read_json(self.path / f"{split}.json", self.name))
        return events


def is_task_dir(path: Path) -> bool:
    return (path / "task_metadata.json").is_file() and any(path.glob("*.embedding-dimensions.json"))


def find_task_dirs(paths: list[str | Path]) -> list[Path]:
    """Task embedding directories named by `paths`: each path is a task directory, or a folder whose
    subfolders (up to two levels: `E/<module>/<task>`) are.  Sorted, without duplicates."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserFacingError(f"{p}: no such directory (give embedding task directories or their root)")
        if is_task_dir(p):
            found.append(p)
            continue
        below = sorted({d.parent for d in p.glob("*/task_metadata.json")} | {d.parent for d in p.glob("*/*/task_metadata.json")})
        # hidden folders are unfinished work: `hearscan extract` writes a task into `.partial-<task>` and
        # renames it only when it is complete
        unfinished = [d for d in below if any(part.startswith(".") for part in d.relative_to(p).parts)]
        for d in unfinished:
            print(f"hearscan: skipping {d}: an unfinished extraction (resume it with `hearscan extract`)",
                  file=sys.stderr)
        below = [d for d in below if d not in unfinished and is_task_dir(d)]
        if not below:
            raise UserFacingError(
                f"{p}: holds no task embedding directory (a folder with task_metadata.json and "
                "<split>.embedding-dimensions.json); run `hearscan extract` or heareval's embeddings runner first"
            )
        found.extend(below)
    return sorted(dict.fromkeys(p.resolve() for p in found))


def _read_json(path: Path, task: str):
    if not path.is_file():
        raise UserFacingError(f"task {task}: missing {path}; re-run the embedding extraction for this task")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserFacingError(f"task {task}: {path} is not valid JSON ({err}); re-run the extraction") from None


def read_label_vocabulary(path: Path, task: str) -> list[str]:
    if not path.is_file():
        raise UserFacingError(f"task {task}: missing {path} (header idx,label)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "idx" not in rows[0] or "label" not in rows[0]:
        raise UserFacingError(f"task {task}: {path} must have the header idx,label and at least one row")
    try:
        by_idx = {int(r["idx"]): str(r["label"]) for r in rows}
    except ValueError:
        raise UserFacingError(f"task {task}: {path} has a non-integer idx") from None
    if sorted(by_idx) != list(range(len(rows))):
        raise UserFacingError(f"task {task}: {path} indices must be 0..{len(rows) - 1}, each once")
    return [by_idx[i] for i in range(len(rows))]


def read_metadata(task_dir: Path) -> dict:
    task = task_dir.name
    path = task_dir / "task_metadata.json"
    meta = _read_json(path, task)
    for key in ("embedding_type", "prediction_type", "split_mode", "evaluation", "splits"):
        if key not in meta:
            raise UserFacingError(f"task {task}: {path} lacks the key {key!r}")
    if meta["embedding_type"] not in ("scene", "event"):
        raise UserFacingError(f"task {task}: {path}: embedding_type must be scene or event, not {meta['embedding_type']!r}")
    if meta["prediction_type"] not in ("multiclass", "multilabel"):
        raise UserFacingError(
            f"task {task}: {path}: prediction_type must be multiclass or multilabel, not {meta['prediction_type']!r}"
        )
    if meta["split_mode"] not in SPLIT_MODES:
        raise UserFacingError(f"task {task}: {path}: split_mode must be one of {SPLIT_MODES}, not {meta['split_mode']!r}")
    if not meta["evaluation"]:
        raise UserFacingError(f"task {task}: {path}: 'evaluation' names no score")
    return meta


def read_split(task_dir: Path, split: str, embedding_type: str, vocabulary: set[str]) -> Split:
    """One split, checked: sizes agree, values finite, rows present, labels in the vocabulary."""
    task = task_dir.name
    dims_path = task_dir / f"{split}.embedding-dimensions.json"
    emb_path = task_dir / f"{split}.embeddings.npy"
    labels_path = task_dir / f"{split}.target-labels.pkl"
    dims = _read_json(dims_path, task)
    if not (isinstance(dims, list) and len(dims) == 2 and all(isinstance(d, int) and d >= 0 for d in dims)):
        raise UserFacingError(f"task {task}: {dims_path} must hold [n_rows, dim], found {dims!r}")
    n, dim = dims
    if n == 0:
        raise UserFacingError(
            f"task {task}: split {split!r} has no examples ({dims_path} says [0, {dim}]); "
            "check the task's split file and re-run the extraction"
        )
    if not emb_path.is_file():
        raise UserFacingError(f"task {task}: missing {emb_path}; re-run the embedding extraction")
    size = emb_path.stat().st_size
    if size != n * dim * 4:
        raise UserFacingError(
            f"task {task}: {emb_path} holds {size} bytes but {dims_path} says [{n}, {dim}] float32 "
            f"({n * dim * 4} bytes); the files are from different runs or truncated: re-run the extraction"
        )
    emb = np.fromfile(emb_path, dtype=np.float32).reshape(n, dim)
    finite = np.isfinite(emb)
    if not finite.all():
        bad_rows = np.where(~finite.all(axis=1))[0]
        raise UserFacingError(
            f"task {task}: {emb_path} holds {int(np.isnan(emb).sum())} NaN and {int(np.isinf(emb).sum())} Inf "
            f"values in {len(bad_rows)} rows (first row {int(bad_rows[0])}); fix the module or its input audio"
        )
    if not labels_path.is_file():
        raise UserFacingError(f"task {task}: missing {labels_path}; re-run the embedding extraction")
    with open(labels_path, "rb") as f:
        raw_labels = pickle.load(f)
    if len(raw_labels) != n:
        raise UserFacingError(
            f"task {task}: {labels_path} has {len(raw_labels)} label rows but {dims_path} says {n} embeddings; "
            "re-run the extraction"
        )
    labels = [[str(label) for label in row] for row in raw_labels]
    unknown = sorted({label for row in labels for label in row} - vocabulary)
    if unknown:
        raise UserFacingError(
            f"task {task}: {labels_path} uses labels missing from labelvocabulary.csv: "
            f"{', '.join(map(repr, unknown[:10]))}{' ...' if len(unknown) > 10 else ''}; "
            "add them to the vocabulary or fix the split file"
        )
    filename_timestamps = None
    if embedding_type == "event":
        ft_path = task_dir / f"{split}.filename-timestamps.json"
        ft = _read_json(ft_path, task)
        if len(ft) != n:
            raise UserFacingError(
                f"task {task}: {ft_path} has {len(ft)} entries but {dims_path} says {n} embeddings; re-run the extraction"
            )
        filename_timestamps = [(str(f), float(t)) for f, t in ft]
    return Split(split, emb, labels, filename_timestamps)


def load_task(task_dir: str | Path) -> TaskEmbeddings:
    task_dir = Path(task_dir)
    meta = read_metadata(task_dir)
    labels = read_label_vocabulary(task_dir / "labelvocabulary.csv", task_dir.name)
    task = TaskEmbeddings(task_dir, meta, labels)
    vocabulary = set(labels)
    for split in meta["splits"]:
        task.splits[split] = read_split(task_dir, split, meta["embedding_type"], vocabulary)
    dims = {s.name: s.embeddings.shape[1] for s in task.splits.values()}
    if len(set(dims.values())) != 1:
        raise UserFacingError(f"task {task.name}: splits have different embedding sizes {dims}; re-run the extraction")
    if task.prediction_type == "multiclass":
        for s in task.splits.values():
            counts = [len(row) for row in s.labels]
            bad = [i for i, c in enumerate(counts) if c != 1]
            if bad:
                raise UserFacingError(
                    f"task {task.name}: multiclass task but row {bad[0]} of {task_dir / (s.name + '.target-labels.pkl')} "
                    f"has {counts[bad[0]]} labels (exactly one expected)"
                )
    return task


def data_splits(metadata: dict) -> list[dict[str, list[str]]]:
    """heareval's fold semantics: trainvaltest -> one split; k-fold -> for the sorted folds, test = fold i,
    valid = fold i+1 (wrapping), train = the rest (same as heareval's `get_splits_from_metadata`)."""
    if metadata["split_mode"] == "trainvaltest":
        return [{"train": ["train"], "valid": ["valid"], "test": ["test"]}]
    folds = sorted(metadata["splits"])
    if len(folds) < 3:
        raise UserFacingError(f"a k-fold task needs at least 3 folds (train, valid, test), found {folds}")
    out = []
    for i, test in enumerate(folds):
        valid = folds[(i + 1) % len(folds)]
        out.append({"train": [f for f in folds if f not in (test, valid)], "valid": [valid], "test": [test]})
    return out


# --- writing -------------------------------------------------------------------------------------------------


def heareval_file_order(task_metadata: dict, files_per_split: dict[str, list[str]]) -> dict[str, list[str]]:
    """The row order heareval's runner writes: one Random(0) per task, shuffling each split in turn."""
    prng = random.Random()
    prng.seed(0)
    order = {}
    for split in task_metadata["splits"]:
        names = list(files_per_split[split])
        prng.shuffle(names)
        order[split] = names
    return order


def labels_for_timestamps(events: list[dict], timestamps) -> list[list[str]]:
    """Labels active at each timestamp (ms), as heareval's `get_labels_for_timestamps` computes them."""
    tree = IntervalTree()
    for event in events:
        # heareval adds 0.0001 so that the end is included
        tree.addi(event["start"], event["end"] + 0.0001, event["label"])
    return [[interval.data for interval in tree[t]] for t in timestamps]


def write_split_files(task_dir: Path, split: str, shape: tuple[int, int], fill, labels: list,
                      filename_timestamps: list | None = None) -> None:
    """Write one split: `fill(memmap)` puts the (n, dim) float32 rows into a raw memmap of `shape` (so a
    large split never needs to be in memory at once); then the dimensions, the pickled labels and, for
    event tasks, the [filename, timestamp] pairs.  The memmap is written under a temporary name and renamed
    last: a split whose `.embeddings.npy` exists is complete."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    final = task_dir / f"{split}.embeddings.npy"
    tmp = temp_sibling(final)
    reserve(tmp, 4 * int(np.prod(shape)))
    memmap = np.memmap(tmp, dtype=np.float32, mode="r+", shape=tuple(shape))
    fill(memmap)
    memmap.flush()
    del memmap
    atomic_write(task_dir / f"{split}.embedding-dimensions.json", json.dumps(list(shape)))
    atomic_write(task_dir / f"{split}.target-labels.pkl", pickle.dumps(labels))
    if filename_timestamps is not None:
        ft = [[f, float(t)] for f, t in filename_timestamps]
        atomic_write(task_dir / f"{split}.filename-timestamps.json", json.dumps(ft, indent=4))
    os.replace(tmp, final)


def reserve(path: Path, nbytes: int) -> None:
    """Create `path` with `nbytes` allocated on disk, so that filling it as a memmap can never meet a full
    disk (on a sparse file it would: the process dies of SIGBUS).  A full disk is a DiskFullError."""
    try:
        with open(path, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, max(nbytes, 1))
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: go on
                    raise
            f.truncate(nbytes)
    except OSError as err:
        path.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise DiskFullError(path.parent, nbytes) from None
        raise


def write_split(
    task_dir: Path,
    split: str,
    embeddings: np.ndarray,
    labels: list[list],
    filename_timestamps: list[tuple[str, float]] | None = None,
) -> None:
    """Write one split held in memory (tests, benchmarks, any extractor that wants the format)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)

    def fill(memmap):
        memmap[:] = emb

    write_split_files(task_dir, split, emb.shape, fill, [list(row) for row in labels], filename_timestamps)


def write_task_files(task_dir: Path, metadata: dict, labels: list[str], split_targets: dict[str, dict]) -> None:
    """Write task_metadata.json, labelvocabulary.csv, the `<split>.json` target copies and, last, the
    `.done.embeddings` marker every finished embeddings folder carries (call it after `write_split`)."""
    task_dir = Path(task_dir)
    task_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(task_dir / "task_metadata.json", json.dumps(metadata, indent=2))
    vocab = "idx,label\n" + "".join(f"{i},{label}\n" for i, label in enumerate(labels))
    atomic_write(task_dir / "labelvocabulary.csv", vocab)
    for split, targets in split_targets.items():
        atomic_write(task_dir / f"{split}.json", json.dumps(targets, indent=2))
    atomic_write(task_dir / DONE, b"")


# --- per-seed views ------------------------------------------------------------------------------------------


def embedding_files(task_dir: Path) -> list[Path]:
    """The files of a finished embeddings task folder that belong to the format (no downstream outputs)."""
    splits = json.loads((task_dir / "task_metadata.json").read_text())["splits"]
    files = [task_dir / name for name in METADATA_FILES]
    for split in splits:
        files.append(task_dir / f"{split}.json")
        files += [task_dir / f"{split}{suffix}" for suffix in SPLIT_SUFFIXES if (task_dir / f"{split}{suffix}").exists()]
    return files


def make_seed_view(task_dir: Path, view_dir: Path) -> Path:
    """Create (or refresh) `view_dir` holding links to `task_dir`'s embedding files."""
    task_dir, view_dir = Path(task_dir).resolve(), Path(view_dir)
    if not (task_dir / DONE).exists():
        raise UserFacingError(
            f"{task_dir} is not a finished embeddings folder (no {DONE}); extract it first "
            "(hearscan extract) or finish heareval's embeddings run"
        )
    view_dir.mkdir(parents=True, exist_ok=True)
    for src in embedding_files(task_dir):
        dst = view_dir / src.name
        if dst.is_symlink() and os.readlink(dst) == str(src):
            continue
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        os.symlink(src, dst)
    (view_dir / DONE).touch()
    return view_dir


def make_seed_views(task_dir: Path, views_root: Path, seeds: list[int]) -> list[Path]:
    """`views_root/seed-<n>/<task name>/` for each seed."""
    task_dir = Path(task_dir)
    return [make_seed_view(task_dir, Path(views_root) / f"seed-{seed}" / task_dir.name) for seed in seeds]
