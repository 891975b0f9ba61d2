"""`raykd train` -> `raykd export` -> `raykd eval` on the tiny synthetic project."""

from __future__ import annotations

import csv

import pytest
import torch
from typer.testing import CliRunner

from raykd import metrics as M
from raykd.config import config_from_dict
from raykd.presets import tiny_config


@pytest.mark.slow
def test_exported_model_scores_what_training_scored(tiny_project, tmp_path, monkeypatch):
    """The export of a real run, run by onnxruntime on the val clips, gives the val metrics
    stored in best.pt (same clips, same threshold: any difference is a bug in the chain)."""
    from raykd.cli import app
    from raykd.export import BEST_FILE, ONNX_FILE, evaluate_onnx
    from raykd.pipeline import fit

    root, inputs = tiny_project
    monkeypatch.chdir(tmp_path)  # MLflow artifacts of the sqlite store land in ./mlruns
    cfg = config_from_dict(tiny_config(root, **{"train.epochs": 2, "tracking.uri": f"sqlite:///{tmp_path / 'm.db'}"}))
    out = fit(cfg, tmp_path / "run", inputs)
    assert out.status == "completed"

    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "export" / ONNX_FILE).is_file() and "registered version: 1" in res.output

    manifest = tmp_path / "val.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(zip(inputs.val.paths, inputs.val.labels.tolist()))
    got = evaluate_onnx(tmp_path / "export", manifest)
    best = torch.load(out.checkpoint_dir / BEST_FILE, weights_only=True)["metrics"]
    assert got["clips"] == len(inputs.val)
    assert got["accuracy"] == pytest.approx(best[M.VAL_ACCURACY])
    assert got["frr"] == pytest.approx(best[M.VAL_FRR])
    assert got["fa_per_hour"] == pytest.approx(best[M.VAL_FA_PER_HOUR])

    res = CliRunner().invoke(app, ["eval", str(tmp_path / "export"), str(manifest)])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output
