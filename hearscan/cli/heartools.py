"""`hearscan validate`, `hearscan heareval-embed`, `hearscan heareval-predict`: the HEAR tools through the
compat layer (see `hearscan.compat`)."""

from __future__ import annotations

import json

from hearscan_core.errors import UserFacingError

FIXES_HELP = "the compat fixes applied in the tool's process are listed in `python -m pydoc hearscan.compat`"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help="run hear-validator on a HEAR module",
        description=f"Run hear-validator 2021.0.6 on MODULE through the compat layer ({FIXES_HELP}).",
    )
    p.add_argument("module", help="importable HEAR module, e.g. hear_modules.logmel")
    p.add_argument("--model", default=None, help="weights file passed to load_model")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_validate)

    p = subparsers.add_parser(
        "heareval-embed", help="run heareval's embeddings runner",
        description="Compute embeddings of every task in --tasks-dir with heareval's embeddings runner "
        "(output: EMBEDDINGS_DIR/<module>[-k=v]/<task>/). Finished tasks are skipped.",
    )
    p.add_argument("module", help="importable HEAR module, e.g. hear_modules.logmel")
    p.add_argument("--model", default=None, help="weights file passed to load_model")
    p.add_argument("--tasks-dir", required=True, help="folder of HEAR task folders")
    p.add_argument("--embeddings-dir", required=True, help="where embeddings are written")
    p.add_argument("--task", default="all", help="one task folder name (default: all)")
    p.add_argument("--model-options", default=None, help='JSON dict passed to load_model, e.g. \'{"size": "tiny"}\'')
    p.set_defaults(func=_embed)

    p = subparsers.add_parser(
        "heareval-predict", help="run heareval's predictions runner (downstream probe)",
        description="Train and score heareval's downstream predictor on embeddings task folders. Scores land "
        "in each folder's test.predicted-scores.json.",
    )
    p.add_argument("task_dirs", nargs="+", metavar="EMB_TASK_DIR", help="embeddings task folder(s)")
    p.add_argument("--seed", type=int, default=None, help="seed instead of heareval's fixed 42")
    p.add_argument("--grid", default="default", choices=["default", "fast", "faster", "fork"],
                   help="heareval's grids, or fork: the seed papers' 2-point grid (default: default)")
    p.add_argument("--grid-points", type=int, default=None, help="grid points to train (default 8; fork: 2)")
    p.add_argument("--max-epochs", type=int, default=None, help="override the grid's max_epochs")
    p.add_argument("--grid-override", default=None,
                   help='JSON dict of numeric grid values, e.g. \'{"patience": [5]}\'')
    p.add_argument("--gpus", default=None, help='JSON list of GPU ids, e.g. "[0]"; "[]" for CPU (default: heareval\'s, [0] when CUDA is present)')
    p.add_argument("--rerun", action="store_true", help="replace scores predicted with other settings")
    p.add_argument("--log-dir", default=None, help="keep Lightning logs here (checkpoints are still removed)")
    p.set_defaults(func=_predict)


def _json_arg(text, flag: str, kind):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserFacingError(f"{flag}: not valid JSON ({err}): {text}") from None
    if not isinstance(value, kind):
        raise UserFacingError(f"{flag}: expected a JSON {kind.__name__}, got {text}")
    return value


def _validate(args) -> int:
    from hearscan.compat import run_validator

    run = run_validator(args.module, args.model, device=args.device)
    print(f"hearscan validate: {args.module} passed hear-validator ({run.seconds:.1f} s)")
    return 0


def _embed(args) -> int:
    from hearscan.compat import run_embeddings

    options = _json_arg(args.model_options, "--model-options", dict)
    run = run_embeddings(args.module, args.model, args.tasks_dir, args.embeddings_dir, task=args.task,
                         model_options=options)
    print(f"hearscan heareval-embed: {len(run.task_dirs)} task(s) in {run.module_dir} ({run.seconds:.1f} s)")
    for path in run.task_dirs:
        print(f"  {path.name}")
    return 0


def _predict(args) -> int:
    from hearscan.compat import run_predictions

    overrides = _json_arg(args.grid_override, "--grid-override", dict) or {}
    if args.max_epochs is not None:
        overrides["max_epochs"] = [args.max_epochs]
    gpus = _json_arg(args.gpus, "--gpus", list)
    results = run_predictions(args.task_dirs, seed=args.seed, grid=args.grid, grid_points=args.grid_points,
                              gpus=gpus, grid_overrides=overrides, rerun=args.rerun, log_dir=args.log_dir)
    settings = results[0].settings
    print(f"hearscan heareval-predict: seed {settings['seed']}, grid {settings['grid']} "
          f"({settings['grid_points']} points)")
    width = max(len(r.task_dir.name) for r in results)
    for r in results:
        note = "  (already done, skipped)" if r.skipped else ""
        print(f"  {r.task_dir.name:<{width}}  {r.metric} = {r.test_score:.4f}{note}")
    return 0
