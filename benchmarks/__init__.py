"""Benchmarks, kept out of the packages they measure.  Each prints ratios measured side by side in one
run (alternating rounds) and, with `--json`, one JSON document stamped with the machine, date and command
(`benchmarks.stamp`), which `python -m benchmarks.report` turns into docs/benchmarks.md.

    kernels   compiled scan kernels vs their PyTorch references (CPU, or CUDA with --device cuda)
    ggml      our WKV and selective-scan kernels vs ggml's CPU ops
    models    audio-seconds per second of every registered family, compiled vs reference scans
    probe     the 10-seed linear probe vs heareval's runner once per seed
    extract   `hearscan extract` vs heareval's embeddings runner
"""

TARGETS = {
    "kernels": "benchmarks.kernels",
    "ggml": "benchmarks.ggml",
    "models": "benchmarks.models",
    "probe": "benchmarks.probe",
    "extract": "benchmarks.extract",
}
