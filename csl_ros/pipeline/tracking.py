"""Obstacle tracking across the frames of one camera stream (ROS-free).

Each frame's obstacle records are associated with the live tracks, greedily by cost:

* on the ground when both have a contact point (camera geometry known): the horizontal distance
  between the contact points must be within ``track_gate_m`` or 20 % of the obstacle's distance,
  whichever is larger (monocular range grows less certain with distance, and the ego vehicle moves
  between frames);
* else in the image: the bounding-box IoU must be at least ``track_min_iou``.

A track is confirmed once it was seen in ``track_confirm_hits`` of the last ``track_confirm_window``
frames (k of n) and stays confirmed until deleted; a track (confirmed or not) is deleted after more
than ``track_max_missed`` consecutive frames without a detection. Confirmation 1 of 1 with ``track_max_missed`` 0 reproduces
per-frame output (every detection reported at once), only with stable ids.

With ``track_coast`` a confirmed track that was missed in a frame is still reported until it is
deleted: a copy of its last detection moved to where its last two detections say it is now (constant
velocity per frame of the bounding box and of the ground contact point and distance: a static obstacle
seen from a car at constant speed), with ``coasted`` = the frames since its last detection and
``instance`` 0 (it has no pixels in this frame's instance image). A detection flickering out for a
frame then stays on the planner's map. A track seen once has no velocity and coasts in place; a
prediction whose box lies entirely at negative image coordinates or whose distance passes zero is not
reported.

With ``candidates`` (:func:`~csl_ros.pipeline.instances.faint_candidates`, ``track_continue_ratio`` < 1)
a confirmed track that no detection matched is associated, by the same cost, with a faint instance of
this frame (ByteTrack's second association, Zhang et al. ECCV 2022): the track counts as seen and the
faint record is reported for it. Faint instances that match no confirmed track are dropped: they
never start or confirm a track.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field

from csl_ros.config import DetectorConfig
from csl_ros.pipeline.instances import Obstacle

GATE_FRACTION_OF_DISTANCE = 0.2


@dataclass(frozen=True)
class TrackingParams:
    """The ``track_*`` settings of :class:`csl_ros.config.DetectorConfig` (which holds their defaults)."""

    confirm_hits: int
    confirm_window: int
    max_missed: int
    gate_m: float
    min_iou: float
    coast: bool = False

    @classmethod
    def from_config(cls, cfg) -> "TrackingParams":
        """From a :class:`csl_ros.config.DetectorConfig` (its ``track_*`` fields)."""
        return cls(cfg.track_confirm_hits, cfg.track_confirm_window, cfg.track_max_missed,
                   cfg.track_gate_m, cfg.track_min_iou, cfg.track_coast)

    @classmethod
    def default(cls, **changes) -> "TrackingParams":
        """The schema's defaults with ``changes`` (field names of this class)."""
        return dataclasses.replace(cls.from_config(DetectorConfig()), **changes)

    @property
    def is_per_frame(self) -> bool:
        return self.confirm_hits == 1 and self.confirm_window == 1 and self.max_missed == 0


@dataclass
class Track:
    id: int
    last: Obstacle                       # the most recent detection
    previous: Obstacle | None = None     # the one before it (for the velocity) ...
    gap: int = 1                         # ... and the frames between the two
    age: int = 0                         # frames since birth
    missed: int = 0                      # consecutive frames without a detection
    confirmed: bool = False
    window: deque = field(default_factory=deque)   # 1 = seen, 0 = missed, newest last

    @property
    def hits(self) -> int:
        return int(sum(self.window))


def box_iou(a, b) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive x1/y1."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def association_cost(track: Obstacle, det: Obstacle, params: TrackingParams) -> float | None:
    """Cost of pairing a track's last detection with a new one; None when outside the gate.

    Costs on the ground are in [0, 1] (distance / gate); image costs in [1, 2] (2 - IoU), so a
    pairing confirmed on the ground is preferred over one by image overlap."""
    if track.contact_point_m is not None and det.contact_point_m is not None:
        dx = track.contact_point_m[0] - det.contact_point_m[0]
        dz = track.contact_point_m[2] - det.contact_point_m[2]
        gate = max(params.gate_m, GATE_FRACTION_OF_DISTANCE * float(det.distance_m or 0.0))
        d = math.hypot(dx, dz)
        return d / gate if d <= gate else None
    iou = box_iou(track.bbox, det.bbox)
    if iou <= 0.0 or iou < params.min_iou:
        return None
    return 2.0 - iou


