"""A small fixed distillation example: student logits/taps, labels, two teachers' outputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


@pytest.fixture
def example() -> SimpleNamespace:
    """B=4 clips; teacher 'w2v' (layers 0, 2; 8 frames) and 'conf' (layer 3; 6 frames); student 4 frames."""
    g = torch.Generator().manual_seed(0)
    B = 4

    def r(*shape, scale=1.0, shift=0.0):
        return scale * torch.randn(*shape, generator=g) + shift

    teachers = {
        "w2v": SimpleNamespace(logits=r(B, 2, scale=2.0),
                               hidden={0: r(B, 8, 3, scale=50.0, shift=7.0), 2: r(B, 8, 5, scale=0.01)}),
        "conf": SimpleNamespace(logits=r(B, 2, scale=2.0), hidden={3: r(B, 6, 5, scale=3.0, shift=-1.0)}),
    }
    projected = {  # projected student taps (B, T'=4, D_layer), leaf tensors so gradients can be checked
        "w2v.0": r(B, 4, 3).requires_grad_(),
        "w2v.2": r(B, 4, 5).requires_grad_(),
        "conf.3": r(B, 4, 5).requires_grad_(),
    }
    return SimpleNamespace(
        student_logits=r(B, 2).requires_grad_(),
        labels=torch.tensor([1, 0, 0, 1]),
        teachers=teachers,
        projected=projected,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors on a shared 2-core box: extra intra-op threads only spin."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
