"""`check_task_dir` / `hearscan tasks check`: one test per kind of defect, on a clean synthetic task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hearscan.cli import main as hearscan_main
from hearscan.tasks import build_synthetic, check_task_dir


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    build_synthetic(out, ["syn_pitch", "syn_events", "syn_noise"])
    return out


def copy_task(clean: Path, tmp_path: Path, name: str = "syn_pitch-v1-full") -> Path:
    dst = tmp_path / name
    shutil.copytree(clean / name, dst)
    return dst


def edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)  # mutates in place
    path.write_text(json.dumps(obj))


def one_defect(task: Path, kind: str, needle: str):
    defects = check_task_dir(task)
    assert defects, "the checker found nothing"
    hits = [d for d in defects if d.kind == kind and needle in d.message]
    assert hits, [str(d) for d in defects]
    assert all(d.fix for d in defects)
    return hits[0]


def first_wav(task: Path, split: str = "train") -> Path:
    name = sorted(json.loads((task / f"{split}.json").read_text()))[0]
    return task / "16000" / split / name


def test_clean_tasks_have_no_defects(clean):
    for task in sorted(clean.iterdir()):
        assert check_task_dir(task) == []


def test_missing_metadata(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    (task / "task_metadata.json").unlink()
    d = one_defect(task, "metadata", "missing")
    assert d.path.endswith("task_metadata.json")


def test_metadata_not_json(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    (task / "task_metadata.json").write_text("{not json")
    one_defect(task, "metadata", "not valid JSON")


def test_metadata_missing_key(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    edit_json(task / "task_metadata.json", lambda m: m.pop("embedding_type"))
    one_defect(task, "metadata", "'embedding_type' missing")


def test_metadata_bad_split_mode(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    edit_json(task / "task_metadata.json", lambda m: m.update(split_mode="random_split"))
    d = one_defect(task, "metadata", "split_mode 'random_split'")
    assert "trainvaltest" in d.fix


def test_metadata_unknown_metric(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    edit_json(task / "task_metadata.json", lambda m: m.update(evaluation=["accuracy"]))
    one_defect(task, "metadata", "unknown metric 'accuracy'")


def test_metadata_metric_for_wrong_embedding_type(clean, tmp_path):
    task = copy_task(clean, tmp_path, "syn_events-v1-full")
    edit_json(task / "task_metadata.json", lambda m: m.update(evaluation=["top1_acc"]))
    one_defect(task, "metadata", "does not apply to event tasks")


def test_metadata_nfolds_mismatch(clean, tmp_path):
    task = copy_task(clean, tmp_path, "syn_noise-v1-full")
    edit_json(task / "task_metadata.json", lambda m: m.update(nfolds=10))
    one_defect(task, "metadata", "nfolds is 10")


def test_missing_vocabulary(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    (task / "labelvocabulary.csv").unlink()
    one_defect(task, "vocabulary", "missing")


def test_vocabulary_bad_header(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    path = task / "labelvocabulary.csv"
    path.write_text(path.read_text().replace("idx,label", "id,name"))
    one_defect(task, "vocabulary", "header")


def test_vocabulary_duplicate_label(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    path = task / "labelvocabulary.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [f"{len(lines) - 1},57"]) + "\n")
    one_defect(task, "vocabulary", "duplicate labels")


def test_missing_split_file(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    (task / "valid.json").unlink()
    d = one_defect(task, "split_file", "missing")
    assert d.path.endswith("valid.json")


def test_empty_split(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    (task / "test.json").write_text("{}")
    one_defect(task, "split_file", "empty split")


def test_label_outside_vocabulary(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    edit_json(task / "train.json", lambda e: e.update({sorted(e)[0]: ["kazoo"]}))
    d = one_defect(task, "labels", "'kazoo' is not in labelvocabulary.csv")
    assert "train.json" in d.path


def test_multiclass_clip_with_two_labels(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    edit_json(task / "train.json", lambda e: e.update({sorted(e)[0]: ["57", "58"]}))
    one_defect(task, "labels", "2 labels in a multiclass task")


def test_scene_clip_without_labels(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    edit_json(task / "train.json", lambda e: e.update({sorted(e)[0]: []}))
    one_defect(task, "labels", "no labels")


def test_event_missing_end(clean, tmp_path):
    task = copy_task(clean, tmp_path, "syn_events-v1-full")
    edit_json(task / "train.json", lambda e: e[sorted(e)[0]][0].pop("end"))
    one_defect(task, "labels", "lacks label/start/end")


def test_event_end_before_start(clean, tmp_path):
    task = copy_task(clean, tmp_path, "syn_events-v1-full")
    edit_json(task / "train.json", lambda e: e[sorted(e)[0]][0].update(start=900.0, end=100.0))
    one_defect(task, "labels", "invalid")


def test_missing_audio(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    wav = first_wav(task)
    wav.unlink()
    d = one_defect(task, "audio", "missing")
    assert d.path == str(wav)


def test_unreadable_audio(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    wav = first_wav(task)
    wav.write_bytes(b"RIFF\x00\x00garbage")
    d = one_defect(task, "audio", "unreadable")
    assert d.path == str(wav)


def test_wrong_sample_rate(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    wav = first_wav(task)
    sf.write(wav, np.full(44100, 0.1), 44100, subtype="PCM_16")
    one_defect(task, "audio", "sample rate 44100")


def test_stereo_audio(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    sf.write(first_wav(task), np.full((16000, 2), 0.1), 16000, subtype="PCM_16")
    one_defect(task, "audio", "2 channels")


def test_wrong_duration(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    sf.write(first_wav(task), np.full(12000, 0.1), 16000, subtype="PCM_16")
    one_defect(task, "audio", "0.750 s")


def test_silent_audio_is_a_warning_and_the_check_passes(clean, tmp_path, capsys):
    """Silence is valid input (extract embeds it): `tasks check` names the clip but exits 0."""
    task = copy_task(clean, tmp_path)
    sf.write(first_wav(task), np.zeros(16000), 16000, subtype="PCM_16")
    assert one_defect(task, "audio", "silent").warning
    assert not [d for d in check_task_dir(task) if not d.warning]
    capsys.readouterr()
    assert hearscan_main(["tasks", "check", str(task)]) == 0
    out = capsys.readouterr().out
    assert "[audio warning]" in out and "silent" in out and "1 ok, 0 with defects (0 defects, 1 warnings)" in out


def test_unlisted_wav(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    sf.write(task / "16000" / "train" / "stray.wav", np.full(16000, 0.1), 16000, subtype="PCM_16")
    one_defect(task, "audio", "not listed")


def test_missing_16k_folder(clean, tmp_path):
    task = copy_task(clean, tmp_path)
    (task / "16000").rename(task / "48000")
    one_defect(task, "sample_rate", "no 16000 Hz audio folder")


def test_cli_check_exit_code_and_summary(clean, tmp_path, capsys):
    bad = copy_task(clean, tmp_path)
    (bad / "valid.json").unlink()
    good = clean / "syn_noise-v1-full"
    assert hearscan_main(["tasks", "check", str(good)]) == 0
    capsys.readouterr()
    assert hearscan_main(["tasks", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "valid.json" in out and "1 ok, 1 with defects" in out


def test_cli_check_missing_dir_is_user_error(tmp_path, capsys):
    assert hearscan_main(["tasks", "check", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err
