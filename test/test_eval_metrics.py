"""SMIYC metrics: hand-computed tiny cases, sklearn, and slow reference implementations.

The references below are written independently of csl_ros/eval/metrics.py, straight from the protocol
text (shared/reference/smiyc_metrics.md): the binned pixel curve with np.quantile / np.histogram /
argsort on concatenated per-frame entries, and the component metrics with scipy.ndimage.label and a
Python loop per component.
"""
import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from csl_ros.eval import metrics as M
from smiyc_oracle import component_siou_ppv

TAUS = np.linspace(0.25, 0.75, 11)


# ----------------------------------------------------------------------------------------------
# slow references
# ----------------------------------------------------------------------------------------------

def ref_binned_curve(frames, cast_float16=True):
    """Official binned protocol, literally: per-frame quantile bins, concatenation, sort, collapse."""
    thr_all, dtp_all, dfp_all, n_pos, n_neg = [], [], [], 0, 0
    for scores, labels in frames:
        s = scores.astype(np.float16) if cast_float16 else scores
        prob, gt = s[labels < 255], labels[labels < 255] == 1
        if prob.size == 0:
            continue
        pos, neg = prob[gt], prob[~gt]
        vmin, vmax = np.min(prob), np.max(prob)
        eps = max(float(vmax - vmin) * 0.01, 0.01)
        bins = [np.array([float(vmin) - eps, float(vmax) + eps])]
        if pos.size:
            bins.append(np.quantile(pos, np.linspace(0, 1, min(384, pos.size))))
        if neg.size:
            bins.append(np.quantile(neg, np.linspace(0, 1, min(384, neg.size))))
        bins = np.unique(np.concatenate(bins))
        h_pos, _ = np.histogram(pos, bins=bins)
        h_neg, edges = np.histogram(neg, bins=bins)
        thr_all.append(edges[::-1][1:])
        dtp_all.append(h_pos[::-1])
        dfp_all.append(h_neg[::-1])
        n_pos += pos.size
        n_neg += neg.size
    thr = np.concatenate(thr_all)
    # numpy 1.23.5's tie order (long double keys take the introsort it used for float64).
    order = np.argsort(thr.astype(np.longdouble))[::-1]
    thr = thr[order]
    tp = np.cumsum(np.concatenate(dtp_all)[order].astype(float))
    fp = np.cumsum(np.concatenate(dfp_all)[order].astype(float))
    keep = np.concatenate([[0], np.nonzero(thr[:-1] != thr[1:])[0], [len(thr) - 1]])
    tp, fp, thr = tp[keep], fp[keep], thr[keep]
    if tp[0] != 0 or fp[0] != 0:
        tp, fp, thr = np.r_[0, tp], np.r_[0, fp], np.r_[thr.max() + 1, thr]
    if tp[-1] != n_pos or fp[-1] != n_neg:
        tp, fp, thr = np.r_[tp, n_pos], np.r_[fp, n_neg], np.r_[thr, thr.max() - 1]
    tpr, fpr = tp / n_pos, fp / n_neg
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    ix = int(np.nanargmax(f1))
    i95 = int(np.searchsorted(tpr, 0.95))
    return dict(ap=float(np.sum(np.diff(tpr) * prec[1:])), ap_trapezoid=float(np.trapezoid(prec, tpr)),
                auroc=float(np.trapezoid(tpr, fpr)),
                fpr95=float(fpr[i95]), best_f1=float(f1[ix]),
                best_f1_threshold=float(thr[ix]))


def ref_components(scores, labels, thr, segsize, instsize):
    """Component metrics of one frame with a Python loop per component (test/smiyc_oracle.py)."""
    siou_gt, ppv = component_siou_ppv(scores, labels, thr, segsize, instsize)
    tp = np.array([np.sum(siou_gt >= t) for t in TAUS])
    fn = np.array([np.sum(siou_gt < t) for t in TAUS])
    fp = np.array([np.sum(ppv < t) for t in TAUS])
    return siou_gt, ppv, tp, fn, fp


def run_pixel(frames, protocol):
    acc = M.PixelAccumulator(protocol)
    for i, (s, l) in enumerate(frames):
        acc.update(s, l, f"f{i}")
    return acc.result()


