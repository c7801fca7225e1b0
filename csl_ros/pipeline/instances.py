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
    Returns a uint16 label image (0 = none), ids 1..K ordered by (component, region).
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
        span = int(n_cc) * (int(reg.max()) + 1)
        if span <= 1 << 22:  # dense table: O(pixels), no sort
            used = np.zeros(span, np.int64)
            used[key] = 1
            compact = np.cumsum(used)  # 1-based id of every used key
            ids = compact[key]
        else:
            ids = np.unique(key, return_inverse=True)[1].ravel() + 1
        labels = np.zeros(scores.size, np.int64)
        labels[idx] = ids
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
    from scipy import ndimage

    lab = instances.astype(np.int32, copy=False)
    import torch

    flat = lab.ravel()
    area = np.bincount(flat, minlength=k + 1).astype(np.int64)
    ssum = np.bincount(flat, weights=scores.ravel(), minlength=k + 1)
    # Per-id max without sorting the image (scipy's ndimage.maximum argsorts every pixel).
    smax = torch.zeros(k + 1, dtype=torch.float32).scatter_reduce_(
        0, torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(np.ascontiguousarray(scores, np.float32).ravel()),
        "amax", include_self=False).numpy()
    boxes = ndimage.find_objects(lab, max_label=k)  # C loops: one slice pair per id
    x0 = np.zeros(k + 1, np.int64); x1 = np.full(k + 1, -1, np.int64)
    y0 = np.zeros(k + 1, np.int64); y1 = np.full(k + 1, -1, np.int64)
    bx = np.zeros(k + 1)
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        y0[i], y1[i] = box[0].start, box[0].stop - 1
        x0[i], x1[i] = box[1].start, box[1].stop - 1
        # Contact point: mean column of the instance's bottom-most row.
        cols = np.flatnonzero(lab[y1[i], box[1]] == i)
        bx[i] = x0[i] + cols.mean()
    out = []
    for i in range(1, k + 1):  # one record per instance; the statistics above are computed in C
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
