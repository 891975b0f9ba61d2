"""Held-out voices: how students score on a split's voice families, by the streaming metric.

Every checkpoint given is scored on the same split of one config (by default the validation
split of the offline default: voice families never heard in training, plus its long negative
streams): FRR at the operating point for eval.target_fa_per_hour, its threshold, and FRR per
voice family at that threshold. Use it to compare students trained on different data.

    python benchmarks/heldout.py --config search_spaces/wakeword-local.yaml \
        --checkpoint before=/tmp/before/runs/alone --checkpoint after=runs/alone

Prints a table and writes JSON (default benchmarks/results/heldout.json).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from raykd.checkpoint import BEST_FILE
from raykd.config import StudentConfig, load_config
from raykd.data.dataset import load_split
from raykd.data.features import LogMel
from raykd.detect import torch_scorer
from raykd.evaluate import detection_report, split_scores
from raykd.models.student import build_student


def load_any_student(path: Path) -> torch.nn.Module:
    """The student of a best.pt (a run dir, its checkpoint/ or the file), built from the student
    block of its own config, so checkpoints made by older raykd versions load too."""
    for p in (path, path / BEST_FILE, path / "checkpoint" / BEST_FILE):
        if p.is_file():
            state = torch.load(p, map_location="cpu", weights_only=True)
            cfg = state["config"]
            student = build_student(StudentConfig(**cfg["student"]), cfg["features"]["n_mels"])
            student.load_state_dict({k.removeprefix("student."): v for k, v in state["model"].items()
                                     if k.startswith("student.")})
            return student.eval()
    raise SystemExit(f"{path}: no {BEST_FILE}")


def families_of(cfg, split: str) -> dict[str, str]:
    """Resolved clip path -> voice family, from the synthetic manifest (empty when it has none)."""
    manifest = Path(cfg.data.root) / "manifest.csv"
    out = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("split") == split and row.get("voice_family"):
                out[str((manifest.parent / row["path"]).resolve())] = row["voice_family"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("search_spaces/wakeword-local.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH (repeat)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/heldout.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    cfg = load_config(args.config, args.overrides)
    data = load_split(cfg, args.split)
    fam = families_of(cfg, args.split)
    pos_families = [fam.get(str(Path(p).resolve()), "?") for p, y in zip(data.paths, data.labels.tolist()) if y == 1]
    results = {"config": str(args.config), "overrides": args.overrides, "split": args.split,
               "negative_hours": data.negative_seconds / 3600, "positives": len(pos_families),
               "target_fa_per_hour": cfg.eval.target_fa_per_hour, "students": {}}
    logmel = LogMel(cfg.features)
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        scorer = torch_scorer(load_any_student(Path(path)), logmel, "cpu")
        pos, negs = split_scores(scorer, data, cfg.features, cfg.eval)
        rep = detection_report(pos, negs, data.negative_seconds, cfg.features, cfg.eval, 0.5)
        thr = rep["threshold_at_target"]
        per_family = {}
        for f in sorted(set(pos_families)):
            sel = torch.tensor([x == f for x in pos_families])
            per_family[f] = {"positives": int(sel.sum()), "frr_at_target": float((pos[sel] < thr).float().mean())}
        results["students"][name] = {"path": path, "frr_at_target": rep["frr_at_target"], "threshold_at_target": thr,
                                     "fa_per_hour_at_target": rep["fa_per_hour_at_target"],
                                     "frr_at_0.5": rep["frr"], "fa_per_hour_at_0.5": rep["fa_per_hour"],
                                     "det_mean_frr": rep["det_mean_frr"], "per_family": per_family}
    print(f"{args.split} split of {args.config}: {results['positives']} positives, "
          f"{results['negative_hours']:.2f} h of negative audio, target {cfg.eval.target_fa_per_hour} FA/h")
    for name, r in results["students"].items():
        print(f"{name:>10}: FRR at target {r['frr_at_target']:.3f} (threshold {r['threshold_at_target']:.3f}, "
              f"{r['fa_per_hour_at_target']:.2f} FA/h); at 0.5: FRR {r['frr_at_0.5']:.3f}, "
              f"{r['fa_per_hour_at_0.5']:.1f} FA/h; DET mean FRR {r['det_mean_frr']:.3f}")
        for f, v in r["per_family"].items():
            print(f"{'':>12}{f:<16} {v['positives']:>4} positives  FRR at target {v['frr_at_target']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
