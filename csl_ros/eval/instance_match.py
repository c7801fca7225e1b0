"""The detector's own instances against the ground-truth components of one frame: which instances are
true, which components they detect and in how many fragments. Used by the evaluator's instance counts
(``csl_ros.eval.scoring``) and the driving metrics (``csl_ros.eval.driving``)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INSTANCE_PPV_MIN = 0.5          # an instance with less of its labelled pixels on anomalies is false


@dataclass
class InstanceMatch:
    """The detector's instances against the ground-truth components of one frame (see
    :func:`match_instances`)."""

    gt: np.ndarray             # int32 (H, W) ground-truth component ids, 0 none
    gt_counted: np.ndarray     # bool per component id: big enough to count (index 0 False)
    counted: np.ndarray        # bool per instance id: has labelled (non-void) pixels (index 0 False)
    true: np.ndarray           # bool per instance id: precision >= INSTANCE_PPV_MIN (index 0 False)
    pairs: np.ndarray          # (P, 2) distinct (instance id, component id) overlaps on labelled pixels
    gt_boxes: np.ndarray       # (n components, 4) x0, y0, x1, y1 (x1/y1 exclusive) per component id

    def detected(self, instance_ok: np.ndarray | None = None) -> np.ndarray:
        """Component ids overlapped by a true instance (and, given, one with ``instance_ok[id]``)."""
        ok = self.true if instance_ok is None else self.true & instance_ok
        return np.unique(self.pairs[ok[self.pairs[:, 0]], 1])

    def counts(self) -> dict:
        detected = self.detected()
        n_true_pairs = int(np.count_nonzero(self.true[self.pairs[:, 0]]))
        return {"instances": int(self.counted.sum()), "false_instances": int((self.counted & ~self.true).sum()),
                "gt_components": int(np.count_nonzero(self.gt_counted)), "gt_detected": int(detected.size),
                "gt_fragments": n_true_pairs}


def match_instances(instances: np.ndarray, labels: np.ndarray, instsize: int) -> InstanceMatch:
    """The detector's instances against the ground-truth components of one frame.

    Ground truth: 8-connected components of label 1; components smaller than ``instsize`` pixels
    become void (as in the official component metrics). An instance's precision is the share of its
    labelled (non-void) pixels that lie on ground-truth components; an instance with precision below
    0.5 is a false instance, one entirely on void is not counted. A ground-truth component is
    detected when a true (precision >= 0.5) instance overlaps it; the true instances overlapping a
    detected component are its fragments (1 = one obstacle, one instance).
    """
    if instances.shape != labels.shape:
        raise ValueError(f"instances {instances.shape} and labels {labels.shape} differ in size")
    n_g, gt, stats, _ = cv2.connectedComponentsWithStats((labels == 1).view(np.uint8), connectivity=8,
                                                         ltype=cv2.CV_32S)
    g_area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    boxes = np.stack([x0, y0, x0 + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]], 1)
    small = g_area < instsize
    small[0] = False
    void = labels == 255
    if small.any():
        void = void | small[gt]
    inst = instances.astype(np.int64, copy=False)
    k = int(inst.max(initial=0))
    sel = (inst > 0) & ~void
    i, g = inst[sel], gt[sel]
    total = np.bincount(i, minlength=k + 1)
    on_gt = np.bincount(i[g > 0], minlength=k + 1)
    counted = total > 0
    counted[0] = False
    true = counted & (on_gt >= INSTANCE_PPV_MIN * np.maximum(total, 1))
    on = g > 0
    pairs = np.unique(np.stack([i[on], g[on].astype(np.int64)], axis=1), axis=0) if on.any() \
        else np.zeros((0, 2), np.int64)
    gt_counted = ~small
    gt_counted[0] = False
    return InstanceMatch(gt, gt_counted, counted, true, pairs, boxes)


def instance_counts(instances: np.ndarray, labels: np.ndarray, instsize: int) -> dict:
    """Counts of :func:`match_instances`: instances, false instances, ground-truth components,
    detected components and the fragments of the detected ones."""
    return match_instances(instances, labels, instsize).counts()


def component_boxes(match: InstanceMatch) -> dict[int, tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) box (x1/y1 exclusive) of every counted ground-truth component."""
    return {int(c): tuple(int(v) for v in match.gt_boxes[c]) for c in np.flatnonzero(match.gt_counted)}


def match_boxes(boxes: list[tuple[int, int, int, int]], match: InstanceMatch, labels: np.ndarray
                ) -> list[tuple[bool, bool, set[int]]]:
    """Reports that have a box but no pixels (a tracker's coasted obstacles) against the ground truth
    of one frame, by the box analogue of :func:`match_instances`: a box is true when at least
    ``INSTANCE_PPV_MIN`` of its area lies inside a counted component's box, and then detects every
    such component; a box (clipped to the image) with no labelled pixel (all void or small
    components) is not counted. Returns (counted, true, detected component ids) per box."""
    H, W = labels.shape
    comps = component_boxes(match) if boxes else {}
    out = []
    for x0, y0, x1, y1 in boxes:
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
        if x1 <= x0 or y1 <= y0:
            out.append((False, False, set()))
            continue
        g = match.gt[y0:y1, x0:x1]
        labelled = (labels[y0:y1, x0:x1] != 255) & ~((g > 0) & ~match.gt_counted[g])
        if not labelled.any():
            out.append((False, False, set()))
            continue
        area = (x1 - x0) * (y1 - y0)
        hit = {c for c, (a0, b0, a1, b1) in comps.items()
               if max(0, min(x1, a1) - max(x0, a0)) * max(0, min(y1, b1) - max(y0, b0)) >= INSTANCE_PPV_MIN * area}
        out.append((True, bool(hit), hit))
    return out
