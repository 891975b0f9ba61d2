"""What Ray Train costs: the distillation loop under TorchTrainer (1 worker) vs plain PyTorch.

    python benchmarks/ray_overhead.py            # full run: 5 epochs x 2 repeats per mode (~3 min)
    python benchmarks/ray_overhead.py --smoke    # 3 epochs, 1 repeat, to check it runs

The same config, data and prepared teachers (the tiny test project: espeak-ng clips, tiny
fine-tuned teachers, teacher-output cache ON, tracking off) trained by `raykd.train.fit` with
  * `scaling.num_workers: 0` -- the loop in this process (plain PyTorch), and
  * `scaling.num_workers: 1` -- a Ray Train V2 TorchTrainer with one worker (gloo),
in alternating order (plain, ray, ray, plain, ...) to cancel drift. Reported, per mode:
  * steady-state epoch time = mean `epoch_seconds` of epochs 2..E (the loop's own metric:
    training steps + validation, not the checkpoint write or the report),
  * epoch cycle = mean time from the start of one epoch to the start of the next (epochs 2..E,
    read from the loop's per-epoch trace files): adds the checkpoint and `report`,
  * start-up = fit wall time - sum(epoch_seconds) (everything that is not an epoch: Ray and
    worker start, object store, loading, per-epoch checkpoint/report, teardown), and its part
    before the first epoch begins.
Ratios Ray / plain are what to read: the machine may be shared (its load is recorded).
Prints a table and writes benchmarks/results/ray_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

OUT = Path(__file__).parent / "results" / "ray_overhead.json"


def worker_threads() -> int:
    """torch's intra-op threads in a 1-CPU Ray actor (what a TorchTrainer worker gets)."""
    import ray

    @ray.remote(num_cpus=1)
    def threads() -> int:
        import torch

        return torch.get_num_threads()

    return ray.get(threads.remote())


