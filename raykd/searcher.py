"""The searcher a study runs: Optuna's TPE set for this space, behind Tune's OptunaSearch.

* ``multivariate=True, group=True``: layer booleans interact (a subset is a joint choice) and
  the space is conditional (booleans forced on/off by min_size/max_size are constants, not
  parameters, so trials differ in which parameters they sampled); grouped multivariate TPE
  models each set of co-occurring parameters jointly instead of each one alone.
* ``constant_liar=True``: with several trials running at once, TPE treats the running ones as
  bad results so it does not suggest the same region again.
* ASHA's early stops reach Optuna as **pruned**: Tune's OptunaSearch (ray/tune/search/optuna/
  optuna_search.py, `on_trial_complete`) tells Optuna COMPLETE with the last reported value
  for every trial that ended with a result, so a trial ASHA stopped at epoch 2 would enter
  TPE's model as a finished trial whose score is its epoch-2 value. Optuna already holds each
  epoch's value (`on_trial_result` reports it as an intermediate value, except the one that
  made the scheduler stop it: reported here); told PRUNED, TPE ranks the trial by how far it
  got and its value there, after the finished trials.
"""

from __future__ import annotations

from typing import Any, Callable

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from raykd import metrics as M
from raykd.config import SearchConfig


def n_startup_trials(search: SearchConfig) -> int:
    """TPE starts with random trials (Optuna's default: 10); on a small budget that would be
    the whole study, so a third of the budget (2..10) is random, the rest model-guided."""
    return max(2, min(10, search.num_samples // 3))


def make_sampler(search: SearchConfig) -> Any:
    """Seeded TPE for this space (see the module docstring), or the random baseline."""
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.samplers import RandomSampler, TPESampler

    if search.sampler == "random":
        return RandomSampler(seed=search.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # `group` is marked experimental
        return TPESampler(seed=search.seed, n_startup_trials=n_startup_trials(search),
                          multivariate=True, group=True, constant_liar=True)


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for a trial stopped before its epochs by the scheduler.

    A trial that ended early on divergence or out-of-memory keeps Tune's COMPLETE with its
    finite penalty: that is a real result, and it teaches the sampler the region is bad.
    """

    def __init__(self, *args: Any, epochs: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epochs = epochs

    def stopped_early(self, result: dict[str, Any] | None) -> bool:
        return bool(result) and M.EPOCH in result and result[M.EPOCH] < self.epochs \
            and not result.get(M.DIVERGED) and not result.get(M.OOM)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if error or trial_id in self._completed_trials or not self.stopped_early(result):
            return super().on_trial_complete(trial_id, result=result, error=error)
        ot_trial = self._ot_trials[trial_id]
        # The result that made the scheduler stop it never went through on_trial_result (Tune
        # forwards only results it continues on): report it, as Tune would have, at its step.
        step = int(result.get(TRAINING_ITERATION, result[M.EPOCH]))
        if step not in self._ot_study.get_trials(deepcopy=False)[ot_trial.number].intermediate_values:
            ot_trial.report(result[self.metric], step)
        # Optuna takes the last intermediate value (where the trial stopped) as its value.
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def make_searcher(search: SearchConfig, space: Callable[[Any], dict[str, Any]], epochs: int,
                  points: list[dict[str, Any]] | None = None) -> OptunaSearch:
    """Tune's searcher for a study: the define-by-run `space` (picklable: Tune checkpoints the
    searcher), `points` evaluated first, the seeded sampler, early stops told as pruned."""
    return PruningOptunaSearch(space=space, metric=search.metric, mode=search.mode, points_to_evaluate=points or None,
                               sampler=make_sampler(search), epochs=epochs)
