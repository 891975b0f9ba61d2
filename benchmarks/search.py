"""Search efficiency: Optuna TPE against random search at the same budget and seeds.

    python benchmarks/search.py            # full run: 5 seeds x 12 trials per sampler (~20-30 min)
    python benchmarks/search.py --smoke    # 2 seeds x 3 trials x 1 epoch, to check it runs

For each seed and sampler (`search.sampler: tpe | random`, `search.seed: <seed>`), one study
(`raykd.tune.run_study`, so the sampler is exactly what a study gets: raykd.searcher's TPE
with multivariate=True, group=True, constant_liar=True) on the tiny test project: teacher
cache on, in-process trials one at a time, ASHA off, tracking off, a few epochs per trial,
over both teachers' layer subsets (one boolean per candidate layer),
`distillation.feature_alignment_weight` and `train.lr`. Both samplers start from the guide's
point (run_study puts it first for either). The objective is the study default
(`SearchConfig().metric` / `.mode`) unless --metric/--mode say otherwise.

After all studies, the target is the --percentile best of every value observed in the run
(75th: better than three quarters of all trials). For each study: trials needed to reach it
(trial order = trials.json's `number`; a study that never reaches it counts as budget + 1,
marked). Reported per sampler: trials-to-target per seed, mean, standard deviation, range;
and the paired difference random - TPE over seeds (same seed = same start-up draws) with a
95% t-interval, and a plain sentence saying whether the difference is within that spread.
Prints a table and writes benchmarks/results/search.json (--smoke: search-smoke.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "results" / "search.json"
SAMPLERS = ("tpe", "random")
SPACE = {
    "wav2vec2": {"type": "layer_subset", "candidates": [0, 2, 4, 6, 8, 10, 12], "min_size": 1, "max_size": 3},
    "conformer": {"type": "layer_subset", "candidates": [1, 2], "min_size": 0, "max_size": 1},
    "distillation.feature_alignment_weight": {"type": "loguniform", "low": 0.02, "high": 1.0},
    "train.lr": {"type": "loguniform", "low": 0.001, "high": 0.05},
}
# two-sided 95% Student t quantiles by degrees of freedom (seeds - 1); 1.96 beyond the table
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
       12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


def run_one(base: dict[str, Any], root: Path, name: str, sampler: str, seed: int, args: argparse.Namespace
            ) -> dict[str, Any]:
    import yaml

    from raykd.config import config_from_dict
    from raykd.tune import run_study

    raw = {**base, "name": name,
           "search": {"params": SPACE, "num_samples": args.budget, "max_concurrent": 1,
                      "trial_epochs": args.trial_epochs, "asha": {"enabled": False}, "sampler": sampler,
                      "seed": seed, "metric": args.metric, "mode": args.mode,
                      "baseline_seeds": 0}}  # the samplers are compared, not distillation: no baselines
    path = root / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    t = time.time()
    out = run_study(config_from_dict(raw), path)
    wall = time.time() - t
    rows = sorted(out.rows, key=lambda r: (r.get("number") is None, r.get("number")))
    trials = [{"number": r.get("number"), "status": r["status"], "params": r.get("params", {}),
               "value": r.get(args.metric)} for r in rows]
    return {"name": name, "sampler": sampler, "seed": seed, "wall_s": wall, "trials": trials,
            "load": os.getloadavg()}


def reached(v: float | None, target: float, mode: str) -> bool:
    return v is not None and (v >= target if mode == "max" else v <= target)


def trials_to(values: list[float | None], target: float, mode: str) -> tuple[int, bool]:
    """1-based count of trials until one reaches the target; (budget + 1, False) if never."""
    for i, v in enumerate(values, 1):
        if reached(v, target, mode):
            return i, True
    return len(values) + 1, False


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def target_for(values: list[float], q: float, mode: str) -> float:
    """The value better than q% of all trials (high values for max, low ones for min)."""
    return percentile(values, q if mode == "max" else 100 - q)


def first_difference(studies: list[dict[str, Any]], seed: int) -> int | None:
    """1-based number of the first trial whose config differs between the samplers for this seed.

    TPE's start-up trials come from its internal RandomSampler(seed) -- the random baseline's own
    draws -- so the trials before this one are shared; from here on TPE's model guides it."""
    a, b = (pick(studies, seed, sp)["trials"] for sp in SAMPLERS)
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x["params"] != y["params"]), None)


def pick(studies: list[dict[str, Any]], seed: int, sampler: str) -> dict[str, Any]:
    return next(s for s in studies if s["seed"] == seed and s["sampler"] == sampler)


def spread(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs)}


