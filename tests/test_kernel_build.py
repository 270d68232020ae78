"""Build-on-first-use: the cache is reused, its key follows the source, and failures are explained."""

import importlib
import json
import platform
import shutil
import statistics
import subprocess
import sys
import warnings

import pytest
import torch

import csrc
from csrc import _build, dispatch


@pytest.fixture
def fresh_build_state(monkeypatch):
    """Forget what this process has loaded or failed to build, for the duration of one test."""
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})
    monkeypatch.setattr(dispatch, "_warned", set())


def test_second_load_reuses_the_build():
    first = _build.load("wkv7")
    assert _build.load("wkv7") is first
    directory = _build.build_dir("wkv7")
    assert (directory / ".built").exists()
    libs = sorted(directory.glob("*.so"))
    assert libs
    mtime = libs[0].stat().st_mtime_ns
    # a new process imports the finished build without compiling
    code = "from csrc import _build; _build.load('wkv7'); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "compiling" not in proc.stderr
    assert libs[0].stat().st_mtime_ns == mtime


def test_compiling_leaves_the_build_keys_alone(tmp_path, monkeypatch, fresh_build_state):
    """torch.utils.cpp_extension.load appends its libraries to the flag lists it is given; if those were
    ours, every key computed afterwards in the process would change (a later kernel then builds under a
    key no new process looks for, and compiles again).  The stand-in mutates its arguments as torch does."""
    from torch.utils import cpp_extension

    def load(name, sources, extra_cflags, extra_ldflags, build_directory, verbose):
        extra_cflags.append("-DADDED_BY_TORCH")
        extra_ldflags += ["-ltorch", "-lc10"]
        return object()

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setenv("HEARSCAN_CACHE_DIR", str(tmp_path))
    keys = {op: _build.build_key(op) for op in ("wkv7", "wkv6")}
    _build._compile("wkv7", "cpu", "hearscan_wkv7_test", tmp_path / "wkv7")
    assert {op: _build.build_key(op) for op in ("wkv7", "wkv6")} == keys


def test_key_changes_with_source_and_flags(tmp_path, monkeypatch):
    shutil.copy(_build.HERE / "wkv7_cpu.cpp", tmp_path / "wkv7_cpu.cpp")
    monkeypatch.setattr(_build, "HERE", tmp_path)
    key = _build.build_key("wkv7")
    assert _build.build_key("wkv7") == key  # deterministic
    with open(tmp_path / "wkv7_cpu.cpp", "a") as f:
        f.write("\n// changed\n")
    changed = _build.build_key("wkv7")
    assert changed != key
    monkeypatch.setattr(_build, "CFLAGS", _build.CFLAGS + ("-DEXTRA",))
    assert _build.build_key("wkv7") != changed
    assert torch.__version__ in _build.key_info("wkv7")


def test_key_changes_with_a_shared_header(tmp_path, monkeypatch):
    """Kernels include csrc/*.h: editing a header must give every kernel a new key (a rebuild)."""
    headers = sorted(_build.HERE.glob("*.h"))
    assert [h.name for h in headers] == [h.name for h in _build.headers()]
    assert {"simd.h", "wkv_common.h"} <= {h.name for h in headers}
    for src in ["wkv7_cpu.cpp", "mlstm_cpu.cpp"] + [h.name for h in headers]:
        shutil.copy(_build.HERE / src, tmp_path / src)
    # every header a kernel includes with quotes is one that the key covers
    for src in _build.HERE.glob("*_cpu.cpp"):
        for line in src.read_text().splitlines():
            if line.startswith('#include "'):
                assert (_build.HERE / line.split('"')[1]) in headers, (src.name, line)
    monkeypatch.setattr(_build, "HERE", tmp_path)
    keys = {op: _build.build_key(op) for op in ("wkv7", "mlstm")}
    with open(tmp_path / "simd.h", "a") as f:
        f.write("\n// changed\n")
    for op, key in keys.items():
        assert _build.build_key(op) != key, op


def test_missing_compiler_is_explained(tmp_path, monkeypatch, fresh_build_state):
    monkeypatch.setenv("HEARSCAN_CACHE_DIR", str(tmp_path))  # no cached build to fall back on
    monkeypatch.setenv("CXX", "no-such-compiler-hearscan")
    with pytest.raises(_build.KernelBuildError, match=r"no C\+\+ compiler .*apt-get install g\+\+.*HEARSCAN_SCAN_BACKEND=reference"):
        _build.load("wkv7")
    with pytest.raises(_build.KernelBuildError, match="no C.. compiler"):
        dispatch.resolve_backend("compiled", "wkv7")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.resolve_backend("auto", "wkv7") == "reference"
    assert any("no C++ compiler" in str(w.message) for w in caught)
    assert not any(tmp_path.rglob("*.so"))


