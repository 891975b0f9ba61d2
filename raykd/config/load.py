"""Loading a config: YAML + `--set` overrides -> one validated `RaykdConfig`, every problem at once.

A config file is YAML holding data only. `load_config` parses it, applies `--set a.b=c`
overrides, validates everything at once and raises `ConfigError` whose lines each name the
dotted key and what is wrong, e.g. ``distillation.alignment_layers[1]: 13 > wav2vec2 depth 12``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raykd.config.base import ConfigError
from raykd.config.schema import RaykdConfig, TeacherConfig
from raykd.config.search import (PARAM_TYPES, CategoricalParam, IntParam, LayerSubsetParam, LogUniformParam,
                                 RangeParam, UniformParam)
from raykd.layer_keys import layer_param
from raykd.metrics import SEARCHABLE
from raykd.storage import is_uri

def _loc_to_key(loc: tuple[Any, ...]) -> str:
    """('distillation', 'alignment_layers', 1) -> 'distillation.alignment_layers[1]'."""
    out = ""
    for i, part in enumerate(loc):
        if i >= 3 and loc[i - 2] == "params" and part in PARAM_TYPES:
            continue  # pydantic names the discriminated branch; the user wrote it as `type`
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("list[int]", "dict[str,list[int]]") or str(part).startswith(("list[", "dict[")):
            continue  # pydantic names the union branch; the user never wrote it
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def teacher_depth(t: TeacherConfig) -> int | None:
    """Number of blocks N of a teacher, when it is knowable without loading weights."""
    if t.pretrained is None:
        return t.arch.num_hidden_layers
    cfg = Path(t.pretrained) / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("num_hidden_layers", 0)) or None
    return None  # a hub id: checked when the model is loaded


def _cross_check(cfg: RaykdConfig) -> list[str]:
    """Checks that span several keys; every problem is reported, not just the first."""
    errs: list[str] = []
    d = cfg.distillation
    if d.enabled and not cfg.teachers:
        errs.append("teachers: distillation.enabled is true but no teacher is configured")
    layers = d.alignment_layers
    by_teacher = cfg.alignment_layers_by_teacher()
    for name, idxs in by_teacher.items():
        key = "distillation.alignment_layers" + (f".{name}" if isinstance(layers, dict) else "")
        if name not in cfg.teachers:
            errs.append(f"{key}: unknown teacher '{name}' (configured: {', '.join(cfg.teachers)})")
            continue
        depth = teacher_depth(cfg.teachers[name])
        for i, layer in enumerate(idxs):
            if layer < 0:
                errs.append(f"{key}[{i}]: {layer} < 0 (0 = CNN latents, 1..N = blocks)")
            elif depth is not None and layer > depth:
                errs.append(f"{key}[{i}]: {layer} > {name} depth {depth}")
        if len(set(idxs)) != len(idxs):
            errs.append(f"{key}: duplicate layers {idxs}")
    if d.enabled and d.feature_alignment_enabled and not any(by_teacher.values()):
        errs.append("distillation.alignment_layers: empty while feature_alignment_enabled is true")
    for key, mapping in (("teacher_weights", d.teacher_weights), ("layer_map", d.layer_map)):
        for name in mapping or {}:
            if name not in cfg.teachers:
                errs.append(f"distillation.{key}.{name}: unknown teacher")
    for name, m in (d.layer_map or {}).items():
        for t_layer, tap in m.items():
            if not 0 <= tap < cfg.student.blocks:
                errs.append(f"distillation.layer_map.{name}.{t_layer}: student tap {tap} "
                            f"outside 0..{cfg.student.blocks - 1}")
    if cfg.data.source == "manifest" and cfg.data.manifest is None:
        errs.append("data.manifest: required when data.source is 'manifest'")
    if cfg.scaling.use_gpu and cfg.scaling.gpus_per_worker <= 0:
        errs.append("scaling.gpus_per_worker: must be > 0 when scaling.use_gpu is true")
    errs += _student_size(cfg)
    if cfg.search is not None:
        errs += _check_search(cfg)
    return errs


def _student_size(cfg: RaykdConfig) -> list[str]:
    """`student.max_params`, checked by building the student (what `raykd train` does first)."""
    from raykd.models.student import build_student  # torch model code: only when a config is checked

    try:
        build_student(cfg.student, cfg.features.n_mels)
    except ValueError as e:
        return [str(e).replace("student: ", "student.max_params: ", 1)]
    return []


def non_finite(tree: Any, path: str = "") -> list[str]:
    """Every inf / nan anywhere in a config tree, as 'key: not a finite number (inf)'."""
    if isinstance(tree, dict):
        return [e for k, v in tree.items() for e in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(tree, (list, tuple)):
        return [e for i, v in enumerate(tree) for e in non_finite(v, f"{path}[{i}]")]
    if isinstance(tree, float) and not math.isfinite(tree):
        return [f"{path or '<root>'}: not a finite number ({tree})"]
    return []


# Data, features and teachers are prepared once per study (dataset, fine-tuned teachers,
# teacher-output caches); a search over them would silently mix trials on different inputs.
PREPARED_ONCE = ("data", "features", "teachers", "cache_dir", "storage_path", "name", "search", "teacher_cache")


def _check_search(cfg: RaykdConfig) -> list[str]:
    errs: list[str] = []
    base = cfg.model_dump()
    if cfg.search.trial_epochs is not None and cfg.search.trial_epochs < 1:
        errs.append(f"search.trial_epochs: {cfg.search.trial_epochs} < 1 (epochs per trial)")
    if not 0 <= cfg.search.seed < 2**32:  # Optuna's samplers refuse it, after the data and teachers
        errs.append(f"search.seed: {cfg.search.seed} outside 0..2**32-1")
    if cfg.search.metric not in SEARCHABLE:
        errs.append(f"search.metric: unknown metric '{cfg.search.metric}' (known: {', '.join(SEARCHABLE)})")
    for key, p in cfg.search.params.items():
        where = f"search.params.{key}"
        if isinstance(p, LayerSubsetParam):
            if key not in cfg.teachers:
                errs.append(f"{where}: layer_subset key must be a teacher name "
                            f"({', '.join(cfg.teachers)})")
                continue
            depth = teacher_depth(cfg.teachers[key])
            for i, layer in enumerate(p.candidates):
                if layer < 0 or (depth is not None and layer > depth):
                    errs.append(f"{where}.candidates[{i}]: {layer} outside 0..{depth} of {key}")
            hi = p.max_size if p.max_size is not None else len(p.candidates)
            if p.min_size > hi or p.min_size > len(p.candidates):
                errs.append(f"{where}.min_size: {p.min_size} > max size {min(hi, len(p.candidates))}")
            continue
        if not _has_key(base, key):
            errs.append(f"{where}: no such config key '{key}'")
        elif key.split(".")[0] in PREPARED_ONCE:
            errs.append(f"{where}: '{key.split('.')[0]}' is prepared once per study and cannot be searched")
        else:
            errs += _value_errors(cfg, key, p)
        if isinstance(p, RangeParam) and p.low > p.high:
            errs.append(f"{where}: low {p.low} > high {p.high}")
    return errs + _initial_point_errors(cfg)


def _field_annotation(key: str) -> Any:
    """The schema's type of a dotted key through nested models (None past a dict/Any)."""
    model: Any = RaykdConfig
    annotation = None
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model = model.model_fields[part].annotation
    return annotation


