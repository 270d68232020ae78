"""Build-on-first-use of the compiled kernels, with a cache keyed by source, torch version and CPU.

`load(op)` compiles `csrc/<op>_cpu.cpp` into a torch extension once and caches the build under
`$HEARSCAN_CACHE_DIR` (default `~/.cache/hearscan`)/kernels/<op>-<key>.  The key hashes the source,
the shared headers `csrc/*.h` it may include, the torch version, the compiler flags and this CPU's
instruction-set flags, because `-march=native` code from one machine may not run on another that
shares the home directory.  A finished build is marked with a `.built` file and later processes
import that library directly (no compiler, no ninja run).  `make setup` pre-builds every kernel (`python -m hearscan.bench build-kernels`).

`resolve_backend(backend, op, device=None)` turns the user's choice (argument, else
`$HEARSCAN_SCAN_BACKEND`, else "auto") into "compiled" or "reference".  "auto" falls back to the
reference with one warning when the kernel cannot be built; "compiled" raises `KernelBuildError`
with the reason.  Kernels are per device type: only CPU kernels exist today; tensors on another
device use the reference under "auto" (a CUDA kernel `csrc/<op>_cuda.cu` slots in via `load`).

Kernel sources are compiled with `-O3 -march=native -fopenmp -ffp-contract=fast` and 512-bit vectors
preferred; use `at::parallel_for` for threads (torch's pool, so `torch.set_num_threads` applies).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BACKENDS = ("auto", "compiled", "reference")
OPS = ("wkv7", "wkv6", "selective_scan", "mlstm")
_ENV = "HEARSCAN_SCAN_BACKEND"
# Tuples: torch.utils.cpp_extension.load appends its own libraries to the lists it is given, which would
# change every build key computed later in the same process.
CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-ffp-contract=fast")
LDFLAGS = ("-fopenmp",)
_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}
_warned: set[str] = set()


class KernelBuildError(RuntimeError):
    """The compiled kernel could not be built (no compiler, or a compile error)."""


def cache_root() -> Path:
    return Path(os.environ.get("HEARSCAN_CACHE_DIR", Path.home() / ".cache" / "hearscan"))


def _device_type(device) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def requested_backend(backend: str | None) -> str:
    """The user's choice: `backend`, else `$HEARSCAN_SCAN_BACKEND`, else "auto" (validated)."""
    choice = (backend or os.environ.get(_ENV) or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(
            f"unknown scan backend {choice!r} (from {'argument' if backend else '$' + _ENV}); "
            f"choose one of {', '.join(BACKENDS)}"
        )
    return choice


def resolve_backend(backend: str | None, op: str, device=None) -> str:
    """Return "compiled" or "reference" for `op` on `device` (default CPU).

    The choice comes from `backend`, else `$HEARSCAN_SCAN_BACKEND`, else "auto".
    """
    choice = requested_backend(backend)
    if choice == "reference":
        return "reference"
    if choice == "compiled":
        load(op, device)  # raises KernelBuildError with the reason
        return "compiled"
    try:
        load(op, device)
        return "compiled"
    except KernelBuildError as err:
        dev = _device_type(device)
        if dev == "cpu" and op not in _warned:
            _warned.add(op)
            warnings.warn(f"{err}; using the (much slower) PyTorch reference for {op}", stacklevel=3)
        return "reference"


def _cpu_flags() -> str:
    """This CPU's instruction-set flags (what -march=native depends on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def sources(op: str) -> list[Path]:
    return sorted(HERE.glob(f"{op}_cpu.cpp"))


def headers() -> list[Path]:
    """The shared headers (`csrc/*.h`) that kernel sources include; each is part of every build key."""
    return sorted(HERE.glob("*.h"))


def build_key(op: str) -> str:
    """Hash of everything the compiled library depends on (its source and every shared header)."""
    h = hashlib.sha256()
    for src in sources(op) + headers():
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(torch.__version__.encode())
    h.update(platform.machine().encode())
    h.update(_cpu_flags().encode())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(os.environ.get("CXX", "c++").encode())
    return h.hexdigest()[:16]


def build_dir(op: str) -> Path:
    return cache_root() / "kernels" / f"{op}-{build_key(op)}"


def _import_built(name: str, directory: Path):
    """Import a finished build without running the compiler or ninja."""
    libs = sorted(directory.glob(f"{name}*.so"))
    if not (directory / ".built").exists() or not libs:
        return None
    spec = importlib.util.spec_from_file_location(name, libs[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _missing_tool(op: str) -> str | None:
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return (
            f"no C++ compiler ({cxx!r}) found to build the {op} kernel; install one "
            "(Debian/Ubuntu: apt-get install g++) or run with HEARSCAN_SCAN_BACKEND=reference"
        )
    if shutil.which("ninja") is None and shutil.which("ninja", path=str(Path(sys.executable).parent)) is None:
        return (
            f"ninja (needed by torch to build the {op} kernel) was not found; install it "
            "(apt-get install ninja-build, or pip install ninja) or run with HEARSCAN_SCAN_BACKEND=reference"
        )
    return None


def load(op: str, device=None):
    """Compile (once) and import the kernel for `op` on `device`; raise KernelBuildError if impossible."""
    dev = _device_type(device)
    if dev != "cpu":
        raise KernelBuildError(
            f"no compiled {op} kernel for {dev} tensors yet (only CPU kernels exist); "
            "use backend='reference' or move the tensors to the CPU"
        )
    if op in _loaded:
        return _loaded[op]
    if op in _failed:
        raise KernelBuildError(_failed[op])
    with _lock:
        if op in _loaded:
            return _loaded[op]
        if op in _failed:
            raise KernelBuildError(_failed[op])
        if not sources(op):
            _failed[op] = f"no compiled kernel for {op} (csrc/{op}_cpu.cpp is missing)"
            raise KernelBuildError(_failed[op])
        key = build_key(op)
        name = f"hearscan_{op}_{key}"
        directory = build_dir(op)
        module = _import_built(name, directory)
        if module is None:
            problem = _missing_tool(op)
            if problem:
                _failed[op] = problem
                raise KernelBuildError(problem)
            module = _compile(op, name, directory)
        _loaded[op] = module
        return module


def _compile(op: str, name: str, directory: Path):
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    if os.environ.get("HEARSCAN_BUILD_QUIET") != "1":
        print(f"hearscan: compiling the {op} kernel (once; cached in {directory})", file=sys.stderr)
    try:
        # cpp_extension locks the build directory, so concurrent processes build it once.
        module = cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources(op)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(directory),
            verbose=os.environ.get("HEARSCAN_BUILD_VERBOSE") == "1",
        )
    except Exception as err:  # compiler errors surface as RuntimeError/CalledProcessError
        _failed[op] = f"building the {op} kernel failed ({directory}): {err}"
        raise KernelBuildError(_failed[op]) from err
    marker = directory / ".built"
    tmp = directory / f".built.{os.getpid()}.tmp"
    tmp.write_text(key_info(op))
    os.replace(tmp, marker)  # the marker appears only once the library is complete
    return module


def key_info(op: str) -> str:
    return f"op={op}\ntorch={torch.__version__}\ncflags={' '.join(CFLAGS)}\ncpu_flags={_cpu_flags()}\n"
