"""The search: Ray Tune + Optuna (define-by-run, seeded TPE) + ASHA, one Ray Train run per trial.

Layer subsets are one boolean per candidate layer (never lists as categorical choices).
Too-small subsets cannot happen: when the layers still undecided are exactly as many as the
subset still needs, they are forced on without being sampled (and too-large ones likewise
forced off). Forced values are returned as constants, so Optuna only models real choices.
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from raykd import baselines as B
from raykd import metrics as M
from raykd import tracking as T
from raykd.baselines import baseline_config
from raykd.config import LayerSubsetParam, RaykdConfig, SearchConfig, absolute_paths, with_updates
from raykd.errors import UserError
from raykd.fsutil import atomic_dir
from raykd.locks import study_guard
from raykd.loggers import TuneLogger
from raykd.pipeline import DET_FILE, DET_PLOT, Inputs, ensure_ray, prepare, run_distillation, write_det
from raykd.results import BASELINE_PARAM, BASELINE_SEED_PARAM, result_rows
from raykd.storage import is_uri, join, pull_study, upload_dir
from raykd.tune_callbacks import Backstop, study_callbacks

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

    baseline = params.get(BASELINE_PARAM)  # a baseline run: a fixed config, not an Optuna trial
    cfg = baseline_config(base, params) if baseline else trial_config(base, params)
    ctx = ray.tune.get_context()
    trial_id = ctx.get_trial_id()
    run_dir = Path(study["dir"]) / "trials" / trial_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    tracking = None
    if study.get("uri"):
        tags = {T.PARENT_TAG: study["parent_run_id"], T.KIND_TAG: "baseline" if baseline else "trial"}
        name = trial_id
        if baseline:
            tags.update({T.BASELINE_TAG: baseline, T.SEED_TAG: str(cfg.seed)})
            name = f"baseline-{baseline}-seed{cfg.seed}"
        run_id = T.find_or_create_run(study["uri"], study["experiment_id"], tags=tags,
                                      match={T.TRIAL_TAG: trial_id, T.STUDY_TAG: study["name"]}, name=name)
        tracking = {"uri": study["uri"], "run_id": run_id}

    if cfg.scaling.num_workers == 0:
        # In-process trial: the loop reports each epoch (and its checkpoint) to Tune itself.
        run_distillation(cfg, inputs, run_dir, loggers=[TuneLogger()], tracking=tracking,
                         get_checkpoint=ray.tune.get_checkpoint)
    else:
        run_distillation(cfg, inputs, run_dir, callbacks=[TuneReportCallback()], tracking=tracking)
    if tracking:
        T.MlflowLogger(**tracking).close("FINISHED")


# ----------------------------------------------------------------------------- the study


@dataclass
class StudyOutcome:
    study_dir: Path
    rows: list[dict[str, Any]]  # one per trial: trial_id, params, status, metrics
    best: dict[str, Any] | None
    best_dir: Path | None
    parent_run_id: str | None
    interrupted: bool = False  # Ctrl-C / SIGINT: state saved, continue with --resume
    baselines: list[dict[str, Any]] = field(default_factory=list)  # rows of the baseline runs
    summary: dict[str, Any] = field(default_factory=dict)  # study.json: baselines, gain, teachers
    report: Path | None = None  # report.html
    remote: str | None = None  # the study's bucket URI when storage_path is one (study_dir mirrors it)


BASELINE_TUNER = "baselines"  # <study>/baselines: the baseline runs' own Tuner


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
    """Baselines, then the search; leaves <storage>/<name>/{best/, trials.json, study.json,
    report.html} and the MLflow study."""
    import ray
    from ray import tune

    cfg = absolute_paths(cfg)  # trials run in their own directories
    search = cfg.search or SearchConfig()
    say = progress or (lambda msg: None)
    sdir, remote = study_dir(cfg), remote_study(cfg)
    if remote:
        pull_study(remote, sdir, resume)
    tuner_dir, baseline_dir = sdir / "tune", sdir / BASELINE_TUNER
    started = [d for d in (tuner_dir, baseline_dir) if d.exists()]
    if resume and not any(tune.Tuner.can_restore(str(d)) for d in (tuner_dir, baseline_dir)):
        raise UserError(f"--resume: no study to resume at {join(remote, 'tune') if remote else tuner_dir}")
    if not resume and started:
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
    teachers = B.check_teachers(cfg, inputs.teacher_dirs, inputs.val, study, say)

    # Teachers and clips go to the object store once; every trial reads the same objects.
    shared = Inputs(ray.put(inputs.train), ray.put(inputs.val), inputs.teacher_dirs, inputs.dataset_key,
                    inputs.teacher_cache)
    # An in-process trial uses a worker's CPUs; a Ray Train trial only hosts the controller
    # (its workers ask for their own resources), but Tune refuses an empty request.
    per_trial = {"CPU": cfg.scaling.cpus_per_worker} if cfg.scaling.num_workers == 0 else {"CPU": 0.01}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg, inputs=shared, study=study), per_trial)
    epochs = search.trial_epochs or cfg.train.epochs

    baseline_grid, interrupted = _run_baselines(cfg, trainable, baseline_dir, epochs, resume, say)
    if interrupted:  # Ctrl-C during the baselines: the search has not started
        return _finish_study(summarise(cfg, [], sdir, study, epochs, True, baseline_grid, teachers), remote)
    _say_baselines(cfg, baseline_grid, epochs, teachers, say)
    if resume and tune.Tuner.can_restore(str(tuner_dir)):
        tuner = tune.Tuner.restore(str(tuner_dir), trainable=trainable, resume_unfinished=True,
                                   restart_errored=True)
    else:
        tuner = _new_tuner(cfg, trainable, sdir, epochs, remote)  # restore keeps its callbacks
    say(f"search: {search.num_samples} trials of {epochs} epochs")
    grid = tuner.fit()
    # Tune returns normally on Ctrl-C; a finished trial's last result has done=True.
    interrupted = len(grid) < search.num_samples or _unfinished(grid)
    return _finish_study(summarise(cfg, grid, sdir, study, epochs, interrupted, baseline_grid, teachers), remote)


def _finish_study(out: StudyOutcome, remote: str | None) -> StudyOutcome:
    """A study on a bucket: trials.json, best/, plots, report and Tune's final state go up."""
    if remote:
        upload_dir(out.study_dir, remote)
        out.remote = remote
    return out