def run_components(frames, thr, segsize=0, instsize=0):
    acc = M.ComponentAccumulator(thr, "obstacle", segsize=segsize, instsize=instsize)
    stats = [acc.update(s, l, f"f{i}") for i, (s, l) in enumerate(frames)]
    return acc.result(), stats


def blob_frame(rng, h=48, w=64, n_obj=3, void_rows=6):
    labels = np.zeros((h, w), np.uint8)
    labels[:void_rows] = 255
    for _ in range(n_obj):
        y, x = rng.integers(void_rows, h - 4), rng.integers(0, w - 4)
        hh, ww = rng.integers(1, 10), rng.integers(1, 12)
        labels[y:y + hh, x:x + ww] = 1
    scores = rng.random((h, w)) * 0.7 + (labels == 1) * rng.random((h, w)) * 0.6
    scores = ndimage.uniform_filter(scores, 3)
    return scores.astype(np.float32), labels


# ----------------------------------------------------------------------------------------------
# pixel level: hand-computed cases
# ----------------------------------------------------------------------------------------------

def tiny(pos_score, neg_score):
    labels = np.zeros((4, 4), np.uint8)
    labels[0] = 1                                   # 4 positives, 12 negatives
    scores = np.where(labels == 1, pos_score, neg_score).astype(np.float32)
    return scores, labels


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_perfect_scores(protocol):
    r = run_pixel([tiny(0.9, 0.1)], protocol)
    assert (r.ap, r.auroc, r.fpr95, r.best_f1) == (1.0, 1.0, 0.0, 1.0)
    if protocol == "exact":
        # A perfect split for the components (score > threshold): 0.9 > threshold >= 0.1 (in float16).
        assert np.float16(0.1) <= r.component_threshold < np.float16(0.9)
    else:
        # Official (HEAD 1c7804e): the best-F1 point's own threshold, the lower bin edge at the
        # positives' score; the benchmark binarises with score > threshold all the same.
        assert r.component_threshold == r.best_f1_threshold == float(np.float16(0.9))


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_inverted_scores(protocol):
    r = run_pixel([tiny(0.1, 0.9)], protocol)
    # Curve: nothing -> (tp 0, fp 12) -> (4, 12). AP = 1 * 4/16, AUROC 0, FPR95 1, F1 = 8/20.
    assert r.ap == pytest.approx(0.25)
    assert r.auroc == pytest.approx(0.0)
    assert r.fpr95 == 1.0
    assert r.best_f1 == pytest.approx(0.4)
    # Best F1 where everything is predicted: the threshold just below the positives' 0.1 (float16).
    assert r.best_f1_threshold == pytest.approx(0.1, abs=1e-3)
    assert r.best_f1_point_threshold == r.best_f1_threshold


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_all_tied_scores(protocol):
    r = run_pixel([tiny(0.5, 0.5)], protocol)
    assert r.ap == pytest.approx(0.25)            # one point: precision 4/16 at recall 1
    assert r.auroc == pytest.approx(0.5)
    assert r.fpr95 == 1.0
    assert r.best_f1 == pytest.approx(0.4)


def test_partial_ties_hand_computed():
    # positives 0.8, 0.8, 0.4, 0.2 ; negatives 0.8, 0.4 x3, 0.1 x8
    labels = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.uint8)
    scores = np.array([[.8, .8, .4, .2], [.8, .4, .4, .4], [.1] * 4, [.1] * 4], np.float32)
    r = run_pixel([(scores, labels)], "exact")
    # thresholds 0.8: tp2 fp1 (P 2/3, R .5); 0.4: tp3 fp4 (P 3/7, R .75); 0.2: tp4 fp4; 0.1: tp4 fp12
    assert r.ap == pytest.approx(0.5 * 2 / 3 + 0.25 * 3 / 7 + 0.25 * 4 / 8)
    assert r.fpr95 == pytest.approx(4 / 12)
    assert r.best_f1 == pytest.approx(8 / 12)      # at 0.2: 2*4 / (8 + 4 + 0)
    assert r.best_f1_threshold == np.float16(0.2)
    s = scores[labels < 255].astype(np.float16).astype(float)
    y = labels[labels < 255] == 1
    assert r.ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_random_exact_matches_sklearn_and_binned_matches_reference():
    rng = np.random.default_rng(3)
    frames = [blob_frame(rng) for _ in range(8)]
    frames.append((rng.random((48, 64)).astype(np.float32), np.zeros((48, 64), np.uint8)))  # no anomaly
    exact = run_pixel(frames, "exact")
    s = np.concatenate([f[0][f[1] < 255].astype(np.float16).astype(float) for f in frames])
    y = np.concatenate([f[1][f[1] < 255] == 1 for f in frames])
    assert exact.ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert exact.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert exact.n_pos == y.sum() and exact.n_neg == (~y).sum()
    binned = run_pixel(frames, "official")
    ref = ref_binned_curve(frames)
    for key in ("ap", "ap_trapezoid", "auroc", "fpr95", "best_f1", "best_f1_threshold"):
        assert getattr(binned, key) == pytest.approx(ref[key], abs=1e-12), key
    # Binned and exact differ by the binning only.
    assert abs(binned.ap - exact.ap) < 0.02 and abs(binned.auroc - exact.auroc) < 0.01


