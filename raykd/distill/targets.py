"""Teacher targets: what the student learns from, behind one interface with two implementations.

`CachedTargets` reads the teacher-output cache (memory-mapped, built once per study);
`LiveTargets` runs the frozen teachers on the batch. Both answer `shapes` and
`batch(idx, views, layers, device)` with the same numbers (the augmented view the teachers
heard, and their fp16-rounded, time-aligned outputs), so the training loop does not know,
and its metrics do not depend on, which one it has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch

from raykd.config import RaykdConfig
from raykd.data.augment import load_noise_bank, rir_bank_for
from raykd.distill.cache import (TeacherCache, augment_views, stored, student_frames, teacher_targets,
                                 train_babble_bank)
from raykd.models.teachers import Teacher, TeacherOutput, load_teacher

Shapes = dict[str, tuple[int, Callable[[int], int]]]  # teacher -> (depth N, layer -> feature dim)


class TeacherTargets(Protocol):
    shapes: Shapes

    def batch(self, idx: torch.Tensor, views: torch.Tensor, layers: dict[str, list[int]],
              device: torch.device) -> tuple[torch.Tensor, dict[str, TeacherOutput]]:
        """idx, views: (B,) clip and view indices -> waves (B, S) float32 on device (what the
        student hears), and per teacher its logits (B, 2) and hidden states {layer: (B, T', D)}."""
        ...


def load_teachers(dirs: dict[str, str], device: torch.device) -> dict[str, Teacher]:
    """Frozen teachers: eval mode, no gradients, never DDP-wrapped."""
    out = {}
    for name, d in dirs.items():
        t = load_teacher(Path(d)).to(device).eval()
        t.requires_grad_(False)
        out[name] = t
    return out


class LiveTargets:
    """The frozen teachers run on each batch's fixed augmented views (no teachers: the student alone).

    labels: (N,) of the train clips, for the babble bank (made of negatives only, as the cache
    build makes it); required when babble is on, so a live view can never differ from a cached one.
    """

    def __init__(self, cfg: RaykdConfig, clean: torch.Tensor, teachers: dict[str, Teacher],
                 labels: torch.Tensor | None = None):
        self.cfg, self.clean, self.teachers = cfg, clean, teachers
        self.noise_bank = load_noise_bank(cfg.data.augment, cfg.features.sample_rate, cfg.features.clip_samples)
        aug = cfg.data.augment
        if labels is None and aug.enabled and aug.babble_prob > 0:
            raise ValueError("LiveTargets: data.augment.babble_prob > 0 needs the train labels (babble is "
                             "made of negative clips only)")
        self.babble_bank = train_babble_bank(cfg, clean, labels) if labels is not None else None
        rir_bank_for(aug, cfg.features.sample_rate, cfg.seed)  # a bad rir_dir fails here, not mid-epoch
        self.frames = student_frames(cfg)
        self.shapes: Shapes = {n: (t.depth, t.layer_dim) for n, t in teachers.items()}

    def batch(self, idx: torch.Tensor, views: torch.Tensor, layers: dict[str, list[int]],
              device: torch.device) -> tuple[torch.Tensor, dict[str, TeacherOutput]]:
        waves = augment_views(self.clean[idx], idx, views, self.cfg, self.noise_bank, self.babble_bank)
        waves = (stored(waves) if self.cfg.data.augment.enabled else waves).to(device)
        with torch.no_grad():
            outs = {n: teacher_targets(t(waves, layers.get(n, [])), layers.get(n, []), self.frames)
                    for n, t in self.teachers.items()}
        return waves, outs


class CachedTargets:
    """The teacher-output cache; without augmentation the cache holds no waves: the clean clips."""

    def __init__(self, cache: TeacherCache, clean: torch.Tensor):
        self.cache, self.clean = cache, clean
        self.shapes: Shapes = cache.shapes

    def batch(self, idx: torch.Tensor, views: torch.Tensor, layers: dict[str, list[int]],
              device: torch.device) -> tuple[torch.Tensor, dict[str, TeacherOutput]]:
        waves, outs = self.cache.batch(idx, views, layers, device)
        return (waves if waves is not None else self.clean[idx].to(device)), outs


def open_targets(cfg: RaykdConfig, clean: torch.Tensor, teacher_dirs: dict[str, str], cache_dir: str | None,
                 device: torch.device, labels: torch.Tensor | None = None) -> TeacherTargets:
    """The cache when one was built for this run, else the live teachers (none when distillation
    is off). labels: the train clips' (N,), for the live babble bank."""
    if not cfg.distillation.enabled:
        return LiveTargets(cfg, clean, {}, labels)
    if cache_dir:
        cache = TeacherCache.load(cache_dir)
        cache.check_layers(cfg.aligned_layers())
        return CachedTargets(cache, clean)
    return LiveTargets(cfg, clean, load_teachers(teacher_dirs, device), labels)
