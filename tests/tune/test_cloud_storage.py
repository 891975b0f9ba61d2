"""Studies on a bucket: `storage_path: s3://...` against a real S3 server (moto, on loopback).

The server speaks the S3 REST protocol over HTTP; raykd reaches it through pyarrow's S3
client and the standard AWS_ENDPOINT_URL variable, as it would reach MinIO or AWS itself.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raykd import storage as S
from raykd.cli import app
from raykd.presets import tiny_config

from tests.tune.test_tune import SEARCH

BUCKET = "raykd-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 server on 127.0.0.1, one empty bucket, and the AWS env pointing at it."""
    import logging

    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import boto3  # moto's own dependency; raykd itself talks to the bucket through pyarrow

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=BUCKET)
    yield f"s3://{BUCKET}"
    server.stop()


def test_storage_round_trip_on_s3(s3_bucket, tmp_path):
    base = S.join(s3_bucket, "studies", "x")
    assert base == f"s3://{BUCKET}/studies/x" and not S.exists(base)
    S.write_text(S.join(base, "study.json"), json.dumps({"a": 1}))
    assert S.exists(base) and S.is_file(S.join(base, "study.json"))
    assert json.loads(S.read_text(S.join(base, "study.json"))) == {"a": 1}

    src = tmp_path / "src"
    (src / "best" / "checkpoint").mkdir(parents=True)
    (src / "best" / "checkpoint" / "best.pt").write_bytes(b"\x00weights" * 100)
    (src / "trials.json").write_text("[]")
    assert S.upload_dir(src, base) == 2
    assert S.upload_dir(src, base) == 0  # unchanged files are not copied again
    (src / "trials.json").write_text('[{"trial_id": "t1"}]')
    assert S.upload_dir(src, base) == 1

    back = S.download_dir(base, tmp_path / "back")
    assert (back / "best" / "checkpoint" / "best.pt").read_bytes() == b"\x00weights" * 100
    assert json.loads((back / "trials.json").read_text()) == [{"trial_id": "t1"}]
    with S.local_copy(base, ["trials.json", "missing.yaml"]) as local:
        assert (local / "trials.json").is_file() and not (local / "missing.yaml").exists()
    with pytest.raises(FileNotFoundError, match="no-such"):
        S.download_dir(S.join(s3_bucket, "no-such"), tmp_path / "none")


def test_missing_s3_study_is_one_clear_error(s3_bucket):
    gone = f"{s3_bucket}/studies/none"
    for argv, says in [(["best", gone], f"{gone}/trials.json: no finished study"),
                       (["export", f"{gone}/best", "--no-register"], f"{gone}/best: no such file or folder"),
                       (["retrain", gone], f"{gone}/best/config.yaml: no best config")]:
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, (argv, res.output)


def test_local_storage_path_is_unchanged(tmp_path):
    """A local path: the study is written where it always was, nothing is mirrored."""
    from raykd.config import config_from_dict
    from raykd.tune import remote_study, study_dir

    cfg = config_from_dict({"name": "s", "storage_path": str(tmp_path / "runs")})
    assert study_dir(cfg) == tmp_path / "runs" / "s" and remote_study(cfg) is None
    cloud = config_from_dict({"name": "s", "storage_path": "s3://b/runs", "cache_dir": str(tmp_path / "c")})
    assert remote_study(cloud) == "s3://b/runs/s" and study_dir(cloud) == tmp_path / "c" / "studies" / "s"


def bucket_files(prefix: str) -> set[str]:
    import pyarrow.fs as pafs

    fs, root = S.filesystem(prefix)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return {i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File}


@pytest.mark.slow
def test_study_on_s3_completes_resumes_and_exports(tiny_project, local_ray, s3_bucket, tmp_path):
    root, _ = tiny_project
    raw = tiny_config(root, name="cloud", storage_path=f"{s3_bucket}/studies", **{"tracking.enabled": False})
    raw["search"] = {**json.loads(json.dumps(SEARCH)), "num_samples": 2, "max_concurrent": 1, "trial_epochs": 1}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    remote = f"{s3_bucket}/studies/cloud"
    res = CliRunner().invoke(app, ["tune", str(space)])
    assert res.exit_code == 0, res.output
    assert f"-> {remote}/best" in res.output
    files = bucket_files(remote)
    assert {"trials.json", "search_space.yaml", "best/config.yaml", "best/checkpoint/best.pt"} <= files
    trials = json.loads(S.read_text(f"{remote}/trials.json"))
    assert len(trials) == 2 and all(t["status"] in ("completed", "pruned") for t in trials)
    assert any(f.startswith("tune/") for f in files)  # Tune's own state, for --resume elsewhere
    # nothing was written to a local folder named after the URI
    assert not Path("s3:").exists() and not (root / "s3:").exists()

    # --resume on another machine: the local working copy is gone, the bucket has the study
    import shutil

    shutil.rmtree(root / "cache" / "studies" / "cloud")
    again = CliRunner().invoke(app, ["tune", str(space), "--resume"])
    assert again.exit_code == 0, again.output
    resumed = json.loads(S.read_text(f"{remote}/trials.json"))
    assert sorted(t["trial_id"] for t in resumed) == sorted(t["trial_id"] for t in trials)  # no trial rerun
    assert [t["epochs"] for t in resumed] == [t["epochs"] for t in trials]

    # a fresh study of the same name on the bucket is refused, not overwritten
    dup = CliRunner().invoke(app, ["tune", str(space)])
    assert dup.exit_code == 2 and "already exists" in dup.output

    shown = CliRunner().invoke(app, ["best", remote])
    assert shown.exit_code == 0 and trials[0]["trial_id"] in shown.output, shown.output

    out = CliRunner().invoke(app, ["export", f"{remote}/best", "--no-register"])
    assert out.exit_code == 0, out.output
    assert f"{remote}/best/checkpoint/export/student.onnx" in out.output
    side = json.loads(S.read_text(f"{remote}/best/checkpoint/export/student.json"))
    assert side["source_checkpoint"] == f"{remote}/best/checkpoint/best.pt"
    local = S.download_dir(f"{remote}/best/checkpoint/export", tmp_path / "export")
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(local / "student.onnx"))
    probs = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, side["input"]["clip_samples"]), np.float32)})
    assert probs[0].shape == (1, 2)
