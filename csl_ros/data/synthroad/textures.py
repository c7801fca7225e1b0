"""Procedural textures (uint8 RGB) for facades, vehicles, walls, fences and OOD obstacles.

Each texture is a function of an ``np.random.Generator`` and sizes in metres only, so a scene object
always gets the same texture. Textures are drawn with tiling in mind: the rasteriser samples them with
wrap-around, so a few metres of facade cover a whole building.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import cv2
import numpy as np

from .noise import tile


_CACHE: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_CACHE_SIZE = 1024


def cached(key: tuple, make):
    """Process-wide LRU cache of textures that are pure functions of ``key`` (kept read-only)."""
    t = _CACHE.get(key)
    if t is not None:
        _CACHE.move_to_end(key)
        return t
    t = make()
    t.setflags(write=False)
    _CACHE[key] = t
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return t


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def _grain(h: int, w: int, name: str, rng: np.random.Generator, step: float = 1.0) -> np.ndarray:
    """A (h, w) crop of a noise tile at a random offset, sampled every ``step`` texels."""
    t = tile(name)
    n = t.shape[0]
    if step == 1.0 and h <= n and w <= n:
        oy, ox = int(rng.integers(n - h + 1)), int(rng.integers(n - w + 1))
        return t[oy:oy + h, ox:ox + w]
    ys = (rng.integers(n) + (np.arange(h) * step).astype(np.int64)) % n
    xs = (rng.integers(n) + (np.arange(w) * step).astype(np.int64)) % n
    return t[ys[:, None], xs[None, :]]


@lru_cache(maxsize=512)
def facade(style: int, floors: int) -> tuple[np.ndarray, float]:
    """A building facade texture for facade ``style`` (0..NUM_FACADE_STYLES-1) and ``floors`` floors.

    Returns (texture, pixels per metre). The texture spans 4 window bays (it repeats along the
    facade) and the full height, top row = roof line. Cached: styles are shared by many buildings.
    """
    st = facade_style(style)
    ppm = FACADE_PPM
    height = floors * st["floor_h"] + st["parapet"]
    bay = st["bay"]
    h = max(8, int(round(height * ppm)))
    w = max(4, int(round(4 * bay * ppm)))
    rng = np.random.default_rng([style, floors, 7])
    wall = st["wall"]
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = wall
    tex *= (1.0 + 0.07 * _grain(h, w, "mid", rng) + 0.03 * _grain(h, w, "fine", rng))[..., None]
    tex[: max(1, int(0.35 * ppm))] *= 0.8            # cornice
    tex[h - max(1, int(0.3 * ppm)):] *= 0.75          # plinth
    img = _u8(tex)
    glass = st["glass"]
    frame = tuple(int(c) for c in _u8(st["frame"]))
    win_w, win_h, sill = st["win_w"], st["win_h"], st["sill"]
    first = 1 if st["shop"] else 0
    for f in range(first, floors):
        y_bot = height - (f * st["floor_h"] + sill)          # metres from the top
        y_top = y_bot - win_h
        for bx in range(4):
            x_l = bx * bay + (bay - win_w) / 2
            p0 = (int(round(x_l * ppm)), int(round(y_top * ppm)))
            p1 = (int(round((x_l + win_w) * ppm)) - 1, int(round(y_bot * ppm)) - 1)
            cv2.rectangle(img, p0, p1, frame, -1)
            g = glass * rng.uniform(0.55, 1.3)
            b = max(1, int(round(0.08 * ppm)))
            mid = (p0[1] + p1[1]) // 2
            cv2.rectangle(img, (p0[0] + b, p0[1] + b), (p1[0] - b, mid), tuple(int(c) for c in _u8(g * 1.15)), -1)
            cv2.rectangle(img, (p0[0] + b, mid), (p1[0] - b, p1[1] - b), tuple(int(c) for c in _u8(g * 0.85)), -1)
    if st["shop"]:
        y_top = height - st["floor_h"] * 0.8
        y_sign = height - st["floor_h"] * 0.95
        g = tuple(int(c) for c in _u8(glass * 0.75))
        for bx in range(4):
            x0 = bx * bay + 0.25
            cv2.rectangle(img, (int(x0 * ppm), int(y_top * ppm)), (int((bx + 1) * bay * ppm) - 1, int((height - 0.35) * ppm)),
                          g, -1)
        cv2.rectangle(img, (0, int(y_sign * ppm)), (w - 1, int(y_top * ppm)),
                      tuple(int(c) for c in _u8(st["sign"])), -1)
    img.setflags(write=False)
    return img, ppm


FACADE_PPM = 12.0
NUM_FACADE_STYLES = 96
_FACADE_COLORS = np.array([
    (0.78, 0.72, 0.6), (0.7, 0.68, 0.64), (0.55, 0.3, 0.22), (0.85, 0.83, 0.78), (0.6, 0.58, 0.55),
    (0.72, 0.6, 0.45), (0.45, 0.45, 0.47), (0.8, 0.75, 0.65), (0.62, 0.52, 0.42), (0.5, 0.55, 0.6),
])


@lru_cache(maxsize=None)
def facade_style(style: int) -> dict:
    """Parameters of a facade style (wall colour, window grid, shop front)."""
    rng = np.random.default_rng([style, 8])
    bay = rng.uniform(2.4, 3.6)
    floor_h = rng.uniform(3.0, 3.5)
    return {
        "wall": np.clip(_FACADE_COLORS[rng.integers(len(_FACADE_COLORS))] * rng.uniform(0.92, 1.08, 3), 0, 1),
        "glass": np.clip(np.array((0.2, 0.27, 0.33)) * rng.uniform(0.85, 1.15, 3), 0, 1),
        "frame": np.clip(np.array((0.85, 0.85, 0.82)) * rng.uniform(0.9, 1.05), 0, 1),
        "bay": bay, "floor_h": floor_h, "parapet": rng.uniform(0.3, 1.5),
        "win_w": bay * rng.uniform(0.4, 0.65), "win_h": floor_h * rng.uniform(0.45, 0.6),
        "sill": floor_h * rng.uniform(0.22, 0.32), "shop": bool(rng.random() < 0.4),
        "sign": rng.uniform(0.2, 0.9, 3),
    }


def concrete(rng: np.random.Generator, width: float, height: float, ppm: float, base: np.ndarray,
             panel: float) -> np.ndarray:
    """Concrete/brick-ish wall: mottled base colour with panel seams every ``panel`` m."""
    h = max(4, int(round(height * ppm)))
    w = max(4, int(round(width * ppm)))
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = base
    tex *= (1.0 + 0.08 * _grain(h, w, "mid", rng) + 0.05 * _grain(h, w, "fine", rng))[..., None]
    seam = (np.mod(np.arange(w) / ppm, panel) < 0.05)
    tex[:, seam] *= 0.7
    tex[: max(1, int(0.1 * ppm))] *= 0.85   # coping at the top
    return _u8(tex)


def fence(rng: np.random.Generator, height: float, ppm: float, bar: np.ndarray, gap: np.ndarray,
          spacing: float) -> np.ndarray:
    """Metal/wooden fence: vertical bars with top and bottom rails over a darker see-through colour."""
    h = max(8, int(round(height * ppm)))
    w = max(4, int(round(spacing * 4 * ppm)))
    xs = np.arange(w) / ppm
    ys = np.arange(h) / ppm
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = gap
    tex *= (1.0 + 0.25 * _grain(h, w, "mid", rng))[..., None]
    bars = np.mod(xs, spacing) < spacing * rng.uniform(0.25, 0.5)
    tex[:, bars] = bar
    rails = (np.abs(ys - 0.12 * height) < 0.05) | (np.abs(ys - 0.85 * height) < 0.05)
    tex[rails] = bar * 0.9
    return _u8(tex)


def foliage(rng: np.random.Generator, width: float, height: float, ppm: float,
            base: np.ndarray) -> np.ndarray:
    """Hedge / bush surface: green with leafy light-dark structure."""
    h = max(4, int(round(height * ppm)))
    w = max(4, int(round(width * ppm)))
    m = 0.28 * _grain(h, w, "mid", rng, 1.5) + 0.12 * _grain(h, w, "fine", rng)
    tex = base[None, None, :] * (1.0 + m)[..., None]
    return _u8(tex)


def _painted_face(width: float, height: float, ppm: float, paint: np.ndarray,
                  min_px: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A vehicle face (``width`` x ``height`` m at ``ppm`` pixels per metre, at least ``min_px`` = (rows,
    columns)) filled with its paint, with each row's height above the ground and each column's position
    (m): the canvas the body painters draw on."""
    h = max(min_px[0], int(round(height * ppm)))
    w = max(min_px[1], int(round(width * ppm)))
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = paint
    return tex, height - (np.arange(h) + 0.5) / ppm, (np.arange(w) + 0.5) / ppm


