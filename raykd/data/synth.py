"""Offline synthetic wakeword dataset: espeak-ng voices (raykd.data.voices).

A speaker is "<voice>+<variant>" (accent x timbre) from the pool of every usable voice and
variant; `data.synth.speakers` of them are drawn, seeded. Whole voice families go to val
(`val_families`) and test (`test_families`), the rest to train, so no family and no speaker
is in two splits. Every rendition draws rate, pitch, pitch range, word gap and intonation
(clause ending) from the configured lists. Output under data.root:

  clips/<speaker>/<kind>_<k>.wav   16-bit mono at features.sample_rate, clip_samples long
  streams/<split>/<speaker>.wav    val/test only: minutes of negative speech (raykd.data.streams)
  synth.json                       what the clips were made from (see `is_current`)
  manifest.csv                     path,label,speaker,split,kind,text,voice_family (written last)

Same config and seed -> byte-identical manifest, and byte-identical WAVs on the same
machine and library build, whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch

from raykd.config import RaykdConfig, fingerprint
from raykd.data import nearmiss
from raykd.data.augment import COLOURS, coloured_noise
from raykd.data.audio import resample
from raykd.data.streams import StreamSpec, Utterance, render_stream
from raykd.data.voices import Speaker, SynthError, engine, speak, speaker_pool
from raykd.fsutil import atomic_file

__all__ = ["SynthError", "engine", "synthesize", "plan", "speech_seconds"]

MANIFEST_NAME = "manifest.csv"
SYNTH_VERSION = 2  # bump when rendering changes, so datasets made by older code are re-made
STAMP_NAME = "synth.json"
CLIPS_DIR, STREAMS_DIR = "clips", "streams"
COLUMNS = ("path", "label", "speaker", "split", "kind", "text", "voice_family")
NONSPEECH = ("silence", "white noise", "pink noise", "brown noise")
TRIM_RATIO = 0.02  # espeak pads with near-silence; samples under 2% of the peak are trimmed
TRIM_MARGIN_S = 0.01
PEAK_RANGE = (0.3, 0.9)  # speech loudness varies per clip; never clips int16
NOISE_DBFS = {"silence": (-70.0, -55.0), "noise": (-40.0, -15.0)}  # RMS level of non-speech
FIT_RATE_STEP, FIT_TRIES = 30, 3  # a positive too long for the clip is re-said faster


@dataclass(frozen=True)
class Job:
    """One file to render; `name` is its path relative to data.root, `spoken` what espeak reads."""

    name: str
    label: int
    speaker: str
    split: str
    kind: str
    text: str
    voice_family: str
    spoken: str = ""
    rate: int = 0
    pitch: int = 0
    pitch_range: int = 50
    word_gap: int = 0
    seed: int = 0
    stream: StreamSpec | None = None


# ----------------------------------------------------------------------------- speech


def trim(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 speech -> float32 in [-1, 1] without leading/trailing silence (10 ms margin kept)."""
    x = samples.astype(np.float32) / 32768
    loud = np.flatnonzero(np.abs(x) > TRIM_RATIO * np.abs(x).max()) if x.size else x
    if loud.size == 0:
        return x[:0]
    margin = int(TRIM_MARGIN_S * sample_rate)
    return x[max(loud[0] - margin, 0): loud[-1] + margin + 1]


def speech_seconds(text: str, speaker: str, rate: int, pitch: int, seed: int = 0) -> float:
    """Duration of the trimmed speech espeak makes for `text` (the part placed in a clip)."""
    e = engine()
    return len(trim(e.say(text, speaker, rate, pitch, seed), e.sample_rate)) / e.sample_rate


def utter(spoken: str, speaker: str, rate: int, pitch: int, pitch_range: int, word_gap: int, seed: int,
          sample_rate: int) -> np.ndarray:
    """Trimmed float32 speech at sample_rate."""
    e = engine()
    speech = trim(e.say(spoken, speaker, rate, pitch, seed, pitch_range, word_gap), e.sample_rate)
    return resample(torch.from_numpy(speech), e.sample_rate, sample_rate).numpy() if speech.size else speech


# ----------------------------------------------------------------------------- plan


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) speakers out of n; from 3 speakers on, val and test get at least one."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    return n_val, n_test


def synth_manifest_path(cfg) -> Path:
    return Path(cfg.data.root) / MANIFEST_NAME


def _interleave(groups: list[list[Speaker]]) -> list[Speaker]:
    out, k = [], 0
    while any(k < len(g) for g in groups):
        out += [g[k] for g in groups if k < len(g)]
        k += 1
    return out


