"""`hearscan extract TASKS_DIR OUT [MODULE[=CHECKPOINT] ...]` (also `./extract_features.sh`)."""

from __future__ import annotations

import sys
from pathlib import Path

from hear_modules import registry


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract embeddings over HEAR task directories in heareval's format",
        description="Extract embeddings for every task under TASKS_DIR into OUT/<module tag>/<task>/, "
        "in exactly the format heareval's predictions runner reads.  Resumable: run the same command "
        "again after an interruption.",
    )
    p.add_argument("tasks_dir", type=Path, help="a folder of HEAR task directories (or one task directory)")
    p.add_argument("out_dir", type=Path, help="output folder for the embeddings")
    p.add_argument("modules", nargs="*", metavar="MODULE[=CHECKPOINT]",
                   help=f"hearscan module ({', '.join(registry.names())}) or any "
                   "importable HEAR module, optionally with a checkpoint; default: modules whose weights "
                   "are configured (HEARSCAN_<MODULE>_CHECKPOINT, PT_AXLSTM_MODEL_DIR), else logmel")
    p.add_argument("--option", "-o", action="append", default=[], metavar="[MODULE:]KEY=VALUE",
                   help="a load_model option (size, variant, device, dtype, scan_backend, ...); "
                   "repeatable; without MODULE: it applies to every module")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out corrupt, missing or wrong-rate audio files (recorded in the manifest) "
                   "instead of stopping")
    p.add_argument("--max-batch-seconds", type=float, default=120.0,
                   help="audio per batch, in seconds (default 120); lower it to bound memory")
    p.add_argument("--seeds", default=None, metavar="0-9",
                   help="also prepare per-seed views (links, no copies) under OUT/seeds/ for the downstream step")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from feature_extract.engine import extract, format_summary

    stats = extract(args.tasks_dir, args.out_dir, args.modules, args.option, seeds=args.seeds,
                    skip_bad=args.skip_bad, max_batch_seconds=args.max_batch_seconds, progress=not args.no_progress,
                    log=lambda m: print(m, file=sys.stderr))
    print(format_summary(stats))
    return 0
