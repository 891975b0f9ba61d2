"""Wakeword clips: manifests (synthetic, a user folder, a user CSV) and in-memory splits.

Sources (data.source):
  synth     root/manifest.csv written by `raykd.data.synth` (made by `ensure_dataset`)
  folder    root/positive/**.wav and root/negative/**.wav; speaker = the sub-folder name
            when nested (positive/alice/1.wav -> alice), else the file stem
  manifest  a CSV with header path,label[,speaker[,split]]; paths relative to the CSV's
            folder; label 1/0 or positive/negative; speaker defaults to the file stem

Without a split column, speakers are split deterministically by the hash of their id
(see `split_speakers`); a speaker is never in two splits.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from raykd.config import fingerprint
from raykd.data.audio import AUDIO_EXTS, AudioError, DatasetError, check_audio, read_audio
from raykd.data.synth import is_current, split_counts, synth_manifest_path, synthesize

SPLITS = ("train", "val", "test")
LABELS = {"1": 1, "0": 0, "positive": 1, "negative": 0}


@dataclass
class WaveformSet:
    """One split held in memory.

    waves:    (N, S) float32, mono, at features.sample_rate, cropped/padded to clip_samples
    labels:   (N,) int64, 1 = wakeword, 0 = not
    speakers: N speaker ids
    paths:    N source file paths (str)
    skipped:  files skipped as unreadable/empty when data.on_bad_file = skip ("path: reason")
    sample_rate: of `waves`
    streams:  long negative recordings of the split, each (S_i,) float32 of any length (never
              cropped): validation/test streams for false accepts per hour
    """

    waves: torch.Tensor
    labels: torch.Tensor
    speakers: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)
    sample_rate: int = 16000
    streams: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def seconds(self) -> float:
        """Duration of the clips (streams not included)."""
        return len(self) * int(self.waves.shape[-1]) / self.sample_rate

    @property
    def negative_seconds(self) -> float:
        """All audio without a wakeword: negative clips plus streams, for false accepts per hour."""
        clips = int((self.labels == 0).sum()) * int(self.waves.shape[-1])
        return (clips + sum(int(s.shape[-1]) for s in self.streams)) / self.sample_rate


@dataclass(frozen=True)
class Clip:
    """One row of a dataset: `name` is the path as the manifest wrote it (relative)."""

    path: Path
    name: str
    label: int
    speaker: str
    split: str


# ----------------------------------------------------------------------------- sources


def split_speakers(speakers: dict[str, bool], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """{speaker: has_positive} -> {speaker: split}, deterministic from the ids alone.

    Speakers are ordered by a hash of their id; the first test_fraction go to test, the next
    val_fraction to val. Speakers with and without positives are split separately so every
    split gets wakewords; a group of 3+ speakers gives val and test at least one each.
    """
    out: dict[str, str] = {}
    for has_pos in (True, False):
        group = sorted((s for s, p in speakers.items() if p == has_pos),
                       key=lambda s: hashlib.sha256(s.encode()).hexdigest())
        n_val, n_test = split_counts(len(group), val_fraction, test_fraction)
        for i, s in enumerate(group):
            out[s] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def _with_splits(clips: list[Clip], data) -> list[Clip]:
    has_pos: dict[str, bool] = {}
    for c in clips:
        has_pos[c.speaker] = has_pos.get(c.speaker, False) or c.label == 1
    split = split_speakers(has_pos, data.val_fraction, data.test_fraction)
    return [Clip(c.path, c.name, c.label, c.speaker, split[c.speaker]) for c in clips]


def _cell(row: dict, key: str) -> str:
    return (row.get(key) or "").strip()


def read_manifest(csv_path: Path, data, hint: str = "") -> list[Clip]:
    """Parse a manifest CSV (header path,label[,speaker[,split]], extra columns ignored)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such manifest{hint}")
    base = csv_path.parent
    clips: list[Clip] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in ("path", "label") if c not in reader.fieldnames]
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                               f"(expected header path,label[,speaker[,split]])")
        has_split = "split" in reader.fieldnames
        for row in reader:
            where = f"{csv_path}: row {reader.line_num}"
            name = _cell(row, "path")
            if not name:
                raise AudioError(f"{where}: empty path")
            raw = _cell(row, "label").lower()
            if raw not in LABELS:
                raise AudioError(f"{where}: {name}: bad label {raw!r} (expected 1/0 or positive/negative)")
            split = _cell(row, "split").lower()
            if has_split and split not in SPLITS:
                raise AudioError(f"{where}: {name}: bad split {split!r} (expected train, val or test)")
            clips.append(Clip(base / name, name, LABELS[raw], _cell(row, "speaker") or Path(name).stem, split))
    if not clips:
        raise DatasetError(f"{csv_path}: manifest has no rows")
    return clips if has_split else _with_splits(clips, data)