def _value_errors(cfg: RaykdConfig, key: str, p: Any) -> list[str]:
    """A search range or choice must be a value the searched field itself accepts (its type and
    bounds, from the schema): otherwise trials fail one by one at run time."""
    where = f"search.params.{key}"
    if isinstance(p, (UniformParam, LogUniformParam)) and _field_annotation(key) is int:
        return [f"{where}: {key} is an integer; use type: int"]
    if isinstance(p, RangeParam):
        values = {"low": p.low, "high": p.high}
    elif isinstance(p, CategoricalParam):
        values = {f"choices[{i}]": c for i, c in enumerate(p.choices)}
    else:
        return []
    base = cfg.model_dump(mode="json", exclude={"search"})
    errs = []
    for label, value in values.items():
        raw = copy.deepcopy(base)
        set_dotted(raw, key, value)
        try:
            RaykdConfig.model_validate(raw)
        except ValidationError as e:
            msgs = [err["msg"] for err in e.errors() if _loc_to_key(err["loc"]) == key]
            if msgs:
                errs.append(f"{where}.{label}: {value!r} is not a valid {key} ({msgs[0]})")
    return errs


def _initial_point_errors(cfg: RaykdConfig) -> list[str]:
    """`search.initial_points` name Optuna params of this space, with values inside them."""
    known: dict[str, Any] = {}
    for key, p in cfg.search.params.items():
        if isinstance(p, LayerSubsetParam):
            known.update({layer_param(key, layer): p for layer in p.candidates})
        else:
            known[key] = p
    errs = []
    names = ", ".join(list(known)[:12]) + (", ..." if len(known) > 12 else "")
    for i, point in enumerate(cfg.search.initial_points):
        for name, value in point.items():
            where = f"search.initial_points[{i}].{name}"
            p = known.get(name)
            if p is None:
                errs.append(f"{where}: not a parameter of the search space (known: {names or 'none'})")
            elif not p.contains(value) or (isinstance(p, IntParam) and not isinstance(value, int)):
                errs.append(f"{where}: {value!r} is outside the parameter's range or choices")
    return errs


