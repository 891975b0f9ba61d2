"""Teacher-output cache: frozen teachers see each (clip, augmented view) once, ever.

Augmentation and caching coexist through a fixed number of augmented *views* per clip
(`data.augment.views`): view v of clip i is drawn from a generator seeded by (seed, i, v), so
it is the same waveform whether the teachers run live or were cached. In epoch e, clip i is
shown as view (e + i) mod V — in both modes, so a run gives the same metrics with or without
the cache (up to the fp16 storage of teacher outputs).

What is stored, per teacher: logits (N, V, 2) and the hidden states of every layer the run or
its search space can pick, already time-aligned to the student's frame count (N, V, T', D),
all fp16; plus the augmented waveforms (N, V, S) fp16 (the student must hear exactly what
the teachers heard). Files live under `cache_dir/teacher_outputs/<key>/` and are memory-mapped
by every trial and DDP worker: on a cluster `cache_dir` is a shared filesystem, so one node
builds, every node reads, and a restarted study or a second study on the same data and
teachers reuses it. (Ray's object store would be rebuilt per driver session and hold a copy
per node in RAM.) The key covers the teacher checkpoints, the data, the augmentation, the
views, the layers and the student frame count: any change builds a new cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from raykd.config import LayerSubsetParam, RaykdConfig, fingerprint
from raykd.data.augment import augment_waveforms, babble_bank_for, rir_bank_for
from raykd.data.dataset import WaveformSet
from raykd.data.features import num_frames
from raykd.distill.losses import time_align
from raykd.errors import UserError
from raykd.fsutil import atomic_dir
from raykd.models.teachers import Teacher, TeacherOutput

FORMAT = 3  # bump when what is stored changes: old caches are then rebuilt, never misread
META = "meta.json"


def n_views(cfg: RaykdConfig) -> int:
    return cfg.data.augment.views if cfg.data.augment.enabled else 1


def view_index(epoch: int, idx: torch.Tensor, views: int) -> torch.Tensor:
    """(B,) view shown for each clip in this epoch: (epoch + clip) mod V."""
    return (idx + epoch) % views


def augment_views(waves: torch.Tensor, idx: torch.Tensor, views: torch.Tensor, cfg: RaykdConfig,
                  noise_bank: torch.Tensor | None, babble_bank: torch.Tensor | None = None) -> torch.Tensor:
    """(B, S) clean clips -> (B, S) their fixed augmented views (deterministic per clip and view).

    babble_bank: `train_babble_bank(cfg, waves, labels)`; the cache build and live runs pass the same one,
    so cached and live views are identical. The room impulse responses are a seeded bank built
    once per process from the config (`rir_bank_for`)."""
    if not cfg.data.augment.enabled:
        return waves
    rirs = rir_bank_for(cfg.data.augment, cfg.features.sample_rate, cfg.seed)
    out = torch.empty_like(waves)
    for j in range(waves.shape[0]):
        g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + int(idx[j])) * 101 + int(views[j]))
        out[j] = augment_waveforms(waves[j:j + 1], cfg.data.augment, cfg.features.sample_rate, g, noise_bank,
                                   babble_bank, rirs)[0]
    return out


def train_babble_bank(cfg: RaykdConfig, waves: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """The babble talkers of a run: negative speech clips of its train split (waves (N, S),
    labels (N,)), chosen by cfg.seed; None when babble is off."""
    return babble_bank_for(cfg.data.augment, waves, labels, cfg.features.sample_rate, cfg.seed)


def stored(x: torch.Tensor) -> torch.Tensor:
    """The precision the cache stores (fp16). Live runs round the same way, so a run's numbers do
    not depend on whether its teachers were cached."""
    return x.half().float()


def teacher_targets(out: TeacherOutput, layers: list[int], frames: int) -> TeacherOutput:
    """What the student learns from, identical live or cached: logits and hidden states
    time-aligned to the student's frames, at stored precision."""
    return TeacherOutput(stored(out.logits), {l: stored(time_align(out.hidden[l], frames)) for l in layers})


def student_frames(cfg: RaykdConfig) -> int:
    """Frames at the student's taps for one clip (the time axis teacher targets are pooled to)."""
    from raykd.models.student import build_student

    with torch.no_grad():
        _, taps = build_student(cfg.student, cfg.features.n_mels)(torch.zeros(1, cfg.features.n_mels,
                                                                               num_frames(cfg.features)))
    return int(taps[0].shape[-1])


def cache_layers(cfg: RaykdConfig) -> dict[str, list[int]]:
    """Every layer a trial may align: the run's own plus the search space's candidates."""
    layers = {n: set(v) for n, v in cfg.aligned_layers().items()}
    if cfg.search is not None:
        for key, p in cfg.search.params.items():
            if isinstance(p, LayerSubsetParam):
                layers.setdefault(key, set()).update(p.candidates)
    return {n: sorted(layers.get(n, set())) for n in cfg.teachers}


def estimate_bytes(n_clips: int, views: int, frames: int, samples: int,
                   dims: dict[str, dict[int, int]]) -> int:
    """fp16 bytes of waves + logits + hidden states for n_clips x views."""
    per = samples + sum(2 + sum(frames * d for d in ls.values()) for ls in dims.values())
    return 2 * n_clips * views * per


def cache_key(cfg: RaykdConfig, teacher_dirs: dict[str, str], dataset_key: str) -> str:
    return fingerprint({
        "format": FORMAT, "dataset": dataset_key, "teachers": teacher_dirs, "seed": cfg.seed,
        "augment": cfg.data.augment.model_dump(mode="json"), "views": n_views(cfg),
        "layers": cache_layers(cfg), "frames": student_frames(cfg), "features": cfg.features.model_dump(mode="json"),
    })


