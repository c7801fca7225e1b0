"""Training augmentation of the Mask2Former semantic recipe (spec section 3) and the CSL mask split.

Order, as in the authors' mapper: random resize -> random crop (padding image 128 / label 255 when
the scaled image is smaller) -> horizontal flip -> photometric distortion; the mask split (spec 1.1)
is then computed on the **augmented** trainId crop, so every target is a connected component of the
label the network actually sees.

Every random choice comes from the ``numpy.random.Generator`` passed in; the trainer derives it from
(seed, step, rank, sample), which makes a resumed run bit-identical without saving RNG state.
numpy/OpenCV only.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from csl_ros.model.assignment import split_label_map

IGNORE = 255
PAD_IMAGE_VALUE = 128


@dataclass(frozen=True)
class AugmentParams:
    crop: tuple[int, int]               # (height, width)
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True
    color_jitter: bool = True
    cat_max_ratio: float = 1.0          # 1.0 = no category-area constraint


def _check_pair(image: np.ndarray, labels: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8 RGB, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"label map {labels.shape} does not match the image {image.shape[:2]}")


def random_resize(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, min_scale: float,
                  max_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale by a uniform factor in [min_scale, max_scale]: bilinear image, nearest labels."""
    s = float(rng.uniform(min_scale, max_scale))
    h, w = labels.shape
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    if (nh, nw) == (h, w):
        return image, labels
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    labels = cv2.resize(labels, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return image, labels


def random_crop(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, crop: tuple[int, int],
                cat_max_ratio: float = 1.0, attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A crop of exactly ``crop``; sides shorter than the crop are padded (image 128, labels 255).
    With ``cat_max_ratio < 1`` up to ``attempts`` crops are drawn until no class covers more than
    that fraction of the crop's labelled pixels (M2F's category-area constraint)."""
    ch, cw = crop
    h, w = labels.shape
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(PAD_IMAGE_VALUE,) * 3)
        labels = cv2.copyMakeBorder(labels, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE)
        h, w = labels.shape
    for attempt in range(attempts if cat_max_ratio < 1.0 else 1):
        y = int(rng.integers(0, h - ch + 1))
        x = int(rng.integers(0, w - cw + 1))
        crop_labels = labels[y:y + ch, x:x + cw]
        if cat_max_ratio >= 1.0:
            break
        counts = np.bincount(crop_labels[crop_labels != IGNORE].ravel(), minlength=1)
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return image[y:y + ch, x:x + cw], crop_labels


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD-style colour jitter (detectron2 ``ColorAugSSDTransform``): brightness +-32, contrast
    [0.5, 1.5], saturation [0.5, 1.5], hue +-18 (OpenCV half-degrees), each with probability 0.5;
    contrast before or after the HSV changes with probability 0.5."""
    img = image.astype(np.float32)
    if rng.random() < 0.5:
        img += float(rng.uniform(-32, 32))
    contrast_first = rng.random() < 0.5
    contrast = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else None
    if contrast_first and contrast is not None:
        img *= contrast
    do_sat, sat = rng.random() < 0.5, float(rng.uniform(0.5, 1.5))
    do_hue, hue = rng.random() < 0.5, int(rng.integers(-18, 19))
    if do_sat or do_hue:
        hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + hue) % 180
        img = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and contrast is not None:
        img *= contrast
    return np.clip(img, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, params: AugmentParams
            ) -> tuple[np.ndarray, np.ndarray]:
    """Resize, crop, flip, colour jitter (module docstring). Returns (image crop, trainId crop)."""
    _check_pair(image, labels)
    image, labels = random_resize(image, labels, rng, params.min_scale, params.max_scale)
    image, labels = random_crop(image, labels, rng, params.crop, params.cat_max_ratio)
    if params.flip and rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if params.color_jitter:
        image = photometric_distortion(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def split_targets(labels: np.ndarray, max_masks: int, min_area: int = 100) -> tuple[np.ndarray, int]:
    """The CSL mask split of an (augmented) trainId crop: ``(components, K)`` with ids 0..K-1 and -1
    for no target; K <= ``max_masks`` (the N largest components are kept when there are more)."""
    components, classes = split_label_map(labels, ignore=IGNORE, min_area=min_area, max_masks=max_masks)
    return components, int(len(classes))
