"""`hearscan tasks build` and `hearscan tasks check`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hearscan_core.errors import UserFacingError


def register(subparsers) -> None:
    tasks = subparsers.add_parser("tasks", help="build or check HEAR-format task directories")
    sub = tasks.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")
    sub.required = True

    build = sub.add_parser("build", help="build a task suite (HEAR 2021 layout, 16 kHz) into OUT")
    build.add_argument("out", type=Path, help="folder that will hold one directory per task")
    build.add_argument("--suite", choices=["mini", "synthetic"], default="mini",
                       help="mini: real recordings and speech/music synthesis from Debian packages; "
                            "synthetic: tiny numpy-generated tasks for tests (default: mini)")
    build.add_argument("--tasks", default=None, help="comma-separated task names (default: the whole suite)")
    build.add_argument("--scale", type=float, default=1.0,
                       help="mini suite only: fraction of the clips to build (e.g. 0.1 for a quick test)")
    build.add_argument("--cache", type=Path, default=None,
                       help="mini suite only: where downloaded .debs are kept (default ~/.cache/hearscan)")
    build.add_argument("--force", action="store_true", help="rebuild tasks that are already complete")
    build.set_defaults(func=_build)

    check = sub.add_parser("check", help="check task directories for defects (exit 1 if any)")
    check.add_argument("dirs", nargs="+", type=Path,
                       help="task directories, or folders holding task directories")
    check.add_argument("--max-per-task", type=int, default=20, help="defects printed per task (default 20)")
    check.set_defaults(func=_check)


def _build(args) -> int:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    start = time.monotonic()
    if args.suite == "synthetic":
        from hearscan.tasks.synthetic import build_synthetic

        paths = build_synthetic(args.out, names, force=args.force)
    else:
        from hearscan.tasks.mini import build_mini

        paths = build_mini(args.out, names, force=args.force, scale=args.scale, cache_dir=args.cache)
    _summary(paths, time.monotonic() - start)
    return 0


def _summary(paths: list[Path], seconds: float) -> None:
    total_bytes = total_clips = 0
    for path in paths:
        wavs = list(path.glob("16000/*/*.wav"))
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        total_bytes += size
        total_clips += len(wavs)
        print(f"  {path.name:40s} {len(wavs):6d} clips {size / 1e6:8.1f} MB")
    print(f"built {len(paths)} task(s), {total_clips} clips, {total_bytes / 1e6:.1f} MB in {seconds:.1f} s")


def find_task_dirs(paths: list[Path]) -> list[Path]:
    """A path holding task_metadata.json is a task; otherwise its subdirectories that hold one are."""
    found = []
    for p in paths:
        if not p.exists():
            raise UserFacingError(f"{p}: no such directory")
        if (p / "task_metadata.json").exists() or not p.is_dir():
            found.append(p)
            continue
        children = sorted(c for c in p.iterdir() if c.is_dir() and (c / "task_metadata.json").exists())
        found.extend(children or [p])  # an empty folder is reported as a task missing its metadata
    return found


def _check(args) -> int:
    from tqdm import tqdm

    from hearscan.tasks.check import check_task_dir

    dirs = find_task_dirs(args.dirs)
    bad_tasks = n_defects = n_warnings = 0
    for d in tqdm(dirs, desc="checking", unit="task", disable=len(dirs) < 2, file=sys.stderr):
        found = check_task_dir(d)
        defects = [x for x in found if not x.warning]
        warnings = [x for x in found if x.warning]
        n_warnings += len(warnings)
        if not defects:
            tqdm.write(f"ok      {d}" + (f" ({len(warnings)} warning(s))" if warnings else ""))
        else:
            bad_tasks += 1
            n_defects += len(defects)
            tqdm.write(f"DEFECTS {d}: {len(defects)}")
        shown = defects + warnings
        for defect in shown[: args.max_per_task]:
            tqdm.write(f"  {defect}")
        if len(shown) > args.max_per_task:
            tqdm.write(f"  ... and {len(shown) - args.max_per_task} more (--max-per-task to see them)")
    print(f"checked {len(dirs)} task(s): {len(dirs) - bad_tasks} ok, {bad_tasks} with defects "
          f"({n_defects} defects, {n_warnings} warnings)")
    return 1 if bad_tasks else 0