def car_side(length: float, height: float, ppm: float, paint: np.ndarray, clearance: float,
             wheel_r: float, axle: float) -> np.ndarray:
    """Side of a car body from y = 0 (ground) to ``height``: paint, sills, two wheels."""
    tex, up, _ = _painted_face(length, height, ppm, paint, min_px=(6, 8))
    tex[up < clearance + 0.12] *= 0.55                 # dark sill / underbody
    tex[up < clearance] = (0.05, 0.05, 0.055)
    tex[(up > height - 0.06)] *= 1.15                  # highlight along the shoulder line
    img = _u8(tex)
    for cxm in (length / 2 - axle, length / 2 + axle):
        c = (int(round(cxm * ppm)), int(round((height - wheel_r) * ppm)))
        cv2.circle(img, c, int(round((wheel_r + 0.06) * ppm)), tuple(int(x) for x in _u8(paint * 0.35)), -1)
        cv2.circle(img, c, int(round(wheel_r * ppm)), (18, 18, 20), -1)
        cv2.circle(img, c, int(round(wheel_r * 0.55 * ppm)), (120, 122, 128), -1)
        cv2.circle(img, c, max(1, int(round(wheel_r * 0.2 * ppm))), (60, 60, 64), -1)
    # door seams
    for xm in (length * 0.42, length * 0.62):
        cv2.line(img, (int(xm * ppm), int(0.1 * ppm)), (int(xm * ppm), int((height - clearance - 0.1) * ppm)),
                 tuple(int(x) for x in _u8(paint * 0.6)), 1)
    return img


