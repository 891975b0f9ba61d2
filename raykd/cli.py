"""The `raykd` command line. The library never prints; this module renders."""

from __future__ import annotations

import errno
import functools
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from raykd import storage as S
from raykd.config import ConfigError, RaykdConfig, load_config
from raykd.errors import UserError
from raykd.render import console, epoch_table, err, events_table, fmt, show_manifest, trials_table, verdict

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distil speech foundation models into tiny wakeword detectors.")
data_app = typer.Typer(no_args_is_help=True, help="Make or check wakeword datasets.")
app.add_typer(data_app, name="data")


@app.callback()
def _quiet() -> None:
    """Library chatter (Ray's per-report INFO lines, HF progress bars) stays out of the CLI's output."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Tune's new output engine prints its own banners (the experiment configuration box, the
    # TensorBoard hint, a final trial table) whatever the verbosity; the legacy engine at
    # verbose=0 prints nothing, and raykd renders its own table.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray.train", "ray.tune", "ray.train.v2", "mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)

SetOpt = typer.Option(None, "--set", "-s", help="Override a config key: --set train.lr=0.01 (repeatable).")


_FIX_DISK = "free some space, or point storage_path / cache_dir at another disk"
_FIX_PERM = "fix its permissions, or point storage_path / cache_dir / --run-dir elsewhere"
USER_ERRNOS = {errno.ENOSPC: _FIX_DISK, errno.EDQUOT: _FIX_DISK, errno.EACCES: _FIX_PERM,
               errno.EPERM: _FIX_PERM, errno.EROFS: _FIX_PERM}


def user_errors(fn: Callable) -> Callable:
    """Errors a user can cause are one clear line (or one line per config problem), exit 2."""

    # The message is escaped (a file named "take [final].wav" is named as it is, not eaten as
    # markup) and soft-wrapped (one line, however long: the terminal wraps it, logs keep it whole).
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            err.print(f"[red]error:[/red] {escape(e.source + ': ' if e.source else '')}invalid config",
                      highlight=False, soft_wrap=True)
            for line in e.errors:
                err.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except UserError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except OSError as e:
            # A full disk or a folder we may not write (checkpoints, teacher store, MLflow) is the
            # user's to fix, not a bug.
            if e.errno not in USER_ERRNOS:
                raise
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[red]error:[/red] {escape(where + (e.strerror or str(e)))} ({USER_ERRNOS[e.errno]})",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def _load(path: Path, overrides: Optional[list[str]]) -> RaykdConfig:
    return load_config(path, overrides)


def _progress(msg: str) -> None:
    if msg.startswith("warning: "):  # the library's warnings (a teacher weaker than the student alone)
        console.print(f"[yellow]warning:[/yellow] {escape(msg[len('warning: '):])}", highlight=False, soft_wrap=True)
    else:
        console.print(f"[dim]{escape(msg)}[/dim]", highlight=False)


# ----------------------------------------------------------------------------- commands


@app.command()
@user_errors
def validate(config: Path, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a config or search-space file; exit 2 with one line per problem."""
    cfg = _load(config, set_)
    what = "search space" if cfg.search is not None else "config"
    console.print(f"[green]ok[/green] {config}: valid {what}; teachers: "
                  f"{', '.join(f'{n} ({t.kind})' for n, t in cfg.teachers.items())}; "
                  f"aligned layers: {cfg.aligned_layers() or 'none'}")


@data_app.command("synth")
@user_errors
def data_synth(config: Path, set_: Optional[list[str]] = SetOpt) -> None:
    """Synthesise the wakeword dataset offline with espeak-ng voices."""
    from rich.progress import Progress

    from raykd.data.synth import synthesize

    cfg = _load(config, set_)
    with Progress(console=console) as bar:
        task = bar.add_task("synthesising", total=None)
        manifest = synthesize(cfg, lambda done, total: bar.update(task, completed=done, total=total))
    show_manifest(cfg, manifest)


@app.command()
@user_errors
def teacher(config: Path, set_: Optional[list[str]] = SetOpt) -> None:
    """Fine-tune each teacher (encoder + head) once; stored under cache_dir, keyed by config + data."""
    from raykd.data.dataset import dataset_fingerprint, ensure_dataset, load_split
    from raykd.models.teachers import check_pretrained
    from raykd.teacher_stage import ensure_teachers
    from raykd.sessions import resolve_device

    from raykd.data.sanity import check_manifest_text

    cfg = _load(config, set_)
    check_pretrained(cfg)
    check_manifest_text(cfg)
    ensure_dataset(cfg)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    dirs = ensure_teachers(cfg, train, val, dataset_fingerprint(cfg), resolve_device(cfg), _progress)
    for name, d in dirs.items():
        console.print(f"{name}: {d}")


