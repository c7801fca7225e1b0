"""One teacher interface: image batch → per-pixel OOD map in [0, 1] (higher = more anomalous).

``build_teacher(name, ...)`` with ``name`` in ``TEACHER_NAMES`` (the registered score functions of
``csl_ros.teachers.registry.TEACHERS``, plus "onnx") returns a ``Teacher``; calling it on a B×3×H×W uint8 (or [0, 1] float) RGB batch gives a
``TeacherOutput``:

* ``score_map``  B×1×H×W in [0, 1]: the calibrated score D that CSL fuses (Eq. 3; spec section 4.4),
* ``raw_score``  B×1×H×W: the score before calibration,
* ``logits``     B×K×H×W closed-set logits (None for an ONNX teacher giving a ready map),
* ``segmentation`` B×H×W argmax class map (None likewise).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from csl_ros.model.device import resolve_device
from csl_ros.shipped import resolve_shipped
from csl_ros.teachers.calibration import Calibration
from csl_ros.teachers.hf import is_hf_source
from csl_ros.teachers.onnx_runner import OnnxModel
from csl_ros.teachers.real_models import load_hf_model
from csl_ros.teachers.registry import NO_TEACHER, ONNX_TEACHER, TEACHERS, class_score_teachers, unbounded_scores
from csl_ros.teachers.scores import SCORE_FUNCTIONS, compute_score, sml_postprocess, standardized_max_logit
from csl_ros.teachers.segmenter import load_segmenter
from csl_ros.teachers.stats import TeacherStats, default_stats_path, file_sha256

log = logging.getLogger("csl_ros.teacher")

TEACHER_NAMES = TEACHERS.choices(after=(ONNX_TEACHER,))
HF_STATS_FILE = "csl_ros.stats.json"  # statistics of a Hugging Face model directory live inside it
# Names of the shipped synthroad teacher files in models/manifest.json (csl_ros.shipped).
SHIPPED_SEGMENTER = "teacher_segmenter"
SHIPPED_STATS = "teacher_segmenter_stats"


@dataclass
class TeacherOutput:
    score_map: torch.Tensor             # B×1×H×W in [0, 1]
    raw_score: torch.Tensor             # B×1×H×W, uncalibrated
    logits: torch.Tensor | None         # B×K×H×W
    segmentation: torch.Tensor | None   # B×H×W int64


class Teacher:
    """A model (closed-set segmenter or ONNX session) + a score function + a global calibration.

    ``model`` maps uint8/[0,1] images B×3×H×W to B×C×H×W (logits, or a 1-channel map when
    ``score_fn == "map"``). ``stats`` is needed by the SML score.
    """

    def __init__(self, name: str, model, score_fn: str, calibration: Calibration,
                 stats: TeacherStats | None = None, device: str | torch.device = "cpu",
                 precision: str = "fp32", map_range: tuple[float, float] | None = None):
        if score_fn not in SCORE_FUNCTIONS + ("map",):
            raise ValueError(f"unknown score function {score_fn!r}")
        if score_fn != "map" and TEACHERS.entry(score_fn).needs_stats and (
                stats is None or not stats.has_class_stats):
            raise ValueError(f"the {score_fn} teacher needs class-wise statistics (teacher stats file)")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
        self.name = name
        self.score_fn = score_fn
        self.calibration = calibration
        self.stats = stats
        self.device = torch.device(device)
        # fp16 only on CUDA and only for the network; scores are computed in float32.
        self.autocast = precision == "fp16" and self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        # A ready map's declared range (an identity calibration declares [0, 1]): values outside it
        # are counted and reported, never clipped silently. A fitted calibration saturates by design.
        self.map_range = map_range if map_range is not None else (
            (0.0, 1.0) if score_fn == "map" and calibration.method == "identity" else None)
        self.out_of_range_pixels = 0
        self.out_of_range_frames = 0
        self._sml = None
        if score_fn == "sml":
            self._sml = (torch.tensor(stats.class_mean, dtype=torch.float32, device=self.device),
                         stats.class_std.to(self.device), dict(stats.sml_params))

    @property
    def is_global(self) -> bool:
        return self.calibration.is_global

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, network=None) -> TeacherOutput:
        """``network``: a compiled stand-in for ``model`` (``csl_ros.pipeline.backends.CompiledModel``:
        same input, its output first in a tuple) that runs instead of the eager model."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 3:
            raise ValueError("images must be batched B×3×H×W (got a single 3-D image; add a batch dim)")
        images = images.to(self.device)
        if network is not None:
            out = network(images)[0]
        else:
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
                out = self.model(images)
        if self.score_fn == "map":
            if out.shape[1] != 1:
                raise ValueError(f"the {self.name} teacher expected a 1-channel anomaly map, got "
                                 f"{out.shape[1]} channels")
            raw = out.float()
            logits = seg = None
            self._count_out_of_range(raw)
        else:
            logits = out.float()
            if self.stats is not None and self.stats.num_classes != logits.shape[1]:
                raise ValueError(f"the teacher statistics are for {self.stats.num_classes} classes but "
                                 f"the model gives {logits.shape[1]}")
            if self._sml is not None:  # sml_score, keeping the class map it computes anyway
                mean, std, params = self._sml
                s, seg = standardized_max_logit(logits, mean, std)
                raw = sml_postprocess(s, seg, **params)
            else:
                raw = compute_score(self.score_fn, logits, self.stats)
                # = argmax (first maximum on ties); a max over dim 1 is ~3x faster than argmax on CPU
                seg = logits.max(dim=1).indices
        return TeacherOutput(score_map=self.calibration(raw), raw_score=raw, logits=logits,
                             segmentation=seg)

    @property
    def kind(self) -> str:
        """The model family: segformer, mask2former, onnx or torchvision/custom segmenter."""
        return getattr(self.model, "kind", "segmenter")

    def _count_out_of_range(self, raw: torch.Tensor) -> None:
        if self.map_range is None:
            return
        lo, hi = self.map_range
        outside = ((raw < lo) | (raw > hi)).flatten(1).sum(dim=1)
        n = int(outside.sum())
        if n:
            frames = int((outside > 0).sum())
            self.out_of_range_pixels += n
            self.out_of_range_frames += frames
            if (self.out_of_range_frames & (self.out_of_range_frames - 1)) == 0 or frames > 1:
                log.warning("%s teacher: %d pixel(s) of this batch outside the declared map range "
                            "[%g, %g] (%d frame(s) so far); the calibration saturates them at 0 or 1",
                            self.name, n, lo, hi, self.out_of_range_frames)

    def __repr__(self) -> str:
        return (f"Teacher(name={self.name!r}, score={self.score_fn!r}, "
                f"calibration={self.calibration.to_dict()}, device={self.device})")



