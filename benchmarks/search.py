"""Search efficiency: Optuna TPE against random search at the same budget and seeds.

    python benchmarks/search.py            # full run: 3 seeds x 12 trials per sampler (~12 min)
    python benchmarks/search.py --smoke    # 1 seed x 4 trials, to check it runs

For each seed and sampler (`search.sampler: tpe | random`, `search.seed: <seed>`), one study
(`raykd.tune.run_study`) on the tiny test project: teacher cache on, in-process trials one at a
time, ASHA off, tracking off, a few epochs per trial, over a wav2vec2 layer subset (one boolean
per candidate layer), `distillation.feature_alignment_weight` and `train.lr`. Both samplers
start from the guide's point (run_study puts it first for either). After all studies, the
target is a percentile of every val_accuracy observed in the run (75th by default, stated);
for each study: trials needed to reach it (trial order = trials.json's `number`; a study that
never reaches it counts as budget + 1, marked), and its best value. Reported: mean
trials-to-target per sampler and the ratio random / TPE (> 1 = TPE needs fewer trials), and
how many trials of each seed had the same config under both samplers.
Prints a table and writes benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

OUT = Path(__file__).parent / "results" / "search.json"
SAMPLERS = ("tpe", "random")
SPACE = {
    "wav2vec2": {"type": "layer_subset", "candidates": [0, 2, 4, 6, 8, 10, 12], "min_size": 1, "max_size": 3},
    "distillation.feature_alignment_weight": {"type": "loguniform", "low": 0.02, "high": 1.0},
    "train.lr": {"type": "loguniform", "low": 0.001, "high": 0.05},
}


def run_one(base: dict[str, Any], root: Path, name: str, sampler: str, seed: int, budget: int,
            epochs: int) -> dict[str, Any]:
    import yaml

    from raykd.config import config_from_dict
    from raykd.tune import run_study

    raw = {**base, "name": name,
           "search": {"params": SPACE, "num_samples": budget, "max_concurrent": 1, "trial_epochs": epochs,
                      "asha": {"enabled": False}, "sampler": sampler, "seed": seed}}
    path = root / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    t = time.time()
    out = run_study(config_from_dict(raw), path)
    wall = time.time() - t
    rows = sorted(out.rows, key=lambda r: (r.get("number") is None, r.get("number")))
    trials = [{"number": r.get("number"), "status": r["status"], "params": r.get("params", {}),
               "val_accuracy": r.get("val_accuracy")} for r in rows]
    return {"name": name, "sampler": sampler, "seed": seed, "wall_s": wall, "trials": trials,
            "load": os.getloadavg()}


def trials_to(values: list[float | None], target: float) -> tuple[int, bool]:
    """1-based count of trials until a value >= target; (budget + 1, False) if never."""
    for i, v in enumerate(values, 1):
        if v is not None and v >= target:
            return i, True
    return len(values) + 1, False


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def first_difference(studies: list[dict[str, Any]], seed: int) -> int | None:
    """1-based number of the first trial whose config differs between the samplers for this seed.

    TPE's start-up trials come from its internal RandomSampler(seed) -- the random baseline's own
    draws -- so the trials before this one are shared; from here on TPE's model guides it."""
    a, b = ([s for s in studies if s["seed"] == seed and s["sampler"] == sp][0]["trials"] for sp in SAMPLERS)
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x["params"] != y["params"]), None)


