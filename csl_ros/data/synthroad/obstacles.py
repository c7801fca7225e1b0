"""Out-of-distribution obstacles: generation, placement on the ground and drawing.

Kinds: boxes/crates, planks, standing cylinders (barrels, buckets, pipes), tyres (standing or
lying), bags and irregular debris polygons, with random colours and surface patterns (a fifth of them
close to the asphalt colour). Largest dimension 0.1-1.5 m, height at most ``MAX_HEIGHT`` so that every
obstacle stays below the horizon of a camera mounted at 1.2 m or higher.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

from . import labels as L
from . import textures as T
from .objects import Pose, _circle_xz, _ground_shadow_of_box, _rect_xz, box_corners, draw_box, ellipse
from .raster import Part, Raster
from .world import Obj, World

OBSTACLE_KINDS = ("box", "plank", "cylinder", "tyre", "bag", "polygon")
MAX_HEIGHT = 1.0
SIZE_RANGE = (0.1, 1.5)


def _random_color(rng, asphalt) -> np.ndarray:
    r = rng.random()
    if r < 0.2:   # camouflaged: close to the road surface
        return np.clip(asphalt * rng.uniform(0.7, 1.35) + rng.uniform(-0.03, 0.03, 3), 0, 1)
    if r < 0.45:  # everyday materials: cardboard, wood, dark/white plastic, rust
        base = [(0.55, 0.42, 0.28), (0.62, 0.5, 0.32), (0.08, 0.08, 0.09), (0.88, 0.88, 0.86),
                (0.5, 0.28, 0.15), (0.3, 0.32, 0.3)][rng.integers(6)]
        return np.clip(np.array(base) * rng.uniform(0.85, 1.15, 3), 0, 1)
    h, s, v = rng.uniform(0, 1), rng.uniform(0.35, 1.0), rng.uniform(0.3, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def make_obstacle(world: World, rng: np.random.Generator, s: float, d: float, kind: str | None = None) -> Obj:
    """A random obstacle standing at road coordinates (s, d) (not yet added to the world)."""
    kind = kind or OBSTACLE_KINDS[rng.choice(len(OBSTACLE_KINDS), p=[0.28, 0.12, 0.16, 0.12, 0.16, 0.16])]
    # Largest dimension: half log-uniform (small obstacles are the common and hard case), half uniform.
    lo, hi = SIZE_RANGE
    m = float(np.exp(rng.uniform(np.log(lo), np.log(hi))) if rng.random() < 0.5 else rng.uniform(lo, hi))
    p = {"color": _random_color(rng, world.asphalt), "second": _random_color(rng, world.asphalt),
         "pattern": T.PATTERNS[rng.integers(len(T.PATTERNS))], "tex_seed": int(rng.integers(1 << 30))}
    if kind == "box":
        w, dep, h = m, m * rng.uniform(0.5, 1.0), m * rng.uniform(0.4, 1.0)
    elif kind == "plank":
        w, dep, h = rng.uniform(0.1, 0.3), max(m, 0.5), rng.uniform(0.03, 0.09)
    elif kind == "cylinder":
        h = m
        w = dep = max(0.08, m * rng.uniform(0.35, 0.9))
    elif kind == "tyre":
        r = rng.uniform(0.28, 0.4)
        p.update(standing=rng.random() < 0.5, tread=rng.uniform(0.16, 0.26), rim=rng.random() < 0.5,
                 squash=rng.uniform(0.35, 1.0))
        p["color"] = np.array((0.05, 0.05, 0.055)) * rng.uniform(0.8, 1.6)
        p["second"] = np.array((0.55, 0.56, 0.58)) * rng.uniform(0.7, 1.1)
        if p["standing"]:
            w, dep, h = 2 * r * p["squash"], p["tread"], 2 * r
        else:
            w, dep, h = 2 * r, 2 * r, p["tread"]
        p["r"] = r
    elif kind == "bag":
        w = m
        h, dep = m * rng.uniform(0.4, 0.8), m * rng.uniform(0.5, 0.8)
        p["bumps"] = rng.uniform(-1, 1, 14)
        if rng.random() < 0.5:
            p["color"] = np.array([(0.05, 0.05, 0.06), (0.85, 0.85, 0.82), (0.15, 0.3, 0.6), (0.2, 0.4, 0.2),
                                   (0.6, 0.45, 0.3)][rng.integers(5)])
    else:  # polygon: debris / rock / lump with random outline
        w = m
        h, dep = m * rng.uniform(0.2, 0.8), m * rng.uniform(0.4, 1.0)
        k = int(rng.integers(6, 11))
        p["angles"] = np.sort(rng.uniform(0, 2 * np.pi, k))
        p["radii"] = rng.uniform(0.6, 1.0, k)
        p["spots"] = rng.uniform(-1, 1, size=(int(rng.integers(0, 5)), 3))
    h = min(h, MAX_HEIGHT)
    w, dep = max(w, 0.05), max(dep, 0.03)
    p.update(w=w, dep=dep)
    return Obj(uid=0, kind=kind, s=s, d=d, label=L.VOID, radius=0.5 * math.hypot(w, dep), height=h,
               yaw=rng.uniform(-np.pi, np.pi) if kind in ("box", "plank", "polygon") else 0.0, p=p)


def footprint(o: Obj) -> np.ndarray:
    p = o.p
    if o.kind in ("cylinder", "bag", "polygon"):
        return _circle_xz(max(p["w"], p["dep"]) / 2) * (1.0, p["dep"] / max(p["w"], p["dep"]))
    if o.kind == "tyre" and not p["standing"]:
        return _circle_xz(p["r"])
    return _rect_xz(p["w"], p["dep"])


def _front_anchor(rs: Raster, pose: Pose, depth_half: float) -> tuple[np.ndarray, float, float]:
    """Ground point of the object's front (towards the camera), its distance and the camera height."""
    ray = pose.base - rs.view.C
    ray[1] = 0.0
    dist = float(np.linalg.norm(ray))
    u = ray / max(dist, 1e-6)
    return pose.base - u * depth_half, max(dist - depth_half, 0.3), float(rs.view.C[1])


