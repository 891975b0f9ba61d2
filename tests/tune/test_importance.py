"""Layer importance recovers a planted effect, calls the rest inconclusive, and is direction-aware.

Synthetic trial rows shaped like trials.json (no Ray, no training): one layer adds a known
amount to the metric, the learning rate matters too, ASHA-like early stops lower some scores,
and the rest is noise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raykd.config import SearchConfig
from raykd.importance import describe, layer_effects, layer_importance, optuna_importances, summary_lines

CANDIDATES = [0, 2, 4, 6, 8, 10, 12]


def space(metric: str = "val_accuracy", mode: str = "max") -> SearchConfig:
    return SearchConfig(params={
        "wav2vec2": {"type": "layer_subset", "candidates": CANDIDATES, "min_size": 1, "max_size": 4},
        "distillation.feature_alignment_weight": {"type": "loguniform", "low": 0.02, "high": 0.5},
        "train.lr": {"type": "loguniform", "low": 0.001, "high": 0.01},
        "distillation.temperature": {"type": "categorical", "choices": [2.0, 4.0]},
    }, metric=metric, mode=mode)


def trial_rows(n: int, seed: int, metric: str = "val_accuracy", planted: int = 4, effect: float = 0.05,
               noise: float = 0.02, lr_effect: float = 0.03, lr_follows: int | None = None) -> list[dict]:
    """n trials: random subsets of 1..4 layers, random weight / lr / temperature; 30% stopped early.

    lr_follows: that layer's trials draw their lr from the upper part of the range (and the
    others from the lower part), so the layer and the learning rate are confounded.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        on = set(rng.choice(CANDIDATES, size=int(rng.integers(1, 5)), replace=False).tolist())
        u = rng.uniform(0.3, 1.0) if lr_follows in on else rng.uniform(0.0, 0.7) if lr_follows is not None \
            else rng.uniform()
        lr = math.exp(math.log(1e-3) + u * math.log(10))
        pruned = bool(rng.random() < 0.3)
        y = (0.85 + effect * (planted in on) + lr_effect * math.log(lr / 3e-3) - 0.04 * pruned
             + rng.normal(0, noise))
        params = {f"wav2vec2.L{layer}": layer in on for layer in CANDIDATES}
        params.update({"train.lr": lr, "distillation.feature_alignment_weight": math.exp(rng.uniform(-3.9, -0.7)),
                       "distillation.temperature": float(rng.choice([2.0, 4.0]))})
        rows.append({"trial_id": f"t{i}", "number": i + 1, "status": "pruned" if pruned else "completed",
                     "epochs": 2 if pruned else 6, "params": params, metric: y})
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_layer_is_found_and_the_others_are_inconclusive(seed):
    rows = trial_rows(36, seed)
    effects, adjusted, notes = layer_effects(rows, space(), seed=0)
    assert not notes and "log train.lr" in adjusted and "log epochs trained" in adjusted
    by_layer = {e.layer: e for e in effects}
    planted = by_layer.pop(4)
    assert planted.verdict == "helps"
    assert 0 < planted.low < planted.effect < planted.high
    assert abs(planted.effect - 0.05) < 0.025
    assert planted.n_on + planted.n_off == 36 and planted.n_on == sum(r["params"]["wav2vec2.L4"] for r in rows)
    for e in by_layer.values():
        assert e.verdict == "inconclusive", describe(e, 36)
        assert e.low < 0 < e.high


def test_lower_is_better_turns_the_verdict():
    """The same planted change (the metric falls by 0.05): helps when lower is better, hurts when higher is."""
    rows = trial_rows(36, 0, metric="val_frr", effect=-0.05)
    low_better = {e.layer: e for e in layer_effects(rows, space("val_frr", "min"), seed=0).effects}
    assert low_better[4].verdict == "helps" and low_better[4].high < 0
    assert all(e.verdict == "inconclusive" for layer, e in low_better.items() if layer != 4)
    high_better = {e.layer: e for e in layer_effects(rows, space("val_frr", "max"), seed=0).effects}
    assert high_better[4].verdict == "hurts"
    assert (high_better[4].low, high_better[4].high) == (low_better[4].low, low_better[4].high)
    text = summary_lines(layer_importance(rows, space("val_frr", "min"), seed=0))
    assert "lower is better" in text[0]
    assert any(line.strip().startswith("wav2vec2 L4: -0.0") and line.endswith("helps") for line in text)


def test_a_layer_confounded_with_the_learning_rate_is_not_credited():
    """L2's trials ran at higher learning rates, which help: on-minus-off credits L2, the model does not."""
    rows = trial_rows(40, 3, effect=0.0, noise=0.01, lr_effect=0.04, lr_follows=2)
    on = [r["val_accuracy"] for r in rows if r["params"]["wav2vec2.L2"]]
    off = [r["val_accuracy"] for r in rows if not r["params"]["wav2vec2.L2"]]
    naive = sum(on) / len(on) - sum(off) / len(off)
    assert naive > 0.02  # the old plot's number: a sizeable "effect" of a layer that does nothing
    l2 = next(e for e in layer_effects(rows, space(), seed=0).effects if e.layer == 2)
    assert l2.verdict == "inconclusive" and abs(l2.effect) < naive / 2


