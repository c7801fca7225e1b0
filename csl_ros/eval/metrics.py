"""SMIYC / LostAndFound metrics as streaming accumulators (one frame at a time).

Reproduces the official benchmark code (``SegmentMeIfYouCan/road-anomaly-benchmark``, the version
described in ``shared/reference/smiyc_metrics.md``, run with its pinned numpy 1.23) on the same score
maps, and offers the exact (unbinned) variant:

* Pixel level, protocol ``"official"`` ("PixBinaryClass"): per frame, bin edges from 384 quantiles of
  the positive and 384 of the negative scores plus ``vmin - eps`` / ``vmax + eps``; per-frame
  histograms give (lower edge, delta TP, delta FP); the dataset curve concatenates all frames'
  entries, sorts the thresholds descending, cumulates, collapses repeated thresholds and adds the end
  points. AP is the step sum ``sum(diff(recall) * precision[1:])``, AUROC the trapezoid, FPR95
  ``fpr[searchsorted(tpr, 0.95)]``. Memory: the per-frame entries (at most 769 per frame) are kept
  until :meth:`PixelAccumulator.result`, because the official tie order of the final sort is only
  reproducible from the same concatenation. The curve follows the benchmark's HEAD 1c7804e
  ("metrics: fix best-f1 threshold selection") exactly (:func:`official_curve`): the thresholds are
  collapsed with the same indices as the counts, the first sorted entry is always kept even when its
  threshold repeats, and the best-F1 / TPR95 thresholds are read at the curve point's own index; the
  component threshold is that best-F1 threshold. Ties in the descending sort are ordered as numpy
  1.23.5 (the leaderboard's) orders them, whatever numpy is installed (:func:`official_argsort`).
* Pixel level, protocol ``"exact"``: scores are float16, so counting pixels per float16 value
  (65,536 bins over the bit patterns) is exact with O(1) memory; the curve has one point per distinct
  score value (``score >= v``), identical to scikit-learn's ``average_precision_score`` /
  ``roc_auc_score`` on the concatenated pixels.
* Component level (``metrics/instance_segmentation.py``): ``score > thr`` at the dataset-wide
  best-pixel-F1 threshold, prediction zeroed on void, 8-connected components, predicted components
  smaller than ``segsize`` removed, ground-truth components smaller than ``instsize`` made void,
  sIoU per ground-truth component with the adjustment term, PPV per predicted component,
  F1(tau) for tau in linspace(0.25, 0.75, 11) from dataset-summed counts. Vectorised: one
  connected-component pass per map and bincounts over (gt id, predicted id) pairs, no per-component
  loop.

Score preparation follows the benchmark: maps are stored as float16; a map smaller than its label is
upsampled bilinearly (float32, as the benchmark's metric worker does). The exact protocol rounds an
upsampled map back to float16 so that it stays exact over float16 values.

numpy version note: the leaderboard ran numpy 1.23, whose value-based casting makes ``eps`` float64
and compares the float16 map with the threshold in float16 (``anomaly_p > thr`` rounds ``thr`` to the
map's dtype). Both are emulated here explicitly, so results do not depend on the installed numpy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

PROTOCOLS = ("official", "exact")

# Official "PixBinaryClass" config: 768 bins, half from each class's quantiles.
NUM_BINS = 768
# Official sIoU / PPV thresholds (instance_segmentation.py): 0.25:0.05:0.75, as np.linspace makes them.
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)


@dataclass(frozen=True)
class TrackSpec:
    """Component size filters of one benchmark track (pixels of the label resolution)."""

    name: str
    segsize: int    # predicted components with fewer pixels are removed
    instsize: int   # ground-truth components with fewer pixels become void


TRACKS = {
    "anomaly": TrackSpec("anomaly", segsize=500, instsize=100),    # SegEval-AnomalyTrack
    "obstacle": TrackSpec("obstacle", segsize=50, instsize=10),    # SegEval-ObstacleTrack
    "laf": TrackSpec("laf", segsize=50, instsize=10),              # LostAndFound: obstacle sizes
    # Fishyscapes LostAndFound: the benchmark scores FishyLAFAnomaly-val with the Anomaly Track sizes
    "fishyscapes": TrackSpec("fishyscapes", segsize=500, instsize=100),
}


def track_spec(track: str | TrackSpec) -> TrackSpec:
    if isinstance(track, TrackSpec):
        return track
    try:
        return TRACKS[track]
    except KeyError:
        raise ValueError(f"unknown track {track!r}; choose one of {sorted(TRACKS)}") from None


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    return protocol


def _frame_name(frame_id, index: int) -> str:
    return str(frame_id) if frame_id is not None else f"#{index}"


# --------------------------------------------------------------------------------------------------
# input checks and score preparation
# --------------------------------------------------------------------------------------------------

def check_labels(labels, frame_id: str = "?") -> np.ndarray:
    """Label map as uint8 HxW with values in {0, 1, 255}; anything else is a ValueError."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"frame {frame_id}: label map must be 2-D (H, W), got shape {lab.shape}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"frame {frame_id}: label map must be integer, got dtype {lab.dtype}")
    bad = (lab != 0) & (lab != 1) & (lab != 255)
    if bad.any():
        values = np.unique(lab[bad])[:10].tolist()
        raise ValueError(f"frame {frame_id}: label values must be 0 (in-distribution), 1 (anomaly) or "
                         f"255 (void); found {values}")
    return lab.astype(np.uint8, copy=False)


