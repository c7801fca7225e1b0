"""Pictures for people: colour-mapped anomaly scores with their colour bar, colour-coded instances and
labelled overlays (ROS-free, BGR uint8 out).

Every picture that shows scores in colour carries a colour bar (value scale and colour map name) in a
strip *below* the image, so it never hides the road: the top H rows stay pixel-aligned with the input.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

COLOR_MAP = cv2.COLORMAP_TURBO
COLOR_MAP_NAME = "turbo"
SCORE_BAR_TITLE = f"anomaly score ({COLOR_MAP_NAME})"
STRIP_BACKGROUND = (32, 32, 32)
FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOUR = (255, 255, 255)


def colorize_scores(anomaly_map: np.ndarray) -> np.ndarray:
    """Map scores in [0, 1] to a BGR uint8 image (turbo colour map; 0 blue, 1 red), no colour bar."""
    s = np.nan_to_num(np.asarray(anomaly_map, np.float32), nan=0.0)
    u8 = (np.clip(s, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.applyColorMap(u8, COLOR_MAP)


# --------------------------------------------------------------------------------------------------
# strips below a picture: colour bar and legends
# --------------------------------------------------------------------------------------------------

def strip_height(width: int) -> int:
    """Height of the colour bar / legend strip under a picture ``width`` px wide (28-56 px)."""
    return int(np.clip(round(width * 0.05), 28, 56))


def _font_scale(strip_h: int) -> float:
    return strip_h / 75.0


@dataclass(frozen=True)
class BarGeometry:
    """Where the colour gradient lies inside a colour bar strip (rows y0:y1, columns x0:x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    def value_at(self, x: int) -> float:
        """Score in [0, 1] shown by gradient column ``x``."""
        return (x - self.x0) / max(1, self.x1 - self.x0 - 1)


def colour_bar_geometry(width: int, height: int | None = None) -> BarGeometry:
    """The gradient's rectangle in a colour bar strip ``width`` px wide (see :func:`colour_bar_strip`)."""
    h = strip_height(width) if height is None else height
    margin = max(4, width // 64)
    return BarGeometry(y0=3, y1=3 + max(6, int(h * 0.38)), x0=margin, x1=width - margin)


def colour_bar_strip(width: int, title: str = SCORE_BAR_TITLE, height: int | None = None) -> np.ndarray:
    """A BGR strip ``width`` px wide: the colour map's gradient over the score range [0, 1] of
    :func:`colorize_scores` with tick values under it and the title (what the colours mean and the colour
    map's name)."""
    return _colour_bar_strip(width, title, height).copy()


@functools.lru_cache(maxsize=32)
def _colour_bar_strip(width: int, title: str, height: int | None) -> np.ndarray:
    # cached: a node draws the same strip for every frame of a camera
    h = strip_height(width) if height is None else height
    strip = np.full((h, width, 3), STRIP_BACKGROUND, np.uint8)
    g = colour_bar_geometry(width, h)
    n = g.x1 - g.x0
    ramp = (np.arange(n, dtype=np.float64) / max(1, n - 1) * 255.0 + 0.5).astype(np.uint8)
    strip[g.y0:g.y1, g.x0:g.x1] = cv2.applyColorMap(ramp[None, :], COLOR_MAP)
    scale = _font_scale(h)
    text_y = g.y1 + int((h - g.y1) * 0.5) + int(cv2.getTextSize("0", FONT, scale, 1)[0][1] * 0.5)
    occupied: list[tuple[int, int]] = []

    def put(text: str, cx: float) -> bool:
        """Centre ``text`` on ``cx`` (slid into the strip) unless it would overlap earlier text."""
        tw = cv2.getTextSize(text, FONT, scale, 1)[0][0]
        x = int(np.clip(cx - tw / 2, 0, width - tw))
        if any(x < b + 6 and a < x + tw + 6 for a, b in occupied):
            return False
        occupied.append((x, x + tw))
        cv2.putText(strip, text, (x, text_y), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
        return True

    def tick(t: float) -> None:
        x = g.x0 + t * (n - 1)
        strip[g.y1:g.y1 + 3, int(round(x))] = TEXT_COLOUR
        put(f"{t:g}", x)

    for t in (0.0, 1.0, 0.5):
        tick(t)
    # the title goes into the widest gap between those values (the colour map name alone if too narrow),
    # the quarter values where room is left
    edges = sorted(occupied)
    gaps = [(a, b) for (_, a), (b, _) in zip(edges, edges[1:])]
    lo, hi = max(gaps, key=lambda ab: ab[1] - ab[0]) if gaps else (0, width)
    put(title, (lo + hi) / 2) or put(COLOR_MAP_NAME, (lo + hi) / 2)
    for t in (0.25, 0.75):
        tick(t)
    return strip


def legend_strip(width: int, items: Sequence[tuple[tuple[int, int, int] | None, str]],
                 height: int | None = None) -> np.ndarray:
    """A BGR strip ``width`` px wide listing ``(colour swatch or None, text)`` items left to right
    (items that do not fit are left out)."""
    h = strip_height(width) if height is None else height
    strip = np.full((h, width, 3), STRIP_BACKGROUND, np.uint8)
    scale = _font_scale(h)
    x = 6
    for colour, text in items:
        (tw, th), _ = cv2.getTextSize(text, FONT, scale, 1)
        sw = th + 2 if colour is not None else 0
        if x + sw + 4 + tw > width:
            break
        y = (h + th) // 2
        if colour is not None:
            cv2.rectangle(strip, (x, y - th), (x + sw, y), tuple(int(c) for c in colour), -1)
            x += sw + 4
        cv2.putText(strip, text, (x, y), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
        x += tw + 14
    return strip


def with_colour_bar(picture: np.ndarray, title: str = SCORE_BAR_TITLE) -> np.ndarray:
    """``picture`` (BGR) with a colour bar strip appended below it."""
    return np.vstack([picture, colour_bar_strip(picture.shape[1], title)])


def score_image(anomaly_map: np.ndarray) -> np.ndarray:
    """The colour score map with its colour bar below (what ``<stem>_anomaly.png`` and
    ``~/anomaly_score/color`` show): H + :func:`strip_height` rows, the top H aligned with the input."""
    return with_colour_bar(colorize_scores(anomaly_map))


# --------------------------------------------------------------------------------------------------
# instances
# --------------------------------------------------------------------------------------------------

GOLDEN = 0.6180339887498949


@functools.lru_cache(maxsize=1)
def instance_palette() -> np.ndarray:
    """(P, 3) uint8 BGR: distinct bright colours, golden-ratio hue steps with alternating saturation and
    value so neighbouring ids differ (duplicates after rounding to uint8 removed)."""
    k = np.arange(4096)
    hsv = np.stack([(k * GOLDEN) % 1.0 * 360.0, np.array([1.0, 0.75, 0.55])[(k // 7) % 3],
                    np.array([1.0, 0.8])[(k // 3) % 2]], -1).astype(np.float32)
    bgr = (cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0] * 255.0 + 0.5).astype(np.uint8)
    _, first = np.unique(bgr, axis=0, return_index=True)
    return bgr[np.sort(first)]


def instance_colours(ids: Sequence[int]) -> dict[int, tuple[int, int, int]]:
    """One distinct colour per instance id (0 = background is black and never listed).

    Id ``i`` takes palette colour ``i - 1`` (modulo the palette), stable across frames so a tracked id
    keeps its colour; when two ids present together would share a colour, the later one takes the next
    unused palette colour.
    """
    palette = instance_palette()
    taken = np.zeros(len(palette), bool)
    used: set[tuple[int, int, int]] = {(0, 0, 0)}
    out = {}
    for i in sorted({int(v) for v in ids} - {0}):
        if not taken.all():
            k = (i - 1) % len(palette)
            if taken[k]:
                free = np.flatnonzero(~taken)
                k = int(free[np.searchsorted(free, k) % len(free)])    # next unused palette colour
            taken[k] = True
            c = tuple(int(v) for v in palette[k])
        else:   # more ids in one picture than palette colours: any unused 24-bit colour, from the id
            c, j = (0, 0, 0), 0
            while c in used:
                v = (i * 2654435761 + j * 40503) & 0xFFFFFF
                c, j = (v & 255, (v >> 8) & 255, v >> 16), j + 1
        used.add(c)
        out[i] = c
    return out


def colorize_instances(instances: np.ndarray) -> np.ndarray:
    """The uint16 instance id image as BGR colours: background black, one colour per id
    (``<stem>_instances_color.png``, ``~/ood_instances/color``)."""
    inst = np.asarray(instances)
    ids = np.unique(inst[inst > 0])          # instances cover few pixels: no sort of the whole image
    lut = np.zeros((int(ids[-1]) + 1 if ids.size else 1, 3), np.uint8)
    for i, c in instance_colours(ids.tolist()).items():
        lut[i] = c
    return lut[inst]


# --------------------------------------------------------------------------------------------------
# overlay with labels that never overlap
# --------------------------------------------------------------------------------------------------

Rect = tuple[int, int, int, int]   # x, y, w, h


def _overlaps(a: Rect, b: Rect, gap: int) -> bool:
    return (a[0] < b[0] + b[2] + gap and b[0] < a[0] + a[2] + gap and
            a[1] < b[1] + b[3] + gap and b[1] < a[1] + a[3] + gap)


def _candidates(bbox, w: int, h: int, gap: int, nudges: int):
    """Label positions around a box, nearest first: above / below (left- then right-aligned), inside
    the top-left corner, left / right of the box, then nudged further up and down."""
    x0, y0, x1, y1 = (int(v) for v in bbox)
    above, below = y0 - h - gap, y1 + gap
    yield from ((x0, above), (x0, below), (x1 - w, above), (x1 - w, below), (x0 + gap, y0 + gap),
                (x0 - w - gap, y0), (x1 + gap, y0))
    for k in range(1, nudges + 1):
        for x in (x0, x1 - w):
            yield x, above - k * (h + gap)
            yield x, below + k * (h + gap)


def place_labels(boxes: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]], image_hw: tuple[int, int],
                 occupied: Sequence[Rect] = (), gap: int = 2, nudges: int = 4) -> list[Rect | None]:
    """Positions for text labels of the given sizes ``(w, h)`` next to their boxes ``(x0, y0, x1, y1)``,
    no two overlapping (nor overlapping ``occupied``) and all inside the image, in the order given (put the
    most important first). A label with no free position gets None (the caller lists it elsewhere)."""
    H, W = image_hw
    placed: list[Rect] = list(occupied)
    out: list[Rect | None] = []
    for bbox, (w, h) in zip(boxes, sizes):
        spot = None
        if w <= W and h <= H:
            for x, y in _candidates(bbox, w, h, gap, nudges):
                x = min(max(x, 0), W - w)          # slide sideways into the image, keep the row
                if y < 0 or y + h > H:
                    continue
                r = (x, y, w, h)
                if not any(_overlaps(r, p, gap) for p in placed):
                    spot = r
                    break
        if spot is not None:
            placed.append(spot)
        out.append(spot)
    return out


def obstacle_label(ob) -> str:
    text = f"#{ob.id} {ob.max_score:.2f}"
    if ob.distance_m is not None:
        text += f" {ob.distance_m:.1f}m"
    if getattr(ob, "coasted", 0):   # a tracked obstacle not detected in this frame (predicted place)
        text += f" coasted {ob.coasted}"
    if getattr(ob, "faint", False):  # its track continued on a faint area of this frame
        text += " faint"
    return text


def _label_box(text: str, scale: float) -> tuple[int, int, int]:
    (tw, th), base = cv2.getTextSize(text, FONT, scale, 1)
    return tw + 4, th + base + 4, base


def _draw_label(img: np.ndarray, rect: Rect, text: str, scale: float, base: int) -> None:
    x, y, w, h = rect
    roi = img[y:y + h, x:x + w]
    roi[:] = (roi.astype(np.uint16) * 2 // 7).astype(np.uint8)    # darkened box: readable on any colour
    cv2.putText(img, text, (x + 2, y + h - base - 2), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)


def _leader_line(img: np.ndarray, rect: Rect, bbox) -> None:
    """A thin line from a label that was nudged away from its box to the box."""
    x, y, w, h = rect
    x0, y0, x1, y1 = (int(v) for v in bbox)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    px, py = min(max(cx, x), x + w - 1), min(max(cy, y), y + h - 1)           # label point nearest the box
    qx, qy = min(max(px, x0), x1 - 1), min(max(py, y0), y1 - 1)               # box point nearest that
    if abs(px - qx) + abs(py - qy) > 4:
        cv2.line(img, (px, py), (qx, qy), TEXT_COLOUR, 1, cv2.LINE_AA)


def label_obstacles(img: np.ndarray, obstacles: Sequence, scale: float) -> tuple[list[Rect], list]:
    """Draw each obstacle's label (``#id max_score [distance]``) next to its box on ``img`` (in place),
    highest score first, where it overlaps no other label. Obstacles whose full label finds no room get
    their ``#id`` alone where that fits. Returns (the drawn label rectangles, the obstacles whose full
    label was not drawn)."""
    order = sorted(obstacles, key=lambda o: -o.max_score)
    texts = [obstacle_label(o) for o in order]
    boxes = [_label_box(t, scale) for t in texts]
    spots = place_labels([o.bbox for o in order], [(w, h) for w, h, _ in boxes], img.shape[:2])
    drawn = [s for s in spots if s is not None]
    missing = [o for o, s in zip(order, spots) if s is None]
    short = [f"#{o.id}" for o in missing]
    short_boxes = [_label_box(t, scale) for t in short]
    short_spots = place_labels([o.bbox for o in missing], [(w, h) for w, h, _ in short_boxes], img.shape[:2],
                               occupied=drawn)
    for spot, ob in zip(spots + short_spots, order + missing):
        if spot is not None:
            _leader_line(img, spot, ob.bbox)
    for spot, text, (_, _, base) in zip(spots + short_spots, texts + short, boxes + short_boxes):
        if spot is not None:
            _draw_label(img, spot, text, scale, base)
    return drawn + [s for s in short_spots if s is not None], missing


def side_legend(height: int, lines: Sequence[str], scale: float, title: str = "not labelled above") -> np.ndarray:
    """A BGR column ``height`` px tall listing ``lines`` (in several columns when they do not fit)."""
    (_, th), base = cv2.getTextSize("#0", FONT, scale, 1)
    line_h = th + base + 6
    rows = max(1, (height - line_h) // line_h)
    col_w = max(cv2.getTextSize(t, FONT, scale, 1)[0][0] for t in [title, *lines]) + 12
    n_cols = -(-len(lines) // rows)
    legend = np.full((height, max(col_w * n_cols, col_w), 3), STRIP_BACKGROUND, np.uint8)
    cv2.putText(legend, title, (6, line_h - base - 3), FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    for i, text in enumerate(lines):
        c, r = divmod(i, rows)
        cv2.putText(legend, text, (6 + c * col_w, (r + 2) * line_h - base - 3), FONT, scale, TEXT_COLOUR, 1,
                    cv2.LINE_AA)
    return legend


def draw_overlay(image_rgb: np.ndarray, anomaly_map: np.ndarray, instances: np.ndarray,
                 obstacles=(), alpha: float = 0.45, colour_bar: bool = True,
                 legend: bool = True) -> np.ndarray:
    """Blend the score colour map onto the image, outline each instance and label it (BGR out).

    Labels never overlap each other (:func:`label_obstacles`). With ``legend``, obstacles whose label found
    no room are listed in a column to the right of the image (only when crowded, so the picture is then
    wider); without it they keep their outline only. With ``colour_bar`` the score colour bar is appended
    below the picture.
    """
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    heat = colorize_scores(anomaly_map)
    weight = (np.clip(anomaly_map, 0, 1)[..., None] * alpha).astype(np.float32)
    out = (bgr.astype(np.float32) * (1 - weight) + heat.astype(np.float32) * weight).astype(np.uint8)
    if instances is not None and instances.any():
        edges = cv2.morphologyEx((instances > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        out[edges > 0] = (0, 0, 255)
    scale = max(0.4, out.shape[0] / 1000.0)
    _, missing = label_obstacles(out, obstacles, scale)
    if colour_bar:
        out = with_colour_bar(out, title=f"{SCORE_BAR_TITLE}, blended; red: instances")
    if legend and missing:
        out = np.hstack([out, side_legend(out.shape[0], [obstacle_label(o) for o in missing], scale)])
    return out