def _unfinished(grid: Any) -> bool:
    return any(r.error is None and not (r.metrics or {}).get("done") for r in grid)


def _run_baselines(cfg: RaykdConfig, trainable: Any, path: Path, epochs: int, resume: bool,
                   say: Callable[[str], None]) -> tuple[Any, bool]:
    """The baseline runs, before the search, as Tune trials with fixed configs in a Tuner of
    their own (no scheduler: each runs the whole trial budget; Optuna never sees them)."""
    from ray import tune

    points = B.baseline_points(cfg)
    if not points:
        return [], False
    search = cfg.search
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        say(f"baselines: {', '.join(B.baseline_names(cfg))} x {search.baseline_seeds} seeds, {epochs} epochs each")
        tuner = tune.Tuner(
            trainable,
            param_space={BASELINE_PARAM: tune.grid_search(B.baseline_names(cfg)),
                         BASELINE_SEED_PARAM: tune.grid_search(list(range(search.baseline_seeds)))},
            tune_config=tune.TuneConfig(metric=search.metric, mode=search.mode, num_samples=1,
                                        max_concurrent_trials=search.max_concurrent),
            run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent),
                                      stop=Backstop(epochs) if cfg.scaling.num_workers == 0 else None,
                                      callbacks=study_callbacks(path.parent, remote_study(cfg)),
                                      failure_config=tune.FailureConfig(max_failures=1), verbose=0))
    grid = tuner.fit()
    return grid, len(grid) < len(points) or _unfinished(grid)