@app.command()
@user_errors
def train(config: Path, set_: Optional[list[str]] = SetOpt,
          run_dir: Optional[Path] = typer.Option(None, help="Default: <storage_path>/<name>-train."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Discard the run dir's checkpoint and start "
                                         "again (default: continue it when the config is the same).")) -> None:
    """One distillation run (Ray Train; scaling.num_workers: 0 runs in-process). A run dir that
    holds a checkpoint of the same config is continued; of another config, refused."""
    cfg = _load(config, set_)  # config errors at once, before the heavy imports below
    from raykd import metrics as M
    from raykd.models.student import build_student, count_params
    from raykd.pipeline import TrainInterrupted, fit

    given_run_dir = run_dir
    remote = None  # storage_path on a bucket: the run is written locally, then uploaded
    if run_dir is None and S.is_uri(cfg.storage_path):
        remote, run_dir = S.join(cfg.storage_path, f"{cfg.name}-train"), Path(cfg.cache_dir) / "runs" / f"{cfg.name}-train"
    run_dir = run_dir or Path(cfg.storage_path) / f"{cfg.name}-train"
    n = count_params(build_student(cfg.student, cfg.features.n_mels))
    console.print(f"student: TinyConv, {n:,} parameters; aligned layers: {cfg.aligned_layers() or 'none'}")

    def on_epoch(row: dict) -> None:
        keys = [k for k in M.shown_columns([row]) if k not in (M.EPOCH, M.STATUS)]
        console.print(f"epoch {row['epoch']}: " + "  ".join(f"{k}={fmt(row[k])}" for k in keys),
                      highlight=False)

    try:
        out = fit(cfg, run_dir, on_epoch=on_epoch, progress=_progress, overwrite=overwrite)
    except (TrainInterrupted, KeyboardInterrupt) as e:
        again = " ".join(["raykd train", _shq(config), *(f"--set {_shq(x)}" for x in set_ or []),
                          *([f"--run-dir {_shq(given_run_dir)}"] if given_run_dir else [])])
        done = (f"after epoch {e.epochs_done} of {e.epochs} (history in {e.run_dir / 'history.json'})"
                if isinstance(e, TrainInterrupted) and e.epochs_done else "before the first epoch finished")
        err.print(f"[yellow]interrupted[/yellow] {escape(done)}; continue with `{escape(again)}`",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    console.print(epoch_table(out.history, f"{cfg.name}: {out.status}"))
    if out.mapping:
        console.print(f"layer map (teacher layer -> student tap): {out.mapping}")
    console.print(f"checkpoint: {out.checkpoint_dir}")
    if (run_dir / "det.json").is_file():
        console.print(f"DET of the best epoch: {run_dir / 'det.json'} and det.png")
    if remote:
        S.upload_dir(run_dir, remote)
        console.print(f"uploaded to {remote}")
    if out.status != "completed":
        raise typer.Exit(1)


@app.command()
@user_errors
def tune(config: Path, set_: Optional[list[str]] = SetOpt,
         resume: bool = typer.Option(False, "--resume", help="Continue an interrupted study."),
         smoke: bool = typer.Option(False, "--smoke", help="A few short trials on a small dataset."),
         address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local Ray).")) -> None:
    """Search layer subsets and distillation weights: Ray Tune + Optuna, every trial in MLflow."""
    cfg = _load(config, set_)  # config errors at once, before importing Ray Tune
    import optuna

    from raykd.config import with_updates
    from raykd.tune import SMOKE_UPDATES, run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "A new study created" INFO line
    if cfg.search is None:
        raise ConfigError([f"search: {config} has no search block; `raykd train` runs a single config"])
    if smoke:
        cfg = with_updates(cfg, SMOKE_UPDATES)
    out = run_study(cfg, config, resume=resume, address=address, progress=_progress)
    console.print(trials_table(cfg.search.metric, cfg.search.mode, out.rows, baselines=out.baselines,
                                width=console.width))
    if out.best_dir:
        console.print(f"best trial {out.best['trial_id']}: {cfg.search.metric}={fmt(out.best[cfg.search.metric])}"
                      f" -> {S.join(out.remote, 'best') if out.remote else out.best_dir}")
    verdict(out.summary)
    from raykd.report import importance_notes

    for line in importance_notes(out.study_dir / "plots"):  # layer effects, and how sure they are
        console.print(escape(line), highlight=False, soft_wrap=True)
    console.print(f"report: {out.report}")
    console.print(f"MLflow: `mlflow ui --backend-store-uri {_uri(cfg)}` (experiment {cfg.tracking.experiment})")
    if out.interrupted:
        again = " ".join([f"raykd tune {shlex.quote(str(config))}"] + [f"--set {shlex.quote(o)}" for o in set_ or []]
                         + (["--smoke"] if smoke else []) + ["--resume"])
        err.print(f"[yellow]interrupted:[/yellow] state saved; continue with `{again}`", highlight=False)
        raise typer.Exit(130)
    if not any(r["status"] in ("completed", "pruned", "diverged", "oom") for r in out.rows):
        errors = sorted(out.study_dir.glob("tune/*/error.txt"))
        err.print(f"[red]error:[/red] no trial finished; the first trial's error: "
                  f"{errors[0].read_text().strip().splitlines()[-1] if errors else 'unknown'}", highlight=False)
        raise typer.Exit(1)


def _check_trials_json(trials: Path, study_dir: Path) -> None:
    """A damaged (e.g. truncated) trial table is one line naming it and how to write it again."""
    import json

    if not trials.is_file():
        return  # `best` says there is no finished study
    try:
        json.loads(trials.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{trials}: damaged, not a JSON trial table ({e}); `raykd tune "
                        f"{study_dir / 'search_space.yaml'} --resume` writes it again") from None


def _shq(x: object) -> str:
    return shlex.quote(str(x))


def _uri(cfg: RaykdConfig) -> str:
    from raykd.tracking import tracking_uri

    return tracking_uri(cfg)


@app.command()
@user_errors
def best(study_dir: str) -> None:
    """Show a finished study's trials, best first (STUDY_DIR: a folder or an s3:// / gs:// URI)."""
    import json

    with S.local_copy(study_dir, ["trials.json", "search_space.yaml", "study.json"]) as local:
        trials = local / "trials.json"
        _check_trials_json(trials, local)
        if not trials.is_file():
            raise UserError(f"{S.join(study_dir, 'trials.json')}: no finished study here (run `raykd tune` first)")
        from raykd.baselines import read_study_summary

        cfg = load_config(local / "search_space.yaml")
        baselines = (read_study_summary(local) or {}).get("baselines", [])
        console.print(trials_table(cfg.search.metric, cfg.search.mode, json.loads(trials.read_text()), top=1000,
                                    baselines=baselines, width=console.width))


@app.command()
@user_errors
def report(study_dir: Path) -> None:
    """Write a finished study's report: report.html (self-contained) and report.md, in STUDY_DIR."""
    from raykd.report import write_report

    html_path, md_path = write_report(study_dir)
    console.print(f"report: {html_path}\nmarkdown: {md_path}")


@app.command()
@user_errors
def retrain(study_dir: str, set_: Optional[list[str]] = SetOpt,
            overwrite: bool = typer.Option(False, "--overwrite", help="Discard an earlier retrain and start again.")
            ) -> None:
    """Train the study's best config on the full epoch budget -> <study>/retrain (a study on a
    bucket: trained in <cache_dir>/studies/<name>/retrain, then uploaded)."""
    from raykd.pipeline import fit

    with S.local_copy(study_dir, ["best/config.yaml"]) as local:
        best_cfg = local / "best" / "config.yaml"
        if not best_cfg.is_file():
            raise UserError(f"{S.join(study_dir, 'best', 'config.yaml')}: no best config (did the study finish?)")
        cfg = _load(best_cfg, set_)
    run_dir = Path(cfg.cache_dir) / "studies" / cfg.name / "retrain" if S.is_uri(study_dir) else Path(study_dir) / "retrain"
    out = fit(cfg, run_dir, overwrite=overwrite, on_epoch=lambda row: console.print(
        f"epoch {row['epoch']}: val_accuracy={fmt(row.get('val_accuracy'))} "
        f"val_fa_per_hour={fmt(row.get('val_fa_per_hour'))} "
        f"val_frr_at_target={fmt(row.get('val_frr_at_target'))}", highlight=False), progress=_progress)
    console.print(epoch_table(out.history, f"retrain {cfg.name}: {out.status}"))
    if S.is_uri(study_dir):
        S.upload_dir(run_dir, S.join(study_dir, "retrain"))
    console.print(f"checkpoint: {out.checkpoint_dir}  (export it: raykd export {S.join(study_dir, 'retrain')})")


@app.command()
@user_errors
def export(checkpoint: str, out: Optional[str] = typer.Option(None, help="Default: <checkpoint>/export."),
           register: bool = typer.Option(True, help="Register the model in MLflow's registry.")) -> None:
    """Write the student alone as ONNX (+ JSON sidecar), check parity with onnxruntime.
    CHECKPOINT and --out may be s3:// / gs:// URIs (downloaded, exported here, uploaded)."""
    from raykd.checkpoint import read_checkpoint
    from raykd.export import export_onnx, export_remote, resolve_checkpoint

    if S.is_uri(checkpoint) or (out and S.is_uri(out)):
        res = export_remote(checkpoint, out, register=register)
    else:  # default: beside the checkpoint it came from (<run>/checkpoint/export)
        read_checkpoint(resolve_checkpoint(checkpoint))  # a damaged file: one line naming it
        res = export_onnx(checkpoint, Path(out) if out else resolve_checkpoint(checkpoint).parent / "export",
                          register=register)
    console.print(f"ONNX: {res.onnx_path} ({res.params:,} student parameters, no projectors)\n"
                  f"sidecar: {res.sidecar_path}\nparity onnxruntime vs PyTorch: max |diff| = {res.max_abs_diff:.2e}"
                  + (f"\nregistered version: {res.registered_version}" if res.registered_version else ""))


@app.command("eval")
@user_errors
def eval_(model: Path, data: Path,
          threshold: Optional[float] = typer.Option(None, help="Default: the sidecar's (the operating point)."),
          json_: bool = typer.Option(False, "--json", help="Print one JSON object on stdout, nothing else."),
          plot: Optional[Path] = typer.Option(None, help="Write the DET curve (FRR against FA/h) to this PNG."),
          events: bool = typer.Option(False, "--events", help="List every false accept: file, time, score.")) -> None:
    """Stream an exported model over DATA: a folder (positive/, negative/), a CSV manifest or one
    long recording (all negative). Negatives are scored whole (FA/h per hour of their audio)."""
    import json

    from raykd.eval_data import evaluate_export

    m, fired = evaluate_export(model, data, threshold)
    if plot:
        from raykd.plots import det_plot

        plot.parent.mkdir(parents=True, exist_ok=True)
        det_plot({**m, "points": m["det"]}, plot)  # the report holds every key of a det.json record
    if json_:
        out = {**m, "events": [{"file": f, "time_s": t, "score": s} for f, t, s in fired]} if events else m
        sys.stdout.write(json.dumps(out) + "\n")
        return
    table = Table(title=f"{model} on {data}")
    cols = {"positives": "positives", "negative_hours": "negative hours", "threshold": "threshold",
            "frr": "FRR", "fa_per_hour": "FA/h", "frr_at_target": f"FRR @ {m['target_fa_per_hour']:g} FA/h",
            "threshold_at_target": "its threshold", "fa_per_hour_at_target": "its FA/h"}
    for label in cols.values():
        table.add_column(label, justify="right")
    table.add_row(*[fmt(m[k]) for k in cols])
    console.print(table)
    if not m["target_met"]:
        console.print(f"no threshold reaches {m['target_fa_per_hour']:g} FA/h on this audio", highlight=False)
    if events:
        events_table(fired, "false accepts")
    if plot:
        console.print(f"DET curve: {plot}")


@app.command()
@user_errors
def detect(model: Path, wav: Path,
           threshold: Optional[float] = typer.Option(None, help="Default: the sidecar's (the operating point)."),
           json_: bool = typer.Option(False, "--json", help="Print one JSON object on stdout, nothing else.")) -> None:
    """Times (s) at which an exported model fires on a recording, with the window's score:
    listen there to hear what triggered it. A time is the end of the window that fired."""
    import json

    from raykd.eval_data import detect_file

    fired, used, seconds = detect_file(model, wav, threshold)
    if json_:
        sys.stdout.write(json.dumps({"file": str(wav), "seconds": seconds, "threshold": used,
                                     "events": [{"time_s": t, "score": s} for t, s in fired]}) + "\n")
        return
    console.print(f"{escape(str(wav))}: {len(fired)} trigger(s) in {seconds:.1f} s at threshold {used:.4g}",
                  highlight=False)
    for t, s in fired:
        console.print(f"{t:10.2f} s  score {s:.3f}", highlight=False)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