def car_end(width: float, height: float, ppm: float, paint: np.ndarray, clearance: float,
            rear: bool) -> np.ndarray:
    """Front or back of a car body: paint, lamps, number plate, bumper and underbody."""
    tex, up, xs = _painted_face(width, height, ppm, paint, min_px=(6, 6))
    tex[(up > clearance) & (up < clearance + 0.18)] *= 0.5       # bumper
    tex[up < clearance] = (0.05, 0.05, 0.055)
    lamp_y = (up > height - 0.3) & (up < height - 0.1)
    lamp_x = (xs < 0.32) | (xs > width - 0.32)
    tex[np.ix_(lamp_y, lamp_x)] = (0.85, 0.08, 0.06) if rear else (0.95, 0.95, 0.88)
    plate_y = (up > clearance + 0.2) & (up < clearance + 0.32)
    plate_x = np.abs(xs - width / 2) < 0.26
    tex[np.ix_(plate_y, plate_x)] = (0.92, 0.92, 0.9)
    if not rear:
        grille_y = (up > clearance + 0.2) & (up < height - 0.12)
        grille_x = np.abs(xs - width / 2) < width * 0.25
        tex[np.ix_(grille_y, grille_x)] *= 0.35
    return _u8(tex)


def glass_band(length: float, height: float, ppm: float, paint: np.ndarray, glass: np.ndarray,
               pillars: tuple[float, ...]) -> np.ndarray:
    """Side windows of a cabin: glass with a sky-reflection gradient, body-coloured pillars (x in m)."""
    h = max(4, int(round(height * ppm)))
    w = max(6, int(round(length * ppm)))
    ys = (np.arange(h) + 0.5) / h
    tex = glass[None, None, :] * (1.15 - 0.45 * ys)[:, None, None] * np.ones((1, w, 1), np.float32)
    xs = (np.arange(w) + 0.5) / ppm
    for px in pillars:
        tex[:, np.abs(xs - px) < 0.06] = paint
    tex[: max(1, int(0.05 * ppm))] = paint
    tex[-max(1, int(0.05 * ppm)):] = paint * 0.8
    return _u8(tex)