def test_few_trials_say_inconclusive_with_their_number():
    rows = trial_rows(8, 0)
    imp = layer_importance(rows, space(), seed=0)
    assert all(e.verdict in ("inconclusive", "untested") for e in imp.effects)
    assert imp.notes and "too few" in imp.notes[0]
    lines = summary_lines(imp)
    assert "no layer's effect is conclusive with 8 trials" in "\n".join(lines)
    untested = [e for e in imp.effects if e.verdict == "untested"]
    assert all(min(e.n_on, e.n_off) < 3 for e in untested)
    assert all("untested" in describe(e, 8) for e in untested)


def test_sentence_reads_as_the_terminal_shows_it():
    effects = layer_effects(trial_rows(36, 0), space(), seed=0).effects
    e = next(e for e in effects if e.layer == 4)
    text = describe(e, 36)
    assert text.startswith(f"wav2vec2 L4: +{e.effect:.3g} [+{e.low:.3g}, +{e.high:.3g}] ({e.n_on} on / {e.n_off} off)")
    assert text.endswith(": helps")
    other = next(e for e in effects if e.verdict == "inconclusive")
    assert "inconclusive with 36 trials" in describe(other, 36)


def test_seeded_bootstrap_repeats_and_rows_without_a_score_are_left_out():
    rows = trial_rows(30, 5)
    extra = [
        {"trial_id": "d", "status": "diverged", "epochs": 1, "params": rows[0]["params"], "val_accuracy": 0.0},
        {"trial_id": "e", "status": "error", "params": rows[1]["params"]},
        {"trial_id": "b", "status": "completed", "epochs": 6, "params": {}, "val_accuracy": 0.99},  # a baseline
    ]
    a = layer_importance(rows + extra, space(), seed=7)
    b = layer_importance(rows, space(), seed=7)
    assert a.n_trials == 30 and a.n_left_out == 2
    assert [(e.low, e.high) for e in a.effects] == [(e.low, e.high) for e in b.effects]
    assert json.loads(json.dumps(a.to_json()))["effects"][2]["name"] == "wav2vec2.L4"


def test_optuna_evaluators_rank_the_planted_layer_first_among_layers():
    rows = trial_rows(36, 1, effect=0.1, noise=0.01, lr_effect=0.0)
    shares = optuna_importances(rows, space(), seed=0)
    assert "ped_anova" in shares
    for name, imp in shares.items():
        layers = {k: v for k, v in imp.items() if k.startswith("wav2vec2.L")}
        assert max(layers, key=layers.get) == "wav2vec2.L4", (name, imp)
        assert set(imp) == {*(f"wav2vec2.L{x}" for x in CANDIDATES), "train.lr",
                            "distillation.feature_alignment_weight", "distillation.temperature"}


def test_plot_draws_intervals_and_marks_inconclusive(tmp_path):
    from matplotlib.image import imread

    from raykd.plots import layer_effect_plot

    imp = layer_importance(trial_rows(36, 0), space(), seed=0)
    path = layer_effect_plot(imp, tmp_path / "layer_effect.png")
    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 600
    green = (img[..., 1] > 0.5) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)  # the one layer that helps
    assert green.sum() > 50


def test_study_plots_write_the_effects_where_the_old_plot_was(tmp_path):
    """The call site (tune._finish_mlflow -> plots.study_plots) gets layer_effect.png/.json with intervals."""
    from raykd.config import config_from_dict
    from raykd.plots import study_plots
    from raykd.presets import tiny_config

    raw = tiny_config(tmp_path)
    raw["search"] = space().model_dump(mode="json")
    cfg = config_from_dict(raw)
    rows = [{**r, "last": {"rss_peak_mb": 500.0 + 10 * i}} for i, r in enumerate(trial_rows(36, 0))]
    paths = study_plots(cfg, rows, tmp_path)
    assert {p.name for p in paths} == {"layer_effect.json", "layer_effect.png", "memory_vs_layers.png", "trials.png"}
    saved = json.loads((tmp_path / "layer_effect.json").read_text())
    l4 = next(e for e in saved["effects"] if e["name"] == "wav2vec2.L4")
    assert l4["verdict"] == "helps" and 0 < l4["low"] < l4["high"] and l4["sentence"].endswith("helps")
    assert saved["n_trials"] == 36 and saved["summary"][0].startswith("Layer effects on val_accuracy")


def test_study_importance_reads_a_finished_study_folder(tmp_path):
    import yaml

    from raykd.importance import study_importance
    from raykd.presets import tiny_config

    raw = tiny_config(tmp_path)
    raw["search"] = {**space("val_frr", "min").model_dump(mode="json"), "seed": 4}
    (tmp_path / "search_space.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    rows = trial_rows(36, 0, metric="val_frr", effect=-0.05)
    (tmp_path / "trials.json").write_text(json.dumps(rows))
    imp = study_importance(tmp_path, n_boot=1000)
    assert (imp.metric, imp.mode, imp.n_trials) == ("val_frr", "min", 36)
    assert [e.name for e in imp.effects if e.verdict == "helps"] == ["wav2vec2.L4"]
    assert imp.effects == layer_importance(rows, space("val_frr", "min"), seed=4, n_boot=1000).effects
