"""The search: Ray Tune + Optuna (define-by-run, seeded TPE) + ASHA, one Ray Train run per trial.

Layer subsets are one boolean per candidate layer (never lists as categorical choices).
Too-small subsets cannot happen: when the layers still undecided are exactly as many as the
subset still needs, they are forced on without being sampled (and too-large ones likewise
forced off). Forced values are returned as constants, so Optuna only models real choices.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from ray.tune import Callback
from ray.tune.stopper import Stopper

from raykd import metrics as M
from raykd import tracking as T
from raykd.checkpoint import BEST_FILE
from raykd.pipeline import DET_FILE, DET_PLOT, write_det  # a trial's DET at the end of a study
from raykd.config import LayerSubsetParam, RaykdConfig, SearchConfig, absolute_paths, with_updates
from raykd.errors import UserError
from raykd.locks import study_guard  # (kept apart from the lines below: they change in other branches)
from raykd.fsutil import atomic_dir
from raykd.loggers import CHECKPOINT_PATH, TuneLogger
from raykd.pipeline import Inputs, ensure_ray, prepare, run_distillation
from raykd.sessions import release_placement_groups
from raykd.storage import is_uri, join, pull_study, upload_dir

# A smoke study: the same code path, a few short trials on a small dataset.
SMOKE_UPDATES: dict[str, Any] = {
    "data.root": "data/wakeword-smoke",
    "data.synth.speakers": 20,  # from the whole pool, held-out families as in the full study
    "data.synth.stream_minutes": 5,
    "data.synth.positives_per_speaker": 6,
    "data.synth.near_misses_per_speaker": 6,
    "data.synth.other_per_speaker": 2,
    "data.synth.nonspeech_per_speaker": 2,
    "search.num_samples": 4,
    "search.trial_epochs": 2,
    "search.asha.grace_period": 1,
}


def define_space(trial: Any, search: SearchConfig) -> dict[str, Any]:
    """Optuna define-by-run space: each parameter suggests itself; returns the forced constants."""
    consts: dict[str, Any] = {}
    for key, p in search.params.items():
        consts.update(p.suggest(trial, key))
    return consts


def trial_updates(base: RaykdConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Flat Optuna params -> dotted config updates (layer booleans -> alignment_layers map)."""
    search = base.search
    updates: dict[str, Any] = {}
    layers = base.alignment_layers_by_teacher()
    for key, p in search.params.items():
        updates.update(p.updates(key, params, layers))
    if any(isinstance(p, LayerSubsetParam) for p in search.params.values()):
        updates["distillation.alignment_layers"] = layers
        if not any(layers.values()):  # min_size 0 and nothing picked: a logit-KD-only trial
            updates["distillation.feature_alignment_enabled"] = False
    if search.trial_epochs:
        updates["train.epochs"] = search.trial_epochs
    return updates


def trial_config(base: RaykdConfig, params: dict[str, Any]) -> RaykdConfig:
    """The config one trial runs (validated once, here, as it arrives in the trial)."""
    return with_updates(base, trial_updates(base, params))


def guide_point(search: SearchConfig) -> dict[str, Any] | None:
    """The guide's recommendation (wav2vec2 layers 2,4,6; weight 0.1) as the first trial."""
    point: dict[str, Any] = {}
    for key, p in search.params.items():
        point.update(p.guide(key))
    return point or None


# ----------------------------------------------------------------------------- one trial


def run_trial(params: dict[str, Any], base: RaykdConfig, inputs: Inputs, study: dict[str, str]) -> None:
    """The function trainable: one trial = one Ray Train run (TorchTrainer + TuneReportCallback)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(base, params)
    ctx = ray.tune.get_context()
    trial_id = ctx.get_trial_id()
    run_dir = Path(study["dir"]) / "trials" / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    tracking = None
    if study.get("uri"):
        run_id = T.find_or_create_run(
            study["uri"], study["experiment_id"],
            tags={T.PARENT_TAG: study["parent_run_id"], T.KIND_TAG: "trial"},
            match={T.TRIAL_TAG: trial_id, T.STUDY_TAG: study["name"]}, name=trial_id)
        tracking = {"uri": study["uri"], "run_id": run_id}

    if cfg.scaling.num_workers == 0:
        # In-process trial: the loop reports each epoch (and its checkpoint) to Tune itself.
        run_distillation(cfg, inputs, run_dir, loggers=[TuneLogger()], tracking=tracking,
                         get_checkpoint=ray.tune.get_checkpoint)
    else:
        run_distillation(cfg, inputs, run_dir, callbacks=[TuneReportCallback()], tracking=tracking)
    if tracking:
        T.MlflowLogger(**tracking).close("FINISHED")


class ReleaseWorkers(Callback):
    """When a Ray Train trial ends by any path (completed, pruned by ASHA, errored), remove
    its worker group's placement group if Ray left it alive, before the next trial needs it."""

    def __init__(self, trials_dir: str):
        self.trials_dir = trials_dir

    def _release(self, trial: Any) -> None:
        release_placement_groups(Path(self.trials_dir) / trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)


