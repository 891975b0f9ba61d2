"""Faults during a run: a Ray Train worker killed inside a Tune trial, and a full disk while a
checkpoint is written. (A driver interrupted and the study resumed is
tests/tune/test_tune.py::test_interrupted_study_resumes_without_losing_or_repeating_trials;
a worker killed in a plain train run is tests/train/test_ray_train.py.)"""

from __future__ import annotations

import csv
import errno
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from raykd import metrics as M
from raykd.checkpoint import BEST_FILE, CHECKPOINT_FILE
from raykd.config import config_from_dict
from raykd.presets import tiny_config
from tests.robustness.conftest import run_cli, write_yaml


def mlflow_runs(db: Path, **tags: str) -> list:
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exp = c.get_experiment_by_name("tests")
    runs = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]


# ----------------------------------------------------------------------------- killed worker


def alive_train_worker_pids() -> list[int]:
    """Pids of this session's live Ray Train workers (from the GCS actor table).

    `ray.util.state.list_actors` would be the public way, but it asks the dashboard, which
    the tests' local Ray runs without. Only descendants of this process are returned, so a
    test never signals another session's Ray.
    """
    import psutil
    import ray._private.state

    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    return [a["Pid"] for a in ray._private.state.actors().values()
            if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE" and a["Pid"] in ours]


def epochs_reported(trial_dir: Path) -> list[int]:
    with open(trial_dir / "progress.csv") as f:
        return [int(float(r[M.EPOCH])) for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tune_trial_survives_its_train_worker_being_killed(tiny_project, local_ray, tmp_path):
    """SIGKILL the Ray Train worker (num_workers 1) of a running Tune trial: Ray Train restarts
    it from the trial's latest checkpoint, the trial completes, the study completes, and
    MLflow has one child run per trial, none left RUNNING."""
    from raykd.tune import run_study

    root, _ = tiny_project
    epochs = 8  # ~0.4 s each here: after the 2nd checkpoint, seconds are left to kill the worker
    db = tmp_path / "mlflow.db"
    raw = tiny_config(root, name="killed-worker", **{
        "scaling.num_workers": 1, "train.max_failures": 2, "tracking.uri": f"sqlite:///{db}",
        "storage_path": str(tmp_path / "runs")})
    raw["search"] = {"params": {"distillation.feature_alignment_weight": {"type": "uniform", "low": 0.05, "high": 0.2}},
                     "num_samples": 2, "max_concurrent": 1, "trial_epochs": epochs, "asha": {"enabled": False},
                     "baseline_seeds": 0}  # about faults / the cluster, not baselines: kept short
    space = write_yaml(tmp_path / "space.yaml", raw)
    sdir = tmp_path / "runs" / "killed-worker"

    result: dict[str, Any] = {}

    def study() -> None:
        try:
            result["out"] = run_study(config_from_dict(raw), space)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            result["error"] = e

    th = threading.Thread(target=study, daemon=True)  # a hung study must not hang pytest's exit
    th.start()
    # The first trial's Ray Train run has persisted 2 epochs' checkpoints: kill its worker.
    deadline = time.time() + 400
    while len(ckpts := list((sdir / "trials").glob("*/ray/checkpoint_*"))) < 2:
        assert th.is_alive(), result
        assert time.time() < deadline, "the first trial did not checkpoint twice in time"
        time.sleep(0.1)
    killed_trial = ckpts[0].parents[1].name
    pids = alive_train_worker_pids()
    assert len(pids) == 1, f"expected the first trial's one live worker, found {pids}"
    pid = pids[0]
    os.kill(pid, signal.SIGKILL)
    th.join(timeout=600)
    assert not th.is_alive(), "study did not finish after the worker was killed"
    assert "error" not in result, result.get("error")
    out = result["out"]

    assert pid not in alive_train_worker_pids()
    assert not out.interrupted and len(out.rows) == 2
    rows = {r["trial_id"]: r for r in out.rows}
    assert killed_trial in rows, (killed_trial, list(rows))
    for r in out.rows:
        assert r["status"] == "completed" and r["epochs"] == epochs, r
    assert out.best_dir is not None and (out.best_dir / "checkpoint" / BEST_FILE).is_file()

    # Ray Train restarted the worker group itself (train.max_failures): the Tune trial never
    # failed (Tune writes error.txt for a failed attempt before retrying it) ...
    (trial_dir,) = (sdir / "tune").glob(f"run_trial_{killed_trial}_*")
    assert not (trial_dir / "error.txt").exists(), (trial_dir / "error.txt").read_text()[-2000:]
    # ... from a checkpoint, not from epoch 1: epochs go up, at most the one in flight when the
    # worker was killed is reported twice.
    seen = epochs_reported(trial_dir)
    assert seen.count(1) == 1 and seen[-1] == epochs, seen
    assert all(b >= a for a, b in zip(seen, seen[1:])) and len(seen) - len(set(seen)) <= 1, seen

    children = mlflow_runs(db, **{"raykd.kind": "trial", "raykd.study": "killed-worker"})
    assert sorted(c.data.tags["raykd.trial_id"] for c in children) == sorted(rows), "one child run per trial"
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["raykd.status"] == "completed", (c.info, c.data.tags)
    (parent,) = mlflow_runs(db, **{"raykd.kind": "study", "raykd.study": "killed-worker"})
    assert parent.info.status == "FINISHED"


# ----------------------------------------------------------------------------- disk full


def disk_full_on(n: int, monkeypatch) -> list[str]:
    """torch.save fails like a full disk on the n-th checkpoint.pt: part of the file is
    written, then ENOSPC. Returns the paths of the checkpoint.pt writes seen."""
    real = torch.save
    seen: list[str] = []

    def save(obj: Any, f: Any, *args: Any, **kw: Any) -> None:
        if isinstance(f, (str, os.PathLike)) and Path(f).name == CHECKPOINT_FILE:
            seen.append(str(f))
            if len(seen) == n:
                Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 512)  # what a full disk leaves behind
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        real(obj, f, *args, **kw)

    monkeypatch.setattr(torch, "save", save)
    return seen


@pytest.mark.timeout(600)
def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(tiny_project, tmp_path, monkeypatch):
    """In-process run, ENOSPC on the 3rd epoch's checkpoint: fit raises it (no hang), the
    MLflow run is closed FAILED, and run_dir/checkpoint still holds epoch 2, loadable."""
    from raykd.models.student import build_student
    from raykd.pipeline import fit

    root, inputs = tiny_project
    db = tmp_path / "mlflow.db"
    cfg = config_from_dict(tiny_config(root, **{"train.epochs": 4, "tracking.uri": f"sqlite:///{db}"}))
    run_dir = tmp_path / "run"
    seen = disk_full_on(3, monkeypatch)

    result: dict[str, Any] = {}
    th = threading.Thread(target=lambda: result.setdefault("error", _raises(fit, cfg, run_dir, inputs)))
    th.start()
    th.join(timeout=300)
    assert not th.is_alive(), "the run hung after the failed checkpoint write"
    e = result["error"]
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC, repr(e)
    assert len(seen) == 3, seen  # it stopped at the failed write, not later

    (run,) = mlflow_runs(db, **{"raykd.kind": "train"})
    assert run.info.status == "FAILED"

    ckpt = run_dir / "checkpoint"
    state = torch.load(ckpt / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and [r[M.EPOCH] for r in state["history"]] == [1, 2]
    best = torch.load(ckpt / BEST_FILE, map_location="cpu", weights_only=False)
    student = build_student(cfg.student, cfg.features.n_mels)
    student.load_state_dict({k[len("student."):]: v for k, v in best["model"].items() if k.startswith("student.")})
    assert best["metrics"][M.EPOCH] in (1, 2)
    assert not list(run_dir.glob(".checkpoint*")), "a half-written checkpoint dir was left behind"


def _raises(fn, *args: Any) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        return e
    return None


@pytest.mark.timeout(600)
def test_disk_full_is_one_line_from_the_cli(tiny_project, tmp_path, monkeypatch):
    root, _ = tiny_project
    raw = tiny_config(root, **{"train.epochs": 2, "tracking.enabled": False})
    seen = disk_full_on(2, monkeypatch)
    res, _ = run_cli("train", write_yaml(tmp_path / "cfg.yaml", raw), "--run-dir", tmp_path / "run")
    assert res.exit_code == 2, (res.output, res.exception)
    (line,) = [x for x in res.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: {seen[-1]}: No space left on device"), line
    assert "Traceback" not in res.output
