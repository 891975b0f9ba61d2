"""Did distillation help? The study's baselines, its teachers' own scores, and the verdict.

Before the search, every study runs two baselines on the trial budget (`search.trial_epochs`),
`search.baseline_seeds` times each with seeds seed, seed+1, ...:

* ``student_alone``: the student trained on the labels only (`distillation.enabled: false`);
* ``logit_kd``: logit distillation without feature alignment (`feature_alignment_enabled: false`).

They run as Tune trials with fixed configs in a Tuner of their own, so Optuna never sees them.
At the end, ``distillation_gain`` = best trial minus the mean of the best baseline on the study
metric, signed so that positive means distillation helped, with the spread over the baseline's
seeds: a gain inside that spread is no evidence that distillation helped.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from raykd import metrics as M
from raykd.config import RaykdConfig, with_updates
from raykd.data.dataset import WaveformSet
from raykd.fsutil import atomic_file
from raykd.results import BASELINE_PARAM, BASELINE_SEED_PARAM

STUDENT_ALONE = "student_alone"
LOGIT_KD = "logit_kd"
# what each baseline changes in the study's base config
BASELINES: dict[str, dict[str, Any]] = {
    STUDENT_ALONE: {"distillation.enabled": False},
    LOGIT_KD: {"distillation.feature_alignment_enabled": False},
}
STUDY_FILE = "study.json"

Scorer = Callable[[torch.Tensor], torch.Tensor]  # (B, clip_samples) raw audio -> (B,) wakeword probability


def baseline_names(cfg: RaykdConfig) -> list[str]:
    """Both baselines; logit KD only when there is a teacher to distil from."""
    return [STUDENT_ALONE, LOGIT_KD] if cfg.teachers and cfg.distillation.enabled else [STUDENT_ALONE]


def baseline_points(cfg: RaykdConfig) -> list[dict[str, Any]]:
    """The Tune configs of the baseline runs (empty when `search.baseline_seeds` is 0)."""
    return [{BASELINE_PARAM: name, BASELINE_SEED_PARAM: k}
            for name in baseline_names(cfg) for k in range(cfg.search.baseline_seeds)]


def baseline_config(base: RaykdConfig, params: dict[str, Any]) -> RaykdConfig:
    """The config of one baseline run: the base config (searched keys at their base values),
    the baseline's switch, its seed, and the trial budget."""
    updates = {**BASELINES[params[BASELINE_PARAM]], "seed": base.seed + int(params.get(BASELINE_SEED_PARAM, 0))}
    if base.search and base.search.trial_epochs:
        updates["train.epochs"] = base.search.trial_epochs
    return with_updates(base, updates)


# ----------------------------------------------------------------------------- the verdict