def test_missing_source_and_unknown_backend(fresh_build_state):
    with pytest.raises(_build.KernelBuildError, match="no_such_op_cpu.cpp is missing"):
        _build.load("no_such_op")
    with pytest.raises(ValueError, match="unknown scan backend 'fastest'.*auto, compiled, reference"):
        dispatch.resolve_backend("fastest", "wkv7")


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("HEARSCAN_SCAN_BACKEND", "reference")
    assert dispatch.resolve_backend(None, "wkv7") == "reference"
    assert dispatch.resolve_backend("compiled", "wkv7") == "compiled"
    monkeypatch.setenv("HEARSCAN_SCAN_BACKEND", "bogus")
    with pytest.raises(ValueError, match=r"\$HEARSCAN_SCAN_BACKEND"):
        dispatch.resolve_backend(None, "wkv7")


def test_devices_without_a_kernel_use_the_reference(fresh_build_state):
    """Kernels exist for CPU and CUDA: "auto" sends other devices to the reference, "compiled" says why not."""
    assert dispatch.resolve_backend("auto", "wkv7", torch.device("meta")) == "reference"
    with pytest.raises(_build.KernelBuildError, match="no compiled wkv7 kernel for meta tensors"):
        dispatch.resolve_backend("compiled", "wkv7", "meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_explained(fresh_build_state):
    """On a machine without a GPU the CUDA kernels are never built; "compiled" says why, "auto" warns once."""
    why = "no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
    with pytest.raises(_build.KernelBuildError, match=why):
        dispatch.resolve_backend("compiled", "wkv7", "cuda")
    with pytest.warns(UserWarning, match="using the .*reference for wkv7"):
        assert dispatch.resolve_backend("auto", "wkv7", torch.device("cuda")) == "reference"


def test_cuda_sources_have_their_own_key(tmp_path, monkeypatch):
    """Every op has a CUDA source beside its CPU one, each .cu includes only keyed headers (csrc/*.cuh),
    and editing a .cuh changes no CPU key (the CPU build never reads it)."""
    for op in csrc.OPS:
        assert _build.sources(op, "cuda") == [_build.HERE / f"{op}_cuda.cu"], op
        for line in (_build.HERE / f"{op}_cuda.cu").read_text().splitlines():
            if line.startswith('#include "'):
                assert (_build.HERE / line.split('"')[1]) in _build.headers("cuda"), (op, line)
    for src in [f"{op}_cpu.cpp" for op in csrc.OPS] + [h.name for h in _build.headers()]:
        shutil.copy(_build.HERE / src, tmp_path / src)
    for h in _build.headers("cuda"):
        shutil.copy(h, tmp_path / h.name)
    monkeypatch.setattr(_build, "HERE", tmp_path)
    keys = {op: _build.build_key(op) for op in csrc.OPS}
    with open(tmp_path / "cuda_common.cuh", "a") as f:
        f.write("\n// changed\n")
    assert {op: _build.build_key(op) for op in csrc.OPS} == keys


def test_compile_error_is_reported(tmp_path, monkeypatch, fresh_build_state):
    (tmp_path / "broken_cpu.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(_build, "HERE", tmp_path)
    monkeypatch.setenv("HEARSCAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HEARSCAN_BUILD_QUIET", "1")
    with pytest.raises(_build.KernelBuildError, match="building the broken kernel failed"):
        _build.load("broken")
    # the failure is remembered: no second compile attempt in this process
    with pytest.raises(_build.KernelBuildError, match="building the broken kernel failed"):
        _build.load("broken")
    assert not (_build.build_dir("broken") / ".built").exists()



@pytest.mark.parametrize("op", ["wkv7", "wkv6"])
def test_bench_cases_follow_the_protocol(op):
    from benchmarks import kernel_cases

    cases = kernel_cases.cases(op, False)
    assert len(cases) >= 3 and any(c.get("scaling_T") for c in cases)
    assert any(c.get("scaling_T") == 512 and c["reference"] for c in cases)  # the 50x target is at T = 512
    assert len(kernel_cases.cases(op, True)) > len(cases)
    for case in cases:
        assert {"name", "shape", "make_inputs", "flops", "tokens"} <= set(case)
        assert case["flops"] > 0 and case["tokens"] > 0
    kwargs = cases[0]["make_inputs"](torch.bfloat16)
    assert getattr(csrc, op)(**kwargs, backend="compiled").dtype == torch.bfloat16


def test_every_op_has_bench_cases():
    """The op registry (csrc.OPS) and the benchmark's cases name the same ops."""
    from benchmarks import kernel_cases

    assert set(kernel_cases.CASES) == set(csrc.OPS)


def test_bench_kernels_command(monkeypatch, capsys, tmp_path):
    """The `hearscan bench kernels` runner on one small case per op: a table, and JSON with the ratios."""
    import argparse

    from benchmarks import kernels as bench

    from benchmarks import kernel_cases

    for op in ("wkv7", "wkv6"):
        make = getattr(kernel_cases, f"{op}_inputs")
        small = [dict(c, make_inputs=(lambda dtype, m=make: m(1, 24, 2, 64, dtype)),
                      flops=1, tokens=24) for c in kernel_cases.cases(op, False)[:1]]
        small[0]["scaling_T"] = None
        monkeypatch.setitem(kernel_cases.CASES, op, lambda long, s=small: s)
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    args = parser.parse_args(["kernels", "--ops", "wkv7,wkv6", "--threads", "2", "--min-time", "0"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "fp32 peak estimate" in table and "wkv7" in table and "wkv6" in table
    before = torch.get_num_threads()
    args = parser.parse_args(["kernels", "--ops", "wkv7", "--json", "--min-time", "0", "--threads", "1"])
    # a machine busy with other jobs (a load of 8 on these cores): the ratios are withheld, the times kept
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (8.0, 8.0, 8.0))
    assert args.func(args) == 0
    busy = json.loads(capsys.readouterr().out)
    assert busy["oversubscribed"] and "speed-ups withheld" in busy["load_note"]
    assert busy["results"][0]["cases"][0]["speedup"] is None and busy["results"][0]["cases"][0]["compiled_ms"] > 0
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (1.0, 1.0, 1.0))  # this process alone
    assert args.func(args) == 0
    assert torch.get_num_threads() == before  # the benchmark's thread settings do not leak into the process
    doc = json.loads(capsys.readouterr().out)
    row = doc["results"][0]["cases"][0]
    assert row["speedup"] > 0 and row["gflops"] > 0 and 0 < row["fraction_of_peak"]
    # the speed-up is the median of the alternating rounds' ratios, each timed side by side
    assert len(row["speedup_rounds"]) == bench.REFERENCE_ROUNDS
    assert row["speedup"] == statistics.median(row["speedup_rounds"])
    assert doc["cpu"]["fp32_peak_gflops_per_core"] > 0
    # the JSON is stamped, says whether the machine was oversubscribed, and the report renders it under its
    # command, date and machine
    assert doc["meta"]["benchmark"] == "kernels" and doc["meta"]["machine"]["cores"] >= 1
    assert doc["oversubscribed"] is False and "thread(s)" in doc["load_note"] and doc["contended"] == 0
    from benchmarks import report

    data = tmp_path / "data"
    data.mkdir()
    (data / "kernels-test.json").write_text(json.dumps(doc))
    text = report.render(data)
    assert "## Scan kernels" in text and "### kernels-test" in text and doc["meta"]["date"] in text
    assert f"| wkv7 | {row['name']} | {row['shape']} | {row['compiled_ms']:.3f} |" in text


def test_docs_benchmarks_md_is_generated_from_the_committed_json():
    """docs/benchmarks.md is exactly what `python -m benchmarks.report` writes from docs/bench-data/."""
    from benchmarks import report

    assert report.OUT.read_text() == report.render(), "docs/benchmarks.md is stale: run python -m benchmarks.report"


def test_cuda_bench_table(capsys):
    """The --device cuda table (its numbers come from a GPU; here a result of the shape bench_op_cuda returns)."""
    from benchmarks import kernels as bench

    row = dict(name="A-RWKV-B bi (2 clips)", shape="B=4 T=496 H=12 N=64", scaling_T=None, compiled_ms=0.5,
               reference_ms=80.0, speedup=160.0, official="RWKV-LM wind_backstepping (fp32)", official_ms=0.6,
               vs_official=1.2, official_rel_diff=1.8e-7, tokens_per_s=4e6, ns_per_token=250.0, gflops=1200.0)
    results = [{"op": "wkv7", "cases": [row, dict(row, name="T-scaling T=512", scaling_T=512, ns_per_token=300.0),
                                        dict(row, name="T-scaling T=2048", scaling_T=2048, ns_per_token=330.0)]},
               {"op": "mlstm", "skipped": "CUDA kernel unavailable: no nvcc"}]
    bench.print_cuda_table(results, "NVIDIA H100 80GB HBM3", "float32")
    out = capsys.readouterr().out
    assert "GPU: NVIDIA H100 80GB HBM3; inputs float32" in out and "official ms" in out
    assert "160x" in out and "1.20x" in out and "1.8e-07" in out
    assert "official = RWKV-LM wind_backstepping (fp32)" in out
    assert "T=512: 300 (1.00), T=2048: 330 (1.10)" in out
    assert "mlstm          skipped: CUDA kernel unavailable: no nvcc" in out


def test_official_sources_missing_are_named(tmp_path):
    """--rwkv-cuda / --mamba-cuda pointing at a folder without the sources: the missing files are named
    (checked before anything is built, so this runs without a GPU)."""
    from benchmarks.official_cuda import load_mamba_kernel, load_rwkv_kernels

    with pytest.raises(FileNotFoundError, match=r"RWKV-LM source\(s\) not found: .*wkv7_op_fp32.cpp.*"
                                                r"is --rwkv-cuda a checkout of RWKV-LM"):
        load_rwkv_kernels(str(tmp_path), print, torch.float32)
    with pytest.raises(FileNotFoundError, match=r"mamba source\(s\) not found: .*selective_scan_fwd_bf16.cu.*"
                                                r"is --mamba-cuda a checkout of mamba"):
        load_mamba_kernel(str(tmp_path), print)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_kernels_on_cuda_without_a_gpu_is_explained():
    import argparse

    from benchmarks import kernels as bench
    from hearscan_core.errors import UserFacingError

    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    args = parser.parse_args(["kernels", "--device", "cuda"])
    with pytest.raises(UserFacingError, match="--device cuda needs a CUDA build of torch and a visible GPU"):
        args.func(args)
    args = parser.parse_args(["kernels", "--rwkv-cuda", "RWKV-LM"])
    with pytest.raises(UserFacingError, match="compare CUDA kernels: add --device cuda"):
        args.func(args)


# --------------------------------------------------------------------------- hearscan bench ggml

GGML_STDOUT = """Testing 1 devices
Backend 1/1: CPU
  Device description: Intel(R) Xeon(R) Processor
  RWKV_WKV7(type=f32,head_count=2,head_size=64,n_seq_tokens=24,n_seqs=1):              1072 runs -   612.40 us/run -     7825 kB/run -    1.13 GB/s
  RWKV_WKV7(type=f32,head_count=3,head_size=64,n_seq_tokens=16,n_seqs=2):               257 runs -  1893.78 us/run -    32768 kB/run -    2.63 GB/s
  Backend CPU: OK
"""


def test_parse_ggml_output_wall_and_patched_cpu_times():
    from benchmarks.ggml import parse_ggml

    rows = parse_ggml(GGML_STDOUT, "")
    assert [(r["op"], r["B"], r["T"], r["H"], r["N"], r["wall_us"]) for r in rows] == [
        ("RWKV_WKV7", 1, 24, 2, 64, 612.40), ("RWKV_WKV7", 2, 16, 3, 64, 1893.78)]
    assert all("cpu_us" not in r for r in rows)
    # a build patched to print process CPU time: one stderr line per case, after a warm-up line
    stderr = "HS cpu us/run 1.0 wall us/run 1.0\nHS cpu us/run 700.5 wall us/run 650\nHS cpu us/run 2000 wall us/run 1900\n"
    assert [r["cpu_us"] for r in parse_ggml(GGML_STDOUT, stderr)] == [700.5, 2000.0]


def test_bench_ggml_command_runs_both_side_by_side(tmp_path, capsys):
    """End to end against an executable that prints test-backend-ops' format (ggml itself is not built here)."""
    import argparse

    from benchmarks import ggml as bench_ggml

    fake = tmp_path / "test-backend-ops"
    fake.write_text("#!/bin/sh\n[ \"$1\" = perf ] && [ \"$HS_THREADS\" = 1 ] || exit 3\ncat <<'EOF'\n"
                    + GGML_STDOUT.replace("RWKV_WKV7", "RWKV_WKV6") + "EOF\n")
    fake.chmod(0o755)
    parser = argparse.ArgumentParser()
    bench_ggml.register(parser.add_subparsers())
    args = parser.parse_args(["ggml", str(fake), "--ops", "RWKV_WKV6", "--rounds", "1"])
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the run times ours on 1 thread; the process keeps its own setting
    try:
        assert args.func(args) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("1 ")]
    assert len(lines) == 2 and all("wall" in line and line.endswith("x") for line in lines)
    assert "B=2 T=16 H=3 N=64" in out and "summary" in out


GGML_SSM_STDOUT = """Backend 1/1: CPU
  SSM_SCAN(type=f32,d_state=128,head_dim=64,n_head=48,n_group=1,n_seq_tokens=512,n_seqs=1,xbc_overlap=0,K=1):     526 runs - 31874.58 us/run -    15968 kB/run -    0.48 GB/s
  SSM_SCAN(type=f32,d_state=16,head_dim=1,n_head=32,n_group=1,n_seq_tokens=40,n_seqs=2,xbc_overlap=0,K=1):        700 runs -   950.25 us/run -      100 kB/run -    0.10 GB/s
  Backend CPU: OK
"""


def test_parse_ggml_ssm_scan_rows_mamba1_comparable_mamba2_not():
    from benchmarks.ggml import parse_ggml

    rows = parse_ggml(GGML_SSM_STDOUT, "HS cpu us/run 30000 wall us/run 31874\nHS cpu us/run 900.5 wall us/run 950\n")
    assert [(r["op"], r["B"], r["T"], r["D"], r["N"], r["head_dim"], r["comparable"], r["cpu_us"]) for r in rows] == [
        ("SSM_SCAN", 1, 512, 48, 128, 64, False, 30000.0), ("SSM_SCAN", 2, 40, 32, 16, 1, True, 900.5)]


def test_bench_ggml_compares_the_mamba1_selective_scan(tmp_path, capsys):
    """SSM_SCAN end to end: the Mamba-1 case is timed against hearscan's selective scan, the Mamba-2 case
    is listed as skipped."""
    import argparse

    from benchmarks import ggml as bench_ggml

    fake = tmp_path / "test-backend-ops"
    fake.write_text("#!/bin/sh\n[ \"$3\" = SSM_SCAN ] || exit 3\ncat <<'EOF'\n" + GGML_SSM_STDOUT + "EOF\n")
    fake.chmod(0o755)
    parser = argparse.ArgumentParser()
    bench_ggml.register(parser.add_subparsers())
    assert parser.parse_args(["ggml", str(fake)]).ops.split(",") == ["RWKV_WKV7", "RWKV_WKV6", "SSM_SCAN"]
    args = parser.parse_args(["ggml", str(fake), "--ops", "SSM_SCAN", "--rounds", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "B=1 T=512 D=48 N=128" in out and "skipped: Mamba-2" in out
    timed = [line for line in out.splitlines() if line.startswith("1 ")]
    assert len(timed) == 1 and "B=2 T=40 D=32 N=16" in timed[0] and timed[0].endswith("x")
    assert "no comparable case" not in out

    # a stock perf list has Mamba-2 cases only: nothing is timed, and the summary says what to add
    only_mamba2 = "\n".join(line for line in GGML_SSM_STDOUT.splitlines() if "head_dim=1," not in line)
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n" + only_mamba2 + "\nEOF\n")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "skipped: Mamba-2" in out and "SSM_SCAN   no comparable case" in out


def test_bench_ggml_says_how_to_add_a_missing_perf_case(tmp_path):
    import argparse

    from benchmarks import ggml as bench_ggml
    from hearscan_core.errors import UserFacingError

    fake = tmp_path / "test-backend-ops"
    fake.write_text("#!/bin/sh\necho 'Backend CPU: OK'\n")  # a perf list without the op
    fake.chmod(0o755)
    parser = argparse.ArgumentParser()
    bench_ggml.register(parser.add_subparsers())
    args = parser.parse_args(["ggml", str(fake), "--ops", "RWKV_WKV7", "--rounds", "1"])
    with pytest.raises(UserFacingError, match="no RWKV_WKV7 case.*make_test_cases_perf"):
        args.func(args)


def test_bench_ggml_rejects_a_missing_binary(tmp_path):
    import argparse

    from benchmarks import ggml as bench_ggml
    from hearscan_core.errors import UserFacingError

    parser = argparse.ArgumentParser()
    bench_ggml.register(parser.add_subparsers())
    args = parser.parse_args(["ggml", str(tmp_path / "nope")])
    with pytest.raises(UserFacingError, match="test-backend-ops"):
        args.func(args)


@pytest.mark.parametrize("op", ["wkv6", "wkv7", "selective_scan"])
def test_kernels_keep_their_prefetches(op):
    """The WKV kernels prefetch the next token block, the selective scan the next segment; GCC 12 deleted
    such prefetch loops silently in several shapes (prefetch_l2 in csrc/simd.h), so the built library is
    checked for the prefetch instruction."""
    objdump = shutil.which("objdump")
    if objdump is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("needs objdump on x86-64")
    _build.load(op)
    lib = sorted(_build.build_dir(op).glob("*.so"))[0]
    text = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "prefetcht1" in text
