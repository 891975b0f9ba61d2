"""Shared fixtures for end-to-end tests: a tiny synthetic project and a local Ray.

The tiny project is real data flowing through the real code: espeak-ng clips, teachers
built from small architecture configs, fine-tuned, saved and loaded with from_pretrained.
It is built once per test session (about a minute on 2 cores) and reused.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

from raykd.presets import TINY_TEACHER, tiny_config  # noqa: F401  (re-exported for tests)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """(root, prepared Inputs) with the dataset synthesised and both teachers fine-tuned."""
    from raykd.config import config_from_dict
    from raykd.pipeline import prepare

    root = tmp_path_factory.mktemp("tiny")
    cfg = config_from_dict(tiny_config(root))
    return root, prepare(cfg)


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray for the tests that need actors (DDP workers, Tune trials)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
