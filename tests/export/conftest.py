"""A trained-looking best.pt written the way train.py writes it, and one registered export of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
SMALL_SYNTH = {"voices": ["en-us", "en-gb-x-rp"], "variants": ["m1", "f2"], "positives_per_speaker": 3,
               "near_misses_per_speaker": 2, "other_per_speaker": 2, "nonspeech_per_speaker": 2, "workers": 1}


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


def write_run(root: Path) -> Saved:
    """A run dir as train.finish leaves it, the checkpoint written by train.save_checkpoint."""
    from raykd.distill.losses import layer_mapping
    from raykd.models.projector import build_projectors, projector_key
    from raykd.models.student import build_student
    from raykd.checkpoint import BEST_FILE
    from raykd.models.projector import StudentWithProjectors
    from raykd.train import Divergence, save_checkpoint

    from raykd.data.synth import synthesize

    cfg = tiny_config(root)
    synthesize(cfg)
    torch.manual_seed(cfg.seed)
    aligned = cfg.aligned_layers()
    depth = {"wav2vec2": 12, "conformer": 4}
    mapping = {n: layer_mapping(depth[n], layers, cfg.student.blocks) for n, layers in aligned.items()}
    tap_of = {projector_key(n, l): tap for n, m in mapping.items() for l, tap in m.items()}
    projectors = build_projectors(aligned, TEACHER_DIMS, cfg.student.width, cfg.distillation.projector_hidden)
    model = StudentWithProjectors(build_student(cfg.student, cfg.features.n_mels), projectors, tap_of)
    randomise(model, cfg.seed)
    model.eval()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = root / "runs" / "kws-train" / "checkpoint"
    ckpt.mkdir(parents=True)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(ckpt, cfg, model, optimizer, Divergence(10.0, 20), 3, [BEST_METRICS], dict(BEST_METRICS),
                    best_state, mapping)
    dims = {PROJECTOR_HIDDEN} | {d for layers in TEACHER_DIMS.values() for d in layers.values()}
    return Saved(cfg, model, ckpt.parent, ckpt / BEST_FILE, dict(BEST_METRICS), dims)


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
