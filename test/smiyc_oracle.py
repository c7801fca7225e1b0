"""Test oracle: the SMIYC component metrics of one frame, written straight from the protocol text
(shared/reference/smiyc_metrics.md) with scipy.ndimage.label and a Python loop per component,
independently of csl_ros/eval/metrics.py. The tests check the package against it; bench/eval.py times
the package against it. Not used by the package.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def component_siou_ppv(scores, labels, thr, segsize, instsize):
    """sIoU of every ground-truth component (with the adjustment term) and PPV of every predicted one.

    ``labels``: 0 inlier, 1 anomaly, 255 void. Predicted components below ``segsize`` pixels are
    dropped; ground-truth components (and the inlier background, component 0) below ``instsize``
    become void, as in the benchmark's loop.
    """
    s = scores.astype(np.float16)
    pred = (s > np.float16(thr)) & (labels != 255)
    eight = np.ones((3, 3), int)
    gt_inst, n_gt = ndimage.label(labels == 1, eight)
    pr_inst, n_pr = ndimage.label(pred, eight)
    for k in range(1, n_pr + 1):
        if np.count_nonzero(pr_inst == k) < segsize:
            pr_inst[pr_inst == k] = 0
    lab = labels.copy()
    for k in range(0, n_gt + 1):     # 0 included: the benchmark's loop starts at 0 too
        if np.count_nonzero(gt_inst == k) < instsize:
            lab[gt_inst == k] = 255
    roi = lab < 255
    g, p = gt_inst[roi], pr_inst[roi]
    siou_gt, ppv = [], []
    for k in np.unique(g[g > 0]):
        touching = np.unique(p[(g == k) & (p > 0)])
        in_k = np.isin(p, touching)
        inter = np.count_nonzero((g == k) & (p > 0))
        adjust = np.count_nonzero(in_k & (g > 0) & (g != k))
        siou_gt.append(inter / (np.count_nonzero(in_k) + np.count_nonzero(g == k) - inter - adjust))
    for k in np.unique(p[p > 0]):
        ppv.append(np.count_nonzero((p == k) & (g > 0)) / np.count_nonzero(p == k))
    return np.array(siou_gt), np.array(ppv)
