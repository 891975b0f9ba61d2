"""Which teacher layers helped, and how sure the study is: layer effects with intervals.

A study's trials are few and not a designed experiment: layers are picked together with
weights, temperatures and learning rates, and ASHA stops some trials early. The mean metric
of trials with a layer on minus those with it off mixes all of that into one number and, on
ten trials, shows noise as a finding. Here instead:

* **Effects, other parameters held equal**: one linear model of the metric on every layer
  indicator, every other searched parameter (loguniform on a log scale, categoricals one-hot)
  and the epochs a trial trained (ASHA's early stops), fitted by least squares (a vanishing
  ridge keeps collinear layers finite).
* **Intervals that admit the sample size**: a seeded pairs bootstrap over the trials, widened
  by sqrt(n / (n - terms)) for the model's degrees of freedom, and simultaneous over the layers
  (Bonferroni): with ten layers, per-layer 95% intervals would flag one layer that does
  nothing in 40% of studies. An interval that crosses zero is **inconclusive**, and says how
  many trials would tell if the estimate held.
* **Optuna's evaluators** (PED-ANOVA; fANOVA when scikit-learn is installed) on the same
  trials, rebuilt as an in-memory Optuna study: a second opinion over all parameters.

Trials used: completed and pruned ones with the metric and every searched parameter (a
baseline row has no layer parameters); diverged / oom trials report a penalty, not a score,
and are left out (counted). Library code: nothing prints; `summary_lines` gives the CLI its text.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from raykd.config import CategoricalParam, LayerSubsetParam, LogUniformParam, RangeParam, SearchConfig
from raykd.layer_keys import layer_param

USED_STATUSES = ("completed", "pruned")
MIN_PER_SIDE = 3  # trials with the layer on (and off) before an effect is estimated
MIN_RESIDUAL_DOF = 3  # trials beyond the model's terms before it is fitted at all
MIN_OPTUNA_TRIALS = 8  # PED-ANOVA compares the top 10% with the rest: fewer is one trial vs the rest
_RIDGE = 1e-3  # relative to n on standardised columns: shrinks an estimate by ~0.1%


@dataclass(frozen=True)
class LayerEffect:
    """One candidate layer: the change in the metric with it on, other parameters equal."""

    teacher: str
    layer: int
    effect: float | None  # metric units (+ = the metric goes up); None = not estimated
    low: float | None
    high: float | None
    n_on: int
    n_off: int
    verdict: str  # helps | hurts | inconclusive | untested (too few trials on one side)
    trials_needed: int | None = None  # inconclusive: about this many more trials would tell

    @property
    def name(self) -> str:
        return layer_param(self.teacher, self.layer)


@dataclass(frozen=True)
class Importance:
    metric: str
    mode: str  # "max" | "min": which way is better
    n_trials: int  # trials the estimates used
    n_left_out: int  # trials without a usable score (diverged, oom, error, interrupted)
    level: float  # simultaneous coverage of the layers' intervals
    effects: list[LayerEffect]
    adjusted_for: list[str] = field(default_factory=list)  # other model terms held equal
    optuna: dict[str, dict[str, float]] = field(default_factory=dict)  # evaluator -> param -> share
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for e, d in zip(self.effects, out["effects"]):
            d["name"] = e.name
            d["sentence"] = describe(e, self.n_trials)
        out["summary"] = summary_lines(self)
        return out


# ----------------------------------------------------------------------------- the trials


def usable_trials(rows: list[dict[str, Any]], search: SearchConfig) -> list[dict[str, Any]]:
    """Rows with a finite score and a value for every searched parameter (search trials only)."""
    keys = searched_keys(search)
    out = []
    for r in rows:
        v = r.get(search.metric)
        if r.get("status") not in USED_STATUSES or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if all(k in r.get("params", {}) for k in keys):
            out.append(r)
    return out


def searched_keys(search: SearchConfig) -> list[str]:
    """The Optuna parameter names of a search space (one per candidate layer of a subset)."""
    keys: list[str] = []
    for key, p in search.params.items():
        if isinstance(p, LayerSubsetParam):
            keys += [layer_param(key, layer) for layer in p.candidates]
        else:
            keys.append(key)
    return keys


def _design(rows: list[dict[str, Any]], search: SearchConfig) -> tuple[np.ndarray, list[str], list[int]]:
    """(n, p) model matrix without intercept, column names, and which columns are layers."""
    cols: list[list[float]] = []
    names: list[str] = []
    layer_cols: list[int] = []
    for key, p in search.params.items():
        if isinstance(p, LayerSubsetParam):
            for layer in p.candidates:
                name = layer_param(key, layer)
                layer_cols.append(len(cols))
                names.append(name)
                cols.append([float(bool(r["params"][name])) for r in rows])
        elif isinstance(p, CategoricalParam):
            for choice in p.choices[1:]:  # the first choice is the reference level
                names.append(f"{key}={choice}")
                cols.append([float(r["params"][key] == choice) for r in rows])
        elif isinstance(p, RangeParam):
            log = isinstance(p, LogUniformParam)
            names.append(f"log {key}" if log else key)
            cols.append([math.log(r["params"][key]) if log else float(r["params"][key]) for r in rows])
    epochs = [float(r.get("epochs") or 0) for r in rows]
    if len(set(epochs)) > 1 and min(epochs) > 0:  # ASHA stopped some: compare at equal training
        names.append("log epochs trained")
        cols.append([math.log(e) for e in epochs])
    x = np.array(cols, dtype=float).T if cols else np.zeros((len(rows), 0))
    return x.reshape(len(rows), len(cols)), names, layer_cols


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes (intercept implicit); a column constant in this sample -> NaN."""
    n, p = x.shape
    beta = np.full(p, np.nan)
    xc = x - x.mean(axis=0)
    sd = xc.std(axis=0)
    keep = sd > 1e-12
    if not keep.any():
        return beta
    z = xc[:, keep] / sd[keep]
    b = np.linalg.solve(z.T @ z + _RIDGE * n * np.eye(int(keep.sum())), z.T @ (y - y.mean()))
    beta[keep] = b / sd[keep]
    return beta


