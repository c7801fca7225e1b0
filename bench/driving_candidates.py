"""Can anything beyond the pixel threshold tell the false alarms from the obstacles? Candidate
instances at a low threshold on the tuning drives, scored by the threshold rule and by a small
instance classifier on their features, at equal false alarms.

    python bench/driving_candidates.py [--drives 20] [--frames 30] [--threshold 0.05] [--cache DIR]

Same tuning drives (seeds from ``bench/driving.py``'s ``TUNE_DRIVE_SEED``), detector, maps and
matching as ``bench/driving.py --tune``. Every frame's instances at ``--threshold`` (below the shipped
one, otherwise the shipped default: minimum area, output range) are the candidates; each is true or
false as in the evaluator (:func:`csl_ros.eval.instance_match.match_instances`). Two rules keep a
subset of the candidates and are scored per frame (untracked): recall of the obstacles within 30 m and
false alarms per frame:

* the threshold rule: candidates whose highest fused score is at least t, for a grid of t;
* an instance classifier: a logistic regression on the candidate's standardised features (highest and
  mean fused score, log area, distance and metric height/width at its contact point, bounding-box
  aspect and fill, the share of its pixels the teacher's segmenter calls road), trained on three
  quarters of the drives and applied to the fourth (four folds of whole drives), kept at probability
  >= p for a grid of p. The highest fused score is one of its features, so it can reproduce the
  threshold rule's order; anything it finds beyond that is what the other features add.

If the classifier's curve lies on the threshold rule's, the features hold nothing the fused score does
not: the false alarms and the missed obstacles look alike to every instance-level rule, and only a
better score map moves the curve (``bench/driving_diagnosis.py``: the obstacles out of reach).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import driving  # noqa: E402  (bench/driving.py: drives, shipped config, cached detection)

FEATURES = ("max score", "mean score", "log area", "distance m", "height m", "width m", "aspect", "fill",
            "teacher road share")
NO_VALUE = -1.0            # a feature that cannot be computed: no contact point, no teacher class map
SCORE_CUTOFFS = (0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25)
PROBABILITY_CUTOFFS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
FOLDS = 4


def candidate_features(record, pixels: np.ndarray, teacher_classes: np.ndarray | None) -> list[float]:
    """The features (``FEATURES``) of one candidate: its obstacle record and its pixels (bool mask)."""
    x0, y0, x1, y1 = record.bbox
    box = max((x1 - x0) * (y1 - y0), 1)
    from csl_ros.pipeline.detector import ROAD_TRAIN_ID

    road = float((teacher_classes[pixels] == ROAD_TRAIN_ID).mean()) if teacher_classes is not None else NO_VALUE
    geo = [NO_VALUE if v is None else float(v) for v in (record.distance_m, record.height_m, record.width_m)]
    return [record.max_score, record.mean_score, float(np.log(max(record.area_px, 1))), *geo,
            (x1 - x0) / max(y1 - y0, 1), record.area_px / box, road]


def collect(seeds, frames: int, threshold: float, cache: Path | None = None, overrides=None, log=None) -> dict:
    """Candidates over the drives ``seeds``: features (n, len(FEATURES)), true (n,), drive (n,) and, per
    candidate, the near (< 30 m) ground-truth obstacles it detects when true; the number of near
    obstacle-frames and of frames."""
    import torch

    from csl_ros.config import apply_overrides
    from csl_ros.eval.driving import NEAR_M, component_distances
    from csl_ros.eval.instance_match import match_instances
    from csl_ros.pipeline import Detector
    from csl_ros.pipeline.instances import obstacles_of

    detector = Detector.from_config(driving.default_config(overrides or {}))
    base = detector.config   # as bench/driving.py: the student's metadata fills what was left at the default
    if threshold > base.score_threshold:
        raise ValueError(f"--threshold {threshold:g} is above the shipped score_threshold "
                         f"{base.score_threshold:g}: the candidates must include what the default reports")
    cfg = apply_overrides(base, {"score_threshold": threshold})
    feats, true, drive, hits = [], [], [], []
    n_near = n_frames = 0
    with torch.inference_mode():
        for seed in seeds:
            for stamp, rec, truth, a, regions, roi, cam, source in driving.drive_maps(detector, seed, frames, cache):
                n_frames += 1
                inst, records = obstacles_of(a, regions, cfg, cam, roi)
                m = match_instances(inst, rec.label, driving.INSTSIZE)
                comps = component_distances(m.gt, m.gt_counted, truth, cam, source)
                near = {c for c, (d, _, _) in comps.items() if d < NEAR_M}
                n_near += len(near)
                classes = detector.teacher_classes(rec.rgb) if records else None
                for r in records:
                    if not m.counted[r.instance]:
                        continue
                    feats.append(candidate_features(r, inst == r.instance, classes))
                    true.append(bool(m.true[r.instance]))
                    drive.append(seed)
                    on = m.pairs[m.pairs[:, 0] == r.instance, 1]
                    hits.append([f"{seed}_{stamp}_{c}" for c in on.tolist() if c in near])
            if log:
                log(f"drive {seed}: {len(feats)} candidates so far")
    return {"features": np.array(feats, np.float64).reshape(-1, len(FEATURES)), "true": np.array(true, bool),
            "drive": np.array(drive, np.int64), "hits": hits, "near": n_near, "frames": n_frames,
            "threshold": threshold}


def rule_point(c: dict, keep: np.ndarray) -> tuple[float, float]:
    """(recall of the near obstacle-frames, false alarms per frame) of the candidates ``keep`` (bool)."""
    found = set()
    for k in np.flatnonzero(keep & c["true"]):
        found.update(c["hits"][k])
    false = int(np.count_nonzero(keep & ~c["true"]))
    return (len(found) / c["near"] if c["near"] else 0.0, false / c["frames"] if c["frames"] else 0.0)


def cross_validated_probability(c: dict, folds: int = FOLDS) -> np.ndarray:
    """Each candidate's probability of being true from a logistic regression trained on the other folds'
    drives (whole drives per fold, so no drive is scored by a model that saw it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    drives = np.unique(c["drive"])
    p = np.zeros(c["true"].size)
    for part in np.array_split(drives, min(folds, drives.size)):
        test = np.isin(c["drive"], part)
        train_y = c["true"][~test]
        if not test.any():
            continue
        if train_y.size == 0 or train_y.all() or not train_y.any():   # one class only: its constant
            p[test] = float(train_y.mean()) if train_y.size else 0.0
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(c["features"][~test], train_y)
        p[test] = model.predict_proba(c["features"][test])[:, 1]
    return p


def best_within(points: list[dict], max_fa: float) -> dict | None:
    """The point of a curve with the highest recall at <= ``max_fa`` false alarms per frame."""
    ok = [q for q in points if q["false_alarms_per_frame"] <= max_fa]
    return max(ok, key=lambda q: (q["recall_near"], -q["false_alarms_per_frame"])) if ok else None


def compare(c: dict, max_fa: float = 0.2) -> dict:
    """Both rules' curves on the candidates ``c`` and their best point within ``max_fa``."""
    score = c["features"][:, 0]   # FEATURES[0], the highest fused score
    by_score = [dict(zip(("recall_near", "false_alarms_per_frame"), rule_point(c, score >= t)), cutoff=t)
                for t in SCORE_CUTOFFS if t >= c["threshold"]]
    p = cross_validated_probability(c) if c["true"].size else np.zeros(0)
    by_classifier = [dict(zip(("recall_near", "false_alarms_per_frame"), rule_point(c, p >= q)), cutoff=q)
                     for q in PROBABILITY_CUTOFFS]
    return {"candidates": int(c["true"].size), "true": int(c["true"].sum()), "near": c["near"],
            "frames": c["frames"], "threshold": c["threshold"], "max_fa": max_fa,
            "threshold_rule": by_score, "classifier": by_classifier,
            "best_threshold_rule": best_within(by_score, max_fa), "best_classifier": best_within(by_classifier, max_fa)}


def report_lines(r: dict) -> list[str]:
    out = [f"{r['candidates']} candidates ({r['true']} true) at threshold {r['threshold']:g} on {r['frames']} frames, "
           f"{r['near']} obstacle-frames within 30 m; per frame (untracked)"]
    for name, key, what in (("threshold rule", "threshold_rule", "highest fused score >="),
                            (f"logistic regression ({FOLDS} folds of whole drives)", "classifier",
                             "probability >=")):
        out.append(name + ": " + ", ".join(f"{what} {q['cutoff']:g}: {100 * q['recall_near']:.1f} % at "
                                           f"{q['false_alarms_per_frame']:.3f}" for q in r[key]))
    for name, key in (("threshold rule", "best_threshold_rule"), ("logistic regression", "best_classifier")):
        b = r[key]
        out.append(f"best {name} within {r['max_fa']:g} false alarms/frame: " +
                   (f"{100 * b['recall_near']:.1f} % at {b['false_alarms_per_frame']:.3f} (cutoff {b['cutoff']:g})"
                    if b else "none"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drives", type=int, default=20, help="tuning drives (default 20, as bench/driving.py --tune)")
    p.add_argument("--frames", type=int, default=30, help="frames per drive")
    p.add_argument("--threshold", type=float, default=0.05, help="score threshold of the candidates (<= the "
                   "shipped one)")
    p.add_argument("--max-fa", type=float, default=0.2, help="false alarms per frame of the best points")
    p.add_argument("--cache", type=Path, default=None, help="as bench/driving.py --cache")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the shipped default (as bench/driving.py --set)")
    p.add_argument("--json", type=Path, default=None, help="write the curves here")
    args = p.parse_args(argv)
    import torch

    from csl_ros.config import parse_set_args

    torch.set_num_threads(args.threads)
    seeds = [driving.TUNE_DRIVE_SEED + i for i in range(args.drives)]
    try:
        c = collect(seeds, args.frames, args.threshold, args.cache, parse_set_args(args.set),
                    log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:
        print(f"driving_candidates: {e}", file=sys.stderr)
        return 2
    r = compare(c, args.max_fa)
    print("\n".join(report_lines(r)))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
