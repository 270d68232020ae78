"""`load_model` option handling shared by the backbone modules: checks that name the valid choices,
device resolution, and the loud random-weights warning."""

from __future__ import annotations

import sys
import warnings

import torch

from hearscan.errors import UserFacingError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_options(module: str, options: dict, valid: dict) -> dict:
    """Reject unknown options and values outside `valid[key]` (any "cuda..." device string is allowed)."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UserFacingError(f"hear_modules.{module}: unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    for key, value in options.items():
        ok = value in valid[key] or (key == "device" and isinstance(value, str) and value.startswith("cuda"))
        if not ok:
            raise UserFacingError(
                f"hear_modules.{module}: option {key}={value!r} is not valid; choose one of "
                + ", ".join(str(v) for v in valid[key] if v is not None)
            )
    return options


def resolve_device(module: str, device: str | None) -> str:
    """The requested device, or CUDA when present; a CUDA request without CUDA is an error."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserFacingError(f"hear_modules.{module}: device={device!r} but no CUDA device is available; use device='cpu'")
    return device


def warn_random_weights(message: str) -> None:
    """Say it twice: as a Python warning (for code) and on stderr (for people running a command)."""
    warnings.warn(message, stacklevel=3)
    print(f"WARNING: {message}", file=sys.stderr)
