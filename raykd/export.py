"""Student-only ONNX export with a parity check, a JSON sidecar and MLflow registration.

What leaves the project is the student (TinyConv, logits only) behind the training front end:
the projectors live in the checkpoint but never in a graph, so feature alignment costs nothing
at inference. Two graphs, one student:

    <out_dir>/student.onnx         the deployed model: input "audio" (batch, samples) float32,
                                   16 kHz mono PCM in [-1, 1] -> "logits" (batch, 2); the log-mel
                                   front end (reflect pad, DFT, |.|^2, mel matrix, log) is IN
                                   the graph, so a deployment feeds audio, not features
    <out_dir>/student_logmel.onnx  the same student without its front end: input "logmel"
                                   (batch, n_mels, frames) -> "logits", for runtimes that compute
                                   features themselves (the sidecar's "feature" recipe)
    <out_dir>/student.json         everything needed to run them: input kind, sample rate, window,
                                   streaming hop, the chosen threshold and the operating point it
                                   was measured at, labels, opset, source checkpoint and metrics

The exporter is torch 2.9's default (dynamo=True, torch.export). The front end is written in
plain ops (raykd.export_graph.GraphLogMel: reflect Pad, a DFT convolution, the mel matrix, Log),
not ONNX's STFT op, which onnxruntime runs slower and far less accurately. Each eval-mode
BatchNorm is folded into the conv before it, so a graph holds the conv weights plus one bias per
BN channel, not the BN parameters and running statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raykd import metrics as M
from raykd.checkpoint import BEST_FILE, CHECKPOINT_FORMAT
from raykd.config import FeatureConfig, RaykdConfig, config_from_dict
from raykd.data.features import LOG_FLOOR, LogMel, num_frames
from raykd.errors import UserError
from raykd.export_graph import (AUDIO_INPUT, DEFAULT_OPSET, LOGMEL_INPUT, MIN_FRAMES, MIN_OPSET, OUTPUT_NAME,
                                TorchReference, audio_to_onnx, min_samples, onnx_opset, to_onnx)
from raykd.fsutil import atomic_file
from raykd.models.student import ExportableStudent, TinyConv, build_student, count_params

__all__ = ["AUDIO_INPUT", "LOGMEL_INPUT", "OUTPUT_NAME", "DEFAULT_OPSET", "MIN_FRAMES", "audio_to_onnx", "to_onnx",
           "onnx_opset", "export_onnx", "ort_session"]

CHECKPOINT_DIR = "checkpoint"  # <run>/checkpoint/best.pt, written by train.finish

ONNX_FILE = "student.onnx"  # raw audio in: the deployed model
LOGMEL_ONNX_FILE = "student_logmel.onnx"  # log-mel in: the same student without its front end
SIDECAR_FILE = "student.json"
SIDECAR_FORMAT = 2  # 2: raw-audio student.onnx, operating point, streaming settings
LABELS = ("not_wakeword", "wakeword")  # logit index -> label
# Accepted max |logits_onnxruntime - logits_pytorch|. The log-mel graph runs the same ops as
# PyTorch; the raw-audio graph computes the front end another way (a DFT convolution, not an
# FFT): float32 rounding differs by ~1e-4 in log-mel, ~1e-5 in logits on real clips.
PARITY_ATOL = 1e-4
AUDIO_PARITY_ATOL = 1e-3
PARITY_CLIPS_PER_LABEL = 6  # real clips of each label the raw-audio parity check runs on


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree on the exported graph: an exporter bug, not user input."""


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path  # raw audio in (the deployed model)
    sidecar_path: Path
    max_abs_diff: float  # parity of onnx_path: onnxruntime vs PyTorch (LogMel + student) logits
    params: int  # student parameters (count_params)
    registered_version: int | None  # MLflow model registry version, None when not registered
    logmel_path: Path | None = None  # log-mel in
    logmel_max_abs_diff: float = 0.0
    parity_inputs: str = ""  # what the raw-audio parity ran on (dataset clips or generated audio)


# ----------------------------------------------------------------------------- checkpoint


