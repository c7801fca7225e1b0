"""Detector settings carried by a student checkpoint, checked by the configuration schema.

A checkpoint's metadata (:mod:`csl_ros.model.checkpoint`) may hold ``MODEL_SETTINGS``:
``input_height`` and ``input_width`` (the network input it was trained for), ``score_threshold``
(the fused-score threshold tuned for it), ``test_scale`` and ``scale_fusion`` (the test-time second
scale the threshold was tuned with, and how the two scales combine) and ``fusion_region_exponent`` (the
fusion's region weight it was tuned with); ``score_threshold_by_teacher`` (JSON ``{teacher: threshold}``)
holds thresholds tuned with other teachers, whose fused scores sit on another scale: the configured
teacher's entry wins. ``Detector.from_config`` uses them for every one of these settings the user left
at the schema default (``csl_ros.config.apply_model_settings``). The schema's defaults are those of the
shipped models (a test checks they agree).

To retune a checkpoint, write the new values into its metadata:
``python -m csl_ros.model_settings FILE score_threshold=0.3`` re-saves the same tensors with the
updated metadata (and a fresh ``weights_sha256``), then update ``models/manifest.json``
(``csl_ros.shipped.register_shipped``) and, for a shipped model, the schema default.

This sits above ``model/`` (which knows nothing of the detector's configuration) and below the
pipeline and the training commands that write and read these settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from csl_ros.config import MODEL_SETTINGS, THRESHOLDS_BY_TEACHER, DetectorConfig, apply_overrides, parse_set_args
from csl_ros.model import checkpoint


def model_settings(metadata: dict[str, str], source: str = "checkpoint") -> dict:
    """The detector settings a checkpoint carries (see the module docstring), typed and range-checked
    by the schema; ValueError naming ``source`` for an invalid one. ``THRESHOLDS_BY_TEACHER`` (JSON
    ``{teacher: threshold}``) comes back as a dict of checked thresholds of known teachers."""
    given = {k: metadata[k] for k in MODEL_SETTINGS if k in metadata}
    try:
        cfg = apply_overrides(DetectorConfig(), given)
        out = {k: getattr(cfg, k) for k in given}
        if THRESHOLDS_BY_TEACHER in metadata:
            out[THRESHOLDS_BY_TEACHER] = _thresholds_by_teacher(metadata[THRESHOLDS_BY_TEACHER])
    except ValueError as exc:
        raise ValueError(f"{source}: invalid model setting: {exc}") from None
    return out


def _thresholds_by_teacher(text) -> dict[str, float]:
    try:
        table = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise ValueError(f"{THRESHOLDS_BY_TEACHER} is not JSON ({exc.msg})") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{THRESHOLDS_BY_TEACHER} must be a non-empty JSON object {{teacher: threshold}}")
    return {teacher: apply_overrides(DetectorConfig(), {"teacher": teacher, "score_threshold": thr}).score_threshold
            for teacher, thr in table.items()}


def save_student(path: str | os.PathLike, model, metadata: dict | None = None, storage: str = "float32") -> str:
    """:func:`csl_ros.model.checkpoint.save_checkpoint`, refusing an invalid model setting in
    ``metadata`` before anything is written. Returns the file's SHA-256."""
    return checkpoint.save_checkpoint(path, model, metadata, storage,
                                      check=lambda meta: model_settings(meta, source="metadata"))


def update_metadata(path: str | os.PathLike, updates: dict) -> str:
    """Re-save checkpoint ``path`` with the same stored tensors and ``updates`` merged into its metadata
    (e.g. a retuned ``score_threshold``), checked by the schema first. Returns the new file SHA-256."""
    return checkpoint.update_metadata(path, updates, check=lambda meta: model_settings(meta, os.fspath(path)))


def main(argv: list[str] | None = None) -> int:
    """``python -m csl_ros.model_settings FILE KEY=VALUE...``: update a checkpoint's metadata."""
    parser = argparse.ArgumentParser(prog="python -m csl_ros.model_settings", description=main.__doc__)
    parser.add_argument("file", help="student checkpoint (.safetensors or .pt)")
    parser.add_argument("settings", nargs="+", metavar="KEY=VALUE",
                        help=f"metadata to set, e.g. score_threshold=0.3 (model settings: {', '.join(MODEL_SETTINGS)})")
    args = parser.parse_args(argv)
    try:
        digest = update_metadata(args.file, parse_set_args(args.settings))
    except (ValueError, FileNotFoundError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: metadata updated, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
