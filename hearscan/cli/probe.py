"""`hearscan probe` (embeddings -> per-seed scores) and `hearscan results` (scores -> tables, plots).

Heavy imports (torch, heareval) happen inside the handlers so that `hearscan --help` stays instant.
"""

from __future__ import annotations


def _probe(args) -> int:
    from downstream.probe import run_probe
    from hearscan_core.seeds import parse_seeds

    run_probe(
        args.embeddings, parse_seeds(args.seeds), protocol=args.protocol, out=args.out,
        grid_points=args.grid_points, threads=args.threads,
    )
    return 0


def _results(args) -> int:
    from downstream.results import write_results

    write_results(args.pred_dirs, args.out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="score embeddings on their HEAR tasks over many seeds (linear probe or heareval's protocols)",
        description="Reads heareval-format embedding directories (E/<module>/<task>/) and writes "
        "OUT/<module>/<task>/<protocol>/seed-NN/test.predicted-scores.json (heareval's format) and probe.json. "
        "Finished (task, seed) pairs are skipped on a rerun.",
    )
    p.add_argument("embeddings", nargs="+", metavar="EMB_DIR",
                   help="task embedding directories, or folders holding them (E or E/<module>)")
    p.add_argument("--seeds", default="0-9", help="seeds: a range 0-9, a list 0,3,5, or one number (default 0-9)")
    p.add_argument("--protocol", default="linear", choices=["linear", "heareval", "heareval-fork"],
                   help="linear: hearscan's batched linear probe (default); heareval: heareval's runner with its stock "
                   "grid; heareval-fork: the seed papers' 2-point grid (both via the compat layer)")
    p.add_argument("--out", default="predictions", metavar="PRED_DIR", help="output folder (default ./predictions)")
    p.add_argument("--grid-points", type=int, default=None,
                   help="heareval protocols only: grid points to train (default: 8 stock, 2 fork)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=_probe)

    r = subparsers.add_parser(
        "results",
        help="tables (CSV, Markdown, LaTeX) and plots of scores across seeds",
        description="Reads every test.predicted-scores.json under PRED_DIRS (hearscan probe output or heareval's "
        "runner output) and writes summary.{csv,md,tex,json}, scores_per_seed.csv and plot-<protocol>.png.",
    )
    r.add_argument("pred_dirs", nargs="+", metavar="PRED_DIR")
    r.add_argument("--out", required=True, metavar="DIR", help="folder for the tables and plots")
    r.set_defaults(func=_results)