def summarise(studies: list[dict[str, Any]], target: float, skip: int = 0) -> dict[str, Any]:
    """Per sampler: trials to target (counted from trial skip + 1), reached, best; and the mean value of
    the trials from the first one where the samplers' configs differ (TPE-guided, vs random)."""
    per: dict[str, Any] = {}
    for s in studies:
        vals = [t["val_accuracy"] for t in s["trials"]][skip:]
        n, hit = trials_to(vals, target)
        first = first_difference(studies, s["seed"])
        late = [v for v in vals[first - 1 - skip:] if v is not None] if first else []
        per.setdefault(s["sampler"], []).append({"seed": s["seed"], "trials_to_target": n, "reached": hit,
                                                 "best": max(v for v in vals if v is not None),
                                                 "first_differing_trial": first,
                                                 "mean_after_startup": statistics.mean(late) if late else None})
    out: dict[str, Any] = {}
    for sp, rows in per.items():
        late = [r["mean_after_startup"] for r in rows if r["mean_after_startup"] is not None]
        out[sp] = {"studies": rows, "mean_trials_to_target": statistics.mean(r["trials_to_target"] for r in rows),
                   "reached": sum(r["reached"] for r in rows), "mean_best": statistics.mean(r["best"] for r in rows),
                   "mean_value_after_startup": statistics.mean(late) if late else None}
    if all(sp in out for sp in SAMPLERS):
        out["ratio_random_over_tpe"] = out["random"]["mean_trials_to_target"] / out["tpe"]["mean_trials_to_target"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="1 seed x 4 trials")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=12, help="trials per study (num_samples)")
    ap.add_argument("--trial-epochs", type=int, default=2)
    ap.add_argument("--percentile", type=float, default=75.0, help="target = this percentile of all values")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/raykd-bench"),
                    help="data, teachers, cache and studies (shared with the other benchmarks: keyed, reused)")
    ap.add_argument("--out", type=Path, default=None, help=f"default {OUT} (--smoke: search-smoke.json)")
    args = ap.parse_args()
    if args.smoke:
        args.seeds, args.budget = 1, 4
    args.out = args.out or (OUT.with_name("search-smoke.json") if args.smoke else OUT)

    import optuna
    import ray

    from raykd.config import config_from_dict
    from raykd.pipeline import prepare
    from raykd.presets import tiny_config

    load_start = os.getloadavg()
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
            s = run_one(base, root, f"search-{stamp}-{sampler}-s{seed}", sampler, seed, args.budget, args.trial_epochs)
            vals = [t["val_accuracy"] for t in s["trials"]]
            print(f"  seed {seed} {sampler:<6}: {len(vals)} trials in {s['wall_s']:.0f}s, best "
                  f"{max(v for v in vals if v is not None):.3f}", flush=True)
            studies.append(s)
    ray.shutdown()

    values = [t["val_accuracy"] for s in studies for t in s["trials"] if t["val_accuracy"] is not None]
    target = percentile(values, args.percentile)
    main_sum = summarise(studies, target)
    # The sampler's own draws only: trial 1 is the guide's point for both samplers.
    own_values = [t["val_accuracy"] for s in studies for t in s["trials"][1:] if t["val_accuracy"] is not None]
    own_target = percentile(own_values, args.percentile) if own_values else None
    own_sum = summarise(studies, own_target, skip=1) if own_values else None
    # Other targets, for robustness of the conclusion (computed from the same trials).
    others = {q: summarise(studies, percentile(values, q)) for q in (50.0, 90.0) if q != args.percentile}
    same = {}
    for seed in range(args.seeds):
        a, b = ([s for s in studies if s["seed"] == seed and s["sampler"] == sp][0]["trials"] for sp in SAMPLERS)
        same[seed] = [i + 1 for i, (x, y) in enumerate(zip(a, b)) if x["params"] == y["params"]]

    report = {
        "what": "Optuna TPE vs random search, same budget and seeds: trials to reach a target val_accuracy",
        "project": "tiny test project (tests/conftest.tiny_config), teacher cache on, in-process trials, "
                   "max_concurrent 1, ASHA off, tracking off",
        "space": SPACE, "seeds": args.seeds, "budget": args.budget, "trial_epochs": args.trial_epochs,
        "target": {"percentile": args.percentile, "of": f"all {len(values)} val_accuracy values in this run",
                   "value": target},
        "never_reached_counts_as": args.budget + 1,
        "summary": main_sum,
        "sampler_draws_only": {"what": "trial 1 (the guide's point, the same for both) left out; target = "
                                       f"p{args.percentile:g} of the remaining values", "target": own_target,
                               **(own_sum or {})},
        "other_targets": {f"p{int(q)}": {"value": percentile(values, q), **s}
                                               for q, s in others.items()},
        "same_config_trials_by_seed": same,
        "note": "TPE's start-up trials (run_study's n_startup_trials) are drawn by its internal "
                "RandomSampler(seed), i.e. the random baseline's own draws: the trials before "
                "first_differing_trial are shared; mean_after_startup averages the trials from there on",
        "studies": studies, "wall_s": time.time() - t0, "smoke": args.smoke,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "optuna": optuna.__version__, "ray_version": ray.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    print(f"\n{args.seeds} seed(s) x {args.budget} trials x {args.trial_epochs} epochs per sampler; target = "
          f"p{args.percentile:g} of {len(values)} values = val_accuracy >= {target:.4f} (never reached = "
          f"{args.budget + 1}); load {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    print(f"{'sampler':<9}{'trials to target (per seed)':<30}{'mean':>7}{'reached':>9}{'best (mean)':>13}")
    for sp in SAMPLERS:
        x = main_sum[sp]
        per = ", ".join(f"{r['trials_to_target']}{'' if r['reached'] else '*'}" for r in x["studies"])
        print(f"{sp:<9}{per:<30}{x['mean_trials_to_target']:>7.2f}{x['reached']:>5}/{len(x['studies'])}"
              f"{x['mean_best']:>13.4f}")
    print(f"random / tpe (mean trials to target): {main_sum.get('ratio_random_over_tpe', float('nan')):.2f}")
    if own_sum:
        print(f"sampler draws only (trial 1 = guide point left out), target p{args.percentile:g} = {own_target:.4f}: "
              f"tpe {own_sum['tpe']['mean_trials_to_target']:.2f}, random {own_sum['random']['mean_trials_to_target']:.2f} "
              f"trials; random / tpe {own_sum['ratio_random_over_tpe']:.2f}")
    late = {sp: main_sum[sp]["mean_value_after_startup"] for sp in SAMPLERS}
    if all(v is not None for v in late.values()):
        firsts = [first_difference(studies, k) for k in range(args.seeds)]
        print(f"mean val_accuracy from the first trial where the samplers differ (trial {firsts} per seed; "
              f"TPE-guided from there): tpe {late['tpe']:.4f}, "
              f"random {late['random']:.4f}")
    for name, o in report["other_targets"].items():
        print(f"  at {name} ({o['value']:.4f}): tpe {o['tpe']['mean_trials_to_target']:.2f}, "
              f"random {o['random']['mean_trials_to_target']:.2f}")
    print("trials with the same config under both samplers: "
          + "; ".join(f"seed {k}: {len(v)}/{args.budget}" for k, v in same.items()))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
