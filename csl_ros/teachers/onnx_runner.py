"""Run an external OOD method exported to ONNX (ObsNet, DaCUP, RbA, ...) with onnxruntime.

The model takes one image batch N×3×H×W and returns, as its first output (or the output named by
``onnx_output``), either

* closed-set **logits** N×K×h×w (K > 1): the teacher applies one of the score functions of
  ``scores.py`` (``csl_ros.score_function`` metadata or the ``onnx_score`` argument), or
* a ready **anomaly map** N×1×h×w or N×h×w (higher = more anomalous), used as it is when already in
  [0, 1], or through a calibration fitted by ``csl-ros teacher fit-stats``.

Outputs at another resolution are resized bilinearly to the input size, but only outputs that are
per-pixel maps: an output whose rank is not 3 or 4, or whose last two dimensions are not the input
size divided by one stride (1, 2, 4, ..., 32), e.g. Mask2Former's ``class_queries_logits`` N×Q×(K+1),
is an error naming the output and its shape. A model with a fixed input
size gets the image resized to it. Optional ONNX metadata (``metadata_props``, see
``set_onnx_metadata``) describes the model:

``csl_ros.input_normalization``  float inputs: ``imagenet`` (default; (x/255 − mean)/std), ``unit``
                                (x/255) or ``raw`` (0..255). uint8 inputs always get raw 0..255.
``csl_ros.score_function``       for logits outputs: msp, maxlogit, sml, entropy or energy.
``csl_ros.output``               ``logits`` or ``anomaly_map`` (otherwise: 1 channel = map).
``csl_ros.map_range``            an anomaly map's declared range ``"lo,hi"`` (e.g. ``"-19,0"`` for a raw
                                RbA map); values outside are counted and reported by the teacher.
``csl_ros.map_calibration``      an anomaly map's calibration to [0, 1] as JSON, e.g.
                                ``{"method": "affine", "scale": 1, "offset": 1}`` (RbA); else the
                                statistics' fitted one, else identity.

Providers: CUDA when the device is a CUDA device and onnxruntime has it, else CPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from csl_ros.teachers.calibration import Calibration
from csl_ros.teachers.segmenter import IMAGENET_MEAN, IMAGENET_STD, to_unit_float

INPUT_NORMALIZATIONS = ("imagenet", "unit", "raw")
META_NORMALIZATION = "csl_ros.input_normalization"
META_SCORE = "csl_ros.score_function"
META_OUTPUT = "csl_ros.output"
META_MAP_RANGE = "csl_ros.map_range"
META_MAP_CALIBRATION = "csl_ros.map_calibration"
OUTPUT_STRIDES = (1, 2, 4, 8, 16, 32)
OUTPUT_KINDS = ("logits", "anomaly_map")
_ORT_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def set_onnx_metadata(path: str | os.PathLike, **entries: str) -> None:
    """Write csl_ros metadata into an ONNX file, e.g. ``set_onnx_metadata(p, score_function="sml",
    input_normalization="imagenet", output="logits")`` (keys get the ``csl_ros.`` prefix)."""
    import onnx  # optional: only writing metadata needs it (the dev extra)

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for k, v in entries.items():
        props[f"csl_ros.{k}"] = str(v)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))


class OnnxModel:
    """An onnxruntime session behaving like a torch model: uint8/[0,1] images B×3×H×W → B×C×H×W."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu",
                 input_normalization: str | None = None, output_name: str | None = None):
        import onnxruntime as ort  # optional: only external ONNX teachers need it

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX teacher model not found: {self.path}")
        self.device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{self.path}: onnxruntime cannot load the model ({exc})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: the teacher model must have exactly one input (images), "
                             f"it has {len(inputs)}: {', '.join(i.name for i in inputs)}")
        self.input = inputs[0]
        by_name = {o.name: o for o in outputs}
        if output_name and output_name not in by_name:
            raise ValueError(f"{self.path}: no output named {output_name!r}; the model's outputs are "
                             + ", ".join(f"{o.name} {o.shape}" for o in outputs))
        output = by_name[output_name] if output_name else outputs[0]
        self.output_name = output.name
        if len(self.input.shape) != 4:
            raise ValueError(f"{self.path}: input {self.input.name!r} must be N×3×H×W, has shape "
                             f"{self.input.shape}")
        if isinstance(self.input.shape[1], int) and self.input.shape[1] != 3:
            raise ValueError(f"{self.path}: input {self.input.name!r} must have 3 channels (RGB), "
                             f"has {self.input.shape[1]}")
        if self.input.type != "tensor(uint8)" and self.input.type not in _ORT_FLOAT:
            raise ValueError(f"{self.path}: unsupported input type {self.input.type} "
                             "(use uint8 or float)")
        h, w = self.input.shape[2], self.input.shape[3]
        self.fixed_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        norm = input_normalization or self.metadata.get(META_NORMALIZATION, "imagenet")
        if norm not in INPUT_NORMALIZATIONS:
            raise ValueError(f"{self.path}: unknown input normalization {norm!r}; choose one of "
                             f"{', '.join(INPUT_NORMALIZATIONS)}")
        self.input_normalization = "raw" if self.input.type == "tensor(uint8)" else norm
        out_shape = output.shape
        if len(out_shape) not in (3, 4):
            raise ValueError(f"{self.path}: output {self.output_name!r} must be N×C×H×W or N×H×W, has "
                             f"shape {out_shape}")
        self._channels = 1 if len(out_shape) == 3 else (out_shape[1] if isinstance(out_shape[1], int) else None)
        kind = self.metadata.get(META_OUTPUT)
        if kind is not None and kind not in OUTPUT_KINDS:
            raise ValueError(f"{self.path}: metadata {META_OUTPUT}={kind!r} is not one of "
                             f"{', '.join(OUTPUT_KINDS)}")
        self._declared_kind = kind
        self.declared_range = self._parse_range(self.metadata.get(META_MAP_RANGE))
        self.declared_calibration = self._parse_calibration(self.metadata.get(META_MAP_CALIBRATION))
        if len(out_shape) == 3:
            self._channels = None  # a 3-D output may be a map or not (query logits): probe it now
            _ = self.num_channels

    def _parse_range(self, text: str | None) -> tuple[float, float] | None:
        if text is None:
            return None
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"{self.path}: metadata {META_MAP_RANGE}={text!r} is not 'lo,hi'") from None
        if not lo < hi:
            raise ValueError(f"{self.path}: metadata {META_MAP_RANGE}={text!r} needs lo < hi")
        return lo, hi

    def _parse_calibration(self, text: str | None):
        if text is None:
            return None

        try:
            return Calibration.from_dict(json.loads(text))
        except ValueError as exc:
            raise ValueError(f"{self.path}: metadata {META_MAP_CALIBRATION}: {exc}") from None

    @property
    def score_function(self) -> str | None:
        return self.metadata.get(META_SCORE)

    @property
    def num_channels(self) -> int:
        """Channels of the first output; found by one probe run when the graph does not say."""
        if self._channels is None:
            h, w = self.fixed_size or (256, 512)
            probe = torch.zeros(1, 3, h, w, dtype=torch.uint8)
            self._channels = int(self(probe).shape[1])
        return self._channels

    @property
    def output_kind(self) -> str:
        if self._declared_kind is not None:
            return self._declared_kind
        return "anomaly_map" if self.num_channels == 1 else "logits"

    def _prepare(self, images: torch.Tensor) -> np.ndarray:
        x = to_unit_float(images)
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            x = F.interpolate(x, size=self.fixed_size, mode="bilinear", align_corners=False)
        if self.input.type == "tensor(uint8)":
            return (x * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        if self.input_normalization == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        elif self.input_normalization == "raw":
            x = x * 255.0
        return x.cpu().numpy().astype(_ORT_FLOAT[self.input.type], copy=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        feed = self._prepare(images)
        try:
            (out,) = self.session.run([self.output_name], {self.input.name: feed})
        except Exception as exc:
            raise ValueError(f"{self.path}: inference failed for input {feed.shape} ({exc})") from None
        y = torch.from_numpy(np.ascontiguousarray(out)).float()
        self._check_spatial(tuple(out.shape), tuple(feed.shape))
        if y.dim() == 3:
            y = y.unsqueeze(1)
        if tuple(y.shape[-2:]) != size:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y.to(images.device)

    def _check_spatial(self, shape: tuple, feed_shape: tuple) -> None:
        """A per-pixel output is N×C×H×W or N×H×W with H×W the input size over one stride."""
        h, w = feed_shape[-2:]
        ok = len(shape) in (3, 4) and shape[0] == feed_shape[0] and any(
            shape[-2] == -(-h // s) and shape[-1] == -(-w // s) or
            shape[-2] == h // s and shape[-1] == w // s for s in OUTPUT_STRIDES)
        if not ok:
            raise ValueError(f"{self.path}: output {self.output_name!r} has shape {shape}, not a per-pixel "
                             f"map of the {feed_shape[0]}×3×{h}×{w} input (N×C×H×W or N×H×W at stride "
                             f"1..32); choose the per-pixel output with onnx_output")

    def to(self, device):  # uniform with torch modules; the session keeps its providers
        return self

    def eval(self):
        return self
