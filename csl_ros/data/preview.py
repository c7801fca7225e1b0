"""Pictures of synthroad frames for people: label overlays and contact sheets (RGB uint8)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from csl_ros.visualize import legend_strip

from .synthroad import Frame
from .synthroad.labels import OOD_COLOR, PALETTE, TRAIN_ID_NAMES, palette_lut


def label_overlay(frame: Frame, alpha: float = 0.55) -> np.ndarray:
    """The image blended with the trainId palette; OOD obstacles/anomalies in solid cyan with a white
    outline; on obstacle-track frames the void (off-road) region is dimmed."""
    img = frame.image.astype(np.float32)
    pal = palette_lut()[frame.train_ids].astype(np.float32)
    out = img * (1 - alpha) + pal * alpha
    void = frame.ood_labels == 255
    if void.any():
        out[void] *= 0.45
    ood = frame.ood_labels == 1
    out[ood] = OOD_COLOR
    out = np.clip(out, 0, 255).astype(np.uint8)
    if ood.any():
        edge = cv2.morphologyEx(ood.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edge & ~ood] = (255, 255, 255)
    return out


def _caption(img: np.ndarray, text: str) -> None:
    scale = max(0.35, img.shape[1] / 900.0)
    org = (6, int(18 * scale / 0.5))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def label_legend(frames: Sequence[Frame], width: int) -> np.ndarray:
    """A strip ``width`` px wide (RGB) naming the overlay's colours: OOD first, then the classes of
    ``frames`` by pixel count (as many as fit)."""
    counts = np.bincount(np.concatenate([f.train_ids.ravel() for f in frames]), minlength=256)[:19]
    items = [(tuple(int(c) for c in OOD_COLOR), "OOD obstacle / anomaly")]
    if any((f.ood_labels == 255).any() for f in frames):
        items.append((None, "dimmed: void (off-road)"))
    items += [(tuple(int(c) for c in PALETTE[k]), TRAIN_ID_NAMES[k]) for k in np.argsort(-counts) if counts[k]]
    return legend_strip(width, items)    # colours given as RGB: the strip is RGB too


def contact_sheet(frames: Sequence[Frame], cols: int = 4, tile_width: int = 384,
                  captions: Sequence[str] | None = None) -> np.ndarray:
    """A grid of frames, each shown as the image above its label overlay, with the overlay's colour
    legend in a strip below the grid (RGB uint8)."""
    if not frames:
        raise ValueError("contact_sheet needs at least one frame")
    if cols < 1 or tile_width < 16:
        raise ValueError(f"cols must be >= 1 and tile_width >= 16, got {cols}, {tile_width}")
    h0, w0 = frames[0].image.shape[:2]
    tw = int(tile_width)
    th = max(1, int(round(h0 * tw / w0)))
    gap = 4
    rows = (len(frames) + cols - 1) // cols
    sheet = np.full((rows * (2 * th + gap) + gap, cols * (tw + gap) + gap, 3), 24, np.uint8)
    for k, f in enumerate(frames):
        r, c = divmod(k, cols)
        y = gap + r * (2 * th + gap)
        x = gap + c * (tw + gap)
        img = cv2.resize(f.image, (tw, th), interpolation=cv2.INTER_AREA)
        ov = cv2.resize(label_overlay(f), (tw, th), interpolation=cv2.INTER_NEAREST)
        text = captions[k] if captions is not None else f"seed {f.seed} #{f.index} ood {len(f.obstacles)}"
        _caption(img, text)
        sheet[y:y + th, x:x + tw] = img
        sheet[y + th:y + 2 * th, x:x + tw] = ov
    return np.vstack([sheet, label_legend(frames, sheet.shape[1])])


def save_contact_sheet(path, frames: Sequence[Frame], **kw) -> Path:
    """Write ``contact_sheet(frames, **kw)`` as PNG/JPEG (by extension); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(frames, **kw)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path} (unknown image extension?)")
    return path
