"""The layering, read from the code's own imports (every `import` and `from ... import`, at any depth):

    hearscan_core   ground floor: errors, atomic files, seed lists     imports nothing of the project
    formats         the on-disk contracts                              + hearscan_core
    csrc            scan kernels, the dispatcher                       + hearscan_core
    hear_modules    the model families                                 + csrc's public API (never csrc._*)
    feature_extract stage 1                                            + formats, hear_modules.registry
    downstream      stage 2                                            + formats, hearscan.compat
    hearscan.compat, hearscan.tasks   libraries of the HEAR stack and task suites
    hearscan.cli    the roof                                           anything; nothing imports it
    benchmarks      outside what they measure                          anything but the roof; only the roof imports them
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hearscan_core", "formats", "csrc", "hear_modules", "feature_extract", "downstream", "hearscan", "benchmarks")

# layer -> the project modules it may import (a prefix matches the module and everything under it)
ALLOWED = {
    "hearscan_core": ("hearscan_core",),
    "formats": ("hearscan_core", "formats"),
    "csrc": ("hearscan_core", "csrc"),
    "hear_modules": ("hearscan_core", "hear_modules", "csrc"),
    "feature_extract": ("hearscan_core", "formats", "feature_extract", "hear_modules.registry"),
    "downstream": ("hearscan_core", "formats", "downstream", "hearscan.compat"),
    "hearscan.compat": ("hearscan_core", "formats", "hearscan.compat", "hear_modules.registry"),
    "hearscan.tasks": ("hearscan_core", "formats", "hearscan.tasks"),
    "hearscan": ("hearscan_core", "hearscan.cli"),  # the package's __init__ and __main__
    "hearscan.cli": PACKAGES,
    "benchmarks": tuple(p for p in PACKAGES if p != "hearscan") + ("hearscan.compat", "hearscan.tasks"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    raise AssertionError(f"{module} is in no layer")


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a project module in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` may import the submodule pkg.sub
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return found


def allowed(layer: str, target: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in ALLOWED[layer])


SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "tf_standin" not in p.parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    layer = layer_of(module_name(path))
    bad = []
    for line, target in project_imports(path):
        if not allowed(layer, target) and not _is_name_of_allowed_module(layer, target):
            bad.append(f"line {line}: {target}")
        if layer == "hear_modules" and target.startswith("csrc.") and target.split(".")[1].startswith("_"):
            bad.append(f"line {line}: {target} (models use csrc's public API only)")
    assert not bad, f"{path.relative_to(ROOT)} ({layer}) imports " + "; ".join(bad)


def _is_name_of_allowed_module(layer: str, target: str) -> bool:
    """`from formats.embeddings import DONE` reads as formats.embeddings.DONE: allowed when its module is."""
    return "." in target and allowed(layer, target.rsplit(".", 1)[0]) and not _is_module(target)


def _is_module(target: str) -> bool:
    path = ROOT.joinpath(*target.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_nothing_imports_the_roof_or_the_benchmarks():
    bad = []
    for path in SOURCES:
        layer = layer_of(module_name(path))
        for line, target in project_imports(path):
            if target.startswith("hearscan.cli") and layer not in ("hearscan.cli", "hearscan"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the roof ({target})")
            if target.startswith("benchmarks") and layer not in ("hearscan.cli", "benchmarks"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports a benchmark ({target})")
    assert not bad, "\n".join(bad)


def test_the_rules_catch_a_violation(tmp_path):
    """The walker sees imports inside functions and relative ones (a test that cannot fail proves nothing)."""
    sample = ROOT / "downstream" / "_layering_probe.py"
    sample.write_text("def f():\n    from feature_extract.engine import Extractor\n    from . import linear\n")
    try:
        imports = [t for _, t in project_imports(sample)]
    finally:
        sample.unlink()
    assert "feature_extract.engine.Extractor" in imports and "downstream.linear" in imports
    assert not allowed("downstream", "feature_extract.engine")
