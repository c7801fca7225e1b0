"""Outlier exposure with synthetic negatives (csl_ros.training.negatives) in the segmenter trainer."""
import csv
import math

import numpy as np
import pytest
import torch

from csl_ros.teachers.segmenter import ClosedSetSegmenter, load_segmenter, preset, save_segmenter
from csl_ros.training.distributed import DistEnv
from csl_ros.data.synthroad import render_frame
from csl_ros.data.synthroad.world import WHITE_PAINT, YELLOW_PAINT
from csl_ros.training.negatives import (MAX_SOURCE_ROAD_FRACTION, ROAD_TRAIN_ID, colour_field, contact_shadow,
                                        looks_like_road_paint, paste_negatives, polygon_mask, road_paint_mask,
                                        uniform_cross_entropy)
from csl_ros.training.segmenter import (SegmenterTask, SegmenterTrainConfig, ohem_cross_entropy, train_segmenter,
                                        weighted_cross_entropy)

from test_teachers_train import ToyScenes, _cfg

torch.set_num_threads(2)


def _road_bottom_frame(h=64, w=128):
    """Label: sky (10) above row 40, road (0) from row 40 down; the image a flat grey."""
    lab = np.full((h, w), 10, np.uint8)
    lab[40:] = ROAD_TRAIN_ID
    img = np.full((h, w, 3), 128, np.uint8)
    return img, lab


def _sources(n=3, h=64, w=128):
    """Source frames with no road at all: bright random colours."""
    rng = np.random.default_rng(1)
    return [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), np.full((h, w), 2, np.uint8)) for _ in range(n)]


def _as_tensors(img, lab):
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0, torch.from_numpy(lab).long()


def test_negatives_stand_on_the_road_and_change_only_their_own_pixels():
    img, lab = _road_bottom_frame()
    x, y = _as_tensors(img, lab)
    before = x.clone()
    out = paste_negatives(x, y, _sources(), torch.Generator().manual_seed(0), count=4, size_range=(0.05, 0.1))
    assert out.any()
    changed = (x != before).any(0)
    assert not (changed & ~out).any(), "pixels outside the negatives changed"
    rows = out.nonzero()[:, 0]
    # a negative's bottom centre is a road pixel and it is at most 0.1 * 64 px tall
    assert int(rows.min()) >= 40 - math.ceil(0.1 * 64)
    assert int((rows >= 40).sum()) > 0.5 * rows.numel(), "negatives stand on the road band"


def test_same_generator_same_negatives():
    img, lab = _road_bottom_frame()
    a, ya = _as_tensors(img, lab)
    b, yb = _as_tensors(img, lab)
    ma = paste_negatives(a, ya, _sources(), torch.Generator().manual_seed(5), 3, (0.05, 0.3))
    mb = paste_negatives(b, yb, _sources(), torch.Generator().manual_seed(5), 3, (0.05, 0.3))
    assert torch.equal(ma, mb) and torch.equal(a, b)


def test_no_negative_without_road_or_from_road_sources():
    img, lab = _road_bottom_frame()
    x, y = _as_tensors(img, np.full_like(lab, 10))      # no road in the crop
    before = x.clone()
    assert not paste_negatives(x, y, _sources(), torch.Generator().manual_seed(0), 3, (0.05, 0.3)).any()
    assert torch.equal(x, before)
    road_sources = [(s[0], np.full_like(s[1], ROAD_TRAIN_ID)) for s in _sources()]   # all road
    x, y = _as_tensors(img, lab)
    assert MAX_SOURCE_ROAD_FRACTION < 1.0
    assert not paste_negatives(x, y, road_sources, torch.Generator().manual_seed(0), 3, (0.05, 0.3)).any()


