"""What the teacher-output cache buys: trials that cost only the student.

    python benchmarks/cache.py            # full run (~8 min on 2 busy cores)
    python benchmarks/cache.py --smoke    # tiny sizes, to check it runs

(a) study: the same smoke study (`raykd.tune.run_study`, 4 trials x 3 epochs, one at a time,
    ASHA off, tracking off, in-process trials) with `teacher_cache.enabled` true and false, in
    alternating order; each trial's Tune `time_total_s` and its per-epoch `epoch_seconds`.
    Same seeded sampler, so both modes run the same trial configs (checked). Tiny project.
(b) step: one distillation training step at batch 64, written out as the loop does it
    (`train_loop_per_worker`, step 5) with the real components: `TeacherCache.batch` against
    live teachers (`augment_views` + teacher forward + `teacher_targets`), then LogMel,
    SpecAugment, student + projectors, `DistillLoss`, backward, clip, AdamW step; the two modes
    and the setups below interleaved step by step; the fastest step per mode (medians kept).
    For the tiny test teachers (fine-tuned) and for teachers of the offline default's size
    (search_spaces/wakeword-local.yaml arch, random init: cost does not depend on the values),
    each with a real cache (`build_cache`) of the tiny project's train clips, built twice
    (cold, then warm) and timed; and the cached step with base-sized (768-d) targets (a cache
    filled with random fp16).
(c) base: the forward cost of base-sized teachers on this CPU -- `Wav2Vec2Model(Wav2Vec2Config())`
    (the default config is wav2vec2-base: 12 blocks, 768-d, ~95M params) and a base-sized
    `Wav2Vec2ConformerModel`, random init, through raykd's Teacher + teacher_targets, on batches
    of 1.5 s clips -- and the projection of cached / uncached trial time, written out.
Targets (issue 5): a cached trial <= 1/5 of an uncached one on the local default, <= 1/20 with
base-sized teachers. Ratios measured side by side are what to read (load is recorded).
Prints tables and writes benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

OUT = Path(__file__).parent / "results" / "cache.json"
LOCAL = ROOT / "search_spaces" / "wakeword-local.yaml"
CLUSTER = ROOT / "search_spaces" / "wakeword.yaml"
BATCH = 64
TARGET_LOCAL, TARGET_BASE = 1 / 5, 1 / 20
STUDY_SEARCH = {
    "params": {
        "wav2vec2": {"type": "layer_subset", "candidates": [0, 2, 4, 6, 8, 10, 12], "min_size": 1, "max_size": 3},
        "distillation.feature_alignment_weight": {"type": "loguniform", "low": 0.02, "high": 0.5},
        "train.lr": {"type": "loguniform", "low": 0.002, "high": 0.03},
    },
    "num_samples": 4, "max_concurrent": 1, "trial_epochs": 3, "asha": {"enabled": False}, "seed": 0,
    "baseline_seeds": 0,  # the study's trials are timed with and without the cache: no baselines
}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- (a) study


def run_one_study(base: dict[str, Any], root: Path, name: str, cache_on: bool) -> dict[str, Any]:
    """One study; per-trial Tune time_total_s and last epoch_seconds, ordered by trial number."""
    import yaml

    from raykd.config import config_from_dict
    from raykd.pipeline import prepare
    from raykd.tune import run_study

    raw = {**base, "name": name, "teacher_cache": {"enabled": cache_on}}
    cfg = config_from_dict(raw)
    path = root / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    t = time.time()
    prepare(cfg)  # data/teachers/cache exist already: this is the study's own (cheap) prepare, timed apart
    prepare_s = time.time() - t
    t = time.time()
    out = run_study(cfg, path)
    wall = time.time() - t
    rows = sorted((r for r in out.rows if "last" in r), key=lambda r: r["number"])
    return {"name": name, "cache": cache_on, "study_wall_s": wall, "prepare_s": prepare_s,
            "trials": [{"number": r["number"], "status": r["status"], "params": r["params"],
                        "time_total_s": r["last"]["time_total_s"], "last_epoch_s": r["last"]["epoch_seconds"],
                        "val_accuracy": r["val_accuracy"]} for r in rows],
            "load": load()}


def part_a(base: dict[str, Any], root: Path, repeats: int, trials: int, epochs: int) -> dict[str, Any]:
    import ray

    from raykd.config import config_from_dict
    from raykd.pipeline import prepare

    search = {**STUDY_SEARCH, "num_samples": trials, "trial_epochs": epochs}
    sbase = {**base, "search": search}
    # The cache for this search space (every candidate layer): built once, outside the timings.
    t = time.time()
    prepare(config_from_dict({**sbase, "teacher_cache": {"enabled": True}}))
    ready_s = time.time() - t
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    order = []
    for r in range(repeats):
        order += [True, False] if r % 2 == 0 else [False, True]
    studies = []
    for i, on in enumerate(order):
        s = run_one_study(sbase, root, f"cache-{stamp}-{i}-{'on' if on else 'off'}", on)
        tt = [t["time_total_s"] for t in s["trials"]]
        print(f"  study {i + 1}/{len(order)} cache={'on ' if on else 'off'}: {len(tt)} trials, "
              f"mean trial {statistics.mean(tt):.1f}s, study wall {s['study_wall_s']:.1f}s", flush=True)
        studies.append(s)
    ray.shutdown()

    def agg(on: bool) -> dict[str, float]:
        ss = [s for s in studies if s["cache"] == on]
        tr = [t for s in ss for t in s["trials"]]
        return {"trials": len(tr), "mean_trial_s": statistics.mean(t["time_total_s"] for t in tr),
                "mean_epoch_s": statistics.mean(t["last_epoch_s"] for t in tr),
                "mean_study_wall_s": statistics.mean(s["study_wall_s"] for s in ss)}

    on, off = agg(True), agg(False)
    same = all(a["params"] == b["params"] for s1 in studies for s2 in studies
               for a, b in zip(s1["trials"], s2["trials"]))
    return {"search": search, "order": ["on" if o else "off" for o in order], "cache_ready_s": ready_s,
            "cached": on, "uncached": off, "same_trial_configs": same,
            "ratio_trial": on["mean_trial_s"] / off["mean_trial_s"],
            "ratio_epoch": on["mean_epoch_s"] / off["mean_epoch_s"],
            "ratio_study_wall": on["mean_study_wall_s"] / off["mean_study_wall_s"], "studies": studies}


# ----------------------------------------------------------------------------- (b) step


class Step:
    """One training step of `train_loop_per_worker` (its step 5), cached or live, timed by part."""

    def __init__(self, cfg: Any, train: Any, teachers: dict, cache: Any, device: Any):
        import torch

        from raykd.data.augment import load_noise_bank
        from raykd.data.features import LogMel
        from raykd.distill.cache import n_views, student_frames
        from raykd.distill.losses import DistillLoss, layer_mapping
        from raykd.models.projector import build_projectors
        from raykd.models.student import build_student
        from raykd.models.projector import StudentWithProjectors

        self.cfg, self.train, self.teachers, self.cache, self.device = cfg, train, teachers, cache, device
        shapes = cache.shapes if cache is not None else {n: (t.depth, t.layer_dim) for n, t in teachers.items()}
        self.aligned = cfg.aligned_layers()
        self.logmel = LogMel(cfg.features).to(device)
        self.noise_bank = load_noise_bank(cfg.data.augment, cfg.features.sample_rate, cfg.features.clip_samples)
        self.views, self.frames = n_views(cfg), student_frames(cfg)
        torch.manual_seed(cfg.seed)
        student = build_student(cfg.student, cfg.features.n_mels)
        mapping = {n: layer_mapping(shapes[n][0], ls, cfg.student.blocks) for n, ls in self.aligned.items()}
        dims = {n: {l: shapes[n][1](l) for l in ls} for n, ls in self.aligned.items()}
        projectors = build_projectors(self.aligned, dims, cfg.student.width, cfg.distillation.projector_hidden)
        tap_of = {f"{n}.{l}": tap for n, m in mapping.items() for l, tap in m.items()}
        self.model = StudentWithProjectors(student, projectors, tap_of).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.loss_fn = DistillLoss(cfg.distillation, list(shapes))
        self.g = torch.Generator().manual_seed(0)

    def __call__(self, b: Any, epoch: int, cached: bool) -> dict[str, float]:
        import torch

        from raykd.data.augment import spec_augment
        from raykd.distill.cache import augment_views, stored, teacher_targets, view_index

        cfg, dev = self.cfg, self.device
        t0 = time.perf_counter()
        labels = self.train.labels[b].to(dev)
        shown = view_index(epoch, b, self.views)
        if cached:
            waves, t_out = self.cache.batch(b, shown, self.aligned, dev)
            waves = waves if waves is not None else self.train.waves[b].to(dev)
            t1 = t2 = time.perf_counter()
        else:
            waves = augment_views(self.train.waves[b], b, shown, cfg, self.noise_bank)
            waves = (stored(waves) if cfg.data.augment.enabled else waves).to(dev)
            t1 = time.perf_counter()
            with torch.no_grad():
                t_out = {n: teacher_targets(t(waves, self.aligned.get(n, [])), self.aligned.get(n, []), self.frames)
                         for n, t in self.teachers.items()}
            t2 = time.perf_counter()
        feats = self.logmel(waves)
        if cfg.data.augment.enabled:
            feats = spec_augment(feats, cfg.data.augment, self.g)
        logits, projected = self.model(feats)
        loss = self.loss_fn(logits, labels, projected, t_out, self.model.tap_of)["total"]
        assert torch.isfinite(loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.opt.step()
        t3 = time.perf_counter()
        return {"step": t3 - t0, "augment": t1 - t0 if not cached else 0.0, "teachers": t2 - t1,
                "student": t3 - t2, "lookup": t1 - t0 if cached else 0.0}


def time_steps(steps: list["Step"], modes: list[tuple[bool, ...]], n: int,
               warmup: int = 2) -> list[dict[bool, list[dict[str, float]]]]:
    """n timed steps per (setup, mode) after warmup, all of them interleaved step by step -- setups
    and modes take turns in rotating order -- so drift in machine load hits every row alike."""
    import torch

    g = torch.Generator().manual_seed(1)

    def batch(step: Step) -> Any:
        N = len(step.train)
        return torch.randperm(N, generator=g)[:BATCH] if N >= BATCH else torch.randint(0, N, (BATCH,), generator=g)

    jobs = [(k, m) for k, ms in enumerate(modes) for m in ms]
    for k, m in jobs:
        for _ in range(warmup):
            steps[k](batch(steps[k]), 0, m)
    out: list[dict[bool, list[dict[str, float]]]] = [{m: [] for m in ms} for ms in modes]
    for i in range(n):
        for k, m in jobs[i % len(jobs):] + jobs[:i % len(jobs)]:
            out[k][m].append(steps[k](batch(steps[k]), i, m))
    return out


def teacher_cfg(kind: str, arch: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "arch": arch}


def part_b(base: dict[str, Any], root: Path, inputs: Any, steps: int) -> dict[str, Any]:
    """Cached vs live step for the tiny and the local-default-sized teachers; cached base-sized."""
    import torch
    import yaml

    from raykd.config import config_from_dict
    from raykd.data.augment import load_noise_bank
    from raykd.distill.cache import TeacherCache, build_cache, n_views, student_frames
    from raykd.models.teachers import build_teacher
    from raykd.distill.targets import load_teachers

    dev = torch.device("cpu")
    local = yaml.safe_load(LOCAL.read_text())
    setups = []  # (label, cfg, teacher params, Step, build times per clip-view, modes)
    sets = [("tiny (tests)", base["teachers"], None),
            ("local default size", {n: {"kind": t["kind"], "arch": t["arch"]} for n, t in local["teachers"].items()},
             "random")]
    for label, tdefs, init in sets:
        raw = {**base, "teachers": tdefs, "train": {**base["train"], "batch_size": BATCH},
               "cache_dir": tempfile.mkdtemp(prefix="cache-", dir=root)}
        cfg = config_from_dict(raw)
        if init is None:
            teachers = load_teachers(inputs.teacher_dirs, dev)
        else:
            torch.manual_seed(0)
            teachers = {n: build_teacher(n, cfg.teachers[n]).eval().requires_grad_(False) for n in cfg.teachers}
        params = {n: sum(p.numel() for p in t.parameters()) for n, t in teachers.items()}
        noise = load_noise_bank(cfg.data.augment, cfg.features.sample_rate, cfg.features.clip_samples)
        # Built twice into fresh dirs: the first pays the one-off warm-up (first calls at new shapes).
        builds = []
        for k in range(2):
            t = time.perf_counter()
            built = build_cache(cfg, inputs.train, teachers, f"bench{k}", dev, noise)
            builds.append((time.perf_counter() - t) / (len(inputs.train) * n_views(cfg)))
        setups.append((label, cfg, params, Step(cfg, inputs.train, teachers, TeacherCache.load(built), dev), builds,
                       (True, False)))

    # Base-sized targets (768-d), cached only: the student's side with wav2vec2-base + a base-sized
    # conformer, as search_spaces/wakeword.yaml aligns them ({wav2vec2: [2,4,6], conformer: [4]}).
    raw = {**base, "train": {**base["train"], "batch_size": BATCH},
           "teachers": {"wav2vec2": teacher_cfg("wav2vec2", {"num_hidden_layers": 12}),
                        "conformer": teacher_cfg("conformer", {"num_hidden_layers": 12})},
           "distillation": {"alignment_layers": {"wav2vec2": [2, 4, 6], "conformer": [4]}}}
    cfg = config_from_dict(raw)
    N, V, T, S = len(inputs.train), n_views(cfg), student_frames(cfg), cfg.features.clip_samples
    g = torch.Generator().manual_seed(0)
    waves = (torch.randn(N, V, S, generator=g) * 0.1).half()
    hidden = {n: {l: torch.randn(N, V, T, 768, generator=g).half() for l in ls} for n, ls in cfg.aligned_layers().items()}
    cache = TeacherCache(root, V, waves, {n: torch.randn(N, V, 2, generator=g).half() for n in hidden}, hidden,
                         {n: 12 for n in hidden})
    setups.append(("base size (768-d), cached", cfg, {}, Step(cfg, inputs.train, {}, cache, dev), None, (True,)))

    results = time_steps([x[3] for x in setups], [x[5] for x in setups], steps)
    for _, cfg_, *_ in setups[:2]:
        shutil.rmtree(cfg_.cache_dir, ignore_errors=True)  # this part's own caches (memory-mapped until now)
    rows = [step_row(label, cfg, params, res, builds)
            for (label, cfg, params, _, builds, _), res in zip(setups, results)]
    return {"batch": BATCH, "steps_per_mode": steps, "rows": rows}


def step_row(label: str, cfg: Any, params: dict[str, int], res: dict, builds: list[float] | None) -> dict:
    """Fastest step (and fastest of each part) per mode: on a shared machine contention only ever
    adds time, so the minimum is the step's own cost; medians are kept beside it."""
    def low(xs: list[dict[str, float]], k: str) -> float:
        return min(x[k] for x in xs)

    def med(xs: list[dict[str, float]], k: str) -> float:
        return statistics.median(x[k] for x in xs)

    row: dict[str, Any] = {"teachers": label, "teacher_params": params, "aligned": cfg.aligned_layers(),
                           "cached_step_s": low(res[True], "step"), "cached_step_median_s": med(res[True], "step"),
                           "cached_lookup_s": low(res[True], "lookup"),
                           "steps": {"cached" if m else "live": [{k: round(v, 4) for k, v in x.items()} for x in xs]
                                     for m, xs in res.items()}}
    row["cached_samples_per_s"] = BATCH / row["cached_step_s"]
    if False in res:
        row.update({"live_step_s": low(res[False], "step"), "live_step_median_s": med(res[False], "step"),
                    "live_augment_s": low(res[False], "augment"), "live_teachers_s": low(res[False], "teachers"),
                    "live_student_s": low(res[False], "student")})
        row["live_samples_per_s"] = BATCH / row["live_step_s"]
        row["speedup"] = row["live_step_s"] / row["cached_step_s"]
        row["speedup_median"] = row["live_step_median_s"] / row["cached_step_median_s"]
        row["cache_build_per_clip_view_s"] = builds[-1]  # warm (second) build
        row["cache_build_per_clip_view_cold_s"] = builds[0]
    return row