def _spread(pool: list[Speaker], rng: np.random.Generator) -> list[Speaker]:
    """The pool in draw order: families take turns, and within a family its voices take turns,
    so a few speakers already cover many families and accents."""
    families = []
    for fam in sorted({s.family for s in pool}):
        by_voice = {}
        for s in pool:
            if s.family == fam:
                by_voice.setdefault(s.voice, []).append(s)
        voices = [by_voice[v] for v in sorted(by_voice)]
        voices = [[g[i] for i in rng.permutation(len(g))] for g in (voices[i] for i in rng.permutation(len(voices)))]
        families.append(_interleave(voices))
    return _interleave([families[i] for i in rng.permutation(len(families))])


def draw_speakers(cfg: RaykdConfig) -> dict[str, list[Speaker]]:
    """{split: speakers}: val/test from their families, train from the rest; `english_share`
    of each split from English voices where it has both kinds. A speaker whose voice's own
    family is held out in another split than its family (de+klatt with klatt in val and
    germanic in test) is not used: a held-out accent is heard in one split only."""
    s = cfg.data.synth
    pool = speaker_pool(s.phrase, s.voices, s.variants)
    present = sorted({p.family for p in pool})
    for key, fams in (("val_families", s.val_families), ("test_families", s.test_families)):
        if not set(fams) & set(present):
            raise SynthError(f"data.synth.{key}: none of {list(fams)} among the pool's families {present}; "
                             f"name families that are present or widen data.synth.voices / variants")
    n_val, n_test = split_counts(s.speakers, s.val_fraction, s.test_fraction)
    wanted = {"train": s.speakers - n_val - n_test, "val": n_val, "test": n_test}
    held = {f: "val" for f in s.val_families} | {f: "test" for f in s.test_families}
    out = {}
    for i, split in enumerate(("train", "val", "test")):
        rng = np.random.default_rng([cfg.seed, 10, i])
        # a held-out accent stays out of every other split, even as a klatt speaker
        part = [p for p in pool if held.get(p.family, "train") == split
                and held.get(p.accent, "train") in (split, "train")]
        if len(part) < wanted[split] or wanted[split] < 1:
            raise SynthError(f"data.synth.speakers: {split} needs {wanted[split]} speakers but its families "
                             f"have {len(part)} (of {len(pool)}); lower data.synth.speakers or change "
                             f"data.synth.voices / variants / val_families / test_families")
        english, other = _spread([p for p in part if p.english], rng), _spread([p for p in part if not p.english], rng)
        n_en = min(len(english), round(wanted[split] * s.english_share)) if other else wanted[split]
        n_en = max(n_en, wanted[split] - len(other))
        out[split] = sorted(english[:n_en] + other[:wanted[split] - n_en], key=lambda p: p.id)
    return out


