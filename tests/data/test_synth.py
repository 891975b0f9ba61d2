"""Synthetic dataset: clip format, speech content, speaker splits, determinism, failures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from raykd.data.dataset import ensure_dataset, load_split
from raykd.data.synth import COLUMNS, SynthError, engine, speech_seconds, synthesize


def rows(cfg) -> list[dict[str, str]]:
    with open(Path(cfg.data.root) / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def read_int16(cfg, row) -> np.ndarray:
    data, sr = sf.read(Path(cfg.data.root) / row["path"], dtype="int16")
    return data


def test_manifest_columns_kinds_and_counts(synth_cfg):
    with open(Path(synth_cfg.data.root) / "manifest.csv") as f:
        assert f.readline().strip() == ",".join(COLUMNS)
    r = rows(synth_cfg)
    assert len(r) == 4 * (3 + 2 + 2 + 4)
    kinds = {(x["kind"], x["label"]) for x in r}
    assert kinds == {("positive", "1"), ("near_miss", "0"), ("other", "0"), ("nonspeech", "0")}
    s = synth_cfg.data.synth
    assert {x["text"] for x in r if x["kind"] == "positive"} == {s.phrase}
    assert {x["text"] for x in r if x["kind"] == "near_miss"} <= set(s.near_misses)
    assert {x["text"] for x in r if x["kind"] == "other"} <= set(s.other_speech)
    assert {x["speaker"] for x in r} == {"en-us+m1", "en-us+f2", "en-gb-x-rp+m1", "en-gb-x-rp+f2"}


def test_wavs_are_16k_mono_int16_of_clip_length(synth_cfg):
    for row in rows(synth_cfg):
        info = sf.info(Path(synth_cfg.data.root) / row["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), row["path"]
        assert info.frames == synth_cfg.features.clip_samples == 24000


def test_positives_hold_the_whole_phrase(synth_cfg):
    """Speech is placed on exact zeros, so its span is measurable: the whole phrase, uncut."""
    shortest = min(speech_seconds("hey sirius", "en-us+m1", r, 50) for r in synth_cfg.data.synth.rates)
    for row in rows(synth_cfg):
        x = read_int16(synth_cfg, row).astype(np.float64) / 32768
        rms = np.sqrt(np.mean(x**2))
        if row["kind"] == "positive":
            loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
            span = (loud[-1] - loud[0]) / 16000
            assert rms > 0.03, row["path"]
            assert 0.8 * shortest < span < 1.5, (row["path"], span)
            assert x[0] == 0 and x[-1] == 0, f"{row['path']}: speech touches the clip edge"
        elif row["text"] == "silence":
            assert rms < 2e-3, row["path"]
        elif row["kind"] == "nonspeech":
            assert 0.005 < rms < 0.2, row["path"]


def test_splits_are_by_speaker(synth_cfg):
    r = rows(synth_cfg)
    by_split = {s: {x["speaker"] for x in r if x["split"] == s} for s in ("train", "val", "test")}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    for split in ("train", "val", "test"):  # the manifest reads back through the dataset layer
        ws = load_split(synth_cfg, split)
        assert set(ws.speakers) == by_split[split]
        assert ws.labels.sum() == 3 * len(by_split[split])


def test_same_seed_same_bytes_across_worker_counts(synth_cfg, make_cfg, tmp_path):
    """Workers = 2 runs the real process pool; output must not depend on scheduling."""
    other = make_cfg(tmp_path / "w2", synth={"workers": 2})
    synthesize(other)
    a, b = Path(synth_cfg.data.root), Path(other.data.root)
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    for row in rows(synth_cfg):
        assert (a / row["path"]).read_bytes() == (b / row["path"]).read_bytes(), row["path"]


def test_other_seed_other_data(synth_cfg, make_cfg, tmp_path):
    cfg = make_cfg(tmp_path / "s1").model_copy(update={"seed": 1})
    synthesize(cfg)
    a, b = Path(synth_cfg.data.root), Path(cfg.data.root)
    assert (a / "manifest.csv").read_bytes() != (b / "manifest.csv").read_bytes()
    same = [(a / r["path"]).read_bytes() == (b / r["path"]).read_bytes() for r in rows(cfg)]
    assert sum(same) < len(same) / 4  # renditions (rate, pitch, offset, level) change too


def test_progress_reaches_total(make_cfg, tmp_path):
    calls = []
    synthesize(make_cfg(tmp_path, synth={"positives_per_speaker": 1, "near_misses_per_speaker": 0,
                                         "other_per_speaker": 0, "nonspeech_per_speaker": 0}),
               lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_ensure_dataset_reuses_and_remakes(make_cfg, tmp_path):
    small = {"positives_per_speaker": 1, "near_misses_per_speaker": 1,
             "other_per_speaker": 0, "nonspeech_per_speaker": 0}
    cfg = make_cfg(tmp_path, synth=small)
    path = ensure_dataset(cfg)
    stamp = path.stat().st_mtime_ns
    assert ensure_dataset(cfg) == path and path.stat().st_mtime_ns == stamp
    changed = make_cfg(tmp_path, synth={**small, "phrase": "hey vega"})
    ensure_dataset(changed)
    assert {r["text"] for r in rows(changed) if r["kind"] == "positive"} == {"hey vega"}


@pytest.mark.parametrize("synth, needle", [
    ({"voices": ["en-us", "xx-nowhere"]}, "xx-nowhere"),
    ({"variants": ["m1", "nosuchvariant"]}, "nosuchvariant"),
])
def test_unknown_voice_or_variant_fails_and_leaves_no_manifest(make_cfg, tmp_path, synth, needle):
    root = tmp_path / "d"
    synthesize(make_cfg(root, synth={"positives_per_speaker": 1, "near_misses_per_speaker": 0,
                                     "other_per_speaker": 0, "nonspeech_per_speaker": 0}))
    assert (root / "manifest.csv").is_file()
    with pytest.raises(SynthError, match=needle):
        synthesize(make_cfg(root, synth=synth))
    assert not (root / "manifest.csv").exists()  # the old one named clips being replaced


def test_positive_longer_than_clip_is_an_error(make_cfg, tmp_path):
    raw = make_cfg(tmp_path).model_dump(mode="json")
    raw["features"]["clip_seconds"] = 0.4
    from raykd.config import config_from_dict

    with pytest.raises(SynthError, match="features.clip_seconds"):
        synthesize(config_from_dict(raw))


def test_too_few_speakers_to_split(make_cfg, tmp_path):
    with pytest.raises(SynthError, match="cannot be split"):
        synthesize(make_cfg(tmp_path, synth={"voices": ["en-us"], "variants": ["m1", "f2"]}))


def test_espeak_runs_at_22050():
    assert engine().sample_rate == 22050


def test_espeak_is_repeatable():
    """espeak carries state between utterances; the engine must start each one fresh."""
    e = engine()
    first = e.say("hey sirius", "en-us+f2", 160, 45)
    e.say("set a timer for ten minutes", "en-gb-x-rp+m1", 140, 75)
    assert np.array_equal(e.say("hey sirius", "en-us+f2", 160, 45), first)
