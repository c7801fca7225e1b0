"""OOD instances and obstacle records from a fused anomaly map and the student's regions."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from csl_ros.pipeline.geometry import CameraGeometry


@dataclass
class Obstacle:
    """One OOD instance. Pixel quantities refer to the input image; metric ones need a camera.

    ``id`` is the instance's label in the instance image until a :class:`~csl_ros.pipeline.tracking.
    Tracker` has seen it; then it is the track id, stable across frames (``instance`` keeps the label).
    """

    id: int
    area_px: int
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)
    mean_score: float
    max_score: float
    contact_point_m: tuple[float, float, float] | None = None  # optical frame: x right, y down, z fwd
    distance_m: float | None = None  # horizontal forward distance of the contact point
    width_m: float | None = None
    height_m: float | None = None
    instance: int = 0                 # label of its pixels in the frame's instance image
    track_age: int | None = None      # frames since its track was born (0: new this frame)
    track_hits: int | None = None     # frames of the track's confirmation window it was seen in
    confirmed: bool = True            # False while its track awaits confirmation (k of n)
    coasted: int = 0                  # frames since its track's last detection (0: detected in this frame)
    faint: bool = False               # a faint instance that continues a track (Tracker, candidates)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def extract_instances(scores: np.ndarray, regions: np.ndarray | None, threshold: float, min_area: int,
                      roi: np.ndarray | None = None, *, min_split_fraction: float = 0.0,
                      low_threshold: float | None = None, min_bottom_row: int = 0) -> np.ndarray:
    """Label OOD instances: 8-connected components of ``scores >= threshold``, cut along the student's
    regions only where the cut separates substantial parts.

    With ``low_threshold`` (below ``threshold``): hysteresis thresholding (Canny 1986) instead, the
    8-connected components of ``scores >= low_threshold`` that hold at least one pixel at or above
    ``threshold``; components that never reach it are not instances.

    One physical obstacle must stay one instance: a region piece of a component is its own instance
    only when it covers at least ``min_split_fraction`` of the component and at least ``min_area``
    pixels (two touching obstacles); smaller pieces (a region boundary crossing the obstacle, a sliver)
    join the component's largest piece instead of becoming fragments or holes. ``min_split_fraction``
    0 keeps every piece of ``min_area`` pixels (the plain component x region split); above 0.5 a
    component is never split.

    ``min_bottom_row`` (the output range in image rows, :meth:`CameraGeometry.first_row_within`): the
    pieces (component x region, or whole components without regions) whose lowest pixel lies above this
    row stand beyond the range or never touch the road; they are removed *before* the instances form, so
    a near obstacle whose anomalous area runs into the far horizon band (scenery the teacher does not
    know) stays an instance of its own instead of the foot of one oversized false instance.

    ``roi``: optional boolean mask (e.g. the drivable road); instances not touching it are dropped.
    Returns a uint16 label image (0 = none), ids 1..K ordered by (component, region).
    """
    low = threshold if low_threshold is None else min(float(low_threshold), threshold)
    mask = (scores >= low).astype(np.uint8)
    if min_bottom_row > 0:
        mask = _without_pieces_above(mask, regions, int(min_bottom_row))
    n_cc, cc = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    if n_cc <= 1:
        return np.zeros(scores.shape, np.uint16)
    if low < threshold:   # keep the components that reach the high threshold somewhere
        strong = np.zeros(n_cc, bool)
        strong[cc[scores >= threshold]] = True
        strong[0] = False
        if not strong.any():
            return np.zeros(scores.shape, np.uint16)
        mask &= strong[cc].astype(np.uint8)
    # Everything below touches only the anomalous pixels (few), never the whole image again.
    idx = np.flatnonzero(mask)
    comp = cc.ravel()[idx].astype(np.int64)
    if regions is not None:
        ids = _piece_ids(idx, comp, regions, n_cc)
        ids = _merge_small_pieces(ids, comp, n_cc, max(int(min_area), 1), float(min_split_fraction))
    else:
        ids = comp
    area = np.bincount(ids)
    keep = area >= max(int(min_area), 1)
    keep[0] = False
    if roi is not None:
        keep &= np.bincount(ids[roi.ravel()[idx]], minlength=area.size) > 0
    if keep.sum() > np.iinfo(np.uint16).max:
        raise ValueError(f"{int(keep.sum())} instances do not fit a uint16 label image")
    remap = np.zeros(area.size, np.uint16)
    remap[keep] = np.arange(1, int(keep.sum()) + 1)
    out = np.zeros(scores.size, np.uint16)
    out[idx] = remap[ids]
    return out.reshape(scores.shape)


def drop_taller_than(instances: np.ndarray, obstacles: list[Obstacle],
                     max_height_m: float) -> tuple[np.ndarray, list[Obstacle]]:
    """Drop the instances taller than ``max_height_m`` at the distance of their contact point (records
    without a metric height, i.e. without camera geometry, are kept); the rest are renumbered 1..K in
    their order, in the label image and in their records (``id`` and ``instance``)."""
    return _drop(instances, obstacles, {o.instance for o in obstacles
                                        if o.height_m is not None and o.height_m > max_height_m})


def drop_farther_than(instances: np.ndarray, obstacles: list[Obstacle], max_distance_m: float,
                      geometry_known: bool = True) -> tuple[np.ndarray, list[Obstacle]]:
    """Drop the instances whose contact point lies farther ahead than ``max_distance_m``, renumbered as
    :func:`drop_taller_than` does.

    A record without a distance is kept only when there is no camera geometry (``geometry_known``
    False: nothing can be ranged). With geometry, no distance means the instance's bottom lies at or
    above the horizon: it never meets the road, so it is beyond any range (sky, facades, the far
    horizon band) and dropped with the far ones."""
    return _drop(instances, obstacles, {o.instance for o in obstacles
                                        if (o.distance_m is None and geometry_known)
                                        or (o.distance_m is not None and o.distance_m > max_distance_m)})


def _drop(instances: np.ndarray, obstacles: list[Obstacle], gone: set) -> tuple[np.ndarray, list[Obstacle]]:
    if not gone:
        return instances, obstacles
    kept = [o for o in obstacles if o.instance not in gone]
    remap = np.zeros(int(instances.max()) + 1, np.uint16)
    for k, o in enumerate(kept, 1):
        remap[o.instance] = k
        o.id = o.instance = k
    return remap[instances], kept


def obstacles_of(scores: np.ndarray, regions: np.ndarray | None, config, camera: CameraGeometry | None = None,
                 roi: np.ndarray | None = None) -> tuple[np.ndarray, list[Obstacle]]:
    """The detector's instance image and obstacle records for one fused map, with the settings of
    ``config`` (a :class:`csl_ros.config.DetectorConfig`): :func:`extract_instances`, their records
    (:func:`describe_instances`) and, with ``max_obstacle_height_m`` / ``max_obstacle_distance_m``,
    :func:`drop_taller_than` / :func:`drop_farther_than`. The one
    path of the node, ``csl-ros evaluate`` and the driving benchmark."""
    # the output range acts on the pieces first (extract_instances), then on whole instances below
    min_row = (camera.first_row_within(config.max_obstacle_distance_m, scores.shape[0])
               if camera is not None and config.max_obstacle_distance_m > 0 else 0)
    inst = extract_instances(scores, regions, config.score_threshold, config.min_instance_area, roi,
                             min_split_fraction=config.min_split_fraction,
                             low_threshold=config.score_hysteresis * config.score_threshold,
                             min_bottom_row=min_row)
    obstacles = describe_instances(inst, scores, camera)
    if config.max_obstacle_height_m > 0:
        inst, obstacles = drop_taller_than(inst, obstacles, config.max_obstacle_height_m)
    if config.max_obstacle_distance_m > 0:
        inst, obstacles = drop_farther_than(inst, obstacles, config.max_obstacle_distance_m,
                                            geometry_known=camera is not None)
    return inst, obstacles


def _piece_ids(idx: np.ndarray, comp: np.ndarray, regions: np.ndarray, n_cc: int) -> np.ndarray:
    """1-based id of the (component, region) piece of each pixel ``idx`` (flat indices, ``comp`` their
    component ids), ids in (component, region) order, with no loop over regions."""
    reg = regions.ravel()[idx].astype(np.int64)
    reg -= reg.min()
    key = comp * (int(reg.max()) + 1) + reg
    span = int(n_cc) * (int(reg.max()) + 1)
    if span <= 1 << 22:  # dense table: O(pixels), no sort
        used = np.zeros(span, np.int64)
        used[key] = 1
        return np.cumsum(used)[key]  # 1-based id of every used key, in key order
    return np.unique(key, return_inverse=True)[1].ravel() + 1


def _without_pieces_above(mask: np.ndarray, regions: np.ndarray | None, min_bottom_row: int) -> np.ndarray:
    """``mask`` (uint8) without the pieces (8-connected component x region; the components alone
    without regions) whose lowest row is above ``min_bottom_row``."""
    n_cc, cc = cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)
    if n_cc <= 1:
        return mask
    idx = np.flatnonzero(mask)
    comp = cc.ravel()[idx].astype(np.int64)
    pieces = _piece_ids(idx, comp, regions, n_cc) if regions is not None else comp
    lowest = np.zeros(int(pieces.max()) + 1, np.int64)
    np.maximum.at(lowest, pieces, idx // mask.shape[1])
    far = lowest[pieces] < min_bottom_row
    if not far.any():
        return mask
    out = mask.copy()
    out.ravel()[idx[far]] = 0
    return out


def _merge_small_pieces(ids: np.ndarray, comp: np.ndarray, n_cc: int, min_area: int,
                        min_fraction: float) -> np.ndarray:
    """Relabel the (component, region) pieces ``ids`` of every pixel: a piece below ``min_area`` or
    below ``min_fraction`` of its component's area joins the largest piece of its component."""
    piece_area = np.bincount(ids)
    piece_comp = np.zeros(piece_area.size, np.int64)
    piece_comp[ids] = comp
    comp_area = np.bincount(comp, minlength=n_cc)
    pieces = np.flatnonzero(piece_area)
    # the largest piece of each component: sort by (component, -area), take each group's first
    order = pieces[np.lexsort((-piece_area[pieces], piece_comp[pieces]))]
    first = np.r_[True, piece_comp[order][1:] != piece_comp[order][:-1]]
    largest = np.zeros(n_cc, np.int64)
    largest[piece_comp[order[first]]] = order[first]
    small = piece_area < np.maximum(min_area, min_fraction * comp_area[piece_comp])
    target = np.arange(piece_area.size)
    target[small] = largest[piece_comp[small]]
    return target[ids]


def describe_instances(instances: np.ndarray, scores: np.ndarray,
                       camera: CameraGeometry | None = None) -> list[Obstacle]:
    """Per-instance records: area, bounding box, mean/max score and, with a camera, the ground contact
    point (bottom centre of the instance) and metric width/height at that distance."""
    flat = instances.ravel()
    idx = np.flatnonzero(flat)  # only instance pixels: the cost follows the obstacles, not the image
    if idx.size == 0:
        return []

    lab = flat[idx].astype(np.int64)
    k = int(lab.max())
    area = np.bincount(lab, minlength=k + 1)
    vals = np.ascontiguousarray(scores, np.float32).ravel()[idx]
    ssum = np.bincount(lab, weights=vals, minlength=k + 1)
    width = instances.shape[1]
    ys, xs = idx // width, idx % width

    def per_id(values: np.ndarray, how: str) -> np.ndarray:
        # Per-id max/min by one scatter (no sort, no Python loop over instances).
        src = torch.from_numpy(values)
        return torch.zeros(k + 1, dtype=src.dtype).scatter_reduce_(0, torch.from_numpy(lab), src, how,
                                                                   include_self=False).numpy()

    smax = per_id(vals, "amax")
    x0, x1 = per_id(xs, "amin"), per_id(xs, "amax")
    y0, y1 = per_id(ys, "amin"), per_id(ys, "amax")
    # Contact point: mean column of the instance's bottom-most row.
    bottom = ys == y1[lab]
    bx = np.bincount(lab[bottom], weights=xs[bottom], minlength=k + 1) / \
        np.maximum(np.bincount(lab[bottom], minlength=k + 1), 1)
    out = []
    for i in range(1, k + 1):  # one record per instance; the statistics above are computed in C
        if area[i] == 0:
            continue
        ob = Obstacle(id=i, area_px=int(area[i]), bbox=(int(x0[i]), int(y0[i]), int(x1[i]) + 1, int(y1[i]) + 1),
                      mean_score=float(ssum[i] / area[i]), max_score=float(smax[i]), instance=i)
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


def faint_candidates(scores: np.ndarray, regions: np.ndarray | None, config, camera: CameraGeometry | None = None,
                     roi: np.ndarray | None = None) -> list[Obstacle]:
    """The records of the faint instances of one fused map: the instances of :func:`obstacles_of` at
    ``track_continue_ratio`` x ``score_threshold`` (same size, height and range limits) whose scores
    never reach ``score_threshold``, flagged ``faint`` and with ``instance`` 0 (they are not in the
    frame's instance image). Empty when ``track_continue_ratio`` is 1. The tracker continues confirmed
    tracks on them (:class:`~csl_ros.pipeline.tracking.Tracker`)."""
    if config.track_continue_ratio >= 1.0:
        return []
    low = dataclasses.replace(config, score_threshold=config.track_continue_ratio * config.score_threshold,
                              score_hysteresis=1.0)
    _, records = obstacles_of(scores, regions, low, camera, roi)
    out = [r for r in records if r.max_score < config.score_threshold]
    for r in out:
        r.faint, r.instance = True, 0
    return out
