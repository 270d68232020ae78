"""Frontends shared by the backbone modules: Kaldi-compatible fbank batches and timestamp grids."""

from __future__ import annotations

import torch
import torchaudio


def kaldi_fbank(
    audio: torch.Tensor,
    sample_frequency: int,
    target_length: int,
    num_mel_bins: int = 128,
    subtract_mean: bool = False,
    **kaldi_options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip `torchaudio.compliance.kaldi.fbank` (htk_compat, hanning, no energy, dither 0,
    10 ms shift), zero-padded in the log domain or cut to `target_length` frames.

    audio: (B, N) float32 at `sample_frequency`.  Returns (fbank (B, target_length, num_mel_bins),
    n_frames (B,) frames before padding/cutting).  Normalisation is left to the caller.
    """
    options = dict(
        htk_compat=True, sample_frequency=sample_frequency, use_energy=False, window_type="hanning",
        num_mel_bins=num_mel_bins, dither=0.0, frame_shift=10,
    )
    options.update(kaldi_options)
    out = audio.new_zeros(audio.shape[0], target_length, num_mel_bins)
    n_frames = torch.zeros(audio.shape[0], dtype=torch.long)
    for i, wave in enumerate(audio):
        wave = wave[None]
        if subtract_mean:
            wave = wave - wave.mean()
        fb = torchaudio.compliance.kaldi.fbank(wave, **options)
        n_frames[i] = fb.shape[0]
        n = min(fb.shape[0], target_length)
        out[i, :n] = fb[:n]
    return out, n_frames


def regular_timestamps(n_sounds: int, n_frames: int, hop_ms: float, offset_ms: float = 0.0) -> torch.Tensor:
    """Timestamps (n_sounds, n_frames) in ms: offset + i * hop, the centres of a regular frame grid."""
    ts = offset_ms + hop_ms * torch.arange(n_frames, dtype=torch.float64)
    return ts.float()[None].expand(n_sounds, n_frames).contiguous()