def test_binned_matches_reference_on_many_frames_with_float16_ties():
    rng = np.random.default_rng(11)
    frames = []
    for k in range(12):
        s, l = blob_frame(rng, h=64, w=96, n_obj=4)
        if k % 3 == 0:
            s = np.round(s * 20) / 20           # heavy ties, shared thresholds across frames
        frames.append((s, l))
    binned = run_pixel(frames, "official")
    ref = ref_binned_curve(frames)
    for key in ("ap", "auroc", "fpr95", "best_f1", "best_f1_threshold"):
        assert getattr(binned, key) == pytest.approx(ref[key], abs=1e-12), key


def test_quantiles_are_numpys_bit_for_bit():
    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32):
        for n in (1, 2, 7, 383, 384, 385, 4000):
            x = (rng.random(n) * 4 - 1).astype(dtype)
            if dtype == np.float16:
                hist = np.bincount(x.view(np.uint16).astype(np.int64), minlength=65536)
                sample = M._SortedSample(M._F16_SORTED, hist[M._F16_ORDER])
            else:
                sample = M._SortedSample(np.sort(x))
            m = min(384, n)
            np.testing.assert_array_equal(sample.quantiles(m), np.quantile(x, np.linspace(0, 1, m)))


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_all_void_frame_is_skipped_with_a_note(protocol):
    rng = np.random.default_rng(1)
    frames = [blob_frame(rng) for _ in range(3)]
    void = (rng.random((48, 64)).astype(np.float32), np.full((48, 64), 255, np.uint8))
    with_void = run_pixel(frames[:1] + [void] + frames[1:], protocol)
    without = run_pixel(frames, protocol)
    assert with_void.ap == without.ap and with_void.fpr95 == without.fpr95
    assert with_void.n_frames_void == 1 and any("f1" in n for n in with_void.notes)


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_degenerate_datasets_report_none_with_notes(protocol):
    rng = np.random.default_rng(2)
    only_void = run_pixel([(rng.random((8, 8)), np.full((8, 8), 255, np.uint8))], protocol)
    assert only_void.ap is None and only_void.component_threshold is None and only_void.notes
    no_anomaly = run_pixel([(rng.random((8, 8)), np.zeros((8, 8), np.uint8))] * 2, protocol)
    assert no_anomaly.ap is None and no_anomaly.fpr95 is None and no_anomaly.best_f1 is None
    assert any("no anomaly" in n for n in no_anomaly.notes)
    only_anomaly = run_pixel([(rng.random((8, 8)), np.ones((8, 8), np.uint8))], protocol)
    assert only_anomaly.ap == pytest.approx(1.0) and only_anomaly.auroc is None
    assert only_anomaly.fpr95 is None


def test_nan_inf_and_bad_input_name_the_frame():
    acc = M.PixelAccumulator()
    labels = np.zeros((4, 4), np.uint8)
    bad = np.zeros((4, 4), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="frame cam_007.*1 NaN"):
        acc.update(bad, labels, "cam_007")
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="frame x.*inf"):
        acc.update(bad, labels, "x")
    with pytest.raises(ValueError, match="frame big.*float16"):
        acc.update(np.full((4, 4), 1e6), labels, "big")
    with pytest.raises(ValueError, match="frame lab.*label values.*\\[2\\]"):
        acc.update(np.zeros((4, 4)), labels + 2, "lab")
    with pytest.raises(ValueError, match="frame size: score map is 8x8 .* label is 4x4"):
        acc.update(np.zeros((8, 8)), labels, "size")
    with pytest.raises(ValueError, match="unknown protocol"):
        M.PixelAccumulator("binned")
    assert acc.n_frames == 0                        # rejected frames leave no trace


