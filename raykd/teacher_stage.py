"""Stage "teacher": fine-tune each teacher (encoder + head) on the wakeword data, once.

A fine-tuned teacher is stored under ``cache_dir/teachers/<name>-<key>``, key = fingerprint of
(teacher config, dataset fingerprint, seed), so the same teacher on the same data is trained
once and reused by every run and trial. The store is written to a temp dir and renamed into
place, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from raykd.config import RaykdConfig, TeacherConfig, fingerprint
from raykd.data.dataset import WaveformSet
from raykd.fsutil import atomic_dir
from raykd.models.teachers import META_FILE, Teacher, build_teacher

METRICS_FILE = "metrics.json"
Progress = Callable[[str], None]


def teacher_key(tcfg: TeacherConfig, dataset_key: str, seed: int) -> str:
    """Everything a fine-tuned teacher depends on, hashed."""
    return fingerprint({"teacher": tcfg.model_dump(mode="json"), "dataset": dataset_key, "seed": seed})


@torch.no_grad()
def accuracy(teacher: Teacher, data: WaveformSet, device: torch.device, batch_size: int) -> float:
    """Fraction of clips whose argmax logit equals the label (eval mode)."""
    teacher.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        logits = teacher(data.waves[i:i + batch_size].to(device)).logits
        correct += int((logits.argmax(-1).cpu() == data.labels[i:i + batch_size]).sum())
    return correct / max(len(data), 1)


def _schedule(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR factor: linear warm-up, then cosine decay to 0 (transformers from scratch need the warm-up)."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def finetune_teacher(name: str, tcfg: TeacherConfig, train: WaveformSet, val: WaveformSet,
                     device: torch.device | str, seed: int,
                     progress: Progress | None = None) -> tuple[Teacher, dict]:
    """Fine-tune encoder + head with AdamW; return the teacher of the best val epoch and metrics.

    metrics: ``val_accuracy`` (one per epoch), ``train_loss`` (mean per epoch), ``best_epoch``
    (1-based; 0 = no training), ``best_val_accuracy``.
    """
    ft = tcfg.finetune
    device = torch.device(device)
    torch.manual_seed(seed)
    teacher = build_teacher(name, tcfg).to(device)
    if ft.freeze_feature_encoder:
        teacher.encoder.freeze_feature_encoder()
    params = [p for p in teacher.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ft.lr, weight_decay=ft.weight_decay)
    steps_per_epoch = math.ceil(len(train) / ft.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(steps_per_epoch * ft.epochs, ft.warmup_fraction))
    gen = torch.Generator().manual_seed(seed)

    best_acc = accuracy(teacher, val, device, ft.batch_size)
    best_state = {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()}
    metrics: dict = {"val_accuracy": [], "train_loss": [], "best_epoch": 0, "best_val_accuracy": best_acc}
    for epoch in range(1, ft.epochs + 1):
        teacher.train()
        order = torch.randperm(len(train), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(order), ft.batch_size):
            b = order[i:i + ft.batch_size]
            logits = teacher(train.waves[b].to(device)).logits
            loss = F.cross_entropy(logits, train.labels[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, ft.grad_clip)
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(b)
        acc = accuracy(teacher, val, device, ft.batch_size)
        metrics["val_accuracy"].append(acc)
        metrics["train_loss"].append(loss_sum / max(len(train), 1))
        if acc > best_acc or metrics["best_epoch"] == 0:
            # The first epoch always replaces the untrained head; later ones must beat it.
            best_acc, metrics["best_epoch"] = acc, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()}
        metrics["best_val_accuracy"] = best_acc
        if progress:
            progress(f"teacher {name}: epoch {epoch}/{ft.epochs} loss {metrics['train_loss'][-1]:.4f} "
                     f"val_accuracy {acc:.3f}")
    teacher.load_state_dict(best_state)
    return teacher.eval(), metrics


def is_stored(path: Path) -> bool:
    """A complete store: the marker json is written last, before the rename."""
    return (path / META_FILE).is_file() and (path / METRICS_FILE).is_file()


def ensure_teachers(cfg: RaykdConfig, train: WaveformSet, val: WaveformSet, dataset_key: str,
                    device: torch.device | str, progress: Progress | None = None) -> dict[str, Path]:
    """Fine-tune every configured teacher not already stored; return name -> stored dir."""
    root = Path(cfg.cache_dir) / "teachers"
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, tcfg in cfg.teachers.items():
        path = root / f"{name}-{teacher_key(tcfg, dataset_key, cfg.seed)}"
        out[name] = path
        if is_stored(path):
            if progress:
                progress(f"teacher {name}: reusing {path}")
            continue
        if progress:
            progress(f"teacher {name}: fine-tuning {tcfg.kind} "
                     f"({tcfg.pretrained or 'from scratch'}) for {tcfg.finetune.epochs} epochs")
        teacher, metrics = finetune_teacher(name, tcfg, train, val, device, cfg.seed, progress)
        _store(teacher, metrics, path)
        if progress:
            progress(f"teacher {name}: best val_accuracy {metrics['best_val_accuracy']:.3f} "
                     f"(epoch {metrics['best_epoch']}), stored at {path}")
    return out


def _store(teacher: Teacher, metrics: dict, path: Path) -> None:
    """Write into a sibling temp dir, then swap: the final dir is complete or absent. A teacher
    someone else finished first (a concurrent writer) is kept: theirs is as good."""
    if path.exists() and not is_stored(path):
        shutil.rmtree(path)  # a stale partial dir from an older layout
    with atomic_dir(path, keep_existing=True) as tmp:
        teacher.save(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
