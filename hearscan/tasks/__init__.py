"""Task suites in the HEAR 2021 format, and a checker for any task directory.

- `build_synthetic(out_dir, tasks=None)`: tiny numpy-generated tasks for tests (seconds, no system packages).
- `build_mini(out_dir, tasks=None)`: the mini suite from real recordings and speech/music synthesis
  (Debian packages fetched with `apt-get download`).
- `check_task_dir(path) -> list[Defect]`.
"""

from hearscan.tasks.check import Defect, check_task_dir
from hearscan.tasks.synthetic import build_synthetic


def build_mini(*args, **kwargs):
    from hearscan.tasks.mini import build_mini as _build_mini

    return _build_mini(*args, **kwargs)


__all__ = ["Defect", "build_mini", "build_synthetic", "check_task_dir"]
