"""Losses against hand computations with plain torch ops (and a few literal golden numbers)."""

from __future__ import annotations

import math

import pytest
import torch

from raykd.config import DistillConfig
from raykd.distill.losses import DistillLoss, alignment_loss, kd_loss, layer_mapping, time_align

KEYS = ["w2v.0", "w2v.2", "conf.3"]
TERM_NAMES = ["ce", "kd", "align", "align.w2v.0", "align.w2v.2", "align.conf.3", "total"]


# ----------------------------------------------------------------------------- reference maths


def ref_log_softmax(x: torch.Tensor) -> torch.Tensor:
    return x - torch.log(torch.exp(x).sum(-1, keepdim=True))


def ref_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -ref_log_softmax(logits)[torch.arange(len(labels)), labels].mean()


def ref_kd(student: torch.Tensor, teachers: list[torch.Tensor], weights: list[float], T: float) -> torch.Tensor:
    p = sum(w * torch.exp(ref_log_softmax(t / T)) for w, t in zip(weights, teachers)) / sum(weights)
    return (p * (torch.log(p) - ref_log_softmax(student / T))).sum(-1).mean() * T * T


def ref_align(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    mu = t.mean(dim=(0, 1))
    sd = torch.sqrt(((t - mu) ** 2).mean(dim=(0, 1)) + 1e-5)
    return ((s - (t - mu) / sd) ** 2).mean()


def pool_8_to_4(t: torch.Tensor) -> torch.Tensor:
    return (t[:, 0::2] + t[:, 1::2]) / 2


def pool_6_to_4(t: torch.Tensor) -> torch.Tensor:
    # adaptive windows [0,2) [1,3) [3,5) [4,6)
    return torch.stack([t[:, a:b].mean(1) for a, b in ((0, 2), (1, 3), (3, 5), (4, 6))], dim=1)


# ----------------------------------------------------------------------------- time_align


def test_time_align_by_hand():
    x = torch.tensor([[[0.0, 10.0], [2.0, 20.0], [4.0, 30.0], [8.0, 40.0]]])  # (1, 4, 2)
    assert torch.equal(time_align(x, 2), torch.tensor([[[1.0, 15.0], [6.0, 35.0]]]))
    assert torch.equal(time_align(x[:, :3], 2), torch.tensor([[[1.0, 15.0], [3.0, 25.0]]]))
    # upsampling repeats: 2 -> 4 frames
    assert torch.equal(time_align(x[:, :2], 4), x[:, [0, 0, 1, 1]])
    assert time_align(x, 4) is x
    y = torch.randn(2, 6, 5)
    torch.testing.assert_close(time_align(y, 4), pool_6_to_4(y))


# ----------------------------------------------------------------------------- layer_mapping


def test_layer_mapping_by_relative_depth():
    # tap = round_half_up(layer / 12 * 3): 2 -> 0.5 -> 1, 6 -> 1.5 -> 2; last layer -> last tap
    assert layer_mapping(12, [0, 2, 4, 6, 12], 4, None) == {0: 0, 2: 1, 4: 1, 6: 2, 12: 3}
    assert layer_mapping(3, [0, 1, 2, 3], 4, None) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert layer_mapping(12, [9, 10, 11], 2, None) == {9: 1, 10: 1, 11: 1}
    assert layer_mapping(4, [1, 2], 2, None) == {1: 0, 2: 1}


def test_layer_mapping_explicit_wins_and_errors():
    assert layer_mapping(12, [0, 2, 4, 6, 12], 4, {6: 0, 12: 1}) == {0: 0, 2: 1, 4: 1, 6: 0, 12: 1}
    with pytest.raises(ValueError, match="layer 13 outside 0..12"):
        layer_mapping(12, [13], 4, None)
    with pytest.raises(ValueError, match="tap 4 outside 0..3"):
        layer_mapping(12, [2], 4, {2: 4})


# ----------------------------------------------------------------------------- kd_loss


def test_kd_literal_golden_number():
    # p_teacher = softmax([2 ln 3, 0] / 2) = [3/4, 1/4]; q_student = [1/2, 1/2]
    got = kd_loss(torch.zeros(1, 2), [torch.tensor([[2 * math.log(3.0), 0.0]])], [1.0], T=2.0)
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() == pytest.approx(0.5232481, rel=1e-6)
    assert kd_loss(torch.ones(3, 2), [torch.ones(3, 2)], [1.0], T=4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_two_teachers_mix_soft_targets(example):
    s, (t1, t2) = example.student_logits, (example.teachers["w2v"].logits, example.teachers["conf"].logits)
    got = kd_loss(s, [t1, t2], [1.0, 3.0], T=3.0)
    torch.testing.assert_close(got, ref_kd(s, [t1, t2], [1.0, 3.0], 3.0))
    # a mixture of targets, not a mixture of per-teacher losses
    avg_of_losses = (ref_kd(s, [t1], [1.0], 3.0) + 3 * ref_kd(s, [t2], [1.0], 3.0)) / 4
    assert not torch.allclose(got, avg_of_losses, rtol=1e-3)
    # weights are relative
    torch.testing.assert_close(kd_loss(s, [t1, t2], [0.5, 1.5], T=3.0), got)
    got.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        kd_loss(s, [t1], [0.0], T=3.0)


# ----------------------------------------------------------------------------- alignment_loss


def test_alignment_loss_by_hand_and_scale_free(example):
    s = example.projected["w2v.0"]
    t = pool_8_to_4(example.teachers["w2v"].hidden[0]).requires_grad_()
    got = alignment_loss(s, t)
    torch.testing.assert_close(got, ref_align(s, t.detach()))
    # a teacher layer 1000x larger and shifted weighs the same
    torch.testing.assert_close(alignment_loss(s, 1000 * t + 5), got, rtol=1e-4, atol=1e-5)
    got.backward()
    assert s.grad is not None and t.grad is None  # statistics and target carry no gradient
    with pytest.raises(ValueError, match="student"):
        alignment_loss(s, t[:, :3])


# ----------------------------------------------------------------------------- DistillLoss


def cfg(**kw) -> DistillConfig:
    base = dict(alignment_layers={"w2v": [0, 2], "conf": [3]}, temperature=2.0, kd_weight=0.5,
                feature_alignment_weight=0.1, teacher_weights={"w2v": 1.0, "conf": 3.0})
    return DistillConfig(**{**base, **kw})


def run(example, dcfg, teachers=None, projected=None):
    loss = DistillLoss(dcfg, ["w2v", "conf"])
    return loss(example.student_logits, example.labels,
                example.projected if projected is None else projected,
                example.teachers if teachers is None else teachers, KEYS)


def test_distill_loss_terms_against_hand_computation(example):
    terms = run(example, cfg())
    assert list(terms) == TERM_NAMES
    s, y, tch, pr = example.student_logits, example.labels, example.teachers, example.projected
    ce = ref_ce(s, y)
    kd = ref_kd(s, [tch["w2v"].logits, tch["conf"].logits], [1.0, 3.0], 2.0)
    per = {
        "w2v.0": ref_align(pr["w2v.0"], pool_8_to_4(tch["w2v"].hidden[0])),
        "w2v.2": ref_align(pr["w2v.2"], pool_8_to_4(tch["w2v"].hidden[2])),
        "conf.3": ref_align(pr["conf.3"], pool_6_to_4(tch["conf"].hidden[3])),
    }
    align = sum(per.values()) / 3
    for name, ref in [("ce", ce), ("kd", kd), ("align", align)] + [(f"align.{k}", v) for k, v in per.items()]:
        torch.testing.assert_close(terms[name], ref, msg=name)
    torch.testing.assert_close(terms["total"], ce + 0.5 * kd + 0.1 * align)
    # golden numbers of this fixed example (seeded fixture), so a silent change shows up
    assert [terms[n].item() for n in ("ce", "kd", "align", "total")] == pytest.approx(GOLDEN, abs=2e-4)
    terms["total"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pr.values())


GOLDEN = [1.2789, 0.1943, 1.9984, 1.5759]  # ce, kd, align, total = ce + 0.5 kd + 0.1 align


def test_distillation_off_is_plain_cross_entropy(example):
    terms = run(example, cfg(enabled=False), teachers={}, projected={})
    assert list(terms) == TERM_NAMES
    assert torch.equal(terms["total"], terms["ce"])
    torch.testing.assert_close(terms["ce"], ref_ce(example.student_logits, example.labels))
    assert all(terms[n].item() == 0.0 for n in TERM_NAMES if n not in ("ce", "total"))


def test_alignment_off_is_ce_plus_kd(example):
    terms = run(example, cfg(feature_alignment_enabled=False), projected={})
    assert list(terms) == TERM_NAMES
    assert terms["kd"].item() > 0
    torch.testing.assert_close(terms["total"], terms["ce"] + 0.5 * terms["kd"])
    assert all(terms[n].item() == 0.0 for n in TERM_NAMES if n.startswith("align"))


def test_teacher_weights_none_is_equal_and_unlisted_teacher_is_left_out(example):
    s, tch = example.student_logits, example.teachers
    equal = run(example, cfg(teacher_weights=None))["kd"]
    torch.testing.assert_close(equal, ref_kd(s, [tch["w2v"].logits, tch["conf"].logits], [1.0, 1.0], 2.0))
    only_w2v = run(example, cfg(teacher_weights={"w2v": 2.0}))["kd"]
    torch.testing.assert_close(only_w2v, ref_kd(s, [tch["w2v"].logits], [1.0], 2.0))
