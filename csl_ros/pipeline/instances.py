"""OOD instances and obstacle records from a fused anomaly map and the student's regions."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from csl_ros.pipeline.geometry import CameraGeometry


@dataclass
class Obstacle:
    """One OOD instance. Pixel quantities refer to the input image; metric ones need a camera."""

    id: int
    area_px: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)
    mean_score: float
    max_score: float
    contact_point_m: tuple[float, float, float] | None = None  # optical frame: x right, y down, z fwd
    distance_m: float | None = None  # horizontal forward distance of the contact point
    width_m: float | None = None
    height_m: float | None = None

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def extract_instances(scores: np.ndarray, regions: np.ndarray | None, threshold: float, min_area: int,
                      roi: np.ndarray | None = None) -> np.ndarray:
    """Label OOD instances: 8-connected components of ``scores >= threshold`` intersected with the
    student's regions (a component spanning two regions becomes two instances).

    ``roi``: optional boolean mask (e.g. the drivable road); instances not touching it are dropped.
    Returns a uint16 label image (0 = none), ids 1..K ordered by first appearance (row-major).
    """
    mask = (scores >= threshold).astype(np.uint8)
    n_cc, cc = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    if n_cc <= 1:
        return np.zeros(scores.shape, np.uint16)
    if regions is not None:
        # Unique (component, region) pairs -> instance ids. Only anomalous pixels are touched (few),
        # and there is no loop over regions.
        idx = np.flatnonzero(mask)
        reg = regions.ravel()[idx].astype(np.int64)
        reg -= reg.min()
        key = cc.ravel()[idx].astype(np.int64) * (int(reg.max()) + 1) + reg
        _, inv = np.unique(key, return_inverse=True)
        labels = np.zeros(scores.size, np.int64)
        labels[idx] = inv.ravel() + 1
        labels = labels.reshape(scores.shape)
    else:
        labels = cc.astype(np.int64)
    area = np.bincount(labels.ravel())
    keep = area >= max(int(min_area), 1)
    keep[0] = False
    if roi is not None:
        touches = np.bincount(labels[roi].ravel(), minlength=area.size) > 0
        keep &= touches
    remap = np.zeros(area.size, np.int64)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    if keep.sum() > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(keep.sum())} instances do not fit a uint16 label image")
    return remap[labels].astype(np.uint16)


def describe_instances(instances: np.ndarray, scores: np.ndarray,
                       camera: CameraGeometry | None = None) -> list[Obstacle]:
    """Per-instance records: area, bounding box, mean/max score and, with a camera, the ground contact
    point (bottom centre of the instance) and metric width/height at that distance."""
    k = int(instances.max())
    if k == 0:
        return []
    flat = instances.ravel().astype(np.int64)
    sel = flat > 0
    ids = flat[sel]
    s = scores.ravel()[sel].astype(np.float64)
    ys, xs = np.divmod(np.flatnonzero(sel), instances.shape[1])
    area = np.bincount(ids, minlength=k + 1)
    ssum = np.bincount(ids, weights=s, minlength=k + 1)
    smax = np.full(k + 1, -np.inf)
    np.maximum.at(smax, ids, s)
    x0 = np.full(k + 1, np.iinfo(np.int64).max); np.minimum.at(x0, ids, xs)
    y0 = np.full(k + 1, np.iinfo(np.int64).max); np.minimum.at(y0, ids, ys)
    x1 = np.full(k + 1, -1); np.maximum.at(x1, ids, xs)
    y1 = np.full(k + 1, -1); np.maximum.at(y1, ids, ys)
    # Contact point: mean column of the instance's bottom-most row.
    bottom = ys == y1[ids]
    bcount = np.bincount(ids[bottom], minlength=k + 1)
    bx = np.bincount(ids[bottom], weights=xs[bottom], minlength=k + 1) / np.maximum(bcount, 1)
    out = []
    for i in range(1, k + 1):  # one record per instance (tens at most), arrays above are vectorised
        if area[i] == 0:
            continue
        ob = Obstacle(id=i, area_px=int(area[i]), bbox=(int(x0[i]), int(y0[i]), int(x1[i]) + 1, int(y1[i]) + 1),
                      mean_score=float(ssum[i] / area[i]), max_score=float(smax[i]))
        if camera is not None:
            pts, dist = camera.ground_point(bx[i] + 0.5, y1[i] + 1.0)  # bottom edge of the last row
            if np.isfinite(dist):
                z = float(pts[2])
                ob.contact_point_m = (float(pts[0]), float(pts[1]), z)
                ob.distance_m = float(dist)
                ob.width_m = float((x1[i] + 1 - x0[i]) * z / camera.fx)
                ob.height_m = float((y1[i] + 1 - y0[i]) * z / camera.fy)
        out.append(ob)
    return out
