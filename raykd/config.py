"""The one typed schema for every raykd config, and the only place defaults live.

A config file is YAML holding data only. `load_config` parses it, applies `--set a.b=c`
overrides, validates everything at once and raises `ConfigError` whose lines each name the
dotted key and what is wrong, e.g. ``distillation.alignment_layers[1]: 13 > wav2vec2 depth 12``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raykd.errors import UserError

# ----------------------------------------------------------------------------- errors


class ConfigError(UserError):
    """A config that cannot be used. `errors` holds one line per problem."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid config\n" + "\n".join(f"  {e}" for e in self.errors))


class Strict(BaseModel):
    """Frozen, unknown keys rejected: a typo is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------------------- data

DEFAULT_NEAR_MISSES = (
    "hey serious", "hey cyrus", "sirius", "hey siri", "hey series", "serious",
    "hey sir", "hey cereal", "hey iris", "say sirius", "hey syrup", "hey virus",
)
DEFAULT_OTHER_SPEECH = (
    "turn on the lights", "what time is it", "play some music", "good morning",
    "set a timer for ten minutes", "how is the weather today", "call my mother",
    "open the window please", "I am going to the store", "the quick brown fox",
    "seriously though", "hello there", "thank you very much", "stop the music",
)


class SynthConfig(Strict):
    """Offline synthetic wakeword data from espeak-ng voices."""

    phrase: str = "hey sirius"
    near_misses: tuple[str, ...] = DEFAULT_NEAR_MISSES
    other_speech: tuple[str, ...] = DEFAULT_OTHER_SPEECH
    # espeak-ng voices (accents) and variants (timbres); a speaker = "<voice>+<variant>".
    voices: tuple[str, ...] = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan")
    variants: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4", "klatt")
    rates: tuple[int, ...] = (140, 160, 180)  # words per minute
    pitches: tuple[int, ...] = (30, 45, 60, 75)  # espeak pitch 0..99
    positives_per_speaker: int = Field(12, ge=1)
    near_misses_per_speaker: int = Field(10, ge=0)
    other_per_speaker: int = Field(5, ge=0)
    nonspeech_per_speaker: int = Field(3, ge=0)  # silence and coloured noise
    val_fraction: float = Field(0.15, gt=0, lt=0.5)  # fraction of speakers, not clips
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    workers: int = Field(2, ge=1)


class AugmentConfig(Strict):
    enabled: bool = True
    noise_dir: Path | None = None  # a folder of noise WAVs; None = synthetic coloured noise
    noise_prob: float = Field(0.8, ge=0, le=1)
    snr_db: tuple[float, float] = (5.0, 25.0)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    time_shift_ms: float = Field(100.0, ge=0)
    freq_masks: int = Field(2, ge=0)
    freq_mask_width: int = Field(6, ge=0)
    time_masks: int = Field(2, ge=0)
    time_mask_width: int = Field(10, ge=0)
    views: int = Field(2, ge=1)  # fixed augmented views per clip (what the teacher-output cache stores)

    @field_validator("snr_db", "gain_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"low {v[0]} > high {v[1]}")
        return v


class DataConfig(Strict):
    source: Literal["synth", "folder", "manifest"] = "synth"
    root: Path = Path("data/wakeword")  # synth output, or the user's folder (positive/, negative/)
    manifest: Path | None = None  # CSV path,label[,speaker[,split]] when source = manifest
    on_bad_file: Literal["error", "skip"] = "error"
    val_fraction: float = Field(0.15, gt=0, lt=0.5)  # user data without a split column
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    synth: SynthConfig = SynthConfig()
    augment: AugmentConfig = AugmentConfig()


class FeatureConfig(Strict):
    sample_rate: int = Field(16000, gt=0)
    clip_seconds: float = Field(1.5, gt=0)
    n_mels: int = Field(40, gt=0)
    win_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


# ----------------------------------------------------------------------------- models


class TeacherArch(Strict):
    """Architecture of a teacher built from scratch (ignored when `pretrained` is set)."""

    hidden_size: int = Field(64, gt=0)
    num_hidden_layers: int = Field(12, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(128, gt=0)
    conv_dim: tuple[int, ...] = (32, 32, 32, 32, 32, 32, 32)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # 320 samples = 20 ms frames at 16 kHz
    conv_depthwise_kernel_size: int = Field(15, ge=1)  # conformer only
    # wav2vec2 convolutional position embedding (kernel in frames, groups): wav2vec2-base's
    # 128 frames is longer than a 1.5 s clip (75 frames), so a small model uses a shorter one.
    num_conv_pos_embeddings: int = Field(32, ge=2)
    num_conv_pos_embedding_groups: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "TeacherArch":
        # Caught at load time with the key named, not deep inside transformers at build time.
        errs = []
        if self.hidden_size % self.num_attention_heads:
            errs.append(f"hidden_size {self.hidden_size} not divisible by num_attention_heads "
                        f"{self.num_attention_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            errs.append(f"hidden_size {self.hidden_size} not divisible by "
                        f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            errs.append(f"conv_dim, conv_kernel, conv_stride differ in length "
                        f"({len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)})")
        if self.conv_depthwise_kernel_size % 2 == 0:
            errs.append(f"conv_depthwise_kernel_size {self.conv_depthwise_kernel_size} must be odd")
        if errs:
            raise ValueError("; ".join(errs))
        return self


class TeacherFinetune(Strict):
    epochs: int = Field(8, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    freeze_feature_encoder: bool = False
    weight_decay: float = Field(0.01, ge=0)  # AdamW
    grad_clip: float = Field(1.0, gt=0)  # max grad norm; transformers trained from scratch spike early
    warmup_fraction: float = Field(0.1, ge=0, lt=1)  # linear warm-up share of steps, then cosine decay


class TeacherConfig(Strict):
    kind: Literal["wav2vec2", "conformer"]
    pretrained: str | None = None  # hub id or local dir for from_pretrained; None = from scratch
    arch: TeacherArch = TeacherArch()
    finetune: TeacherFinetune = TeacherFinetune()


def _default_teachers() -> dict[str, TeacherConfig]:
    return {"wav2vec2": TeacherConfig(kind="wav2vec2"), "conformer": TeacherConfig(kind="conformer")}


class StudentConfig(Strict):
    kind: Literal["tinyconv"] = "tinyconv"
    width: int = Field(64, gt=0)  # feature dim at every tap point
    blocks: int = Field(4, ge=2)  # taps = outputs of the blocks; the last is the penultimate layer
    kernel_size: int = Field(5, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_params: int = Field(50_000, gt=0)


class DistillConfig(Strict):
    """The user guide's keys, exactly as written, plus the loss settings they imply."""

    enabled: bool = True
    feature_alignment_enabled: bool = True
    feature_alignment_weight: float = Field(0.1, ge=0)
    # a list = layers of the first teacher; a map = layers per teacher name
    alignment_layers: Union[list[int], dict[str, list[int]]] = [2, 4, 6]
    temperature: float = Field(4.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    teacher_weights: dict[str, float] | None = None  # soft-target mix; None = equal
    projector_hidden: int = Field(128, gt=0)
    # explicit teacher layer -> student tap per teacher; None = by relative depth
    layer_map: dict[str, dict[int, int]] | None = None


# ----------------------------------------------------------------------------- training


class DivergenceConfig(Strict):
    factor: float = Field(10.0, gt=1)  # loss above factor x its best ...
    patience: int = Field(20, ge=1)  # ... for this many consecutive steps = diverged
    penalty: float = Field(1e4, gt=0)  # finite loss value reported for a diverged run


class TrainConfig(Strict):
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    threshold: float = Field(0.5, gt=0, lt=1)  # wakeword probability that triggers
    device: Literal["auto", "cpu", "cuda"] = "auto"
    divergence: DivergenceConfig = DivergenceConfig()
    max_failures: int = Field(2, ge=0)  # worker restarts from the last checkpoint


class ScalingConfig(Strict):
    num_workers: int = Field(0, ge=0)  # 0 = in-process, no Ray (debugging)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)


class TeacherCacheConfig(Strict):
    """Frozen teachers' outputs computed once per (teachers, data, augmentation views) and reused."""

    enabled: bool = True
    max_gb: float = Field(8.0, gt=0)  # refuse to build a bigger cache (estimated before building)


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = None  # None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = "raykd"


# ----------------------------------------------------------------------------- search


class UniformParam(Strict):
    type: Literal["uniform"]
    low: float
    high: float


class LogUniformParam(Strict):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class IntParam(Strict):
    type: Literal["int"]
    low: int
    high: int


class CategoricalParam(Strict):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


class LayerSubsetParam(Strict):
    """One boolean per candidate layer; an empty pick is repaired to the min_size best guess."""

    type: Literal["layer_subset"]
    candidates: list[int] = Field(min_length=1)
    min_size: int = Field(1, ge=0)  # 0 = this teacher may go unaligned in a trial
    max_size: int | None = None


PARAM_TYPES = ("uniform", "loguniform", "int", "categorical", "layer_subset")
SearchParam = Annotated[
    Union[UniformParam, LogUniformParam, IntParam, CategoricalParam, LayerSubsetParam],
    Field(discriminator="type"),
]


class AshaConfig(Strict):
    enabled: bool = True
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SearchConfig(Strict):
    # dotted config key -> distribution; layer_subset keys are teacher names
    params: dict[str, SearchParam] = {}
    num_samples: int = Field(12, ge=1)
    max_concurrent: int = Field(2, ge=1)
    metric: str = "val_accuracy"
    mode: Literal["min", "max"] = "max"
    seed: int = 0
    sampler: Literal["tpe", "random"] = "tpe"  # Optuna sampler (random: the baseline benchmarks compare to)
    asha: AshaConfig = AshaConfig()
    trial_epochs: int | None = None  # epochs per trial; None = train.epochs
    # evaluated first, after the guide's recommendation: {optuna param: value}; layer params
    # are "<teacher>.L<layer>": true/false
    initial_points: list[dict[str, Any]] = []


# ----------------------------------------------------------------------------- top level


class RaykdConfig(Strict):
    name: str = "wakeword"
    seed: int = 0
    cache_dir: Path = Path(".raykd")  # fine-tuned teachers, teacher-output caches
    storage_path: Path = Path("runs")  # train runs and studies
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    teachers: dict[str, TeacherConfig] = Field(default_factory=_default_teachers)
    student: StudentConfig = StudentConfig()
    distillation: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()
    teacher_cache: TeacherCacheConfig = TeacherCacheConfig()
    tracking: TrackingConfig = TrackingConfig()
    search: SearchConfig | None = None

    def alignment_layers_by_teacher(self) -> dict[str, list[int]]:
        """The guide's `alignment_layers`, resolved: a list means the first teacher."""
        layers = self.distillation.alignment_layers
        if isinstance(layers, dict):
            return {name: list(v) for name, v in layers.items()}
        first = next(iter(self.teachers), None)
        return {first: list(layers)} if first is not None else {}

    def aligned_layers(self) -> dict[str, list[int]]:
        """Layers actually aligned in this run (empty when alignment or distillation is off)."""
        d = self.distillation
        if not (d.enabled and d.feature_alignment_enabled):
            return {}
        return {n: v for n, v in self.alignment_layers_by_teacher().items() if v}


# ----------------------------------------------------------------------------- loading


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
    if cfg.search is not None:
        errs += _check_search(cfg)
    return errs


# Data, features and teachers are prepared once per study (dataset, fine-tuned teachers,
# teacher-output caches); a search over them would silently mix trials on different inputs.
PREPARED_ONCE = ("data", "features", "teachers", "cache_dir", "storage_path", "name", "search", "teacher_cache")


def _check_search(cfg: RaykdConfig) -> list[str]:
    errs: list[str] = []
    base = cfg.model_dump()
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
        if isinstance(p, (UniformParam, LogUniformParam, IntParam)) and p.low > p.high:
            errs.append(f"{where}: low {p.low} > high {p.high}")
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
    try:
        cfg = RaykdConfig.model_validate(raw)
    except ValidationError as e:
        errs = []
        for err in e.errors():
            key = _loc_to_key(err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            line = f"{key}: {msg}"
            if line not in errs:
                errs.append(line)
        raise ConfigError(errs, source) from None
    errs = _cross_check(cfg)
    if errs:
        raise ConfigError(errs, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RaykdConfig:
    """Read a YAML config (or search-space file), apply `--set` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such file"])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"malformed YAML{where}: {getattr(e, 'problem', e)}"], str(path)) from None
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
                               "storage_path": str(Path(cfg.storage_path).resolve()),
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
