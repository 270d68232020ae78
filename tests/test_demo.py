"""`hearscan demo` (what `make demo` runs): the whole chain through the real CLI, on the synthetic suite.

The stages are tested one by one elsewhere; this checks that the command strings them together, prints the
results table, writes the result files and plot, and that a second run resumes instead of redoing work.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DEMO = [sys.executable, "-m", "hearscan", "demo", "--suite", "synthetic", "--seeds", "0-1"]
TASKS = ["syn_envelope-v1-full", "syn_events-v1-full", "syn_mix-v1-full", "syn_noise-v1-full",
         "syn_pitch-v1-full"]


def _run(out):
    proc = subprocess.run([*DEMO, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.timeout(900)
def test_demo_runs_the_chain_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = _run(out)
    log = first.stdout + first.stderr
    for stage in ("1/4", "2/4", "3/4", "4/4"):
        assert f"== {stage}" in log
    assert "demo finished" in log
    # no numeric warnings on the way (a perfect AUC's d' = inf once printed numpy's RuntimeWarning here;
    # other libraries' deprecation notices are not this project's to fail on)
    assert "RuntimeWarning" not in log, log[-3000:]

    results = out / "results"
    for name in ("summary.md", "summary.csv", "summary.json", "scores_per_seed.csv", "plot-linear.png"):
        assert (results / name).stat().st_size > 0, name
    table = (results / "summary.md").read_text()
    assert all(task in table for task in TASKS)
    assert "hear_modules.logmel" in table and "(n=2)" in table
    summary = json.loads((results / "summary.json").read_text())
    assert "hear_modules.logmel" in json.dumps(summary)

    predictions = sorted((out / "predictions").rglob("test.predicted-scores.json"))
    assert len(predictions) == 2 * len(TASKS)  # 5 tasks x 2 seeds
    before = {p: p.stat().st_mtime_ns for p in predictions}
    embeddings = sorted((out / "embeddings").rglob("*.npy"))
    assert embeddings
    emb_before = {p: p.stat().st_mtime_ns for p in embeddings}

    second = _run(out)  # every stage resumes: nothing extracted or probed again
    assert "0 new/5 skip" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in predictions} == before
    assert {p: p.stat().st_mtime_ns for p in embeddings} == emb_before
    assert (results / "summary.md").read_text() == table