def paired(diffs: list[float]) -> dict[str, Any]:
    """Mean paired difference over seeds with a 95% t-interval; within_spread if it holds 0."""
    s = spread(diffs)
    df = len(diffs) - 1
    t = T95[max(k for k in T95 if k <= df)] if df >= 1 else math.inf
    half = t * s["sd"] / math.sqrt(len(diffs)) if df >= 1 else math.inf
    low, high = s["mean"] - half, s["mean"] + half
    return {**s, "ci95": [low, high], "within_spread": not (low > 0 or high < 0)}


def summarise(studies: list[dict[str, Any]], target: float, mode: str, skip: int = 0) -> dict[str, Any]:
    """Per sampler: trials to target per seed (counted from trial skip + 1), reached, best, spread;
    then the paired difference random - TPE (> 0: TPE needed fewer trials)."""
    best = max if mode == "max" else min
    per: dict[str, list[dict[str, Any]]] = {}
    for s in studies:
        vals = [t["value"] for t in s["trials"]][skip:]
        n, hit = trials_to(vals, target, mode)
        first = first_difference(studies, s["seed"])
        per.setdefault(s["sampler"], []).append({"seed": s["seed"], "trials_to_target": n, "reached": hit,
                                                 "best": best(v for v in vals if v is not None),
                                                 "first_differing_trial": first})
    out: dict[str, Any] = {}
    for sp, rows in per.items():
        out[sp] = {"studies": rows, "trials_to_target": spread([r["trials_to_target"] for r in rows]),
                   "reached": sum(r["reached"] for r in rows), "best": spread([r["best"] for r in rows])}
    seeds = sorted({s["seed"] for s in studies})
    if all(sp in out for sp in SAMPLERS):
        n_of = {sp: {r["seed"]: r["trials_to_target"] for r in out[sp]["studies"]} for sp in SAMPLERS}
        out["random_minus_tpe"] = paired([n_of["random"][k] - n_of["tpe"][k] for k in seeds])
    return out


def verdict(summary: dict[str, Any], seeds: int) -> str:
    """The plain sentence: who needed fewer trials, and whether that is more than the spread."""
    d = summary["random_minus_tpe"]
    lo, hi = d["ci95"]
    head = (f"TPE needed {summary['tpe']['trials_to_target']['mean']:.1f} ± {summary['tpe']['trials_to_target']['sd']:.1f}"
            f" trials, random {summary['random']['trials_to_target']['mean']:.1f} ± "
            f"{summary['random']['trials_to_target']['sd']:.1f} (mean ± sd over {seeds} seeds); random - TPE = "
            f"{d['mean']:+.1f}, 95% interval [{lo:+.1f}, {hi:+.1f}]")
    if d["within_spread"]:
        return head + ": the difference is within the spread -- no evidence here that either sampler is faster."
    faster = "TPE" if d["mean"] > 0 else "random search"
    return head + f": {faster} reached the target in fewer trials, beyond the spread over seeds."


def run_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    import ray

    from raykd.config import config_from_dict
    from raykd.pipeline import prepare
    from raykd.presets import tiny_config

    root = args.workdir.resolve()
    base = tiny_config(root, **{"tracking.enabled": False, "teacher_cache.enabled": True})
    # Data, teachers and the cache for every candidate layer: once, before any study.
    prepare(config_from_dict({**base, "search": {"params": SPACE}}))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    studies = []
    t0 = time.time()
    for seed in range(args.seeds):
        # alternate which sampler goes first, so drift in machine load does not favour one
        for sampler in (SAMPLERS if seed % 2 == 0 else SAMPLERS[::-1]):
            s = run_one(base, root, f"search-{stamp}-{sampler}-s{seed}", sampler, seed, args)
            vals = [t["value"] for t in s["trials"] if t["value"] is not None]
            print(f"  seed {seed} {sampler:<6}: {len(s['trials'])} trials in {s['wall_s']:.0f}s, best "
                  f"{(max if args.mode == 'max' else min)(vals):.4f}", flush=True)
            studies.append(s)
    ray.shutdown()
    return studies, time.time() - t0


