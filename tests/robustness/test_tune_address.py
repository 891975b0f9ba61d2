"""`raykd tune FILE --address ADDR` against a real two-node local Ray cluster (a head and a
worker node, each its own `ray start` process, token authentication on).

The CLI runs in a subprocess: this pytest process may already hold the session's local Ray
(`local_ray`), and a process can be connected to one Ray only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raykd.presets import tiny_config
from tests.robustness.conftest import write_yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_smoke_study_on_a_two_node_cluster(tiny_project, ray_cluster, tmp_path):
    root, _ = tiny_project  # teachers fine-tuned once for the session: the study reuses them
    raw = tiny_config(root, name="on-cluster", **{
        "storage_path": str(tmp_path / "runs"), "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    raw["search"] = {"params": {"distillation.feature_alignment_weight": {"type": "uniform", "low": 0.05, "high": 0.2}},
                     "num_samples": 2, "max_concurrent": 2, "trial_epochs": 1, "asha": {"enabled": False},
                     "baseline_seeds": 0}  # about faults / the cluster, not baselines: kept short
    space = write_yaml(tmp_path / "space.yaml", raw)

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(ray_cluster.auth_env)  # RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=<the cluster's token>
    env["PYTHONPATH"] = str(REPO)
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, "-m", "raykd.cli", "tune", str(space), "--address", ray_cluster.address]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "trials (best 2 of 2" in out and "best trial" in out, out[-4000:]

    sdir = tmp_path / "runs" / "on-cluster"
    trials = json.loads((sdir / "trials.json").read_text())
    assert len(trials) == 2 and all(t["status"] == "completed" and t["epochs"] == 1 for t in trials), trials
    assert (sdir / "best" / "config.yaml").is_file() and (sdir / "best" / "checkpoint" / "best.pt").is_file()
    # It joined the cluster: trials ran as Tune actors (ImplicitFunc) on the worker node too
    # (2 trials at once, 1 CPU per node). Each node process logs its own workers.
    logs = (ray_cluster.temp_root / "worker").glob("session_*/logs/worker-*")
    assert any("ImplicitFunc" in p.read_text(errors="replace") for p in logs), "no trial ran on the worker node"
