"""Waveform augmentation (achieved SNR, gain, shift, determinism) and SpecAugment masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.config import AugmentConfig
from raykd.data.augment import (COLOURS, augment_waveforms, coloured_noise, load_noise_bank,
                                spec_augment)

SR, S = 16000, 24000


def speechlike(batch: int = 16, seed: int = 0) -> torch.Tensor:
    """(batch, S): tone bursts with silence around them, different level per clip."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S) / SR
    freq = 200 + 800 * torch.rand(batch, 1, generator=g)
    level = 0.05 + 0.5 * torch.rand(batch, 1, generator=g)
    env = ((t > 0.4) & (t < 1.0)).float()
    return level * env * torch.sin(2 * torch.pi * freq * t)


# the acoustic effects (tests/data/test_augment_acoustic.py) switched off
ACOUSTIC_OFF = dict(speed_prob=0.0, pitch_prob=0.0, reverb_prob=0.0, babble_prob=0.0,
                    bandlimit_prob=0.0, mulaw_prob=0.0)


def only(**kw) -> AugmentConfig:
    """Everything off except what the test names."""
    base = dict(noise_prob=0.0, gain_db=(0.0, 0.0), time_shift_ms=0.0, **ACOUSTIC_OFF)
    return AugmentConfig(**{**base, **kw})


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.pow(2).mean(-1) / (noisy - clean).pow(2).mean(-1))


@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_synthetic_noise_hits_the_requested_snr(snr):
    clean = speechlike()
    out = augment_waveforms(clean, only(noise_prob=1.0, snr_db=(snr, snr)), SR, torch.Generator().manual_seed(1))
    got = snr_db(clean, out)
    assert torch.all((got - snr).abs() < 0.5), got


def test_snr_range_and_noise_bank(tmp_path, write_wav):
    for i, (sec, f) in enumerate([(0.5, 120.0), (4.0, 2500.0)]):
        write_wav(tmp_path / f"n{i}.wav", seconds=sec, freq=f)
    aug = only(noise_prob=1.0, snr_db=(5.0, 15.0), noise_dir=tmp_path)
    bank = load_noise_bank(aug, SR, S)
    assert bank.shape == (1 + 2, S)  # the short file looped to one clip, the long one cut into 2
    clean = speechlike(64)
    out = augment_waveforms(clean, aug, SR, torch.Generator().manual_seed(2), bank)
    got = snr_db(clean, out)
    assert got.min() > 4.5 and got.max() < 15.5 and got.max() - got.min() > 5, got
    # the noise added really is a (scaled) bank segment: correlation with one of them is ~1
    noise = out - clean
    corr = torch.nn.functional.cosine_similarity(noise[:, None, :], bank[None], dim=-1).abs().max(1).values
    assert torch.all(corr > 0.999)


def test_bad_noise_dir(tmp_path):
    from raykd.data.audio import AudioError

    with pytest.raises(AudioError, match="no such folder"):
        load_noise_bank(only(noise_dir=tmp_path / "none"), SR, S)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match=r"bad\.wav: not readable"):
        load_noise_bank(only(noise_dir=tmp_path), SR, S)


def test_noise_prob_zero_and_silence():
    clean = speechlike(8)
    assert torch.equal(augment_waveforms(clean, only(noise_prob=0.0), SR, torch.Generator()), clean)
    silent = torch.zeros(4, S)  # no signal power: noise at the floor level (RMS 0.01) / SNR
    out = augment_waveforms(silent, only(noise_prob=1.0, snr_db=(0.0, 0.0)), SR, torch.Generator())
    torch.testing.assert_close(out.pow(2).mean(-1).sqrt(), torch.full((4,), 0.01), rtol=1e-3, atol=0)


def test_gain_is_exact():
    clean = speechlike(4)
    out = augment_waveforms(clean, only(gain_db=(6.0, 6.0)), SR, torch.Generator())
    torch.testing.assert_close(out, clean * 10 ** (6 / 20))