def baseline_summary(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """Per baseline: its values over seeds, mean, std (sample; 0 with one seed), n."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("baseline") and r.get(metric) is not None:
            out.setdefault(r["baseline"], {"values": []})["values"].append(float(r[metric]))
    for s in out.values():
        v = s["values"]
        s.update(mean=statistics.fmean(v), std=statistics.stdev(v) if len(v) > 1 else 0.0, n=len(v))
    return out


def distillation_gain(best_value: float | None, baselines: dict[str, dict[str, Any]], mode: str) -> dict | None:
    """Best trial minus the best baseline's mean, positive = distillation helped (either mode).

    `spread` is the std of the gain over the baseline's seeds (the baseline's own std), `low`/
    `high` the gain against its worst/best seed. Verdict: `helped` only when the gain exceeds
    the spread; `did not help` when it is <= 0; else `inconclusive`."""
    if best_value is None or not baselines:
        return None
    sign = 1.0 if mode == "max" else -1.0
    against = max(baselines, key=lambda n: sign * baselines[n]["mean"])
    b = baselines[against]
    gain = sign * (best_value - b["mean"])
    per_seed = [sign * (best_value - v) for v in b["values"]]
    verdict = "did not help" if gain <= 0 else ("helped" if gain > b["std"] else "inconclusive")
    return {"value": gain, "spread": b["std"], "low": min(per_seed), "high": max(per_seed), "n_seeds": b["n"],
            "against": against, "baseline_mean": b["mean"], "best": best_value, "verdict": verdict}


def baseline_lines(summary: dict[str, dict[str, Any]], metric: str) -> list[str]:
    return [f"baseline {name}: {metric}={s['mean']:.4g} +/- {s['std']:.2g} over {s['n']} seed(s)"
            for name, s in summary.items()]


def gain_sentence(gain: dict | None, metric: str) -> str:
    """The verdict in one plain sentence (the terminal, the report, the parent run's note)."""
    if gain is None:
        return "distillation_gain: not measured (no baseline or no finished trial)"
    seeds = f"{gain['n_seeds']} seed{'s' if gain['n_seeds'] != 1 else ''}"
    head = (f"distillation_gain {gain['value']:+.4g} {metric} (best trial {gain['best']:.4g} vs {gain['against']} "
            f"{gain['baseline_mean']:.4g} +/- {gain['spread']:.2g} over {seeds})")
    if gain["verdict"] == "did not help":
        return f"{head}: distillation did not help - the best trial is no better than {gain['against']}"
    if gain["verdict"] == "inconclusive":
        return f"{head}: inconclusive - the gain is within the baseline's spread over seeds"
    return f"{head}: distillation helped"


# ----------------------------------------------------------------------------- teachers


def teacher_scorer(teacher: torch.nn.Module, device: torch.device) -> Scorer:
    """A teacher as a Scorer: raw audio windows -> its wakeword probability."""

    def score(waves: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return teacher(waves.to(device)).logits.float().softmax(-1)[:, 1].cpu()

    return score


def score_set(scorer: Scorer, data: WaveformSet, cfg: RaykdConfig, batch: int = 64) -> dict[str, float]:
    """The validation metrics of any Scorer on a split, in the names and the way a trial reports
    them (`raykd.train.validate`): CE loss and accuracy per clip at train.threshold, the rest by
    streaming (`raykd.evaluate.evaluate_detector`): FRR, FA/h, the operating point, the DET summary."""
    from raykd.evaluate import as_metrics, evaluate_detector

    probs = torch.cat([scorer(data.waves[i:i + batch]) for i in range(0, len(data), batch)]) if len(data) \
        else torch.empty(0)
    clips = M.detection_metrics(probs, data.labels, cfg.train.threshold, cfg.features.clip_seconds)
    p_label = torch.where(data.labels == 1, probs, 1 - probs).clamp_min(1e-7)
    report = evaluate_detector(scorer, data, cfg.features, cfg.eval, cfg.train.threshold)
    return {M.VAL_LOSS: float(-p_label.log().mean()) if len(data) else 0.0, M.VAL_ACCURACY: clips.accuracy,
            **as_metrics(report)}


def teacher_scores(teacher_dirs: dict[str, str], val: WaveformSet, cfg: RaykdConfig) -> dict[str, dict[str, float]]:
    """Each fine-tuned teacher scored on the validation split exactly as a trial is."""
    from raykd.distill.targets import load_teachers
    from raykd.sessions import resolve_device

    device = resolve_device(cfg)
    teachers = load_teachers(teacher_dirs, device)
    return {name: score_set(teacher_scorer(t, device), val, cfg) for name, t in teachers.items()}


def check_teachers(cfg: RaykdConfig, teacher_dirs: dict[str, str], val: WaveformSet, study: dict[str, str],
                   say: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Each teacher's validation score on the study metric, on the parent run and said before
    the search (a teacher weaker than the student alone is the first thing to rule out)."""
    from raykd import tracking as T

    if not teacher_dirs:
        return {}
    metric = cfg.search.metric
    scores = teacher_scores(teacher_dirs, val, cfg)
    for name, s in scores.items():
        shown = metric if metric in s else M.VAL_ACCURACY  # a metric teachers are not scored on
        say(f"teacher {name}: {shown}={s[shown]:.4g} on the validation split")
    if study.get("uri"):
        T.MlflowLogger(study["uri"], study["parent_run_id"]).log_metrics(
            {f"teacher_{name}_{k}": v for name, s in scores.items() for k, v in s.items()}, step=0)
    return scores


def weaker_teachers(teachers: dict[str, dict[str, float]], baselines: dict[str, dict[str, Any]],
                    metric: str, mode: str) -> list[str]:
    """One line per teacher that scores worse than the student alone (the first thing to rule out)."""
    alone = baselines.get(STUDENT_ALONE)
    if not alone:
        return []
    return [f"teacher {name} scores {metric}={s[metric]:.4g}, worse than the student alone "
            f"({alone['mean']:.4g}): distilling from a weaker teacher may hurt"
            for name, s in teachers.items() if metric in s and M.better(alone["mean"], s[metric], mode)
            and alone["mean"] != s[metric]]


def study_summary(cfg: RaykdConfig, baselines: list[dict], best: dict | None, teachers: dict, n_trials: int,
                  interrupted: bool) -> dict[str, Any]:
    """study.json: the study's answer to "did distillation help?" and what it rests on."""
    metric, mode = cfg.search.metric, cfg.search.mode
    per_baseline = baseline_summary(baselines, metric)
    gain = distillation_gain(best[metric] if best else None, per_baseline, mode)
    keep = ("trial_id", "baseline", "seed", "status", "epochs", metric, "layers", "run_dir", "last")
    return {
        "study": cfg.name, "metric": metric, "mode": mode, "trial_epochs": cfg.search.trial_epochs,
        "n_trials": n_trials, "interrupted": interrupted,
        "baselines": [{k: r[k] for k in keep if k in r} for r in baselines],
        "baseline_summary": per_baseline,
        "best": {k: best[k] for k in ("trial_id", "status", "epochs", metric, "layers", "params", "run_dir", "last")
                 if k in best} if best else None,
        "distillation_gain": gain, "verdict": gain_sentence(gain, metric),
        "teachers": teachers,
        "weaker_teachers": weaker_teachers(teachers, per_baseline, metric, mode),
    }


def write_study_summary(study_dir: Path, summary: dict[str, Any]) -> Path:
    """runs/<study>/study.json: what `raykd report` and the parent run show."""
    path = study_dir / STUDY_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=str))
    return path


def read_study_summary(study_dir: Path) -> dict[str, Any] | None:
    path = study_dir / STUDY_FILE
    return json.loads(path.read_text()) if path.is_file() else None
