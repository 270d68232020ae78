"""`hearscan bench kernels`: each compiled scan kernel against its PyTorch reference, side by side in one run.

The cases: `benchmarks/kernel_cases.py`, one list per op of `csrc.OPS` (the one op registry).

Printed per case: compiled ms, reference ms, speed-up (the median of three alternating rounds, each the
reference call's time over the compiled calls' median just before it; also as a ratio of 1-thread CPU
times), tokens/s, GFLOP/s and the fraction of this CPU's
float32 peak, the compiled time on 1 thread against N threads, and GFLOP/s per core measured in process
CPU time on 1 thread (what the kernel does with a core, even while other jobs share the machine).  The peak is an estimate:
cores x clock (from /proc/cpuinfo, "cpu MHz", i.e. no turbo) x SIMD lanes (16 with avx512f, 8 with
avx2, else 4) x 2 FLOP per FMA x 2 FMA units per core (assumed; true of server AVX-512 cores).
Shared machines are noisy: compare ratios measured in the same run, not absolute times across runs.

`--device cuda` times the CUDA kernels instead, on the current GPU: compiled ms against the reference
loop on the same GPU (each call synchronised), tokens/s and GFLOP/s; for mLSTM also against the official
quadratic parallel form (xLSTM's GPU path) on the GPU, with `--rwkv-cuda DIR` against RWKV-LM's own
CUDA kernels for WKV-7 and WKV-6, and with `--mamba-cuda DIR` against mamba's selective-scan kernel, each
built from that checkout's sources (benchmarks/official_cuda.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time

from benchmarks.stamp import stamp


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "kernels",
        help="compiled scan kernels vs their PyTorch references (time, GFLOP/s, fraction of peak)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--long", action="store_true", help="add long-T cases (T = 32768) and slower references")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the timings (default: all)")
    parser.add_argument("--ops", default=None, help="comma-separated subset of csrc.OPS (default: all)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="input dtype")
    parser.add_argument(
        "--min-time", type=float, default=0.3, help="seconds of repeated calls per compiled timing (default 0.3)"
    )
    parser.add_argument("--contended", action="store_true",
                        help="run a busy process on every core meanwhile: the compiled kernels on a shared machine")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="time the CPU kernels (default) or the CUDA kernels on the current GPU")
    parser.add_argument("--rwkv-cuda", metavar="DIR", default=None,
                        help="with --device cuda: an RWKV-LM checkout, to compare with its WKV-7/WKV-6 CUDA kernels")
    parser.add_argument("--mamba-cuda", metavar="DIR", default=None,
                        help="with --device cuda: a mamba checkout, to compare with its selective-scan CUDA kernel")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------- machine

def cpu_info() -> dict:
    """Cores, clock, SIMD width and the float32 peak estimate (see the module docstring)."""
    flags, mhz, model = set(), None, platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "model name":
                model = value.strip()
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    lanes, isa = (16, "avx512f") if "avx512f" in flags else (8, "avx2") if "avx2" in flags else (4, "sse")
    ghz = (mhz or 2000.0) / 1000.0
    per_core = ghz * lanes * 2 * 2  # GFLOP/s: lanes x (2 FLOP per FMA) x (2 FMA units)
    return {
        "model": model,
        "cores": cores,
        "clock_ghz": ghz,
        "clock_source": "/proc/cpuinfo cpu MHz" if mhz else "assumed 2.0 GHz",
        "isa": isa,
        "fp32_peak_gflops_per_core": per_core,
        "peak_assumption": f"{ghz:.2f} GHz x {lanes} lanes ({isa}) x 2 FLOP/FMA x 2 FMA units per core",
    }


# ---------------------------------------------------------------------------------------------- timing

@contextlib.contextmanager
def torch_threads():
    """Restores torch's thread count on exit: the benchmarks set it per measurement, and the commands also run
    inside other processes (tests), whose later numerics must not depend on which benchmark ran before."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _time_call(fn, min_time: float, max_reps: int = 50) -> tuple[float, float]:
    """Median wall and process-CPU seconds per call (after one warm-up), over at least 3 calls."""
    fn()
    walls, cpus = [], []
    start = time.perf_counter()
    while len(walls) < 3 or (time.perf_counter() - start < min_time and len(walls) < max_reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


REFERENCE_ROUNDS = 3


def _side_by_side(compiled_fn, reference_fn, min_time: float, rounds: int = REFERENCE_ROUNDS):
    """Alternating rounds of (the compiled op's median over min_time of calls, one reference call).

    Returns the compiled and reference seconds per call (medians over the rounds) and each round's ratio.
    The speed-up is the median of the rounds' ratios: both sides of a ratio see the same machine, while a
    shared VM's speed drifts by ±30 % from one minute to the next (timing all compiled calls first and the
    reference later let the drift into the ratio).
    """
    compiled_fn()
    reference_fn()  # warm-up: the first call of the reference loop pays for allocations
    compiled, reference = [], []
    for _ in range(rounds):
        compiled.append(_time_call(compiled_fn, min_time)[0])
        reference.append(_time_once(reference_fn))
    ratios = [r / c for r, c in zip(reference, compiled)]
    return statistics.median(compiled), statistics.median(reference), ratios


def bench_op(op: str, long: bool, dtype, threads: int, min_time: float, info: dict, log) -> dict:
    import torch

    import csrc
    from benchmarks.kernel_cases import cases
    from csrc import _build

    fn = getattr(csrc, op)

    try:
        _build.load(op)
    except _build.KernelBuildError as err:
        return {"op": op, "skipped": f"compiled kernel unavailable: {err}"}
    rows = []
    for case in cases(op, long):
        kwargs = case["make_inputs"](dtype)
        log(f"  {op} {case['name']} {case['shape']} ...")
        torch.set_num_threads(threads)
        run_compiled = lambda: fn(**kwargs, backend="compiled")
        reference = reference_cpu = ratios = None
        if case.get("reference", True):
            compiled, reference, ratios = _side_by_side(
                run_compiled, lambda: fn(**kwargs, backend="reference"), min_time)
        else:
            compiled, _ = _time_call(run_compiled, min_time)
        # One thread: its process CPU time measures the kernel's own speed even when other jobs share
        # the cores (with more threads, idle OpenMP workers spinning would inflate the CPU time).
        torch.set_num_threads(1)
        one_thread, one_thread_cpu = _time_call(run_compiled, min_time)
        if reference is not None:
            # one reference call on 1 thread, whose process CPU time compares with the compiled 1-thread
            # CPU time (robust to other jobs)
            c0 = time.process_time()
            fn(**kwargs, backend="reference")
            reference_cpu = time.process_time() - c0
        torch.set_num_threads(threads)
        gflops = case["flops"] / compiled / 1e9
        rows.append({
            "name": case["name"],
            "shape": case["shape"],
            "scaling_T": case.get("scaling_T"),
            "compiled_ms": compiled * 1e3,
            "reference_ms": None if reference is None else reference * 1e3,
            "speedup": None if ratios is None else statistics.median(ratios),
            "speedup_rounds": ratios,
            "speedup_1thread_cpu": (None if reference_cpu is None or one_thread_cpu <= 0
                                    else reference_cpu / one_thread_cpu),
            "tokens_per_s": case["tokens"] / compiled,
            "ns_per_token": compiled / case["tokens"] * 1e9,
            "gflops": gflops,
            "fraction_of_peak": gflops / (info["fp32_peak_gflops_per_core"] * min(threads, info["cores"])),
            "compiled_1thread_ms": one_thread * 1e3,
            "thread_scaling": one_thread / compiled,
            "core_gflops_cpu_time": case["flops"] / one_thread_cpu / 1e9 if one_thread_cpu > 0 else None,
        })
    return {"op": op, "cases": rows}


def _on_cuda(kwargs: dict) -> dict:
    import torch

    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


def _synced(call):
    """`call`, then a wait for the GPU: what a timing of a CUDA call must include."""
    import torch

    def run():
        call()
        torch.cuda.synchronize()
    return run


def bench_op_cuda(op: str, long: bool, dtype, min_time: float, log, official=None) -> dict:
    """One op's CUDA kernel against the reference loop on the GPU (and the official kernel, when given)."""
    import csrc
    from benchmarks.kernel_cases import cases
    from csrc import _build

    fn = getattr(csrc, op)

    try:
        _build.load(op, "cuda")
    except _build.KernelBuildError as err:
        return {"op": op, "skipped": f"CUDA kernel unavailable: {err}"}
    theirs = official.get(op) if official else None
    if op == "mlstm":
        theirs = ("official parallel form", lambda kw: csrc.mlstm_parallel_reference(
            **{k: kw[k] for k in ("q", "k", "v", "igate", "fgate")}))
    rows = []
    for case in cases(op, long):
        kwargs = _on_cuda(case["make_inputs"](dtype))
        log(f"  {op} {case['name']} {case['shape']} (cuda) ...")
        compiled, _ = _time_call(_synced(lambda: fn(**kwargs, backend="compiled")), min_time)
        reference = None
        if case.get("reference", True):
            reference = min(_time_once(_synced(lambda: fn(**kwargs, backend="reference"))) for _ in range(2))
        other = diff = None
        if theirs is not None:
            other, _ = _time_call(_synced(lambda: theirs[1](kwargs)), min_time)
            ours = fn(**kwargs, backend="compiled").float()
            diff = (theirs[1](kwargs).float() - ours).abs().max().item() / max(ours.abs().max().item(), 1e-30)
        gflops = case["flops"] / compiled / 1e9
        rows.append({
            "name": case["name"],
            "shape": case["shape"],
            "scaling_T": case.get("scaling_T"),
            "compiled_ms": compiled * 1e3,
            "reference_ms": None if reference is None else reference * 1e3,
            "speedup": None if reference is None else reference / compiled,
            "official": None if theirs is None else theirs[0],
            "official_ms": None if other is None else other * 1e3,
            "vs_official": None if other is None else other / compiled,
            "official_rel_diff": diff,
            "tokens_per_s": case["tokens"] / compiled,
            "ns_per_token": compiled / case["tokens"] * 1e9,
            "gflops": gflops,
        })
    return {"op": op, "cases": rows}


# ---------------------------------------------------------------------------------------------- output

def _cell(x, spec: str, width: int, suffix: str = "") -> str:
    return ("-" if x is None else format(x, spec) + suffix).rjust(width)


COLUMNS = [  # (title, width, key, format, suffix)
    ("compiled ms", 12, "compiled_ms", ".3f", ""),
    ("ref ms", 10, "reference_ms", ".1f", ""),
    ("speed-up", 10, "speedup", ".1f", "x"),
    ("cpu s-up", 9, "speedup_1thread_cpu", ".1f", "x"),
    ("tokens/s", 10, "tokens_per_s", ".3g", ""),
    ("GFLOP/s", 9, "gflops", ".1f", ""),
    ("% peak", 8, "fraction_of_peak", ".1%", ""),
    ("1-thr ms", 10, "compiled_1thread_ms", ".3f", ""),
    ("thr x", 7, "thread_scaling", ".2f", "x"),
    ("core GF/s", 10, "core_gflops_cpu_time", ".1f", ""),
]


def print_table(results: list[dict], info: dict, threads: int, dtype_name: str) -> None:
    print(f"CPU: {info['model']}; {info['cores']} cores; {threads} thread(s); inputs {dtype_name}")
    print(f"fp32 peak estimate: {info['fp32_peak_gflops_per_core']:.0f} GFLOP/s per core "
          f"({info['peak_assumption']}; clock from {info['clock_source']})")
    _print_rows(results, COLUMNS)
    print(f"speed-up = reference ms / compiled ms, the median of {REFERENCE_ROUNDS} alternating rounds (each ratio "
          "timed side by side); cpu s-up = the same ratio in 1-thread process CPU time "
          "(what a quiet machine would show on 1 thread);\n% peak: GFLOP/s over the peak of the threads used; "
          "thr x = 1-thread ms / compiled ms;\ncore GF/s = FLOP per 1-thread process-CPU second (robust to other "
          "jobs on the machine). Compare ratios from one run, not absolute times across runs.")


CUDA_COLUMNS = [  # (title, width, key, format, suffix)
    ("compiled ms", 12, "compiled_ms", ".4f", ""),
    ("ref ms", 10, "reference_ms", ".1f", ""),
    ("speed-up", 10, "speedup", ".0f", "x"),
    ("official ms", 12, "official_ms", ".4f", ""),
    ("vs official", 12, "vs_official", ".2f", "x"),
    ("max diff", 10, "official_rel_diff", ".1e", ""),
    ("tokens/s", 10, "tokens_per_s", ".3g", ""),
    ("GFLOP/s", 9, "gflops", ".1f", ""),
]


def print_cuda_table(results: list[dict], gpu: str, dtype_name: str) -> None:
    print(f"GPU: {gpu}; inputs {dtype_name}")
    _print_rows(results, CUDA_COLUMNS)
    print("speed-up = reference ms / compiled ms (the reference loop on the same GPU); "
          "vs official = official ms / compiled ms (> 1: ours is faster);\n"
          "max diff = largest |official - ours| over the largest |ours|.  "
          "Every call is synchronised; times are medians of repeated calls.")


def _print_rows(results: list[dict], columns: list[tuple]) -> None:
    """The table's head and one row per case; under each op the official kernel's name (CUDA) and its
    T-scaling line."""
    head = f"{'op':<15}{'case':<24}{'shape':<22}" + "".join(t.rjust(w) for t, w, *_ in columns)
    print(head)
    print("-" * len(head))
    for res in results:
        if "skipped" in res:
            print(f"{res['op']:<15}skipped: {res['skipped']}")
            continue
        for r in res["cases"]:
            cells = "".join(_cell(r.get(key), spec, w, suffix) for _, w, key, spec, suffix in columns)
            print(f"{res['op']:<15}{r['name']:<24}{r['shape']:<22}{cells}")
        named = sorted({r["official"] for r in res["cases"] if r.get("official")})
        if named:
            print(f"{'':<15}official = {', '.join(named)}")
        line = _scaling_line(res)
        if line:
            print(f"{'':<15}T-scaling, compiled ns per token: {line}")


def _scaling_line(res: dict) -> str:
    pts = sorted((r["scaling_T"], r["ns_per_token"]) for r in res.get("cases", []) if r.get("scaling_T"))
    if len(pts) < 2:
        return ""
    base = pts[0][1]
    return ", ".join(f"T={t}: {ns:.0f} ({ns / base:.2f})" for t, ns in pts) + "  (ratio to the shortest T; 1.00 = linear)"


def run(args) -> int:
    import torch

    from hearscan_core.errors import UserFacingError

    from csrc import OPS

    ops = [o.strip() for o in args.ops.split(",") if o.strip()] if args.ops else list(OPS)
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise UserFacingError(f"unknown kernel(s) {', '.join(unknown)} in --ops; choose from {', '.join(OPS)}")
    if args.threads is not None and args.threads < 1:
        raise UserFacingError("--threads must be at least 1")
    threads = args.threads or torch.get_num_threads()
    dtype = getattr(torch, args.dtype)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.device == "cuda":
        return run_cuda(args, ops, dtype, log)
    if args.rwkv_cuda or args.mamba_cuda:
        raise UserFacingError("--rwkv-cuda and --mamba-cuda compare CUDA kernels: add --device cuda")
    info = cpu_info()
    meta = stamp("kernels")  # the load average before anything of ours runs
    with torch_threads(), contention(info["cores"] if args.contended else 0):
        results = [bench_op(op, args.long, dtype, threads, args.min_time, info, log) for op in ops]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = info["cores"] if args.contended else 0
    # other jobs (load before this run) plus our threads beyond the cores: the ratios then measure the
    # scheduler as much as the kernels (a waiting thread costs a 4 ms tick)
    others = max(0.0, (meta["load_average_1min_at_start"] or 0.0) - 1.0)  # this process is one of the load
    oversubscribed = others + busy + threads > info["cores"] + 0.5
    note = (f"{busy} busy processes competed on purpose (--contended)" if args.contended else
            f"load {others:.1f} before the run, {load:.1f} at its end, {threads} thread(s) on {info['cores']} cores")
    if oversubscribed and not args.contended:
        # other jobs' threads and ours exceed the cores: a ratio would measure the scheduler (4 ms ticks,
        # "speed-ups" of 1000x), so only the times are kept
        note += "; speed-ups withheld (oversubscribed: rerun on a quiet machine, or with --threads 1)"
        for res in results:
            for row in res.get("cases", []):
                row["speedup"] = row["speedup_1thread_cpu"] = None
    if args.json:
        print(json.dumps({"meta": meta, "device": "cpu", "cpu": info, "threads": threads, "dtype": args.dtype,
                          "torch": torch.__version__, "contended": busy, "oversubscribed": oversubscribed,
                          "load_note": note, "results": results}, indent=2))
    else:
        print_table(results, info, threads, args.dtype)
        if oversubscribed:
            print(f"OVERSUBSCRIBED: {note}")
    return 0


@contextlib.contextmanager
def contention(processes: int):
    """`processes` busy loops on the machine for the duration (`--contended`), killed at the end."""
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _gpu_warmup(seconds: float = 2.0) -> None:
    """Keep the GPU busy for a moment first: an idle GPU runs at a low clock, which would inflate the first
    cases' times (seen as 2x swings between runs without this)."""
    import torch

    x = torch.randn(4096, 4096, device="cuda")
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        x = torch.tanh(x @ x * 1e-3)
        torch.cuda.synchronize()


def run_cuda(args, ops: list[str], dtype, log) -> int:
    import torch

    from hearscan_core.errors import UserFacingError

    if not torch.cuda.is_available():
        raise UserFacingError(
            "--device cuda needs a CUDA build of torch and a visible GPU "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}); "
            "run without --device to time the CPU kernels"
        )
    official = {}
    if args.rwkv_cuda:
        from benchmarks.official_cuda import load_rwkv_kernels

        official.update(load_rwkv_kernels(args.rwkv_cuda, log, dtype))
    if args.mamba_cuda:
        from benchmarks.official_cuda import load_mamba_kernel

        official.update(load_mamba_kernel(args.mamba_cuda, log))
    gpu = torch.cuda.get_device_name()
    _gpu_warmup()
    results = [bench_op_cuda(op, args.long, dtype, args.min_time, log, official) for op in ops]
    if args.json:
        print(json.dumps({"meta": stamp("kernels"), "device": "cuda", "gpu": gpu, "dtype": args.dtype,
                          "torch": torch.__version__, "cuda": torch.version.cuda,
                          "results": results}, indent=2))
    else:
        print_cuda_table(results, gpu, args.dtype)
    return 0
