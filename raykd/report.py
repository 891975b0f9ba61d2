"""`raykd report STUDY_DIR`: one self-contained HTML page (images embedded) and the same content
as Markdown, from what a study leaves: study.json (baselines, distillation_gain, teachers),
trials.json, plots/ and the det.json files of its runs.

The report is built from one list of sections (title, text, table, images), rendered twice, so
the HTML and the Markdown cannot say different things.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raykd.baselines import read_study_summary
from raykd.errors import UserError
from raykd.results import fmt, layers_text, trial_table

HTML_FILE, MD_FILE = "report.html", "report.md"
DET_FILE = "det.json"  # written by detection-based validation next to a run's checkpoints
# Layer-importance plots, most informative first (the on-minus-off plot is the fallback).
IMPORTANCE_PLOTS = ("layer_importance.png", "importance.png", "layer_effect.png")
DET_VS_BASELINE = "det_vs_baseline.png"  # the report's own figure (det.png is the best trial's alone)
KNOWN_PLOTS = (*IMPORTANCE_PLOTS, "memory_vs_layers.png", DET_VS_BASELINE, "trials.png")


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    table: tuple[list[str], list[list[str]]] | None = None
    images: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)
    css: str = ""  # a class for the HTML box (verdict colour)


def write_report(study_dir: Path) -> tuple[Path, Path]:
    """Write <study>/report.html and report.md; returns their paths."""
    study_dir = Path(study_dir)
    summary = read_study_summary(study_dir)
    trials_file = study_dir / "trials.json"
    if summary is None or not trials_file.is_file():
        raise UserError(f"{study_dir}: no study.json / trials.json here (run `raykd tune` first)")
    rows = json.loads(trials_file.read_text())
    sections = build_sections(study_dir, summary, rows)
    title = f"raykd study {summary['study']}"
    html_path, md_path = study_dir / HTML_FILE, study_dir / MD_FILE
    html_path.write_text(render_html(title, sections))
    md_path.write_text(render_markdown(title, sections, study_dir))
    return html_path, md_path


def build_sections(study_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[Section]:
    metric, mode = summary["metric"], summary["mode"]
    better = "higher" if mode == "max" else "lower"
    gain = summary.get("distillation_gain")
    intro = Section("Did distillation help?", [
        summary["verdict"] + ".",
        f"Study metric: {metric} ({better} is better), {summary['n_trials']} trials of "
        f"{summary.get('trial_epochs') or 'train.epochs'} epochs; distillation_gain = best trial minus the mean "
        "of the best baseline, positive when distillation helped; its spread is the baseline's standard "
        "deviation over seeds. The best trial is the best of many, so its gain is optimistic: retrain it "
        "with several seeds before relying on a small gain."
        + (" The study was interrupted: these numbers cover the runs finished so far." if summary.get("interrupted")
           else "")],
        css=(gain or {}).get("verdict", "none").replace(" ", "-"))
    if gain:
        intro.table = (["distillation_gain", "spread (std over seeds)", "against seeds (worst..best)", "against",
                        "best trial", "baseline mean"],
                       [[f"{gain['value']:+.4g}", f"{gain['spread']:.2g} ({gain['n_seeds']} seeds)",
                         f"{gain['low']:+.4g} .. {gain['high']:+.4g}", gain["against"], fmt(gain["best"]),
                         fmt(gain["baseline_mean"])]])
    return [intro, _baselines(summary), _teachers(summary), _trials(summary, rows),
            *_plots(study_dir, summary, rows), _operating_point(summary)]


def _baselines(summary: dict[str, Any]) -> Section:
    metric = summary["metric"]
    s = Section("Baselines", ["Run before the search on the trial budget: student_alone = the student "
                              "trained on labels only (distillation.enabled: false); logit_kd = logit "
                              "distillation without feature alignment (feature_alignment_enabled: false)."])
    runs = summary.get("baselines", [])
    if not runs:
        s.text.append("No baselines were run (search.baseline_seeds: 0).")
        return s
    per = summary.get("baseline_summary", {})
    s.table = (["baseline", "seed", "status", "epochs", metric, "mean over seeds"],
               [[r["baseline"], fmt(r.get("seed")), r["status"], fmt(r.get("epochs")), fmt(r.get(metric)),
                 f"{per[r['baseline']]['mean']:.4g} +/- {per[r['baseline']]['std']:.2g}" if r["baseline"] in per
                 else ""] for r in runs])
    return s


def _teachers(summary: dict[str, Any]) -> Section:
    metric = summary["metric"]
    teachers = summary.get("teachers") or {}
    s = Section("Teachers", [f"Each fine-tuned teacher scored on the validation split on {metric}, as "
                             "a trial is. A teacher weaker than the student alone is the first thing to rule out."])
    alone = summary.get("baseline_summary", {}).get("student_alone")
    s.table = (["teacher", metric, "student alone"],
               [[n, fmt(t.get(metric)), fmt(alone["mean"]) if alone else ""] for n, t in teachers.items()])
    s.text += summary.get("weaker_teachers", [])
    return s


def _trials(summary: dict[str, Any], rows: list[dict[str, Any]]) -> Section:
    return Section("Trials", ["Baselines first, then every trial, best first. layers = the teacher "
                              "layers a run aligned; a baseline runs the searched parameters at the base "
                              "config's values."],
                   table=trial_table(summary["metric"], summary["mode"], summary.get("baselines", []), rows))


def _plots(study_dir: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[Section]:
    plots = study_dir / "plots"
    out = []
    importance = next((plots / p for p in IMPORTANCE_PLOTS if (plots / p).is_file()), None)
    imp = Section("Layer importance")
    if importance is None:
        imp.text.append("No layer-importance plot (the search space has no layer subsets, or no trial finished).")
    else:
        imp.images.append((importance, "Each layer's effect on the study metric with the other parameters "
                                       "held equal, with its interval; grey = inconclusive"))
        imp.text += importance_notes(plots)
    out.append(imp)
    if (plots / "memory_vs_layers.png").is_file():
        out.append(Section("Memory against aligned layers", images=[(plots / "memory_vs_layers.png",
                                                                     "Peak memory of each trial")]))
    out.append(_det_section(study_dir, summary))
    extra = sorted(p for p in plots.glob("*.png") if p.name not in KNOWN_PLOTS) if plots.is_dir() else []
    if (plots / "trials.png").is_file():
        extra.insert(0, plots / "trials.png")
    if extra:
        out.append(Section("More plots", images=[(p, p.stem.replace("_", " ")) for p in extra]))
    return out


def importance_notes(plots: Path) -> list[str]:
    """What the layer-importance JSON beside the plot says (raykd.importance's summary lines)."""
    for name in ("layer_effect.json", "layer_importance.json", "importance.json"):
        path = plots / name
        if path.is_file():
            data = json.loads(path.read_text())
            notes = (data.get("summary") or data.get("notes")) if isinstance(data, dict) else None
            if isinstance(notes, str):
                return [notes]
            if isinstance(notes, list):
                return [str(n) for n in notes]
    return []


def load_det(path: Path) -> tuple[list[tuple[float, float, float]], dict[str, Any] | None]:
    """A det.json: ([(threshold, frr, fa_per_hour)], operating point or None). Accepts a bare
    list of triples, or a dict holding one under det/curve/points (triples or dicts)."""
    data = json.loads(path.read_text())
    point = None
    if isinstance(data, dict):
        point = data.get("operating_point")
        if point is None and "frr_at_target" in data:  # raykd.evaluate.det_record
            point = {k: data[k] for k in ("target_fa_per_hour", "threshold_at_target", "frr_at_target",
                                          "fa_per_hour_at_target", "target_met") if k in data}
        data = next((data[k] for k in ("det", "curve", "points") if k in data), [])
    curve = []
    for p in data:
        if isinstance(p, dict):
            curve.append((float(p.get("threshold", 0.0)), float(p["frr"]), float(p["fa_per_hour"])))
        else:
            curve.append((float(p[0]), float(p[1]), float(p[2])))
    return curve, point


def find_det(run_dir: str | None) -> Path | None:
    if not run_dir or not Path(run_dir).is_dir():
        return None
    found = sorted(Path(run_dir).rglob(DET_FILE), key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def _det_runs(summary: dict[str, Any]) -> list[tuple[str, Path]]:
    """(label, det.json) of the best trial and the best seed of the baseline it is compared to."""
    out = []
    best = summary.get("best")
    if best and (p := find_det(best.get("run_dir"))):
        out.append((f"best trial {best['trial_id']}", p))
    gain = summary.get("distillation_gain") or {}
    sign = 1.0 if summary["mode"] == "max" else -1.0
    runs = [r for r in summary.get("baselines", []) if r["baseline"] == gain.get("against")
            and r.get(summary["metric"]) is not None]
    if runs:
        r = max(runs, key=lambda r: sign * r[summary["metric"]])
        if p := find_det(r.get("run_dir")):
            out.append((f"baseline {r['baseline']} s{r['seed']}", p))
    return out


def _det_section(study_dir: Path, summary: dict[str, Any]) -> Section:
    s = Section("DET curves")
    runs = _det_runs(summary)
    if not runs:
        s.text.append(f"No {DET_FILE} in the best trial's or the baseline's run directory.")
        return s
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, path in runs:
        curve, _ = load_det(path)
        pts = sorted((fa, frr) for _, frr, fa in curve)
        ax.plot([max(fa, 1e-2) for fa, _ in pts], [frr for _, frr in pts], marker=".", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("false-reject rate")
    ax.set_title("Detection error trade-off (validation)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    (study_dir / "plots").mkdir(exist_ok=True)
    png = study_dir / "plots" / DET_VS_BASELINE
    fig.savefig(png, dpi=100)
    plt.close(fig)
    s.images.append((png, "FRR against FA/h: lower left is better"))
    return s


def _operating_point(summary: dict[str, Any]) -> Section:
    """The best trial's threshold and its errors there: from its det.json, else from the epoch
    its best checkpoint holds (train.threshold)."""
    s = Section("Operating point")
    best = summary.get("best")
    if not best:
        s.text.append("No finished trial.")
        return s
    det = find_det(best.get("run_dir"))
    point = load_det(det)[1] if det else None
    if point:
        s.table = (list(point), [[fmt(v) for v in point.values()]])
        return s
    metrics, threshold = best_epoch(best)
    keys = [k for k in metrics if k.startswith("val_") or "threshold" in k]
    s.text.append(f"Best trial {best['trial_id']} ({layers_text(best)}) at its best epoch "
                  f"({fmt(metrics.get('epoch'))}) on the validation split, threshold {fmt(threshold)}:")
    s.table = (["threshold", *keys], [[fmt(threshold), *(fmt(metrics[k]) for k in keys)]])
    return s


def best_epoch(row: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """(metrics of the epoch the run's best.pt holds, its train.threshold); the last epoch's
    numbers when the checkpoint is gone."""
    import torch

    from raykd.checkpoint import BEST_FILE

    for d in (Path(row.get("run_dir") or "") / "checkpoint", Path(row.get("checkpoint") or "")):
        if (d / BEST_FILE).is_file():
            state = torch.load(d / BEST_FILE, map_location="cpu", weights_only=True)
            return state.get("metrics", {}), state["config"]["train"]["threshold"]
    return row.get("last", {}), None


# ----------------------------------------------------------------------------- rendering

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td.t,th.t,td:first-child,th:first-child{text-align:left}
.box{padding:.6em 1em;border-radius:6px;border-left:6px solid #999;background:#f6f6f6}
.helped{border-color:#2a2;background:#efe}.did-not-help{border-color:#c22;background:#fee}
.inconclusive{border-color:#d90;background:#ffd}img{max-width:100%;border:1px solid #ddd}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}"""


def render_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>"]
    for s in sections:
        css = f" class='box {e(s.css)}'" if s.css else ""
        parts.append(f"<section{css}><h2>{e(s.title)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in s.text]
        if s.table:
            head, body = s.table
            text_cols = {i for i in range(len(head)) if any(r[i] and "class='t'" in _td(r[i]) for r in body)}
            parts.append("<table><tr>" + "".join(f"<th{' class=t' if i in text_cols else ''}>{e(h)}</th>"
                                                 for i, h in enumerate(head)) + "</tr>"
                         + "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in body)
                         + "</table>")
        for png, caption in s.images:
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
        parts.append("</section>")
    return "\n".join(parts + ["</body></html>"])


def _td(cell: str) -> str:
    """Numbers align right, words (layers, names) left."""
    try:
        float(cell or "0")
        return f"<td>{html.escape(cell)}</td>"
    except ValueError:
        return f"<td class='t'>{html.escape(cell)}</td>"


def render_markdown(title: str, sections: list[Section], root: Path) -> str:
    def cell(c: str) -> str:
        return c.replace("|", "\\|")

    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for t in s.text:
            out += [t, ""]
        if s.table:
            head, body = s.table
            out += ["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(map(cell, r)) + " |" for r in body] + [""]
        for png, caption in s.images:
            out += [f"![{caption}]({png.relative_to(root) if png.is_relative_to(root) else png})", ""]
    return "\n".join(out)
