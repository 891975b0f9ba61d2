"""Where an epoch's row goes: one protocol, a few implementations, and the loop holds a list.

The protocol is torchtune's metric logger, cut to what raykd needs:
``log_config(params)``, ``log(row, step, checkpoint_dir)``, ``close(status)``.

Which loggers a worker gets is decided in one place, `worker_loggers`: every rank reports to
Ray (its report is a barrier), rank 0 alone talks to MLflow and prints.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Callable, Protocol


class MetricLogger(Protocol):
    def log_config(self, params: dict[str, str]) -> None: ...

    def log(self, row: dict[str, Any], step: int, checkpoint_dir: str | None) -> None: ...

    def close(self, status: str) -> None: ...


class RayTrainLogger:
    """A Ray Train worker: `ray.train.report` with the epoch's checkpoint (a barrier: every rank)."""

    def log_config(self, params: dict[str, str]) -> None:
        pass

    def log(self, row: dict[str, Any], step: int, checkpoint_dir: str | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # Ray copies the checkpoint to its storage; the local temp copy is then removed.
        ray.train.report(dict(row), checkpoint=ckpt, delete_local_checkpoint_after_upload=True)

    def close(self, status: str) -> None:
        pass


CHECKPOINT_PATH = "checkpoint_path"  # set by TuneReportCallback; the in-process reporter sets it too


class TuneLogger:
    """An in-process Tune trial: `ray.tune.report` each epoch, with a copy of its checkpoint
    (Tune takes ownership of what it is given; run_dir/checkpoint stays the run's own)."""

    def log_config(self, params: dict[str, str]) -> None:
        pass

    def log(self, row: dict[str, Any], step: int, checkpoint_dir: str | None) -> None:
        import ray.tune

        copy = shutil.copytree(checkpoint_dir, tempfile.mkdtemp(prefix="raykd-tune-"), dirs_exist_ok=True)
        try:
            ray.tune.report({**row, CHECKPOINT_PATH: ""}, checkpoint=ray.tune.Checkpoint.from_directory(copy))
        finally:
            shutil.rmtree(copy, ignore_errors=True)  # Tune has persisted it by now

    def close(self, status: str) -> None:
        pass


class CallbackLogger:
    """Hands each row to a function (the CLI's epoch printer)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]):
        self.fn = fn

    def log_config(self, params: dict[str, str]) -> None:
        pass

    def log(self, row: dict[str, Any], step: int, checkpoint_dir: str | None) -> None:
        self.fn(row)

    def close(self, status: str) -> None:
        pass


def worker_loggers(rank: int, in_process: bool, tracking: dict[str, str] | None,
                   extra: list[MetricLogger] = ()) -> list[MetricLogger]:
    """Rank-0 duties, decided once: Ray reports on every rank of a Ray Train run; MLflow and
    the caller's own loggers (CLI printer, in-process Tune reporter) on rank 0 only."""
    loggers: list[MetricLogger] = [] if in_process else [RayTrainLogger()]
    if rank == 0:
        if tracking:
            from raykd.tracking import MlflowLogger

            loggers.append(MlflowLogger(**tracking))
        loggers.extend(extra)
    return loggers
