"""hearscan: HEAR-compatible embedding evaluation for linear-time audio backbones.

This package holds the command line (`hearscan.cli`), the HEAR-stack compatibility layer
(`hearscan.compat`), the task-suite builders and checker (`hearscan.tasks`) and the benchmarks
(`hearscan.bench`).  The data path itself lives in the top-level packages:
task dir -> `feature_extract` -> embeddings dir -> `downstream` -> scores -> `results/`.
The HEAR modules live in `hear_modules`, their scan kernels in `csrc`.
"""

__version__ = "0.1.0"
