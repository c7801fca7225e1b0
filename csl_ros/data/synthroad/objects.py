"""Drawing of scene objects (in-distribution classes and OOD obstacles) into a ``Raster``.

3-D boxes (vehicles, buildings, walls, crates, planks) are drawn face by face with back-face culling
and Lambert shading; thin or round things (people, bicycles, trees, poles, signs, bags, tyres, rocks)
are camera-facing sprites. Every object also drops a cast shadow and a darker contact shadow on
the ground before the ground is shaded.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from . import labels as L
from . import textures as T
from .raster import Part, Raster
from .world import Obj, World

_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], axis=1)
_UP = np.array([0.0, 1.0, 0.0])

# Box faces over corners 0-3 (bottom: back-left, back-right, front-right, front-left) and 4-7 (top,
# same order); each quad is (top_a, top_b, bottom_b, bottom_a) so texture rows run downwards.
_FACES = {"back": (4, 5, 1, 0), "right": (5, 6, 2, 1), "front": (6, 7, 3, 2), "left": (7, 4, 0, 3),
          "top": (7, 6, 5, 4)}


def ellipse(cx, cy, rx, ry, n=16):
    c = _CIRCLE if n == 16 else np.stack([np.cos(np.linspace(0, 2 * np.pi, n, endpoint=False)),
                                          np.sin(np.linspace(0, 2 * np.pi, n, endpoint=False))], 1)
    return c * (rx, ry) + (cx, cy)


def quad(x0, y0, x1, y1):
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float64)


class Pose:
    """Where an object stands at time t: ground centre, heading and local axes (world)."""

    def __init__(self, world: World, o: Obj, t: float):
        s = o.s + o.speed * t
        self.s = s
        self.base = world.world_point(s, o.d)
        h = world.heading(s) + o.yaw
        self.heading = h
        self.fwd = np.array([math.sin(h), 0.0, math.cos(h)])
        self.right = np.array([math.cos(h), 0.0, -math.sin(h)])

    def local(self, pts: np.ndarray) -> np.ndarray:
        """Local (x right, y up, z forward) points (N, 3) -> world."""
        return self.base + pts[:, :1] * self.right + pts[:, 1:2] * _UP + pts[:, 2:3] * self.fwd


def box_corners(x0, x1, z0, z1, y0, y1, top_inset=(0.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """Local corners of a (possibly tapered) box; ``top_inset`` = (left, right, back, front)."""
    il, ir, ib, if_ = top_inset
    return np.array([
        (x0, y0, z0), (x1, y0, z0), (x1, y0, z1), (x0, y0, z1),
        (x0 + il, y1, z0 + ib), (x1 - ir, y1, z0 + ib), (x1 - ir, y1, z1 - if_), (x0 + il, y1, z1 - if_),
    ])


_FACE_IDX = {k: np.array(v) for k, v in _FACES.items()}


def draw_box(rs: Raster, corners: np.ndarray, faces: dict, light, label: int, inst: int,
             wrap: bool = False) -> None:
    """Draw the camera-facing faces of a convex hexahedron (world corners (8, 3)).

    ``faces`` maps a face name to ("color", rgb) or ("tex", image[, pixels per metre]); missing
    faces are skipped. With ``wrap`` the texture repeats along the face at the given resolution
    and spans the face height once.
    """
    names = list(faces)
    q = corners[np.concatenate([_FACE_IDX[k] for k in names])].reshape(len(names), 4, 3)
    a, b, d = q[:, 0], q[:, 1], q[:, 3]
    u, w = b - a, d - a
    n = np.empty_like(u)
    n[:, 0] = u[:, 1] * w[:, 2] - u[:, 2] * w[:, 1]
    n[:, 1] = u[:, 2] * w[:, 0] - u[:, 0] * w[:, 2]
    n[:, 2] = u[:, 0] * w[:, 1] - u[:, 1] * w[:, 0]
    n /= np.sqrt((n * n).sum(axis=1))[:, None] + 1e-12
    centre = (corners[0] + corners[6]) * 0.5
    n *= np.where((((q[:, 0] + q[:, 2]) * 0.5 - centre) * n).sum(axis=1) < 0, -1.0, 1.0)[:, None]
    facing = ((rs.view.C - a) * n).sum(axis=1) > 1e-9
    for f in np.flatnonzero(facing):
        spec = faces[names[f]]
        shade = light.shade(n[f])
        pts = q[f]
        if spec[0] == "color":
            rs.polygon(pts, label, inst, color=spec[1], shade=shade)
            continue
        tex = spec[1]
        th, tw = tex.shape[:2]
        if wrap:
            ab, ad = pts[1] - pts[0], pts[3] - pts[0]
            e1 = ab / (np.linalg.norm(ab) * spec[2] + 1e-12)
            e2 = ad / th
        else:
            e1 = (pts[1] - pts[0]) / tw
            e2 = (pts[3] - pts[0]) / th
        rs.polygon(pts, label, inst, texture=tex, tex_frame=(pts[0], e1, e2), shade=shade, wrap=wrap)


def _cached(o: Obj, key, fn):
    t = o.cache.get(key)
    if t is None:
        t = fn()
        o.cache[key] = t
    return t


def _world_tex(world: World, o: Obj, fn):
    """Texture shared by all pieces of one long structure (keyed by its texture seed)."""
    key = (o.kind, o.p["tex_seed"])
    t = world.tex_cache.get(key)
    if t is None:
        t = fn()
        world.tex_cache[key] = t
    return t


def _ground_shadow_of_box(rs: Raster, pts_local_xz: np.ndarray, height: float, pose: Pose, light,
                          strength_cast=150, strength_contact=235, contact_grow=0.12) -> None:
    """Cast shadow (sun) and contact shadow of an object with a given footprint and height."""
    c, s_ = math.cos(pose.heading), math.sin(pose.heading)
    lx, lz = pts_local_xz[:, 0], pts_local_xz[:, 1]
    foot = np.column_stack([pose.base[0] + lx * c + lz * s_, pose.base[2] - lx * s_ + lz * c])
    sun = light.sun
    if sun[1] > 0.05 and light.shadow > 0.05 and strength_cast > 0:
        k = min(height / sun[1], 40.0 / max(math.hypot(sun[0], sun[2]), 1e-6))
        pts = np.concatenate([foot, foot - (sun[0] * k, sun[2] * k)])
        rs.ground_shadow(cv2.convexHull(pts.astype(np.float32))[:, 0, :].astype(np.float64), strength_cast)
    if strength_contact > 0:
        ctr = foot.mean(axis=0)
        rad = float(np.abs(foot - ctr).max()) + 1e-3
        rs.ground_shadow(ctr + (foot - ctr) * (1.0 + contact_grow / rad), strength_contact)


def _rect_xz(w, l):
    return np.array([(-w / 2, -l / 2), (w / 2, -l / 2), (w / 2, l / 2), (-w / 2, l / 2)])


def _circle_xz(r, n=10):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


# =============================================================================================
# In-distribution objects
# =============================================================================================
PPM_CAR = 24.0


def draw_vehicle(rs: Raster, world: World, o: Obj, pose: Pose, light, shadows_only=False) -> None:
    p = o.p
    Lh, W, H = p["L"], p["W"], p["H"]
    if shadows_only:
        _ground_shadow_of_box(rs, _rect_xz(W, Lh), H, pose, light)
        return
    paint = p["paint"]
    inst = o.inst
    ppm = pixels_per_metre(rs, pose.base)
    if ppm * Lh < 28:
        # far away: a painted body box with a darker glass box on top, no textures
        c = pose.local(box_corners(-W / 2, W / 2, -Lh / 2, Lh / 2, 0.15, H * 0.62))
        draw_box(rs, c, {k: ("color", paint) for k in ("back", "front", "left", "right", "top")}, light, o.label, inst)
        if o.kind == "car":
            c = pose.local(box_corners(-W / 2 + 0.1, W / 2 - 0.1, -Lh / 4, Lh / 5, H * 0.62, H))
            draw_box(rs, c, {k: ("color", p["glass"]) for k in ("back", "front", "left", "right")} |
                     {"top": ("color", paint)}, light, o.label, inst)
        else:
            c = pose.local(box_corners(-W / 2, W / 2, -Lh / 2, Lh / 2, H * 0.62, H))
            draw_box(rs, c, {k: ("color", paint * 0.9) for k in ("back", "front", "left", "right")}, light,
                     o.label, inst)
        return
    pk = tuple(paint.tolist())          # exact values: a cached texture is a pure function of its key
    gk = tuple(p["glass"].tolist())
    if o.kind == "car":
        body = p["body"]
        hb = round({"sedan": 0.68, "hatch": 0.66, "suv": 0.6, "van": 0.5}[body] * H, 2)
        clr, wr = 0.17, 0.32
        side = T.cached(("car_side", Lh, hb, pk), lambda: T.car_side(Lh, hb, PPM_CAR, paint, clr, wr, Lh / 2 - 0.8))
        rear = T.cached(("car_rear", W, hb, pk), lambda: T.car_end(W, hb, PPM_CAR, paint, clr, True))
        front = T.cached(("car_front", W, hb, pk), lambda: T.car_end(W, hb, PPM_CAR, paint, clr, False))
        c = pose.local(box_corners(-W / 2, W / 2, -Lh / 2, Lh / 2, 0.02, hb))
        draw_box(rs, c, {"back": ("tex", rear), "front": ("tex", front), "left": ("tex", side),
                         "right": ("tex", side), "top": ("color", paint)}, light, L.CAR, inst)
        zr, zf, tr, tf = {"sedan": (0.85, 1.2, 0.45, 0.6), "hatch": (0.25, 1.1, 0.25, 0.6),
                          "suv": (0.3, 1.15, 0.15, 0.5), "van": (0.2, 0.9, 0.1, 0.7)}[body]
        z0, z1 = -Lh / 2 + zr, Lh / 2 - zf
        cab = pose.local(box_corners(-W / 2 + 0.05, W / 2 - 0.05, z0, z1, hb, H, (0.16, 0.16, tr, tf)))
        glass = p["glass"]
        band = T.cached(("car_band", z1 - z0, H - hb, pk, gk),
                        lambda: T.glass_band(z1 - z0, H - hb, PPM_CAR, paint, glass,
                                             (0.05, (z1 - z0) * 0.52, z1 - z0 - 0.05)))
        draw_box(rs, cab, {"back": ("color", glass * 1.1), "front": ("color", glass * 1.25),
                           "left": ("tex", band), "right": ("tex", band), "top": ("color", paint)},
                 light, L.CAR, inst)
    elif o.kind == "bus":
        clr, wr = 0.3, 0.48
        side = _cached(o, "side", lambda: T.bus_side(Lh, H, PPM_CAR * 0.6, paint, p["glass"], clr, wr,
                                                     (2.6, Lh - 3.0), p["stripe"]))
        end = _cached(o, "end", lambda: _bus_end(W, H, paint, p["glass"], clr))
        c = pose.local(box_corners(-W / 2, W / 2, -Lh / 2, Lh / 2, 0.02, H))
        draw_box(rs, c, {"back": ("tex", end), "front": ("tex", end), "left": ("tex", side),
                         "right": ("tex", side), "top": ("color", paint)}, light, L.BUS, inst)
    else:  # truck: cab in front of a cargo box
        lc = 2.2
        hc = min(H * 0.85, 2.9)
        clr, wr = 0.3, 0.48
        cargo = p["cargo"]
        cab_side = _cached(o, "cab_side", lambda: _truck_cab_side(lc, hc, paint, p["glass"], clr, wr))
        cab_front = _cached(o, "cab_front", lambda: _bus_end(W, hc, paint, p["glass"], clr))
        c = pose.local(box_corners(-W / 2, W / 2, Lh / 2 - lc, Lh / 2, 0.02, hc))
        draw_box(rs, c, {"back": ("color", paint * 0.8), "front": ("tex", cab_front), "left": ("tex", cab_side),
                         "right": ("tex", cab_side), "top": ("color", paint)}, light, L.TRUCK, inst)
        box_side = _cached(o, "box_side", lambda: T.car_side(Lh - lc - 0.15, H, PPM_CAR * 0.6, cargo, 0.55, wr,
                                                              (Lh - lc) / 2 - 1.0))
        back = _cached(o, "box_back", lambda: T.car_end(W, H, PPM_CAR * 0.6, cargo, 0.55, True))
        c = pose.local(box_corners(-W / 2, W / 2, -Lh / 2, Lh / 2 - lc - 0.15, 0.02, H))
        draw_box(rs, c, {"back": ("tex", back), "front": ("color", cargo * 0.9), "left": ("tex", box_side),
                         "right": ("tex", box_side), "top": ("color", cargo)}, light, L.TRUCK, inst)


def _bus_end(W, H, paint, glass, clr):
    ppm = PPM_CAR * 0.6
    img = T.car_end(W, H, ppm, paint, clr, rear=False)
    h, w = img.shape[:2]
    y0, y1 = int(0.12 * h), int((1 - 1.15 / H) * h)
    x0, x1 = int(0.05 * w), int(0.95 * w)
    g = np.clip(glass * np.linspace(1.2, 0.85, y1 - y0)[:, None] * 255, 0, 255).astype(np.uint8)
    img[y0:y1, x0:x1] = g[:, None, :]
    return img


def _truck_cab_side(lc, hc, paint, glass, clr, wr):
    img = T.car_side(lc, hc, PPM_CAR * 0.6, paint, clr, wr, 0.0)
    h, w = img.shape[:2]
    img[int(0.12 * h):int(0.45 * h), int(0.45 * w):int(0.92 * w)] = np.clip(glass * 255, 0, 255).astype(np.uint8)
    return img


def _linear_corners(world: World, o: Obj, t: float):
    """World corners of a linear structure (building, wall, fence, hedge) piece."""
    p = o.p
    sgn = p["side"]
    side = 1 if sgn > 0 else 0
    d_a = sgn * (world.edge(side, o.s) + p["off"])
    d_b = sgn * (world.edge(side, o.s_end) + p["off"])
    a = world.world_point(o.s, d_a)
    b = world.world_point(o.s_end, d_b)
    outward = np.array([sgn * p["depth"], 0.0, 0.0])
    # bottom: back-left, back-right, front-right, front-left in the road's frame (z along the road)
    if sgn > 0:
        bottom = [a, a + outward, b + outward, b]
    else:
        bottom = [a + outward, a, b, b + outward]
    bottom = np.array(bottom)
    top = bottom + (0.0, o.height, 0.0)
    return np.concatenate([bottom, top])


def draw_linear(rs: Raster, world: World, o: Obj, light, shadows_only=False) -> None:
    c = _linear_corners(world, o, 0.0)
    p = o.p
    sgn = p["side"]
    road_face = "left" if sgn > 0 else "right"
    if shadows_only:
        sun = light.sun
        if sun[1] > 0.05 and light.shadow > 0.05:
            k = min(o.height / sun[1], 60.0 / max(math.hypot(sun[0], sun[2]), 1e-6))
            foot = c[:4][:, [0, 2]]
            pts = np.concatenate([foot, foot - (sun[0] * k, sun[2] * k)])
            rs.ground_shadow(cv2.convexHull(pts.astype(np.float32))[:, 0, :].astype(np.float64), 150)
        return
    ends = p.get("ends", (True, True))
    if o.kind == "building":
        tex, ppm = T.facade(p["style"], p["floors"])
        end = ("color", T.facade_style(p["style"])["wall"] * 0.92)
        faces = {road_face: ("tex", tex, ppm), "back": end, "front": end}
        draw_box(rs, c, faces, light, L.BUILDING, 0, wrap=True)
    elif o.kind == "wall":
        tex = _world_tex(world, o, lambda: T.concrete(np.random.default_rng(p["tex_seed"]), 8.0, o.height, 20.0,
                                                        p["color"], p["panel"]))
        faces = {road_face: ("tex", tex, 20.0), "top": ("color", p["color"] * 0.9)}
        if ends[0]:
            faces["back"] = ("color", p["color"] * 0.85)
        if ends[1]:
            faces["front"] = ("color", p["color"] * 0.85)
        draw_box(rs, c, faces, light, L.WALL, 0, wrap=True)
    elif o.kind == "fence":
        tex = _world_tex(world, o, lambda: T.fence(np.random.default_rng(p["tex_seed"]), o.height, 40.0, p["color"],
                                                     p["color"] * 0.35 + np.array((0.05, 0.09, 0.03)), p["spacing"]))
        draw_box(rs, c, {road_face: ("tex", tex, 40.0)}, light, L.FENCE, 0, wrap=True)
    else:  # hedge
        tex = _world_tex(world, o, lambda: T.foliage(np.random.default_rng(p["tex_seed"]), 6.0, o.height, 24.0,
                                                       p["color"]))
        faces = {road_face: ("tex", tex, 24.0), "top": ("tex", tex, 24.0)}
        if ends[0]:
            faces["back"] = ("tex", tex, 24.0)
        if ends[1]:
            faces["front"] = ("tex", tex, 24.0)
        draw_box(rs, c, faces, light, L.VEGETATION, 0, wrap=True)


def _view_axis(rs: Raster, pose: Pose):
    """Signed cosine between the object's heading and the sprite's right axis (side-view factor)."""
    ray = pose.base - rs.view.C
    rh = np.array([ray[2], 0.0, -ray[0]])
    rh /= np.linalg.norm(rh) + 1e-12
    return float(pose.fwd @ rh), rh


def pixels_per_metre(rs: Raster, point: np.ndarray) -> float:
    """Image scale at a world point (0 behind the camera)."""
    z = float((point - rs.view.C) @ rs.view.R[:, 2])
    return rs.view.fx / z if z > 0.1 else 0.0


def person_parts_far(o: Obj, label: int, inst: int, light_v) -> list[Part]:
    """A distant pedestrian (under ~16 px): legs, torso and head only."""
    p = o.p
    h, b = o.height, p["build"]
    hip, shy, hr_ = 0.5 * h, 0.81 * h, 0.062 * h
    return [Part(quad(-0.15 * b, 0.0, 0.15 * b, hip), np.asarray(p["pants"]) * light_v, label, inst),
            Part(quad(-0.21 * b, hip - 0.04, 0.21 * b, shy + 0.04), np.asarray(p["shirt"]) * light_v, label, inst),
            Part(ellipse(0.0, h - hr_, hr_ * 0.9, hr_, 8), np.asarray(p["skin"]) * light_v, label, inst)]


def person_parts(o: Obj, label: int, inst: int, light_v) -> list[Part]:
    p = o.p
    h = o.height
    b = p["build"]
    sh, pa, sk, hr = (np.asarray(p[k]) * light_v for k in ("shirt", "pants", "skin", "hair"))
    hip, shy = 0.5 * h, 0.81 * h
    hr_ = 0.062 * h
    st = p["stride"]
    parts = []
    for sgn in (-1, 1):
        xh, xf = sgn * 0.085 * b, sgn * (0.085 * b + st / 2)
        parts.append(Part(np.array([(xh - 0.075, hip), (xh + 0.075, hip), (xf + 0.06, 0.08), (xf - 0.06, 0.08)]),
                          pa, label, inst, tex=0.1, tex_scale=30))
        parts.append(Part(quad(xf - 0.07, 0.0, xf + 0.08, 0.09), (0.06, 0.06, 0.07), label, inst))
    parts.append(Part(np.array([(-0.17 * b, hip - 0.04), (0.17 * b, hip - 0.04), (0.21 * b, shy), (0.13 * b, shy + 0.04),
                                (-0.13 * b, shy + 0.04), (-0.21 * b, shy)]), sh, label, inst, tex=0.12, tex_scale=30,
                      cyl=0.21 * b))
    for sgn in (-1, 1):
        sw = sgn * st * 0.3
        parts.append(Part(np.array([(sgn * 0.2 * b, shy - 0.02), (sgn * 0.245 * b + sw, hip + 0.03)]), sh * 0.9,
                          label, inst, kind="line", width=0.085))
        parts.append(Part(ellipse(sgn * 0.245 * b + sw, hip + 0.0, 0.045, 0.055, 8), sk, label, inst))
    parts.append(Part(quad(-0.045, shy, 0.045, h - 2 * hr_ + 0.02), sk * 0.9, label, inst))
    parts.append(Part(ellipse(0.0, h - hr_, hr_ * 0.85, hr_), sk, label, inst))
    parts.append(Part(np.concatenate([ellipse(0.0, h - hr_, hr_ * 0.9, hr_ * 1.05)[8:], [(hr_ * 0.9, h - hr_ * 0.9)]]),
                      hr, label, inst))
    if p["bag"]:
        parts.append(Part(quad(0.2 * b, hip - 0.05, 0.36 * b, hip + 0.25), np.asarray(p["bag_color"]) * light_v,
                          label, inst))
    return parts


def bicycle_parts(o: Obj, world: World, rs: Raster, pose: Pose, light_v) -> list[Part]:
    """Bicycle / motorcycle, with its rider when it has one, as seen from the camera."""
    ax, _ = _view_axis(rs, pose)
    p = o.p
    moto = p["moto"]
    frame = np.asarray(p["frame"]) * light_v
    tyre = np.array((0.04, 0.04, 0.045)) * light_v
    blabel, binst = o.label, o.inst
    rider = None
    if "rider" in p:
        rider = next((r for r in world.objects if r.uid == p["rider"]), None)
    parts: list[Part] = []
    wr = 0.31 if moto else 0.34
    if abs(ax) < 0.45:
        # Seen from behind or in front: tyre strip, handlebar, rider's back.
        tw = 0.14 if moto else 0.05
        parts.append(Part(quad(-tw / 2, 0.0, tw / 2, 2 * wr), tyre, blabel, binst))
        parts.append(Part(np.array([(-0.3, 1.0), (0.3, 1.0)]), frame, blabel, binst, kind="line", width=0.04))
        if moto:
            parts.append(Part(quad(-0.22, 0.35, 0.22, 0.85), frame, blabel, binst))
            parts.append(Part(quad(-0.12, 0.65, 0.12, 0.8), (0.7, 0.05, 0.05), blabel, binst))
        if rider is not None:
            r = rider.p
            sh, pa, sk, hel = (np.asarray(r[k]) * light_v for k in ("shirt", "pants", "skin", "helmet"))
            ri, rl = rider.inst, L.RIDER
            for sgn in (-1, 1):
                parts.append(Part(np.array([(sgn * 0.06, 0.95), (sgn * 0.16, 0.6), (sgn * 0.08, 0.25)]), pa, rl, ri,
                                  kind="line", width=0.11))
                parts.append(Part(np.array([(sgn * 0.18, 1.35), (sgn * 0.28, 1.0)]), sh, rl, ri, kind="line", width=0.08))
            parts.append(Part(np.array([(-0.17, 0.9), (0.17, 0.9), (0.2, 1.42), (-0.2, 1.42)]), sh, rl, ri, cyl=0.2))
            parts.append(Part(ellipse(0.0, 1.56, 0.12, 0.13), hel, rl, ri))
        return parts
    sx = math.copysign(max(abs(ax), 0.3), ax)

    def P(pts):
        a = np.asarray(pts, np.float64).copy()
        a[:, 0] *= sx
        return a

    wb = 0.7 if moto else 0.52
    for cx in (-wb, wb):
        parts.append(Part(P(ellipse(cx, wr, wr, wr, 20)), tyre, blabel, binst, kind="line",
                          width=0.09 if moto else 0.045, closed=True))
        parts.append(Part(P(ellipse(cx, wr, 0.04, 0.04, 8)), frame, blabel, binst))
    if moto:
        parts.append(Part(P([(-0.55, 0.45), (0.45, 0.4), (0.6, 0.8), (0.2, 0.95), (-0.65, 0.85)]), frame,
                          blabel, binst))
        parts.append(Part(P([(-0.4, 0.3), (0.2, 0.3), (0.25, 0.55), (-0.35, 0.55)]), (0.15, 0.15, 0.16),
                          blabel, binst))
        parts.append(Part(P([(0.45, 0.9), (0.62, 1.1)]), frame, blabel, binst, kind="line", width=0.04))
    else:
        bb = (-0.05, 0.3)
        seat = (-0.22, 0.88)
        head = (0.38, 0.86)
        for a, b in ((( -wb, wr), bb), (bb, seat), (seat, (-wb, wr)), (bb, head), (seat, head), (head, (wb, wr))):
            parts.append(Part(P([a, b]), frame, blabel, binst, kind="line", width=0.035))
        parts.append(Part(P([(0.38, 0.86), (0.36, 1.02), (0.28, 1.04)]), frame, blabel, binst, kind="line", width=0.03))
        parts.append(Part(P(quad(-0.32, 0.88, -0.12, 0.93)), (0.05, 0.05, 0.05), blabel, binst))
    if rider is not None:
        r = rider.p
        sh, pa, sk, hel = (np.asarray(r[k]) * light_v for k in ("shirt", "pants", "skin", "helmet"))
        ri, rl = rider.inst, L.RIDER
        hip = (-0.2, 0.95) if not moto else (-0.25, 0.95)
        knee = (0.12, 0.68) if not moto else (0.2, 0.7)
        foot = (0.0, 0.28) if not moto else (0.05, 0.4)
        parts.append(Part(P([hip, knee, foot]), pa, rl, ri, kind="line", width=0.12))
        sh_pt = (0.05, 1.45) if not moto else (-0.05, 1.45)
        parts.append(Part(P([(hip[0] - 0.1, hip[1] - 0.05), (hip[0] + 0.12, hip[1] - 0.05), (sh_pt[0] + 0.1, sh_pt[1]),
                             (sh_pt[0] - 0.12, sh_pt[1] + 0.02)]), sh, rl, ri))
        parts.append(Part(P([sh_pt, (0.3, 1.05)]), sh * 0.9, rl, ri, kind="line", width=0.08))
        parts.append(Part(P(ellipse(sh_pt[0] + 0.05, 1.6, 0.12, 0.12)), sk, rl, ri))
        parts.append(Part(P(ellipse(sh_pt[0] + 0.05, 1.64, 0.135, 0.1)), hel, rl, ri))
    return parts


def tree_parts(o: Obj, light_v, detail: bool = True) -> list[Part]:
    p = o.p
    lab = L.VEGETATION
    parts = []
    trunk = np.asarray(p["trunk"]) * light_v
    green = np.asarray(p["green"]) * light_v
    tw = p["trunk_w"]
    crown = p["crown"]
    th = max(p["trunk_h"], 1.0)
    top = o.height
    parts.append(Part(np.array([(-tw / 2, 0), (tw / 2, 0), (tw * 0.35, th + crown * 0.6), (-tw * 0.35, th + crown * 0.6)]),
                      trunk, lab, 0, tex=0.15, tex_scale=40, cyl=tw / 2))
    if p["conifer"]:
        n = 4
        for k in range(n):
            y0 = th + (top - th) * k / n * 0.85
            w = crown * (1.0 - 0.2 * k)
            parts.append(Part(np.array([(-w, y0), (w, y0), (0.0, y0 + (top - th) * 0.45)]),
                              green * (0.85 + 0.05 * k), lab, 0, tex=0.35, tex_scale=18))
    else:
        cy = top - crown
        for bx, by, bz in (p["blobs"] if detail else p["blobs"][:3]):
            parts.append(Part(ellipse(bx * crown * 0.55, cy + by * crown * 0.35, crown * (0.6 + 0.15 * bz),
                                      crown * (0.55 + 0.12 * bz)), green * (0.9 + 0.12 * by), lab, 0,
                              tex=0.42, tex_scale=28))
    return parts


def bush_parts(o: Obj, light_v) -> list[Part]:
    p = o.p
    w, h = p["w"], o.height
    green = np.asarray(p["green"]) * light_v
    return [Part(ellipse(bx * w * 0.3, h * (0.45 + 0.1 * by), w * (0.35 + 0.08 * bz), h * 0.5), green * (0.9 + 0.1 * by),
                 L.VEGETATION, 0, tex=0.35, tex_scale=18) for bx, by, bz in p["blobs"]]


def pole_parts(o: Obj, world: World, rs: Raster, pose: Pose, light_v) -> list[Part]:
    p = o.p
    h = o.height
    if o.kind == "lamp":
        col = np.asarray(p["color"]) * light_v
        w = p["w"]
        # The arm points towards the road centre.
        _, rh = _view_axis(rs, pose)
        to_road = -p["side"] * np.array([math.cos(pose.heading), 0.0, -math.sin(pose.heading)])
        sgn = 1.0 if to_road @ rh >= 0 else -1.0
        arm = p["arm"] * max(abs(float(to_road @ rh)), 0.25) * sgn
        return [Part(np.array([(-w / 2, 0), (w / 2, 0), (w * 0.35, h), (-w * 0.35, h)]), col, L.POLE, 0, cyl=w / 2),
                Part(np.array([(0.0, h - 0.1), (arm * 0.6, h + 0.15), (arm, h + 0.12)]), col, L.POLE, 0, kind="line",
                     width=0.07),
                Part(np.array([(arm - 0.28, h), (arm + 0.28, h), (arm + 0.2, h + 0.16), (arm - 0.2, h + 0.16)]),
                     col * 0.7, L.POLE, 0)]
    grey = np.array((0.5, 0.5, 0.52)) * light_v
    parts = [Part(quad(-0.035, 0, 0.035, h), grey, L.POLE, 0, cyl=0.035)]
    if o.kind == "traffic_light":
        body = np.array((0.09, 0.09, 0.1)) * light_v
        parts[0] = Part(quad(-0.06, 0, 0.06, h), grey, L.POLE, 0, cyl=0.06)
        y0 = h - 0.05
        parts.append(Part(quad(-0.17, y0, 0.17, y0 + 0.9), body, L.TRAFFIC_LIGHT, 0))
        if p["facing"]:
            lamp_cols = [(0.9, 0.12, 0.08), (0.95, 0.7, 0.1), (0.15, 0.85, 0.35)]
            for k in range(3):
                on = (2 - k) == p["state"]
                col = np.array(lamp_cols[k]) * (1.0 if on else 0.18)
                parts.append(Part(ellipse(0.0, y0 + 0.75 - 0.28 * k, 0.1, 0.1, 12), col, L.TRAFFIC_LIGHT, 0))
        return parts
    # Traffic sign(s) on the pole.
    size = p["size"]
    ys = [h - size / 2] + ([h - size * 1.6] if p["double"] else [])
    red, white, blue, yellow = (np.array(c) * light_v for c in ((0.75, 0.08, 0.08), (0.92, 0.92, 0.9),
                                                                (0.08, 0.25, 0.65), (0.95, 0.75, 0.1)))
    for k, cy in enumerate(ys):
        shape = p["shape"] if k == 0 else "rect"
        r = size / 2
        if shape == "circle":
            outer, inner = ellipse(0, cy, r, r), ellipse(0, cy, r * 0.75, r * 0.75)
        elif shape == "triangle":
            outer = np.array([(-r, cy - r * 0.8), (r, cy - r * 0.8), (0, cy + r)])
            inner = (outer - (0, cy)) * 0.62 + (0, cy - 0.05 * r)
        elif shape == "octagon":
            outer = ellipse(0, cy, r, r, 8)
            inner = ellipse(0, cy, r * 0.82, r * 0.82, 8)
        elif shape == "diamond":
            outer = np.array([(0, cy - r), (r, cy), (0, cy + r), (-r, cy)])
            inner = (outer - (0, cy)) * 0.7 + (0, cy)
        else:
            outer = quad(-r, cy - r * 0.7, r, cy + r * 0.7)
            inner = quad(-r * 0.85, cy - r * 0.55, r * 0.85, cy + r * 0.55)
        if not p["facing"]:
            parts.append(Part(outer, grey * 0.9, L.TRAFFIC_SIGN, 0))
            continue
        scheme = p["scheme"]
        if shape in ("circle", "triangle"):
            rim, fill = (red, white) if scheme != 1 else (white, blue)
        elif shape == "octagon":
            rim, fill = white, red
        elif shape == "diamond":
            rim, fill = white, yellow
        else:
            rim, fill = (white, blue) if scheme != 2 else (white * 0.3, white)
        parts.append(Part(outer, rim, L.TRAFFIC_SIGN, 0))
        parts.append(Part(inner, fill, L.TRAFFIC_SIGN, 0))
        if scheme == 0 and shape in ("circle", "rect"):
            parts.append(Part(quad(-r * 0.45, cy - r * 0.1, r * 0.45, cy + r * 0.1), rim * 0.2 + 0.02,
                              L.TRAFFIC_SIGN, 0))
    return parts


def draw_object(rs: Raster, world: World, o: Obj, t: float, light, shadows_only: bool = False) -> None:
    """Draw one in-distribution object (or only its shadows)."""
    if o.linear:
        draw_linear(rs, world, o, light, shadows_only)
        return
    if o.kind == "rider":
        return  # drawn together with its bicycle
    pose = Pose(world, o, t)
    if o.kind in ("car", "truck", "bus"):
        draw_vehicle(rs, world, o, pose, light, shadows_only)
        return
    if shadows_only:
        if o.kind == "tree":
            cr = o.p["crown"]
            _ground_shadow_of_box(rs, _circle_xz(cr * 0.9), o.height - cr, pose, light, 130, 0)
            _ground_shadow_of_box(rs, _circle_xz(o.p["trunk_w"]), 1.0, pose, light, 200, 200, 0.05)
        elif o.kind == "bush":
            _ground_shadow_of_box(rs, _circle_xz(o.p["w"] / 2), o.height, pose, light, 150, 200, 0.1)
        elif o.kind in ("lamp", "sign", "traffic_light"):
            _ground_shadow_of_box(rs, _circle_xz(0.08, 6), o.height, pose, light, 140, 160, 0.02)
        elif o.kind == "person":
            _ground_shadow_of_box(rs, _circle_xz(0.22), o.height, pose, light, 160, 230, 0.05)
        elif o.kind in ("bicycle", "motorcycle"):
            _ground_shadow_of_box(rs, _rect_xz(0.3 if o.kind == "bicycle" else 0.6, 1.7), 1.4 if "rider" in o.p else 1.0,
                                  pose, light, 150, 200, 0.05)
        return
    lv = light.vertical
    ppm = pixels_per_metre(rs, pose.base)
    if ppm * o.height < 2.0:
        return   # smaller than two pixels: nothing a segmentation label could keep
    if o.kind == "person":
        if ppm * o.height < 16:
            rs.sprite(pose.base, person_parts_far(o, L.PERSON, o.inst, lv))
        else:
            rs.sprite(pose.base, person_parts(o, L.PERSON, o.inst, lv))
    elif o.kind in ("bicycle", "motorcycle"):
        rs.sprite(pose.base, bicycle_parts(o, world, rs, pose, lv))
    elif o.kind == "tree":
        rs.sprite(pose.base, tree_parts(o, lv, detail=ppm * o.p["crown"] > 8))
    elif o.kind == "bush":
        rs.sprite(pose.base, bush_parts(o, lv))
    elif o.kind in ("lamp", "sign", "traffic_light"):
        rs.sprite(pose.base, pole_parts(o, world, rs, pose, lv))
    else:
        raise ValueError(f"unknown scene object kind {o.kind!r}")