def _choose_calibration(score_fn: str, stats: TeacherStats | None, override: str | None,
                        where: str) -> Calibration:
    fixed = TEACHERS.entry(score_fn).fixed_calibration if score_fn in TEACHERS else None
    if fixed is not None and override is None:
        return Calibration.from_dict(dict(fixed))  # e.g. RbA's clip(1 + s, 0, 1)
    if override == "identity" and score_fn in unbounded_scores():
        raise ValueError(f"the {score_fn} score is unbounded; an identity calibration would just clip "
                         "it (use logistic, quantile_linear or the per_image_minmax ablation)")
    if override in ("identity", "per_image_minmax"):
        return Calibration(override)
    if stats is None:
        if override is None and (score_fn == "map" or TEACHERS.entry(score_fn).bounded):
            return Calibration("identity")  # already probabilities (a map is assumed in [0, 1])
        raise ValueError(f"the {score_fn} score needs a calibration fitted on in-distribution data, "
                         f"but no teacher statistics file was found ({where}); run `csl-ros teacher "
                         "fit-stats`, or choose a probability teacher that needs none (teacher=msp)")
    return stats.calibration_for(score_fn, override)


def _load_stats(stats_path: str | os.PathLike, model_path: Path, verify: bool,
                model_sha256: str | None = None) -> TeacherStats | None:
    """The statistics at ``stats_path`` (empty: beside the model); ``model_sha256`` names the model
    when it is not one file (a Hugging Face directory)."""
    default = model_path / HF_STATS_FILE if model_path.is_dir() else default_stats_path(model_path)
    path = Path(stats_path) if stats_path else default
    if not path.is_file():
        if stats_path:
            raise FileNotFoundError(f"teacher statistics file not found: {path}")
        return None
    stats = TeacherStats.load(path)
    if verify and stats.segmenter_sha256 and stats.segmenter_sha256 != (model_sha256 or file_sha256(model_path)):
        raise ValueError(f"{path} was fitted for another model than {model_path} (SHA-256 differs); "
                         "refit it with `csl-ros teacher fit-stats`")
    return stats


