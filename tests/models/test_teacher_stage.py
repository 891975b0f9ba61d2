"""Teacher stage: fine-tuning learns, the best epoch is kept, the store is reused and atomic."""

from __future__ import annotations

import pytest
import torch

import raykd.teacher_stage as stage
from raykd.config import RaykdConfig, TeacherArch, TeacherConfig, TeacherFinetune
from raykd.models.teachers import load_teacher

ARCH = TeacherArch(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                   conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
FT = TeacherFinetune(epochs=2, lr=5e-3, batch_size=8)


def tiny(kind: str) -> TeacherConfig:
    return TeacherConfig(kind=kind, arch=ARCH, finetune=FT)


@pytest.mark.parametrize("kind", ["wav2vec2", "conformer"])
def test_finetune_learns_the_tone_and_keeps_the_best_epoch(kind, tone_data):
    train, val = tone_data
    messages: list[str] = []
    teacher, metrics = stage.finetune_teacher(kind, tiny(kind), train, val, "cpu", seed=0,
                                              progress=messages.append)
    accs = metrics["val_accuracy"]
    assert len(accs) == 2 and len(metrics["train_loss"]) == 2
    assert max(accs) >= 0.8  # chance is 0.5 (balanced labels)
    assert metrics["best_val_accuracy"] == max(accs)
    assert metrics["best_epoch"] == accs.index(max(accs)) + 1
    assert not teacher.training
    # the returned weights are those of the best epoch
    assert stage.accuracy(teacher, val, torch.device("cpu"), 16) == pytest.approx(max(accs))
    assert len(messages) == 2 and "epoch 2/2" in messages[-1]


def test_best_epoch_weights_are_returned_not_the_last(tone_data, monkeypatch):
    train, val = tone_data
    scripted = iter([0.5, 0.9, 0.6])  # untrained, epoch 1, epoch 2
    snapshots = []

    def fake_accuracy(teacher, data, device, batch_size):
        snapshots.append({k: v.clone() for k, v in teacher.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(stage, "accuracy", fake_accuracy)
    teacher, metrics = stage.finetune_teacher("w", tiny("wav2vec2"), train, val, "cpu", seed=0)
    assert metrics["val_accuracy"] == [0.9, 0.6] and metrics["best_epoch"] == 1
    state = teacher.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[2][k]) for k in state)


def test_ensure_teachers_stores_once_and_reuses(tone_data, tmp_path, monkeypatch):
    train, val = tone_data
    cfg = RaykdConfig(cache_dir=tmp_path / "cache", teachers={"w2v": tiny("wav2vec2")})
    first = stage.ensure_teachers(cfg, train, val, "data-abc", "cpu")
    d = first["w2v"]
    assert d.parent == tmp_path / "cache" / "teachers"
    assert d.name == f"w2v-{stage.teacher_key(cfg.teachers['w2v'], 'data-abc', cfg.seed)}"
    assert stage.is_stored(d) and [p.name for p in d.parent.iterdir()] == [d.name]  # no temp dir left
    t = load_teacher(d)
    assert (t.name, t.kind, t.depth) == ("w2v", "wav2vec2", 2)
    mtime = (d / "model.safetensors").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("fine-tuned again")

    monkeypatch.setattr(stage, "finetune_teacher", boom)
    messages: list[str] = []
    again = stage.ensure_teachers(cfg, train, val, "data-abc", "cpu", messages.append)
    assert again == first and (d / "model.safetensors").stat().st_mtime_ns == mtime
    assert any("reusing" in m for m in messages)
    # other data -> another key -> would train again
    with pytest.raises(AssertionError, match="fine-tuned again"):
        stage.ensure_teachers(cfg, train, val, "data-other", "cpu")


def test_interrupted_store_leaves_nothing(tone_data, tmp_path, monkeypatch):
    train, val = tone_data
    cfg = RaykdConfig(cache_dir=tmp_path / "cache",
                      teachers={"w2v": tiny("wav2vec2").model_copy(update={"finetune": FT.model_copy(update={"epochs": 0})})})

    def crash(self, directory):
        (directory / "config.json").parent.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text("{}")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(stage.Teacher, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        stage.ensure_teachers(cfg, train, val, "k", "cpu")
    assert list((tmp_path / "cache" / "teachers").iterdir()) == []
