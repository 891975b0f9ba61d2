"""The two names of a teacher layer, defined once and parsed back here only.

* ``layer_param``: the Optuna parameter of one candidate layer of a `layer_subset`
  (``"wav2vec2.L4"``: true/false), also what `search.initial_points` name.
* ``projector_key``: an aligned layer inside a run (``"wav2vec2.4"``): its projector, its
  loss term ``align.wav2vec2.4`` and its tap in the layer map.
"""

from __future__ import annotations

import re

_LAYER_PARAM = re.compile(r"^(?P<teacher>.+)\.L(?P<layer>\d+)$")


def layer_param(teacher: str, layer: int) -> str:
    return f"{teacher}.L{layer}"


def parse_layer_param(name: str) -> tuple[str, int] | None:
    """"wav2vec2.L4" -> ("wav2vec2", 4); anything else -> None."""
    m = _LAYER_PARAM.match(name)
    return (m["teacher"], int(m["layer"])) if m else None


def projector_key(teacher: str, layer: int) -> str:
    return f"{teacher}.{layer}"


def parse_projector_key(key: str) -> tuple[str, int]:
    """"wav2vec2.4" -> ("wav2vec2", 4)."""
    teacher, layer = key.rsplit(".", 1)
    return teacher, int(layer)
