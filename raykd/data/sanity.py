"""Data sanity before any training: numbers that would mean nothing are refused up front.

A validation split with no wakeword clips reports FRR 0 and (with few negatives) accuracy 1,
and a search would rank trials on that; one speaker in train and val measures memory, not a
detector. These checks run in `raykd.pipeline.prepare`, after the splits are loaded and
before any teacher is fine-tuned.
"""

from __future__ import annotations

from pathlib import Path

from raykd.data.audio import DatasetError
from raykd.data.dataset import SPLITS, WaveformSet, list_clips

# What each class is needed for, named in the error.
NEEDS = {1: ("positive (wakeword)", "false-reject rate"), 0: ("negative", "false accepts per hour")}


def check_manifest_text(cfg) -> None:
    """A user's CSV manifest must be UTF-8 (the CSV reader's encoding): one line naming the byte."""
    if cfg.data.source != "manifest" or cfg.data.manifest is None:
        return
    path = Path(cfg.data.manifest)
    if not path.is_file():
        return  # ensure_dataset names it
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"data.manifest: {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                           f"{e.start}); save it as UTF-8") from None


def _missing_classes(labels: list[int]) -> list[int]:
    return [c for c in (1, 0) if c not in labels]


def check_splits(cfg, loaded: dict[str, WaveformSet]) -> list[str]:
    """Raise DatasetError when a loaded split (train, val) lacks positives or negatives, or a
    speaker or voice family of synthetic data is in two splits; return warnings for the rest
    (a test split lacking a class, speakers / voice families of user data shared across splits)."""
    warnings: list[str] = []
    for split, data in loaded.items():
        for c in _missing_classes(data.labels.tolist()):
            what, metric = NEEDS[c]
            raise DatasetError(f"data: split '{split}' has no {what} clips ({len(data)} clips), so its "
                               f"{metric} would mean nothing; give the split both kinds (a split column, "
                               f"or more speakers of that kind)")
    clips = list_clips(cfg)
    by_split = {s: [c for c in clips if c.split == s] for s in SPLITS}
    test = by_split["test"]
    for c in _missing_classes([x.label for x in test]) if test else []:
        warnings.append(f"data: split 'test' has no {NEEDS[c][0]} clips; its {NEEDS[c][1]} will mean nothing")
    for what, attr in (("speaker", "speaker"), ("voice family", "voice_family")):
        for a, b, shared in shared_across_splits(clips, attr):
            names = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            msg = f"data: {len(shared)} {what}(s) in both '{a}' and '{b}' ({names})"
            if cfg.data.source == "synth":
                raise DatasetError(f"{msg}: the synthetic dataset at {cfg.data.root} is inconsistent; "
                                   "delete it to have it made again")
            warnings.append(f"{msg}: {b} then measures voices the student trained on")
    return warnings


def shared_across_splits(clips: list, attr: str) -> list[tuple[str, str, list[str]]]:
    """[(split a, split b, sorted values of `attr` in both)] for every pair of splits sharing one.
    Clips without the attribute, or with voice family "user" (not given), share nothing."""
    ignore = {None, "user"} if attr == "voice_family" else {None}
    values = {s: {getattr(c, attr, None) for c in clips if c.split == s} - ignore for s in SPLITS}
    out = []
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            shared = sorted(values[a] & values[b])
            if shared:
                out.append((a, b, shared))
    return out