def build_teacher(name: str, segmenter_path: str | os.PathLike = "", stats_path: str | os.PathLike = "",
                  onnx_path: str | os.PathLike = "", device: str | torch.device = "auto", *,
                  calibration: str | None = None, onnx_score: str | None = None,
                  onnx_input_normalization: str | None = None, onnx_output: str | None = None,
                  segmenter_preset: str | None = None, verify_stats: bool = True,
                  precision: str = "fp32", allow_download: bool = False) -> Teacher:
    """Build teacher ``name`` ∈ ``TEACHER_NAMES`` (a registered score function, or onnx).

    * Logit teachers load the closed-set segmenter ``segmenter_path``: a csl_ros / torchvision
      checkpoint, a Hugging Face model directory or ``hf:<repo>[@rev]`` (SegFormer logits or
      Mask2Former per-pixel class scores l_c, see ``csl_ros.teachers.hf``); empty: the shipped
      synthroad segmenter, checked against models/manifest.json. ``rba`` needs a Mask2Former.
    * ``onnx`` loads ``onnx_path`` (or a ``segmenter_path`` ending in .onnx); its output is
      ``onnx_output`` (by name; default the first), its score function ``onnx_score``, else the
      model's ``csl_ros.score_function`` metadata, and a 1-channel output is used as a ready anomaly
      map with its declared range and calibration (``csl_ros.onnx_runner``).
    * ``stats_path``: SML statistics + calibrations (empty: ``<model>.stats.json`` beside the model,
      ``csl_ros.stats.json`` inside a Hugging Face directory, or the shipped statistics for the shipped
      segmenter). When the statistics record the SHA-256 of the model they were fitted with, a
      different model is refused (``verify_stats``).
    * ``calibration`` overrides the stored method: logistic, quantile_linear (refitted from the stored
      quantiles), affine, identity, or per_image_minmax (**ablation only**, not comparable across
      images). RbA defaults to ``clip(1 − Σ_c tanh(l_c), 0, 1)``.
    * ``precision``: ``fp16`` runs the segmenter under CUDA autocast (ignored on CPU and for ONNX).
    """
    if name == NO_TEACHER:
        raise ValueError("teacher 'none' has no teacher to build (scheme 1 needs none)")
    if name not in TEACHER_NAMES:
        raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(TEACHER_NAMES)}")
    dev = resolve_device(device)
    segmenter_path, stats_path, onnx_path = str(segmenter_path or ""), str(stats_path or ""), str(onnx_path or "")

    if name == ONNX_TEACHER:
        path = onnx_path or (segmenter_path if segmenter_path.endswith(".onnx") else "")
        if not path:
            raise ValueError("teacher 'onnx' needs the path of an .onnx model (teacher_path)")
        model = OnnxModel(path, dev, input_normalization=onnx_input_normalization, output_name=onnx_output)
        stats = _load_stats(stats_path, model.path, verify_stats)
        map_range = None
        if model.output_kind == "anomaly_map":
            if onnx_score is not None:
                raise ValueError(f"{path} outputs a 1-channel anomaly map; onnx_score={onnx_score!r} "
                                 "applies only to models that output logits")
            score_fn = "map"
            map_range = model.declared_range
            if calibration is None and model.declared_calibration is not None:
                if stats is not None and "map" in stats.calibration:
                    log.info("%s: using the fitted map calibration of the statistics, not the model's "
                             "declared one", path)
                else:
                    return Teacher(name, model, score_fn, model.declared_calibration, stats, dev,
                                   map_range=map_range)
        else:
            score_fn = onnx_score or model.score_function
            if score_fn is None:
                raise ValueError(f"{path} outputs {model.num_channels}-channel logits: choose the score "
                                 f"function ({', '.join(SCORE_FUNCTIONS)}) with onnx_score or the "
                                 "model's csl_ros.score_function metadata")
            if score_fn not in SCORE_FUNCTIONS:
                raise ValueError(f"unknown onnx score function {score_fn!r}; choose one of "
                                 f"{', '.join(SCORE_FUNCTIONS)}")
        if stats is not None and stats.num_classes != model.num_channels:
            raise ValueError(f"teacher statistics are for {stats.num_classes} channel(s) but {path} "
                             f"outputs {model.num_channels}")
        cal = _choose_calibration(score_fn, stats, calibration, where=str(stats_path or
                                                                          default_stats_path(path)))
        return Teacher(name, model, score_fn, cal, stats, dev, map_range=map_range)  # ONNX: its precision

    if is_hf_source(segmenter_path):
        model = load_hf_model(segmenter_path, dev, allow_download=allow_download)
        if name in class_score_teachers() and model.kind != "mask2former":
            raise ValueError(f"teacher {name!r} needs a Mask2Former (per-query class posteriors and "
                             f"masks); {model.path} is a {model.kind}")
        stats = _load_stats(stats_path, model.path, verify_stats, model_sha256=model.digest)
        if stats is not None and stats.num_classes != model.num_classes:
            raise ValueError(f"the teacher statistics are for {stats.num_classes} classes but "
                             f"{model.path} has {model.num_classes}")
        cal = _choose_calibration(name, stats, calibration,
                                  where=str(stats_path or model.path / HF_STATS_FILE))
        return Teacher(name, model, name, cal, stats, dev, precision=precision)
    if name in class_score_teachers():
        raise ValueError(f"teacher {name!r} needs a Mask2Former teacher_path (a Hugging Face model "
                         "directory or hf:<repo>); the segmenter checkpoints give per-pixel logits only")
    if segmenter_path:
        model_path = Path(segmenter_path)
        if model_path.suffix == ".onnx":
            raise ValueError(f"{model_path} is an ONNX model: use teacher 'onnx'")
    else:
        model_path = resolve_shipped(SHIPPED_SEGMENTER)
        if not stats_path:
            stats_path = str(resolve_shipped(SHIPPED_STATS))
    stats = _load_stats(stats_path, model_path, verify_stats)
    model = load_segmenter(model_path, segmenter_preset, device=dev,
                           expected_num_classes=stats.num_classes if stats is not None else None)
    cal = _choose_calibration(name, stats, calibration, where=str(stats_path or default_stats_path(model_path)))
    return Teacher(name, model, name, cal, stats, dev, precision=precision)
