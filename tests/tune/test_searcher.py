"""The study's searcher: TPE settings for this space, and ASHA's early stops told to Optuna as pruned.

Driven the way Tune's controller drives a searcher (suggest, on_trial_result per epoch,
on_trial_complete with the last result: ray/tune/execution/tune_controller.py `stop_trial`),
with the real OptunaSearch and Optuna; one slow test runs it under a real Tuner with ASHA.
"""

from __future__ import annotations

import functools

import pytest
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from raykd.config import SearchConfig
from raykd.searcher import PruningOptunaSearch, make_sampler, make_searcher
from raykd.tune import define_space

SEARCH = SearchConfig(params={
    "wav2vec2": {"type": "layer_subset", "candidates": [2, 4, 6], "min_size": 1, "max_size": 2},
    "train.lr": {"type": "loguniform", "low": 0.001, "high": 0.01},
}, num_samples=12, metric="val_accuracy", mode="max", seed=3)


def drive(searcher, trial_id: str, values: list[float], forwarded: bool = True, **last) -> None:
    """One trial as Tune runs it: suggest, one result per epoch, completion with the last result.

    forwarded=False: the last result made the scheduler stop the trial, and Tune then passes it
    to on_trial_complete only, not to on_trial_result."""
    assert searcher.suggest(trial_id)
    result = {}
    for epoch, v in enumerate(values, 1):
        result = {"val_accuracy": v, "epoch": epoch, "training_iteration": epoch, **last}
        if forwarded or epoch < len(values):
            searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result=result)


def states(searcher) -> list[tuple[TrialState, float | None]]:
    return [(t.state, t.value) for t in searcher._ot_study.trials]


def test_tunes_own_searcher_tells_an_early_stop_complete_with_its_early_value():
    """What Ray's OptunaSearch does (why raykd overrides it): a stopped trial looks finished."""
    stock = OptunaSearch(space=functools.partial(define_space, search=SEARCH), metric="val_accuracy", mode="max",
                         sampler=make_sampler(SEARCH))
    drive(stock, "a", [0.5, 0.6])
    assert states(stock) == [(TrialState.COMPLETE, 0.6)]


def test_an_early_stop_is_pruned_and_real_results_stay_complete():
    s = make_searcher(SEARCH, functools.partial(define_space, search=SEARCH), epochs=4)
    assert isinstance(s, PruningOptunaSearch)
    drive(s, "stopped", [0.5, 0.6])  # ASHA stopped it after epoch 2 of 4
    drive(s, "stopped-at-once", [0.4], forwarded=False)  # stopped on its first result (never forwarded)
    drive(s, "full", [0.5, 0.6, 0.7, 0.8])
    drive(s, "diverged", [1e-4], diverged=1.0)  # the loop's finite penalty: a result, not a prune
    assert s.suggest("crashed")
    s.on_trial_complete("crashed", error=True)
    assert states(s) == [(TrialState.PRUNED, 0.6), (TrialState.PRUNED, 0.4), (TrialState.COMPLETE, 0.8),
                         (TrialState.COMPLETE, 1e-4), (TrialState.FAIL, None)]
    pruned = s._ot_study.trials[0]
    assert pruned.intermediate_values == {1: 0.5, 2: 0.6}  # TPE ranks it by how far it got and its value there
    s.on_trial_complete("stopped", result={"val_accuracy": 0.9, "epoch": 3})  # a late duplicate changes nothing
    assert s._ot_study.trials[0].state == TrialState.PRUNED


def test_sampler_settings_for_this_space():
    from optuna.samplers import RandomSampler, TPESampler

    tpe = make_sampler(SEARCH)
    assert isinstance(tpe, TPESampler)
    assert (tpe._multivariate, tpe._group, tpe._constant_liar, tpe._n_startup_trials) == (True, True, True, 4)
    assert isinstance(make_sampler(SEARCH.model_copy(update={"sampler": "random"})), RandomSampler)
    # seeded: the same space and seed give the same first suggestions
    a, b = (make_searcher(SEARCH, functools.partial(define_space, search=SEARCH), epochs=4) for _ in range(2))
    assert [a.suggest(f"t{i}") for i in range(3)] == [b.suggest(f"t{i}") for i in range(3)]


@pytest.mark.slow
def test_under_a_real_tuner_asha_stops_reach_optuna_as_pruned(local_ray, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    def climb(config: dict) -> None:
        """Scores grow each epoch, faster with a higher lr: ASHA stops the slow ones. (Nested, so
        Ray pickles it by value: the test module is not importable on a worker.)"""
        for epoch in range(1, 5):
            tune.report({"val_accuracy": config["train.lr"] * 100 * epoch, "epoch": epoch})

    searcher = make_searcher(SEARCH, functools.partial(define_space, search=SEARCH), epochs=4)
    grid = tune.Tuner(
        climb,
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", search_alg=searcher, num_samples=4,
                                    max_concurrent_trials=1,
                                    scheduler=ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1,
                                                            reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()
    seen = set()
    for r in grid:  # each Tune trial, as Optuna holds it
        frozen = searcher._ot_study.trials[searcher._ot_trials[r.metrics["trial_id"]].number]
        stopped = r.metrics["epoch"] < 4
        assert frozen.state == (TrialState.PRUNED if stopped else TrialState.COMPLETE)
        assert frozen.value == pytest.approx(r.metrics["val_accuracy"])  # pruned: its value where it stopped
        seen.add(stopped)
    assert seen == {True, False}  # ASHA stopped some, not all


@pytest.mark.parametrize("name, depth, final", [("wakeword-local.yaml", None, [4]), ("wakeword.yaml", 24, [20, 22, 24])])
def test_shipped_spaces_search_both_teachers_and_final_conformer_layers_go_to_the_penultimate_tap(name, depth, final):
    """The guide's Conformer groups: early, middle, final; final -> the student's penultimate layer.

    depth None: the local teacher's own arch; 24: facebook/wav2vec2-conformer-rel-pos-large's
    num_hidden_layers (a hub id: not readable offline). final: the group the YAML calls final."""
    from pathlib import Path

    from raykd.config import LayerSubsetParam, load_config
    from raykd.distill.losses import layer_mapping
    from raykd.tune import trial_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "search_spaces" / name)
    params = cfg.search.params
    assert isinstance(params["wav2vec2"], LayerSubsetParam) and isinstance(params["conformer"], LayerSubsetParam)
    depth = depth or cfg.teachers["conformer"].arch.num_hidden_layers
    cands = params["conformer"].candidates
    assert max(cands) == depth and min(cands) <= depth // 3  # reaches the last block and the early third
    assert any(depth // 3 < c <= 2 * depth // 3 for c in cands)  # and the middle
    taps = layer_mapping(depth, cands, cfg.student.blocks)
    assert [c for c in cands if taps[c] == cfg.student.blocks - 1] == final  # the YAML's final group
    # a trial that picks a final Conformer layer aligns it (beside its wav2vec2 layers)
    trial = {**{f"wav2vec2.L{x}": x == 4 for x in params["wav2vec2"].candidates},
             **{f"conformer.L{x}": x == depth for x in cands},
             **{k: p.low if hasattr(p, "low") else p.choices[0] for k, p in params.items()
                if not isinstance(p, LayerSubsetParam)}}
    assert trial_config(cfg, trial).alignment_layers_by_teacher() == {"wav2vec2": [4], "conformer": [depth]}
