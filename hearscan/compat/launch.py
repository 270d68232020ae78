"""Launcher: `python -m hearscan.compat.launch TOOL [launcher options] -- [tool arguments]`.

Runs one HEAR-stack tool in this (fresh) process after applying the fixes in `hearscan.compat.fixes`:

  TOOL = validator    hear-validator (hearvalidator.validate:main)
         embeddings   heareval.embeddings.runner
         predictions  heareval.predictions.runner

The fixes touch only this process.  `hearscan.compat.run_*` start it in a subprocess with its working
directory in a scratch folder, so nothing lands in the caller's working directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from hearscan.compat import fixes

TOOLS = ("validator", "embeddings", "predictions")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        ours, tool_args = argv[:cut], argv[cut + 1 :]
    else:
        ours, tool_args = argv, []
    parser = argparse.ArgumentParser(prog="python -m hearscan.compat.launch")
    parser.add_argument("tool", choices=TOOLS)
    parser.add_argument("--origin-cwd", help="the caller's working directory, importable like `python -m` would make it")
    parser.add_argument("--seed", type=int, help="predictions: seed instead of heareval's 42")
    parser.add_argument("--grid", default="default", help="predictions: default, fast, faster or fork")
    parser.add_argument("--grid-overrides", default="{}", help="predictions: JSON dict of grid values")
    parser.add_argument("--log-dir", help="predictions: where Lightning logs go (default: a temp dir, removed)")
    parser.add_argument(
        "--disable", default="",
        help=f"comma-separated fixes to leave out, for tests that show the upstream failure: {','.join(fixes.FIX_NAMES)}",
    )
    args = parser.parse_args(ours)
    args.disable = {name for name in args.disable.split(",") if name}
    unknown = args.disable - set(fixes.FIX_NAMES)
    if unknown:
        parser.error(f"unknown fixes {sorted(unknown)}; known: {', '.join(fixes.FIX_NAMES)}")
    return args, tool_args


def note(message: str) -> None:
    print(f"[hearscan.compat] {message}", file=sys.stderr, flush=True)


def apply_fixes(args: argparse.Namespace) -> None:
    if args.origin_cwd and args.origin_cwd not in sys.path:
        # `python -m heareval...` run from the caller's directory would import modules found there.
        sys.path.insert(0, args.origin_cwd)
    if "tf" not in args.disable and args.tool in ("validator", "embeddings"):
        note(fixes.install_tf_standin())
    if "pynvml" not in args.disable and args.tool in ("embeddings", "predictions"):
        note(fixes.patch_gpu_max_mem())
    if args.tool != "predictions":
        return
    if "numpy" not in args.disable:
        note(fixes.numpy_inf_alias())
    if "weights_only" not in args.disable:
        note(fixes.allow_lightning_checkpoints())
    if "epoch" not in args.disable:
        note(fixes.patch_event_epoch())
    if "logs" not in args.disable:
        note(fixes.redirect_lightning_logs(Path(args.log_dir)))
    if args.seed is not None:
        note(fixes.patch_seed(args.seed))


def main(argv: list[str] | None = None) -> int:
    args, tool_args = parse(sys.argv[1:] if argv is None else argv)
    own_log_dir = None
    if args.tool == "predictions" and not args.log_dir:
        args.log_dir = own_log_dir = tempfile.mkdtemp(prefix="hearscan-lightning-")
    try:
        return run_tool(args, tool_args)
    finally:
        if own_log_dir:
            shutil.rmtree(own_log_dir, ignore_errors=True)


def run_tool(args: argparse.Namespace, tool_args: list[str]) -> int:
    apply_fixes(args)

    if args.tool == "validator":
        from hearvalidator import validate

        sys.argv = ["hear-validator", *tool_args]
        validate.main()
        return 0

    if args.tool == "embeddings":
        from heareval.embeddings.runner import runner

        runner.main(args=tool_args, prog_name="heareval.embeddings.runner", standalone_mode=False)
        return 0

    from heareval.predictions.runner import runner

    passed_grid, description = fixes.install_grid(args.grid, json.loads(args.grid_overrides))
    note(description)
    runner.main(
        args=[*tool_args, "--grid", passed_grid], prog_name="heareval.predictions.runner", standalone_mode=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
