"""Build-on-first-use of the compiled kernels, with a cache keyed by source, torch version and CPU.

`load(op)` compiles `csrc/<op>_cpu.cpp` into a torch extension once and caches the build under
`$HEARSCAN_CACHE_DIR` (default `~/.cache/hearscan`).  `resolve_backend` turns the user's choice into
`"compiled"` or `"reference"`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BACKENDS = ("auto", "compiled", "reference")
_ENV = "HEARSCAN_SCAN_BACKEND"
_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}


class KernelBuildError(RuntimeError):
    """The compiled kernel could not be built (no compiler, or a compile error)."""


def cache_root() -> Path:
    return Path(os.environ.get("HEARSCAN_CACHE_DIR", Path.home() / ".cache" / "hearscan"))


def resolve_backend(backend: str | None, op: str) -> str:
    """Return "compiled" or "reference" for `op`, from the argument, else `$HEARSCAN_SCAN_BACKEND`."""
    choice = (backend or os.environ.get(_ENV) or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(
            f"unknown scan backend {choice!r} (from {'argument' if backend else '$' + _ENV}); "
            f"choose one of {', '.join(BACKENDS)}"
        )
    if choice == "reference":
        return "reference"
    if choice == "compiled":
        load(op)  # raises KernelBuildError with the reason
        return "compiled"
    try:
        load(op)
        return "compiled"
    except KernelBuildError:
        return "reference"


def _source_key(sources: list[Path], flags: list[str]) -> str:
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(torch.__version__.encode())
    h.update(platform.machine().encode())
    h.update(" ".join(flags).encode())
    return h.hexdigest()[:16]


def load(op: str):
    """Compile (once) and import the CPU extension for `op`; raise KernelBuildError if impossible."""
    if op in _loaded:
        return _loaded[op]
    if op in _failed:
        raise KernelBuildError(_failed[op])
    with _lock:
        if op in _loaded:
            return _loaded[op]
        sources = sorted(HERE.glob(f"{op}_cpu.cpp"))
        if not sources:
            _failed[op] = f"no compiled kernel for {op} (csrc/{op}_cpu.cpp is missing)"
            raise KernelBuildError(_failed[op])
        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None:
            _failed[op] = (
                f"no C++ compiler ({cxx!r}) found to build the {op} kernel; install one "
                "(Debian: apt-get install g++) or run with HEARSCAN_SCAN_BACKEND=reference"
            )
            raise KernelBuildError(_failed[op])
        from torch.utils import cpp_extension

        flags = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]
        key = _source_key(sources, flags)
        build_dir = cache_root() / "kernels" / f"{op}-{key}"
        build_dir.mkdir(parents=True, exist_ok=True)
        try:
            module = cpp_extension.load(
                name=f"hearscan_{op}_{key}",
                sources=[str(s) for s in sources],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                verbose=os.environ.get("HEARSCAN_BUILD_VERBOSE") == "1",
            )
        except Exception as err:  # compiler errors surface as RuntimeError/CalledProcessError
            _failed[op] = f"building the {op} kernel failed: {err}"
            raise KernelBuildError(_failed[op]) from err
        _loaded[op] = module
        return module
