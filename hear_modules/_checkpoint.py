"""Safe checkpoint loading shared by the backbone modules.

Checkpoints are read with `torch.load(weights_only=True)`; a format that needs extra types names them
explicitly (`allowed_globals`), and nothing else is ever unpickled.  `load_strict` compares keys and
shapes before loading and lists every difference, so a wrong file fails with a readable message.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hearscan_core.errors import CheckpointError


def read_checkpoint(path: str | os.PathLike, allowed_globals=()) -> dict:
    """torch.load with weights_only=True, allowing only `allowed_globals` beyond plain tensors/containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass the path of an existing .pth file)")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "It is corrupt, truncated, or holds Python objects that hearscan will not unpickle "
            "(only weights are loaded, with torch.load(weights_only=True))."
        ) from err
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a state_dict (dict)")
    return obj


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Remove `prefix` from every key that has it (e.g. DataParallel's 'module.')."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def load_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load `state_dict` into `model` after checking keys and shapes; list every mismatch on failure.

    A family's checkpoint quirks (prefixes, keys the official format carries but the embedding never uses)
    are undone first by its `checkpoint_filter_fn`; nothing is loaded loosely.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        def show(title, items):
            if not items:
                return ""
            more = f" ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:20]) + more

        raise CheckpointError(
            f"checkpoint {source} does not match the model inferred from it:"
            + show("missing keys", missing)
            + show("unexpected keys", unexpected)
            + show("shape mismatches", shapes)
            + "\nIs this the official checkpoint of this model family? Check the module name and size."
        )
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
