"""Faults of a long run and bad input, each through the real CLI: the exit status, one line naming the file
and the fix (no traceback), and - after resuming - outputs identical to an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hearscan.tasks.synthetic import build_synthetic

HEARSCAN = [sys.executable, "-m", "hearscan"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    build_synthetic(root, tasks=["syn_pitch", "syn_events"])
    return root


def extract(tasks: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(HEARSCAN + ["extract", str(tasks), str(out), "logmel", "--no-progress", *extra],
                          capture_output=True, text=True, timeout=600)


def tree_bytes(root: Path) -> dict[str, bytes]:
    skip = {"profile.embeddings.json", "hearscan-manifest.json"}  # wall times and dates differ by design
    return {str(p.relative_to(root)): p.read_bytes().replace(str(root).encode(), b"OUT")
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def assert_one_line_error(run: subprocess.CompletedProcess, *needles: str) -> None:
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, run.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def clean(tasks, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "out"
    assert extract(tasks, out, "--max-batch-seconds", "0.5").returncode == 0
    return out


@pytest.fixture(scope="module")
def killed(tasks, tmp_path_factory) -> Path:
    """An extraction killed (SIGKILL) after it saved some batches."""
    out = tmp_path_factory.mktemp("killed") / "out"
    cmd = HEARSCAN + ["extract", str(tasks), str(out), "logmel", "--no-progress", "--max-batch-seconds", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/.partial-*/.chunks-*/batch-*[0-9].npz"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(out.glob("*/.partial-*/.chunks-*/batch-*[0-9].npz")), "the run finished before it could be killed"
    return out


def test_resume_with_another_max_batch_seconds(killed, clean, tasks, tmp_path):
    """Chunks are keyed by the clips they hold: a resume with another batch size (what a user does after
    running out of memory) keeps the finished chunks and batches only the rest."""
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    run = extract(tasks, out, "--max-batch-seconds", "3")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "resuming" in run.stderr
    assert not list(out.glob("*/.partial-*"))
    assert tree_bytes(out) == tree_bytes(clean)


def test_a_corrupt_chunk_is_recomputed(killed, clean, tasks, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    chunk = sorted(out.glob("*/.partial-*/.chunks-*/batch-*[0-9].npz"))[0]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])  # truncated
    run = extract(tasks, out, "--max-batch-seconds", "0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{chunk.name} is damaged or incomplete; recomputing its clips" in run.stderr
    assert tree_bytes(out) == tree_bytes(clean)


def test_a_chunk_without_its_record_is_recomputed(killed, clean, tasks, tmp_path):
    """A kill between the chunk's rename and its record: the chunk is not trusted."""
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    chunk = sorted(out.glob("*/.partial-*/.chunks-*/batch-*[0-9].npz"))[-1]
    chunk.with_name(chunk.name + ".json").unlink(missing_ok=True)  # a kill may have left it unwritten already
    run = extract(tasks, out, "--max-batch-seconds", "0.5")
    assert run.returncode == 0 and "damaged or incomplete" in run.stderr
    assert tree_bytes(out) == tree_bytes(clean)


def _task_with(tasks: Path, tmp_path: Path, edit) -> Path:
    """A copy of syn_pitch in its own tasks folder, its first training clip changed by `edit(path)`."""
    root = tmp_path / "tasks"
    src = next(tasks.glob("syn_pitch-*"))
    shutil.copytree(src, root / src.name)
    split = json.loads((root / src.name / "train.json").read_text())
    wav = root / src.name / "16000" / "train" / sorted(split)[0]
    edit(wav)
    return root


def test_a_truncated_wav_is_refused_by_name_and_skipped_with_skip_bad(tasks, tmp_path):
    def cut(wav):
        data = wav.read_bytes()
        wav.write_bytes(data[: len(data) // 2])

    root = _task_with(tasks, tmp_path, cut)
    run = extract(root, tmp_path / "out")
    assert_one_line_error(run, "is truncated", "--skip-bad")
    assert not list((tmp_path / "out").glob("*/syn_pitch*"))  # nothing looks finished
    check = subprocess.run(HEARSCAN + ["tasks", "check", str(root)], capture_output=True, text=True, timeout=300)
    assert check.returncode == 1 and "truncated" in check.stdout
    run = extract(root, tmp_path / "out", "--skip-bad")
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads(next((tmp_path / "out").glob("*/syn_pitch*/hearscan-manifest.json")).read_text())
    assert [b["reason"] for b in manifest["skipped_bad_files"] if "truncated" in b["reason"]]


def test_a_clip_shorter_than_one_frame_is_refused_by_name(tasks, tmp_path):
    """10 ms: every module refuses it through the shared input check (logmel crashed inside torchaudio)."""
    root = _task_with(tasks, tmp_path, lambda wav: sf.write(wav, np.zeros(160), 16000, subtype="PCM_16"))
    meta = next(root.iterdir()) / "task_metadata.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), sample_duration=None)))  # clips of any length
    run = extract(root, tmp_path / "out")
    assert_one_line_error(run, "logmel", "shorter than one analysis frame", "pad")


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KB tmpfs (root only; skipped where mounting is not allowed), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); test_full_disk_simulated covers the same path")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_an_error_never_a_crash_and_the_run_resumes(tasks, clean, tmp_path, small_disk):
    """On a full disk (a real, tiny tmpfs) the memmap is reserved before it is written: one error line naming
    the folder, no SIGBUS, no temporary files left; with room again the same command resumes to the bytes of
    an uninterrupted run."""
    out = small_disk / "out"
    run = extract(tasks, out, "--max-batch-seconds", "0.5")
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])  # SIGBUS would be -7
    assert_one_line_error(run, "is full", "run the same command again")
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    run = extract(tasks, out, "--max-batch-seconds", "0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    assert tree_bytes(out) == tree_bytes(clean)


def test_full_disk_simulated(tasks, tmp_path, monkeypatch, capsys):
    """The same path where no tmpfs can be mounted: ENOSPC from the memmap's reservation."""
    import errno
    import os

    from hearscan.cli import main

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert main(["extract", str(tasks), str(tmp_path / "out"), "logmel", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is full" in err and "MB more were needed" in err and "run the same command again" in err
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


def test_two_writers_into_one_folder(tasks, tmp_path):
    """A second run into the same OUT is refused with the holder named, and the first finishes intact (with
    every clip counted).  The first run uses Con-RWKV on its reference scan, slow enough to overlap."""
    out = tmp_path / "out"
    cmd = HEARSCAN + ["extract", str(tasks), str(out), "conrwkv", "-o", "scan_backend=reference", "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*/.lock-*")):
        time.sleep(0.02)
    assert list(out.glob("*/.lock-*")), "the first run never took its lock"
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert_one_line_error(second, "is being written by another run", f"PID {first.pid}")
    n_clips = sum(len(json.loads(p.read_text())) for t in tasks.iterdir() for p in t.glob("*.json")
                  if p.name != "task_metadata.json")
    assert f"2 new/0 skip {n_clips:>7d}" in stdout, stdout
    assert not list(out.glob("*/.partial-*")) and not list(out.glob("*/.lock-*"))


def test_a_killed_writers_lock_is_taken_over(killed, clean, tasks, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(killed, out)
    assert list(out.glob("*/.lock-*")), "the killed run left no lock behind"
    run = extract(tasks, out, "--max-batch-seconds", "0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "taking over the lock of a run that is gone" in run.stderr
    assert not list(out.glob("*/.lock-*"))
    assert tree_bytes(out) == tree_bytes(clean)
