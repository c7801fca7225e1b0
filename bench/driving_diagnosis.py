"""Why the shipped default misses near obstacles on the held-out drives: a breakdown of the misses,
the false alarms and the pixel AP of each drive (the numbers behind the issue-17 diagnosis).

    python bench/driving_diagnosis.py --drives 30 --frames 30 [--cache DIR] [--set KEY=VALUE ...]

Same drives, frames, detector and matching as ``bench/driving.py`` (its ``default_config`` and
``drive_maps``; the matching of :mod:`csl_ros.eval.driving`). Prints, per frame (untracked):

* the near (< 30 m) ground-truth obstacles by cause of miss: no pixel at or above the threshold;
  most pixels above it but only inside false instances (an oversized blob, e.g. the horizon or the
  whole road, swallowed the obstacle); the rest; and recall by visible size;
* the distance of the generator (obstacle centre) against the flat-ground contact point the
  detector's instances use;
* recall of the near obstacles by obstacle kind (box, plank, cylinder, tyre, bag, polygon), by their
  contrast to the road around them (camouflaged obstacles) and by the teacher's class of most of their
  pixels (an obstacle the closed-set segmenter calls "road" with confidence gets no anomaly score);
* recall by the highest fused score on the obstacle's pixels, and the share of obstacles within reach
  at each score (their best pixel at or above it): the ceiling of every instance rule on the same map;
* the false alarms by distance band of their contact point, and the near (< 10 m) ones: how many
  reach the bottom image border, and their sizes;
* the false alarms by the ground-truth class (Cityscapes trainId) of most of their pixels: "road" ones
  are something on the road surface that is not an obstacle (paint, texture, shadow);
* per drive: its false alarms (they concentrate in few drives), pixel AP on labelled pixels, the
  obstacles' median score, the share of road pixels at or above the threshold, image brightness.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import driving  # noqa: E402  (bench/driving.py: drives, shipped config, cached detection)


# Bins of the near-obstacle breakdown. Visible area: pixels of the obstacle's ground-truth component in the
# 512x1024 frame. Contrast: mean absolute RGB difference (0-255, averaged over the channels) between the
# obstacle's pixels and the road pixels of a ring a few pixels wide around it: camouflaged obstacles
# (the generator draws a fifth of them from the road's own colour) fall in the lowest bin.
SIZE_BINS = ((10, 50), (50, 200), (200, 1000), (1000, None))
CONTRAST_BINS = ((0, 15), (15, 40), (40, None))
# Highest fused score on the obstacle's pixels: what any rule on the same map could still find. An obstacle
# whose best pixel stays below a threshold is out of reach of every instance rule at that threshold
# (lower thresholds, smaller instances, instance classifiers): only a better score map reaches it.
REACH_BINS = ((0, 0.01), (0.01, 0.03), (0.03, 0.1), (0.1, 0.3), (0.3, None))
RING_PX = 5


def _bin_label(lo, hi, unit="") -> str:
    return f"{lo}-{hi}{unit}" if hi is not None else f">= {lo}{unit}"


def road_contrast(rgb: np.ndarray, component: np.ndarray, semantic: np.ndarray | None) -> float | None:
    """Mean absolute RGB difference between a component's pixels and the road pixels in a ring of
    ``RING_PX`` around it (None when the frame has no semantic labels or no road touches the ring)."""
    import cv2

    from csl_ros.pipeline.detector import ROAD_TRAIN_ID

    if semantic is None:
        return None
    k = 2 * RING_PX + 1
    ring = cv2.dilate(component.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool) & ~component
    ring &= semantic == ROAD_TRAIN_ID
    if not ring.any():
        return None
    return float(np.abs(rgb[component].astype(np.float64).mean(0) - rgb[ring].astype(np.float64).mean(0)).mean())


def diagnose(seeds, frames: int, cache: Path | None = None, overrides=None, log=None) -> dict:
    """Per-frame (untracked) breakdown of the near obstacles and of the false alarms over the drives
    ``seeds`` with the shipped default (``overrides`` as ``--set``): what :func:`report_lines` prints and
    :func:`breakdown_markdown` renders."""
    import torch
    from sklearn.metrics import average_precision_score

    from csl_ros.eval.driving import NEAR_M, band_of, component_distances
    from csl_ros.eval.instance_match import match_instances
    from csl_ros.pipeline import Detector
    from csl_ros.pipeline.instances import describe_instances, obstacles_of

    detector = Detector.from_config(driving.default_config(overrides or {}))
    cfg = detector.config   # as bench/driving.py: the student's metadata fills what was left at the default
    thr = cfg.score_threshold
    near, false_near, offsets, per_drive = [], [], [], []
    false_bands, false_classes = Counter(), Counter()
    with torch.inference_mode():
        for seed in seeds:
            labels, scores, bright = [], [], []
            drive_false = 0
            for stamp, rec, truth, a, regions, roi, cam, source in driving.drive_maps(detector, seed, frames, cache):
                inst, records = obstacles_of(a, regions, cfg, cam, roi)
                m = match_instances(inst, rec.label, driving.INSTSIZE)
                comps = component_distances(m.gt, m.gt_counted, truth, cam, source)
                detected = set(m.detected().tolist())
                own = {r.id: r for r in describe_instances(
                    np.where(np.isin(m.gt, list(comps)), m.gt, 0).astype(np.uint16), a, cam)}
                kind_of = {o.get("instance_id"): o.get("kind", "?") for o in (truth.obstacles or [])}
                classes = detector.teacher_classes(rec.rgb) if any(d < NEAR_M for d, _, _ in comps.values()) \
                    else None
                for c, (d, _, key) in comps.items():
                    px = m.gt == c
                    if own[c].distance_m is not None:
                        offsets.append(d - own[c].distance_m)
                    if d < NEAR_M:
                        near.append((c in detected, int(px.sum()), float((a[px] >= thr).mean()),
                                     float((inst[px] > 0).mean()), kind_of.get(key, "?"),
                                     road_contrast(rec.rgb, px, rec.semantic),
                                     None if classes is None else int(np.bincount(classes[px]).argmax()),
                                     float(a[px].max())))
                for r in records:
                    if m.counted[r.instance] and not m.true[r.instance]:
                        drive_false += 1
                        false_bands[band_of(r.distance_m)] += 1
                        if rec.semantic is not None:
                            false_classes[int(np.bincount(rec.semantic[inst == r.instance]).argmax())] += 1
                        if r.distance_m is not None and r.distance_m < 10.0:
                            false_near.append((r.bbox[3] >= a.shape[0], r.area_px))
                valid = rec.label != 255
                labels.append(rec.label[valid] == 1)
                scores.append(a[valid])
                bright.append(float(rec.rgb.mean()))
            y, s = np.concatenate(labels), np.concatenate(scores)
            per_drive.append({
                "seed": seed, "false_alarms": drive_false,
                "pixel_ap": float(average_precision_score(y, s)) if y.any() else None,
                "obstacle_pixels": float(y.mean()), "obstacle_median_score": float(np.median(s[y])) if y.any() else None,
                "road_above_threshold": float((s[~y] >= thr).mean()) if (~y).any() else None,
                "brightness": float(np.mean(bright))})
            if log:
                log(f"diagnosis: drive {seed} done")
    hit = np.array([n[0] for n in near], bool)
    area = np.array([n[1] for n in near])
    above = np.array([n[2] for n in near])
    covered = np.array([n[3] for n in near])
    kinds = np.array([n[4] for n in near])
    contrast = np.array([np.nan if n[5] is None else n[5] for n in near])
    teacher_class = np.array([-1 if n[6] is None else n[6] for n in near])
    best = np.array([n[7] for n in near])
    miss = ~hit

    def binned(values, bins, unit=""):
        out = []
        for lo, hi in bins:
            sel = (values >= lo) & (values < hi if hi is not None else True)
            out.append({"bin": _bin_label(lo, hi, unit), "n": int(sel.sum()), "detected": int(hit[sel].sum())})
        return out

    by_contrast = binned(contrast, CONTRAST_BINS)
    unknown = np.isnan(contrast)
    if unknown.any():
        by_contrast.append({"bin": "unknown", "n": int(unknown.sum()), "detected": int(hit[unknown].sum())})
    return {
        "seeds": list(seeds), "frames": frames, "score_threshold": thr,
        "input_size": [cfg.input_height, cfg.input_width], "frame_size": list(driving.FRAME_SIZE),
        "near_m": NEAR_M, "per_drive": per_drive,
        "near": {"n": int(hit.size), "detected": int(hit.sum()), "no_pixel": int((miss & (above == 0)).sum()),
                 "swallowed": int((miss & (covered > 0.5)).sum()),
                 "other": int((miss & (above > 0) & (covered <= 0.5)).sum())},
        "by_kind": [{"bin": k, "n": int((kinds == k).sum()), "detected": int(hit[kinds == k].sum())}
                    for k in sorted(set(kinds.tolist()))],
        "by_size": binned(area, SIZE_BINS, " px"),
        "by_contrast": by_contrast,
        "by_teacher_class": _by_teacher_class(teacher_class, hit),
        "by_reach": binned(best, REACH_BINS),
        "offsets": offsets,
        "false_bands": {("unknown" if k is None else k): v for k, v in false_bands.items()},
        "false_classes": dict(false_classes.most_common()),
        "false_near": false_near,
    }


def _by_teacher_class(classes: np.ndarray, hit: np.ndarray) -> list[dict]:
    """Near obstacles grouped by the teacher's class of most of their pixels, the largest groups first;
    classes under 5 % of the obstacles pooled as "other classes"; none without a teacher."""
    from csl_ros.data.synthroad import TRAIN_ID_NAMES

    known = classes >= 0
    if not known.any():
        return []
    out, rest = [], np.zeros(classes.size, bool)
    ids, counts = np.unique(classes[known], return_counts=True)
    for c, k in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: -t[1]):
        sel = classes == c
        if k >= 0.05 * known.sum():
            out.append({"bin": TRAIN_ID_NAMES[c] if c < len(TRAIN_ID_NAMES) else str(c), "n": int(k),
                        "detected": int(hit[sel].sum())})
        else:
            rest |= sel
    if rest.any():
        out.append({"bin": "other classes", "n": int(rest.sum()), "detected": int(hit[rest].sum())})
    return out


def reach_shares(by_reach: list[dict]) -> list[tuple[float, float]]:
    """(t, share of the near obstacle-frames whose highest fused score is >= t) at every lower edge of
    ``REACH_BINS`` above 0, from the :func:`diagnose` groups."""
    total = sum(b["n"] for b in by_reach)
    out = []
    for k, (lo, _) in enumerate(REACH_BINS):
        if lo > 0:
            out.append((lo, sum(b["n"] for b in by_reach[k:]) / total if total else 0.0))
    return out


def _recall(b: dict) -> str:
    return f"{100 * b['detected'] / b['n']:.1f} %" if b["n"] else "-"


def report_lines(d: dict) -> list[str]:
    """The printed report of :func:`diagnose`."""
    from csl_ros.data.synthroad import TRAIN_ID_NAMES
    from csl_ros.eval.driving import BANDS, band_label

    h, w = d["frame_size"]
    out = [f"score_threshold {d['score_threshold']:g}, input {d['input_size'][0]}x{d['input_size'][1]}, frames "
           f"{h}x{w}; per frame (untracked)"]
    def num(v, scale=1.0, fmt="{:.1f}"):
        return "nan" if v is None else fmt.format(scale * v)

    for r in d["per_drive"]:
        out.append(f"drive {r['seed']}: false alarms {r['false_alarms']}, pixel AP {num(r['pixel_ap'], 100)} %, "
                   f"obstacle pixels {100 * r['obstacle_pixels']:.2f} %, obstacle median score "
                   f"{num(r['obstacle_median_score'], fmt='{:.3f}')}, road pixels >= threshold "
                   f"{num(r['road_above_threshold'], 100)} %, brightness {r['brightness']:.0f}")
    n = d["near"]
    out.append(f"near (< {d['near_m']:g} m) obstacles {n['n']}: detected {n['detected']} "
               f"({100 * n['detected'] / max(n['n'], 1):.1f} %); missed {n['n'] - n['detected']}: no pixel >= threshold "
               f"{n['no_pixel']}, > half inside false instances only {n['swallowed']}, other {n['other']}")
    out.append("  recall by obstacle kind (synthroad generator): " + ", ".join(
        f"{b['bin']} {b['detected']}/{b['n']}" for b in d["by_kind"]))
    for b in d["by_size"]:
        if b["n"]:
            out.append(f"  visible area {b['bin']}: {b['n']} obstacles, recall {_recall(b)}")
    for b in d["by_contrast"]:
        if b["n"]:
            out.append(f"  contrast to the road around it {b['bin']}: {b['n']} obstacles, recall {_recall(b)}")
    for b in d["by_teacher_class"]:
        out.append(f"  teacher's class of most of its pixels {b['bin']}: {b['n']} obstacles, recall {_recall(b)}")
    for b in d["by_reach"]:
        out.append(f"  highest fused score on its pixels {b['bin']}: {b['n']} obstacles, recall {_recall(b)}")
    out.append("  within reach (highest fused score >= t, the recall ceiling of any rule at threshold t): " + ", ".join(
        f"{t:g} {100 * share:.1f} %" for t, share in reach_shares(d["by_reach"])))
    off = np.array(d["offsets"])
    if off.size:
        out.append(f"generator distance - contact-point distance: median {np.median(off):.2f} m, 10-90 % "
                   f"{np.percentile(off, 10):.2f}..{np.percentile(off, 90):.2f} m")
    fb = d["false_bands"]
    out.append("false alarms (per frame, untracked) by distance band: " + ", ".join(
        f"{band_label(*BANDS[k]) if k != 'unknown' else 'unknown'} {fb[k]}"
        for k in [*range(len(BANDS)), "unknown"] if fb.get(k)))
    if d["false_classes"]:
        out.append("false alarms by ground-truth class of most of their pixels: " + ", ".join(
            f"{TRAIN_ID_NAMES[k] if k < len(TRAIN_ID_NAMES) else k} {v}" for k, v in d["false_classes"].items()))
    bottom = [a for b, a in d["false_near"] if b]
    sizes = Counter("< 2k px" if a < 2000 else "> 20k px" if a > 20000 else "2k-20k px" for a in bottom)
    out.append(f"near (< 10 m) false alarms {len(d['false_near'])}: {len(bottom)} reach the bottom border "
               f"({', '.join(f'{k} {v}' for k, v in sorted(sizes.items()))})")
    return out


def breakdown_markdown(d: dict, command: str) -> str:
    """The docs/results.md table of :func:`diagnose`: where the misses within 30 m are."""
    n = d["near"]
    missed = n["n"] - n["detected"]
    out = ["### Where the misses within 30 m are", "",
           f"Generated by `{command}` on the same drives and maps (per frame, untracked). Of {n['n']} obstacle-frames within {d['near_m']:g} m, {missed} are missed: in "
           f"{n['no_pixel']} no pixel of the obstacle reaches the score threshold, {n['swallowed']} lie for more "
           f"than half inside false instances only, {n['other']} other. Visible area: pixels of the obstacle in "
           f"the {d['frame_size'][0]}x{d['frame_size'][1]} frame; contrast: mean absolute RGB difference "
           f"(0-255) to the road in a {RING_PX}-px ring around it; teacher's class: the closed-set segmenter's "
           f"class (argmax at the network input size) of most of the obstacle's pixels; highest fused score: "
           f"the best pixel of the obstacle in the fused map. An obstacle whose best pixel stays below a "
           f"threshold is out of reach of every instance rule at that threshold (smaller instances, instance "
           f"classifiers): share within reach at " + ", ".join(
               f"{t:g}: {100 * share:.1f} %" for t, share in reach_shares(d["by_reach"])) + ".", "",
           "| breakdown | group | obstacle-frames | detected | recall |", "|---|---|---|---|---|"]
    for title, key in (("visible area", "by_size"), ("contrast to the road", "by_contrast"),
                       ("obstacle kind (synthroad)", "by_kind"), ("teacher's class (most pixels)", "by_teacher_class"),
                       ("highest fused score", "by_reach")):
        out += [f"| {title} | {b['bin']} | {b['n']} | {b['detected']} | {_recall(b)} |" for b in d[key]]
    return "\n".join(out + [""])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drives", type=int, default=driving.HELD_OUT_DRIVES,
                   help="number of held-out test drives (default: bench/driving.py's)")
    p.add_argument("--frames", type=int, default=30, help="frames per drive")
    p.add_argument("--seeds", default="", metavar="S1,S2,...", help="these drives instead of the test drives")
    p.add_argument("--cache", type=Path, default=None, help="as bench/driving.py --cache")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the shipped default (as bench/driving.py --set)")
    args = p.parse_args(argv)
    import torch

    from csl_ros.config import parse_set_args

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else \
        [driving.DRIVE_SEED + i for i in range(args.drives)]
    print("\n".join(report_lines(diagnose(seeds, args.frames, args.cache, parse_set_args(args.set)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
