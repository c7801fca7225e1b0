"""Frame rendering: camera placement, sky, ground shader, objects, OOD obstacles, labels, photometry."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np

from . import labels as L
from .camera import CameraModel, View
from .noise import sample, sample_bilinear, sensor_noise
from .objects import Pose, draw_object
from .obstacles import draw_obstacle, footprint, make_obstacle
from .raster import Raster
from .world import DS, LEFT, RIGHT, YELLOW_PAINT, Obj, World

OBSTACLE_MODES = ("none", "obstacle", "anomaly")
GROUND_TMAX = 1500.0          # rays meeting the ground further than this count as horizon haze
OBJECT_RANGE = 180.0          # objects further ahead than this are not drawn (the backdrop closes the view)
SHADOW_RANGE = 150.0
OBSTACLE_RANGE = (5.0, 60.0)  # forward distance of placed OOD obstacles


@dataclass
class Frame:
    """One rendered camera frame with its labels (see the module docs for the encodings)."""

    image: np.ndarray          # (H, W, 3) uint8 RGB
    train_ids: np.ndarray      # (H, W) uint8, Cityscapes trainIds, 255 void (OOD obstacles included)
    instance_ids: np.ndarray   # (H, W) int32, 0 none, unique positive id per thing / obstacle
    ood_labels: np.ndarray     # (H, W) uint8: 0 in-distribution, 1 anomaly/obstacle, 255 void
    camera: CameraModel
    obstacles: list = field(default_factory=list)
    seed: int = 0
    index: int = 0


def _check_args(size, obstacles):
    if obstacles not in OBSTACLE_MODES:
        raise ValueError(f"obstacles must be one of {OBSTACLE_MODES}, got {obstacles!r}")
    try:
        h, w = (int(x) for x in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if h < 16 or w < 16 or h > 8192 or w > 8192:
        raise ValueError(f"size must be between 16 and 8192 pixels per side, got {size!r}")
    return h, w


# =============================================================================================
# Scene state shared by all frames of one drive
# =============================================================================================
def _drive_world(seed: int, s_end: float, ego_speed: float) -> World:
    """The world of a drive from arc length 0 to ``s_end`` (0 for one frame), objects included up to
    ``OBJECT_RANGE`` beyond it."""
    return World(seed, s_range=(-40.0, s_end + OBJECT_RANGE), ego_speed=ego_speed)


class _Drive:
    """A world, its camera mounting and photometric style, and the ego path through it."""

    def __init__(self, seed: int, size, mode: str, s_end: float, ego_speed: float, sequence: bool):
        self.seed = seed
        self.h, self.w = size
        self.mode = mode
        self.world = _drive_world(seed, s_end, ego_speed)
        world = self.world
        rng = np.random.default_rng([seed, 1])
        lanes = world.lane_centers(RIGHT, 0.0)
        self.d_ego = float(lanes[rng.integers(len(lanes))] + rng.uniform(-0.3, 0.3))
        self.cam_h = float(rng.uniform(1.2, 1.7))
        self.pitch = float(rng.uniform(0.5, 4.5))
        self.roll = float(np.clip(rng.normal(0.0, 0.6), -1.5, 1.5))
        self.yaw_off = math.radians(rng.uniform(-2.0, 2.0)) if not sequence else math.radians(rng.uniform(-0.5, 0.5))
        f_rel = rng.uniform(0.95, 1.25)
        self.fx = self.w * f_rel
        self.fy = self.fx * rng.uniform(0.998, 1.002)
        self.cx = self.w / 2 + self.w * rng.uniform(-0.01, 0.01)
        self.cy = self.h / 2 + self.h * rng.uniform(-0.02, 0.02)
        self.bounce = rng.uniform(0, 2 * np.pi, 4)
        self.photo = _photometric_params(np.random.default_rng([seed, 2]), world.light)

        # Objects: moving traffic is dropped from obstacle/anomaly scenes (static world only), and
        # nothing may stand on the ego path.
        keep = []
        for o in world.objects:
            if mode != "none" and o.moving:
                continue
            if not o.linear and self._on_ego_path(o, sequence):
                continue
            keep.append(o)
        if sequence:
            for o in keep:   # vehicles in the ego lane keep their distance
                if o.moving and "lane" in o.p and abs(o.d - self.d_ego) < 1.2 and o.speed > 0:
                    o.speed = ego_speed
        world.objects = keep
        self.obstacles: list[Obj] = []

    def _on_ego_path(self, o: Obj, sequence: bool) -> bool:
        half = o.p["W"] / 2 if "W" in o.p else max(o.radius, 0.3)
        if abs(o.d - self.d_ego) > half + 1.4:
            return False
        if sequence:
            # a static object in the lane would be driven through; moving ones in the lane follow.
            return not (o.moving and o.speed > 0)
        return -10.0 < o.s < 6.0 + (o.p.get("L", 0.0) / 2)

    def view_at(self, s_ego: float, t: float, index: int) -> View:
        world = self.world
        b = self.bounce
        pitch = self.pitch + (0.15 * math.sin(2.1 * t + b[0]) + 0.08 * math.sin(5.3 * t + b[1]) if t else 0.0)
        roll = self.roll + (0.12 * math.sin(1.7 * t + b[2]) + 0.05 * math.sin(4.1 * t + b[3]) if t else 0.0)
        cam = CameraModel(fx=float(self.fx), fy=float(self.fy), cx=float(self.cx), cy=float(self.cy),
                          height_m=self.cam_h, pitch_deg=float(pitch), roll_deg=float(roll))
        pos = world.world_point(s_ego, self.d_ego, self.cam_h)
        yaw = world.heading(s_ego) + self.yaw_off
        return View(cam, pos, yaw, (self.h, self.w))


# =============================================================================================
# Obstacle placement
# =============================================================================================
def _footprint_clear(world: World, o: Obj, s: float, d: float, r: float, others: list[Obj]) -> bool:
    """No overlap with static scene objects or other obstacles (ground footprints, margin 0.4 m)."""
    for q in world.objects:
        if q.linear or abs(q.s - s) > 15:
            continue
        ds, dd = s - q.s, d - q.d
        if "L" in q.p:
            if abs(ds) < q.p["L"] / 2 + r + 0.4 and abs(dd) < q.p["W"] / 2 + r + 0.4:
                return False
        elif math.hypot(ds, dd) < r + 0.5:
            return False
    for q in others:
        if math.hypot(s - q.s, d - q.d) < r + q.radius + 0.6:
            return False
    return True


def _lateral_range(world: World, s: float, mode: str, r: float) -> tuple[float, float]:
    i = world.idx(s)
    hw = float(world.hw_tab[i])
    if mode == "obstacle":
        return -hw + r + 0.15, hw - r - 0.15
    return (-(hw + float(world.free_tab[LEFT, i])) + r + 0.2, hw + float(world.free_tab[RIGHT, i]) - r - 0.2)


def _obstacle_bbox(view: View, world: World, o: Obj):
    pose = Pose(world, o, 0.0)
    fp = footprint(o)
    pts = np.concatenate([np.column_stack([fp[:, 0], np.zeros(len(fp)), fp[:, 1]]),
                          np.column_stack([fp[:, 0], np.full(len(fp), o.height), fp[:, 1]])])
    pc = view.to_cam(pose.local(pts))
    if (pc[:, 2] < 1.0).any():
        return None
    px = view.project_cam(pc)
    return px[:, 0].min(), px[:, 1].min(), px[:, 0].max(), px[:, 1].max(), float(pc[:, 2].max())


def _place_for_frame(drive: _Drive, view: View, rng: np.random.Generator) -> list[Obj]:
    """1-4 obstacles 5-60 m ahead, fully inside the image, not overlapping each other in it."""
    world = drive.world
    n_target = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.17, 0.08]))
    placed: list[Obj] = []
    boxes = []
    s_cam = float(view.C[2])
    for _ in range(n_target * 25):
        if len(placed) == n_target:
            break
        dist = OBSTACLE_RANGE[0] + (OBSTACLE_RANGE[1] - OBSTACLE_RANGE[0]) * rng.random() ** 1.5
        s = s_cam + dist
        o = make_obstacle(world, rng, s, 0.0)
        lo, hi = _lateral_range(world, s, drive.mode, o.radius)
        # stay inside the horizontal field of view (with a margin)
        half_fov = dist * (drive.w / 2) / drive.fx * 0.92
        x_cam = float(view.C[0] - world.center(s))
        lo, hi = max(lo, x_cam - half_fov + o.radius), min(hi, x_cam + half_fov - o.radius)
        if hi <= lo:
            continue
        o.d = float(rng.uniform(lo, hi))
        if not _footprint_clear(world, o, s, o.d, o.radius, placed):
            continue
        bb = _obstacle_bbox(view, world, o)
        if bb is None:
            continue
        x0, y0, x1, y1, _ = bb
        if x0 < 1 or x1 > drive.w - 2 or y1 > drive.h - 2 or y0 < 0:
            continue
        if any(not (x1 + 3 < b[0] or b[2] + 3 < x0 or y1 + 3 < b[1] or b[3] + 3 < y0) for b in boxes):
            continue
        boxes.append(bb)
        placed.append(o)
    if not placed:
        # Rare fallback: one obstacle 8-20 m ahead on the camera's line, clearing what stands there.
        for _ in range(50):
            s = s_cam + rng.uniform(8.0, 20.0)
            o = make_obstacle(world, rng, s, float(view.C[0] - world.center(s)) + rng.uniform(-0.5, 0.5))
            bb = _obstacle_bbox(view, world, o)
            if bb is not None and bb[0] >= 1 and bb[2] <= drive.w - 2 and 0 <= bb[1] and bb[3] <= drive.h - 2:
                world.objects = [q for q in world.objects if q.linear or math.hypot(q.s - s, q.d - o.d) > 5.0]
                placed.append(o)
                break
    _remove_occluders(world, placed, [view])
    return placed


def _place_for_drive(drive: _Drive, s_start: float, s_end: float, rng: np.random.Generator,
                     views: list[View]) -> list[Obj]:
    """Obstacles scattered along the drive, a group every 20-50 m."""
    world = drive.world
    placed: list[Obj] = []
    s = s_start + OBSTACLE_RANGE[0] + rng.uniform(5, 20)
    while s < s_end + OBSTACLE_RANGE[1]:
        for _ in range(int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))):
            for _try in range(20):
                ss = s + rng.uniform(-4, 4)
                o = make_obstacle(world, rng, ss, 0.0)
                lo, hi = _lateral_range(world, ss, drive.mode, o.radius)
                lo, hi = max(lo, drive.d_ego - 8.0), min(hi, drive.d_ego + 8.0)
                if hi <= lo:
                    continue
                o.d = float(rng.uniform(lo, hi))
                if _footprint_clear(world, o, ss, o.d, o.radius, placed):
                    placed.append(o)
                    break
        s += rng.uniform(20, 50)
    _remove_occluders(world, placed, views)
    return placed


def _remove_occluders(world: World, obstacles: list[Obj], views: list[View]) -> None:
    """Drop point objects standing between a camera position and an obstacle (ground wedge test)."""
    if not obstacles:
        return
    drop = set()
    for v in views:
        cam = np.array([v.C[0], v.C[2]])
        for o in obstacles:
            p = world.world_point(o.s, o.d)
            tgt = np.array([p[0], p[2]]) - cam
            dist = float(np.linalg.norm(tgt))
            if dist < 1.0:
                continue
            u = tgt / dist
            nrm = np.array([-u[1], u[0]])
            for q in world.objects:
                if q.linear or q.uid in drop or abs(q.s - o.s) > dist + 10:
                    continue
                qp = world.world_point(q.s, q.d)
                rel = np.array([qp[0], qp[2]]) - cam
                along = float(rel @ u)
                if along <= 0 or along >= dist + q.radius:
                    continue
                half = o.radius * along / dist + q.radius + 0.3
                if abs(float(rel @ nrm)) < half:
                    drop.add(q.uid)
                    if "rider" in q.p:
                        drop.add(q.p["rider"])
                    if "bike" in q.p:
                        drop.add(q.p["bike"])
    if drop:
        world.objects = [q for q in world.objects if q.uid not in drop]


def _assign_uids(world: World, obstacles: list[Obj]) -> None:
    for o in obstacles:
        o.uid = world.uid()


# =============================================================================================
# Sky, backdrop, ground
# =============================================================================================
def _sky(rs: Raster, view: View, light) -> None:
    """Sky gradient, sun glow and clouds on a plane 1 km up, at quarter resolution, upsampled.

    Only the rows down to 8 pixels below the horizon are shaded; the ground covers the rest (its
    rays there meet the ground well within ``GROUND_TMAX``).
    """
    h, w = rs.h, rs.w
    hor = view.horizon_rows(np.array([0.0, w - 1.0]))
    rows = int(np.clip(np.ceil(hor.max()) + 8, 1, h))
    f = 4
    hs, ws = max(2, -(-rows // f)), max(2, w // f)
    m = view.ray_coefficients().astype(np.float32)
    us = ((np.arange(ws, dtype=np.float32) + 0.5) * (w / ws) - 0.5)[None, :]
    vs = ((np.arange(hs, dtype=np.float32) + 0.5) * (rows / hs) - 0.5)[:, None]
    d0, d1, d2 = (m[i, 0] * us + m[i, 1] * vs + m[i, 2] for i in range(3))
    inv_norm = 1.0 / np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
    dy = d1 * inv_norm                                   # sine of the elevation
    g = np.sqrt(np.clip(dy * np.float32(1 / 0.56), 0, 1))
    col = light.sky_horizon.astype(np.float32) + g[..., None] * (light.sky_top - light.sky_horizon).astype(np.float32)
    c = np.clip((d0 * light.sun[0] + d1 * light.sun[1] + d2 * light.sun[2]) * inv_norm, 0, 1)
    c2 = c * c
    c4 = c2 * c2
    c8 = c4 * c4
    glow = c8 * c8 * c8 * np.float32(0.35) + c4 * np.float32(0.08)
    col += glow[..., None] * np.array([1.0, 0.95, 0.85], np.float32)
    if light.clouds > 0.02:
        yy = 1000.0 / np.maximum(dy, np.float32(0.02))
        # cloud layer 1000 m above the camera, in world metres (it drifts past in a drive)
        cx = d0 * inv_norm * yy + np.float32(view.C[0])
        cz = d2 * inv_norm * yy + np.float32(view.C[2])
        n = sample_bilinear("coarse", cx * 0.04 + 1000, cz * 0.04 + 1000) \
            + 0.22 * sample_bilinear("mid", cx * 0.12 + 500, cz * 0.12 + 500)
        thr = 1.5 - 2.8 * light.clouds
        cov = np.clip((n - thr) * 0.9, 0, 1) * np.sqrt(np.clip(dy * np.float32(25.0), 0, 1))
        # thicker cloud is darker underneath
        shade = np.clip(1.0 - 0.18 * np.clip(n - thr - 0.6, 0, 2), 0.7, 1.0)
        cc = light.cloud_color.astype(np.float32)[None, None, :] * shade[..., None]
        col += cov[..., None] * (cc - col)
    rs.img[:rows] = cv2.resize(col.astype(np.float32), (w, rows), interpolation=cv2.INTER_LINEAR)
    rs.lab[:] = L.SKY


def _backdrop(rs: Raster, view: View, world: World, light) -> None:
    """Distant tree line / skyline at the horizon (angular silhouette, drawn behind everything)."""
    bd = world.backdrop
    hf = math.atan(rs.w / 2 / view.fx) + 0.1
    az = view.yaw + np.linspace(-hf, hf, 96)
    el = np.interp(np.mod(az + np.pi, 2 * np.pi) - np.pi, bd["az"], bd["el"], period=2 * np.pi)
    top = np.stack([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], 1)
    lo = math.radians(-0.4)
    bot = np.stack([np.sin(az) * math.cos(lo), np.full(az.shape, math.sin(lo)), np.cos(az) * math.cos(lo)], 1)
    dirs = np.concatenate([top, bot[::-1]])
    pc = dirs @ view.R
    if (pc[:, 2] <= 0.01).any():
        return
    px = view.project_cam(pc)
    if px[:, 1].max() < 0 or px[:, 1].min() >= rs.h:
        return
    y0 = max(int(px[:, 1].min()) - 1, 0)
    y1 = min(int(px[:, 1].max()) + 2, rs.h)
    if y1 <= y0:
        return
    mask = np.zeros((y1 - y0, rs.w), np.uint8)
    cv2.fillPoly(mask, [np.round((px - (0, y0)) * 8).astype(np.int32)], 1, shift=3)
    vis = mask > 0
    color = np.asarray(bd["color"]) * light.vertical
    color = color * 0.45 + light.haze * 0.55
    cols_px, rows_px = np.nonzero(vis.T)
    tex = np.zeros(vis.shape, np.float32)
    tex[rows_px, cols_px] = sample("mid", cols_px * 1.7 + view.yaw * view.fx * 1.7, (rows_px + y0) * 1.7)
    amp = 0.12 if bd["label"] == L.VEGETATION else 0.04
    cols = color[None, :] * (1 + amp * tex[vis])[:, None]
    rs.img[y0:y1][vis] = cols.astype(np.float32)
    rs.lab[y0:y1][vis] = bd["label"]
    rs.invz[y0:y1][vis] = np.float32(1.0 / 5000.0)


FINE_FADE_M = 32.0   # fine asphalt grain and paving joints fade out by this distance (at 1024 px width)


def _road_coords(world: World, X: np.ndarray, Z: np.ndarray):
    """(table index, lateral offset d) of world ground points, through the tabulated centre line."""
    f32 = np.float32
    fi = (Z - f32(world.s0)) * f32(1.0 / DS)
    np.clip(fi, 0, world.n - 2.001, out=fi)
    i = fi.astype(np.int32)
    fi -= i
    c0 = world.c_tab.take(i)
    d = X - c0
    d -= (world.c_tab.take(i + 1) - c0) * fi
    return i, d


def _ground(rs: Raster, view: View, world: World, light, shadow_blur: int) -> None:
    """Per-pixel ray/ground intersection and the road, curb, sidewalk and terrain shader.

    Every pixel below the horizon is intersected with the plane Y = 0 (camera depth t), mapped to
    road coordinates (s = Z, d = X - c(s)) and shaded from world-anchored textures, so markings,
    pavers and asphalt grain keep their perspective and stay put in a video. Smooth large-scale
    stains are evaluated at half resolution; fine grain and paving joints only in the rows near
    enough to show them.
    """
    h, w = rs.h, rs.w
    m = view.ray_coefficients().astype(np.float64)
    cam_h = float(view.C[1])
    hor = view.horizon_rows(np.array([0.0, w - 1.0]))
    r0 = int(np.clip(np.floor(hor.min()), 0, h))
    if r0 >= h:
        return
    f32 = np.float32
    cx, cz = f32(view.C[0]), f32(view.C[2])

    def lin(i, us, vs, scale=1.0):
        return (f32(m[i, 0] * scale) * us)[None, :] + (f32(m[i, 1] * scale) * vs + f32(m[i, 2] * scale))[:, None]

    def ground_xz(us, vs):
        iz = lin(1, us, vs, -1.0 / cam_h)
        t = 1.0 / np.maximum(iz, f32(1.0 / GROUND_TMAX))
        X = lin(0, us, vs)
        X *= t
        X += cx
        Z = lin(2, us, vs)
        Z *= t
        Z += cz
        return iz, t, X, Z

    us = np.arange(w, dtype=np.float32)
    vs = np.arange(r0, h, dtype=np.float32)
    invz, t, X, Z = ground_xz(us, vs)
    valid = invz > f32(1.0 / GROUND_TMAX)
    i, d = _road_coords(world, X, Z)
    hw = world.hw_tab.take(i)
    ad = np.abs(d)
    e = ad - hw
    si = i + (d > 0) * np.int32(world.n)
    curb = world.curb_tab.ravel().take(si)
    sw = world.sw_tab.ravel().take(si)
    mat = (e >= 0).view(np.uint8) + (e >= curb).view(np.uint8) + (e >= curb + sw).view(np.uint8)
    # 0 road, 1 curb, 2 sidewalk, 3 terrain

    # Large-scale stains and patches (smooth): half resolution, then upsampled.
    h2, w2 = max(1, (h - r0 + 1) // 2), max(1, (w + 1) // 2)
    _, _, X2, Z2 = ground_xz(np.arange(w2, dtype=np.float32) * 2 + 0.5, r0 + np.arange(h2, dtype=np.float32) * 2 + 0.5)
    _, d2 = _road_coords(world, X2, Z2)
    low = sample("mid", Z2 * f32(6.0) + f32(77.0), d2 * f32(6.0) + f32(33.0))
    low += sample("coarse", Z2 * f32(0.9) + f32(11.0), d2 * f32(0.9) + f32(5.0))
    low = cv2.resize(low, (w, h - r0), interpolation=cv2.INTER_LINEAR)
    mod = low * np.array([world.asphalt_patches, 0.035, 0.045, 0.19], np.float32).take(mat)
    mod += f32(1.0)

    # Fine grain and paving joints, only in rows where they do not alias away.
    t_fade = FINE_FADE_M * 1024.0 / w
    rowmax = np.maximum(invz[:, 0], invz[:, -1])
    near = np.nonzero(rowmax > f32(1.0 / t_fade))[0]
    if len(near):
        rf = int(near[0])
        tf, Zf, df, mf = t[rf:], Z[rf:], d[rf:], mat[rf:]
        fade = np.minimum(f32(1.0), np.maximum(f32(0.0), f32(1.4) - tf * f32(1.4 / t_fade)))
        g = sample("fine", Zf * f32(45.0), df * f32(45.0))
        g *= fade
        g *= np.array([world.asphalt_grain, 0.05, 0.06, 0.22], np.float32).take(mf)
        inv_p = f32(1.0 / world.paver_size)
        jz = Zf * inv_p
        jz -= np.floor(jz)
        jd = df * inv_p
        jd -= np.floor(jd)
        jw = f32(0.014 * inv_p)
        joint = (np.minimum(jz, jd) < jw) & (mf == 2)
        g -= joint * (f32(world.paver) * fade)
        mod[rf:] += g

    # Lane markings (world coordinates), antialiased by the lateral pixel footprint.
    cov = None
    if world.markings:
        inv_fp = f32(view.fx) * invz                       # pixels per metre across the line
        half = f32(world.line_w / 2)
        n = world.n_lanes
        lw = hw * f32(2.0 / n)
        q = (d + hw) / lw
        k = np.rint(q)
        dist = np.abs(q - k)
        dist *= lw
        zf = Z * f32(1.0 / world.dash_period)
        zf -= np.floor(zf)
        dash = zf < f32(world.dash_len / world.dash_period)
        inner = (k > 0) & (k < n)
        if world.two_way:
            is_center = k == (n // 2)
            if world.center_style == "double":
                dist = np.where(is_center, np.abs(ad - f32(0.1 + half)), dist)
            on = inner & (dash | is_center) if world.center_style != "dashed" else inner & dash
        else:
            on = inner & dash
        cov = (half - dist) * inv_fp
        cov += f32(0.5)
        np.clip(cov, 0.0, 1.0, out=cov)
        cov *= on
        if world.edge_lines:
            ed = (half * f32(1.3) - np.abs(e + f32(0.35))) * inv_fp
            ed += f32(0.5)
            np.maximum(cov, ed, out=cov)
            np.minimum(cov, f32(1.0), out=cov)
    if world.zebra_tab.any():
        zb = world.zebra_tab.take(i) & ((d - np.floor(d)) < f32(0.5)) & (e < f32(-0.3))
        cov = zb.astype(np.float32) if cov is None else np.maximum(cov, zb)
    if cov is not None:
        cov *= (mat == 0) * f32(1.0 - world.mark_wear * 0.6)

    # Shadows (queued by the objects and rasterised beforehand) darken everything on the ground.
    light_g = np.asarray(light.ground, np.float32)
    if light.shadow > 0 and rs.shadow[r0:].any():
        sh = rs.shadow[r0:]
        if shadow_blur > 1:
            sh = cv2.blur(sh, (shadow_blur, shadow_blur))
        mod *= f32(1.0) - f32(light.shadow / 255.0) * sh
    # Colour = base colour of the material x modulation, then the marking paint where it covers.
    lut = np.zeros((256, 1, 3), np.float32)
    lut[:4, 0] = np.array([world.asphalt, world.curb_color, world.sidewalk, world.terrain]) * light_g
    col = cv2.LUT(cv2.merge((mat, mat, mat)), lut)
    col *= mod[..., None]
    if cov is not None:
        nz = np.flatnonzero(cov)
        if nz.size:
            c2 = col.reshape(-1, 3)
            cf = cov.ravel()[nz][:, None]
            paint = (np.asarray(world.mark_color, np.float32) * light_g)[None, :] * \
                np.minimum(mod.ravel()[nz], f32(1.05))[:, None]
            c2[nz] += cf * (paint - c2[nz])
    lab = np.array([L.ROAD, L.SIDEWALK, L.SIDEWALK, L.TERRAIN], np.uint8).take(mat)
    if valid.all():
        rs.img[r0:] = col
        rs.lab[r0:] = lab
        rs.invz[r0:] = invz
    else:
        vm = valid.view(np.uint8)
        cv2.copyTo(col, vm, rs.img[r0:])
        cv2.copyTo(lab, vm, rs.lab[r0:])
        cv2.copyTo(invz, vm, rs.invz[r0:])


# =============================================================================================
# Photometry
# =============================================================================================
def _photometric_params(rng: np.random.Generator, light) -> dict:
    return {
        "target": float(rng.uniform(0.36, 0.5) * (0.8 if light.name == "dusk" else 1.0)),
        "ev": float(rng.uniform(-0.35, 0.35)),
        "wb": np.clip(1.0 + rng.normal(0, 0.035, 3), 0.9, 1.1).astype(np.float32),
        "vignette": float(rng.uniform(0.0, 0.35)),
        "gamma": float(rng.uniform(0.85, 1.15)),
        "contrast": float(rng.uniform(0.0, 0.35)),
        "blur": float(rng.uniform(0.3, 1.1)) if rng.random() < 0.5 else 0.0,
        "motion": int(rng.integers(3, 8)) if rng.random() < 0.1 else 0,
        "noise": float(rng.uniform(0.5, 4.5)),
        "jpeg": int(rng.integers(35, 92)) if rng.random() < 0.35 else 0,
        "noise_offsets": int(rng.integers(1 << 30)),
    }


@lru_cache(maxsize=8)
def _vignette_r2(h: int, w: int) -> np.ndarray:
    yy, xx = np.ogrid[0:h, 0:w]
    r2 = ((xx - w / 2) / (w / 2)) ** 2 * 0.6 + ((yy - h / 2) / (h / 2)) ** 2 * 0.4
    r2 = r2.astype(np.float32)
    r2.setflags(write=False)
    return r2


@lru_cache(maxsize=8)
def _constant_image(h: int, w: int, color: tuple) -> np.ndarray:
    img = np.empty((h, w, 3), np.float32)
    img[:] = color
    img.setflags(write=False)
    return img


def _finish(rs: Raster, view: View, light, photo: dict, index: int) -> np.ndarray:
    """Haze, exposure, white balance, vignetting, tone curve, blur, sensor noise and JPEG."""
    h, w = rs.h, rs.w
    f32 = np.float32
    # Atmospheric haze by depth (sky pixels have invz = 0 and stay as they are) and vignetting,
    # blended in one pass.
    inv = rs.invz * f32(light.fog_m)
    haze = np.exp(-1.0 / np.maximum(inv, f32(1e-6)))
    haze = f32(1.0) - haze
    haze *= rs.invz > 0
    vig = f32(1.0) - f32(photo["vignette"]) * _vignette_r2(h, w)
    w2 = haze * vig
    w1 = vig - w2
    img = cv2.blendLinear(rs.img, _constant_image(h, w, tuple(float(c) for c in light.haze)), w1, w2)
    # Auto exposure towards a target mean, exposure offset; white balance and tone curve per
    # channel in one lookup table.
    mean = float(img[::4, ::4].mean())
    gain = photo["target"] / max(mean, 1e-3) * 2.0 ** photo["ev"]
    out = cv2.convertScaleAbs(img, alpha=255.0 * gain)
    x = np.arange(256, dtype=np.float64)[:, None] / 255.0 * photo["wb"][None, :]
    y = np.clip(x, 0, 1) ** photo["gamma"]
    y = y + photo["contrast"] * (y - 0.5) * (1 - np.abs(2 * y - 1))
    lut = np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)
    out = cv2.LUT(out, lut)
    if photo["blur"] > 0:
        out = cv2.GaussianBlur(out, (0, 0), photo["blur"] * w / 1024.0 + 1e-3)
    if photo["motion"]:
        k = np.zeros((photo["motion"], photo["motion"]), np.float32)
        k[photo["motion"] // 2, :] = 1.0 / photo["motion"]
        out = cv2.filter2D(out, -1, k)
    # Sensor noise: a crop of a fixed N(0,1) field at a per-frame offset.
    nz = sensor_noise(h, w)
    o = np.random.default_rng([photo["noise_offsets"], index]).integers(0, 64, 2)
    crop = nz[o[0]:o[0] + h, o[1]:o[1] + w]
    a = photo["noise"] / 16.0
    out = cv2.addWeighted(out, 1.0, crop, a, -128.0 * a)
    if photo["jpeg"]:
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, photo["jpeg"]])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(out)


# =============================================================================================
# Frame assembly
# =============================================================================================
def _visible_objects(view: View, world: World, objs: list[Obj], t: float, rng_ahead: float):
    s_cam = float(view.C[2])
    out = []
    tan_h = (view.w / 2 + 2) / view.fx
    for o in objs:
        s = o.s + o.speed * t
        if o.linear:
            if o.s_end < s_cam - 60 or o.s > s_cam + rng_ahead:
                continue
            out.append(o)
            continue
        if s < s_cam - 30 or s > s_cam + rng_ahead:
            continue
        out.append(o)
    if not out:
        return out
    # Frustum test on bounding spheres (vectorised).
    cs, rs_ = [], []
    for o in out:
        if o.linear:
            sm = 0.5 * (o.s + o.s_end)
            cs.append(world.world_point(sm, o.d + o.p["side"] * o.p["depth"] / 2, o.height / 2))
            rs_.append(0.5 * (o.s_end - o.s) + o.p["depth"] + o.height + 1.0)
        else:
            cs.append(world.world_point(o.s + o.speed * t, o.d, o.height / 2))
            rs_.append(max(o.radius, o.height / 2) + 1.0)
    pc = view.to_cam(np.array(cs))
    r = np.array(rs_)
    keep = (pc[:, 2] + r > view.NEAR) & (np.abs(pc[:, 0]) - r < np.maximum(pc[:, 2], 0) * tan_h * 1.02 + 0.5)
    return [o for o, k in zip(out, keep) if k]


def _render(drive: _Drive, view: View, t: float, index: int, timings: dict | None = None) -> Frame:
    world = drive.world
    light = world.light
    rs = Raster(view)
    tick = time.process_time()

    def lap(name):
        nonlocal tick
        if timings is not None:
            now = time.process_time()
            timings[name] = timings.get(name, 0.0) + now - tick
            tick = now

    _sky(rs, view, light)
    _backdrop(rs, view, world, light)
    lap("sky")
    objs = _visible_objects(view, world, world.objects, t, OBJECT_RANGE)
    obst = _visible_objects(view, world, drive.obstacles, 0.0, OBSTACLE_RANGE[1] + 40)
    s_cam = float(view.C[2])
    for o in objs:
        if o.s - s_cam < SHADOW_RANGE:
            draw_object(rs, world, o, t, light, shadows_only=True)
    for o in obst:
        draw_obstacle(rs, world, o, light, shadows_only=True)
    rs.flush_shadows()
    lap("shadows")
    blur = max(1, int(round(light.shadow_blur * drive.w / 1024.0)))
    _ground(rs, view, world, light, blur)
    lap("ground")
    for o in objs:
        draw_object(rs, world, o, t, light)
    lap("objects")
    for o in obst:
        draw_obstacle(rs, world, o, light)
    lap("obstacles")
    image = _finish(rs, view, light, drive.photo, index)
    lap("photometric")

    # Labels.
    train_ids = rs.lab
    inst = rs.inst
    obstacle_ids = {o.uid for o in obst}
    is_obst = (train_ids == L.VOID) & (inst > 0)
    if drive.mode == "none":
        ood = np.zeros(train_ids.shape, np.uint8)
    elif drive.mode == "obstacle":
        ood = np.where(train_ids == L.ROAD, np.uint8(0), np.uint8(255))
        ood[is_obst] = 1
    else:
        ood = is_obst.astype(np.uint8)
    records = []
    if obstacle_ids:
        counts = np.bincount(inst[is_obst].ravel(), minlength=max(obstacle_ids) + 1)
        for o in obst:
            n = int(counts[o.uid]) if o.uid < len(counts) else 0
            if n == 0:
                continue
            centre = world.world_point(o.s, o.d)
            fwd, lat = view.ground_offsets(centre[None])
            records.append({"instance_id": int(o.uid), "kind": o.kind, "distance_m": float(fwd[0]),
                            "lateral_m": float(lat[0]), "width_m": float(o.p["w"]), "height_m": float(o.height),
                            "depth_m": float(o.p["dep"]), "pixels": n})
    lap("labels")
    return Frame(image=image, train_ids=train_ids, instance_ids=inst, ood_labels=ood, camera=view.cam,
                 obstacles=records, seed=int(drive.seed), index=int(index))


# =============================================================================================
# Public API
# =============================================================================================
def render_frame(seed: int, size: tuple[int, int] = (512, 1024), obstacles: str = "none",
                 timings: dict | None = None) -> Frame:
    """Render one labelled frame of a fresh procedural road scene.

    ``seed`` fixes everything (scene, camera, obstacles, photometry); ``size`` = (height, width);
    ``obstacles``: "none", "obstacle" (OOD obstacles on the drivable road, Obstacle-Track labels:
    everything off the road is void 255) or "anomaly" (OOD obstacles anywhere on the ground,
    Anomaly-Track labels: 0 / 1). ``timings`` (optional dict) receives seconds per stage.
    """
    h, w = _check_args(size, obstacles)
    seed = int(seed)
    t0 = time.process_time()
    drive = _Drive(seed, (h, w), obstacles, s_end=0.0, ego_speed=0.0, sequence=False)
    view = drive.view_at(0.0, 0.0, 0)
    if obstacles != "none":
        obst = _place_for_frame(drive, view, np.random.default_rng([seed, 3, OBSTACLE_MODES.index(obstacles)]))
        _assign_uids(drive.world, obst)
        drive.obstacles = obst
    if timings is not None:
        timings["world"] = timings.get("world", 0.0) + time.process_time() - t0
    return _render(drive, view, 0.0, 0, timings)


def has_rare_road_paint(seed: int, ahead_m: float = 40.0) -> bool:
    """Whether the road of ``render_frame(seed)`` carries the rarer paint: a zebra crossing starting
    within ``ahead_m`` metres of the camera (10 % of the frames at 40 m) or yellow markings (5 %).
    Builds only the frame's world (about 15 ms), not the image."""
    world = _drive_world(int(seed), 0.0, 0.0)   # render_frame's world
    yellow = world.markings and np.allclose(world.mark_color, YELLOW_PAINT)
    return bool(yellow or world.zebra_tab[world.idx(0.0):world.idx(ahead_m) + 1].any())


