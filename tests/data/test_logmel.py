"""LogMel features: shape contract with num_frames, and where a tone's energy lands."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from raykd.config import FeatureConfig
from raykd.data.features import LOG_FLOOR, LogMel, num_frames


@pytest.mark.parametrize("fc", [FeatureConfig(), FeatureConfig(sample_rate=8000, clip_seconds=1.0, n_mels=32,
                                                               win_ms=32.0, hop_ms=20.0)])
def test_shape_matches_num_frames(fc):
    out = LogMel(fc)(torch.randn(3, fc.clip_samples))
    assert out.shape == (3, fc.n_mels, num_frames(fc))
    assert num_frames(fc) == {16000: 151, 8000: 51}[fc.sample_rate]


def test_tone_lands_in_its_mel_band_and_silence_is_the_floor():
    fc = FeatureConfig()
    t = torch.arange(fc.clip_samples) / fc.sample_rate
    tone = 0.5 * torch.sin(2 * torch.pi * 1000.0 * t)
    feats = LogMel(fc)(torch.stack([tone, torch.zeros_like(tone)]))
    # centre frequencies of the mel bands, the same scale torchaudio uses (HTK)
    mel_max = 2595 * torch.log10(torch.tensor(1 + 8000 / 700))
    mels = torch.linspace(0, float(mel_max), fc.n_mels + 2)[1:-1]
    centres = 700 * (10 ** (mels / 2595) - 1)
    peak = int(feats[0, :, 50:100].mean(-1).argmax())
    assert abs(float(centres[peak]) - 1000.0) < 120.0
    torch.testing.assert_close(feats[1], torch.full_like(feats[1], torch.log(torch.tensor(LOG_FLOOR))))


def test_matches_a_plain_stft_reference():
    fc = FeatureConfig()
    x = torch.randn(2, fc.clip_samples)
    spec = torch.stft(x, 400, 160, 400, torch.hann_window(400), center=True, pad_mode="reflect",
                      return_complex=True).abs().pow(2)
    fb = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, fc.n_mels, fc.sample_rate)
    ref = torch.log(torch.einsum("bft,fm->bmt", spec, fb) + LOG_FLOOR)
    torch.testing.assert_close(LogMel(fc)(x), ref, atol=1e-4, rtol=1e-4)
