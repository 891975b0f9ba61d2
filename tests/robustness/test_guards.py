"""Faults found before any work: a GPU asked for where none exists, a second run of one study,
an MLflow database or storage folder that cannot be written, data whose metrics would mean
nothing, and damaged files (a Latin-1 manifest, a truncated trials.json). Each is one line
naming the key or file, exit 2, nothing written before (a study's lock file aside), nothing
that was there changed."""

from __future__ import annotations

import csv
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from raykd.config import config_from_dict
from raykd.data.audio import DatasetError
from raykd.data.dataset import list_clips
from raykd.data.sanity import check_splits
from raykd.locks import LOCK_FILE, held_lock
from raykd.pipeline import check_devices
from tests.robustness.conftest import (assert_one_user_error, files_under, folder_config, run_cli, write_tone,
                                       write_yaml)

SEARCH = {"params": {"distillation.feature_alignment_weight": {"type": "uniform", "low": 0.05, "high": 0.2}},
          "num_samples": 2, "max_concurrent": 1, "trial_epochs": 1, "asha": {"enabled": False}}
QUICK_S = 30.0  # refused before data, teachers or Ray (the first `raykd tune` pays Ray Tune's import)


def _config(tmp: Path, command: str, **over: Any) -> Path:
    raw = folder_config(tmp, **over)
    if command == "tune":
        raw["search"] = SEARCH
    return write_yaml(tmp / f"{command}.yaml", raw)


# ----------------------------------------------------------------------------- GPU


NO_GPU = "scaling.use_gpu: true, but this machine has no CUDA GPU"
NO_CUDA = "train.device: cuda, but CUDA is not available"


@pytest.mark.parametrize("command, over, expected", [
    ("train", {"scaling.use_gpu": True, "scaling.num_workers": 1}, NO_GPU),
    ("train", {"scaling.use_gpu": True}, NO_GPU),
    ("tune", {"scaling.use_gpu": True, "scaling.num_workers": 1}, NO_GPU),
    ("train", {"train.device": "cuda"}, NO_CUDA),
    ("tune", {"train.device": "cuda"}, NO_CUDA),
], ids=["use-gpu-ray", "use-gpu-in-process", "use-gpu-tune", "device-cuda", "device-cuda-tune"])
def test_gpu_asked_for_without_cuda_is_refused_at_once(tmp_path, nothing_written, monkeypatch, command, over,
                                                        expected):
    """It used to wait for a GPU forever (Ray) or train on CPU without a word (train.device)."""
    import ray

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    was_up = ray.is_initialized()
    res, seconds = run_cli(command, _config(tmp_path, command, **over))
    assert_one_user_error(res, expected)
    assert seconds < QUICK_S
    assert ray.is_initialized() == was_up  # refused before Ray starts
    nothing_written(tmp_path)


def test_gpu_nodes_of_a_cluster_are_not_second_guessed(tmp_path, monkeypatch):
    """On a cluster (--address / RAY_ADDRESS) GPU workers may still be starting: not refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config_from_dict(folder_config(tmp_path, **{"scaling.use_gpu": True, "scaling.num_workers": 2}))
    check_devices(cfg, local=False)  # no error
    with pytest.raises(Exception, match="scaling.use_gpu"):
        check_devices(cfg, local=True)


# ----------------------------------------------------------------------------- one study at a time


def test_a_second_run_of_one_study_is_refused_at_once(tmp_path, nothing_written):
    path = _config(tmp_path, "tune")
    sdir = (tmp_path / "runs" / "tiny").resolve()
    with held_lock(sdir / LOCK_FILE, "study tiny"):  # the first `raykd tune` of this study, running
        res, seconds = run_cli("tune", path)
    assert_one_user_error(res, "study tiny is running already", str(sdir / LOCK_FILE))
    assert seconds < QUICK_S
    nothing_written(tmp_path)
    assert not (sdir / "tune").exists()


def test_the_study_lock_is_released_when_the_study_fails(tmp_path):
    """Released on every path: a study that fails (here: its data folder is missing) leaves
    the lock free for the next run."""
    raw = folder_config(tmp_path, **{"data.root": str(tmp_path / "nowhere")})
    path = write_yaml(tmp_path / "cfg.yaml", {**raw, "search": SEARCH})
    for _ in range(2):  # the second run gets the data error again, not "running already"
        res, _ = run_cli("tune", path)
        assert_one_user_error(res, "data.root", "no such folder")
    with held_lock((tmp_path / "runs" / "tiny").resolve() / LOCK_FILE, "study tiny"):
        pass


# ----------------------------------------------------------------------------- unwritable stores


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """chattr +i: not writable even by root (the tests may run as root, where chmod is ignored)."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _mlflow_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE experiments (id INTEGER)")
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize("command", ["train", "tune"])
def test_read_only_mlflow_database_file_fails_before_any_work(tmp_path, nothing_written, command):
    db = _mlflow_db(tmp_path / "mlflow.db")  # the folder is writable, the file is not
    before = db.read_bytes()
    with immutable(db):
        res, seconds = run_cli(command, _config(tmp_path, command))
    assert_one_user_error(res, f"tracking.uri sqlite:///{db}", "attempt to write a readonly database")
    assert seconds < QUICK_S and db.read_bytes() == before
    nothing_written(tmp_path)


def test_a_file_that_is_not_a_database_as_mlflow_store_is_one_line(tmp_path, nothing_written):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not sqlite at all " * 100)
    res, _ = run_cli("train", _config(tmp_path, "train"))
    assert_one_user_error(res, str(db), "file is not a database")
    nothing_written(tmp_path)


