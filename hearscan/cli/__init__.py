"""The `hearscan` command: the roof over the stages.  Nothing in the project imports it.

One module per command group, each exposing `register(subparsers)`, which adds its parsers and sets
`func`; the handlers only parse arguments and call the stage (feature_extract, downstream, hearscan.tasks,
hearscan.compat, benchmarks).  Imports here stay cheap (no torch at import) so that `hearscan --help` is
instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hearscan_core.errors import UserFacingError

SUBCOMMAND_MODULES = [
    "hearscan.cli.modules",  # modules: the registered families
    "hearscan.cli.heartools",  # validate, heareval-embed, heareval-predict
    "hearscan.cli.tasks",  # tasks build / tasks check
    "hearscan.cli.extract",  # extract
    "hearscan.cli.probe",  # probe, results
    "hearscan.cli.bench",  # bench kernels / ggml / models / probe / extract
    "hearscan.cli.demo",  # demo: the whole chain on the embedded default
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
