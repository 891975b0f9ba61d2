"""Wakeword clips: manifests (synthetic, a user folder, a user CSV) and in-memory splits.

Sources (data.source):
  synth     root/manifest.csv written by `raykd.data.synth` (made by `ensure_dataset`)
  folder    root/positive/**.wav and root/negative/**.wav; speaker = the sub-folder name
            when nested (positive/alice/1.wav -> alice), else the file stem
  manifest  a CSV with header path,label[,speaker[,split[,kind[,voice_family]]]]; paths
            relative to the CSV's folder; label 1/0 or positive/negative; speaker defaults
            to the file stem
data.extra (a folder or CSV of the same form) is added to any source: users' own recordings
mixed into the synthetic set, with their own split.

Without a split column, speakers are split deterministically by the hash of their id
(see `split_speakers`); a speaker is never in two splits.

Long negatives: a row of kind `stream` (the synthetic val/test streams), and in user data a
negative file longer than features.clip_seconds, is a stream in val/test: loaded whole into
WaveformSet.streams (false accepts per hour over its duration), never among the clips. In
train such a file is cut into clip-long pieces (at most data.long_negative_pieces, evenly
spread over the file), each a negative clip: hard negatives without hours of memory.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import soundfile as sf
import torch

from raykd.config import fingerprint
from raykd.data.audio import AUDIO_EXTS, AudioError, DatasetError, check_audio, fit_length, read_audio
from raykd.data.synth import is_current, split_counts, synth_manifest_path, synthesize

SPLITS = ("train", "val", "test")
LABELS = {"1": 1, "0": 0, "positive": 1, "negative": 0}
SYNTH_CLIP_KINDS = {"positive", "near_miss", "near_miss_generated", "other", "nonspeech"}


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
    families: N voice families of the clips ("user" for the user's recordings)
    stream_families: the voice family of each stream
    """

    waves: torch.Tensor
    labels: torch.Tensor
    speakers: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)
    sample_rate: int = 16000
    streams: list[torch.Tensor] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    stream_families: list[str] = field(default_factory=list)

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
    """One row of a dataset: `name` is the path as the manifest wrote it (relative).

    kind: the synth manifest's kind (positive, near_miss, ..., stream), or "" for user data
    (decided on loading: a long negative is a stream). voice_family: the synth family, or
    "user" for the user's recordings.
    """

    path: Path
    name: str
    label: int
    speaker: str
    split: str
    kind: str = ""
    voice_family: str = "user"


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
    return [replace(c, split=split[c.speaker]) for c in clips]


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
            clips.append(Clip(base / name, name, LABELS[raw], _cell(row, "speaker") or Path(name).stem, split,
                              _cell(row, "kind"), _cell(row, "voice_family") or "user"))
    if not clips:
        raise DatasetError(f"{csv_path}: manifest has no rows")
    return clips if has_split else _with_splits(clips, data)


def _folder_clips(data, root: Path | None = None, key: str = "data.root") -> list[Clip]:
    root = Path(data.root if root is None else root)
    clips: list[Clip] = []
    for label, sub in ((1, "positive"), (0, "negative")):
        folder = root / sub
        if not folder.is_dir():
            raise DatasetError(f"{key}: {folder}: no such folder (a dataset folder holds "
                               f"{root}/positive and {root}/negative)")
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and p.suffix.lower() in AUDIO_EXTS and not p.name.startswith("."))
        if not files:
            raise DatasetError(f"{key}: {folder}: no audio files ({', '.join(AUDIO_EXTS)})")
        for p in files:
            speaker = p.parent.name if p.parent != folder else p.stem
            clips.append(Clip(p, p.relative_to(root).as_posix(), label, speaker, ""))
    return _with_splits(clips, data)


def _extra_clips(data) -> list[Clip]:
    """data.extra: the user's recordings (folder or CSV), names prefixed so they never clash."""
    path = Path(data.extra)
    if path.is_dir():
        clips = _folder_clips(data, path, "data.extra")
    elif path.is_file():
        clips = read_manifest(path, data)
    else:
        raise DatasetError(f"data.extra: {path}: no such folder (positive/, negative/) or CSV manifest")
    return [replace(c, name=f"extra/{c.name}", voice_family="user") for c in clips]


def list_clips(cfg) -> list[Clip]:
    """Every clip of cfg.data (and data.extra) with its split; raises DatasetError naming what is missing."""
    data = cfg.data
    if data.source == "folder":
        clips = _folder_clips(data)
    elif data.source == "manifest":
        clips = read_manifest(Path(data.manifest), data)
    else:
        hint = "; run `raykd data synth CONFIG` to synthesise it"
        clips = read_manifest(synth_manifest_path(cfg), data, hint)
    if data.extra is not None:
        extra = _extra_clips(data)
        ours = {c.speaker for c in clips}
        clash = sorted({c.speaker for c in extra} & ours)
        if clash:
            raise DatasetError(f"data.extra: speaker(s) {', '.join(clash[:3])} also in data.{data.source}; "
                               f"a speaker must be in one split only, rename them")
        clips += extra
    return clips


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


