"""`raykd train` into a run dir that holds a checkpoint: continued (same config), refused with
one line (another config; the checkpoint stays byte for byte), or started again (--overwrite).
Ctrl-C names the last complete epoch and the command that continues; history.json holds the
finished epochs. A damaged checkpoint is one line naming the file.

Real data: the tiny project (espeak-ng clips, fine-tuned tiny teachers, cached outputs),
1-2 epochs per run, in process (scaling.num_workers: 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import raykd.train
from raykd import metrics as M
from raykd.checkpoint import BEST_FILE, CHECKPOINT_FILE
from raykd.presets import tiny_config
from tests.robustness.conftest import assert_one_user_error, error_lines, run_cli, write_yaml


def snapshot(run_dir: Path) -> dict[str, str]:
    """sha256 of every file under run_dir: what a refusal must leave exactly as it was."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def history(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "history.json").read_text())


def saved_epochs(run_dir: Path) -> list[int]:
    state = torch.load(run_dir / "checkpoint" / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return [r[M.EPOCH] for r in state["history"]]


def registered_epoch(run_dir: Path) -> int:
    """The epoch of the latest checkpoint Ray Train registered for run_dir/ray (0: none)."""
    from raykd.checkpoint import ray_checkpoint

    path = ray_checkpoint(run_dir)
    if path is None:
        return 0
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1
    except Exception:  # noqa: BLE001 - being written
        return 0


def config_file(root: Path, path: Path, **over: Any) -> Path:
    return write_yaml(path, tiny_config(root, **{"train.epochs": 1, "tracking.enabled": False, **over}))


@pytest.fixture(scope="module")
def finished_run(tiny_project, tmp_path_factory):
    """(config path, run dir) of a finished 1-epoch `raykd train`; tests copy the run dir."""
    root, _ = tiny_project
    tmp = tmp_path_factory.mktemp("finished")
    cfg = config_file(root, tmp / "cfg.yaml")
    res, _ = run_cli("train", cfg, "--run-dir", tmp / "run")
    assert res.exit_code == 0, (res.output, res.exception)
    return cfg, tmp / "run"


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.timeout(600)
@pytest.mark.parametrize("over, key", [
    ({"train.lr": 0.02}, "train.lr"),
    ({"distillation.alignment_layers": [2, 4]}, "distillation.alignment_layers"),
    ({"student.width": 32}, "student.width"),
    ({"seed": 1}, "seed"),
], ids=["lr", "alignment-layers", "student-width", "seed"])
def test_another_config_is_refused_and_the_checkpoint_stays(tiny_project, finished_run, tmp_path, over, key):
    root, _ = tiny_project
    run = copy_run(finished_run[1], tmp_path)
    before = snapshot(run)
    other = config_file(root, tmp_path / "other.yaml", **over)
    res, seconds = run_cli("train", other, "--run-dir", run)
    assert_one_user_error(res, str(run), "holds a checkpoint of another config", key, "--overwrite")
    assert snapshot(run) == before  # checkpoint.pt, best.pt and history.json byte for byte
    assert seconds < 30  # refused before the data is loaded or a teacher is touched


@pytest.mark.timeout(600)
def test_the_same_config_continues_and_more_epochs_extend_it(tiny_project, finished_run, tmp_path):
    root, _ = tiny_project
    cfg, src = finished_run
    run = copy_run(src, tmp_path)
    first = history(run)
    best_before = (run / "checkpoint" / BEST_FILE).read_bytes()

    # The same config again: nothing left to train, nothing overwritten.
    res, _ = run_cli("train", cfg, "--run-dir", run)
    assert res.exit_code == 0, res.output
    assert "continuing" in res.stdout and "after epoch 1" in res.stdout
    assert history(run) == first and (run / "checkpoint" / BEST_FILE).read_bytes() == best_before

    # train.epochs may grow: epoch 2 is trained on top of epoch 1, which is kept as it was.
    res, _ = run_cli("train", config_file(root, tmp_path / "more.yaml", **{"train.epochs": 2}), "--run-dir", run)
    assert res.exit_code == 0, res.output
    rows = history(run)
    assert [r[M.EPOCH] for r in rows] == [1, 2] and rows[0] == first[0]
    assert saved_epochs(run) == [1, 2]


@pytest.mark.timeout(600)
def test_overwrite_starts_again(tiny_project, finished_run, tmp_path):
    root, _ = tiny_project
    run = copy_run(finished_run[1], tmp_path)
    other = config_file(root, tmp_path / "other.yaml", **{"train.lr": 0.02})
    res, _ = run_cli("train", other, "--run-dir", run, "--overwrite")
    assert res.exit_code == 0, res.output
    state = torch.load(run / "checkpoint" / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert state["config"]["train"]["lr"] == 0.02 and [r[M.EPOCH] for r in state["history"]] == [1]


@pytest.mark.timeout(600)
def test_ctrl_c_names_the_last_epoch_and_the_command_that_continues(tiny_project, tmp_path, monkeypatch):
    root, _ = tiny_project
    cfg = config_file(root, tmp_path / "cfg.yaml", **{"train.epochs": 2})
    run = tmp_path / "run"
    real, calls = raykd.train.epoch_row, []

    def ctrl_c_in_epoch_2(*args: Any, **kw: Any) -> dict:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what SIGINT raises in the main thread, mid-epoch 2
        return real(*args, **kw)

    monkeypatch.setattr(raykd.train, "epoch_row", ctrl_c_in_epoch_2)
    res, _ = run_cli("train", cfg, "--run-dir", run)
    assert res.exit_code == 130, (res.output, res.exception)
    (line,) = error_lines(res)
    assert "interrupted after epoch 1 of 2" in line and f"`raykd train {cfg} --run-dir {run}`" in line, line
    assert "Traceback" not in res.output
    assert [r[M.EPOCH] for r in history(run)] == [1] == saved_epochs(run)
    first = history(run)

    # The command it names continues from epoch 1: epoch 1 is not trained again.
    monkeypatch.setattr(raykd.train, "epoch_row", real)
    res, _ = run_cli("train", cfg, "--run-dir", run)
    assert res.exit_code == 0, res.output
    rows = history(run)
    assert [r[M.EPOCH] for r in rows] == [1, 2] and rows[0] == first[0]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", [CHECKPOINT_FILE, BEST_FILE])
def test_random_bytes_as_a_checkpoint_are_one_line(tiny_project, finished_run, tmp_path, name):
    """checkpoint.pt is read by `raykd train` (to continue), best.pt by `raykd export`: either
    damaged is one line naming the file, without torch's advice to load it unsafely."""
    cfg, src = finished_run
    run = copy_run(src, tmp_path)
    bad = run / "checkpoint" / name
    bad.write_bytes(os.urandom(4096))
    before = snapshot(run)
    res, _ = run_cli("train", cfg, "--run-dir", run) if name == CHECKPOINT_FILE else run_cli(
        "export", run, "--no-register")
    line = assert_one_user_error(res, str(bad), "not a raykd checkpoint")
    assert "weights_only" not in line
    assert snapshot(run) == before


@pytest.mark.slow  # two Ray starts (a subprocess and this process): ~2 min on 2 busy cores
@pytest.mark.timeout(600)
def test_ctrl_c_of_a_ray_train_run_is_the_same_line_and_it_continues(tiny_project, local_ray, tmp_path):
    """SIGINT to `raykd train` with scaling.num_workers 1 (a TorchTrainer): Ray Train's own
    handler aborts it; the CLI still names the last complete epoch (exit 130), history.json and
    run_dir/checkpoint hold it, and the same config continues from Ray's own checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    from raykd.config import config_from_dict
    from raykd.pipeline import fit

    root, inputs = tiny_project
    over = {"scaling.num_workers": 1, "train.epochs": 20, "tracking.enabled": False}
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config(root, **over))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "raykd.cli", "train", str(cfg), "--run-dir", str(run)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not registered_epoch(run) >= 2:  # Ray Train has registered epoch 2's checkpoint
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no second epoch in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # The last complete epoch is the last one Ray registered (newer ones may be on disk
    # unregistered: Ray would not resume from them), and that is what the rerun continues from.
    done = [r[M.EPOCH] for r in history(run)]
    assert len(done) >= 2 and done == list(range(1, len(done) + 1)) and len(done) < 20
    assert registered_epoch(run) == len(done)
    assert f"interrupted after epoch {len(done)} of 20" in err and f"--run-dir {run}`" in err, err
    assert "Traceback" not in err and saved_epochs(run) == done
    before = history(run)

    # Continued with one more epoch (train.epochs may change): Ray Train restores its own
    # state, the worker starts after epoch len(done), which is kept exactly as it was.
    trace = tmp_path / "trace"
    trace.mkdir()
    more = config_from_dict(tiny_config(root, **{**over, "train.epochs": len(done) + 1}))
    out = fit(more, run, inputs, trace_dir=trace)
    assert [r[M.EPOCH] for r in out.history] == list(range(1, len(done) + 2)) and out.history[:-1] == before
    starts = [int(line.split()[1]) for line in (trace / "rank0.starts").read_text().splitlines()]
    assert starts == [len(done)], starts  # 0-based start epoch: nothing trained again
