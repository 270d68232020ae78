"""`hearscan results`: aggregation over seeds, the normalised score, and the files it writes."""

from __future__ import annotations

import csv
import json
import math

import pytest
from scipy import stats

from formats import predictions
from downstream import results
from hearscan.cli import main


def _write_ours(root, module, task, protocol, seed, score, chance, metric="top1_acc"):
    d = root / module / task / protocol / f"seed-{seed:02d}"
    d.mkdir(parents=True)
    scores = {"test": {"test_loss": 1.0, "test_score": score, f"test_{metric}": score},
              "hparams": {}, "postprocessing": [], "score_mode": "max", "embedding_path": "x"}
    (d / "test.predicted-scores.json").write_text(json.dumps(scores))
    note = {"protocol": protocol, "module": module, "task": task, "seed": seed, "primary_metric": metric,
            "score_mode": "max", "test_score": score, "chance_level": chance}
    (d / "probe.json").write_text(json.dumps(note))


def _write_heareval_folds(task_dir, fold_scores):
    """heareval's runner output for a fold task: per-fold entries and aggregated_scores (mean, ddof=1 std)."""
    task_dir.mkdir(parents=True)
    out = {f"fold{i:02d}": {"test_score": s, "test_mAP": s} for i, s in enumerate(fold_scores)}
    mean = sum(fold_scores) / len(fold_scores)
    out["aggregated_scores"] = {"test_score_mean": mean, "test_mAP_mean": mean}
    out["score_mode"] = "max"
    (task_dir / "test.predicted-scores.json").write_text(json.dumps(out))
    (task_dir / "task_metadata.json").write_text(json.dumps({"evaluation": ["mAP"]}))


def test_mean_std_and_student_t_halfwidth(tmp_path):
    values = [0.5, 0.6, 0.7, 0.9]
    for seed, v in enumerate(values):
        _write_ours(tmp_path, "modA", "taskX", "linear", seed, v, chance=0.25)
    (row,) = results.summarise(predictions.collect([tmp_path]))
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    assert row["n"] == n and row["seeds"] == [0, 1, 2, 3]
    assert row["mean"] == pytest.approx(mean)
    assert row["std"] == pytest.approx(std)
    assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    assert row["ci95"] == pytest.approx(3.182446305284263 * std / 2)  # t(0.975, 3), from tables
    assert math.isnan(results.t_halfwidth([0.4]))


def test_normalised_overall_score(tmp_path):
    # task 1: chance 0.25, A = 0.75 (best), B = 0.5  -> A 1.0, B 0.5
    # task 2: chance 0.5,  A = 0.6,  B = 0.9 (best)  -> A 0.25, B 1.0
    for seed in (0, 1):
        _write_ours(tmp_path, "A", "t1", "linear", seed, 0.75, 0.25)
        _write_ours(tmp_path, "B", "t1", "linear", seed, 0.5, 0.25)
        _write_ours(tmp_path, "A", "t2", "linear", seed, 0.6, 0.5)
        _write_ours(tmp_path, "B", "t2", "linear", seed, 0.9, 0.5)
    rows = results.summarise(predictions.collect([tmp_path]))
    ov = results.overall(rows)
    assert ov[("linear", "A")] == (pytest.approx((1.0 + 0.25) / 2), 2)
    assert ov[("linear", "B")] == (pytest.approx((0.5 + 1.0) / 2), 2)


def test_reads_heareval_runner_output_with_folds(tmp_path):
    # plain heareval output in an embeddings dir, once per seed folder (and the chance from our probe)
    for seed, folds in enumerate([[0.4, 0.6, 0.5], [0.5, 0.7, 0.6]]):
        _write_heareval_folds(tmp_path / "heareval" / f"seed-{seed}" / "modA" / "taskF", folds)
        _write_ours(tmp_path / "ours", "modA", "taskF", "linear", seed, 0.8, chance=0.2, metric="mAP")
    runs = predictions.collect([tmp_path / "heareval", tmp_path / "ours"])
    theirs = sorted((r for r in runs if r.protocol == "heareval"), key=lambda r: r.seed)
    assert [(r.module, r.task, r.seed, r.metric) for r in theirs] == [("modA", "taskF", 0, "mAP"), ("modA", "taskF", 1, "mAP")]
    assert [r.score for r in theirs] == [pytest.approx(0.5), pytest.approx(0.6)]
    rows = {r["protocol"]: r for r in results.summarise(runs)}
    assert rows["heareval"]["mean"] == pytest.approx(0.55)
    assert rows["heareval"]["chance"] == pytest.approx(0.2)  # taken from the probe's record of the task
    # a score file inside a per-seed copy of the task: <module>/<task>/seed-N/
    d = tmp_path / "seeded" / "modB" / "taskG" / "seed-3"
    _write_heareval_folds(d, [0.1, 0.2, 0.3])
    (run,) = predictions.collect([tmp_path / "seeded"])
    assert (run.module, run.task, run.seed) == ("modB", "taskG", 3)


