"""TinyConv: the wakeword student, a 1-D depthwise-separable conv net on log-mel frames.

Input (B, n_mels, T) at a 10 ms hop. A stride-2 stem brings it to 20 ms frames, close to the
teachers' frame rate (time_align in distill/losses.py does the exact match). Every block's
output (B, width, T') is a tap for feature alignment; the last tap is the penultimate layer,
the one just before mean pooling and the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from raykd.config import StudentConfig

NUM_CLASSES = 2


def count_params(module: nn.Module) -> int:
    """All parameters (trainable or not) of a module."""
    return sum(p.numel() for p in module.parameters())


class SeparableBlock(nn.Module):
    """Depthwise conv (dilated) -> BN -> ReLU -> pointwise conv -> BN, residual, ReLU.

    (B, C, T) -> (B, C, T). Dilation widens the receptive field at no parameter cost: a
    "hey sirius" lasts ~0.8 s = 40 frames of 20 ms, more than undilated k=5 convs can see.
    """

    def __init__(self, width: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.depthwise = nn.Conv1d(width, width, kernel_size, padding=pad, dilation=dilation,
                                   groups=width, bias=False)
        self.bn1 = nn.BatchNorm1d(width)
        self.pointwise = nn.Conv1d(width, width, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.depthwise(x)))
        y = self.bn2(self.pointwise(self.drop(y)))
        # An even kernel with dilation loses a frame to padding; keep the residual aligned.
        return self.act(x[..., : y.shape[-1]] + y)


class TinyConv(nn.Module):
    """(B, n_mels, T) log-mel -> logits (B, 2), taps [(B, width, T')] * blocks, T' = ceil(T / 2)."""

    def __init__(self, n_mels: int, width: int = 64, blocks: int = 4, kernel_size: int = 5,
                 dropout: float = 0.1):
        super().__init__()
        self.width, self.n_taps = width, blocks
        self.stem = nn.Sequential(
            nn.Conv1d(n_mels, width, kernel_size, stride=2, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        # Dilations 1, 2, 4, 8, 1, 2, ...: receptive field ~1.3 s with 4 blocks of k=5.
        self.blocks = nn.ModuleList(
            SeparableBlock(width, kernel_size, 2 ** (i % 4), dropout) for i in range(blocks))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, NUM_CLASSES)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(feats)
        taps = []
        for block in self.blocks:
            x = block(x)
            taps.append(x)
        logits = self.classifier(self.drop(x.mean(dim=-1)))
        return logits, taps


class ExportableStudent(nn.Module):
    """Inference graph: the student alone, logits only (no taps, no projectors) for ONNX."""

    def __init__(self, student: TinyConv):
        super().__init__()
        self.student = student

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, n_mels, T) -> logits (B, 2)."""
        return self.student(feats)[0]


def build_student(scfg: StudentConfig, n_mels: int) -> TinyConv:
    """The configured TinyConv; a size above ``student.max_params`` is a config error."""
    student = TinyConv(n_mels, scfg.width, scfg.blocks, scfg.kernel_size, scfg.dropout)
    n = count_params(student)
    if n > scfg.max_params:
        raise ValueError(f"student: {n:,} parameters > student.max_params {scfg.max_params:,} "
                         f"(width {scfg.width}, blocks {scfg.blocks}, n_mels {n_mels})")
    return student
