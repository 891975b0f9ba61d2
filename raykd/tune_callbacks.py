"""What a study hangs on Ray Tune: the stopper of in-process trials and the callbacks that run
in the driver when a trial ends (free a Ray Train trial's workers, mirror a bucket study)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

from raykd import metrics as M
from raykd.sessions import release_placement_groups
from raykd.storage import upload_dir


def study_callbacks(sdir: Path, remote: str | None) -> list[Callback]:
    """The callbacks of every Tuner of a study (the search and the baselines)."""
    return [ReleaseWorkers(str(sdir / "trials"))] + ([UploadStudy(remote)] if remote else [])


class ReleaseWorkers(Callback):
    """When a Ray Train trial ends by any path (completed, pruned by ASHA, errored), remove
    its worker group's placement group if Ray left it alive, before the next trial needs it."""

    def __init__(self, trials_dir: str):
        self.trials_dir = trials_dir

    def _release(self, trial: Any) -> None:
        release_placement_groups(Path(self.trials_dir) / trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)


class UploadStudy(Callback):
    """A study on a bucket: after each trial, mirror the local working folder (the parent of
    Tune's dir, wherever a resume put it) to the bucket, changed files only."""

    def __init__(self, remote: str):
        self.remote = remote

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            upload_dir(Path(trial.storage.experiment_fs_path).parent, self.remote)
        except OSError as e:  # a network blip must not end the study: the final upload retries
            logging.getLogger(__name__).warning("upload to %s failed, retried at the end: %s", self.remote, e)

    on_trial_error = on_trial_complete


class Backstop(Stopper):
    """Tune stopper: a trial that reports diverged/oom, or reaches its epochs, stops."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get(M.DIVERGED) or result.get(M.OOM) or result.get(M.EPOCH, 0) >= self.epochs)

    def stop_all(self) -> bool:
        return False