def as_float16_map(scores, frame_id: str = "?") -> np.ndarray:
    """The score map cast to float16 as the benchmark stores it; NaN/inf or out-of-range is an error."""
    a = np.asarray(scores)
    if a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]):
        a = a.reshape(a.shape[1:] if a.shape[0] == 1 else a.shape[:2])
    if a.ndim != 2:
        raise ValueError(f"frame {frame_id}: score map must be 2-D (H, W), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
            or a.dtype == bool):
        raise ValueError(f"frame {frame_id}: score map must be numeric, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            n_nan = int(np.isnan(a).sum())
            n_inf = int(a.size - finite.sum()) - n_nan
            raise ValueError(f"frame {frame_id}: score map contains {n_nan} NaN and {n_inf} inf "
                             f"pixels; the benchmark's AP would silently shift, fix the method output")
    with np.errstate(over="ignore"):
        s16 = a.astype(np.float16)
    if a.dtype != np.float16 and np.isinf(s16).any():
        raise ValueError(f"frame {frame_id}: scores exceed the float16 range (|score| > 65504) the "
                         f"benchmark stores them in; rescale the scores")
    return s16


def prepare_scores(scores, label_shape: tuple[int, int], protocol: str = "official",
                   frame_id: str = "?") -> np.ndarray:
    """The score map as the benchmark evaluates it.

    Cast to float16 (the benchmark stores maps so). The benchmark's size rule: a map narrower than its
    label is upsampled bilinearly to the label size in float32 (``cv2.resize``, as the benchmark's
    metric worker), and for the exact protocol rounded back to float16; any other size mismatch (as
    wide but fewer or more rows, wider) is a ValueError naming the frame and both sizes, never a
    silent stretch. NaN/inf and maps out of float16 range are ValueErrors too.
    """
    _check_protocol(protocol)
    s16 = as_float16_map(scores, frame_id)
    h, w = label_shape
    if s16.shape == (h, w):
        return s16
    if s16.shape[1] >= w:
        raise ValueError(f"frame {frame_id}: score map is {s16.shape[0]}x{s16.shape[1]} (HxW) but its "
                         f"label is {h}x{w}; only maps narrower than the label are upsampled (the "
                         f"benchmark's rule), any other size mismatch is an error")
    up = cv2.resize(s16.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return up.astype(np.float16) if protocol == "exact" else up


# --------------------------------------------------------------------------------------------------
# float16 value tables: counting per float16 bit pattern is exact and O(1) in memory
# --------------------------------------------------------------------------------------------------

_F16_ALL = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
_F16_FINITE_PATTERNS = np.nonzero(np.isfinite(_F16_ALL))[0]
# Finite bit patterns sorted by value (-0 and +0 are adjacent and compare equal).
_F16_ORDER = _F16_FINITE_PATTERNS[np.argsort(_F16_ALL[_F16_FINITE_PATTERNS].astype(np.float64),
                                             kind="stable")]
_F16_SORTED = _F16_ALL[_F16_ORDER]                     # float16, ascending
_F16_SORTED64 = _F16_SORTED.astype(np.float64)
# Distinct values (merging -0/+0) for the exact curve.
_F16_DISTINCT, _F16_GROUP = np.unique(_F16_SORTED64, return_inverse=True)


def _f16_histograms(scores16: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts per float16 bit pattern for negatives (label 0) and positives (label 1)."""
    keys = scores16.view(np.uint16).ravel()
    lab = labels.ravel()
    roi = lab != 255
    # One bincount over both classes: positives shifted by 65536.
    code = keys[roi].astype(np.int32)
    code += lab[roi].astype(np.int32) << 16
    hist = np.bincount(code, minlength=2 * 65536)
    return hist[:65536], hist[65536:]


def _by_distinct_value(hist_patterns: np.ndarray) -> np.ndarray:
    """Counts per distinct float16 value (ascending, as ``_F16_DISTINCT``), float64."""
    return np.bincount(_F16_GROUP, weights=hist_patterns[_F16_ORDER], minlength=_F16_DISTINCT.size)


class _SortedSample:
    """A sorted multiset of one class's scores in one frame: order statistics and counts below edges.

    Built either from a float16 bit-pattern histogram (no sort needed) or from a sorted array.
    """

    def __init__(self, values_sorted: np.ndarray, counts: np.ndarray | None = None):
        if counts is None:          # a plain sorted array
            self._vals = values_sorted
            self._vals64 = values_sorted.astype(np.float64)
            self._cum_before = None
            self.n = int(values_sorted.size)
        else:                       # distinct sorted values with their counts
            keep = counts > 0
            self._vals = values_sorted[keep]
            self._vals64 = self._vals.astype(np.float64)
            cum = np.cumsum(counts[keep])
            self._cum = cum
            self._cum_before = np.concatenate(([0], cum))
            self.n = int(cum[-1]) if cum.size else 0

    def value_at(self, ranks: np.ndarray) -> np.ndarray:
        """Values at 0-based ranks, in the sample's own dtype."""
        if self._cum_before is None:
            return self._vals[ranks]
        return self._vals[np.searchsorted(self._cum, ranks, side="right")]

    def count_below(self, edges: np.ndarray) -> np.ndarray:
        """Number of values < edge (compared in float64, as ``np.histogram``)."""
        idx = np.searchsorted(self._vals64, edges, side="left")
        return idx if self._cum_before is None else self._cum_before[idx]

    def count_at_most(self, edge: float) -> int:
        idx = int(np.searchsorted(self._vals64, edge, side="right"))
        return idx if self._cum_before is None else int(self._cum_before[idx])

    @property
    def min(self):
        return self.value_at(np.array([0]))[0]

    @property
    def max(self):
        return self.value_at(np.array([self.n - 1]))[0]

    def quantiles(self, count: int) -> np.ndarray:
        """``np.quantile(values, np.linspace(0, 1, count))`` (method 'linear'), bit for bit.

        Follows numpy's ``_quantile``/``_lerp``: the difference ``b - a`` is taken in the data's dtype
        (float16 here) and the interpolation in float64.
        """
        n = self.n
        q = np.linspace(0, 1, count)
        virtual = (n - 1) * q
        prev = np.floor(virtual)
        above = virtual >= n - 1
        prev_i = prev.astype(np.intp)
        next_i = prev_i + 1
        prev_i[above] = n - 1
        next_i[above] = n - 1
        # numpy marks out-of-range indices as -1 before computing gamma.
        gamma = virtual - np.where(above, -1.0, prev)
        a = self.value_at(prev_i)
        b = self.value_at(next_i)
        with np.errstate(over="ignore", invalid="ignore"):
            diff = b - a
            out = np.add(a, diff * gamma)
            hi = gamma >= 0.5
            out[hi] = (b - diff * (1 - gamma))[hi]
        return out

    def bin_counts(self, edges: np.ndarray) -> np.ndarray:
        """``np.histogram(values, bins=edges)[0]``: half-open bins, the last one closed."""
        if self.n == 0:
            return np.zeros(edges.size - 1, np.int64)
        below = self.count_below(edges).astype(np.int64)
        counts = np.diff(below)
        counts[-1] = self.count_at_most(float(edges[-1])) - below[-2]
        return counts


def _official_frame_entries(pos: _SortedSample, neg: _SortedSample, frame_id: str):
    """One frame's (thresholds descending, delta TP, delta FP) of the official binned protocol."""
    present = [s for s in (pos, neg) if s.n > 0]
    vmin = min(s.min for s in present)
    vmax = max(s.max for s in present)
    with np.errstate(over="ignore"):
        vrange = vmax - vmin                      # in the map's dtype, as the benchmark
    # numpy 1.x promotes the scalar expression to float64 (NEP 50 would keep float16).
    eps = max(float(vrange) * 1e-2, 1e-2)
    edge_lo, edge_hi = float(vmin) - eps, float(vmax) + eps
    if not (math.isfinite(edge_lo) and math.isfinite(edge_hi)):
        raise ValueError(f"frame {frame_id}: score range {float(vmin)}..{float(vmax)} overflows "
                         f"float16; rescale the scores")
    parts = [np.array([edge_lo, edge_hi])]
    for s in (pos, neg):
        if s.n:
            parts.append(s.quantiles(min(NUM_BINS // 2, s.n)))
    edges = np.unique(np.concatenate(parts))
    tp_rel = pos.bin_counts(edges)[::-1]
    fp_rel = neg.bin_counts(edges)[::-1]
    thresholds = edges[:-1][::-1]                 # lower bin edges, descending
    return thresholds, tp_rel.astype(np.int64), fp_rel.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# pixel-level results
# --------------------------------------------------------------------------------------------------

@dataclass
class PixelFrameStats:
    """Per-frame pixel statistics (the exact, unbinned curve of this frame alone)."""

    frame_id: str
    n_pos: int
    n_neg: int
    ap: float | None
    fpr95: float | None
    auroc: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PixelResult:
    """Dataset-level pixel metrics. None where undefined; the reason is in ``notes``."""

    protocol: str
    ap_rule: str
    n_frames: int
    n_frames_void: int
    n_pos: int
    n_neg: int
    ap: float | None
    ap_trapezoid: float | None             # the benchmark's AP rule before Aug 2023, for old tables
    auroc: float | None
    fpr95: float | None
    tpr95_threshold: float | None
    best_f1: float | None
    best_f1_threshold: float | None        # as the protocol reports it
    best_f1_point_threshold: float | None  # the threshold that attains best_f1 (the same value)
    component_threshold: float | None      # binarisation for components: score > this
    curve: dict = field(default_factory=dict, repr=False)
    notes: list = field(default_factory=list)

    def to_dict(self, include_curve: bool = True) -> dict:
        d = dataclasses.asdict(self)
        if not include_curve:
            d.pop("curve")
        return d


def _safe_div(num, den):
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _trapezoid(y, x) -> float:
    fn = getattr(np, "trapezoid", None) or getattr(np, "trapz")
    return float(fn(y, x))


def _downsample_curve(n: int, keep: Sequence[int], max_points: int = 400) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    idx = np.linspace(0, n - 1, max_points - len(keep)).round().astype(np.int64)
    return np.unique(np.concatenate([idx, np.asarray(keep, np.int64), [0, n - 1]]))


def _curve_dict(recall, precision, tpr, fpr, thresholds, keep) -> dict:
    idx = _downsample_curve(len(recall), keep)

    def lst(a):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)[idx]]
    return {"recall": lst(recall), "precision": lst(precision), "tpr": lst(tpr), "fpr": lst(fpr),
            "threshold": lst(thresholds)}


def _exact_curve_metrics(pos_by_value: np.ndarray, neg_by_value: np.ndarray,
                         with_curve: bool = False) -> dict:
    """Exact curve over distinct float16 values (``score >= v``), starting at (0, 0)."""
    nz = (pos_by_value + neg_by_value) > 0
    values = _F16_DISTINCT[nz][::-1]
    tp = np.concatenate(([0.0], np.cumsum(pos_by_value[nz][::-1])))
    fp = np.concatenate(([0.0], np.cumsum(neg_by_value[nz][::-1])))
    thresholds = np.concatenate(([np.inf], values))
    n_pos, n_neg = tp[-1], fp[-1]
    out = {"n_pos": int(n_pos), "n_neg": int(n_neg), "ap": None, "ap_trapezoid": None,
           "auroc": None, "fpr95": None,
           "tpr95_threshold": None, "best_f1": None, "best_f1_threshold": None, "curve": {}}
    if n_pos == 0:
        return out
    recall = tp / n_pos
    n_pred = tp + fp
    precision = np.ones_like(tp)
    precision[n_pred > 0] = tp[n_pred > 0] / n_pred[n_pred > 0]
    out["ap"] = float(np.sum(np.diff(recall) * precision[1:]))
    out["ap_trapezoid"] = _trapezoid(precision, recall)
    f1 = _safe_div(2 * tp, 2 * tp + fp + (n_pos - tp))
    ix = int(np.nanargmax(f1))
    out["best_f1"] = float(f1[ix])
    out["best_f1_threshold"] = float(thresholds[ix])
    keep = [ix]
    if n_neg > 0:
        fpr = fp / n_neg
        out["auroc"] = _trapezoid(recall, fpr)
        i95 = int(np.searchsorted(recall, 0.95))
        out["fpr95"] = float(fpr[i95])
        out["tpr95_threshold"] = float(thresholds[i95])
        keep.append(i95)
    else:
        fpr = np.full_like(tp, np.nan)
    if with_curve:
        out["curve"] = _curve_dict(recall, precision, recall, fpr, thresholds, keep)
    return out


class PixelAccumulator:
    """Streaming pixel-level metrics (AP, AUROC, FPR95, best F1) over frames.

    ``update`` one frame at a time; ``result`` at any point. Memory: O(1) for ``"exact"`` (two
    65,536-bin histograms); for ``"official"`` at most 769 (threshold, dTP, dFP) entries per frame.
    """

    def __init__(self, protocol: str = "official"):
        self.protocol = _check_protocol(protocol)
        self.n_frames = 0
        self.void_frames: list[str] = []
        self._hist_pos = np.zeros(65536, np.int64)   # exact protocol
        self._hist_neg = np.zeros(65536, np.int64)
        self._thr: list[np.ndarray] = []             # official protocol
        self._dtp: list[np.ndarray] = []
        self._dfp: list[np.ndarray] = []
        self._n_pos = 0
        self._n_neg = 0

    def update(self, scores, labels, frame_id=None) -> PixelFrameStats:
        name = _frame_name(frame_id, self.n_frames)
        lab = check_labels(labels, name)
        s = prepare_scores(scores, lab.shape, self.protocol, name)
        self.n_frames += 1
        if s.dtype == np.float16:
            hist_neg, hist_pos = _f16_histograms(s, lab)
            n_pos, n_neg = int(hist_pos.sum()), int(hist_neg.sum())
        else:  # upsampled float32 map (official protocol): exact statistics on float16 rounding
            hist_neg, hist_pos = _f16_histograms(s.astype(np.float16), lab)
            n_pos, n_neg = int(hist_pos.sum()), int(hist_neg.sum())
        if n_pos + n_neg == 0:
            self.void_frames.append(name)
            return PixelFrameStats(name, 0, 0, None, None, None)
        self._n_pos += n_pos
        self._n_neg += n_neg
        if self.protocol == "exact":
            self._hist_pos += hist_pos
            self._hist_neg += hist_neg
        else:
            if s.dtype == np.float16:
                pos = _SortedSample(_F16_SORTED, hist_pos[_F16_ORDER])
                neg = _SortedSample(_F16_SORTED, hist_neg[_F16_ORDER])
            else:
                roi_lab = lab[lab != 255]
                vals = s[lab != 255]
                pos = _SortedSample(np.sort(vals[roi_lab == 1]))
                neg = _SortedSample(np.sort(vals[roi_lab == 0]))
            thr, dtp, dfp = _official_frame_entries(pos, neg, name)
            self._thr.append(thr)
            self._dtp.append(dtp.astype(np.int32) if dtp.max(initial=0) < 2**31 else dtp)
            self._dfp.append(dfp.astype(np.int32) if dfp.max(initial=0) < 2**31 else dfp)
        m = _exact_curve_metrics(_by_distinct_value(hist_pos), _by_distinct_value(hist_neg))
        return PixelFrameStats(name, n_pos, n_neg, m["ap"], m["fpr95"], m["auroc"])

    # ---------------------------------------------------------------------------------------------
    def result(self, with_curve: bool = True) -> PixelResult:
        notes: list[str] = []
        if self.void_frames:
            notes.append(f"{len(self.void_frames)} frame(s) have no labelled (non-void) pixel and "
                         f"were skipped: {', '.join(self.void_frames[:5])}"
                         + (" ..." if len(self.void_frames) > 5 else ""))
        base = dict(protocol=self.protocol, n_frames=self.n_frames,
                    n_frames_void=len(self.void_frames), n_pos=self._n_pos, n_neg=self._n_neg)
        empty = dict(ap=None, ap_trapezoid=None, auroc=None, fpr95=None, tpr95_threshold=None,
                     best_f1=None, best_f1_threshold=None, best_f1_point_threshold=None,
                     component_threshold=None)
        ap_rule = "step sum: sum(diff(recall) * precision[1:])"
        if self._n_pos + self._n_neg == 0:
            notes.append("no labelled pixels at all: no pixel metric is defined")
            return PixelResult(ap_rule=ap_rule, **base, **empty, notes=notes)
        if self._n_pos == 0:
            notes.append("no anomaly (label 1) pixels in the dataset: AP, AUROC, FPR95 and F1 are "
                         "undefined")
            return PixelResult(ap_rule=ap_rule, **base, **empty, notes=notes)
        if self._n_neg == 0:
            notes.append("no in-distribution (label 0) pixels: AUROC and FPR95 are undefined")
        if self.protocol == "exact":
            m = _exact_curve_metrics(_by_distinct_value(self._hist_pos),
                                     _by_distinct_value(self._hist_neg), with_curve=with_curve)
            thr = m["best_f1_threshold"]
            # score >= thr  <=>  score > (the next float16 below thr), for float16 scores
            comp_thr = float(np.nextafter(np.float16(thr), np.float16(-np.inf)))
            return PixelResult(ap_rule=ap_rule, **base, ap=m["ap"], ap_trapezoid=m["ap_trapezoid"],
                               auroc=m["auroc"],
                               fpr95=m["fpr95"], tpr95_threshold=m["tpr95_threshold"],
                               best_f1=m["best_f1"], best_f1_threshold=thr,
                               best_f1_point_threshold=thr, component_threshold=comp_thr,
                               curve=m["curve"], notes=notes)
        return self._official_result(base, ap_rule, notes, with_curve)

    def _official_result(self, base, ap_rule, notes, with_curve) -> PixelResult:
        thresholds = np.concatenate(self._thr)
        tp_rel = np.concatenate(self._dtp)
        fp_rel = np.concatenate(self._dfp)
        n_pos, n_neg = float(self._n_pos), float(self._n_neg)
        order = official_argsort(thresholds)[::-1]
        thr_sorted = thresholds[order]
        tp_cum = np.cumsum(tp_rel[order].astype(np.float64))
        fp_cum = np.cumsum(fp_rel[order].astype(np.float64))
        if thr_sorted.size > 1 and thr_sorted[0] == thr_sorted[1]:
            notes.append("the highest threshold is shared by several frames: the official curve's "
                         "first point depends on the sort order of ties " + (
                             "(numpy 1.23.5's is used)" if LONG_DOUBLE_TIE_ORDER else
                             "(numpy 1.23.5's cannot be reproduced on this platform, where long "
                             "double is double: AP may differ from the leaderboard's by up to ~5e-3)"))
        curve = official_curve(thr_sorted, tp_cum, fp_cum, n_pos, n_neg)
        tp, fp, tpr, fpr, point_thr = (curve[k] for k in ("tp", "fp", "tpr", "fpr", "thresholds"))
        fn = n_pos - tp
        n_pred = tp + fp
        precision = np.ones(tp.size)
        precision[n_pred > 0] = tp[n_pred > 0] / n_pred[n_pred > 0]
        recall = tpr
        ap = float(np.sum(np.diff(recall) * precision[1:]))
        auroc = _trapezoid(tpr, fpr) if n_neg > 0 else None
        fpr95 = tpr95_thr = None
        if n_neg > 0:
            i95 = int(np.searchsorted(tpr, 0.95))
            if i95 < tpr.size:
                fpr95, tpr95_thr = float(fpr[i95]), float(point_thr[i95])
            else:   # TPR 0.95 never reached: the benchmark reports these values
                fpr95, tpr95_thr = 1.0, 0.0
        f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
        ix = int(np.nanargmax(f1))
        best_thr = float(point_thr[ix])
        curve_out = (_curve_dict(recall, precision, tpr, fpr, point_thr, [ix]) if with_curve else {})
        return PixelResult(ap_rule=ap_rule, **base, ap=ap,
                           ap_trapezoid=_trapezoid(precision, recall), auroc=auroc, fpr95=fpr95,
                           tpr95_threshold=tpr95_thr, best_f1=float(f1[ix]),
                           best_f1_threshold=best_thr, best_f1_point_threshold=best_thr,
                           component_threshold=best_thr, curve=curve_out, notes=notes)


# Where long double is plain double (Windows, macOS on arm64) it shares float64's sort, and numpy
# 1.23.5's tie order is not guaranteed: results then say so when ties decide the first curve point.
LONG_DOUBLE_TIE_ORDER = bool(np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant)


def official_argsort(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values)`` (default kind) as numpy 1.23.5 orders it, whatever numpy is installed.

    The benchmark's curve depends on the order of equal thresholds (its first point is never
    collapsed), and its published numbers come from numpy 1.23.5's introsort. numpy >= 2 sorts float64
    keys with a SIMD sort (x86) that orders ties differently; long double keys have no SIMD path and
    go through the same introsort as numpy 1.23.5 did for float64, so sorting the values as long double
    reproduces 1.23.5's permutation (values are unchanged: float64 embeds exactly in long double).
    """
    values = np.asarray(values)
    return np.argsort(values.astype(np.longdouble) if values.dtype == np.float64 else values)


def official_curve(thr_sorted: np.ndarray, tp_cum: np.ndarray, fp_cum: np.ndarray,
                   n_pos: float, n_neg: float) -> dict:
    """The benchmark's ``curves_from_cmats`` (HEAD 1c7804e) on descending thresholds and cumulated counts.

    Repeated thresholds collapse to their last occurrence, with index 0 always kept (so a shared top
    threshold keeps its first entry, and index 0 appears twice when it is unique); the thresholds are
    collapsed with the same indices as the counts. A (0, 0) start point is prepended with threshold
    ``max + 1``, a (P, N) end point appended with ``max - 1`` (max over the thresholds at that moment,
    as the benchmark computes it). Returns tp, fp, tpr, fpr and the thresholds, one per curve point.
    """
    keep = np.concatenate(([0], np.nonzero(thr_sorted[:-1] != thr_sorted[1:])[0],
                           [thr_sorted.size - 1]))
    tp, fp, thr = tp_cum[keep], fp_cum[keep], thr_sorted[keep].astype(np.float64)
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate(([0.0], tp)), np.concatenate(([0.0], fp))
        thr = np.concatenate(([float(np.max(thr)) + 1], thr))
    if tp[-1] != n_pos or fp[-1] != n_neg:
        tp, fp = np.concatenate((tp, [n_pos])), np.concatenate((fp, [n_neg]))
        thr = np.concatenate((thr, [float(np.max(thr)) - 1]))
    return {"tp": tp, "fp": fp, "tpr": _safe_div(tp, n_pos), "fpr": _safe_div(fp, n_neg),
            "thresholds": thr}


# --------------------------------------------------------------------------------------------------
# component level
# --------------------------------------------------------------------------------------------------

@dataclass
class ComponentFrameStats:
    """One frame's component statistics (arrays over the frame's components)."""

    frame_id: str
    siou_gt: np.ndarray      # per ground-truth component
    siou_pred: np.ndarray    # per predicted component
    ppv: np.ndarray          # per predicted component
    tp: np.ndarray           # per tau in SIOU_THRESHOLDS
    fn: np.ndarray
    fp: np.ndarray

    @property
    def n_gt(self) -> int:
        return int(self.siou_gt.size)

    @property
    def n_pred(self) -> int:
        return int(self.ppv.size)

    def f1_mean(self) -> float | None:
        den = 2 * self.tp + self.fn + self.fp
        if np.any(den == 0):
            return None
        return float(np.mean(2 * self.tp / den))

    def to_dict(self) -> dict:
        return {"frame_id": self.frame_id, "n_gt": self.n_gt, "n_pred": self.n_pred,
                "siou_gt": float(self.siou_gt.mean()) if self.n_gt else None,
                "ppv": float(self.ppv.mean()) if self.n_pred else None,
                "f1_mean": self.f1_mean()}


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of a bool mask: (count incl. background 0, label map int32)."""
    # connectedComponents without stats is several times faster; areas come from bincounts.
    n, lab = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return n, lab


def _above_threshold(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``scores > threshold`` with the threshold rounded to the map's dtype.

    numpy 1.x (the benchmark's) compared ``anomaly_p > thr`` in the map's dtype by value-based
    casting. For float16 maps a 65,536-entry lookup on the bit patterns replaces the slow float16
    comparison.
    """
    thr = np.asarray(threshold, np.float64).astype(scores.dtype)
    if scores.dtype == np.float16:
        lut = _F16_ALL > thr            # NaN patterns compare False
        return lut[scores.view(np.uint16)]
    return scores > thr


def component_frame_stats(scores: np.ndarray, labels: np.ndarray, threshold: float, segsize: int,
                          instsize: int, frame_id: str = "?") -> ComponentFrameStats:
    """Component metrics of one frame (``scores`` prepared, ``labels`` checked), vectorised.

    For ground-truth component k with touching predicted set K: sIoU = |k ∩ K| /
    (|K| + |k| - |k ∩ K| - |K on other GT components|), which equals
    |k ∩ pred| / (|k| + sum over p in K of |p on label-0 pixels|); symmetric for predictions.
    All counts come from bincounts over the predicted pixels and the (GT id, predicted id) pairs.
    """
    void = labels == 255
    pred_mask = _above_threshold(scores, threshold)
    pred_mask &= ~void                            # prediction zeroed on void before components
    n_p, pred_raw = _components(pred_mask)
    n_g, gt_lab = _components(labels == 1)
    # Official: GT components smaller than instsize become void; its loop starts at component 0,
    # so the background (every non-anomaly pixel) is voided too when it is that small.
    g_area = np.bincount(gt_lab.ravel(), minlength=n_g)
    small = g_area < instsize
    # Work on the predicted pixels only (never void): their component, GT component and roi flag.
    idx = np.flatnonzero(pred_raw)
    p_all = pred_raw.ravel()[idx]
    g_all = gt_lab.ravel()[idx]
    p_area = np.bincount(p_all, minlength=n_p)    # size over the whole image
    keep = p_area >= segsize                      # official: remove components with size < segsize
    sel = keep[p_all] & ~small[g_all]             # kept components, restricted to the roi
    p, g = p_all[sel], g_all[sel]
    size_p = np.bincount(p, minlength=n_p).astype(np.float64)
    size_g = np.where(small, 0, g_area).astype(np.float64)   # GT pixels are never void-labelled
    size_g[0] = 0.0
    both = g > 0
    pair_code, pair_n = np.unique(g[both].astype(np.int64) * n_p + p[both], return_counts=True)
    pair_g, pair_p = pair_code // n_p, pair_code % n_p
    pair_n = pair_n.astype(np.float64)
    inter_g = np.bincount(pair_g, weights=pair_n, minlength=n_g)
    inter_p = np.bincount(pair_p, weights=pair_n, minlength=n_p)
    bg_of_p = size_p - inter_p                   # predicted pixels on label-0 pixels
    bg_of_g = size_g - inter_g                   # GT pixels not predicted
    extra_g = np.bincount(pair_g, weights=bg_of_p[pair_p], minlength=n_g)
    extra_p = np.bincount(pair_p, weights=bg_of_g[pair_g], minlength=n_p)
    gt_ids = np.nonzero(size_g[1:] > 0)[0] + 1
    pr_ids = np.nonzero(size_p[1:] > 0)[0] + 1
    siou_gt = inter_g[gt_ids] / (size_g[gt_ids] + extra_g[gt_ids])
    siou_pred = inter_p[pr_ids] / (size_p[pr_ids] + extra_p[pr_ids])
    ppv = inter_p[pr_ids] / size_p[pr_ids]
    tau = SIOU_THRESHOLDS[:, None]
    tp = np.count_nonzero(siou_gt[None, :] >= tau, axis=1)
    fn = np.count_nonzero(siou_gt[None, :] < tau, axis=1)
    fp = np.count_nonzero(ppv[None, :] < tau, axis=1)
    return ComponentFrameStats(frame_id, siou_gt, siou_pred, ppv, tp, fn, fp)


@dataclass
class ComponentResult:
    """Dataset-level component metrics. None where undefined; the reason is in ``notes``."""

    track: str
    segsize: int
    instsize: int
    score_threshold: float
    comparison: str
    n_frames: int
    n_gt_components: int
    n_pred_components: int
    siou_gt: float | None
    siou_pred: float | None
    ppv: float | None
    f1_mean: float | None
    f1_25: float | None
    f1_50: float | None
    f1_75: float | None
    per_tau: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ComponentAccumulator:
    """Streaming component metrics at a fixed threshold (``score > threshold``)."""

    def __init__(self, threshold: float, track: str | TrackSpec = "obstacle",
                 protocol: str = "official", segsize: int | None = None,
                 instsize: int | None = None):
        spec = track_spec(track)
        if threshold is None or not math.isfinite(float(threshold)):
            raise ValueError(f"component threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        self.protocol = _check_protocol(protocol)
        self.track = spec.name
        self.segsize = int(spec.segsize if segsize is None else segsize)
        self.instsize = int(spec.instsize if instsize is None else instsize)
        if self.segsize < 0 or self.instsize < 0:
            raise ValueError("segsize and instsize must be >= 0")
        self.n_frames = 0
        self._sum = {"siou_gt": 0.0, "siou_pred": 0.0, "ppv": 0.0}
        self._n_gt = 0
        self._n_pred = 0
        k = SIOU_THRESHOLDS.size
        self._tp = np.zeros(k, np.int64)
        self._fn = np.zeros(k, np.int64)
        self._fp = np.zeros(k, np.int64)

    def update(self, scores, labels, frame_id=None) -> ComponentFrameStats:
        name = _frame_name(frame_id, self.n_frames)
        lab = check_labels(labels, name)
        s = prepare_scores(scores, lab.shape, self.protocol, name)
        st = component_frame_stats(s, lab, self.threshold, self.segsize, self.instsize, name)
        self.n_frames += 1
        self._sum["siou_gt"] += float(st.siou_gt.sum())
        self._sum["siou_pred"] += float(st.siou_pred.sum())
        self._sum["ppv"] += float(st.ppv.sum())
        self._n_gt += st.n_gt
        self._n_pred += st.n_pred
        self._tp += st.tp
        self._fn += st.fn
        self._fp += st.fp
        return st

    def result(self) -> ComponentResult:
        notes = []
        siou_gt = self._sum["siou_gt"] / self._n_gt if self._n_gt else None
        siou_pred = self._sum["siou_pred"] / self._n_pred if self._n_pred else None
        ppv = self._sum["ppv"] / self._n_pred if self._n_pred else None
        if not self._n_gt:
            notes.append("no ground-truth components (after the size filter): sIoU gt undefined")
        if not self._n_pred:
            notes.append("no predicted components (after the size filter): PPV undefined")
        per_tau = []
        f1s = []
        for i, t in enumerate(SIOU_THRESHOLDS):
            tp, fn, fp = int(self._tp[i]), int(self._fn[i]), int(self._fp[i])
            den = 2 * tp + fn + fp
            f1 = 2 * tp / den if den else None
            f1s.append(f1)
            per_tau.append({"tau": round(float(t), 2), "tp": tp, "fn": fn, "fp": fp, "f1": f1})
        if any(f is None for f in f1s):
            notes.append("no components at all: F1 undefined")
            f1_mean = None
        else:
            f1_mean = float(np.mean(f1s))
        return ComponentResult(
            track=self.track, segsize=self.segsize, instsize=self.instsize,
            score_threshold=self.threshold,
            comparison="score > threshold, threshold rounded to the score map's dtype",
            n_frames=self.n_frames, n_gt_components=self._n_gt, n_pred_components=self._n_pred,
            siou_gt=siou_gt, siou_pred=siou_pred, ppv=ppv, f1_mean=f1_mean,
            f1_25=f1s[0], f1_50=f1s[5], f1_75=f1s[10], per_tau=per_tau, notes=notes)


# --------------------------------------------------------------------------------------------------
# whole evaluation
# --------------------------------------------------------------------------------------------------

@dataclass
class MetricsResult:
    """Everything ``metrics.json`` holds: pixel and component metrics, protocol, notes."""

    protocol: str
    track: str
    pixel: PixelResult
    components: ComponentResult | None
    per_frame: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self, include_curve: bool = True) -> dict:
        return {
            "protocol": self.protocol,
            "protocol_description": (
                "official SMIYC binned curve (768 per-frame quantile bins), AP as step sum"
                if self.protocol == "official" else
                "exact curve over every distinct float16 score value, AP as step sum"),
            "track": self.track,
            "pixel": self.pixel.to_dict(include_curve=include_curve),
            "components": self.components.to_dict() if self.components is not None else None,
            "per_frame": self.per_frame,
            "notes": list(self.notes) + list(self.pixel.notes)
            + (list(self.components.notes) if self.components is not None else []),
        }


Frame = tuple  # (frame_id, scores HxW float, labels HxW uint8 0/1/255)


def _frames_iter(frames) -> Iterator[Frame]:
    return iter(frames() if callable(frames) else frames)


def evaluate(frames: Callable[[], Iterable[Frame]] | Sequence[Frame], track: str = "obstacle",
             protocol: str = "official", component_threshold: float | None = None,
             progress: bool = False, total: int | None = None) -> MetricsResult:
    """Pixel and component metrics over ``frames`` ((frame_id, scores, labels) triples).

    Two passes when ``component_threshold`` is None (the benchmark rule: pass 1 gives the pixel curve
    and its best-F1 threshold, pass 2 the components at that threshold), so ``frames`` must be a
    callable returning a fresh iterable or a re-iterable sequence; use :class:`FrameCache` to replay
    a one-shot stream. With a given threshold, one pass.
    """
    spec = track_spec(track)
    _check_protocol(protocol)
    if not callable(frames) and iter(frames) is frames:
        raise ValueError("frames must be a callable or a re-iterable sequence (two passes); wrap a "
                         "one-shot stream in FrameCache")

    def bar(it, desc):
        if not progress:
            return it
        return tqdm(it, desc=desc, total=total, unit="frame")

    pix = PixelAccumulator(protocol)
    comp = (ComponentAccumulator(component_threshold, spec, protocol)
            if component_threshold is not None else None)
    per_frame: dict[str, dict] = {}
    for fid, scores, labels in bar(_frames_iter(frames), "pixel metrics"):
        ps = pix.update(scores, labels, fid)
        per_frame[ps.frame_id] = ps.to_dict()
        if comp is not None:
            cs = comp.update(scores, labels, fid)
            per_frame[ps.frame_id].update({k: v for k, v in cs.to_dict().items() if k != "frame_id"})
    pixel = pix.result()
    notes = []
    if comp is None:
        thr = pixel.component_threshold
        if thr is None:
            notes.append("component metrics skipped: the best-F1 threshold is undefined")
        else:
            comp = ComponentAccumulator(thr, spec, protocol)
            for fid, scores, labels in bar(_frames_iter(frames), "component metrics"):
                cs = comp.update(scores, labels, fid)
                per_frame.setdefault(cs.frame_id, {"frame_id": cs.frame_id}).update(
                    {k: v for k, v in cs.to_dict().items() if k != "frame_id"})
    return MetricsResult(protocol=protocol, track=spec.name, pixel=pixel,
                         components=comp.result() if comp is not None else None,
                         per_frame=list(per_frame.values()), notes=notes)


class FrameCache:
    """Disk cache of (scores as float16, labels) for replaying a one-shot stream in pass 2.

    Storing float16 loses nothing: the benchmark casts every map to float16 before evaluating.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ids: list[str] = []

    def put(self, frame_id: str, scores, labels) -> None:
        k = len(self._ids)
        np.save(self.dir / f"{k:06d}_scores.npy", as_float16_map(scores, str(frame_id)))
        np.save(self.dir / f"{k:06d}_labels.npy", check_labels(labels, str(frame_id)))
        self._ids.append(str(frame_id))

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[Frame]:
        for k, fid in enumerate(self._ids):
            yield (fid, np.load(self.dir / f"{k:06d}_scores.npy"),
                   np.load(self.dir / f"{k:06d}_labels.npy"))


def summary_lines(result: dict, frames: int | None = None) -> list[str]:
    """The console summary of a ``MetricsResult.to_dict()``: pixel metrics, component metrics at their
    threshold, and the notes (one line each; percentages, ``n/a`` where undefined)."""
    def pct(v) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}"

    px, comp = result["pixel"], result["components"]
    n = f", {frames} frames" if frames is not None else ""
    lines = [f"{result['track']} ({result['protocol']}{n}): AP {pct(px['ap'])}  FPR95 {pct(px['fpr95'])}  "
             f"AUROC {pct(px['auroc'])}  best F1 {pct(px['best_f1'])}"]
    if comp is not None:
        lines.append(f"components @ score > {comp['score_threshold']:.4g}: sIoU gt {pct(comp['siou_gt'])}  "
                     f"PPV {pct(comp['ppv'])}  mean F1 {pct(comp['f1_mean'])}")
    lines += [f"note: {note}" for note in result["notes"]]
    return lines
