"""Student-only ONNX export: parity on real clips, graph contents, sidecar, registry, atomicity."""

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


# ----------------------------------------------------------------------------- the graphs


def dataset_waves(cfg) -> tuple[torch.Tensor, list[int]]:
    """Every clip of the run's real synthetic dataset (espeak-ng speech, near misses, noise), read
    with soundfile directly, and their labels."""
    root = Path(cfg.data.root)
    with open(root / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] != "stream"]  # clips, not the long streams
    waves = [torch.from_numpy(sf.read(root / r["path"], dtype="float32")[0]) for r in rows]
    return torch.stack(waves), [int(r["label"]) for r in rows]


def test_raw_audio_graph_matches_pytorch_on_real_clips(saved, exported):
    """student.onnx on the dataset's wav files = torchaudio LogMel + the student in PyTorch."""
    from raykd.data.features import LogMel

    waves, labels = dataset_waves(saved.cfg)
    assert len(waves) == 36 and 0 < sum(labels) < 36 and waves.abs().max() > 0.1  # real audio, both labels
    session = E.ort_session(exported.onnx_path)
    logmel, student = LogMel(saved.cfg.features), saved.model.student
    # every clip in one batch; one clip; the clips end to end plus an odd tail (36 s, one window)
    stream = torch.cat([waves.reshape(1, -1), waves[:1, :123]], 1)
    for x in (waves, waves[3:4], stream):
        got = session.run(["logits"], {"audio": x.numpy()})[0]
        with torch.no_grad():
            want = student(logmel(x))[0].numpy()
        assert got.shape == (x.shape[0], 2)
        assert np.abs(got - want).max() <= E.AUDIO_PARITY_ATOL
        p_got, p_want = torch.from_numpy(got).softmax(-1), torch.from_numpy(want).softmax(-1)
        assert (p_got - p_want).abs().max() <= 1e-4
    assert "clips of the dataset" in exported.parity_inputs  # the export checked real clips too
    assert exported.max_abs_diff <= E.AUDIO_PARITY_ATOL


def test_graph_front_end_is_training_logmel(saved):
    """The exportable front end (DFT convolution) computes training's LogMel on real clips."""
    from raykd.data.features import LogMel
    from raykd.export_graph import GraphLogMel

    waves, _ = dataset_waves(saved.cfg)
    logmel = LogMel(saved.cfg.features)
    with torch.no_grad():
        want, got = logmel(waves), GraphLogMel(logmel)(waves)
    assert got.shape == want.shape == (36, 40, 101)
    assert (got - want).abs().max() < 1e-3  # float32 rounding of a DFT vs an FFT, on log values -14..5


@pytest.mark.parametrize("batch,frames", [(1, 101), (5, 101), (3, 64), (2, 250)])
def test_logmel_graph_matches_pytorch(saved, exported, batch, frames):
    assert exported.logmel_max_abs_diff <= 1e-4
    g = torch.Generator().manual_seed(batch * 1000 + frames)
    x = -6.0 + 4.0 * torch.randn(batch, saved.cfg.features.n_mels, frames, generator=g)
    session = E.ort_session(exported.logmel_path)
    got = session.run(["logits"], {"logmel": x.numpy()})[0]
    with torch.no_grad():
        want = saved.model.student(x)[0].numpy()
    assert got.shape == (batch, 2)
    assert np.abs(got - want).max() <= 1e-4


def dims(v) -> list:
    return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]


def test_graph_io_and_opset(saved, exported):
    raw, mel = onnx.load(str(exported.onnx_path)), onnx.load(str(exported.logmel_path))
    (inp,), (out,) = raw.graph.input, raw.graph.output
    assert (inp.name, dims(inp)) == ("audio", ["batch", "samples"])
    assert (out.name, dims(out)[1]) == ("logits", 2)
    (inp,), (out,) = mel.graph.input, mel.graph.output
    assert (inp.name, dims(inp)) == ("logmel", ["batch", saved.cfg.features.n_mels, "frames"])
    assert (out.name, dims(out)[1]) == ("logits", 2)
    assert E.onnx_opset(raw) >= 17 and E.onnx_opset(mel) >= 17
    raw_ops = {n.op_type for n in raw.graph.node}
    assert {"Pad", "Conv", "Log"} <= raw_ops and "Log" not in {n.op_type for n in mel.graph.node}


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