class UploadStudy(Callback):
    """A study on a bucket: after each trial, mirror the local working folder (the parent of
    Tune's dir, wherever a resume put it) to the bucket, changed files only."""

    def __init__(self, remote: str):
        self.remote = remote

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            upload_dir(Path(trial.storage.experiment_fs_path).parent, self.remote)
        except OSError as e:  # a network blip must not end the study: the final upload retries
            logging.getLogger(__name__).warning("upload to %s failed, retried at the end: %s", self.remote, e)

    on_trial_error = on_trial_complete


class Backstop(Stopper):
    """Tune stopper: a trial that reports diverged/oom, or reaches its epochs, stops."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return bool(result.get(M.DIVERGED) or result.get(M.OOM) or result.get(M.EPOCH, 0) >= self.epochs)

    def stop_all(self) -> bool:
        return False


# ----------------------------------------------------------------------------- the study


@dataclass
class StudyOutcome:
    study_dir: Path
    rows: list[dict[str, Any]]  # one per trial: trial_id, params, status, metrics
    best: dict[str, Any] | None
    best_dir: Path | None
    parent_run_id: str | None
    interrupted: bool = False  # Ctrl-C / SIGINT: state saved, continue with --resume
    remote: str | None = None  # the study's bucket URI when storage_path is one (study_dir mirrors it)


def study_dir(cfg: RaykdConfig) -> Path:
    """Where the study is written: <storage_path>/<name>, or for a bucket its local working
    copy <cache_dir>/studies/<name> (mirrored to the bucket, see remote_study)."""
    if is_uri(cfg.storage_path):
        return (Path(cfg.cache_dir) / "studies" / cfg.name).resolve()
    return (Path(cfg.storage_path) / cfg.name).resolve()


def remote_study(cfg: RaykdConfig) -> str | None:
    """<storage_path>/<name> when storage_path is an s3:// / gs:// URI, else None."""
    return str(join(cfg.storage_path, cfg.name)) if is_uri(cfg.storage_path) else None


