"""`hearscan bench ...`: benchmarks that print ratios measured side by side in one run.

kernels -> csrc.bench (compiled vs reference scans);  ggml -> csrc.bench_ggml (our WKV kernels vs ggml's);  models -> hear_modules.bench (audio-seconds per
second per backbone);  probe -> downstream.bench (10-seed linear probe vs heareval's runner);  extract ->
feature_extract.bench (hearscan extract vs heareval's embeddings runner).
`python -m hearscan.bench build-kernels` compiles every CPU kernel into the cache (used by `make setup`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

TARGETS = {
    "kernels": "csrc.bench",
    "ggml": "csrc.bench_ggml",
    "models": "hear_modules.bench",
    "probe": "downstream.bench",
    "extract": "feature_extract.bench",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (kernels, ggml, models, probe, extract)")
    sub = parser.add_subparsers(dest="bench_target", metavar="TARGET")
    sub.required = True
    for name, module in TARGETS.items():
        importlib.import_module(module).register(sub)


def build_kernels() -> int:
    from csrc import _build

    ok = True
    for op in ("wkv7", "wkv6", "selective_scan", "mlstm"):
        try:
            _build.load(op)
            print(f"built {op}")
        except _build.KernelBuildError as err:
            ok = False
            print(f"not built {op}: {err}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m hearscan.bench")
    cli.add_argument("action", choices=["build-kernels"])
    cli.parse_args()
    sys.exit(build_kernels())