def test_writes_tables_and_plots(tmp_path):
    for seed in range(3):
        _write_ours(tmp_path / "p", "mod_a", "task_1", "linear", seed, 0.5 + 0.1 * seed, 0.25)
        _write_ours(tmp_path / "p", "mod_b", "task_1", "linear", seed, 0.3 + 0.05 * seed, 0.25)
        _write_ours(tmp_path / "p", "mod_a", "task_1", "heareval", seed, 0.55, 0.25)
    assert main(["results", str(tmp_path / "p"), "--out", str(tmp_path / "r")]) == 0
    out = tmp_path / "r"
    for name in ("summary.csv", "summary.md", "summary.tex", "summary.json", "scores_per_seed.csv",
                 "plot-linear.png", "plot-heareval.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "plot-linear.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert {(r["protocol"], r["module"]) for r in rows} == {("linear", "mod_a"), ("linear", "mod_b"), ("heareval", "mod_a")}
    assert float(next(r for r in rows if r["module"] == "mod_a" and r["protocol"] == "linear")["mean"]) == pytest.approx(0.6)
    per_seed = list(csv.DictReader((out / "scores_per_seed.csv").open()))
    assert len([r for r in per_seed if r["metric"] == "score"]) == 9
    md = (out / "summary.md").read_text()
    assert "| linear | mod_a | 0.600 ± " in md
    tex = (out / "summary.tex").read_text()
    assert r"mod\_a" in tex and r"task\_1" in tex and r"\begin{tabular}" in tex
    assert not list(out.glob(".*"))  # no temporary files left


def test_no_score_files_is_a_clear_error(tmp_path, capsys):
    assert main(["results", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "run `hearscan probe` first" in capsys.readouterr().err


def test_probe_then_results_end_to_end(tmp_path):
    from downstream.synthetic import write_synthetic_task

    write_synthetic_task(tmp_path / "emb", "tiny", module="modX", separation=2.0, n_per_split=30, dim=8)
    assert main(["probe", str(tmp_path / "emb"), "--seeds", "0-2", "--out", str(tmp_path / "pred"), "--threads", "1"]) == 0
    assert main(["results", str(tmp_path / "pred"), "--out", str(tmp_path / "res")]) == 0
    (row,) = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert (row["protocol"], row["module"], row["task"], row["n"]) == ("linear", "modX", "tiny", 3)
    assert row["mean"] > row["chance"] and row["normalised"] == pytest.approx(1.0)


def test_plot_labels_are_short_module_names():
    from downstream.results import short_label

    assert short_label("hear_modules.aum-size=tiny-variant=fobi") == "aum tiny fobi"
    assert short_label("hear_modules.logmel") == "logmel"
    assert short_label("my_pkg.model") == "my_pkg.model"


def test_protocol_comparison_table(tmp_path):
    """Two protocols side by side: the cells, Spearman over the modules both scored (scipy's), the median
    difference, NaN below 3 modules; no comparison files for a single protocol."""
    linear = {"A": 0.9, "B": 0.6, "C": 0.3, "D": 0.5}
    heareval = {"A": 0.8, "B": 0.4, "C": 0.5}  # D not run under heareval
    for m, v in linear.items():
        for seed in (0, 1):
            _write_ours(tmp_path / "p", m, "t1", "linear", seed, v + 0.01 * seed, 0.1)
        _write_ours(tmp_path / "p", m, "t2", "linear", 0, v, 0.1)
    for m, v in heareval.items():
        _write_ours(tmp_path / "p", m, "t1", "heareval", 0, v, 0.1)
    _write_ours(tmp_path / "p", "A", "t2", "heareval", 0, 0.7, 0.1)

    rows = results.summarise(predictions.collect([tmp_path / "p"]))
    t1, t2 = results.compare(rows)
    assert (t1["a"], t1["b"], t1["task"], t1["modules"]) == ("heareval", "linear", "t1", ["A", "B", "C"])
    assert t1["mean_b"] == pytest.approx([0.905, 0.605, 0.305])
    assert t1["spearman"] == pytest.approx(stats.spearmanr([0.8, 0.4, 0.5], [0.905, 0.605, 0.305]).statistic)
    assert t1["spearman"] == pytest.approx(0.5)
    assert t1["median_b_minus_a"] == pytest.approx(0.105)  # median of 0.105, 0.205, -0.195
    assert t2["modules"] == ["A"] and math.isnan(t2["spearman"])

    written = results.write_results([tmp_path / "p"], tmp_path / "out", quiet=True)
    assert tmp_path / "out" / "compare.md" in written
    assert (tmp_path / "out" / "compare-heareval-linear.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| A | 0.800 / 0.905 | 0.700 / 0.900 |" in md and "| Spearman (modules) | 0.50 (3) | – (1) |" in md
    rows_csv = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert len(rows_csv) == 4 and {r["module"] for r in rows_csv} == {"A", "B", "C"}

    results.write_results([tmp_path / "p" / "D"], tmp_path / "out", quiet=True)  # one protocol, same --out
    assert not (tmp_path / "out" / "compare.md").exists() and not (tmp_path / "out" / "compare.csv").exists()
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["plot-linear.png"]
