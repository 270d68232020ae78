"""Weights-free log-mel baseline: the floor every backbone must clear.

Frontend: 16 kHz, 64 log-mel bands (torchaudio MelSpectrogram, 25 ms Hann window, 10 ms hop, 60-7800 Hz,
log(x + 1e-6)).  Timestamp embeddings: the mean of the log-mel frames in a 50 ms window every 20 ms
(64 dims), stamped at the window centre.  Scene embedding: mean and standard deviation over all frames
(128 dims).  No parameters are learned; `model_file_path` must be empty.

Why: it is the floor every backbone must clear, and it exercises the whole HEAR chain with nothing to
download.  The 20 ms timestamp hop stays under hear-validator's 50 ms advice and matches heareval's
event-task resolution; pooling 5 frames (50 ms) smooths the 10 ms frames without blurring onsets.
Long clips: no limit, the cost is linear in the clip length.  Option: `device` ("cpu", "cuda"; default
CUDA when present).
"""

from __future__ import annotations

import torch
import torchaudio

from hear_modules._audio import check_audio_batch
from hear_modules._frontend import regular_timestamps
from hear_modules._options import Option, parse_options
from hearscan_core.errors import UserFacingError

SAMPLE_RATE = 16000
N_MELS = 64
WIN = 400  # 25 ms
HOP = 160  # 10 ms
POOL = 5  # frames per timestamp window (50 ms)
STRIDE = 2  # frames between timestamps: a 20 ms hop
TIMESTAMP_HOP_MS = STRIDE * HOP / SAMPLE_RATE * 1000.0
OPTIONS = [Option("device")]



class LogMel(torch.nn.Module):
    sample_rate = SAMPLE_RATE
    scene_embedding_size = 2 * N_MELS
    timestamp_embedding_size = N_MELS

    def __init__(self):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=512, win_length=WIN, hop_length=HOP,
            f_min=60.0, f_max=7800.0, n_mels=N_MELS, center=True, power=2.0,
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) waveform -> (B, frames, N_MELS) log-mel."""
        return torch.log(self.mel(audio) + 1e-6).transpose(1, 2)


def load_model(model_file_path: str = "", **options) -> LogMel:
    if model_file_path:
        raise UserFacingError(
            f"hear_modules.logmel has no weights, but was given the model file {model_file_path}; "
            "call it without a model file (no --model)"
        )
    return LogMel().eval().to(parse_options("logmel", options, OPTIONS)["device"])


def _on_model_device(audio: torch.Tensor, model: LogMel) -> torch.Tensor:
    return audio.to(model.mel.spectrogram.window.device)


def get_timestamp_embeddings(audio: torch.Tensor, model: LogMel):
    audio = _on_model_device(check_audio_batch(audio, "logmel"), model)
    with torch.no_grad():
        frames = model(audio)  # (B, F, 64); frame i is centred at i * 10 ms
        # average POOL frames around every STRIDE-th frame (edge-replicated), stamped at its centre
        padded = torch.nn.functional.pad(frames.transpose(1, 2), (POOL // 2, POOL // 2), mode="replicate")
        pooled = torch.nn.functional.avg_pool1d(padded, POOL, stride=1).transpose(1, 2)
        emb = pooled[:, ::STRIDE].contiguous()
    timestamps = regular_timestamps(audio.shape[0], emb.shape[1], TIMESTAMP_HOP_MS)
    return emb, timestamps


def get_scene_embeddings(audio: torch.Tensor, model: LogMel) -> torch.Tensor:
    audio = _on_model_device(check_audio_batch(audio, "logmel"), model)
    with torch.no_grad():
        frames = model(audio)
        return torch.cat([frames.mean(dim=1), frames.std(dim=1, unbiased=False)], dim=1)
