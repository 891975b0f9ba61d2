"""The driver side of a distillation run: prepare the data, the teachers and their output cache
once, then run the worker loop (`raykd.train`) in this process or as a Ray Train `TorchTrainer`.

Used by `raykd train`, `raykd retrain` and every Tune trial. The config arrives validated
(`load_config`) and travels to workers as the typed object inside a `LoopJob`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from raykd.config import RaykdConfig, absolute_paths
from raykd.data.augment import load_noise_bank
from raykd.data.dataset import WaveformSet, dataset_fingerprint, ensure_dataset, load_split
from raykd.distill.targets import load_teachers
from raykd.fsutil import atomic_dir
from raykd.loggers import CallbackLogger, MetricLogger
from raykd.sessions import InProcessSession, resolve_device
from raykd.train import LoopJob, run_loop, train_loop_per_worker


@dataclass
class Inputs:
    """What a run needs that is prepared once, on the driver."""

    train: WaveformSet
    val: WaveformSet
    teacher_dirs: dict[str, str]
    dataset_key: str
    teacher_cache: str | None = None  # dir of cached teacher outputs for the train split


@dataclass
class TrainOutcome:
    status: str  # completed | diverged | oom
    history: list[dict[str, Any]]
    best: dict[str, Any]  # metrics of the best epoch
    checkpoint_dir: Path | None  # holds checkpoint.pt (last) and best.pt
    mapping: dict[str, dict[int, int]] = field(default_factory=dict)


def prepare(cfg: RaykdConfig, progress: Callable[[str], None] | None = None) -> Inputs:
    """Dataset (synthesised if missing) and fine-tuned teachers (stored once, keyed by config + data)."""
    from raykd.models.teachers import check_pretrained
    from raykd.teacher_stage import ensure_teachers

    check_pretrained(cfg)  # a bad hub id or layer fails before any data or fine-tuning
    ensure_dataset(cfg)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    key = dataset_fingerprint(cfg)
    dirs: dict[str, str] = {}
    cache = None
    if cfg.distillation.enabled and cfg.teachers:
        device = resolve_device(cfg)
        dirs = {n: str(p) for n, p in ensure_teachers(cfg, train, val, key, device, progress).items()}
        if cfg.teacher_cache.enabled:
            cache = str(ensure_cache(cfg, train, dirs, key, device, progress))
    return Inputs(train, val, dirs, key, cache)


def ensure_cache(cfg: RaykdConfig, train: WaveformSet, dirs: dict[str, str], dataset_key: str,
                 device: torch.device, progress: Callable[[str], None] | None = None) -> Path:
    """The teacher-output cache for this (teachers, data, views, layers): built once, then reused."""
    from raykd.distill.cache import META, build_cache, cache_key

    key = cache_key(cfg, dirs, dataset_key)
    root = Path(cfg.cache_dir) / "teacher_outputs" / key
    if (root / META).is_file():
        return root
    noise_bank = load_noise_bank(cfg.data.augment, cfg.features.sample_rate, cfg.features.clip_samples)
    return build_cache(cfg, train, load_teachers(dirs, device), key, device, noise_bank, progress)


def ensure_ray(address: str | None = None) -> None:
    """Connect to a cluster (address) or start a local Ray, once per process."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


def run_distillation(cfg: RaykdConfig, inputs: Inputs, run_dir: Path, callbacks: list | None = None,
                     loggers: list[MetricLogger] = (), tracking: dict[str, str] | None = None,
                     trace_dir: Path | None = None, get_checkpoint: Callable[[], Any] | None = None) -> TrainOutcome:
    """Run the loop: in this process (num_workers 0, with the caller's `loggers`) or as a Ray
    Train V2 TorchTrainer with N DDP workers (Ray `callbacks`, e.g. Tune's report); leaves
    run_dir/checkpoint (latest state + best model)."""
    job = LoopJob(cfg, inputs.train, inputs.val, inputs.teacher_dirs, inputs.teacher_cache,
                  str(run_dir.resolve()), tracking, str(trace_dir) if trace_dir else None)
    if cfg.scaling.num_workers == 0:
        return finish(run_loop(job, InProcessSession(get_checkpoint), list(loggers)), None, run_dir, tracking)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers on other nodes read the clips from the object store, not from this disk.
    if not isinstance(job.train, ray.ObjectRef):
        job.train, job.val = ray.put(job.train), ray.put(job.val)
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name="ray", storage_path=str(run_dir.resolve()),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    value = result.return_value or {}
    if result.checkpoint is None:
        return finish(value, None, run_dir, tracking)
    with result.checkpoint.as_directory() as d:
        return finish(value, Path(d), run_dir, tracking)


