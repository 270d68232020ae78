"""What every benchmark's `--json` carries, so a figure can be traced: the command, the date, the machine
and its load, the versions.  `python -m benchmarks.report` prints it above each table of docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stamp(kind: str) -> dict:
    """`kind` names the benchmark (kernels, models, probe, extract); the rest describes this run."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "benchmark": kind,
        "command": "hearscan bench " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index(kind):])
        if kind in sys.argv else " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": {
            "cpu": _cpu_model(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "gpu": gpu,
            "cuda": torch.version.cuda if gpu else None,
            "driver": _nvidia_driver() if gpu else None,
        },
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def _nvidia_driver() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
