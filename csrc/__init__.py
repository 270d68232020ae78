"""Scan kernels for linear-time audio backbones, each beside its pure-PyTorch reference.

One file per operator: `csrc/<op>.py` holds the reference (the truth) and the dispatching binding with
the same signature; `csrc/<op>_cpu.cpp` holds the compiled CPU kernel and `csrc/<op>_cuda.cu` the CUDA
one (same signature; built with nvcc on first use when a GPU is present).
The backend is chosen per call (`backend=`) or for the process with `HEARSCAN_SCAN_BACKEND`:
`auto` (compiled kernel when it can be built, else the reference), `compiled`, `reference`.

Conventions shared by all operators: state is float32; inputs may be float32 or bfloat16 and outputs have
the input dtype; every operator takes an optional initial `state` and returns `(y, final_state)` when
`return_state=True`, so a long recording can be processed in chunks.
"""

from csrc.mlstm import mlstm, mlstm_parallel_reference, mlstm_reference
from csrc.selective_scan import selective_scan, selective_scan_reference
from csrc.wkv6 import wkv6, wkv6_reference
from csrc.wkv7 import wkv7, wkv7_reference

__all__ = [
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