def draw_obstacle(rs: Raster, world: World, o: Obj, light, shadows_only: bool = False) -> None:
    pose = Pose(world, o, 0.0)
    p = o.p
    h, w, dep = o.height, p["w"], p["dep"]
    if shadows_only:
        _ground_shadow_of_box(rs, footprint(o), h, pose, light, 160, 235, min(0.08, 0.3 * w))
        return
    inst = o.inst
    if o.kind in ("box", "plank"):
        tex = o.cache.get("tex")
        if tex is None:
            tex = T.obstacle_surface(np.random.default_rng(p["tex_seed"]), p["color"], p["second"], p["pattern"])
            o.cache["tex"] = tex
        c = pose.local(box_corners(-w / 2, w / 2, -dep / 2, dep / 2, 0.0, h))
        faces = {k: ("tex", tex) for k in ("back", "right", "front", "left", "top")}
        draw_box(rs, c, faces, light, L.VOID, inst)
        return
    lv = light.vertical
    col = np.asarray(p["color"]) * lv
    sec = np.asarray(p["second"]) * lv
    top_light = light.shade(np.array([0.0, 1.0, 0.0]))
    if o.kind == "cylinder":
        r = w / 2
        anchor, dist, ch = _front_anchor(rs, pose, r)
        eb = r * ch / dist                  # apparent half-height of the bottom rim
        et = r * max(ch - h, 0.0) / dist    # ... and of the top rim
        th = np.linspace(0, np.pi, 12)
        bottom = np.stack([-r * np.cos(th), eb - eb * np.sin(th)], 1)     # front rim, left to right
        top = np.stack([r * np.cos(th), h + et - et * np.sin(th)], 1)       # top rim, right to left
        body = np.concatenate([bottom, top])
        parts = [Part(body, col, L.VOID, inst, tex=0.08 if p["pattern"] != "solid" else 0.0, cyl=r),
                 Part(ellipse(0.0, h + et, r, max(et, 1e-3)), np.asarray(p["color"]) * top_light * 0.95, L.VOID, inst)]
        if p["pattern"] in ("stripes", "print", "checker"):
            parts.append(Part(_band(r, eb, h * 0.35, h * 0.3), sec, L.VOID, inst, cyl=r))
        rs.sprite(anchor, parts)
    elif o.kind == "tyre":
        r = p["r"]
        tread = p["tread"]
        if p["standing"]:
            anchor, dist, ch = _front_anchor(rs, pose, tread / 2)
            sq = p["squash"]
            parts = [Part(ellipse(0.0, r, r * sq, r, 24), col, L.VOID, inst, tex=0.25, tex_scale=60)]
            if p["rim"]:
                parts.append(Part(ellipse(0.0, r, r * 0.55 * sq, r * 0.55, 20), sec, L.VOID, inst))
                parts.append(Part(ellipse(0.0, r, r * 0.15 * sq, r * 0.15, 10), sec * 0.5, L.VOID, inst))
            else:
                parts.append(Part(ellipse(0.0, r, r * 0.58 * sq, r * 0.58, 20), col, L.VOID, inst, kind="hole"))
        else:
            anchor, dist, ch = _front_anchor(rs, pose, r)
            e = r * max(ch - tread, 0.05) / dist
            eb = r * ch / dist
            th = np.linspace(0, np.pi, 14)
            side = np.concatenate([np.stack([-r * np.cos(th), eb - eb * np.sin(th)], 1),
                                   np.stack([r * np.cos(th), tread + e - e * np.sin(th)], 1)])
            parts = [Part(side, col * 0.8, L.VOID, inst, tex=0.2, tex_scale=60),
                     Part(ellipse(0.0, tread + e, r, max(e, 1e-3), 24), col * 1.3, L.VOID, inst, tex=0.2, tex_scale=60)]
            if p["rim"]:
                parts.append(Part(ellipse(0.0, tread + e, r * 0.55, max(e * 0.55, 1e-3), 20), sec, L.VOID, inst))
            else:
                parts.append(Part(ellipse(0.0, tread + e, r * 0.6, max(e * 0.6, 1e-3), 20), col, L.VOID, inst,
                                  kind="hole"))
        rs.sprite(anchor, parts)
    elif o.kind == "bag":
        anchor, dist, ch = _front_anchor(rs, pose, dep / 2)
        ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
        rad = 1.0 + 0.12 * p["bumps"]
        pts = np.stack([w / 2 * rad * np.cos(ang), h / 2 + h / 2 * rad * np.sin(ang)], 1)
        pts[:, 1] = np.maximum(pts[:, 1], 0.0)
        knot = np.array([(-0.06 * w, h * 0.9), (0.06 * w, h * 0.9), (0.1 * w, h * 1.12), (-0.1 * w, h * 1.12)])
        parts = [Part(pts, col, L.VOID, inst, tex=0.18, tex_scale=max(8.0, 12.0 / max(w, 0.1)), cyl=w / 2),
                 Part(knot, col * 0.8, L.VOID, inst)]
        rs.sprite(anchor, parts)
    else:  # polygon
        anchor, dist, ch = _front_anchor(rs, pose, dep / 2)
        a, rr = p["angles"], p["radii"]
        pts = np.stack([w / 2 * rr * np.cos(a), h / 2 + h / 2 * rr * np.sin(a)], 1)
        pts[:, 1] = np.maximum(pts[:, 1], 0.0)
        pts[np.argmin(pts[:, 1]), 1] = 0.0
        parts = [Part(pts, col, L.VOID, inst, tex=0.2 if p["pattern"] != "solid" else 0.05,
                      tex_scale=max(8.0, 10.0 / max(w, 0.1)))]
        for sx, sy, sz in p["spots"]:
            cx, cy = sx * w * 0.25, h / 2 + sy * h * 0.2
            # decal: a spot past the outline of a thin lump would float beside it as a separate
            # ground-truth component (one obstacle counted as several)
            parts.append(Part(ellipse(cx, cy, w * (0.08 + 0.05 * sz), h * (0.08 + 0.05 * sz), 8), sec, L.VOID, inst,
                              kind="decal"))
        rs.sprite(anchor, parts)


def _band(r, eb, y0, hb):
    """A horizontal band around a standing cylinder between heights y0 and y0 + hb."""
    th = np.linspace(0, np.pi, 12)
    lower = np.stack([-r * np.cos(th), y0 + eb - eb * np.sin(th)], 1)
    upper = np.stack([r * np.cos(th), y0 + hb + eb - eb * np.sin(th)], 1)
    return np.concatenate([lower, upper])