def test_time_shift_moves_without_wrapping():
    ramp = torch.arange(1, S + 1, dtype=torch.float32).repeat(32, 1)  # every sample distinct
    out = augment_waveforms(ramp, only(time_shift_ms=100.0), SR, torch.Generator().manual_seed(3))
    shifts = []
    for row in out:
        nz = torch.nonzero(row).flatten()
        start, value = int(nz[0]), int(row[nz[0]])
        shift = start - (value - 1)
        shifts.append(shift)
        assert abs(shift) <= 1600
        assert torch.all(row[:start] == 0) and torch.all(row[nz[-1] + 1:] == 0)
        expected = torch.arange(value, value + len(nz), dtype=torch.float32)
        assert torch.equal(row[nz[0]:nz[-1] + 1], expected)
    assert len(set(shifts)) > 20 and min(shifts) < 0 < max(shifts)


def test_same_seed_same_output_other_seed_other_output():
    clean, aug = speechlike(8), AugmentConfig()
    a = augment_waveforms(clean, aug, SR, torch.Generator().manual_seed(7))
    b = augment_waveforms(clean, aug, SR, torch.Generator().manual_seed(7))
    c = augment_waveforms(clean, aug, SR, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    feats = torch.randn(8, 40, 151)
    assert torch.equal(spec_augment(feats, aug, torch.Generator().manual_seed(7)),
                       spec_augment(feats, aug, torch.Generator().manual_seed(7)))
    assert torch.equal(augment_waveforms(clean, AugmentConfig(enabled=False), SR, torch.Generator()), clean)


@pytest.mark.parametrize("colour", list(COLOURS))
def test_coloured_noise_has_its_spectral_slope(colour):
    noise = coloured_noise(torch.full((64,), COLOURS[colour]), 8192, torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise.pow(2).mean(-1), torch.ones(64))
    power = torch.fft.rfft(noise).abs().pow(2).mean(0)[1:].numpy()
    freqs = np.arange(1, len(power) + 1)
    slope = np.polyfit(np.log(freqs), np.log(power), 1)[0]
    assert slope == pytest.approx(-COLOURS[colour], abs=0.1)


def runs(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool -> (B,) number of contiguous True runs per row."""
    m = mask.int()
    return m[:, 0] + ((m[:, 1:] - m[:, :-1]) == 1).sum(1)


@pytest.mark.parametrize("masks, width", [(1, 6), (2, 3), (3, 1)])
def test_spec_augment_masks_the_requested_bands(masks, width):
    b, f, t = 32, 200, 400  # wide axes so masks rarely overlap
    feats = torch.randn(b, f, t)
    aug = only(freq_masks=masks, freq_mask_width=width, time_masks=masks, time_mask_width=width)
    out = spec_augment(feats, aug, torch.Generator().manual_seed(4))
    masked = out == feats.mean(dim=(1, 2))[:, None, None]  # a random value equals the mean w.p. 0
    rows, cols = masked.all(2), masked.all(1)  # (b, f), (b, t)
    assert torch.equal(masked, rows[:, :, None] | cols[:, None, :])
    assert torch.equal(out[~masked], feats[~masked])
    for axis in (rows, cols):
        n = axis.sum(1)
        assert torch.all((n >= 1) & (n <= masks * width))
        assert torch.all(runs(axis) <= masks) and runs(axis).sum() >= 0.9 * masks * b  # overlaps are rare
    none = spec_augment(feats, only(freq_masks=0, time_masks=0), torch.Generator())
    assert torch.equal(none, feats)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_given_a_cpu_generator():
    from raykd.data import effects, rooms

    # mu-law off: an 8-bit codec turns a 1e-7 CPU/GPU difference at a level boundary into a whole step
    clean, aug = speechlike(8), AugmentConfig(mulaw_prob=0.0, rir_bank_size=4)
    rirs = rooms.rir_bank(None, 4, aug.rt60_s, aug.drr_db, SR, 0)
    babble = effects.babble_bank(speechlike(6, seed=1), torch.zeros(6, dtype=torch.long), 6, 0, SR)
    cpu = augment_waveforms(clean, aug, SR, torch.Generator().manual_seed(5), None, babble, rirs)
    gpu = augment_waveforms(clean.cuda(), aug, SR, torch.Generator().manual_seed(5), None, babble, rirs)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)
    feats = torch.randn(8, 40, 151)
    torch.testing.assert_close(spec_augment(feats.cuda(), aug, torch.Generator().manual_seed(6)).cpu(),
                               spec_augment(feats, aug, torch.Generator().manual_seed(6)))
