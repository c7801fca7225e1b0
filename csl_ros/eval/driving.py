"""Distance-aware driving metrics of ``csl-ros evaluate`` (ROS-free).

A robot cares whether the obstacle 25 m ahead is reported in time and how often it brakes for
nothing, not about pixel AP. Per scored frame, for every ground-truth obstacle component (8-connected
component of label 1, the track's size filter as in :func:`~csl_ros.eval.scoring.match_instances`):

* its distance (forward, on the ground), from the best source the bag has:
  ``generator`` (synthroad: the exact distance of the obstacle's centre, from ``/eval/ground_truth``
  and ``/eval/obstacle_ids``), ``camera file`` (the frame's own mounting, e.g. LostAndFound's
  ``*_camera.json``, with the camera_info intrinsics: flat ground at the component's bottom centre),
  ``configured mounting`` (camera_info plus the detector's ``camera_height_m`` / ``camera_pitch_deg``),
  or ``unknown`` (no camera_info);
* whether the detector found it: a true instance (precision >= 0.5) overlaps it.

The detector's false instances are placed by their own flat-ground contact point with the same
geometry. Both outputs are scored side by side: **per frame** (every instance) and **tracked** (only
instances whose track is confirmed, :mod:`csl_ros.pipeline.tracking` with the run's ``track_*``
settings, plus with ``track_coast`` the confirmed tracks missed in the frame, at their predicted
boxes: :func:`~csl_ros.eval.instance_match.match_boxes`). Reported: recall and false alarms per frame
by distance band (``BANDS``), recall within ``NEAR_M``, false alarms per minute of driving (frames x
the bag's median frame period), and for obstacles with an identity across frames (synthroad) the
detection range: the distance at which an obstacle is first detected, and the distance from which it
is detected in every later frame until it leaves the view or comes nearer than
``HOLD_MIN_DISTANCE_M`` ("held").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from csl_ros.eval.figures import legend_below, new_figure, save_figure
from csl_ros.eval.instance_match import InstanceMatch, match_boxes, match_instances
from csl_ros.pipeline.geometry import CameraGeometry
from csl_ros.pipeline.instances import describe_instances, faint_candidates
from csl_ros.pipeline.tracking import Tracker, TrackingParams

BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, 50.0), (50.0, math.inf))
NEAR_M = 30.0                 # "the obstacles that matter": recall within this distance
HOLD_MIN_DISTANCE_M = 5.0     # closer than this an obstacle leaves the view under the bonnet
OUTPUTS = ("per_frame", "tracked")
SOURCES = ("generator", "camera file", "configured mounting", "unknown")


def band_label(lo: float, hi: float) -> str:
    return f"{lo:g}+ m" if math.isinf(hi) else f"{lo:g}-{hi:g} m"


def band_of(distance: float | None) -> int | None:
    """Index into ``BANDS`` (lower edge inclusive), None for an unknown distance."""
    if distance is None or not np.isfinite(distance):
        return None
    for k, (lo, hi) in enumerate(BANDS):
        if lo <= distance < hi:
            return k
    return None   # behind the camera (negative): treated as unknown


@dataclass
class GroundTruth:
    """What a bag frame knows beyond its label image (see ``csl_ros.eval.bag``)."""

    camera_info: dict | None = None      # intrinsics of the image (fx, fy, cx, cy, width, height)
    camera: dict | None = None           # /eval/ground_truth "camera": mounting (height_m, pitch_deg)
    obstacles: list | None = None        # /eval/ground_truth "obstacles" (synthroad generator)
    obstacle_ids: np.ndarray | None = None   # (H, W) uint8, k = obstacles[k - 1]


def ground_truth_of(frame) -> GroundTruth:
    """The :class:`GroundTruth` of a :class:`csl_ros.eval.bag.BagFrame`."""
    truth = frame.ground_truth or {}
    return GroundTruth(frame.camera_info, truth.get("camera"), truth.get("obstacles"), frame.obstacle_ids)


def frame_geometry(truth: GroundTruth | None, shape, config) -> tuple[CameraGeometry | None, str]:
    """Flat-ground geometry of a frame and where its mounting came from (a ``SOURCES`` name)."""
    if truth is None:
        return None, "unknown"
    intr = truth.camera_info if truth.camera_info and truth.camera_info.get("fx", 0) > 0 else None
    mount = truth.camera if truth.camera and truth.camera.get("height_m") is not None else None
    if intr is None and mount is not None and mount.get("fx", 0) > 0:
        intr = mount
    if intr is None or intr.get("fy", 0) <= 0:
        return None, "unknown"
    if mount is not None:
        height, pitch, source = float(mount["height_m"]), float(mount.get("pitch_deg", 0.0)), "camera file"
    else:
        height, pitch, source = config.camera_height_m, config.camera_pitch_deg, "configured mounting"
    cam = CameraGeometry(float(intr["fx"]), float(intr["fy"]), float(intr["cx"]), float(intr["cy"]), height, pitch)
    h, w = shape[:2]
    if intr.get("width") and intr.get("height") and (intr["width"], intr["height"]) != (w, h):
        cam = cam.scaled(w / intr["width"], h / intr["height"])
    return cam, source


def component_distances(gt: np.ndarray, counted: np.ndarray, truth: GroundTruth | None,
                        camera: CameraGeometry | None, camera_source: str) -> dict[int, tuple]:
    """{component id: (distance_m or None, source, physical obstacle key or None)} of the counted
    ground-truth components. Synthroad components take the generator's obstacle under most of their
    pixels; the others the flat-ground distance of their bottom-centre pixel (as the detector's
    contact point, :func:`csl_ros.pipeline.instances.describe_instances`)."""
    ids = np.flatnonzero(counted)
    out: dict[int, tuple] = {}
    if ids.size == 0:
        return out
    if truth is not None and truth.obstacles and truth.obstacle_ids is not None \
            and truth.obstacle_ids.shape == gt.shape:
        on = gt > 0
        pairs = np.bincount(gt[on].astype(np.int64) * 256 + truth.obstacle_ids[on], minlength=(int(gt.max()) + 1) * 256)
        table = pairs.reshape(-1, 256)
        for c in ids:
            row = table[c].copy()
            row[0] = 0
            k = int(row.argmax())
            if row[k] > 0 and k <= len(truth.obstacles):
                ob = truth.obstacles[k - 1]
                out[int(c)] = (float(ob["distance_m"]), "generator", ob.get("instance_id"))
    missing = [int(c) for c in ids if int(c) not in out]
    if missing:
        recs = {}
        if camera is not None:
            comp = np.where(np.isin(gt, missing), gt, 0).astype(np.uint16)
            recs = {r.id: r for r in describe_instances(comp, np.zeros(gt.shape, np.float32), camera)}
        for c in missing:
            r = recs.get(c)
            if r is not None and r.distance_m is not None:
                out[c] = (float(r.distance_m), camera_source, None)
            else:
                out[c] = (None, "unknown", None)
    return out


class _Tally:
    """Counts by band for one output (per frame or tracked)."""

    def __init__(self):
        n = len(BANDS) + 1                 # last slot: unknown distance
        self.gt = np.zeros(n, np.int64)
        self.detected = np.zeros(n, np.int64)
        self.false_alarms = np.zeros(n, np.int64)
        self.fragments = 0
        self.detected_total = 0

    @staticmethod
    def slot(distance) -> int:
        b = band_of(distance)
        return len(BANDS) if b is None else b

    def result(self, frames: int, minutes: float | None) -> dict:
        rows = []
        for k in range(len(BANDS) + 1):
            label = band_label(*BANDS[k]) if k < len(BANDS) else "unknown"
            rows.append({"band": label, "gt": int(self.gt[k]), "detected": int(self.detected[k]),
                         "recall": self.detected[k] / self.gt[k] if self.gt[k] else None,
                         "false_alarms": int(self.false_alarms[k]),
                         "false_alarms_per_frame": self.false_alarms[k] / frames if frames else None})
        near = [k for k, (lo, hi) in enumerate(BANDS) if hi <= NEAR_M]
        g, d = int(self.gt[near].sum()), int(self.detected[near].sum())
        fa = int(self.false_alarms.sum())
        return {"bands": rows,
                "near": {"within_m": NEAR_M, "gt": g, "detected": d, "recall": d / g if g else None},
                "false_alarms": fa, "false_alarms_per_frame": fa / frames if frames else None,
                "false_alarms_per_minute": fa / minutes if minutes else None,
                "fragmentation": self.fragments / self.detected_total if self.detected_total else None}


class DrivingAccumulator:
    """Streams the driving metrics of one sequence (one bag); see the module docstring."""

    def __init__(self, config, instsize: int):
        self.config = config
        self.instsize = int(instsize)
        self.tracker = Tracker(TrackingParams.from_config(config))
        self.tally = {o: _Tally() for o in OUTPUTS}
        self.sources = {s: 0 for s in SOURCES}
        self.sequences: list[list[int]] = [[]]   # stamps of each sequence (drive)
        self.sightings: dict = {}         # (sequence, obstacle key) -> [(stamp, distance, {output: detected})]

    @property
    def stamps(self) -> list[int]:
        return [t for seq in self.sequences for t in seq]

    def new_sequence(self) -> None:
        """The next frames belong to another drive: tracks and obstacle identities start afresh."""
        if self.sequences[-1]:
            self.sequences.append([])
        self.tracker.reset()

    def add(self, stamp_ns: int, labels: np.ndarray, instances: np.ndarray, scores: np.ndarray,
            truth: GroundTruth | None, match: InstanceMatch | None = None,
            geometry: tuple[CameraGeometry | None, str] | None = None,
            candidates: list | None = None) -> dict:
        """Score one frame (in stamp order); returns its per-frame counts. ``match`` and ``geometry``:
        the frame's :func:`match_instances` and :func:`frame_geometry` when the caller already has them
        (same instances, labels, instsize and configuration). ``candidates``: the frame's
        :func:`~csl_ros.pipeline.instances.faint_candidates` (default: computed from ``scores`` without
        regions) for ``track_continue_ratio`` < 1."""
        cam, cam_source = geometry if geometry is not None else frame_geometry(truth, labels.shape, self.config)
        m = match if match is not None else match_instances(instances, labels, self.instsize)
        records = describe_instances(instances, scores, cam)
        if candidates is None:
            candidates = faint_candidates(scores, None, self.config, cam)
        # reports without pixels in the instance image (faint continuations, coasted predictions): by box
        ghosts = [r for r in self.tracker.update(records, TrackingParams.from_config(self.config), candidates)
                  if r.coasted or r.faint]
        ghost_match = match_boxes([g.bbox for g in ghosts], m, labels)
        confirmed = np.zeros(m.true.size, bool)
        dist = np.full(m.true.size, np.nan)
        for r in records:
            if r.instance < confirmed.size:
                confirmed[r.instance] = r.confirmed
                dist[r.instance] = np.nan if r.distance_m is None else r.distance_m
        shown = {"per_frame": m.counted, "tracked": m.counted & confirmed}
        comps = component_distances(m.gt, m.gt_counted, truth, cam, cam_source)
        self.sequences[-1].append(int(stamp_ns))
        row = {}
        detected_by = {}
        for out, ok in shown.items():
            t = self.tally[out]
            detected = detected_by[out] = set(m.detected(ok).tolist())
            true_pairs = m.pairs[(m.true & ok)[m.pairs[:, 0]]]
            t.fragments += int(true_pairs.shape[0])
            false_at = [None if np.isnan(dist[i]) else float(dist[i]) for i in np.flatnonzero(ok & ~m.true)]
            if out == "tracked":   # faint and coasted reports too: scored by their box
                for g, (counted, true, hit) in zip(ghosts, ghost_match):
                    detected |= hit
                    t.fragments += len(hit)
                    if counted and not true:
                        false_at.append(g.distance_m)
            t.detected_total += len(detected)
            for c, (d, _, _) in comps.items():
                s = t.slot(d)
                t.gt[s] += 1
                t.detected[s] += c in detected
            for d in false_at:
                t.false_alarms[t.slot(d)] += 1
            row[out] = {"detected": len(detected), "false_alarms": len(false_at)}
        for c, (d, source, key) in comps.items():
            self.sources[source] += 1
            if key is not None:
                self.sightings.setdefault((len(self.sequences) - 1, key), []).append(
                    (int(stamp_ns), d, {o: c in detected_by[o] for o in OUTPUTS}))
        row["gt"] = len(comps)
        return row

    def _minutes(self) -> tuple[float | None, float | None]:
        """Minutes of driving (each sequence: its frames x its median frame period) and the period."""
        diffs = [np.diff(sorted(seq)) for seq in self.sequences if len(seq) >= 2]
        if not diffs:
            return None, None
        periods = [float(np.median(d)) / 1e9 for d in diffs]
        if min(periods) <= 0:
            return None, None
        n = [len(seq) for seq in self.sequences if len(seq) >= 2]
        return sum(k * t for k, t in zip(n, periods)) / 60.0, float(np.median(periods))

    def detection_range(self, output: str) -> dict:
        """Per physical obstacle: distance at first detection and from which it is held."""
        rows = []
        for key, raw in self.sightings.items():
            # one sighting per frame (an occluder can cut an obstacle into two components)
            by_stamp: dict[int, tuple] = {}
            for t, d, det in raw:
                if t in by_stamp:
                    d0, det0 = by_stamp[t]
                    d, det = min(d, d0), {o: det[o] or det0[o] for o in OUTPUTS}
                by_stamp[t] = (d, det)
            seen = [(t, *by_stamp[t]) for t in sorted(by_stamp)]
            first = next((d for _, d, det in seen if det[output]), None)
            held = None
            for j in range(len(seen) - 1, -1, -1):   # walk back from the last sighting
                _, d, det = seen[j]
                if det[output]:
                    held = d
                elif d >= HOLD_MIN_DISTANCE_M:
                    break
            rows.append({"obstacle": key[1] if len(self.sequences) == 1 else list(key), "frames": len(seen),
                         "max_distance_m": max(d for _, d, _ in seen), "first_detected_m": first,
                         "held_from_m": held})
        firsts = [r["first_detected_m"] for r in rows if r["first_detected_m"] is not None]
        helds = [r["held_from_m"] for r in rows if r["held_from_m"] is not None]
        return {"obstacles": len(rows), "detected": len(firsts), "held": len(helds),
                "median_first_detected_m": float(np.median(firsts)) if firsts else None,
                "median_held_from_m": float(np.median(helds)) if helds else None, "per_obstacle": rows}

    def result(self) -> dict:
        frames = len(self.stamps)
        minutes, period = self._minutes()
        p = TrackingParams.from_config(self.config)
        out = {
            "description": __doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else "",
            "frames": frames, "sequences": sum(1 for seq in self.sequences if seq),
            "frame_period_s": period, "minutes": minutes,
            "bands": [band_label(*b) for b in BANDS] + ["unknown"], "near_m": NEAR_M,
            "distance_sources": {k: v for k, v in self.sources.items() if v},
            "tracking": {"confirm_hits": p.confirm_hits, "confirm_window": p.confirm_window,
                         "max_missed": p.max_missed, "coast": p.coast, "gate_m": p.gate_m,
                         "min_iou": p.min_iou, "continue_ratio": self.config.track_continue_ratio},
        }
        for o in OUTPUTS:
            out[o] = self.tally[o].result(frames, minutes)
            if self.sightings:
                out[o]["detection_range"] = self.detection_range(o)
        return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _num(v, fmt="{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def band_table(d: dict) -> tuple[list[str], list[list]]:
    """Header and rows of the distance-band table (per-frame and tracked side by side)."""
    header = ["distance", "GT obstacles", "recall per frame %", "recall tracked %",
              "false alarms/frame per frame", "false alarms/frame tracked"]
    rows = []
    for k, label in enumerate(d["bands"]):
        pf, tr = d["per_frame"]["bands"][k], d["tracked"]["bands"][k]
        if label == "unknown" and pf["gt"] == 0 and pf["false_alarms"] == 0 and tr["false_alarms"] == 0:
            continue
        rows.append([label, pf["gt"], _pct(pf["recall"]), _pct(tr["recall"]),
                     _num(pf["false_alarms_per_frame"], "{:.3f}"), _num(tr["false_alarms_per_frame"], "{:.3f}")])
    pf, tr = d["per_frame"], d["tracked"]
    rows.append([f"within {d['near_m']:g} m / all", pf["near"]["gt"], _pct(pf["near"]["recall"]),
                 _pct(tr["near"]["recall"]), _num(pf["false_alarms_per_frame"], "{:.3f}"),
                 _num(tr["false_alarms_per_frame"], "{:.3f}")])
    return header, rows


def summary_rows(d: dict) -> tuple[list[str], list[list]]:
    """Per output: near recall, false alarms per frame and minute, fragmentation, detection range."""
    header = ["output", f"recall within {d['near_m']:g} m %", "false alarms/frame", "false alarms/min",
              "fragmentation (instances per detected obstacle)", "obstacles detected/held",
              "median first detected at m", "median held from m"]
    rows = []
    for o in OUTPUTS:
        r = d[o]
        dr = r.get("detection_range") or {}
        rows.append([o.replace("_", " "), _pct(r["near"]["recall"]), _num(r["false_alarms_per_frame"], "{:.3f}"),
                     _num(r["false_alarms_per_minute"], "{:.1f}"), _num(r["fragmentation"]),
                     f"{dr.get('detected', 'n/a')}/{dr.get('held', 'n/a')} of {dr.get('obstacles', 'n/a')}",
                     _num(dr.get("median_first_detected_m"), "{:.1f}"), _num(dr.get("median_held_from_m"), "{:.1f}")])
    return header, rows


def driving_summary_line(d: dict) -> str:
    """One line for the terminal: near recall and false alarms, per frame and tracked."""
    if not d.get("frames"):
        return "driving: no scored frame"
    parts = []
    for o in OUTPUTS:
        r = d[o]
        parts.append(f"{o.replace('_', ' ')}: recall within {d['near_m']:g} m {_pct(r['near']['recall'])} % "
                     f"({r['near']['detected']}/{r['near']['gt']}), {_num(r['false_alarms_per_frame'], '{:.3f}')} "
                     f"false alarms/frame, fragmentation {_num(r['fragmentation'])}")
    return "driving: " + "; ".join(parts)


def plot_bands(d: dict, path) -> object:
    """Recall and false alarms per frame by distance band, per frame vs tracked."""
    labels = [b for b in d["bands"] if b != "unknown"]
    x = np.arange(len(labels))
    fig = new_figure(9.0, 3.4)
    a1, a2 = fig.add_subplot(121), fig.add_subplot(122)
    for j, o in enumerate(OUTPUTS):
        rec = [d[o]["bands"][k]["recall"] for k in range(len(labels))]
        fa = [d[o]["bands"][k]["false_alarms_per_frame"] or 0.0 for k in range(len(labels))]
        a1.bar(x + (j - 0.5) * 0.38, [np.nan if r is None else 100 * r for r in rec], 0.38, label=o.replace("_", " "))
        a2.bar(x + (j - 0.5) * 0.38, fa, 0.38, label=o.replace("_", " "))
    for ax, title, unit in ((a1, "obstacle recall by distance", "recall %"),
                            (a2, "false alarms by distance", "false alarms per frame")):
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("distance band (ground truth; false alarms: their own contact point)", fontsize=7)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(title, fontsize=9)
        legend_below(ax, ncol=2)
    a1.set_ylim(0, 100)
    return save_figure(fig, path)


def add_report_section(doc, d: dict | None, figure_rel: str | None) -> None:
    """The "Driving metrics" section of the evaluation report (``csl_ros.eval.report.Doc``)."""
    doc.h(2, "Driving metrics: by distance, tracked vs per frame")
    if not d or not d.get("frames"):
        doc.p("Not computed (no scored frame).")
        return
    src = ", ".join(f"{k} {v}" for k, v in d["distance_sources"].items()) or "none"
    t = d["tracking"]
    coast = (", reported at their predicted place while missed", " (a coasted track: by its predicted box "
             "against the obstacles' boxes)") if t.get("coast") else ("", "")
    if t.get("continue_ratio", 1.0) < 1:
        coast = (coast[0] + f", continued on faint areas down to {t['continue_ratio']:g} x the threshold",
                 coast[1] or " (a faint continuation: by its box against the obstacles' boxes)")
    doc.p(f"{d['frames']} frames; ground-truth obstacle distances from: {src}. Tracked = obstacles whose "
          f"track is confirmed ({t['confirm_hits']} of {t['confirm_window']} frames, deleted after "
          f"{t['max_missed']} missed{coast[0]}). An obstacle is detected when a true instance overlaps it; "
          f"a false alarm is an instance with less than half of its labelled pixels on obstacles, placed by "
          f"its own ground contact point{coast[1]}.")
    header, rows = band_table(d)
    doc.table(header, rows)
    header, rows = summary_rows(d)
    doc.table(header, rows)
    if figure_rel:
        doc.img(figure_rel, "recall and false alarms per frame by distance band")
