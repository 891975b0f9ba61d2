"""The distillation loop, one function per worker, written out top to bottom (nanoGPT style).

`train_loop_per_worker` is Ray Train's entry point (a `TorchTrainer` with N >= 1 DDP workers,
gloo on CPU, nccl on GPU); `run_loop` is the loop itself, also run in this process when
`scaling.num_workers: 0`. Everything a worker needs arrives prepared in one `LoopJob`
(built by `raykd.pipeline`); the loop only trains, evaluates, checkpoints and logs.

Who does what is decided once: `raykd.loggers.worker_loggers` gives every rank its Ray
report (a barrier) and rank 0 alone MLflow and the caller's printers; `is_rank0` alone
writes checkpoints. Every rank trains on its own disjoint shard and evaluates the (small)
validation set.
"""

from __future__ import annotations

import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from raykd import metrics as M
from raykd.checkpoint import BEST_FILE, CHECKPOINT_FILE, CHECKPOINT_FORMAT
from raykd.config import RaykdConfig, SearchConfig
from raykd.data.augment import spec_augment
from raykd.data.dataset import WaveformSet
from raykd.data.features import LogMel
from raykd.detect import torch_scorer
from raykd.distill.cache import n_views, view_index
from raykd.distill.losses import DistillLoss, layer_mapping
from raykd.distill.targets import Shapes, TeacherTargets, open_targets
from raykd.evaluate import as_metrics, det_record, evaluate_detector
from raykd.fsutil import atomic_dir
from raykd.layer_keys import projector_key
from raykd.loggers import MetricLogger, worker_loggers
from raykd.models.projector import StudentWithProjectors, build_projectors
from raykd.models.student import build_student
from raykd.sessions import RaySession

@dataclass
class LoopJob:
    """Everything one run's workers need, prepared once on the driver. Picklable: it travels to
    Ray workers as is (the config as the typed, already validated object)."""

    cfg: RaykdConfig
    train: Any  # WaveformSet, or a Ray ObjectRef to one (workers on other nodes)
    val: Any
    teacher_dirs: dict[str, str]
    teacher_cache: str | None  # dir of cached teacher outputs for the train split
    run_dir: str
    tracking: dict[str, str] | None = None  # {"uri", "run_id"}: rank 0 logs there
    trace_dir: str | None = None  # tests and debugging: which clips each rank saw


@dataclass
class LoopState:
    """What a checkpoint restores: the epoch, the history and the best model so far."""

    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    best_det: dict[str, Any] | None = None  # the best epoch's DET record (det.json)


# ----------------------------------------------------------------------------- helpers


