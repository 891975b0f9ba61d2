"""Streaming detection: one way to score a wakeword detector on audio of any length.

A deployed detector sees a window of `features.clip_seconds` every `eval.hop_ms` and fires when
the window's wakeword probability reaches a threshold; after firing it stays silent for
`eval.refractory_s`, so one utterance fires once. Training validation, `raykd eval` and the
exported model are all scored by the functions here, so a study's numbers are a deployment's.

* a *scorer* maps raw audio windows (B, clip_samples) to wakeword probabilities (B,);
* `stream_scores` slides it over a recording (never cropped: the tail is zero-padded);
* `clip_scores` scores a positive clip by the same streaming code over the clip with padding;
* `trigger_times` / `count_triggers` turn scores into triggers with the refractory period;
* `det_curve` / `operating_point` / `det_summary` give FRR against false accepts per hour (FA/h)
  and the threshold that meets a target FA/h.

FRR is per positive clip: a clip is rejected when none of its windows reaches the threshold.
FA/h is triggers on negative audio per hour of that audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""(B, clip_samples) float32 raw audio at features.sample_rate -> (B,) wakeword probability."""

DET_SUMMARY = "det_mean_frr"
# FA/h targets the summary averages over: 9 log-spaced values 0.1 .. 10 (10^(-1 + k/4)).
SUMMARY_TARGETS = tuple(10 ** (-1 + k / 4) for k in range(9))
TOP_NEGATIVES = 2048  # distinct highest negative scores that get an exact threshold in the grid


# ----------------------------------------------------------------------------- windows and scores


def n_windows(n_samples: int, clip_samples: int, hop_samples: int) -> int:
    """Windows needed to cover every sample: 1 for audio up to a clip, then one per hop."""
    if clip_samples <= 0 or hop_samples <= 0:
        raise ValueError(f"clip_samples {clip_samples} and hop_samples {hop_samples} must be > 0")
    return 1 + max(0, math.ceil((n_samples - clip_samples) / hop_samples))


def window_starts(n_samples: int, clip_samples: int, hop_samples: int) -> torch.Tensor:
    """(W,) int64 first sample of each window; window i covers [i*hop, i*hop + clip)."""
    return torch.arange(n_windows(n_samples, clip_samples, hop_samples), dtype=torch.int64) * hop_samples


def _windows(wave: torch.Tensor, first: int, count: int, clip: int, hop: int) -> torch.Tensor:
    """(count, clip) windows first..first+count-1 of a 1-D wave; past its end, zeros. Only this
    batch's span is copied (a view of the stream, padded when it runs off the end)."""
    start = first * hop
    span = (count - 1) * hop + clip
    piece = wave[start:start + span]
    if piece.shape[0] < span:
        piece = F.pad(piece, (0, span - piece.shape[0]))
    return piece.unfold(0, clip, hop).contiguous()


def stream_scores(scorer: Scorer, wave: torch.Tensor, clip_samples: int, hop_samples: int,
                  batch: int = 512) -> torch.Tensor:
    """(S,) recording of any length -> (W,) float32 score of every window (see `window_starts`).

    Batches of `batch` windows under inference_mode; memory is one batch, not the whole unfold,
    so an hour of audio is fine."""
    if wave.dim() != 1:
        raise ValueError(f"stream_scores: expected a 1-D wave, got shape {tuple(wave.shape)}")
    wave = wave.float()
    total = n_windows(int(wave.shape[0]), clip_samples, hop_samples)
    out = torch.empty(total, dtype=torch.float32)
    with torch.inference_mode():
        for first in range(0, total, batch):
            count = min(batch, total - first)
            out[first:first + count] = scorer(_windows(wave, first, count, clip_samples, hop_samples)).float().cpu()
    return out


def clip_padding(clip_samples: int, hop_samples: int) -> int:
    """Zeros added on each side of a positive clip: about half a window, rounded to whole hops
    so that one window is exactly the clip itself (a clip's streaming score >= its clip score)."""
    return hop_samples * round(clip_samples / (2 * hop_samples))


