"""Atomic files and folders: a reader sees the old content or the new, never half of it.

Every write goes to a temporary sibling named after this process (`.<name>.tmp-<pid>`), so two
processes writing the same path never share a temporary file, and is renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
from pathlib import Path

from hearscan_core.errors import UserFacingError


def temp_sibling(path: Path) -> Path:
    """This process's temporary name beside `path`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path` through a temporary sibling and a rename."""
    path = Path(path)
    tmp = temp_sibling(path)
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = None) -> None:
    atomic_write(path, json.dumps(obj, indent=indent))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    dst = Path(dst)
    tmp = temp_sibling(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def fresh_temp_dir(final: Path) -> Path:
    """This process's temporary sibling folder of `final`, not yet created (removed if it exists).  Siblings
    left by processes that are gone (killed runs) are removed on the way."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    for stale in final.parent.glob(prefix + "*"):
        pid = stale.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f"{prefix}{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder into place, replacing an unfinished `final` left by a crash."""
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


@contextlib.contextmanager
def exclusive(lock: Path, what: str, log=print):
    """Hold `lock` (a file naming this host, PID and start time) while writing `what`; a second writer is
    refused with the holder named.  A lock left by a dead process of this host is taken over, with a notice;
    one from another host (a shared folder) is refused, since its process cannot be checked from here."""
    lock = Path(lock)
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and not pid_alive(int(holder.get("pid", -1))):
                log(f"{what}: taking over the lock of a run that is gone (PID {holder.get('pid')}, since "
                    f"{holder.get('since')})")
                lock.unlink(missing_ok=True)
                continue
            raise UserFacingError(
                f"{what} is being written by another run (host {holder.get('host', '?')}, PID "
                f"{holder.get('pid', '?')}, since {holder.get('since', '?')}); wait for it to finish and run this "
                f"command again (it then skips what is done), or write to another folder; if that run is gone, "
                f"delete {lock}"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # a stale lock reappeared at once: another run is taking it over too
        raise UserFacingError(f"{what}: another run is taking over the stale lock {lock}; run this command again")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
