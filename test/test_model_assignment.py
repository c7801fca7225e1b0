"""Soft assignment (Eq. 2), hard assignment, structure-constrained fusion (Eq. 3), connected components
and the mask split, pinned on small hand-made inputs."""
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csl_ros.model import (connected_components, hard_assign, masks_from_components, soft_assign,
                           soft_assign_logits, split_label_map, split_masks, structure_constrained_fusion)

# Three queries over a 2 x 3 image; the products r*v are worked out in the comments.
R = torch.tensor([
    [[0.9, 0.6, 0.2], [0.1, 0.5, 0.3]],
    [[0.4, 0.7, 0.8], [0.2, 0.4, 0.9]],
    [[0.3, 0.3, 0.3], [0.6, 0.42, 0.1]],
])
V = torch.tensor([0.5, 1.0, 0.9])
# r*v: q0 [[.45 .30 .10] [.05 .25 .15]]; q1 [[.40 .70 .80] [.20 .40 .90]]; q2 [[.27 .27 .27] [.54 .378 .09]]
EQ2_EXPECTED = torch.tensor([[0, 1, 1], [2, 1, 1]])


def test_soft_assign_eq2_by_hand():
    labels = soft_assign(R, V, split_components=False)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, EQ2_EXPECTED)
    # Pixel (1, 1): argmax_n r alone would pick query 0 (0.5); the validity flips it to query 1.
    assert R[:, 1, 1].argmax() == 0


def test_soft_assign_splits_disconnected_parts_of_one_query():
    # Query 0 owns the two ends of a 1 x 5 strip, query 1 the middle.
    r = torch.tensor([[[0.9, 0.9, 0.1, 0.9, 0.9]], [[0.1, 0.1, 0.9, 0.1, 0.1]]])
    v = torch.tensor([1.0, 1.0])
    assert soft_assign(r, v, split_components=False).tolist() == [[0, 0, 1, 0, 0]]
    # Components numbered by query then raster order: left end 0, right end 1, middle 2.
    assert soft_assign(r, v, split_components=True).tolist() == [[0, 0, 2, 1, 1]]


def test_soft_assign_split_is_8_connected():
    # Query 0 on the diagonal of a 2 x 2 image: one component with 8-connectivity, two with 4.
    r = torch.tensor([[[0.9, 0.1], [0.1, 0.9]], [[0.1, 0.9], [0.9, 0.1]]])
    v = torch.ones(2)
    assert soft_assign(r, v).tolist() == [[0, 1], [1, 0]]
    assert soft_assign(r, v, connectivity=4).tolist() == [[0, 2], [3, 1]]


def test_soft_assign_upsamples_labels_not_scores():
    torch.manual_seed(0)
    r, v = torch.rand(6, 5, 7), torch.rand(6)
    low = soft_assign(r, v, split_components=False)
    up = soft_assign(r, v, split_components=False, out_size=(20, 28))
    assert torch.equal(up, low.repeat_interleave(4, 0).repeat_interleave(4, 1))
    odd = soft_assign(r, v, split_components=False, out_size=(13, 9))  # non-integer factor
    assert odd.shape == (13, 9) and set(odd.unique().tolist()) <= set(low.unique().tolist())
    # Splitting before upsampling by an integer factor gives the same partition as after.
    split_up = soft_assign(r, v, split_components=True, out_size=(20, 28))
    split_after, _ = connected_components(up.numpy())
    assert torch.equal(split_up, torch.from_numpy(split_after))


@pytest.mark.parametrize("out_size", [(32, 40), (30, 37)])
def test_soft_assign_logits_exact_matches_bilinear_upsampling(out_size):
    torch.manual_seed(1)
    logits, vlogits = torch.randn(5, 8, 10) * 3, torch.randn(5, 2)
    got = soft_assign_logits(logits, vlogits, out_size=out_size, split_components=False, exact=True, chunk_rows=7)
    up = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
    expected = (up.sigmoid() * vlogits.softmax(-1)[:, 0, None, None]).argmax(0)
    assert (got == expected).float().mean() > 0.999  # only float-rounding ties may differ
    approx = soft_assign_logits(logits, vlogits, out_size=out_size, split_components=False)
    # Label upsampling differs only near region borders; with white-noise logits most cells touch one.
    assert (approx == expected).float().mean() > 0.6


def test_hard_assign_leaves_pixels_unassigned_where_soft_does_not():
    r = torch.tensor([[[0.9, 0.3], [0.9, 0.2]], [[0.1, 0.4], [0.2, 0.9]]])
    v = torch.tensor([0.95, 0.9])
    # v*r: q0 [[.855 .285] [.855 .19]], q1 [[.09 .36] [.18 .81]] -> argmax [[0 1] [0 1]];
    # pixel (0, 1) goes to q1 whose r = 0.4 < 0.5, so the hard assignment leaves it void.
    assert hard_assign(r, v).tolist() == [[0, -1], [0, 1]]
    assert soft_assign(r, v, split_components=False).tolist() == [[0, 1], [0, 1]]


