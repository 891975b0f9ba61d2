"""Offline synthetic wakeword dataset: espeak-ng (PyPI espeakng-loader) through ctypes.

A speaker is "<voice>+<variant>" (accent x timbre). Every rendition draws its rate and
pitch from the configured lists with a seeded RNG. Speakers, not clips, are split into
train/val/test. Output under data.root:

  clips/<speaker>/<kind>_<k>.wav   16-bit mono at features.sample_rate, clip_samples long
  synth.json                       what the clips were made from (see `is_current`)
  manifest.csv                     path,label,speaker,split,kind,text (written last)

Same config and seed -> byte-identical manifest, and byte-identical WAVs on the same
machine and library build, whatever the number of workers.
"""

from __future__ import annotations

import _ctypes
import csv
import ctypes
import json
import multiprocessing
import shutil
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch

from raykd.config import RaykdConfig, fingerprint
from raykd.data.augment import COLOURS, coloured_noise
from raykd.data.audio import DatasetError, resample
from raykd.fsutil import atomic_file

MANIFEST_NAME = "manifest.csv"
SYNTH_VERSION = 1  # bump when rendering changes, so datasets made by older code are re-made
STAMP_NAME = "synth.json"
CLIPS_DIR = "clips"
COLUMNS = ("path", "label", "speaker", "split", "kind", "text")
NONSPEECH = ("silence", "white noise", "pink noise", "brown noise")
TRIM_RATIO = 0.02  # espeak pads with near-silence; samples under 2% of the peak are trimmed
TRIM_MARGIN_S = 0.01
PEAK_RANGE = (0.3, 0.9)  # speech loudness varies per clip; never clips int16
NOISE_DBFS = {"silence": (-70.0, -55.0), "noise": (-40.0, -15.0)}  # RMS level of non-speech


class SynthError(DatasetError):
    """The synth config cannot produce a usable dataset (unknown voice, clip too short...)."""


@dataclass(frozen=True)
class Job:
    """One clip to render; `name` is its path relative to data.root."""

    name: str
    label: int
    speaker: str
    split: str
    kind: str
    text: str
    rate: int
    pitch: int
    seed: int


# ----------------------------------------------------------------------------- espeak


