"""Waveform effects of the acoustic augmentation chain, each a plain function of one clip.

The random choices (which factor, which talkers) are made by the chain in `augment`; these
functions only compute, so each can be tested against its configured value: a speed factor
changes the duration by exactly that factor, a pitch shift moves a tone by that many
semitones, band-limiting leaves no energy outside its band.

Pitch shift is done here rather than with `torchaudio.functional.pitch_shift`: that one
resamples by `int(sr / rate)` : `sr`, a ratio with a tiny common divisor for most shifts,
whose sinc kernel takes tens of seconds per clip. Here the pitch ratio is rounded to a
fraction over PITCH_DENOMINATOR (at most 0.05 semitone off), which resamples in milliseconds.
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF

SPEED_DENOMINATOR = 100  # speed factors are rounded to 1/100 (a short resampling kernel)
PITCH_DENOMINATOR = 200  # pitch ratios are rounded to 1/200 (< 0.05 semitone)
PITCH_N_FFT = 512  # 32 ms at 16 kHz: phase-vocoder frame
MU_LAW_CHANNELS = 256  # 8-bit G.711-like companding
# Babble is made of speech, not of the silence/noise negatives: a clip counts as speech when
# it is audible and the 20 ms frame energies of its first difference (which flattens brown
# and pink noise, whose slow wander would otherwise look like syllables) span more than this
# many dB (10th..90th percentile); stationary noise spans a few dB, a spoken word with pauses tens.
SPEECH_MIN_RMS = 10 ** (-50 / 20)
SPEECH_MIN_DYNAMICS_DB = 10.0


def _ratio(value: float, denominator: int) -> tuple[int, int]:
    """value ~= num / den with den = denominator, reduced."""
    num = max(1, round(value * denominator))
    g = math.gcd(num, denominator)
    return num // g, denominator // g


def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """(S,) -> (~S / factor,): played `factor` times faster (pitch and tempo together, as a
    tape or Kaldi's speed perturbation). The caller crops/pads back to the clip length."""
    num, den = _ratio(factor, SPEED_DENOMINATOR)
    if num == den:
        return wave
    return AF.resample(wave, orig_freq=num, new_freq=den)


def pitch_shift(wave: torch.Tensor, semitones: float) -> torch.Tensor:
    """(S,) -> (S,): pitch moved by `semitones`, duration kept (phase-vocoder stretch by the
    pitch ratio, then resampling by its inverse)."""
    num, den = _ratio(2 ** (semitones / 12), PITCH_DENOMINATOR)
    if num == den:
        return wave
    s = wave.shape[-1]
    hop = PITCH_N_FFT // 4
    window = torch.hann_window(PITCH_N_FFT, device=wave.device)
    spec = torch.stft(wave, PITCH_N_FFT, hop, window=window, return_complex=True)
    phase_advance = torch.linspace(0, math.pi * hop, spec.shape[-2], device=wave.device)[..., None]
    stretched = AF.phase_vocoder(spec, den / num, phase_advance)  # rate < 1 = longer, by num/den
    longer = torch.istft(stretched, PITCH_N_FFT, hop, window=window, length=round(s * num / den))
    out = AF.resample(longer, orig_freq=num, new_freq=den)
    if out.shape[-1] >= s:
        return out[..., :s]
    return torch.nn.functional.pad(out, (0, s - out.shape[-1]))


def band_limit(wave: torch.Tensor, low_hz: float, high_hz: float, sample_rate: int) -> torch.Tensor:
    """(S,) -> (S,): everything outside low_hz..high_hz removed (a telephone-like channel;
    brick-wall in the frequency domain, so 'outside' means no energy at all)."""
    s = wave.shape[-1]
    spec = torch.fft.rfft(wave)
    freqs = torch.fft.rfftfreq(s, 1 / sample_rate).to(wave.device)
    spec = spec * ((freqs >= low_hz) & (freqs <= high_hz))
    return torch.fft.irfft(spec, n=s)


def mu_law(wave: torch.Tensor) -> torch.Tensor:
    """(S,) -> (S,): through an 8-bit mu-law codec. A clip louder than full scale is coded at
    its own peak (then restored), so the codec adds quantisation noise, not clipping."""
    scale = wave.abs().max().clamp_min(1.0)
    coded = AF.mu_law_encoding(wave / scale, MU_LAW_CHANNELS)
    return AF.mu_law_decoding(coded, MU_LAW_CHANNELS) * scale


def is_speech(waves: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(N, S) -> (N,) bool: audible and with the energy dynamics of speech (see the constants)."""
    frame = max(1, sample_rate // 50)
    n = (waves.shape[-1] - 1) // frame
    if n < 2:
        return waves.pow(2).mean(-1).sqrt() > SPEECH_MIN_RMS
    diff = waves[:, 1:] - waves[:, :-1]
    energy = diff[:, : n * frame].reshape(waves.shape[0], n, frame).pow(2).mean(-1)
    db = 10 * torch.log10(energy.clamp_min(1e-12))
    spread = torch.quantile(db, 0.9, dim=1) - torch.quantile(db, 0.1, dim=1)
    return (waves.pow(2).mean(-1).sqrt() > SPEECH_MIN_RMS) & (spread > SPEECH_MIN_DYNAMICS_DB)


def babble_bank(waves: torch.Tensor, labels: torch.Tensor, size: int, seed: int,
                sample_rate: int = 16000) -> torch.Tensor | None:
    """(N, S) train clips, (N,) labels -> (K <= size, S) unit-RMS speech from NEGATIVE clips only
    (a wakeword in the background of a negative would teach the detector to miss it), chosen
    by a generator seeded with `seed`; None when the split has no negative speech."""
    candidates = torch.nonzero(labels == 0).flatten()
    if candidates.numel() == 0:
        return None
    candidates = candidates[is_speech(waves[candidates].float(), sample_rate)]
    if candidates.numel() == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    pick = candidates[torch.randperm(candidates.numel(), generator=g)[:size]].sort().values
    bank = waves[pick].float()
    return bank / bank.pow(2).mean(-1, keepdim=True).sqrt()


def babble(bank: torch.Tensor, picks: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Bank (K, S), picks and shifts (talkers,) -> (S,) unit-RMS sum of the picked clips, each
    rotated by its shift (talkers start at different times; the clip's silence wraps)."""
    voices = [torch.roll(bank[int(k)], int(d)) for k, d in zip(picks, shifts)]
    mix = torch.stack(voices).sum(0)
    return mix / mix.pow(2).mean().sqrt().clamp_min(1e-12)
