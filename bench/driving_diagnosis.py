"""Why the shipped default misses near obstacles on the held-out drives: a breakdown of the misses,
the false alarms and the pixel AP of each drive (the numbers behind the issue-17 diagnosis).

    python bench/driving_diagnosis.py --drives 30 --frames 30 [--cache DIR] [--set KEY=VALUE ...]

Same drives, frames, detector and matching as ``bench/driving.py`` (its ``drive_frames``,
``default_config`` and ``detect_cached``; the matching of :mod:`csl_ros.eval.driving`). Prints, per
frame (untracked):

* the near (< 30 m) ground-truth obstacles by cause of miss: no pixel at or above the threshold;
  most pixels above it but only inside false instances (an oversized blob, e.g. the horizon or the
  whole road, swallowed the obstacle); the rest; and recall by visible size;
* the distance of the generator (obstacle centre) against the flat-ground contact point the
  detector's instances use;
* recall of the near obstacles by obstacle kind (box, plank, cylinder, tyre, bag, polygon);
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
    from sklearn.metrics import average_precision_score

    from csl_ros.eval.driving import BANDS, NEAR_M, band_label, band_of, component_distances, frame_geometry
    from csl_ros.eval.instance_match import match_instances
    from csl_ros.pipeline import Detector
    from csl_ros.pipeline.instances import describe_instances, obstacles_of

    torch.set_num_threads(args.threads)
    from csl_ros.config import parse_set_args
    from csl_ros.data.synthroad import TRAIN_ID_NAMES

    detector = Detector.from_config(driving.default_config(parse_set_args(args.set)))
    cfg = detector.config   # as bench/driving.py: the student's metadata fills what was left at the default
    thr = cfg.score_threshold
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else \
        [driving.DRIVE_SEED + i for i in range(args.drives)]
    near, false_near, offsets = [], [], []
    false_bands, false_classes = Counter(), Counter()
    print(f"score_threshold {thr:g}, input {cfg.input_height}x{cfg.input_width}, frames "
          f"{driving.FRAME_SIZE[0]}x{driving.FRAME_SIZE[1]}; per frame (untracked)")
    with torch.inference_mode():
        for seed in seeds:
            labels, scores, bright, gt_med = [], [], [], []
            drive_false = 0
            for stamp, rec, truth in driving.drive_frames(seed, args.frames):
                a, regions, roi = driving.detect_cached(detector, rec, cfg, args.cache, f"{seed}_{stamp}")
                cam, source = frame_geometry(truth, rec.label.shape, cfg)
                inst, records = obstacles_of(a, regions, cfg, cam, roi)
                m = match_instances(inst, rec.label, 10)
                comps = component_distances(m.gt, m.gt_counted, truth, cam, source)
                detected = set(m.detected().tolist())
                own = {r.id: r for r in describe_instances(
                    np.where(np.isin(m.gt, list(comps)), m.gt, 0).astype(np.uint16), a, cam)}
                kind_of = {o.get("instance_id"): o.get("kind", "?") for o in (truth.obstacles or [])}
                for c, (d, _, key) in comps.items():
                    px = m.gt == c
                    if own[c].distance_m is not None:
                        offsets.append(d - own[c].distance_m)
                    if d < NEAR_M:
                        near.append((c in detected, int(px.sum()), float((a[px] >= thr).mean()),
                                     float((inst[px] > 0).mean()), kind_of.get(key, "?")))
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
            ap = average_precision_score(y, s) if y.any() else float("nan")
            print(f"drive {seed}: false alarms {drive_false}, pixel AP {100 * ap:.1f} %, obstacle pixels "
                  f"{100 * y.mean():.2f} %, obstacle "
                  f"median score {np.median(s[y]) if y.any() else float('nan'):.3f}, road pixels >= threshold "
                  f"{100 * (s[~y] >= thr).mean():.1f} %, brightness {np.mean(bright):.0f}")
    hit = np.array([n[0] for n in near], bool)
    area = np.array([n[1] for n in near])
    above = np.array([n[2] for n in near])
    covered = np.array([n[3] for n in near])
    miss = ~hit
    print(f"near (< {NEAR_M:g} m) obstacles {hit.size}: detected {hit.sum()} ({100 * hit.mean():.1f} %); missed "
          f"{miss.sum()}: no pixel >= threshold {(miss & (above == 0)).sum()}, > half inside false "
          f"instances only {(miss & (covered > 0.5)).sum()}, other {(miss & (above > 0) & (covered <= 0.5)).sum()}")
    kinds = np.array([n[4] for n in near])
    print("  recall by obstacle kind (synthroad generator): " + ", ".join(
        f"{k} {hit[kinds == k].sum()}/{(kinds == k).sum()}" for k in sorted(set(kinds.tolist()))))
    for lo, hi in ((10, 50), (50, 200), (200, 1000), (1000, None)):
        sel = (area >= lo) & (area < hi if hi else True)
        if sel.any():
            print(f"  visible area {lo}-{hi or ''} px: {sel.sum()} obstacles, recall {100 * hit[sel].mean():.1f} %")
    off = np.array(offsets)
    print(f"generator distance - contact-point distance: median {np.median(off):.2f} m, 10-90 % "
          f"{np.percentile(off, 10):.2f}..{np.percentile(off, 90):.2f} m")
    print("false alarms (per frame, untracked) by distance band: " + ", ".join(
        f"{band_label(*BANDS[k]) if k is not None else 'unknown'} {false_bands[k]}"
        for k in [*range(len(BANDS)), None] if false_bands[k]))
    if false_classes:
        print("false alarms by ground-truth class of most of their pixels: " + ", ".join(
            f"{TRAIN_ID_NAMES[k] if k < len(TRAIN_ID_NAMES) else k} {v}" for k, v in false_classes.most_common()))
    bottom = [a for b, a in false_near if b]
    sizes = Counter("< 2k px" if a < 2000 else "> 20k px" if a > 20000 else "2k-20k px" for a in bottom)
    print(f"near (< 10 m) false alarms {len(false_near)}: {len(bottom)} reach the bottom border "
          f"({', '.join(f'{k} {v}' for k, v in sorted(sizes.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
