"""Log-mel features: the student's input, computed on the fly from waveforms."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from raykd.config import FeatureConfig

LOG_FLOOR = 1e-6  # keeps log() finite on digital silence


def stft_sizes(features: FeatureConfig) -> tuple[int, int]:
    """(n_fft, hop) in samples; the window is the whole FFT frame (no zero padding)."""
    n_fft = int(round(features.win_ms * features.sample_rate / 1000))
    hop = int(round(features.hop_ms * features.sample_rate / 1000))
    return n_fft, max(hop, 1)


def num_frames(features: FeatureConfig) -> int:
    """Frames T of one clip; centred STFT, so T = 1 + clip_samples // hop."""
    return 1 + features.clip_samples // stft_sizes(features)[1]


class LogMel(nn.Module):
    """(B, S) float waveform -> (B, n_mels, T) natural-log mel power spectrogram."""

    def __init__(self, features: FeatureConfig):
        super().__init__()
        n_fft, hop = stft_sizes(features)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=features.sample_rate, n_fft=n_fft, win_length=n_fft,
            hop_length=hop, n_mels=features.n_mels, power=2.0, center=True)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(waves) + LOG_FLOOR)
