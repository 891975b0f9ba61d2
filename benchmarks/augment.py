"""What the acoustic augmentation costs: the old chain vs the new one, side by side.

    python benchmarks/augment.py            # 256 and 512 clips x 2 views, 3 repeats
    python benchmarks/augment.py --smoke    # 32 and 64 clips x 2 views, 1 repeat

The views are made exactly as the teacher-output cache build and LiveTargets make them
(`raykd.distill.cache.augment_views`, one seeded generator per (clip, view)), for

* old: the chain before issue 11 -- shift, gain, coloured noise, i.e. every new probability 0
  (speed, pitch, reverb, babble, band-limit, mu-law);
* new: the default `data.augment` (speed 0.5, pitch 0.3, reverb 0.5, babble 0.3, band-limit
  0.2, mu-law 0.1).

Both at N and 2N clips x V views, modes interleaved, the fastest of the repeats kept. The time
per clip-view at N and 2N shows the build is linear in clips x views (ratio ~1); the banks
(64 simulated rooms, the babble bank) are built once per run and timed apart. Clips are
1.5 s syllable-like bursts at 16 kHz (the cost does not depend on what is said).
Prints a table and writes benchmarks/results/augment.json (augment-smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).parent / "results"
SR, S = 16000, 24000
NEW_KEYS = ("speed_prob", "pitch_prob", "reverb_prob", "babble_prob", "bandlimit_prob", "mulaw_prob")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def clips(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, S) bursts of a modulated tone with pauses, and labels (every third clip positive)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(S) / SR
    f0 = 120 + 250 * torch.rand(n, 1, generator=g)
    rate = 3 + 3 * torch.rand(n, 1, generator=g)
    env = torch.sin(2 * math.pi * rate * t).clamp_min(0) * ((t > 0.2) & (t < 1.3))
    return 0.2 * env * torch.sin(2 * math.pi * f0 * t), (torch.arange(n) % 3 == 0).long()


def configs() -> dict[str, Any]:
    from raykd.config import config_from_dict

    base = {"teachers": {}, "distillation": {"enabled": False}}
    return {"old": config_from_dict({**base, "data": {"augment": {k: 0.0 for k in NEW_KEYS}}}),
            "new": config_from_dict(base)}


def time_views(cfg: Any, waves: torch.Tensor, labels: torch.Tensor, views: int, batch: int = 64) -> float:
    """Seconds to make every (clip, view), batch by batch as build_cache does."""
    from raykd.distill.cache import augment_views, train_babble_bank

    bank = train_babble_bank(cfg, waves, labels)
    t = time.perf_counter()
    for v in range(views):
        for i in range(0, waves.shape[0], batch):
            idx = torch.arange(i, min(i + batch, waves.shape[0]))
            augment_views(waves[idx], idx, torch.full_like(idx, v), cfg, None, bank)
    return time.perf_counter() - t


def time_banks(cfg: Any, waves: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Cold build of the room bank (not the per-process cached one) and of the babble bank."""
    from raykd.data import rooms
    from raykd.distill.cache import train_babble_bank

    aug = cfg.data.augment
    t = time.perf_counter()
    rooms.rir_bank.__wrapped__(aug.rir_dir, aug.rir_bank_size, aug.rt60_s, aug.drr_db, SR, cfg.seed)
    rir_s = time.perf_counter() - t
    t = time.perf_counter()
    train_babble_bank(cfg, waves, labels)
    return {"rir_bank_s": rir_s, "babble_bank_s": time.perf_counter() - t, "rir_bank_size": aug.rir_bank_size}


def run(n: int, views: int, repeats: int) -> dict[str, Any]:
    cfgs = configs()
    sizes = [n, 2 * n]
    data = {k: clips(k) for k in sizes}
    banks = time_banks(cfgs["new"], *data[n])  # also warms the per-process room bank
    best: dict[str, dict[int, float]] = {m: {} for m in cfgs}
    for r in range(repeats):
        order = list(cfgs) if r % 2 == 0 else list(cfgs)[::-1]
        for k in sizes:
            for mode in order:
                s = time_views(cfgs[mode], *data[k], views)
                best[mode][k] = min(best[mode].get(k, math.inf), s)
    rows = []
    for mode in cfgs:
        per = {k: 1000 * best[mode][k] / (k * views) for k in sizes}
        rows.append({"mode": mode, "clips": sizes, "views": views,
                     "seconds": [best[mode][k] for k in sizes],
                     "ms_per_clip_view": [per[k] for k in sizes],
                     "linearity_2n_over_n": per[2 * n] / per[n]})
    ratio = rows[1]["ms_per_clip_view"][1] / rows[0]["ms_per_clip_view"][1]
    return {"rows": rows, "new_over_old": ratio, "banks": banks, "repeats": repeats,
            "torch_threads": torch.get_num_threads(), "load": load(),
            "cpus": os.cpu_count(), "platform": platform.platform()}


def show(res: dict[str, Any]) -> None:
    print(f"{'chain':6} {'clips':>11} {'views':>5} {'seconds':>15} {'ms/clip-view':>15} {'2N/N':>6}")
    for r in res["rows"]:
        secs = " / ".join(f"{s:.2f}" for s in r["seconds"])
        per = " / ".join(f"{p:.1f}" for p in r["ms_per_clip_view"])
        print(f"{r['mode']:6} {' / '.join(map(str, r['clips'])):>11} {r['views']:>5} {secs:>15} "
              f"{per:>15} {r['linearity_2n_over_n']:>6.2f}")
    b = res["banks"]
    print(f"new / old per clip-view: {res['new_over_old']:.1f}x; banks built once: "
          f"{b['rir_bank_size']} rooms {b['rir_bank_s']:.2f}s, babble {b['babble_bank_s']:.3f}s; "
          f"load {res['load']} on {res['cpus']} cpus")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n, repeats = (32, 1) if args.smoke else (args.clips, args.repeats)
    res = {"args": {"clips": n, "views": args.views, "repeats": repeats, "smoke": args.smoke},
           **run(n, args.views, repeats)}
    show(res)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / ("augment-smoke.json" if args.smoke else "augment.json")
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
