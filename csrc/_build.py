"""Build-on-first-use of the compiled kernels, with a cache keyed by source, torch version and CPU.

`load(op)` compiles `csrc/<op>_cpu.cpp` into a torch extension once and caches the build under
`$HEARSCAN_CACHE_DIR` (default `~/.cache/hearscan`)/kernels/<op>-<key>.  The key hashes the source,
the shared headers `csrc/*.h` it may include, the torch version, the compiler flags and this CPU's
instruction-set flags, because `-march=native` code from one machine may not run on another that
shares the home directory.  A finished build is marked with a `.built` file and later processes
import that library directly (no compiler, no ninja run).  `make setup` pre-builds every kernel (`python -m csrc build`).

`load(op, "cuda")` does the same for `csrc/<op>_cuda.cu` (and the headers `csrc/*.cuh`) with nvcc, for
the compute capability of the current GPU; that key also holds torch's CUDA version and the
capability.  It needs a CUDA build of torch, a visible GPU and nvcc (`CUDA_HOME`, else the `nvcc` on
the PATH); a CPU-only install never compiles or imports CUDA code.

Which implementation runs (the user's backend request, the device, the inputs) is decided in
`csrc.dispatch`, not here: this module only builds and imports.  Kernels are per device type: CPU and CUDA.

CPU kernel sources are compiled with `-O3 -march=native -fopenmp -ffp-contract=fast` and 512-bit vectors
preferred; use `at::parallel_for` for threads (torch's pool, so `torch.set_num_threads` applies).
CUDA sources with `-O3 -lineinfo` and one `-gencode` for the GPU in use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# Tuples: torch.utils.cpp_extension.load appends its own libraries to the lists it is given, which would
# change every build key computed later in the same process.
CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-ffp-contract=fast")
LDFLAGS = ("-fopenmp",)
CUDA_CFLAGS = ("-O3", "-lineinfo")
DEVICE_TYPES = ("cpu", "cuda")  # the device types that have compiled kernels
_lock = threading.Lock()
_loaded: dict[tuple[str, str], object] = {}
_failed: dict[tuple[str, str], str] = {}


class KernelBuildError(RuntimeError):
    """The compiled kernel could not be built (no compiler, or a compile error)."""


def cache_root() -> Path:
    return Path(os.environ.get("HEARSCAN_CACHE_DIR", Path.home() / ".cache" / "hearscan"))


def _device_type(device) -> str:
    if device is None:
        return "cpu"
    return torch.device(device).type


def _cpu_flags() -> str:
    """This CPU's instruction-set flags (what -march=native depends on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


def source_name(op: str, device: str = "cpu") -> str:
    """The kernel source's file name in csrc/: `<op>_cpu.cpp`, or `<op>_cuda.cu`."""
    return f"{op}_cpu.cpp" if device == "cpu" else f"{op}_{device}.cu"


def sources(op: str, device: str = "cpu") -> list[Path]:
    return sorted(HERE.glob(source_name(op, device)))


def headers(device: str = "cpu") -> list[Path]:
    """The shared headers that kernel sources include (`csrc/*.h`; CUDA: `csrc/*.cuh`); part of every key."""
    return sorted(HERE.glob("*.h" if device == "cpu" else "*.cuh"))


def _cuda_capability() -> str:
    """Compute capability of the current GPU as "90" (for -gencode and the build key)."""
    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


def _cuda_flags() -> tuple[str, ...]:
    cc = _cuda_capability()
    return CUDA_CFLAGS + (f"-gencode=arch=compute_{cc},code=sm_{cc}",)


def build_key(op: str, device: str = "cpu") -> str:
    """Hash of everything the compiled library depends on (its source and every shared header)."""
    h = hashlib.sha256()
    for src in sources(op, device) + headers(device):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(torch.__version__.encode())
    h.update(platform.machine().encode())
    h.update(os.environ.get("CXX", "c++").encode())
    if device == "cpu":
        h.update(_cpu_flags().encode())
        h.update(" ".join(CFLAGS + LDFLAGS).encode())
    else:
        h.update(f"cuda={torch.version.cuda} {' '.join(_cuda_flags())}".encode())
    return h.hexdigest()[:16]


def build_dir(op: str, device: str = "cpu") -> Path:
    suffix = "" if device == "cpu" else f"-{device}"
    return cache_root() / "kernels" / f"{op}{suffix}-{build_key(op, device)}"


