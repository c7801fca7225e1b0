"""Pictures for people (csl_ros.visualize): the colour bar below score images, one colour per instance id,
overlay labels that never overlap."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from csl_ros import visualize as V
from csl_ros.pipeline.instances import Obstacle


def assert_colour_bar_below(picture: np.ndarray, width: int) -> None:
    """The last rows of ``picture`` are a colour bar ``width`` px wide whose gradient follows the turbo
    colour map from 0 (left) to 1 (right)."""
    h = V.strip_height(width)
    strip = picture[-h:, :width]
    g = V.colour_bar_geometry(width)
    for y in range(g.y0, g.y1):
        values = np.array([V.colour_bar_geometry(width).value_at(x) for x in range(g.x0, g.x1)])
        expected = V.colorize_scores(values[None, :])[0]
        np.testing.assert_array_equal(strip[y, g.x0:g.x1], expected)
    # it spans the scale: blue-ish at 0, red-ish at 1
    left, right = strip[g.y0, g.x0].astype(int), strip[g.y0, g.x1 - 1].astype(int)
    assert left[0] > left[2] and right[2] > right[0]
    # tick values and the title are written under the gradient: bright text pixels on the dark strip
    assert (strip[g.y1 + 3:] > 200).any()


@pytest.mark.parametrize("width", [48, 128, 256, 640, 2048])
def test_colour_bar_strip_follows_the_colour_map(width):
    scores = np.tile(np.linspace(0, 1, width, dtype=np.float32), (20, 1))
    pic = V.score_image(scores)
    assert pic.shape == (20 + V.strip_height(width), width, 3)
    np.testing.assert_array_equal(pic[:20], V.colorize_scores(scores))     # the picture itself untouched
    assert_colour_bar_below(pic, width)


def test_colour_bar_written_as_png_keeps_its_pixels(tmp_path):
    scores = np.random.default_rng(0).random((60, 200)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "a.png"), V.score_image(scores))
    assert_colour_bar_below(cv2.imread(str(tmp_path / "a.png")), 200)


def test_instance_colours_one_per_id():
    inst = np.zeros((40, 400), np.uint16)
    ids = list(range(1, 30)) + [180, 181, 361, 1000, 65535]   # palette wrap-arounds included
    for k, i in enumerate(ids):
        inst[5:30, 10 * k + 2:10 * k + 8] = i
    col = V.colorize_instances(inst)
    assert col.shape == (40, 400, 3) and col.dtype == np.uint8
    assert (col[inst == 0] == 0).all()                               # background black
    colours = {}
    for i in ids:
        px = np.unique(col[inst == i], axis=0)
        assert len(px) == 1, f"id {i} has {len(px)} colours"
        colours[i] = tuple(px[0])
        assert colours[i] != (0, 0, 0)
    assert len(set(colours.values())) == len(ids)                    # distinct ids, distinct colours
    # stable: an id keeps its colour in another frame with other ids
    other = np.zeros_like(inst)
    other[:, :5] = 7
    assert tuple(V.colorize_instances(other)[0, 0]) == colours[7]


def test_instance_colours_stay_distinct_for_many_ids():
    cmap = V.instance_colours(range(0, 3000))
    assert len(cmap) == 2999 and len(set(cmap.values())) == 2999 and (0, 0, 0) not in cmap.values()


def crowded_obstacles(h: int, w: int, n: int, seed: int = 0):
    """``n`` small obstacles packed into the middle of an ``h`` x ``w`` frame (boxes touching)."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.uint16)
    obs = []
    for i in range(1, n + 1):
        x, y = int(rng.integers(w // 3, 2 * w // 3)), int(rng.integers(h // 2, h // 2 + h // 8))
        bw, bh = int(rng.integers(8, 20)), int(rng.integers(6, 14))
        inst[y:y + bh, x:x + bw] = i
        obs.append(Obstacle(i, bw * bh, (x, y, x + bw, y + bh), 0.5, float(rng.random()),
                            distance_m=float(rng.uniform(5, 60))))
    return inst, obs


def test_placed_labels_never_overlap_and_stay_inside():
    h, w = 256, 512
    _, obs = crowded_obstacles(h, w, 40)
    sizes = [(90, 14)] * len(obs)
    spots = V.place_labels([o.bbox for o in obs], sizes, (h, w))
    placed = [s for s in spots if s is not None]
    assert len(placed) >= 10                      # nudging finds room for many
    assert len(placed) < len(obs)                 # but not all: this frame is crowded
    for x, y, bw, bh in placed:
        assert 0 <= x and x + bw <= w and 0 <= y and y + bh <= h
    for a, b in itertools.combinations(placed, 2):
        assert not V._overlaps(a, b, 0), (a, b)


def test_sparse_labels_sit_next_to_their_boxes():
    boxes = [(50, 100, 90, 130), (300, 60, 340, 90)]
    spots = V.place_labels(boxes, [(80, 14)] * 2, (256, 512), gap=2)
    assert spots == [(50, 100 - 14 - 2, 80, 14), (300, 60 - 14 - 2, 80, 14)]   # right above each box


def test_crowded_overlay_labels_do_not_overlap_and_the_rest_is_listed():
    h, w = 256, 512
    inst, obs = crowded_obstacles(h, w, 30, seed=1)
    rgb = np.full((h, w, 3), 110, np.uint8)
    scores = (inst > 0).astype(np.float32) * 0.8
    canvas = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    scale = max(0.4, h / 1000.0)
    rects, missing = V.label_obstacles(canvas.copy(), obs, scale)
    for a, b in itertools.combinations(rects, 2):
        assert not V._overlaps(a, b, 0), (a, b)
    assert missing, "30 packed obstacles should not all get a full label"
    out = V.draw_overlay(rgb, scores, inst, obs)
    # the picture keeps its size and place; the colour bar goes below, the unlabelled ones to a column right
    assert out.shape[0] == h + V.strip_height(w) and out.shape[1] > w
    assert_colour_bar_below(out, w)
    legend = out[:, w:]
    assert (legend > 200).any()                  # text in the side legend
    # without crowding: no side column
    few = V.draw_overlay(rgb, scores, inst, obs[:2])
    assert few.shape == (h + V.strip_height(w), w, 3)
