"""The study's plots: which teacher layers helped, what alignment costs in memory, all trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raykd import metrics as M
from raykd.config import LayerSubsetParam, RaykdConfig
from raykd.layer_keys import layer_param, parse_layer_param



def layer_effects(cfg: RaykdConfig, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per candidate layer: mean metric of trials with it on minus trials with it off.

    Only trials that produced the metric count (completed or pruned); a layer never on, or
    never off, has no effect estimate (None).
    """
    metric = cfg.search.metric
    done = [r for r in rows if r.get(metric) is not None and r["status"] in ("completed", "pruned")]
    out: dict[str, dict[str, Any]] = {}
    for key, p in cfg.search.params.items():
        if not isinstance(p, LayerSubsetParam):
            continue
        for layer in p.candidates:
            name = layer_param(key, layer)
            on = [r[metric] for r in done if _layer_on(r, cfg, key, layer)]
            off = [r[metric] for r in done if not _layer_on(r, cfg, key, layer)]
            effect = (sum(on) / len(on) - sum(off) / len(off)) if on and off else None
            out[name] = {"effect": effect, "n_on": len(on), "n_off": len(off)}
    return out


def _layer_on(row: dict[str, Any], cfg: RaykdConfig, teacher: str, layer: int) -> bool:
    return bool(row["params"].get(layer_param(teacher, layer), False))


def n_aligned(row: dict[str, Any]) -> int:
    return sum(bool(v) for k, v in row["params"].items() if parse_layer_param(k))


def study_plots(cfg: RaykdConfig, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Writes layer_effect.png/.json, memory_vs_layers.png, trials.png into out; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = cfg.search.metric
    paths = []
    effects = layer_effects(cfg, rows)
    (out / "layer_effect.json").write_text(json.dumps(effects, indent=1))
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(effects) + 2), 3.5))
    names = list(effects)
    vals = [effects[n]["effect"] or 0.0 for n in names]
    ax.bar(names, vals, color=["tab:green" if v > 0 else "tab:red" for v in vals])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel(f"mean {metric}: layer on - off")
    ax.set_title("Which teacher layers helped")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    paths += [out / "layer_effect.json", _save(fig, out / "layer_effect.png")]

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
