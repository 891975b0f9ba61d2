"""Tune's results -> the study's rows (one dict per trial or baseline run, as in trials.json).

A row: trial_id, number, status (completed | pruned | diverged | oom | error | interrupted),
epochs, params, the study metric (its best value over the run's epochs), layers (aligned
teacher layers, {teacher: [..]}), last (the last epoch's numbers), checkpoint, run_dir.
Baseline runs also carry `baseline` (student_alone | logit_kd) and `seed`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from raykd import metrics as M
from raykd.checkpoint import BEST_FILE
from raykd.layer_keys import parse_layer_param
from raykd.loggers import CHECKPOINT_PATH

# Tune-config keys of a baseline run (outside Optuna's space: a baseline is never an Optuna trial)
BASELINE_PARAM = "raykd.baseline"
BASELINE_SEED_PARAM = "raykd.baseline_seed"


def result_rows(grid: Any, metric: str, mode: str, epochs: int,
                layers_of: Callable[[dict[str, Any]], dict[str, list[int]]], study_dir: Path) -> list[dict[str, Any]]:
    """One row per Tune result; `layers_of(params)` gives the layers a run aligned."""
    rows = []
    for res in grid:
        unfinished = res.error is None and not (res.metrics or {}).get("done")
        params = dict(res.config or {})
        trial_id = _trial_id(res)
        row: dict[str, Any] = {"trial_id": trial_id, "number": _trial_number(res), "params": params,
                               "run_dir": str(study_dir / "trials" / trial_id)}
        if BASELINE_PARAM in params:
            row.update(baseline=params[BASELINE_PARAM], seed=params.get(BASELINE_SEED_PARAM, 0))
        if res.metrics is None or M.EPOCH not in (res.metrics or {}):
            row.update(status="interrupted" if unfinished else "error", error=str(res.error)[:200])
            rows.append(row)
            continue
        m = res.metrics
        status = m.get(M.STATUS, "completed")
        if unfinished:
            status = "interrupted"
        elif status == "completed" and m[M.EPOCH] < epochs:
            status = "pruned"  # ASHA stopped it: merely poor
        best_value = m[metric]
        df = res.metrics_dataframe
        if df is not None and metric in df:
            col = df[metric]
            best_value = float(col.max() if mode == "max" else col.min())
        row.update(status=status, epochs=m[M.EPOCH], layers=layers_of(params), last={
            k: v for k, v in m.items() if isinstance(v, (int, float))}, checkpoint=_checkpoint_of(res))
        row[metric] = best_value
        rows.append(row)
    return rows


def layers_text(row: dict[str, Any]) -> str:
    """'wav2vec2: 2,4,6; conformer: 1' (or 'none'): the layers a run aligned, readable."""
    layers = row.get("layers")
    if layers is None:  # an older trials.json: from the layer booleans
        layers = {}
        for key, on in row.get("params", {}).items():
            parsed = parse_layer_param(key)
            if parsed and on:
                layers.setdefault(parsed[0], []).append(parsed[1])
    parts = [f"{t}: {','.join(map(str, sorted(ls)))}" for t, ls in layers.items() if ls]
    return "; ".join(parts) or "none"


def run_label(row: dict[str, Any]) -> str:
    """A baseline is named by what it is ('student_alone s1'), a trial by its Tune id."""
    return f"{row['baseline']} s{row.get('seed', 0)}" if row.get("baseline") else row["trial_id"]


def fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def trial_table(metric: str, mode: str, baselines: list[dict[str, Any]], rows: list[dict[str, Any]],
                top: int | None = None) -> tuple[list[str], list[list[str]]]:
    """The trial table the terminal and the report show: baselines first (in their order), then
    trials best first; layers as lists, one column per other searched parameter (short names).
    Returns (headers, rows of cells)."""
    sign = -1.0 if mode == "max" else 1.0
    ranked = sorted(rows, key=lambda r: (r.get(metric) is None, sign * (r.get(metric) or 0.0)))[:top]
    keys = sorted({k for r in rows for k in r.get("params", {}) if not parse_layer_param(k)})
    headers = ["run", "status", "epochs", f"{metric} {'↑' if mode == 'max' else '↓'}", "layers",
               *short_names(keys)]
    cells = [[run_label(r), r["status"], fmt(r.get("epochs")), fmt(r.get(metric)), layers_text(r),
              *[fmt(r.get("params", {}).get(k)) for k in keys]] for r in [*baselines, *ranked]]
    return headers, cells


def short_names(keys: list[str]) -> list[str]:
    """'distillation.feature_alignment_weight' -> 'feature_alignment_weight' (the full key where
    two keys end alike)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [s if last.count(s) == 1 else k for s, k in zip(last, keys)]


def _trial_id(res: Any) -> str:
    """A trial that never reported has no metrics: its id is in its dir name."""
    if res.metrics and "trial_id" in res.metrics:
        return res.metrics["trial_id"]
    found = re.search(r"run_trial_([0-9a-f]+_\d+)", Path(res.path).name) if res.path else None
    return found.group(1) if found else "?"


def _trial_number(res: Any) -> int | None:
    """Order in which Tune created the trial (its dir is run_trial_<id>_<number>_...)."""
    found = re.search(r"run_trial_[0-9a-f]+_(\d+)_", Path(res.path).name) if res.path else None
    return int(found.group(1)) if found else None


def _checkpoint_of(res: Any) -> str | None:
    path = (res.metrics or {}).get(CHECKPOINT_PATH)
    if path and (Path(path) / BEST_FILE).exists():
        return path
    if res.checkpoint is not None and (Path(res.checkpoint.path) / BEST_FILE).exists():
        return res.checkpoint.path
    return None
