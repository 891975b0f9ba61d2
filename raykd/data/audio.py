"""Audio I/O below everything else in data/: decode, resample, crop/pad, and the errors that
name a bad file. `augment`, `synth` and `dataset` all read audio through here."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from raykd.errors import UserError

AUDIO_EXTS = (".wav", ".flac", ".ogg")


class DatasetError(UserError):
    """A dataset that cannot be used (missing folder or manifest, bad row, empty split)."""


class AudioError(DatasetError):
    """An audio file that cannot be used; the message names the file and the reason."""


def fit_length(wave: torch.Tensor, n: int) -> torch.Tensor:
    """(..., S) -> (..., n): centre crop, or zero pad evenly on both sides."""
    s = wave.shape[-1]
    if s >= n:
        start = (s - n) // 2
        return wave[..., start:start + n]
    left = (n - s) // 2
    return F.pad(wave, (left, n - s - left))


@functools.lru_cache(maxsize=8)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new)


def resample(wave: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """(..., S) at orig Hz -> (..., S') at new Hz; same numbers as torchaudio.functional.resample,
    with the sinc kernel built once per rate pair (building it costs more than applying it)."""
    if orig == new:
        return wave
    with torch.no_grad():
        return _resampler(orig, new)(wave)


def _reason(e: Exception) -> str:
    # soundfile's message repeats the path; its error_string is just the reason
    text = getattr(e, "error_string", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0].rstrip(".")


def check_audio(path: Path) -> None:
    """Header-only check (cheap): the file exists, decodes as audio and is not empty."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        frames = sf.info(str(path)).frames
    except Exception as e:  # libsndfile raises several types on junk input
        raise AudioError(f"{path}: not readable as audio ({_reason(e)})") from None
    if frames == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")


def read_audio(path: str | Path, sample_rate: int, clip_samples: int | None = None) -> torch.Tensor:
    """Decode a file to (S,) float32 mono at sample_rate; centre crop/pad to clip_samples if given.

    Channels are averaged; other rates are resampled (cached torchaudio resampling kernel).
    Raises AudioError("<path>: <reason>") for missing, empty, corrupt or non-finite audio.
    """
    path = Path(path)
    check_audio(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"{path}: not readable as audio ({_reason(e)})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: NaN or infinite samples")
    wave = torch.from_numpy(data.mean(axis=1, dtype=np.float32))
    if sr != sample_rate:
        wave = resample(wave, sr, sample_rate)
    return fit_length(wave, clip_samples) if clip_samples else wave