@dataclass
class TeacherCache:
    """Memory-mapped cached teacher outputs for the train split."""

    root: Path
    views: int
    waves: torch.Tensor | None  # (N, V, S) fp16, None when augmentation is off
    logits: dict[str, torch.Tensor]  # teacher -> (N, V, 2)
    hidden: dict[str, dict[int, torch.Tensor]]  # teacher -> layer -> (N, V, T', D)
    depth: dict[str, int]

    @property
    def shapes(self) -> dict[str, tuple[int, Callable[[int], int]]]:
        """teacher -> (depth N, layer -> feature dim), as the live Teacher would answer."""
        return {n: (self.depth[n], lambda l, n=n: int(self.hidden[n][l].shape[-1])) for n in self.logits}

    @classmethod
    def load(cls, root: str | Path) -> "TeacherCache":
        root = Path(root)
        meta = json.loads((root / META).read_text())
        waves = torch.load(root / "waves.pt", mmap=True) if meta["has_waves"] else None
        logits, hidden = {}, {}
        for name in meta["teachers"]:
            t = torch.load(root / f"{name}.pt", mmap=True)
            logits[name] = t["logits"]
            hidden[name] = {int(k): v for k, v in t["hidden"].items()}
        return cls(root, meta["views"], waves, logits, hidden, meta["depth"])

    def check_layers(self, aligned: dict[str, list[int]]) -> None:
        for n, layers in aligned.items():
            missing = [l for l in layers if l not in self.hidden.get(n, {})]
            if missing:
                raise ValueError(f"teacher-output cache {self.root} has no {n} layers {missing} "
                                 f"(it holds {sorted(self.hidden.get(n, {}))}): prepare() builds it for the run's layers")

    def batch(self, idx: torch.Tensor, views: torch.Tensor, layers: dict[str, list[int]],
              device: torch.device) -> tuple[torch.Tensor | None, dict[str, TeacherOutput]]:
        """Waves (B, S) float32 (or None: use the clean clips) and each teacher's outputs for the batch."""
        waves = self.waves[idx, views].float().to(device) if self.waves is not None else None
        outs = {
            n: TeacherOutput(self.logits[n][idx, views].float().to(device),
                             {l: self.hidden[n][l][idx, views].float().to(device) for l in layers.get(n, [])})
            for n in self.logits
        }
        return waves, outs


def build_cache(cfg: RaykdConfig, train: WaveformSet, teachers: dict[str, Teacher], key: str,
                device: torch.device, noise_bank: torch.Tensor | None,
                progress: Callable[[str], None] | None = None) -> Path:
    """Run the teachers once over every (clip, view); write atomically; return the cache dir."""
    root = Path(cfg.cache_dir) / "teacher_outputs" / key
    if (root / META).is_file():
        if progress:
            progress(f"teacher-output cache: reusing {root}")
        return root
    layers = cache_layers(cfg)
    frames, views, n = student_frames(cfg), n_views(cfg), len(train)
    dims = {t: {l: teachers[t].layer_dim(l) for l in ls} for t, ls in layers.items()}
    size = estimate_bytes(n, views, frames, cfg.features.clip_samples if cfg.data.augment.enabled else 0, dims)
    budget = cfg.teacher_cache.max_gb * 2**30
    if progress:
        progress(f"teacher-output cache: {n} clips x {views} views, layers {layers}, "
                 f"{size / 2**20:.0f} MiB (budget {budget / 2**20:.0f} MiB)")
    if size > budget:
        raise UserError(f"teacher_cache.max_gb: the cache needs {size / 2**30:.2f} GiB > {cfg.teacher_cache.max_gb} "
                        f"GiB; raise the budget, use fewer views or candidate layers, or set teacher_cache.enabled=false")
    waves = torch.empty(n, views, cfg.features.clip_samples, dtype=torch.float16) if cfg.data.augment.enabled else None
    logits = {t: torch.empty(n, views, 2, dtype=torch.float16) for t in teachers}
    hidden = {t: {l: torch.empty(n, views, frames, d, dtype=torch.float16) for l, d in dims[t].items()}
              for t in teachers}
    bs = cfg.train.batch_size
    babble = train_babble_bank(cfg, train.waves, train.labels)  # built once: the build stays O(clips x views)
    with torch.no_grad():
        for v in range(views):
            for i in range(0, n, bs):
                idx = torch.arange(i, min(i + bs, n))
                w = augment_views(train.waves[idx], idx, torch.full_like(idx, v), cfg, noise_bank, babble)
                if waves is not None:
                    w = stored(w)
                    waves[idx, v] = w.half()
                w = w.to(device)
                for t, teacher in teachers.items():
                    out = teacher_targets(teacher(w, layers.get(t, [])), layers.get(t, []), frames)
                    logits[t][idx, v] = out.logits.half().cpu()
                    for l in layers.get(t, []):
                        hidden[t][l][idx, v] = out.hidden[l].half().cpu()
            if progress:
                progress(f"teacher-output cache: view {v + 1}/{views} done")
    with atomic_dir(root) as tmp:  # a half-built cache is never seen
        if waves is not None:
            torch.save(waves, tmp / "waves.pt")
        for t in teachers:
            torch.save({"logits": logits[t], "hidden": hidden[t]}, tmp / f"{t}.pt")
        (tmp / META).write_text(json.dumps({"format": FORMAT, "views": views, "teachers": list(teachers),
                                            "layers": layers, "frames": frames, "clips": n,
                                            "depth": {t: teachers[t].depth for t in teachers},
                                            "has_waves": waves is not None, "bytes": size}, indent=1))
    return root
