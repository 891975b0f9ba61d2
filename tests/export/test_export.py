"""Student-only ONNX export: parity, graph contents, sidecar, registry, atomicity, evaluation."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from onnx import numpy_helper
from torch import nn

from raykd import export as E
from raykd.errors import UserError
from raykd.models.student import count_params


def float_initializers(path: Path) -> dict[str, np.ndarray]:
    """Learned tensors of the graph (int64 initializers are shape/axes constants)."""
    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}


# ----------------------------------------------------------------------------- checkpoint


def test_file_names_match_train():
    from raykd import train

    assert (E.BEST_FILE, E.CHECKPOINT_FORMAT) == (train.BEST_FILE, train.CHECKPOINT_FORMAT)  # one source: raykd.checkpoint


def test_resolve_checkpoint_accepts_every_layout(saved, tmp_path):
    best = saved.best
    assert E.resolve_checkpoint(best) == best  # the file
    assert E.resolve_checkpoint(best.parent) == best  # the checkpoint dir
    assert E.resolve_checkpoint(saved.run_dir) == best  # a run dir
    study_best = tmp_path / "runs" / "study" / "best"  # what tune.write_best leaves
    shutil.copytree(best.parent, study_best / "checkpoint")
    (study_best / "config.yaml").write_text("name: kws\n")
    assert E.resolve_checkpoint(study_best) == study_best / "checkpoint" / E.BEST_FILE


@pytest.mark.parametrize("make", ["missing", "empty", "study_root"])
def test_resolve_checkpoint_names_the_path(tmp_path, make):
    target = tmp_path / "nothing"
    if make != "missing":
        target.mkdir()
    if make == "study_root":
        (target / "best").mkdir()
    with pytest.raises(UserError, match=str(target)) as e:
        E.resolve_checkpoint(target)
    assert "\n" not in str(e.value)
    if make == "study_root":
        assert str(target / "best") in str(e.value)


def test_load_student_is_the_saved_student(saved):
    student, cfg, metrics = E.load_student(saved.run_dir)
    assert cfg == saved.cfg and metrics == saved.metrics
    assert not student.training
    want = saved.model.student.state_dict()
    got = student.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the checkpoint does hold projectors: the "student only" checks below are not vacuous
    state = torch.load(saved.best, weights_only=True)
    assert any(k.startswith("projectors.") for k in state["model"])


def test_load_student_rejects_foreign_file(tmp_path):
    bad = tmp_path / "best.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(UserError, match=str(bad)):
        E.load_student(bad)


# ----------------------------------------------------------------------------- the graph


@pytest.mark.parametrize("batch,frames", [(1, 101), (5, 101), (3, 64), (2, 250)])
def test_onnxruntime_matches_pytorch(saved, exported, batch, frames):
    assert exported.max_abs_diff <= 1e-4
    g = torch.Generator().manual_seed(batch * 1000 + frames)
    x = -6.0 + 4.0 * torch.randn(batch, saved.cfg.features.n_mels, frames, generator=g)
    session = E.ort_session(exported.onnx_path)
    got = session.run(["logits"], {"logmel": x.numpy()})[0]
    with torch.no_grad():
        want = saved.model.student(x)[0].numpy()
    assert got.shape == (batch, 2)
    assert np.abs(got - want).max() <= 1e-4


def test_graph_io_and_opset(saved, exported):
    model = onnx.load(str(exported.onnx_path))
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, dims(inp)) == ("logmel", ["batch", saved.cfg.features.n_mels, "frames"])
    assert (out.name, dims(out)[1]) == ("logits", 2)
    assert E.onnx_opset(model) >= 17


def expected_learned_shapes(student: nn.Module) -> list[tuple[int, ...]]:
    """What an eval-mode export of the student must hold: every conv/linear weight and bias,
    plus one bias per BatchNorm channel (BN folded into the conv before it: its scale goes
    into the weight, its shift becomes the conv's bias; BN running stats disappear)."""
    shapes = []
    for m in student.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            shapes += [tuple(p.shape) for p in m.parameters()]
        elif isinstance(m, nn.BatchNorm1d):
            shapes.append((m.num_features,))
    return sorted(shapes)


def test_graph_holds_the_student_and_nothing_else(saved, exported):
    student = saved.model.student
    learned = float_initializers(exported.onnx_path)
    assert sorted(a.shape for a in learned.values()) == expected_learned_shapes(student)
    bn_channels = sum(m.num_features for m in student.modules() if isinstance(m, nn.BatchNorm1d))
    assert sum(a.size for a in learned.values()) == count_params(student) - bn_channels
    assert exported.params == count_params(student)
    # no projector: none of its widths, no LayerNorm, no name from the projectors
    assert not [n for n, a in learned.items() if saved.projector_dims & set(a.shape)]
    assert not [n for n in learned if "projector" in n]
    ops = {n.op_type for n in onnx.load(str(exported.onnx_path)).graph.node}
    assert "LayerNormalization" not in ops and "BatchNormalization" not in ops
    # and the exported weights are the checkpoint's (one spot check, unfolded layer)
    np.testing.assert_array_equal(learned["student.classifier.weight"], student.classifier.weight.detach().numpy())


def test_sidecar(saved, exported):
    side = json.loads(exported.sidecar_path.read_text())
    f, cfg = saved.cfg.features, saved.cfg
    assert exported.sidecar_path == exported.onnx_path.with_name("student.json")
    assert {k: side[k] for k in ("sample_rate", "clip_seconds", "n_mels", "win_ms", "hop_ms")} == \
        {"sample_rate": 16000, "clip_seconds": 1.0, "n_mels": f.n_mels, "win_ms": f.win_ms, "hop_ms": f.hop_ms}
    assert side["labels"] == ["not_wakeword", "wakeword"]
    assert side["threshold"] == 0.4 == cfg.train.threshold
    assert side["params"] == count_params(saved.model.student)
    assert side["source_checkpoint"] == str(saved.best.resolve())
    assert side["metrics"] == saved.metrics
    assert side["opset"] == E.onnx_opset(onnx.load(str(exported.onnx_path)))
    assert side["feature"]["recipe"] == "log(mel + 1e-06)"
    mel = side["feature"]["melspectrogram"]
    assert (mel["n_fft"], mel["win_length"], mel["hop_length"], mel["n_mels"], mel["power"], mel["center"]) == \
        (400, 400, 160, f.n_mels, 2.0, True)
    assert side["input"]["frames_per_clip"] == 101


def test_registered_in_mlflow(saved, exported):
    from mlflow import MlflowClient

    assert exported.registered_version == 1
    c = MlflowClient(tracking_uri=saved.cfg.tracking.uri, registry_uri=saved.cfg.tracking.uri)
    v = c.get_model_version("kws-student", "1")
    run = c.get_run(v.run_id)
    assert run.data.tags["raykd.kind"] == "export"
    assert run.data.metrics["val_accuracy"] == 0.875
    assert run.data.metrics["parity_max_abs_diff"] == pytest.approx(exported.max_abs_diff)


# ----------------------------------------------------------------------------- failures leave the old export


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def previous(exported, tmp_path) -> Path:
    out = tmp_path / "export"
    shutil.copytree(exported.onnx_path.parent, out)
    return out


def test_failed_parity_keeps_previous_export(saved, previous, monkeypatch):
    before = snapshot(previous)
    monkeypatch.setattr(E, "PARITY_ATOL", -1.0)  # nothing passes
    with pytest.raises(E.ParityError, match="differ"):
        E.export_onnx(saved.run_dir, previous, register=False)
    assert snapshot(previous) == before  # same files, same bytes, no temp folder left


def test_corrupt_graph_fails_parity(saved, previous, monkeypatch):
    real = E.to_onnx

    def corrupt(*args, **kwargs):
        proto = real(*args, **kwargs)
        bias = next(i for i in proto.graph.initializer if i.name == "student.classifier.bias")
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1e-3, bias.name))
        return proto

    before = snapshot(previous)
    monkeypatch.setattr(E, "to_onnx", corrupt)
    with pytest.raises(E.ParityError):
        E.export_onnx(saved.run_dir, previous, register=False)
    assert snapshot(previous) == before


