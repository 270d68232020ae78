"""Native windows -> token columns -> timestamps: the long-clip and timestamp rules every windowing family shares.

A backbone trained on fixed-length inputs (A-RWKV 992 frames, AuM and EquiAV 1024) sees a longer clip as
several native windows; each window's tokens, pooled over frequency, are its *columns* (one per time patch
of `patch` frames).  The columns of all windows form one grid over the clip (where windows overlap, the
earlier window's columns are kept), and the columns whose centre lies inside the clip are its timestamp
embeddings.  Con-RWKV has no windows but the same columns and stamps.  What differs per family - where the
last window goes, how the scene embedding pools - is chosen by the family with the arguments below.

Frames are Kaldi frames (25 ms windows every 10 ms): frame i spans 10 i .. 10 i + 25 ms, centre 10 i + 12.5.
"""

from __future__ import annotations

import math

import torch

FRAME_SHIFT_MS = 10.0
FRAME_LENGTH_MS = 25.0


def window_starts(n_frames: int, window: int, last: str, align: int = 1, single_up_to: int | None = None) -> list[int]:
    """Start frames of the native windows covering `n_frames`.

    Up to `single_up_to` frames (default: `window`) the clip is one window (padded or cut as the official
    loader does).  Beyond, windows go back to back; the last one is either zero-padded past the clip
    (`last="pad"`) or aligned to the clip's end (`last="end"`, at the latest multiple of `align` that
    still reaches it), so it is a full native input overlapping its neighbour.
    """
    if n_frames <= (single_up_to or window):
        return [0]
    count = math.ceil(n_frames / window)
    if last == "pad":
        return [window * k for k in range(count)]
    return [window * k for k in range(count - 1)] + [align * math.ceil((n_frames - window) / align)]


def run_in_batches(fn, items: torch.Tensor, batch: int) -> torch.Tensor:
    """`fn` over `items` (windows or chunks along dim 0) `batch` at a time: memory bounded by the batch."""
    return torch.cat([fn(items[i:i + batch]) for i in range(0, items.shape[0], batch)])


def merge_columns(columns: torch.Tensor, starts: list[int], patch: int) -> tuple[torch.Tensor, list[int]]:
    """Per-window columns (B, K, G, ...) -> one grid over the clip (B, P, ...), and each kept column's first
    frame.  A window's columns that start before the previous window's end are dropped (overlap)."""
    kept, first_frames, covered = [], [], 0
    for k, start in enumerate(starts):
        first = next((c for c in range(columns.shape[2]) if start + patch * c >= covered), columns.shape[2])
        kept.append(columns[:, k] if first == 0 else columns[:, k, first:])
        first_frames += [start + patch * c for c in range(first, columns.shape[2])]
        covered = start + patch * columns.shape[2]
    return (kept[0] if len(kept) == 1 else torch.cat(kept, dim=1)), first_frames


def column_centres_ms(first_frames: list[int], patch: int) -> torch.Tensor:
    """Centre (ms, float64) of each column: the middle of its `patch` frames."""
    first = torch.tensor(first_frames, dtype=torch.float64)
    return FRAME_SHIFT_MS * (first + (patch - 1) / 2) + FRAME_LENGTH_MS / 2


def timestamps_inside(centres_ms: torch.Tensor, n_samples: int, sample_rate: int) -> torch.Tensor:
    """The leading centres that lie inside a clip of `n_samples` (float64 ms); at least one: a clip shorter
    than the first centre gets one stamp at its middle.  Centres past the end hold (mostly) padding."""
    duration_ms = 1000.0 * n_samples / sample_rate
    n = max(1, int((centres_ms <= duration_ms).sum()))
    ts = centres_ms[:n].clone()
    if ts[0] > duration_ms:
        ts[0] = duration_ms / 2
    return ts


def batch_timestamps(ts: torch.Tensor, n_sounds: int, device) -> torch.Tensor:
    """One clip's stamps (n,) float64 -> the (n_sounds, n) float32 timestamps HEAR returns."""
    return ts.float()[None].expand(n_sounds, ts.shape[0]).to(device).contiguous()