@study_guard(study_dir)  # GPUs exist, folder writable, one study per name at a time (raykd.locks)
def run_study(cfg: RaykdConfig, config_path: Path, resume: bool = False, address: str | None = None,
              progress: Callable[[str], None] | None = None) -> StudyOutcome:
    """Tune the search space; leaves <storage>/<name>/{best/, trials.json} and the MLflow study."""
    import ray
    from ray import tune

    cfg = absolute_paths(cfg)  # trials run in their own directories
    search = cfg.search or SearchConfig()
    sdir, remote = study_dir(cfg), remote_study(cfg)
    if remote:
        pull_study(remote, sdir, resume)
    tuner_dir = sdir / "tune"
    if resume and not tune.Tuner.can_restore(str(tuner_dir)):
        raise UserError(f"--resume: no study to resume at {join(remote, 'tune') if remote else tuner_dir}")
    if not resume and tuner_dir.exists():
        raise UserError(f"study {cfg.name} already exists at {sdir}: resume it with --resume, "
                              f"or pick another name with --set name=...")

    # Everything that can fail fast does, before data, teachers or Ray start.
    uri = T.tracking_uri(cfg) if cfg.tracking.enabled else None
    if uri:
        T.check_reachable(uri)
    inputs = prepare(cfg, progress)
    ensure_ray(address)
    sdir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.copyfile(config_path, sdir / "search_space.yaml")

    study: dict[str, str] = {"name": cfg.name, "dir": str(sdir)}
    if uri:
        exp = T.experiment_id(uri, cfg.tracking.experiment)
        parent = T.find_or_create_run(uri, exp, tags={}, match={T.STUDY_TAG: cfg.name, T.KIND_TAG: "study"},
                                      name=cfg.name)
        if resume:
            T.client(uri).update_run(parent, status="RUNNING")  # reopened: it was closed as KILLED
        else:
            T.log_artifacts(uri, parent, [sdir / "search_space.yaml"])
        study.update(uri=uri, experiment_id=exp, parent_run_id=parent)

    # Teachers and clips go to the object store once; every trial reads the same objects.
    shared = Inputs(ray.put(inputs.train), ray.put(inputs.val), inputs.teacher_dirs, inputs.dataset_key,
                    inputs.teacher_cache)
    # An in-process trial uses a worker's CPUs; a Ray Train trial only hosts the controller
    # (its workers ask for their own resources), but Tune refuses an empty request.
    per_trial = {"CPU": cfg.scaling.cpus_per_worker} if cfg.scaling.num_workers == 0 else {"CPU": 0.01}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg, inputs=shared, study=study), per_trial)
    epochs = search.trial_epochs or cfg.train.epochs

    if resume:
        tuner = tune.Tuner.restore(str(tuner_dir), trainable=trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        tuner = _new_tuner(cfg, trainable, sdir, epochs, remote)  # restore keeps its callbacks
    grid = tuner.fit()
    # Tune returns normally on Ctrl-C; a finished trial's last result has done=True.
    interrupted = len(grid) < search.num_samples or any(
        r.error is None and not (r.metrics or {}).get("done") for r in grid)
    out = summarise(cfg, grid, sdir, study, epochs, interrupted)
    if remote:  # trials.json, best/, plots and Tune's final state
        upload_dir(sdir, remote)
        out.remote = remote
    return out


def _new_tuner(cfg: RaykdConfig, trainable: Any, sdir: Path, epochs: int, remote: str | None = None) -> Any:
    """A fresh Tuner: seeded Optuna (define-by-run, the guide's point first), ASHA, the backstop."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from raykd.searcher import make_searcher

    search = cfg.search
    point = guide_point(search)
    points = ([point] if point else []) + [dict(p) for p in search.initial_points]
    # TPE (multivariate, grouped, constant liar) or random; ASHA's stops reach Optuna as pruned.
    # The space is a partial, not a lambda: Tune pickles the searcher into its checkpoint.
    searcher = make_searcher(search, functools.partial(define_space, search=search), epochs, points)
    scheduler = (ASHAScheduler(time_attr=M.EPOCH, max_t=epochs, grace_period=min(search.asha.grace_period, epochs),
                               reduction_factor=search.asha.reduction_factor)
                 if search.asha.enabled else None)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=search.num_samples,
                                    max_concurrent_trials=search.max_concurrent),
        # The backstop only for in-process trials: stopping a trial kills its actor, and a
        # TorchTrainer killed mid-fit leaves its workers' placement group behind on a Ray
        # without the dashboard; Ray Train trials end by themselves on the same conditions.
        run_config=tune.RunConfig(name="tune", storage_path=str(sdir),
                                  stop=Backstop(epochs) if cfg.scaling.num_workers == 0 else None,
                                  callbacks=[ReleaseWorkers(str(sdir / "trials"))]
                                  + ([UploadStudy(remote)] if remote else []),
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0),
    )
    return tuner


def summarise(cfg: RaykdConfig, grid: Any, sdir: Path, study: dict[str, str], epochs: int,
              interrupted: bool = False) -> StudyOutcome:
    """Trial table, best/ folder, MLflow statuses and plots at the end of a study."""
    search = cfg.search or SearchConfig()
    rows = []
    for res in grid:
        unfinished = res.error is None and not (res.metrics or {}).get("done")
        if res.metrics is None or M.EPOCH not in (res.metrics or {}):
            rows.append({"trial_id": _trial_id(res), "number": _trial_number(res),
                         "status": "interrupted" if unfinished else "error",
                         "params": _params_of(res), "error": str(res.error)[:200]})
            continue
        m = res.metrics
        status = m.get(M.STATUS, "completed")
        if unfinished:
            status = "interrupted"
        elif status == "completed" and m[M.EPOCH] < epochs:
            status = "pruned"  # ASHA stopped it: merely poor
        df = res.metrics_dataframe
        best_value = m[search.metric]
        if df is not None and search.metric in df:
            col = df[search.metric]
            best_value = float(col.max() if search.mode == "max" else col.min())
        rows.append({"trial_id": m["trial_id"], "number": _trial_number(res), "status": status, "epochs": m[M.EPOCH],
                     "params": _params_of(res), search.metric: best_value,
                     "last": {k: v for k, v in m.items() if isinstance(v, (int, float))},
                     "checkpoint": _checkpoint_of(res)})
    ok = [r for r in rows if r["status"] in ("completed", "pruned") and r.get("checkpoint")]
    best = None
    if ok:
        best = (max if search.mode == "max" else min)(ok, key=lambda r: r[search.metric])
    (sdir / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
    for r in rows:  # a trial that Tune stopped never reached pipeline.finish: its DET, from best.pt
        if r.get("checkpoint"):
            write_det(Path(r["checkpoint"]), sdir / "trials" / r["trial_id"], None)
    best_dir = write_best(cfg, best, sdir) if best else None
    if study.get("uri"):
        _finish_mlflow(cfg, rows, study, best, interrupted)
    return StudyOutcome(sdir, rows, best, best_dir, study.get("parent_run_id"), interrupted)


def _trial_id(res: Any) -> str:
    """A trial that never reported has no metrics: its id is in its dir name."""
    import re

    if res.metrics and "trial_id" in res.metrics:
        return res.metrics["trial_id"]
    found = re.search(r"run_trial_([0-9a-f]+)_", Path(res.path).name) if res.path else None
    return found.group(1) if found else "?"


def _trial_number(res: Any) -> int | None:
    """Order in which Tune created the trial (its dir is run_trial_<id>_<number>_...)."""
    import re

    found = re.search(r"run_trial_[0-9a-f]+_(\d+)_", Path(res.path).name) if res.path else None
    return int(found.group(1)) if found else None


def _params_of(res: Any) -> dict[str, Any]:
    return {k: v for k, v in (res.config or {}).items()}


def _checkpoint_of(res: Any) -> str | None:
    path = (res.metrics or {}).get(CHECKPOINT_PATH)
    if path and (Path(path) / BEST_FILE).exists():
        return path
    if res.checkpoint is not None and (Path(res.checkpoint.path) / BEST_FILE).exists():
        return res.checkpoint.path
    return None


def write_best(cfg: RaykdConfig, best: dict[str, Any], sdir: Path) -> Path:
    """runs/<study>/best/: the best trial's config (full epoch budget) and checkpoint."""
    full = with_updates(trial_config(cfg, best["params"]), {"train.epochs": cfg.train.epochs})
    final = sdir / "best"
    with atomic_dir(final) as tmp:
        (tmp / "config.yaml").write_text(f"# raykd retrain {sdir}\n" + yaml.safe_dump(
            full.model_dump(mode="json", exclude={"search"}), sort_keys=False))
        shutil.copytree(best["checkpoint"], tmp / "checkpoint")
        (tmp / "metrics.json").write_text(json.dumps(best, indent=1, default=str))
    return final


def trial_dir(study: dict[str, str], row: dict[str, Any]) -> Path:
    return Path(study["dir"]) / "trials" / row["trial_id"]


def _finish_mlflow(cfg: RaykdConfig, rows: list[dict[str, Any]], study: dict[str, str], best: dict | None,
                   interrupted: bool) -> None:
    """Status tags on every child run, no run left RUNNING, and the study's plots on the parent."""
    from raykd.plots import study_plots

    c = T.client(study["uri"])
    for r in rows:
        found = c.search_runs([study["experiment_id"]], max_results=1,
                              filter_string=f"tags.`{T.TRIAL_TAG}` = '{r['trial_id']}' and "
                                            f"tags.`{T.STUDY_TAG}` = '{cfg.name}'")
        if not found:
            continue
        run = found[0]
        log = T.MlflowLogger(study["uri"], run.info.run_id)
        log.set_tags({T.STATUS_TAG: r["status"], T.CHECKPOINT_TAG: str(r.get("checkpoint"))})
        det = [p for p in (trial_dir(study, r) / DET_FILE, trial_dir(study, r) / DET_PLOT) if p.is_file()]
        T.log_artifacts(study["uri"], run.info.run_id, det, "det")
        if run.info.status == "RUNNING" or r["status"] != "interrupted":
            log.close("KILLED" if r["status"] in ("pruned", "error", "interrupted") else "FINISHED")
    parent = T.MlflowLogger(study["uri"], study["parent_run_id"])
    if best:
        parent.log_metrics({f"best_{cfg.search.metric}": best[cfg.search.metric]}, step=0)
        parent.set_tags({"raykd.best_trial": best["trial_id"]})
    out = Path(study["dir"]) / "plots"
    out.mkdir(exist_ok=True)
    best_det = [trial_dir(study, best) / DET_PLOT] if best and (trial_dir(study, best) / DET_PLOT).is_file() else []
    T.log_artifacts(study["uri"], study["parent_run_id"], study_plots(cfg, rows, out) + best_det, "plots")
    # An interrupted study is closed as KILLED (never left RUNNING); --resume reopens it.
    parent.set_tags({T.STATUS_TAG: "interrupted" if interrupted else "completed"})
    parent.close("KILLED" if interrupted else "FINISHED")
