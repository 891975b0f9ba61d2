"""Tiny random-initialised HF teachers saved to disk, loaded back the real way (from_pretrained)."""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ConformerConfig, Wav2Vec2ConformerModel, Wav2Vec2Model

TINY = dict(
    hidden_size=16, num_attention_heads=2, intermediate_size=32,
    conv_dim=(8, 8, 8, 8, 8, 8, 12),  # last conv width != hidden_size, so layer 0's dim is distinct
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    mask_time_prob=0.0, layerdrop=0.0,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core box: several intra-op threads spin and run 10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_teacher_dirs(tmp_path_factory) -> dict[str, str]:
    """kind -> local dir of a saved tiny model: wav2vec2 with 12 blocks, conformer with 3."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    models = {
        "wav2vec2": Wav2Vec2Model(Wav2Vec2Config(num_hidden_layers=12, **TINY)),
        "conformer": Wav2Vec2ConformerModel(
            Wav2Vec2ConformerConfig(num_hidden_layers=3, conv_depthwise_kernel_size=7, **TINY)),
    }
    dirs = {}
    for kind, model in models.items():
        d = root / kind
        model.save_pretrained(d)
        dirs[kind] = str(d)
    return dirs


@pytest.fixture
def waves() -> torch.Tensor:
    """(3, 8000) half-second clips at 16 kHz, deliberately not zero-mean / unit-variance."""
    g = torch.Generator().manual_seed(1)
    return 0.3 * torch.randn(3, 8000, generator=g) + torch.linspace(-0.5, 0.5, 3)[:, None]


def tone_set(n: int, seed: int, samples: int = 4000):
    """Synthetic WaveformSet: label 1 = a 1.0-1.5 kHz tone in noise, label 0 = noise alone."""
    import math

    from raykd.data.dataset import WaveformSet

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    t = torch.arange(samples) / 16000
    freq = 1000 + 500 * torch.rand(n, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    waves = 0.3 * torch.randn(n, samples, generator=g) + labels[:, None] * torch.sin(2 * math.pi * freq * t + phase)
    ids = [f"clip{i}" for i in range(n)]
    return WaveformSet(waves.float(), labels.long(), ids, ids)


@pytest.fixture(scope="session")
def tone_data():
    """(train 128 clips, val 48 clips) of 0.25 s, balanced."""
    return tone_set(128, seed=0), tone_set(48, seed=1)
