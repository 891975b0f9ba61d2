"""Distillation losses: hard-label CE + logit KD + feature alignment, as named terms.

    total = ce + kd_weight * kd + feature_alignment_weight * align
    align = mean over aligned layers of align.<teacher>.<layer>

Teacher and student frame rates meet in exactly one place, `time_align`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F

from raykd.config import DistillConfig
from raykd.layer_keys import parse_projector_key

NORM_EPS = 1e-5  # teacher feature normalisation: sqrt(var + eps), as LayerNorm does


class TeacherOutputLike(Protocol):
    logits: torch.Tensor  # (B, 2)
    hidden: Mapping[int, torch.Tensor]  # layer -> (B, T_l, D_l)


def time_align(seq: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T_src, D) -> (B, frames, D) by adaptive average pooling over time.

    Output frame i averages source frames [floor(i*T_src/frames), ceil((i+1)*T_src/frames)),
    so a shorter target pools and a longer one repeats. Identity when T_src == frames.
    """
    if seq.shape[1] == frames:
        return seq
    return F.adaptive_avg_pool1d(seq.transpose(1, 2), frames).transpose(1, 2)


def layer_mapping(depth: int, layers: Sequence[int], n_taps: int,
                  explicit: Mapping[int, int] | None = None) -> dict[int, int]:
    """Teacher layer -> student tap by relative depth; ``explicit`` entries win.

    tap = round_half_up(layer / depth * (n_taps - 1)): layer 0 (CNN latents) -> tap 0, layer N
    (last block) -> the last tap, the student's penultimate layer. Integer arithmetic, so
    N=12, taps=4 gives {0: 0, 2: 1, 4: 1, 6: 2, 12: 3} with no float ties lost.
    """
    if n_taps < 1 or depth < 1:
        raise ValueError(f"layer_mapping: need depth >= 1 and n_taps >= 1, got {depth}, {n_taps}")
    explicit = dict(explicit or {})
    out: dict[int, int] = {}
    for layer in layers:
        if not 0 <= layer <= depth:
            raise ValueError(f"layer_mapping: layer {layer} outside 0..{depth}")
        tap = explicit[layer] if layer in explicit else (2 * layer * (n_taps - 1) + depth) // (2 * depth)
        if not 0 <= tap < n_taps:
            raise ValueError(f"layer_mapping: layer {layer} -> tap {tap} outside 0..{n_taps - 1}")
        out[layer] = tap
    return out


def kd_loss(student_logits: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
            weights: Sequence[float], T: float) -> torch.Tensor:
    """KL(p_teacher || p_student) at temperature T, times T^2 (Hinton et al.), batch mean.

    student_logits (B, C); teacher_logits: one (B, C) per teacher. Several teachers are
    combined into ONE target distribution, the weighted average of their softened
    probabilities p = sum_i w_i softmax(t_i / T) / sum_i w_i; the student then matches that
    mixture (not the average of per-teacher KLs, which would ask it to match each teacher
    separately). T^2 keeps the gradient scale independent of T.
    """
    if len(teacher_logits) != len(weights) or not teacher_logits:
        raise ValueError(f"kd_loss: {len(teacher_logits)} teacher logits, {len(weights)} weights")
    total_w = float(sum(weights))
    if total_w <= 0:
        raise ValueError(f"kd_loss: teacher weights {list(weights)} sum to {total_w} <= 0")
    target = sum(w * F.softmax(t.detach().float() / T, dim=-1) for w, t in zip(weights, teacher_logits))
    target = target / total_w
    log_q = F.log_softmax(student_logits.float() / T, dim=-1)
    return F.kl_div(log_q, target, reduction="batchmean") * (T * T)


def alignment_loss(student_feats: torch.Tensor, teacher_feats: torch.Tensor) -> torch.Tensor:
    """MSE between projected student features and the per-layer normalised teacher feature.

    Both (B, T, D) on the same frames. The teacher target is standardised per feature dim
    over batch x time, (t - mean) / sqrt(var + 1e-5), statistics without grad, so a layer
    with activations of scale 100 weighs as much as one of scale 0.1.
    """
    if student_feats.shape != teacher_feats.shape:
        raise ValueError(f"alignment_loss: student {tuple(student_feats.shape)} != "
                         f"teacher {tuple(teacher_feats.shape)}")
    with torch.no_grad():
        t = teacher_feats.float()
        mean = t.mean(dim=(0, 1), keepdim=True)
        var = t.var(dim=(0, 1), keepdim=True, unbiased=False)
        target = (t - mean) / torch.sqrt(var + NORM_EPS)
    return F.mse_loss(student_feats.float(), target)


class DistillLoss:
    """The whole training loss as an ordered dict of named terms (plain class, no parameters).

    Terms: ``ce``, ``kd``, ``align``, one ``align.<teacher>.<layer>`` per aligned key, ``total``.
    A term that is switched off is reported as 0.0, so every run logs the same names:
    ``distillation.enabled: false`` -> total = ce; ``feature_alignment_enabled: false`` ->
    total = ce + kd_weight * kd.
    """

    def __init__(self, dcfg: DistillConfig, teachers: Sequence[str]):
        self.cfg = dcfg
        self.teachers = list(teachers)
        if dcfg.teacher_weights is None:
            self.weights = {name: 1.0 for name in self.teachers}
        else:  # teachers not listed do not contribute soft targets
            self.weights = {n: float(dcfg.teacher_weights.get(n, 0.0)) for n in self.teachers}

    def __call__(self, student_logits: torch.Tensor, labels: torch.Tensor,
                 projected: Mapping[str, torch.Tensor], teacher_out: Mapping[str, TeacherOutputLike],
                 aligned_keys: Iterable[str] = ()) -> OrderedDict[str, torch.Tensor]:
        """
        student_logits: (B, 2); labels: (B,) int64.
        projected: "<teacher>.<layer>" -> projected student tap (B, T', D_layer).
        teacher_out: teacher name -> output with .logits (B, 2) and .hidden {layer: (B, T, D)}.
        aligned_keys: every "<teacher>.<layer>" of the run (e.g. the tap map), so names stay
            fixed even when alignment is off; defaults to the keys of ``projected``.
            Keys are ``projector_key(teacher, layer)``.
        """
        d = self.cfg
        zero = student_logits.new_zeros(())
        keys = list(dict.fromkeys([*aligned_keys, *projected]))
        terms: OrderedDict[str, torch.Tensor] = OrderedDict()
        terms["ce"] = F.cross_entropy(student_logits, labels)
        terms["kd"] = zero
        terms["align"] = zero
        for key in keys:
            terms[f"align.{key}"] = zero

        if d.enabled:
            used = [n for n in self.teachers if self.weights[n] > 0 and n in teacher_out]
            if used:
                terms["kd"] = kd_loss(student_logits, [teacher_out[n].logits for n in used],
                                      [self.weights[n] for n in used], d.temperature)
        if d.enabled and d.feature_alignment_enabled and keys:
            per_layer = []
            for key in keys:
                teacher, layer = parse_projector_key(key)
                s = projected[key]
                t = time_align(teacher_out[teacher].hidden[layer], s.shape[1])
                terms[f"align.{key}"] = alignment_loss(s, t)
                per_layer.append(terms[f"align.{key}"])
            terms["align"] = torch.stack(per_layer).mean()

        if not d.enabled:
            terms["total"] = terms["ce"]
        else:
            terms["total"] = (terms["ce"] + d.kd_weight * terms["kd"]
                              + d.feature_alignment_weight * terms["align"])
        return terms