def _has_key(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating the dicts on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """`["train.lr=0.01", "distillation.alignment_layers=[2,4]"]` -> [(key, value)]; values are YAML."""
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.01"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError([f"--set {key}: value {raw!r} is not valid YAML ({e})"]) from None
        out.append((key.strip(), value))
    return out


def config_from_dict(raw: dict[str, Any], source: str | None = None) -> RaykdConfig:
    """Validate a plain dict; all problems are collected into one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError([f"<root>: expected a mapping of keys, got {type(raw).__name__}"], source)
    errs = non_finite(raw)  # YAML's .inf / .nan: accepted by most bounds, fatal in training
    try:
        cfg = RaykdConfig.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            key = _loc_to_key(err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")  # a validator's own message says what is wrong
            line = f"{key}: {msg}"
            if line not in errs:
                errs.append(line)
        raise ConfigError(errs, source) from None
    errs = errs or non_finite(cfg.model_dump())  # "inf" given as a string (json mode would null it)
    errs += _cross_check(cfg)
    if errs:
        raise ConfigError(errs, source)
    return cfg


def _duplicate_keys(node: yaml.Node, path: str = "") -> list[str]:
    """Keys given twice in one mapping, anywhere in the document (YAML would keep the last
    silently: a second `train:` block drops the first one's keys)."""
    errs: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                continue
            key = f"{path}.{k.value}" if path else str(k.value)
            line = k.start_mark.line + 1
            if k.value in seen:
                errs.append(f"{key}: duplicate key (line {seen[k.value]} and line {line})")
            else:
                seen[k.value] = line
            errs += _duplicate_keys(v, key)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            errs += _duplicate_keys(v, f"{path}[{i}]")
    return errs


def _read_yaml(path: Path) -> Any:
    """Parse a config file: one line for a folder, a binary file, bad YAML or a duplicate key."""
    if path.is_dir():
        raise ConfigError([f"{path}: is a folder, not a config file"])
    if not path.is_file():
        raise ConfigError([f"{path}: no such file"])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"not a text (UTF-8) file: byte 0x{data[e.start]:02x} at offset {e.start}"],
                          str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        dups = _duplicate_keys(node) if node is not None else []
        if dups:
            raise ConfigError(dups, str(path))
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"malformed YAML{where}: {getattr(e, 'problem', None) or e}"], str(path)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RaykdConfig:
    """Read a YAML config (or search-space file), apply `--set` overrides, validate."""
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([f"<root>: expected a mapping of keys, got {type(raw).__name__}"], str(path))
    for key, value in parse_overrides(overrides):
        set_dotted(raw, key, value)
    return config_from_dict(raw, str(path))


def absolute_paths(cfg: RaykdConfig) -> RaykdConfig:
    """Paths made absolute against this process's cwd: Ray workers and Tune trials run in
    other directories, so a relative `.raykd` there would be a different (empty) folder."""
    d = cfg.data
    updates: dict[str, Any] = {"cache_dir": str(Path(cfg.cache_dir).resolve()),
                               "storage_path": cfg.storage_path if is_uri(cfg.storage_path)
                               else str(Path(cfg.storage_path).resolve()),
                               "data.root": str(Path(d.root).resolve())}
    if d.manifest is not None:
        updates["data.manifest"] = str(Path(d.manifest).resolve())
    if d.augment.noise_dir is not None:
        updates["data.augment.noise_dir"] = str(Path(d.augment.noise_dir).resolve())
    for name, t in cfg.teachers.items():
        if t.pretrained and Path(t.pretrained).is_dir():  # a local dir, not a hub id
            updates[f"teachers.{name}.pretrained"] = str(Path(t.pretrained).resolve())
    return with_updates(cfg, updates)


def with_updates(cfg: RaykdConfig, updates: dict[str, Any]) -> RaykdConfig:
    """A new validated config with dotted-key updates applied (used by the search)."""
    raw = cfg.model_dump(mode="json")
    for key, value in updates.items():
        set_dotted(raw, key, value)
    return config_from_dict(raw)


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-able data (cache keys for teachers, datasets, outputs)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