# ----------------------------------------------------------------------------- (c) base-sized teachers


def part_c(clips: int, batches: int) -> dict[str, Any]:
    """Per-clip forward time of base-sized teachers (random init) through Teacher + teacher_targets."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ConformerConfig, Wav2Vec2ConformerModel, Wav2Vec2Model

    from raykd.config import RaykdConfig
    from raykd.distill.cache import student_frames, teacher_targets
    from raykd.models.teachers import Teacher

    cfg = RaykdConfig()
    frames, S = student_frames(cfg), cfg.features.clip_samples
    out = {}
    for name, kind, make, layers in (("wav2vec2-base", "wav2vec2", lambda: Wav2Vec2Model(Wav2Vec2Config()), [2, 4, 6]),
                                     ("conformer-base-size", "conformer",
                                      lambda: Wav2Vec2ConformerModel(Wav2Vec2ConformerConfig()), [4])):
        torch.manual_seed(0)
        teacher = Teacher(name, kind, make()).eval().requires_grad_(False)
        x = torch.randn(clips, S) * 0.1
        times = []
        with torch.no_grad():
            for _ in range(batches):
                t = time.perf_counter()
                teacher_targets(teacher(x, layers), layers, frames)
                times.append(time.perf_counter() - t)
        out[name] = {"params": sum(p.numel() for p in teacher.parameters()), "layers": layers,
                     "depth": teacher.depth, "hidden": teacher.layer_dim(1), "batch_clips": clips,
                     "batch_s": times, "per_clip_s": min(times) / clips, "load": load()}
        print(f"  base: {name} {out[name]['per_clip_s'] * 1e3:.0f} ms/clip", flush=True)
        del teacher
    return {"clip_seconds": cfg.features.clip_seconds, "teachers": out,
            "note": "per_clip_s = fastest batch / clips (the first batch includes warm-up)"}


def projection(b: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    """cached / uncached trial time = (s + V*(a + f) / (T*E)) / (s + a + f), per clip, where
    s = cached student step, a = waveform augmentation (the cache saves it too), f = the teachers'
    forward, V views, T trials of E epochs: the cache is built once per study, V passes of
    augment + teachers over the clips (what build_cache does; its measured time, noisier, is kept
    beside). Trial start-up and validation (student only, the same in both) are left out: they
    pull the ratio towards 1 on small data, see (a)."""
    import yaml

    rows = {r["teachers"]: r for r in b["rows"]}
    loc = yaml.safe_load(LOCAL.read_text())["search"]
    clu = yaml.safe_load(CLUSTER.read_text())["search"]
    V = 2  # data.augment.views default, as both shipped files leave it
    out: dict[str, Any] = {"formula": "cached/uncached = (s + V*(a+f)/(T*E)) / (s + a + f), per clip (fastest steps)",
                           "views": V}
    r = rows["local default size"]
    a = r["live_augment_s"] / BATCH
    sb = rows["base size (768-d), cached"]["cached_step_s"] / BATCH
    f_base = sum(t["per_clip_s"] for t in c["teachers"].values())
    f_w2v = c["teachers"]["wav2vec2-base"]["per_clip_s"]
    cases = (
        ("local_default", r["cached_step_s"] / BATCH, r["live_teachers_s"] / BATCH, loc, TARGET_LOCAL,
         "local-default-sized teachers (measured in (b)), the local default's study size"),
        ("base_local_study", sb, f_base, loc, TARGET_BASE,
         "wav2vec2-base + base-size conformer, the local default's study size"),
        ("base_cluster_study", sb, f_base, clu, TARGET_BASE,
         "wav2vec2-base + base-size conformer, search_spaces/wakeword.yaml's study size"),
        ("base_2x_wav2vec2_local_study", sb, 2 * f_w2v, loc, TARGET_BASE,
         "2 x wav2vec2-base (teacher forward x teachers), the local default's study size"),
    )
    for key, s, f, study, target, what in cases:
        T, E = study["num_samples"], study["trial_epochs"]
        ratio = (s + V * (a + f) / (T * E)) / (s + a + f)
        out[key] = {"what": what, "s_cached_per_clip": s, "augment_per_clip": a, "teachers_per_clip": f,
                    "trials": T, "trial_epochs": E, "per_step_ratio": s / (s + a + f), "ratio": ratio,
                    "target": target, "meets": ratio <= target,
                    "arithmetic": f"({s * 1e3:.2f} + {V}*({a * 1e3:.2f}+{f * 1e3:.1f})/({T}*{E})) / "
                                  f"({s * 1e3:.2f} + {a * 1e3:.2f} + {f * 1e3:.1f}) ms = {ratio:.4f}"}
    out["local_default"]["measured_step_ratio"] = r["cached_step_s"] / r["live_step_s"]
    out["local_default"]["measured_build_per_clip_view_s"] = r["cache_build_per_clip_view_s"]
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    ap.add_argument("--parts", default="abc", help="which of (a) study, (b) step, (c) base to run")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--trial-epochs", type=int, default=3)
    ap.add_argument("--study-repeats", type=int, default=2, help="(on, off) pairs, order alternating")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per mode in (b)")
    ap.add_argument("--base-clips", type=int, default=8)
    ap.add_argument("--base-batches", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/raykd-bench"),
                    help="data, teachers, caches and studies (shared with the other benchmarks: keyed, reused)")
    ap.add_argument("--out", type=Path, default=None, help=f"default {OUT} (--smoke: cache-smoke.json)")
    args = ap.parse_args()
    if args.smoke:
        args.trials, args.trial_epochs, args.study_repeats, args.steps = 2, 2, 1, 2
        args.base_clips, args.base_batches = 2, 1
    args.out = args.out or (OUT.with_name("cache-smoke.json") if args.smoke else OUT)

    import torch

    from raykd.config import config_from_dict
    from raykd.pipeline import prepare
    from raykd.presets import tiny_config

    report: dict[str, Any] = {"smoke": args.smoke, "loadavg_start": load(), "cpus": os.cpu_count(),
                              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                              "torch_threads": torch.get_num_threads(),
                              "project": "tiny test project (tests/conftest.tiny_config), tracking off"}
    root = args.workdir.resolve()
    base = tiny_config(root, **{"tracking.enabled": False})
    inputs = prepare(config_from_dict(base))
    report["train_clips"], report["val_clips"] = len(inputs.train), len(inputs.val)
    def save() -> None:  # after every part: a run cut short keeps what it measured
        report["loadavg_end"] = load()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")

    # (b) and (c) first: Ray's start and teardown in (a) must not land in the step timings.
    if "b" in args.parts:
        report["b_step"] = part_b(base, root, inputs, args.steps)
        save()
    if "c" in args.parts:
        report["c_base"] = part_c(args.base_clips, args.base_batches)
        if "b_step" in report:
            report["projection"] = projection(report["b_step"], report["c_base"])
        save()
    if "a" in args.parts:
        report["a_study"] = part_a(base, root, args.study_repeats, args.trials, args.trial_epochs)
        save()
    print_tables(report)
    print(f"written: {args.out}")


def print_tables(r: dict[str, Any]) -> None:
    print(f"\ntiny project: {r['train_clips']} train / {r['val_clips']} val clips; {r['cpus']} cpus, "
          f"load {r['loadavg_start'][0]} -> {r.get('loadavg_end', ['?'])[0]}")
    if "a_study" in r:
        a = r["a_study"]
        print(f"\n(a) smoke study, {a['search']['num_samples']} trials x {a['search']['trial_epochs']} epochs, "
              f"one at a time, ASHA off; order {', '.join(a['order'])}; same trial configs: {a['same_trial_configs']}")
        print(f"{'seconds (mean)':<28}{'cache on':>10}{'cache off':>11}{'on/off':>9}")
        for k, name, rk in (("mean_trial_s", "trial (Tune time_total_s)", "ratio_trial"),
                            ("mean_epoch_s", "epoch (epoch_seconds)", "ratio_epoch"),
                            ("mean_study_wall_s", "study wall", "ratio_study_wall")):
            print(f"{name:<28}{a['cached'][k]:>10.2f}{a['uncached'][k]:>11.2f}{a[rk]:>9.3f}")
    if "b_step" in r:
        b = r["b_step"]
        print(f"\n(b) one training step, batch {b['batch']}, fastest of {b['steps_per_mode']} steps per mode (parts: "
              f"fastest of each), modes interleaved step by step (ms); last column: speedup of the medians")
        print(f"{'teachers':<28}{'cached':>9}{'live':>9}{'augment':>9}{'teachers':>10}{'student':>9}"
              f"{'cached/s':>10}{'live/s':>9}{'speedup':>9}{'(median)':>10}")
        for x in b["rows"]:
            live = lambda k: f"{x[k] * 1e3:>9.1f}" if k in x else f"{'-':>9}"
            print(f"{x['teachers']:<28}{x['cached_step_s'] * 1e3:>9.1f}{live('live_step_s')}{live('live_augment_s')}"
                  f"{live('live_teachers_s'):>10}{live('live_student_s')}{x['cached_samples_per_s']:>10.0f}"
                  + (f"{x['live_samples_per_s']:>9.0f}{x['speedup']:>9.1f}{x['speedup_median']:>10.1f}"
                     if "speedup" in x else ""))
        for x in b["rows"]:
            if "cache_build_per_clip_view_s" in x:
                print(f"cache build, {x['teachers']}: {x['cache_build_per_clip_view_cold_s'] * 1e3:.1f} ms per "
                      f"clip-view cold (first build), {x['cache_build_per_clip_view_s'] * 1e3:.1f} warm (second)")
    if "c_base" in r:
        print(f"\n(c) base-sized teacher forward, {r['c_base']['clip_seconds']} s clips (random init)")
        print(f"{'teacher':<22}{'params':>12}{'depth x dim':>13}{'ms / clip':>11}")
        for name, t in r["c_base"]["teachers"].items():
            print(f"{name:<22}{t['params']:>12,}{t['depth']:>7} x {t['hidden']:<4}{t['per_clip_s'] * 1e3:>10.1f}")
    if "projection" in r:
        p = r["projection"]
        print(f"\nprojection: {p['formula']}")
        for k, v in p.items():
            if isinstance(v, dict):
                print(f"  {k}: {v['arithmetic']}  (target <= 1/{round(1 / v['target'])}: "
                      f"{'met' if v['meets'] else 'NOT met'})")


if __name__ == "__main__":
    main()
