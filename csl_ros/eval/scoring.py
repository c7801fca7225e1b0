"""Scoring one evaluation run, frame by frame: the common back end of ``csl-ros evaluate``.

Every evaluation mode (the detector in process, the live node over ROS topics, score maps recorded
in a bag) hands each scored frame to one :class:`ScoreSink`. The sink

* streams the official/exact pixel metrics (:class:`~csl_ros.eval.metrics.PixelAccumulator`) and
  per-frame statistics while the frames arrive,
* caches the score maps as float16 (:class:`~csl_ros.eval.metrics.FrameCache`, exact for the
  benchmark, which casts to float16) for the second pass: the official component metrics at the
  dataset's best-F1 threshold,
* keeps what sweeps need (the fused anomaly maps in float32 and the student's regions) so that
  ``score_threshold`` / ``min_instance_area`` / ``max_obstacle_height_m`` sweeps recompute instances and component metrics
  without running the network again,
* keeps a JPEG of each image and its instance map, so the worst frames can be drawn at the end,
* counts the detector's own instances against the ground-truth components (:func:`instance_counts`).

:meth:`ScoreSink.finish` runs the second pass (components and every sweep value in one read of the
cache) and returns the content of ``metrics.json``.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import imageio.v2 as imageio
import numpy as np

from csl_ros.config import DetectorConfig, apply_overrides
from csl_ros.eval.driving import DrivingAccumulator, frame_geometry
# match_instances: also csl_ros.eval.scoring.match_instances, the name the driving metrics' text cites
from csl_ros.eval.instance_match import INSTANCE_PPV_MIN, instance_counts, match_instances  # noqa: F401
from csl_ros.eval.metrics import (ComponentAccumulator, FrameCache, MetricsResult, PixelAccumulator, check_labels,
                                  prepare_scores, track_spec)
from csl_ros.eval.report import frame_panels
from csl_ros.pipeline.instances import faint_candidates, obstacles_of

SWEEPABLE = ("score_threshold", "min_instance_area", "max_obstacle_height_m")
HIST_BINS = 100                 # score histogram over [0, 1]


# --------------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sweep:
    """One swept detector setting and its values (every other setting stays at the config's)."""

    parameter: str
    values: tuple

    def label(self, value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)


def parse_sweep(text: str) -> Sweep:
    """``score_threshold=0.3:0.9:0.1`` (start:stop:step, stop included) or ``name=v1,v2,...``.

    Values are validated by the configuration schema, so an out-of-range value is refused here.
    """
    if "=" not in text:
        raise ValueError(f"--sweep expects NAME=START:STOP:STEP or NAME=V1,V2,..., got {text!r}")
    name, spec = (s.strip() for s in text.split("=", 1))
    if name not in SWEEPABLE:
        raise ValueError(f"--sweep {name!r}: only {', '.join(SWEEPABLE)} can be swept on one pass of "
                         f"network outputs (other settings change the network's output)")
    cast = int if name == "min_instance_area" else float
    try:
        if ":" in spec:
            parts = [float(p) for p in spec.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ValueError(f"--sweep {text!r}: need START <= STOP and STEP > 0")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            raw = [start + i * step for i in range(n)]
        else:
            raw = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError as exc:
        if str(exc):
            raise
        raise ValueError(f"--sweep {text!r}: values must be START:STOP:STEP or a comma list of "
                         f"numbers") from None
    values = []
    for v in raw:
        if cast is int:
            if abs(v - round(v)) > 1e-9:
                raise ValueError(f"--sweep {name}: {v:g} is not an integer")
            v = int(round(v))
        else:
            v = round(v, 10)       # 0.30000000000000004 -> 0.3
        apply_overrides(DetectorConfig(), {name: v})   # range check by the schema
        if v not in values:
            values.append(v)
    if not values:
        raise ValueError(f"--sweep {text!r}: no values")
    return Sweep(name, tuple(values))


def _instance_summary(c: dict) -> dict:
    out = dict(c)
    out["instance_recall"] = c["gt_detected"] / c["gt_components"] if c["gt_components"] else None
    out["instance_precision"] = (1.0 - c["false_instances"] / c["instances"]) if c["instances"] else None
    out["fragmentation"] = c.get("gt_fragments", 0) / c["gt_detected"] if c["gt_detected"] else None
    return out


def _add_counts(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b[k] for k in b}


# --------------------------------------------------------------------------------------------------
# small statistics helpers
# --------------------------------------------------------------------------------------------------

def summarize(values: Sequence[float]) -> dict | None:
    """mean / median / p95 / min / max of a list of numbers (None when empty)."""
    if len(values) == 0:
        return None
    a = np.asarray(values, np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "p95": float(np.percentile(a, 95)), "min": float(a.min()), "max": float(a.max())}


def _pixel_f1(tp: int, fp: int, fn: int) -> float | None:
    den = 2 * tp + fp + fn
    return 2 * tp / den if den else None


# --------------------------------------------------------------------------------------------------
# the sink
# --------------------------------------------------------------------------------------------------

@dataclass
class ScoredFrame:
    """One frame's output and ground truth as handed to :meth:`ScoreSink.add`."""

    stamp_ns: int
    frame_id: str | None
    image: np.ndarray                    # (H, W, 3) uint8 RGB
    labels: np.ndarray                   # (H, W) uint8 0/1/255
    anomaly: np.ndarray                  # float (h, w) scores, higher = more anomalous
    instances: np.ndarray | None = None  # uint16 (H, W) of the detector; None: recomputed
    regions: np.ndarray | None = None    # int (H, W) region ids of the fusion; None: not known
    timings_ms: dict | None = None       # per stage, from the detector
    latency_ms: float | None = None      # publish -> answer (live mode)
    truth: object = None                 # csl_ros.eval.driving.GroundTruth: camera, obstacles, distances


@dataclass
class _FrameRecord:
    index: int
    name: str
    stamp_ns: int
    shape: tuple
    has_regions: bool
    has_instances: bool
    camera: object = None   # the frame's CameraGeometry (flat ground), None when unknown


class ScoreSink:
    """Accumulates the metrics of one evaluation run; see the module docstring.

    ``config`` gives ``score_threshold`` and ``min_instance_area`` (the detector's instance rule,
    ``score >= score_threshold``) for the per-frame F1 and instance counts and for recomputing
    instances where the source gave none.
    """

    @property
    def config(self):
        return self._config

    @config.setter
    def config(self, value) -> None:
        # one config for every metric: the live evaluator replaces it with the node's settings
        self._config = value
        if hasattr(self, "driving"):
            self.driving.config = value

    def __init__(self, config, track: str = "obstacle", protocol: str = "official",
                 sweeps: Sequence[Sweep] = (), cache_dir: str | Path | None = None,
                 video_path: str | Path | None = None, video_fps: float = 10.0,
                 keep_cache: bool = False):
        self.config = config
        self.spec = track_spec(track)
        self.protocol = protocol
        self.sweeps = list(sweeps)
        names = [s.parameter for s in self.sweeps]
        if len(set(names)) != len(names):
            raise ValueError(f"--sweep given twice for {', '.join(n for n in names if names.count(n) > 1)}")
        self._own_cache = cache_dir is None
        self.cache_root = Path(tempfile.mkdtemp(prefix="csl_eval_")) if cache_dir is None else Path(cache_dir)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        self.keep_cache = keep_cache
        self.cache = FrameCache(self.cache_root / "scores")
        self.extra = self.cache_root / "frames"
        self.extra.mkdir(exist_ok=True)
        self.pixel = PixelAccumulator(protocol)
        self.frames: list[_FrameRecord] = []
        self.per_frame: list[dict] = []
        self.hist = {"in_distribution": np.zeros(HIST_BINS, np.int64),
                     "anomaly": np.zeros(HIST_BINS, np.int64)}
        self.out_of_range = 0
        self.instances_total: dict = {}
        self.stage_ms: dict[str, list[float]] = {}
        self.latency_ms: list[float] = []
        self.notes: list[str] = []
        self._names: set[str] = set()
        self._missing_regions = 0
        self._recomputed_instances = 0
        self._video = None
        self.driving = DrivingAccumulator(config, self.spec.instsize)
        self.video_path = Path(video_path) if video_path else None
        self.video_fps = float(video_fps)

    # ---------------------------------------------------------------------------------------------
    def _unique_name(self, frame: ScoredFrame) -> str:
        name = frame.frame_id or f"stamp_{frame.stamp_ns}"
        if name in self._names:
            name = f"{name}@{frame.stamp_ns}"
        self._names.add(name)
        return name

    def add(self, frame: ScoredFrame) -> dict:
        """Score one frame; returns its per-frame row."""
        cfg = self.config
        k = len(self.frames)
        name = self._unique_name(frame)
        labels = check_labels(frame.labels, name)
        anomaly = np.asarray(frame.anomaly)
        ps = self.pixel.update(anomaly, labels, name)        # also rejects NaN/inf, naming the frame
        self.cache.put(name, anomaly, labels)
        prepared = anomaly.astype(np.float32, copy=False) if anomaly.shape == labels.shape else \
            prepare_scores(anomaly, labels.shape, "official", name).astype(np.float32)
        # score histogram over [0, 1]: in-distribution vs anomaly pixels
        clipped = np.clip(prepared, 0.0, 1.0)
        self.out_of_range += int(np.count_nonzero(clipped != prepared))
        bins = np.minimum((clipped * HIST_BINS).astype(np.int64), HIST_BINS - 1)
        for key, lab in (("in_distribution", 0), ("anomaly", 1)):
            self.hist[key] += np.bincount(bins[labels == lab], minlength=HIST_BINS)
        # pixel F1 at the detector's own threshold (score >= score_threshold)
        pred = prepared >= cfg.score_threshold
        pos, neg = labels == 1, labels == 0
        tp = int(np.count_nonzero(pred & pos))
        fp = int(np.count_nonzero(pred & neg))
        fn = int(np.count_nonzero(~pred & pos))
        # the detector's instances (recomputed from the map where the source did not give them)
        geometry = frame_geometry(frame.truth, labels.shape, cfg)
        camera = geometry[0]
        inst = frame.instances
        has_regions = frame.regions is not None and frame.regions.shape == labels.shape
        regions = frame.regions if has_regions else None
        if inst is None or inst.shape != labels.shape:
            inst = obstacles_of(prepared, regions, cfg, camera)[0]
            self._recomputed_instances += 1
        match = match_instances(inst, labels, self.spec.instsize)
        counts = match.counts()
        self.instances_total = _add_counts(self.instances_total, counts)
        # the tracker's faint continuations cut along the student's regions, as the node does, when the
        # source gave them (an in-process replay); from the score image alone otherwise
        drive = self.driving.add(frame.stamp_ns, labels, inst, prepared, frame.truth, match=match,
                                 geometry=geometry, candidates=faint_candidates(prepared, regions, cfg, camera))
        # what the second pass, the sweeps and the worst-frame pictures need
        if self.sweeps:
            np.save(self.extra / f"{k:06d}_anomaly.npy", prepared)
            if has_regions:
                reg = frame.regions
                reg = reg.astype(np.uint16) if reg.max(initial=0) < 65536 and reg.min(initial=0) >= 0 else reg
                np.save(self.extra / f"{k:06d}_regions.npy", reg)
            else:
                self._missing_regions += 1
        image = np.ascontiguousarray(frame.image)
        if image.shape[:2] != labels.shape:
            raise ValueError(f"frame {name}: image {image.shape[:2]} and labels {labels.shape} differ")
        cv2.imwrite(str(self.extra / f"{k:06d}_image.jpg"), image[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(str(self.extra / f"{k:06d}_instances.png"), inst.astype(np.uint16))
        self.frames.append(_FrameRecord(k, name, int(frame.stamp_ns), labels.shape, has_regions,
                                        frame.instances is not None, camera))
        for stage, ms in (frame.timings_ms or {}).items():
            self.stage_ms.setdefault(stage, []).append(float(ms))
        if frame.latency_ms is not None:
            self.latency_ms.append(float(frame.latency_ms))
        row = {"index": k, "frame_id": name, "stamp_ns": int(frame.stamp_ns),
               "n_pos": ps.n_pos, "n_neg": ps.n_neg, "ap": ps.ap, "fpr95": ps.fpr95, "auroc": ps.auroc,
               "tp_px": tp, "fp_px": fp, "fn_px": fn, "f1_at_threshold": _pixel_f1(tp, fp, fn),
               **counts, "gt_detected_tracked": drive["tracked"]["detected"],
               "false_alarms_tracked": drive["tracked"]["false_alarms"]}
        if frame.timings_ms and "total" in frame.timings_ms:
            row["detector_ms"] = float(frame.timings_ms["total"])
        if frame.latency_ms is not None:
            row["latency_ms"] = float(frame.latency_ms)
        self.per_frame.append(row)
        if self.video_path is not None:
            self._write_video_frame(image, prepared, inst, labels)
        return row

    def _write_video_frame(self, image, anomaly, inst, labels) -> None:
        panel = frame_panels(image, anomaly, inst, labels, max_width=480)[:, :, ::-1]  # RGB
        # pad to multiples of 16 (what every H.264 player accepts) instead of letting the writer resize
        ph, pw = -panel.shape[0] % 16, -panel.shape[1] % 16
        if ph or pw:
            panel = np.pad(panel, ((0, ph), (0, pw), (0, 0)))
        if self._video is None:
            self.video_path.parent.mkdir(parents=True, exist_ok=True)
            self._video_shape = panel.shape
            self._video = imageio.get_writer(self.video_path, fps=self.video_fps, codec="libx264",
                                             quality=7, macro_block_size=16)
        if panel.shape != self._video_shape:   # frames of another size: fit to the first one
            panel = cv2.resize(panel, (self._video_shape[1], self._video_shape[0]),
                               interpolation=cv2.INTER_AREA)
        self._video.append_data(np.ascontiguousarray(panel))

    # ---------------------------------------------------------------------------------------------
    def load_frame(self, k: int) -> dict:
        """Image, float16 scores, labels and instances of cached frame ``k`` (for pictures)."""
        rec = self.frames[k]
        img = cv2.imread(str(self.extra / f"{k:06d}_image.jpg"), cv2.IMREAD_COLOR)[:, :, ::-1]
        inst = cv2.imread(str(self.extra / f"{k:06d}_instances.png"), cv2.IMREAD_UNCHANGED)
        scores = np.load(self.cache.dir / f"{k:06d}_scores.npy")
        labels = np.load(self.cache.dir / f"{k:06d}_labels.npy")
        if scores.shape != labels.shape:
            scores = prepare_scores(scores, labels.shape, "official", rec.name)
        return {"name": rec.name, "image": np.ascontiguousarray(img), "scores": scores.astype(np.float32),
                "labels": labels, "instances": inst}

    def finish(self) -> dict:
        """Second pass (official components at the best-F1 threshold and every sweep value, one
        read of the cache) and the metrics dictionary of ``metrics.json`` (without run metadata)."""
        if self._video is not None:
            self._video.close()
            self._video = None
        cfg = self.config
        pixel = self.pixel.result()
        comp = None
        notes = list(self.notes)
        if not self.frames:
            notes.append("no frame was scored: no metric is defined")
        elif pixel.component_threshold is None:
            notes.append("component metrics skipped: the best-F1 threshold is undefined")
        else:
            comp = ComponentAccumulator(pixel.component_threshold, self.spec, self.protocol)
        sweep_state = []
        for sw in self.sweeps:
            st = {"sweep": sw, "counts": [dict() for _ in sw.values], "pixel": [[0, 0, 0] for _ in sw.values],
                  "configs": [apply_overrides(cfg, {sw.parameter: v}) for v in sw.values],
                  "comp": ([ComponentAccumulator(v, self.spec, self.protocol) for v in sw.values]
                           if sw.parameter == "score_threshold" else None)}
            sweep_state.append(st)
        if comp is not None or sweep_state:
            for rec, (fid, scores16, labels) in zip(self.frames, self.cache):
                if comp is not None:
                    cs = comp.update(scores16, labels, fid)
                    self.per_frame[rec.index].update(
                        {"n_gt": cs.n_gt, "n_pred": cs.n_pred,
                         "siou_gt": float(cs.siou_gt.mean()) if cs.n_gt else None,
                         "ppv": float(cs.ppv.mean()) if cs.n_pred else None,
                         "component_f1_mean": cs.f1_mean()})
                if not sweep_state:
                    continue
                anomaly = np.load(self.extra / f"{rec.index:06d}_anomaly.npy")
                regions = (np.load(self.extra / f"{rec.index:06d}_regions.npy").astype(np.int32)
                           if rec.has_regions else None)
                pos, neg = labels == 1, labels == 0
                for st in sweep_state:
                    sw = st["sweep"]
                    for j, swept in enumerate(st["configs"]):
                        inst = obstacles_of(anomaly, regions, swept, rec.camera)[0]
                        st["counts"][j] = _add_counts(st["counts"][j],
                                                      instance_counts(inst, labels, self.spec.instsize))
                        if st["comp"] is not None:
                            pred = anomaly >= swept.score_threshold
                            px = st["pixel"][j]
                            px[0] += int(np.count_nonzero(pred & pos))
                            px[1] += int(np.count_nonzero(pred & neg))
                            px[2] += int(np.count_nonzero(~pred & pos))
                            st["comp"][j].update(scores16, labels, fid)
        result = MetricsResult(protocol=self.protocol, track=self.spec.name, pixel=pixel,
                               components=comp.result() if comp is not None else None,
                               per_frame=[], notes=notes)
        out = result.to_dict(include_curve=True)
        out.pop("per_frame")
        out["instances"] = {
            "description": (f"the detector's instances (score >= score_threshold = {cfg.score_threshold:g}, "
                            f"area >= min_instance_area = {cfg.min_instance_area}) against ground-truth "
                            f"components (8-connected, < {self.spec.instsize} px made void); an instance "
                            f"with less than {INSTANCE_PPV_MIN:g} of its labelled pixels on anomalies "
                            f"is false; a component is detected when a true instance overlaps it"),
            **_instance_summary(self.instances_total or {"instances": 0, "false_instances": 0,
                                                         "gt_components": 0, "gt_detected": 0,
                                                         "gt_fragments": 0}),
        }
        if self._recomputed_instances:
            out["instances"]["note"] = (f"{self._recomputed_instances} frame(s) came without the "
                                        f"detector's instance map: instances recomputed from the "
                                        f"score map" + ("" if self.frames and self.frames[0].has_regions
                                                        else " without the student's regions"))
        out["sweeps"] = [self._sweep_result(st) for st in sweep_state]
        if sweep_state and self._missing_regions:
            out["notes"].append(f"sweeps: {self._missing_regions} frame(s) without the student's regions; "
                                f"their instances are connected components of the thresholded map")
        if cfg.road_roi and sweep_state:
            out["notes"].append("sweeps: road_roi is on in the detector, but the sweep's recomputed "
                                "instances are not restricted to the road (the road mask is not kept)")
        if self.out_of_range:
            out["notes"].append(f"{self.out_of_range} pixel score(s) outside [0, 1] were clipped for the "
                                f"score histogram (the metrics use them unclipped)")
        edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
        out["score_histogram"] = {"bin_edges": [float(e) for e in edges],
                                  "in_distribution": self.hist["in_distribution"].tolist(),
                                  "anomaly": self.hist["anomaly"].tolist()}
        out["driving"] = self.driving.result()
        out["per_frame"] = self.per_frame
        out["timing"] = {"detector_stages_ms": {k: summarize(v) for k, v in self.stage_ms.items()},
                         "latency_ms": summarize(self.latency_ms)}
        return out

    def _sweep_result(self, st) -> dict:
        sw: Sweep = st["sweep"]
        cfg = self.config
        rows = []
        for j, v in enumerate(sw.values):
            row = {"value": v, **_instance_summary(st["counts"][j] or {"instances": 0, "false_instances": 0,
                                                                       "gt_components": 0, "gt_detected": 0})}
            if st["comp"] is not None:
                tp, fp, fn = st["pixel"][j]
                row["pixel_precision"] = tp / (tp + fp) if tp + fp else None
                row["pixel_recall"] = tp / (tp + fn) if tp + fn else None
                row["pixel_f1"] = _pixel_f1(tp, fp, fn)
                c = st["comp"][j].result()
                row["components"] = {"siou_gt": c.siou_gt, "ppv": c.ppv, "f1_mean": c.f1_mean,
                                     "f1_50": c.f1_50, "n_pred_components": c.n_pred_components,
                                     "n_gt_components": c.n_gt_components, "notes": c.notes}
            rows.append(row)
        source = ("the cached fused maps and the student's regions" if not self._missing_regions else
                  "the cached score maps (the student's regions are not available in this mode: "
                  "instances are connected components of the thresholded map)")
        if sw.parameter == "score_threshold":
            what = (f"score_threshold varies; min_instance_area stays {cfg.min_instance_area}. Per value: "
                    f"the detector's instances re-extracted from {source} "
                    f"(score >= value), pixel precision/recall/F1 at score >= value, and the official "
                    f"component metrics (sIoU, PPV, F1) with the value as a fixed threshold "
                    f"(score > value) instead of the benchmark's best-F1 threshold")
        elif sw.parameter == "min_instance_area":
            what = (f"min_instance_area varies; score_threshold stays {cfg.score_threshold:g}. Per value: "
                    f"the detector's instances re-extracted from {source}. "
                    f"Pixel and component metrics do not depend on it (the official component metrics "
                    f"use the track's own size filters)")
        else:
            what = (f"max_obstacle_height_m varies (0 = off); score_threshold stays {cfg.score_threshold:g}, "
                    f"min_instance_area {cfg.min_instance_area}. Per value: the detector's instances "
                    f"re-extracted from {source}, those taller than the value at their contact point's "
                    f"distance dropped (frames without camera geometry keep them all). Pixel and component "
                    f"metrics do not depend on it")
        return {"parameter": sw.parameter, "values": list(sw.values), "description": what,
                "fixed": {k: getattr(cfg, k) for k in SWEEPABLE if k != sw.parameter}, "rows": rows}

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        if self._own_cache and not self.keep_cache:
            shutil.rmtree(self.cache_root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
