"""hearscan's TensorFlow stand-in: just enough of `tensorflow` for heareval and hear-validator to import.

heareval's embeddings runner and hear-validator import TensorFlow at the top but only *use* it for
TensorFlow models.  hearscan's launcher (`python -m hearscan.compat.launch`) puts this package on
`sys.path` only inside those tool processes, and only when no real TensorFlow is importable, so a real
installation is never shadowed.  Every TensorFlow model path raises with the fix (install tensorflow-cpu).
"""

from __future__ import annotations

import contextlib

__version__ = "0.0.0+hearscan-standin"
HEARSCAN_STANDIN = True

_NEEDS_REAL_TF = (
    "this process runs hearscan's TensorFlow stand-in (no real tensorflow is installed); "
    "TensorFlow models need a real one: pip install tensorflow-cpu"
)


class Module:
    """Stand-in for `tf.Module`.  No model is an instance of it, so the tools take their torch paths."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(_NEEDS_REAL_TF)


class _DType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"tf.{self.name} (stand-in)"


float32 = _DType("float32")


def _unavailable(*args, **kwargs):
    raise RuntimeError(_NEEDS_REAL_TF)


convert_to_tensor = _unavailable


@contextlib.contextmanager
def device(name: str):
    raise RuntimeError(_NEEDS_REAL_TF)
    yield  # pragma: no cover


class random:  # noqa: N801 - mirrors the `tf.random` namespace
    uniform = staticmethod(_unavailable)


class test:  # noqa: N801 - mirrors the `tf.test` namespace
    @staticmethod
    def is_gpu_available(cuda_only: bool = False, min_cuda_compute_capability=None) -> bool:
        # heareval's embeddings runner raises when torch sees a GPU but TensorFlow does not.  The
        # stand-in never runs anything on a device, so it reports exactly what torch reports.
        import torch

        return bool(torch.cuda.is_available())


class config:  # noqa: N801 - mirrors `tf.config`
    @staticmethod
    def list_physical_devices(device_type=None):
        return []
