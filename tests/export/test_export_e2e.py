"""`raykd train` -> `raykd export` -> `raykd eval` on the tiny synthetic project."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from raykd import metrics as M
from raykd.config import config_from_dict
from raykd.presets import tiny_config


@pytest.mark.slow
def test_exported_model_scores_what_training_scored(tiny_project, tmp_path, monkeypatch):
    """The raw-audio export of a real run, streamed by raykd.evaluate over the validation split
    (clips and streams), gives the validation metrics stored in best.pt (same audio, same
    streaming code, same threshold: any difference beyond float rounding is a bug in the chain)."""
    from raykd.cli import app
    from raykd.eval_data import onnx_scorer
    from raykd.evaluate import evaluate_detector
    from raykd.export import BEST_FILE, ONNX_FILE, SIDECAR_FILE
    from raykd.pipeline import fit

    root, inputs = tiny_project
    monkeypatch.chdir(tmp_path)  # MLflow artifacts of the sqlite store land in ./mlruns
    cfg = config_from_dict(tiny_config(root, **{"train.epochs": 2, "tracking.uri": f"sqlite:///{tmp_path / 'm.db'}"}))
    out = fit(cfg, tmp_path / "run", inputs)
    assert out.status == "completed"

    res = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "export" / ONNX_FILE).is_file() and "registered version: 1" in res.output

    best = torch.load(out.checkpoint_dir / BEST_FILE, weights_only=True)["metrics"]
    got = evaluate_detector(onnx_scorer(tmp_path / "export" / ONNX_FILE), inputs.val, cfg.features, cfg.eval,
                            cfg.train.threshold)
    assert got["frr"] == pytest.approx(best[M.VAL_FRR])
    assert got["fa_per_hour"] == pytest.approx(best[M.VAL_FA_PER_HOUR])
    assert got["frr_at_target"] == pytest.approx(best[M.VAL_FRR_AT_TARGET])
    side = json.loads((tmp_path / "export" / SIDECAR_FILE).read_text())
    if 0 < best[M.VAL_THRESHOLD_AT_TARGET] <= 1:  # the threshold a deployment gets is the one validation chose
        assert side["threshold"] == pytest.approx(best[M.VAL_THRESHOLD_AT_TARGET])

    manifest = tmp_path / "val.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(zip(inputs.val.paths, inputs.val.labels.tolist()))
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "export"), str(manifest), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["positives"] == int(inputs.val.labels.sum())
    clip_hours = int((inputs.val.labels == 0).sum()) * cfg.features.clip_seconds / 3600
    assert report["negative_hours"] == pytest.approx(clip_hours)
