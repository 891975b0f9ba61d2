"""Config values that used to validate and then fail later (or silently): each is refused at
load, by `raykd validate` and by the command that would run it, with one line naming the key,
before anything is written. A config file that is not a config (a folder, a binary file) is
one line too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.robustness.conftest import files_under, folder_config, run_cli, write_yaml

SEARCH = {"params": {"distillation.feature_alignment_weight": {"type": "uniform", "low": 0.05, "high": 0.2}},
          "num_samples": 2, "max_concurrent": 1, "trial_epochs": 1, "asha": {"enabled": False}}
LAYERS = {"wav2vec2": {"type": "layer_subset", "candidates": [2, 4]}}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def _search(**over: Any) -> dict[str, Any]:
    return {"search": {**SEARCH, **over}}


# (id, what is changed in a good config, the one problem line expected)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("infinite-lr", {"train": {"lr": float("inf")}}, "train.lr: not a finite number (inf)"),
    ("infinite-lr-as-text", {"train": {"lr": "inf"}}, "train.lr: not a finite number (inf)"),
    ("nan-alignment-weight", {"distillation": {"feature_alignment_weight": float("nan")}},
     "distillation.feature_alignment_weight: not a finite number (nan)"),
    ("infinite-in-search-range", _search(params={"train.lr": {"type": "uniform", "low": 0.001,
                                                              "high": float("inf")}}),
     "search.params.train.lr.high: not a finite number (inf)"),
    ("unknown-search-metric", _search(metric="val_acc"), "search.metric: unknown metric 'val_acc'"),
    ("name-escapes-storage", {"name": "../escaped"}, "name: '../escaped' must be a plain name"),
    ("name-with-slash", {"name": "a/b"}, "name: 'a/b' must be a plain name"),
    ("name-empty", {"name": ""}, "name: '' must be a plain name"),
    ("negative-trial-epochs", _search(trial_epochs=-3),
     "search.trial_epochs: -3 < 1 (epochs per trial)"),
    ("int-range-below-field-minimum", _search(params={"student.blocks": {"type": "int", "low": 1, "high": 4}}),
     "search.params.student.blocks.low: 1 is not a valid student.blocks (Input should be greater than or equal to 2)"),
    ("lr-range-from-zero", _search(params={"train.lr": {"type": "uniform", "low": 0.0, "high": 0.1}}),
     "search.params.train.lr.low: 0.0 is not a valid train.lr (Input should be greater than 0)"),
    ("float-range-on-int-field", _search(params={"train.batch_size": {"type": "uniform", "low": 8, "high": 32}}),
     "search.params.train.batch_size: train.batch_size is an integer; use type: int"),
    ("choice-the-field-refuses", _search(params={"train.device": {"type": "categorical", "choices": ["cpu", "tpu"]}}),
     "search.params.train.device.choices[1]: 'tpu' is not a valid train.device"),
    ("initial-point-unknown-key", _search(initial_points=[{"train.lr": 0.01}]),
     "search.initial_points[0].train.lr: not a parameter of the search space"),
    ("initial-point-unknown-layer", _search(params=LAYERS, initial_points=[{"wav2vec2.L9": True}]),
     "search.initial_points[0].wav2vec2.L9: not a parameter of the search space (known: wav2vec2.L2, wav2vec2.L4)"),
    ("initial-point-outside-range", _search(initial_points=[{"distillation.feature_alignment_weight": 0.9}]),
     "search.initial_points[0].distillation.feature_alignment_weight: 0.9 is outside"),
    ("negative-seed", {"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ("negative-search-seed", _search(seed=-1), "search.seed: -1 outside 0..2**32-1"),
    ("student-above-max-params", {"student": {"width": 256}},
     "student.max_params: 323,586 parameters > student.max_params 50,000"),
]


@pytest.mark.parametrize("command", ["validate", "work"])
@pytest.mark.parametrize("over, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_refused_at_load_naming_the_key(tmp_path, nothing_written, command, over, expected):
    raw = _merge(folder_config(tmp_path), over)
    path = write_yaml(tmp_path / "bad.yaml", raw)
    work = "tune" if "search" in over else "train"
    res, _ = run_cli(command if command == "validate" else work, path)
    lines = res.stderr.splitlines()
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert lines[0] == f"error: {path}: invalid config", lines
    assert any(line.startswith(f"  {expected}") for line in lines[1:]), lines
    nothing_written(tmp_path)
    assert not (tmp_path.parent / "escaped").exists()


def test_duplicate_yaml_keys_name_the_key_and_both_lines(tmp_path, nothing_written):
    good = write_yaml(tmp_path / "good.yaml", folder_config(tmp_path))
    text = good.read_text()
    # A second `train:` block (YAML would keep it, silently dropping the first one's lr),
    # and a key twice inside one block.
    bad = tmp_path / "dup.yaml"
    bad.write_text(text + "train:\n  epochs: 2\n  epochs: 3\n")
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line == "train:")
    n = len(text.splitlines())
    for command in ("validate", "train"):
        res, _ = run_cli(command, bad)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert res.stderr.splitlines() == [
            f"error: {bad}: invalid config",
            f"  train: duplicate key (line {first} and line {n + 1})",
            f"  train.epochs: duplicate key (line {n + 2} and line {n + 3})"], res.stderr
    nothing_written(tmp_path)


@pytest.mark.parametrize("make, expected", [
    (lambda p: p.mkdir(), "is a folder, not a config file"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary"), "not a text (UTF-8) file: byte 0x89 at offset 0"),
], ids=["folder", "binary-file"])
def test_a_file_that_is_not_a_config_is_one_line(tmp_path, make, expected):
    path = tmp_path / "cfg.yaml"
    make(path)
    before = files_under(tmp_path)
    for command in ("validate", "train", "tune"):
        res, _ = run_cli(command, path)
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert expected in res.stderr and str(path) in res.stderr, res.stderr
    assert files_under(tmp_path) == before


def test_validate_still_accepts_the_shipped_search_spaces():
    """The new checks refuse nothing that was right: every shipped file validates."""
    shipped = sorted(Path("search_spaces").glob("*.yaml"))
    assert shipped
    for path in shipped:
        res, _ = run_cli("validate", path)
        assert res.exit_code == 0, (path, res.output)
