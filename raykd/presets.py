"""The tiny project: a complete, small raykd config that the tests, the benchmarks and smoke
runs share (real espeak-ng data, small teachers built from architecture configs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_TEACHER = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
                "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def tiny_config(root: Path, **over: Any) -> dict[str, Any]:
    """A complete, small raykd config as a dict (12-block wav2vec2 so layers mean what the guide says)."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "cache_dir": str(root / "cache"),
        "storage_path": str(root / "runs"),
        "data": {"root": str(root / "data"),
                 # 4 English voices train; German (val) and Scottish English (test) are held out
                 "synth": {"voices": ["en-us", "en-gb-x-rp", "en", "en-029", "de", "en-gb-scotland"],
                           "variants": ["m1", "f2", "m3"], "speakers": 12,
                           "val_families": ["germanic"], "test_families": ["en-scotland"],
                           "positives_per_speaker": 8, "near_misses_per_speaker": 6, "other_per_speaker": 2,
                           "nonspeech_per_speaker": 2, "val_fraction": 0.25, "test_fraction": 0.15,
                           "stream_minutes": 1.0}},
        "teachers": {
            "wav2vec2": {"kind": "wav2vec2", "arch": {**TINY_TEACHER, "num_hidden_layers": 12},
                         "finetune": {"epochs": 2, "lr": 0.002}},
            "conformer": {"kind": "conformer", "arch": {**TINY_TEACHER, "num_hidden_layers": 2,
                                                        "conv_depthwise_kernel_size": 7},
                          "finetune": {"epochs": 2, "lr": 0.002}},
        },
        "train": {"epochs": 6, "batch_size": 16, "lr": 0.01},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "tests"},
    }
    for key, value in over.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg
