"""Held-out synthroad drives: does the shipped default find the obstacles that matter?

    python bench/driving.py                         # 30 held-out drives, the shipped default; prints
                                                    # the table and writes the JSON (--json)
    python bench/driving.py --tune --json t.json    # choose score_threshold, min_instance_area, the
                                                    # height limit and tracking on TUNE drives
    python bench/driving.py --tune --set teacher=maxlogit   # the same for another teacher

The shipped default is ``config/driving.yaml`` over the schema defaults (the shipped student's input
size, test_scale and the threshold tuned for the configured teacher), as the demo runs it, on frames
rendered at the demo's size (512x1024). Drives: synthroad
``render_sequence`` with ``obstacles="obstacle"``, 10 m/s, 10 frames/s; test seeds from
``DRIVE_SEED`` and tuning seeds from ``TUNE_DRIVE_SEED`` (the shipped models were trained on frame seeds
0..999 and validated on 1,000,000+; no drive seed was used anywhere else). Each frame runs the
:class:`csl_ros.pipeline.Detector` once (stateless ``detect_batch``); instances, tracking and the
driving metrics (:mod:`csl_ros.eval.driving`, the code of ``csl-ros evaluate``) are then computed for
every setting of the grid from the same fused maps and regions.

``--tune`` picks, on the tuning drives, the setting with the highest tracked recall within 30 m among
those with at most ``--max-fa`` tracked false alarms per frame and at least the recall of the current
default of the same configuration (``--set`` included; else the fewest false alarms among those that keep
that recall: ``choose``); the test drives then measure it.
``driving_markdown`` renders the result for docs/results.md (called by bench/results.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

DRIVE_SEED = 30_000_000        # held-out test drives
# 30 held-out drives (about 100 distinct obstacles within 30 m): with 10, the 95 % bootstrap interval of the
# recall within 30 m spanned 45 points (37-82 %), too wide to judge the goal
HELD_OUT_DRIVES = 30
TUNE_DRIVE_SEED = 40_000_000   # drives for choosing the default (never the test drives)
TUNE_DRIVES = 20               # 6 drives let one drive's road markings decide the choice
FRAME_SIZE = (512, 1024)       # what the demo renders
GOAL_RECALL, GOAL_FA = 0.80, 0.2
INSTSIZE = 10                  # obstacle track: ground-truth components under 10 px are void
# Thresholds on the fused map: MSP and entropy are probabilities (identity calibration), the unbounded
# scores (max logit, energy, SML) are logistic-calibrated and their products with the region means sit
# lower, hence the low end of the grid.
THRESHOLDS = (0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
MIN_AREAS = (60, 100)                # min_instance_area (pixels of the 512x1024 frame)
# (confirm_hits, confirm_window, max_missed, coast): coasting reports confirmed tracks through misses
TRACKING = ((1, 1, 0, False), (2, 3, 2, False), (3, 5, 2, False), (2, 2, 1, False), (3, 4, 1, False),
            (4, 6, 2, False), (1, 1, 1, True), (1, 1, 2, True), (2, 2, 1, True), (2, 3, 2, True), (3, 4, 1, True))
MAX_HEIGHTS = (0.0, 2.0, 3.0)   # max_obstacle_height_m (0: off)
MAX_DISTANCES = (0.0,)          # max_obstacle_distance_m of the grid (0: off); --max-distances adds ranges
HYSTERESIS = (1.0,)             # score_hysteresis of the grid (1: one threshold); --hysteresis adds others
CONTINUE_RATIOS = (1.0,)        # track_continue_ratio of the grid (1: off); --continue-ratios adds others


def default_config(overrides=None):
    """config/driving.yaml over the schema defaults (the shipped models' input size, test_scale and threshold):
    what `make demo` runs."""
    from csl_ros.config import load_configs
    from csl_ros.demo import default_params_file

    det, _ = load_configs(default_params_file(), overrides or {})
    return det


def drive_frames(seed: int, frames: int, size=FRAME_SIZE):
    """(stamp_ns, Record, GroundTruth) of one drive, as the bag would carry them."""
    from csl_ros.data.loaders import Synthroad
    from csl_ros.eval.driving import GroundTruth

    ds = Synthroad(seed=seed, n_frames=frames, size=size, obstacles="obstacle", speed_mps=10.0, fps=10.0)
    for k, rec in enumerate(ds):
        info = {**rec.camera, "width": size[1], "height": size[0]}
        yield k * 100_000_000, rec, GroundTruth(info, rec.camera, rec.obstacles, rec.obstacle_ids)


def settings_grid(base, tune: bool, split_fractions=(), thresholds=THRESHOLDS, max_distances=MAX_DISTANCES,
                  max_heights=MAX_HEIGHTS, min_areas=MIN_AREAS, hysteresis=HYSTERESIS,
                  continue_ratios=CONTINUE_RATIOS):
    from csl_ros.config import apply_overrides

    if split_fractions:   # fragmentation: the same maps cut with each min_split_fraction
        return {f"min_split_fraction {v:g}": apply_overrides(base, {"min_split_fraction": v})
                for v in split_fractions}
    if not tune:   # one setting: its accumulator scores the per-frame and the tracked output
        return {"shipped default": base}
    grid = {}
    for thr, hyst, area, (k, n, m, coast), cont, h, d in itertools.product(
            thresholds, hysteresis, min_areas, TRACKING, continue_ratios, max_heights, max_distances):
        name = (f"thr {thr:g}{f', hysteresis {hyst:g}' if hyst != 1 else ''}, area {area}, {k} of {n}, "
                f"missed {m}{', coasted' if coast else ''}{f', continued down to {cont:g}' if cont != 1 else ''}, "
                f"max height {h:g} m")
        grid[name + (f", range {d:g} m" if d else "")] = apply_overrides(
            base, {"score_threshold": thr, "score_hysteresis": hyst, "min_instance_area": area,
                   "track_continue_ratio": cont,
                   "track_confirm_hits": k, "track_confirm_window": n, "track_max_missed": m, "track_coast": coast,
                   "max_obstacle_height_m": h, "max_obstacle_distance_m": d})
    return grid


@functools.lru_cache(maxsize=1)
def _shipped_manifest() -> bytes:
    """The shipped manifest's bytes (read once per process, not once per frame)."""
    from csl_ros.shipped import MANIFEST, models_dir

    path = models_dir() / MANIFEST
    return path.read_bytes() if path.is_file() else b""


def detect_cached(detector, rec, cfg, cache: Path | None, key: str):
    """The fused map, regions and road ROI (None unless ``cfg.road_roi``) of one frame; with ``cache``,
    kept there across runs, keyed by every setting that may change them (``csl_ros.config.map_settings``:
    all but the instance, range and tracking settings, so a new setting is in the key unless listed as
    acting after the map), by the shipped manifest (new shipped models, new key) and by the synthroad
    generator version (new frames, new key). Model paths enter the key as written, not their content."""
    from csl_ros.config import map_settings
    from csl_ros.data.synthroad import GENERATOR_VERSION

    settings = json.dumps(map_settings(cfg), sort_keys=True, default=str)
    digest = hashlib.sha256(f"{settings}|synthroad {GENERATOR_VERSION}".encode() + _shipped_manifest()).hexdigest()
    # a readable prefix for whoever lists the cache; the digest alone decides
    tag = f"{cfg.scheme}_{cfg.teacher}_{cfg.input_height}x{cfg.input_width}_{digest[:12]}"
    path = cache / tag / f"{key}.npz" if cache is not None else None
    if path is not None and path.is_file():
        z = np.load(path)
        return (z["anomaly"], z["regions"].astype(np.int32) if z["regions"].size else None,
                z["road_roi"] if "road_roi" in z.files and z["road_roi"].size else None)
    det = detector.detect_batch([rec.rgb])[0]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.stem}.{os.getpid()}.part.npz")   # whole or absent: runs share a cache
        np.savez(part, anomaly=det.anomaly_map,
                 regions=det.regions.astype(np.int16) if det.regions is not None else np.zeros(0, np.int16),
                 road_roi=det.road_roi if det.road_roi is not None else np.zeros(0, bool))
        os.replace(part, path)
    return det.anomaly_map, det.regions, det.road_roi