class Tracker:
    """Stable track ids for one camera stream; see the module docstring."""

    def __init__(self, params: TrackingParams | None = None):
        self.params = params or TrackingParams.default()
        self.tracks: list[Track] = []
        self._next_id = 1
        self.frames = 0

    def reset(self) -> None:
        self.tracks, self._next_id, self.frames = [], 1, 0

    def update(self, obstacles: list[Obstacle], params: TrackingParams | None = None,
               candidates: list[Obstacle] = ()) -> list[Obstacle]:
        """Associate one frame's records (modified in place: ``id`` = track id, ``track_age``,
        ``track_hits``, ``confirmed``) and return them, followed by the faint ``candidates`` that
        continue a confirmed track (module docstring), then the coasted records of confirmed tracks
        missed in this frame when ``coast`` is on. ``params`` replaces the parameters from this frame on
        (run-time reconfiguration)."""
        if params is not None:
            self.params = params
        p = self.params
        if p.confirm_hits > p.confirm_window:
            raise ValueError(f"confirm_hits={p.confirm_hits} exceeds confirm_window={p.confirm_window}")
        self.frames += 1
        used_d = self._associate(range(len(self.tracks)), obstacles, p)   # detection -> track index
        used_t = set(used_d.values())
        # track index -> the faint candidate it continues on: confirmed tracks left without a detection
        continued = {ti: candidates[ci] for ci, ti in self._associate(
            [ti for ti, tr in enumerate(self.tracks) if tr.confirmed and ti not in used_t], candidates, p).items()}
        used_t.update(continued)
        kept: list[Track] = []
        coasted: list[Obstacle] = []
        for ti, tr in enumerate(self.tracks):
            tr.age += 1
            seen = ti in used_t
            tr.window.append(1 if seen else 0)
            while len(tr.window) > p.confirm_window:
                tr.window.popleft()
            if seen:   # its last detection becomes the previous one, tr.missed + 1 frames before this
                tr.previous, tr.gap = tr.last, tr.missed + 1
            tr.missed = 0 if seen else tr.missed + 1
            if not tr.confirmed and tr.hits >= p.confirm_hits:
                tr.confirmed = True
            if tr.missed > p.max_missed:
                continue
            kept.append(tr)
            if p.coast and tr.confirmed and tr.missed:
                ghost = predict(tr, tr.missed)
                if ghost is not None:
                    ghost.track_age, ghost.track_hits = tr.age, tr.hits
                    coasted.append(ghost)
        faint = []
        for ti, ob in continued.items():
            tr = self.tracks[ti]
            tr.last = ob
            ob.id, ob.track_age, ob.track_hits, ob.confirmed = tr.id, tr.age, tr.hits, True
            faint.append(ob)
        for di, ob in enumerate(obstacles):
            if di in used_d:
                tr = self.tracks[used_d[di]]
                tr.last = ob
            else:
                tr = Track(self._next_id, ob, window=deque([1]))
                tr.confirmed = p.confirm_hits <= 1
                self._next_id += 1
                kept.append(tr)
            ob.id, ob.track_age, ob.track_hits, ob.confirmed = tr.id, tr.age, tr.hits, tr.confirmed
        self.tracks = kept
        return obstacles + faint + coasted


    def _associate(self, track_indices, records: list[Obstacle], p: TrackingParams) -> dict[int, int]:
        """{record index: track index}: greedy by :func:`association_cost`, cheapest pairs first (ties to
        the older track), each track and record at most once."""
        pairs = sorted((c, ti, ri) for ti in track_indices for ri, ob in enumerate(records)
                       if (c := association_cost(self.tracks[ti].last, ob, p)) is not None)
        used_t, match = set(), {}
        for _, ti, ri in pairs:
            if ti in used_t or ri in match:
                continue
            used_t.add(ti)
            match[ri] = ti
        return match


def _extrapolate(last, previous, steps: float):
    return tuple(a + (a - b) * steps for a, b in zip(last, previous))


def predict(track: Track, missed: int) -> Obstacle | None:
    """The track's last detection moved ``missed`` frames on at constant velocity (module docstring);
    None when the predicted box is empty at non-negative image coordinates or the distance passed zero."""
    last, prev = track.last, track.previous
    steps = missed / max(track.gap, 1)
    bbox, contact, distance = last.bbox, last.contact_point_m, last.distance_m
    if prev is not None:
        bbox = _extrapolate(last.bbox, prev.bbox, steps)
        if contact is not None and prev.contact_point_m is not None:
            contact = _extrapolate(contact, prev.contact_point_m, steps)
        if distance is not None and prev.distance_m is not None:
            distance = distance + (distance - prev.distance_m) * steps
    x0, y0, x1, y1 = (int(round(v)) for v in bbox)
    if x1 <= max(x0, 0) or y1 <= max(y0, 0) or (distance is not None and distance <= 0):
        return None
    scale = (x1 - x0) * (y1 - y0) / max((last.bbox[2] - last.bbox[0]) * (last.bbox[3] - last.bbox[1]), 1)
    return dataclasses.replace(last, id=track.id, bbox=(x0, y0, x1, y1), area_px=max(1, round(last.area_px * scale)),
                               contact_point_m=contact, distance_m=distance, instance=0, confirmed=True,
                               coasted=missed)
