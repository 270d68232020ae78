"""`hearscan bench models`: how fast each HEAR backbone embeds audio, compiled scan vs reference scan.

Generic over the registry of families (`hear_modules.registry`): each family's `bench_configs` (a list of
`load_model` option dicts, e.g. `[{"size": "tiny"}, ...]`).  Models are random-init (no checkpoint needed:
speed does not depend on the weights).  Families that fail to import are skipped with a note; families
that run no scan get no reference column.

Throughput (default): audio-seconds embedded per wall-clock second by `get_scene_embeddings` on
`--clips` random clips of `--seconds` s, with `scan_backend="compiled"` and `"reference"` measured side by
side in the same run, and their ratio.  One warm-up call on a 1-s batch precedes each timing (kernel
load, allocator); each timing is the best of `--repeats` calls.

Scaling (`--lengths 10,60,600`): for each length, a fresh subprocess loads the model, embeds one clip and
reports the time and the peak resident memory (`getrusage` ru_maxrss, which sees torch's allocations,
unlike tracemalloc), minus the peak after loading the model, i.e. the memory the embedding itself needed.
Cost per audio-second against length shows whether a backbone stays linear.

Shared machines are noisy: compare ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import resource
import subprocess
import sys
import time
import warnings

from benchmarks.stamp import stamp


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="audio-seconds per second of each HEAR backbone, compiled vs reference scans; time/memory vs length",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--modules", default=None, help="comma-separated subset of the registered families (default: all)")
    parser.add_argument("--configs", default=None,
                        help="only configs whose options contain this, e.g. 'size=tiny' (comma-separated key=value)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length for the throughput mode (default 10)")
    parser.add_argument("--clips", type=int, default=2, help="clips per batch (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per point, best is kept (default 1)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference-scan column")
    parser.add_argument("--lengths", default=None,
                        help="scaling mode: comma-separated clip lengths in seconds, e.g. 10,60,600")
    parser.add_argument("--backend", default="compiled", choices=("compiled", "reference", "auto"),
                        help="scan backend for the scaling mode (default compiled)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per scaling point (default 1800)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--device", default="cpu", help="device option passed to load_model (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------- discovery

def discover(names: list[str] | None) -> tuple[list[tuple[str, object, list[dict]]], list[str]]:
    """(module name, module, bench configs) for every registered family, plus notes on skipped ones."""
    from hear_modules import registry

    found, notes = [], []
    for name in names or registry.names():
        family = registry.get(name)
        if family is None:
            notes.append(f"{name}: skipped (not present: the registered families are {', '.join(registry.names())})")
            continue
        try:
            module = importlib.import_module(f"hear_modules.{name}")
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("hear_modules"):
                notes.append(f"{name}: skipped (module not present yet)")
                continue
            notes.append(f"{name}: skipped (import failed: {err})")
            continue
        except Exception as err:  # a module under construction must not stop the others
            notes.append(f"{name}: skipped (import failed: {type(err).__name__}: {err})")
            continue
        found.append((name, module, [dict(c) for c in family.bench_configs]))
    return found, notes


def _matches(config: dict, wanted: str | None) -> bool:
    if not wanted:
        return True
    for item in wanted.split(","):
        key, _, value = item.partition("=")
        if str(config.get(key.strip())) != value.strip():
            return False
    return True


def _selected(args) -> tuple[list[tuple[str, object, dict]], list[str]]:
    """(module name, module, config) for every config of `--modules` that matches `--configs`, and the notes."""
    found, notes = discover(args.modules.split(",") if args.modules else None)
    return [(name, module, c) for name, module, configs in found for c in configs if _matches(c, args.configs)], notes


def _label(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items()) or "default"


def load_quietly(module, options: dict):
    """load_model(**options) without the random-weights warning on screen (it is expected here)."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        return module.load_model(**options)


def _load(module, config: dict, backend: str | None, device: str):
    """Load with the most specific options the module accepts: config + device + scan_backend, then
    without scan_backend, then without device.  Returns (model, options used) or (None, reason)."""
    tries = [dict(config, device=device, scan_backend=backend), dict(config, device=device), dict(config)]
    if backend is None:
        tries = tries[1:]
    reason = "?"
    for options in tries:
        try:
            return load_quietly(module, options), options
        except Exception as err:  # UserFacingError / ValueError / TypeError for an option it does not take
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None, reason


def _embed_time(module, model, audio, repeats: int) -> float:
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        module.get_scene_embeddings(audio, model)
        best = min(best, time.perf_counter() - start)
    return best


def _backend_works(module, model, sr: int) -> str | None:
    """Warm up on 1 s of audio; None if it runs, else the reason (e.g. the kernel cannot be built)."""
    import torch

    try:
        module.get_scene_embeddings(torch.zeros(1, sr), model)
    except Exception as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


# ---------------------------------------------------------------------------------------------- throughput

