"""Teachers: a HF Wav2Vec2 / Wav2Vec2-Conformer encoder plus a wakeword head, with layer taps.

Layer index contract (the same for every teacher):

* ``0``      = output of the CNN feature encoder, i.e. the model's own ``extract_features``
  (B, T, conv_dim[-1]), after the feature projection's LayerNorm, as transformers returns it.
* ``k``      = output of block ``k`` for ``k`` in ``1..N``, i.e. the model's own
  ``hidden_states[k]`` with ``output_hidden_states`` (B, T, hidden_size).

Both kinds load through ``from_pretrained(<hub id or local dir>)``, or are built from a small
``TeacherArch`` and trained from scratch when no pretrained weights can be had.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    PreTrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2ConformerConfig,
    Wav2Vec2ConformerModel,
    Wav2Vec2Model,
)

from raykd.config import RaykdConfig, TeacherConfig, config_from_dict
from raykd.errors import UserError

SAMPLE_RATE = 16_000  # both model families are trained on 16 kHz audio
NUM_CLASSES = 2
NORM_EPS = 1e-7  # the HF Wav2Vec2FeatureExtractor's epsilon for zero-mean/unit-variance
META_FILE = "raykd_teacher.json"
HEAD_FILE = "head.safetensors"

_MODELS: dict[str, tuple[type[PreTrainedModel], type[PreTrainedConfig], str]] = {
    # kind -> (model class, config class, config.model_type)
    "wav2vec2": (Wav2Vec2Model, Wav2Vec2Config, "wav2vec2"),
    "conformer": (Wav2Vec2ConformerModel, Wav2Vec2ConformerConfig, "wav2vec2-conformer"),
}


class TeacherLoadError(UserError):
    """A pretrained teacher that cannot be loaded (offline, missing repo, wrong kind)."""


class TeacherOutput(NamedTuple):
    logits: torch.Tensor  # (B, 2)
    hidden: dict[int, torch.Tensor]  # layer -> (B, T_l, D_l), only the layers asked for


def normalize_waves(waves: torch.Tensor) -> torch.Tensor:
    """Per-clip zero mean, unit variance, as the HF feature extractor's ``do_normalize``.

    waves: (B, S) -> (B, S). Population variance and eps 1e-7, exactly as
    ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm`` computes it in numpy.
    """
    mean = waves.mean(dim=1, keepdim=True)
    var = waves.var(dim=1, keepdim=True, unbiased=False)
    return (waves - mean) / torch.sqrt(var + NORM_EPS)


class Teacher(nn.Module):
    """Encoder + mean-pooled linear head. forward: waves (B, S) at 16 kHz -> TeacherOutput."""

    def __init__(self, name: str, kind: str, encoder: PreTrainedModel):
        super().__init__()
        self.name, self.kind = name, kind
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, NUM_CLASSES)

    @property
    def depth(self) -> int:
        """Number of blocks N; valid layers are 0..N."""
        return int(self.encoder.config.num_hidden_layers)

    def layer_dim(self, layer: int) -> int:
        """Feature dim D_l of a layer: the CNN's last conv width for 0, hidden_size otherwise."""
        self.check_layers([layer])
        cfg = self.encoder.config
        return int(cfg.conv_dim[-1]) if layer == 0 else int(cfg.hidden_size)

    @property
    def frame_rate_hz(self) -> float:
        """Frames per second of every layer (50 Hz = 20 ms for the usual 320-sample stride)."""
        hop = 1
        for s in self.encoder.config.conv_stride:
            hop *= int(s)
        return SAMPLE_RATE / hop

    def check_layers(self, layers: Sequence[int]) -> None:
        for layer in layers:
            if layer < 0:
                raise ValueError(f"{self.name}: layer {layer} < 0 (0 = CNN latents, 1..{self.depth} = blocks)")
            if layer > self.depth:
                raise ValueError(f"{self.name}: layer {layer} > depth {self.depth}")

    def forward(self, waves: torch.Tensor, layers: Sequence[int] = ()) -> TeacherOutput:
        """waves (B, S) raw 16 kHz audio -> logits (B, 2) and {layer: (B, T, D_layer)}."""
        layers = sorted(set(int(l) for l in layers))
        self.check_layers(layers)
        blocks = [l for l in layers if l > 0]
        # A list selects hidden states in transformers 5: the others are never kept (None).
        out = self.encoder(normalize_waves(waves), output_hidden_states=blocks or False)
        hidden: dict[int, torch.Tensor] = {}
        if 0 in layers:
            hidden[0] = out.extract_features
        if blocks:
            states = out.hidden_states
            # LayerDrop (training mode only) skips blocks, which would shift every index after it.
            if len(states) != self.depth + 1:
                raise RuntimeError(f"{self.name}: got {len(states) - 1} block outputs for depth {self.depth} "
                                   "(LayerDrop active? taps need eval mode or layerdrop=0)")
            hidden.update({l: states[l] for l in blocks})
        logits = self.head(out.last_hidden_state.mean(dim=1))
        return TeacherOutput(logits, hidden)

    def save(self, directory: str | Path) -> None:
        """HF model via save_pretrained, the head as safetensors, and {name, kind} as json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(directory / HEAD_FILE))
        (directory / META_FILE).write_text(json.dumps({"name": self.name, "kind": self.kind}, indent=2))


def _arch_config(tcfg: TeacherConfig) -> PreTrainedConfig:
    """HF config of a small teacher trained from scratch."""
    a = tcfg.arch
    common = dict(
        hidden_size=a.hidden_size, num_hidden_layers=a.num_hidden_layers,
        num_attention_heads=a.num_attention_heads, intermediate_size=a.intermediate_size,
        conv_dim=tuple(a.conv_dim), conv_kernel=tuple(a.conv_kernel), conv_stride=tuple(a.conv_stride),
        num_conv_pos_embeddings=a.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=a.num_conv_pos_embedding_groups,
        # SpecAugment-style masking is a pre-training device that needs long sequences
        # (mask_time_length 10 of a 75-frame clip); LayerDrop would shift the layer taps.
        apply_spec_augment=False, mask_time_prob=0.0, mask_feature_prob=0.0, layerdrop=0.0,
        # LayerNorm after every conv ("layer") trains from scratch without the group-norm
        # start-up trouble of the base recipe; conv bias goes with it (as in wav2vec2-large-lv60).
        feat_extract_norm="layer", conv_bias=True,
    )
    if tcfg.kind == "wav2vec2":
        # Pre-LN blocks ("stable layer norm") are the variant that trains from scratch at lr 1e-3.
        return Wav2Vec2Config(do_stable_layer_norm=True, **common)
    return Wav2Vec2ConformerConfig(conv_depthwise_kernel_size=a.conv_depthwise_kernel_size,
                                   position_embeddings_type="relative", **common)


def _load_error(name: str, ident: str, reason: str) -> TeacherLoadError:
    return TeacherLoadError(
        f"teacher '{name}': cannot load '{ident}' ({reason}); download it to a local dir and set "
        f"teachers.{name}.pretrained to that dir, or use search_spaces/wakeword-local.yaml "
        "(teachers trained from scratch, no network)")


def _pretrained_config(name: str, kind: str, ident: str) -> PreTrainedConfig:
    """The HF config of a hub id or local dir (config.json only), checked against the teacher kind."""
    _, config_cls, model_type = _MODELS[kind]
    try:
        config = config_cls.from_pretrained(ident)
    except Exception as e:  # network, missing repo, bad id, unreadable dir: all one user error
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _load_error(name, ident, f"{type(e).__name__}: {reason}") from None
    if config.model_type != model_type:
        raise _load_error(name, ident, f"it is a '{config.model_type}' model, teacher kind '{kind}' "
                                       f"needs '{model_type}'")
    return config


def check_pretrained(cfg: RaykdConfig) -> None:
    """Fail fast, before any data or fine-tuning, on every pretrained teacher: its id must
    resolve (hub, HF cache or local dir) to a model of its kind, and the layers the config
    aligns or searches must exist in it.

    Only config.json is read (cheap). A hub id's depth is unknown when the config is loaded
    (validation stays offline), so the layer checks are run again here with the real depth:
    the errors are the schema's own, naming the dotted key. Raises TeacherLoadError / ConfigError.
    """
    depths = {name: int(_pretrained_config(name, t.kind, t.pretrained).num_hidden_layers)
              for name, t in cfg.teachers.items() if t.pretrained is not None}
    if not depths:
        return
    raw = cfg.model_dump(mode="json")
    for name, depth in depths.items():  # the same teacher, its depth now known
        raw["teachers"][name]["pretrained"] = None
        raw["teachers"][name]["arch"]["num_hidden_layers"] = depth
    config_from_dict(raw)


def _from_pretrained(name: str, kind: str, ident: str) -> PreTrainedModel:
    model_cls = _MODELS[kind][0]
    config = _pretrained_config(name, kind, ident)
    try:
        return model_cls.from_pretrained(ident, config=config, dtype=torch.float32)
    except Exception as e:
        raise _load_error(name, ident, f"{type(e).__name__}: {str(e).strip()[:200]}") from None


def build_teacher(name: str, tcfg: TeacherConfig) -> Teacher:
    """A teacher with a fresh head: pretrained encoder if ``tcfg.pretrained``, else from scratch."""
    if tcfg.pretrained is not None:
        encoder = _from_pretrained(name, tcfg.kind, tcfg.pretrained)
    else:
        encoder = _MODELS[tcfg.kind][0](_arch_config(tcfg))
    # from_pretrained leaves the encoder in eval mode; a fresh module starts in train mode.
    return Teacher(name, tcfg.kind, encoder).train()


def load_teacher(directory: str | Path) -> Teacher:
    """A teacher written by ``Teacher.save``; the encoder loads with ``from_pretrained(dir)``."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise TeacherLoadError(f"{directory}: not a stored raykd teacher (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    teacher = Teacher(meta["name"], meta["kind"], _from_pretrained(meta["name"], meta["kind"], str(directory)))
    teacher.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    return teacher.eval()
