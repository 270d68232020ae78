"""`hearscan results`: scores across seeds -> tables (CSV, Markdown, LaTeX) and plots.

Reads every `test.predicted-scores.json` under the given directories: hearscan's probe output
(`<module>/<task>/<protocol>/seed-NN/`, with `probe.json` beside it) and heareval's own runner output
(`<module>/<task>/test.predicted-scores.json` inside an embeddings directory; protocol "heareval", seed
from a `seed-N` / `seedN` path component when there is one).  A run's score is the seed papers' number:
`aggregated_scores.test_score_mean` for fold tasks, else the single test fold's `test_score`.

Per (protocol, module, task): n seeds, mean, sample standard deviation (ddof=1), and the 95 % Student-t
half-width t.ppf(0.975, n-1) * std / sqrt(n) (NaN for n = 1).

When the directories hold more than one protocol, `compare.md` / `compare.csv` put each pair side by side:
per module and task the two means, and per task the Spearman rank correlation of the modules scored by
both (how far the protocols agree on the ranking; NaN below 3 modules) and the median difference;
`compare-<a>-<b>.png` plots one protocol's means against the other's, a panel per task.

Normalised overall score: per task, (mean - chance) / (best - chance), where `chance` is the test score of
a trivial predictor (the train label prior for every row, scored by heareval's functions; recorded by
the linear probe in probe.json) and `best` is the best mean on that task over every (protocol, module)
row of the table.  1 = the best row, 0 = chance; the overall score is the mean over tasks (the number of
tasks it covers is given beside it).  It works for lower-is-better metrics too (both differences flip).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from formats.predictions import Run, collect
from hearscan_core.files import atomic_write

def t_halfwidth(values) -> float:
    """95 % Student-t confidence half-width of the mean: t.ppf(0.975, n-1) * std(ddof=1) / sqrt(n)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def summarise(runs: list[Run]) -> list[dict]:
    """One row per (protocol, module, task) with n, mean, std, ci95, chance, and the seeds' scores."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.protocol, r.module, r.task), []).append(r)
    chance_by_task: dict[str, list[float]] = {}
    for r in runs:
        if r.chance is not None and not math.isnan(r.chance):
            chance_by_task.setdefault(r.task, []).append(r.chance)
    rows = []
    for (protocol, module, task), group in sorted(groups.items()):
        # unseeded heareval runs (plain runner output) are numbered in path order
        group = sorted(group, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.path)))
        values = np.array([r.score for r in group], dtype=float)
        chance = chance_by_task.get(task)
        rows.append(
            {
                "protocol": protocol, "module": module, "task": task, "metric": group[0].metric,
                "score_mode": group[0].score_mode, "n": len(values), "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                "ci95": t_halfwidth(values), "min": float(values.min()), "max": float(values.max()),
                "chance": float(np.mean(chance)) if chance else math.nan,
                "seeds": [r.seed for r in group], "scores": values.tolist(),
            }
        )
    _normalise(rows)
    return rows


def _normalise(rows: list[dict]) -> None:
    """Adds `normalised` to each row: (mean - chance) / (best - chance) over the rows of the same task."""
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    for task_rows in by_task.values():
        lower = task_rows[0]["score_mode"] == "min"
        best = min(r["mean"] for r in task_rows) if lower else max(r["mean"] for r in task_rows)
        for r in task_rows:
            span = best - r["chance"]
            r["best"] = best
            r["normalised"] = (r["mean"] - r["chance"]) / span if span and not math.isnan(span) else math.nan


def overall(rows: list[dict]) -> dict[tuple[str, str], tuple[float, int]]:
    """(protocol, module) -> (mean normalised score over its tasks, number of tasks used)."""
    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if not math.isnan(r["normalised"]):
            acc.setdefault((r["protocol"], r["module"]), []).append(r["normalised"])
    return {k: (float(np.mean(v)), len(v)) for k, v in acc.items()}


# --- writers -----------------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _table(rows: list[dict]) -> tuple[list[str], list[str], dict, dict]:
    tasks = sorted({r["task"] for r in rows})
    keys = sorted({(r["protocol"], r["module"]) for r in rows})
    cell = {(r["protocol"], r["module"], r["task"]): r for r in rows}
    return tasks, keys, cell, overall(rows)


def to_markdown(rows: list[dict]) -> str:
    tasks, keys, cell, ov = _table(rows)
    metric_of = {r["task"]: r["metric"] for r in rows}
    head = ["protocol", "module"] + [f"{t}<br>{metric_of[t]}" for t in tasks] + ["normalised overall"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p, m in keys:
        cells = []
        for t in tasks:
            r = cell.get((p, m, t))
            cells.append("" if r is None else f"{_fmt(r['mean'])} ± {_fmt(r['ci95'])} (n={r['n']})")
        o = ov.get((p, m))
        cells.append("–" if o is None else f"{_fmt(o[0])} ({o[1]}/{len(tasks)} tasks)")
        lines.append("| " + " | ".join([p, m] + cells) + " |")
    lines.append("")
    lines.append("mean ± 95 % Student-t half-width over seeds (n seeds). Normalised overall: mean over tasks of "
                 "(mean − chance) / (best − chance); chance = trivial train-prior predictor.")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    return s.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("#", r"\#")


def to_latex(rows: list[dict]) -> str:
    tasks, keys, cell, ov = _table(rows)
    lines = [
        r"% generated by `hearscan results`: mean $\pm$ 95\% Student-t half-width over seeds",
        r"\begin{tabular}{ll" + "c" * (len(tasks) + 1) + "}",
        r"\hline",
        " & ".join(["protocol", "module"] + [_tex(t) for t in tasks] + ["normalised"]) + r" \\",
        r"\hline",
    ]
    for p, m in keys:
        cells = []
        for t in tasks:
            r = cell.get((p, m, t))
            cells.append("" if r is None else f"${_fmt(r['mean'])} \\pm {_fmt(r['ci95'])}$")
        o = ov.get((p, m))
        cells.append("" if o is None else f"${_fmt(o[0])}$")
        lines.append(" & ".join([_tex(p), _tex(m)] + cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines).replace("–", "--") + "\n"


def to_csv(rows: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    cols = ["protocol", "module", "task", "metric", "score_mode", "n", "mean", "std", "ci95", "min", "max", "chance", "best", "normalised"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([r[c] if not isinstance(r[c], float) else repr(r[c]) for c in cols])
    return buf.getvalue()


def seeds_csv(runs: list[Run]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["protocol", "module", "task", "seed", "metric", "value"])
    for r in sorted(runs, key=lambda r: (r.protocol, r.module, r.task, r.seed if r.seed is not None else -1)):
        w.writerow([r.protocol, r.module, r.task, r.seed, "score", repr(r.score)])
        for name, value in sorted(r.metrics.items()):
            if name != "score":
                w.writerow([r.protocol, r.module, r.task, r.seed, name, repr(value)])
    return buf.getvalue()


def short_label(module: str) -> str:
    """A module tag as a plot label: 'hear_modules.aum-size=tiny-variant=fobi' -> 'aum tiny fobi'."""
    name, *options = module.removeprefix("hear_modules.").split("-")
    return " ".join([name] + [o.partition("=")[2] or o for o in options])


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    """Lays the figure out and writes it as PNG under a temporary name, then renames it into place."""
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")  # savefig picks the format by suffix
    fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    os.replace(tmp, path)


def plot(rows: list[dict], protocol: str, path: Path) -> None:
    """One panel per task, one bar per module (mean, 95 % CI error bar, "n/a" where a module has no score
    for the task), chance as a dashed line."""
    plt = _pyplot()

    rows = [r for r in rows if r["protocol"] == protocol]
    tasks = sorted({r["task"] for r in rows})
    modules = sorted({r["module"] for r in rows})
    ncol = min(3, len(tasks))
    nrow = math.ceil(len(tasks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes.flat, tasks):
        task_rows = {r["module"]: r for r in rows if r["task"] == task}
        xs = np.arange(len(modules))
        means = [task_rows[m]["mean"] if m in task_rows else np.nan for m in modules]
        errs = [np.nan_to_num(task_rows[m]["ci95"]) if m in task_rows else 0 for m in modules]
        ax.bar(xs, means, yerr=errs, capsize=4, color=[colors[i % len(colors)] for i in range(len(modules))])
        for x, m in zip(xs, modules):
            if m not in task_rows:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="grey")
        chance = next(iter(task_rows.values()))["chance"]
        if not math.isnan(chance):
            ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(xs)
        ax.set_xticklabels([short_label(m) for m in modules], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}\n{next(iter(task_rows.values()))['metric']}", fontsize=9)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    n = sorted({r["n"] for r in rows})
    fig.suptitle(f"{protocol}: mean ± 95 % CI over {'/'.join(map(str, n))} seeds; dashed line: chance "
                 "(train label prior)", fontsize=10)
    _save_figure(fig, path)


def compare(rows: list[dict]) -> list[dict]:
    """For each pair of protocols (a, b), a < b, and each task both cover: the modules scored by both, their
    means under each, the Spearman rank correlation of those means over the modules (NaN below 3 modules
    or when one side is constant) and the median of b - a."""
    from scipy import stats

    mean = {(r["protocol"], r["module"], r["task"]): r["mean"] for r in rows}
    protocols = sorted({r["protocol"] for r in rows})
    tasks = sorted({r["task"] for r in rows})
    out = []
    for i, a in enumerate(protocols):
        for b in protocols[i + 1:]:
            for task in tasks:
                modules = sorted(m for (p, m, t) in mean if p == a and t == task and (b, m, task) in mean)
                if not modules:
                    continue
                xa = np.array([mean[(a, m, task)] for m in modules])
                xb = np.array([mean[(b, m, task)] for m in modules])
                rho = math.nan
                if len(modules) >= 3 and np.ptp(xa) > 0 and np.ptp(xb) > 0:
                    rho = float(stats.spearmanr(xa, xb).statistic)
                out.append({"a": a, "b": b, "task": task, "modules": modules, "mean_a": xa.tolist(),
                            "mean_b": xb.tolist(), "spearman": rho, "median_b_minus_a": float(np.median(xb - xa))})
    return out


def compare_markdown(pairs: list[dict]) -> str:
    """One table per protocol pair: module x task cells "a / b", then the Spearman and median rows."""
    lines = []
    for a, b in sorted({(c["a"], c["b"]) for c in pairs}):
        cells = [c for c in pairs if (c["a"], c["b"]) == (a, b)]
        tasks = [c["task"] for c in cells]
        modules = sorted({m for c in cells for m in c["modules"]})
        lines += [f"## {a} / {b}", "", "| module | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        for m in modules:
            row = []
            for c in cells:
                k = c["modules"].index(m) if m in c["modules"] else None
                row.append("" if k is None else f"{_fmt(c['mean_a'][k])} / {_fmt(c['mean_b'][k])}")
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        lines.append("| Spearman (modules) | " + " | ".join(f"{_fmt(c['spearman'], 2)} ({len(c['modules'])})" for c in cells) + " |")
        lines.append(f"| median {b} − {a} | " + " | ".join(f"{c['median_b_minus_a']:+.3f}" for c in cells) + " |")
        lines += ["", f"Cells: mean under {a} / mean under {b} (over each protocol's seeds). Spearman: rank "
                  "correlation of the modules' means between the two protocols (– below 3 modules).", ""]
    return "\n".join(lines)


def compare_csv(pairs: list[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["protocol_a", "protocol_b", "task", "module", "mean_a", "mean_b", "spearman_task", "median_b_minus_a_task"])
    for c in pairs:
        for m, xa, xb in zip(c["modules"], c["mean_a"], c["mean_b"]):
            w.writerow([c["a"], c["b"], c["task"], m, repr(xa), repr(xb), repr(c["spearman"]), repr(c["median_b_minus_a"])])
    return buf.getvalue()


def compare_plot(pairs: list[dict], a: str, b: str, path: Path) -> None:
    """One panel per task: each module's mean under protocol a (x) against b (y), the diagonal, and the
    Spearman correlation in the title."""
    plt = _pyplot()

    cells = [c for c in pairs if (c["a"], c["b"]) == (a, b)]
    ncol = min(3, len(cells))
    nrow = math.ceil(len(cells) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.8 * ncol, 3.5 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cells):
        ax.scatter(c["mean_a"], c["mean_b"], s=18)
        for m, x, y in zip(c["modules"], c["mean_a"], c["mean_b"]):
            ax.annotate(short_label(m), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo = min(c["mean_a"] + c["mean_b"])
        hi = max(c["mean_a"] + c["mean_b"])
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(a, fontsize=8)
        ax.set_ylabel(b, fontsize=8)
        ax.set_title(f"{c['task']}\nSpearman {_fmt(c['spearman'], 2)} over {len(c['modules'])} modules", fontsize=9)
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.suptitle(f"{a} against {b}: each module's mean score; dashed line: equal", fontsize=10)
    _save_figure(fig, path)


def write_results(dirs: list[str | Path], out: str | Path, quiet: bool = False) -> list[Path]:
    runs = collect(dirs)
    rows = summarise(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (
        ("summary.csv", to_csv(rows)),
        ("summary.md", to_markdown(rows)),
        ("summary.tex", to_latex(rows)),
        ("scores_per_seed.csv", seeds_csv(runs)),
        ("summary.json", json.dumps(rows, indent=2)),
    ):
        atomic_write(out / name, text)
        written.append(out / name)
    pairs = compare(rows)
    for name, make in (("compare.md", compare_markdown), ("compare.csv", compare_csv)):
        if pairs:
            atomic_write(out / name, make(pairs))
            written.append(out / name)
        else:  # a comparison from an earlier run over other directories would now mislead
            (out / name).unlink(missing_ok=True)
    for a, b in sorted({(c["a"], c["b"]) for c in pairs}):
        path = out / f"compare-{a}-{b}.png"
        compare_plot(pairs, a, b, path)
        written.append(path)
    for protocol in sorted({r["protocol"] for r in rows}):
        path = out / f"plot-{protocol}.png"
        plot(rows, protocol, path)
        written.append(path)
    # plots of protocols (or pairs) that an earlier run over other directories wrote would now mislead
    for stale in sorted(set(out.glob("plot-*.png")) | set(out.glob("compare-*.png"))):
        if stale not in written:
            stale.unlink()
    if not quiet:
        print(to_markdown(rows))
        if pairs:
            print(compare_markdown(pairs))
        print("wrote " + ", ".join(str(p) for p in written))
    return written
