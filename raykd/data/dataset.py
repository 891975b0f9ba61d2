"""Wakeword clips: manifests (synthetic, a user folder, a user CSV) and in-memory splits.

CONTRACT (filled in by the data work; signatures are fixed, other modules rely on them):
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class WaveformSet:
    """One split held in memory.

    waves:    (N, S) float32, mono, at features.sample_rate, cropped/padded to clip_samples
    labels:   (N,) int64, 1 = wakeword, 0 = not
    speakers: N speaker ids
    paths:    N source file paths (str)
    skipped:  files skipped as unreadable/empty when data.on_bad_file = skip ("path: reason")
    """

    waves: torch.Tensor
    labels: torch.Tensor
    speakers: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def seconds(self) -> float:
        """Total audio duration, for false accepts per hour."""
        return 0.0  # replaced by the data work


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


def ensure_dataset(cfg, progress=None):
    """Return the manifest path for cfg.data, synthesising the dataset first if needed."""
    raise NotImplementedError


def load_split(cfg, split: str) -> WaveformSet:
    """Load 'train' | 'val' | 'test' of cfg.data into memory."""
    raise NotImplementedError


def dataset_fingerprint(cfg) -> str:
    """Hash of everything the clips depend on (manifest contents, sample rate, clip length)."""
    raise NotImplementedError
