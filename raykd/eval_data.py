"""An export scored on a user's audio the way a deployment hears it (`raykd eval`, `raykd detect`).

The data is read so that false accepts per hour mean something: negatives are read WHOLE,
never cropped (a 20-minute recording counts 20 minutes, its false accepts are counted by the
streaming detector with its refractory period); positives stay clips (cropped or padded to
the model's window like training). Scoring is raykd.evaluate's, the code that scores
validation during training, with the exported raw-audio graph as the Scorer.

    PATH  a folder (positive/, negative/), a CSV manifest (path,label[,...]), or one audio
          file (a long recording: all negative)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from raykd import detect as D
from raykd import evaluate as V
from raykd.config import DataConfig, EvalConfig, FeatureConfig, RaykdConfig
from raykd.data.audio import AUDIO_EXTS, DatasetError, read_audio
from raykd.data.dataset import WaveformSet, list_clips
from raykd.errors import UserError
from raykd.export import (AUDIO_INPUT, LABELS, ONNX_FILE, OUTPUT_NAME, SIDECAR_FILE, SIDECAR_FORMAT, file_sha256,
                          ort_session)

EVAL_BATCH = 64  # windows per onnxruntime call (the DFT output of 64 x 1.5 s windows: 16 MB)


# ----------------------------------------------------------------------------- the export


def load_export(model: str | Path) -> tuple[Path, dict[str, Any]]:
    """(student.onnx, its sidecar) from an export folder or the .onnx file (sidecar beside it)."""
    model = Path(model)
    onnx_path = model / ONNX_FILE if model.is_dir() else model
    side_path = onnx_path.with_suffix(".json")
    for p in (onnx_path, side_path):
        if not p.is_file():
            raise UserError(f"{p}: no such file (expected an export folder with {ONNX_FILE} and {SIDECAR_FILE})")
    try:
        side = json.loads(side_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{side_path}: not a raykd sidecar ({str(e).splitlines()[0]})") from None
    got = side.get("format") if isinstance(side, dict) else None
    if got != SIDECAR_FORMAT:
        raise UserError(f"{side_path}: sidecar format {got!r}, this raykd reads {SIDECAR_FORMAT}; export again")
    if side["onnx_sha256"] != file_sha256(onnx_path):
        raise UserError(f"{side_path}: does not describe {onnx_path} (checksum differs); export again")
    return onnx_path, side


def export_settings(side: dict[str, Any]) -> tuple[FeatureConfig, EvalConfig]:
    """The window (features) and streaming settings (eval) an export was made with."""
    f = FeatureConfig(**{k: side[k] for k in ("sample_rate", "clip_seconds", "n_mels", "win_ms", "hop_ms")})
    s = side["streaming"]
    ev = EvalConfig(hop_ms=s["hop_ms"], refractory_s=s["refractory_s"],
                    target_fa_per_hour=side["operating_point"]["target_fa_per_hour"])
    return f, ev


def onnx_scorer(onnx_path: Path, threads: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A raykd.detect Scorer of the raw-audio graph: (B, clip_samples) audio -> (B,) wakeword probability."""
    session = ort_session(onnx_path, threads)

    def score(waves: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(waves.detach().cpu().numpy(), dtype=np.float32)
        logits = torch.from_numpy(session.run([OUTPUT_NAME], {AUDIO_INPUT: x})[0])
        return logits.softmax(-1)[:, LABELS.index("wakeword")]

    return score


# ----------------------------------------------------------------------------- the data


@dataclass
class EvalData:
    """What `raykd eval` scores. data.waves: positives (clips) and negatives exactly one window
    long; data.streams: every other negative file, whole; stream_paths: their files."""

    data: WaveformSet
    stream_paths: list[str] = field(default_factory=list)
    negative_files: int = 0


def _clips_of(path: Path, features: FeatureConfig) -> list[tuple[Path, int]]:
    if path.is_dir():
        data = DataConfig(source="folder", root=path)
    elif path.suffix.lower() == ".csv":
        data = DataConfig(source="manifest", manifest=path)
    elif path.is_file() and path.suffix.lower() in AUDIO_EXTS:
        return [(path, 0)]  # one recording: all negative
    else:
        raise UserError(f"{path}: no such folder (positive/, negative/), CSV manifest or audio file "
                        f"({', '.join(AUDIO_EXTS)})")
    return [(c.path, c.label) for c in list_clips(RaykdConfig(data=data, features=features))]


def read_eval_data(path: str | Path, features: FeatureConfig) -> EvalData:
    """Every file of PATH (all splits): positives cropped/padded to one window, negatives whole."""
    sr, clip = features.sample_rate, features.clip_samples
    try:
        files = _clips_of(Path(path), features)
        waves, labels, paths, streams, stream_paths = [], [], [], [], []
        for p, label in files:
            wave = read_audio(p, sr, clip if label == 1 else None)
            if label == 1 or wave.shape[0] == clip:  # a one-window negative: batched with the clips
                waves.append(wave)
                labels.append(label)
                paths.append(str(p))
            else:
                streams.append(wave)
                stream_paths.append(str(p))
    except DatasetError as e:
        raise UserError(str(e)) from None
    data = WaveformSet(waves=torch.stack(waves) if waves else torch.zeros(0, clip),
                       labels=torch.tensor(labels, dtype=torch.int64), speakers=[""] * len(waves),
                       paths=paths, sample_rate=sr, streams=streams)
    return EvalData(data, stream_paths, sum(1 for _, label in files if label == 0))


# ----------------------------------------------------------------------------- scoring


def _threshold(side: dict[str, Any], threshold: float | None) -> float:
    threshold = side["threshold"] if threshold is None else threshold
    if not 0 < threshold < 1:
        raise UserError(f"threshold {threshold}: must be between 0 and 1")
    return float(threshold)


def events(scores: torch.Tensor, threshold: float, features: FeatureConfig, ev: EvalConfig) -> list[tuple[float, float]]:
    """[(seconds, score)] where the detector fires on one recording's window scores (see
    raykd.detect.trigger_times: a time is the end of the window that fired)."""
    hop = V.hop_samples(features, ev)
    hop_s, clip_s = hop / features.sample_rate, features.clip_samples / features.sample_rate
    times = D.trigger_times(scores, threshold, hop_s, clip_s, ev.refractory_s)
    return [(t, float(scores[round((t - clip_s) / hop_s)])) for t in times]


def evaluate_export(model: str | Path, path: str | Path, threshold: float | None = None,
                    threads: int = 0) -> tuple[dict[str, Any], list[tuple[str, float, float]]]:
    """(report, false accepts) of an export on PATH. The report is raykd.evaluate's (frr,
    fa_per_hour, negative_hours, threshold, frr_at_target, threshold_at_target, det, ...) plus
    positives and negative_files; false accepts are (file, seconds, score) on the negatives."""
    onnx_path, side = load_export(model)
    features, ev = export_settings(side)
    threshold = _threshold(side, threshold)
    ed = read_eval_data(path, features)
    data = ed.data
    pos, negs = V.split_scores(onnx_scorer(onnx_path, threads), data, features, ev, EVAL_BATCH)
    report = V.detection_report(pos, negs, data.negative_seconds, features, ev, threshold)
    report = {"positives": int((data.labels == 1).sum()), "negative_files": ed.negative_files, **report}
    # split_scores: one score per one-window negative clip (in data order), then each stream.
    neg_paths = [p for p, label in zip(data.paths, data.labels.tolist()) if label == 0] + ed.stream_paths
    fired = [(p, t, s) for p, scores in zip(neg_paths, negs) for t, s in events(scores, threshold, features, ev)]
    return report, fired


def detect_file(model: str | Path, wav: str | Path, threshold: float | None = None,
                threads: int = 0) -> tuple[list[tuple[float, float]], float, float]:
    """([(seconds, score)] where the detector fires on one recording, threshold, its duration in s)."""
    onnx_path, side = load_export(model)
    features, ev = export_settings(side)
    threshold = _threshold(side, threshold)
    try:
        wave = read_audio(wav, features.sample_rate)
    except DatasetError as e:
        raise UserError(str(e)) from None
    scores = D.stream_scores(onnx_scorer(onnx_path, threads), wave, features.clip_samples,
                             V.hop_samples(features, ev), EVAL_BATCH)
    return events(scores, threshold, features, ev), threshold, wave.shape[0] / features.sample_rate