@pytest.mark.parametrize("opset", [16, 17])  # 17: torch 2.9 cannot convert ReduceMean down from 18
def test_unavailable_opset_is_refused_before_writing(saved, tmp_path, opset):
    with pytest.raises(UserError, match=f"opset {opset}"):
        E.export_onnx(saved.run_dir, tmp_path, opset=opset, register=False)
    assert list(tmp_path.iterdir()) == []


def test_export_into_a_file_is_one_line(saved):
    with pytest.raises(UserError, match="cannot create"):
        E.export_onnx(saved.best, saved.best / "export", register=False)  # `raykd export best.pt`'s default


# ----------------------------------------------------------------------------- evaluation


def write_clips(root: Path, n_pos: int, n_neg: int, samples: int, seed: int = 0) -> list[tuple[Path, int]]:
    """16-bit WAVs of exactly one clip: positives a harmonic glide in noise, negatives noise or silence."""
    g = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    out = []
    for i in range(n_pos + n_neg):
        label = int(i < n_pos)
        if label:
            f0 = g.uniform(100, 250)
            wave = 0.3 * np.sin(2 * np.pi * f0 * t * (1 + 0.5 * t)) + 0.02 * g.standard_normal(samples)
        else:
            wave = g.uniform(0, 0.2) * g.standard_normal(samples) * (i % 3 != 0)
        path = root / ("positive" if label else "negative") / f"clip{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, wave.astype(np.float32), 16000, subtype="PCM_16")
        out.append((path, label))
    return out