def drive_maps(detector, seed: int, frames: int, cache: Path | None = None):
    """Every frame of drive ``seed`` with the detector's output: (stamp_ns, Record, GroundTruth, fused
    map, regions, road ROI, camera geometry, its source), the maps from :func:`detect_cached` with the
    detector's own settings. The one per-frame loop of :func:`run` and ``bench/driving_diagnosis.py``."""
    from csl_ros.eval.driving import frame_geometry

    cfg = detector.config
    for stamp, rec, truth in drive_frames(seed, frames):
        anomaly, regions, roi = detect_cached(detector, rec, cfg, cache, f"{seed}_{stamp}")
        camera, source = frame_geometry(truth, rec.label.shape, cfg)
        yield stamp, rec, truth, anomaly, regions, roi, camera, source


def run(seeds, frames, base, tune: bool, log=print, cache: Path | None = None, split_fractions=(),
        thresholds=THRESHOLDS, max_distances=MAX_DISTANCES, per_drive: bool = False, max_heights=MAX_HEIGHTS,
        min_areas=MIN_AREAS, with_default: bool = False, hysteresis=HYSTERESIS, continue_ratios=CONTINUE_RATIOS):
    """{setting name: (config, driving result)} over the drives ``seeds``. With ``per_drive`` each result
    also holds ``per_drive``: every drive's tracked counts (:func:`drive_counts`, the pooled counts' growth
    over that drive), for :func:`drive_interval`. ``with_default`` adds ``base`` itself as "shipped default"
    to a tuning grid (scored from the same maps in the same pass: the reference of :func:`choose`)."""
    import torch

    from csl_ros.eval.driving import DrivingAccumulator
    from csl_ros.eval.instance_match import match_instances
    from csl_ros.pipeline import Detector, obstacles_of
    from csl_ros.pipeline.instances import faint_candidates

    detector = Detector.from_config(base)
    # the settings the detector runs: the student's metadata (input size, the threshold tuned for the
    # configured teacher) fills what ``base`` left at the schema default
    base = detector.config
    grid = settings_grid(base, tune, split_fractions, thresholds, max_distances, max_heights, min_areas, hysteresis,
                         continue_ratios)
    if with_default:
        grid["shipped default"] = base
    accs = {name: DrivingAccumulator(cfg, instsize=INSTSIZE) for name, cfg in grid.items()}
    drives = {name: [] for name in grid}
    pooled = {name: drive_counts(None) for name in grid}   # counts before the current drive
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for seed in seeds:
            for acc in accs.values():
                acc.new_sequence()
            for stamp, rec, truth, anomaly, regions, roi, camera, _ in drive_maps(detector, seed, frames, cache):
                n += 1
                shared = {}   # settings that differ only in tracking share the instances and their match
                # (roi is None unless base.road_roi, which no grid setting changes)
                for name, cfg in grid.items():
                    key = (cfg.score_threshold, cfg.score_hysteresis, cfg.min_instance_area, cfg.min_split_fraction,
                           cfg.max_obstacle_height_m, cfg.max_obstacle_distance_m)
                    if key not in shared:
                        inst = obstacles_of(anomaly, regions, cfg, camera, roi)[0]
                        shared[key] = (inst, match_instances(inst, rec.label, INSTSIZE))
                    inst, match = shared[key]
                    faint_key = key + (cfg.track_continue_ratio,)
                    if faint_key not in shared:   # as the detector: with the regions and the road ROI
                        shared[faint_key] = faint_candidates(anomaly, regions, cfg, camera, roi)
                    # the tracker edits the records: each setting gets its own copies
                    faint = [dataclasses.replace(r) for r in shared[faint_key]]
                    accs[name].add(stamp, rec.label, inst, anomaly, truth, match=match, candidates=faint)
            if per_drive:
                for name, acc in accs.items():
                    now = drive_counts(acc.result())
                    drives[name].append({k: now[k] - pooled[name][k] for k in now})
                    pooled[name] = now
            log(f"drive {seed}: {n} frames so far, {time.perf_counter() - t0:.0f} s")
    out = {name: (grid[name], acc.result()) for name, acc in accs.items()}
    if per_drive:
        for name, (_, r) in out.items():
            r["per_drive"] = drives[name]
    return out


