"""The typed schema of a raykd config (frozen, unknown keys rejected): the only place defaults live."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Union

from pydantic import Field, field_validator, model_validator

from raykd.config.base import Strict
from raykd.config.search import SearchConfig

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
    "could you pass the salt", "we should leave before it rains", "my phone is almost out of battery",
    "the meeting starts at nine", "let me think about it", "dinner is ready",
    "where did I put my keys", "that sounds like a good idea", "turn the volume down",
    "I will call you back later", "the train was late again", "have you seen my glasses",
    "it is colder than yesterday", "please close the door", "remind me to buy milk",
    "the series finale was great", "say that again", "hey there how are you",
    "is anybody home", "the cereal is on the top shelf", "a virus spreads quickly",
    "siri is a different assistant", "read me the news", "lock the front door",
)


class SynthConfig(Strict):
    """Offline synthetic wakeword data from espeak-ng voices (README "Data")."""

    phrase: str = "hey sirius"
    near_misses: tuple[str, ...] = DEFAULT_NEAR_MISSES
    generated_near_misses: int = Field(48, ge=0)  # made from the phrase's phonemes (raykd.data.nearmiss)
    other_speech: tuple[str, ...] = DEFAULT_OTHER_SPEECH
    # espeak-ng voices (accents) and variants (timbres); a speaker = "<voice>+<variant>".
    # Empty = every usable one espeak ships (raykd.data.voices); a list narrows the pool.
    voices: tuple[str, ...] = ()
    variants: tuple[str, ...] = ()
    speakers: int = Field(120, ge=3)  # drawn from the pool, seeded; val/test_fraction of them held out
    english_share: float = Field(0.5, ge=0, le=1)  # of each split's speakers, from English voices
    val_families: tuple[str, ...] = ("klatt", "germanic")  # whole voice families never in training
    test_families: tuple[str, ...] = ("en-scotland", "slavic")
    rates: tuple[int, ...] = Field((130, 150, 170, 190), min_length=1)  # words per minute
    pitches: tuple[int, ...] = Field((25, 40, 55, 70, 85), min_length=1)  # espeak pitch 0..99
    pitch_ranges: tuple[int, ...] = Field((20, 50, 80), min_length=1)  # espeak intonation range: 0 monotone, 50 normal
    word_gaps: tuple[int, ...] = Field((0, 0, 3), min_length=1)  # pause between words, x 10 ms
    # clause ending, which sets espeak's tune: statement, question, exclamation, continuation
    intonations: tuple[str, ...] = Field((".", "?", "!", ","), min_length=1)
    positives_per_speaker: int = Field(6, ge=1)
    near_misses_per_speaker: int = Field(5, ge=0)  # from near_misses + the generated ones
    other_per_speaker: int = Field(2, ge=0)
    nonspeech_per_speaker: int = Field(2, ge=0)  # silence and coloured noise
    stream_minutes: float = Field(30.0, ge=0)  # continuous negative speech per val/test split
    val_fraction: float = Field(0.15, gt=0, lt=0.5)  # fraction of speakers, not clips
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    workers: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _families_apart(self) -> "SynthConfig":
        both = sorted(set(self.val_families) & set(self.test_families))
        if both:
            raise ValueError(f"val_families and test_families share {both}; a family is in one split only")
        return self


class AugmentConfig(Strict):
    """Waveform and spectrogram augmentation (raykd.data.augment). Each acoustic effect has its
    own probability per (clip, view) and its range; all draws are seeded by (seed, clip, view)."""

    enabled: bool = True
    noise_dir: Path | None = None  # a folder of noise WAVs; None = synthetic coloured noise
    noise_prob: float = Field(0.8, ge=0, le=1)
    snr_db: tuple[float, float] = (5.0, 25.0)
    gain_db: tuple[float, float] = (-6.0, 6.0)
    time_shift_ms: float = Field(100.0, ge=0)
    # speed perturbation (tempo and pitch together) by a factor, then crop/pad to the clip
    speed_prob: float = Field(0.5, ge=0, le=1)
    speed_range: tuple[float, float] = (0.9, 1.1)
    # pitch shift, duration kept (phase vocoder + resampling)
    pitch_prob: float = Field(0.3, ge=0, le=1)
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    # room reverberation: the user's impulse responses (rir_dir), else simulated shoebox rooms
    reverb_prob: float = Field(0.5, ge=0, le=1)
    rir_dir: Path | None = None
    rir_bank_size: int = Field(64, ge=1)  # simulated rooms, built once per run (seeded)
    rt60_s: tuple[float, float] = (0.2, 0.8)
    drr_db: tuple[float, float] = (-3.0, 12.0)
    # babble: several negative speech clips of the train split mixed as background talkers
    babble_prob: float = Field(0.3, ge=0, le=1)
    babble_snr_db: tuple[float, float] = (10.0, 25.0)
    babble_talkers: tuple[int, int] = (3, 6)
    babble_bank_size: int = Field(256, ge=1)
    # telephone-like channel: band-pass low..high Hz, then (independently) 8-bit mu-law
    bandlimit_prob: float = Field(0.2, ge=0, le=1)
    bandlimit_low_hz: tuple[float, float] = (200.0, 400.0)
    bandlimit_high_hz: tuple[float, float] = (3000.0, 4000.0)
    mulaw_prob: float = Field(0.1, ge=0, le=1)
    freq_masks: int = Field(2, ge=0)
    freq_mask_width: int = Field(6, ge=0)
    time_masks: int = Field(2, ge=0)
    time_mask_width: int = Field(10, ge=0)
    views: int = Field(2, ge=1)  # fixed augmented views per clip (what the teacher-output cache stores)

    @field_validator("snr_db", "gain_db", "speed_range", "pitch_semitones", "rt60_s", "drr_db",
                     "babble_snr_db", "babble_talkers", "bandlimit_low_hz", "bandlimit_high_hz")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"low {v[0]} > high {v[1]}")
        return v

    @field_validator("speed_range", "rt60_s", "babble_talkers", "bandlimit_low_hz", "bandlimit_high_hz")
    @classmethod
    def _positive(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] <= 0:
            raise ValueError(f"low {v[0]} must be > 0")
        return v

    @model_validator(mode="after")
    def _band(self) -> "AugmentConfig":
        if self.bandlimit_low_hz[1] >= self.bandlimit_high_hz[0]:
            raise ValueError(f"bandlimit_low_hz {list(self.bandlimit_low_hz)} must lie below "
                             f"bandlimit_high_hz {list(self.bandlimit_high_hz)}")
        return self


class DataConfig(Strict):
    source: Literal["synth", "folder", "manifest"] = "synth"
    root: Path = Path("data/wakeword")  # synth output, or the user's folder (positive/, negative/)
    manifest: Path | None = None  # CSV path,label[,speaker[,split]] when source = manifest
    # the user's own recordings added to the source: a folder (positive/, negative/) or a CSV
    extra: Path | None = None
    long_negative_pieces: int = Field(32, ge=1)  # a long negative in train -> at most this many clips
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


class EvalConfig(Strict):
    """How a detector is scored: streaming windows over audio of any length (raykd.detect)."""

    hop_ms: float = Field(100.0, gt=0)  # a window of features.clip_seconds every hop_ms
    refractory_s: float = Field(1.0, ge=0)  # after a trigger, the detector is silent this long
    target_fa_per_hour: float = Field(0.5, gt=0)  # the operating point: threshold meeting this FA/h


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


# ----------------------------------------------------------------------------- top level

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a run/study folder name


class RaykdConfig(Strict):
    name: str = "wakeword"
    seed: int = Field(0, ge=0, lt=2**32)  # numpy and Optuna refuse negative seeds (after hours of work)
    cache_dir: Path = Path(".raykd")  # fine-tuned teachers, teacher-output caches
    # Train runs and studies: a local / shared path, or an s3:// or gs:// URI (raykd.storage).
    storage_path: str = "runs"
    data: DataConfig = DataConfig()
    features: FeatureConfig = FeatureConfig()
    eval: EvalConfig = EvalConfig()
    teachers: dict[str, TeacherConfig] = Field(default_factory=_default_teachers)
    student: StudentConfig = StudentConfig()
    distillation: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()
    teacher_cache: TeacherCacheConfig = TeacherCacheConfig()
    tracking: TrackingConfig = TrackingConfig()
    search: SearchConfig | None = None

    @field_validator("storage_path", mode="before")
    @classmethod
    def _storage_uri(cls, v: object) -> object:
        """A URI is kept as written (a Path would fold `s3://b` into `s3:/b`); a path as a str."""
        from raykd.storage import check_uri

        if isinstance(v, Path):
            return str(v)
        return check_uri(v) if isinstance(v, str) else v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        # The name is a folder under storage_path: '../x' or 'a/b' would write elsewhere.
        if not PLAIN_NAME.fullmatch(v) or v in (".", ".."):
            raise ValueError(f"{v!r} must be a plain name: letters, digits, '.', '_', '-' (no '/', "
                             "not empty, not '..'), starting with a letter or digit")
        return v

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
