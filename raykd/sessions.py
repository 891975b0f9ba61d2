"""Where the worker loop runs: a Ray Train worker, or this process (`scaling.num_workers: 0`).

A session answers rank, world, device, the checkpoint to resume from, and wraps the model
for DDP; the loop (`raykd.train.run_loop`) is the same in both.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from raykd.config import RaykdConfig


def resolve_device(cfg: RaykdConfig) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and cfg.scaling.use_gpu):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.train.device == "auto" and torch.cuda.is_available() and cfg.scaling.num_workers == 0:
        return torch.device("cuda")
    return torch.device("cpu")


class RaySession:
    """A Ray Train worker: rank, world and device from its context; its checkpoint from Ray."""

    in_process = False

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def device(self, cfg: RaykdConfig) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def get_checkpoint_dir(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.as_directory() if ckpt is not None else None

    def prepare(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=False)


class InProcessSession:
    """`scaling.num_workers: 0`: the loop runs in this process (debugging, and inside a Tune
    trial where Ray Train's context API is not available); checkpoints stay on local disk."""

    in_process = True
    rank, world = 0, 1

    def __init__(self, get_checkpoint: Callable[[], Any] | None = None):
        self._get_checkpoint = get_checkpoint  # a resumed Tune trial hands back its last checkpoint

    def device(self, cfg: RaykdConfig) -> torch.device:
        return resolve_device(cfg)

    def get_checkpoint_dir(self):
        ckpt = self._get_checkpoint() if self._get_checkpoint else None
        return ckpt.as_directory() if ckpt is not None else None

    def prepare(self, model: nn.Module) -> nn.Module:
        return model
