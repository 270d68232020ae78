"""The registry of model families: one line per family, read by everything that needs the list.

The CLI's module names (`hearscan extract TASKS OUT arwkv`, `hearscan modules`), the checkpoint lookup from
the environment (`HEARSCAN_<NAME>_CHECKPOINT`, and `$PT_AXLSTM_MODEL_DIR` for the AxLSTM repository's
families), the configurations `hearscan bench models` times, the options the results scripts extract with,
and the test that runs every module through the same checks (tests/test_modules.py) all read `FAMILIES`.
This file imports nothing heavy (no torch), so the CLI can read it at start-up.

Adding a family = its file `hear_modules/<name>.py` (the HEAR API on a model built from the shared layers),
one `Family(...)` line here, and its parity test against the official code's outputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PACKAGE = "hear_modules"
AXLSTM_MODEL_DIR = "PT_AXLSTM_MODEL_DIR"  # the AxLSTM repository's own variable (its hear_configs/*.py)


@dataclass(frozen=True)
class Family:
    name: str  # the file hear_modules/<name>.py and the CLI's name for it
    title: str  # what it is, in the field's words
    sizes: tuple[str, ...] = ()  # values of the `size` option (random-init models); () = no sizes
    ops: tuple[str, ...] = ()  # the csrc scans it runs
    bench_configs: tuple[dict, ...] = ({},)  # load_model options `hearscan bench models` times
    smallest: dict = field(default_factory=dict)  # options of its smallest model (what the results scripts run)
    model_dir_env: str | None = None  # a variable naming a folder of the official weights folders

    @property
    def module(self) -> str:
        """The importable HEAR module, e.g. "hear_modules.arwkv" (also the embeddings folder's name)."""
        return f"{PACKAGE}.{self.name}"

    @property
    def checkpoint_env(self) -> str:
        """The variable that configures this family's checkpoint for `hearscan extract` with no module named."""
        return f"HEARSCAN_{self.name.upper()}_CHECKPOINT"


SIZES = ("tiny", "small", "base")

FAMILIES: tuple[Family, ...] = (
    Family("logmel", "weights-free baseline: 64 log-mel bands"),
    Family("arwkv", "A-RWKV: bidirectional RWKV-7 with ConvShift", SIZES, ("wkv7",),
           tuple({"size": s} for s in SIZES), {"size": "tiny"}),
    Family("conrwkv", "RWKV-6 blocks with the Con block of RWKV-ASR", SIZES, ("wkv6",),
           tuple({"size": s} for s in SIZES), {"size": "tiny"}),
    Family("aum", "AuM (Audio Mamba), Fo-Bi and Bi-Bi", SIZES, ("selective_scan",),
           ({"size": "tiny", "variant": "fobi"}, {"size": "small", "variant": "bibi"},
            {"size": "base", "variant": "fobi"}),
           {"size": "tiny", "variant": "fobi"}),
    # the official 2-s chunks at each size, plus the whole clip as one sequence (chunk_frames="whole"),
    # where the mLSTM scan stays linear in clip length and attention does not
    Family("axlstm", "AxLSTM (Audio xLSTM), official HEAR wrapper", SIZES, ("mlstm",),
           tuple({"size": s} for s in SIZES) + ({"size": "tiny", "chunk_frames": "whole"},), {"size": "tiny"},
           model_dir_env=AXLSTM_MODEL_DIR),
    Family("ssast", "SSAST, the AxLSTM paper's ViT baseline", SIZES, (),
           tuple({"size": s} for s in SIZES) + ({"size": "tiny", "chunk_frames": "whole"},), {"size": "tiny"},
           model_dir_env=AXLSTM_MODEL_DIR),
    Family("equiav", "EquiAV's audio encoder (ViT-B)", ("base",), (), ({"size": "base"},), {"size": "base"}),
)

_BY_NAME = {f.name: f for f in FAMILIES}


def names() -> list[str]:
    return [f.name for f in FAMILIES]


def get(name: str) -> Family | None:
    """The family called `name` ("arwkv" or "hear_modules.arwkv"); None for any other module."""
    return _BY_NAME.get(name.removeprefix(f"{PACKAGE}."))


def module_name(name: str) -> str:
    """"arwkv" -> "hear_modules.arwkv" for a registered family; any other name is returned unchanged."""
    family = get(name)
    return family.module if family else name


def configured() -> list[tuple[Family, str | None]]:
    """The families whose weights the environment configures, with their checkpoint (None: the family finds
    its official weights folder under its model-dir variable itself)."""
    found = []
    for family in FAMILIES:
        path = os.environ.get(family.checkpoint_env)
        if path:
            found.append((family, path))
        elif family.model_dir_env and os.environ.get(family.model_dir_env):
            found.append((family, None))
    return found