def _say_baselines(cfg: RaykdConfig, grid: Any, epochs: int, teachers: dict[str, dict[str, float]],
                   say: Callable[[str], None]) -> None:
    """Baselines' scores, and a warning for each teacher weaker than the student alone."""
    summary = B.baseline_summary(_rows(cfg, grid, Path(), epochs), cfg.search.metric)
    for line in B.baseline_lines(summary, cfg.search.metric):
        say(line)
    for line in B.weaker_teachers(teachers, summary, cfg.search.metric, cfg.search.mode):
        say(f"warning: {line}")


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
                                  callbacks=study_callbacks(sdir, remote),
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0),
    )
    return tuner


def summarise(cfg: RaykdConfig, grid: Any, sdir: Path, study: dict[str, str], epochs: int,
              interrupted: bool = False, baseline_grid: Any = (), teachers: dict | None = None) -> StudyOutcome:
    """Trial table, best/ folder, study.json (baselines, distillation_gain, teachers), plots,
    the report, and MLflow statuses at the end of a study."""
    from raykd.plots import study_plots
    from raykd.report import write_report

    search = cfg.search or SearchConfig()
    rows = _rows(cfg, grid, sdir, epochs)
    order = {name: i for i, name in enumerate(B.BASELINES)}
    baselines = sorted(_rows(cfg, baseline_grid, sdir, epochs), key=lambda r: (order[r["baseline"]], r["seed"]))
    ok = [r for r in rows if r["status"] in ("completed", "pruned") and r.get("checkpoint")]
    best = None
    if ok:
        best = (max if search.mode == "max" else min)(ok, key=lambda r: r[search.metric])
    # trials.json holds the search's trials only: what the searcher saw, what importance reads
    (sdir / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
    for r in rows + baselines:  # a run that Tune stopped never reached pipeline.finish: its DET, from best.pt
        if r.get("checkpoint"):
            write_det(Path(r["checkpoint"]), sdir / "trials" / r["trial_id"], None)
    best_dir = write_best(cfg, best, sdir) if best else None
    summary = B.study_summary(cfg, baselines, best, teachers or {}, len(rows), interrupted)
    B.write_study_summary(sdir, summary)
    out = sdir / "plots"
    out.mkdir(exist_ok=True)
    plots = study_plots(cfg, rows, out)
    report = write_report(sdir)
    if study.get("uri"):
        _finish_mlflow(cfg, rows + baselines, study, summary, plots, [sdir / B.STUDY_FILE, *report], interrupted)
    return StudyOutcome(sdir, rows, best, best_dir, study.get("parent_run_id"), interrupted, baselines,
                        summary, report[0])


def _rows(cfg: RaykdConfig, grid: Any, sdir: Path, epochs: int) -> list[dict[str, Any]]:
    def layers_of(params: dict[str, Any]) -> dict[str, list[int]]:
        run_cfg = baseline_config(cfg, params) if BASELINE_PARAM in params else trial_config(cfg, params)
        return run_cfg.aligned_layers()

    return result_rows(grid, cfg.search.metric, cfg.search.mode, epochs, layers_of, sdir)


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


def _finish_mlflow(cfg: RaykdConfig, rows: list[dict[str, Any]], study: dict[str, str], summary: dict[str, Any],
                   plots: list[Path], files: list[Path], interrupted: bool) -> None:
    """Status tags and DET files on every child run (trials and baselines), no run left RUNNING;
    on the parent the best trial, the baselines, distillation_gain, the plots, study.json, the report."""
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
            log.close(T.run_status(r["status"]))
    parent = T.MlflowLogger(study["uri"], study["parent_run_id"])
    metrics, tags = T.study_results(summary)
    parent.log_metrics(metrics, step=0)
    parent.set_tags(tags)
    best = summary.get("best")
    best_det = [trial_dir(study, best) / DET_PLOT] if best and (trial_dir(study, best) / DET_PLOT).is_file() else []
    T.log_artifacts(study["uri"], study["parent_run_id"], plots + best_det, "plots")
    T.log_artifacts(study["uri"], study["parent_run_id"], files)
    # An interrupted study is closed as KILLED (never left RUNNING); --resume reopens it.
    parent.set_tags({T.STATUS_TAG: "interrupted" if interrupted else "completed"})
    parent.close("KILLED" if interrupted else "FINISHED")
