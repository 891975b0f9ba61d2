"""Synthetic dataset: clip format, speech content, family and speaker splits, near misses,
streams, determinism, failures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from raykd.config import config_from_dict
from raykd.data.dataset import ensure_dataset, load_split
from raykd.data.nearmiss import NearMiss, _contains, classes, contains_phrase, generate, normalise, phonemes_of
from raykd.data.streams import StreamSpec, Utterance, _next
from raykd.data.synth import COLUMNS, SynthError, draw_speakers, engine, plan, speech_seconds, synthesize, trim
from raykd.data.voices import speak, speaker_pool


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
    clips = [x for x in r if x["kind"] != "stream"]
    assert len(clips) == 4 * (3 + 2 + 2 + 4)
    kinds = {(x["kind"], x["label"]) for x in r}
    assert kinds == {("positive", "1"), ("near_miss", "0"), ("near_miss_generated", "0"), ("other", "0"),
                     ("nonspeech", "0"), ("stream", "0")}
    s = synth_cfg.data.synth
    assert {x["text"] for x in r if x["kind"] == "positive"} == {s.phrase}
    assert {x["text"] for x in r if x["kind"] == "near_miss"} <= set(s.near_misses)
    assert {x["text"] for x in r if x["kind"] == "other"} <= set(s.other_speech)
    made = {m.text for m in generate(s.phrase, s.generated_near_misses, synth_cfg.seed)}
    assert {x["text"] for x in r if x["kind"] == "near_miss_generated"} <= made
    family_of = {"en-us": "en-us", "en-gb-x-rp": "en-gb", "de": "germanic", "en-gb-scotland": "en-scotland"}
    pairs = {(x["speaker"], x["voice_family"]) for x in r}
    assert len(pairs) == 4 and {f for _, f in pairs} == set(family_of.values())
    assert all(family_of[spk.split("+")[0]] == f and spk.split("+")[1] in ("m1", "f2") for spk, f in pairs)


def test_wavs_are_16k_mono_int16_of_clip_length(synth_cfg):
    for row in rows(synth_cfg):
        info = sf.info(Path(synth_cfg.data.root) / row["path"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), row["path"]
        if row["kind"] != "stream":
            assert info.frames == synth_cfg.features.clip_samples == 24000


def test_positives_hold_the_whole_phrase(synth_cfg):
    """Speech is placed on exact zeros, so its span is measurable: the whole phrase, uncut."""
    shortest = min(speech_seconds("hey sirius", "en-us+m1", r, 50) for r in synth_cfg.data.synth.rates)
    for row in rows(synth_cfg):
        if row["kind"] == "stream":
            continue
        x = read_int16(synth_cfg, row).astype(np.float64) / 32768
        rms = np.sqrt(np.mean(x**2))
        if row["kind"] == "positive":
            loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
            span = (loud[-1] - loud[0]) / 16000
            assert rms > 0.02, row["path"]
            assert 0.6 * shortest < span < 1.5, (row["path"], span)
            assert x[0] == 0 and x[-1] == 0, f"{row['path']}: speech touches the clip edge"
        elif row["text"] == "silence":
            assert rms < 2e-3, row["path"]
        elif row["kind"] == "nonspeech":
            assert 0.005 < rms < 0.2, row["path"]


def test_splits_hold_out_whole_families_and_speakers(synth_cfg):
    r = rows(synth_cfg)
    for col in ("speaker", "voice_family"):
        by_split = {s: {x[col] for x in r if x["split"] == s} for s in ("train", "val", "test")}
        assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                    or by_split["val"] & by_split["test"]), col
    fams = {s: {x["voice_family"] for x in r if x["split"] == s} for s in ("train", "val", "test")}
    assert fams == {"train": {"en-us", "en-gb"}, "val": {"germanic"}, "test": {"en-scotland"}}
    for split in ("train", "val", "test"):  # the manifest reads back through the dataset layer
        ws = load_split(synth_cfg, split)
        speakers = {x["speaker"] for x in r if x["split"] == split}
        assert set(ws.speakers) == speakers and set(ws.families) == fams[split]
        assert ws.labels.sum() == 3 * len(speakers)


def test_default_pool_draws_the_configured_speakers_by_family(tmp_path):
    """The default config: every usable voice and variant; klatt and germanic voices only in
    val, Scottish English and slavic voices only in test; half of each split English."""
    cfg = config_from_dict({"data": {"root": str(tmp_path)}})
    drawn = draw_speakers(cfg)
    s = cfg.data.synth
    assert sum(len(v) for v in drawn.values()) == s.speakers == 120
    assert [len(drawn[k]) for k in ("train", "val", "test")] == [84, 18, 18]
    fams = {k: {p.family for p in v} for k, v in drawn.items()}
    assert fams["val"] == set(s.val_families) and fams["test"] == set(s.test_families)
    assert not fams["train"] & (set(s.val_families) | set(s.test_families))
    assert len(fams["train"]) >= 8  # families take turns: many accents, not one
    for split, spk in drawn.items():
        assert abs(sum(p.english for p in spk) - 0.5 * len(spk)) <= 1, split
    assert any(p.voice == "en-us" for p in drawn["val"])  # klatt variants of English voices
    voices = {k: {p.voice for p in v} for k, v in drawn.items()}  # a held-out accent in one split only
    held_voices = {p.voice for v in drawn.values() for p in v if p.accent in s.val_families + s.test_families}
    for v in held_voices:
        assert sum(v in voices[k] for k in voices) == 1, v
    assert draw_speakers(cfg) == drawn
    other = draw_speakers(cfg.model_copy(update={"seed": 1}))
    assert {p.id for p in other["train"]} != {p.id for p in drawn["train"]}


def test_other_languages_speak_english_phonemes():
    de = next(p for p in speaker_pool("hey sirius", ("de", "en-us"), ("m1",)) if p.voice == "de")
    en = next(p for p in speaker_pool("hey sirius", ("de", "en-us"), ("m1",)) if p.voice == "en-us")
    assert (de.family, de.english, en.family, en.english) == ("germanic", False, "en-us", True)
    assert speak(en, "hey sirius") == "hey sirius"
    form = speak(de, "hey sirius")
    assert form.startswith("[[h") and form.endswith("]]")
    e = engine()
    said = e.phonemes_spoken("de", form[2:-2])  # every mapped phoneme is one German espeak knows
    assert len(said) >= 7, said
    a = e.say(form, "de+m1", 160, 50)
    assert 0.4 < len(trim(a, e.sample_rate)) / e.sample_rate < 1.5


def test_streams_are_long_negative_speech_loaded_whole(synth_cfg):
    s, fs = synth_cfg.data.synth, synth_cfg.features
    r = rows(synth_cfg)
    assert not [x for x in r if x["kind"] == "stream" and x["split"] == "train"]
    for split in ("val", "test"):
        streams = [x for x in r if x["kind"] == "stream" and x["split"] == split]
        assert streams and all(x["label"] == "0" for x in streams)
        frames = sum(sf.info(Path(synth_cfg.data.root) / x["path"]).frames for x in streams)
        assert frames == round(s.stream_minutes * 60 * fs.sample_rate)
        ws = load_split(synth_cfg, split)
        assert sum(int(w.shape[0]) for w in ws.streams) == frames  # whole, never cropped
        assert len(ws) == 11 * len({x["speaker"] for x in r if x["split"] == split})  # clips only
        assert ws.negative_seconds == pytest.approx((ws.labels == 0).sum().item() * 1.5 + frames / 16000)
        x = ws.streams[0].numpy().astype(np.float64)
        frame_rms = np.sqrt(np.mean(x[: x.size // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1))
        assert frame_rms.max() > 0.03 and np.median(frame_rms) < frame_rms.max() / 3  # speech and pauses
        assert frame_rms.min() > 1e-4  # a background under the pauses
    assert load_split(synth_cfg, "train").streams == []


def test_stream_utterances_never_say_the_phrase(synth_cfg):
    """Each candidate alone, and any two in a row, stay clear of the phrase."""
    phrase = synth_cfg.data.synth.phrase
    specs = [j.stream for g in plan(synth_cfg) for j in g if j.kind == "stream"]
    assert specs
    for spec in specs:
        assert not any(_contains(u.classes, spec.phrase) for u in spec.utterances)
    hey, sirius = (Utterance(t, classes(phonemes_of(t))) for t in ("hey", "sirius"))
    spec = StreamSpec((hey, sirius), classes(phonemes_of(phrase)), 1, (160,), (50,), (50,), (0,), (".",))
    rng, prev = np.random.default_rng(0), None
    for _ in range(300):
        u = _next(spec, prev, rng)
        assert not (prev == hey and u == sirius)
        prev = u


@pytest.mark.parametrize("phrase", ["hey sirius", "alexa", "ok computer", "hey vega"])
def test_near_miss_generator_never_yields_the_phrase(phrase):
    made = generate(phrase, 10_000, 0)
    assert len(made) > 20 and {m.op for m in made} >= {"substitute", "drop", "add"}
    # a rhyme of a vowel-initial word ("balexa") contains the phrase: rejected, as it must be
    assert ("rhyme" in {m.op for m in made}) == (phrase != "alexa")
    target = classes(phonemes_of(phrase))
    for m in made:
        assert not contains_phrase(m, phrase), m
        assert normalise(m.text) != normalise(phrase)
        assert classes(m.phonemes if m.phonemes is not None else phonemes_of(m.text)) != target
    assert len({m.text for m in made}) == len(made)
    assert generate(phrase, 12, 3) == generate(phrase, 12, 3)


def test_phrase_is_recognised_in_any_spelling():
    for said in ("hey sirius", "Hey, Sirius!", "hay sirius", "hey sirius please", "well hey sirius"):
        assert contains_phrase(said, "hey sirius"), said
    # phoneme input with I for espeak's I2 (the same class): still the phrase
    assert contains_phrase(NearMiss("x", "t", (("h", "'eI"), ("s", "'I", "r", "I", "@", "s"))), "hey sirius")
    for other in ("hey serious", "sirius", "hey siri", "hey cyrus"):
        assert not contains_phrase(other, "hey sirius"), other


@pytest.mark.parametrize("key", ["near_misses", "other_speech"])
def test_configured_negative_saying_the_phrase_is_an_error(make_cfg, tmp_path, key):
    with pytest.raises(SynthError, match=f"data.synth.{key}: 'hay sirius!' says the phrase"):
        synthesize(make_cfg(tmp_path, synth={key: ["hello", "hay sirius!"]}))


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
                                         "other_per_speaker": 0, "nonspeech_per_speaker": 0,
                                         "stream_minutes": 0}),
               lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_ensure_dataset_reuses_and_remakes(make_cfg, tmp_path):
    small = {"positives_per_speaker": 1, "near_misses_per_speaker": 1,
             "other_per_speaker": 0, "nonspeech_per_speaker": 0, "stream_minutes": 0}
    cfg = make_cfg(tmp_path, synth=small)
    path = ensure_dataset(cfg)
    stamp = path.stat().st_mtime_ns
    assert ensure_dataset(cfg) == path and path.stat().st_mtime_ns == stamp
    changed = make_cfg(tmp_path, synth={**small, "phrase": "hey vega"})
    ensure_dataset(changed)
    assert {r["text"] for r in rows(changed) if r["kind"] == "positive"} == {"hey vega"}


@pytest.mark.parametrize("synth, needle", [
    ({"voices": ["en-us", "de", "en-gb-scotland", "xx-nowhere"]}, "xx-nowhere"),
    ({"variants": ["m1", "nosuchvariant"]}, "nosuchvariant"),
])
def test_unknown_voice_or_variant_fails_and_leaves_no_manifest(make_cfg, tmp_path, synth, needle):
    root = tmp_path / "d"
    synthesize(make_cfg(root, synth={"positives_per_speaker": 1, "near_misses_per_speaker": 0,
                                     "other_per_speaker": 0, "nonspeech_per_speaker": 0, "stream_minutes": 0}))
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


def test_held_out_family_missing_or_too_small(make_cfg, tmp_path):
    with pytest.raises(SynthError, match=r"data.synth.val_families: none of \['germanic'\]"):
        synthesize(make_cfg(tmp_path, synth={"voices": ["en-us", "en-gb-scotland"]}))
    with pytest.raises(SynthError, match="data.synth.speakers: train needs 8 speakers but its families have 4"):
        synthesize(make_cfg(tmp_path, synth={"speakers": 12}))


def test_espeak_runs_at_22050():
    assert engine().sample_rate == 22050


def test_espeak_is_repeatable():
    """espeak carries state between utterances; the engine must start each one fresh."""
    e = engine()
    first = e.say("hey sirius", "en-us+f2", 160, 45)
    e.say("set a timer for ten minutes", "en-gb-x-rp+m1", 140, 75)
    assert np.array_equal(e.say("hey sirius", "en-us+f2", 160, 45), first)


def test_cli_table_counts_per_split_and_family(make_cfg, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from raykd.cli import app

    cfg = make_cfg(tmp_path / "d")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": cfg.data.model_dump(mode="json", include={"root", "synth"})}))
    res = CliRunner().invoke(app, ["data", "synth", str(path)])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if "│" in line]
    cells = {tuple(c.strip() for c in line.split("│")[1:3]): [c.strip() for c in line.split("│")[3:-1]]
             for line in lines}
    # clips, positives, near misses, generated, stream minutes, speakers
    assert cells[("val", "germanic")] == ["11", "3", "1", "1", "0.25", "1"]
    assert cells[("test", "en-scotland")] == ["11", "3", "1", "1", "0.25", "1"]
    assert cells[("train", "all")][0] == "22" and cells[("train", "all")][4] == "0"
