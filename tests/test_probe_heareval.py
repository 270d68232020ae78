"""`hearscan probe --protocol heareval-fork`: heareval's own runner (through hearscan.compat) once per seed,
each seed in its own folder of links to the embeddings, read back by `hearscan results`."""

from __future__ import annotations

import json

import pytest

from formats import predictions
from downstream import probe, results
from downstream.synthetic import write_synthetic_task


@pytest.mark.slow
def test_heareval_fork_protocol_per_seed(tmp_path):
    task = write_synthetic_task(tmp_path / "emb", "hv_scene", module="modH", n_per_split=24, n_labels=3, dim=8,
                                separation=2.0, seed=5)
    before = sorted(p.name for p in task.iterdir())
    # 2 fork grid points, a few epochs: the protocol's plumbing, not heareval's training time
    probe.run_probe([task], [0, 1], protocol="heareval-fork", out=tmp_path / "pred", quiet=True,
                    grid_overrides={"max_epochs": [6], "check_val_every_n_epoch": [3]})
    scores = []
    for seed in (0, 1):
        d = predictions.seed_dir(tmp_path / "pred", "modH", "hv_scene", "heareval-fork", seed)
        s = json.loads((d / predictions.SCORES_FILE).read_text())
        note = json.loads((d / predictions.PROBE_FILE).read_text())
        assert (note["seed"], note["protocol"], note["grid"]) == (seed, "heareval-fork", "fork")
        # heareval's fork grid: 1 hidden layer, lr 1e-4, xavier_normal
        assert s["hparams"]["hidden_layers"] == 1 and s["hparams"]["lr"] == 0.0001
        assert "xavier_normal" in s["hparams"]["initialization"]
        assert (d / "train.embeddings.npy").is_symlink()  # nothing copied
        scores.append(s["test"]["test_loss"])
    assert scores[0] != scores[1]  # the seed reaches heareval's training
    assert sorted(p.name for p in task.iterdir()) == before  # the embeddings folder is untouched
    # rerun: both seeds are skipped (no heareval process is started)
    probe.run_probe([task], [0, 1], protocol="heareval-fork", out=tmp_path / "pred", quiet=True,
                    grid_overrides={"max_epochs": [6], "check_val_every_n_epoch": [3]})
    (row,) = results.summarise(predictions.collect([tmp_path / "pred"]))
    assert (row["protocol"], row["module"], row["n"]) == ("heareval-fork", "modH", 2)