def finish(value: dict[str, Any], src: Path | None, run_dir: Path,
           tracking: dict[str, str] | None = None) -> TrainOutcome:
    """Copy Ray's final checkpoint to run_dir/checkpoint (atomically), write history.json, and
    the best model's DET (det.json + det.png, logged on the run's MLflow run when tracked)."""
    ckpt_dir = run_dir / "checkpoint"
    if src is not None:
        with atomic_dir(ckpt_dir) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    ckpt_dir = ckpt_dir if ckpt_dir.is_dir() else None
    history = value.get("history", [])
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    write_det(ckpt_dir, run_dir, tracking)
    return TrainOutcome(value.get("status", "completed"), history, value.get("best", {}), ckpt_dir,
                        value.get("mapping", {}))


DET_FILE, DET_PLOT = "det.json", "det.png"


def write_det(ckpt_dir: Path | None, run_dir: Path, tracking: dict[str, str] | None) -> list[Path]:
    """run_dir/det.json and det.png from the DET that best.pt carries (measured when that epoch
    was validated: nothing is scored again). Returns the files written (none without a DET)."""
    from raykd.checkpoint import BEST_FILE
    from raykd.plots import det_plot

    best = ckpt_dir / BEST_FILE if ckpt_dir is not None else None
    det = torch.load(best, map_location="cpu", weights_only=True).get("det") if best and best.is_file() else None
    if not det:
        for stale in (DET_FILE, DET_PLOT):  # from an earlier run in this folder
            (run_dir / stale).unlink(missing_ok=True)
        return []
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DET_FILE).write_text(json.dumps(det, indent=1))
    paths = [run_dir / DET_FILE, det_plot(det, run_dir / DET_PLOT)]
    if tracking:
        from raykd import tracking as T

        T.log_artifacts(tracking["uri"], tracking["run_id"], paths, "det")
    return paths


def fit(cfg: RaykdConfig, run_dir: Path, inputs: Inputs | None = None,
        on_epoch: Callable[[dict], None] | None = None, progress: Callable[[str], None] | None = None,
        trace_dir: Path | None = None) -> TrainOutcome:
    """One distillation run through Ray Train; returns the outcome and leaves run_dir/checkpoint."""
    from raykd import tracking as T

    cfg = absolute_paths(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    uri = T.tracking_uri(cfg) if cfg.tracking.enabled else None
    if uri:
        T.check_reachable(uri)  # before any expensive work
    inputs = inputs or prepare(cfg, progress)
    if cfg.scaling.num_workers > 0:
        ensure_ray()
    track = None
    if uri:
        exp = T.experiment_id(uri, cfg.tracking.experiment)
        run_id = T.client(uri).create_run(exp, tags={T.KIND_TAG: "train", "mlflow.runName": run_dir.name}).info.run_id
        track = {"uri": uri, "run_id": run_id}
    loggers = [CallbackLogger(on_epoch)] if on_epoch is not None else []
    try:
        out = run_distillation(cfg, inputs, run_dir, loggers=loggers, tracking=track, trace_dir=trace_dir)
    except BaseException:
        if track:
            T.MlflowLogger(**track).close("FAILED")  # never a run left RUNNING forever
        raise
    if track:
        log = T.MlflowLogger(**track)
        log.set_tags({T.STATUS_TAG: out.status, T.CHECKPOINT_TAG: str(out.checkpoint_dir)})
        log.close("FINISHED" if out.status == "completed" else "FAILED")
    return out
