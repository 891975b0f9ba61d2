"""The exported graphs, built from the training modules: the student alone (log-mel in) and the
student behind its front end written in exportable ops (raw audio in).

Kept apart from raykd.export (files, parity, sidecar, registry) because it is model code:
nn.Modules that only compute, and the torch.onnx calls that trace them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raykd.config import FeatureConfig
from raykd.data.features import LOG_FLOOR, LogMel, stft_sizes
from raykd.errors import UserError
from raykd.models.student import ExportableStudent, TinyConv

AUDIO_INPUT, LOGMEL_INPUT, OUTPUT_NAME = "audio", "logmel", "logits"
# torch 2.9's exporter emits opset 18; its down-conversion to 17 fails on ReduceMean's axes input.
DEFAULT_OPSET, MIN_OPSET = 18, 17
MIN_FRAMES = 2  # smallest dynamic frame count (torch.export specialises sizes 0 and 1)


class GraphLogMel(nn.Module):
    """LogMel (torchaudio MelSpectrogram, center=True, power 2, natural log) written with ops
    that export to plain ONNX: reflect Pad -> Conv1d with a fixed windowed-DFT basis (real and
    imaginary rows) -> re^2 + im^2 -> 1x1 Conv1d with the mel matrix -> log(. + LOG_FLOOR).

    Why not ONNX's STFT op (what torch exports torchaudio's spectrogram to): onnxruntime 1.32
    computes it ~10x slower than this and 100x less accurately (log-mel off by 2.6e-2 on real
    clips; this graph: 1.5e-4, torch's own float32 error is 1.1e-4). The 1x1 conv, not a
    MatMul, because torch.export's matmul decomposition pins the batch size.
    (B, S) float waveform -> (B, n_mels, 1 + S // hop).
    """

    def __init__(self, logmel: LogMel):
        super().__init__()
        spec, mel = logmel.mel.spectrogram, logmel.mel
        recipe = (spec.center, spec.pad_mode, spec.power, spec.normalized, spec.onesided, mel.pad)
        if recipe != (True, "reflect", 2.0, False, True, 0):
            raise ValueError(f"LogMel (center, pad_mode, power, normalized, onesided, pad) = {recipe}: "
                             f"GraphLogMel implements (True, 'reflect', 2.0, False, True, 0) only")
        n_fft, self.hop = spec.n_fft, spec.hop_length
        window = spec.window.double()
        left = (n_fft - window.shape[0]) // 2  # torch.stft centres a shorter window in the frame
        window = F.pad(window, (left, n_fft - window.shape[0] - left))
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        angle = 2 * torch.pi * k * torch.arange(n_fft, dtype=torch.float64)[None] / n_fft
        basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2F, n_fft)
        self.register_buffer("dft", basis.float()[:, None, :])  # (2F, 1, n_fft), built in float64
        self.register_buffer("mel", mel.mel_scale.fb.t().contiguous()[:, :, None])  # (n_mels, F, 1)
        self.n_freqs, self.pad = n_fft // 2 + 1, n_fft // 2

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        x = F.pad(waves.unsqueeze(1), (self.pad, self.pad), mode="reflect")  # (B, 1, S + n_fft)
        y = F.conv1d(x, self.dft, stride=self.hop)  # (B, 2F, T)
        power = y[:, :self.n_freqs] ** 2 + y[:, self.n_freqs:] ** 2
        return torch.log(F.conv1d(power, self.mel) + LOG_FLOOR)


class RawAudioStudent(nn.Module):
    """The deployed graph: (B, S) 16 kHz PCM -> log-mel in the graph -> student -> logits (B, 2)."""

    def __init__(self, student: TinyConv, features: FeatureConfig):
        super().__init__()
        self.frontend = GraphLogMel(LogMel(features))
        self.student = student  # named so its weights keep their checkpoint names in the graph

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.student(self.frontend(waves))[0]


def min_samples(features: FeatureConfig) -> int:
    """Shortest input the raw-audio graph takes: one FFT frame (reflect padding needs > n_fft / 2)."""
    return stft_sizes(features)[0]


def _export(model: nn.Module, example: torch.Tensor, input_name: str, dims: dict, opset: int):
    import onnx

    program = torch.onnx.export(model.eval(), (example,), None, input_names=[input_name],
                                output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                                dynamic_shapes=(dims,),                                 verbose=False)
    proto = program.model_proto
    if onnx_opset(proto) != opset:
        # torch logs the failed down-conversion and carries on at its own opset: say so plainly.
        raise UserError(f"opset {opset}: torch {torch.__version__.split('+')[0]} could not convert the graph to it "
                        f"(it made opset {onnx_opset(proto)}); export with opset {onnx_opset(proto)}")
    onnx.checker.check_model(proto)
    return proto


def to_onnx(student: TinyConv, n_mels: int, frames: int, opset: int = DEFAULT_OPSET):
    """The log-mel graph: logmel (batch, n_mels, frames) -> logits (batch, 2); batch and frames dynamic."""
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("frames", min=MIN_FRAMES)}
    return _export(ExportableStudent(student), torch.zeros(2, n_mels, frames), LOGMEL_INPUT, dims, opset)


def audio_to_onnx(student: TinyConv, features: FeatureConfig, opset: int = DEFAULT_OPSET):
    """The deployed graph: audio (batch, samples) -> logits (batch, 2); batch and samples dynamic."""
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("samples", min=min_samples(features))}
    example = 0.1 * torch.randn(2, features.clip_samples, generator=torch.Generator().manual_seed(0))
    return _export(RawAudioStudent(student, features), example, AUDIO_INPUT, dims, opset)


def onnx_opset(proto) -> int:
    """Version of the default ONNX domain the graph really uses."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


class TorchReference(nn.Module):
    """What the raw-audio graph must reproduce: training's LogMel (torchaudio) + the student."""

    def __init__(self, student: TinyConv, features: FeatureConfig):
        super().__init__()
        self.logmel, self.student = LogMel(features), student

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        return self.student(self.logmel(waves))[0]