# ----------------------------------------------------------------------------- the estimates


class LayerFit(NamedTuple):
    effects: list[LayerEffect]  # in the search space's order
    adjusted_for: list[str]  # the other model terms held equal ("log train.lr", "log epochs trained", ...)
    notes: list[str]  # what the model could not do with this many trials


def layer_effects(rows: list[dict[str, Any]], search: SearchConfig, *, n_boot: int = 4000, seed: int = 0,
                  level: float = 0.95) -> LayerFit:
    """Per candidate layer: effect on search.metric with a simultaneous bootstrap interval.

    rows: trials.json rows (filtered here by `usable_trials`).
    """
    rows = usable_trials(rows, search)
    x, names, layer_cols = _design(rows, search)
    y = np.array([float(r[search.metric]) for r in rows])
    n = len(rows)
    counts = [(int(x[:, j].sum()), n - int(x[:, j].sum())) for j in layer_cols]
    estimable = [j for j, (on, off) in zip(layer_cols, counts) if on >= MIN_PER_SIDE and off >= MIN_PER_SIDE]
    varying = [j for j in range(x.shape[1]) if j not in layer_cols and np.ptp(x[:, j]) > 0] if n else []
    cols, notes = _model_columns(n, estimable, varying)
    est = _fit(x[:, cols], y) if cols else np.zeros(0)
    boot = _bootstrap(x[:, cols], y, n_boot, seed) if cols else np.zeros((0, 0))
    k = sum(1 for j in cols if j in layer_cols)
    alpha = (1 - level) / max(k, 1)
    widen = math.sqrt(n / (n - len(cols) - 1)) if cols else 1.0
    effects = []
    teachers = [(key, layer) for key, p in search.params.items() if isinstance(p, LayerSubsetParam)
                for layer in p.candidates]
    for (teacher, layer), j, (on, off) in zip(teachers, layer_cols, counts):
        if j not in cols:
            verdict = "untested" if min(on, off) < MIN_PER_SIDE else "inconclusive"
            effects.append(LayerEffect(teacher, layer, None, None, None, on, off, verdict))
            continue
        c = cols.index(j)
        draws = boot[:, c][np.isfinite(boot[:, c])]
        if len(draws) < n_boot // 2:  # most resamples had the layer all on or all off
            effects.append(LayerEffect(teacher, layer, None, None, None, on, off, "inconclusive"))
            continue
        lo_q, hi_q = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
        e = float(est[c])
        low, high = e + widen * (float(lo_q) - e), e + widen * (float(hi_q) - e)
        effects.append(_judged(teacher, layer, e, low, high, on, off, search.mode, n))
    return LayerFit(effects, [names[j] for j in cols if j not in layer_cols], notes)


