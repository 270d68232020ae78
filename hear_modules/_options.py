"""The `load_model` options of every family: one schema, one validator, one random-weights warning.

Every family takes the common options (`size`, `device`, `dtype`, `scan_backend`) plus its extras
(`variant`, `norm`, `arrangement`, ...), declared as `Option`s.  `parse_options` checks them all the same
way, so errors read alike: an unknown option lists the valid ones, a bad value lists the valid values (or
states the rule), `device="cuda"` without CUDA says so, and a `scan_backend="compiled"` that cannot run
fails here, at load time, with csrc's reason, rather than in the middle of a run.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

import csrc
from hearscan_core.errors import UserFacingError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Option:
    """One option: its valid `choices`, or a `convert` function with the `rule` it enforces in words."""

    name: str
    choices: tuple = ()
    convert: Callable[[Any], Any] | None = None
    rule: str = ""
    default: Any = None


def positive_int(value) -> int:
    value = int(value)
    if value <= 0:
        raise ValueError
    return value


def common(sizes) -> list[Option]:
    """The options every backbone family takes: size, device, dtype, scan_backend."""
    return [Option("size", tuple(sizes)), Option("device"), Option("dtype", tuple(DTYPES), default="float32"),
            Option("scan_backend", csrc.BACKENDS)]


def resolve_device(module: str, device: str | None) -> str:
    """The requested device, or CUDA when present; a CUDA request without CUDA is an error."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise UserFacingError(f"hear_modules.{module}: device must be one of cpu, cuda (or cuda:N), got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserFacingError(f"hear_modules.{module}: device={device!r} but no CUDA device is available; use device='cpu'")
    return device


def parse_options(module: str, given: dict, schema: list[Option], ops: tuple[str, ...] = ()) -> dict:
    """Validate `given` against `schema`; return every option (defaults filled in), `device` resolved and
    `dtype` as a torch dtype.  `ops`: the csrc scans the family runs, checked when "compiled" is asked for."""
    by_name = {o.name: o for o in schema}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise UserFacingError(f"hear_modules.{module}: unknown options {unknown}; valid options: {', '.join(by_name)}")
    out = {}
    for option in schema:
        value = given.get(option.name, option.default)
        if value is not None and option.choices and value not in option.choices:
            raise UserFacingError(f"hear_modules.{module}: option {option.name}={value!r} is not valid; choose one of "
                                  + ", ".join(repr(v) for v in option.choices))
        if value is not None and option.convert is not None:
            try:
                value = option.convert(value)
            except (TypeError, ValueError):
                raise UserFacingError(f"hear_modules.{module}: option {option.name}={value!r} is not valid; "
                                      f"{option.name} must be {option.rule}") from None
        out[option.name] = value
    if "device" in by_name:
        out["device"] = resolve_device(module, out["device"])
    if "dtype" in by_name:
        out["dtype"] = DTYPES[out["dtype"]]
    if ops and "scan_backend" in by_name:
        _check_scan(module, out["scan_backend"], ops, out["device"])
    return out


def _check_scan(module: str, backend: str | None, ops: tuple[str, ...], device: str) -> None:
    """Fail now when "compiled" (the option, else $HEARSCAN_SCAN_BACKEND) cannot run on `device`."""
    try:
        for op in ops:
            csrc.resolve_backend(backend, op, device)
    except csrc.KernelBuildError as err:
        raise UserFacingError(f"hear_modules.{module}: scan_backend='compiled' unavailable: {err}") from err
    except ValueError as err:
        raise UserFacingError(f"hear_modules.{module}: {err}") from err


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Build a random-weights model under this: every draw (constructors' default inits included) comes from
    `seed`, so the same default loads the same weights in any process; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def warn_random_weights(module: str, what: str, advice: str) -> None:
    """Say it twice: as a Python warning (for code) and on stderr (for people running a command)."""
    message = f"hear_modules.{module}: {what} with RANDOM weights; embeddings are NOT meaningful. {advice}"
    warnings.warn(message, stacklevel=3)
    print(f"WARNING: {message}", file=sys.stderr)
