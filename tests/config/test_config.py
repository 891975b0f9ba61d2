"""The schema: guide keys work as written; every bad config names its key; overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raykd.config import ConfigError, config_from_dict, load_config, with_updates

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_guide_keys_work_exactly_as_written(tmp_path):
    cfg = load_config(_write(tmp_path, """
distillation:
  enabled: true
  feature_alignment_enabled: true
  feature_alignment_weight: 0.1  # Start low, increase if student loss is stable
  alignment_layers: [2, 4, 6]    # Indices of teacher layers to align
"""))
    assert cfg.distillation.feature_alignment_weight == 0.1
    first = next(iter(cfg.teachers))
    assert cfg.aligned_layers() == {first: [2, 4, 6]}


def test_alignment_layers_map_per_teacher():
    cfg = config_from_dict({"distillation": {"alignment_layers": {"wav2vec2": [2, 4], "conformer": [3]}}})
    assert cfg.aligned_layers() == {"wav2vec2": [2, 4], "conformer": [3]}


def test_alignment_off_means_no_layers():
    cfg = config_from_dict({"distillation": {"feature_alignment_enabled": False}})
    assert cfg.aligned_layers() == {}
    cfg = config_from_dict({"distillation": {"enabled": False}})
    assert cfg.aligned_layers() == {}


BAD = [
    # (config, the dotted key the error must name, a word of the reason)
    ({"distillation": {"alignment_layers": [2, 13]}}, "distillation.alignment_layers[1]", "13 > wav2vec2 depth 12"),
    ({"distillation": {"alignment_layers": [-1]}}, "distillation.alignment_layers[0]", "< 0"),
    ({"distillation": {"feature_alignment_weight": -0.1}}, "distillation.feature_alignment_weight", "greater than or equal"),
    ({"distillation": {"alignment_layers": {"whisper": [2]}}}, "distillation.alignment_layers.whisper", "unknown teacher"),
    ({"distillation": {"alignment_layers": []}}, "distillation.alignment_layers", "empty"),
    ({"distilation": {"enabled": True}}, "distilation", "unknown key"),
    ({"train": {"lr": "fast"}}, "train.lr", "number"),
    ({"train": {"epochs": 0}}, "train.epochs", "greater than or equal"),
    ({"teachers": {"w": {"kind": "whisper"}}}, "teachers.w.kind", "wav2vec2"),
    ({"data": {"source": "manifest"}}, "data.manifest", "required"),
    ({"data": {"augment": {"snr_db": [20, 5]}}}, "data.augment.snr_db", "low 20"),
    ({"scaling": {"num_workers": -1}}, "scaling.num_workers", "greater than or equal"),
    ({"distillation": {"layer_map": {"wav2vec2": {2: 9}}}}, "distillation.layer_map.wav2vec2.2", "student tap 9"),
    ({"search": {"params": {"wav2vec2": {"type": "layer_subset", "candidates": [2, 20]}}}},
     "search.params.wav2vec2.candidates[1]", "outside 0..12"),
    ({"search": {"params": {"train.lrr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}},
     "search.params.train.lrr", "no such config key"),
    ({"search": {"params": {"train.lr": {"type": "gaussian"}}}}, "search.params.train.lr", "type"),
]


@pytest.mark.parametrize("raw,key,reason", BAD, ids=[b[1] for b in BAD])
def test_bad_config_names_its_key(raw, key, reason):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw)
    lines = [line for line in e.value.errors if line.startswith(key + ":")]
    assert lines, f"no error names {key}: {e.value.errors}"
    assert reason in lines[0], lines[0]


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lr": -1, "epochs": 0}, "bogus": 1})
    keys = {line.split(":")[0] for line in e.value.errors}
    assert {"train.lr", "train.epochs", "bogus"} <= keys


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "train:\n  lr: [1, 2\nseed: 3\n"))
    assert "malformed YAML at line" in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/raykd.yaml")


def test_overrides_are_yaml_and_validated(tmp_path):
    p = _write(tmp_path, "train:\n  lr: 0.01\n")
    cfg = load_config(p, ["train.lr=0.5", "distillation.alignment_layers=[1, 3]", "name=x"])
    assert cfg.train.lr == 0.5 and cfg.distillation.alignment_layers == [1, 3] and cfg.name == "x"
    with pytest.raises(ConfigError, match=r"distillation.alignment_layers\[0\]: 40 > wav2vec2 depth 12"):
        load_config(p, ["distillation.alignment_layers=[40]"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(p, ["train.lr"])


def test_config_is_frozen():
    cfg = config_from_dict({})
    with pytest.raises(Exception):
        cfg.train.lr = 1.0  # type: ignore[misc]
    assert with_updates(cfg, {"train.lr": 0.2}).train.lr == 0.2 and cfg.train.lr != 0.2


def test_pretrained_local_dir_depth_is_read_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 4}')
    with pytest.raises(ConfigError, match="5 > wav2vec2 depth 4"):
        config_from_dict({"teachers": {"wav2vec2": {"kind": "wav2vec2", "pretrained": str(tmp_path)}},
                          "distillation": {"alignment_layers": [5]}})


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_validates(path):
    cfg = load_config(path)
    assert cfg.teachers and yaml.safe_load(path.read_text())
    assert path.read_text().startswith("# raykd "), "each YAML opens with the command that runs it"
