"""Student checkpoints: weights with their ModelConfig stored next to them, in one file.

* ``.safetensors``: tensors + metadata ``{"format": "csl_ros.student", "format_version": "1",
  "model_config": <ModelConfig JSON>, ...user metadata}``;
* anything else (``.pt``/``.pth``): ``torch.save({"format": ..., "format_version": ..., "model_config":
  <dict>, "state_dict": ..., "metadata": {...}})``, read back with ``torch.load(weights_only=True)``.

Stored precision (``storage=`` of :func:`save_checkpoint`): ``float32``; ``float16``; or ``int8``, where
every conv / linear weight of at least ``INT8_MIN_NUMEL`` elements is stored as symmetric int8 with one
float32 scale per output channel (``<key>`` + ``<key>.__int8_scale``) and every other tensor as float16.
Loading always gives a float32 model: int8 weights are dequantised (``q * scale``), which halves the
float16 file again at a per-weight error of at most half a quantisation step (checked by the tests).

Integrity: every checkpoint embeds ``weights_sha256`` (metadata), the SHA-256 of its stored tensors
(:mod:`csl_ros.model.integrity`); every load recomputes it and refuses a mismatch or a file without
it, naming the file. ``.pt`` files are read with ``weights_only=True`` only.

Loading builds the model from the stored config and refuses any disagreement between config and
weights (missing, unexpected or mis-shaped tensors), or between the stored config and one the caller
expects, with a message naming the file and the offending keys.

Metadata is free-form strings here; the detector settings a checkpoint may carry (input size, tuned
score threshold) are checked against the configuration schema one layer up, in
:mod:`csl_ros.model_settings`, which also holds the tool that rewrites them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .config import ModelConfig
from .integrity import WEIGHTS_SHA256, sha256_file as file_sha256, torch_load_tensors, verify_weights, weights_sha256
from .student import CSLStudent

FORMAT = "csl_ros.student"
FORMAT_VERSION = "1"
STORAGE_DTYPES = ("float32", "float16", "int8")
INT8_SCALE_SUFFIX = ".__int8_scale"
INT8_MIN_NUMEL = 1024  # small tensors (norms, biases, embeddings of a few values) stay float16


@dataclass
class LoadedCheckpoint:
    model: CSLStudent
    config: ModelConfig
    metadata: dict[str, str] = field(default_factory=dict)
    sha256: str = ""


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``(q, scale)`` with ``weight ~= q * scale``, ``scale`` shaped
    to broadcast over dim 0 (one value per output channel, ``max|w| / 127``)."""
    w = weight.detach().float()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-12)
    scale = (amax / 127.0).reshape((-1,) + (1,) * (w.dim() - 1))
    return torch.round(w / scale).clamp_(-127, 127).to(torch.int8), scale


def _stored_state(model: CSLStudent, storage: str) -> dict[str, Tensor]:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if storage == "float32":
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if not v.is_floating_point():
            out[k] = v
        elif storage == "int8" and v.dim() >= 2 and v.numel() >= INT8_MIN_NUMEL:
            out[k], out[k + INT8_SCALE_SUFFIX] = (t.contiguous() for t in quantize_int8(v))
        else:
            out[k] = v.half()
    return out


