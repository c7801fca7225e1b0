"""Teachers: score functions vs hand-computed values, SML post-processing, calibration, statistics."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csl_ros.teachers.calibration import Calibration, fit_calibration
from csl_ros.teachers.scores import (boundary_suppression, compute_score, dilated_smoothing,
                                     energy_score, entropy_score, find_boundaries, maxlogit_score,
                                     msp_score, sml_score, standardized_max_logit)
from csl_ros.teachers.stats import StatsAccumulator, TeacherStats, file_sha256

torch.set_num_threads(2)
E2 = math.exp(2.0)


def _pixels(*cols):
    """Logits B=1, K×1×W from per-pixel logit vectors."""
    return torch.tensor(cols, dtype=torch.float32).T.reshape(1, len(cols[0]), 1, len(cols))


# ---- score functions on tiny logits (two pixels: z=[2,0,0] and z=[1,1,1]) --------------------------
Z = _pixels([2.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def test_msp_hand_values():
    # 1 − e²/(e²+2) = 2/(e²+2);  uniform: 1 − 1/3
    np.testing.assert_allclose(msp_score(Z).flatten(), [2 / (E2 + 2), 2 / 3], rtol=1e-6)


def test_maxlogit_hand_values():
    np.testing.assert_allclose(maxlogit_score(Z).flatten(), [-2.0, -1.0])


def test_entropy_hand_values():
    s = E2 + 2  # H = log S − Σ p z = log S − 2e²/S; uniform: log 3; both / log 3
    expected = [(math.log(s) - 2 * E2 / s) / math.log(3), 1.0]
    np.testing.assert_allclose(entropy_score(Z).flatten(), expected, rtol=1e-6)
    assert entropy_score(Z).flatten()[0] == pytest.approx(0.60583, abs=1e-5)


def test_energy_hand_values():
    # −logsumexp: −log(e²+2) and −log(3e) = −(1 + log 3)
    np.testing.assert_allclose(energy_score(Z).flatten(), [-math.log(E2 + 2), -(1 + math.log(3))],
                               rtol=1e-6)


def test_scores_are_higher_for_the_more_uncertain_pixel_and_shaped_b1hw():
    for name in ("msp", "maxlogit", "entropy", "energy"):
        s = compute_score(name, Z)
        assert s.shape == (1, 1, 1, 2)
        assert s[0, 0, 0, 1] > s[0, 0, 0, 0], name


def test_score_functions_reject_bad_logits():
    with pytest.raises(ValueError, match="B×K×H×W"):
        msp_score(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        maxlogit_score(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="unknown score function"):
        compute_score("softmax", Z)
    with pytest.raises(ValueError, match="statistics"):
        compute_score("sml", Z)


def test_sml_standardisation_hand_values():
    z = _pixels([2.0, 0.0, -1.0], [0.0, 3.0, 1.0])  # argmax 0 (ml 2), argmax 1 (ml 3)
    s, pred = standardized_max_logit(z, class_mean=[1.0, 0.0, 5.0], class_std=[0.5, 2.0, 1.0])
    np.testing.assert_allclose(s.flatten(), [-(2 - 1) / 0.5, -(3 - 0) / 2.0])
    assert pred.flatten().tolist() == [0, 1]
    with pytest.raises(ValueError, match="K=3"):
        standardized_max_logit(z, [0.0, 0.0], [1.0, 1.0])


# ---- boundary suppression and dilated smoothing -----------------------------------------------------
def test_find_boundaries_two_halves():
    pred = torch.tensor([[0, 0, 1, 1]] * 3).unsqueeze(0)
    b = find_boundaries(pred)[0, 0]
    assert b.tolist() == [[0, 1, 1, 0]] * 3


def test_boundary_suppression_width1_by_hand():
    pred = torch.tensor([[0, 0, 1, 1]] * 3).unsqueeze(0)
    x = torch.arange(1, 13, dtype=torch.float32).reshape(1, 1, 3, 4)
    out = boundary_suppression(x, pred, width=1, iterations=1)[0, 0]
    # boundary columns 1, 2 take the mean of the non-boundary column of their 3×3 window,
    # with the top/bottom rows replicated.
    expected = [[1, 7 / 3, 16 / 3, 4], [5, 5, 8, 8], [9, 23 / 3, 32 / 3, 12]]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_boundary_suppression_width2_two_iterations_by_hand():
    pred = torch.tensor([[0] * 4 + [1] * 4] * 3).unsqueeze(0)
    r = torch.arange(3, dtype=torch.float32)[:, None]
    c = torch.arange(8, dtype=torch.float32)[None, :]
    x = (10 * c + r).reshape(1, 1, 3, 8)
    out = boundary_suppression(x, pred, width=2, iterations=2)[0, 0]
    # iteration 0: boundary cols 3,4 expanded by radius 1 → cols 2..5; cols 3,4 have no non-boundary
    # neighbour and keep their values; col 2 ← col 1 window mean, col 5 ← col 6 window mean.
    a = np.array([1 / 3, 1, 5 / 3])
    # iteration 1 (radius 0): col 3 ← mean of the updated col 2, col 4 ← updated col 5.
    b = np.array([(1 / 3 + 1 / 3 + 1) / 3, 1, (1 + 5 / 3 + 5 / 3) / 3])
    rows = np.arange(3)
    expected = np.stack([rows, 10 + rows, 10 + a, 10 + b, 60 + b, 60 + a, 60 + rows, 70 + rows], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def _naive_boundary_suppression(x, pred, width, iterations):
    """Loop oracle written from the spec text, independent of the torch implementation."""
    h, w = pred.shape
    bnd = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            cross = [pred[a, b] for a, b in ((i, j), (i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                     if 0 <= a < h and 0 <= b < w]
            square = [pred[a, b] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                      if 0 <= a < h and 0 <= b < w]
            bnd[i, j] = max(cross) != min(square)
    pts = np.argwhere(bnd)
    out = x.astype(np.float64).copy()
    step = width // iterations
    for it in range(iterations):
        radius = 0 if it == iterations - 1 else width - step * it - 1
        expanded = np.zeros((h, w), bool)
        for i in range(h):
            for j in range(w):
                expanded[i, j] = len(pts) > 0 and (np.abs(pts - [i, j]).sum(1) <= radius).any()
        prev = out.copy()
        for i in range(h):
            for j in range(w):
                if not expanded[i, j]:
                    continue
                vals = [prev[min(max(a, 0), h - 1), min(max(b, 0), w - 1)]
                        for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                        if not expanded[min(max(a, 0), h - 1), min(max(b, 0), w - 1)]]
                if vals:
                    out[i, j] = sum(vals) / len(vals)
    return out


def test_boundary_suppression_default_matches_loop_oracle():
    g = torch.Generator().manual_seed(0)
    pred = torch.zeros(14, 17, dtype=torch.long)
    pred[:, 9:] = 1
    pred[3:9, 2:7] = 2
    pred[10:, 12:15] = 3
    x = torch.randn(1, 1, 14, 17, generator=g)
    ours = boundary_suppression(x, pred[None], width=4, iterations=4)[0, 0].numpy()
    np.testing.assert_allclose(ours, _naive_boundary_suppression(x[0, 0].numpy(), pred.numpy(), 4, 4),
                               rtol=1e-5, atol=1e-6)


def test_boundary_suppression_checks_arguments():
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="multiple"):
        boundary_suppression(torch.zeros(1, 1, 4, 4), pred, width=3, iterations=2)
    with pytest.raises(ValueError, match="does not match"):
        boundary_suppression(torch.zeros(1, 1, 5, 4), pred)


def test_dilated_smoothing_impulse_response_and_constant():
    x = torch.zeros(1, 1, 41, 43)
    x[0, 0, 20, 21] = 1.0
    y = dilated_smoothing(x)[0, 0]
    norm = (1 + 2 * (math.exp(-0.5) + math.exp(-2) + math.exp(-4.5))) ** 2  # Σ of the 7×7 Gaussian
    expected = torch.zeros(41, 43)
    for i in range(-3, 4):
        for j in range(-3, 4):
            expected[20 + 6 * i, 21 + 6 * j] = math.exp(-(i * i + j * j) / 2) / norm
    np.testing.assert_allclose(y, expected, atol=1e-7)
    assert y[20, 21] == pytest.approx(0.159241, abs=1e-6)
    const = torch.full((2, 1, 5, 6), 3.25)  # replication padding keeps constants, even tiny maps
    np.testing.assert_allclose(dilated_smoothing(const), const, rtol=1e-6)


def test_sml_score_single_class_is_standardised_constant():
    z = torch.zeros(1, 3, 9, 11)
    z[:, 1] = 4.0  # every pixel predicts class 1 with max logit 4: no boundaries
    s = sml_score(z, class_mean=[0.0, 3.0, 0.0], class_std=[1.0, 0.5, 1.0])
    np.testing.assert_allclose(s, torch.full((1, 1, 9, 11), -(4 - 3) / 0.5), rtol=1e-6)


# ---- calibration ------------------------------------------------------------------------------------
QUANT = {0.01: -3.0, 0.5: 1.0, 0.99: 5.0}


def test_logistic_calibration_anchors_and_strict_monotonicity():
    cal = fit_calibration("logistic", QUANT)
    d = cal(torch.tensor([1.0, 5.0, -10.0, 8.0, 8.001]))
    assert d[0] == pytest.approx(0.01, rel=1e-5) and d[1] == pytest.approx(0.5)
    fine = cal(torch.linspace(-50, 50, 10001))
    assert float(fine.min()) >= 0 and float(fine.max()) <= 1 and bool((fine[1:] >= fine[:-1]).all())
    # strictly increasing at practical resolution up to ~q99 + 3·(q99 − q50) = 17
    coarse = cal(torch.arange(-20.0, 17.0, 0.25))
    assert bool((coarse[1:] > coarse[:-1]).all())


def test_quantile_linear_and_identity_calibration():
    cal = fit_calibration("quantile_linear", QUANT)
    np.testing.assert_allclose(cal(torch.tensor([-5.0, -3.0, 1.0, 5.0, 9.0])), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(Calibration("identity")(torch.tensor([-0.5, 0.3, 1.5])), [0, 0.3, 1])
    with pytest.raises(ValueError, match="degenerate"):
        fit_calibration("logistic", {0.01: 1.0, 0.5: 1.0, 0.99: 1.0})
    with pytest.raises(ValueError, match="unknown calibration"):
        Calibration("minmax")


def test_calibration_is_global_but_per_image_minmax_is_not():
    cal = fit_calibration("logistic", QUANT)
    img_a = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])
    img_b = torch.tensor([[[[2.0, 30.0], [-7.0, 2.0]]]])
    da, db = cal(img_a), cal(img_b)
    assert da[0, 0, 0, 1] == db[0, 0, 0, 0] == db[0, 0, 1, 1]  # raw 2.0 → same D in both images
    np.testing.assert_array_equal(cal(torch.cat([img_a, img_b])), torch.cat([da, db]))
    ablation = Calibration("per_image_minmax")
    assert not ablation.is_global and cal.is_global
    ma, mb = ablation(img_a), ablation(img_b)
    assert ma[0, 0, 0, 1] != mb[0, 0, 0, 0]


# ---- statistics -------------------------------------------------------------------------------------
def _toy_logits(classes, max_logits, k=3):
    """One image 1×K×1×N whose pixel i predicts classes[i] with max logit max_logits[i]."""
    n = len(classes)
    z = torch.zeros(1, k, 1, n)
    for i, (c, m) in enumerate(zip(classes, max_logits)):
        z[0, :, 0, i] = m - 5.0
        z[0, c, 0, i] = m
    return z


def test_stats_class_mean_and_unbiased_variance_on_toy_set():
    acc = StatsAccumulator(4, reservoir_size=1000, seed=0)
    acc.update_logits(_toy_logits([0, 0, 0, 1, 1, 2], [1, 2, 3, 10, 14, 5], k=4))
    acc.update_logits(_toy_logits([0, 2, 2], [4, 7, 9], k=4))
    st = acc.finalize()
    # class 0: {1,2,3,4} → μ 2.5, σ² 5/3; class 1: {10,14} → 12, 8; class 2: {5,7,9} → 7, 4
    np.testing.assert_allclose(st.class_mean[:3], [2.5, 12.0, 7.0])
    np.testing.assert_allclose(st.class_var[:3], [5 / 3, 8.0, 4.0])
    assert st.class_count == [4, 2, 3, 0]
    # class 3 is never predicted: pooled statistics of all 9 pixels, and it is reported
    allv = np.array([1, 2, 3, 10, 14, 5, 4, 7, 9], float)
    assert st.fallback_classes == [3]
    assert st.class_mean[3] == pytest.approx(allv.mean()) and st.class_var[3] == pytest.approx(allv.var(ddof=1))


def test_stats_streaming_is_stable_for_large_offsets():
    g = torch.Generator().manual_seed(1)
    acc = StatsAccumulator(2, reservoir_size=500, seed=0)
    values = []
    for _ in range(5):
        ml = 1e4 + torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64).float()
        values.append(ml.double().flatten())
        z = torch.cat([ml, ml - 5.0], dim=1)
        acc.update_logits(z)
    mean, var, count, _ = acc.class_statistics()
    allv = torch.cat([v.float().double() for v in values])
    assert float(mean[0]) == pytest.approx(float(allv.mean()), rel=1e-12)
    assert float(var[0]) == pytest.approx(float(allv.var()), rel=1e-6)
    assert int(count[0]) == 320


def test_stats_quantiles_match_direct_scores_when_the_reservoir_holds_every_pixel(tmp_path):
    g = torch.Generator().manual_seed(2)
    images = [torch.randn(2, 5, 12, 16, generator=g) * 3 for _ in range(3)]
    acc = StatsAccumulator(5, reservoir_size=10_000, seed=0)
    for z in images:
        acc.update_logits(z)
    st = acc.finalize()
    assert st.fit_info["sampled_pixels"] == st.fit_info["pixels"] == 3 * 2 * 12 * 16
    for name in ("msp", "maxlogit", "entropy", "energy", "sml"):
        direct = torch.cat([compute_score(name, z, st).flatten() for z in images]).double().numpy()
        got = [st.quantiles[name][p] for p in (0.01, 0.5, 0.99)]
        np.testing.assert_allclose(got, np.quantile(direct, [0.01, 0.5, 0.99]), rtol=1e-4, atol=1e-5)
    # defaults: probabilities keep identity, unbounded scores get the logistic map
    assert st.calibration["msp"].method == "identity" and st.calibration["sml"].method == "logistic"
    d = st.calibration["sml"](torch.tensor([st.quantiles["sml"][0.5], st.quantiles["sml"][0.99]]))
    np.testing.assert_allclose(d, [0.01, 0.5], rtol=1e-4)
    # JSON round trip with its digest
    path = tmp_path / "t.stats.json"
    digest = st.save(path)
    assert digest == file_sha256(path)
    back = TeacherStats.load(path, expected_sha256=digest)
    assert back.class_mean == st.class_mean and back.quantiles == st.quantiles
    assert back.calibration["sml"] == st.calibration["sml"]


def test_stats_reservoir_is_bounded_and_deterministic():
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(1, 4, 20, 20, generator=g) for _ in range(4)]

    def fit(seed):
        acc = StatsAccumulator(4, reservoir_size=300, seed=seed)
        for z in images:
            acc.update_logits(z)
        return acc.finalize()

    a, b, c = fit(0), fit(0), fit(1)
    assert a.fit_info["sampled_pixels"] == 300 and a.fit_info["pixels"] == 1600
    assert a.quantiles == b.quantiles and a.quantiles != c.quantiles
    assert a.class_mean == c.class_mean  # class statistics use every pixel, not the sample


def test_stats_file_refuses_tampering_and_bad_content(tmp_path):
    acc = StatsAccumulator(3, reservoir_size=100)
    acc.update_logits(torch.randn(1, 3, 10, 10))
    path = tmp_path / "s.stats.json"
    digest = acc.finalize().save(path)
    text = path.read_text().replace('"num_classes": 3', '"num_classes": 4')
    path.write_text(text)
    with pytest.raises(ValueError, match="s.stats.json.*SHA-256"):
        TeacherStats.load(path, expected_sha256=digest)
    with pytest.raises(ValueError, match="s.stats.json.*3 means"):
        TeacherStats.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="s.stats.json"):
        TeacherStats.load(path)


@pytest.mark.parametrize("shape,width,iterations", [((1, 1, 1, 9), 4, 4), ((2, 3, 17, 23), 4, 4),
                                                    ((1, 2, 40, 33), 2, 2), ((1, 1, 31, 45), 6, 3),
                                                    ((1, 1, 12, 12), 0, 2), ((1, 1, 64, 96), 1, 1)])
def test_sml_postprocess_equals_pre_speedup_oracle(shape, width, iterations):
    """The vectorised boundary suppression and separable smoothing give today's oracle to 1e-5."""
    import sml_oracle

    g = torch.Generator().manual_seed(sum(shape) + width)
    b, c, h, w = shape
    for blocks in (2, 5):  # large regions and fragmented ones (many boundaries, thin classes)
        coarse = torch.randint(0, 7, (b, 1, -(-h // blocks), -(-w // blocks)), generator=g).float()
        pred = F.interpolate(coarse, scale_factor=blocks, mode="nearest")[:, 0, :h, :w].long()
        pred[:, ::7, ::5] = torch.randint(0, 7, pred[:, ::7, ::5].shape, generator=g)  # isolated pixels
        x = torch.randn(shape, generator=g) * 3
        np.testing.assert_array_equal(find_boundaries(pred), sml_oracle.find_boundaries(pred))
        ours = boundary_suppression(x, pred, width, iterations)
        ref = sml_oracle.boundary_suppression(x, pred, width, iterations)
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(dilated_smoothing(ours), sml_oracle.dilated_smoothing(ref), atol=1e-5, rtol=0)
