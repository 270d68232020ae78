"""`hearscan bench ggml TEST_BACKEND_OPS`: hearscan's scan kernels against ggml's, side by side in one run.

ggml (the tensor library behind llama.cpp) has the only other CPU kernels for RWKV-6 and RWKV-7's WKV
scan and a CPU Mamba-1 selective scan (its SSM_SCAN op).  Its `test-backend-ops perf -o OP -b CPU`
times them at the shapes of its perf list; this command runs it, times hearscan's compiled kernel at the
same shapes, alternating, and prints the ratio.  Build ggml yourself (`cmake -B build
-DCMAKE_BUILD_TYPE=Release && cmake --build build -t test-backend-ops`).  Its perf list has few of
these ops at audio-model shapes: add the cases to compare to `make_test_cases_perf()` in
tests/test-backend-ops.cpp first (the README lists the lines used for its figures).

Timing basis: ggml reports wall microseconds per run with its own thread count (all cores, unless the
binary reads $HS_THREADS, which this command sets to --threads), so hearscan's kernel is timed in wall
time with the same number of torch threads (median of repeated calls).  Run it on a quiet machine.  A
ggml build patched to print "HS cpu us/run X" on stderr (process CPU time per run) is compared in CPU
time instead, which stays fair on a shared machine.

ggml's WKV-7 receives the decay itself, while hearscan's computes exp(-exp(w)) inside; the comparison
therefore slightly favours ggml.  SSM_SCAN is compared where it is Mamba-1 (head_dim 1, one group):
softplus(dt), exp(dt A) per state, state update and y = C h, with no D, z gate or dt bias on either
side (they are separate ops in ggml); its Mamba-2 cases are listed as skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

OPS = {"RWKV_WKV7": "wkv7", "RWKV_WKV6": "wkv6", "SSM_SCAN": "selective_scan"}
_WKV = r"(RWKV_WKV[67])\(type=f32,head_count=(\d+),head_size=(\d+),n_seq_tokens=(\d+),n_seqs=(\d+)\)"
_SSM = (r"(SSM_SCAN)\(type=f32,d_state=(\d+),head_dim=(\d+),n_head=(\d+),n_group=(\d+),n_seq_tokens=(\d+),"
        r"n_seqs=(\d+)[^)]*\)")
_TIMES = r":\s*\d+ runs -\s*(?P<us>[\d.]+) us/run"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ggml",
        help="hearscan's WKV-6/WKV-7 and selective-scan kernels against ggml's CPU kernels "
             "(needs a ggml test-backend-ops build)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("binary", help="path of ggml's test-backend-ops executable")
    parser.add_argument("--threads", type=int, default=1, help="threads for both (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.set_defaults(func=run)


def parse_ggml(stdout: str, stderr: str) -> list[dict]:
    """Shapes and times from `test-backend-ops perf` output (stdout and stderr kept apart), in order.

    WKV rows: op, H, N (head size), T, B.  SSM_SCAN rows: op, D (n_head), N (d_state), head_dim, groups,
    T, B, and "comparable" (Mamba-1: head_dim 1, one group)."""
    rows = []
    for m in re.finditer(f"(?:{_WKV}|{_SSM}){_TIMES}", stdout):
        if m[1]:
            rows.append({"op": m[1], "H": int(m[2]), "N": int(m[3]), "T": int(m[4]), "B": int(m[5]),
                         "wall_us": float(m["us"]), "comparable": True})
        else:
            head_dim, groups = int(m[8]), int(m[10])
            rows.append({"op": m[6], "N": int(m[7]), "head_dim": head_dim, "D": int(m[9]), "groups": groups,
                         "T": int(m[11]), "B": int(m[12]), "wall_us": float(m["us"]),
                         "comparable": head_dim == 1 and groups == 1})
    cpu = [float(v) for v in re.findall(r"HS cpu us/run ([\d.]+)", stderr)]
    if rows and len(cpu) >= len(rows):  # patched build: one CPU line per case (a warm-up line may come first)
        for row, us in zip(rows, cpu[-len(rows):]):
            row["cpu_us"] = us
    return rows


def run_ggml(binary: str, op: str, threads: int) -> list[dict]:
    from hearscan_core.errors import UserFacingError

    env = {**os.environ, "HS_THREADS": str(threads)}
    proc = subprocess.run([binary, "perf", "-o", op, "-b", "CPU"], capture_output=True, text=True, env=env)
    rows = parse_ggml(proc.stdout, proc.stderr)
    if proc.returncode != 0 or not rows:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise UserFacingError(f"{binary} perf -o {op} gave no timings (exit {proc.returncode}); if its perf list has "
                              f"no {op} case, add one to make_test_cases_perf() in tests/test-backend-ops.cpp "
                              "(the README lists the cases used); its output ends:\n" + "\n".join(tail))
    return rows


def shape_of(row: dict) -> str:
    if row["op"] == "SSM_SCAN":
        return f"B={row['B']} T={row['T']} D={row['D']} N={row['N']}"
    return f"B={row['B']} T={row['T']} H={row['H']} N={row['N']}"


def time_ours(op: str, row: dict, threads: int, cpu_time: bool) -> float:
    """Median microseconds per call of hearscan's compiled kernel at ggml's shape (benchmarks.kernels' timer)."""
    import torch

    import csrc
    from benchmarks import kernel_cases
    from benchmarks.kernels import _time_call

    fn = getattr(csrc, op)
    make = getattr(kernel_cases, f"{op}_inputs")
    if op == "selective_scan":  # ggml's SSM_SCAN: softplus(dt) inside, no D, z gate or dt bias
        kwargs = make(row["B"], row["D"], row["N"], row["T"])(torch.float32)
        kwargs.update(D=None, z=None, delta_bias=None, delta_softplus=True)
    else:
        kwargs = make(row["B"], row["T"], row["H"], row["N"], torch.float32)
    torch.set_num_threads(threads)
    wall, cpu = _time_call(lambda: fn(**kwargs, backend="compiled"), min_time=0.3)
    return (cpu if cpu_time else wall) * 1e6


def run(args) -> int:
    from benchmarks.kernels import torch_threads
    from hearscan_core.errors import UserFacingError

    binary = str(Path(args.binary).expanduser())
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise UserFacingError(f"{binary} is not an executable file; pass the path of ggml's test-backend-ops "
                              "(build it with: cmake --build build -t test-backend-ops)")
    if args.threads < 1 or args.rounds < 1:
        raise UserFacingError("--threads and --rounds must be at least 1")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise UserFacingError(f"unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    print(f"hearscan vs ggml ({binary}), {args.threads} thread(s), {args.rounds} alternating round(s)")
    print(f"{'round':<6}{'op':<11}{'shape':<26}{'basis':<7}{'ggml us':>11}{'hearscan us':>13}{'hearscan faster':>17}")
    ratios: dict[tuple, list[float]] = {}
    with torch_threads():  # our timings set torch's thread count; it is restored afterwards
        for rnd in range(1, args.rounds + 1):
            for op in ops:
                for row in run_ggml(binary, op, args.threads):
                    shape = shape_of(row)
                    if not row["comparable"]:
                        if rnd == 1:
                            print(f"{'-':<6}{op:<11}{shape:<26}skipped: Mamba-2 (head_dim {row['head_dim']}, "
                                  f"{row['groups']} group(s)); hearscan's scan is Mamba-1")
                        continue
                    cpu_time = "cpu_us" in row
                    theirs = row["cpu_us"] if cpu_time else row["wall_us"]
                    ours = time_ours(OPS[op], row, args.threads, cpu_time)
                    ratios.setdefault((op, shape), []).append(theirs / ours)
                    print(f"{rnd:<6}{op:<11}{shape:<26}{'cpu' if cpu_time else 'wall':<7}{theirs:>11,.0f}{ours:>13,.0f}"
                          f"{theirs / ours:>16.2f}x", flush=True)
    print("summary (ggml time / hearscan time, over rounds):")
    for (op, shape), rs in ratios.items():
        print(f"  {op:<11}{shape:<26}{min(rs):.2f}-{max(rs):.2f}x")
    for op in ops:
        if not any(key[0] == op for key in ratios):
            print(f"  {op:<11}no comparable case in ggml's perf list: add one to make_test_cases_perf() "
                  "(see the README)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: hearscan bench ggml PATH/test-backend-ops")
