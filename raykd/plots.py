"""The study's plots: which teacher layers helped, what alignment costs in memory, all trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raykd import metrics as M
from raykd.config import RaykdConfig
from raykd.importance import Importance, layer_importance
from raykd.layer_keys import parse_layer_param

VERDICT_COLOURS = {"helps": "tab:green", "hurts": "tab:red", "inconclusive": "0.55", "untested": "0.75"}


def n_aligned(row: dict[str, Any]) -> int:
    return sum(bool(v) for k, v in row["params"].items() if parse_layer_param(k))


def study_plots(cfg: RaykdConfig, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Writes layer_effect.png/.json (effects with intervals, raykd.importance), memory_vs_layers.png,
    trials.png into out; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = cfg.search.metric
    imp = layer_importance(rows, cfg.search, seed=cfg.search.seed)
    (out / "layer_effect.json").write_text(json.dumps(imp.to_json(), indent=1))
    paths = [out / "layer_effect.json", layer_effect_plot(imp, out / "layer_effect.png")]

    done = [r for r in rows if r.get("last")]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mem in (M.VRAM_PEAK_MB, M.RSS_PEAK_MB):
        pts = [(n_aligned(r), r["last"][mem]) for r in done if mem in r["last"]]
        if pts:
            ax.scatter(*zip(*pts), label=mem)
    ax.set_xlabel("aligned teacher layers")
    ax.set_ylabel("peak memory (MB)")
    ax.set_title("Peak memory vs number of aligned layers")
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, out / "memory_vs_layers.png"))

    keys = sorted({k for r in done for k in r["params"]})
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(keys) + 2), 4))
    if keys and done:
        scores = [r.get(metric, 0.0) or 0.0 for r in done]
        lo, hi = min(scores), max(scores)
        cmap = plt.get_cmap("viridis")
        for r, sc in zip(done, scores):
            ys = [_norm(r["params"].get(k), [d["params"].get(k) for d in done]) for k in keys]
            ax.plot(range(len(keys)), ys, color=cmap((sc - lo) / (hi - lo) if hi > lo else 1.0), alpha=0.8)
        ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right")
    ax.set_ylabel("normalised value")
    ax.set_title(f"All trials over the searched parameters (colour = {metric})")
    fig.tight_layout()
    paths.append(_save(fig, out / "trials.png"))
    return paths


def det_plot(det: dict[str, Any], path: Path) -> Path:
    """FRR against false accepts per hour (log x) of one model, its operating point marked.
    det: a det.json record (raykd.evaluate.det_record). FA/h = 0 points sit at the left edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = det["negative_hours"]
    floor = 0.5 / hours if hours > 0 else 0.01  # half of one trigger: where "0 FA/h" is drawn
    # The lower envelope: the best FRR at FA/h <= x (what `operating_point` picks for target x).
    xs, ys = [], []
    for fa, frr in sorted((max(fa, floor), frr) for _, frr, fa in det["points"]):
        if not ys or frr < ys[-1]:
            xs.append(fa)
            ys.append(frr)
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.step(xs + [max(xs[-1], det["target_fa_per_hour"]) * 2], ys + ys[-1:], where="post", color="tab:blue")
    op_fa = max(det["fa_per_hour_at_target"], floor)
    ax.scatter([op_fa], [det["frr_at_target"]], color="tab:red", zorder=3,
               label=f"threshold {det['threshold_at_target']:.3f}: FRR {det['frr_at_target']:.3f}")
    ax.axvline(det["target_fa_per_hour"], color="tab:red", ls="--", lw=0.8,
               label=f"target {det['target_fa_per_hour']:g} FA/h")
    ax.set_xscale("log")
    ax.set_xlabel(f"false accepts per hour ({hours:.2f} h of negative audio)")
    ax.set_ylabel("false-reject rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"DET (mean FRR 0.1-10 FA/h: {det['det_mean_frr']:.3f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def layer_effect_plot(imp: Importance, path: Path) -> Path:
    """Each candidate layer's effect with its interval; inconclusive ones hollow and grey.

    Left: the effects (metric units, other parameters held equal), green = helps, red = hurts
    (direction-aware), grey = the interval crosses zero; a layer with too few trials on one
    side is named at zero as untested. Right, when there are enough trials: Optuna's PED-ANOVA
    importance of every searched parameter, a second opinion that ranks but gives no sign.
    """
    import matplotlib

    matplotlib.use("Agg")  # callable on its own (the report), headless
    import matplotlib.pyplot as plt

    effects = imp.effects
    shares = imp.optuna.get("ped_anova", {})
    height = max(2.5, 0.35 * max(len(effects), len(shares)) + 1.5)
    fig, axes = plt.subplots(1, 2 if shares else 1, figsize=(11 if shares else 6.5, height), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]} if shares else None)
    ax = axes[0][0]
    ys = list(range(len(effects)))[::-1]  # the space's order, top to bottom
    for y, e in zip(ys, effects):
        colour = VERDICT_COLOURS[e.verdict]
        if e.effect is None:
            ax.annotate(f"{e.verdict} ({e.n_on} on / {e.n_off} off)", (0, y), ha="center", va="center",
                        fontsize=8, color="0.4")
            continue
        ax.errorbar(e.effect, y, xerr=[[e.effect - e.low], [e.high - e.effect]], fmt="o", capsize=3,
                    color=colour, mfc=colour if e.verdict in ("helps", "hurts") else "white")
        ax.annotate(f"{e.n_on} on / {e.n_off} off: {e.verdict}",
                    (e.high, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7, color=colour)
    if not effects:
        ax.annotate("no layer_subset in the search", (0.5, 0.5), xycoords="axes fraction", ha="center")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ys, [f"{e.teacher} L{e.layer}" for e in effects])
    better = "higher" if imp.mode == "max" else "lower"
    ax.set_xlabel(f"change in {imp.metric} with the layer on ({better} is better)")
    ax.set_title(f"Layer effects, other parameters held equal: {imp.n_trials} trials, "
                 f"{imp.level:.0%} simultaneous intervals", fontsize=9)
    ax.margins(x=0.25)
    if shares:
        ax2 = axes[0][1]
        names = sorted(shares, key=shares.get)
        ax2.barh(names, [shares[n] for n in names], color="tab:blue")
        ax2.set_xlabel("share of importance (Optuna PED-ANOVA)")
        ax2.set_title("Which parameters mattered (no sign)", fontsize=9)
        ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _norm(v: Any, all_v: list[Any]) -> float:
    """Place a value in [0, 1] among all trials' values (booleans and categories included)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        cats = sorted({str(x) for x in all_v})
        return cats.index(str(v)) / max(len(cats) - 1, 1)
    nums = [float(x) for x in all_v if isinstance(x, (int, float))]
    lo, hi = min(nums), max(nums)
    return (float(v) - lo) / (hi - lo) if hi > lo else 0.5


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
