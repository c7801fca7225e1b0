"""Fit ``TeacherStats`` by running a teacher model over in-distribution frames (one pass).

Used by ``csl-ros teacher fit-stats``. Frames are RGB uint8 H×W×3 numpy arrays (or 3×H×W tensors),
resized to the fitting size, batched, and passed through the model; the logits (or a one-channel
ONNX anomaly map) go into a ``StatsAccumulator``. Following the spec's **[choice]**, the statistics
are computed at test-time resolution without augmentation (the SML authors used training crops with
augmentation; documented deviation).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from csl_ros.teachers.stats import StatsAccumulator, TeacherStats, file_sha256


def frame_to_tensor(frame, size: tuple[int, int] | None) -> torch.Tensor:
    """H×W×3 uint8 array (or 3×H×W uint8 tensor) → 1×3×h×w uint8 tensor at ``size``."""
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be H×W×3 uint8 RGB arrays, got {frame.shape} {frame.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)
    else:
        t = torch.as_tensor(frame)
        if t.dim() != 3 or t.shape[0] != 3 or t.dtype != torch.uint8:
            raise ValueError(f"frame tensors must be 3×H×W uint8, got {tuple(t.shape)} {t.dtype}")
    t = t.unsqueeze(0)
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t.float(), size=tuple(size), mode="bilinear", align_corners=False,
                          antialias=True).round().clamp(0, 255).to(torch.uint8)
    return t


@torch.inference_mode()
def fit_teacher_stats(model, frame_iter: Iterable, *, size: tuple[int, int] | None, batch_size: int = 4,
                      device: str | torch.device = "cpu", reservoir_size: int = 200_000, seed: int = 0,
                      calibration: str = "logistic", map_calibration: str = "identity",
                      model_path: str | os.PathLike | None = None, model_sha256: str | None = None,
                      total: int | None = None,
                      progress: bool = True, **fit_info) -> TeacherStats:
    """Run ``model`` (ClosedSetSegmenter or OnnxModel) over ``frame_iter`` and fit statistics.

    ``model_path`` records the SHA-256 of the model file, so the statistics are refused with another
    model (``model_sha256`` instead for a model that is a folder, e.g. a Hugging Face one). Extra
    keyword arguments are stored in ``fit_info`` (data source, frame count, ...).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    device = torch.device(device)
    acc: StatsAccumulator | None = None
    batch: list[torch.Tensor] = []
    bar = tqdm(total=total, desc="fit-stats", unit="frame", disable=not progress)

    def flush():
        nonlocal acc
        x = torch.cat(batch).to(device)
        batch.clear()
        out = model(x)
        if acc is None:
            acc = StatsAccumulator(int(out.shape[1]) if out.shape[1] > 1 else 1,
                                   reservoir_size=reservoir_size, seed=seed)
        if out.shape[1] == 1:
            acc.update_map(out)
        else:
            acc.update_logits(out)
        bar.update(x.shape[0])

    for frame in frame_iter:
        t = frame_to_tensor(frame, size)
        if batch and t.shape[-2:] != batch[0].shape[-2:]:
            flush()  # frames of different sizes (no --size) go in separate batches
        batch.append(t)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    if acc is None:
        raise ValueError("no frames to fit the teacher statistics on")
    sha = model_sha256 or (file_sha256(model_path) if model_path is not None else None)
    info = dict(fit_info)
    if model_path is not None:
        info["model_file"] = Path(model_path).name
    if size is not None:
        info["size"] = list(size)
    return acc.finalize(calibration=calibration, map_calibration=map_calibration,
                        segmenter_sha256=sha, **info)
