"""Shared fixtures for the data tests: tiny configs and one small synthetic dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from raykd.config import RaykdConfig, config_from_dict

# 4 voices x 2 variants = a pool of 8; 4 speakers drawn -> 2 train (en-us, en-gb),
# 1 val (germanic), 1 test (en-scotland); 15 s of stream per held-out split
SMALL_SYNTH = {
    "voices": ["en-us", "en-gb-x-rp", "de", "en-gb-scotland"], "variants": ["m1", "f2"], "speakers": 4,
    "val_families": ["germanic"], "test_families": ["en-scotland"],
    "positives_per_speaker": 3, "near_misses_per_speaker": 2,
    "other_per_speaker": 2, "nonspeech_per_speaker": 4, "stream_minutes": 0.25, "workers": 1,
}


def _make_cfg(root: Path, synth: dict[str, Any] | None = None, **data: Any) -> RaykdConfig:
    """A config whose data lives under `root`; `synth` updates SMALL_SYNTH."""
    raw: dict[str, Any] = {"data": {"root": str(root), "synth": {**SMALL_SYNTH, **(synth or {})}, **data}}
    return config_from_dict(raw)


def _write_wav(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1,
              freq: float = 440.0, subtype: str = "PCM_16") -> np.ndarray:
    """A sine tone (channel c at freq * (c + 1)); returns the float data written, (S, C)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    data = np.stack([0.5 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], 1)
    sf.write(path, data.astype(np.float32), sr, subtype=subtype)
    return data.astype(np.float32)


@pytest.fixture(scope="session")
def synth_cfg(tmp_path_factory: pytest.TempPathFactory) -> RaykdConfig:
    """The small synthetic dataset, made once per session (about a second)."""
    from raykd.data.synth import synthesize

    cfg = _make_cfg(tmp_path_factory.mktemp("synth"))
    synthesize(cfg)
    return cfg


@pytest.fixture(scope="session")
def make_cfg():
    """make_cfg(root, synth=None, **data) -> RaykdConfig with data under root."""
    return _make_cfg


@pytest.fixture(scope="session")
def write_wav():
    """write_wav(path, seconds=1.0, sr=16000, channels=1, freq=440.0, subtype=...) -> (S, C) data."""
    return _write_wav
