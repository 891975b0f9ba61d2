"""Where the worker loop runs: a Ray Train worker, or this process (`scaling.num_workers: 0`).

A session answers rank, world, device, the checkpoint to resume from, and wraps the model
for DDP; the loop (`raykd.train.run_loop`) is the same in both.
"""

from __future__ import annotations

from pathlib import Path
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

    def __init__(self, run_dir: str | None = None) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        if run_dir is not None and self.rank == 0:
            record_placement_group(Path(run_dir))

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


# ----------------------------------------------------------------------------- placement groups

PLACEMENT_GROUPS_FILE = ".placement_groups"  # in the run dir: the worker groups' placement groups


def record_placement_group(run_dir: Path) -> None:
    """Rank 0 notes the placement group its worker group runs in (one line per (re)start).

    Ray Train removes it when fit() ends, but inside a Tune trial a finished run's group can
    stay CREATED, holding its CPUs while the next trials wait for them (seen on Ray 2.60 with
    two Ray Train trials on 2 CPUs); the driver removes what is listed here after fit().
    """
    import ray.util

    pg = ray.util.get_current_placement_group()
    if pg is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / PLACEMENT_GROUPS_FILE, "a") as f:
            f.write(pg.id.hex() + "\n")


def release_placement_groups(run_dir: Path) -> int:
    """Remove the run's recorded placement groups that are still alive; returns how many."""
    import ray.util
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    path = run_dir / PLACEMENT_GROUPS_FILE
    if not path.is_file() or not ray.is_initialized():
        return 0
    table = ray.util.placement_group_table()
    removed = 0
    for hex_id in dict.fromkeys(path.read_text().split()):
        if table.get(hex_id, {}).get("state") in ("CREATED", "PENDING", "RESCHEDULING"):
            ray.util.remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(hex_id))))
            removed += 1
    path.unlink()
    return removed
