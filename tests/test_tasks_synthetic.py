"""The synthetic suite: byte-identical rebuilds, every HEAR mode covered, heareval-readable, atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from hearscan.cli import main as hearscan_main
from hearscan.tasks import build_synthetic, check_task_dir
from formats.taskdir import TaskWriter
from hearscan.tasks.synthetic import TASKS


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    build_synthetic(out)
    return out


def test_synthetic_build_is_byte_identical(suite, tmp_path):
    build_synthetic(tmp_path)
    a, b = tree_digest(suite), tree_digest(tmp_path)
    assert len(a) > 200
    assert a == b


def test_synthetic_suite_covers_every_mode(suite):
    metas = [json.loads(p.read_text()) for p in sorted(suite.glob("*/task_metadata.json"))]
    assert len(metas) == len(TASKS)
    assert {m["split_mode"] for m in metas} == {"trainvaltest", "presplit_kfold", "new_split_kfold"}
    assert {m["embedding_type"] for m in metas} == {"scene", "event"}
    assert {m["prediction_type"] for m in metas} == {"multiclass", "multilabel"}
    assert None in {m["sample_duration"] for m in metas}
    assert any(m["sample_duration"] is not None for m in metas)


def test_synthetic_suite_passes_the_checker(suite):
    for task in sorted(suite.iterdir()):
        assert check_task_dir(task) == [], task


def test_synthetic_tasks_read_like_heareval_reads_them(suite):
    """The files heareval opens: metadata keys, pandas-read vocabulary, split jsons, 16 kHz wavs."""
    from heareval.score import label_vocab_as_dict

    for task in sorted(suite.iterdir()):
        meta = json.loads((task / "task_metadata.json").read_text())
        vocab = pd.read_csv(task / "labelvocabulary.csv")
        label_to_idx = label_vocab_as_dict(vocab, key="label", value="idx")
        for split in meta["splits"]:
            entries = json.loads((task / f"{split}.json").read_text())
            assert entries
            for name, labels in entries.items():
                audio, sr = sf.read(task / "16000" / split / name)
                assert sr == 16000 and audio.ndim == 1 and np.abs(audio).max() > 0
                if meta["sample_duration"] is not None:
                    assert len(audio) == meta["sample_duration"] * 16000
                for label in labels:
                    key = label["label"] if meta["embedding_type"] == "event" else label
                    assert str(key) in {str(k) for k in label_to_idx}


def test_kfold_scene_labels_cover_each_fold(suite):
    """d_prime/aucroc need every label present and absent in every test fold."""
    task = suite / "syn_mix-v1-full"
    meta = json.loads((task / "task_metadata.json").read_text())
    for fold in meta["splits"]:
        entries = json.loads((task / f"{fold}.json").read_text())
        for label in ("clicks", "noise", "tone"):
            flags = [label in labels for labels in entries.values()]
            assert any(flags) and not all(flags), (fold, label)


def test_classes_are_learnable(suite):
    """A nearest-centroid classifier on log-spectra beats chance clearly on a scene task."""
    task = suite / "syn_noise-v1-full"

    def feats(fold):
        entries = json.loads((task / f"{fold}.json").read_text())
        xs, ys = [], []
        for name, labels in sorted(entries.items()):
            audio, _ = sf.read(task / "16000" / fold / name)
            spec = np.abs(np.fft.rfft(audio[:6400], 6400)) ** 2
            xs.append(np.log(spec[:3200].reshape(-1, 100).mean(1) + 1e-9))
            ys.append(labels[0])
        return np.array(xs), ys

    xtr, ytr = zip(*(feats(f"fold0{i}") for i in range(4)))
    xtr, ytr = np.concatenate(xtr), sum(ytr, [])
    xte, yte = feats("fold04")
    centroids = {c: xtr[[y == c for y in ytr]].mean(0) for c in set(ytr)}
    pred = [min(centroids, key=lambda c: np.sum((x - centroids[c]) ** 2)) for x in xte]
    assert np.mean([p == y for p, y in zip(pred, yte)]) > 0.8


def test_rebuild_skips_complete_tasks_and_force_rebuilds(tmp_path):
    (path,) = build_synthetic(tmp_path, ["syn_noise"])
    marker = path / "16000" / "fold00" / "keep-me"
    marker.write_text("x")
    build_synthetic(tmp_path, ["syn_noise"])
    assert marker.exists()  # skipped: complete
    build_synthetic(tmp_path, ["syn_noise"], force=True)
    assert not marker.exists()


def test_interrupted_write_leaves_nothing_complete(tmp_path):
    meta = dict(task_name="broken", version="v1", embedding_type="scene", prediction_type="multiclass",
                split_mode="trainvaltest", sample_duration=1.0, evaluation=["top1_acc"],
                splits=["train", "valid", "test"])
    with pytest.raises(RuntimeError):
        with TaskWriter(tmp_path, meta, ["a"]) as tw:
            tw.add("train", "x.wav", np.zeros(16000), ["a"])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_name_is_a_clear_error(tmp_path, capsys):
    rc = hearscan_main(["tasks", "build", str(tmp_path), "--suite", "synthetic", "--tasks", "nope"])
    assert rc == 2
    assert "syn_pitch" in capsys.readouterr().err


def test_cli_build_and_check(tmp_path, capsys):
    assert hearscan_main(["tasks", "build", str(tmp_path), "--suite", "synthetic",
                          "--tasks", "syn_pitch,syn_events"]) == 0
    out = capsys.readouterr().out
    assert "built 2 task(s)" in out
    assert hearscan_main(["tasks", "check", str(tmp_path)]) == 0
    assert "2 ok, 0 with defects" in capsys.readouterr().out
