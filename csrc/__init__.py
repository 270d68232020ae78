"""Scan kernels for linear-time audio backbones, each beside its pure-PyTorch reference.

One file per operator: `csrc/<op>.py` holds the reference (the truth) and the binding with the same
signature; `csrc/<op>_cpu.cpp` holds the compiled CPU kernel and `csrc/<op>_cuda.cu` the CUDA one (same
signature; built with nvcc on first use when a GPU is present).  Which of them runs is decided in one
place, `csrc.dispatch`, from the tensors' device and the request: per call (`backend=`) or for the process
(`HEARSCAN_SCAN_BACKEND`): `auto` (the device's compiled kernel when it can run, else the reference),
`compiled`, `reference`.  Design notes: csrc/README.md.

Conventions shared by all operators: state is float32; inputs may be float32 or bfloat16 and outputs have
the input dtype; every operator takes an optional initial `state` and returns `(y, final_state)` when
`return_state=True`, so a long recording can be processed in chunks.
"""

from csrc._build import KernelBuildError
from csrc.dispatch import BACKENDS, kernel_calls, resolve_backend
from csrc.mlstm import mlstm, mlstm_parallel_reference, mlstm_reference
from csrc.selective_scan import selective_scan, selective_scan_reference
from csrc.wkv6 import wkv6, wkv6_reference
from csrc.wkv7 import wkv7, wkv7_reference

OPS = ("wkv7", "wkv6", "selective_scan", "mlstm")
"""The operators, in the order benchmarks and builds list them: the one op registry."""

__all__ = [
    "OPS",
    "BACKENDS",
    "KernelBuildError",
    "kernel_calls",
    "resolve_backend",
    "wkv7",
    "wkv7_reference",
    "wkv6",
    "wkv6_reference",
    "selective_scan",
    "selective_scan_reference",
    "mlstm",
    "mlstm_reference",
    "mlstm_parallel_reference",
]
