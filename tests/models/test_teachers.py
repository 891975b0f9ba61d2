"""Teachers: layer taps against the model's own outputs, errors, save/load, from-scratch build."""

from __future__ import annotations

import pytest
import torch
from transformers import Wav2Vec2ConformerModel, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from raykd.config import TeacherArch, TeacherConfig
from raykd.models.teachers import TeacherLoadError, build_teacher, load_teacher, normalize_waves

HF_CLASS = {"wav2vec2": Wav2Vec2Model, "conformer": Wav2Vec2ConformerModel}
DEPTH = {"wav2vec2": 12, "conformer": 3}
KINDS = ["wav2vec2", "conformer"]


def hf_normalised(waves: torch.Tensor) -> torch.Tensor:
    """What the HF feature extractor feeds these models: per-clip zero mean, unit variance."""
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                  do_normalize=True, return_attention_mask=False)
    return fe(list(waves.numpy()), sampling_rate=16000, return_tensors="pt").input_values


def loaded(kind: str, dirs: dict[str, str], name: str | None = None):
    return build_teacher(name or kind, TeacherConfig(kind=kind, pretrained=dirs[kind])).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_layer_taps_equal_the_models_own_outputs(kind, tiny_teacher_dirs, waves):
    teacher = loaded(kind, tiny_teacher_dirs)
    assert teacher.depth == DEPTH[kind]
    out = teacher(waves, range(teacher.depth + 1))

    # Reference: the same saved model, loaded independently, fed the HF extractor's input.
    ref_model = HF_CLASS[kind].from_pretrained(tiny_teacher_dirs[kind]).eval()
    with torch.no_grad():
        ref = ref_model(hf_normalised(waves), output_hidden_states=True)
    assert len(ref.hidden_states) == teacher.depth + 1
    assert set(out.hidden) == set(range(teacher.depth + 1))
    torch.testing.assert_close(out.hidden[0], ref.extract_features, atol=1e-5, rtol=1e-4)
    for k in range(1, teacher.depth + 1):
        torch.testing.assert_close(out.hidden[k], ref.hidden_states[k], atol=1e-5, rtol=1e-4)
    assert out.logits.shape == (3, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_only_requested_layers_are_returned(kind, tiny_teacher_dirs, waves):
    teacher = loaded(kind, tiny_teacher_dirs)
    with torch.no_grad():
        full = teacher(waves, range(teacher.depth + 1))
        some = teacher(waves, [teacher.depth, 0, 2, 2])
        none = teacher(waves)
    assert set(some.hidden) == {0, 2, teacher.depth}
    assert none.hidden == {}
    for k, v in some.hidden.items():
        assert torch.equal(v, full.hidden[k])
    assert torch.equal(none.logits, full.logits)


@pytest.mark.parametrize("kind", KINDS)
def test_layer_dims_and_frame_rate(kind, tiny_teacher_dirs, waves):
    teacher = loaded(kind, tiny_teacher_dirs)
    out = teacher(waves, [0, 1])
    assert teacher.layer_dim(0) == 12 == out.hidden[0].shape[-1]  # conv_dim[-1]
    assert teacher.layer_dim(1) == 16 == out.hidden[1].shape[-1]  # hidden_size
    assert teacher.frame_rate_hz == 50.0
    # 8000 samples: receptive field 400, hop 320 -> 1 + (8000 - 400) // 320 frames
    assert out.hidden[0].shape[1] == out.hidden[1].shape[1] == 24


def test_out_of_range_layer_names_teacher_and_depth(tiny_teacher_dirs, waves):
    w2v = loaded("wav2vec2", tiny_teacher_dirs)
    with pytest.raises(ValueError, match=r"^wav2vec2: layer 13 > depth 12$"):
        w2v(waves, [2, 13])
    with pytest.raises(ValueError, match=r"^wav2vec2: layer -1 < 0"):
        w2v(waves, [-1])
    conf = loaded("conformer", tiny_teacher_dirs, name="conf_big")
    with pytest.raises(ValueError, match=r"^conf_big: layer 4 > depth 3$"):
        conf(waves, [4])
    with pytest.raises(ValueError, match="depth 3"):
        conf.layer_dim(4)


def test_input_is_normalised_per_clip(tiny_teacher_dirs, waves):
    # exactly the HF extractor's zero_mean_unit_var_norm (population variance, eps 1e-7)
    torch.testing.assert_close(normalize_waves(waves), hf_normalised(waves), atol=1e-5, rtol=0)
    teacher = loaded("wav2vec2", tiny_teacher_dirs)
    with torch.no_grad():
        a = teacher(waves, [3])
        b = teacher(7.0 * waves + 0.2, [3])
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.hidden[3], b.hidden[3], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_load_teacher_roundtrip(kind, tiny_teacher_dirs, waves, tmp_path):
    teacher = loaded(kind, tiny_teacher_dirs, name="my_teacher")
    torch.nn.init.normal_(teacher.head.weight)  # a head that differs from any fresh init
    teacher.save(tmp_path / "t")
    assert {"config.json", "model.safetensors", "head.safetensors", "raykd_teacher.json"} <= {
        p.name for p in (tmp_path / "t").iterdir()}
    back = load_teacher(tmp_path / "t")
    assert (back.name, back.kind, back.training) == ("my_teacher", kind, False)
    with torch.no_grad():
        a, b = teacher(waves, [0, 2]), back(waves, [0, 2])
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(a.hidden[k], b.hidden[k]) for k in (0, 2))


def test_unloadable_pretrained_is_one_line_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(TeacherLoadError) as e:
        build_teacher("wav2vec2", TeacherConfig(kind="wav2vec2", pretrained=missing))
    msg = str(e.value)
    assert "\n" not in msg
    assert "teacher 'wav2vec2'" in msg and missing in msg and "wakeword-local.yaml" in msg


def test_wrong_kind_of_pretrained_model_is_refused(tiny_teacher_dirs):
    with pytest.raises(TeacherLoadError, match="'wav2vec2' model, teacher kind 'conformer'"):
        build_teacher("conformer", TeacherConfig(kind="conformer", pretrained=tiny_teacher_dirs["wav2vec2"]))


def test_load_teacher_refuses_a_dir_it_did_not_write(tiny_teacher_dirs):
    with pytest.raises(TeacherLoadError, match="not a stored raykd teacher"):
        load_teacher(tiny_teacher_dirs["wav2vec2"])


@pytest.mark.parametrize("kind", KINDS)
def test_from_scratch_teacher_has_no_masking_and_stable_taps(kind, waves):
    arch = TeacherArch(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                       conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
    teacher = build_teacher(kind, TeacherConfig(kind=kind, arch=arch))
    cfg = teacher.encoder.config
    assert teacher.training
    assert (cfg.mask_time_prob, cfg.mask_feature_prob, cfg.layerdrop) == (0.0, 0.0, 0.0)
    assert not cfg.apply_spec_augment and cfg.feat_extract_norm == "layer"
    assert not hasattr(teacher.encoder, "masked_spec_embed")
    if kind == "wav2vec2":
        assert cfg.do_stable_layer_norm
    # Training mode: every block is still tapped (no LayerDrop), and gradients reach the CNN.
    out = teacher(waves, [0, 1, 2, 3])
    assert [out.hidden[k].shape for k in range(4)] == [(3, 24, 8)] + [(3, 24, 16)] * 3
    out.logits.sum().backward()
    assert teacher.encoder.feature_extractor.conv_layers[0].conv.weight.grad is not None
