"""The teacher-output cache: same results as live teachers, rebuilt only when its inputs change."""

from __future__ import annotations

import math

import pytest

from raykd import metrics as M
from raykd.config import config_from_dict, with_updates
from raykd.distill.cache import META, TeacherCache, cache_key
from raykd.errors import UserError
from raykd.pipeline import Inputs, ensure_cache, fit
from raykd.sessions import resolve_device
from raykd.presets import tiny_config


def test_same_seed_same_metrics_with_or_without_cache(tiny_project, tmp_path):
    root, inputs = tiny_project
    cfg = config_from_dict(tiny_config(root, **{"train.epochs": 2, "tracking.enabled": False,
                                                 "cache_dir": str(tmp_path / "cache")}))
    # Built here, with this test's thread count: float sums depend on it, and training amplifies
    # any difference; with the same arithmetic the cache changes nothing but where numbers come from.
    cache = ensure_cache(cfg, inputs.train, inputs.teacher_dirs, inputs.dataset_key, resolve_device(cfg))
    cached = fit(cfg, tmp_path / "cached", Inputs(inputs.train, inputs.val, inputs.teacher_dirs,
                                                  inputs.dataset_key, str(cache)))
    live_inputs = Inputs(inputs.train, inputs.val, inputs.teacher_dirs, inputs.dataset_key, None)
    live = fit(cfg, tmp_path / "live", live_inputs)
    for a, b in zip(cached.history, live.history):
        for key in (M.VAL_ACCURACY, M.VAL_LOSS, "train_ce", "train_kd", "train_align"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-5), (key, a[key], b[key])


def test_cache_holds_time_aligned_fp16_outputs(tiny_project):
    root, inputs = tiny_project
    cache = TeacherCache.load(inputs.teacher_cache)
    n = len(inputs.train)
    assert cache.views == 2 and cache.waves.shape == (n, 2, inputs.train.waves.shape[1])
    h = cache.hidden["wav2vec2"][2]
    assert h.dtype.is_floating_point and h.element_size() == 2 and h.shape[:2] == (n, 2)
    assert set(cache.hidden["wav2vec2"]) == {2, 4, 6} and cache.logits["conformer"].shape == (n, 2, 2)


def test_rebuilt_when_inputs_change_and_not_otherwise(tiny_project):
    root, inputs = tiny_project
    cfg = config_from_dict(tiny_config(root))
    key = cache_key(cfg, inputs.teacher_dirs, inputs.dataset_key)
    assert (root / "cache" / "teacher_outputs" / key / META).is_file()
    same = [with_updates(cfg, {"train.lr": 0.5}), with_updates(cfg, {"distillation.feature_alignment_weight": 0.3})]
    for c in same:
        assert cache_key(c, inputs.teacher_dirs, inputs.dataset_key) == key
    changed = [with_updates(cfg, {"data.augment.views": 3}), with_updates(cfg, {"data.augment.snr_db": [0, 5]}),
               with_updates(cfg, {"distillation.alignment_layers": [2, 4, 8]}), with_updates(cfg, {"seed": 1})]
    for c in changed:
        assert cache_key(c, inputs.teacher_dirs, inputs.dataset_key) != key
    assert cache_key(cfg, {**inputs.teacher_dirs, "wav2vec2": "/elsewhere"}, inputs.dataset_key) != key
    assert cache_key(cfg, inputs.teacher_dirs, "other-data") != key


def test_budget_is_checked_before_building(tiny_project):
    root, inputs = tiny_project
    cfg = config_from_dict(tiny_config(root, **{"teacher_cache.max_gb": 1e-6, "data.augment.views": 5}))
    with pytest.raises(UserError, match=r"teacher_cache.max_gb: the cache needs"):
        ensure_cache(cfg, inputs.train, inputs.teacher_dirs, inputs.dataset_key, resolve_device(cfg))
    key = cache_key(cfg, inputs.teacher_dirs, inputs.dataset_key)
    assert not (root / "cache" / "teacher_outputs" / key).exists()
    assert not (root / "cache" / "teacher_outputs" / (key + ".tmp")).exists()