def _import_built(name: str, directory: Path):
    """Import a finished build without running the compiler or ninja."""
    libs = sorted(directory.glob(f"{name}*.so"))
    if not (directory / ".built").exists() or not libs:
        return None
    spec = importlib.util.spec_from_file_location(name, libs[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nvcc() -> str | None:
    """Path of nvcc: $CUDA_HOME/bin/nvcc (as torch finds CUDA_HOME), else the PATH's; None if absent."""
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and Path(home, "bin", "nvcc").exists():
        return str(Path(home, "bin", "nvcc"))
    return shutil.which("nvcc")


def _missing_cuda(op: str) -> str | None:
    """Why the CUDA kernel for `op` cannot be built here (None when it can)."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) has no CUDA support, so there is no CUDA {op} kernel"
    if not torch.cuda.is_available():
        return f"no CUDA device is visible, so the CUDA {op} kernel cannot be built"
    if _nvcc() is None:
        return (
            f"nvcc (the CUDA compiler, needed once to build the CUDA {op} kernel) was not found; install the "
            f"CUDA toolkit {torch.version.cuda} (torch's CUDA version) and set CUDA_HOME, "
            "or run with HEARSCAN_SCAN_BACKEND=reference"
        )
    return None


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
    slot = (op, dev)
    if slot in _loaded:
        return _loaded[slot]
    if slot in _failed:
        raise KernelBuildError(_failed[slot])
    if dev not in DEVICE_TYPES:
        raise KernelBuildError(
            f"no compiled {op} kernel for {dev} tensors (kernels exist for {', '.join(DEVICE_TYPES)}); "
            "use backend='reference' or move the tensors to the CPU"
        )
    with _lock:
        if slot in _loaded:
            return _loaded[slot]
        if slot in _failed:
            raise KernelBuildError(_failed[slot])
        problem = _missing_cuda(op) if dev == "cuda" else None
        if problem is None and not sources(op, dev):
            problem = f"no compiled {dev} kernel for {op} (csrc/{source_name(op, dev)} is missing)"
        if problem:
            _failed[slot] = problem
            raise KernelBuildError(problem)
        key = build_key(op, dev)
        name = f"hearscan_{op}_{dev}_{key}"
        directory = build_dir(op, dev)
        module = _import_built(name, directory)
        if module is None:
            problem = _missing_tool(op)
            if problem:
                _failed[slot] = problem
                raise KernelBuildError(problem)
            module = _compile(op, dev, name, directory)
        _loaded[slot] = module
        return module


def _compile(op: str, dev: str, name: str, directory: Path):
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    label = op if dev == "cpu" else f"{dev.upper()} {op}"
    if os.environ.get("HEARSCAN_BUILD_QUIET") != "1":
        print(f"hearscan: compiling the {label} kernel (once; cached in {directory})", file=sys.stderr)
    flags = dict(extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS))
    if dev == "cuda":
        # One -gencode for this GPU: torch then adds no arch flags of its own.
        flags = dict(extra_cflags=["-O3"], extra_cuda_cflags=list(_cuda_flags()))
    try:
        # cpp_extension locks the build directory, so concurrent processes build it once.
        module = cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources(op, dev)],
            build_directory=str(directory),
            verbose=os.environ.get("HEARSCAN_BUILD_VERBOSE") == "1",
            **flags,
        )
    except Exception as err:  # compiler errors surface as RuntimeError/CalledProcessError
        _failed[(op, dev)] = f"building the {label} kernel failed ({directory}): {err}"
        raise KernelBuildError(_failed[(op, dev)]) from err
    marker = directory / ".built"
    tmp = directory / f".built.{os.getpid()}.tmp"
    tmp.write_text(key_info(op, dev))
    os.replace(tmp, marker)  # the marker appears only once the library is complete
    return module


def key_info(op: str, device: str = "cpu") -> str:
    if device == "cuda":
        return (f"op={op}\ndevice=cuda\ntorch={torch.__version__}\ncuda={torch.version.cuda}\n"
                f"cuda_cflags={' '.join(_cuda_flags())}\n")
    return f"op={op}\ntorch={torch.__version__}\ncflags={' '.join(CFLAGS)}\ncpu_flags={_cpu_flags()}\n"
