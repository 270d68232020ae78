"""The `hearscan` command.  Each area of the toolkit registers its own subcommands.

Every listed module exposes `register(subparsers)`, which adds its parsers and sets `func` on them.
Imports here stay cheap (no torch at import) so that `hearscan --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hearscan_core.errors import UserFacingError

SUBCOMMAND_MODULES = [
    "hearscan.compat.cli",  # validate, heareval-embed, heareval-predict
    "hearscan.tasks.cli",  # tasks build / tasks check
    "feature_extract.cli",  # extract
    "downstream.cli",  # probe, results
    "hearscan.bench",  # bench kernels / models / probe
    "hearscan.demo",  # demo: the whole chain on the embedded default
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hearscan",
        description="HEAR-compatible embedding evaluation for linear-time audio backbones.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("hearscan: interrupted", file=sys.stderr)
        return 130
    except UserFacingError as err:
        print(f"hearscan {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
