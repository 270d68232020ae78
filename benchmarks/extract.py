"""`hearscan bench extract`: our extraction vs heareval's embeddings runner, side by side in one run.

Both runs use the same module and tasks; the ratio of wall times is printed, and the outputs are checked
to be equal (so the faster run did the same work).  Default tasks: the mini suite (built, or reused,
under the hearscan cache), or the synthetic suite with `--suite synthetic`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.stamp import stamp


def register(subparsers) -> None:
    p = subparsers.add_parser("extract", help="extraction speed: hearscan vs heareval's embeddings runner")
    p.add_argument("--tasks-dir", type=Path, default=None, help="HEAR tasks to use (default: build a suite)")
    p.add_argument("--suite", choices=["mini", "synthetic"], default="mini")
    p.add_argument("--module", default="logmel")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def _suite_dir(suite: str) -> Path:
    from csrc._build import cache_root

    out = cache_root() / "bench-tasks" / suite
    if suite == "synthetic":
        from hearscan.tasks.synthetic import build_synthetic

        build_synthetic(out)
    else:
        from hearscan.tasks import build_mini

        build_mini(out)
    return out


def _equal_outputs(a: Path, b: Path) -> bool:
    import numpy as np

    for task in sorted(a.iterdir()):
        meta = json.loads((task / "task_metadata.json").read_text())
        for split in meta["splits"]:
            dims = tuple(json.loads((task / f"{split}.embedding-dimensions.json").read_text()))
            if tuple(json.loads((b / task.name / f"{split}.embedding-dimensions.json").read_text())) != dims:
                return False
            x = np.memmap(task / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=dims)
            y = np.memmap(b / task.name / f"{split}.embeddings.npy", dtype=np.float32, mode="r", shape=dims)
            if not np.allclose(x, y, rtol=1e-4, atol=1e-4):
                return False
    return True


def run(args) -> int:
    from feature_extract.engine import Extractor
    from feature_extract.modules import ModuleSpec, resolve_module_name
    from hearscan.compat import run_embeddings

    tasks = args.tasks_dir or _suite_dir(args.suite)
    module = resolve_module_name(args.module)
    with tempfile.TemporaryDirectory(prefix="hearscan-bench-extract-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        theirs = run_embeddings(module, tasks_dir=tasks, embeddings_dir=tmp / "heareval", verbose=False)
        t_heareval = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = Extractor(tmp / "hearscan", progress=False, log=lambda m: None).run(tasks, [ModuleSpec(module)])
        t_ours = time.perf_counter() - t0
        same = _equal_outputs(theirs.module_dir, tmp / "hearscan" / module)
    result = {
        "module": module, "tasks": str(tasks), "clips": stats[0].clips,
        "audio_hours": round(stats[0].audio_seconds / 3600, 3),
        "heareval_s": round(t_heareval, 2), "hearscan_s": round(t_ours, 2),
        "speedup": round(t_heareval / t_ours, 2), "outputs_equal": same,
    }
    if args.json:
        print(json.dumps({"meta": stamp("extract"), **result}, indent=2))
    else:
        print(f"extraction of {result['clips']} clips ({result['audio_hours']} h) with {module} on {tasks}")
        print(f"  heareval embeddings runner: {t_heareval:8.1f} s (incl. its process start)")
        print(f"  hearscan extract:           {t_ours:8.1f} s (module load included)")
        print(f"  ratio heareval/hearscan:    {t_heareval / t_ours:8.2f}x   outputs equal: {same}")
    return 0 if same else 1
