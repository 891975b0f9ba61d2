"""Student-only ONNX export with a parity check, a JSON sidecar and MLflow registration; and
evaluation of an export on a folder or CSV of clips.

What leaves the project is `ExportableStudent` (TinyConv, logits only): the projectors live
in the checkpoint but never in the graph, so feature alignment costs nothing at inference.

    <out_dir>/student.onnx   input "logmel" (batch, n_mels, frames) float32 -> "logits" (batch, 2)
    <out_dir>/student.json   everything needed to run it: the feature recipe, labels,
                             threshold, opset, the source checkpoint and its best metrics

The exporter is torch 2.9's default (dynamo=True, torch.export): it folds each eval-mode
BatchNorm into the conv before it, so the graph holds the conv weights plus one bias per
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

from raykd.config import DataConfig, FeatureConfig, RaykdConfig, config_from_dict
from raykd.data.features import LOG_FLOOR, LogMel, num_frames
from raykd.errors import UserError
from raykd.fsutil import atomic_file
from raykd.models.student import ExportableStudent, TinyConv, build_student, count_params

from raykd.checkpoint import BEST_FILE, CHECKPOINT_FORMAT

CHECKPOINT_DIR = "checkpoint"  # <run>/checkpoint/best.pt, written by train.finish

ONNX_FILE = "student.onnx"
SIDECAR_FILE = "student.json"
SIDECAR_FORMAT = 1
INPUT_NAME, OUTPUT_NAME = "logmel", "logits"
LABELS = ("not_wakeword", "wakeword")  # logit index -> label
# torch 2.9's exporter emits opset 18; its down-conversion to 17 fails on ReduceMean's axes input.
DEFAULT_OPSET, MIN_OPSET = 18, 17
PARITY_ATOL = 1e-4  # max |logits_onnxruntime - logits_pytorch| accepted
MIN_FRAMES = 2  # smallest dynamic frame count (torch.export specialises sizes 0 and 1)


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree on the exported graph: an exporter bug, not user input."""


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    max_abs_diff: float  # parity, onnxruntime vs PyTorch logits
    params: int  # student parameters (count_params)
    registered_version: int | None  # MLflow model registry version, None when not registered


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


# ----------------------------------------------------------------------------- ONNX


def to_onnx(student: TinyConv, n_mels: int, frames: int, opset: int = DEFAULT_OPSET):
    """ExportableStudent as an ONNX ModelProto: logmel (batch, n_mels, frames) -> logits (batch, 2).

    Batch and frames are dynamic; `frames` only sets the example used for tracing.
    """
    import onnx

    model = ExportableStudent(student).eval()
    example = torch.zeros(2, n_mels, frames)
    dims = {"feats": {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("frames", min=MIN_FRAMES)}}
    program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                opset_version=opset, dynamo=True, dynamic_shapes=dims, verbose=False)
    proto = program.model_proto
    if onnx_opset(proto) != opset:
        # torch logs the failed down-conversion and carries on at its own opset: say so plainly.
        raise UserError(f"opset {opset}: torch {torch.__version__.split('+')[0]} could not convert the graph to it "
                        f"(it made opset {onnx_opset(proto)}); export with opset {onnx_opset(proto)}")
    onnx.checker.check_model(proto)
    return proto


def onnx_opset(proto) -> int:
    """Version of the default ONNX domain the graph really uses."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def ort_session(onnx_path: Path, threads: int = 0):
    """A CPU onnxruntime session (threads 0 = onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def parity_inputs(features: FeatureConfig, seed: int = 0) -> list[torch.Tensor]:
    """Log-mel batches (B, n_mels, T) to compare runtimes on: random, and features of silence,
    noise and a harmonic chirp in noise (the value range real clips have); batch 1 and 5,
    the training clip length and a 1-second window."""
    g = torch.Generator().manual_seed(seed)
    s, sr = features.clip_samples, features.sample_rate
    t = torch.arange(s) / sr
    f0 = 120 + 180 * t / max(features.clip_seconds, 1e-3)  # glide, like a voiced "hey"
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / sr
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 6)) * 0.2
    waves = torch.stack([torch.zeros(s), 0.05 * torch.randn(s, generator=g),
                         voiced + 0.01 * torch.randn(s, generator=g)])
    real = LogMel(features)(waves)

    def rand(batch: int, frames: int) -> torch.Tensor:  # about the mean and spread of log-mel values
        return -6.0 + 4.0 * torch.randn(batch, features.n_mels, frames, generator=g)

    frames = real.shape[-1]
    second = max(MIN_FRAMES, num_frames(features.model_copy(update={"clip_seconds": 1.0})))
    return [real, rand(5, frames), rand(1, frames), rand(2, second)]