def _model_columns(n: int, estimable: list[int], varying: list[int]) -> tuple[list[int], list[str]]:
    """The model's columns for n trials: layers and other parameters, the layers alone when the
    trials are too few for both, or nothing (with a note saying why)."""
    def fits(cols: list[int]) -> bool:
        return n - len(cols) - 1 >= MIN_RESIDUAL_DOF

    full = sorted(set(estimable) | set(varying))
    if fits(full):
        return full, []
    if varying and estimable and fits(estimable):
        return estimable, [f"{n} trials are too few to also hold the {len(varying)} other parameters equal: "
                           "effects are from the layers alone"]
    if estimable:
        return [], [f"{n} trials are too few for {len(estimable) + 1} model terms (at least "
                    f"{len(estimable) + 1 + MIN_RESIDUAL_DOF} needed): no layer effect is estimated"]
    return [], []


def _bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, p) slopes refitted on trials drawn with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    n = len(y)
    return np.stack([_fit(x[idx], y[idx]) for idx in rng.integers(0, n, size=(n_boot, n))])


def _judged(teacher: str, layer: int, e: float, low: float, high: float, on: int, off: int, mode: str,
            n: int) -> LayerEffect:
    """The verdict: an interval on one side of zero helps or hurts (direction-aware)."""
    if low > 0 or high < 0:
        better = (low > 0) == (mode == "max")
        return LayerEffect(teacher, layer, e, low, high, on, off, "helps" if better else "hurts")
    reach = e - low if e > 0 else high - e  # from the estimate to the bound beyond zero
    # the interval shrinks like 1/sqrt(trials): that bound reaches zero near n * (reach / |effect|)^2
    needed = math.ceil(n * (reach / abs(e)) ** 2) - n if abs(e) > 1e-12 else None
    if needed is not None and needed > 20 * n:
        needed = None  # no effect visible at this size: no honest estimate
    return LayerEffect(teacher, layer, e, low, high, on, off, "inconclusive", needed)


def optuna_importances(rows: list[dict[str, Any]], search: SearchConfig, seed: int = 0) -> dict[str, dict[str, float]]:
    """Optuna's importance evaluators on the trials: {"ped_anova": {param: share}, "fanova": ...}.

    The trials are rebuilt as an in-memory Optuna study with the space's distributions; pruned
    trials enter with their (early) score, as in the effects. fANOVA only if scikit-learn is
    installed (it needs a random forest); PED-ANOVA needs nothing more.
    """
    import importlib.util

    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    rows = usable_trials(rows, search)
    if len(rows) < MIN_OPTUNA_TRIALS or len({float(r[search.metric]) for r in rows}) < 2:
        return {}  # nothing to rank: too few trials, or every trial scored the same
    dists = _distributions(search)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    try:
        study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize",
                                    sampler=optuna.samplers.RandomSampler(seed=seed))
    finally:
        optuna.logging.set_verbosity(verbosity)
    for r in rows:
        study.add_trial(optuna.trial.create_trial(params={k: r["params"][k] for k in dists}, distributions=dists,
                                                  value=float(r[search.metric])))
    evaluators: dict[str, Any] = {"ped_anova": PedAnovaImportanceEvaluator()}
    if importlib.util.find_spec("sklearn") is not None:
        evaluators["fanova"] = FanovaImportanceEvaluator(seed=seed)
    out = {}
    with warnings.catch_warnings():
        # experimental-API notices, and PED-ANOVA's "quantiles select the same trials" on few trials
        warnings.simplefilter("ignore")
        for name, ev in evaluators.items():
            try:
                out[name] = {k: float(v) for k, v in get_param_importances(study, evaluator=ev).items()}
            except RuntimeError:  # fANOVA: "zero total variance in all trees" (no split explains anything)
                continue
    return out


