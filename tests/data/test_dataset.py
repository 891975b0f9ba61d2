"""Dataset sources (folder, CSV manifest, synth), audio decoding, bad files, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from raykd.data.audio import AudioError, DatasetError, read_audio
from raykd.data.dataset import (dataset_fingerprint, dataset_summary, ensure_dataset, list_clips, load_split,
                                split_speakers)


def folder_dataset(root, write_wav, speakers=("alice", "bob", "carol", "dave", "erin")):
    """positive/<speaker>/k.wav (nested) and negative/<speaker>_k.wav (flat)."""
    for i, s in enumerate(speakers):
        for k in range(2):
            write_wav(root / "positive" / s / f"{k}.wav", seconds=1.0, freq=300 + 40 * i + k)
            write_wav(root / "negative" / f"{s}_{k}.wav", seconds=1.5, freq=900 + 40 * i + k)
    return root


def test_stereo_44k_is_mixed_down_resampled_and_centred(tmp_path, write_wav):
    path = tmp_path / "stereo.wav"
    data = write_wav(path, seconds=2.0, sr=44100, channels=2, subtype="FLOAT")
    ref = torchaudio.functional.resample(torch.from_numpy(data.mean(1)), 44100, 16000)
    assert ref.shape[0] == 32000
    got = read_audio(path, 16000, 24000)
    assert got.shape == (24000,) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref[4000:28000], atol=1e-5, rtol=0)
    full = read_audio(path, 16000)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)


def test_short_file_is_zero_padded_on_both_sides(tmp_path, write_wav):
    data = write_wav(tmp_path / "short.wav", seconds=0.5, subtype="FLOAT")[:, 0]
    got = read_audio(tmp_path / "short.wav", 16000, 24000).numpy()
    assert np.all(got[:8000] == 0) and np.all(got[16000:] == 0)
    np.testing.assert_allclose(got[8000:16000], data, atol=1e-7)


def test_folder_source_labels_speakers_and_splits(tmp_path, write_wav, make_cfg):
    cfg = make_cfg(folder_dataset(tmp_path / "d", write_wav), source="folder")
    clips = list_clips(cfg)
    assert len(clips) == 20 and sum(c.label for c in clips) == 10
    pos = {c.speaker for c in clips if c.label == 1}
    neg = {c.speaker for c in clips if c.label == 0}
    assert pos == {"alice", "bob", "carol", "dave", "erin"}  # nested: the folder name
    assert "alice_0" in neg  # flat: the file stem
    split_of: dict[str, set[str]] = {}
    for c in clips:
        split_of.setdefault(c.speaker, set()).add(c.split)
    assert all(len(s) == 1 for s in split_of.values())
    total = 0
    for split in ("train", "val", "test"):
        ws = load_split(cfg, split)
        assert ws.waves.shape == (len(ws), 24000) and ws.labels.dtype == torch.int64
        assert 0 < ws.labels.sum() < len(ws), f"{split} lacks positives or negatives"
        assert ws.seconds == pytest.approx(len(ws) * 1.5)
        total += len(ws)
    assert total == 20
    assert ensure_dataset(cfg) == tmp_path / "d"


def test_split_speakers_is_deterministic_and_proportional():
    speakers = {f"spk{i}": i % 2 == 0 for i in range(40)}
    a = split_speakers(speakers, 0.15, 0.15)
    assert a == split_speakers(dict(reversed(list(speakers.items()))), 0.15, 0.15)
    for has_pos in (True, False):
        group = [a[s] for s, p in speakers.items() if p == has_pos]
        assert (group.count("val"), group.count("test"), group.count("train")) == (3, 3, 14)


def write_csv(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_manifest_csv_with_and_without_split(tmp_path, write_wav, make_cfg):
    base = tmp_path / "m"
    for i in range(6):
        write_wav(base / "audio" / f"p{i}.wav", seconds=1.0)
        write_wav(base / "audio" / f"n{i}.wav", seconds=1.0)
    lines = ["path,label,speaker,split"] + [
        f"audio/{k}{i}.wav,{lab},s{i},{('train', 'train', 'train', 'train', 'val', 'test')[i]}"
        for i in range(6) for k, lab in (("p", "positive"), ("n", "0"))]
    cfg = make_cfg(tmp_path, source="manifest", manifest=str(write_csv(base / "with.csv", lines)))
    assert [len(load_split(cfg, s)) for s in ("train", "val", "test")] == [8, 2, 2]
    assert load_split(cfg, "val").speakers == ["s4", "s4"]

    no_split = ["path,label,speaker"] + [f"audio/{k}{i}.wav,{lab},s{i}"
                                          for i in range(6) for k, lab in (("p", 1), ("n", "negative"))]
    cfg = make_cfg(tmp_path, source="manifest", manifest=str(write_csv(base / "without.csv", no_split)))
    parts = [load_split(cfg, s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 12
    seen = [set(p.speakers) for p in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])


@pytest.mark.parametrize("label", ["2", "yes", ""])
def test_bad_label_names_file_and_row(tmp_path, write_wav, make_cfg, label):
    write_wav(tmp_path / "a.wav")
    csv = write_csv(tmp_path / "m.csv", ["path,label", "a.wav,1", f"a.wav,{label}"])
    cfg = make_cfg(tmp_path, source="manifest", manifest=str(csv))
    with pytest.raises(AudioError, match=r"m\.csv: row 3: a\.wav: bad label"):
        load_split(cfg, "train")


def test_manifest_missing_column(tmp_path, make_cfg):
    csv = write_csv(tmp_path / "m.csv", ["file,label", "a.wav,1"])
    with pytest.raises(DatasetError, match="missing column.*path"):
        list_clips(make_cfg(tmp_path, source="manifest", manifest=str(csv)))


def break_files(root):
    """One corrupt and one zero-length WAV among the positives of speaker alice."""
    (root / "positive" / "alice" / "corrupt.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk" * 20)
    (root / "positive" / "alice" / "empty.wav").write_bytes(b"")


@pytest.mark.parametrize("name, reason", [("corrupt.wav", "not readable as audio"),
                                          ("empty.wav", "empty file")])
def test_bad_files_fail_every_split_with_their_name(tmp_path, write_wav, make_cfg, name, reason):
    root = folder_dataset(tmp_path / "d", write_wav)
    break_files(root)
    other = {"corrupt.wav": "empty.wav", "empty.wav": "corrupt.wav"}[name]
    (root / "positive" / "alice" / other).unlink()
    cfg = make_cfg(root, source="folder")
    for split in ("train", "val", "test"):  # wherever alice lands, every split refuses to load
        with pytest.raises(AudioError, match=f"{name}: {reason}") as e:
            load_split(cfg, split)
        assert "\n" not in str(e.value)


def test_zero_sample_wav_and_missing_file(tmp_path):
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"zero\.wav: empty audio \(0 samples\)"):
        read_audio(tmp_path / "zero.wav", 16000)
    with pytest.raises(AudioError, match=r"nope\.wav: no such file"):
        read_audio(tmp_path / "nope.wav", 16000)


def test_skip_lists_bad_files_and_loads_the_rest(tmp_path, write_wav, make_cfg):
    root = folder_dataset(tmp_path / "d", write_wav)
    break_files(root)
    cfg = make_cfg(root, source="folder", on_bad_file="skip")
    parts = {s: load_split(cfg, s) for s in ("train", "val", "test")}
    skipped = [x for p in parts.values() for x in p.skipped]
    assert len(skipped) == 2
    assert any("corrupt.wav: not readable" in x for x in skipped)
    assert any("empty.wav: empty file" in x for x in skipped)
    assert sum(len(p) for p in parts.values()) == 20


def test_missing_sources_name_the_path(tmp_path, make_cfg):
    with pytest.raises(DatasetError, match=f"{tmp_path}/nothing/positive: no such folder"):
        load_split(make_cfg(tmp_path / "nothing", source="folder"), "train")
    with pytest.raises(DatasetError, match=r"gone\.csv: no such file"):
        ensure_dataset(make_cfg(tmp_path, source="manifest", manifest=str(tmp_path / "gone.csv")))
    with pytest.raises(DatasetError, match=r"manifest\.csv: no such manifest; run `raykd data synth CONFIG`"):
        load_split(make_cfg(tmp_path / "empty"), "train")


def test_fingerprint_follows_contents_and_features(tmp_path, write_wav, make_cfg):
    root = folder_dataset(tmp_path / "d", write_wav)
    cfg = make_cfg(root, source="folder")
    fp = dataset_fingerprint(cfg)
    assert fp == dataset_fingerprint(make_cfg(root, source="folder"))
    raw = cfg.model_dump(mode="json")
    raw["features"]["clip_seconds"] = 1.0
    from raykd.config import config_from_dict

    assert dataset_fingerprint(config_from_dict(raw)) != fp
    write_wav(root / "negative" / "zed_0.wav", seconds=1.0)
    assert dataset_fingerprint(cfg) != fp


def test_unknown_split_name(synth_cfg):
    with pytest.raises(ValueError, match="'dev'"):
        load_split(synth_cfg, "dev")


def test_data_errors_are_user_errors():
    """The CLI renders UserError as one line; a traceback would be a bug."""
    from raykd.data.synth import SynthError
    from raykd.errors import UserError

    assert issubclass(AudioError, UserError) and issubclass(SynthError, UserError)
    assert issubclass(AudioError, ValueError)


def _long_negative_in(root, split):
    """Add negative/long<i>.wav (40 s) whose speaker lands in `split`; returns its path."""
    from raykd.config import config_from_dict

    cfg = config_from_dict({"data": {"root": str(root), "source": "folder"}})
    for i in range(200):
        path = root / "negative" / f"long{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)  # noise: no two clip-long pieces alike
        sf.write(path, np.random.default_rng(i).uniform(-0.5, 0.5, 40 * 16000).astype(np.float32), 16000)
        if next(c.split for c in list_clips(cfg) if c.path == path) == split:
            return path
        path.unlink()
    raise AssertionError(f"no speaker name lands in {split}")


def test_long_user_negative_is_a_stream_in_val_and_pieces_in_train(tmp_path, write_wav, make_cfg):
    root = folder_dataset(tmp_path / "d", write_wav)
    val_path = _long_negative_in(root, "val")
    cfg = make_cfg(root, source="folder")
    val = load_split(cfg, "val")
    assert [int(w.shape[0]) for w in val.streams] == [40 * 16000]  # whole, not cropped
    assert str(val_path) not in val.paths and val.stream_families == ["user"]
    assert val.negative_seconds == pytest.approx(40.0 + (val.labels == 0).sum().item() * 1.5)
    val_path.unlink()
    train_path = _long_negative_in(root, "train")
    for pieces in (32, 5):
        train = load_split(make_cfg(root, source="folder", long_negative_pieces=pieces), "train")
        got = [i for i, p in enumerate(train.paths) if p == str(train_path)]
        assert len(got) == min(pieces, 26) and train.streams == []  # 40 s = 26 clip-long slots
        assert all(train.labels[i] == 0 for i in got)
        assert len({train.waves[i].numpy().tobytes() for i in got}) == len(got)  # distinct pieces


def test_manifest_kind_stream_rows(tmp_path, write_wav, make_cfg):
    for i in range(4):
        write_wav(tmp_path / f"p{i}.wav", seconds=1.0)
        write_wav(tmp_path / f"n{i}.wav", seconds=1.0)
    write_wav(tmp_path / "room.wav", seconds=10.0)
    lines = ["path,label,speaker,split,kind"] + [
        f"{k}{i}.wav,{lab},s{i},{('train', 'train', 'val', 'test')[i]}," for i in range(4)
        for k, lab in (("p", 1), ("n", 0))] + ["room.wav,0,s2,val,stream"]
    cfg = make_cfg(tmp_path, source="manifest", manifest=str(write_csv(tmp_path / "m.csv", lines)))
    val = load_split(cfg, "val")
    assert len(val) == 2 and [w.shape[0] for w in val.streams] == [160000]
    summary = {(r["split"], r["family"]): r for r in dataset_summary(cfg)}
    assert summary[("val", "user")]["stream_minutes"] == pytest.approx(10 / 60)
    assert summary[("val", "user")]["clips"] == 2 and summary[("train", "user")]["positives"] == 2


@pytest.mark.parametrize("form", ["folder", "manifest"])
def test_extra_recordings_join_the_synthetic_set_with_their_own_split(synth_cfg, tmp_path, write_wav, form):
    extra = folder_dataset(tmp_path / "mine", write_wav)
    if form == "manifest":
        lines = ["path,label,speaker,split"] + [
            f"positive/{s}/0.wav,1,{s},{sp}" for s, sp in (("alice", "train"), ("bob", "val"), ("carol", "test"))]
        extra = write_csv(extra / "mine.csv", lines)
    raw = synth_cfg.model_dump(mode="json")
    raw["data"]["extra"] = str(extra)
    from raykd.config import config_from_dict

    cfg = config_from_dict(raw)
    synth_only, clips = list_clips(synth_cfg), list_clips(cfg)
    mine = [c for c in clips if c.voice_family == "user"]
    assert len(clips) == len(synth_only) + len(mine) and len(mine) == (20 if form == "folder" else 3)
    assert all(c.name.startswith("extra/") for c in mine)
    splits = {c.speaker: c.split for c in mine}
    if form == "folder":  # split by the hash of the speaker id, like any user folder
        alone = {c.speaker: c.split for c in list_clips(type(cfg).model_validate(
            {**raw, "data": {**raw["data"], "source": "folder", "root": str(extra), "extra": None}}))}
        assert splits == alone and set(splits.values()) == {"train", "val", "test"}
    else:
        assert splits == {"alice": "train", "bob": "val", "carol": "test"}
    for split in ("train", "val", "test"):
        ws = load_split(cfg, split)
        ours = [p for p, f in zip(ws.paths, ws.families) if f == "user"]
        assert len(ours) == sum(c.split == split for c in mine) > 0
        assert len(ws) == len(load_split(synth_cfg, split)) + len(ours)
    assert dataset_fingerprint(cfg) != dataset_fingerprint(synth_cfg)
    fams = {(r["split"], r["family"]) for r in dataset_summary(cfg)}
    assert {("train", "user"), ("val", "user"), ("test", "user")} <= fams


def test_missing_extra_names_the_key(synth_cfg, tmp_path):
    raw = synth_cfg.model_dump(mode="json")
    raw["data"]["extra"] = str(tmp_path / "nowhere")
    from raykd.config import config_from_dict

    with pytest.raises(DatasetError, match=r"data.extra: .*nowhere: no such folder"):
        list_clips(config_from_dict(raw))
