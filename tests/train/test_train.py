"""The distillation loop end to end on real (synthetic) audio and real tiny teachers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from raykd import metrics as M
from raykd.config import config_from_dict
from raykd.checkpoint import BEST_FILE, CHECKPOINT_FILE
from raykd.data.features import LogMel
from raykd.pipeline import fit
from raykd.train import evaluate
from raykd.models.student import build_student
from raykd.presets import tiny_config


def test_raykd_train_cli_improves_val_accuracy(tiny_project, tmp_path):
    """`raykd train` on synthetic data: val accuracy ends above the untrained student's."""
    import yaml

    from raykd.cli import app

    root, inputs = tiny_project
    raw = tiny_config(root)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    run_dir = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", str(path), "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "parameters" in res.output and "layer map" in res.output

    cfg = config_from_dict(raw)
    torch.manual_seed(cfg.seed)  # the loop seeds the same way before building the student
    untrained = build_student(cfg.student, cfg.features.n_mels)
    from raykd.models.projector import StudentWithProjectors
    from raykd.models.projector import build_projectors

    start = evaluate(StudentWithProjectors(untrained, build_projectors({}, {}, 64, 8), {}),
                     inputs.val, LogMel(cfg.features), cfg, torch.device("cpu"))[M.VAL_ACCURACY]

    ckpt = torch.load(run_dir / "checkpoint" / CHECKPOINT_FILE, weights_only=False)
    history = ckpt["history"]
    assert [r[M.EPOCH] for r in history] == [1, 2, 3, 4, 5, 6]
    for row in history:  # every loss term is there under its own name, and finite
        for term in ("ce", "kd", "align", "align.wav2vec2.2", "align.wav2vec2.4", "align.wav2vec2.6", "total"):
            assert math.isfinite(row[M.term_metric(term)]), term
        assert row[M.RSS_PEAK_MB] > 0 and M.VRAM_PEAK_MB not in row
    best_acc = max(r[M.VAL_ACCURACY] for r in history)
    assert best_acc > start, (start, [r[M.VAL_ACCURACY] for r in history])

    # The checkpoint carries its config: nothing else is needed to rebuild the student.
    best = torch.load(run_dir / "checkpoint" / BEST_FILE, weights_only=False)
    rebuilt = build_student(config_from_dict(best["config"]).student, cfg.features.n_mels)
    rebuilt.load_state_dict({k[len("student."):]: v for k, v in best["model"].items() if k.startswith("student.")})
    # The best epoch is the first with the lowest FRR at the target FA/h (the default objective).
    want = min(history, key=lambda r: r[M.VAL_FRR_AT_TARGET])
    assert best["metrics"][M.EPOCH] == want[M.EPOCH] and best["metrics"] == want
    assert best["det"]["epoch"] == want[M.EPOCH] and best["det"]["frr_at_target"] == want[M.VAL_FRR_AT_TARGET]

    # The final model's DET: det.json beside the checkpoint, and the plot on the run's MLflow run.
    det = json.loads((run_dir / "det.json").read_text())
    assert det == best["det"] and len(det["points"]) > 100
    assert det["threshold_at_target"] == want[M.VAL_THRESHOLD_AT_TARGET] and det["fa_per_hour_at_target"] <= 0.5
    assert det["negative_hours"] == pytest.approx(inputs.val.negative_seconds / 3600)
    from mlflow import MlflowClient

    c = MlflowClient(cfg.tracking.uri)
    runs = c.search_runs([c.get_experiment_by_name(cfg.tracking.experiment).experiment_id],
                         filter_string=f"tags.`raykd.best_checkpoint` = '{run_dir / 'checkpoint'}'")
    assert len(runs) == 1
    assert {a.path for a in c.list_artifacts(runs[0].info.run_id, "det")} == {"det/det.json", "det/det.png"}
    assert runs[0].data.metrics[M.VAL_FRR_AT_TARGET] == history[-1][M.VAL_FRR_AT_TARGET]


def test_baseline_and_logit_only_modes(tiny_project, tmp_path):
    """distillation.enabled false -> CE only; feature_alignment_enabled false -> no alignment term."""
    root, inputs = tiny_project
    base = config_from_dict(tiny_config(root, **{"train.epochs": 1, "tracking.enabled": False,
                                                  "distillation.enabled": False}))
    out = fit(base, tmp_path / "base", inputs)
    row = out.history[0]
    assert row["train_total"] == row["train_ce"] and row["train_kd"] == 0.0 and row["train_align"] == 0.0
    kd = config_from_dict(tiny_config(root, **{"train.epochs": 1, "tracking.enabled": False,
                                                "distillation.feature_alignment_enabled": False}))
    row = fit(kd, tmp_path / "kd", inputs).history[0]
    assert row["train_kd"] > 0 and row["train_align"] == 0.0
    assert math.isclose(row["train_total"], row["train_ce"] + row["train_kd"], rel_tol=1e-5)


def test_divergence_stops_early_with_finite_penalty(tiny_project, tmp_path):
    root, inputs = tiny_project
    cfg = config_from_dict(tiny_config(root, **{"train.epochs": 6, "train.lr": 1e6, "train.grad_clip": 1e9,
                                                 "train.divergence.patience": 2, "tracking.enabled": False}))
    out = fit(cfg, tmp_path / "div", inputs)
    assert out.status == "diverged"
    last = out.history[-1]
    assert last[M.DIVERGED] == 1.0 and last[M.STATUS] == "diverged"
    assert all(math.isfinite(v) for v in last.values() if isinstance(v, float))
    assert last[M.VAL_LOSS] == cfg.train.divergence.penalty
    assert len(out.history) < cfg.train.epochs


def test_out_of_memory_is_reported_not_retried(tiny_project, tmp_path, monkeypatch):
    """An allocation failure in the forward pass goes through the production except branch."""
    from raykd import train as T

    root, inputs = tiny_project
    calls = {"n": 0}
    real = T.StudentWithProjectors.forward

    def failing(self, feats):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, feats)

    monkeypatch.setattr(T.StudentWithProjectors, "forward", failing)
    cfg = config_from_dict(tiny_config(root, **{"train.epochs": 3, "tracking.enabled": False}))
    out = fit(cfg, tmp_path / "oom", inputs)
    assert out.status == "oom"
    last = out.history[-1]
    assert last[M.OOM] == 1.0 and last[M.RSS_PEAK_MB] > 0
    assert len(out.history) == 1  # stopped in the first epoch, not retried
