"""Waveform and spectrogram augmentation, on tensors, deterministic given a torch.Generator.

Random numbers are drawn on the generator's device and then moved to the data's device,
so a CPU generator drives CUDA data (and the same seed gives the same numbers on both).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from raykd.config import AugmentConfig
from raykd.data import effects, rooms
from raykd.data.audio import AUDIO_EXTS, AudioError, fit_length, read_audio

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


def rir_bank_for(aug: AugmentConfig, sample_rate: int, seed: int) -> torch.Tensor | None:
    """The run's impulse responses (K, L) (see `rooms.rir_bank`), or None when reverberation is off."""
    if not aug.enabled or aug.reverb_prob == 0:
        return None
    return rooms.rir_bank(aug.rir_dir, aug.rir_bank_size, aug.rt60_s, aug.drr_db, sample_rate, seed)


def babble_bank_for(aug: AugmentConfig, waves: torch.Tensor, labels: torch.Tensor, sample_rate: int,
                    seed: int) -> torch.Tensor | None:
    """The run's babble talkers (K, S) from the train split's negative speech clips (see
    `effects.babble_bank`), or None when babble is off or the split has no negative speech."""
    if not aug.enabled or aug.babble_prob == 0:
        return None
    return effects.babble_bank(waves, labels, aug.babble_bank_size, seed, sample_rate)