@torch.no_grad()
def check_parity(student: TinyConv, onnx_path: Path, inputs: list[torch.Tensor]) -> float:
    """Max |logits| difference, onnxruntime vs PyTorch, over input batches; ParityError above PARITY_ATOL."""
    model = ExportableStudent(student).eval()
    session = ort_session(onnx_path)
    worst = 0.0
    for x in inputs:
        ours = model(x).numpy()
        theirs = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        diff = float(np.abs(ours - theirs).max()) if theirs.shape == ours.shape else float("inf")
        worst = max(worst, diff if np.isfinite(diff) else float("inf"))  # NaN must fail, not compare False
    if not worst <= PARITY_ATOL:
        raise ParityError(f"{onnx_path}: onnxruntime and PyTorch logits differ by {worst:.3g} "
                          f"> {PARITY_ATOL:g}; the previous export, if any, is left as it was")
    return worst


# ----------------------------------------------------------------------------- sidecar


def feature_recipe(features: FeatureConfig) -> dict[str, Any]:
    """How to turn audio into the model's input, read off the LogMel the student was trained with."""
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


def build_sidecar(cfg: RaykdConfig, metrics: dict[str, Any], params: int, source: Path, opset: int,
                  onnx_sha256: str) -> dict[str, Any]:
    f = cfg.features
    return {
        "format": SIDECAR_FORMAT, "name": cfg.name, "model": ONNX_FILE, "onnx_sha256": onnx_sha256,
        "input": {"name": INPUT_NAME, "shape": ["batch", f.n_mels, "frames"], "dtype": "float32",
                  "frames_per_clip": num_frames(f)},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(LABELS)], "dtype": "float32",
                   "wakeword_probability": "softmax(logits)[:, 1]"},
        "labels": list(LABELS), "threshold": cfg.train.threshold,
        "sample_rate": f.sample_rate, "clip_seconds": f.clip_seconds, "n_mels": f.n_mels,
        "win_ms": f.win_ms, "hop_ms": f.hop_ms, "feature": feature_recipe(f),
        "student": cfg.student.model_dump(mode="json"), "params": params,
        "source_checkpoint": str(source.resolve()), "metrics": metrics, "opset": opset,
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- export


