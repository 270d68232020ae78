"""Our extraction and heareval's embeddings runner give the same files; heareval's predictions runner
reads ours.  Both runners are real: heareval runs through hearscan's compat layer in a subprocess."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from feature_extract.engine import Extractor
from feature_extract.modules import ModuleSpec
from hearscan.compat import run_embeddings, run_predictions
from hearscan.tasks.synthetic import build_synthetic

TASKS = ["syn_pitch", "syn_events", "syn_envelope"]  # fixed length, events, variable length (batch size 1)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    build_synthetic(root / "tasks", tasks=TASKS)
    theirs = run_embeddings("hear_modules.logmel", tasks_dir=root / "tasks", embeddings_dir=root / "theirs", verbose=False)
    Extractor(root / "ours", progress=False, log=lambda m: None).run(root / "tasks", [ModuleSpec("hear_modules.logmel")])
    return theirs.module_dir, root / "ours" / "hear_modules.logmel"


def test_every_file_heareval_predictions_reads_is_equal(both):
    theirs, ours = both
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for task in sorted(theirs.iterdir()):
        meta = json.loads((task / "task_metadata.json").read_text())
        mine = ours / task.name
        assert (mine / ".done.embeddings").exists()
        for name in ("task_metadata.json", "labelvocabulary.csv", *[f"{s}.json" for s in meta["splits"]]):
            assert (mine / name).read_bytes() == (task / name).read_bytes(), name
        for split in meta["splits"]:
            dims = json.loads((task / f"{split}.embedding-dimensions.json").read_text())
            assert json.loads((mine / f"{split}.embedding-dimensions.json").read_text()) == dims
            a = np.memmap(task / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=tuple(dims))
            b = np.memmap(mine / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=tuple(dims))
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=f"{task.name}/{split}")
            labels = pickle.loads((task / f"{split}.target-labels.pkl").read_bytes())
            assert pickle.loads((mine / f"{split}.target-labels.pkl").read_bytes()) == labels
            if meta["embedding_type"] == "event":
                t = json.loads((task / f"{split}.filename-timestamps.json").read_text())
                o = json.loads((mine / f"{split}.filename-timestamps.json").read_text())
                assert [(Path(f).name, ts) for f, ts in o] == [(Path(f).name, ts) for f, ts in t]


def test_heareval_predictions_runner_reads_our_output(both, tmp_path):
    _, ours = both
    task = next(p for p in ours.iterdir() if p.name.startswith("syn_pitch"))
    result = run_predictions([task], seed=0, grid="faster", grid_points=1, grid_overrides={"max_epochs": [5]}, verbose=False)
    scores = json.loads((task / "test.predicted-scores.json").read_text())
    assert "test" in scores and np.isfinite(scores["test"]["test_score"])
    assert result
