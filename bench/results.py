"""The issue-4 results table: CSL vs its teachers on a held-out synthroad obstacle-track test set.

    python bench/results.py --out docs/results.md            # shipped models (models/manifest.json)
    python bench/results.py --frames 40 --out /tmp/r.md      # quick look

Test set: synthroad ``obstacles="obstacle"`` frames with seeds from 10,000,000 (never used in training:
the shipped models were trained on seeds 0..999, validated on 1,000,000+), rendered at the models'
training resolution. Labels are the obstacle-track encoding (0 = drivable road, 1 = obstacle,
255 = void off the road). Pixel AUPR / FPR95 follow the SMIYC protocol (csl_ros.eval.metrics,
"official" binned curve).

Every scheme row runs :class:`csl_ros.pipeline.Detector` as a user would (letterbox, Eq. 2 at
stride 4 unless the row says otherwise, Eq. 3 at the input size):
  * teacher alone (scheme "teacher_only") for msp, maxlogit, sml, entropy, energy;
  * teacher + CSL scheme 2 with soft assignment (the class-agnostic student, component split);
  * SML + CSL, soft assignment at the full input resolution (``assignment_resolution: full``);
  * SML + CSL with hard assignment as Mask2Former does it (thresholds, no component split, spec 4.5),
    and the same with the component split as its own row;
  * CSL scheme 1 (the distilled student alone).
Also: the segmenter's mIoU on synthroad validation frames (seeds 1,000,000+), the student's region
proposal quality (paper Table 7 protocol: each region takes its majority ground-truth trainId, then
mIoU), and diagnostics of the fusion on obstacle pixels.

``--notes FILE`` appends a hand-written analysis under a heading that says so. Its numbers are
``{name}`` placeholders that this script fills from the run (``--list-values`` prints every name and
value); an unknown name is an error, so the analysis never cites a number this run did not produce.
``--scheme1-only`` measures only the scheme-1 rows (e.g. to compare a candidate ``--student-scheme1``);
``--from-json FILE`` rewrites the page from the measurements a ``--json FILE`` run saved.
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

# Region assignment variants of the scheme-2 rows: DetectorConfig fields.
VARIANTS = {
    "soft": {"assignment": "soft"},                                      # the default: Eq. 2, stride 4, split
    "soft_full": {"assignment": "soft", "assignment_resolution": "full"},  # Eq. 2 at the input resolution
    "hard": {"assignment": "hard", "split_regions": False},                # Mask2Former's hard assignment
    "hard_split": {"assignment": "hard", "split_regions": True},           # ... + the component split
}
# The pixel-level rows measure CSL as published: Eq. 3's product (region exponent 1), whatever the
# shipped driving default; one more row runs that default's softened fusion m^g * D (DRIVING_FUSION).
PAPER_FUSION = {"fusion_region_exponent": 1.0}
DRIVING_FUSION = "soft_driving_fusion"
VARIANT_LABELS = {
    "soft": "soft assignment (Eq. 2, stride 4, component split)",
    "soft_full": "soft assignment at full input resolution (Eq. 2, `assignment_resolution: full`)",
    "hard": "hard assignment (Mask2Former: v > 0.8, r ≥ 0.5, no component split)",
    "hard_split": "hard assignment + component split (not Mask2Former)",
}


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


TUNED_ROW = ("2", "sml", "soft")   # the row whose best-F1 threshold tune_threshold reports
# rows whose per-frame maps are kept for the diagnostics table (label in the table)
DIAGNOSTIC_ROWS = {("teacher_only", "sml", "soft"): "SML alone", ("2", "sml", "soft"): "SML + CSL soft",
                   ("2", "sml", "soft_full"): "SML + CSL soft, full resolution",
                   ("2", "sml", "hard"): "SML + CSL hard (Mask2Former)",
                   ("2", "sml", "hard_split"): "SML + CSL hard + component split",
                   ("1", "none", "soft"): "CSL scheme 1"}


def detector(scheme, teacher, args, variant="soft"):
    """A Detector as ``Detector.from_config`` builds it (same config, same teacher construction),
    with the memoised student; ``variant`` names the region assignment (see VARIANTS)."""
    from csl_ros.config import DetectorConfig
    from csl_ros.pipeline import Detector
    from csl_ros.teachers.teacher import build_teacher

    fusion = {"fusion_region_exponent": DetectorConfig().fusion_region_exponent} if variant == DRIVING_FUSION \
        else PAPER_FUSION
    cfg = DetectorConfig(scheme=scheme, teacher=teacher if scheme != "1" else "none",
                         **VARIANTS["soft" if variant == DRIVING_FUSION else variant], **fusion,
                         teacher_path=str(args.segmenter or ""),
                         teacher_stats_path=str(args.stats or ""), input_height=args.height,
                         input_width=args.width, test_scale=args.test_scale, device="cpu", backend="eager")
    student = student_for(scheme, args) if scheme in ("1", "2") else None
    t = None
    if scheme in ("2", "teacher_only"):
        t = build_teacher(teacher, segmenter_path=cfg.teacher_path, stats_path=cfg.teacher_stats_path,
                          device="cpu")
    return Detector(cfg, student=student, teacher=t)


def table_rows(scheme1_only=False):
    """(scheme, teacher, variant) of every row; scheme 1 only: its row and the SML teacher it copies."""
    if scheme1_only:
        return [("teacher_only", "sml", "soft"), ("1", "none", "soft")]
    return [("teacher_only", t, "soft") for t in TEACHERS] + [("2", t, "soft") for t in TEACHERS] + \
        [("2", "sml", v) for v in VARIANTS if v != "soft"] + driving_fusion_rows() + [("1", "none", "soft")]


def driving_fusion_rows():
    """The driving default's fusion as its own row, when it is not Eq. 3 (else the soft row is it)."""
    from csl_ros.config import DetectorConfig

    return [("2", "sml", DRIVING_FUSION)] if DetectorConfig().fusion_region_exponent != 1.0 else []