def resolve_checkpoint(path: str | Path) -> Path:
    """best.pt from: the file itself, a checkpoint dir, a run dir or a study's best/ dir."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"{path}: no such file or folder (expected best.pt, a checkpoint, run or "
                        f"study best/ folder)")
    for candidate in (path / BEST_FILE, path / CHECKPOINT_DIR / BEST_FILE):
        if candidate.is_file():
            return candidate
    hint = ""
    if (path / "best").is_dir() or (path / "retrain").is_dir():
        hint = f" (a study? export {path / 'retrain'} or {path / 'best'})"
    raise UserError(f"{path}: no {BEST_FILE} here or in {CHECKPOINT_DIR}/{hint}")


def _read_best(path: Path) -> dict[str, Any]:
    """The saved dict of a best.pt, checked for the documented format."""
    try:
        # weights_only: a checkpoint may come from anyone; best.pt holds tensors and plain data only.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle / zip / torch errors alike
        raise UserError(f"{path}: not readable as a raykd checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or not {"config", "model"} <= state.keys():
        raise UserError(f"{path}: not a raykd checkpoint (no 'config' and 'model' entries)")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: checkpoint format {state.get('format')!r}, this raykd reads {CHECKPOINT_FORMAT}")
    return state


def load_student(path: str | Path) -> tuple[TinyConv, RaykdConfig, dict[str, Any]]:
    """(student in eval mode, its config, the best epoch's metrics) from any path resolve_checkpoint takes."""
    ckpt = resolve_checkpoint(path)
    state = _read_best(ckpt)
    cfg = config_from_dict(state["config"], source=str(ckpt))
    student = build_student(cfg.student, cfg.features.n_mels)
    weights = {k.removeprefix("student."): v for k, v in state["model"].items() if k.startswith("student.")}
    try:
        student.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UserError(f"{ckpt}: student weights do not fit its config ({str(e).splitlines()[0]})") from None
    return student.eval(), cfg, dict(state.get("metrics") or {})


# ----------------------------------------------------------------------------- ONNX runtime


def ort_session(onnx_path: Path, threads: int = 0):
    """A CPU onnxruntime session (threads 0 = onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- parity


def dataset_clips(cfg: RaykdConfig, per_label: int = PARITY_CLIPS_PER_LABEL) -> torch.Tensor | None:
    """(K, clip_samples) real clips of the run's dataset (validation split first), positives and
    negatives alike; None when the dataset is not on this machine (parity then uses generated audio)."""
    from raykd.data.audio import DatasetError, read_audio
    from raykd.data.dataset import list_clips

    try:
        clips = list_clips(cfg)
    except DatasetError:
        return None
    f = cfg.features
    order = sorted(clips, key=lambda c: (c.split != "val", c.name))
    waves = []
    for label in (1, 0):
        for c in [c for c in order if c.label == label][:per_label]:
            try:
                waves.append(read_audio(c.path, f.sample_rate, f.clip_samples))
            except DatasetError:
                continue  # an unreadable file is the dataset's problem, not the export's
    return torch.stack(waves) if waves else None


def generated_clips(features: FeatureConfig, seed: int = 0) -> torch.Tensor:
    """(3, clip_samples): silence, noise and a harmonic glide in noise (like a voiced "hey")."""
    g = torch.Generator().manual_seed(seed)
    s, sr = features.clip_samples, features.sample_rate
    t = torch.arange(s) / sr
    f0 = 120 + 180 * t / max(features.clip_seconds, 1e-3)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / sr
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 6)) * 0.2
    return torch.stack([torch.zeros(s), 0.05 * torch.randn(s, generator=g),
                        voiced + 0.01 * torch.randn(s, generator=g)])


def audio_parity_inputs(clips: torch.Tensor) -> list[torch.Tensor]:
    """Batches of audio (B, S) for the raw graph: all clips, one clip, and the clips end to end
    with an odd tail (a long stream window: the sample count is dynamic, not a multiple of hop)."""
    stream = clips.reshape(1, -1)
    return [clips, clips[:1], torch.cat([stream, stream[:, :37]], 1)]


def logmel_parity_inputs(clips: torch.Tensor, features: FeatureConfig, seed: int = 0) -> list[torch.Tensor]:
    """Log-mel batches (B, n_mels, T) for the log-mel graph: features of the clips, and random
    ones about the mean and spread of log-mel values (batch 5 and 1, a 1-second window)."""
    g = torch.Generator().manual_seed(seed)

    def rand(batch: int, frames: int) -> torch.Tensor:
        return -6.0 + 4.0 * torch.randn(batch, features.n_mels, frames, generator=g)

    real = LogMel(features)(clips)
    second = max(MIN_FRAMES, num_frames(features.model_copy(update={"clip_seconds": 1.0})))
    return [real, rand(5, real.shape[-1]), rand(1, real.shape[-1]), rand(2, second)]


@torch.no_grad()
def check_parity(reference: nn.Module, onnx_path: Path, input_name: str, inputs: list[torch.Tensor],
                 atol: float) -> float:
    """Max |logits| difference, onnxruntime vs the PyTorch reference, over input batches;
    ParityError above atol."""
    session = ort_session(onnx_path)
    worst = 0.0
    for x in inputs:
        ours = reference(x).numpy()
        theirs = session.run([OUTPUT_NAME], {input_name: x.numpy()})[0]
        diff = float(np.abs(ours - theirs).max()) if theirs.shape == ours.shape else float("inf")
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))  # NaN must fail, not compare False
    if not worst <= atol:
        raise ParityError(f"{onnx_path.name}: onnxruntime and PyTorch logits differ by {worst:.3g} "
                          f"> {atol:g}; the previous export, if any, is left as it was")
    return worst


# ----------------------------------------------------------------------------- sidecar


def feature_recipe(features: FeatureConfig) -> dict[str, Any]:
    """How audio becomes the log-mel graph's input (and what the raw-audio graph computes inside),
    read off the LogMel the student was trained with."""
    mel = LogMel(features).mel
    spec = mel.spectrogram
    window = "hann" if torch.allclose(spec.window, torch.hann_window(mel.win_length)) else "custom"
    return {
        "recipe": f"log(mel + {LOG_FLOOR:g})",
        "log": "natural", "log_floor": LOG_FLOOR,
        "melspectrogram": {  # torchaudio.transforms.MelSpectrogram arguments
            "sample_rate": mel.sample_rate, "n_fft": mel.n_fft, "win_length": mel.win_length,
            "hop_length": mel.hop_length, "n_mels": mel.n_mels, "f_min": mel.f_min, "f_max": mel.f_max,
            "pad": mel.pad, "power": mel.power, "normalized": mel.normalized, "center": spec.center,
            "pad_mode": spec.pad_mode, "window": window, "norm": mel.mel_scale.norm,
            "mel_scale": mel.mel_scale.mel_scale,
        },
    }


def operating_point(cfg: RaykdConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """The threshold a deployment uses and what validation measured at it.

    The threshold that met eval.target_fa_per_hour on the validation stream when the checkpoint
    has it (val_threshold_at_target), else train.threshold with the FRR and FA/h at that one.
    Read with .get: a checkpoint from before the streaming metrics still exports (values None)."""
    at_target = metrics.get(M.VAL_THRESHOLD_AT_TARGET)
    # Above 1 (nothing fires) when no threshold met the target: train.threshold is the usable one.
    if isinstance(at_target, (int, float)) and 0 < at_target <= 1:
        return {"threshold": float(at_target), "source": M.VAL_THRESHOLD_AT_TARGET,
                "target_fa_per_hour": cfg.eval.target_fa_per_hour,
                "frr": metrics.get(M.VAL_FRR_AT_TARGET), "fa_per_hour": metrics.get(M.VAL_FA_PER_HOUR_AT_TARGET)}
    return {"threshold": cfg.train.threshold, "source": "train.threshold",
            "target_fa_per_hour": cfg.eval.target_fa_per_hour,
            "frr": metrics.get(M.VAL_FRR), "fa_per_hour": metrics.get(M.VAL_FA_PER_HOUR)}


def build_sidecar(cfg: RaykdConfig, metrics: dict[str, Any], params: int, source: Path | str, opset: int,
                  sha256: dict[str, str], parity: dict[str, Any]) -> dict[str, Any]:
    f = cfg.features
    point = operating_point(cfg, metrics)
    return {
        "format": SIDECAR_FORMAT, "name": cfg.name, "model": ONNX_FILE, "onnx_sha256": sha256[ONNX_FILE],
        "input": {"name": AUDIO_INPUT, "kind": "raw_audio", "shape": ["batch", "samples"], "dtype": "float32",
                  "sample_rate": f.sample_rate, "channels": 1, "range": [-1.0, 1.0],
                  "clip_samples": f.clip_samples, "min_samples": min_samples(f)},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(LABELS)], "dtype": "float32",
                   "wakeword_probability": "softmax(logits)[:, 1]"},
        "logmel_model": {"model": LOGMEL_ONNX_FILE, "onnx_sha256": sha256[LOGMEL_ONNX_FILE],
                         "input": {"name": LOGMEL_INPUT, "kind": "logmel", "shape": ["batch", f.n_mels, "frames"],
                                   "dtype": "float32", "frames_per_clip": num_frames(f)},
                         "use": "the same student without its front end: feed it the 'feature' recipe's log-mel"},
        "labels": list(LABELS), "threshold": point["threshold"], "operating_point": point,
        "streaming": {"window_samples": f.clip_samples, "hop_ms": cfg.eval.hop_ms,
                      "refractory_s": cfg.eval.refractory_s},
        "sample_rate": f.sample_rate, "clip_seconds": f.clip_seconds, "n_mels": f.n_mels,
        "win_ms": f.win_ms, "hop_ms": f.hop_ms, "feature": feature_recipe(f),
        "student": cfg.student.model_dump(mode="json"), "params": params,
        "source_checkpoint": source if isinstance(source, str) else str(source.resolve()), "metrics": metrics, "opset": opset, "parity": parity,
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- export


def export_onnx(path: str | Path, out_dir: str | Path, opset: int = DEFAULT_OPSET, register: bool = True,
                tracking_uri: str | None = None, source_name: str | None = None) -> ExportResult:
    """Student only -> <out_dir>/student.onnx (raw audio) + student_logmel.onnx + student.json,
    parity-checked, optionally registered.

    Files are written to temp names and renamed into place only after both parity checks,
    so a failed export leaves any previous export intact.
    """
    import onnx

    if opset < MIN_OPSET:
        raise UserError(f"opset {opset}: the export needs opset >= {MIN_OPSET}")
    source = resolve_checkpoint(path)
    student, cfg, metrics = load_student(source)
    # The registry follows the run's tracking switch: tracking.enabled false registers nothing.
    uri = _registry_uri(cfg, tracking_uri) if register and cfg.tracking.enabled else None
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot create the export folder ({e.strerror})") from None
    f = cfg.features
    clips = dataset_clips(cfg)
    inputs = f"{len(clips)} clips of the dataset ({cfg.data.source})" if clips is not None else \
        "generated audio (the dataset is not on this machine)"
    clips = generated_clips(f, cfg.seed) if clips is None else clips
    with atomic_file(out_dir / ONNX_FILE) as tmp, atomic_file(out_dir / LOGMEL_ONNX_FILE) as tmp_mel:
        proto = audio_to_onnx(student, f, opset)
        onnx.save(proto, str(tmp))
        diff = check_parity(TorchReference(student, f).eval(), tmp, AUDIO_INPUT, audio_parity_inputs(clips),
                            AUDIO_PARITY_ATOL)
        onnx.save(to_onnx(student, f.n_mels, num_frames(f), opset), str(tmp_mel))
        mel_diff = check_parity(ExportableStudent(student).eval(), tmp_mel, LOGMEL_INPUT,
                                logmel_parity_inputs(clips, f, cfg.seed), PARITY_ATOL)
        params = count_params(student)
        parity = {"inputs": inputs, ONNX_FILE: {"max_abs_diff": diff, "atol": AUDIO_PARITY_ATOL},
                  LOGMEL_ONNX_FILE: {"max_abs_diff": mel_diff, "atol": PARITY_ATOL}}
        side = build_sidecar(cfg, metrics, params, source_name or source, onnx_opset(proto),
                             {ONNX_FILE: file_sha256(tmp), LOGMEL_ONNX_FILE: file_sha256(tmp_mel)}, parity)
    with atomic_file(out_dir / SIDECAR_FILE) as tmp:
        tmp.write_text(json.dumps(side, indent=1) + "\n")
    version = register_export(cfg, out_dir, side, diff, uri) if uri else None
    return ExportResult(out_dir / ONNX_FILE, out_dir / SIDECAR_FILE, diff, params, version,
                        out_dir / LOGMEL_ONNX_FILE, mel_diff, inputs)


def export_remote(uri: str, out_dir: str | Path | None = None, **kw: Any) -> ExportResult:
    """A checkpoint on a bucket (anything resolve_checkpoint takes): downloaded to a temp dir and
    exported there; the export goes beside it on the bucket (<checkpoint>/export) or to `out_dir`."""
    import dataclasses
    import tempfile

    from raykd import storage as S

    with tempfile.TemporaryDirectory(prefix="raykd-export-") as tmp:
        try:
            local = S.download_dir(uri, Path(tmp) / "src")
        except FileNotFoundError:
            raise UserError(f"{uri}: no such file or folder (expected best.pt, a checkpoint, run or "
                            f"study best/ folder)") from None
        ckpt = resolve_checkpoint(local)
        remote_ckpt = S.join(uri, *ckpt.relative_to(local).parts) if local.is_dir() else uri
        if out_dir is not None and not S.is_uri(str(out_dir)):
            return export_onnx(ckpt, out_dir, source_name=str(remote_ckpt), **kw)
        dest = str(out_dir) if out_dir is not None else S.join(remote_ckpt.rsplit("/", 1)[0], "export")
        res = export_onnx(ckpt, Path(tmp) / "export", source_name=str(remote_ckpt), **kw)
        S.upload_dir(Path(tmp) / "export", dest)
    return dataclasses.replace(res, onnx_path=S.join(dest, ONNX_FILE), sidecar_path=S.join(dest, SIDECAR_FILE),
                               logmel_path=S.join(dest, LOGMEL_ONNX_FILE))


def _registry_uri(cfg: RaykdConfig, override: str | None) -> str:
    """The argument, else tracking.uri, $MLFLOW_TRACKING_URI, sqlite:///<cwd>/mlflow.db; checked reachable."""
    from raykd import tracking as T

    uri = override or T.tracking_uri(cfg)
    T.check_reachable(uri)  # before the export, not after it
    return uri


def register_export(cfg: RaykdConfig, out_dir: Path, side: dict[str, Any], diff: float, uri: str) -> int:
    """Log the ONNX model (+ sidecar) under a run tagged raykd.kind=export; register <name>-student."""
    import mlflow
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from raykd import tracking as T

    signature = ModelSignature(
        Schema([TensorSpec(np.dtype(np.float32), (-1, -1), AUDIO_INPUT)]),
        Schema([TensorSpec(np.dtype(np.float32), (-1, len(LABELS)), OUTPUT_NAME)]))
    exp_id = T.experiment_id(uri, cfg.tracking.experiment)
    numeric = {k: float(v) for k, v in side["metrics"].items() if isinstance(v, (int, float))}
    prev_tracking, prev_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"export-{cfg.name}", tags={T.KIND_TAG: "export"}):
            mlflow.log_params({"source_checkpoint": side["source_checkpoint"], "opset": side["opset"],
                               "student_params": side["params"], "threshold": side["threshold"],
                               "input": side["input"]["kind"]})
            mlflow.log_metrics({**numeric, "parity_max_abs_diff": diff})  # the deployed graph's
            info = mlflow.onnx.log_model(
                onnx.load(str(out_dir / ONNX_FILE)), name="student", registered_model_name=f"{cfg.name}-student",
                signature=signature, save_as_external_data=False, extra_files=[str(out_dir / SIDECAR_FILE), str(out_dir / LOGMEL_ONNX_FILE)],
                # Pinned here: MLflow would otherwise infer them in a slow subprocess.
                pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"])
    finally:
        mlflow.set_tracking_uri(prev_tracking)
        mlflow.set_registry_uri(prev_registry)
    return int(info.registered_model_version)