def is_long_negative(c: Clip, clip_seconds: float) -> bool:
    """A stream row, or a user's negative file longer than a clip (header read only)."""
    if c.kind == "stream":
        return True
    if c.kind in SYNTH_CLIP_KINDS or c.label != 0:
        return False  # synthetic clips are clip-long by construction
    check_audio(c.path)
    info = sf.info(str(c.path))
    return info.frames > clip_seconds * info.samplerate


def _pieces(wave: torch.Tensor, clip_samples: int, most: int) -> list[torch.Tensor]:
    """A long negative (S,) -> up to `most` non-overlapping clip-long pieces, evenly spread."""
    n = min(wave.shape[0] // clip_samples, most)
    if n <= 1:
        return [fit_length(wave, clip_samples)]
    slots = wave.shape[0] // clip_samples
    return [wave[k * clip_samples:(k + 1) * clip_samples] for k in
            sorted({int(round(i * (slots - 1) / (n - 1))) for i in range(n)})]


def _load_one(c: Clip, split: str, cfg, out: dict[str, list]) -> None:
    fs = cfg.features
    if not is_long_negative(c, fs.clip_seconds):
        wave = read_audio(c.path, fs.sample_rate, fs.clip_samples)
        out["clips"].append((wave, c))
        return
    wave = read_audio(c.path, fs.sample_rate)
    if split == "train":  # training never sees a stream whole: clip-long pieces instead
        out["clips"] += [(p, c) for p in _pieces(wave, fs.clip_samples, cfg.data.long_negative_pieces)]
    else:
        out["streams"].append((wave, c))


def load_split(cfg, split: str) -> WaveformSet:
    """Load 'train' | 'val' | 'test' of cfg.data into memory.

    Every file of the split is decoded, and every file of the other splits is checked
    (header only), so a bad file anywhere fails here, before any training, unless
    data.on_bad_file is 'skip': then the split's bad files are listed in `skipped`.
    Long negatives of val/test go whole into `streams`; in train they are cut into pieces.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    fs, skip = cfg.features, cfg.data.on_bad_file == "skip"
    clips = list_clips(cfg)
    hint = " (or set data.on_bad_file: skip)"
    out: dict[str, list] = {"clips": [], "streams": []}
    skipped = []
    for c in (c for c in clips if c.split == split):
        try:
            _load_one(c, split, cfg, out)
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
    kept = [c for _, c in out["clips"]]
    if not kept:
        raise DatasetError(f"data: split '{split}' has no usable clips ({len(clips)} clips, "
                           f"{len(skipped)} skipped; add speakers or give a split column)")
    return WaveformSet(
        waves=torch.stack([w for w, _ in out["clips"]]),
        labels=torch.tensor([c.label for c in kept], dtype=torch.int64),
        speakers=[c.speaker for c in kept], paths=[str(c.path) for c in kept],
        skipped=skipped, sample_rate=fs.sample_rate, streams=[w for w, _ in out["streams"]],
        families=[c.voice_family for c in kept], stream_families=[c.voice_family for _, c in out["streams"]])


def dataset_summary(cfg) -> list[dict]:
    """Per (split, voice family): clips, positives, near misses (the list's / generated),
    stream minutes and speakers; the rows `raykd data synth` shows. Reads headers only."""
    rows: dict[tuple[str, str], dict] = {}
    order = {s: i for i, s in enumerate(SPLITS)}
    for c in list_clips(cfg):
        r = rows.setdefault((c.split, c.voice_family), {
            "split": c.split, "family": c.voice_family, "clips": 0, "positives": 0, "near_misses": 0,
            "generated": 0, "stream_minutes": 0.0, "speakers": set()})
        r["speakers"].add(c.speaker)
        if is_long_negative(c, cfg.features.clip_seconds):
            info = sf.info(str(c.path))
            r["stream_minutes"] += info.frames / info.samplerate / 60
            continue
        r["clips"] += 1
        r["positives"] += c.label
        r["near_misses"] += c.kind == "near_miss"
        r["generated"] += c.kind == "near_miss_generated"
    out = [dict(r, speakers=len(r["speakers"])) for _, r in
           sorted(rows.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1]))]
    return out


def dataset_fingerprint(cfg) -> str:
    """Hash of everything the clips depend on (manifest contents, sample rate, clip length).

    Rows are taken with their manifest-relative names and file sizes, so moving the dataset
    keeps the hash while replacing a file (almost always) changes it.
    """
    rows = [(c.name, c.label, c.speaker, c.split, c.kind, c.path.stat().st_size if c.path.is_file() else -1)
            for c in list_clips(cfg)]
    return fingerprint({"clips": rows, "sample_rate": cfg.features.sample_rate,
                        "clip_samples": cfg.features.clip_samples,
                        "long_negative_pieces": cfg.data.long_negative_pieces})
