"""Checkpoint file names, format version, and reading one back safely.

Light to import (the CLI and export need no torch model code; torch itself is imported only
when a checkpoint is read).

A checkpoint directory (written by rank 0 of `raykd.train`) holds:
  checkpoint.pt  the latest full training state (model, optimizer, epoch, history, config)
  best.pt        the best-so-far student + projectors, its metrics, the config and layer map

A run dir holds `checkpoint/` (in-process runs write it every epoch; Ray Train runs get it
copied at the end) and, for Ray Train runs, `ray/checkpoint_*` (what Ray persisted).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from raykd.errors import UserError

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
CHECKPOINT_FORMAT = 1

# Keys that may change between a run and its continuation: more epochs extend a run, and
# where it is tracked does not change what is trained.
RESUMABLE_CHANGES = ("train.epochs", "tracking")


def read_checkpoint(path: Path, trusted: bool = False) -> dict[str, Any]:
    """The dict saved in a raykd .pt file, or one UserError naming the file.

    `trusted` (a file this run dir's own training wrote: it holds the optimizer state) loads
    full pickles; otherwise only tensors and plain data. Never advises `weights_only=False`.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a raykd checkpoint (not a torch.save archive: truncated or another file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:  # noqa: BLE001 - pickle / zip / torch errors alike
        # torch's own message advises weights_only=False: unsafe on a file from anyone.
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
        raise UserError(f"{path}: not readable as a raykd checkpoint ({reason[0] if reason else type(e).__name__})"
                        ) from None
    if not isinstance(state, dict) or not {"config", "model"} <= state.keys():
        raise UserError(f"{path}: not a raykd checkpoint (no 'config' and 'model' entries)")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: checkpoint format {state.get('format')!r}, this raykd reads {CHECKPOINT_FORMAT}")
    return state


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the checkpoints it registered


def ray_checkpoint(run_dir: Path) -> Path | None:
    """checkpoint.pt of the latest checkpoint Ray Train has *registered* for run_dir/ray: what a
    TorchTrainer of the same name and storage resumes from. Newer checkpoint dirs may exist
    (reported, not yet registered when the run was aborted); Ray would not use them."""
    import json

    snapshot = Path(run_dir) / "ray" / RAY_SNAPSHOT
    try:
        name = json.loads(snapshot.read_text())["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or another Ray's format
        return None
    path = Path(run_dir) / "ray" / str(name) / CHECKPOINT_FILE
    return path if path.is_file() else None


def newest_on_disk(run_dir: Path) -> Path | None:
    """The newest checkpoint.pt anywhere in a run dir, registered by Ray or not."""
    found = [p for p in [Path(run_dir) / "checkpoint" / CHECKPOINT_FILE,
                         *Path(run_dir).glob(f"ray/checkpoint_*/{CHECKPOINT_FILE}")] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run continues from: Ray's registered one, else run_dir/checkpoint's."""
    run_dir = Path(run_dir)
    found = [p for p in (ray_checkpoint(run_dir), run_dir / "checkpoint" / CHECKPOINT_FILE) if p and p.is_file()]
    # A finished Ray run's checkpoint/ is a copy (same mtime) of Ray's last one: prefer Ray's.
    return max(found, key=lambda p: (p.stat().st_mtime, p.parent.parent.name == "ray")) if found else None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between a checkpoint's config and this run's (both as
    `model_dump(mode="json")`), ignoring `RESUMABLE_CHANGES`."""
    a, b = _flat(saved), _flat(current)
    keep = [k for k in sorted(a.keys() | b.keys())
            if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)]
    return [k for k in keep if a.get(k) != b.get(k)]