def clip_scores(scorer: Scorer, waves: torch.Tensor, clip_samples: int, hop_samples: int,
                batch: int = 512) -> torch.Tensor:
    """(N, S) clips -> (N,) max window score of each clip streamed with `clip_padding` zeros each
    side: the score a deployment gives the utterance when it is heard among silence."""
    if waves.dim() != 2:
        raise ValueError(f"clip_scores: expected (N, S) clips, got shape {tuple(waves.shape)}")
    n = int(waves.shape[0])
    if n == 0:
        return torch.empty(0)
    pad = clip_padding(clip_samples, hop_samples)
    length = int(waves.shape[1]) + 2 * pad
    per_clip = n_windows(length, clip_samples, hop_samples)
    # Padded once to the exact span the windows cover, so each clip's windows are a view.
    span = (per_clip - 1) * hop_samples + clip_samples
    padded = F.pad(waves.float(), (pad, span - length + pad))
    views = padded.unfold(1, clip_samples, hop_samples)  # (N, W, clip), a view
    clips_per_batch = max(1, batch // per_clip)
    out = torch.empty(n, dtype=torch.float32)
    with torch.inference_mode():
        for i in range(0, n, clips_per_batch):
            chunk = views[i:i + clips_per_batch]
            s = scorer(chunk.reshape(-1, clip_samples)).float().cpu()
            out[i:i + chunk.shape[0]] = s.view(chunk.shape[0], per_clip).amax(dim=1)
    return out


def torch_scorer(model: nn.Module, logmel: nn.Module, device: torch.device | str) -> Scorer:
    """A Scorer from a student (`model(feats)` returns (logits, taps)) and its LogMel front end.
    Puts the model in eval mode (a caller that trains on restores `model.train()`)."""
    device = torch.device(device)
    model.eval()

    def score(windows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = model(logmel(windows.to(device)))[0]
            return logits.float().softmax(-1)[:, 1].cpu()

    return score


# ----------------------------------------------------------------------------- triggers


def refractory_hops(refractory_s: float, hop_s: float) -> int:
    """Windows after a trigger that cannot fire: those that end less than refractory_s later."""
    return max(0, math.ceil(refractory_s / hop_s - 1e-9) - 1)


def trigger_times(scores: torch.Tensor, threshold: float, hop_s: float, clip_s: float,
                  refractory_s: float) -> list[float]:
    """Seconds from the start of the recording at which the detector fires: the end of each
    window with score >= threshold that is not within refractory_s after an earlier trigger."""
    r = refractory_hops(refractory_s, hop_s)
    times, free_from = [], 0
    for i in torch.nonzero(scores >= threshold).flatten().tolist():
        if i >= free_from:
            times.append(i * hop_s + clip_s)
            free_from = i + r + 1
    return times


def count_triggers(scores: torch.Tensor, thresholds: torch.Tensor, refractory_hops: int) -> torch.Tensor:
    """(W,) scores, (K,) thresholds -> (K,) int64 triggers at each threshold, exactly as
    `trigger_times` counts them. Vectorised over thresholds, looping over blocks of
    refractory_hops + 1 windows: a block holds at most one trigger per threshold."""
    scores, thresholds = scores.float().flatten(), thresholds.float().flatten()
    if refractory_hops <= 0:
        return (scores[None, :] >= thresholds[:, None]).sum(1)
    block = refractory_hops + 1
    w, k = int(scores.shape[0]), int(thresholds.shape[0])
    counts = torch.zeros(k, dtype=torch.int64)
    free_from = torch.zeros(k, dtype=torch.int64)  # first window each threshold may fire at
    offsets = torch.arange(block)
    lowest = float(thresholds.min()) if k else math.inf
    for b0 in range(0, w, block):
        chunk = scores[b0:b0 + block]
        if float(chunk.max()) < lowest:
            continue  # nothing fires here; any refractory carried in ends inside this block
        pos = offsets[:chunk.shape[0]]
        can = (chunk[None, :] >= thresholds[:, None]) & (pos[None, :] + b0 >= free_from[:, None])
        fired = can.any(1)
        first = can.int().argmax(1)  # first True per threshold
        counts += fired
        free_from = torch.where(fired, b0 + first + block, free_from)
    return counts


# ----------------------------------------------------------------------------- DET, operating point


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    frr: float
    fa_per_hour: float
    target_fa_per_hour: float
    met: bool  # False: no threshold reaches the target; this is the highest threshold instead


def threshold_grid(pos_scores: torch.Tensor, neg_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K,) ascending thresholds: 0..1 in steps of 0.01, 201 quantiles of the positive scores,
    and just above each of the TOP_NEGATIVES highest distinct negative scores (where FA/h
    changes: the exact operating point for any target those triggers can reach), plus one
    above 1 (nothing fires)."""
    parts = [torch.linspace(0, 1, 101), torch.tensor([math.nextafter(1.0, 2.0)])]
    if pos_scores.numel():
        parts.append(torch.quantile(pos_scores.float(), torch.linspace(0, 1, 201)))
    neg = torch.cat([s.float().flatten() for s in neg_scores]) if neg_scores else torch.empty(0)
    if neg.numel():
        top = torch.unique(neg)[-TOP_NEGATIVES:]
        parts.append(torch.nextafter(top, torch.full_like(top, 2.0)))
    return torch.unique(torch.cat([p.float() for p in parts]))


def det_curve(pos_scores: torch.Tensor, neg_streams_scores: list[torch.Tensor], negative_hours: float,
              refractory_hops: int, thresholds: torch.Tensor | None = None) -> list[tuple[float, float, float]]:
    """[(threshold, frr, fa_per_hour)] ascending in threshold. pos_scores (P,): one per positive
    clip (`clip_scores`); neg_streams_scores: window scores of each negative recording;
    negative_hours: their total duration. A score >= threshold fires."""
    if thresholds is None:
        thresholds = threshold_grid(pos_scores, neg_streams_scores)
    thresholds = torch.sort(thresholds.float().flatten()).values
    pos = pos_scores.float().flatten()
    frr = ((pos[None, :] < thresholds[:, None]).float().mean(1) if pos.numel()
           else torch.zeros_like(thresholds))
    triggers = torch.zeros(thresholds.shape[0], dtype=torch.int64)
    # One-window recordings (negative clips) fire at most once each: counted all together.
    single = [s.flatten() for s in neg_streams_scores if s.numel() == 1]
    if single:
        triggers += count_triggers(torch.cat(single), thresholds, 0)
    for s in neg_streams_scores:
        if s.numel() > 1:
            triggers += count_triggers(s, thresholds, refractory_hops)
    fa = triggers.double() / negative_hours if negative_hours > 0 else torch.zeros_like(thresholds, dtype=torch.float64)
    return list(zip(thresholds.tolist(), frr.tolist(), fa.tolist()))


def operating_point(det: list[tuple[float, float, float]], target_fa_per_hour: float) -> OperatingPoint:
    """The lowest-FRR point (ties: the lowest threshold) with FA/h <= target; if none, the
    highest threshold with met=False."""
    if not det:
        raise ValueError("operating_point: empty DET curve")
    ok = [p for p in det if p[2] <= target_fa_per_hour]
    if not ok:
        t, frr, fa = max(det, key=lambda p: p[0])
        return OperatingPoint(t, frr, fa, target_fa_per_hour, False)
    t, frr, fa = min(ok, key=lambda p: (p[1], p[0]))
    return OperatingPoint(t, frr, fa, target_fa_per_hour, True)


def det_summary(det: list[tuple[float, float, float]]) -> float:
    """DET_SUMMARY: mean over the FA/h targets SUMMARY_TARGETS (0.1 .. 10, log-spaced) of the
    best FRR at FA/h <= target (a target no threshold meets counts its highest-threshold FRR).
    Lower is better; 0 = no wakeword missed at 0.1 FA/h."""
    return sum(operating_point(det, t).frr for t in SUMMARY_TARGETS) / len(SUMMARY_TARGETS)
