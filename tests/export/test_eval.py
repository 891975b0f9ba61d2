"""`raykd eval` and `raykd detect` on an export: negatives scored whole by the streaming
detector, false accepts and trigger times that can be counted by hand.

The model is the loudness detector of conftest (a real export, run by onnxruntime): it fires
once half of a window is loud broadband sound, so a burst of loud noise inserted into a
recording of quiet real speech is a "wakeword" at a known time, and nothing else fires.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from raykd import detect as D
from raykd import evaluate as V
from raykd import eval_data as ED
from raykd.cli import app
from raykd.errors import UserError

SR = 16000
HOP_S = 0.1  # eval.hop_ms of the tiny config (the default)
QUIET = 0.05  # real speech at this gain stays below the detector's loudness


def speech_background(root: Path, seconds: float) -> np.ndarray:
    """Real synthetic negative clips (espeak-ng near misses, other speech, noise) end to end,
    quiet, repeated up to `seconds`."""
    with open(root / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == "0" and r["kind"] != "stream"]
    clips = [sf.read(root / r["path"], dtype="float32")[0] for r in rows]
    reps = int(np.ceil(seconds * SR / sum(len(c) for c in clips)))
    return QUIET * np.concatenate(clips * reps)[: int(seconds * SR)]


def add_burst(wave: np.ndarray, start_s: float, length_s: float, seed: int) -> None:
    """Loud white noise (RMS 0.3) over [start_s, start_s + length_s)."""
    a, n = int(start_s * SR), int(length_s * SR)
    wave[a:a + n] = 0.3 * np.random.default_rng(seed).standard_normal(n)


def write(path: Path, wave: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(wave, -1, 1).astype(np.float32), SR, subtype="PCM_16")
    return path


def data_root(loudness_export: Path) -> Path:
    return loudness_export.parent / "data"  # the real synthetic dataset of the run


def invoke(*args: str):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def assert_fires_at(times: list[float], bursts: list[float]) -> None:
    """One trigger per burst, when half the window is loud: burst start + 0.5 s (+- one hop)."""
    assert len(times) == len(bursts), times
    for t, b in zip(times, bursts):
        assert abs(t - (b + 0.5)) <= HOP_S + 0.03, (t, b)


# ----------------------------------------------------------------------------- a long recording


def test_long_wav_is_scored_whole(loudness_export, tmp_path):
    """A 3.5-minute recording (all negative) counts 3.5 minutes; its bursts, the last one
    past three minutes, are its false accepts: FA/h = 4 / hours, found at their times."""
    seconds = 210.0
    wave = speech_background(data_root(loudness_export), seconds)
    bursts = [12.3, 61.0, 125.55, 197.2]
    for i, b in enumerate(bursts):
        add_burst(wave, b, 0.6, seed=i)
    wav = write(tmp_path / "long.wav", wave)

    res = invoke("eval", loudness_export, wav, "--json", "--events")
    out = json.loads(res.stdout)  # exactly one JSON object on stdout, nothing else
    hours = seconds / 3600
    assert out["negative_hours"] == pytest.approx(hours, rel=1e-9)
    assert (out["positives"], out["negative_files"], out["threshold"]) == (0, 1, 0.5)  # the sidecar's threshold
    assert out["fa_per_hour"] == pytest.approx(len(bursts) / hours)
    assert {"frr", "frr_at_target", "threshold_at_target"} <= out.keys()
    assert {e["file"] for e in out["events"]} == {str(wav)}
    assert_fires_at([e["time_s"] for e in out["events"]], bursts)
    assert all(e["score"] >= 0.5 for e in out["events"])


def test_detect_prints_trigger_times(loudness_export, tmp_path):
    wave = speech_background(data_root(loudness_export), 30.0)
    bursts = [3.0, 11.37, 20.5]
    for i, b in enumerate(bursts):
        add_burst(wave, b, 0.8, seed=10 + i)
    wav = write(tmp_path / "kitchen.wav", wave)

    res = invoke("detect", loudness_export, wav)
    lines = res.stdout.strip().splitlines()
    assert lines[0].endswith("3 trigger(s) in 30.0 s at threshold 0.5")
    times = [float(line.split()[0]) for line in lines[1:]]
    scores = [float(line.split()[-1]) for line in lines[1:]]
    assert_fires_at(times, bursts)
    assert all(s >= 0.5 for s in scores)

    out = json.loads(invoke("detect", loudness_export, wav, "--json", "--threshold", "0.99").stdout)
    assert out["threshold"] == 0.99 and out["seconds"] == pytest.approx(30.0)
    # a stricter threshold fires later in each burst (more of the window must be loud), never earlier
    assert len(out["events"]) == 3 and all(e["time_s"] >= t for e, t in zip(out["events"], times))


# ----------------------------------------------------------------------------- folders and manifests


@pytest.fixture
def folder(loudness_export, tmp_path) -> Path:
    """positive/: 3 clips with a whole-clip burst, 1 with a short one (missed); negative/: a
    60 s recording with 2 bursts of 0.6 s and 3 one-clip files, one with a 0.6 s burst."""
    bg = speech_background(data_root(loudness_export), 70.0)
    root = tmp_path / "user"
    for i in range(4):
        clip = bg[i * SR:(i + 1) * SR].copy()
        add_burst(clip, 0.0 if i < 3 else 0.35, 1.0 if i < 3 else 0.3, seed=20 + i)
        write(root / "positive" / f"hey{i}.wav", clip)
    stream = bg[4 * SR:64 * SR].copy()
    add_burst(stream, 20.0, 0.6, seed=30)
    add_burst(stream, 40.0, 0.6, seed=31)
    write(root / "negative" / "living_room.wav", stream)
    for i in range(3):
        clip = bg[(64 + i) * SR:(65 + i) * SR].copy()
        if i == 1:
            add_burst(clip, 0.2, 0.6, seed=40)
        write(root / "negative" / f"chat{i}.wav", clip)
    return root


def test_eval_folder_counts_by_hand(loudness_export, folder, tmp_path):
    out = json.loads(invoke("eval", loudness_export, folder, "--json", "--plot", tmp_path / "det.png").stdout)
    hours = 63 / 3600
    assert (out["positives"], out["negative_files"]) == (4, 4)
    assert out["negative_hours"] == pytest.approx(hours, rel=1e-9)
    assert out["frr"] == 0.25  # the short burst is missed
    assert out["fa_per_hour"] == pytest.approx(3 / hours)  # 2 in the recording, 1 in chat1.wav
    # 0.5 FA/h on 63 s of audio = no false accept: a threshold above every negative's score,
    # which the whole-clip bursts still pass (their windows are all loud)
    assert (out["frr_at_target"], out["fa_per_hour_at_target"], out["target_met"]) == (0.25, 0.0, True)
    report, fired = ED.evaluate_export(loudness_export, folder)
    assert sorted(Path(f).name for f, _, _ in fired) == ["chat1.wav", "living_room.wav", "living_room.wav"]
    assert max(s for _, _, s in fired) < out["threshold_at_target"] <= 1.0
    assert_fires_at(sorted(t for f, t, _ in fired if f.endswith("living_room.wav")), [20.0, 40.0])
    assert (tmp_path / "det.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same files as a CSV manifest: the same numbers
    manifest = folder / "clips.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([(p.relative_to(folder).as_posix(), int(p.parent.name == "positive"))
                     for p in sorted(folder.rglob("*.wav"))])
    assert json.loads(invoke("eval", loudness_export, manifest, "--json").stdout) == out

    table = invoke("eval", loudness_export, folder, "--threshold", "0.9", "--events").stdout
    assert "negative hours" in table and "0.9" in table and "living_room.wav" in table


def test_onnx_scores_are_the_torch_scores(saved, exported, tmp_path):
    """The exported graph, through the streaming code, scores what training's scorer (torch
    LogMel + student) scores: on real clips and a long stream of them, window by window."""
    from raykd.data.features import LogMel

    root = Path(saved.cfg.data.root)
    shutil.copytree(root / "clips", tmp_path / "clips")
    with open(root / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] != "stream"]  # the clips; this test makes its own stream
    waves = np.concatenate([sf.read(root / r["path"], dtype="float32")[0] for r in rows if r["label"] == "0"])
    write(tmp_path / "clips" / "stream.wav", waves)
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([(r["path"], r["label"]) for r in rows] + [("clips/stream.wav", 0)])
    _, side = ED.load_export(exported.onnx_path.parent)
    features, ev = ED.export_settings(side)
    data = ED.read_eval_data(tmp_path / "m.csv", features).data
    assert len(data.streams) == 1 and data.negative_seconds == pytest.approx(2 * 24.0)
    ours = V.split_scores(ED.onnx_scorer(exported.onnx_path), data, features, ev)
    torch_ = V.split_scores(D.torch_scorer(saved.model.student, LogMel(features), "cpu"), data, features, ev)
    assert ours[0].shape == (12,) and len(ours[1]) == 25 and ours[1][-1].shape == (231,)
    for a, b in zip([ours[0], *ours[1]], [torch_[0], *torch_[1]]):
        assert (a - b).abs().max() < 1e-5


# ----------------------------------------------------------------------------- errors are one line


def test_eval_refuses_mismatched_sidecar(loudness_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(loudness_export, copy)
    onnx_path = copy / "student.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(UserError, match="checksum"):
        ED.evaluate_export(copy, tmp_path)


@pytest.mark.parametrize("problem", ["no_negative_folder", "corrupt_wav", "no_such_path", "bad_threshold"])
def test_eval_bad_input_is_one_line(loudness_export, folder, problem):
    path, threshold = folder, None
    if problem == "no_negative_folder":
        shutil.rmtree(folder / "negative")
        culprit = str(folder / "negative")
    elif problem == "corrupt_wav":
        (folder / "negative" / "chat0.wav").write_bytes(b"RIFF but not really a wav")
        culprit = str(folder / "negative" / "chat0.wav")
    elif problem == "no_such_path":
        path = culprit = folder / "nothing.wav"
        culprit = str(culprit)
    else:
        threshold, culprit = 1.5, "threshold 1.5"
    res = CliRunner().invoke(app, ["eval", str(loudness_export), str(path)]
                             + (["--threshold", str(threshold)] if threshold else []))
    assert res.exit_code == 2
    assert culprit in res.output and "Traceback" not in res.output
    with pytest.raises(UserError) as e:
        ED.evaluate_export(loudness_export, path, threshold)
    assert "\n" not in str(e.value)
