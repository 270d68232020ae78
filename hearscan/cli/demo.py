"""`hearscan demo`: the whole chain on the embedded default, as `make demo` runs it.

build the mini task suite -> extract embeddings with the default module (weights-free `logmel`) ->
10-seed linear probe -> results table (printed) and plot, all under one output folder.  Every stage
resumes, so a second run only redoes what is missing and takes seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole chain on the embedded default: tasks -> extract -> 10-seed probe -> results",
        description=__doc__,
    )
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default ./demo)")
    p.add_argument("--suite", choices=["mini", "synthetic"], default="mini",
                   help="task suite: mini (real recordings and synthesis; default) or synthetic (seconds)")
    p.add_argument("--module", action="append", default=None, metavar="MODULE[=CHECKPOINT]",
                   help="module(s) to evaluate (default: logmel); repeatable")
    p.add_argument("--seeds", default="0-9", help="probe seeds (default 0-9)")
    p.set_defaults(func=run)


def run(args) -> int:
    from downstream.probe import run_probe
    from hearscan_core.seeds import parse_seeds
    from downstream.results import write_results
    from feature_extract.engine import Extractor, format_summary
    from feature_extract.modules import parse_specs

    out: Path = args.out
    started = time.perf_counter()

    def stage(title: str) -> None:
        print(f"\n== {title} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    stage(f"1/4 building the {args.suite} task suite into {out / 'tasks'}")
    if args.suite == "mini":
        from hearscan.tasks import build_mini

        build_mini(out / "tasks")
    else:
        from hearscan.tasks import build_synthetic

        build_synthetic(out / "tasks")

    specs = parse_specs(args.module or ["logmel"], [])
    stage(f"2/4 extracting embeddings with {', '.join(s.module for s in specs)} into {out / 'embeddings'}")
    stats = Extractor(out / "embeddings", log=lambda m: print(m, file=sys.stderr)).run(out / "tasks", specs)
    print(format_summary(stats), file=sys.stderr)

    stage(f"3/4 linear probe, seeds {args.seeds}, into {out / 'predictions'}")
    run_probe([out / "embeddings" / s.tag for s in specs], parse_seeds(args.seeds), out=out / "predictions")

    stage(f"4/4 results tables and plots into {out / 'results'}")
    write_results([out / "predictions"], out / "results")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; results in {out / 'results'}", file=sys.stderr)
    return 0
