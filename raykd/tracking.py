"""MLflow: one parent run per study, one child run per trial, and the rank-0 metric logger.

MLflow is imported lazily (workers that do not track never pay for it). The default
tracking URI is MLflow's own default, `sqlite:///mlflow.db` in the working directory, made
absolute on the driver so that Ray workers (whose cwd differs) write to the same file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterable

from raykd import metrics as M
from raykd.config import RaykdConfig
from raykd.errors import UserError

TRIAL_TAG = "raykd.trial_id"
STUDY_TAG = "raykd.study"
STATUS_TAG = "raykd.status"  # completed | diverged | oom | pruned | error | interrupted
KIND_TAG = "raykd.kind"  # study | trial | baseline | train | export
BASELINE_TAG = "raykd.baseline"  # student_alone | logit_kd (kind: baseline)
SEED_TAG = "raykd.seed"
CHECKPOINT_TAG = "raykd.best_checkpoint"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (Markdown)
# MLflow 3 opens an experiment on the page its kind names; untagged, it may guess GenAI
# (traces, tokens). raykd's experiments hold training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def tracking_uri(cfg: RaykdConfig) -> str:
    """Config first, then $MLFLOW_TRACKING_URI, then sqlite:///<cwd>/mlflow.db."""
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail before any expensive work if the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s)
        except (urllib.error.URLError, OSError) as e:
            raise UserError(f"tracking.uri {uri}: MLflow server unreachable ({getattr(e, 'reason', e)}); "
                            "start it, fix the URI, or set tracking.enabled=false") from None
    elif uri.startswith("sqlite:///"):
        check_sqlite_writable(uri, Path(uri[len("sqlite:///"):]))
    elif uri.startswith("file:") or "://" not in uri:
        raise UserError(f"tracking.uri {uri}: the plain file store is refused by current MLflow; "
                        "use sqlite:///path/mlflow.db or an http(s) tracking server")


def check_sqlite_writable(uri: str, db: Path) -> None:
    """The MLflow database itself must take a write (a read-only file is otherwise found only
    after data synthesis and teacher fine-tuning): a table is made inside a transaction that
    is rolled back, so nothing changes. A database busy with another writer is writable."""
    import sqlite3

    parent = db.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"tracking.uri {uri}: folder {parent} does not exist or is not writable")
    if not db.exists():
        return  # MLflow creates it in the writable folder
    try:
        con = sqlite3.connect(db, timeout=1.0, isolation_level=None)
        try:
            # BEGIN alone succeeds on a read-only file; a write statement is what sqlite refuses.
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE raykd_write_check (x)")
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as e:
        if "locked" in str(e) or "busy" in str(e):
            return
        raise UserError(f"tracking.uri {uri}: {db}: cannot write the MLflow database ({e}); fix its "
                        "permissions, point tracking.uri elsewhere, or set tracking.enabled=false") from None


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """The experiment's id (created if new), tagged as one of training runs."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return c.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older raykd, or by hand
        _retry(c.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def run_status(status: str) -> str:
    """A trial's raykd status -> the MLflow run status. A pruned trial (ASHA stopped it: merely
    poor) finished normally; only a crash is FAILED, an interrupted trial KILLED."""
    return {"error": "FAILED", "interrupted": "KILLED"}.get(status, "FINISHED")


def study_results(summary: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The parent run's metrics and tags from study.json: best trial, baselines, distillation_gain."""
    metric = summary["metric"]
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    best = summary.get("best")
    if best:
        metrics[f"best_{metric}"] = best[metric]
        tags["raykd.best_trial"] = best["trial_id"]
    for name, s in summary.get("baseline_summary", {}).items():
        metrics.update({f"baseline_{name}_{metric}": s["mean"], f"baseline_{name}_{metric}_std": s["std"]})
    gain = summary.get("distillation_gain")
    if gain:
        metrics.update(distillation_gain=gain["value"], distillation_gain_spread=gain["spread"])
        tags["raykd.distillation"] = gain["verdict"]
    tags[NOTE_TAG] = summary_note(summary)
    return metrics, tags


def summary_note(summary: dict[str, Any]) -> str:
    """The parent run's description: the verdict, the baselines, the teachers, in Markdown."""
    metric = summary["metric"]
    lines = [f"**{summary['verdict']}**", "", f"| run | {metric} |", "|---|---|"]
    best = summary.get("best")
    if best:
        lines.append(f"| best trial {best['trial_id']} | {best[metric]:.4g} |")
    for name, s in summary.get("baseline_summary", {}).items():
        lines.append(f"| baseline {name} ({s['n']} seeds) | {s['mean']:.4g} +/- {s['std']:.2g} |")
    for name, s in summary.get("teachers", {}).items():
        if metric in s:
            lines.append(f"| teacher {name} | {s[metric]:.4g} |")
    lines += [""] + [f"- {w}" for w in summary.get("weaker_teachers", [])]
    return "\n".join(lines).strip() + "\n\nFull report: artifact `report.html`."


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'train.lr': '0.003', 'distillation.alignment_layers': '2,4,6'}."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = str(v)
    return out


def config_params(cfg: RaykdConfig) -> dict[str, str]:
    """Resolved config as params, with aligned layers per teacher readable: 'wav2vec2.layers = 2,4,6'."""
    params = flatten(cfg.model_dump(mode="json", exclude={"search"}))
    for name in cfg.teachers:
        params[f"{name}.layers"] = ",".join(map(str, cfg.aligned_layers().get(name, []))) or "none"
    return params


def find_or_create_run(uri: str, exp_id: str, tags: dict[str, str], match: dict[str, str],
                       name: str) -> str:
    """The run whose tags equal `match`, else a new one: a restarted trial makes no duplicate."""
    c = client(uri)
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in match.items())
    found = c.search_runs([exp_id], filter_string=flt, max_results=1)
    if found:
        return found[0].info.run_id
    return c.create_run(exp_id, tags={**tags, **match, "mlflow.runName": name}).info.run_id


def _retry(fn, *args: Any, attempts: int = 5, **kw: Any) -> Any:
    """SQLite allows one writer: concurrent trials may see 'database is locked' briefly."""
    for i in range(attempts):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - mlflow wraps sqlalchemy errors in several types
            if "locked" not in str(e) or i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)


class MlflowLogger:
    """A `raykd.loggers.MetricLogger` onto one MLflow run (rank 0 only): params, per-epoch
    metrics with the run's status tag; `close` ends the run (its owner, the driver, calls it)."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._c = client(uri)

    def log_config(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        existing = self._c.get_run(self.run_id).data.params
        todo = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(todo), 100):
            _retry(self._c.log_batch, self.run_id, params=todo[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        _retry(self._c.log_batch, self.run_id, metrics=ms)

    def log(self, row: dict[str, Any], step: int, checkpoint_dir: str | None = None) -> None:
        self.log_metrics(row, step)
        if M.STATUS in row:
            self.set_tags({STATUS_TAG: str(row[M.STATUS])})

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            _retry(self._c.set_tag, self.run_id, k, v)

    def close(self, status: str = "FINISHED") -> None:
        _retry(self._c.set_terminated, self.run_id, status)


def log_artifacts(uri: str, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    c = client(uri)
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path)