def reference_probs(student: nn.Module, features, clips: list[tuple[Path, int]]) -> np.ndarray:
    """PyTorch student on log-mel of the same files, read with soundfile directly."""
    from raykd.data.features import LogMel

    waves = torch.stack([torch.from_numpy(sf.read(p, dtype="float32")[0]) for p, _ in clips])
    with torch.no_grad():
        return student(LogMel(features)(waves))[0].softmax(-1)[:, 1].numpy()


def test_evaluate_onnx_matches_pytorch_reference(saved, exported, tmp_path):
    f = saved.cfg.features
    clips = write_clips(tmp_path / "data", n_pos=4, n_neg=6, samples=f.clip_samples)
    probs = reference_probs(saved.model.student, f, clips)
    labels = np.array([label for _, label in clips])
    # a threshold between two reference probabilities, so that some clips fire and some do not,
    # at the widest (relative) gap so that 1e-5 logit differences cannot flip a decision
    ps = np.sort(probs.astype(np.float64))
    k = max(range(2, 8), key=lambda i: ps[i + 1] / ps[i])
    threshold = float(np.sqrt(ps[k] * ps[k + 1]))
    assert 0 < threshold < 1 and ps[k + 1] / ps[k] > 1.01
    fired = probs >= threshold
    neg_hours = (labels == 0).sum() * f.clip_seconds / 3600
    want = {"clips": 10, "positives": 4, "negatives": 6, "threshold": threshold,
            "accuracy": float((fired == (labels == 1)).mean()),
            "frr": float((~fired & (labels == 1)).sum() / 4),
            "fa_per_hour": float((fired & (labels == 0)).sum() / neg_hours)}

    got = E.evaluate_onnx(exported.onnx_path.parent, tmp_path / "data", threshold=threshold)
    assert got == pytest.approx(want)

    # the same clips as a CSV manifest (path,label), given the .onnx file itself
    manifest = tmp_path / "data" / "clips.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([(p.relative_to(manifest.parent).as_posix(), label) for p, label in clips])
    assert E.evaluate_onnx(exported.onnx_path, manifest, threshold=threshold) == pytest.approx(want)


def test_evaluate_onnx_uses_sidecar_threshold(exported, saved, tmp_path):
    write_clips(tmp_path / "data", n_pos=2, n_neg=2, samples=saved.cfg.features.clip_samples)
    assert E.evaluate_onnx(exported.onnx_path.parent, tmp_path / "data")["threshold"] == 0.4


def test_evaluate_onnx_refuses_mismatched_sidecar(previous, tmp_path):
    onnx_path = previous / "student.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(UserError, match="checksum"):
        E.evaluate_onnx(previous, tmp_path)


@pytest.mark.parametrize("problem", ["no_negative_folder", "corrupt_wav"])
def test_evaluate_onnx_bad_data_is_one_line(exported, saved, tmp_path, problem):
    write_clips(tmp_path, n_pos=1, n_neg=1, samples=saved.cfg.features.clip_samples)
    if problem == "no_negative_folder":
        shutil.rmtree(tmp_path / "negative")
        culprit = tmp_path / "negative"
    else:
        culprit = tmp_path / "negative" / "clip1.wav"
        culprit.write_bytes(b"RIFF but not really a wav")
    with pytest.raises(UserError, match=str(culprit)) as e:
        E.evaluate_onnx(exported.onnx_path.parent, tmp_path)
    assert "\n" not in str(e.value)