def _between(lo_hi: tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * u


def _acoustic_draws(b: int, aug: AugmentConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number of the acoustic effects, (b,) each (talkers: (b, max talkers)), drawn
    on every call in a fixed order whether an effect applies or not: a clip's view never
    depends on which effects its neighbours got."""
    names = ("speed_on", "speed", "pitch_on", "pitch", "reverb_on", "rir", "babble_on", "babble_snr",
             "talkers", "band_on", "band_low", "band_high", "mulaw_on")
    u = _uniform((len(names), b), generator, torch.device("cpu"))
    draws = dict(zip(names, u))
    k = aug.babble_talkers[1]
    draws["picks"], draws["shifts"] = _uniform((2, b, k), generator, torch.device("cpu"))
    return draws


def _keep_loudest(x: torch.Tensor, s: int) -> torch.Tensor:
    """(L,) -> (s,): a slowed-down clip is cut to the s-sample window holding the most energy (a
    positive keeps its whole word when it fits, which a centre crop would cut when the word sits
    near an edge); a sped-up one is zero-padded evenly."""
    if x.shape[-1] <= s:
        return fit_length(x, s)
    energy = torch.cat([x.new_zeros(1), torch.cumsum(x.double().pow(2), 0)])
    start = int(torch.argmax(energy[s:] - energy[:-s]))
    return x[start:start + s]


def _room_and_voice(x: torch.Tensor, d: dict[str, torch.Tensor], j: int, aug: AugmentConfig,
                    rirs: torch.Tensor | None) -> torch.Tensor:
    """Clip j (S,): speed perturbation (cropped/padded back to S), pitch shift, reverberation."""
    s = x.shape[-1]
    if d["speed_on"][j] < aug.speed_prob:
        x = _keep_loudest(effects.speed_perturb(x, float(_between(aug.speed_range, d["speed"][j]))), s)
    if d["pitch_on"][j] < aug.pitch_prob:
        x = effects.pitch_shift(x, float(_between(aug.pitch_semitones, d["pitch"][j])))
    if rirs is not None and d["reverb_on"][j] < aug.reverb_prob:
        x = rooms.reverberate(x, rirs[min(int(d["rir"][j] * rirs.shape[0]), rirs.shape[0] - 1)])
    return x


def _babble(out: torch.Tensor, d: dict[str, torch.Tensor], aug: AugmentConfig, bank: torch.Tensor) -> torch.Tensor:
    """(B, S) -> (B, S) with babble of babble_talkers negative clips at babble_snr_db, where drawn."""
    b, s = out.shape
    lo, hi = aug.babble_talkers
    power = out.pow(2).mean(-1).clamp_min(SIGNAL_POWER_FLOOR)
    result = out.clone()
    for j in range(b):
        if d["babble_on"][j] >= aug.babble_prob:
            continue
        n = lo + min(int(d["talkers"][j] * (hi - lo + 1)), hi - lo)
        picks = (d["picks"][j, :n] * bank.shape[0]).long().clamp_max(bank.shape[0] - 1)
        shifts = (d["shifts"][j, :n] * s).long()
        mix = effects.babble(bank, picks, shifts).to(out.device)
        snr = float(_between(aug.babble_snr_db, d["babble_snr"][j]))
        result[j] = out[j] + torch.sqrt(power[j] / 10 ** (snr / 10)) * mix
    return result


def _channel(x: torch.Tensor, d: dict[str, torch.Tensor], j: int, aug: AugmentConfig,
             sample_rate: int) -> torch.Tensor:
    """Clip j (S,) through the recording channel: band-limiting, then mu-law coding."""
    if d["band_on"][j] < aug.bandlimit_prob:
        x = effects.band_limit(x, float(_between(aug.bandlimit_low_hz, d["band_low"][j])),
                               float(_between(aug.bandlimit_high_hz, d["band_high"][j])), sample_rate)
    if d["mulaw_on"][j] < aug.mulaw_prob:
        x = effects.mu_law(x)
    return x


def augment_waveforms(waves: torch.Tensor, aug: AugmentConfig, sample_rate: int,
                      generator: torch.Generator, noise_bank: torch.Tensor | None = None,
                      babble_bank: torch.Tensor | None = None, rir_bank: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S) -> (B, S), in the order sound takes: the talker (speed, pitch), the room
    (reverberation by an impulse response of rir_bank), the microphone position (time shift,
    zero fill) and level (gain), background talkers (babble from babble_bank) and noise at a
    random SNR, then the channel (band-limiting, mu-law).

    Noise comes after gain, so the SNR is measured against the clip as it is heard (before
    babble): 10*log10(mean(clean^2) / mean(noise^2)) equals the drawn SNR (see SIGNAL_POWER_FLOOR).
    noise_bank: (K, S) from `load_noise_bank`, else synthetic white/pink/brown noise.
    babble_bank: (K, S) from `effects.babble_bank`; rir_bank: (K, L) from `rooms.rir_bank`;
    without a bank that effect is skipped. With every acoustic probability 0 the output is,
    bit for bit, the chain before those effects existed (their draws come last).
    """
    if not aug.enabled:
        return waves
    b, s = waves.shape
    dev = waves.device
    # every draw happens on every call, in a fixed order: same generator state -> same output
    u_shift, u_gain, u_apply, u_snr, u_pick = _uniform((5, b), generator, dev)
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
    d = _acoustic_draws(b, aug, generator)

    out = torch.stack([_room_and_voice(waves[j], d, j, aug, rir_bank) for j in range(b)])

    max_shift = int(aug.time_shift_ms * sample_rate / 1000)
    shift = torch.floor(u_shift * (2 * max_shift + 1)).long() - max_shift
    src = torch.arange(s, device=dev)[None, :] - shift[:, None]
    inside = (src >= 0) & (src < s)
    out = torch.gather(out, 1, src.clamp(0, s - 1)) * inside
    out = out * 10 ** (_between(aug.gain_db, u_gain) / 20)[:, None]

    snr_db = _between(aug.snr_db, u_snr)
    power = out.pow(2).mean(-1).clamp_min(SIGNAL_POWER_FLOOR)
    rms = torch.sqrt(power / 10 ** (snr_db / 10)) * (u_apply < aug.noise_prob)
    if babble_bank is not None:
        if babble_bank.shape[1] != s:
            raise ValueError(f"babble bank clips have {babble_bank.shape[1]} samples, clips have {s}")
        out = _babble(out, d, aug, babble_bank)
    out = out + rms[:, None] * noise
    return torch.stack([_channel(out[j], d, j, aug, sample_rate) for j in range(b)])


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