def detections(det, frames, batch):
    """(frame, Detection) of every frame, ``batch`` frames per detect_batch call."""
    for start in range(0, len(frames), batch):
        chunk = frames[start:start + batch]
        yield from zip(chunk, det.detect_batch([f.image for f in chunk]))


def run_rows(frames, args, log, keep_open=None):
    """Pixel metrics of every row; also keeps per-frame maps of a few rows for the diagnostics.
    The detector of row ``keep_open`` (scheme, teacher, variant) is returned open, not closed, so that a
    later step (tune_threshold) reuses it instead of building the same detector again; else None."""
    from csl_ros.eval.metrics import PixelAccumulator

    rows = table_rows(args.scheme1_only)
    kept = set(DIAGNOSTIC_ROWS)
    results, keep, kept_open = {}, {}, None
    for scheme, teacher, variant in rows:
        det = detector(scheme, teacher, args, variant)
        acc = PixelAccumulator("official")
        t0 = time.time()
        maps = []
        for f, d in detections(det, frames, args.batch):
            acc.update(d.anomaly_map, f.ood_labels, f"{f.seed}")
            if (scheme, teacher, variant) in kept:
                maps.append((d.anomaly_map.astype(np.float16), d.regions))
        r = acc.result(with_curve=False)
        key = (scheme, teacher, variant)
        results[key] = {"ap": r.ap, "fpr95": r.fpr95, "auroc": r.auroc, "s": time.time() - t0,
                        "fusion_region_exponent": det.config.fusion_region_exponent}
        if maps:
            keep[key] = maps
        log(f"{scheme:>12} {teacher:>8} {variant}: AP {100 * r.ap:.2f} FPR95 {100 * r.fpr95:.2f} "
            f"({time.time() - t0:.0f} s)")
        if key == keep_open:
            kept_open = det
        else:
            det.close()
    return results, keep, kept_open


