"""TinyConv student, ExportableStudent and the projectors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from raykd.config import StudentConfig
from raykd.models.projector import Projector, build_projectors, projector_key
from raykd.models.student import ExportableStudent, TinyConv, build_student, count_params

N_MELS, T = 40, 151  # 1.5 s at a 10 ms hop, centred STFT


def test_default_student_is_a_few_tens_of_thousands_of_params():
    n = count_params(build_student(StudentConfig(), N_MELS))
    assert 10_000 <= n <= 50_000
    # count_params counts every parameter, BatchNorm affine ones included
    assert n == sum(p.numel() for p in TinyConv(N_MELS).parameters())


def test_too_big_student_is_refused_with_the_key():
    with pytest.raises(ValueError, match=r"student\.max_params 20,000"):
        build_student(StudentConfig(max_params=20_000), N_MELS)
    with pytest.raises(ValueError, match="student.max_params"):
        build_student(StudentConfig(width=128), N_MELS)


@pytest.mark.parametrize("blocks", [2, 4, 5])
def test_taps_shapes_and_last_tap_is_penultimate(blocks):
    student = build_student(StudentConfig(blocks=blocks), N_MELS).eval()
    feats = torch.randn(3, N_MELS, T)
    logits, taps = student(feats)
    assert logits.shape == (3, 2)
    assert len(taps) == blocks
    frames = math.ceil(T / 2)  # stride-2 stem: 20 ms frames like the teachers
    assert all(t.shape == (3, 64, frames) for t in taps)
    # the classifier sees nothing but the mean-pooled last tap
    torch.testing.assert_close(logits, student.classifier(taps[-1].mean(dim=-1)))
    # taps are distinct block outputs, not one tensor repeated
    assert not torch.equal(taps[0], taps[-1])


def test_student_trains_end_to_end():
    torch.manual_seed(0)
    student = build_student(StudentConfig(), N_MELS)
    logits, taps = student(torch.randn(4, N_MELS, T))
    (logits.sum() + taps[0].mean()).backward()
    assert all(p.grad is not None for p in student.parameters())


def test_exportable_student_holds_no_projector():
    student = build_student(StudentConfig(), N_MELS)
    projectors = build_projectors({"wav2vec2": [2, 4]}, {"wav2vec2": {2: 768, 4: 768}}, 64, 128)
    training = nn.ModuleDict({"student": student, "projectors": projectors})  # what training holds
    exported = ExportableStudent(training["student"]).eval()
    keys = set(exported.state_dict())
    assert keys == {f"student.{k}" for k in student.state_dict()}
    assert not any("proj" in k or "net." in k for k in keys)
    assert count_params(exported) == count_params(student) < count_params(training)
    feats = torch.randn(2, N_MELS, T)
    student.eval()
    torch.testing.assert_close(exported(feats), student(feats)[0])


def test_projector_is_linear_layernorm_relu_linear():
    proj = Projector(64, 32, 768)
    kinds = [type(m) for m in proj.net]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    assert (proj.net[0].in_features, proj.net[0].out_features, proj.net[3].out_features) == (64, 32, 768)
    x = torch.randn(2, 7, 64)
    y = proj(x)
    assert y.shape == (2, 7, 768)
    ref = proj.net[3](torch.relu(nn.functional.layer_norm(proj.net[0](x), (32,), proj.net[1].weight,
                                                          proj.net[1].bias)))
    torch.testing.assert_close(y, ref)


def test_build_projectors_keyed_by_teacher_and_layer():
    aligned = {"wav2vec2": [0, 2, 6], "conformer": [3]}
    dims = {"wav2vec2": {0: 512, 2: 768, 6: 768}, "conformer": {3: 256}}
    projs = build_projectors(aligned, dims, width=64, hidden=32)
    assert list(projs) == ["wav2vec2.0", "wav2vec2.2", "wav2vec2.6", "conformer.3"]
    assert [k for k, _ in projs.items()] == list(projs.keys()) == list(projs)
    assert projector_key("conformer", 3) in projs and "conformer.4" not in projs
    assert projs["wav2vec2.0"].net[3].out_features == 512
    assert projs["conformer.3"].net[3].out_features == 256
    assert all(p.net[0].in_features == 64 and p.net[0].out_features == 32 for p in projs.values())
    # state dicts round-trip (checkpoints) and DDP-style parameter walks see every projector
    again = build_projectors(aligned, dims, width=64, hidden=32)
    again.load_state_dict(projs.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), projs.parameters()))
    assert len(list(projs.parameters())) == 4 * 6
