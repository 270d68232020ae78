"""`hearscan bench TARGET`: the benchmarks of the `benchmarks` package (see its docstring)."""

from __future__ import annotations

import importlib

from benchmarks import TARGETS


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help=f"benchmarks ({', '.join(TARGETS)})")
    sub = parser.add_subparsers(dest="bench_target", metavar="TARGET")
    sub.required = True
    for module in TARGETS.values():
        importlib.import_module(module).register(sub)
