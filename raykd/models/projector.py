"""Learnable projectors: student tap features (dim 64) -> one teacher layer's feature space.

Trained with the student, never exported (the exported graph is ExportableStudent alone).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from raykd.layer_keys import projector_key



class Projector(nn.Module):
    """Linear(in -> hidden) -> LayerNorm -> ReLU -> Linear(hidden -> out); (B, T, in) -> (B, T, out)."""

    def __init__(self, in_dim: int = 64, hidden: int = 128, out_dim: int = 768):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectorDict(nn.ModuleDict):
    """A ModuleDict keyed "<teacher>.<layer>".

    torch forbids "." in module names (it separates state_dict paths), so the dot is stored
    as ":" inside and every public access (``[]``, ``in``, iteration, ``items()``) uses the
    dotted key. State-dict paths read ``projectors.wav2vec2:4.net.0.weight``.
    """

    @staticmethod
    def _inner(key: str) -> str:
        return key.replace(".", ":")

    @staticmethod
    def _outer(key: str) -> str:
        return key.replace(":", ".")

    def __getitem__(self, key: str) -> nn.Module:
        return super().__getitem__(self._inner(key))

    def __setitem__(self, key: str, module: nn.Module) -> None:
        super().__setitem__(self._inner(key), module)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(self._inner(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(self._inner(key))

    def __iter__(self) -> Iterator[str]:
        return (self._outer(k) for k in super().__iter__())

    def keys(self):  # type: ignore[override]
        return [self._outer(k) for k in super().keys()]

    def items(self):  # type: ignore[override]
        return [(self._outer(k), v) for k, v in super().items()]


def build_projectors(aligned: dict[str, list[int]], layer_dims: dict[str, dict[int, int]],
                     width: int, hidden: int) -> ProjectorDict:
    """One Projector(width -> hidden -> D_layer) per aligned teacher layer, keyed "<teacher>.<layer>".

    aligned: teacher -> layers (``RaykdConfig.aligned_layers()``); layer_dims: teacher -> layer
    -> feature dim (``Teacher.layer_dim``).
    """
    out = ProjectorDict()
    for teacher, layers in aligned.items():
        for layer in layers:
            out[projector_key(teacher, layer)] = Projector(width, hidden, layer_dims[teacher][layer])
    return out


class StudentWithProjectors(nn.Module):
    """What is trained and DDP-synchronised: the student and one projector per aligned layer.

    The projectors are applied in `forward` so DDP sees (and all-reduces) their gradients.
    Only `student` is ever exported.
    """

    def __init__(self, student: nn.Module, projectors: nn.ModuleDict, tap_of: dict[str, int]):
        super().__init__()
        self.student = student
        self.projectors = projectors
        self.tap_of = tap_of  # "<teacher>.<layer>" -> student tap index

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """feats (B, n_mels, T) -> logits (B, 2), {key: projected (B, T', D_teacher)}."""
        logits, taps = self.student(feats)
        projected = {
            key: proj(taps[self.tap_of[key]].transpose(1, 2)) for key, proj in self.projectors.items()
        }
        return logits, projected