def one_run(cfg_dict: dict[str, Any], inputs: Any, run_dir: Path) -> dict[str, Any]:
    """fit() once; wall time, per-epoch seconds and epoch start times (trace file mtimes)."""
    from raykd.config import config_from_dict
    from raykd.pipeline import fit

    cfg = config_from_dict(cfg_dict)
    trace = run_dir / "trace"
    trace.mkdir(parents=True)
    t0 = time.time()
    out = fit(cfg, run_dir, inputs=inputs, trace_dir=trace)
    wall = time.time() - t0
    assert out.status == "completed", out.status
    epochs = [float(r["epoch_seconds"]) for r in out.history]
    # rank0.epoch<k>.idx is written as epoch k begins (the loop's trace), in both modes.
    starts = [(trace / f"rank0.epoch{k}.idx").stat().st_mtime - t0 for k in range(1, len(epochs) + 1)]
    cycles = [b - a for a, b in zip(starts[1:], starts[2:])]  # epoch 2 -> 3, ... (steady state)
    return {"wall_s": wall, "epoch_seconds": epochs, "epoch_starts_s": starts,
            "steady_epoch_s": statistics.mean(epochs[1:]), "steady_cycle_s": statistics.mean(cycles) if cycles else None,
            "before_first_epoch_s": starts[0], "not_epoch_s": wall - sum(epochs),
            "after_last_epoch_s": wall - starts[-1] - epochs[-1],
            "val_accuracy": out.history[-1]["val_accuracy"], "load": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="3 epochs, 1 repeat")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="(plain, ray) pairs, order alternating")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/raykd-bench"),
                    help="data, teachers, cache and runs (shared with the other benchmarks: keyed, reused)")
    ap.add_argument("--out", type=Path, default=None, help=f"default {OUT} (--smoke: ray_overhead-smoke.json)")
    args = ap.parse_args()
    if args.smoke:
        args.epochs, args.repeats = 3, 1
    args.out = args.out or (OUT.with_name("ray_overhead-smoke.json") if args.smoke else OUT)

    import ray
    import torch

    from raykd.config import config_from_dict
    from raykd.pipeline import prepare
    from raykd.presets import tiny_config

    load_start = os.getloadavg()
    root = args.workdir.resolve()
    base = tiny_config(root, **{"tracking.enabled": False, "teacher_cache.enabled": True,
                                "train.epochs": args.epochs})
    t = time.time()
    inputs = prepare(config_from_dict(base))  # data + teachers + cache, once (reused when present)
    prepare_s = time.time() - t
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    w_threads = worker_threads()
    # One thread count for both modes, so the ratio is about Ray, not about intra-op threads.
    torch.set_num_threads(w_threads)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    order = []
    for r in range(args.repeats):
        order += [0, 1] if r % 2 == 0 else [1, 0]
    runs: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for i, workers in enumerate(order):
        cfg = {**base, "scaling": {"num_workers": workers}}
        run_dir = root / "ray_overhead" / f"{stamp}-{i}-w{workers}"
        res = one_run(cfg, inputs, run_dir)
        runs[workers].append(res)
        print(f"  run {i + 1}/{len(order)} num_workers={workers}: wall {res['wall_s']:.1f}s, "
              f"steady epoch {res['steady_epoch_s']:.2f}s, not-epoch {res['not_epoch_s']:.1f}s", flush=True)
    ray.shutdown()

    def summary(rs: list[dict[str, Any]]) -> dict[str, float]:
        keys = ("steady_epoch_s", "steady_cycle_s", "not_epoch_s", "before_first_epoch_s", "after_last_epoch_s",
                "wall_s")
        return {k: statistics.mean(r[k] for r in rs if r[k] is not None) for k in keys}

    plain, ray_s = summary(runs[0]), summary(runs[1])
    ratios = {k: ray_s[k] / plain[k] for k in plain}
    report = {
        "what": "distillation loop: Ray Train V2 TorchTrainer (1 worker, gloo) vs plain PyTorch in one process",
        "project": "tiny test project (tests/conftest.tiny_config), teacher cache ON, tracking off",
        "train_clips": len(inputs.train), "val_clips": len(inputs.val),
        "batch_size": base["train"]["batch_size"], "epochs": args.epochs, "repeats": args.repeats,
        "order": ["plain" if w == 0 else "ray" for w in order],
        "torch_threads_both_modes": w_threads, "ray_init": {"num_cpus": 2},
        "definitions": {
            "steady_epoch_s": "mean epoch_seconds of epochs 2..E (steps + validation)",
            "steady_cycle_s": "mean start-to-start time of epochs 2..E-1 (adds checkpoint write + report)",
            "not_epoch_s": "fit wall - sum(epoch_seconds): start-up, per-epoch checkpoint/report, teardown",
            "before_first_epoch_s": "fit call -> first epoch begins",
            "after_last_epoch_s": "last epoch's epoch_seconds end -> fit returns (last checkpoint, report, teardown)",
        },
        "plain": plain, "ray": ray_s, "ratio_ray_over_plain": ratios,
        "ray_minus_plain_s": {k: ray_s[k] - plain[k] for k in plain},
        "runs": {"plain": runs[0], "ray": runs[1]}, "prepare_s": prepare_s,
        "smoke": args.smoke, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "ray_version": ray.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")

    print(f"\ntiny project: {len(inputs.train)} train / {len(inputs.val)} val clips, batch "
          f"{base['train']['batch_size']}, {args.epochs} epochs x {args.repeats} repeat(s) per mode, teacher cache on, "
          f"{w_threads} torch thread(s) in both modes; load {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cpus")
    print(f"{'seconds (mean)':<34}{'plain':>9}{'ray 1w':>9}{'ray/plain':>11}{'ray-plain':>11}")
    names = {"steady_epoch_s": "steady epoch (epoch_seconds)", "steady_cycle_s": "steady epoch cycle (+ckpt/report)",
             "before_first_epoch_s": "start-up before epoch 1", "after_last_epoch_s": "after the last epoch",
             "not_epoch_s": "wall - sum(epoch_seconds)",
             "wall_s": "fit wall time"}
    for k, name in names.items():
        print(f"{name:<34}{plain[k]:>9.2f}{ray_s[k]:>9.2f}{ratios[k]:>11.2f}{ray_s[k] - plain[k]:>11.2f}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