def _folder(speaker: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", speaker.replace("+", "_"))


def _texts(cfg: RaykdConfig) -> dict[str, list[nearmiss.NearMiss]]:
    """The texts of each kind; raises SynthError when a configured negative says the phrase."""
    s = cfg.data.synth
    nearmiss.check_texts(s.near_misses, s.phrase, "data.synth.near_misses")
    nearmiss.check_texts(s.other_speech, s.phrase, "data.synth.other_speech")
    return {"positive": [nearmiss.NearMiss(s.phrase, "phrase")],
            "near_miss": [nearmiss.NearMiss(t, "list") for t in s.near_misses],
            "near_miss_generated": nearmiss.generate(s.phrase, s.generated_near_misses, cfg.seed),
            "other": [nearmiss.NearMiss(t, "list") for t in s.other_speech],
            "nonspeech": [nearmiss.NearMiss(t, "nonspeech") for t in NONSPEECH]}


def _speaker_jobs(cfg: RaykdConfig, spk: Speaker, split: str, texts, index: int) -> list[Job]:
    s = cfg.data.synth
    rng = np.random.default_rng([cfg.seed, 1, index])
    # near misses: the config's list and the generated ones take turns (each half, when both exist)
    fixed, made = texts["near_miss"], texts["near_miss_generated"]
    n_fixed = s.near_misses_per_speaker if not made else 0 if not fixed else (s.near_misses_per_speaker + 1) // 2
    kinds = (("positive", 1, s.positives_per_speaker, texts["positive"]), ("near_miss", 0, n_fixed, fixed),
             ("near_miss_generated", 0, s.near_misses_per_speaker - n_fixed, made),
             ("other", 0, s.other_per_speaker, texts["other"]),
             ("nonspeech", 0, s.nonspeech_per_speaker, texts["nonspeech"]))
    jobs = []
    for kind, label, count, pool in kinds:
        if count and not pool:
            raise SynthError(f"data.synth: {count} {kind} clips per speaker but no texts for them")
        picks = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-count // len(pool)))]) if count else []
        for k in range(count):
            t = pool[picks[k]]
            spoken = "" if kind == "nonspeech" else speak(spk, t.text, t.phonemes)
            jobs.append(Job(
                name=f"{CLIPS_DIR}/{_folder(spk.id)}/{kind}_{k:03d}.wav", label=label, speaker=spk.id, split=split,
                kind=kind, text=t.text, voice_family=spk.family,
                spoken=spoken + str(rng.choice(list(s.intonations))) if spoken else "",
                rate=int(rng.choice(s.rates)), pitch=int(rng.choice(s.pitches)),
                pitch_range=int(rng.choice(s.pitch_ranges)), word_gap=int(rng.choice(s.word_gaps)),
                seed=int(rng.integers(2**31))))
    return jobs


def _stream_job(cfg: RaykdConfig, spk: Speaker, split: str, texts, samples: int, index: int) -> Job:
    s = cfg.data.synth
    cands = texts["near_miss"] + texts["near_miss_generated"] + texts["other"]
    utts = tuple(Utterance(speak(spk, t.text, t.phonemes),
                           nearmiss.classes(t.phonemes if t.phonemes is not None else nearmiss.phonemes_of(t.text)))
                 for t in cands)
    spec = StreamSpec(utts, nearmiss.classes(nearmiss.phonemes_of(s.phrase)), samples, s.rates, s.pitches,
                      s.pitch_ranges, s.word_gaps, s.intonations)
    seed = int(np.random.default_rng([cfg.seed, 2, index]).integers(2**31))
    return Job(name=f"{STREAMS_DIR}/{split}/{_folder(spk.id)}.wav", label=0, speaker=spk.id, split=split,
               kind="stream", text="", voice_family=spk.family, seed=seed, stream=spec)


def plan(cfg: RaykdConfig) -> list[list[Job]]:
    """Every file to make, grouped by speaker (clips, then its stream); a pure function of cfg."""
    texts = _texts(cfg)
    groups = []
    for split, speakers in draw_speakers(cfg).items():
        total = int(round(cfg.data.synth.stream_minutes * 60 * cfg.features.sample_rate)) if split != "train" else 0
        for i, spk in enumerate(speakers):
            index = len(groups)
            jobs = _speaker_jobs(cfg, spk, split, texts, index)
            share = total // len(speakers) + (total % len(speakers) if i == len(speakers) - 1 else 0)
            if share > 0:
                jobs.append(_stream_job(cfg, spk, split, texts, share, index))
            groups.append(jobs)
    return groups


# ----------------------------------------------------------------------------- render


def _place(speech: np.ndarray, clip_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Speech (n,) into a (clip_samples,) clip at a random offset; a longer negative is cut."""
    n = speech.shape[0]
    if n > clip_samples:
        start = int(rng.integers(0, n - clip_samples + 1))  # any window of a negative is a negative
        speech, n = speech[start:start + clip_samples], clip_samples
    clip = np.zeros(clip_samples, np.float32)
    offset = int(rng.integers(0, clip_samples - n + 1))
    clip[offset:offset + n] = speech
    return clip * (rng.uniform(*PEAK_RANGE) / max(float(np.abs(speech).max()), 1e-9))


def _nonspeech(job: Job, clip_samples: int, rng: np.random.Generator) -> np.ndarray:
    colour = "white" if job.text == "silence" else job.text.split()[0]
    gen = torch.Generator().manual_seed(job.seed)
    noise = coloured_noise(torch.tensor([COLOURS[colour]]), clip_samples, gen)[0].numpy()
    lo, hi = NOISE_DBFS["silence" if job.text == "silence" else "noise"]
    return noise * 10 ** (rng.uniform(lo, hi) / 20)


def _speech(job: Job, sample_rate: int, clip_samples: int) -> np.ndarray:
    """The job's speech; a positive longer than the clip is said faster (FIT_TRIES times)."""
    rate = job.rate
    for _ in range(FIT_TRIES + 1):
        speech = utter(job.spoken, job.speaker, rate, job.pitch, job.pitch_range, job.word_gap, job.seed, sample_rate)
        if speech.size == 0:
            raise SynthError(f"espeak-ng produced no audio for {job.text!r} by {job.speaker}")
        if job.label == 0 or speech.shape[0] <= clip_samples:
            return speech
        rate += FIT_RATE_STEP
    raise SynthError(f"data.synth: {job.text!r} by {job.speaker} lasts {speech.shape[0] / sample_rate:.2f} s even "
                     f"at rate {rate - FIT_RATE_STEP} > features.clip_seconds {clip_samples / sample_rate:g}; "
                     f"raise features.clip_seconds or data.synth.rates")


def render(job: Job, sample_rate: int, clip_samples: int) -> np.ndarray:
    """One file: (clip_samples,) int16, or (stream samples,) for a stream."""
    rng = np.random.default_rng(job.seed)
    if job.kind == "stream":
        audio = render_stream(job.stream, job.speaker, job.seed, sample_rate,
                              lambda *a: utter(*a, sample_rate=sample_rate))
    elif job.kind == "nonspeech":
        audio = _nonspeech(job, clip_samples, rng)
    else:
        audio = _place(_speech(job, sample_rate, clip_samples), clip_samples, rng)
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def _render_group(jobs: list[Job], root: str, sample_rate: int, clip_samples: int) -> int:
    """Worker task: render and write one speaker's files; returns how many."""
    if jobs:
        engine().check_speaker(jobs[0].speaker)
    for job in jobs:
        path = Path(root) / job.name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, render(job, sample_rate, clip_samples), sample_rate, subtype="PCM_16")
    return len(jobs)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core already; also keeps output bit-exact
    engine()


# ----------------------------------------------------------------------------- public


def synth_fingerprint(cfg: RaykdConfig) -> str:
    """Everything the clips depend on; workers do not change the output, so they are left out."""
    return fingerprint({
        "version": SYNTH_VERSION, "espeakng_loader": version("espeakng-loader"), "seed": cfg.seed,
        "synth": cfg.data.synth.model_dump(mode="json", exclude={"workers"}),
        "sample_rate": cfg.features.sample_rate, "clip_samples": cfg.features.clip_samples})


def is_current(cfg: RaykdConfig) -> bool:
    """True when data.root holds a complete dataset made from this synth config."""
    root = Path(cfg.data.root)
    try:
        stamp = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return synth_manifest_path(cfg).is_file() and stamp.get("fingerprint") == synth_fingerprint(cfg)


def _run(groups: list[list[Job]], args: tuple, workers: int, progress) -> None:
    total, done = sum(len(g) for g in groups), 0
    if progress:
        progress(0, total)
    if workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in the pool: thread count changes FFT/conv rounding
        try:
            for g in groups:
                done += _render_group(g, *args)
                if progress:
                    progress(done, total)
        finally:
            torch.set_num_threads(threads)
        return
    # spawn: espeak and torch state must not be inherited half-initialised through fork
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(groups)), mp_context=ctx, initializer=_init_worker) as ex:
        # the longest groups (those with a stream) first, so no worker is left with one at the end
        order = sorted(range(len(groups)), key=lambda i: -sum(j.stream is not None for j in groups[i]))
        futures = [ex.submit(_render_group, groups[i], *args) for i in order]
        try:
            for fut in as_completed(futures):
                done += fut.result()
                if progress:
                    progress(done, total)
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise


