"""Waveform and spectrogram augmentation, on tensors, deterministic given a torch.Generator.

Random numbers are drawn on the generator's device and then moved to the data's device,
so a CPU generator drives CUDA data (and the same seed gives the same numbers on both).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from raykd.config import AugmentConfig
from raykd.data.audio import AUDIO_EXTS, AudioError, read_audio

# Spectral slope of the power spectrum, P(f) ~ 1 / f^alpha.
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
# Silent clips have no power to set an SNR against; noise is scaled against this level
# instead (RMS 0.01 = -40 dBFS), so a silence negative still gets audible background.
SIGNAL_POWER_FLOOR = 1e-4


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def coloured_noise(alpha: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) spectral slopes -> (B, length) noise of unit RMS, no DC, on alpha's device.

    White Gaussian noise shaped in the frequency domain: amplitude ~ f^(-alpha/2).
    """
    white = torch.randn((alpha.shape[0], length), generator=generator, device=generator.device)
    spec = torch.fft.rfft(white.to(alpha.device))
    freqs = torch.fft.rfftfreq(length, device=alpha.device)
    freqs[0] = freqs[1] if length > 1 else 1.0  # the DC bin is zeroed below; avoid 0^-x
    spec = spec * freqs[None, :].pow(-alpha[:, None] / 2)
    spec[:, 0] = 0
    noise = torch.fft.irfft(spec, n=length)
    return noise / noise.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)


def load_noise_bank(aug: AugmentConfig, sample_rate: int, clip_samples: int) -> torch.Tensor | None:
    """All audio under aug.noise_dir cut into clip-long segments: (K, clip_samples), or None.

    Files shorter than a clip are looped. Loaded once and held in memory; digital silence
    is dropped because it cannot be scaled to an SNR.
    """
    if aug.noise_dir is None:
        return None
    root = Path(aug.noise_dir)
    if not root.is_dir():
        raise AudioError(f"data.augment.noise_dir: {root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
    if not files:
        raise AudioError(f"data.augment.noise_dir: {root}: no audio files ({', '.join(AUDIO_EXTS)})")
    segments = []
    for path in files:
        x = read_audio(path, sample_rate)
        if x.numel() < clip_samples:
            x = x.repeat(math.ceil(clip_samples / x.numel()))
        n = x.numel() // clip_samples
        segments.append(x[: n * clip_samples].view(n, clip_samples))
    bank = torch.cat(segments)
    bank = bank[bank.pow(2).mean(-1) > 1e-10]
    if bank.shape[0] == 0:
        raise AudioError(f"data.augment.noise_dir: {root}: every noise file is digital silence")
    return bank


def augment_waveforms(waves: torch.Tensor, aug: AugmentConfig, sample_rate: int,
                      generator: torch.Generator, noise_bank: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S) -> (B, S): time shift (zero fill), gain, then background noise at a random SNR.

    Noise comes after gain, so the SNR is measured against the clip as it is heard:
    10*log10(mean(clean^2) / mean(noise^2)) equals the drawn SNR (see SIGNAL_POWER_FLOOR).
    noise_bank: (K, S) from `load_noise_bank`, else synthetic white/pink/brown noise.
    """
    if not aug.enabled:
        return waves
    b, s = waves.shape
    dev = waves.device
    # every draw happens on every call, in a fixed order: same generator state -> same output
    u_shift, u_gain, u_apply, u_snr, u_pick = _uniform((5, b), generator, dev)

    max_shift = int(aug.time_shift_ms * sample_rate / 1000)
    shift = torch.floor(u_shift * (2 * max_shift + 1)).long() - max_shift
    src = torch.arange(s, device=dev)[None, :] - shift[:, None]
    inside = (src >= 0) & (src < s)
    out = torch.gather(waves, 1, src.clamp(0, s - 1)) * inside

    lo, hi = aug.gain_db
    out = out * 10 ** ((lo + (hi - lo) * u_gain) / 20)[:, None]

    if noise_bank is not None:
        if noise_bank.shape[1] != s:
            raise ValueError(f"noise bank segments have {noise_bank.shape[1]} samples, clips have {s}")
        idx = torch.floor(u_pick * noise_bank.shape[0]).long().clamp_max(noise_bank.shape[0] - 1)
        noise = noise_bank.to(dev)[idx]
        noise = noise / noise.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    else:
        alphas = torch.tensor(list(COLOURS.values()), device=dev)
        alpha = alphas[torch.floor(u_pick * len(COLOURS)).long().clamp_max(len(COLOURS) - 1)]
        noise = coloured_noise(alpha, s, generator)
    lo, hi = aug.snr_db
    snr_db = lo + (hi - lo) * u_snr
    power = out.pow(2).mean(-1).clamp_min(SIGNAL_POWER_FLOOR)
    rms = torch.sqrt(power / 10 ** (snr_db / 10)) * (u_apply < aug.noise_prob)
    return out + rms[:, None] * noise


def _band_mask(batch: int, size: int, count: int, max_width: int,
               generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(batch, size) bool: `count` bands per row, each 1..max_width wide (they may overlap)."""
    if count == 0 or max_width == 0 or size == 0:
        return torch.zeros((batch, size), dtype=torch.bool, device=device)
    u_width, u_start = _uniform((2, batch, count), generator, device)
    width = torch.floor(u_width * min(max_width, size)).long() + 1
    start = torch.floor(u_start * (size - width + 1)).long()
    pos = torch.arange(size, device=device)
    hit = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (batch, count, size)
    return hit.any(1)


def spec_augment(feats: torch.Tensor, aug: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, n_mels, T) -> same: aug.freq_masks mel bands and aug.time_masks frame spans masked.

    Masked cells take the example's mean, not 0: in the log domain 0 is a loud level.
    Widths are 1..width (SpecAugment draws 0..width; a mask that exists is never empty here).
    """
    if not aug.enabled:
        return feats
    b, f, t = feats.shape
    fmask = _band_mask(b, f, aug.freq_masks, aug.freq_mask_width, generator, feats.device)
    tmask = _band_mask(b, t, aug.time_masks, aug.time_mask_width, generator, feats.device)
    mask = fmask[:, :, None] | tmask[:, None, :]
    fill = feats.mean(dim=(1, 2), keepdim=True)
    return torch.where(mask, fill, feats)