@pytest.mark.parametrize("protocol", M.PROTOCOLS)
def test_size_rule_upsamples_only_narrower_maps(protocol):
    """The benchmark upsamples a map only when it is narrower than its label; e.g. a 200x512 map
    for a 256x512 label is an error naming the frame and both sizes, never a silent stretch."""
    labels = np.zeros((256, 512), np.uint8)
    labels[100:120, 200:240] = 1
    for shape in ((200, 512), (300, 512), (256, 600), (128, 600)):
        with pytest.raises(ValueError, match=rf"frame cam_3: score map is {shape[0]}x{shape[1]} "
                                             r"\(HxW\) but its label is 256x512"):
            M.prepare_scores(np.zeros(shape, np.float32), labels.shape, protocol, "cam_3")
    for shape in ((128, 256), (256, 511), (300, 256)):      # narrower: upsampled to the label size
        assert M.prepare_scores(np.zeros(shape, np.float32), labels.shape, protocol,
                                "cam_3").shape == labels.shape
    acc = M.PixelAccumulator(protocol)
    with pytest.raises(ValueError, match="frame f7: score map is 200x512"):
        acc.update(np.zeros((200, 512), np.float32), labels, "f7")
    assert acc.n_frames == 0


def test_smaller_maps_are_upsampled_bilinearly():
    import cv2
    rng = np.random.default_rng(5)
    s, labels = blob_frame(rng, h=48, w=64)
    small = cv2.resize(s, (32, 24), interpolation=cv2.INTER_AREA)
    up = cv2.resize(small.astype(np.float16).astype(np.float32), (64, 48),
                    interpolation=cv2.INTER_LINEAR)
    # The benchmark keeps the upsampled map in float32 (no second float16 rounding).
    a = run_pixel([(small, labels)], "official")
    ref = ref_binned_curve([(up, labels)], cast_float16=False)
    for key in ("ap", "auroc", "fpr95", "best_f1", "best_f1_threshold"):
        assert getattr(a, key) == pytest.approx(ref[key], abs=1e-12), key
    assert a.ap != run_pixel([(up, labels)], "official").ap      # float16 rounding does matter
    exact = run_pixel([(small, labels)], "exact")
    assert exact.ap == run_pixel([(up.astype(np.float16), labels)], "exact").ap


# ----------------------------------------------------------------------------------------------
# component level: hand-computed cases
# ----------------------------------------------------------------------------------------------

def two_objects():
    labels = np.zeros((8, 12), np.uint8)
    labels[2:6, 0:4] = 1        # A: 16 px
    labels[2:6, 6:10] = 1       # B: 16 px, 2 columns of road between
    return labels


def test_merged_prediction_over_two_objects():
    labels = two_objects()
    scores = np.zeros(labels.shape, np.float32)
    scores[2:6, 0:10] = 1.0     # one component: A + gap (8 px) + B = 40 px
    res, (st,) = run_components([(scores, labels)], 0.5)
    # sIoU(A) = 16 / (40 + 16 - 16 - 16 [B is another object]) = 2/3, same for B; PPV = 32/40.
    np.testing.assert_allclose(np.sort(st.siou_gt), [2 / 3, 2 / 3])
    np.testing.assert_allclose(st.ppv, [0.8])
    assert res.siou_gt == pytest.approx(2 / 3) and res.ppv == pytest.approx(0.8)
    # TP for tau <= 0.65 (9 thresholds), FN for 0.70 and 0.75; no FP (PPV 0.8 >= every tau).
    np.testing.assert_array_equal(st.tp, [2] * 9 + [0] * 2)
    np.testing.assert_array_equal(st.fp, [0] * 11)
    assert res.f1_mean == pytest.approx(9 / 11)
    assert res.f1_25 == 1.0 and res.f1_75 == 0.0


