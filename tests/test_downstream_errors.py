"""Bad embeddings give a UserFacingError naming the task and the file (and the CLI exits 2, no traceback)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from formats.embeddings import load_task
from downstream.synthetic import write_synthetic_task
from hearscan.cli import main
from hearscan_core.errors import UserFacingError


@pytest.fixture
def scene(tmp_path):
    return write_synthetic_task(tmp_path, "bad_scene", n_per_split=10, dim=8)


@pytest.fixture
def event(tmp_path):
    return write_synthetic_task(tmp_path, "bad_event", embedding_type="event", prediction_type="multilabel",
                                n_per_split=2, dim=8)


def _expect(task_dir, *fragments):
    with pytest.raises(UserFacingError) as err:
        load_task(task_dir)
    message = str(err.value)
    assert task_dir.name in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_embeddings_file_size_disagrees_with_dimensions(scene):
    path = scene / "valid.embeddings.npy"
    path.write_bytes(path.read_bytes()[:-4])
    _expect(scene, "valid.embeddings.npy", "valid.embedding-dimensions.json", "[10, 8]")


def test_dimensions_json_disagrees_with_file(scene):
    (scene / "train.embedding-dimensions.json").write_text(json.dumps([10, 9]))
    _expect(scene, "train.embeddings.npy", "[10, 9]")


def test_label_rows_disagree_with_embeddings(scene):
    path = scene / "test.target-labels.pkl"
    path.write_bytes(pickle.dumps(pickle.loads(path.read_bytes())[:-1]))
    _expect(scene, "test.target-labels.pkl", "9 label rows", "10 embeddings")


def test_timestamps_disagree_with_embeddings(event):
    path = event / "valid.filename-timestamps.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:-3]))
    _expect(event, "valid.filename-timestamps.json")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_embeddings(scene, bad):
    path = scene / "train.embeddings.npy"
    emb = np.fromfile(path, dtype=np.float32)
    emb[20] = bad
    emb.tofile(path)
    _expect(scene, "train.embeddings.npy", "row 2")


def test_split_without_examples(scene):
    (scene / "valid.embedding-dimensions.json").write_text(json.dumps([0, 8]))
    (scene / "valid.embeddings.npy").write_bytes(b"")
    (scene / "valid.target-labels.pkl").write_bytes(pickle.dumps([]))
    _expect(scene, "'valid'", "no examples")


def test_label_missing_from_vocabulary(scene):
    path = scene / "train.target-labels.pkl"
    rows = pickle.loads(path.read_bytes())
    rows[3] = ["not_a_label"]
    path.write_bytes(pickle.dumps(rows))
    _expect(scene, "train.target-labels.pkl", "'not_a_label'", "labelvocabulary.csv")


def test_multiclass_row_with_two_labels(scene):
    path = scene / "test.target-labels.pkl"
    rows = pickle.loads(path.read_bytes())
    rows[0] = ["label0", "label1"]
    path.write_bytes(pickle.dumps(rows))
    _expect(scene, "test.target-labels.pkl", "exactly one")


def test_missing_file(scene):
    (scene / "test.target-labels.pkl").unlink()
    _expect(scene, "test.target-labels.pkl", "missing")


def test_cli_reports_without_traceback(scene, tmp_path, capsys):
    (scene / "valid.embedding-dimensions.json").write_text(json.dumps([0, 8]))
    rc = main(["probe", str(scene), "--seeds", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "bad_scene" in err and "no examples" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("test.predicted-scores.json"))


def test_not_an_embeddings_folder(tmp_path, capsys):
    assert main(["probe", str(tmp_path), "--seeds", "0", "--out", str(tmp_path / "o")]) == 2
    assert "no task embedding directory" in capsys.readouterr().err


def test_unfinished_extraction_is_skipped_with_a_note(tmp_path, capsys):
    """`hearscan extract` writes a task into `.partial-<task>` until it is complete: a probe over the module
    folder must skip it (saying so), not fail on its missing files or score half a task."""
    from formats.embeddings import find_task_dirs

    done = write_synthetic_task(tmp_path, "done_task", n_per_split=4, dim=4)  # tmp_path/<module>/done_task
    partial = write_synthetic_task(tmp_path, ".partial-half_task", n_per_split=4, dim=4)
    module = done.parent
    (partial / "test.embedding-dimensions.json").unlink()
    assert find_task_dirs([tmp_path]) == [done.resolve()]
    assert find_task_dirs([module]) == [done.resolve()]
    assert ".partial-half_task" in capsys.readouterr().err