def export_onnx(path: str | Path, out_dir: str | Path, opset: int = DEFAULT_OPSET, register: bool = True,
                tracking_uri: str | None = None) -> ExportResult:
    """Student only -> <out_dir>/student.onnx + student.json, parity-checked, optionally registered.

    Files are written to a temp folder and renamed into place only after the parity check,
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
    # The ONNX file replaces a previous one only after its parity check passed.
    with atomic_file(out_dir / ONNX_FILE) as tmp:
        proto = to_onnx(student, cfg.features.n_mels, num_frames(cfg.features), opset)
        onnx.save(proto, str(tmp))
        diff = check_parity(student, tmp, parity_inputs(cfg.features, cfg.seed))
        params = count_params(student)
        side = build_sidecar(cfg, metrics, params, source, onnx_opset(proto), _sha256(tmp))
    with atomic_file(out_dir / SIDECAR_FILE) as tmp:
        tmp.write_text(json.dumps(side, indent=1) + "\n")
    version = register_export(cfg, out_dir, side, diff, uri) if uri else None
    return ExportResult(out_dir / ONNX_FILE, out_dir / SIDECAR_FILE, diff, params, version)


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
        Schema([TensorSpec(np.dtype(np.float32), (-1, side["n_mels"], -1), INPUT_NAME)]),
        Schema([TensorSpec(np.dtype(np.float32), (-1, len(LABELS)), OUTPUT_NAME)]))
    exp_id = T.experiment_id(uri, cfg.tracking.experiment)
    numeric = {k: float(v) for k, v in side["metrics"].items() if isinstance(v, (int, float))}
    prev_tracking, prev_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"export-{cfg.name}", tags={T.KIND_TAG: "export"}):
            mlflow.log_params({"source_checkpoint": side["source_checkpoint"], "opset": side["opset"],
                               "student_params": side["params"], "threshold": side["threshold"]})
            mlflow.log_metrics({**numeric, "parity_max_abs_diff": diff})
            info = mlflow.onnx.log_model(
                onnx.load(str(out_dir / ONNX_FILE)), name="student", registered_model_name=f"{cfg.name}-student",
                signature=signature, save_as_external_data=False, extra_files=[str(out_dir / SIDECAR_FILE)],
                # Pinned here: MLflow would otherwise infer them in a slow subprocess.
                pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"])
    finally:
        mlflow.set_tracking_uri(prev_tracking)
        mlflow.set_registry_uri(prev_registry)
    return int(info.registered_model_version)


# ----------------------------------------------------------------------------- evaluation


def load_export(model: str | Path) -> tuple[Path, dict[str, Any]]:
    """(student.onnx, its sidecar) from an export folder or the .onnx file (sidecar beside it)."""
    model = Path(model)
    onnx_path = model / ONNX_FILE if model.is_dir() else model
    side_path = onnx_path.with_suffix(".json")
    for p in (onnx_path, side_path):
        if not p.is_file():
            raise UserError(f"{p}: no such file (expected an export folder with {ONNX_FILE} and {SIDECAR_FILE})")
    side = json.loads(side_path.read_text())
    if side.get("format") != SIDECAR_FORMAT:
        raise UserError(f"{side_path}: sidecar format {side.get('format')!r}, this raykd reads {SIDECAR_FORMAT}")
    if side["onnx_sha256"] != _sha256(onnx_path):
        raise UserError(f"{side_path}: does not describe {onnx_path} (checksum differs); export again")
    return onnx_path, side


def sidecar_features(side: dict[str, Any]) -> FeatureConfig:
    """The FeatureConfig an export was trained with; refuses one whose LogMel has changed since."""
    f = FeatureConfig(**{k: side[k] for k in ("sample_rate", "clip_seconds", "n_mels", "win_ms", "hop_ms")})
    if feature_recipe(f) != side["feature"]:
        raise UserError(f"{side['model']}: its feature recipe differs from this raykd's LogMel; "
                        f"evaluate it with the raykd version that exported it")
    return f


def read_eval_clips(data_path: str | Path, features: FeatureConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip of a folder (positive/, negative/) or CSV manifest, all splits:
    (N, clip_samples) waves cropped/padded like training, (N,) labels."""
    from raykd.data.audio import DatasetError, read_audio
    from raykd.data.dataset import list_clips

    data_path = Path(data_path)
    if data_path.is_dir():
        data = DataConfig(source="folder", root=data_path)
    elif data_path.is_file():
        data = DataConfig(source="manifest", manifest=data_path)
    else:
        raise UserError(f"{data_path}: no such folder (positive/, negative/) or CSV manifest")
    try:
        clips = list_clips(RaykdConfig(data=data, features=features))
        waves = [read_audio(c.path, features.sample_rate, features.clip_samples) for c in clips]
    except DatasetError as e:  # a ValueError, not (yet) a UserError: one line for the CLI
        raise UserError(str(e)) from None
    return torch.stack(waves), torch.tensor([c.label for c in clips], dtype=torch.int64)


def wakeword_probs(session: Any, feats: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, n_mels, T) log-mel -> (N,) softmax wakeword probability from an onnxruntime session."""
    out = [session.run([OUTPUT_NAME], {INPUT_NAME: feats[i:i + batch_size].numpy()})[0]
           for i in range(0, len(feats), batch_size)]
    return torch.from_numpy(np.concatenate(out)).softmax(-1)[:, LABELS.index("wakeword")]


@torch.no_grad()
def evaluate_onnx(model_dir_or_onnx: str | Path, data_path: str | Path,
                  threshold: float | None = None) -> dict[str, float | int]:
    """Accuracy, FRR and false accepts per hour of an export on labelled clips (threshold: the sidecar's)."""
    from raykd.metrics import detection_metrics

    onnx_path, side = load_export(model_dir_or_onnx)
    features = sidecar_features(side)
    threshold = side["threshold"] if threshold is None else threshold
    if not 0 < threshold < 1:
        raise UserError(f"threshold {threshold}: must be between 0 and 1")
    waves, labels = read_eval_clips(data_path, features)
    probs = wakeword_probs(ort_session(onnx_path), LogMel(features)(waves))
    m = detection_metrics(probs, labels, threshold, features.clip_seconds)
    return {"clips": len(labels), "positives": m.n_pos, "negatives": m.n_neg, "threshold": threshold,
            "accuracy": m.accuracy, "frr": m.frr, "fa_per_hour": m.fa_per_hour}