def test_prediction_touching_another_object_uses_adjustment():
    labels = two_objects()
    scores = np.zeros(labels.shape, np.float32)
    scores[2:6, 0:4] = 1.0      # covers A
    scores[3, 4:7] = 1.0        # a bridge over the road onto B: 2 road px + B[3, 6]
    scores[4, 6:9] = 1.0        # 3 more px of B
    res, (st,) = run_components([(scores, labels)], 0.5)
    # |P| = 16 + 2 + 1 + 3 = 22, 4 of them on B, 2 on road.
    # sIoU(A) = 16 / (22 + 16 - 16 - 4) = 16/18 ; sIoU(B) = 4 / (22 + 16 - 4 - 16) = 4/18
    siou = dict(zip(("A", "B"), st.siou_gt))
    assert siou["A"] == pytest.approx(16 / 18) and siou["B"] == pytest.approx(4 / 18)
    np.testing.assert_allclose(st.ppv, [20 / 22])


def test_size_filters_at_the_boundary():
    labels = np.zeros((20, 20), np.uint8)
    labels[1:3, 1:6] = 1        # GT of 10 px: kept with instsize 10
    labels[10:13, 1:4] = 1      # GT of 9 px: becomes void with instsize 10
    scores = np.zeros(labels.shape, np.float32)
    scores[1:3, 1:6] = 1.0      # prediction of 10 px on the first object
    scores[10:13, 1:4] = 1.0    # prediction on the voided object: ignored, not a false positive
    scores[16:18, 10:15] = 1.0  # 10 px on road: kept with segsize 10 -> a false positive
    scores[16:19, 17:20] = 1.0  # 9 px on road: removed with segsize 10
    res, (st,) = run_components([(scores, labels)], 0.5, segsize=10, instsize=10)
    assert st.n_gt == 1 and st.n_pred == 2
    np.testing.assert_allclose(np.sort(st.ppv), [0.0, 1.0])
    assert res.siou_gt == 1.0
    np.testing.assert_array_equal(st.fp, [1] * 11)
    assert res.f1_mean == pytest.approx(2 / 3)     # 2*1 / (2 + 0 + 1)
    res, (st,) = run_components([(scores, labels)], 0.5, segsize=11, instsize=11)
    assert st.n_gt == 0 and st.n_pred == 0          # 10 px < 11 on both sides
    assert res.f1_mean is None and any("no components" in n for n in res.notes)


def test_strict_threshold_void_zeroing_and_f16_threshold_rounding():
    labels = np.zeros((6, 12), np.uint8)
    labels[:, 5:7] = 255        # void stripe splits a prediction in two
    labels[1:4, 1:4] = 1
    scores = np.zeros(labels.shape, np.float32)
    scores[1:4, 0:12] = 0.5
    res, (st,) = run_components([(scores, labels)], 0.5)
    assert st.n_pred == 0                           # score == threshold is not predicted
    res, (st,) = run_components([(scores, labels)], 0.4)
    assert st.n_pred == 2                           # void zeroed before the components
    # The benchmark (numpy 1.23) compares float16 maps in float16: 0.5004 rounds to 0.50049.
    scores16 = np.where(scores > 0, np.float16(0.50049), 0).astype(np.float16)
    _, (st,) = run_components([(scores16, labels)], 0.5004)
    assert st.n_pred == 0


