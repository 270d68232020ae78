"""`hearscan bench models`: generic discovery, side-by-side columns, the scaling mode's subprocess points."""

from __future__ import annotations

import json
import subprocess

from _model_helpers import HEARSCAN
from benchmarks import models as bench


def _args(**kw):
    parser = bench.argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench.register(sub)
    argv = ["models"]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def test_discovery_skips_missing_modules_with_a_note():
    found, notes = bench.discover(["conrwkv", "no_such_backbone"])
    assert [name for name, _, _ in found] == ["conrwkv"]
    assert any("no_such_backbone" in n and "not present" in n for n in notes)


def test_throughput_columns_side_by_side():
    import torch

    threads = torch.get_num_threads()
    try:  # --threads 1 sets torch's global thread count: restore it for the other tests
        result = bench.throughput(_args(modules="conrwkv,logmel", configs="size=tiny", seconds=1, clips=1, threads=1, json=True))
    finally:
        torch.set_num_threads(threads)
    (row,) = result["rows"]  # logmel has no `size`: filtered out by --configs
    assert row["module"] == "conrwkv" and row["config"] == "size=tiny"
    assert row["reference"]["audio_s_per_s"] > 0
    if "audio_s_per_s" in row["compiled"]:  # the compiled kernel built on this machine
        assert row["speedup"] == row["compiled"]["audio_s_per_s"] / row["reference"]["audio_s_per_s"]
    else:
        assert "error" in row["compiled"]


def test_module_without_scan_backend_gets_no_reference_column():
    result = bench.throughput(_args(modules="logmel", seconds=1, clips=1, json=True))
    (row,) = result["rows"]
    assert "module has no scan_backend option" in row["reference"]["skipped"]
    assert row["compiled"]["audio_s_per_s"] > 0 and "speedup" not in row


def test_scaling_mode_runs_one_subprocess_per_length():
    out = subprocess.run([str(HEARSCAN), "bench", "models", "--modules", "logmel", "--lengths", "1,3", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)["rows"]
    assert [r["seconds"] for r in rows] == [1.0, 3.0]
    for r in rows:
        assert r["wall_s"] > 0 and r["peak_rss_mb"] > 50 and r["embed_extra_mb"] >= 0
