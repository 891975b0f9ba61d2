"""Wakeword metrics and the metric names shared by ray.train.report, Tune and MLflow.

A detector is judged on two errors: missed wakewords (false-reject rate, FRR) and triggers
on audio that holds no wakeword (false accepts per hour of negative audio, FA/h).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Metric names: defined once, used by the loop's report, Tune's metric, MLflow and the CLI.
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"  # the total; each term is logged as "train_<term>"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
VAL_FRR = "val_frr"
VAL_FA_PER_HOUR = "val_fa_per_hour"
# The operating point on the validation stream (raykd.detect): "val_" + raykd.evaluate's keys.
VAL_FRR_AT_TARGET = "val_frr_at_target"
VAL_THRESHOLD_AT_TARGET = "val_threshold_at_target"
VAL_FA_PER_HOUR_AT_TARGET = "val_fa_per_hour_at_target"
VAL_DET_MEAN_FRR = "val_det_mean_frr"
VAL_NEGATIVE_HOURS = "val_negative_hours"
VRAM_PEAK_MB = "vram_peak_mb"  # GPU: torch.cuda.max_memory_allocated, max over ranks
RSS_PEAK_MB = "rss_peak_mb"  # CPU: process peak resident set size, max over ranks
DIVERGED = "diverged"  # 1.0 when the loop stopped on divergence
OOM = "oom"  # 1.0 when the loop stopped on out-of-memory
STATUS = "status"  # completed | diverged | oom (a string, reported alongside)
EPOCH_SECONDS = "epoch_seconds"  # training only
VAL_SECONDS = "val_seconds"  # validation (clips + streaming) wall time

PENALTY = "penalty"  # a metric's worst value is the config's train.divergence.penalty


@dataclass(frozen=True)
class Metric:
    """One reported number: its name, which way is better, the value a diverged/oom epoch
    reports (finite: Optuna and ASHA cannot rank NaN), and whether the epoch table shows it."""

    name: str
    mode: str  # "max" | "min": better is higher / lower
    worst: float | str | None  # reported when the run failed; PENALTY = train.divergence.penalty
    label: str
    shown: bool = True  # a column of the CLI's epoch table
    searchable: bool = True  # a validation metric a study may optimise (`search.metric`)


# The one metric table: the loop's rows, the CLI's tables, export/eval and the validation of
# `search.metric` all read it. Adding a metric = one line here + where it is computed.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric(EPOCH, "max", None, "epoch"),
    Metric(TRAIN_LOSS, "min", PENALTY, "training loss (total)"),
    Metric("train_ce", "min", None, "cross-entropy term"),
    Metric("train_kd", "min", None, "logit KD term"),
    Metric("train_align", "min", None, "feature alignment term"),
    Metric(VAL_LOSS, "min", PENALTY, "validation cross-entropy"),
    Metric(VAL_ACCURACY, "max", 0.0, "validation accuracy"),
    Metric(VAL_FRR, "min", 1.0, "validation false-reject rate (streamed, at train.threshold)"),
    Metric(VAL_FA_PER_HOUR, "min", PENALTY, "validation false accepts per hour (at train.threshold)"),
    Metric(VAL_FRR_AT_TARGET, "min", 1.0, "validation FRR at eval.target_fa_per_hour"),
    Metric(VAL_THRESHOLD_AT_TARGET, "min", 1.0, "threshold meeting eval.target_fa_per_hour", searchable=False),
    Metric(VAL_FA_PER_HOUR_AT_TARGET, "min", PENALTY, "validation FA/h at that threshold", shown=False),
    Metric(VAL_DET_MEAN_FRR, "min", 1.0, "mean FRR over FA/h targets 0.1..10 (DET summary)"),
    Metric(VAL_NEGATIVE_HOURS, "max", None, "hours of negative validation audio", shown=False, searchable=False),
    Metric(VRAM_PEAK_MB, "min", None, "peak GPU memory (MB)"),
    Metric(RSS_PEAK_MB, "min", None, "peak process RSS (MB)"),
    Metric(EPOCH_SECONDS, "min", None, "epoch wall time (s)", shown=False),
    Metric(VAL_SECONDS, "min", None, "validation wall time (s)", shown=False, searchable=False),
    Metric(DIVERGED, "min", None, "1 = diverged", shown=False),
    Metric(OOM, "min", None, "1 = out of memory", shown=False),
)}

# What a study may optimise: validation metrics with a direction.
SEARCHABLE = tuple(n for n, m in METRICS.items() if n.startswith("val_") and m.searchable)


def failed_row(penalty: float) -> dict[str, float]:
    """The values a diverged or out-of-memory epoch reports for every metric that has a worst."""
    return {m.name: penalty if m.worst == PENALTY else float(m.worst)
            for m in METRICS.values() if m.worst is not None}


def better(value: float, than: float | None, mode: str) -> bool:
    """Is `value` better than `than` (None: nothing yet) in direction `mode`."""
    if than is None:
        return True
    return value > than if mode == "max" else value < than


def shown_columns(rows: list[dict]) -> list[str]:
    """The epoch table's columns: shown metrics that some row has, in table order."""
    return [n for n, m in METRICS.items() if m.shown and any(n in r for r in rows)] + \
        ([STATUS] if any(STATUS in r for r in rows) else [])


def term_metric(term: str, split: str = "train") -> str:
    """Metric name of one loss term: ('align.wav2vec2.2', 'train') -> 'train_align.wav2vec2.2'."""
    return f"{split}_{term}"


@dataclass(frozen=True)
class DetectionMetrics:
    accuracy: float
    frr: float  # fraction of wakeword clips not triggered
    fa_per_hour: float  # triggers on negative clips per hour of negative audio
    n_pos: int
    n_neg: int


def detection_metrics(
    probs: torch.Tensor, labels: torch.Tensor, threshold: float, clip_seconds: float
) -> DetectionMetrics:
    """probs: (N,) wakeword probability; labels: (N,) 0/1. One trigger per clip at most."""
    probs, labels = probs.detach().float().cpu(), labels.detach().long().cpu()
    fired = probs >= threshold
    pos, neg = labels == 1, labels == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    accuracy = float((fired == pos).float().mean()) if len(labels) else 0.0
    frr = float((~fired & pos).sum()) / n_pos if n_pos else 0.0
    neg_hours = n_neg * clip_seconds / 3600.0
    fa_per_hour = float((fired & neg).sum()) / neg_hours if n_neg else 0.0
    return DetectionMetrics(accuracy, frr, fa_per_hour, n_pos, n_neg)


def det_curve(
    probs: torch.Tensor, labels: torch.Tensor, clip_seconds: float, thresholds: torch.Tensor | None = None
) -> list[tuple[float, float, float]]:
    """Detection error trade-off: [(threshold, frr, fa_per_hour)] over thresholds (default 0.05..0.95)."""
    if thresholds is None:
        thresholds = torch.linspace(0.05, 0.95, 19)
    out = []
    for t in thresholds.tolist():
        m = detection_metrics(probs, labels, t, clip_seconds)
        out.append((t, m.frr, m.fa_per_hour))
    return out
