"""Room reverberation: a bank of impulse responses (RIRs), and convolution with one of them.

The bank comes from the user's measured RIRs (`data.augment.rir_dir`) or, by default, from
simulated shoebox rooms: `pyroomacoustics` (MIT licence) computes the direct path and the
early reflections by the image-source method for a random room, source and microphone; the
late tail is exponentially decaying noise that falls 60 dB in the drawn RT60 (the
image-source method alone would need thousands of images per RIR to reach a 0.8 s tail,
seconds each). The direct-to-reverberant ratio (DRR) is then set to a drawn value by scaling
everything after the direct path. The bank is seeded and built once per process, so view v
of clip i convolves with the same RIR live or cached.

Every RIR is stored with its direct path at sample 0 (no pre-delay), so reverberation does
not move the word inside its clip.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from raykd.data.audio import AUDIO_EXTS, AudioError, read_audio

EARLY_MAX_ORDER = 6  # image-source reflections up to this order (the early part)
EARLY_MS = 50.0  # the stochastic tail takes over this long after the direct path
DIRECT_MS = 2.5  # samples within this of the direct-path peak count as direct sound (DRR)
MAX_RIR_SECONDS = 2.0  # user RIRs are cut here; simulated ones last 1.1 x RT60
ROOM_SIZE_M = ((3.0, 10.0), (3.0, 8.0), (2.4, 4.0))  # shoebox length, width, height ranges
WALL_MARGIN_M = 0.5  # source and microphone at least this far from every wall


def decay_time(h: torch.Tensor | np.ndarray, sample_rate: int) -> float:
    """RT60 estimate (s) of an impulse response by Schroeder backward integration: the time
    the energy decay curve takes from -5 to -25 dB, times 3 (T20)."""
    h = np.asarray(h, dtype=np.float64)
    edc = np.cumsum(h[::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0] + 1e-30)
    t5, t25 = int(np.argmax(edc_db <= -5)), int(np.argmax(edc_db <= -25))
    return 3.0 * (t25 - t5) / sample_rate


def direct_to_reverberant_db(h: torch.Tensor | np.ndarray, sample_rate: int) -> float:
    """DRR (dB) of an RIR whose direct path is at its peak: energy within DIRECT_MS of the peak
    over the energy of everything else."""
    h = np.asarray(h, dtype=np.float64)
    peak, w = int(np.argmax(np.abs(h))), int(DIRECT_MS * sample_rate / 1000)
    direct = np.zeros_like(h, dtype=bool)
    direct[max(0, peak - w): peak + w + 1] = True
    return float(10 * np.log10((h[direct] ** 2).sum() / max((h[~direct] ** 2).sum(), 1e-30)))


def _early_reflections(rt60: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Direct path + image-source reflections of a random shoebox room with walls absorbing
    as Sabine's formula needs for rt60 (a room too small for rt60 is drawn again larger)."""
    import pyroomacoustics as pra

    for _ in range(20):
        dims = [rng.uniform(lo, hi) for lo, hi in ROOM_SIZE_M]
        try:
            absorption, _ = pra.inverse_sabine(rt60, dims)
            break
        except ValueError:  # rt60 too short for this room: absorption > 1
            continue
    else:
        raise ValueError(f"data.augment.rt60_s: {rt60} s cannot be reached in a "
                         f"{ROOM_SIZE_M[0][0]}-{ROOM_SIZE_M[0][1]} m room")
    room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(absorption), max_order=EARLY_MAX_ORDER)
    spot = [lambda d=d: rng.uniform(WALL_MARGIN_M, d - WALL_MARGIN_M) for d in dims]
    room.add_source([f() for f in spot])
    room.add_microphone([f() for f in spot])
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def simulate_rir(rt60: float, drr_db: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One RIR (L,) with its direct path at sample 0, decay time ~rt60 and DRR = drr_db."""
    early = _early_reflections(rt60, sample_rate, rng)
    early = early[int(np.argmax(np.abs(early))):]  # the direct path is the loudest arrival
    n = int(math.ceil(1.1 * rt60 * sample_rate))
    h = np.zeros(max(n, early.size))
    cut = int(EARLY_MS * sample_rate / 1000)
    h[:min(cut, early.size)] = early[:cut]
    # late tail: Gaussian noise whose energy falls 60 dB per rt60, continuing the early level
    t = np.arange(h.size) / sample_rate
    envelope = np.exp(-3 * math.log(10) * t / rt60)
    ref = early[max(1, cut - cut // 5):cut]
    level = np.sqrt(np.mean(ref ** 2)) / envelope[min(cut, h.size - 1)] if ref.size else 1e-3 * abs(h[0])
    tail = rng.standard_normal(h.size) * envelope * level
    h[cut:] = tail[cut:]
    return _set_drr(h, drr_db, sample_rate)


def _set_drr(h: np.ndarray, drr_db: float, sample_rate: int) -> np.ndarray:
    """Scale everything after the direct path (at sample 0) so the DRR is drr_db; peak = 1."""
    w = int(DIRECT_MS * sample_rate / 1000)
    direct, rest = (h[: w + 1] ** 2).sum(), (h[w + 1:] ** 2).sum()
    if rest > 0:
        h = h.copy()
        h[w + 1:] *= math.sqrt(direct / rest / 10 ** (drr_db / 10))
    return h / np.abs(h).max()


def _stack(rirs: list[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """Zero-padded (K, L_max) float32."""
    size = max(len(h) for h in rirs)
    bank = torch.zeros(len(rirs), size)
    for i, h in enumerate(rirs):
        bank[i, : len(h)] = torch.as_tensor(np.asarray(h), dtype=torch.float32)
    return bank


def load_rir_dir(root: Path, sample_rate: int) -> torch.Tensor:
    """Every RIR file under root -> (K, L) float32, each from its peak, cut at MAX_RIR_SECONDS,
    peak 1 (a measured RIR keeps its own decay and DRR)."""
    if not root.is_dir():
        raise AudioError(f"data.augment.rir_dir: {root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
    if not files:
        raise AudioError(f"data.augment.rir_dir: {root}: no audio files ({', '.join(AUDIO_EXTS)})")
    rirs = []
    for path in files:
        h = read_audio(path, sample_rate)
        peak = int(h.abs().argmax())
        if float(h.abs().max()) == 0.0:
            raise AudioError(f"data.augment.rir_dir: {path}: digital silence, not an impulse response")
        h = h[peak: peak + int(MAX_RIR_SECONDS * sample_rate)]
        rirs.append(h / h.abs().max())
    return _stack(rirs)


@functools.lru_cache(maxsize=4)
def rir_bank(rir_dir: Path | None, size: int, rt60_s: tuple[float, float], drr_db: tuple[float, float],
             sample_rate: int, seed: int) -> torch.Tensor:
    """(K, L) impulse responses: the user's (rir_dir) or `size` simulated rooms with RT60 and
    DRR uniform in their ranges, seeded. Cached per process: built once, read by every view.
    Do not modify the returned tensor."""
    if rir_dir is not None:
        return load_rir_dir(Path(rir_dir), sample_rate)
    rng = np.random.default_rng([seed, 0x5EED_1200])  # a stream of its own: not the clips' draws
    rirs = []
    for _ in range(size):
        rt60 = rng.uniform(*rt60_s)
        drr = rng.uniform(*drr_db)
        rirs.append(simulate_rir(rt60, drr, sample_rate, rng))
    return _stack(rirs)


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """(S,) dry, (L,) RIR with the direct path at 0 -> (S,) wet, same RMS as the dry clip (the
    gain stage, not the room, sets the level); the tail past the clip end is cut."""
    s = wave.shape[-1]
    n = 1 << (s + rir.shape[-1] - 2).bit_length()  # a power of two >= the full convolution: fast FFTs
    spec = torch.fft.rfft(wave, n=n) * torch.fft.rfft(rir.to(wave.device), n=n)
    wet = torch.fft.irfft(spec, n=n)[..., :s]
    dry_rms, wet_rms = wave.pow(2).mean().sqrt(), wet.pow(2).mean().sqrt()
    if float(wet_rms) == 0.0:
        return wave
    return wet * (dry_rms / wet_rms)