def drive_counts(result: dict | None) -> dict:
    """Tracked counts of a driving result: obstacle-frames within 30 m and those detected, false alarms,
    frames (all zero for None)."""
    if result is None:
        return {"near_gt": 0, "near_detected": 0, "false_alarms": 0, "frames": 0}
    t = result["tracked"]
    return {"near_gt": t["near"]["gt"], "near_detected": t["near"]["detected"],
            "false_alarms": t["false_alarms"], "frames": result["frames"]}


def drive_interval(per_drive: list[dict], resamples: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap over whole drives (the frames of one drive are not independent): the drives
    are drawn with replacement ``resamples`` times and the pooled recall within 30 m (detected / present)
    and false alarms per frame recomputed. Returns ((recall lo, hi), (false alarms/frame lo, hi))."""
    counts = np.array([[d["near_detected"], d["near_gt"], d["false_alarms"], d["frames"]] for d in per_drive],
                      dtype=np.float64)
    pick = np.random.default_rng(seed).integers(0, len(counts), (resamples, len(counts)))
    sums = counts[pick].sum(axis=1)                           # resamples x 4
    # a resample without any obstacle within 30 m has no recall: left out, not counted as 0
    recall = np.divide(sums[:, 0], sums[:, 1], out=np.full(resamples, np.nan), where=sums[:, 1] > 0)
    fa = sums[:, 2] / np.maximum(sums[:, 3], 1)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return tuple(np.nanpercentile(recall, q)), tuple(np.percentile(fa, q))


def choose(results, max_fa: float, reference: tuple[float, float] | None = None):
    """The tuned setting: highest tracked near recall with tracked false alarms/frame <= max_fa (and a
    recall above 0 and at least the reference's). When no setting gets there: the fewest false alarms
    among the settings that keep at least the reference's near recall (``reference`` = (recall, false
    alarms/frame) of the tuned configuration's current default on the same drives), so the choice never
    gives up recall; a phantom obstacle every few frames is what makes a detector unusable in a car, so
    false alarms are what the fallback removes. Returns (name, rule)."""
    def tracked(r):
        return r["tracked"]["near"]["recall"] or 0.0, r["tracked"]["false_alarms_per_frame"] or 0.0

    floor = reference[0] if reference is not None else 0.0   # never below the current default's recall
    ok = [(*tracked(r), name) for name, (_, r) in results.items()
          if tracked(r)[1] <= max_fa and tracked(r)[0] >= floor and tracked(r)[0] > 0]
    if ok:
        return max(ok, key=lambda t: (t[0], -t[1]))[2], f"tracked false alarms/frame <= {max_fa:g}"
    if reference is not None:
        ok = [(*tracked(r), name) for name, (_, r) in results.items() if tracked(r)[0] >= reference[0]]
        if ok:
            return min(ok, key=lambda t: (t[1], -t[0]))[2], (
                f"no setting reaches {max_fa:g} false alarms/frame: the fewest false alarms among the settings "
                f"with at least the current default's tracked recall within 30 m ({100 * reference[0]:.1f} %, at "
                f"{reference[1]:.3f} false alarms/frame)")
    return None, "no setting qualifies"


def summary(name, cfg, r) -> dict:
    return {"setting": name, "teacher": cfg.teacher, "teacher_flip": cfg.teacher_flip,
            "score_threshold": cfg.score_threshold,
            "min_instance_area": cfg.min_instance_area, "max_obstacle_height_m": cfg.max_obstacle_height_m,
            "max_obstacle_distance_m": cfg.max_obstacle_distance_m,
            "input_size": [cfg.input_height, cfg.input_width], "test_scale": cfg.test_scale,
            "frame_size": list(FRAME_SIZE),
            "tracking": r["tracking"], "result": r}


def _second_pass(test: dict) -> str:
    """' with a second pass at test_scale s (HxW)' when the run had one ('' for single scale and for a
    JSON written before test_scale was recorded)."""
    from csl_ros.config import second_pass_description

    return second_pass_description(*test["input_size"], test.get("test_scale", 1.0))


def _teacher(test: dict) -> str:
    """'teacher T, ' or 'teacher T averaged with its pass on the mirrored image (teacher_flip), ' ('' for a
    JSON written before the teacher was recorded)."""
    from csl_ros.config import teacher_description

    return f"{teacher_description(test['teacher'], test.get('teacher_flip', False))}, " if test.get("teacher") else ""


def _min_area(test: dict) -> str:
    """'min_instance_area A px, ' ('' for a JSON written before it was recorded)."""
    return f"min_instance_area {test['min_instance_area']} px, " if test.get("min_instance_area") else ""


def _max_height(test: dict) -> str:
    """'instances taller than H m dropped, ' when the run had max_obstacle_height_m, then 'instances
    beyond D m not reported, ' when it had max_obstacle_distance_m ('' when off and for a JSON written
    before they existed)."""
    h = test.get("max_obstacle_height_m", 0.0)
    out = f"instances taller than {h:g} m at their contact point's distance dropped, " if h else ""
    d = test.get("max_obstacle_distance_m", 0.0)
    return out + (f"instances beyond {d:g} m not reported, " if d else "")


def _coast(r: dict) -> str:
    """', coasted while not deleted' and ', continued on faint areas down to R x the threshold' when the
    run had them ('' otherwise and for a JSON written before they existed)."""
    t = r["tracking"]
    ratio = t.get("continue_ratio", 1.0)
    return ((", coasted while not deleted" if t.get("coast") else "")
            + (f", confirmed tracks continued on faint areas down to {ratio:g} x the threshold" if ratio < 1 else ""))


def driving_markdown(data: dict) -> str:
    """The docs/results.md section of a ``bench/driving.py --json`` file."""
    from csl_ros.eval.driving import band_table, summary_rows

    rows_md = []

    def table(header, rows):
        rows_md.append("| " + " | ".join(map(str, header)) + " |")
        rows_md.append("|" + "---|" * len(header))
        rows_md.extend("| " + " | ".join(map(str, r)) + " |" for r in rows)
        rows_md.append("")

    test = data["test"]
    r = test["result"]
    near, fa = r["tracked"]["near"]["recall"], r["tracked"]["false_alarms_per_frame"]
    met = near is not None and near >= GOAL_RECALL and fa is not None and fa <= GOAL_FA
    out = ["## Driving: held-out synthroad drives by distance", "",
           f"Generated by `{data['command']}` (also run by `python bench/results.py`). {r['sequences']} "
           f"held-out drives "
           f"(seeds {data['seeds'][0]}..{data['seeds'][-1]}, {r['frames']} frames, {r['minutes']:.2f} min of "
           f"driving at 10 m/s), frames {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, network input "
           f"{test['input_size'][0]}x{test['input_size'][1]}{_second_pass(test)}, {_teacher(test)}"
           f"score_threshold {test['score_threshold']:g}, {_min_area(test)}{_max_height(test)}"
           f"tracking {r['tracking']['confirm_hits']} of {r['tracking']['confirm_window']} "
           f"(deleted after {r['tracking']['max_missed']} missed{_coast(r)}). Distances: the generator's "
           f"(obstacle centre, forward). Goal: recall >= {GOAL_RECALL:.0%} within 30 m with <= {GOAL_FA:g} "
           f"false alarms per frame, tracked: **{'met' if met else 'not met'}** "
           f"({100 * (near or 0):.1f} %, {fa:.3f}).", ""]
    if len(r.get("per_drive") or ()) > 1:   # one drive has no spread to resample
        (r_lo, r_hi), (f_lo, f_hi) = drive_interval(r["per_drive"])
        out += [f"How much of that is the drives drawn: 95 % bootstrap interval over the {len(r['per_drive'])} "
                f"drives (2000 resamples of whole drives, tracked): recall within 30 m {100 * r_lo:.1f}-"
                f"{100 * r_hi:.1f} %, false alarms/frame {f_lo:.3f}-{f_hi:.3f}.", ""]
    header, rows = band_table(r)
    rows_md.clear()
    table(header, rows)
    header, rows2 = summary_rows(r)
    table(header, rows2)
    out += rows_md
    out += [f"Teacher, teacher_flip, test_scale, score_threshold, min_instance_area, the height limit, the output range and "
            f"tracking of the shipped default were chosen with `python bench/driving.py --tune`, and "
            f"min_split_fraction with `--split-fractions`, on other drives (seeds from {TUNE_DRIVE_SEED}), "
            f"never on these.", ""]
    if data.get("tuning"):
        t = data["tuning"]
        out += [f"Setting chosen on {t['drives']} other drives (seeds from {TUNE_DRIVE_SEED}): {t['chosen']} "
                f"({t['rule']}; tracked recall within 30 m {100 * t['near_recall']:.1f} %, "
                f"{t['false_alarms_per_frame']:.3f} false alarms/frame there).", ""]
    return "\n".join(out)


def measure(drives: int = HELD_OUT_DRIVES, frames: int = 30, overrides=None, command: str = "", log=print,
            cache: Path | None = None) -> dict:
    """The shipped default on ``drives`` held-out drives: the data behind :func:`driving_markdown`."""
    base = default_config(overrides)
    seeds = [DRIVE_SEED + i for i in range(drives)]
    res = run(seeds, frames, base, tune=False, log=log, cache=cache, per_drive=True)
    return {"command": command or f"python bench/driving.py --drives {drives} --frames {frames}",
            "seeds": seeds, "test": summary("shipped default", *res["shipped default"])}


def driving_section(drives: int = HELD_OUT_DRIVES, frames: int = 30, log=print, cache: Path | None = None) -> str:
    """Measure and render the docs/results.md driving section (what bench/results.py appends);
    ``cache`` as ``--cache``."""
    return driving_markdown(measure(drives, frames, log=log, cache=cache))


def _floats(text: str, what: str, upper: float = 1.0) -> tuple[float, ...]:
    """Comma-separated values in [0, upper] (``math.inf``: no upper bound), else a one-line exit."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 <= v <= upper for v in values):
        raise SystemExit(f"{what}: every value must lie in [0, {upper:g}], got {text!r}")
    return values


