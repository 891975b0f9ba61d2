"""`raykd tune` end to end: Optuna + ASHA trials as Ray Train runs, MLflow, best/, export, eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raykd.cli import app
from tests.conftest import tiny_config

SEARCH = {
    "params": {
        "wav2vec2": {"type": "layer_subset", "candidates": [1, 2, 4, 6, 12], "min_size": 1, "max_size": 3},
        "distillation.feature_alignment_weight": {"type": "loguniform", "low": 0.02, "high": 0.5},
        "train.lr": {"type": "loguniform", "low": 0.003, "high": 0.02},
    },
    "num_samples": 4,
    "max_concurrent": 2,
    "trial_epochs": 2,
    "seed": 0,
    "asha": {"grace_period": 1, "reduction_factor": 2},
}


def write_space(root: Path, path: Path, **over) -> Path:
    raw = tiny_config(root, **over)
    raw["search"] = json.loads(json.dumps(SEARCH))
    path.write_text("# raykd tune " + path.name + "\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def child_runs(db: Path, study: str):
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{db}")
    exp = c.get_experiment_by_name("tests")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("raykd.kind") == "study" and r.data.tags.get("raykd.study") == study]
    children = [r for r in runs if r.data.tags.get("raykd.kind") == "trial" and r.data.tags.get("raykd.study") == study]
    return c, parents, children


@pytest.mark.slow
def test_smoke_study_end_to_end(tiny_project, local_ray, tmp_path):
    root, _ = tiny_project
    space = write_space(root, tmp_path / "space.yaml", name="e2e")
    res = CliRunner().invoke(app, ["tune", str(space)])
    assert res.exit_code == 0, res.output
    sdir = root / "runs" / "e2e"
    trials = json.loads((sdir / "trials.json").read_text())
    assert len(trials) == 4
    # the guide's recommendation is the first trial
    first = min(trials, key=lambda r: r["number"])
    assert first["number"] == 1
    assert {k for k, v in first["params"].items() if k.startswith("wav2vec2.L") and v} == {
        "wav2vec2.L2", "wav2vec2.L4", "wav2vec2.L6"}
    assert math.isclose(first["params"]["distillation.feature_alignment_weight"], 0.1)

    c, parents, children = child_runs(root / "mlflow.db", "e2e")
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED"
    arts = {a.path for a in c.list_artifacts(parents[0].info.run_id, "plots")}
    assert {"plots/layer_effect.png", "plots/memory_vs_layers.png", "plots/trials.png"} <= arts
    for ch in children:
        assert ch.info.status != "RUNNING"
        assert ch.data.tags["raykd.status"] in ("completed", "pruned")
        assert "rss_peak_mb" in ch.data.metrics and "train_ce" in ch.data.metrics
        assert "wav2vec2.layers" in ch.data.params and "train.lr" in ch.data.params
        assert ch.data.tags[c.get_run(ch.info.run_id).data.tags and "mlflow.parentRunId"] == parents[0].info.run_id

    best = sdir / "best"
    assert (best / "config.yaml").is_file() and (best / "checkpoint" / "best.pt").is_file()
    res = CliRunner().invoke(app, ["best", str(sdir)])
    assert res.exit_code == 0 and "trials" in res.output

    out = tmp_path / "export"
    res = CliRunner().invoke(app, ["export", str(best), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "student.onnx").is_file() and "parity" in res.output
    res = CliRunner().invoke(app, ["eval", str(out), str(root / "data" / "manifest.csv")])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output