@pytest.mark.parametrize("command", ["train", "tune"])
@pytest.mark.parametrize("how", ["immutable-folder", "below-a-file"])
def test_storage_path_not_writable_fails_before_any_work(tmp_path, command, how):
    if how == "below-a-file":
        (tmp_path / "afile").write_text("x")
        storage = tmp_path / "afile" / "runs"
    else:
        storage = tmp_path / "runs"
        storage.mkdir()
    path = _config(tmp_path, command, storage_path=str(storage))
    guard = immutable(storage) if how == "immutable-folder" else contextmanager(lambda: iter([None]))()
    with guard:
        res, seconds = run_cli(command, path)
    assert_one_user_error(res, "storage_path", "cannot write there")
    assert seconds < QUICK_S
    assert not files_under(tmp_path / "cache")


# ----------------------------------------------------------------------------- data sanity


def _manifest(tmp: Path, rows: list[tuple[str, int, str, str]], encoding: str = "utf-8") -> Path:
    """A user CSV manifest (path,label,speaker,split) of real WAVs."""
    for name, label, _, _ in rows:
        write_tone(tmp / "clips" / name, freqs=(300.0 if label else 900.0,))
    path = tmp / "clips" / "manifest.csv"
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker", "split"])
        w.writerows(rows)
    return path


GOOD = [("a1.wav", 1, "a", "train"), ("a0.wav", 0, "a", "train"), ("b1.wav", 1, "b", "val"),
        ("b0.wav", 0, "b", "val"), ("c1.wav", 1, "c", "test"), ("c0.wav", 0, "c", "test")]


@pytest.mark.parametrize("drop, split, missing", [
    ("b1.wav", "val", "no positive (wakeword) clips"),
    ("b0.wav", "val", "no negative clips"),
    ("a1.wav", "train", "no positive (wakeword) clips"),
])
def test_a_split_without_positives_or_negatives_is_refused(tmp_path, nothing_written, drop, split, missing):
    """It used to report val_accuracy=1, val_frr=0 (and a search would rank on that)."""
    m = _manifest(tmp_path, [r for r in GOOD if r[0] != drop])
    path = write_yaml(tmp_path / "cfg.yaml", folder_config(tmp_path, **{"data.source": "manifest",
                                                                          "data.manifest": str(m)}))
    res, _ = run_cli("train", path)
    assert_one_user_error(res, f"data: split '{split}' has {missing}")
    nothing_written(tmp_path)


def test_speakers_shared_across_splits_of_user_data_are_reported(tmp_path):
    """User data: a warning (the run goes on); here a real 1-epoch run without teachers."""
    rows = GOOD + [("a2.wav", 1, "a", "val")]
    m = _manifest(tmp_path, rows)
    raw = folder_config(tmp_path, **{"data.source": "manifest", "data.manifest": str(m), "train.epochs": 1,
                                     "distillation.enabled": False, "tracking.enabled": False})
    res, _ = run_cli("train", write_yaml(tmp_path / "cfg.yaml", raw))
    assert res.exit_code == 0, res.output
    assert "warning: data: 1 speaker(s) in both 'train' and 'val' (a)" in res.stdout.replace("\n", " ")


def test_speakers_shared_across_splits_of_synthetic_data_are_an_error(tmp_path):
    """Synthetic data is split by voice by construction: a shared speaker means a broken dataset."""
    root = tmp_path / "synth"
    _manifest(tmp_path, GOOD + [("c2.wav", 1, "b", "test")])
    (tmp_path / "clips").rename(root)
    cfg = config_from_dict(folder_config(tmp_path, **{"data.source": "synth", "data.root": str(root)}))
    assert {c.speaker for c in list_clips(cfg) if c.split == "test"} == {"b", "c"}
    with pytest.raises(DatasetError, match=r"1 speaker\(s\) in both 'val' and 'test' \(b\): the synthetic dataset"):
        check_splits(cfg, {})


def test_voice_families_shared_across_splits_are_found():
    """Validation holds out whole voice families (issue 9): clips that carry a voice_family
    (the synthetic manifest's column) are checked like speakers; "user" means not given."""
    from types import SimpleNamespace as Row

    from raykd.data.sanity import shared_across_splits

    clips = [Row(split="train", speaker="en+m1", voice_family="en"), Row(split="val", speaker="en-us+f2",
             voice_family="en"), Row(split="test", speaker="de+m1", voice_family="de"),
             Row(split="val", speaker="x", voice_family="user"), Row(split="test", speaker="y", voice_family="user")]
    assert shared_across_splits(clips, "voice_family") == [("train", "val", ["en"])]
    assert shared_across_splits(clips, "speaker") == []


@pytest.mark.parametrize("command", ["train", "teacher"])
def test_latin1_manifest_is_one_line(tmp_path, nothing_written, command):
    m = _manifest(tmp_path, [("café1.wav" if r[0] == "a1.wav" else r[0], *r[1:]) for r in GOOD], encoding="latin-1")
    path = write_yaml(tmp_path / "cfg.yaml", folder_config(tmp_path, **{"data.source": "manifest",
                                                                          "data.manifest": str(m)}))
    res, _ = run_cli(command, path)
    assert_one_user_error(res, f"data.manifest: {m}: not UTF-8 text (byte 0xe9", "save it as UTF-8")
    nothing_written(tmp_path)


# ----------------------------------------------------------------------------- damaged files


def test_truncated_trials_json_is_one_line(tmp_path):
    study = tmp_path / "runs" / "tiny"
    study.mkdir(parents=True)
    write_yaml(study / "search_space.yaml", {**folder_config(tmp_path), "search": SEARCH})
    (study / "trials.json").write_text('[{"trial_id": "a1", "status": "comple')
    before = (study / "trials.json").read_bytes()
    res, _ = run_cli("best", study)
    assert_one_user_error(res, str(study / "trials.json"), "damaged", "--resume")
    assert (study / "trials.json").read_bytes() == before
