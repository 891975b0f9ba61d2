"""A trained-looking best.pt written the way train.py writes it, and one registered export of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from raykd.config import RaykdConfig, config_from_dict

# Teacher feature dims and projector width chosen to appear nowhere in the student
# (n_mels 40, width 64, 2 classes, kernel 5): any of them in the ONNX graph is a projector.
TEACHER_DIMS = {"wav2vec2": {2: 96, 12: 96}, "conformer": {3: 80}}
PROJECTOR_HIDDEN = 48
BEST_METRICS = {"epoch": 3, "val_accuracy": 0.875, "val_frr": 0.1, "val_fa_per_hour": 12.0,
                "val_loss": 0.31, "status": "completed"}


# A small real dataset (espeak-ng, 4 speakers, about a second to make): the export's parity
# check runs on its clips, and the eval tests build their audio from them.
# Held-out families as in every synthetic dataset: german voices in val, Scottish English in test.
SMALL_SYNTH = {"voices": ["en-us", "en-gb-x-rp", "de", "en-gb-scotland"], "variants": ["m1", "f2"], "speakers": 4,
               "val_families": ["germanic"], "test_families": ["en-scotland"], "stream_minutes": 0.25,
               "positives_per_speaker": 3, "near_misses_per_speaker": 2, "other_per_speaker": 2,
               "nonspeech_per_speaker": 2, "workers": 1}


def tiny_config(root: Path) -> RaykdConfig:
    """Default student (what ships) with two teachers and three aligned layers; all paths in root."""
    return config_from_dict({
        "name": "kws", "seed": 3, "cache_dir": str(root / "cache"), "storage_path": str(root / "runs"),
        "data": {"root": str(root / "data"), "synth": SMALL_SYNTH},
        "features": {"clip_seconds": 1.0},
        "teachers": {"wav2vec2": {"kind": "wav2vec2"},
                     "conformer": {"kind": "conformer", "arch": {"num_hidden_layers": 4}}},
        "distillation": {"alignment_layers": {"wav2vec2": [2, 12], "conformer": [3]},
                         "projector_hidden": PROJECTOR_HIDDEN},
        "train": {"threshold": 0.4},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "raykd-test"},
    })


def randomise(model: nn.Module, seed: int) -> None:
    """Weights and BatchNorm statistics away from their init, as after training (BN folding then matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(0.5 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.num_batches_tracked.fill_(100)


@dataclass
class Saved:
    cfg: RaykdConfig
    model: nn.Module  # StudentWithProjectors, eval mode
    run_dir: Path  # holds checkpoint/{checkpoint.pt, best.pt}
    best: Path
    metrics: dict  # the best epoch's, as saved
    projector_dims: set[int]  # projector hidden and teacher widths: none may be in the graph


def write_run(root: Path, init: Callable[[nn.Module, int], None] = randomise,
              metrics: dict | None = None) -> Saved:
    """A run dir as train.finish leaves it, the checkpoint written by train.save_checkpoint;
    `init(model, seed)` sets the weights, `metrics` are the best epoch's (default BEST_METRICS)."""
    from raykd.checkpoint import BEST_FILE
    from raykd.data.synth import synthesize
    from raykd.distill.losses import layer_mapping
    from raykd.models.projector import StudentWithProjectors, build_projectors, projector_key
    from raykd.models.student import build_student
    from raykd.train import Divergence, save_checkpoint

    metrics = dict(metrics or BEST_METRICS)
    cfg = tiny_config(root)
    synthesize(cfg)
    torch.manual_seed(cfg.seed)
    aligned = cfg.aligned_layers()
    depth = {"wav2vec2": 12, "conformer": 4}
    mapping = {n: layer_mapping(depth[n], layers, cfg.student.blocks) for n, layers in aligned.items()}
    tap_of = {projector_key(n, l): tap for n, m in mapping.items() for l, tap in m.items()}
    projectors = build_projectors(aligned, TEACHER_DIMS, cfg.student.width, cfg.distillation.projector_hidden)
    model = StudentWithProjectors(build_student(cfg.student, cfg.features.n_mels), projectors, tap_of)
    init(model, cfg.seed)
    model.eval()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = root / "runs" / "kws-train" / "checkpoint"
    ckpt.mkdir(parents=True)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(ckpt, cfg, model, optimizer, Divergence(10.0, 20), 3, [metrics], dict(metrics),
                    best_state, mapping)
    dims = {PROJECTOR_HIDDEN} | {d for layers in TEACHER_DIMS.values() for d in layers.values()}
    return Saved(cfg, model, ckpt.parent, ckpt / BEST_FILE, metrics, dims)


# ----------------------------------------------------------------------------- a detector known by hand

# The loudness detector's "wakeword" is loud broadband sound: a frame is loud when its mean
# log-mel is >= LOUD_LOG + 1 and quiet when <= LOUD_LOG (white noise of RMS 0.3: about 3;
# real espeak speech at 0.05 of its level: below -4). The wakeword probability of a window is
# sigmoid(GAIN * (loud fraction - 0.5)): at threshold 0.5 it fires once half the window is loud.
LOUD_LOG, GAIN = 0.0, 40.0
ENERGY_METRICS = {**BEST_METRICS, "val_frr_at_target": 0.05, "val_threshold_at_target": 0.5,
                  "val_fa_per_hour_at_target": 0.4}


def loudness_detector(model: nn.Module, seed: int) -> None:
    """Student weights that compute the loud fraction of a window, so what it detects (and
    when a stream triggers) is known without running it: stem channels 0 and 1 are the mean
    log-mel of a frame, shifted by BN so that relu(x - LOUD_LOG) - relu(x - LOUD_LOG - 1) is
    the frame's loudness in [0, 1]; every block is the identity (zero convs, the residual
    passes through); the classifier reads the mean over frames."""
    student = model.student
    with torch.no_grad():
        for p in student.parameters():
            p.zero_()
        for m in student.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        conv, bn = student.stem[0], student.stem[1]
        conv.weight[:2, :, conv.kernel_size[0] // 2] = 1.0 / conv.in_channels
        bn.bias[0], bn.bias[1] = -LOUD_LOG, -LOUD_LOG - 1.0
        student.classifier.weight[1, 0], student.classifier.weight[1, 1] = GAIN, -GAIN
        student.classifier.bias[1] = -0.5 * GAIN


@pytest.fixture(scope="session")
def saved(tmp_path_factory) -> Saved:
    return write_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def exported(saved: Saved):
    """One export of the run, registered in a temp sqlite MLflow (artifacts beside it, not in the repo)."""
    from raykd.export import export_onnx

    root = saved.run_dir.parent.parent
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # MLflow puts a sqlite store's artifacts under ./mlruns
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return export_onnx(saved.run_dir, root / "export", register=True, tracking_uri=saved.cfg.tracking.uri)


@pytest.fixture(scope="session")
def loudness_export(tmp_path_factory) -> Path:
    """Export folder of the loudness detector (not registered): the eval and detect tests'
    model, whose triggers on a stream are known by hand."""
    from raykd.export import export_onnx

    root = tmp_path_factory.mktemp("loudness")
    run = write_run(root, loudness_detector, ENERGY_METRICS)
    return export_onnx(run.run_dir, root / "export", register=False).onnx_path.parent
