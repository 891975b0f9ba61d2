"""The `raykd` command line. The library never prints; this module renders."""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raykd.config import ConfigError, RaykdConfig, load_config
from raykd.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distil speech foundation models into tiny wakeword detectors.")
data_app = typer.Typer(no_args_is_help=True, help="Make or check wakeword datasets.")
app.add_typer(data_app, name="data")
console = Console(stderr=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


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
            # A full disk (checkpoints, teacher store, MLflow) is the user's to fix, not a bug.
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[red]error:[/red] {escape(where + (e.strerror or str(e)))} (free some space, or point "
                      "storage_path / cache_dir at another disk)", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def _load(path: Path, overrides: Optional[list[str]]) -> RaykdConfig:
    return load_config(path, overrides)


def _progress(msg: str) -> None:
    if msg.startswith("warning: "):  # the library's warnings (a teacher weaker than the student alone)
        console.print(f"[yellow]warning:[/yellow] {escape(msg[len('warning: '):])}", highlight=False, soft_wrap=True)
    else:
        console.print(f"[dim]{escape(msg)}[/dim]", highlight=False)


def _epoch_table(rows: list[dict[str, Any]], title: str) -> Table:
    from raykd import metrics as M

    table = Table(title=title)
    cols = M.shown_columns(rows)
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[_fmt(r.get(c)) for c in cols])
    return table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


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
    _show_manifest(manifest)


def _show_manifest(manifest: Path) -> None:
    import csv
    from collections import Counter

    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    table = Table(title=f"{manifest}")
    for c in ("split", "clips", "wakeword", "speakers"):
        table.add_column(c, justify="right")
    for split in ("train", "val", "test"):
        r = [x for x in rows if x["split"] == split]
        table.add_row(split, str(len(r)), str(sum(x["label"] == "1" for x in r)),
                      str(len(Counter(x["speaker"] for x in r))))
    console.print(table)


@app.command()
@user_errors
def teacher(config: Path, set_: Optional[list[str]] = SetOpt) -> None:
    """Fine-tune each teacher (encoder + head) once; stored under cache_dir, keyed by config + data."""
    from raykd.data.dataset import dataset_fingerprint, ensure_dataset, load_split
    from raykd.models.teachers import check_pretrained
    from raykd.teacher_stage import ensure_teachers
    from raykd.sessions import resolve_device

    cfg = _load(config, set_)
    check_pretrained(cfg)
    ensure_dataset(cfg)
    train, val = load_split(cfg, "train"), load_split(cfg, "val")
    dirs = ensure_teachers(cfg, train, val, dataset_fingerprint(cfg), resolve_device(cfg), _progress)
    for name, d in dirs.items():
        console.print(f"{name}: {d}")


@app.command()
@user_errors
def train(config: Path, set_: Optional[list[str]] = SetOpt,
          run_dir: Optional[Path] = typer.Option(None, help="Default: <storage_path>/<name>-train.")) -> None:
    """One distillation run (Ray Train; scaling.num_workers: 0 runs in-process)."""
    from raykd import metrics as M
    from raykd.models.student import build_student, count_params
    from raykd.pipeline import fit

    cfg = _load(config, set_)
    run_dir = run_dir or cfg.storage_path / f"{cfg.name}-train"
    n = count_params(build_student(cfg.student, cfg.features.n_mels))
    console.print(f"student: TinyConv, {n:,} parameters; aligned layers: {cfg.aligned_layers() or 'none'}")

    def on_epoch(row: dict) -> None:
        keys = [k for k in M.shown_columns([row]) if k not in (M.EPOCH, M.STATUS)]
        console.print(f"epoch {row['epoch']}: " + "  ".join(f"{k}={_fmt(row[k])}" for k in keys),
                      highlight=False)

    out = fit(cfg, run_dir, on_epoch=on_epoch, progress=_progress)
    console.print(_epoch_table(out.history, f"{cfg.name}: {out.status}"))
    if out.mapping:
        console.print(f"layer map (teacher layer -> student tap): {out.mapping}")
    console.print(f"checkpoint: {out.checkpoint_dir}")
    if (run_dir / "det.json").is_file():
        console.print(f"DET of the best epoch: {run_dir / 'det.json'} and det.png")
    if out.status != "completed":
        raise typer.Exit(1)


@app.command()
@user_errors
def tune(config: Path, set_: Optional[list[str]] = SetOpt,
         resume: bool = typer.Option(False, "--resume", help="Continue an interrupted study."),
         smoke: bool = typer.Option(False, "--smoke", help="A few short trials on a small dataset."),
         address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local Ray).")) -> None:
    """Search layer subsets and distillation weights: Ray Tune + Optuna, every trial in MLflow."""
    import optuna

    from raykd.config import with_updates
    from raykd.tune import SMOKE_UPDATES, run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "A new study created" INFO line

    cfg = _load(config, set_)
    if cfg.search is None:
        raise ConfigError([f"search: {config} has no search block; `raykd train` runs a single config"])
    if smoke:
        cfg = with_updates(cfg, SMOKE_UPDATES)
    out = run_study(cfg, config, resume=resume, address=address, progress=_progress)
    console.print(_trials_table(cfg.search.metric, cfg.search.mode, out.rows, baselines=out.baselines,
                                width=console.width))
    if out.best_dir:
        console.print(f"best trial {out.best['trial_id']}: {cfg.search.metric}={_fmt(out.best[cfg.search.metric])}"
                      f" -> {out.best_dir}")
    _verdict(out.summary)
    from raykd.report import importance_notes

    for line in importance_notes(out.study_dir / "plots"):  # layer effects, and how sure they are
        console.print(escape(line), highlight=False, soft_wrap=True)
    console.print(f"report: {out.report}")
    console.print(f"MLflow: `mlflow ui --backend-store-uri {_uri(cfg)}` (experiment {cfg.tracking.experiment})")
    if out.interrupted:
        err.print(f"[yellow]interrupted:[/yellow] state saved; continue with `raykd tune {config} --resume`")
        raise typer.Exit(130)
    if not any(r["status"] in ("completed", "pruned", "diverged", "oom") for r in out.rows):
        errors = sorted(out.study_dir.glob("tune/*/error.txt"))
        err.print(f"[red]error:[/red] no trial finished; the first trial's error: "
                  f"{errors[0].read_text().strip().splitlines()[-1] if errors else 'unknown'}", highlight=False)
        raise typer.Exit(1)


def _verdict(summary: dict) -> None:
    """distillation_gain with its spread, said plainly; teachers weaker than the student alone."""
    gain = summary.get("distillation_gain")
    colour = {"helped": "green", "did not help": "red"}.get((gain or {}).get("verdict"), "yellow")
    console.print(f"[{colour}]{escape(summary.get('verdict', ''))}[/{colour}]", highlight=False, soft_wrap=True)
    for line in summary.get("weaker_teachers", []):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)


def _uri(cfg: RaykdConfig) -> str:
    from raykd.tracking import tracking_uri

    return tracking_uri(cfg)


def _trials_table(metric: str, mode: str, rows: list[dict], top: int = 10,
                  baselines: list[dict] | None = None, width: int = 100) -> Table:
    """Baselines first, then the best `top` trials; layers as lists ("wav2vec2: 2,4,6"). Fits
    `width` columns (a 100-column terminal): parameter columns that would not fit are left out,
    and the caption says where they are."""
    from raykd.results import trial_table

    baselines = baselines or []
    headers, cells = trial_table(metric, mode, baselines, rows, top)
    # One teacher's layers stay on one line ("wav2vec2: 1,2,4,6,12;"), the rest may wrap.
    layers_width = min(32, max((len(part) + 1 for row in cells for part in row[4].split("; ")), default=6))
    for n in range(len(headers), 4, -1):  # drop parameter columns from the right until it fits
        table = _table(metric, mode, len(rows), top, len(baselines), headers[:n], [r[:n] for r in cells],
                       layers_width)
        if _fits(table, width):
            break
    if n < len(headers):
        table.caption = f"{len(headers) - n} more parameter(s): `raykd report` or trials.json"
    return table


def _fits(table: Table, width: int) -> bool:
    """Rendered `width` wide, does the table lose nothing (wrapped, not cropped or cut with '…')?"""
    def chars(w: int) -> list[str]:
        c = Console(width=w, record=True, file=open(os.devnull, "w"))
        c.print(table)
        # box-drawing rules span the table's width: only the text counts
        return sorted(ch for ch in c.export_text() if not ch.isspace() and not "\u2500" <= ch <= "\u257f")

    return chars(width) == chars(10_000)


