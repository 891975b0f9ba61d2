"""Score a whole split the way a detector is used (raykd.detect): FRR per positive clip, false
accepts per hour of continuous negative audio, the operating point and the DET curve.

The one function behind training validation (`raykd.train.evaluate`), `raykd eval` and the
exported model: give it a Scorer (torch student or ONNX graph) and a WaveformSet.
"""

from __future__ import annotations

from typing import Any

import torch

from raykd import detect as D
from raykd.data.dataset import WaveformSet

# Keys of the result (also `raykd eval --json`).
FRR = "frr"
FA_PER_HOUR = "fa_per_hour"
THRESHOLD = "threshold"
NEGATIVE_HOURS = "negative_hours"
FRR_AT_TARGET = "frr_at_target"
THRESHOLD_AT_TARGET = "threshold_at_target"
FA_PER_HOUR_AT_TARGET = "fa_per_hour_at_target"
TARGET_FA_PER_HOUR = "target_fa_per_hour"
TARGET_MET = "target_met"
N_POS = "n_pos"
DET = "det"  # [[threshold, frr, fa_per_hour], ...] ascending in threshold


def hop_samples(features, ev) -> int:
    """eval.hop_ms in samples at features.sample_rate (at least 1)."""
    return max(1, int(round(ev.hop_ms * features.sample_rate / 1000)))


def split_scores(scorer: D.Scorer, data: WaveformSet, features, ev,
                 batch: int = 512) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(positive clip scores (P,), window scores of every negative recording): each negative
    clip is a short stream of its own (one window at clip length), then every stream."""
    clip, hop = features.clip_samples, hop_samples(features, ev)
    pos = D.clip_scores(scorer, data.waves[data.labels == 1], clip, hop, batch)
    neg_clips = data.waves[data.labels == 0]
    negs: list[torch.Tensor] = []
    if len(neg_clips) and D.n_windows(int(neg_clips.shape[1]), clip, hop) == 1:
        # A clip of one window (the usual case): its one window, all clips batched together.
        negs.extend(_one_window(scorer, neg_clips, clip, batch).unsqueeze(1).unbind(0))
    else:
        negs.extend(D.stream_scores(scorer, c, clip, hop, batch) for c in neg_clips)
    negs.extend(D.stream_scores(scorer, s, clip, hop, batch) for s in data.streams)
    return pos, negs


def _one_window(scorer: D.Scorer, clips: torch.Tensor, clip: int, batch: int) -> torch.Tensor:
    """Clips that are exactly one window (or shorter, zero-padded): their single window each,
    scored in batches (what stream_scores would give, without a call per clip)."""
    if clips.shape[1] < clip:
        clips = torch.nn.functional.pad(clips, (0, clip - clips.shape[1]))
    out = []
    with torch.inference_mode():
        for i in range(0, len(clips), batch):
            out.append(scorer(clips[i:i + batch].float()).float().cpu())
    return torch.cat(out)


def detection_report(pos: torch.Tensor, negs: list[torch.Tensor], negative_seconds: float,
                     features, ev, threshold: float) -> dict[str, Any]:
    """The numbers of one evaluation from its scores (see `evaluate_detector`)."""
    hop_s = hop_samples(features, ev) / features.sample_rate
    r = D.refractory_hops(ev.refractory_s, hop_s)
    hours = negative_seconds / 3600.0
    at = torch.tensor([threshold])
    frr = float((pos < threshold).float().mean()) if pos.numel() else 0.0
    triggers = sum(int(D.count_triggers(s, at, r)[0]) for s in negs)
    det = D.det_curve(pos, negs, hours, r)
    op = D.operating_point(det, ev.target_fa_per_hour)
    return {
        THRESHOLD: float(threshold), FRR: frr, FA_PER_HOUR: triggers / hours if hours > 0 else 0.0,
        NEGATIVE_HOURS: hours, N_POS: int(pos.numel()),
        FRR_AT_TARGET: op.frr, THRESHOLD_AT_TARGET: op.threshold, FA_PER_HOUR_AT_TARGET: op.fa_per_hour,
        TARGET_FA_PER_HOUR: ev.target_fa_per_hour, TARGET_MET: op.met,
        D.DET_SUMMARY: D.det_summary(det), DET: [list(p) for p in det],
    }


def evaluate_detector(scorer: D.Scorer, data: WaveformSet, features, ev, threshold: float,
                      batch: int = 512) -> dict[str, Any]:
    """Stream `scorer` over a split. features: cfg.features; ev: cfg.eval.

    Returns frr and fa_per_hour at `threshold`; negative_hours (negative clips + streams);
    the operating point for ev.target_fa_per_hour (frr_at_target, threshold_at_target,
    fa_per_hour_at_target, target_met); det_mean_frr (`raykd.detect.det_summary`); n_pos;
    det (the curve's points)."""
    pos, negs = split_scores(scorer, data, features, ev, batch)
    return detection_report(pos, negs, data.negative_seconds, features, ev, threshold)


# The report's keys that are per-epoch metrics: metric name = "val_" + key (raykd.metrics).
METRIC_KEYS = (FRR, FA_PER_HOUR, FRR_AT_TARGET, THRESHOLD_AT_TARGET, FA_PER_HOUR_AT_TARGET,
               D.DET_SUMMARY, NEGATIVE_HOURS)


def as_metrics(report: dict[str, Any], split: str = "val") -> dict[str, float]:
    """The report's numbers under their metric names: {'val_frr_at_target': ..., ...}."""
    return {f"{split}_{k}": float(report[k]) for k in METRIC_KEYS}


def det_record(report: dict[str, Any], ev) -> dict[str, Any]:
    """What det.json holds: the DET points, the operating point and how they were measured."""
    keep = (THRESHOLD, FRR, FA_PER_HOUR, NEGATIVE_HOURS, N_POS, FRR_AT_TARGET, THRESHOLD_AT_TARGET,
            FA_PER_HOUR_AT_TARGET, TARGET_FA_PER_HOUR, TARGET_MET, D.DET_SUMMARY)
    return {**{k: report[k] for k in keep}, "hop_ms": ev.hop_ms, "refractory_s": ev.refractory_s,
            "points": report[DET]}
