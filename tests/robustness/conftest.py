"""Helpers for the robustness tests: a tiny user folder of WAVs, configs written as YAML, the
CLI run in-process and timed, and what a failed command left on disk."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

# The real two-node local cluster (head + worker process, token auth) for `raykd tune --address`.
from tests.clusters.conftest import ray_cluster  # noqa: F401  (a fixture)
from raykd.locks import LOCK_FILE
from raykd.presets import tiny_config

SPEAKERS = ("alice", "bob", "carol", "dave")  # 4 per label -> 2 train, 1 val, 1 test each


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, freqs: tuple[float, ...] = (440.0,),
               subtype: str = "PCM_16") -> np.ndarray:
    """A WAV with one sine per channel; returns the float data written, (S, C)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    data = np.stack([0.4 * np.sin(2 * np.pi * f * t) for f in freqs], 1).astype(np.float32)
    sf.write(path, data, sr, subtype=subtype)
    return data


def folder_data(root: Path) -> Path:
    """A user folder (data.source: folder): positive/<speaker>.wav and negative/<speaker>.wav, 16 kHz."""
    for i, s in enumerate(SPEAKERS):
        write_tone(root / "positive" / f"{s}.wav", freqs=(300.0 + 40 * i,))
        write_tone(root / "negative" / f"{s}-no.wav", freqs=(900.0 + 40 * i,))
    return root


def folder_config(tmp: Path, **over: Any) -> dict[str, Any]:
    """tiny_config on a user folder under tmp (written if missing); everything it writes is under tmp."""
    data = tmp / "data"
    if not data.exists():
        folder_data(data)
    return tiny_config(tmp, **{"data.source": "folder", "data.root": str(data), **over})


def write_yaml(path: Path, raw: dict[str, Any], extra: str = "") -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False) + extra)
    return path


def run_cli(*args: str) -> tuple[Any, float]:
    """`raykd ARGS` in this process: (click Result with .stdout/.stderr, seconds)."""
    from raykd.cli import app

    t0 = time.perf_counter()
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, time.perf_counter() - t0


def files_under(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs if d.exists() for p in d.rglob("*") if p.is_file())


def error_lines(res: Any) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.strip()]


def assert_one_user_error(res: Any, *needles: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr, naming every needle. Returns the line."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    lines = error_lines(res)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def nothing_written():
    """nothing_written(root): no file appeared under root/cache (teachers, caches) or root/runs."""

    def check(root: Path) -> None:
        # A study's lock file (raykd.locks) is taken first thing: it is no work.
        made = [p for p in files_under(root / "cache", root / "runs") if p.name != LOCK_FILE]
        assert not made, f"expensive work happened before the error: {made}"

    return check
