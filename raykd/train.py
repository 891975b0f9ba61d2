"""The distillation loop, one function per worker, run by Ray Train.

`train_loop_per_worker` is the whole loop written out top to bottom (nanoGPT style). It runs
under `ray.train.torch.TorchTrainer` (Ray Train V2) with N >= 1 DDP workers (gloo on CPU,
nccl on GPU), or, with `scaling.num_workers: 0`, in this process (debugging, and cheap Tune
trials on a laptop). `fit` is what the CLI calls; `run_distillation` is one run (also one
Tune trial).

Who does what, decided once by `is_rank0`: rank 0 writes checkpoints and talks to MLflow;
every rank trains on its own disjoint shard, evaluates the (small) validation set and
calls `ray.train.report` the same number of times (it is a barrier).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from raykd import metrics as M
from raykd.checkpoint import BEST_FILE, CHECKPOINT_FILE, CHECKPOINT_FORMAT
from raykd.config import RaykdConfig, config_from_dict
from raykd.data.augment import load_noise_bank, spec_augment
from raykd.data.dataset import WaveformSet
from raykd.data.features import LogMel
from raykd.distill.cache import (
    TeacherCache, augment_views, n_views, stored, student_frames, teacher_targets, view_index,
)
from raykd.distill.losses import DistillLoss, layer_mapping
from raykd.models.projector import build_projectors
from raykd.models.student import build_student
from raykd.models.teachers import Teacher, load_teacher



class StudentWithProjectors(nn.Module):
    """What is trained and DDP-synchronised: the student and one projector per aligned layer.

    The projectors are applied in `forward` so DDP sees (and all-reduces) their gradients.
    Only `student` is ever exported.
    """

    def __init__(self, student: nn.Module, projectors: nn.ModuleDict, tap_of: dict[str, int]):
        super().__init__()
        self.student = student
        self.projectors = projectors
        self.tap_of = tap_of  # "<teacher>.<layer>" -> student tap index

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """feats (B, n_mels, T) -> logits (B, 2), {key: projected (B, T', D_teacher)}."""
        logits, taps = self.student(feats)
        projected = {
            key: proj(taps[self.tap_of[key]].transpose(1, 2)) for key, proj in self.projectors.items()
        }
        return logits, projected


# ----------------------------------------------------------------------------- outcome


@dataclass
class TrainOutcome:
    status: str  # completed | diverged | oom
    history: list[dict[str, Any]]
    best: dict[str, Any]  # metrics of the best epoch
    checkpoint_dir: Path | None  # holds checkpoint.pt (last) and best.pt
    mapping: dict[str, dict[int, int]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def resolve_device(cfg: RaykdConfig) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and cfg.scaling.use_gpu):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.train.device == "auto" and torch.cuda.is_available() and cfg.scaling.num_workers == 0:
        return torch.device("cuda")
    return torch.device("cpu")


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


def load_teachers(dirs: dict[str, str], device: torch.device) -> dict[str, Teacher]:
    """Frozen teachers: eval mode, no gradients, never DDP-wrapped."""
    out = {}
    for name, d in dirs.items():
        t = load_teacher(Path(d)).to(device).eval()
        t.requires_grad_(False)
        out[name] = t
    return out


def _get(x: Any) -> Any:
    """Data travels as Ray object refs to workers (any node); in-process it is passed as is."""
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


@torch.no_grad()
def evaluate(model: nn.Module, data: WaveformSet, logmel: LogMel, cfg: RaykdConfig,
             device: torch.device) -> dict[str, float]:
    """CE loss, accuracy, FRR and false accepts per hour on a whole split."""
    model.eval()
    probs, losses = [], []
    for i in range(0, len(data), cfg.train.batch_size):
        waves = data.waves[i:i + cfg.train.batch_size].to(device)
        labels = data.labels[i:i + cfg.train.batch_size].to(device)
        logits, _ = model(logmel(waves))
        losses.append(F.cross_entropy(logits, labels, reduction="sum").item())
        probs.append(logits.softmax(-1)[:, 1].cpu())
    model.train()
    det = M.detection_metrics(torch.cat(probs), data.labels, cfg.train.threshold, cfg.features.clip_seconds)
    return {M.VAL_LOSS: sum(losses) / max(len(data), 1), M.VAL_ACCURACY: det.accuracy,
            M.VAL_FRR: det.frr, M.VAL_FA_PER_HOUR: det.fa_per_hour}


# ----------------------------------------------------------------------------- the loop


class RaySession:
    """A Ray Train worker: rank and world from its context; report/checkpoint through Ray."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def get_checkpoint_dir(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.as_directory() if ckpt is not None else None

    def report(self, metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        import ray.train

        # Ray copies the checkpoint to its storage; the local temp copy is then removed.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None,
                         delete_local_checkpoint_after_upload=True)


class InProcessSession:
    """`scaling.num_workers: 0`: the loop runs in this process (debugging, and inside a Tune
    trial where Ray Train's context API is not available); checkpoints stay on local disk."""

    rank, world = 0, 1

    def __init__(self, get_checkpoint: Callable[[], Any] | None = None):
        self._get_checkpoint = get_checkpoint  # a resumed Tune trial hands back its last checkpoint

    def get_checkpoint_dir(self):
        ckpt = self._get_checkpoint() if self._get_checkpoint else None
        return ckpt.as_directory() if ckpt is not None else None

    def report(self, metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        pass


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """One worker's distillation run. Returns (rank 0's value reaches the driver) the history."""
    # 1. Who am I. Rank 0 writes checkpoints and tracks; all ranks train and report.
    cfg = config_from_dict(loop_config["config"])
    in_process = cfg.scaling.num_workers == 0
    session = InProcessSession(loop_config.get("get_checkpoint")) if in_process else RaySession()
    rank, world = session.rank, session.world
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    is_rank0 = rank == 0
    if in_process:
        device = resolve_device(cfg)
    else:
        import ray.train.torch

        device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # 2. Data (shared through the object store), and the teachers: their cached outputs
    #    (memory-mapped, built once on the driver) or the frozen models themselves.
    train_set: WaveformSet = _get(loop_config["train"])
    val_set: WaveformSet = _get(loop_config["val"])
    distill = cfg.distillation.enabled
    cache = TeacherCache.load(loop_config["teacher_cache"]) if distill and loop_config.get("teacher_cache") else None
    teachers = load_teachers(loop_config["teacher_dirs"], device) if distill and cache is None else {}
    shapes = cache.shapes if cache is not None else {n: (t.depth, t.layer_dim) for n, t in teachers.items()}
    aligned = cfg.aligned_layers()
    if cache is not None:
        cache.check_layers(aligned)
    logmel = LogMel(cfg.features).to(device)
    noise_bank = load_noise_bank(cfg.data.augment, cfg.features.sample_rate, cfg.features.clip_samples)
    views = n_views(cfg)
    frames = student_frames(cfg)

    # 3. Student + projectors; the layer map is by relative depth unless the config says otherwise.
    #    Seeded here, after the teachers: loading them (from_pretrained) draws random numbers.
    torch.manual_seed(cfg.seed)
    student = build_student(cfg.student, cfg.features.n_mels)
    mapping = {
        name: layer_mapping(shapes[name][0], layers, cfg.student.blocks,
                            (cfg.distillation.layer_map or {}).get(name))
        for name, layers in aligned.items()
    }
    dims = {name: {l: shapes[name][1](l) for l in layers} for name, layers in aligned.items()}
    projectors = build_projectors(aligned, dims, cfg.student.width, cfg.distillation.projector_hidden)
    tap_of = {f"{n}.{l}": tap for n, m in mapping.items() for l, tap in m.items()}
    model = StudentWithProjectors(student, projectors, tap_of).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss_fn = DistillLoss(cfg.distillation, list(shapes))
    divergence = Divergence(cfg.train.divergence.factor, cfg.train.divergence.patience)

    # 4. Resume from the latest checkpoint (a restarted worker group lands here).
    start_epoch, history, best = 0, [], {}
    ckpt = session.get_checkpoint_dir()
    if ckpt is not None:
        with ckpt as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        divergence.load_state_dict(state["divergence"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        best_state = state.get("best_state")
    else:
        best_state = None
    if not in_process:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model, move_to_device=False)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    # Only rank 0 talks to MLflow.
    logger = None
    if is_rank0 and loop_config.get("tracking"):
        from raykd.tracking import MlflowLogger, config_params

        logger = MlflowLogger(**loop_config["tracking"])
        logger.log_config({**config_params(cfg), **{f"layer_map.{n}": str(m) for n, m in mapping.items()}})

    # A trace (tests, debugging): which clips each rank saw, its pid, where it (re)started.
    trace = Path(loop_config["trace_dir"]) if loop_config.get("trace_dir") else None
    if trace is not None:
        with open(trace / f"rank{rank}.starts", "a") as f:
            f.write(f"{os.getpid()} {start_epoch}\n")

    # 5. Epochs.
    status = "completed"
    g = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000 + rank)
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        steps = 0
        idx = shard_indices(len(train_set), rank, world, epoch, cfg.seed)
        if trace is not None:
            torch.save(idx, trace / f"rank{rank}.epoch{epoch + 1}.idx")
        model.train()
        for i in range(0, len(idx) - (len(idx) % cfg.train.batch_size if world > 1 else 0), cfg.train.batch_size):
            b = idx[i:i + cfg.train.batch_size]
            if len(b) == 0:
                break
            labels = train_set.labels[b].to(device)
            shown = view_index(epoch, b, views)  # the same fixed view with or without the cache
            try:
                if cache is not None:
                    waves, t_out = cache.batch(b, shown, aligned, device)
                    waves = waves if waves is not None else train_set.waves[b].to(device)
                else:
                    waves = augment_views(train_set.waves[b], b, shown, cfg, noise_bank)
                    waves = (stored(waves) if cfg.data.augment.enabled else waves).to(device)
                    with torch.no_grad():
                        t_out = {n: teacher_targets(t(waves, aligned.get(n, [])), aligned.get(n, []), frames)
                                 for n, t in teachers.items()}
                feats = logmel(waves)
                if cfg.data.augment.enabled:
                    feats = spec_augment(feats, cfg.data.augment, g)
                logits, projected = model(feats)
                terms = loss_fn(logits, labels, projected, t_out, core.tap_of)
                loss = terms["total"]
                oom = 0.0
            except (torch.cuda.OutOfMemoryError, MemoryError):
                loss, oom = torch.tensor(float("nan")), 1.0
            # Agree across ranks BEFORE backward, so no rank waits in DDP's all-reduce alone.
            bad = 0.0 if oom else float(divergence.update(loss.item()))
            bad, oom = _all_max([bad, oom], device, distributed)
            if oom:
                status = "oom"
                break
            if bad:
                status = "diverged"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            steps += 1

        # 6. Evaluate, measure memory, report (every rank: report is a barrier).
        if distributed:
            _sync_buffers(core)
        mem_name, mem_mb = peak_memory_mb(device)
        (mem_mb,) = _all_max([mem_mb], device, distributed)
        row: dict[str, Any] = {M.EPOCH: epoch + 1, mem_name: mem_mb,
                               M.EPOCH_SECONDS: time.perf_counter() - t0}
        if status == "completed":
            row.update({M.term_metric(k): v / max(steps, 1) for k, v in sums.items()})
            row[M.TRAIN_LOSS] = row.get(M.term_metric("total"), 0.0)
            row.update(evaluate(core, val_set, logmel, cfg, device))
        else:
            # A finite penalty (never NaN: Optuna and ASHA cannot rank NaN).
            row.update({M.TRAIN_LOSS: cfg.train.divergence.penalty, M.VAL_LOSS: cfg.train.divergence.penalty,
                        M.VAL_ACCURACY: 0.0, M.VAL_FRR: 1.0, M.VAL_FA_PER_HOUR: cfg.train.divergence.penalty})
        row[M.DIVERGED] = float(status == "diverged")
        row[M.OOM] = float(status == "oom")
        row[M.STATUS] = status
        history.append(row)
        metric = (cfg.search.metric, cfg.search.mode) if cfg.search else (M.VAL_ACCURACY, "max")
        if status == "completed" and _better(row, best, *metric):
            best = dict(row)
            best_state = {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}

        ckpt_dir = None
        if is_rank0:
            # In process: straight to run_dir/checkpoint (atomically), so a crash keeps the last
            # good one. Under Ray: a temp dir that Ray persists to its storage.
            ckpt_dir = write_checkpoint(Path(loop_config["run_dir"]) / "checkpoint" if in_process else None,
                                        cfg, core, optimizer, divergence, epoch, history, best, best_state, mapping)
        session.report(dict(row), ckpt_dir)
        if logger is not None:
            logger.log_metrics(row, step=epoch + 1)
            logger.set_status(status)
        if loop_config.get("on_epoch") is not None:
            loop_config["on_epoch"](row, ckpt_dir)
        if status != "completed":
            break
    if trace is not None:
        torch.save(core.student.state_dict(), trace / f"rank{rank}.student.pt")
    return {"status": status, "history": history, "best": best,
            "mapping": {n: {int(k): v for k, v in m.items()} for n, m in mapping.items()}}


def _better(row: dict[str, Any], best: dict[str, Any], metric: str, mode: str) -> bool:
    if not best:
        return True
    return row[metric] > best[metric] if mode == "max" else row[metric] < best[metric]


def write_checkpoint(final: Path | None, *args: Any) -> str:
    """save_checkpoint into a fresh dir; with `final`, swap it into place (the old one stays until
    the new one is complete). Returns the checkpoint dir."""
    if final is None:
        tmp = Path(tempfile.mkdtemp(prefix="raykd-ckpt-"))
        save_checkpoint(tmp, *args)
        return str(tmp)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=final.parent))
    try:
        save_checkpoint(tmp, *args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(".checkpoint.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return str(final)


def save_checkpoint(d: Path, cfg: RaykdConfig, model: StudentWithProjectors, optimizer: torch.optim.Optimizer,
                    divergence: Divergence, epoch: int, history: list, best: dict, best_state: dict | None,
                    mapping: dict) -> None:
    """A checkpoint carries its own config and architecture: nothing else rebuilds the student."""
    common = {"format": CHECKPOINT_FORMAT, "config": cfg.model_dump(mode="json"), "mapping": mapping}
    state = {**common, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "divergence": divergence.state_dict(), "history": history, "best": best, "best_state": best_state}
    torch.save(state, d / CHECKPOINT_FILE)
    if best_state is not None:
        torch.save({**common, "model": best_state, "metrics": best}, d / BEST_FILE)


# ----------------------------------------------------------------------------- driver side


@dataclass
class Inputs:
    """What a run needs that is prepared once, on the driver."""

    train: WaveformSet
    val: WaveformSet
    teacher_dirs: dict[str, str]
    dataset_key: str
    teacher_cache: str | None = None  # dir of cached teacher outputs for the train split


def prepare(cfg: RaykdConfig, progress: Callable[[str], None] | None = None) -> Inputs:
    """Dataset (synthesised if missing) and fine-tuned teachers (stored once, keyed by config + data)."""
    from raykd.data.dataset import dataset_fingerprint, ensure_dataset, load_split
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
                     on_epoch: Callable[[dict, str | None], None] | None = None,
                     tracking: dict[str, str] | None = None, trace_dir: Path | None = None,
                     get_checkpoint: Callable[[], Any] | None = None) -> TrainOutcome:
    """Run the loop: in this process (num_workers 0) or as a Ray Train V2 TorchTrainer with N
    DDP workers; leaves run_dir/checkpoint (latest state + best model). Used by `raykd train`,
    `raykd retrain` and each Tune trial."""
    s = cfg.scaling
    loop_config: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "teacher_dirs": inputs.teacher_dirs,
        "train": inputs.train,
        "val": inputs.val,
        "on_epoch": on_epoch if s.num_workers == 0 else None,
        "tracking": tracking,
        "trace_dir": str(trace_dir) if trace_dir else None,
        "get_checkpoint": get_checkpoint if s.num_workers == 0 else None,
        "run_dir": str(run_dir.resolve()),
        "teacher_cache": inputs.teacher_cache,
    }
    if s.num_workers == 0:
        return finish(train_loop_per_worker(loop_config), None, run_dir)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers on other nodes read the clips from the object store, not from this disk.
    for key in ("train", "val"):
        if not isinstance(loop_config[key], ray.ObjectRef):
            loop_config[key] = ray.put(loop_config[key])
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
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
        return finish(value, None, run_dir)
    with result.checkpoint.as_directory() as d:
        return finish(value, Path(d), run_dir)


def finish(value: dict[str, Any], src: Path | None, run_dir: Path) -> TrainOutcome:
    """Copy Ray's final checkpoint to run_dir/checkpoint (atomically) and write history.json."""
    import json

    ckpt_dir = run_dir / "checkpoint"
    if src is not None:
        tmp = run_dir / ".checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        os.replace(tmp, ckpt_dir)  # never a half-written checkpoint dir
    ckpt_dir = ckpt_dir if ckpt_dir.is_dir() else None
    history = value.get("history", [])
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    return TrainOutcome(value.get("status", "completed"), history, value.get("best", {}), ckpt_dir,
                        value.get("mapping", {}))


def fit(cfg: RaykdConfig, run_dir: Path, inputs: Inputs | None = None,
        on_epoch: Callable[[dict], None] | None = None, progress: Callable[[str], None] | None = None,
        trace_dir: Path | None = None) -> TrainOutcome:
    """One distillation run through Ray Train; returns the outcome and leaves run_dir/checkpoint."""
    from raykd import tracking as T
    from raykd.config import absolute_paths

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
    try:
        out = run_distillation(cfg, inputs, run_dir, on_epoch=on_epoch, tracking=track, trace_dir=trace_dir)
    except BaseException:
        if track:
            T.MlflowLogger(**track).close("FAILED")  # never a run left RUNNING forever
        raise
    if track:
        log = T.MlflowLogger(**track)
        log.set_tags({T.STATUS_TAG: out.status, T.CHECKPOINT_TAG: str(out.checkpoint_dir)})
        log.close("FINISHED" if out.status == "completed" else "FAILED")
    return out