def _folder_clips(data) -> list[Clip]:
    root = Path(data.root)
    clips: list[Clip] = []
    for label, sub in ((1, "positive"), (0, "negative")):
        folder = root / sub
        if not folder.is_dir():
            raise DatasetError(f"data.root: {folder}: no such folder (data.source 'folder' expects "
                               f"{root}/positive and {root}/negative)")
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and p.suffix.lower() in AUDIO_EXTS and not p.name.startswith("."))
        if not files:
            raise DatasetError(f"data.root: {folder}: no audio files ({', '.join(AUDIO_EXTS)})")
        for p in files:
            speaker = p.parent.name if p.parent != folder else p.stem
            clips.append(Clip(p, p.relative_to(root).as_posix(), label, speaker, ""))
    return _with_splits(clips, data)


def list_clips(cfg) -> list[Clip]:
    """Every clip of cfg.data with its split; raises DatasetError naming what is missing."""
    data = cfg.data
    if data.source == "folder":
        return _folder_clips(data)
    if data.source == "manifest":
        return read_manifest(Path(data.manifest), data)
    hint = "; run `raykd data synth CONFIG` to synthesise it"
    return read_manifest(synth_manifest_path(cfg), data, hint)


# ----------------------------------------------------------------------------- public


def ensure_dataset(cfg, progress: Callable[[int, int], None] | None = None) -> Path:
    """Return the manifest path for cfg.data, synthesising the dataset first if needed.

    synth: root/manifest.csv, (re)made when missing or made from another synth config;
    manifest: the CSV; folder: the root folder. Raises DatasetError when it is missing.
    """
    data = cfg.data
    if data.source == "synth":
        if not is_current(cfg):
            return synthesize(cfg, progress)
        return synth_manifest_path(cfg)
    if data.source == "manifest":
        path = Path(data.manifest)
        if not path.is_file():
            raise DatasetError(f"data.manifest: {path}: no such file")
        return path
    _folder_clips(data)  # raises when positive/ or negative/ is missing or empty
    return Path(data.root)


def load_split(cfg, split: str) -> WaveformSet:
    """Load 'train' | 'val' | 'test' of cfg.data into memory.

    Every file of the split is decoded, and every file of the other splits is checked
    (header only), so a bad file anywhere fails here, before any training, unless
    data.on_bad_file is 'skip': then the split's bad files are listed in `skipped`.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    fs, skip = cfg.features, cfg.data.on_bad_file == "skip"
    clips = list_clips(cfg)
    hint = " (or set data.on_bad_file: skip)"
    waves, kept, skipped = [], [], []
    for c in (c for c in clips if c.split == split):
        try:
            waves.append(read_audio(c.path, fs.sample_rate, fs.clip_samples))
            kept.append(c)
        except AudioError as e:
            if not skip:
                raise AudioError(f"{e}{hint}") from None
            skipped.append(str(e))
    if not skip:
        for c in (c for c in clips if c.split != split):
            try:
                check_audio(c.path)
            except AudioError as e:
                raise AudioError(f"{e}{hint}") from None
    if not kept:
        raise DatasetError(f"data: split '{split}' has no usable clips ({len(clips)} clips, "
                           f"{len(skipped)} skipped; add speakers or give a split column)")
    return WaveformSet(
        waves=torch.stack(waves), labels=torch.tensor([c.label for c in kept], dtype=torch.int64),
        speakers=[c.speaker for c in kept], paths=[str(c.path) for c in kept],
        skipped=skipped, sample_rate=fs.sample_rate)


def dataset_fingerprint(cfg) -> str:
    """Hash of everything the clips depend on (manifest contents, sample rate, clip length).

    Rows are taken with their manifest-relative names and file sizes, so moving the dataset
    keeps the hash while replacing a file (almost always) changes it.
    """
    rows = [(c.name, c.label, c.speaker, c.split, c.path.stat().st_size if c.path.is_file() else -1)
            for c in list_clips(cfg)]
    return fingerprint({"clips": rows, "sample_rate": cfg.features.sample_rate,
                        "clip_samples": cfg.features.clip_samples})
