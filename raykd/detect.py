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
    return 1 + max(0, -(-(n_samples - clip_samples) // hop_samples))  # integer ceil


def window_starts(n_samples: int, clip_samples: int, hop_samples: int) -> torch.Tensor:
    """(W,) int64 first sample of each window; window i covers [i*hop, i*hop + clip)."""
    return torch.arange(n_windows(n_samples, clip_samples, hop_samples), dtype=torch.int64) * hop_samples


def score_runs(scorer: Scorer, pieces: torch.Tensor, count: int, clip: int, hop: int) -> torch.Tensor:
    """(N, span) audio pieces, span = (count - 1) * hop + clip -> (N, count) scores of the windows
    starting at 0, hop, 2 hop, ... of each piece. The one place windows meet a scorer: a scorer
    that can share work between overlapping windows (`TorchScorer.runs`) does it here."""
    runs = getattr(scorer, "runs", None)
    if runs is not None:
        return runs(pieces, count, clip, hop)
    n = int(pieces.shape[0])
    windows = pieces.unfold(1, clip, hop)[:, :count].reshape(n * count, clip)  # this batch only
    return scorer(windows).float().cpu().view(n, count)


def stream_scores(scorer: Scorer, wave: torch.Tensor, clip_samples: int, hop_samples: int,
                  batch: int = 512) -> torch.Tensor:
    """(S,) recording of any length -> (W,) float32 score of every window (see `window_starts`).

    Batches of `batch` windows under inference_mode; only one batch's span of the recording is
    copied at a time (zero-padded where it runs off the end), so an hour of audio is fine."""
    if wave.dim() != 1:
        raise ValueError(f"stream_scores: expected a 1-D wave, got shape {tuple(wave.shape)}")
    wave = wave.float()
    total = n_windows(int(wave.shape[0]), clip_samples, hop_samples)
    out = torch.empty(total, dtype=torch.float32)
    with torch.inference_mode():
        for first in range(0, total, batch):
            count = min(batch, total - first)
            start, span = first * hop_samples, (count - 1) * hop_samples + clip_samples
            piece = wave[start:start + span]
            piece = F.pad(piece, (0, span - piece.shape[0]))
            out[first:first + count] = score_runs(scorer, piece[None], count, clip_samples, hop_samples)[0]
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
    span = (per_clip - 1) * hop_samples + clip_samples  # what the windows cover (>= length)
    clips_per_batch = max(1, batch // per_clip)
    out = torch.empty(n, dtype=torch.float32)
    with torch.inference_mode():
        for i in range(0, n, clips_per_batch):
            chunk = F.pad(waves[i:i + clips_per_batch].float(), (pad, span - length + pad))
            out[i:i + chunk.shape[0]] = score_runs(scorer, chunk, per_clip, clip_samples, hop_samples).amax(1)
    return out


class TorchScorer:
    """The Scorer of a student (`model(feats)` returns (logits, taps)) on raw audio, through its
    LogMel front end. Puts the model in eval mode (a caller that trains on restores train()).

    `runs` scores overlapping windows from log-mel frames computed once per piece: when the
    window hop is a whole number of STFT hops, a window's frames are the piece's frames, except
    the few at each end that touch the window's own (reflect) padding, which are recomputed
    from the window's edges. Same numbers as window by window up to float rounding (tested),
    at a fraction of the STFT work; any other front end is scored window by window."""

    def __init__(self, model: nn.Module, logmel: nn.Module, device: torch.device | str):
        self.model, self.logmel, self.device = model, logmel, torch.device(device)
        model.eval()

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._probs(self.logmel(windows.to(self.device)))

    def _probs(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model(feats)[0].float().softmax(-1)[:, 1].cpu()

    def _frame_plan(self, clip: int, hop: int) -> tuple[int, int, int, int, int, int, int] | None:
        """(stft hop, frames per window T, frames per window hop, left edge frames, their piece
        length, right edge frames, their piece start), or None when frames cannot be shared."""
        spec = getattr(getattr(self.logmel, "mel", None), "spectrogram", None)
        if spec is None or spec.pad != 0 or spec.win_length != spec.n_fft or hop % spec.hop_length:
            return None
        fh, n_fft = spec.hop_length, spec.n_fft
        if not spec.center:
            return (fh, 1 + (clip - n_fft) // fh, hop // fh, 0, 0, 0, 0) if clip >= n_fft else None
        frames = 1 + clip // fh
        left = -(-(n_fft // 2) // fh)  # frames reaching before the window's first sample
        right = frames - ((clip - (n_fft - n_fft // 2)) // fh + 1)  # ... past its last one
        k_left = (left - 1) * fh + n_fft
        p_right = max(0, ((frames - right) * fh - n_fft // 2) // fh * fh)
        if left + right >= frames or k_left > clip or clip - p_right <= n_fft // 2:
            return None
        return fh, frames, hop // fh, left, k_left, right, p_right

    def runs(self, pieces: torch.Tensor, count: int, clip: int, hop: int) -> torch.Tensor:
        """(N, span) -> (N, count), as `score_runs` defines it."""
        plan = self._frame_plan(clip, hop)
        if plan is None:
            n = int(pieces.shape[0])
            return self(pieces.unfold(1, clip, hop)[:, :count].reshape(n * count, clip)).view(n, count)
        fh, frames, step, left, k_left, right, p_right = plan
        with torch.inference_mode():
            x = pieces.to(self.device).float()
            n = int(x.shape[0])
            full = self.logmel(x)  # (N, M, F): every frame of the piece once
            m = int(full.shape[1])
            # A copy (contiguous), never a view: the windows' frames overlap in `full`.
            feats = full.unfold(2, frames, step)[:, :, :count].permute(0, 2, 1, 3).contiguous()
            feats = feats.view(n * count, m, frames)
            if left:
                edge = x.unfold(1, k_left, hop)[:, :count].reshape(n * count, k_left)
                feats[..., :left] = self.logmel(edge)[..., :left]
            if right:
                edge = x[:, p_right:].unfold(1, clip - p_right, hop)[:, :count].reshape(n * count, -1)
                feats[..., frames - right:] = self.logmel(edge)[..., -right:]
            return self._probs(feats).view(n, count)


def torch_scorer(model: nn.Module, logmel: nn.Module, device: torch.device | str) -> Scorer:
    """A Scorer for a student and its LogMel front end (see TorchScorer)."""
    return TorchScorer(model, logmel, device)


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