def region_quality(frames, args):
    """Table 7 protocol on ID validation frames: every region (each variant of VARIANTS; hard:
    unassigned pixels predict nothing) takes its majority GT trainId; mIoU over the 19 classes,
    confusion accumulated over all frames. Also the number of regions per frame."""
    out = {}
    for variant in VARIANTS:
        det = detector("2", "msp", args, variant)  # the teacher does not affect the regions
        conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        misses = np.zeros(NUM_CLASSES, np.int64)
        n_regions = []
        for f, d in detections(det, frames, args.batch):
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
        out[variant] = {"miou": float(np.nanmean(iou[present])),
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


def distillation_fidelity(frames, args):
    """Scheme 1 without the fusion: how well the distilled head D-hat reproduces its SML teacher on the
    test frames (Pearson correlation and means over all pixels, and separately over road and obstacle
    pixels; mean absolute difference; the fraction of pixels whose residual |D-hat - D| exceeds the
    Huber delta of the training config, where the loss is linear) and how it ranks obstacle pixels
    by itself (AUPR / FPR95 of D-hat alone). All pixels on a 2-pixel grid."""
    from csl_ros.training.config import StudentConfig
    import torch.nn.functional as F

    from csl_ros.eval.metrics import PixelAccumulator
    from csl_ros.shipped import resolve_shipped
    from csl_ros.teachers.teacher import build_teacher

    student = student_for("1", args).inner
    # the teacher it was distilled from: the closed-set stage of the shipped segmenter (the shipped
    # teacher is that model after outlier exposure, models/teacher_segmenter.md)
    distilled_from = build_teacher("sml", segmenter_path=args.distill_teacher or resolve_shipped(
        "teacher_segmenter_closed_set"), device="cpu")
    acc = PixelAccumulator("official")
    xs, ys, labs = [], [], []
    with torch.inference_mode():
        for start in range(0, len(frames), args.batch):
            chunk = frames[start:start + args.batch]
            x = torch.from_numpy(np.stack([f.image for f in chunk])).permute(0, 3, 1, 2)
            teacher = distilled_from(x).score_map[:, 0].float().numpy()
            dhat = F.interpolate(student(x.float()).distribution[:, :1], scale_factor=4, mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
            for f, d, t in zip(chunk, dhat, teacher):
                acc.update(d, f.ood_labels, f"{f.seed}")
                xs.append(d[::2, ::2].ravel())
                ys.append(t[::2, ::2].ravel())
                labs.append(f.ood_labels[::2, ::2].ravel())
    r = acc.result(with_curve=False)
    x, y, lab = np.concatenate(xs), np.concatenate(ys), np.concatenate(labs)
    delta = StudentConfig().huber_delta
    out = {"ap": r.ap, "fpr95": r.fpr95, "pearson": float(np.corrcoef(x, y)[0, 1]),
           "mean_abs_diff": float(np.abs(x - y).mean()), "mean_dhat": float(x.mean()),
           "mean_teacher": float(y.mean()), "huber_delta": delta,
           "beyond_delta": float((np.abs(x - y) > delta).mean())}
    for name, sel in (("road", lab == 0), ("obstacle", lab == 1)):
        out[f"pearson_{name}"] = float(np.corrcoef(x[sel], y[sel])[0, 1])
        out[f"mean_dhat_{name}"], out[f"mean_teacher_{name}"] = float(x[sel].mean()), float(y[sel].mean())
    return out


def obstacle_sizes(frames):
    """Area in pixels of every ground-truth obstacle instance of the test frames: median and quartiles."""
    areas = []
    for f in frames:
        ids = f.instance_ids[f.ood_labels == 1].astype(np.int64)
        counts = np.bincount(ids)
        areas += counts[counts > 0].tolist()
    a = np.asarray(areas, np.float64)
    return {"count": len(a), "median_px": float(np.median(a)), "q25_px": float(np.quantile(a, 0.25)),
            "q75_px": float(np.quantile(a, 0.75))}


def tune_threshold(args, det=None):
    """The default configuration's (scheme 2, SML, soft: TUNED_ROW) best pixel-F1 threshold on obstacle
    frames that are neither training nor test frames (the shipped default score_threshold is tuned for the
    driving goal by bench/driving.py --tune instead). ``det``: that row's detector when the caller has it
    open (run_rows' keep_open); it is closed here."""
    from csl_ros.eval.metrics import PixelAccumulator

    frames = render(range(TUNE_SEED, TUNE_SEED + args.tune_frames), (args.height, args.width), "obstacle")
    det = det if det is not None else detector(*TUNED_ROW, args)
    acc = PixelAccumulator("official")
    for f, d in detections(det, frames, args.batch):
        acc.update(d.anomaly_map, f.ood_labels, f"{f.seed}")
    det.close()
    r = acc.result(with_curve=False)
    return {"frames": len(frames), "best_f1": r.best_f1, "threshold": r.best_f1_point_threshold}


def fmt(v, scale=100.0):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.2f}"


NAMES = {"msp": "MSP (1 − max softmax)", "maxlogit": "Max logit", "sml": "SML", "entropy": "Entropy",
         "energy": "Energy"}


def class_names():
    from csl_ros.data.synthroad.labels import TRAIN_ID_NAMES

    return TRAIN_ID_NAMES


def row_name(key):
    """'teacher_only/sml/soft' -> alone_sml, '2/sml/hard' -> csl_sml_hard, '1/none/soft' -> scheme1."""
    scheme, teacher, variant = key.split("/")
    return {"teacher_only": f"alone_{teacher}", "2": f"csl_{teacher}_{variant}", "1": "scheme1"}[scheme]


def note_values(m):
    """Every number the hand-written analysis may cite, by name, formatted as in the tables
    (``--list-values`` prints them). ``m`` is the measurement dict that ``--json`` writes."""
    rows, v = m["rows"], {}
    for key, r in rows.items():
        name = row_name(key)
        v[f"{name}_ap"], v[f"{name}_fpr95"] = fmt(r["ap"]), fmt(r["fpr95"])
    for t in TEACHERS:
        if f"2/{t}/soft" in rows:
            gain = rows[f"2/{t}/soft"]["ap"] - rows[f"teacher_only/{t}/soft"]["ap"]
            v[f"gain_{t}_ap"] = f"{100 * gain:+.2f}"
            v[f"gain_{t}_rel"] = f"{100 * gain / rows[f'teacher_only/{t}/soft']['ap']:.0f}"
            v[f"gain_{t}_fpr95"] = f"{100 * (rows[f'2/{t}/soft']['fpr95'] - rows[f'teacher_only/{t}/soft']['fpr95']):+.2f}"
    if "2/sml/hard" in rows:
        for other in ("hard", "hard_split", "soft_full"):
            v[f"soft_minus_{other}_ap"] = f"{100 * (rows['2/sml/soft']['ap'] - rows[f'2/sml/{other}']['ap']):+.2f}"
    for variant, r in m.get("regions", {}).items():
        v[f"regions_{variant}_miou"] = fmt(r["miou"])
        v[f"regions_{variant}_per_frame"] = f"{r['regions_per_frame']:.1f}"
        v[f"regions_{variant}_assigned"] = f"{100 * r['assigned_fraction']:.1f}"
        v[f"regions_{variant}_unassigned"] = f"{100 * (1 - r['assigned_fraction']):.1f}"
    if "segmenter_miou" in m:
        v["segmenter_miou"] = fmt(m["segmenter_miou"])
        for c, iou in zip(class_names(), m["segmenter_iou"]):
            v[f"segmenter_iou_{c.replace(' ', '_')}"] = fmt(iou, 100.0)
    for key, d in m.get("diagnostics", {}).items():
        name = row_name(key)
        for k, x in d.items():
            v[f"diag_{name}_{k}"] = "n/a" if x is None else (f"{100 * x:.1f}" if k.endswith("purity") else f"{x:.3f}")
    if "oracle" in m:
        v["oracle_ap"], v["oracle_fpr95"] = fmt(m["oracle"]["ap"]), fmt(m["oracle"]["fpr95"])
    for k, x in m.get("distillation", {}).items():
        v[f"distill_{k}"] = fmt(x) if k in ("ap", "fpr95", "beyond_delta") else f"{x:g}" if k == "huber_delta" \
            else f"{x:.3f}"
    for k, x in m.get("obstacle_sizes", {}).items():
        v[f"obstacle_{k}"] = f"{x:.0f}"
    if "obstacle_sizes" in m:
        v["obstacle_median_cells"] = f"{m['obstacle_sizes']['median_px'] / 16:.1f}"  # stride-4 cells: 4 x 4 px
    if "tuned_threshold" in m:
        v["tuned_threshold"] = f"{m['tuned_threshold']['threshold']:.4g}"
    return v


NOTES_HEADING = "## What the numbers say (hand-written analysis)"


class NotesError(ValueError):
    """The notes cite a value the run does not produce."""


def render_notes(text, values):
    """The analysis with its ``{name}`` placeholders filled; an unknown name is a NotesError."""
    class Strict(dict):
        def __missing__(self, key):
            raise NotesError(f"the notes cite {{{key}}}, which this run does not produce (see --list-values)")

    return text.format_map(Strict(values))


def scale_text(test_scale: float) -> str:
    """How the pixel-level rows were run, for the header of docs/results.md."""
    if test_scale == 1.0:
        return ("single scale (test_scale 1, the paper's protocol; the driving section runs the shipped default "
                "detector settings)")
    return f"test_scale {test_scale:g}"


def write_markdown(path, args, m):
    """docs/results.md from the measurements ``m`` (what ``--json`` writes; ``m["run"]`` says how they
    were taken) and the notes file of ``args``."""
    results = {tuple(k.split("/")): r for k, r in m["rows"].items()}
    regions, diag, oracle, fidelity, tuned = m["regions"], m["diagnostics"], m["oracle"], m["distillation"], \
        m["tuned_threshold"]
    run = m["run"]
    n_test, manifest = run["frames"], run["manifest"]
    height, width = run["height"], run["width"]
    rerendered = f" (text re-rendered from `--json` by `--from-json {args.from_json}`)" if args.from_json else ""
    lines = ["# Results: CSL on synthroad (issue 4)", "",
             f"Produced by `python bench/results.py --out {args.out}` in {run['wall_s'] / 60:.1f} min on "
             f"{run['machine']} (CPU, torch {run['torch']}){rerendered}.", "",
             f"* Test set: {n_test} synthroad obstacle-track frames, seeds {TEST_SEED}..{TEST_SEED + n_test - 1} "
             f"(never used in training), {height}×{width}; labels 0 road / 1 obstacle / 255 void. "
             f"{m['obstacle_sizes']['count']} obstacle instances, median area {m['obstacle_sizes']['median_px']:.0f} px "
             f"(quartiles {m['obstacle_sizes']['q25_px']:.0f}–{m['obstacle_sizes']['q75_px']:.0f}).",
             "* Metrics: pixel AUPR and FPR95 (%), SMIYC official binned protocol (`csl_ros.eval.metrics`).",
             "* Every row is `csl_ros.pipeline.Detector` with the shipped models "
             f"({', '.join(f'{k} {v[:12]}…' for k, v in manifest.items())}), input "
             f"{height}×{width}, {scale_text(run.get('test_scale', 1.0))}, eager CPU; the fusion is the "
             "paper's Eq. 3 (`fusion_region_exponent` 1)"
             + (" except in the row that names another." if ("2", "sml", DRIVING_FUSION) in results else "."), "",
             "## Obstacle track (pixel level)", "",
             "| teacher | teacher alone AUPR ↑ | FPR95 ↓ | + CSL scheme 2 (soft) AUPR ↑ | FPR95 ↓ | Δ AUPR |",
             "|---|---|---|---|---|---|"]
    for t in TEACHERS:
        a, b = results[("teacher_only", t, "soft")], results[("2", t, "soft")]
        lines.append(f"| {NAMES.get(t, t)} | {fmt(a['ap'])} | {fmt(a['fpr95'])} | {fmt(b['ap'])} | {fmt(b['fpr95'])} | "
                     f"{100 * (b['ap'] - a['ap']):+.2f} |")
    sml, s1 = results[("teacher_only", "sml", "soft")], results[("1", "none", "soft")]
    lines += ["", "| method | AUPR ↑ | FPR95 ↓ |", "|---|---|---|",
              f"| SML alone | {fmt(sml['ap'])} | {fmt(sml['fpr95'])} |"]
    for variant in VARIANTS:
        r = results[("2", "sml", variant)]
        lines.append(f"| SML + CSL, {VARIANT_LABELS[variant]} | {fmt(r['ap'])} | {fmt(r['fpr95'])} |")
    if ("2", "sml", DRIVING_FUSION) in results:
        r = results[("2", "sml", DRIVING_FUSION)]
        g = r.get("fusion_region_exponent", float("nan"))
        lines.append(f"| SML + CSL, soft assignment, fusion m^{g:g}·D (`fusion_region_exponent` {g:g}, the "
                     f"driving default; ours, not the paper's Eq. 3) | {fmt(r['ap'])} | {fmt(r['fpr95'])} |")
    lines += [f"| CSL scheme 1 (distilled from SML, no teacher at run time) | {fmt(s1['ap'])} | {fmt(s1['fpr95'])} |",
              f"| *diagnostic:* scheme-1 head D̂ alone (no fusion) | {fmt(fidelity['ap'])} | "
              f"{fmt(fidelity['fpr95'])} |",
              f"| *diagnostic:* SML + ground-truth regions (Eq. 3 with perfect proposals) | {fmt(oracle['ap'])} | "
              f"{fmt(oracle['fpr95'])} |",
              "", f"Scheme-1 distillation on the test frames (every 2nd pixel): Pearson correlation of D̂ with the "
              f"SML map of the teacher it was distilled from (`teacher_segmenter_closed_set`) "
              f"{fidelity['pearson']:.3f} over all pixels, {fidelity['pearson_road']:.3f} on road, "
              f"{fidelity['pearson_obstacle']:.3f} on obstacles; mean D̂ / mean D {fidelity['mean_dhat']:.3f} / "
              f"{fidelity['mean_teacher']:.3f} over all pixels, {fidelity['mean_dhat_road']:.3f} / "
              f"{fidelity['mean_teacher_road']:.3f} on road, {fidelity['mean_dhat_obstacle']:.3f} / "
              f"{fidelity['mean_teacher_obstacle']:.3f} on obstacles; mean |D̂ − D| {fidelity['mean_abs_diff']:.4f}; "
              f"{fmt(fidelity['beyond_delta'])} % of pixels have |D̂ − D| above the training Huber δ = "
              f"{fidelity['huber_delta']:g} (the loss is linear there).",
              "", f"Pixel-level threshold: the best pixel-F1 threshold of SML + CSL "
              f"scheme 2 on {tuned['frames']} separate obstacle frames (seeds {TUNE_SEED}+) is "
              f"**{tuned['threshold']:.4g}** (F1 {fmt(tuned['best_f1'])}). The shipped default `score_threshold` "
              f"({run['default_threshold']:g}, in the schema and the shipped student's metadata) is tuned for "
              f"the driving goal instead (driving section below).",
              "", "## Closed-set segmenter and region proposals", "",
              f"* Segmenter (teacher base) mIoU on {run['val_frames']} synthroad validation frames (seeds "
              f"{VAL_SEED}+, no obstacles, {height}×{width}): **{fmt(m['segmenter_miou'])}**. Per class: "
              + ", ".join(f"{c} {fmt(i, 100.0) if not math.isnan(i) else 'absent'}"
                          for c, i in zip(class_names(), m["segmenter_iou"])) + ".",
              "* Student region proposals, paper Table 7 protocol (majority GT trainId per region → mIoU, "
              "same validation frames):"]
    for variant, r in regions.items():
        lines.append(f"  * {VARIANT_LABELS[variant]}: **{fmt(r['miou'])}** mIoU, {r['regions_per_frame']:.1f} regions "
                     f"per frame, {100 * r['assigned_fraction']:.1f} % of labelled pixels assigned;")
    lines += ["", "## Diagnostics of the fusion on obstacle pixels", "",
              "| row | mean score on obstacles | median on obstacles | mean on road | road 99th pct | "
              "obstacle pixels in obstacle-majority regions |", "|---|---|---|---|---|---|"]
    for key, d in diag.items():
        purity = "—" if d["obstacle_region_purity"] is None else f"{100 * d['obstacle_region_purity']:.1f} %"
        lines.append(f"| {DIAGNOSTIC_ROWS[tuple(key.split('/'))]} | {d['mean_obstacle']:.3f} | "
                     f"{d['obstacle_median']:.3f} | {d['mean_road']:.3f} | {d['road_p99']:.3f} | {purity} |")
    lines += ["", "Timings per row (s, all frames): " +
              ", ".join(f"{k} {v['s']:.0f}" for k, v in m["rows"].items()), ""]
    if m.get("driving_section"):
        lines += [m["driving_section"].rstrip(), ""]
    if args.notes:
        lines += [NOTES_HEADING, "", f"*Written by hand (`{args.notes}`) about this run; every number in it is "
                  "filled in by `bench/results.py` from this run's measurements, the sentences around them are "
                  "not re-checked by the script.*", "",
                  render_notes(Path(args.notes).read_text(), note_values(m)).rstrip(), ""]
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
    p.add_argument("--test-scale", type=float, default=1.0,
                   help="test_scale of the pixel-level rows (default 1: single scale, the paper's protocol; the "
                        "driving section always runs the shipped default)")
    p.add_argument("--batch", type=int, default=8, help="number of frames per forward pass (default 8)")
    p.add_argument("--threads", type=int, default=2, help="number of torch CPU threads (default 2)")
    p.add_argument("--student-ca", default="", help="class-agnostic student checkpoint (default: the shipped student_ca)")
    p.add_argument("--student-scheme1", default="", help="scheme-1 student checkpoint (default: the shipped student_scheme1)")
    p.add_argument("--segmenter", default="", help="closed-set segmenter checkpoint (default: the shipped teacher_segmenter)")
    p.add_argument("--distill-teacher", default="", help="segmenter the scheme-1 student was distilled from "
                   "(SML), for the distillation fidelity (default: the shipped teacher_segmenter_closed_set)")
    p.add_argument("--stats", default="", help="its SML statistics JSON (default: the shipped teacher_segmenter_stats)")
    p.add_argument("--notes", default="docs/results_notes.md",
                   help="hand-written analysis appended under a 'hand-written' heading, its {name} "
                        "placeholders filled from this run ('' = none)")
    p.add_argument("--list-values", action="store_true",
                   help="print every {name} the notes may cite with its value from this run")
    p.add_argument("--scheme1-only", action="store_true",
                   help="measure the scheme-1 rows only (no markdown; with --json for the numbers)")
    p.add_argument("--from-json", default="",
                   help="measure nothing: write --out from the measurements a --json run saved (after editing "
                        "the notes)")
    p.add_argument("--driving-drives", type=int, default=driving_drives_default(),
                   help="held-out synthroad drives of the driving table (bench/driving.py); 0 skips it")
    p.add_argument("--driving-frames", type=int, default=30, help="frames per driving drive")
    p.add_argument("--driving-cache", default="", metavar="DIR",
                   help="keep the driving drives' fused maps here (bench/driving.py --cache; keyed by the "
                        "models and the settings that change them)")
    args = p.parse_args(argv)
    if args.notes and not Path(args.notes).is_file():
        p.error(f"--notes {args.notes}: no such file")
    if args.from_json:
        try:
            m = json.loads(Path(args.from_json).read_text())
            m["run"]
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--from-json {args.from_json}: not the --json output of a full run ({e})")
        return write_results(args, m)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f} s] {msg}", flush=True)

    size = (args.height, args.width)
    test = render(range(TEST_SEED, TEST_SEED + args.frames), size, "obstacle")
    if args.scheme1_only:
        log(f"rendered {len(test)} test frames")
        results, keep, _ = run_rows(test, args, log)
        fidelity = distillation_fidelity(test, args)
        log(f"scheme-1 distillation: {fidelity}")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": {"/".join(k): v for k, v in results.items()},
                                                   "distillation": fidelity}, indent=1) + "\n")
        return 0
    val = render(range(VAL_SEED, VAL_SEED + args.val_frames), size, "none")
    log(f"rendered {len(test)} test and {len(val)} validation frames")
    seg = segmenter_miou(val, args)
    log(f"segmenter mIoU {100 * seg[0]:.2f}")
    regions = region_quality(val, args)
    log(f"region proposals: {regions}")
    results, keep, tuned_det = run_rows(test, args, log, keep_open=TUNED_ROW)
    diag = diagnostics(test, keep)
    oracle = oracle_fusion(test, keep)
    log(f"oracle-region fusion: {oracle}")
    fidelity = distillation_fidelity(test, args)
    log(f"scheme-1 distillation: {fidelity}")
    tuned = tune_threshold(args, tuned_det)
    log(f"default score_threshold: {tuned}")
    from csl_ros.config import DetectorConfig
    from csl_ros.shipped import read_manifest

    manifest = {}
    try:
        mf = read_manifest().get("models", {})
        manifest = {k: v["sha256"] for k, v in sorted(mf.items())}
    except (FileNotFoundError, ValueError):
        pass
    m = {"rows": {"/".join(k): v for k, v in results.items()}, "regions": regions, "segmenter_miou": seg[0],
         "segmenter_iou": seg[1], "oracle": oracle, "distillation": fidelity, "tuned_threshold": tuned,
         "obstacle_sizes": obstacle_sizes(test), "diagnostics": {"/".join(k): v for k, v in diag.items()},
         "driving_section": driving_markdown(args, log),
         "run": {"frames": args.frames, "val_frames": args.val_frames, "height": args.height, "width": args.width,
                 "wall_s": time.time() - t0, "manifest": manifest, "test_scale": args.test_scale,
                 "default_threshold": DetectorConfig().score_threshold, "torch": torch.__version__,
                 "machine": platform.processor() or platform.machine()}}
    if args.json:  # first, so that a notes error can be fixed and re-rendered with --from-json
        Path(args.json).write_text(json.dumps(m, indent=1) + "\n")
    rc = write_results(args, m)
    if rc == 0:
        log(f"wrote {args.out}")
    return rc


