"""Checks on the audio batch a HEAR module receives, so bad input fails with a clear message."""

from __future__ import annotations

import torch

from hearscan_core.errors import AudioInputError


MIN_SAMPLES = 400  # one 25 ms analysis frame at 16 kHz: the shortest clip every module takes


def check_audio_batch(audio, module: str) -> torch.Tensor:
    """Validate a HEAR audio batch (n_sounds, n_samples) and return it as float32.

    Rejects: non-tensors, wrong rank (stereo arrives as 3-D), integer dtypes, NaN/Inf, clips shorter than
    one 25 ms analysis frame (the same minimum for every module).  Silence is valid input.
    """
    if not isinstance(audio, torch.Tensor):
        raise AudioInputError(f"{module}: audio must be a torch.Tensor of shape (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.ndim != 2:
        hint = " (stereo or multichannel? mix down to mono first)" if audio.ndim == 3 else ""
        raise AudioInputError(
            f"{module}: audio must have shape (n_sounds, n_samples), got {tuple(audio.shape)}{hint}"
        )
    if not audio.is_floating_point():
        raise AudioInputError(f"{module}: audio must be floating point in [-1, 1], got {audio.dtype}; divide integer PCM by its full scale")
    if audio.shape[1] < MIN_SAMPLES:
        raise AudioInputError(
            f"{module}: clips of {audio.shape[1]} samples are shorter than one analysis frame "
            f"({MIN_SAMPLES} samples, 25 ms); pad them (e.g. with zeros) to at least that length"
        )
    if not torch.isfinite(audio).all():
        bad = (~torch.isfinite(audio)).any(dim=1).nonzero().flatten().tolist()
        raise AudioInputError(f"{module}: audio contains NaN or Inf values (sounds {bad[:10]}); clean the input")
    return audio.float()
