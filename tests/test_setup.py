"""The set-up's disk check (Makefile: DISK_CHECK, run by `make setup` before torch goes in).

A full disk once killed CI halfway through pip's torch install with a bare OSError; the check must stop
first with the free and needed space, and let the set-up go on when there is room.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _disk_check_source() -> str:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^define DISK_CHECK\n(.*?)^endef$", makefile, re.S | re.M)
    assert match, "Makefile has no DISK_CHECK"
    assert "$$DISK_CHECK" in makefile  # and the set-up recipe runs it
    return match.group(1)


def _run(path, need_gb):
    return subprocess.run([sys.executable, "-c", _disk_check_source(), str(path), str(need_gb)],
                          capture_output=True, text=True)


def test_too_little_disk_stops_with_a_clear_message(tmp_path):
    out = _run(tmp_path, 1e12)  # a petabyte: no disk here has it
    assert out.returncode != 0
    assert "make setup needs about 1e+12 GB free" in out.stderr
    assert str(tmp_path) in out.stderr and "GB is free" in out.stderr and "run make setup again" in out.stderr


def test_enough_disk_passes_silently(tmp_path):
    out = _run(tmp_path, 0.001)
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
