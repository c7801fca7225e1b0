"""Pictures for people: colour-mapped anomaly scores and instance overlays (ROS-free, BGR out)."""
from __future__ import annotations

import cv2
import numpy as np


def colorize_scores(anomaly_map: np.ndarray) -> np.ndarray:
    """Map scores in [0, 1] to a BGR uint8 image (turbo colour map; 0 blue, 1 red)."""
    s = np.nan_to_num(np.asarray(anomaly_map, np.float32), nan=0.0)
    u8 = (np.clip(s, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)


def draw_overlay(image_rgb: np.ndarray, anomaly_map: np.ndarray, instances: np.ndarray,
                 obstacles=(), alpha: float = 0.45) -> np.ndarray:
    """Blend the score colour map onto the image, outline each instance and label it (BGR out)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    heat = colorize_scores(anomaly_map)
    weight = (np.clip(anomaly_map, 0, 1)[..., None] * alpha).astype(np.float32)
    out = (bgr.astype(np.float32) * (1 - weight) + heat.astype(np.float32) * weight).astype(np.uint8)
    if instances is not None and instances.any():
        edges = cv2.morphologyEx((instances > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        out[edges > 0] = (0, 0, 255)
    scale = max(0.4, out.shape[0] / 1000.0)
    for ob in obstacles:
        x0, y0 = ob.bbox[0], ob.bbox[1]
        text = f"#{ob.id} {ob.max_score:.2f}"
        if ob.distance_m is not None:
            text += f" {ob.distance_m:.1f}m"
        org = (int(x0), int(max(y0 - 4, 12)))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