def main() -> None:
    from raykd.config import SearchConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 seeds x 3 trials x 1 epoch")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=12, help="trials per study (num_samples)")
    ap.add_argument("--trial-epochs", type=int, default=2)
    ap.add_argument("--metric", default=SearchConfig().metric, help="default: the study default")
    ap.add_argument("--mode", default=SearchConfig().mode, choices=["min", "max"])
    ap.add_argument("--percentile", type=float, default=75.0, help="target = better than this %% of all values")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/raykd-bench"),
                    help="data, teachers, cache and studies (shared with the other benchmarks: keyed, reused)")
    ap.add_argument("--out", type=Path, default=None, help=f"default {OUT} (--smoke: search-smoke.json)")
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.budget, args.trial_epochs = 2, 3, 1
    args.out = args.out or (OUT.with_name("search-smoke.json") if args.smoke else OUT)

    import optuna
    import ray

    load_start = os.getloadavg()
    studies, wall = run_all(args)
    values = [t["value"] for s in studies for t in s["trials"] if t["value"] is not None]
    target = target_for(values, args.percentile, args.mode)
    main_sum = summarise(studies, target, args.mode)
    # The sampler's own draws only: trial 1 is the guide's point for both samplers.
    own = [t["value"] for s in studies for t in s["trials"][1:] if t["value"] is not None]
    own_target = target_for(own, args.percentile, args.mode) if own else None
    own_sum = summarise(studies, own_target, args.mode, skip=1) if own else None
    others = {f"p{q:g}": {"value": target_for(values, q, args.mode),
                          **summarise(studies, target_for(values, q, args.mode), args.mode)}
              for q in (50.0, 90.0) if q != args.percentile}
    same = {seed: [i + 1 for i, (x, y) in enumerate(zip(*(pick(studies, seed, sp)["trials"] for sp in SAMPLERS)))
                   if x["params"] == y["params"]] for seed in range(args.seeds)}
    report = {
        "what": f"Optuna TPE vs random search, same budget and seeds: trials to reach a target {args.metric}",
        "project": "tiny test project (raykd.presets.tiny_config), teacher cache on, in-process trials, "
                   "max_concurrent 1, ASHA off, tracking off",
        "sampler": "raykd.searcher.make_sampler: TPESampler(multivariate=True, group=True, constant_liar=True, "
                   "seed, n_startup_trials=max(2, min(10, budget // 3))) vs RandomSampler(seed)",
        "metric": args.metric, "mode": args.mode, "space": SPACE, "seeds": args.seeds, "budget": args.budget,
        "trial_epochs": args.trial_epochs,
        "target": {"percentile": args.percentile, "of": f"all {len(values)} values in this run", "value": target},
        "never_reached_counts_as": args.budget + 1,
        "summary": main_sum, "verdict": verdict(main_sum, args.seeds),
        "sampler_draws_only": {"what": "trial 1 (the guide's point, the same for both) left out", "target": own_target,
                               **(own_sum or {})},
        "other_targets": others, "same_config_trials_by_seed": same,
        "studies": studies, "wall_s": wall, "smoke": args.smoke,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "optuna": optuna.__version__, "ray_version": ray.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print_report(report, args)


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    main_sum, target = report["summary"], report["target"]["value"]
    cmp = ">=" if args.mode == "max" else "<="
    print(f"\n{args.seeds} seed(s) x {args.budget} trials x {args.trial_epochs} epochs per sampler; target = "
          f"p{args.percentile:g} best of {report['target']['of']}: {args.metric} {cmp} {target:.4f} (never reached = "
          f"{args.budget + 1}); load {report['loadavg_start'][0]:.1f} -> {report['loadavg_end'][0]:.1f} on "
          f"{report['cpus']} cpus")
    print(f"{'sampler':<9}{'trials to target (per seed)':<30}{'mean':>7}{'sd':>6}{'range':>8}{'reached':>9}"
          f"{'best (mean)':>13}")
    for sp in SAMPLERS:
        x = main_sum[sp]
        per = ", ".join(f"{r['trials_to_target']}{'' if r['reached'] else '*'}" for r in x["studies"])
        t = x["trials_to_target"]
        print(f"{sp:<9}{per:<30}{t['mean']:>7.2f}{t['sd']:>6.2f}{t['min']:>4.0f}-{t['max']:<3.0f}"
              f"{x['reached']:>5}/{len(x['studies'])}{x['best']['mean']:>13.4f}")
    print(report["verdict"])
    own = report["sampler_draws_only"]
    if own.get("random_minus_tpe"):
        print(f"sampler draws only (trial 1 = guide point left out), target {own['target']:.4f}: random - TPE = "
              f"{own['random_minus_tpe']['mean']:+.2f} [{own['random_minus_tpe']['ci95'][0]:+.2f}, "
              f"{own['random_minus_tpe']['ci95'][1]:+.2f}]")
    for name, o in report["other_targets"].items():
        d = o["random_minus_tpe"]
        print(f"  at {name} ({o['value']:.4f}): tpe {o['tpe']['trials_to_target']['mean']:.2f}, random "
              f"{o['random']['trials_to_target']['mean']:.2f}; random - TPE {d['mean']:+.2f} "
              f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]")
    print("first trial where the samplers' configs differ, per seed: "
          + ", ".join(str(first_difference(report["studies"], k)) for k in range(args.seeds)))
    print("trials with the same config under both samplers: "
          + "; ".join(f"seed {k}: {len(v)}/{args.budget}" for k, v in report["same_config_trials_by_seed"].items()))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
