"""Pinhole camera over a flat ground plane.

Conventions. World frame: X right, Y up, Z forward along the start of the road; the ground is Y = 0.
Camera optical frame (REP 103 ``*_optical_frame``): x right, y down, z forward. ``pitch_deg`` is
positive when the camera looks down (as in the Cityscapes camera files), ``roll_deg`` positive turns
the image clockwise around the optical axis, yaw (heading, kept by the renderer, not in the camera
model) positive turns right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Fixed mounting values of the Cityscapes/LostAndFound camera files that synthroad does not vary.
MOUNT_X_M = 1.7       # camera ahead of the vehicle reference point
STEREO_BASELINE_M = 0.21


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics (pixels) and mounting (height over the ground, pitch, roll) of the camera."""

    fx: float
    fy: float
    cx: float
    cy: float
    height_m: float
    pitch_deg: float
    roll_deg: float

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def cityscapes_json(self) -> dict:
        """The camera in the Cityscapes / LostAndFound ``*_camera.json`` format.

        Extrinsic: metres and radians in the vehicle frame (x forward, y left, z up); the camera
        looks straight ahead of the vehicle (yaw 0), ``pitch`` > 0 looks down.
        """
        return {
            "extrinsic": {
                "baseline": STEREO_BASELINE_M,
                "pitch": math.radians(self.pitch_deg),
                "roll": math.radians(self.roll_deg),
                "x": MOUNT_X_M,
                "y": 0.0,
                "yaw": 0.0,
                "z": self.height_m,
            },
            "intrinsic": {"fx": self.fx, "fy": self.fy, "u0": self.cx, "v0": self.cy},
        }


def camera_to_world_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation taking optical-frame vectors to world vectors (angles in radians)."""
    cy_, sy_ = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    r_yaw = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])      # + looks down
    r_roll = np.array([[cr, sr, 0], [-sr, cr, 0], [0, 0, 1]])        # + turns the image clockwise
    flip = np.diag([1.0, -1.0, 1.0])                                   # optical y down -> world Y up
    return r_yaw @ r_pitch @ r_roll @ flip


class View:
    """A posed camera: intrinsics, world position and orientation, with projection helpers."""

    NEAR = 0.3  # near clipping plane (m)

    def __init__(self, cam: CameraModel, position: np.ndarray, yaw: float, size: tuple[int, int]):
        self.cam = cam
        self.h, self.w = size
        self.fx, self.fy, self.cx, self.cy = cam.fx, cam.fy, cam.cx, cam.cy
        self.C = np.asarray(position, dtype=np.float64)
        self.yaw = yaw
        self.R = camera_to_world_rotation(yaw, math.radians(cam.pitch_deg), math.radians(cam.roll_deg))
        self.Rt = self.R.T
        # Level (pitch/roll free) forward and right directions on the ground.
        self.fwd = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
        self.right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])

    # -- world <-> camera ---------------------------------------------------------------------
    def to_cam(self, pts: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> optical-frame points (N, 3)."""
        return (pts - self.C) @ self.R

    def project_cam(self, p: np.ndarray) -> np.ndarray:
        """Optical-frame points (N, 3) with z > 0 -> pixel coordinates (N, 2)."""
        out = p[:, :2] / p[:, 2:3]
        out *= (self.fx, self.fy)
        out += (self.cx, self.cy)
        return out

    def ground_offsets(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward (along the optical axis projected on the ground) and lateral (right +) offsets."""
        rel = pts - self.C
        return rel @ self.fwd, rel @ self.right

    def ray_coefficients(self) -> np.ndarray:
        """(3, 3) matrix M such that world ray direction = M @ (u, v, 1) for pixel (u, v).

        The direction is scaled so that its optical-axis component is 1, hence the ray parameter
        of a ray-plane intersection is the camera depth z.
        """
        kinv = np.array([[1 / self.fx, 0, -self.cx / self.fx], [0, 1 / self.fy, -self.cy / self.fy],
                         [0, 0, 1]])
        return self.R @ kinv

    def horizon_rows(self, cols: np.ndarray) -> np.ndarray:
        """Image row of the horizon (rays parallel to the ground) at the given columns."""
        m = self.ray_coefficients()
        a, b, c = m[1]
        if abs(b) < 1e-12:
            return np.full(cols.shape, -1e9)
        return -(a * cols + c) / b


def clip_near(p: np.ndarray, near: float = View.NEAR) -> np.ndarray:
    """Clip a convex or simple polygon (N, 3) in the optical frame against the plane z = near."""
    inside = p[:, 2] >= near
    if inside.all():
        return p
    if not inside.any():
        return p[:0]
    out = []
    n = len(p)
    for i in range(n):
        a, b = p[i], p[(i + 1) % n]
        ia, ib = inside[i], inside[(i + 1) % n]
        if ia:
            out.append(a)
        if ia != ib:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out)