def _distributions(search: SearchConfig) -> dict[str, Any]:
    """Optuna distributions of the space, named as the trials' params are."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from raykd.config import IntParam

    dists: dict[str, Any] = {}
    for key, p in search.params.items():
        if isinstance(p, LayerSubsetParam):
            dists.update({layer_param(key, layer): CategoricalDistribution([False, True]) for layer in p.candidates})
        elif isinstance(p, CategoricalParam):
            dists[key] = CategoricalDistribution(p.choices)
        elif isinstance(p, IntParam):
            dists[key] = IntDistribution(p.low, p.high)
        elif isinstance(p, RangeParam):
            dists[key] = FloatDistribution(p.low, p.high, log=isinstance(p, LogUniformParam))
    return dists


def layer_importance(rows: list[dict[str, Any]], search: SearchConfig, *, n_boot: int = 4000, seed: int = 0,
                     level: float = 0.95) -> Importance:
    """Everything a study says about its layers: effects with intervals, Optuna's importances."""
    used = usable_trials(rows, search)
    fit = layer_effects(used, search, n_boot=n_boot, seed=seed, level=level)
    left_out = sum(1 for r in rows if r.get("status") not in USED_STATUSES and "params" in r
                   and all(k in r["params"] for k in searched_keys(search)))
    return Importance(search.metric, search.mode, len(used), left_out, level, fit.effects, fit.adjusted_for,
                      optuna_importances(used, search, seed=seed), fit.notes)


def study_importance(study_dir: str | Path, **kw: Any) -> Importance:
    """layer_importance of a finished study folder (its trials.json and search_space.yaml)."""
    from raykd.config import load_config

    study_dir = Path(study_dir)
    search = load_config(study_dir / "search_space.yaml").search or SearchConfig()
    rows = json.loads((study_dir / "trials.json").read_text())
    return layer_importance(rows, search, **{"seed": search.seed, **kw})


# ----------------------------------------------------------------------------- words


def _num(v: float) -> str:
    return f"{v:+.3g}"


def _trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def describe(e: LayerEffect, n_trials: int) -> str:
    """One line for the terminal: 'wav2vec2 L4: +0.05 [+0.02, +0.08] (6 on / 4 off): helps'."""
    head = f"{e.teacher} L{e.layer}"
    sides = f"({e.n_on} on / {e.n_off} off)"
    if e.verdict == "untested":
        return f"{head}: untested {sides}: needs {MIN_PER_SIDE} trials on each side"
    if e.effect is None:
        return f"{head}: inconclusive with {_trials(n_trials)} {sides}"
    text = f"{head}: {_num(e.effect)} [{_num(e.low)}, {_num(e.high)}] {sides}: {e.verdict}"
    if e.verdict == "inconclusive":
        more = (f"about {e.trials_needed} more would tell, if the estimate held" if e.trials_needed
                else "no effect visible")
        text += f" with {_trials(n_trials)} ({more})"
    return text


def summary_lines(imp: Importance) -> list[str]:
    """The study's answer to 'which layers?', for the terminal and the report."""
    better = "higher" if imp.mode == "max" else "lower"
    if not imp.effects:
        return ["Layer effects: the search has no layer_subset parameter"] + _optuna_lines(imp)
    k = sum(e.effect is not None for e in imp.effects)
    held = "other searched parameters held equal" if imp.adjusted_for else "layers alone"
    lines = [f"Layer effects on {imp.metric} ({better} is better), {held}: "
             f"{_trials(imp.n_trials)}, {imp.level:.0%} intervals simultaneous over {k} layers" if k else
             f"Layer effects on {imp.metric} ({better} is better): {_trials(imp.n_trials)}, too few for any estimate"
             + (f" ({imp.n_left_out} trials without a score left out)" if imp.n_left_out else "")]
    lines += [f"  {describe(e, imp.n_trials)}" for e in imp.effects]
    found = [e.name for e in imp.effects if e.verdict in ("helps", "hurts")]
    if imp.effects and not found:
        lines.append(f"  no layer's effect is conclusive with {_trials(imp.n_trials)}")
    lines += [f"  note: {n}" for n in imp.notes]
    return lines + _optuna_lines(imp)


def _optuna_lines(imp: Importance) -> list[str]:
    lines = []
    for name, shares in imp.optuna.items():
        top = sorted(shares.items(), key=lambda kv: -kv[1])[:5]
        lines.append(f"  Optuna {name} importance (top {len(top)}; a ranking, no sign or interval): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in top))
    return lines
