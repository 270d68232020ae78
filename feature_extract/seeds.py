"""Per-seed views of an embeddings directory, for running a downstream protocol once per seed.

heareval's predictions runner writes its outputs (`test.predicted-scores.json`, `prediction-done.json`,
...) into the embedding task folder itself, so ten seeds need ten folders.  A view is a folder of
symbolic links to the embedding files: no embedding is copied, and each seed's outputs stay apart.
"""

from __future__ import annotations

import os
from pathlib import Path

from hearscan.errors import UserFacingError

# files written by the extraction step; everything else in a task folder is a downstream output
EMBEDDING_SUFFIXES = (
    ".embeddings.npy", ".embedding-dimensions.json", ".target-labels.pkl", ".filename-timestamps.json",
)
METADATA_FILES = ("task_metadata.json", "labelvocabulary.csv")


def embedding_files(task_dir: Path) -> list[Path]:
    import json

    splits = json.loads((task_dir / "task_metadata.json").read_text())["splits"]
    files = [task_dir / name for name in METADATA_FILES]
    for split in splits:
        files.append(task_dir / f"{split}.json")
        files += [task_dir / f"{split}{suffix}" for suffix in EMBEDDING_SUFFIXES if (task_dir / f"{split}{suffix}").exists()]
    return files


def make_seed_view(task_dir: Path, view_dir: Path) -> Path:
    """Create (or refresh) `view_dir` holding links to `task_dir`'s embedding files."""
    task_dir, view_dir = Path(task_dir).resolve(), Path(view_dir)
    if not (task_dir / ".done.embeddings").exists():
        raise UserFacingError(
            f"{task_dir} is not a finished embeddings folder (no .done.embeddings); extract it first "
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
    (view_dir / ".done.embeddings").touch()
    return view_dir


def make_seed_views(task_dir: Path, views_root: Path, seeds: list[int]) -> list[Path]:
    """`views_root/seed-<n>/<task name>/` for each seed."""
    task_dir = Path(task_dir)
    return [make_seed_view(task_dir, Path(views_root) / f"seed-{seed}" / task_dir.name) for seed in seeds]
