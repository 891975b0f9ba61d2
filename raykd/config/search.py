"""The search space: one class per parameter type, each of which knows how to suggest itself
to Optuna (define-by-run) and how its sampled value becomes a config update.

A new parameter type is one class here (and one entry in `SearchParam`); `Param`'s abstract
methods make a type that cannot suggest itself impossible to build.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Annotated, Any, Literal, Union

from pydantic import Field

from raykd.config.base import Strict
from raykd.layer_keys import layer_param

GUIDE_WEIGHT = 0.1  # the guide's recommended feature_alignment_weight
GUIDE_LAYERS = {"wav2vec2": [2, 4, 6]}  # the guide's "Pro Tip" for short wakewords


class Param(Strict):
    """One searched config key. `suggest` asks Optuna for its value(s) and returns any values
    fixed without sampling; `updates` turns the trial's params into dotted config updates."""

    @abstractmethod
    def suggest(self, trial: Any, key: str) -> dict[str, Any]:
        ...

    def updates(self, key: str, params: dict[str, Any], layers: dict[str, list[int]]) -> dict[str, Any]:
        return {key: params[key]} if key in params else {}

    def guide(self, key: str) -> dict[str, Any]:
        """The guide's recommendation for this parameter, as Optuna params (none by default)."""
        return {}

    def contains(self, value: Any) -> bool:
        return True


class RangeParam(Param):
    """A numeric range low..high."""

    low: float
    high: float

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def guide(self, key: str) -> dict[str, Any]:
        if key == "distillation.feature_alignment_weight" and self.contains(GUIDE_WEIGHT):
            return {key: GUIDE_WEIGHT}
        return {}


class UniformParam(RangeParam):
    type: Literal["uniform"]

    def suggest(self, trial: Any, key: str) -> dict[str, Any]:
        trial.suggest_float(key, self.low, self.high)
        return {}


class LogUniformParam(RangeParam):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    def suggest(self, trial: Any, key: str) -> dict[str, Any]:
        trial.suggest_float(key, self.low, self.high, log=True)
        return {}


class IntParam(RangeParam):
    type: Literal["int"]
    low: int
    high: int

    def suggest(self, trial: Any, key: str) -> dict[str, Any]:
        trial.suggest_int(key, self.low, self.high)
        return {}

    def guide(self, key: str) -> dict[str, Any]:
        return {}


class CategoricalParam(Param):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    def suggest(self, trial: Any, key: str) -> dict[str, Any]:
        trial.suggest_categorical(key, self.choices)
        return {}

    def contains(self, value: Any) -> bool:
        return value in self.choices


class LayerSubsetParam(Param):
    """One boolean per candidate layer (never lists as categorical choices).

    Too-small subsets cannot happen: when the layers still undecided are exactly as many as
    the subset still needs, they are forced on without being sampled (and too-large ones
    likewise forced off). Forced values are returned as constants, so Optuna only models
    real choices. The key is a teacher name.
    """

    type: Literal["layer_subset"]
    candidates: list[int] = Field(min_length=1)
    min_size: int = Field(1, ge=0)  # 0 = this teacher may go unaligned in a trial
    max_size: int | None = None

    def suggest(self, trial: Any, key: str) -> dict[str, Any]:
        hi = self.max_size if self.max_size is not None else len(self.candidates)
        consts: dict[str, Any] = {}
        chosen = 0
        for i, layer in enumerate(self.candidates):
            name, left = layer_param(key, layer), len(self.candidates) - i
            if chosen + left <= self.min_size:
                consts[name] = True
            elif chosen >= hi:
                consts[name] = False
            else:
                chosen += bool(trial.suggest_categorical(name, [False, True]))
                continue
            chosen += bool(consts[name])
        return consts

    def updates(self, key: str, params: dict[str, Any], layers: dict[str, list[int]]) -> dict[str, Any]:
        layers[key] = [l for l in self.candidates if params.get(layer_param(key, l))]
        return {}

    def guide(self, key: str) -> dict[str, Any]:
        if key not in GUIDE_LAYERS:
            return {}
        return {layer_param(key, l): l in GUIDE_LAYERS[key] for l in self.candidates}

    def contains(self, value: Any) -> bool:
        return isinstance(value, bool)


PARAM_TYPES = ("uniform", "loguniform", "int", "categorical", "layer_subset")
SearchParam = Annotated[
    Union[UniformParam, LogUniformParam, IntParam, CategoricalParam, LayerSubsetParam],
    Field(discriminator="type"),
]


class AshaConfig(Strict):
    enabled: bool = True
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SearchConfig(Strict):
    # dotted config key -> distribution; layer_subset keys are teacher names
    params: dict[str, SearchParam] = {}
    num_samples: int = Field(12, ge=1)
    max_concurrent: int = Field(2, ge=1)
    metric: str = "val_frr_at_target"  # FRR at eval.target_fa_per_hour on the validation stream
    mode: Literal["min", "max"] = "min"
    seed: int = 0
    sampler: Literal["tpe", "random"] = "tpe"  # Optuna sampler (random: the baseline benchmarks compare to)
    asha: AshaConfig = AshaConfig()
    trial_epochs: int | None = None  # epochs per trial; None = train.epochs
    # before the search: the student alone and logit-KD only, each run this many times (seeds
    # seed, seed+1, ...) on the trial budget, so the study can say whether distillation helped; 0 = none
    baseline_seeds: int = Field(2, ge=0)
    # evaluated first, after the guide's recommendation: {optuna param: value}; layer params
    # are "<teacher>.L<layer>": true/false
    initial_points: list[dict[str, Any]] = []