def _table(metric: str, mode: str, n_rows: int, top: int, n_baselines: int, headers: list[str],
           cells: list[list[str]], layers_width: int) -> Table:
    arrow = "higher" if mode == "max" else "lower"
    table = Table(title=f"trials (best {min(top, n_rows)} of {n_rows} by {metric}, {arrow} is better"
                        + (f"; {n_baselines} baseline runs first" if n_baselines else "") + ")",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, h in enumerate(headers):
        # parameter names wrap between words (feature / alignment / weight): as narrow as a value
        narrow = max(6, *(len(w) for w in h.split("_")), *(len(r[i]) for r in cells)) if i > 4 else None
        table.add_column(h.replace("_", " ") if i > 4 else h, justify="left" if i in (0, 1, 4) else "right",
                         no_wrap=i in (0, 1, 2, 3), overflow="fold", min_width=layers_width if i == 4 else None,
                         max_width=narrow)
    for j, row in enumerate(cells):
        table.add_row(*row, end_section=j == n_baselines - 1)
    return table


@app.command()
@user_errors
def best(study_dir: Path) -> None:
    """Show a finished study's trials, best first."""
    import json

    trials = study_dir / "trials.json"
    if not trials.is_file():
        raise UserError(f"{trials}: no finished study here (run `raykd tune` first)")
    from raykd.baselines import read_study_summary

    cfg = load_config(study_dir / "search_space.yaml")
    baselines = (read_study_summary(study_dir) or {}).get("baselines", [])
    console.print(_trials_table(cfg.search.metric, cfg.search.mode, json.loads(trials.read_text()), top=1000,
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
def retrain(study_dir: Path, set_: Optional[list[str]] = SetOpt) -> None:
    """Train the study's best config on the full epoch budget -> <study>/retrain."""
    from raykd.pipeline import fit

    best_cfg = study_dir / "best" / "config.yaml"
    if not best_cfg.is_file():
        raise UserError(f"{best_cfg}: no best config (did the study finish?)")
    cfg = _load(best_cfg, set_)
    out = fit(cfg, study_dir / "retrain", on_epoch=lambda row: console.print(
        f"epoch {row['epoch']}: val_accuracy={_fmt(row.get('val_accuracy'))} "
        f"val_fa_per_hour={_fmt(row.get('val_fa_per_hour'))} "
        f"val_frr_at_target={_fmt(row.get('val_frr_at_target'))}", highlight=False), progress=_progress)
    console.print(_epoch_table(out.history, f"retrain {cfg.name}: {out.status}"))
    console.print(f"checkpoint: {out.checkpoint_dir}  (export it: raykd export {study_dir / 'retrain'})")


@app.command()
@user_errors
def export(checkpoint: Path, out: Optional[Path] = typer.Option(None, help="Default: <checkpoint>/export."),
           register: bool = typer.Option(True, help="Register the model in MLflow's registry.")) -> None:
    """Write the student alone as ONNX (+ JSON sidecar), check parity with onnxruntime."""
    from raykd.export import export_onnx, resolve_checkpoint

    # Default: beside the checkpoint it came from (<run>/checkpoint/export).
    res = export_onnx(checkpoint, out or resolve_checkpoint(checkpoint).parent / "export", register=register)
    console.print(f"ONNX: {res.onnx_path} ({res.params:,} student parameters, no projectors)\n"
                  f"sidecar: {res.sidecar_path}\nparity onnxruntime vs PyTorch: max |diff| = {res.max_abs_diff:.2e}"
                  + (f"\nregistered version: {res.registered_version}" if res.registered_version else ""))


@app.command("eval")
@user_errors
def eval_(model: Path, data: Path, threshold: Optional[float] = typer.Option(None)) -> None:
    """Accuracy, false-reject rate and false accepts per hour of an exported model on a folder or CSV."""
    from raykd.export import evaluate_onnx

    m = evaluate_onnx(model, data, threshold)
    table = Table(title=f"{model} on {data}")
    for k in m:
        table.add_column(k, justify="right")
    table.add_row(*[_fmt(v) for v in m.values()])
    console.print(table)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
