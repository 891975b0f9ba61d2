"""The study's verdict, its trial table and its report, on small real inputs (no full study).

The end-to-end study (baselines tagged and first, distillation_gain on the parent, the report
on disk) is tests/tune/test_tune.py; here: the gain's arithmetic in both directions, the
table in a 100-column terminal, the report's content and a real headless browser, and that
a trial ASHA stopped is closed as FINISHED with raykd.status=pruned.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from raykd import baselines as B
from raykd.config import config_from_dict
from raykd.presets import tiny_config


def baseline_rows(metric: str, values: dict[str, list[float]]) -> list[dict]:
    return [{"trial_id": f"b{name}{i}", "baseline": name, "seed": i, "status": "completed", "epochs": 2,
             metric: v, "params": {}, "layers": {}} for name, vs in values.items() for i, v in enumerate(vs)]


def test_distillation_gain_is_signed_so_that_positive_means_it_helped():
    per = B.baseline_summary(baseline_rows("val_accuracy", {"student_alone": [0.80, 0.90], "logit_kd": [0.70, 0.72]}),
                             "val_accuracy")
    assert math.isclose(per["student_alone"]["mean"], 0.85) and math.isclose(per["student_alone"]["std"], 0.0707107,
                                                                             rel_tol=1e-5)
    g = B.distillation_gain(0.95, per, "max")  # against the better baseline, the student alone
    assert g["against"] == "student_alone" and math.isclose(g["value"], 0.10)
    assert math.isclose(g["low"], 0.05) and math.isclose(g["high"], 0.15) and g["verdict"] == "helped"
    assert B.distillation_gain(0.86, per, "max")["verdict"] == "inconclusive"  # inside the seed spread
    assert B.distillation_gain(0.84, per, "max")["verdict"] == "did not help"

    # lower is better (an error rate): the best baseline is the lowest, a lower trial is a gain
    per = B.baseline_summary(baseline_rows("val_frr", {"student_alone": [0.30, 0.34], "logit_kd": [0.20, 0.22]}),
                             "val_frr")
    g = B.distillation_gain(0.15, per, "min")
    assert g["against"] == "logit_kd" and math.isclose(g["value"], 0.06) and g["verdict"] == "helped"
    g = B.distillation_gain(0.25, per, "min")
    assert math.isclose(g["value"], -0.04) and g["verdict"] == "did not help"
    assert "did not help" in B.gain_sentence(g, "val_frr")


def test_teachers_are_scored_like_trials_and_a_weaker_one_is_named(tmp_path):
    from raykd.data.dataset import WaveformSet

    cfg = config_from_dict(tiny_config(tmp_path))
    labels = torch.tensor([1, 1, 0, 0, 0, 1])
    # a wakeword clip is a loud burst, the others (and a minute-long stream) silent
    waves = labels[:, None].float() * torch.ones(6, cfg.features.clip_samples)
    data = WaveformSet(waves, labels, ["s"] * 6, [f"c{i}.wav" for i in range(6)],
                       streams=[torch.zeros(60 * cfg.features.sample_rate)])
    perfect = B.score_set(lambda w: (w.abs().amax(1) > 0.5).float() * 0.98 + 0.01, data, cfg)
    assert perfect["val_accuracy"] == 1.0 and perfect["val_frr"] == 0.0 and perfect["val_fa_per_hour"] == 0.0
    assert perfect["val_frr_at_target"] == 0.0 and perfect["val_negative_hours"] > 60 / 3600
    assert math.isclose(perfect["val_loss"], -math.log(0.99), rel_tol=1e-5)
    deaf = B.score_set(lambda w: torch.full((w.shape[0],), 0.2), data, cfg)
    assert deaf["val_accuracy"] == 0.5 and deaf["val_frr"] == 1.0 and deaf["val_frr_at_target"] == 1.0

    alone = B.baseline_summary(baseline_rows("val_accuracy", {"student_alone": [0.8, 0.9]}), "val_accuracy")
    lines = B.weaker_teachers({"wav2vec2": perfect, "conformer": deaf}, alone, "val_accuracy", "max")
    assert len(lines) == 1 and lines[0].startswith("teacher conformer scores val_accuracy=0.5, worse than")


def trial_rows(n: int = 6) -> list[dict]:
    return [{"trial_id": f"t{i:04d}", "number": i + 1, "status": "pruned" if i % 2 else "completed",
             "epochs": 1 if i % 2 else 2, "val_accuracy": 0.5 + i / 20,
             "layers": {"wav2vec2": [[2, 4, 6], [1, 12], [6]][i % 3]},
             "params": {"wav2vec2.L2": i % 3 == 0, "wav2vec2.L4": i % 3 == 0, "wav2vec2.L6": i % 3 != 1,
                        "wav2vec2.L1": i % 3 == 1, "wav2vec2.L12": i % 3 == 1,
                        "distillation.feature_alignment_weight": 0.05 + i / 100, "train.lr": 0.003 + i / 1000},
             "last": {"epoch": 2, "rss_peak_mb": 900.0 + 10 * i, "val_accuracy": 0.5 + i / 20},
             "run_dir": ""} for i in range(n)]


def test_trial_table_fits_100_columns_with_baselines_first_and_layers_as_lists():
    from rich.console import Console

    from raykd.render import trials_table as _trials_table

    c = Console(width=100, record=True, file=open(os.devnull, "w"))
    base = baseline_rows("val_accuracy", {"student_alone": [0.8, 0.9], "logit_kd": [0.7, 0.72]})
    c.print(_trials_table("val_accuracy", "max", trial_rows(), baselines=base, width=100))
    text = c.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100 and "…" not in text
    order = [text.index(s) for s in ("student_alone s0", "logit_kd s1", "t0005", "t0000")]
    assert order == sorted(order), "baselines first, then trials best first"
    assert "wav2vec2: 2,4,6" in text and "wav2vec2: 1,12" in text and "val_accuracy ↑" in text
    assert "0.008" in text and "0.1" in text  # lr and the weight kept: they fit


def make_study(root: Path) -> Path:
    """A study dir as `raykd tune` leaves it: study.json, trials.json, the study's plots (made by
    raykd.plots from the rows), det.json beside the best trial's and a baseline's checkpoints."""
    from raykd.plots import study_plots
    from tests.tune.test_tune import SEARCH

    raw = tiny_config(root, name="report")
    raw["search"] = {**json.loads(json.dumps(SEARCH)), "metric": "val_accuracy", "mode": "max"}
    cfg = config_from_dict(raw)
    sdir = root / "runs" / "report"
    (sdir / "plots").mkdir(parents=True)
    rows = trial_rows()
    for r in rows:
        r["run_dir"] = str(sdir / "trials" / r["trial_id"])
    base = baseline_rows("val_accuracy", {"student_alone": [0.62, 0.70], "logit_kd": [0.6, 0.64]})
    for r in base:
        r["run_dir"] = str(sdir / "trials" / r["trial_id"])
    best = max(rows, key=lambda r: r["val_accuracy"])
    for run, shift in ((best, 0.0), (base[1], 0.15)):
        det = Path(run["run_dir"]) / "checkpoint" / "det.json"
        det.parent.mkdir(parents=True)
        curve = [[t / 10, min(1.0, t / 10 + shift), 40 * (1 - t / 10) ** 2] for t in range(11)]
        det.write_text(json.dumps({"det": curve, "operating_point": {"threshold": 0.6, "frr": 0.6 + shift,
                                                                      "fa_per_hour": 6.4, "target_fa_per_hour": 8}}))
    (sdir / "trials.json").write_text(json.dumps(rows))
    study_plots(cfg, rows, sdir / "plots")
    B.write_study_summary(sdir, B.study_summary(cfg, base, best, {"wav2vec2": {"val_accuracy": 0.6}}, len(rows),
                                                False))
    return sdir


def test_report_is_self_contained_and_says_whether_distillation_helped(tmp_path):
    from raykd.report import write_report

    sdir = make_study(tmp_path)
    html_path, md_path = write_report(sdir)
    page, md = html_path.read_text(), md_path.read_text()
    summary = json.loads((sdir / "study.json").read_text())
    assert summary["distillation_gain"]["verdict"] == "helped"  # 0.75 against the student alone's 0.66
    for text in (page, md):
        assert "student_alone" in text and "logit_kd" in text and "distillation_gain" in text
        assert "+0.09" in text and "distillation helped" in text
        assert "wav2vec2: 2,4,6" in text and "wav2vec2: 1,12" in text
        assert "teacher wav2vec2 scores val_accuracy=0.6, worse than the student alone" in text
    # every section in both, in the same order; images embedded in the HTML, linked in the Markdown
    h2 = [line.split("<h2>")[1].split("</h2>")[0] for line in page.splitlines() if "<h2>" in line]
    assert h2 == [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert {"Baselines", "Teachers", "Trials", "Layer importance", "DET curves", "Operating point"} <= set(h2)
    assert page.count("data:image/png;base64,") >= 4 and "src='plots" not in page and "src='http" not in page
    assert "](plots/det_vs_baseline.png)" in md and (sdir / "plots" / "det_vs_baseline.png").is_file()
    assert "0.6" in md.split("## Operating point")[1]  # the best trial's det.json operating point


@pytest.mark.skipif(not any(os.path.exists(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")),
                    reason="no Chromium (apt-get install -y chromium)")
def test_report_renders_in_a_headless_browser(tmp_path):
    from PIL import Image

    from benchmarks.report_browser import screenshot
    from raykd.report import write_report

    html_path, _ = write_report(make_study(tmp_path))
    png = screenshot(html_path, tmp_path / "report.png", width=1000, height=2400)
    img = Image.open(png).convert("RGB")
    assert img.size == (1000, 2400)
    px = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(2400, 1000, 3).int()
    ink = px.sum(-1) < 400  # dark pixels: text, axes, table rules
    r, g, b = px.unbind(-1)
    assert int(ink.any(1).sum()) > 600, "no text rendered down the page"
    assert int(((g > r + 8) & (g > b + 8)).sum()) > 10_000, "the green 'helped' box did not render"
    assert int(((b > r + 60) & (b > g + 20)).sum()) > 200, "no plot (blue points and curves) rendered"


@pytest.mark.slow
def test_a_trial_stopped_by_asha_is_finished_with_status_pruned(local_ray, tmp_path):
    """A real Tune run under ASHA (a trainable whose score is its lr) then the study's own
    summarise: the poor trial is cut at epoch 1, and its MLflow run is FINISHED, tagged pruned."""
    from mlflow import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from raykd import tracking as T
    from raykd.tune import summarise

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = tiny_config(tmp_path, name="asha")
    raw["search"] = {"params": {"train.lr": {"type": "categorical", "choices": [0.01, 0.001]}}, "trial_epochs": 3,
                     "metric": "val_accuracy", "mode": "max"}
    cfg = config_from_dict(raw)
    exp = T.experiment_id(uri, "tests")
    parent = T.find_or_create_run(uri, exp, tags={}, match={T.STUDY_TAG: "asha", T.KIND_TAG: "study"}, name="asha")
    study = {"name": "asha", "dir": str(tmp_path / "runs" / "asha"), "uri": uri, "experiment_id": exp,
             "parent_run_id": parent}

    def trainable(config):
        trial_id = tune.get_context().get_trial_id()
        T.find_or_create_run(uri, exp, tags={T.PARENT_TAG: parent, T.KIND_TAG: "trial"},
                             match={T.TRIAL_TAG: trial_id, T.STUDY_TAG: "asha"}, name=trial_id)
        for epoch in range(1, 4):
            tune.report({"epoch": epoch, "val_accuracy": config["train.lr"] * 90, "status": "completed"})

    tuner = tune.Tuner(trainable, param_space={"train.lr": tune.grid_search([0.01, 0.001])},
                       tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", max_concurrent_trials=1,
                                                   scheduler=ASHAScheduler(time_attr="epoch", max_t=3, grace_period=1,
                                                                           reduction_factor=2)),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0))
    Path(study["dir"]).mkdir(parents=True)
    out = summarise(cfg, tuner.fit(), Path(study["dir"]), study, epochs=3)
    status = {r["params"]["train.lr"]: (r["status"], r["epochs"]) for r in out.rows}
    assert status == {0.01: ("completed", 3), 0.001: ("pruned", 1)}
    c = MlflowClient(uri)
    runs = {r.data.tags[T.TRIAL_TAG]: r for r in c.search_runs([exp], filter_string="tags.`raykd.kind` = 'trial'")}
    for r in out.rows:
        run = runs[r["trial_id"]]
        assert run.info.status == "FINISHED" and run.data.tags[T.STATUS_TAG] == r["status"]
    assert c.get_run(parent).info.status == "FINISHED"


def test_baseline_configs_switch_distillation_off_and_change_only_the_seed(tmp_path):
    from tests.tune.test_tune import SEARCH

    raw = tiny_config(tmp_path)
    raw["search"] = {**json.loads(json.dumps(SEARCH)), "baseline_seeds": 3}
    cfg = config_from_dict(raw)
    points = B.baseline_points(cfg)
    assert [(p["raykd.baseline"], p["raykd.baseline_seed"]) for p in points] == [
        ("student_alone", 0), ("student_alone", 1), ("student_alone", 2), ("logit_kd", 0), ("logit_kd", 1),
        ("logit_kd", 2)]
    alone, kd = B.baseline_config(cfg, points[2]), B.baseline_config(cfg, points[3])
    assert not alone.distillation.enabled and alone.seed == 2 and alone.aligned_layers() == {}
    assert kd.distillation.enabled and not kd.distillation.feature_alignment_enabled and kd.seed == 0
    assert alone.train.epochs == kd.train.epochs == 2  # the trial budget, not train.epochs (6)
    assert kd.train.lr == cfg.train.lr and kd.distillation.temperature == cfg.distillation.temperature
    raw["search"]["baseline_seeds"] = 0
    assert B.baseline_points(config_from_dict(raw)) == []