def rare_road_paint_seeds(first_seed: int, count: int) -> list[int]:
    """The first ``count`` seeds from ``first_seed`` on whose frame has rare road paint
    (:func:`has_rare_road_paint`)."""
    seeds, seed = [], int(first_seed)
    while len(seeds) < count:
        if has_rare_road_paint(seed):
            seeds.append(seed)
        seed += 1
    return seeds


def render_sequence(seed: int, n_frames: int, size: tuple[int, int] = (512, 1024), obstacles: str = "obstacle",
                    speed_mps: float = 10.0, fps: float = 10.0) -> Iterator[Frame]:
    """Yield ``n_frames`` consecutive frames of one ego drive at ``speed_mps`` seen at ``fps``.

    The world, camera mounting and photometric style stay fixed; OOD obstacles are static in world
    coordinates (placed along the whole drive), other traffic moves at constant speed, and the
    camera bounces slightly. Frame ``index`` counts from 0.
    """
    h, w = _check_args(size, obstacles)
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not (0.0 <= speed_mps <= 60.0):
        raise ValueError(f"speed_mps must be within 0..60, got {speed_mps}")
    if not (0.1 <= fps <= 240.0):
        raise ValueError(f"fps must be within 0.1..240, got {fps}")
    seed = int(seed)
    s_end = speed_mps * (n_frames - 1) / fps
    drive = _Drive(seed, (h, w), obstacles, s_end=s_end, ego_speed=speed_mps, sequence=True)
    if obstacles != "none":
        probe = [drive.view_at(s, 0.0, 0) for s in np.linspace(0.0, s_end, max(2, int(s_end / 15) + 2))]
        obst = _place_for_drive(drive, 0.0, s_end, np.random.default_rng([seed, 4, OBSTACLE_MODES.index(obstacles)]),
                                probe)
        _assign_uids(drive.world, obst)
        drive.obstacles = obst
    for k in range(n_frames):
        t = k / fps
        view = drive.view_at(speed_mps * t, t, k)
        yield _render(drive, view, t, k)