def test_hard_assign_validity_threshold_and_overlap_filter():
    r = torch.tensor([[[0.4, 0.4], [0.9, 0.9]], [[0.99, 0.99], [0.6, 0.6]], [[0.1, 0.1], [0.1, 0.95]]])
    v = torch.tensor([0.95, 0.9, 0.5])
    # q2 is below the 0.8 validity threshold: never kept. q1's binary mask covers 4 px but it wins
    # the argmax on only 2 (< 0.8 x 4): dropped, so its pixels stay void. q0 keeps its bottom row.
    assert hard_assign(r, v).tolist() == [[-1, -1], [0, 0]]
    # The soft assignment assigns every pixel (at (1, 1) q2's 0.95 x 0.5 loses to q0's 0.9 x 0.95).
    assert soft_assign(r, v, split_components=False).tolist() == [[1, 1], [0, 0]]
    assert hard_assign(r, torch.tensor([0.5, 0.5, 0.5])).eq(-1).all()  # nothing valid: all void


D1 = torch.tensor([[0.2, 0.4, 0.9], [0.6, 0.8, 0.1]])
REGIONS = torch.tensor([[0, 0, 1], [0, 1, 1]])
# region 0: (.2 + .4 + .6) / 3 = .4; region 1: (.9 + .8 + .1) / 3 = .6


@pytest.mark.parametrize("mode,expected", [
    ("product", [[0.08, 0.16, 0.54], [0.24, 0.48, 0.06]]),
    ("region_mean", [[0.4, 0.4, 0.6], [0.4, 0.6, 0.6]]),
    ("arithmetic", [[0.3, 0.4, 0.75], [0.5, 0.7, 0.35]]),
])
def test_scf_eq3_single_channel_by_hand(mode, expected):
    fused = structure_constrained_fusion(D1[None], REGIONS, mode=mode)
    assert fused.shape == (1, 2, 3)
    assert torch.allclose(fused[0], torch.tensor(expected), atol=1e-6)


def test_scf_region_exponent_by_hand():
    """H = m^g * D: g = 1 is Eq. 3 exactly, g = 0.5 by hand (sqrt of the region means .4 and .6), g = 0
    the teacher's own scores; only the product mode has it."""
    exact = structure_constrained_fusion(D1[None], REGIONS)
    assert torch.equal(structure_constrained_fusion(D1[None], REGIONS, "product", 1.0), exact)
    m = torch.tensor([[0.4, 0.4, 0.6], [0.4, 0.6, 0.6]])
    half = structure_constrained_fusion(D1[None], REGIONS, "product", 0.5)[0]
    assert torch.allclose(half, m.sqrt() * D1, atol=1e-6)
    assert half[0, 0] == pytest.approx(0.2 * 0.4 ** 0.5, abs=1e-6)
    assert torch.allclose(structure_constrained_fusion(D1[None], REGIONS, "product", 0.0)[0], D1)
    with pytest.raises(ValueError, match="region_exponent"):
        structure_constrained_fusion(D1[None], REGIONS, "product", -0.5)


def test_scf_eq3_multi_channel_by_hand():
    D = torch.stack([D1, 1 - D1])  # channel 1: region 0 mean (.8 + .6 + .4) / 3 = .6; region 1 .4
    fused = structure_constrained_fusion(D, REGIONS)
    expected1 = torch.tensor([[0.48, 0.36, 0.04], [0.24, 0.08, 0.36]])
    assert torch.allclose(fused[0], structure_constrained_fusion(D1[None], REGIONS)[0])
    assert torch.allclose(fused[1], expected1, atol=1e-6)


def test_scf_unassigned_pixels_keep_their_own_score_and_ids_need_not_be_contiguous():
    regions = torch.tensor([[5, 5, -1], [5, 9, 9]])  # region 9: (.8 + .1) / 2 = .45
    fused = structure_constrained_fusion(D1[None], regions)[0]
    assert torch.allclose(fused, torch.tensor([[0.08, 0.16, 0.9], [0.24, 0.36, 0.045]]), atol=1e-6)
    for mode in ("region_mean", "arithmetic"):
        assert structure_constrained_fusion(D1[None], regions, mode)[0, 0, 2] == pytest.approx(0.9)


def test_scf_batched_equals_per_image():
    torch.manual_seed(2)
    D = torch.rand(3, 2, 6, 7)
    regions = torch.randint(-1, 4, (3, 6, 7))
    batched = structure_constrained_fusion(D, regions)
    for i in range(3):
        assert torch.allclose(batched[i], structure_constrained_fusion(D[i], regions[i]))


