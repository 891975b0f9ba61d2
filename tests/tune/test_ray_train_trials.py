"""A study of Ray Train trials on a 2-CPU Ray: it finishes and leaves no placement group behind."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from raykd.presets import tiny_config

LIVE_PG_STATES = ("CREATED", "PENDING", "RESCHEDULING")


def live_placement_groups() -> list[dict]:
    import ray.util

    return [pg for pg in ray.util.placement_group_table().values() if pg["state"] in LIVE_PG_STATES]


@pytest.mark.slow
def test_ray_train_trials_release_their_placement_groups(tiny_project, local_ray, tmp_path):
    """>= 4 TorchTrainer trials (one worker each), max_concurrent 2, ASHA pruning some: the study
    finishes (no trial waits on resources a finished trial still holds) and no group survives it."""
    from raykd.config import config_from_dict
    from raykd.tune import run_study

    root, _ = tiny_project
    raw = tiny_config(root, name="pg-leak", **{"scaling.num_workers": 1, "tracking.enabled": False})
    raw["search"] = {"params": {"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.05}},
                     "num_samples": 4, "max_concurrent": 2, "trial_epochs": 3, "seed": 1,
                     "asha": {"grace_period": 1, "reduction_factor": 2}}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert not live_placement_groups(), "a group from an earlier test is still alive"
    t0 = time.perf_counter()
    out = run_study(config_from_dict(raw), space)
    rows = json.loads((root / "runs" / "pg-leak" / "trials.json").read_text())
    assert len(rows) == 4 and all(r["status"] in ("completed", "pruned") for r in rows), rows
    assert out.best is not None
    deadline = time.time() + 30  # removal is asynchronous: give the GCS a moment
    while live_placement_groups() and time.time() < deadline:
        time.sleep(0.5)
    assert not live_placement_groups(), live_placement_groups()
    print(f"4 Ray Train trials in {time.perf_counter() - t0:.1f} s")
