"""hearscan: HEAR-compatible embedding evaluation for linear-time audio backbones.

This package holds the `hearscan` command (`hearscan.cli`, the roof over the stages), the HEAR-stack
compatibility layer (`hearscan.compat`) and the task-suite builders and checker (`hearscan.tasks`).  The
data path lives in the top-level packages: task dir -> `feature_extract` -> embeddings dir ->
`downstream` -> predictions dir -> `results/`, through the on-disk contracts in `formats`, on the ground
floor `hearscan_core`; the model families are `hear_modules`, their scan kernels `csrc`, the benchmarks
`benchmarks`.
"""

from hearscan_core import __version__  # noqa: F401
