"""The issue-4 results table: CSL vs its teachers on a held-out synthroad obstacle-track test set.

    python bench/results.py --out docs/results.md            # shipped models (models/manifest.json)
    python bench/results.py --frames 40 --out /tmp/r.md      # quick look

Test set: synthroad ``obstacles="obstacle"`` frames with seeds from 10,000,000 (never used in training:
the shipped models were trained on seeds 0..999, validated on 1,000,000+), rendered at the models'
training resolution. Labels are the obstacle-track encoding (0 = drivable road, 1 = obstacle,
255 = void off the road). Pixel AUPR / FPR95 follow the SMIYC protocol (csl_ros.eval.metrics,
"official" binned curve).

Every scheme row runs :class:`csl_ros.pipeline.Detector` as a user would (letterbox, Eq. 2 at
stride 4, Eq. 3 at the input size):
  * teacher alone (scheme "teacher_only") for msp, maxlogit, sml, entropy, energy;
  * teacher + CSL scheme 2 with soft assignment (the class-agnostic student);
  * SML + CSL with hard assignment (the Mask2Former/EntitySeg thresholds, spec 4.5);
  * CSL scheme 1 (the distilled student alone).
Also: the segmenter's mIoU on synthroad validation frames (seeds 1,000,000+), the student's region
proposal quality (paper Table 7 protocol: each region takes its majority ground-truth trainId, then
mIoU), and diagnostics of the fusion on obstacle pixels.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from csl_ros.teachers.registry import TEACHERS as TEACHER_REGISTRY

# every registered score function over plain logits (the synthroad segmenter), in registration order;
# those on a Mask2Former's class scores (RbA) need a Mask2Former teacher
TEACHERS = TEACHER_REGISTRY.names(class_scores=False)
TEST_SEED = 10_000_000
VAL_SEED = 1_000_000
TUNE_SEED = 20_000_000  # obstacle frames for choosing the default score_threshold (not the test set)
NUM_CLASSES = 19


def render(seeds, size, obstacles):
    from csl_ros.data.synthroad import render_frame

    return [render_frame(s, size=size, obstacles=obstacles) for s in seeds]


class MemoStudent(torch.nn.Module):
    """The student with its network outputs memoised per input batch: the scheme-2 rows of every
    teacher see the same frames, so the (identical) student pass runs once per frame instead of once
    per row. Everything after the network (assignment, fusion) is the Detector's own code."""

    def __init__(self, student):
        super().__init__()
        self.inner = student
        self._cache = {}

    @property
    def has_distribution(self):
        return self.inner.has_distribution

    def forward(self, images):
        import hashlib

        key = hashlib.sha1(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if key not in self._cache:
            out = self.inner(images)
            self._cache[key] = type(out)(*(t.clone() if isinstance(t, torch.Tensor) else t for t in out))
        return self._cache[key]


_STUDENTS = {}


def student_for(scheme, args):
    """The memoised student of a scheme (the shipped file unless a path is given)."""
    from csl_ros.model import load_checkpoint
    from csl_ros.pipeline.detector import SHIPPED_STUDENT
    from csl_ros.shipped import resolve_shipped

    if scheme not in _STUDENTS:
        path = {"1": args.student_scheme1, "2": args.student_ca}[scheme] or resolve_shipped(SHIPPED_STUDENT[scheme])
        _STUDENTS[scheme] = MemoStudent(load_checkpoint(path).model)
    return _STUDENTS[scheme]


def detector(scheme, teacher, args, assignment="soft"):
    """A Detector as ``Detector.from_config`` builds it (same config, same teacher construction),
    with the memoised student."""
    from csl_ros.config import DetectorConfig
    from csl_ros.pipeline import Detector
    from csl_ros.teachers.teacher import build_teacher

    cfg = DetectorConfig(scheme=scheme, teacher=teacher if scheme != "1" else "none",
                         assignment=assignment, teacher_path=str(args.segmenter or ""),
                         teacher_stats_path=str(args.stats or ""), input_height=args.height,
                         input_width=args.width, device="cpu", backend="eager")
    student = student_for(scheme, args) if scheme in ("1", "2") else None
    t = None
    if scheme in ("2", "teacher_only"):
        t = build_teacher(teacher, segmenter_path=cfg.teacher_path, stats_path=cfg.teacher_stats_path,
                          device="cpu")
    return Detector(cfg, student=student, teacher=t)


def run_rows(frames, args, log):
    """Pixel metrics of every row; also keeps per-frame maps of a few rows for the diagnostics."""
    from csl_ros.eval.metrics import PixelAccumulator

    rows = [("teacher_only", t, "soft") for t in TEACHERS] + [("2", t, "soft") for t in TEACHERS] + \
        [("2", "sml", "hard"), ("1", "none", "soft")]
    results, keep = {}, {}
    for scheme, teacher, assignment in rows:
        det = detector(scheme, teacher, args, assignment)
        acc = PixelAccumulator("official")
        t0 = time.time()
        maps = []
        for start in range(0, len(frames), args.batch):
            chunk = frames[start:start + args.batch]
            for f, d in zip(chunk, det.detect_batch([f.image for f in chunk])):
                acc.update(d.anomaly_map, f.ood_labels, f"{f.seed}")
                if (scheme, teacher, assignment) in (("teacher_only", "sml", "soft"), ("2", "sml", "soft"),
                                                     ("2", "sml", "hard"), ("1", "none", "soft")):
                    maps.append((d.anomaly_map.astype(np.float16), d.regions))
        r = acc.result(with_curve=False)
        key = (scheme, teacher, assignment)
        results[key] = {"ap": r.ap, "fpr95": r.fpr95, "auroc": r.auroc, "s": time.time() - t0}
        if maps:
            keep[key] = maps
        log(f"{scheme:>12} {teacher:>8} {assignment}: AP {100 * r.ap:.2f} FPR95 {100 * r.fpr95:.2f} "
            f"({time.time() - t0:.0f} s)")
        det.close()
    return results, keep


def region_quality(frames, args):
    """Table 7 protocol on ID validation frames: every region (soft: Eq. 2 + component split; hard:
    M2F thresholds, unassigned pixels predict nothing) takes its majority GT trainId; mIoU over the
    19 classes, confusion accumulated over all frames. Also the number of regions per frame."""
    out = {}
    for assignment in ("soft", "hard"):
        det = detector("2", "msp", args, assignment)  # the teacher does not affect the regions
        conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        misses = np.zeros(NUM_CLASSES, np.int64)
        n_regions = []
        for start in range(0, len(frames), args.batch):
            chunk = frames[start:start + args.batch]
            for f, d in zip(chunk, det.detect_batch([f.image for f in chunk])):
                gt = f.train_ids.astype(np.int64)
                reg = d.regions.astype(np.int64)
                pred = np.full(gt.shape, -1, np.int64)
                valid_gt = gt != 255
                ids = np.unique(reg[reg >= 0])
                n_regions.append(len(ids))
                if len(ids):
                    # majority label per region in one bincount over (region, class) pairs
                    sel = (reg >= 0) & valid_gt
                    pair = np.bincount(reg[sel] * NUM_CLASSES + gt[sel], minlength=(reg.max() + 1) * NUM_CLASSES)
                    majority = pair.reshape(-1, NUM_CLASSES).argmax(1)
                    has = pair.reshape(-1, NUM_CLASSES).sum(1) > 0
                    lut = np.where(has, majority, -1)
                    pred = np.where(reg >= 0, lut[np.clip(reg, 0, None)], -1)
                m = valid_gt
                p = pred[m]
                g = gt[m]
                ok = p >= 0
                conf += np.bincount(g[ok] * NUM_CLASSES + p[ok], minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, -1)
                # unassigned GT pixels are misses of their class (the GT row only)
                misses += np.bincount(g[~ok], minlength=NUM_CLASSES)
        tp = np.diag(conf).astype(float)
        gt_total = conf.sum(1) + misses
        union = gt_total + conf.sum(0) - tp
        present = gt_total > 0
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        out[assignment] = {"miou": float(np.nanmean(iou[present])),
                           "regions_per_frame": float(np.mean(n_regions)),
                           "assigned_fraction": float(1 - misses.sum() / max(gt_total.sum(), 1))}
        det.close()
    return out


def segmenter_miou(frames, args):
    from csl_ros.teachers.segmenter import load_segmenter
    from csl_ros.training.segmenter import evaluate_miou
    from csl_ros.shipped import resolve_shipped

    path = args.segmenter or resolve_shipped("teacher_segmenter")
    model = load_segmenter(path)
    miou, per_class = evaluate_miou(model, [(f.image, f.train_ids) for f in frames])
    return miou, per_class


def diagnostics(frames, keep):
    """How the fusion treats obstacle pixels: mean score on obstacle vs road pixels, and how pure the
    regions containing obstacle pixels are (fraction of obstacle pixels whose region is mostly
    obstacle)."""
    out = {}
    for key, maps in keep.items():
        obst, road, pure, tot = [], [], 0, 0
        for f, (amap, regions) in zip(frames, maps):
            lab = f.ood_labels
            a = amap.astype(np.float32)
            obst.append(a[lab == 1])
            road.append(a[lab == 0])
            if regions is not None and (lab == 1).any():
                reg = regions.astype(np.int64)
                sel = reg >= 0
                n = reg.max() + 1 if sel.any() else 1
                count = np.bincount(reg[sel], minlength=n)
                ob = np.bincount(reg[sel & (lab == 1)], minlength=n)
                frac = ob / np.maximum(count, 1)
                on = (lab == 1) & sel
                pure += int((frac[reg[on]] >= 0.5).sum())
                tot += int((lab == 1).sum())
        o, r = np.concatenate(obst), np.concatenate(road)
        out[key] = {"mean_obstacle": float(o.mean()), "mean_road": float(r.mean()),
                    "road_p99": float(np.quantile(r, 0.99)),
                    "obstacle_median": float(np.median(o)),
                    "obstacle_region_purity": (pure / tot) if tot else None}
    return out


def oracle_regions(frame) -> np.ndarray:
    """Ground-truth regions: connected components of the trainId map with every obstacle instance as
    its own label (what a perfect class-agnostic region model would propose)."""
    from csl_ros.model import connected_components

    labels = frame.train_ids.astype(np.int64)
    obstacle = frame.ood_labels == 1
    labels = np.where(obstacle, 1000 + frame.instance_ids.astype(np.int64), labels)
    components, _ = connected_components(labels, 8)
    return components


def oracle_fusion(frames, keep):
    """AUPR / FPR95 of SML fused (Eq. 3) with ground-truth regions instead of the student's: the
    ceiling of the fusion with this teacher, separating region quality from teacher quality."""
    from csl_ros.eval.metrics import PixelAccumulator
    from csl_ros.model import structure_constrained_fusion

    maps = keep[("teacher_only", "sml", "soft")]
    acc = PixelAccumulator("official")
    for f, (amap, _) in zip(frames, maps):
        d = torch.from_numpy(amap.astype(np.float32))[None]
        fused = structure_constrained_fusion(d, torch.from_numpy(oracle_regions(f)), "product")[0]
        acc.update(fused.numpy(), f.ood_labels, f"{f.seed}")
    r = acc.result(with_curve=False)
    return {"ap": r.ap, "fpr95": r.fpr95}


def distillation_fidelity(frames, keep, args):
    """Scheme 1 without the fusion: how well the distilled head D-hat reproduces its SML teacher on the
    test frames (Pearson correlation over all pixels, mean absolute difference) and how it ranks
    obstacle pixels by itself (AUPR / FPR95 of D-hat alone)."""
    import torch.nn.functional as F

    from csl_ros.eval.metrics import PixelAccumulator

    student = student_for("1", args).inner
    teacher_maps = keep[("teacher_only", "sml", "soft")]
    acc = PixelAccumulator("official")
    xs, ys = [], []
    with torch.inference_mode():
        for start in range(0, len(frames), args.batch):
            chunk = frames[start:start + args.batch]
            x = torch.from_numpy(np.stack([f.image for f in chunk])).permute(0, 3, 1, 2).float()
            dhat = F.interpolate(student(x).distribution[:, :1], scale_factor=4, mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
            for f, d, (t, _) in zip(chunk, dhat, teacher_maps[start:start + args.batch]):
                acc.update(d, f.ood_labels, f"{f.seed}")
                xs.append(d[::4, ::4].ravel())
                ys.append(t.astype(np.float32)[::4, ::4].ravel())
    r = acc.result(with_curve=False)
    x, y = np.concatenate(xs), np.concatenate(ys)
    return {"ap": r.ap, "fpr95": r.fpr95, "pearson": float(np.corrcoef(x, y)[0, 1]),
            "mean_abs_diff": float(np.abs(x - y).mean()), "mean_dhat": float(x.mean()),
            "mean_teacher": float(y.mean())}


def tune_threshold(args):
    """The default configuration's (scheme 2, SML, soft) best pixel-F1 threshold on obstacle frames
    that are neither training nor test frames: the tuned score_threshold (rounded) carried by the shipped
    student_ca's metadata and the schema default (csl_ros.model.checkpoint)."""
    from csl_ros.eval.metrics import PixelAccumulator

    frames = render(range(TUNE_SEED, TUNE_SEED + args.tune_frames), (args.height, args.width), "obstacle")
    det = detector("2", "sml", args)
    acc = PixelAccumulator("official")
    for start in range(0, len(frames), args.batch):
        chunk = frames[start:start + args.batch]
        for f, d in zip(chunk, det.detect_batch([f.image for f in chunk])):
            acc.update(d.anomaly_map, f.ood_labels, f"{f.seed}")
    det.close()
    r = acc.result(with_curve=False)
    return {"frames": len(frames), "best_f1": r.best_f1, "threshold": r.best_f1_point_threshold}


def fmt(v, scale=100.0):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.2f}"


def write_markdown(path, args, results, regions, seg, diag, n_test, wall, manifest, oracle, fidelity, tuned):
    name = {"msp": "MSP (1 − max softmax)", "maxlogit": "Max logit", "sml": "SML", "entropy": "Entropy",
            "energy": "Energy"}
    lines = ["# Results: CSL on synthroad (issue 4)", "",
             f"Produced by `python bench/results.py --out {args.out}` in {wall / 60:.1f} min on "
             f"{platform.processor() or platform.machine()} (CPU, torch {torch.__version__}).", "",
             f"* Test set: {n_test} synthroad obstacle-track frames, seeds {TEST_SEED}..{TEST_SEED + n_test - 1} "
             f"(never used in training), {args.height}×{args.width}; labels 0 road / 1 obstacle / 255 void.",
             "* Metrics: pixel AUPR and FPR95 (%), SMIYC official binned protocol (`csl_ros.eval.metrics`).",
             "* Every row is `csl_ros.pipeline.Detector` with the shipped models "
             f"({', '.join(f'{k} {v[:12]}…' for k, v in manifest.items())}), input "
             f"{args.height}×{args.width}, eager CPU.", "",
             "## Obstacle track (pixel level)", "",
             "| teacher | teacher alone AUPR ↑ | FPR95 ↓ | + CSL scheme 2 (soft) AUPR ↑ | FPR95 ↓ | Δ AUPR |",
             "|---|---|---|---|---|---|"]
    for t in TEACHERS:
        a, b = results[("teacher_only", t, "soft")], results[("2", t, "soft")]
        lines.append(f"| {name.get(t, t)} | {fmt(a['ap'])} | {fmt(a['fpr95'])} | {fmt(b['ap'])} | {fmt(b['fpr95'])} | "
                     f"{100 * (b['ap'] - a['ap']):+.2f} |")
    h, s1 = results[("2", "sml", "hard")], results[("1", "none", "soft")]
    lines += ["", "| method | AUPR ↑ | FPR95 ↓ |", "|---|---|---|",
              f"| SML alone | {fmt(results[('teacher_only', 'sml', 'soft')]['ap'])} | "
              f"{fmt(results[('teacher_only', 'sml', 'soft')]['fpr95'])} |",
              f"| SML + CSL, soft assignment (Eq. 2) | {fmt(results[('2', 'sml', 'soft')]['ap'])} | "
              f"{fmt(results[('2', 'sml', 'soft')]['fpr95'])} |",
              f"| SML + CSL, hard assignment (M2F thresholds) | {fmt(h['ap'])} | {fmt(h['fpr95'])} |",
              f"| CSL scheme 1 (distilled from SML, no teacher at run time) | {fmt(s1['ap'])} | {fmt(s1['fpr95'])} |",
              f"| *diagnostic:* scheme-1 head D̂ alone (no fusion) | {fmt(fidelity['ap'])} | "
              f"{fmt(fidelity['fpr95'])} |",
              f"| *diagnostic:* SML + ground-truth regions (Eq. 3 with perfect proposals) | {fmt(oracle['ap'])} | "
              f"{fmt(oracle['fpr95'])} |",
              "", f"Scheme-1 distillation on the test frames: Pearson correlation of D̂ with the SML teacher's map "
              f"{fidelity['pearson']:.3f}, mean |D̂ − D| {fidelity['mean_abs_diff']:.4f} (mean D̂ "
              f"{fidelity['mean_dhat']:.4f}, mean D {fidelity['mean_teacher']:.4f}).",
              "", f"Default `score_threshold` (the shipped student's metadata and the schema default, rounded): the best pixel-F1 threshold of SML + CSL "
              f"scheme 2 on {tuned['frames']} separate obstacle frames (seeds {TUNE_SEED}+) is "
              f"**{tuned['threshold']:.4g}** (F1 {fmt(tuned['best_f1'])}).",
              "", "## Closed-set segmenter and region proposals", "",
              f"* Segmenter (teacher base) mIoU on {args.val_frames} synthroad validation frames (seeds "
              f"{VAL_SEED}+, no obstacles, {args.height}×{args.width}): **{fmt(seg[0])}**.",
              f"* Student region proposals, paper Table 7 protocol (majority GT trainId per region → mIoU, "
              f"same validation frames):",
              f"  * soft assignment (Eq. 2, component split): **{fmt(regions['soft']['miou'])}** mIoU, "
              f"{regions['soft']['regions_per_frame']:.1f} regions per frame, every pixel assigned;",
              f"  * hard assignment (v > 0.8, r ≥ 0.5): **{fmt(regions['hard']['miou'])}** mIoU, "
              f"{regions['hard']['regions_per_frame']:.1f} regions per frame, "
              f"{100 * regions['hard']['assigned_fraction']:.1f} % of labelled pixels assigned.",
              "", "## Diagnostics of the fusion on obstacle pixels", "",
              "| row | mean score on obstacles | median on obstacles | mean on road | road 99th pct | "
              "obstacle pixels in obstacle-majority regions |", "|---|---|---|---|---|---|"]
    labels = {("teacher_only", "sml", "soft"): "SML alone", ("2", "sml", "soft"): "SML + CSL soft",
              ("2", "sml", "hard"): "SML + CSL hard", ("1", "none", "soft"): "CSL scheme 1"}
    for key, d in diag.items():
        purity = "—" if d["obstacle_region_purity"] is None else f"{100 * d['obstacle_region_purity']:.1f} %"
        lines.append(f"| {labels[key]} | {d['mean_obstacle']:.3f} | {d['obstacle_median']:.3f} | "
                     f"{d['mean_road']:.3f} | {d['road_p99']:.3f} | {purity} |")
    lines += ["", "Timings per row (s, all frames): " +
              ", ".join(f"{k[0]}/{k[1]}/{k[2]} {v['s']:.0f}" for k, v in results.items()), ""]
    if args.notes and Path(args.notes).is_file():
        lines += [Path(args.notes).read_text().rstrip(), ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results.md", help="Markdown file to write (default docs/results.md)")
    p.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    p.add_argument("--frames", type=int, default=200, help="number of test frames (default 200)")
    p.add_argument("--val-frames", type=int, default=100, help="number of validation frames for the mIoU numbers")
    p.add_argument("--tune-frames", type=int, default=100, help="number of obstacle frames to tune the default threshold on")
    p.add_argument("--height", type=int, default=256, help="frame height in pixels (default 256)")
    p.add_argument("--width", type=int, default=512, help="frame width in pixels (default 512)")
    p.add_argument("--batch", type=int, default=8, help="number of frames per forward pass (default 8)")
    p.add_argument("--threads", type=int, default=2, help="number of torch CPU threads (default 2)")
    p.add_argument("--student-ca", default="", help="class-agnostic student checkpoint (default: the shipped student_ca)")
    p.add_argument("--student-scheme1", default="", help="scheme-1 student checkpoint (default: the shipped student_scheme1)")
    p.add_argument("--segmenter", default="", help="closed-set segmenter checkpoint (default: the shipped teacher_segmenter)")
    p.add_argument("--stats", default="", help="its SML statistics JSON (default: the shipped teacher_segmenter_stats)")
    p.add_argument("--notes", default="docs/results_notes.md",
                   help="hand-written analysis appended to the table when the file exists")
    p.add_argument("--driving-drives", type=int, default=10,
                   help="held-out synthroad drives of the driving table (bench/driving.py); 0 skips it")
    p.add_argument("--driving-frames", type=int, default=30, help="frames per driving drive")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)

    size = (args.height, args.width)
    test = render(range(TEST_SEED, TEST_SEED + args.frames), size, "obstacle")
    val = render(range(VAL_SEED, VAL_SEED + args.val_frames), size, "none")
    log(f"rendered {len(test)} test and {len(val)} validation frames")
    seg = segmenter_miou(val, args)
    log(f"segmenter mIoU {100 * seg[0]:.2f}")
    regions = region_quality(val, args)
    log(f"region proposals: {regions}")
    results, keep = run_rows(test, args, log)
    diag = diagnostics(test, keep)
    oracle = oracle_fusion(test, keep)
    log(f"oracle-region fusion: {oracle}")
    fidelity = distillation_fidelity(test, keep, args)
    log(f"scheme-1 distillation: {fidelity}")
    tuned = tune_threshold(args)
    log(f"default score_threshold: {tuned}")
    from csl_ros.shipped import read_manifest

    manifest = {}
    try:
        m = read_manifest().get("models", {})
        manifest = {k: v["sha256"] for k, v in sorted(m.items())}
    except (FileNotFoundError, ValueError):
        pass
    write_markdown(args.out, args, results, regions, seg, diag, len(test), time.time() - t0, manifest, oracle,
                   fidelity, tuned)
    if args.driving_drives:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from driving import driving_section

        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write("\n" + driving_section(args.driving_drives, args.driving_frames, log) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": {"/".join(k): v for k, v in results.items()},
                                               "regions": regions, "segmenter_miou": seg[0], "oracle": oracle,
                                               "distillation": fidelity, "tuned_threshold": tuned,
                                               "diagnostics": {"/".join(k): v for k, v in diag.items()}},
                                              indent=1) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
