"""Streaming speed of the exported detector: how much audio one CPU thread scores per second,
and how long one hop costs a live deployment.

    python benchmarks/streaming.py            # 10 minutes of audio, 500 single-window calls (~1-2 min)
    python benchmarks/streaming.py --smoke    # 30 s of audio, 30 calls, to check it runs

The model is the default config's student (random weights: speed does not depend on them)
exported the way `raykd export` does it: student.onnx takes raw 16 kHz audio and computes the
log-mel front end in the graph. onnxruntime on ONE thread (an edge device's budget).

* throughput: `raykd.detect.stream_scores` over a recording with the onnxruntime scorer of
  `raykd eval` (a window of features.clip_seconds every eval.hop_ms, batches of EVAL_BATCH
  windows): seconds of audio scored per wall-clock second (x real time);
* latency per hop: one window, batch 1, what a live detector runs every eval.hop_ms; median
  and p95, for the deployed raw-audio graph and, to show what the front end costs, for
  student_logmel.onnx on precomputed features.

Prints a table and writes benchmarks/results/streaming.json (--smoke: streaming-smoke.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from raykd import export as E
from raykd.config import RaykdConfig
from raykd.data.features import LogMel
from raykd.detect import n_windows, stream_scores
from raykd.eval_data import EVAL_BATCH, onnx_scorer
from raykd.evaluate import hop_samples
from raykd.models.student import build_student

OUT = Path(__file__).parent / "results" / "streaming.json"


def per_call_ms(fn, iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="30 s of audio, a few calls")
    ap.add_argument("--minutes", type=float, default=10.0, help="audio streamed for the throughput")
    ap.add_argument("--iters", type=int, default=500, help="single-window calls for the latency")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help=f"default {OUT} (--smoke: streaming-smoke.json)")
    args = ap.parse_args()
    args.out = args.out or (OUT.with_name("streaming-smoke.json") if args.smoke else OUT)
    seconds = 30.0 if args.smoke else args.minutes * 60
    iters, warmup = (30, 5) if args.smoke else (args.iters, max(args.iters // 10, 20))
    torch.set_num_threads(args.threads)

    cfg = RaykdConfig()
    f, ev = cfg.features, cfg.eval
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, f.n_mels).eval()
    hop = hop_samples(f, ev)
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(int(seconds * f.sample_rate), generator=g)
    window = audio[:f.clip_samples][None]
    feats = LogMel(f)(window).numpy()

    with tempfile.TemporaryDirectory() as d:
        raw_path, mel_path = Path(d) / E.ONNX_FILE, Path(d) / E.LOGMEL_ONNX_FILE
        onnx.save(E.audio_to_onnx(student, f), str(raw_path))
        onnx.save(E.to_onnx(student, f.n_mels, feats.shape[-1]), str(mel_path))
        scorer = onnx_scorer(raw_path, threads=args.threads)
        stream_scores(scorer, audio[: 20 * f.clip_samples], f.clip_samples, hop, EVAL_BATCH)  # warm up
        t0 = time.perf_counter()
        scores = stream_scores(scorer, audio, f.clip_samples, hop, EVAL_BATCH)
        wall = time.perf_counter() - t0
        raw = E.ort_session(raw_path, args.threads)
        mel = E.ort_session(mel_path, args.threads)
        x = window.numpy()
        lat_raw = per_call_ms(lambda: raw.run([E.OUTPUT_NAME], {E.AUDIO_INPUT: x}), iters, warmup)
        lat_mel = per_call_ms(lambda: mel.run([E.OUTPUT_NAME], {E.LOGMEL_INPUT: feats}), iters, warmup)

    windows = n_windows(audio.shape[0], f.clip_samples, hop)
    assert scores.shape == (windows,)
    hop_ms = hop / f.sample_rate * 1e3

    def lat(name: str, t: list[float]) -> dict:
        return {"graph": name, "median_ms": statistics.median(t), "p95_ms": float(np.percentile(t, 95)),
                "share_of_hop": statistics.median(t) / hop_ms}

    report = {
        "what": "exported detector, onnxruntime CPU: streaming throughput and latency per hop",
        "weights": "random (default-config student; speed does not depend on the values)",
        "window": {"seconds": f.clip_seconds, "samples": f.clip_samples}, "hop_ms": hop_ms,
        "threads": args.threads, "smoke": args.smoke, "loadavg": os.getloadavg(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "cpu": platform.processor() or platform.machine(),
        "throughput": {"graph": E.ONNX_FILE, "audio_s": seconds, "windows": windows, "batch": EVAL_BATCH,
                       "wall_s": wall, "audio_s_per_s": seconds / wall, "windows_per_s": windows / wall,
                       "hour_of_audio_s": 3600 / (seconds / wall)},
        "latency": [lat(f"{E.ONNX_FILE} (raw audio in)", lat_raw),
                    lat(f"{E.LOGMEL_ONNX_FILE} (features precomputed)", lat_mel)],
        "iters": iters, "warmup": warmup,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    tp = report["throughput"]
    print(f"default student, {f.clip_seconds:g} s window every {hop_ms:g} ms, onnxruntime {args.threads} thread(s), "
          f"load average {report['loadavg'][0]:.1f}")
    print(f"throughput ({E.ONNX_FILE}, {seconds / 60:g} min of audio, {windows} windows, batch {EVAL_BATCH}): "
          f"{tp['audio_s_per_s']:.1f} s of audio per s = {tp['windows_per_s']:.0f} windows/s; "
          f"an hour of audio in {tp['hour_of_audio_s']:.0f} s")
    print(f"{'latency per hop (batch 1)':<46}{'median ms':>10}{'p95 ms':>9}{'of hop':>8}")
    for r in report["latency"]:
        print(f"{r['graph']:<46}{r['median_ms']:>10.3f}{r['p95_ms']:>9.3f}{r['share_of_hop']:>8.1%}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