def front_end_tensors(features) -> dict[str, np.ndarray]:
    """The raw-audio graph's fixed front end, computed here from torchaudio's own window and mel
    matrix: the windowed DFT basis (cos rows, then -sin rows) and the mel filterbank."""
    from raykd.data.features import LogMel

    mel = LogMel(features).mel
    n = mel.n_fft
    k, t = np.arange(n // 2 + 1)[:, None], np.arange(n)[None]
    window = mel.spectrogram.window.double().numpy()
    basis = np.concatenate([np.cos(2 * np.pi * k * t / n) * window, -np.sin(2 * np.pi * k * t / n) * window])
    return {"frontend.dft": basis[:, None, :], "frontend.mel": mel.mel_scale.fb.numpy().T[:, :, None]}


@pytest.mark.parametrize("graph", ["student.onnx", "student_logmel.onnx"])
def test_graph_holds_the_student_and_nothing_else(saved, exported, graph):
    """Initializers: the student's (BN folded), plus the front end in the raw-audio graph, plus
    two op constants (2.0 for the power, the log floor): no projector, no teacher."""
    student = saved.model.student
    learned = float_initializers(exported.onnx_path.parent / graph)
    scalars = sorted(float(a) for n, a in learned.items() if a.ndim == 0)
    learned = {n: a for n, a in learned.items() if a.ndim > 0}
    front = front_end_tensors(saved.cfg.features) if graph == "student.onnx" else {}
    assert scalars == ([float(np.float32(1e-6)), 2.0] if front else [])
    assert sorted(a.shape for a in learned.values()) == sorted(expected_learned_shapes(student) +
                                                               [a.shape for a in front.values()])
    bn_channels = sum(m.num_features for m in student.modules() if isinstance(m, nn.BatchNorm1d))
    front_size = sum(a.size for a in front.values())
    assert sum(a.size for a in learned.values()) == count_params(student) - bn_channels + front_size
    assert exported.params == count_params(student)
    for name, want in front.items():
        np.testing.assert_allclose(learned[name], want, rtol=0, atol=1e-6)
    # no projector: none of its widths, no LayerNorm, no name from the projectors
    assert not [n for n, a in learned.items() if n not in front and saved.projector_dims & set(a.shape)]
    assert not [n for n in learned if "projector" in n]
    ops = {n.op_type for n in onnx.load(str(exported.onnx_path.parent / graph)).graph.node}
    assert "LayerNormalization" not in ops and "BatchNormalization" not in ops and "STFT" not in ops
    # and the exported weights are the checkpoint's (one spot check, unfolded layer)
    np.testing.assert_array_equal(learned["student.classifier.weight"], student.classifier.weight.detach().numpy())


def test_sidecar(saved, exported):
    side = json.loads(exported.sidecar_path.read_text())
    f, cfg = saved.cfg.features, saved.cfg
    assert exported.sidecar_path == exported.onnx_path.with_name("student.json")
    assert side["input"] == {"name": "audio", "kind": "raw_audio", "shape": ["batch", "samples"], "dtype": "float32",
                             "sample_rate": 16000, "channels": 1, "range": [-1.0, 1.0], "clip_samples": 16000,
                             "min_samples": 400}
    assert {k: side[k] for k in ("sample_rate", "clip_seconds", "n_mels", "win_ms", "hop_ms")} == \
        {"sample_rate": 16000, "clip_seconds": 1.0, "n_mels": f.n_mels, "win_ms": f.win_ms, "hop_ms": f.hop_ms}
    assert side["labels"] == ["not_wakeword", "wakeword"]
    # this checkpoint predates the streaming metrics: train.threshold, with what was measured at it
    assert side["threshold"] == 0.4 == cfg.train.threshold
    assert side["operating_point"] == {"threshold": 0.4, "source": "train.threshold", "target_fa_per_hour": 0.5,
                                       "frr": 0.1, "fa_per_hour": 12.0}
    assert side["streaming"] == {"window_samples": 16000, "hop_ms": cfg.eval.hop_ms,
                                 "refractory_s": cfg.eval.refractory_s}
    assert side["params"] == count_params(saved.model.student)
    assert side["source_checkpoint"] == str(saved.best.resolve())
    assert side["metrics"] == saved.metrics
    assert side["opset"] == E.onnx_opset(onnx.load(str(exported.onnx_path)))
    assert side["onnx_sha256"] == E.file_sha256(exported.onnx_path)
    mel_side = side["logmel_model"]
    assert (mel_side["model"], mel_side["onnx_sha256"]) == ("student_logmel.onnx", E.file_sha256(exported.logmel_path))
    assert mel_side["input"]["shape"] == ["batch", f.n_mels, "frames"] and mel_side["input"]["frames_per_clip"] == 101
    assert side["parity"]["student.onnx"] == {"max_abs_diff": exported.max_abs_diff, "atol": E.AUDIO_PARITY_ATOL}
    assert side["feature"]["recipe"] == "log(mel + 1e-06)"
    mel = side["feature"]["melspectrogram"]
    assert (mel["n_fft"], mel["win_length"], mel["hop_length"], mel["n_mels"], mel["power"], mel["center"]) == \
        (400, 400, 160, f.n_mels, 2.0, True)


def test_sidecar_takes_the_threshold_at_target(loudness_export):
    """A checkpoint with the streaming metrics: its threshold at eval.target_fa_per_hour ships."""
    side = json.loads((loudness_export / "student.json").read_text())
    assert side["threshold"] == 0.5
    assert side["operating_point"] == {"threshold": 0.5, "source": "val_threshold_at_target",
                                       "target_fa_per_hour": 0.5, "frr": 0.05, "fa_per_hour": 0.4}


def test_operating_point_without_a_met_target(saved):
    """No threshold met the target (threshold_at_target above 1: nothing fires): train.threshold."""
    metrics = {**saved.metrics, "val_threshold_at_target": 1.0000001, "val_frr_at_target": 1.0}
    point = E.operating_point(saved.cfg, metrics)
    assert (point["threshold"], point["source"], point["frr"]) == (0.4, "train.threshold", 0.1)


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


@pytest.mark.parametrize("builder,tensor", [("audio_to_onnx", "frontend.mel"), ("to_onnx", "student.classifier.bias")])
def test_corrupt_graph_fails_parity(saved, previous, monkeypatch, builder, tensor):
    """A 1e-3 change to one tensor of either graph (the mel matrix included) fails the export."""
    real = getattr(E, builder)

    def corrupt(*args, **kwargs):
        proto = real(*args, **kwargs)
        t = next(i for i in proto.graph.initializer if i.name == tensor)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1e-3, t.name))
        return proto

    before = snapshot(previous)
    monkeypatch.setattr(E, builder, corrupt)
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
