"""Flat-ground camera geometry: pixel -> ground contact point in the camera optical frame."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraGeometry:
    """Pinhole intrinsics plus the camera's mounting over a flat road.

    Optical frame (REP 103 ``*_optical_frame``): x right, y down, z forward. ``pitch_deg`` is
    positive when the camera looks down; roll is assumed zero.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    height_m: float = 1.5
    pitch_deg: float = 0.0

    @classmethod
    def from_K(cls, K, height_m: float = 1.5, pitch_deg: float = 0.0) -> "CameraGeometry":
        k = np.asarray(K, dtype=np.float64).reshape(3, 3)
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"camera matrix has non-positive focal length: fx={k[0, 0]}, fy={k[1, 1]}")
        return cls(float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]), height_m, pitch_deg)

    @classmethod
    def from_camera_info(cls, info, image_shape, height_m: float = 1.5,
                         pitch_deg: float = 0.0) -> "CameraGeometry | None":
        """The camera of a sensor_msgs/CameraInfo (rclpy or rosbags message: ``k``, ``width``,
        ``height``) or of the bag reader's dict of it (``fx``, ``fy``, ``cx``, ``cy``, ``width``,
        ``height``), for an image of ``image_shape`` (H, W, ...): camera_info of the unscaled sensor is
        scaled to it. None without calibration (no camera_info, or fx or fy not positive)."""
        if info is None:
            return None
        if isinstance(info, Mapping):
            fx, fy, cx, cy = (float(info.get(k, 0.0)) for k in ("fx", "fy", "cx", "cy"))
            w, h = int(info.get("width") or 0), int(info.get("height") or 0)
        else:
            k = np.asarray(info.k, dtype=np.float64).reshape(-1)
            fx, fy, cx, cy = float(k[0]), float(k[4]), float(k[2]), float(k[5])
            w, h = int(info.width), int(info.height)
        if fx <= 0 or fy <= 0:
            return None
        cam = cls(fx, fy, cx, cy, height_m, pitch_deg)
        image_h, image_w = image_shape[:2]
        if w > 0 and h > 0 and (w, h) != (image_w, image_h):  # camera_info of the unscaled sensor
            cam = cam.scaled(image_w / w, image_h / h)
        return cam

    def scaled(self, sx: float, sy: float) -> "CameraGeometry":
        """The same camera for an image resized by (sx, sy)."""
        return CameraGeometry(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
                              self.height_m, self.pitch_deg)

    def first_row_within(self, distance_m: float, rows: int) -> int:
        """The first image row, from the top, whose bottom edge meets the road at most ``distance_m``
        ahead (``rows`` when none of the ``rows`` rows does). The forward distance of a contact point
        depends on its row only (no roll) and falls from the horizon down, so everything whose lowest
        row lies above this one stands farther away or never touches the road."""
        _, dist = self.ground_point(np.full(rows, self.cx), np.arange(rows) + 1.0)
        within = np.isfinite(dist) & (dist <= distance_m)
        return int(np.argmax(within)) if within.any() else int(rows)

    def ground_point(self, u, v):
        """Intersect the rays through pixels (u, v) with the road plane.

        Returns (points (..., 3) in the optical frame, forward distance (...,) on the ground); rows at
        or above the horizon give NaN.
        """
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        xn = (u - self.cx) / self.fx
        yn = (v - self.cy) / self.fy
        th = math.radians(self.pitch_deg)
        # Ray direction (xn, yn, 1) rotated into a level frame (y down, z forward-horizontal).
        down = yn * math.cos(th) + math.sin(th)
        fwd = -yn * math.sin(th) + math.cos(th)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(down > 1e-9, self.height_m / down, np.nan)
        pts = np.stack([t * xn, t * yn, t], axis=-1)
        return pts, t * fwd