def test_colour_negatives_need_no_source_frame_and_are_not_source_pixels():
    img, lab = _road_bottom_frame()
    x, y = _as_tensors(img, lab)
    road_sources = [(s[0], np.full_like(s[1], ROAD_TRAIN_ID)) for s in _sources()]   # unusable sources
    out = paste_negatives(x, y, road_sources, torch.Generator().manual_seed(2), 4, (0.1, 0.3), colour_fraction=1.0)
    assert out.any(), "colour fields are pasted even when no source patch qualifies"
    assert (x[:, ~out] == 128 / 255.0).all(), "pixels outside the negatives changed"
    # colour_fraction 0 with the same unusable sources pastes nothing: the fraction is what decides
    x0, y0 = _as_tensors(img, lab)
    assert not paste_negatives(x0, y0, road_sources, torch.Generator().manual_seed(2), 4, (0.1, 0.3)).any()


def _checkered_road_sources(n=3, h=64, w=128):
    """Source frames where a quarter of the 16 px cells are road, painted pure red; the rest is not
    road, painted pure blue: a pasted pixel's colour says which it came from (a colour gain keeps a
    zero channel zero)."""
    yy, xx = np.mgrid[0:h, 0:w]
    road = ((yy // 16 + xx // 16) % 4) == 0
    img = np.zeros((h, w, 3), np.uint8)
    img[road, 0] = 255
    img[~road, 2] = 255
    lab = np.where(road, ROAD_TRAIN_ID, 2).astype(np.uint8)
    return [(img, lab)] * n


def test_exclude_source_road_pastes_no_pixel_that_was_road_in_its_frame():
    img, lab = _road_bottom_frame()
    red_without = 0
    for seed in range(6):
        runs = {}
        for exclude in (False, True):
            x, y = _as_tensors(img, lab)
            out = paste_negatives(x, y, _checkered_road_sources(), torch.Generator().manual_seed(seed), 8,
                                  (0.2, 0.4), exclude_source_road=exclude)
            assert bool(((x[0] > 0) ^ (x[2] > 0))[out].all()), "each pasted pixel is one source pixel"
            runs[exclude] = (x, out, out & (x[0] > 0))       # red channel: a source road pixel
        (x0, out0, red0), (x1, out1, red1) = runs[False], runs[True]
        assert not red1.any(), "a source road pixel was pasted"
        red_without += int(red0.sum())
        # the same draws (the option takes no random number): the same negatives minus their road
        assert not (out1 & ~out0).any()
        kept = out0 & ~red0
        assert bool(kept.any()) and not (kept & ~out1).any() and torch.equal(x0[:, kept], x1[:, kept])
    assert red_without > 0, "without the option the sources' road is pasted too"


def test_road_paint_colours_under_any_illumination_and_nothing_else():
    for paint in (WHITE_PAINT, YELLOW_PAINT):
        for k in (0.65, 1.0, 1.2):
            assert looks_like_road_paint(torch.tensor(paint) * k)
    assert not looks_like_road_paint(torch.tensor(WHITE_PAINT) * 0.4), "dark grey (asphalt) is not paint"
    for colour in ((0.2, 0.4, 0.8), (0.8, 0.2, 0.2), (0.3, 0.6, 0.3), (0.9, 0.5, 0.1), (0.0, 0.0, 0.0)):
        assert not looks_like_road_paint(torch.tensor(colour)), colour
    # the rendered markings of synthroad frames (road pixels far brighter than their road) are paint
    hits = total = 0
    for seed in range(4):
        frame = render_frame(seed, size=(128, 256))
        x = frame.image.astype(np.float32) / 255.0
        road = frame.train_ids == ROAD_TRAIN_ID
        lum = x.mean(2)
        marking = road & (lum > np.median(lum[road]) + 0.2)
        total += int(marking.sum())
        hits += sum(looks_like_road_paint(torch.from_numpy(px)) for px in x[marking])
    assert total > 100 and hits > 0.8 * total, (hits, total)


def test_avoid_road_paint_redraws_paint_coloured_negatives():
    img, lab = _road_bottom_frame()
    white = np.empty((64, 128, 3), np.uint8)
    white[:] = np.round(np.array(WHITE_PAINT) * 255).astype(np.uint8)
    paint_sources = [(white, np.full((64, 128), 2, np.uint8))] * 3   # not road in their frame, paint-coloured
    paint_like = {False: 0, True: 0}
    for avoid in (False, True):
        for seed in range(30):   # one negative per crop: its pixels' mean is its colour
            for colour_fraction in (0.0, 1.0):
                x, y = _as_tensors(img, lab)
                out = paste_negatives(x, y, paint_sources, torch.Generator().manual_seed(seed), 1, (0.2, 0.3),
                                      colour_fraction=colour_fraction, avoid_road_paint=avoid)
                if out.any():
                    paint_like[avoid] += looks_like_road_paint(x[:, out].mean(1))
    assert paint_like[False] >= 5, "the test's sources give paint-coloured negatives without the option"
    assert paint_like[True] == 0


def test_contact_shadow_darkens_only_the_road_at_the_base():
    img, lab = _road_bottom_frame()
    x, y = _as_tensors(img, lab)
    road = y == ROAD_TRAIN_ID
    contact_shadow(x, road, 41, 64, 20, 30, torch.Generator().manual_seed(0))
    darker = (x < 128 / 255.0 - 1e-6).all(0)
    assert darker.any() and not (darker & ~road).any(), "only road pixels darken"
    assert not (x > 128 / 255.0 + 1e-6).any()
    rows, cols = darker.nonzero(as_tuple=True)
    # half-height <= 0.2 * 20 px, half-width <= 0.8 * 30 px around (41, 64)
    assert int(rows.min()) >= 41 - 4 and int(rows.max()) <= 41 + 4
    assert int(cols.min()) >= 64 - 24 and int(cols.max()) <= 64 + 24
    assert float(x[0, 41, 64]) == float(x[0].min()), "darkest at the base centre"


def test_negatives_with_shadow_change_road_pixels_around_them_only():
    img, lab = _road_bottom_frame()
    for seed in range(4):
        runs = {}
        for shadow in (False, True):
            x, y = _as_tensors(img, lab)
            runs[shadow] = (paste_negatives(x, y, _sources(), torch.Generator().manual_seed(seed), 1, (0.2, 0.3),
                                            shadow=shadow), x)
        (out0, x0), (out1, x1) = runs[False], runs[True]
        assert torch.equal(out0, out1) and torch.equal(x0[:, out0], x1[:, out1]), "the shadow draws come after"
        shaded = (x1 != x0).any(0) & ~out1
        assert shaded.any(), "a shadow beside the negatives"
        assert bool((y[shaded] == ROAD_TRAIN_ID).all()) and bool((x1[:, shaded] < x0[:, shaded]).all())


def test_colour_field_is_one_shaded_colour():
    f = colour_field(40, 30, torch.Generator().manual_seed(7))
    assert f.shape == (3, 40, 30) and float(f.min()) >= 0 and float(f.max()) <= 1
    # one hue: the channels' ratios barely vary over the field (shading and noise scale all three)
    chroma = f / f.sum(0, keepdim=True).clamp(min=1e-6)
    assert float(chroma.std(dim=(1, 2)).max()) < 0.05
    assert float(f.std()) > 0, "shaded, not flat"
    other = colour_field(40, 30, torch.Generator().manual_seed(8))
    assert not torch.allclose(f, other)


def test_polygon_mask_fills_most_of_its_box():
    m = polygon_mask(40, 60, torch.Generator().manual_seed(3))
    assert m.shape == (40, 60)
    assert 0.3 < m.mean() < 1.0
    assert m[20].any() and m[:, 30].any()


def test_uniform_cross_entropy_by_hand():
    k = 19
    out = torch.zeros(1, 4, 4, dtype=torch.bool)
    out[0, 1:3, 1:3] = True
    uniform = torch.zeros(1, k, 4, 4)
    assert float(uniform_cross_entropy(uniform, out)) == pytest.approx(math.log(k), abs=1e-6)
    confident = torch.zeros(1, k, 4, 4)
    confident[:, 3] = 10.0
    # -(1/K) sum_k log p_k with one logit 10 above the rest
    logz = math.log(math.exp(10.0) + k - 1)
    expect = -((10.0 - logz) + (k - 1) * (0.0 - logz)) / k
    assert float(uniform_cross_entropy(confident, out)) == pytest.approx(expect, rel=1e-5)
    assert float(uniform_cross_entropy(confident, torch.zeros_like(out))) == 0.0
    # only the outlier pixels count
    mixed = confident.clone()
    mixed[:, :, 1:3, 1:3] = 0.0
    assert float(uniform_cross_entropy(mixed, out)) == pytest.approx(math.log(k), abs=1e-6)


def test_ohem_cross_entropy_by_hand():
    # 6 pixels, 2 classes, target 0; logit of class 0 = l: p_true = sigmoid(l), ce = log(1 + exp(-l))
    l = torch.tensor([4.0, 3.0, 0.5, -1.0, 2.0, 0.0])
    logits = torch.stack([l, torch.zeros(6)])[None, :, None, :]     # (1, 2, 1, 6)
    target = torch.zeros(1, 1, 6, dtype=torch.long)
    target[0, 0, 4] = 255                                             # void: never counted
    ce = torch.log1p(torch.exp(-l))
    # threshold 0.7: p_true < 0.7 <=> l < log(0.7 / 0.3) = 0.847: pixels 2, 3, 5
    hard = float(ce[[2, 3, 5]].mean())
    assert float(ohem_cross_entropy(logits, target, 0.7, 0.0)) == pytest.approx(hard, rel=1e-6)
    # at least 4 of the 5 labelled pixels (ceil(0.7 * 5)): the 4 hardest are 3, 5, 2, 1
    assert float(ohem_cross_entropy(logits, target, 0.7, 0.7)) == pytest.approx(float(ce[[1, 2, 3, 5]].mean()),
                                                                                  rel=1e-6)
    # threshold 1: every labelled pixel, the plain mean
    plain = float(torch.nn.functional.cross_entropy(logits, target, ignore_index=255))
    assert float(ohem_cross_entropy(logits, target, 1.0, 0.0)) == pytest.approx(plain, rel=1e-6)
    assert float(ohem_cross_entropy(logits, torch.full_like(target, 255), 0.7, 0.1)) == 0.0
    # the gradient reaches the kept pixels only
    g = logits.clone().requires_grad_(True)
    ohem_cross_entropy(g, target, 0.7, 0.0).backward()
    assert bool((g.grad[0, :, 0, [0, 1, 4]] == 0).all()) and bool((g.grad[0, 0, 0, [2, 3, 5]] < 0).all())


def _painted_road_frame(h=64, w=128):
    """Sky (10) above row 24 painted white; road (0) below, asphalt grey, with a white stripe (rows 40-47,
    cols 20-59) and a yellow one (rows 50-55, cols 70-109) in the paint colours at 0.9 illumination."""
    lab = np.full((h, w), 10, np.uint8)
    lab[24:] = ROAD_TRAIN_ID
    img = np.empty((h, w, 3), np.float32)
    img[:] = 0.3
    img[:24] = WHITE_PAINT
    paint = np.zeros((h, w), bool)
    img[40:48, 20:60] = np.array(WHITE_PAINT) * 0.9
    img[50:56, 70:110] = np.array(YELLOW_PAINT) * 0.9
    paint[40:48, 20:60] = paint[50:56, 70:110] = True
    return np.round(img * 255).astype(np.uint8), lab, paint


def test_road_paint_mask_is_the_painted_road_only():
    img, lab, paint = _painted_road_frame()
    assert np.array_equal(road_paint_mask(img, lab), paint)   # the white sky is not road
    light = img.copy()
    light[24:] = np.round(np.array(WHITE_PAINT) * 0.7 * 255).astype(np.uint8)   # a light grey road, no paint
    assert not road_paint_mask(light, lab).any()
    assert not road_paint_mask(img, np.full_like(lab, 10)).any()


def test_weighted_cross_entropy_by_hand():
    logits = torch.randn(1, 3, 2, 4, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[[0, 1, 2, 255], [2, 2, 1, 0]]])
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")[0]
    ones = torch.ones(1, 2, 4)
    plain = float(torch.nn.functional.cross_entropy(logits, target, ignore_index=255))
    assert float(weighted_cross_entropy(logits, target, ones)) == pytest.approx(plain, rel=1e-6)
    w = ones.clone()
    w[0, 1, :2] = 5.0
    w[0, 0, 3] = 100.0                      # void: its weight never counts
    labelled = target[0] != 255
    expect = float((ce * w[0] * labelled).sum() / (w[0] * labelled).sum())
    assert float(weighted_cross_entropy(logits, target, w)) == pytest.approx(expect, rel=1e-6)
    assert float(weighted_cross_entropy(logits, torch.full_like(target, 255), w)) == 0.0


class _PaintedRoads:
    def __init__(self):
        self.frame = _painted_road_frame()[:2]

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.frame


def test_task_weights_road_paint_and_keeps_it_road(tmp_path):
    env = DistEnv(device=torch.device("cpu"))
    _, lab, paint = _painted_road_frame()
    cfg = dict(batch_size=2, scale_range=(1.0, 1.0), hflip=False, color_jitter=0.0)
    x, y, _, w = SegmenterTask(_cfg(tmp_path, road_paint_weight=4.0, **cfg), env, _PaintedRoads()).make_batch(0)
    assert torch.equal(y, torch.from_numpy(lab).long().expand(2, -1, -1)), "paint stays road in the labels"
    assert torch.equal(w, torch.where(torch.from_numpy(paint), 4.0, 1.0).expand(2, -1, -1))
    x1, y1, _, w1 = SegmenterTask(_cfg(tmp_path, **cfg), env, _PaintedRoads()).make_batch(0)
    assert torch.equal(x1, x) and torch.equal(y1, y) and bool((w1 == 1).all())
    model = ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large", num_classes=19))
    task = SegmenterTask(_cfg(tmp_path, road_paint_weight=4.0, **cfg), env, _PaintedRoads())
    with torch.no_grad():
        loss, _ = task.loss(model, (x, y, torch.zeros_like(y, dtype=torch.bool), w))
        logits, aux = model(x, with_aux=True)
    expect = weighted_cross_entropy(logits, y, w)
    if aux is not None:
        expect = expect + 0.5 * weighted_cross_entropy(aux, y, w)
    assert float(loss) == pytest.approx(float(expect), rel=1e-5)
    with pytest.raises(ValueError, match="road_paint_weight"):
        _cfg(tmp_path, road_paint_weight=4.0, ohem_threshold=0.7).validate()


def test_task_loss_uses_ohem_when_set(tmp_path):
    env = DistEnv(device=torch.device("cpu"))
    ds = ToyScenes(4)
    model = ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large", num_classes=19))
    plain = SegmenterTask(_cfg(tmp_path, batch_size=2), env, ds)
    ohem = SegmenterTask(_cfg(tmp_path, batch_size=2, ohem_threshold=1e-6, ohem_min_kept=0.1), env, ds)
    batch = plain.make_batch(0)
    with torch.no_grad():
        (l0, _), (l1, _) = plain.loss(model, batch), ohem.loss(model, batch)
        logits, aux = model(batch[0], with_aux=True)
    # an untrained model is unsure everywhere: the 10 % hardest pixels (min_kept) are the ones averaged
    expect = ohem_cross_entropy(logits, batch[1], 1e-6, 0.1)
    if aux is not None:
        expect = expect + 0.5 * ohem_cross_entropy(aux, batch[1], 1e-6, 0.1)
    assert float(l1) == pytest.approx(float(expect), rel=1e-5)
    assert float(l1) > float(l0) * 1.01


def test_task_batches_void_the_negatives_and_the_loss_has_its_term(tmp_path):
    env = DistEnv(device=torch.device("cpu"))
    ds = ToyScenes(4)
    cfg = _cfg(tmp_path, negatives_max=3, negative_size=(0.1, 0.3), batch_size=4)
    task = SegmenterTask(cfg, env, ds)
    x, y, out, w = task.make_batch(0)
    assert out.any() and bool((w == 1).all())
    assert bool((y[out] == 255).all())
    model = ClosedSetSegmenter(preset(cfg.preset, num_classes=cfg.num_classes))
    with torch.no_grad():
        loss, logs = task.loss(model, (x, y, out, w))
    assert set(logs) == {"ce", "negatives"}
    assert float(loss) == pytest.approx(float(logs["ce"]) + cfg.negative_weight * float(logs["negatives"]), rel=1e-5)
    plain = SegmenterTask(_cfg(tmp_path, negatives_max=0, batch_size=4), env, ds)
    x0, y0, out0, w0 = plain.make_batch(0)
    assert not out0.any()
    with torch.no_grad():
        loss0, logs0 = plain.loss(model, (x0, y0, out0, w0))
    assert logs0 == {}


def test_init_from_starts_at_the_given_weights_and_refuses_another_architecture(tmp_path):
    torch.manual_seed(7)
    start = ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large", num_classes=19))
    path = save_segmenter(start, tmp_path / "start.safetensors")
    # lr ~ 0: the run's result is its starting point
    res = train_segmenter(_cfg(tmp_path, steps=1, lr=1e-12, init_from=str(path)), dataset=ToyScenes(2))
    got = dict(load_segmenter(res.segmenter_path).net.named_parameters())
    want = dict(start.net.named_parameters())   # parameters: BatchNorm statistics move in training mode
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-5
    other = save_segmenter(ClosedSetSegmenter(preset("fpn_resnet18", num_classes=19)), tmp_path / "fpn.safetensors")
    with pytest.raises(ValueError, match="fpn.safetensors"):
        train_segmenter(_cfg(tmp_path, out_dir=str(tmp_path / "run2"), steps=1, init_from=str(other)),
                        dataset=ToyScenes(2))


def test_outlier_exposure_fine_tuning_lowers_the_negatives_term(tmp_path):
    """A trained toy segmenter fine-tuned with negatives (``init_from``): the entropy-maximisation
    term falls from confident (well above log K) towards log K, its minimum, while the closed-set
    cross-entropy stays low."""
    ds = ToyScenes(4)
    plain = train_segmenter(_cfg(tmp_path, out_dir=str(tmp_path / "plain"), steps=40, lr=5e-3), dataset=ds)
    res = train_segmenter(_cfg(tmp_path, out_dir=str(tmp_path / "oe"), steps=30, lr=2e-3, log_every=1,
                               negatives_max=3, negative_size=(0.15, 0.4), init_from=str(plain.segmenter_path)),
                          dataset=ds)
    rows = list(csv.DictReader(open(res.log_path)))
    extra = [dict(kv.split("=") for kv in r["extra"].split()) for r in rows]
    neg = np.array([float(e["negatives"]) for e in extra])
    ce = np.array([float(e["ce"]) for e in extra])
    has = neg > 0                                  # steps whose batch drew at least one negative
    assert has.sum() >= 20
    first, last = neg[has][:5].mean(), neg[has][-10:].mean()
    assert first > math.log(19) + 1.0, "the trained model starts confident on the negatives"
    assert last < first - 0.5 * (first - math.log(19))
    assert neg[has].min() >= math.log(19) - 1e-4     # the uniform distribution is the minimum
    assert ce[-10:].mean() < 1.0


def _saturation(f: torch.Tensor) -> float:
    mean = f.mean(dim=(1, 2))
    return float((mean.max() - mean.min()) / mean.max().clamp(min=1e-6))


def test_colour_field_saturation_range():
    """Greys (saturation 0) only when asked for; the default keeps colours no class has."""
    greys = [colour_field(20, 20, torch.Generator().manual_seed(s), (0.0, 0.0)) for s in range(20)]
    assert max(_saturation(f) for f in greys) < 0.02, "saturation 0: the three channels are equal"
    default = [colour_field(20, 20, torch.Generator().manual_seed(s)) for s in range(20)]
    assert min(_saturation(f) for f in default) > 0.15
    vivid = [colour_field(20, 20, torch.Generator().manual_seed(s), (0.9, 1.0)) for s in range(20)]
    assert min(_saturation(f) for f in vivid) > 0.8


def test_colour_field_value_range():
    """Near-black fields only when asked for; the default stays as bright as before (0.15-0.95)."""
    def brightest(f):   # HSV value of the base colour: the field's brightest channel, shading aside
        return float(f.mean(dim=(1, 2)).max())

    dark = [colour_field(20, 20, torch.Generator().manual_seed(s), (0.0, 1.0), (0.02, 0.05)) for s in range(20)]
    assert max(brightest(f) for f in dark) < 0.1
    default = [colour_field(20, 20, torch.Generator().manual_seed(s)) for s in range(20)]
    assert min(brightest(f) for f in default) > 0.1
    same = [colour_field(20, 20, torch.Generator().manual_seed(s), value=(0.15, 0.95)) for s in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(same, default))   # the default is that range


def test_segmenter_config_refuses_bad_colour_value(tmp_path):
    _cfg(tmp_path, negative_colour_value=(0.02, 0.95)).validate()
    for bad in [(0.5, 0.2), (-0.1, 0.5), (0.2, 1.5), (0.3,)]:
        with pytest.raises(ValueError, match="negative_colour_value"):
            _cfg(tmp_path, negative_colour_value=bad).validate()


def test_paste_negatives_forwards_colour_saturation():
    img = torch.full((3, 48, 64), 0.4)
    lab = torch.zeros(48, 64, dtype=torch.long)
    sources = [(np.zeros((48, 64, 3), np.uint8), np.full((48, 64), 5))]
    out = paste_negatives(img, lab, sources, torch.Generator().manual_seed(2), 3, (0.3, 0.5),
                          colour_fraction=1.0, colour_saturation=(0.0, 0.0))
    assert out.any()
    px = img[:, out]
    assert float((px.max(0).values - px.min(0).values).max()) < 1e-5, "grey fields only"


def test_segmenter_config_refuses_ohem_min_kept_without_ohem(tmp_path):
    _cfg(tmp_path, ohem_threshold=0.7, ohem_min_kept=0.2).validate()
    _cfg(tmp_path).validate()                                  # the default share alone is fine
    with pytest.raises(ValueError, match="ohem_min_kept=0.2 has no effect without ohem_threshold > 0"):
        _cfg(tmp_path, ohem_min_kept=0.2).validate()


def test_segmenter_config_refuses_bad_colour_saturation(tmp_path):
    _cfg(tmp_path, negative_colour_saturation=(0.0, 1.0)).validate()
    for bad in [(0.5, 0.2), (-0.1, 0.5), (0.2, 1.5), (0.3,)]:
        with pytest.raises(ValueError, match="negative_colour_saturation"):
            _cfg(tmp_path, negative_colour_saturation=bad).validate()


def _box_aspect(out: torch.Tensor) -> float:
    rows, cols = out.nonzero(as_tuple=True)
    return (int(cols.max()) - int(cols.min()) + 1) / (int(rows.max()) - int(rows.min()) + 1)


@pytest.mark.parametrize("aspect, lo, hi", [((4.0, 4.0), 3.0, 5.0), ((0.5, 0.5), 0.3, 0.7),
                                            (None, 0.4, 2.5)])
def test_paste_negatives_aspect_range(aspect, lo, hi):
    """One negative per crop: its box is ``aspect`` times as wide as tall (flat debris at 4); the default
    (None here) keeps the old 0.5..2."""
    kwargs = {} if aspect is None else {"aspect_range": aspect}
    ratios, sources = [], [(np.zeros((48, 64, 3), np.uint8), np.full((48, 64), 5))]
    for seed in range(8):
        img = torch.full((3, 200, 400), 0.4)
        lab = torch.full((200, 400), 5, dtype=torch.long)
        lab[100:180, 100:300] = ROAD_TRAIN_ID               # bases far enough from the edges: no clipping
        out = paste_negatives(img, lab, sources, torch.Generator().manual_seed(seed), 1, (0.1, 0.1),
                              colour_fraction=1.0, **kwargs)
        assert out.any()
        ratios.append(_box_aspect(out))
    median = float(np.median(ratios))
    assert lo <= median <= hi, ratios


def test_segmenter_config_refuses_bad_negative_aspect(tmp_path):
    _cfg(tmp_path, negative_aspect=(1.0, 6.0)).validate()
    for bad in [(2.0, 1.0), (0.0, 2.0), (1.0,)]:
        with pytest.raises(ValueError, match="negative_aspect"):
            _cfg(tmp_path, negative_aspect=bad).validate()


def test_road_coloured_negatives_take_the_road_colour_under_another_light():
    """road_colour_fraction 1: every negative is a shaded field of the crop's mean road colour (times a
    gain in ROAD_COLOUR_GAIN, small tint), needs no usable source, and leaves a recipe without it
    drawing exactly what it drew before (same generator, same negatives)."""
    from csl_ros.training.negatives import ROAD_COLOUR_GAIN, ROAD_COLOUR_TINT

    img, lab = _road_bottom_frame()
    img[40:] = (60, 110, 160)                        # a bluish road: its hue must carry over
    x, y = _as_tensors(img, lab)
    road_sources = [(s[0], np.full_like(s[1], ROAD_TRAIN_ID)) for s in _sources()]   # unusable sources
    out = paste_negatives(x, y, road_sources, torch.Generator().manual_seed(3), 4, (0.1, 0.3),
                          road_colour_fraction=1.0)
    assert out.any()
    mean = x[:, out].mean(1)
    road = torch.tensor((60, 110, 160)) / 255.0
    lo, hi = ROAD_COLOUR_GAIN
    # shading ramp (0.6-1.3) and noise (+-35 %) widen the gain's range; the channel order stays the road's
    assert (mean >= road * lo * 0.6 * 0.65 - ROAD_COLOUR_TINT).all() and (mean <= road * hi * 1.3 * 1.35 + ROAD_COLOUR_TINT).all()
    assert mean[0] < mean[1] < mean[2]
    a, b = _as_tensors(img, lab)
    c, d = _as_tensors(img, lab)
    sources = _sources()
    m0 = paste_negatives(a, b, sources, torch.Generator().manual_seed(5), 3, (0.1, 0.3), colour_fraction=0.5)
    m1 = paste_negatives(c, d, sources, torch.Generator().manual_seed(5), 3, (0.1, 0.3), colour_fraction=0.5,
                         road_colour_fraction=0.0)
    assert torch.equal(m0, m1) and torch.equal(a, c)


def test_segmenter_task_forwards_the_road_colour_fraction(tmp_path, monkeypatch):
    import csl_ros.training.segmenter as seg_mod

    seen = []

    def fake_paste(img, lab, sources, gen, count, size_range, *, road_colour_fraction, **_):
        seen.append(road_colour_fraction)
        return torch.zeros(lab.shape, dtype=torch.bool)

    monkeypatch.setattr(seg_mod, "paste_negatives", fake_paste)
    for road in (0.0, 0.3):
        task = SegmenterTask(_cfg(tmp_path, negatives_max=3, negative_road_colour_fraction=road, batch_size=2),
                             DistEnv(device=torch.device("cpu")), ToyScenes(4))
        task.make_batch(0)
        assert seen and set(seen) == {road}
        seen.clear()