def throughput(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    selected, notes = _selected(args)
    rows = []
    for name, module, config in selected:
        row = {"module": name, "config": _label(config), "seconds": args.seconds, "clips": args.clips}
        has_backend = True
        for column in ("compiled", "reference"):
            if column == "reference" and args.no_reference:
                row[column] = {"skipped": "--no-reference"}
                continue
            if column == "reference" and not has_backend:
                row[column] = {"skipped": "module has no scan_backend option"}
                continue
            model, used = _load(module, config, column, args.device)
            if model is None:
                row[column] = {"error": used}
                continue
            has_backend = "scan_backend" in used
            sr = int(model.sample_rate)
            reason = _backend_works(module, model, sr)
            if reason:
                row[column] = {"error": reason}
                continue
            audio = (torch.randn(args.clips, int(args.seconds * sr), generator=torch.Generator().manual_seed(0)) * 0.1)
            elapsed = _embed_time(module, model, audio, args.repeats)
            row[column] = {"wall_s": elapsed, "audio_s_per_s": args.clips * args.seconds / elapsed}
            if not has_backend:
                row[column]["note"] = "module's own path (no scan_backend option)"
            if "params_m" not in row:
                row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
            del model
        c, r = row.get("compiled", {}), row.get("reference", {})
        if "audio_s_per_s" in c and "audio_s_per_s" in r:
            row["speedup"] = c["audio_s_per_s"] / r["audio_s_per_s"]
        rows.append(row)
        if not args.json:
            print(_format_row(row), flush=True)
    return {"mode": "throughput", "threads": torch.get_num_threads(), "device": args.device, "rows": rows, "notes": notes}


def _cell(entry: dict) -> str:
    if "audio_s_per_s" in entry:
        own = " [own path]" if "note" in entry else ""
        return f"{entry['audio_s_per_s']:9.2f} ({entry['wall_s']:6.2f} s){own}"
    return "n/a: " + (entry.get("skipped") or entry.get("error") or "?")[:60]


def _format_row(row: dict) -> str:
    ratio = f"x{row['speedup']:.2f}" if "speedup" in row else "-"
    params = f"{row.get('params_m', float('nan')):6.1f}M"
    return (f"{row['module']:<8} {row['config']:<16} {params}  compiled {_cell(row['compiled'])}  "
            f"reference {_cell(row['reference'])}  compiled/reference {ratio}")


# ---------------------------------------------------------------------------------------------- scaling

def _point(args) -> None:
    """Child process of the scaling mode: one model, one clip, print one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    module = importlib.import_module(f"hear_modules.{args.module}")
    options = json.loads(args.config)
    if args.device:
        options["device"] = args.device
    if args.backend:
        options["scan_backend"] = args.backend
    model = load_quietly(module, options)
    sr = int(model.sample_rate)
    module.get_scene_embeddings(torch.zeros(1, sr), model)  # warm-up: kernels, allocator
    audio = torch.randn(1, int(args.seconds * sr), generator=torch.Generator().manual_seed(0)) * 0.1
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    module.get_scene_embeddings(audio, model)
    elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"wall_s": elapsed, "peak_rss_mb": peak_kb / 1024, "embed_extra_mb": (peak_kb - before_kb) / 1024}))


def scaling(args) -> dict:
    lengths = [float(x) for x in args.lengths.split(",") if x.strip()]
    selected, notes = _selected(args)
    rows = []
    for name, module, config in selected:
        model, used = _load(module, config, args.backend, args.device)
        accepts_backend = model is not None and "scan_backend" in used
        accepts_device = model is not None and "device" in used
        del model
        base = None
        for seconds in lengths:
            cmd = [sys.executable, "-m", "benchmarks.models", "_point", "--module", name,
                   "--config", json.dumps(config), "--seconds", str(seconds)]
            if accepts_device:
                cmd += ["--device", args.device]
            if accepts_backend:
                cmd += ["--backend", args.backend]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            row = {"module": name, "config": _label(config), "seconds": seconds,
                   "backend": args.backend if accepts_backend else "module default"}
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                if out.returncode != 0:
                    tail = (out.stderr.strip().splitlines() or ["?"])[-1]
                    row["error"] = f"exit {out.returncode}: {tail}"
                else:
                    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
            except subprocess.TimeoutExpired:
                row["error"] = f"timed out after {args.timeout:.0f} s"
            if "wall_s" in row:
                row["s_per_audio_s"] = row["wall_s"] / seconds
                base = base or row["s_per_audio_s"]
                row["cost_vs_shortest"] = row["s_per_audio_s"] / base
            rows.append(row)
            if not args.json:
                print(_format_point(row), flush=True)
    return {"mode": "scaling", "device": args.device, "rows": rows, "notes": notes}


def _format_point(row: dict) -> str:
    head = f"{row['module']:<8} {row['config']:<16} {row['seconds']:7.0f} s"
    if "error" in row:
        return f"{head}  error: {row['error']}"
    return (f"{head}  {row['wall_s']:8.2f} s wall  {row['s_per_audio_s'] * 1000:7.1f} ms per audio-s "
            f"(x{row['cost_vs_shortest']:.2f} of shortest)  peak RSS {row['peak_rss_mb']:7.0f} MB  "
            f"embedding needed {row['embed_extra_mb']:7.0f} MB")


# ---------------------------------------------------------------------------------------------- entry

def run(args) -> int:
    result = scaling(args) if args.lengths else throughput(args)
    if args.json:
        print(json.dumps({"meta": stamp("models"), **result}, indent=2))
    else:
        for note in result["notes"]:
            print(f"note: {note}")
        if result["mode"] == "throughput":
            print(f"({result['threads']} torch threads, device {result['device']}; audio-seconds per second, "
                  f"best of {args.repeats}; ratio = compiled / reference)")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m benchmarks.models")
    sub = cli.add_subparsers(dest="action", required=True)
    point = sub.add_parser("_point", help="internal: one scaling point (run by `hearscan bench models --lengths`)")
    point.add_argument("--module", required=True)
    point.add_argument("--config", required=True)
    point.add_argument("--seconds", type=float, required=True)
    point.add_argument("--backend", default=None)
    point.add_argument("--threads", type=int, default=None)
    point.add_argument("--device", default=None)
    _point(cli.parse_args())