def _dequantized_state(path: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Undo the int8 storage (see the module docstring); a quantised tensor without its scale, or the
    reverse, is a corrupt file."""
    scales = {k[:-len(INT8_SCALE_SUFFIX)]: v for k, v in state.items() if k.endswith(INT8_SCALE_SUFFIX)}
    out = {k: v for k, v in state.items() if not k.endswith(INT8_SCALE_SUFFIX)}
    for k, v in out.items():
        if v.dtype == torch.int8 and k not in scales:
            raise ValueError(f"{path}: int8 tensor {k!r} has no {INT8_SCALE_SUFFIX!r} scale (corrupt file)")
    for k, scale in scales.items():
        if k not in out or out[k].dtype != torch.int8:
            raise ValueError(f"{path}: scale {k + INT8_SCALE_SUFFIX!r} without its int8 tensor (corrupt file)")
        out[k] = out[k].float() * scale.float()
    return out


def save_checkpoint(path: str | os.PathLike, model: CSLStudent, metadata: dict[str, str] | None = None,
                    storage: str = "float32", check: Callable[[dict[str, str]], None] | None = None) -> str:
    """Write ``model``'s weights and config to ``path`` (format by extension); returns the file's
    SHA-256. ``metadata``: extra string key/values (e.g. training step, data set). ``storage``: one of
    STORAGE_DTYPES (see the module docstring); recorded as the ``stored_dtype`` metadata."""
    path = os.fspath(path)
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage={storage!r}: must be one of {STORAGE_DTYPES}")
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    reserved = {"format", "format_version", "model_config", "stored_dtype", WEIGHTS_SHA256} & set(metadata)
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are reserved")
    if check is not None:
        check(metadata)  # refuse a wrong setting before writing
    metadata["stored_dtype"] = storage
    state = _stored_state(model, storage)
    _write(path, state, model.config, metadata)
    return file_sha256(path)


def _write(path: str, state: dict[str, Tensor], config: ModelConfig, metadata: dict[str, str]) -> None:
    """Write stored tensors + config + metadata, embedding the tensors' SHA-256; atomic."""
    metadata = {**metadata, WEIGHTS_SHA256: weights_sha256(state)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    if path.endswith(".safetensors"):
        save_file(state, tmp, metadata={"format": FORMAT, "format_version": FORMAT_VERSION,
                                        "model_config": config.to_json(), **metadata})
    else:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": config.to_dict(),
                    "state_dict": state, "metadata": metadata}, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name


def update_metadata(path: str | os.PathLike, updates: dict[str, str],
                    check: Callable[[dict[str, str]], None] | None = None) -> str:
    """Re-save checkpoint ``path`` with the same stored tensors and ``updates`` merged into its metadata
    (e.g. a retuned ``score_threshold``); the loaded file is verified first. Returns the new file SHA-256.
    ``check``: called with the merged metadata before anything is written (raise to refuse)."""
    path = os.fspath(path)
    config, stored, meta = _read_verified(path)
    meta = {**meta, **{str(k): str(v) for k, v in updates.items()}}
    if check is not None:
        check(meta)
    _write(path, stored, config, meta)
    return file_sha256(path)


def _read_verified(path: str) -> tuple[ModelConfig, dict[str, Tensor], dict[str, str]]:
    """(config, stored tensors as written, metadata) after the integrity check."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"student checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt", device="cpu") as fh:
                meta = dict(fh.metadata() or {})
                state = {k: fh.get_tensor(k) for k in fh.keys()}
            config_data = json.loads(meta.pop("model_config", "null"))
        except Exception as exc:  # truncated / corrupt / foreign file
            raise ValueError(f"{path}: not a readable csl_ros student checkpoint (safetensors: "
                             f"{type(exc).__name__}: {exc})") from None
    else:
        blob = torch_load_tensors(path, "csl_ros student checkpoint")
        if not isinstance(blob, dict):
            raise ValueError(f"{path}: not a csl_ros student checkpoint (a {type(blob).__name__}, not a dict)")
        meta = {"format": str(blob.get("format", "")), "format_version": str(blob.get("format_version", "")),
                **{str(k): str(v) for k, v in (blob.get("metadata") or {}).items()}}
        config_data, state = blob.get("model_config"), blob.get("state_dict")
    if meta.get("format") != FORMAT or config_data is None or not isinstance(state, dict):
        raise ValueError(f"{path}: not a csl_ros student checkpoint (no '{FORMAT}' marker / model config / "
                         "state dict; backbone ImageNet weights go to build_student(backbone_weights=...))")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {meta.get('format_version')!r}, this csl_ros reads "
                         f"{FORMAT_VERSION!r}")
    verify_weights(path, state, meta.pop(WEIGHTS_SHA256, None), "student")
    try:
        config = ModelConfig.from_dict(config_data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid stored model config: {exc}") from exc
    meta.pop("format", None)
    meta.pop("format_version", None)
    return config, state, meta


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Tensor], dict[str, str]]:
    """(config, state dict, metadata) of a checkpoint file, without building a model. The embedded
    weights SHA-256 is verified (see the module docstring)."""
    path = os.fspath(path)
    config, state, meta = _read_verified(path)
    return config, _dequantized_state(path, state), meta


def load_checkpoint(path: str | os.PathLike, expected_config: ModelConfig | None = None,
                    device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Build the student described by the checkpoint's stored config and load its weights (eval mode).

    Raises FileNotFoundError for a missing file and ValueError naming the file for a corrupt file, a
    stored config differing from ``expected_config`` (listing the fields), or weights not matching the
    stored config (listing missing / unexpected / mis-shaped keys).
    """
    path = os.fspath(path)
    config, state, meta = read_checkpoint(path)
    if expected_config is not None and config != expected_config:
        diffs = ", ".join(f"{k}: file {a!r} vs expected {b!r}" for k, (a, b) in config.diff(expected_config).items())
        raise ValueError(f"{path}: stored model config differs from the expected one ({diffs})")
    model = CSLStudent(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} (config wants {tuple(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {unexpected[:5]}")
        if wrong:
            parts.append(f"{len(wrong)} with wrong shape: {wrong[:5]}")
        raise ValueError(f"{path}: weights do not match the stored model config ({'; '.join(parts)})")
    model.load_state_dict(state)
    model.to(device).eval()
    return LoadedCheckpoint(model=model, config=config, metadata=meta, sha256=file_sha256(path))