def bus_side(length: float, height: float, ppm: float, paint: np.ndarray, glass: np.ndarray,
             clearance: float, wheel_r: float, axles: tuple[float, ...], stripe: np.ndarray) -> np.ndarray:
    """Side of a bus: window band, doors, a livery stripe and wheels."""
    tex, up, xs = _painted_face(length, height, ppm, paint, min_px=(8, 8))
    band = (up > 1.2) & (up < height - 0.35)
    tex[band] = (glass[None, :] * (1.1 - 0.3 * ((up[band] - 1.2) / (height - 1.55)))[:, None])[:, None, :]
    posts = np.mod(xs, 1.6) < 0.12
    tex[np.ix_(band, posts)] = paint
    tex[(up > 0.85) & (up < 1.05)] = stripe
    tex[up < clearance + 0.1] *= 0.5
    tex[up < clearance] = (0.05, 0.05, 0.055)
    for d0 in (length * 0.2, length * 0.6):
        door = (xs > d0) & (xs < d0 + 1.2)
        tex[np.ix_((up > clearance) & (up < height - 0.4), door)] = glass * 0.7
    img = _u8(tex)
    for ax in axles:
        c = (int(round(ax * ppm)), int(round((height - wheel_r) * ppm)))
        cv2.circle(img, c, int(round(wheel_r * ppm)), (18, 18, 20), -1)
        cv2.circle(img, c, int(round(wheel_r * 0.5 * ppm)), (110, 110, 115), -1)
    return img


# -- OOD obstacle surfaces --------------------------------------------------------------------
PATTERNS = ("solid", "noise", "stripes", "checker", "dots", "grain", "print")


def obstacle_surface(rng: np.random.Generator, base: np.ndarray, second: np.ndarray, pattern: str,
                     size: int = 64) -> np.ndarray:
    """A random surface for an OOD obstacle: one of ``PATTERNS`` in two colours."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tex = np.empty((size, size, 3), np.float32)
    tex[:] = base
    if pattern == "noise":
        tex *= (1.0 + 0.35 * _grain(size, size, "mid", rng, 0.8))[..., None]
    elif pattern == "stripes":
        f = rng.integers(2, 7)
        ang = rng.uniform(0, np.pi)
        m = np.sin(2 * np.pi * f * (xs * np.cos(ang) + ys * np.sin(ang))) > 0
        tex[m] = second
    elif pattern == "checker":
        f = int(rng.integers(2, 6))
        m = ((np.floor(xs * f) + np.floor(ys * f)) % 2) > 0
        tex[m] = second
    elif pattern == "dots":
        f = rng.integers(3, 7)
        m = (np.mod(xs * f, 1) - 0.5) ** 2 + (np.mod(ys * f, 1) - 0.5) ** 2 < 0.08
        tex[m] = second
    elif pattern == "grain":     # wood / cardboard fibres
        tex *= (1.0 + 0.18 * np.sin(ys[..., None] * 60 + 3 * _grain(size, size, "mid", rng)[..., None]))
    elif pattern == "print":     # printed label block
        tex[int(size * 0.3):int(size * 0.62), int(size * 0.2):int(size * 0.8)] = second
    tex *= (1.0 + 0.05 * _grain(size, size, "fine", rng))[..., None]
    return _u8(tex)
