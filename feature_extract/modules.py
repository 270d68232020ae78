"""Which HEAR module to run, with which checkpoint and options, and how its outputs are named.

A module spec on the command line is `MODULE[=CHECKPOINT]`; MODULE is a hearscan module name
(`logmel`, `arwkv`, ...) or any importable HEAR module (`hearbaseline.naive`).  Options come from
`--option [MODULE:]KEY=VALUE`.  The output folder name (the module tag) is heareval's:
`<module __name__>[-key=value...]`, so heareval's runner and ours write to the same place.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from hear_modules import registry
from hearscan_core.errors import UserFacingError

WEIGHTS_FREE_DEFAULT = "logmel"


@dataclass
class ModuleSpec:
    module: str  # importable name, e.g. "hear_modules.logmel"
    checkpoint: str | None = None
    options: dict = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """heareval's embeddings folder name: module name plus slugified options."""
        if not self.options:
            return self.module
        from slugify import slugify

        return self.module + "-" + "-".join(f"{slugify(k)}={slugify(str(v))}" for k, v in self.options.items())


def resolve_module_name(name: str) -> str:
    return registry.module_name(name)


def import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise UserFacingError(
                f"unknown module {name!r}: hearscan modules are {', '.join(registry.names())}; "
                "other HEAR modules must be importable (pip install them)"
            ) from err
        raise


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_specs(specs: list[str], option_args: list[str]) -> list[ModuleSpec]:
    """`MODULE[=CHECKPOINT]` strings plus `[MODULE:]KEY=VALUE` options -> ModuleSpecs."""
    parsed = []
    for spec in specs:
        name, _, checkpoint = spec.partition("=")
        parsed.append(ModuleSpec(resolve_module_name(name), checkpoint or None))
    for opt in option_args:
        target, sep, assignment = opt.partition(":")
        if not sep or "=" in target:
            target, assignment = None, opt
        key, eq, value = assignment.partition("=")
        if not eq or not key:
            raise UserFacingError(f"--option {opt!r} is not [MODULE:]KEY=VALUE")
        matched = False
        for spec in parsed:
            if target is None or spec.module == resolve_module_name(target):
                spec.options[key] = parse_value(value)
                matched = True
        if not matched:
            raise UserFacingError(f"--option {opt!r} names module {target!r}, which is not being extracted")
    for spec in parsed:
        if spec.checkpoint and not Path(spec.checkpoint).exists():
            raise UserFacingError(f"checkpoint for {spec.module} not found: {spec.checkpoint}")
    return parsed


def configured_specs() -> list[ModuleSpec]:
    """Modules whose weights the environment configures (empty: none; see `registry.configured`).

    `HEARSCAN_<MODULE>_CHECKPOINT=path` configures a module (e.g. HEARSCAN_ARWKV_CHECKPOINT);
    `$PT_AXLSTM_MODEL_DIR` (the official AxLSTM layout) configures axlstm and ssast.
    """
    return [ModuleSpec(family.module, path) for family, path in registry.configured()]


def file_sha256(path: str | None) -> str | None:
    """SHA-256 of a checkpoint file (or of the sorted files of a checkpoint folder)."""
    if not path:
        return None
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
