"""A procedural road world: road geometry along an arc-length coordinate plus the objects beside it.

Road coordinates: ``s`` (metres along the road, = world Z) and ``d`` (metres right of the centre
line, = world X - c(s)). The centre line c(s) is a sum of two gentle sinusoids, so the road curves
with radii of a few hundred metres; all per-``s`` quantities (centre, half width, sidewalk widths,
curbs, crossings) are tabulated every 0.5 m so the per-pixel ground shader only gathers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import labels as L
from .textures import NUM_FACADE_STYLES, facade_style

DS = 0.5                     # table resolution along the road (m)
LEFT, RIGHT = 0, 1

TIMES_OF_DAY = ("noon", "afternoon", "overcast", "dusk")


@dataclass
class Light:
    """Illumination and atmosphere of a scene (colours are linear-ish RGB in 0..1)."""

    name: str
    sun: np.ndarray            # unit vector towards the sun (world)
    ambient: np.ndarray        # RGB
    diffuse: np.ndarray        # RGB (sun colour x strength)
    shadow: float              # darkening of cast shadows on the ground, 0..1
    shadow_blur: int           # softness of shadows (pixels at 1024 width)
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    haze: np.ndarray
    fog_m: float               # distance of 63 % haze
    clouds: float              # cloud cover 0..1
    cloud_color: np.ndarray

    def shade(self, normal: np.ndarray) -> np.ndarray:
        """RGB light factor for a surface with the given world normal (Lambert + ambient)."""
        return self.ambient + self.diffuse * max(0.0, float(normal @ self.sun))

    @property
    def ground(self) -> np.ndarray:
        return self.ambient + self.diffuse * max(0.0, float(self.sun[1]))

    @property
    def vertical(self) -> np.ndarray:
        """Average light on a camera-facing vertical surface (sprites)."""
        return self.ambient + self.diffuse * 0.45 * math.cos(math.asin(min(1.0, float(self.sun[1]))))


@dataclass
class Obj:
    """One scene object. ``s``, ``d``: road coordinates of its ground centre; ``yaw``: heading
    relative to the road tangent (rad); ``speed``: m/s along the road (moving vehicles)."""

    uid: int
    kind: str
    s: float
    d: float
    label: int
    radius: float
    height: float
    yaw: float = 0.0
    speed: float = 0.0
    moving: bool = False
    linear: bool = False          # long structure along the road (building, wall, fence, hedge)
    s_end: float = 0.0            # for linear objects: end of the span
    p: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    @property
    def inst(self) -> int:
        return self.uid if self.label in L.THING_TRAIN_IDS or self.label == L.VOID else 0


def _color(rng, base, jitter=0.06):
    b = np.asarray(base, np.float64) * rng.uniform(1 - jitter, 1 + jitter, 3)
    return np.minimum(np.maximum(b, 0.0), 1.0)


def _pick(rng, options, probs=None):
    i = rng.choice(len(options), p=probs)
    return options[i]


CAR_PAINTS = np.array([
    (0.85, 0.86, 0.87), (0.08, 0.08, 0.09), (0.45, 0.46, 0.48), (0.65, 0.66, 0.68), (0.12, 0.18, 0.38),
    (0.55, 0.07, 0.06), (0.9, 0.9, 0.88), (0.2, 0.25, 0.22), (0.28, 0.2, 0.14), (0.75, 0.6, 0.15),
    (0.15, 0.3, 0.55), (0.35, 0.36, 0.4),
])
SHIRTS = np.array([
    (0.1, 0.1, 0.12), (0.8, 0.8, 0.82), (0.15, 0.25, 0.5), (0.55, 0.1, 0.1), (0.2, 0.4, 0.25),
    (0.6, 0.55, 0.4), (0.45, 0.45, 0.5), (0.75, 0.5, 0.2), (0.35, 0.2, 0.4), (0.85, 0.75, 0.3),
])
PANTS = np.array([(0.08, 0.08, 0.1), (0.12, 0.15, 0.3), (0.3, 0.3, 0.32), (0.45, 0.4, 0.3),
                  (0.2, 0.22, 0.25)])
WHITE_PAINT = (0.82, 0.82, 0.8)     # lane markings and zebra crossings
YELLOW_PAINT = (0.85, 0.68, 0.15)   # rarer (7 % of the worlds): construction zones, some countries
SKINS = np.array([(0.85, 0.65, 0.52), (0.7, 0.5, 0.38), (0.45, 0.3, 0.22), (0.9, 0.75, 0.62)])


class World:
    """Everything static about one generated road: geometry tables, materials, light, objects."""

    def __init__(self, seed: int, s_range: tuple[float, float] = (-40.0, 420.0),
                 ego_speed: float = 0.0, horizon_s: float = 700.0):
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        self.s_lo, self.s_hi = s_range
        self.s0 = self.s_lo - 20.0
        self.n = int(math.ceil((self.s_hi + horizon_s - self.s0) / DS)) + 2
        s = self.s0 + DS * np.arange(self.n)
        self._next_uid = 1
        self.objects: list[Obj] = []
        self.tex_cache: dict = {}

        # -- road geometry ------------------------------------------------------------------
        self.style = _pick(rng, ("city", "suburb", "rural"), [0.45, 0.35, 0.2])
        kind = _pick(rng, ("two_lane", "four_lane", "one_way", "residential"), [0.45, 0.2, 0.15, 0.2])
        if self.style == "rural" and kind == "residential":
            kind = "two_lane"
        self.road_kind = kind
        self.n_lanes = 4 if kind == "four_lane" else 2
        self.two_way = kind != "one_way"
        lane_w = rng.uniform(2.6, 3.0) if kind == "residential" else rng.uniform(2.9, 3.6)
        self.hw0 = self.n_lanes * lane_w / 2
        amp1 = rng.uniform(0, 12) if rng.random() < 0.75 else 0.0
        amp2 = rng.uniform(0, 4)
        l1, l2 = rng.uniform(300, 700), rng.uniform(120, 260)
        ph1, ph2 = rng.uniform(0, 2 * np.pi, 2)
        self.curve = (amp1, l1, ph1, amp2, l2, ph2)
        self.c_tab = (amp1 * np.sin(2 * np.pi * s / l1 + ph1) + amp2 * np.sin(2 * np.pi * s / l2 + ph2)).astype(np.float32)
        wamp = rng.uniform(0, 0.07)
        wave = np.sin(2 * np.pi * s / rng.uniform(80, 250) + rng.uniform(0, 6.3))
        self.hw_tab = (self.hw0 * (1 + wamp * wave)).astype(np.float32)

        # -- markings -----------------------------------------------------------------------
        self.markings = kind != "residential"
        self.center_style = _pick(rng, ("dashed", "solid", "double"), [0.5, 0.3, 0.2]) if self.two_way else "dashed"
        self.edge_lines = self.markings and rng.random() < (0.8 if self.style == "rural" else 0.45)
        self.dash_len, self.dash_period = ((3.0, 9.0) if rng.random() < 0.6 else (6.0, 18.0))
        self.line_w = rng.uniform(0.1, 0.16)
        self.mark_color = np.array(WHITE_PAINT) if rng.random() < 0.93 else np.array(YELLOW_PAINT)
        self.mark_wear = rng.uniform(0.0, 0.5)
        self.zebra_tab = np.zeros(self.n, bool)

        # -- materials ----------------------------------------------------------------------
        g = rng.uniform(0.26, 0.44)
        self.asphalt = np.clip(g * np.array([1.0, 1.0, 1.03]) * rng.uniform(0.97, 1.03, 3), 0, 1)
        self.asphalt_grain = rng.uniform(0.05, 0.12)
        self.asphalt_patches = rng.uniform(0.03, 0.12)
        sw_base = _pick(rng, [(0.6, 0.6, 0.6), (0.55, 0.53, 0.5), (0.62, 0.52, 0.47), (0.5, 0.5, 0.52)])
        self.sidewalk = _color(rng, sw_base, 0.05)
        self.curb_color = _color(rng, (0.68, 0.68, 0.66), 0.04)
        self.paver = rng.uniform(0.25, 0.5)
        self.paver_size = rng.uniform(0.25, 0.5)
        self.terrain = _color(rng, _pick(rng, [(0.22, 0.36, 0.1), (0.3, 0.4, 0.14), (0.4, 0.38, 0.22)],
                                         [0.5, 0.3, 0.2]), 0.08)

        # -- light ------------------------------------------------------------------------------
        self.light = self._make_light(rng)

        # -- sides and objects ----------------------------------------------------------------
        self.sw_tab = np.zeros((2, self.n), np.float32)     # sidewalk width beyond the curb
        self.curb_tab = np.zeros((2, self.n), np.float32)
        self.free_tab = np.zeros((2, self.n), np.float32)   # open ground reaches this |d| - hw
        for side in (LEFT, RIGHT):
            self._make_side(rng, side)
        self._make_crossings(rng)
        self._make_traffic(rng, ego_speed)
        self.backdrop = self._make_backdrop(rng)

    # ------------------------------------------------------------------------------------------
    def uid(self) -> int:
        u = self._next_uid
        self._next_uid += 1
        return u

    def idx(self, s) -> int:
        """Table index of arc length s (scalar)."""
        return min(max(int((s - self.s0) / DS), 0), self.n - 1)

    def center(self, s: float) -> float:
        """Centre-line X at arc length s (exact; the ground shader interpolates ``c_tab``)."""
        a1, l1, p1, a2, l2, p2 = self.curve
        return a1 * math.sin(2 * math.pi * s / l1 + p1) + a2 * math.sin(2 * math.pi * s / l2 + p2)

    def slope(self, s: float) -> float:
        a1, l1, p1, a2, l2, p2 = self.curve
        return (a1 * 2 * math.pi / l1 * math.cos(2 * math.pi * s / l1 + p1)
                + a2 * 2 * math.pi / l2 * math.cos(2 * math.pi * s / l2 + p2))

    def heading(self, s: float) -> float:
        return math.atan(self.slope(s))

    def hw(self, s: float) -> float:
        return float(self.hw_tab[self.idx(s)])

    def world_point(self, s: float, d: float, y: float = 0.0) -> np.ndarray:
        return np.array([self.center(s) + d, y, s])

    def lane_centers(self, side=RIGHT, s=0.0) -> list[float]:
        hw = self.hw(s)
        lw = 2 * hw / self.n_lanes
        cs = [-hw + (k + 0.5) * lw for k in range(self.n_lanes)]
        if self.two_way:
            cs = [c for c in cs if (c > 0) == (side == RIGHT)]
        return cs

    def edge(self, side: int, s: float) -> float:
        """|d| of the outer edge of the sidewalk (hw + curb + sidewalk) at s."""
        i = self.idx(s)
        return float(self.hw_tab[i]) + float(self.curb_tab[side, i]) + float(self.sw_tab[side, i])

    def add(self, **kw) -> Obj:
        o = Obj(uid=self.uid(), **kw)
        self.objects.append(o)
        return o

    # ------------------------------------------------------------------------------------------
    def _make_light(self, rng) -> Light:
        name = _pick(rng, TIMES_OF_DAY, [0.35, 0.3, 0.25, 0.1])
        az = rng.uniform(-np.pi, np.pi)
        if name == "noon":
            el = rng.uniform(40, 65)
            amb, dif = np.array((0.5, 0.53, 0.58)), np.array((0.78, 0.76, 0.7))
            top, hor = np.array((0.22, 0.42, 0.8)), np.array((0.68, 0.78, 0.9))
            haze, shadow, clouds = np.array((0.72, 0.78, 0.86)), 0.55, rng.uniform(0, 0.5)
        elif name == "afternoon":
            el = rng.uniform(18, 40)
            amb, dif = np.array((0.48, 0.5, 0.56)), np.array((0.8, 0.74, 0.62))
            top, hor = np.array((0.25, 0.45, 0.78)), np.array((0.75, 0.8, 0.85))
            haze, shadow, clouds = np.array((0.75, 0.78, 0.82)), 0.55, rng.uniform(0, 0.6)
        elif name == "overcast":
            el = rng.uniform(30, 60)
            amb, dif = np.array((0.82, 0.84, 0.88)), np.array((0.18, 0.18, 0.18))
            top, hor = np.array((0.6, 0.63, 0.68)), np.array((0.8, 0.81, 0.83))
            haze, shadow, clouds = np.array((0.78, 0.79, 0.81)), 0.15, rng.uniform(0.7, 1.0)
        else:  # dusk
            el = rng.uniform(4, 14)
            amb, dif = np.array((0.38, 0.38, 0.48)), np.array((0.9, 0.6, 0.38))
            top, hor = np.array((0.2, 0.26, 0.5)), np.array((0.95, 0.62, 0.4))
            haze, shadow, clouds = np.array((0.8, 0.62, 0.5)), 0.5, rng.uniform(0.1, 0.6)
        el = math.radians(el)
        sun = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        return Light(name=name, sun=sun, ambient=amb, diffuse=dif, shadow=shadow,
                     shadow_blur=9 if name == "overcast" else 2, sky_top=top, sky_horizon=hor,
                     haze=haze, fog_m=rng.uniform(350, 1400), clouds=float(clouds),
                     cloud_color=np.clip(hor * 1.15 + 0.1, 0, 1) if name != "dusk" else np.array((0.95, 0.7, 0.6)))

    # ------------------------------------------------------------------------------------------
    def _segments(self, rng):
        probs = {"city": [0.75, 0.1, 0.15], "suburb": [0.4, 0.35, 0.25], "rural": [0.0, 0.8, 0.2]}[self.style]
        s = self.s_lo - 10
        while s < self.s_hi + 60:
            length = rng.uniform(40, 150)
            yield s, min(s + length, self.s_hi + 80), _pick(rng, ("urban", "green", "wall"), probs)
            s += length

    def _make_side(self, rng, side: int) -> None:
        sgn = 1.0 if side == RIGHT else -1.0
        for s_a, s_b, kind in self._segments(rng):
            ia, ib = self.idx(s_a), self.idx(s_b) + 1
            if kind == "urban":
                sw = rng.uniform(2.0, 4.5)
                curb = rng.uniform(0.15, 0.25)
            elif kind == "green":
                sw = rng.uniform(1.2, 2.5) if (self.style != "rural" and rng.random() < 0.7) else 0.0
                curb = rng.uniform(0.15, 0.25) if (sw > 0 or rng.random() < 0.3) else 0.0
            else:
                sw = rng.uniform(1.5, 3.0)
                curb = rng.uniform(0.15, 0.25)
            self.sw_tab[side, ia:ib] = sw
            self.curb_tab[side, ia:ib] = curb
            self.free_tab[side, ia:ib] = curb + sw + (rng.uniform(3, 8) if kind == "green" else 0.0)
            self._fill_segment(rng, side, sgn, s_a, s_b, kind, sw, curb)

    def _fill_segment(self, rng, side, sgn, s_a, s_b, kind, sw, curb):
        def out(s, extra=0.0):
            """|d| just beyond the sidewalk at s."""
            return self.edge(side, s) + extra

        # Street lamps near the curb.
        if kind != "green" or rng.random() < 0.5:
            gap = rng.uniform(22, 40)
            s = s_a + rng.uniform(0, gap)
            while s < s_b:
                d = sgn * (self.hw(s) + curb + rng.uniform(0.3, 0.6))
                self.add(kind="lamp", s=s, d=d, label=L.POLE, radius=1.5, height=rng.uniform(6, 9),
                         p={"side": sgn, "w": rng.uniform(0.12, 0.2), "arm": rng.uniform(0.8, 2.0),
                            "color": _color(rng, _pick(rng, [(0.45, 0.47, 0.5), (0.3, 0.32, 0.3), (0.6, 0.6, 0.6)]))})
                s += gap * rng.uniform(0.85, 1.15)
        # Traffic signs.
        s = s_a + rng.uniform(5, 40)
        while s < s_b:
            d = sgn * (self.hw(s) + curb + rng.uniform(0.3, 1.0))
            self.add(kind="sign", s=s, d=d, label=L.TRAFFIC_SIGN, radius=0.5, height=rng.uniform(2.2, 3.0),
                     p={"shape": _pick(rng, ("circle", "triangle", "rect", "octagon", "diamond")),
                        "size": rng.uniform(0.5, 0.8), "facing": sgn > 0 or not self.two_way,
                        "scheme": int(rng.integers(3)), "double": rng.random() < 0.25})
            s += rng.uniform(30, 90)
        if kind == "urban":
            setback = rng.uniform(0.0, 1.5) if rng.random() < 0.5 else 0.0
            s = s_a
            while s < s_b:
                length = rng.uniform(8, 30)
                e = min(s + length, s_b)
                if e - s > 4:
                    self._add_building(rng, side, s, e, setback, int(rng.integers(2, 8)))
                s = e + (rng.uniform(2, 8) if rng.random() < 0.3 else 0.0)
            # Pedestrians and parked bicycles on the sidewalk; sidewalk trees.
            n_ped = rng.poisson((s_b - s_a) / 14)
            for _ in range(n_ped):
                s = rng.uniform(s_a, s_b)
                self._add_person(rng, s, sgn * (self.hw(s) + curb + rng.uniform(0.5, max(0.6, sw - 0.4))))
            for _ in range(rng.poisson((s_b - s_a) / 60)):
                s = rng.uniform(s_a, s_b)
                self._add_bicycle(rng, s, sgn * (self.hw(s) + curb + rng.uniform(0.4, 1.0)), parked=True)
            if rng.random() < 0.35:
                s = s_a + rng.uniform(3, 10)
                step = rng.uniform(9, 15)
                while s < s_b:
                    self._add_tree(rng, s, sgn * (self.hw(s) + curb + rng.uniform(0.8, 1.3)), small=True)
                    s += step
        elif kind == "green":
            s = s_a + rng.uniform(0, 8)
            while s < s_b:
                d = sgn * (out(s) + rng.uniform(1.0, 12.0))
                if rng.random() < 0.75:
                    self._add_tree(rng, s, d)
                else:
                    self._add_bush(rng, s, d)
                s += rng.uniform(5, 15)
            if rng.random() < 0.35:   # houses set back behind the trees
                s = s_a
                while s < s_b:
                    length = rng.uniform(8, 16)
                    self._add_building(rng, side, s, min(s + length, s_b), rng.uniform(14, 30), int(rng.integers(1, 3)))
                    s += length + rng.uniform(6, 20)
            if rng.random() < 0.3:
                off = rng.uniform(0.3, 2.0)
                self._add_linear(rng, "hedge", L.VEGETATION, side, s_a, s_b, off, rng.uniform(0.8, 1.8),
                                 {"depth": rng.uniform(0.6, 1.2), "color": _color(rng, (0.16, 0.3, 0.1), 0.1)})
                self.free_tab[side, self.idx(s_a):self.idx(s_b) + 1] = curb + sw + off - 0.2
        else:  # wall or fence
            is_wall = rng.random() < 0.5
            h = rng.uniform(0.8, 2.4) if is_wall else rng.uniform(1.0, 2.2)
            color = _color(rng, _pick(rng, [(0.62, 0.6, 0.56), (0.55, 0.5, 0.45), (0.7, 0.68, 0.62), (0.5, 0.35, 0.28)]) if is_wall
                           else _pick(rng, [(0.35, 0.37, 0.38), (0.5, 0.38, 0.25), (0.2, 0.32, 0.22)]))
            self._add_linear(rng, "wall" if is_wall else "fence", L.WALL if is_wall else L.FENCE, side, s_a, s_b,
                             0.0, h, {"depth": 0.25 if is_wall else 0.05, "color": color,
                                      "panel": rng.uniform(1.5, 3.5), "spacing": rng.uniform(0.12, 0.3)})
            s = s_a + rng.uniform(0, 6)
            while s < s_b:
                self._add_tree(rng, s, sgn * (out(s) + rng.uniform(1.5, 8.0)))
                s += rng.uniform(5, 14)
            for _ in range(rng.poisson((s_b - s_a) / 30)):
                s = rng.uniform(s_a, s_b)
                self._add_person(rng, s, sgn * (self.hw(s) + curb + rng.uniform(0.5, max(0.6, sw - 0.4))))

    def _add_building(self, rng, side, s_a, s_b, off, floors):
        sgn = 1.0 if side == RIGHT else -1.0
        style = int(rng.integers(NUM_FACADE_STYLES))
        st = facade_style(style)
        self.add(kind="building", s=s_a, s_end=s_b, d=sgn * (self.edge(side, s_a) + off), label=L.BUILDING,
                 radius=0.0, height=floors * st["floor_h"] + st["parapet"], linear=True,
                 p={"side": sgn, "off": off, "depth": rng.uniform(8, 16), "style": style, "floors": floors})

    def _add_linear(self, rng, kind, label, side, s_a, s_b, off, height, p):
        """A long structure beside the road, cut into <= 10 m pieces that follow the curve."""
        sgn = 1.0 if side == RIGHT else -1.0
        n = max(1, int(math.ceil((s_b - s_a) / 10.0)))
        edges = np.linspace(s_a, s_b, n + 1)
        tex_seed = int(rng.integers(1 << 30))
        for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            self.add(kind=kind, s=float(a), s_end=float(b), d=sgn * (self.edge(side, a) + off), label=label,
                     radius=0.0, height=height, linear=True,
                     p=dict(p, side=sgn, off=off, tex_seed=tex_seed, ends=(k == 0, k == n - 1)))

    # ------------------------------------------------------------------------------------------
    def _add_tree(self, rng, s, d, small=False):
        conifer = (not small) and rng.random() < 0.2
        h = rng.uniform(4, 8) if small else rng.uniform(5, 14)
        crown = rng.uniform(1.2, 2.2) if small else rng.uniform(1.8, 4.0)
        green = _color(rng, _pick(rng, [(0.16, 0.3, 0.08), (0.22, 0.36, 0.1), (0.12, 0.24, 0.1), (0.28, 0.36, 0.12)]), 0.12)
        blobs = rng.uniform(-1, 1, size=(int(rng.integers(4, 8)), 3))
        self.add(kind="tree", s=s, d=d, label=L.VEGETATION, radius=crown, height=h,
                 p={"crown": crown, "trunk_w": rng.uniform(0.15, 0.35), "green": green, "blobs": blobs,
                    "conifer": conifer, "trunk": _color(rng, (0.3, 0.25, 0.2), 0.15),
                    "trunk_h": h - 2 * crown * (0.9 if not conifer else 1.2)})

    def _add_bush(self, rng, s, d):
        w = rng.uniform(0.8, 3.0)
        self.add(kind="bush", s=s, d=d, label=L.VEGETATION, radius=w / 2, height=rng.uniform(0.5, 1.6),
                 p={"w": w, "green": _color(rng, (0.18, 0.32, 0.1), 0.15),
                    "blobs": rng.uniform(-1, 1, size=(int(rng.integers(3, 6)), 3))})

    def _add_person(self, rng, s, d, speed=0.0):
        self.add(kind="person", s=s, d=d, label=L.PERSON, radius=0.35, height=rng.uniform(1.5, 1.92),
                 speed=speed, moving=speed != 0.0,
                 p={"shirt": _color(rng, SHIRTS[rng.integers(len(SHIRTS))]), "pants": _color(rng, PANTS[rng.integers(len(PANTS))]),
                    "skin": _color(rng, SKINS[rng.integers(len(SKINS))], 0.03),
                    "hair": _color(rng, _pick(rng, [(0.08, 0.06, 0.05), (0.3, 0.2, 0.1), (0.6, 0.5, 0.3), (0.5, 0.5, 0.5)])),
                    "stride": rng.uniform(0.0, 0.35), "bag": rng.random() < 0.25,
                    "bag_color": _color(rng, SHIRTS[rng.integers(len(SHIRTS))]), "build": rng.uniform(0.9, 1.15)})

    def _add_bicycle(self, rng, s, d, parked=False, speed=0.0):
        frame = _color(rng, _pick(rng, [(0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.15, 0.3, 0.6), (0.8, 0.8, 0.8), (0.2, 0.45, 0.25)]))
        moto = (not parked) and rng.random() < 0.25
        bike = self.add(kind="motorcycle" if moto else "bicycle", s=s, d=d,
                        label=L.MOTORCYCLE if moto else L.BICYCLE, radius=1.0, height=1.1,
                        yaw=0.0 if not parked else rng.choice([-1, 1]) * rng.uniform(0, 0.6) + (np.pi if rng.random() < 0.5 else 0),
                        speed=speed, moving=speed != 0.0, p={"frame": frame, "moto": moto})
        if not parked:
            rider = self.add(kind="rider", s=s, d=d, label=L.RIDER, radius=0.5, height=1.75, speed=speed,
                             moving=speed != 0.0,
                             p={"shirt": _color(rng, SHIRTS[rng.integers(len(SHIRTS))]),
                                "pants": _color(rng, PANTS[rng.integers(len(PANTS))]),
                                "skin": _color(rng, SKINS[rng.integers(len(SKINS))], 0.03),
                                "helmet": _color(rng, _pick(rng, [(0.9, 0.9, 0.9), (0.1, 0.1, 0.1), (0.8, 0.2, 0.1), (0.2, 0.3, 0.7)])),
                                "moto": moto, "bike": bike.uid})
            bike.p["rider"] = rider.uid
        return bike

    def _add_vehicle(self, rng, s, d, yaw, speed, parked):
        r = rng.random()
        if r < 0.08 and not parked:
            kind, label = "bus", L.BUS
            dims = (rng.uniform(10, 12.5), 2.55, rng.uniform(3.0, 3.3))
        elif r < 0.16:
            kind, label = "truck", L.TRUCK
            dims = (rng.uniform(6, 9), 2.45, rng.uniform(2.9, 3.7))
        else:
            kind, label = "car", L.CAR
            body = _pick(rng, ("sedan", "hatch", "suv", "van"), [0.45, 0.3, 0.17, 0.08])
            if body == "suv":
                dims = (rng.uniform(4.4, 4.9), rng.uniform(1.8, 1.95), rng.uniform(1.6, 1.8))
            elif body == "van":
                dims = (rng.uniform(4.8, 5.4), rng.uniform(1.9, 2.05), rng.uniform(1.9, 2.3))
            elif body == "hatch":
                dims = (rng.uniform(3.7, 4.3), rng.uniform(1.68, 1.8), rng.uniform(1.42, 1.52))
            else:
                dims = (rng.uniform(4.3, 4.9), rng.uniform(1.75, 1.88), rng.uniform(1.38, 1.48))
        # Quantised sizes and a discrete paint/glass palette, so vehicle textures are shared.
        dims = tuple(round(float(x) * 10) / 10 for x in dims)
        paint = CAR_PAINTS[rng.integers(len(CAR_PAINTS))] * (0.9, 1.0, 1.08)[rng.integers(3)]
        glass = np.array((0.16, 0.2, 0.25)) * (0.8, 1.0, 1.2)[rng.integers(3)]
        p = {"L": dims[0], "W": dims[1], "H": dims[2], "paint": np.clip(paint, 0, 1), "glass": glass,
             "tex_seed": int(rng.integers(1 << 30))}
        if kind == "car":
            p["body"] = body
        if kind == "bus":
            p["stripe"] = _color(rng, _pick(rng, [(0.8, 0.1, 0.1), (0.1, 0.3, 0.7), (0.9, 0.7, 0.1), (0.2, 0.2, 0.2)]))
            p["paint"] = _color(rng, _pick(rng, [(0.9, 0.9, 0.88), (0.9, 0.75, 0.15), (0.75, 0.12, 0.1), (0.2, 0.4, 0.7)]))
        if kind == "truck":
            p["cargo"] = _color(rng, _pick(rng, [(0.85, 0.85, 0.85), (0.6, 0.6, 0.62), (0.2, 0.3, 0.6), (0.7, 0.2, 0.15)]))
        return self.add(kind=kind, s=s, d=d, label=label, radius=0.5 * math.hypot(dims[0], dims[1]),
                        height=dims[2], yaw=yaw, speed=speed, moving=not parked, p=p)

    def _make_traffic(self, rng, ego_speed):
        # Parked cars along the curbs (static: they stay in obstacle-track scenes).
        if self.road_kind in ("two_lane", "residential", "one_way") and self.style != "rural":
            for side in (LEFT, RIGHT):
                if rng.random() < 0.55:
                    sgn = 1.0 if side == RIGHT else -1.0
                    s = self.s_lo + rng.uniform(0, 15)
                    while s < self.s_hi:
                        if rng.random() < 0.7:
                            o = self._add_vehicle(rng, s, 0.0, 0.0, 0.0, parked=True)
                            o.d = sgn * (self.hw(s) - o.p["W"] / 2 - rng.uniform(0.15, 0.35))
                            o.yaw = rng.uniform(-0.03, 0.03)
                            s += o.p["L"] + rng.uniform(0.8, 3.0)
                        else:
                            s += rng.uniform(5, 30)
        # Moving traffic in the lanes (dropped from obstacle/anomaly scenes).
        for side in (RIGHT, LEFT):
            if side == LEFT and not self.two_way:
                continue
            for lc in self.lane_centers(side):
                s = self.s_lo + rng.uniform(0, 30)
                while s < self.s_hi:
                    if rng.random() < 0.5:
                        v = rng.uniform(7, 14) * (1 if side == RIGHT else -1)
                        yaw = rng.uniform(-0.02, 0.02) + (0 if side == RIGHT else np.pi)
                        o = self._add_vehicle(rng, s, lc + rng.uniform(-0.25, 0.25), yaw, v, parked=False)
                        o.p["lane"] = lc
                    s += rng.uniform(15, 70)
        # Cyclists at the right edge.
        if rng.random() < 0.45:
            s = self.s_lo + rng.uniform(10, 60)
            while s < self.s_hi:
                self._add_bicycle(rng, s, self.hw(s) - rng.uniform(0.6, 1.0), speed=rng.uniform(3.5, 6.5))
                s += rng.uniform(40, 160)

    def _make_crossings(self, rng):
        if self.style == "rural" or not self.markings:
            return
        s = self.s_lo + rng.uniform(20, 120)
        while s < self.s_hi + 200:
            if rng.random() < 0.5:
                a, b = self.idx(s), self.idx(s + rng.uniform(3, 4.5))
                self.zebra_tab[a:b] = True
                for _ in range(int(rng.integers(0, 3))):
                    self._add_person(rng, s + rng.uniform(0.5, 3.0), rng.uniform(-self.hw(s), self.hw(s)))
                if rng.random() < 0.6:
                    for sgn in (-1.0, 1.0):
                        self.add(kind="traffic_light", s=s - rng.uniform(0.5, 2.0), d=sgn * (self.hw(s) + rng.uniform(0.4, 0.8)),
                                 label=L.TRAFFIC_LIGHT, radius=0.5, height=rng.uniform(3.0, 3.8),
                                 p={"state": int(rng.integers(3)), "facing": sgn > 0 or not self.two_way})
            s += rng.uniform(60, 200)

    def _make_backdrop(self, rng) -> dict:
        kind = "city" if self.style == "city" and rng.random() < 0.6 else "trees"
        n = 720
        az = np.linspace(-np.pi, np.pi, n, endpoint=False)
        if kind == "trees":
            el = np.full(n, rng.uniform(0.6, 1.6))
            for k in (3, 7, 17, 41, 97):
                el += rng.uniform(0.1, 0.6) / math.sqrt(k) * np.sin(k * az + rng.uniform(0, 6.3))
            el += 0.25 * np.abs(rng.standard_normal(n)) ** 1.5
            color = _color(rng, (0.2, 0.3, 0.16), 0.1)
            label = L.VEGETATION
        else:
            el = np.zeros(n)
            i = 0
            while i < n:
                w = int(rng.integers(3, 14))
                el[i:i + w] = rng.uniform(0.4, 3.5)
                i += w
            color = _color(rng, (0.55, 0.57, 0.62), 0.1)
            label = L.BUILDING
        return {"az": az, "el": np.radians(np.maximum(el, 0.15)), "color": color, "label": label}
