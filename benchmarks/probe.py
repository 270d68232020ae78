"""`hearscan bench probe`: wall time of the 10-seed linear probe vs heareval's predictions runner run once
per seed on the same embeddings, side by side in one run.

Both sides are timed as a user runs them, each as a fresh process with its imports: `hearscan probe
--seeds 0-9` (one process, all seeds batched) and heareval's runner through the compat layer, one process
per seed (`hearscan probe --protocol heareval` does exactly that).  heareval's runner takes minutes per
run (41 min for one seed of the default task on a loaded 2-core machine), so by default it runs k = 1
seed and its 10-seed time is extrapolated (x 10/k; printed as such); `--heareval-runs 10` measures all.

Embeddings: `--embeddings DIR` (any heareval-format task directories), else a synthetic scene task with a
learnable structure (downstream/synthetic.py) sized like a small HEAR task.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.stamp import stamp


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"bench probe: command failed: {' '.join(cmd)}")
    return wall


def _scores(out: Path, protocol: str) -> list[float]:
    return [json.loads(p.read_text())["test_score"] for p in sorted(out.rglob(f"{protocol}/seed-*/probe.json"))]


def bench(args) -> int:
    from formats.embeddings import find_task_dirs
    from downstream.synthetic import write_synthetic_task

    work = Path(tempfile.mkdtemp(prefix="hearscan-bench-probe-"))
    if args.embeddings:
        tasks = find_task_dirs(args.embeddings)
    else:
        tasks = [write_synthetic_task(work / "emb", "bench_scene", module="synthetic", n_per_split=args.clips,
                                      n_labels=10, dim=args.dim, separation=1.0, seed=0)]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"bench probe: {len(tasks)} task(s): " + ", ".join(f"{t.parent.name}/{t.name}" for t in tasks))
    hearscan = [sys.executable, "-m", "hearscan.cli"]
    paths = [str(t) for t in tasks]
    seeds = f"0-{args.seeds - 1}"

    log(f"  linear probe, seeds {seeds}, one process ...")
    linear_s = _run(hearscan + ["probe", *paths, "--seeds", seeds, "--out", str(work / "pred")])
    k = min(args.heareval_runs, args.seeds)
    log(f"  heareval runner (grid {args.grid}, {args.grid_points or 'default'} grid points), seeds 0-{k - 1}, "
        "one process per seed ...")
    protocol = "heareval-fork" if args.grid == "fork" else "heareval"
    cmd = hearscan + ["probe", *paths, "--seeds", f"0-{k - 1}", "--protocol", protocol, "--out", str(work / "pred")]
    if args.grid_points:
        cmd += ["--grid-points", str(args.grid_points)]
    heareval_s = _run(cmd)
    heareval_10 = heareval_s * args.seeds / k

    lin = _scores(work / "pred", "linear")
    her = _scores(work / "pred", protocol)
    if args.json:
        print(json.dumps({"meta": stamp("probe"), "tasks": [str(t) for t in tasks], "seeds": args.seeds,
                          "linear_s": linear_s, "linear_scores": lin, "heareval_protocol": protocol,
                          "heareval_seeds_measured": k, "heareval_s": heareval_s, "heareval_all_seeds_s": heareval_10,
                          "heareval_scores": her, "speedup": heareval_10 / linear_s}, indent=2))
        return 0
    print()
    print(f"{'':<34}{'wall s':>10}{'seeds':>7}{'mean score':>12}")
    print(f"{'hearscan linear probe':<34}{linear_s:>10.1f}{len(lin):>7}{sum(lin) / len(lin):>12.4f}")
    print(f"{'heareval runner (measured)':<34}{heareval_s:>10.1f}{len(her):>7}{sum(her) / len(her):>12.4f}")
    note = "measured" if k == args.seeds else f"extrapolated x{args.seeds / k:g} from {k}"
    print(f"{'heareval runner, ' + str(args.seeds) + ' seeds':<34}{heareval_10:>10.1f}{args.seeds:>7}   ({note})")
    print(f"\nspeed-up, {args.seeds} seeds: {heareval_10 / linear_s:.1f}x less time (target >= 20x)")
    print(f"per seed: linear {linear_s / args.seeds:.2f} s, heareval {heareval_s / k:.1f} s")
    print(f"outputs kept under {work}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("probe", help="10-seed linear probe vs heareval's runner run once per seed")
    p.add_argument("--embeddings", nargs="*", default=None, help="heareval-format task directories (default: synthetic)")
    p.add_argument("--seeds", type=int, default=10, help="seeds to compare (default 10)")
    p.add_argument("--heareval-runs", type=int, default=1,
                   help="heareval runs actually measured; the rest is extrapolated (default 1; 10 measures all)")
    p.add_argument("--grid", choices=["default", "fork"], default="default", help="heareval grid (default: stock)")
    p.add_argument("--grid-points", type=int, default=None, help="heareval grid points (default: 8 stock, 2 fork)")
    p.add_argument("--clips", type=int, default=300, help="synthetic task: clips per split (default 300)")
    p.add_argument("--dim", type=int, default=128, help="synthetic task: embedding size (default 128)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.set_defaults(func=bench)