def test_f1_counts_sum_over_frames_and_degenerate_cases():
    labels = two_objects()
    hit = np.where(labels == 1, 1.0, 0.0).astype(np.float32)
    miss = np.zeros(labels.shape, np.float32)
    false_alarm = np.zeros(labels.shape, np.float32)
    false_alarm[0, :] = 1.0
    empty_labels = np.zeros(labels.shape, np.uint8)
    frames = [(hit, labels), (miss, labels), (false_alarm, empty_labels)]
    res, stats = run_components(frames, 0.5)
    # TP 2, FN 2, FP 1 at every tau -> F1 = 4 / (4 + 2 + 1)
    assert [p["tp"] for p in res.per_tau] == [2] * 11
    assert [p["fn"] for p in res.per_tau] == [2] * 11
    assert [p["fp"] for p in res.per_tau] == [1] * 11
    assert res.f1_mean == pytest.approx(4 / 7)
    assert res.siou_gt == pytest.approx(0.5)        # pooled over 4 GT components: 1, 1, 0, 0
    assert res.ppv == pytest.approx(2 / 3)          # pooled over 3 predictions: 1, 1, 0
    assert stats[1].n_pred == 0 and stats[2].n_gt == 0
    nothing, _ = run_components([(miss, empty_labels)], 0.5)
    assert nothing.siou_gt is None and nothing.ppv is None and nothing.f1_mean is None
    assert len(nothing.notes) == 3


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_components_equal_the_loop_reference(seed):
    rng = np.random.default_rng(100 + seed)
    segsize, instsize = [(0, 0), (5, 3), (50, 10), (20, 100)][seed % 4]
    for _ in range(3):
        scores, labels = blob_frame(rng, h=40, w=56, n_obj=int(rng.integers(0, 6)))
        thr = float(rng.uniform(0.3, 0.8))
        st = M.component_frame_stats(M.prepare_scores(scores, labels.shape), labels, thr,
                                     segsize, instsize)
        siou, ppv, tp, fn, fp = ref_components(scores, labels, thr, segsize, instsize)
        np.testing.assert_allclose(np.sort(st.siou_gt), np.sort(siou), rtol=0, atol=1e-15)
        np.testing.assert_allclose(np.sort(st.ppv), np.sort(ppv), rtol=0, atol=1e-15)
        np.testing.assert_array_equal(st.tp, tp)
        np.testing.assert_array_equal(st.fn, fn)
        np.testing.assert_array_equal(st.fp, fp)


def test_background_smaller_than_instsize_becomes_void_as_in_the_benchmark():
    labels = np.ones((6, 6), np.uint8)
    labels[0, :3] = 0           # 3 background pixels < instsize 10: the benchmark voids them too
    scores = np.ones(labels.shape, np.float32)
    _, (st,) = run_components([(scores, labels)], 0.5, segsize=0, instsize=10)
    siou, ppv, *_ = ref_components(scores, labels, 0.5, 0, 10)
    np.testing.assert_allclose(st.siou_gt, [1.0])
    np.testing.assert_allclose(st.siou_gt, siou)
    np.testing.assert_allclose(st.ppv, ppv)


# ----------------------------------------------------------------------------------------------
# whole evaluation, two passes
# ----------------------------------------------------------------------------------------------

def test_evaluate_two_pass_uses_the_pixel_threshold_and_cache_replays(tmp_path):
    rng = np.random.default_rng(9)
    frames = [(f"fr{i}",) + blob_frame(rng, h=48, w=64) for i in range(5)]
    res = M.evaluate(frames, track="obstacle", protocol="official")
    thr = res.pixel.component_threshold
    assert thr == res.pixel.best_f1_threshold
    comp = M.ComponentAccumulator(thr, "obstacle")
    for fid, s, l in frames:
        comp.update(s, l, fid)
    assert res.components.to_dict() == comp.result().to_dict()
    assert res.components.segsize == 50 and res.components.instsize == 10
    d = res.to_dict()
    assert d["protocol"] == "official" and len(d["per_frame"]) == 5
    assert {"ap", "n_gt", "f1_mean"} <= set(d["per_frame"][0])
    cache = M.FrameCache(tmp_path / "cache")
    for fid, s, l in frames:
        cache.put(fid, s, l)
    assert M.evaluate(cache, track="obstacle").to_dict() == d
    with pytest.raises(ValueError, match="re-iterable"):
        M.evaluate(iter(frames))
    exact = M.evaluate(frames, track="anomaly", protocol="exact")
    assert exact.components.segsize == 500 and exact.pixel.protocol == "exact"


def test_evaluate_without_positives_skips_components_with_a_note():
    rng = np.random.default_rng(4)
    frames = [("a", rng.random((8, 8)), np.zeros((8, 8), np.uint8))]
    res = M.evaluate(frames, track="laf")
    assert res.components is None
    assert any("component metrics skipped" in n for n in res.to_dict()["notes"])
    json_safe = res.to_dict()
    assert all(v is None or math.isfinite(v) for v in
               (json_safe["pixel"]["ap"], json_safe["pixel"]["fpr95"]))
