"""The GPU check (issue 13): base-sized teachers on the real GPU path, one command.

    python benchmarks/gpu.py                # on a CUDA machine (~4-6 min on one H200)
    python benchmarks/gpu.py --cpu-dry-run  # every step at a tiny size on CPU (proves it runs)
    benchmarks/gpu.sh wheels / run          # on a device machine: see benchmarks/README.md

Every run is `raykd.pipeline.fit` / `raykd.tune.run_study` as a user runs them: Ray Train
`TorchTrainer` workers (`scaling.use_gpu: true`, one worker per GPU, so nccl), tracking off,
random synthetic clips (noise; positives carry a chirp) written as WAVs with a manifest CSV,
and two teachers built from architecture configs with random weights (`finetune.epochs: 0`:
cost does not depend on the values): a wav2vec2-base-sized Wav2Vec2 (12 blocks, 768-d, 12
heads, 3072 FFN, 512x7 CNN) and a 12-block 512-d Conformer.

  ddp    cached vs live teacher targets: two 2-epoch runs, layers [2, 4, 6]; samples/s of the
         last epoch (training only), vram_peak_mb, the cache's build time
  vram   vram_peak_mb against the number of aligned wav2vec2 layers (0, 1, 2, 4, 8), live
         targets, one epoch each (the user guide's memory warning, measured)
  oom    a 3-trial study (live targets, augmentation off) whose first trial's batch is too large for the GPU
         (two (B, 512, S/5) fp32 activations of the teacher's first conv layer exceed its
         memory): a real torch.cuda.OutOfMemoryError ends that trial as status `oom`, the
         other two complete

Writes benchmarks/results/gpu.json (device name, torch/ray versions, timestamp). No CUDA
device: one line, exit 2. `--cpu-dry-run` writes benchmarks/results/gpu-dryrun.json instead,
marked "dry run on CPU, not a GPU measurement" (it cannot provoke a GPU out-of-memory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: teachers are built, never downloaded
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's raykd, also without an install

RESULTS = Path(__file__).parent / "results"
DRY_NOTE = "dry run on CPU, not a GPU measurement"
SR, CLIP_S = 16_000, 1.5
CONV_FRAMES_PER_CLIP = int(SR * CLIP_S) // 5  # the first conv layer (kernel 10, stride 5)

# wav2vec2-base (facebook/wav2vec2-base's config): 12 blocks, 768-d, ~95M parameters.
W2V_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "conv_dim": [512] * 7,
            "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}
CONFORMER_BASE = {"hidden_size": 512, "num_hidden_layers": 12, "num_attention_heads": 8,
                  "intermediate_size": 2048, "conv_dim": [512] * 7, "conv_depthwise_kernel_size": 31,
                  "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}
SWEEP = {0: [], 1: [6], 2: [4, 8], 4: [3, 6, 9, 12], 8: [2, 3, 4, 6, 7, 8, 10, 12]}
ALIGNED = [2, 4, 6]  # the guide's recommendation

# Sizes: train clips, val clips, batch, epochs of the ddp runs, sweep points, study batches.
GPU = {"train": 1024, "val": 96, "batch": 64, "epochs": 2, "sweep": list(SWEEP), "study_batches": [256, 512]}
DRY = {"train": 32, "val": 12, "batch": 8, "epochs": 1, "sweep": [0, 2], "study_batches": [8]}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data


def write_clips(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Random 1.5 s clips as 16-bit WAVs and a manifest CSV (path,label,speaker,split); half
    positives (noise + a rising chirp), one speaker per clip, and one 10 s negative stream in
    val (scored for false accepts per hour, as a user's long negative is). Returns the CSV."""
    import numpy as np
    import soundfile as sf

    csv = root / "manifest.csv"
    if csv.is_file():
        return csv
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * CLIP_S)) / SR
    rows = ["path,label,speaker,split"]
    n_test = max(4, n_val // 4)
    for i, split in enumerate(["train"] * n_train + ["val"] * n_val + ["test"] * n_test):
        label = i % 2
        x = 0.05 * rng.standard_normal(t.size)
        if label:
            f0 = rng.uniform(300, 900)
            x += 0.3 * np.sin(2 * np.pi * (f0 * t + 400 * t ** 2))
        name = f"wav/{split}{i:05d}.wav"
        sf.write(str(root / name), x.astype(np.float32), SR, subtype="PCM_16")
        rows.append(f"{name},{label},s{i},{split}")
    sf.write(str(root / "wav/stream.wav"), (0.05 * rng.standard_normal(SR * 10)).astype(np.float32), SR,
             subtype="PCM_16")
    rows.append("wav/stream.wav,0,stream,val")
    csv.write_text("\n".join(rows) + "\n")
    return csv


# ----------------------------------------------------------------------------- configs


def base_config(work: Path, manifest: Path, gpu: bool, n_gpus: int, size: dict[str, Any]) -> dict[str, Any]:
    """A complete raykd config dict: base-sized teachers on GPU, the tiny preset's on CPU."""
    from raykd.presets import TINY_TEACHER

    w2v = W2V_BASE if gpu else {**TINY_TEACHER, "num_hidden_layers": 12}
    conf = CONFORMER_BASE if gpu else {**TINY_TEACHER, "num_hidden_layers": 2, "conv_depthwise_kernel_size": 7}
    cpus = max(1, min(4, (os.cpu_count() or 2) // max(n_gpus, 1) - 1)) if gpu else 1
    return {
        "name": "gpu", "seed": 0,
        "cache_dir": str(work / "cache"), "storage_path": str(work / "runs"),
        # reverb off: simulated rooms need pyroomacoustics, which the GPU image lacks
        "data": {"source": "manifest", "manifest": str(manifest), "augment": {"reverb_prob": 0.0}},
        "teachers": {"wav2vec2": {"kind": "wav2vec2", "arch": w2v, "finetune": {"epochs": 0}},
                     "conformer": {"kind": "conformer", "arch": conf, "finetune": {"epochs": 0}}},
        "distillation": {"alignment_layers": ALIGNED},
        "train": {"epochs": size["epochs"], "batch_size": size["batch"], "device": "cuda" if gpu else "cpu"},
        "scaling": {"num_workers": max(n_gpus, 1), "use_gpu": gpu, "cpus_per_worker": cpus, "gpus_per_worker": 1},
        "teacher_cache": {"enabled": True, "max_gb": 32.0},
        "tracking": {"enabled": False},
    }


def with_keys(raw: dict[str, Any], **over: Any) -> dict[str, Any]:
    """A deep copy of raw with dotted keys (a__b means a.b) set."""
    out = json.loads(json.dumps(raw))
    for key, value in over.items():
        node = out
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def samples_per_epoch(n: int, world: int, batch: int) -> int:
    """Clips one epoch trains on (raykd.train.train_epoch: equal full batches per rank under DDP)."""
    if world == 1:
        return n
    per_rank = n // world
    return (per_rank - per_rank % batch) * world


def run_fit(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One Ray Train run; its per-epoch rows (memory, epoch time), timed."""
    import torch

    from raykd.config import config_from_dict
    from raykd.pipeline import fit, prepare

    cfg = config_from_dict(raw)
    t = time.time()
    inputs = prepare(cfg)  # teachers (and the cache) are keyed: built by the first run that needs them
    prepare_s = time.time() - t
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the driver built teachers/cache on the GPU: give it back to the workers
    t = time.time()
    out = fit(cfg, run_dir, inputs=inputs)
    mem = "vram_peak_mb" if raw["scaling"]["use_gpu"] else "rss_peak_mb"
    world, batch = raw["scaling"]["num_workers"], raw["train"]["batch_size"]
    n = samples_per_epoch(len(inputs.train), world, batch)
    epochs = [{"epoch": r["epoch"], "status": r["status"], "epoch_seconds": r["epoch_seconds"],
               "samples_per_s": n / r["epoch_seconds"], mem: r.get(mem)} for r in out.history]
    return {"status": out.status, "prepare_s": prepare_s, "fit_s": time.time() - t, "world": world,
            "train_clips": len(inputs.train), "samples_per_epoch": n, "epochs": epochs,
            "peak_mb": max((e[mem] or 0.0) for e in epochs) if epochs else None}


# ----------------------------------------------------------------------------- the steps


def step_ddp(raw: dict[str, Any]) -> dict[str, Any]:
    """Live then cached targets, same config otherwise; samples/s of the last epoch."""
    out: dict[str, Any] = {"aligned_layers": ALIGNED,
                           "backend": "nccl" if raw["scaling"]["use_gpu"] else "gloo"}
    for mode, on in (("live", False), ("cached", True)):
        log(f"ddp: {mode} teacher targets, {raw['scaling']['num_workers']} worker(s)")
        r = run_fit(with_keys(raw, teacher_cache__enabled=on), Path(raw["storage_path"]) / f"ddp-{mode}")
        r["samples_per_s"] = r["epochs"][-1]["samples_per_s"] if r["epochs"] else None
        out[mode] = r
    live, cached = out["live"]["samples_per_s"], out["cached"]["samples_per_s"]
    out["cached_over_live"] = cached / live if live and cached else None
    return out


def step_vram(raw: dict[str, Any], points: list[int]) -> list[dict[str, Any]]:
    """Peak memory per number of aligned wav2vec2 layers, live targets, one epoch each."""
    rows = []
    for k in points:
        layers = SWEEP[k]
        log(f"vram: {k} aligned layer(s) {layers}")
        cfg = with_keys(raw, teacher_cache__enabled=False, train__epochs=1,
                        distillation__alignment_layers=layers, distillation__feature_alignment_enabled=bool(layers))
        r = run_fit(cfg, Path(raw["storage_path"]) / f"vram-{k}")
        rows.append({"aligned": k, "layers": layers, "status": r["status"], "peak_mb": r["peak_mb"],
                     "samples_per_s": r["epochs"][-1]["samples_per_s"] if r["epochs"] else None})
    return rows


def oom_batch(gpu: bool, n_dry: int) -> int:
    """A batch whose first-conv-layer activations alone do not fit: 1.1 x the GPU's memory
    over two (512, S/5) fp32 tensors per clip (the conv output and its LayerNorm, both alive)."""
    if not gpu:
        return n_dry
    import torch

    per_clip = 2 * 512 * CONV_FRAMES_PER_CLIP * 4
    return math.ceil(1.1 * torch.cuda.get_device_properties(0).total_memory / per_clip)


def step_oom(raw: dict[str, Any], work: Path, gpu: bool, size: dict[str, Any]) -> dict[str, Any]:
    """A 3-trial study, one trial per GPU, the first with a batch too large; the study goes on."""
    import yaml

    from raykd.config import config_from_dict
    from raykd.tune import run_study

    big = oom_batch(gpu, size["train"])
    # Its own data: the too-large batch needs that many training clips.
    n = max(big, size["train"])
    manifest = write_clips(work / f"data-oom-{n}", n, size["val"], seed=1)
    batches = [big] + size["study_batches"]
    log(f"oom: study of {len(batches)} trials, batches {batches} ({big} x 1.5 s clips on "
        f"{'the GPU' if gpu else 'CPU: no GPU memory to exhaust'})")
    # Augmentation off: live views are made per clip on the worker's CPU (~5 ms each), which for
    # thousands of clips would cost a minute before the GPU is even asked for memory.
    raw = with_keys(raw, name=f"oom-{time.strftime('%H%M%S')}", teacher_cache__enabled=False,
                    data__manifest=str(manifest), data__augment__enabled=False, scaling__num_workers=1)
    raw["search"] = {"params": {"train.batch_size": {"type": "categorical", "choices": batches}},
                     "initial_points": [{"train.batch_size": b} for b in batches],
                     "num_samples": len(batches), "max_concurrent": 1, "trial_epochs": 1,
                     "asha": {"enabled": False}, "seed": 0}
    path = work / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    t = time.time()
    out = run_study(config_from_dict(raw), path)
    trials = sorted(({"number": r.get("number"), "batch_size": r["params"].get("train.batch_size"),
                      "status": r["status"], "error": r.get("error")} for r in out.rows),
                    key=lambda r: r["number"] if r["number"] is not None else 99)
    statuses = [r["status"] for r in trials]
    return {"oom_batch": big, "study_s": time.time() - t, "trials": trials,
            "oom_trials": statuses.count("oom"), "completed_trials": statuses.count("completed"),
            # on CPU nothing can run out of GPU memory: only the plumbing is checked
            "study_went_on": (statuses.count("completed") == len(batches) - 1 and statuses[0] == "oom")
            if gpu else None}


# ----------------------------------------------------------------------------- report


def environment(gpu: bool) -> dict[str, Any]:
    import ray
    import torch
    import transformers

    env = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
           "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
           "transformers": transformers.__version__, "cpus": os.cpu_count(), "load": list(os.getloadavg())}
    if gpu:
        env.update(device=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                   gpu_memory_mb=torch.cuda.get_device_properties(0).total_memory / 2**20,
                   cuda=torch.version.cuda, nccl=str(torch.cuda.nccl.version()))
    else:
        env.update(device="cpu", gpus=0, note=DRY_NOTE)
    return env


def table(res: dict[str, Any]) -> str:
    mem = "vram_peak_mb" if res["gpu"] else "rss_peak_mb (CPU)"
    d = res.get("ddp", {})
    lines = [f"GPU check on {res['env']['device']} ({res['env'].get('gpus', 0)} GPU) -- "
             f"torch {res['env']['torch']}, ray {res['env']['ray']}" + ("" if res["gpu"] else f" -- {DRY_NOTE}")]
    if d:
        lines.append(f"\nDDP ({d['backend']}, {d['live']['world']} worker(s)), layers {d['aligned_layers']}:")
        lines.append(f"  {'targets':8} {'samples/s':>10} {mem:>18} {'prepare s':>10} {'fit s':>7}")
        for m in ("live", "cached"):
            r = d[m]
            lines.append(f"  {m:8} {r['samples_per_s'] or 0:10.1f} {r['peak_mb'] or 0:18.0f} "
                         f"{r['prepare_s']:10.1f} {r['fit_s']:7.1f}")
        lines.append(f"  cached / live throughput: {d['cached_over_live'] or 0:.2f}x")
    if res.get("vram"):
        lines.append(f"\n{mem} vs aligned wav2vec2 layers (live targets):")
        lines += [f"  {r['aligned']:2d} layers {str(r['layers']):28} {r['peak_mb'] or 0:10.0f}  {r['status']}"
                  for r in res["vram"]]
    if res.get("oom"):
        o = res["oom"]
        lines.append(f"\nout-of-memory study (batch {o['oom_batch']} first), {o['study_s']:.0f} s:")
        lines += [f"  trial {t['number']}: batch {t['batch_size']:6d}  {t['status']}" for t in o["trials"]]
        lines.append(f"  study went on after the oom: {o['study_went_on']}" if res["gpu"] else
                     "  (CPU: no GPU memory to exhaust, so no oom; the study's plumbing ran)")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-dry-run", action="store_true", help="every step at a tiny size on CPU (no GPU numbers)")
    ap.add_argument("--workdir", default="/tmp/raykd-gpu", help="data, teachers, caches, runs")
    ap.add_argument("--steps", default="ddp,vram,oom", help="comma-separated subset of ddp,vram,oom")
    args = ap.parse_args()
    steps = args.steps.split(",")
    unknown = sorted(set(steps) - {"ddp", "vram", "oom"})
    if unknown:
        ap.error(f"--steps: unknown step(s) {unknown} (ddp, vram, oom)")
    import torch

    gpu = not args.cpu_dry_run
    if gpu and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); "
              "run it on a GPU machine, or use --cpu-dry-run", file=sys.stderr)
        return 2
    import ray

    size, n_gpus = (GPU, torch.cuda.device_count()) if gpu else (DRY, 0)
    work = Path(args.workdir) / ("gpu" if gpu else "dry")
    # GPUs named explicitly: a Ray that failed to detect them would leave every GPU worker pending.
    ray.init(num_cpus=None if gpu else 2, num_gpus=n_gpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    res: dict[str, Any] = {"gpu": gpu, "note": None if gpu else DRY_NOTE, "env": environment(gpu),
                           "teachers": {"wav2vec2": W2V_BASE, "conformer": CONFORMER_BASE} if gpu else "tiny preset",
                           "sizes": size, "step_seconds": {}}
    data = write_clips(work / f"data-{size['train']}-{size['val']}", size["train"], size["val"])
    raw = base_config(work, data, gpu, n_gpus, size)
    # A fresh folder per invocation: a run dir that exists would resume its finished run.
    raw["storage_path"] = str(work / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    out = RESULTS / ("gpu.json" if gpu else "gpu-dryrun.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    for step in steps:
        t = time.time()
        if step == "ddp":
            res["ddp"] = step_ddp(raw)
        elif step == "vram":
            res["vram"] = step_vram(raw, size["sweep"])
        else:
            res["oom"] = step_oom(raw, work, gpu, size)
        res["step_seconds"][step] = time.time() - t
        res["complete"] = step == steps[-1]
        res["env"]["load_after"] = list(os.getloadavg())
        # after every step: a run cut short by the device's time limit keeps what it measured
        out.write_text(json.dumps(res, indent=1, default=str))
    ray.shutdown()
    print(table(res))
    log(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
