"""Inference latency per 1-second window: projectors cost nothing once exported.

    python benchmarks/latency.py            # full run (~1 min)
    python benchmarks/latency.py --smoke    # a few iterations, to check it runs

Times one 1-second log-mel window (batch 1) through
  * the exported student in onnxruntime (what ships: ExportableStudent, no projectors),
  * the student alone in PyTorch,
  * the student WITH its projectors in PyTorch (StudentWithProjectors, the training graph),
all on one thread (an edge device's budget) in one process, and reports medians and ratios
to the exported student. The student is the default config's (random weights: latency does
not depend on them); projectors are the default config's aligned layers at wav2vec2-base
width (768). Prints a table and writes benchmarks/results/latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from raykd import export as E
from raykd.config import RaykdConfig
from raykd.data.features import num_frames
from raykd.distill.losses import layer_mapping
from raykd.models.projector import build_projectors, projector_key
from raykd.models.student import build_student, count_params
from raykd.models.projector import StudentWithProjectors

TEACHER_DIM = 768  # wav2vec2-base hidden size
TEACHER_DEPTH = 12
OUT = Path(__file__).parent / "results" / "latency.json"


def time_it(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    """Per-call wall times in milliseconds after warmup calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def build(cfg: RaykdConfig) -> StudentWithProjectors:
    """Default student + one projector per aligned layer, mapped by relative depth as in training."""
    torch.manual_seed(cfg.seed)
    aligned = cfg.aligned_layers()
    student = build_student(cfg.student, cfg.features.n_mels)
    dims = {n: {layer: TEACHER_DIM for layer in layers} for n, layers in aligned.items()}
    projectors = build_projectors(aligned, dims, cfg.student.width, cfg.distillation.projector_hidden)
    tap_of = {projector_key(n, layer): tap for n, layers in aligned.items()
              for layer, tap in layer_mapping(TEACHER_DEPTH, layers, cfg.student.blocks).items()}
    return StudentWithProjectors(student, projectors, tap_of).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few iterations only")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help=f"default {OUT} (--smoke: latency-smoke.json)")
    args = ap.parse_args()
    args.out = args.out or (OUT.with_name("latency-smoke.json") if args.smoke else OUT)
    iters, warmup = (20, 5) if args.smoke else (args.iters, max(args.iters // 10, 20))

    cfg = RaykdConfig()
    frames = num_frames(cfg.features.model_copy(update={"clip_seconds": 1.0}))
    model = build(cfg)
    torch.set_num_threads(args.threads)
    x = torch.randn(1, cfg.features.n_mels, frames)

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / E.ONNX_FILE
        onnx.save(E.to_onnx(model.student, cfg.features.n_mels, frames), str(path))
        graph = onnx.load(str(path)).graph
        onnx_elems = sum(int(np.prod(i.dims)) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
        session = E.ort_session(path, threads=args.threads)
        feed = {E.LOGMEL_INPUT: x.numpy()}
        with torch.inference_mode():
            rows = [
                ("onnxruntime: exported student", onnx_elems,
                 time_it(lambda: session.run([E.OUTPUT_NAME], feed), iters, warmup)),
                ("pytorch: student alone", count_params(model.student),
                 time_it(lambda: model.student(x), iters, warmup)),
                ("pytorch: student + projectors", count_params(model),
                 time_it(lambda: model(x), iters, warmup)),
            ]

    base = statistics.median(rows[0][2])
    results = [{"path": name, "params_in_graph": n, "median_ms": statistics.median(t),
                "p90_ms": float(np.percentile(t, 90)), "ratio_to_exported": statistics.median(t) / base}
               for name, n, t in rows]
    report = {
        "what": "latency of one 1-second log-mel window, batch 1",
        "weights": "random (default-config student; latency does not depend on the values)",
        "window": {"seconds": 1.0, "frames": frames, "n_mels": cfg.features.n_mels},
        "projectors": {k: f"{cfg.student.width}->{cfg.distillation.projector_hidden}->{TEACHER_DIM}"
                       for k in model.projectors.keys()},
        "threads": args.threads, "iters": iters, "warmup": warmup, "smoke": args.smoke,
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print(f"1-second window ({frames} frames x {cfg.features.n_mels} mels), batch 1, {args.threads} thread(s), "
          f"{iters} iterations; random weights (default-config student)")
    print(f"projectors (not exported): {', '.join(f'{k} {v}' for k, v in report['projectors'].items())}")
    print(f"{'path':<32}{'params':>9}{'median ms':>11}{'p90 ms':>9}{'x exported':>12}")
    for r in results:
        print(f"{r['path']:<32}{r['params_in_graph']:>9,}{r['median_ms']:>11.3f}{r['p90_ms']:>9.3f}"
              f"{r['ratio_to_exported']:>12.2f}")
    print(f"params = weights in the graph run; the export folds BatchNorm into the convs "
          f"({count_params(model.student):,} student params -> {onnx_elems:,}) and holds no projector")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