def synthesize(cfg: RaykdConfig, progress: Callable[[int, int], None] | None = None) -> Path:
    """Render the synthetic dataset under cfg.data.root; returns the manifest path.

    progress(done, total) is called as speakers finish. The manifest is removed first and
    written last (atomically), so an interrupted run never leaves one naming missing clips.
    With data.synth.workers > 1 clips are rendered in spawned processes, so a script that
    calls this needs the usual `if __name__ == "__main__":` guard.
    """
    root = Path(cfg.data.root)
    manifest = synth_manifest_path(cfg)
    manifest.unlink(missing_ok=True)
    (root / STAMP_NAME).unlink(missing_ok=True)
    groups = plan(cfg)
    for sub in (CLIPS_DIR, STREAMS_DIR):
        shutil.rmtree(root / sub, ignore_errors=True)  # ours: stale files of another config
    root.mkdir(parents=True, exist_ok=True)
    _run(groups, (str(root), cfg.features.sample_rate, cfg.features.clip_samples), cfg.data.synth.workers, progress)
    total = sum(len(g) for g in groups)
    (root / STAMP_NAME).write_text(json.dumps({"fingerprint": synth_fingerprint(cfg), "clips": total}))
    _write_manifest(manifest, [j for g in groups for j in g])
    return manifest


def _write_manifest(path: Path, jobs: list[Job]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for j in jobs:
            w.writerow([getattr(j, c) if c != "path" else j.name for c in COLUMNS])
