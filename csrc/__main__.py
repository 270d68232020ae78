"""`python -m csrc build`: compile every CPU kernel of `csrc.OPS` into the cache (what `make setup` runs)."""

import argparse
import sys

from csrc import OPS, KernelBuildError
from csrc._build import load


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m csrc")
    parser.add_argument("action", choices=["build"], help="build: compile every CPU kernel into the cache")
    parser.parse_args()
    ok = True
    for op in OPS:
        try:
            load(op)
            print(f"built {op}")
        except KernelBuildError as err:
            ok = False
            print(f"not built {op}: {err}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