def _pixel_counts(text: str, what: str) -> tuple[int, ...]:
    """Comma-separated whole pixel counts >= 1, else a one-line exit."""
    values = _floats(text, what, upper=math.inf)
    if not all(v >= 1 and v == int(v) for v in values):
        raise SystemExit(f"{what}: every value must be a whole number of pixels >= 1, got {text!r}")
    return tuple(int(v) for v in values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drives", type=int, default=HELD_OUT_DRIVES, help=f"test drives (default {HELD_OUT_DRIVES})")
    p.add_argument("--frames", type=int, default=30, help="frames per drive at 10 frames/s and 10 m/s "
                   "(default 30: 3 s, 30 m)")
    p.add_argument("--tune", action="store_true", help="grid of score_threshold x min_instance_area x max "
                   "height x max range x tracking on the tuning drives; picks the highest tracked recall "
                   "within 30 m at <= --max-fa")
    p.add_argument("--tune-drives", type=int, default=TUNE_DRIVES, help="drives (of --frames each) for --tune and "
                   f"--split-fractions (default {TUNE_DRIVES})")
    p.add_argument("--split-fractions", default="", metavar="V1,V2,...",
                   help="measure fragmentation for these min_split_fraction values on the tuning drives")
    p.add_argument("--thresholds", default=",".join(f"{v:g}" for v in THRESHOLDS), metavar="T1,T2,...",
                   help="--tune: the score_threshold values of the grid (the fused scores of another scheme, "
                   "fusion or teacher sit on another scale)")
    p.add_argument("--max-distances", default=",".join(f"{v:g}" for v in MAX_DISTANCES), metavar="D1,D2,...",
                   help="--tune: the max_obstacle_distance_m values of the grid (0 = no range limit)")
    p.add_argument("--max-heights", default=",".join(f"{v:g}" for v in MAX_HEIGHTS), metavar="H1,H2,...",
                   help="--tune: the max_obstacle_height_m values of the grid (0 = no height limit)")
    p.add_argument("--min-areas", default=",".join(f"{v:g}" for v in MIN_AREAS), metavar="A1,A2,...",
                   help="--tune: the min_instance_area values of the grid (pixels of the 512x1024 frame)")
    p.add_argument("--hysteresis", default=",".join(f"{v:g}" for v in HYSTERESIS), metavar="R1,R2,...",
                   help="--tune: the score_hysteresis values of the grid (1 = one threshold; 0.5: areas down to "
                   "half the threshold that reach it somewhere)")
    p.add_argument("--continue-ratios", default=",".join(f"{v:g}" for v in CONTINUE_RATIOS), metavar="R1,R2,...",
                   help="--tune: the track_continue_ratio values of the grid (1 = off; 0.5: confirmed tracks "
                   "continue on faint instances down to half the threshold)")
    p.add_argument("--max-fa", type=float, default=0.15, help="--tune: tracked false alarms/frame allowed "
                   "(below the goal's 0.2, a margin for the test drives)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--json", default=None, help="write the numbers here")
    p.add_argument("--cache", type=Path, default=None, help="keep each frame's fused map and regions here "
                   "(a second run with other thresholds or tracking skips the network)")
    args = p.parse_args(argv)
    import torch

    from csl_ros.config import parse_set_args

    torch.set_num_threads(args.threads)
    base = default_config(parse_set_args(args.set))
    data = {"command": "python bench/driving.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.split_fractions:
        fractions = list(_floats(args.split_fractions, "--split-fractions"))
        seeds = [TUNE_DRIVE_SEED + i for i in range(args.tune_drives)]
        res = run(seeds, args.frames, base, tune=False, cache=args.cache, split_fractions=fractions)
        data["fragmentation"] = {}
        for name, (_, r) in res.items():
            pf = r["per_frame"]
            data["fragmentation"][name] = {"fragmentation": pf["fragmentation"], "near_recall": pf["near"]["recall"],
                                           "false_alarms_per_frame": pf["false_alarms_per_frame"]}
            print(f"{name}: fragmentation (instances per detected obstacle) {pf['fragmentation'] or 0:.2f}, "
                  f"recall within 30 m {pf['near']['recall'] or 0:.3f}, false alarms/frame "
                  f"{pf['false_alarms_per_frame']:.3f} (per frame, {len(seeds)} drives from {seeds[0]})")
    elif args.tune:
        seeds = [TUNE_DRIVE_SEED + i for i in range(args.tune_drives)]
        res = run(seeds, args.frames, base, tune=True, cache=args.cache,
                  thresholds=_floats(args.thresholds, "--thresholds"),
                  max_distances=_floats(args.max_distances, "--max-distances", upper=math.inf),
                  max_heights=_floats(args.max_heights, "--max-heights", upper=math.inf),
                  min_areas=_pixel_counts(args.min_areas, "--min-areas"), with_default=True,
                  hysteresis=_floats(args.hysteresis, "--hysteresis"),
                  continue_ratios=_floats(args.continue_ratios, "--continue-ratios"))
        # the floor is the recall of what this configuration runs today: with --set teacher=msp, MSP at the
        # threshold the student's metadata holds for it (the fused scores of another teacher sit on another
        # scale, so the default teacher's recall is no floor for it); not a candidate of the grid itself
        ref = res.pop("shipped default")[1]["tracked"]
        reference = (ref["near"]["recall"] or 0.0, ref["false_alarms_per_frame"] or 0.0)
        for name, (_, r) in res.items():
            print(f"{name:32s} tracked near recall {r['tracked']['near']['recall'] or 0:.3f} "
                  f"fa/frame {r['tracked']['false_alarms_per_frame']:.3f} | per frame "
                  f"{r['per_frame']['near']['recall'] or 0:.3f} {r['per_frame']['false_alarms_per_frame']:.3f} "
                  f"frag {r['per_frame']['fragmentation'] or 0:.2f}")
        chosen, rule = choose(res, args.max_fa, reference)
        print(f"current default: tracked recall within 30 m {reference[0]:.3f}, fa/frame {reference[1]:.3f}; "
              f"chosen: {chosen} ({rule})")
        if chosen is not None:
            cfg, r = res[chosen]
            data["tuning"] = {"drives": len(seeds), "chosen": chosen, "rule": rule,
                              "score_threshold": cfg.score_threshold, "score_hysteresis": cfg.score_hysteresis,
                              "min_instance_area": cfg.min_instance_area,
                              "max_obstacle_height_m": cfg.max_obstacle_height_m,
                              "max_obstacle_distance_m": cfg.max_obstacle_distance_m,
                              "confirm": [cfg.track_confirm_hits, cfg.track_confirm_window, cfg.track_max_missed],
                              "coast": cfg.track_coast, "continue_ratio": cfg.track_continue_ratio,
                              "near_recall": r["tracked"]["near"]["recall"],
                              "false_alarms_per_frame": r["tracked"]["false_alarms_per_frame"]}
        data["grid"] = {name: {"tracked": r["tracked"]["near"] | {"fa": r["tracked"]["false_alarms_per_frame"]},
                               "per_frame": r["per_frame"]["near"] | {"fa": r["per_frame"]["false_alarms_per_frame"]}}
                        for name, (_, r) in res.items()}
    else:
        data = measure(args.drives, args.frames, parse_set_args(args.set), data["command"], cache=args.cache)
        print(driving_markdown(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1, default=lambda o: o.item()
                                              if isinstance(o, np.generic) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