def peak_memory_mb(device: torch.device) -> tuple[str, float]:
    """(metric name, MB): CUDA max_memory_allocated on GPU, the process peak RSS on CPU."""
    if device.type == "cuda":
        return M.VRAM_PEAK_MB, torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux
    return M.RSS_PEAK_MB, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _all_max(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    """Element-wise max over ranks (flags and peak memory)."""
    if not distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def _sync_buffers(model: nn.Module) -> None:
    """BatchNorm running stats are per rank (each saw its own shard): take rank 0's, so every
    rank evaluates, and rank 0 saves, the same model. Parameters are already equal (DDP)."""
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def shard_indices(n: int, rank: int, world: int, epoch: int, seed: int) -> torch.Tensor:
    """Disjoint shard of a seeded per-epoch permutation; equal length on every rank (DDP)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world
    return perm[rank * per_rank:(rank + 1) * per_rank] if world > 1 else perm


class Divergence:
    """'Loss becomes NaN or grows rapidly': non-finite, or above factor x best for patience steps."""

    def __init__(self, factor: float, patience: int):
        self.factor, self.patience = factor, patience
        self.best = math.inf
        self.bad_steps = 0

    def update(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        self.best = min(self.best, loss)
        self.bad_steps = self.bad_steps + 1 if loss > self.factor * max(self.best, 1e-8) else 0
        return self.bad_steps >= self.patience

    def state_dict(self) -> dict[str, float]:
        return {"best": self.best, "bad_steps": self.bad_steps}

    def load_state_dict(self, s: dict[str, float]) -> None:
        self.best, self.bad_steps = s["best"], int(s["bad_steps"])


def _get(x: Any) -> Any:
    """Data travels as Ray object refs to workers (any node); in-process it is passed as is."""
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


def objective(cfg: RaykdConfig) -> tuple[str, str]:
    """(metric, mode) that picks the best epoch: the study's, else the default search metric."""
    search = cfg.search or SearchConfig()
    return search.metric, search.mode


def build_model(cfg: RaykdConfig, shapes: Shapes) -> tuple[StudentWithProjectors, dict[str, dict[int, int]]]:
    """Student + one projector per aligned layer, and the layer map (teacher layer -> student tap),
    by relative depth unless the config says otherwise."""
    aligned = cfg.aligned_layers()
    mapping = {
        name: layer_mapping(shapes[name][0], layers, cfg.student.blocks,
                            (cfg.distillation.layer_map or {}).get(name))
        for name, layers in aligned.items()
    }
    dims = {name: {l: shapes[name][1](l) for l in layers} for name, layers in aligned.items()}
    projectors = build_projectors(aligned, dims, cfg.student.width, cfg.distillation.projector_hidden)
    tap_of = {projector_key(n, l): tap for n, m in mapping.items() for l, tap in m.items()}
    return StudentWithProjectors(build_student(cfg.student, cfg.features.n_mels), projectors, tap_of), mapping


def get_batch(targets: TeacherTargets, labels: torch.Tensor, b: torch.Tensor, epoch: int, views: int,
              aligned: dict[str, list[int]], device: torch.device):
    """Clips b (B,) of the train split as shown in this epoch: waves (B, S), labels (B,), and the
    teachers' targets for them. The view is the same fixed one with or without the cache."""
    waves, t_out = targets.batch(b, view_index(epoch, b, views), aligned, device)
    return waves, labels[b].to(device), t_out


VAL_BATCH = 128  # streamed windows per forward pass in validation (no faster above, on CPU)


def evaluate(model: nn.Module, data: WaveformSet, logmel: LogMel, cfg: RaykdConfig,
             device: torch.device) -> dict[str, float]:
    """Validation metrics of a whole split (see `validate`)."""
    return validate(model, data, logmel, cfg, device)[0]


@torch.no_grad()
def validate(model: nn.Module, data: WaveformSet, logmel: LogMel, cfg: RaykdConfig,
             device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, DET record). CE loss and accuracy per clip at train.threshold; FRR, FA/h (at
    train.threshold), the operating point for eval.target_fa_per_hour and the DET summary by
    streaming (raykd.detect) over positive clips, negative clips and the split's streams."""
    model.eval()
    probs, losses = [], []
    for i in range(0, len(data), cfg.train.batch_size):
        waves = data.waves[i:i + cfg.train.batch_size].to(device)
        labels = data.labels[i:i + cfg.train.batch_size].to(device)
        logits, _ = model(logmel(waves))
        losses.append(F.cross_entropy(logits, labels, reduction="sum").item())
        probs.append(logits.softmax(-1)[:, 1].cpu())
    clips = M.detection_metrics(torch.cat(probs), data.labels, cfg.train.threshold, cfg.features.clip_seconds)
    report = evaluate_detector(torch_scorer(model, logmel, device), data, cfg.features, cfg.eval,
                               cfg.train.threshold, batch=VAL_BATCH)
    model.train()
    metrics = {M.VAL_LOSS: sum(losses) / max(len(data), 1), M.VAL_ACCURACY: clips.accuracy}
    return {**metrics, **as_metrics(report)}, det_record(report, cfg.eval)


def save_checkpoint(d: Path, cfg: RaykdConfig, model: StudentWithProjectors, optimizer: torch.optim.Optimizer,
                    divergence: Divergence, epoch: int, history: list, best: dict, best_state: dict | None,
                    mapping: dict, best_det: dict | None = None) -> None:
    """A checkpoint carries its own config and architecture: nothing else rebuilds the student."""
    common = {"format": CHECKPOINT_FORMAT, "config": cfg.model_dump(mode="json"), "mapping": mapping}
    state = {**common, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "divergence": divergence.state_dict(), "history": history, "best": best, "best_state": best_state,
             "best_det": best_det}
    torch.save(state, d / CHECKPOINT_FILE)
    if best_state is not None:
        torch.save({**common, "model": best_state, "metrics": best, "det": best_det}, d / BEST_FILE)


def write_checkpoint(final: Path | None, *args: Any) -> str:
    """save_checkpoint into `final` atomically (the old one stays until the new one is complete),
    or, with no `final` (a Ray worker), into a fresh temp dir that Ray persists. Returns the dir."""
    if final is None:
        tmp = Path(tempfile.mkdtemp(prefix="raykd-ckpt-"))
        save_checkpoint(tmp, *args)
        return str(tmp)
    with atomic_dir(final) as tmp:
        save_checkpoint(tmp, *args)
    return str(final)


class Trace:
    """Tests and debugging: which clips each rank saw, its pid, where it (re)started."""

    def __init__(self, root: str | None, rank: int):
        self.root, self.rank = (Path(root) if root else None), rank

    def start(self, epoch: int) -> None:
        if self.root is not None:
            with open(self.root / f"rank{self.rank}.starts", "a") as f:
                f.write(f"{os.getpid()} {epoch}\n")

    def epoch(self, epoch: int, idx: torch.Tensor) -> None:
        if self.root is not None:
            torch.save(idx, self.root / f"rank{self.rank}.epoch{epoch + 1}.idx")

    def final(self, model: StudentWithProjectors) -> None:
        if self.root is not None:
            torch.save(model.student.state_dict(), self.root / f"rank{self.rank}.student.pt")


# ----------------------------------------------------------------------------- the loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train's entry point on each worker (`train_loop_config = {"job": LoopJob}`)."""
    return run_loop(loop_config["job"], RaySession())


def resume(session: Any, model: nn.Module, optimizer: torch.optim.Optimizer, divergence: Divergence) -> LoopState:
    """The latest checkpoint's state (a restarted worker group or a resumed trial), else a fresh one."""
    ckpt = session.get_checkpoint_dir()
    if ckpt is None:
        return LoopState()
    with ckpt as d:
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    divergence.load_state_dict(state["divergence"])
    return LoopState(state["epoch"] + 1, state["history"], state["best"], state.get("best_state"),
                     state.get("best_det"))


def run_loop(job: LoopJob, session: Any, extra_loggers: list[MetricLogger] = ()) -> dict[str, Any]:
    """One worker's distillation run. Returns (rank 0's value reaches the driver) the history."""
    # 1. Who am I. Rank 0 writes checkpoints and tracks; all ranks train and report.
    cfg = job.cfg
    rank, world = session.rank, session.world
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    is_rank0 = rank == 0
    device = session.device(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loggers = worker_loggers(rank, session.in_process, job.tracking, list(extra_loggers))

    # 2. Data (shared through the object store) and the teacher targets (cached or live).
    train_set: WaveformSet = _get(job.train)
    val_set: WaveformSet = _get(job.val)
    targets = open_targets(cfg, train_set.waves, job.teacher_dirs, job.teacher_cache, device)
    logmel = LogMel(cfg.features).to(device)

    # 3. Student + projectors. Seeded here, after the teachers: loading them draws random numbers.
    torch.manual_seed(cfg.seed)
    model, mapping = build_model(cfg, targets.shapes)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss_fn = DistillLoss(cfg.distillation, list(targets.shapes))
    divergence = Divergence(cfg.train.divergence.factor, cfg.train.divergence.patience)

    # 4. Resume from the latest checkpoint, then wrap for DDP (teachers never are).
    state = resume(session, model, optimizer, divergence)
    model = session.prepare(model)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    from raykd.tracking import config_params  # light: mlflow itself is imported by the logger

    for lg in loggers:
        lg.log_config({**config_params(cfg), **{f"layer_map.{n}": str(m) for n, m in mapping.items()}})
    trace = Trace(job.trace_dir, rank)
    trace.start(state.start_epoch)

    # 5. Epochs: train, evaluate, checkpoint (rank 0), log.
    status, history, best, best_state, best_det = "completed", state.history, state.best, state.best_state, \
        state.best_det
    metric, mode = objective(cfg)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000 + rank)
    for epoch in range(state.start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        idx = shard_indices(len(train_set), rank, world, epoch, cfg.seed)
        trace.epoch(epoch, idx)
        status, means = train_epoch(model, core, optimizer, loss_fn, divergence, targets, train_set.labels,
                                    idx, epoch, logmel, g, cfg, device, distributed)
        row, det = epoch_row(core, val_set, logmel, cfg, device, distributed, status, means, epoch, t0)
        history.append(row)
        if status == "completed" and M.better(row[metric], best.get(metric), mode):
            best, best_det = dict(row), {**det, M.EPOCH: epoch + 1}
            best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}
        ckpt_dir = None
        if is_rank0:
            # In process: straight to run_dir/checkpoint (atomically), so a crash keeps the last
            # good one. Under Ray: a temp dir that Ray persists to its storage.
            ckpt_dir = write_checkpoint(Path(job.run_dir) / "checkpoint" if session.in_process else None,
                                        cfg, core, optimizer, divergence, epoch, history, best, best_state, mapping,
                                        best_det)
        for lg in loggers:
            lg.log(row, epoch + 1, ckpt_dir)
        if status != "completed":
            break
    trace.final(core)
    return {"status": status, "history": history, "best": best,
            "mapping": {n: {int(k): v for k, v in m.items()} for n, m in mapping.items()}}


def train_epoch(model: nn.Module, core: StudentWithProjectors, optimizer: torch.optim.Optimizer,
                loss_fn: DistillLoss, divergence: Divergence, targets: TeacherTargets, labels: torch.Tensor,
                idx: torch.Tensor, epoch: int, logmel: LogMel, g: torch.Generator, cfg: RaykdConfig,
                device: torch.device, distributed: bool) -> tuple[str, dict[str, float]]:
    """One pass over this rank's shard: (status, mean of each loss term)."""
    model.train()
    aligned, views, bs = cfg.aligned_layers(), n_views(cfg), cfg.train.batch_size
    sums: dict[str, float] = {}
    steps = 0
    # Under DDP every rank takes the same number of full batches (a short one would desync).
    end = len(idx) - (len(idx) % bs if distributed else 0)
    for i in range(0, end, bs):
        b = idx[i:i + bs]
        try:
            waves, y, t_out = get_batch(targets, labels, b, epoch, views, aligned, device)
            feats = logmel(waves)
            if cfg.data.augment.enabled:
                feats = spec_augment(feats, cfg.data.augment, g)
            logits, projected = model(feats)
            terms = loss_fn(logits, y, projected, t_out, core.tap_of)
            loss, oom = terms["total"], 0.0
        except (torch.cuda.OutOfMemoryError, MemoryError):
            loss, oom = torch.tensor(float("nan")), 1.0
        # Agree across ranks BEFORE backward, so no rank waits in DDP's all-reduce alone.
        bad = 0.0 if oom else float(divergence.update(loss.item()))
        bad, oom = _all_max([bad, oom], device, distributed)
        if oom or bad:
            return ("oom" if oom else "diverged"), {}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        steps += 1
    return "completed", {k: v / max(steps, 1) for k, v in sums.items()}


def epoch_row(core: StudentWithProjectors, val_set: WaveformSet, logmel: LogMel, cfg: RaykdConfig,
              device: torch.device, distributed: bool, status: str, means: dict[str, float], epoch: int,
              t0: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The epoch's metrics (every rank computes the same; report is a barrier) and its DET
    record (None for a failed epoch). A failed epoch reports finite worst values: Optuna and
    ASHA cannot rank NaN."""
    if distributed:
        _sync_buffers(core)
    mem_name, mem_mb = peak_memory_mb(device)
    (mem_mb,) = _all_max([mem_mb], device, distributed)
    row: dict[str, Any] = {M.EPOCH: epoch + 1, mem_name: mem_mb, M.EPOCH_SECONDS: time.perf_counter() - t0}
    det = None
    if status == "completed":
        row.update({M.term_metric(k): v for k, v in means.items()})
        row[M.TRAIN_LOSS] = row.get(M.term_metric("total"), 0.0)
        t1 = time.perf_counter()
        metrics, det = validate(core, val_set, logmel, cfg, device)
        row.update(metrics)
        row[M.VAL_SECONDS] = time.perf_counter() - t1
    else:
        row.update(M.failed_row(cfg.train.divergence.penalty))
    row[M.DIVERGED] = float(status == "diverged")
    row[M.OOM] = float(status == "oom")
    row[M.STATUS] = status
    return row, det
