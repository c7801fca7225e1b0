"""Per-pixel OOD teachers for CSL (spec sections 4.4 and 7): closed-set segmenter + score function +
global calibration, or an external method exported to ONNX. Pure PyTorch/torchvision/onnxruntime.

Public API::

    from csl_ros.teachers import build_teacher
    teacher = build_teacher("sml", segmenter_path="seg.safetensors", stats_path="seg.stats.json")
    out = teacher(images_uint8_bchw)   # TeacherOutput(score_map, raw_score, logits, segmentation)

Heavy imports happen on attribute access, so ``import csl_ros.teachers`` stays cheap for the CLI.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Teacher": "teacher", "TeacherOutput": "teacher", "build_teacher": "teacher",
    "TEACHER_NAMES": "teacher", "resolve_device": "teacher", "TEACHERS": "registry",
    "SCORE_FUNCTIONS": "scores", "compute_score": "scores", "msp_score": "scores",
    "maxlogit_score": "scores", "sml_score": "scores", "entropy_score": "scores",
    "energy_score": "scores", "boundary_suppression": "scores", "dilated_smoothing": "scores",
    "Calibration": "calibration", "fit_calibration": "calibration",
    "CALIBRATION_METHODS": "calibration",
    "TeacherStats": "stats", "StatsAccumulator": "stats", "file_sha256": "stats",
    "default_stats_path": "stats",
    "SegmenterConfig": "segmenter", "ClosedSetSegmenter": "segmenter", "PRESETS": "segmenter",
    "preset": "segmenter", "save_segmenter": "segmenter", "load_segmenter": "segmenter",
    "OnnxModel": "onnx_runner", "set_onnx_metadata": "onnx_runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"csl_ros.teachers.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'csl_ros.teachers' has no attribute {name!r}")