def _driving():
    """The bench/driving.py module (beside this file)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    import driving

    return driving


def driving_drives_default() -> int:
    """bench/driving.py's number of held-out drives."""
    return _driving().HELD_OUT_DRIVES


def driving_markdown(args, log) -> str:
    """The driving table of bench/driving.py (held-out drives) and the breakdown of its misses within 30 m
    (bench/driving_diagnosis.py, from the same fused maps), or '' with --driving-drives 0."""
    if not args.driving_drives:
        return ""
    import tempfile

    driving = _driving()
    import driving_diagnosis   # beside this file, on the path _driving() set

    with tempfile.TemporaryDirectory(prefix="csl_driving_") as tmp:   # the diagnosis reuses the maps
        cache = Path(args.driving_cache) if args.driving_cache else Path(tmp)
        section = driving.driving_section(args.driving_drives, args.driving_frames, log, cache=cache)
        seeds = [driving.DRIVE_SEED + i for i in range(args.driving_drives)]
        diag = driving_diagnosis.diagnose(seeds, args.driving_frames, cache)
    return section + "\n" + driving_diagnosis.breakdown_markdown(
        diag, f"python bench/driving_diagnosis.py --drives {args.driving_drives} --frames {args.driving_frames}")


def write_results(args, m) -> int:
    if args.list_values:
        for k, v in note_values(m).items():
            print(f"{{{k}}} = {v}")
    try:
        write_markdown(args.out, args, m)
    except NotesError as e:
        print(f"error: {args.notes}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