def test_scf_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        structure_constrained_fusion(D1[None], REGIONS, mode="geometric")
    with pytest.raises(ValueError, match="negative"):
        structure_constrained_fusion(-D1[None], REGIONS)
    with pytest.raises(ValueError, match="shape"):
        structure_constrained_fusion(D1[None], REGIONS[:, :2])
    with pytest.raises(ValueError, match="integer"):
        structure_constrained_fusion(D1[None], REGIONS.float())


def _bfs_components(labels, ignore, connectivity):
    """Independent oracle: breadth-first flood fill."""
    h, w = labels.shape
    out = -np.ones((h, w), dtype=np.int64)
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)] + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if connectivity == 8 else [])
    n = 0
    for y in range(h):
        for x in range(w):
            if out[y, x] >= 0 or labels[y, x] == ignore:
                continue
            out[y, x] = n
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and out[ny, nx] < 0 and labels[ny, nx] == labels[y, x]:
                        out[ny, nx] = n
                        queue.append((ny, nx))
            n += 1
    return out


def _same_partition(a, b):
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs})


@pytest.mark.parametrize("connectivity", [4, 8])
def test_connected_components_matches_flood_fill(connectivity):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(23, 31))
    labels[rng.random(labels.shape) < 0.1] = 255
    comp, sources = connected_components(labels, connectivity, ignore=255)
    oracle = _bfs_components(labels, 255, connectivity)
    assert np.array_equal(comp < 0, oracle < 0)
    assert _same_partition(comp, oracle)
    assert comp.max() + 1 == len(sources) == oracle.max() + 1
    for k in range(len(sources)):  # every component carries its source label
        assert np.all(labels[comp == k] == sources[k])


def _label_map_with_blobs():
    lm = np.zeros((40, 60), dtype=np.uint8)      # class 0 (road) everywhere
    lm[:, 20:23] = 255                          # a void strip cutting the road in two
    lm[2:14, 2:14] = 13                         # class 13, blob A: 144 px
    lm[25:35, 40:52] = 13                       # class 13, blob B: 120 px (disconnected from A)
    lm[36:39, 5:8] = 13                         # class 13, tiny blob: 9 px (dropped)
    return lm


def test_split_masks_two_blobs_of_one_class_tiny_blob_and_void():
    lm = _label_map_with_blobs()
    masks = split_masks(lm, ignore=255, min_area=100)
    assert len(masks) == 4 and all(m.dtype == bool and m.shape == lm.shape for m in masks)
    road_left = (lm == 0) & (np.arange(60)[None, :] < 20)
    road_right = (lm == 0) & (np.arange(60)[None, :] > 22)
    blob_a = np.zeros_like(road_left)
    blob_a[2:14, 2:14] = True
    blob_b = np.zeros_like(road_left)
    blob_b[25:35, 40:52] = True
    for got, want in zip(masks, [road_left, road_right, blob_a, blob_b]):
        assert np.array_equal(got, want)
    union = np.sum(masks, axis=0)
    assert union.max() == 1                      # disjoint
    assert not union[lm == 255].any()            # void belongs to no target
    assert not union[36:39, 5:8].any()           # the tiny blob became background for every target


def test_split_masks_cap_keeps_the_largest_and_label_map_form_agrees():
    lm = _label_map_with_blobs()
    masks = split_masks(lm, min_area=100)
    capped = split_masks(lm, min_area=100, max_masks=3)
    areas = sorted((m.sum() for m in masks), reverse=True)
    assert sorted((m.sum() for m in capped), reverse=True) == areas[:3]
    comp, classes = split_label_map(lm, min_area=100)
    assert classes.tolist() == [0, 0, 13, 13]
    stacked = masks_from_components(comp).numpy()
    assert np.array_equal(stacked, np.stack(masks))
    assert len(split_masks(lm, min_area=10)) == 4  # the 9 px blob still falls below 10 ...
    assert len(split_masks(lm, min_area=9)) == 5   # ... but not below 9


def test_split_masks_diagonal_touch_and_bad_input():
    lm = np.full((20, 20), 255, dtype=np.uint8)
    lm[0:10, 0:10] = 1
    lm[10:20, 10:20] = 1                         # touches the first block only at a corner
    assert len(split_masks(lm, connectivity=8)) == 1
    assert len(split_masks(lm, connectivity=4)) == 2
    with pytest.raises(ValueError, match="connectivity"):
        split_masks(lm, connectivity=6)
    with pytest.raises(ValueError, match="2-D integer"):
        split_masks(lm.astype(np.float32))
    assert split_masks(np.full((8, 8), 255, dtype=np.uint8)) == []
