"""Long negative streams for validation and test: minutes of one speaker talking, never the
phrase, with pauses and a background, scored whole for false accepts per hour.

A stream is one speaker's continuous talk: near misses (the config's and the generated ones)
and other speech, each utterance with its own rate, pitch, intonation and loudness, separated
by pauses (mostly short, sometimes long), over coloured noise at a low level. Two utterances
in a row never join into the phrase ("hey" then "sirius" is redrawn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raykd.data.augment import COLOURS, coloured_noise
from raykd.data.nearmiss import _contains

PAUSE_S = (0.25, 2.0)  # most pauses between utterances
LONG_PAUSE_S = (3.0, 8.0)  # ... and now and then a long one
LONG_PAUSE_PROB = 0.1
BACKGROUND_DBFS = (-60.0, -40.0)  # RMS of the stream's background noise
STREAM_PEAK = (0.2, 0.8)  # peak of each utterance


@dataclass(frozen=True)
class Utterance:
    """A candidate of a stream: what espeak reads for this speaker, and its phoneme classes."""

    spoken: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to render one stream (plan time resolves the texts)."""

    utterances: tuple[Utterance, ...]
    phrase: tuple[str, ...]  # the phrase's phoneme classes: never formed across two utterances
    samples: int
    rates: tuple[int, ...]
    pitches: tuple[int, ...]
    pitch_ranges: tuple[int, ...]
    word_gaps: tuple[int, ...]
    intonations: tuple[str, ...]


def _next(spec: StreamSpec, prev: Utterance | None, rng: np.random.Generator) -> Utterance:
    """A random utterance that does not complete the phrase together with the one before."""
    for _ in range(100):
        u = spec.utterances[int(rng.integers(len(spec.utterances)))]
        if prev is None or not _contains(prev.classes + u.classes, spec.phrase):
            return u
    return u  # unreachable for any real pool: the plan checked each candidate alone


def render_stream(spec: StreamSpec, speaker: str, seed: int, sample_rate: int,
                  utter) -> np.ndarray:
    """(spec.samples,) float32 in [-1, 1]. `utter(spoken, speaker, rate, pitch, range, gap, seed)`
    returns trimmed speech at sample_rate (the clip renderer's own)."""
    rng = np.random.default_rng([seed, 3])
    out = np.zeros(spec.samples, np.float32)
    pos, prev = int(rng.uniform(*PAUSE_S) * sample_rate), None
    while pos < spec.samples:
        u = _next(spec, prev, rng)
        speech = utter(u.spoken + str(rng.choice(list(spec.intonations))), speaker, int(rng.choice(spec.rates)),
                       int(rng.choice(spec.pitches)), int(rng.choice(spec.pitch_ranges)),
                       int(rng.choice(spec.word_gaps)), int(rng.integers(2**31)))
        if speech.size:
            speech = speech * (rng.uniform(*STREAM_PEAK) / max(float(np.abs(speech).max()), 1e-9))
            n = min(speech.size, spec.samples - pos)
            out[pos:pos + n] = speech[:n]
            pos += speech.size
        prev = u
        long = rng.random() < LONG_PAUSE_PROB
        pos += int(rng.uniform(*(LONG_PAUSE_S if long else PAUSE_S)) * sample_rate)
    colour = sorted(COLOURS)[int(rng.integers(len(COLOURS)))]
    gen = torch.Generator().manual_seed(seed)
    noise = coloured_noise(torch.tensor([COLOURS[colour]]), spec.samples, gen)[0].numpy()
    rms = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2))) or 1.0
    return out + noise * (10 ** (rng.uniform(*BACKGROUND_DBFS) / 20) / rms)