class Espeak:
    """libespeak-ng in synchronous mode, one per process (the library is not thread safe).

    espeak keeps waveform state (glottal phase, pitch flutter) from one utterance to the
    next and draws noise from a clock-seeded generator (and libc rand()), so the same call
    twice gives different samples.
    Every utterance therefore starts from a freshly loaded library (dlclose + dlopen resets
    its statics; ~0.5 ms, plus ~4 ms to reload the voice) with both generators seeded: a clip
    depends on its own text, voice, rate, pitch and seed only, never on what the process
    rendered before it.
    """

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() on a bad data path
    RATE, PITCH = 1, 3  # espeak_PARAMETER
    POS_CHARACTER, CHARS_UTF8 = 1, 1
    CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        import espeakng_loader

        self.lib_path = espeakng_loader.get_library_path()
        self.data_path = Path(espeakng_loader.get_data_path())
        self._chunks: list[np.ndarray] = []
        self._callback = self.CALLBACK(self._collect)  # held: ctypes must not free it
        self._lock = threading.Lock()
        self.lib = self._load()
        self._used = False
        self._libc = ctypes.CDLL(None)  # the process's libc, whose rand() espeak calls

    def _load(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(self.lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        # buflength 1000 ms: few callbacks per phrase
        self.sample_rate = lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 1000,
                                                 str(self.data_path).encode(), self.INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise SynthError(f"espeak-ng failed to initialise with data at {self.data_path}")
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    def _fresh(self) -> None:
        if self._used:
            self.lib.espeak_Terminate()
            _ctypes.dlclose(self.lib._handle)
            self.lib = self._load()
        self._used = True

    def _collect(self, wav, n, _events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue

    def check_speaker(self, speaker: str) -> None:
        """Raise SynthError for an unknown voice or variant (espeak ignores a bad variant)."""
        voice, _, variant = speaker.partition("+")
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            raise SynthError(f"data.synth.variants: espeak-ng has no variant {variant!r}")
        with self._lock:
            self._used = True  # any call may leave state behind: the next say() reloads
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SynthError(f"data.synth.voices: espeak-ng has no voice {voice!r}")

    def say(self, text: str, speaker: str, rate: int, pitch: int, seed: int = 0) -> np.ndarray:
        """(n,) int16 samples at self.sample_rate (22050 Hz); same arguments, same samples."""
        with self._lock:
            self._fresh()
            self._libc.srand(ctypes.c_uint(seed))
            self.lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))  # espeak seeds it from the clock
            if self.lib.espeak_SetVoiceByName(speaker.encode()) != 0:
                raise SynthError(f"data.synth.voices: espeak-ng has no voice {speaker!r}")
            self.lib.espeak_SetParameter(self.RATE, rate, 0)
            self.lib.espeak_SetParameter(self.PITCH, pitch, 0)
            self._chunks = []
            blob = text.encode() + b"\0"
            err = self.lib.espeak_Synth(blob, len(blob), 0, self.POS_CHARACTER, 0, self.CHARS_UTF8, None, None)
            if err != 0:
                raise SynthError(f"espeak-ng failed on {text!r} with {speaker} (error {err})")
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """This process's espeak, initialised on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE


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


# ----------------------------------------------------------------------------- plan


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(n_val, n_test) speakers out of n; from 3 speakers on, val and test get at least one."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    return n_val, n_test


def synth_manifest_path(cfg) -> Path:
    return Path(cfg.data.root) / MANIFEST_NAME


def speakers(cfg: RaykdConfig) -> list[str]:
    s = cfg.data.synth
    return [f"{v}+{var}" for v in s.voices for var in s.variants]


def plan(cfg: RaykdConfig) -> list[list[Job]]:
    """Every clip to make, grouped by speaker; a pure function of cfg (and its seed)."""
    s = cfg.data.synth
    spk = speakers(cfg)
    n_val, n_test = split_counts(len(spk), s.val_fraction, s.test_fraction)
    if len(spk) < 3 or n_val + n_test >= len(spk):
        raise SynthError(f"data.synth: {len(spk)} speakers (voices x variants) cannot be split into "
                         f"train/val/test; give at least 3 and keep train non-empty")
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(spk))
    split = {spk[i]: "test" if r < n_test else "val" if r < n_test + n_val else "train"
             for r, i in enumerate(order)}
    kinds = (("positive", 1, s.positives_per_speaker, (s.phrase,)),
             ("near_miss", 0, s.near_misses_per_speaker, s.near_misses),
             ("other", 0, s.other_per_speaker, s.other_speech),
             ("nonspeech", 0, s.nonspeech_per_speaker, NONSPEECH))
    groups = []
    for i, speaker in enumerate(spk):
        rng = np.random.default_rng([cfg.seed, 1, i])
        jobs = []
        for kind, label, count, texts in kinds:
            if count == 0:
                continue
            if not texts:
                raise SynthError(f"data.synth: {count} {kind} clips per speaker but no texts for them")
            picks = np.concatenate([rng.permutation(len(texts)) for _ in range(-(-count // len(texts)))])
            for k in range(count):
                jobs.append(Job(
                    name=f"{CLIPS_DIR}/{speaker.replace('+', '_')}/{kind}_{k:03d}.wav",
                    label=label, speaker=speaker, split=split[speaker], kind=kind,
                    text=texts[picks[k]], rate=int(rng.choice(s.rates)),
                    pitch=int(rng.choice(s.pitches)), seed=int(rng.integers(2**31))))
        groups.append(jobs)
    return groups


# ----------------------------------------------------------------------------- render


def _place(speech: np.ndarray, clip_samples: int, sample_rate: int, rng: np.random.Generator,
           job: Job) -> np.ndarray:
    """Speech (n,) into a (clip_samples,) clip at a random offset; only negatives may be cut."""
    n = speech.shape[0]
    if n > clip_samples:
        if job.label == 1:
            raise SynthError(f"data.synth: {job.text!r} by {job.speaker} at rate {job.rate} lasts "
                             f"{n / sample_rate:.2f} s > features.clip_seconds {clip_samples / sample_rate:g}; "
                             f"raise features.clip_seconds or data.synth.rates")
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


def render(job: Job, sample_rate: int, clip_samples: int) -> np.ndarray:
    """One clip: (clip_samples,) int16."""
    rng = np.random.default_rng(job.seed)
    if job.kind == "nonspeech":
        clip = _nonspeech(job, clip_samples, rng)
    else:
        e = engine()
        speech = trim(e.say(job.text, job.speaker, job.rate, job.pitch, job.seed), e.sample_rate)
        if speech.size == 0:
            raise SynthError(f"espeak-ng produced no audio for {job.text!r} by {job.speaker}")
        speech = resample(torch.from_numpy(speech), e.sample_rate, sample_rate).numpy()
        clip = _place(speech, clip_samples, sample_rate, rng, job)
    return np.clip(np.round(clip * 32767), -32768, 32767).astype(np.int16)


def _render_group(jobs: list[Job], root: str, sample_rate: int, clip_samples: int) -> int:
    """Worker task: render and write one speaker's clips; returns how many."""
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


def synthesize(cfg: RaykdConfig, progress: Callable[[int, int], None] | None = None) -> Path:
    """Render the synthetic dataset under cfg.data.root; returns the manifest path.

    progress(done, total) is called as speakers finish. The manifest is removed first and
    written last (atomically), so an interrupted run never leaves one naming missing clips.
    With data.synth.workers > 1 clips are rendered in spawned processes, so a script that
    calls this needs the usual `if __name__ == "__main__":` guard.
    """
    root, fs, workers = Path(cfg.data.root), cfg.features, cfg.data.synth.workers
    groups = plan(cfg)
    total = sum(len(g) for g in groups)
    manifest = synth_manifest_path(cfg)
    manifest.unlink(missing_ok=True)
    (root / STAMP_NAME).unlink(missing_ok=True)
    shutil.rmtree(root / CLIPS_DIR, ignore_errors=True)  # ours: stale clips of another config
    root.mkdir(parents=True, exist_ok=True)
    args = (str(root), fs.sample_rate, fs.clip_samples)
    done = 0
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
    else:
        # spawn: espeak and torch state must not be inherited half-initialised through fork
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(groups)), mp_context=ctx, initializer=_init_worker) as ex:
            futures = [ex.submit(_render_group, g, *args) for g in groups]
            try:
                for fut in as_completed(futures):
                    done += fut.result()
                    if progress:
                        progress(done, total)
            except BaseException:
                ex.shutdown(wait=False, cancel_futures=True)
                raise
    (root / STAMP_NAME).write_text(json.dumps({"fingerprint": synth_fingerprint(cfg), "clips": total}))
    _write_manifest(manifest, [j for g in groups for j in g])
    return manifest


def _write_manifest(path: Path, jobs: list[Job]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for j in jobs:
            row = asdict(j)
            w.writerow([j.name] + [row[c] for c in COLUMNS[1:]])
