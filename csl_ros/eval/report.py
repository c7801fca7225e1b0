"""The evaluation report: figures (matplotlib, Agg), worst-frame pictures, ``report.md`` and
``report.html`` (the same content; the HTML links the PNGs under ``figures/``), ``per_frame.csv``.

The report is built as a list of blocks (headings, paragraphs, tables, images) rendered twice, so the
Markdown and HTML versions never disagree.
"""
from __future__ import annotations

import csv
import dataclasses
import html
import math
import re
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from csl_ros.config import DetectorConfig, regions_description, second_pass_description, teacher_description
from csl_ros.eval.driving import add_report_section, plot_bands
from csl_ros.eval.figures import legend_below as _legend_below, new_figure as _figure, save_figure as _save
from csl_ros.pipeline.instances import describe_instances
from csl_ros.visualize import (SCORE_BAR_TITLE, colorize_scores, colour_bar_strip, draw_overlay, legend_strip,
                               strip_height)

FIGURES = "figures"
PANEL_TITLES = ("image", "anomaly score", "ground truth", "detector instances (red), GT outline (green)")
WORST_PANEL_WIDTH = 512         # px per panel of a worst-frame picture (2x2 panels)
MAX_LABELLED_OBSTACLES = 12     # more labels than this hide the picture: outlines only
# The thresholds of the pixel metrics, each named the same everywhere in the report.
REPORTED_F1_THRESHOLD = "benchmark-reported best-F1 threshold"
POINT_F1_THRESHOLD = "best-F1 point's own threshold"     # shown only where it differs from the reported one
COMPONENT_THRESHOLD = "component threshold"


# --------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------

def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    bar_h = max(18, panel.shape[0] // 14)
    bar = np.full((bar_h, panel.shape[1], 3), 32, np.uint8)
    scale = bar_h / 30.0
    cv2.putText(bar, title, (6, int(bar_h * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return np.vstack([bar, panel])


def ground_truth_panel(image_rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image (BGR) with void greyed out, anomaly pixels tinted red and outlined."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR).astype(np.float32)
    void = labels == 255
    pos = labels == 1
    bgr[void] = bgr[void] * 0.35 + 128 * 0.65
    bgr[pos] = bgr[pos] * 0.5 + np.array([0, 0, 255], np.float32) * 0.5
    out = bgr.astype(np.uint8)
    contours, _ = cv2.findContours(pos.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 0, 255), max(1, labels.shape[0] // 300))
    return out


def frame_panels(image_rgb: np.ndarray, anomaly: np.ndarray, instances: np.ndarray, labels: np.ndarray,
                 max_width: int = 640) -> np.ndarray:
    """2x2 BGR picture of one frame: image | anomaly colour map / ground truth | instances, each panel
    with its legend in a strip below it (the score panels: the colour bar), never over the picture."""
    image = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    heat = colorize_scores(anomaly)
    gt = ground_truth_panel(image_rgb, labels)
    h, w = labels.shape
    obstacles = describe_instances(instances, anomaly, None)
    if len(obstacles) > MAX_LABELLED_OBSTACLES or w < 400:
        obstacles = []
    over = draw_overlay(image_rgb, anomaly, instances, obstacles, colour_bar=False, legend=False)
    contours, _ = cv2.findContours((labels == 1).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(over, contours, -1, (0, 255, 0), max(1, labels.shape[0] // 300))
    # panels between 384 px (small frames are enlarged, pixel-exact) and max_width wide
    s = min(max_width, max(384, w)) / w
    size = (max(2, int(round(w * s)) // 2 * 2), max(2, int(round(h * s)) // 2 * 2))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST
    pw, sh = size[0], strip_height(size[0])
    strips = (legend_strip(pw, [(None, f"{h}x{w} px (HxW)")], sh),
              colour_bar_strip(pw, title=SCORE_BAR_TITLE, height=sh),
              legend_strip(pw, [((0, 0, 255), "anomaly"), ((128, 128, 128), "void"),
                                (None, "else: in-distribution")], sh),
              colour_bar_strip(pw, title=f"{SCORE_BAR_TITLE}, blended", height=sh))
    panels = [_titled(np.vstack([cv2.resize(p, size, interpolation=interp), strip]), t)
              for p, strip, t in zip((image, heat, gt, over), strips, PANEL_TITLES)]
    top = np.hstack(panels[:2])
    bottom = np.hstack(panels[2:])
    return np.vstack([top, bottom])


def worst_frames(per_frame: Sequence[dict], n: int) -> list[dict]:
    """The ``n`` frames with the lowest pixel F1 at the detector's threshold (ties: lowest AP).

    Frames with neither anomaly pixels nor false positives at the threshold have no F1 and are
    never among the worst.
    """
    ranked = [r for r in per_frame if r.get("f1_at_threshold") is not None]
    ranked.sort(key=lambda r: (r["f1_at_threshold"], r["ap"] if r.get("ap") is not None else 1.0,
                               r["index"]))
    return ranked[: max(0, n)]


def plot_pr(curve: dict, pixel: dict, path: Path) -> Path | None:
    rec, prec = curve.get("recall"), curve.get("precision")
    if not rec:
        return None
    fig = _figure()
    ax = fig.add_subplot(111)
    ax.plot(rec, prec, color="tab:blue", lw=1.6, drawstyle="steps-post")
    ap = pixel.get("ap")
    ax.set_title(f"pixel PR curve, AP {100 * ap:.2f}" if ap is not None else "pixel PR curve")
    f1, thr = pixel.get("best_f1"), pixel.get("best_f1_point_threshold")
    if f1 is not None and thr is not None and curve.get("threshold"):
        ts = np.array([np.nan if t is None else t for t in curve["threshold"]], np.float64)
        i = int(np.nanargmin(np.abs(ts - thr))) if np.isfinite(ts).any() else None
        if i is not None:
            name = list(f1_thresholds(pixel))[-1]    # the point's own threshold, named as in the table
            ax.plot([rec[i]], [prec[i]], "o", color="tab:red",
                    label=f"best F1 {100 * f1:.1f} at the {name}: score >= {thr:.4g}")
            _legend_below(ax)
    return _save_unit_square(fig, ax, "recall", "precision", path)


def f1_thresholds(pixel: dict) -> dict[str, float | None]:
    """The best-F1 thresholds to show, by name: the benchmark-reported one, and the point's own threshold
    only where a protocol reports another value than the one attaining the best F1."""
    out = {REPORTED_F1_THRESHOLD: pixel.get("best_f1_threshold")}
    point = pixel.get("best_f1_point_threshold")
    if point is not None and point != out[REPORTED_F1_THRESHOLD]:
        out[POINT_F1_THRESHOLD] = point
    return out


def _save_unit_square(fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
    """Label and bound a curve plot whose axes are both rates in [0, 1], then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_roc(curve: dict, pixel: dict, path: Path) -> Path | None:
    fpr, tpr = curve.get("fpr"), curve.get("tpr")
    if not fpr or all(v is None for v in fpr):
        return None
    pts = [(f, t) for f, t in zip(fpr, tpr) if f is not None and t is not None]
    fig = _figure()
    ax = fig.add_subplot(111)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", lw=1.6)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    auroc, fpr95 = pixel.get("auroc"), pixel.get("fpr95")
    ax.set_title(f"pixel ROC, AUROC {100 * auroc:.2f}" if auroc is not None else "pixel ROC")
    if fpr95 is not None:
        ax.axhline(0.95, color="tab:red", lw=0.8, ls=":")
        ax.plot([fpr95], [0.95], "o", color="tab:red", label=f"FPR95 {100 * fpr95:.2f} (FPR at TPR 0.95)")
        _legend_below(ax)
    return _save_unit_square(fig, ax, "false positive rate", "true positive rate", path)


def plot_histogram(hist: dict, thresholds: dict, path: Path) -> Path | None:
    edges = np.asarray(hist["bin_edges"])
    ind = np.asarray(hist["in_distribution"], np.float64)
    ano = np.asarray(hist["anomaly"], np.float64)
    if ind.sum() + ano.sum() == 0:
        return None
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(111)
    centres = 0.5 * (edges[:-1] + edges[1:])
    for counts, name, colour in ((ind, "in-distribution (label 0)", "tab:blue"),
                                 (ano, "anomaly (label 1)", "tab:red")):
        if counts.sum():
            ax.step(centres, counts / counts.sum(), where="mid", color=colour,
                    label=f"{name}, {int(counts.sum()):,} px")
    for (name, thr), (ls, colour) in zip(thresholds.items(), (("--", "black"), (":", "tab:green"),
                                                             ("-.", "tab:purple"))):
        if thr is not None and math.isfinite(thr):
            ax.axvline(thr, color=colour, lw=0.9, ls=ls, label=f"{name} {thr:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("fraction of the class's pixels")
    ax.set_title("score histogram")
    ax.set_xlim(0, 1)
    _legend_below(ax, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_per_frame(per_frame: Sequence[dict], path: Path) -> Path | None:
    if not per_frame:
        return None
    idx = [r["index"] for r in per_frame]

    def series(key):
        return [np.nan if r.get(key) is None else r[key] for r in per_frame]

    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot(111)
    ax.plot(idx, series("ap"), ".-", lw=1, label="AP (exact, this frame)")
    ax.plot(idx, series("f1_at_threshold"), ".-", lw=1, label="pixel F1 at score_threshold")
    if any(r.get("component_f1_mean") is not None for r in per_frame):
        ax.plot(idx, series("component_f1_mean"), ".-", lw=1, label="component mean F1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("frame")
    ax.set_title("per-frame metrics")
    _legend_below(ax, ncol=3)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_sweep(sweep: dict, path: Path) -> Path:
    values = sweep["values"]
    rows = sweep["rows"]
    has_comp = any("components" in r for r in rows)
    fig = _figure(9.0 if has_comp else 5.0, 3.4)
    ax = fig.add_subplot(1, 2 if has_comp else 1, 1)
    ax.plot(values, [r["gt_detected"] for r in rows], "o-", label="GT components detected")
    ax.plot(values, [r["false_instances"] for r in rows], "s-", label="false instances")
    ax.plot(values, [r["instances"] for r in rows], "^-", label="instances")
    ax.axhline(rows[0]["gt_components"], color="grey", ls=":", lw=0.8, label="GT components")
    ax.set_xlabel(sweep["parameter"])
    ax.set_title("detector instances")
    _legend_below(ax, ncol=2)
    ax.grid(alpha=0.3)
    if has_comp:
        ax2 = fig.add_subplot(1, 2, 2)

        def get(key, sub=None):
            return [np.nan if (r.get("components", {}) if sub else r).get(key) is None
                    else (r["components"] if sub else r)[key] for r in rows]
        ax2.plot(values, get("f1_mean", True), "o-", label="component mean F1")
        ax2.plot(values, get("siou_gt", True), "s-", label="sIoU gt")
        ax2.plot(values, get("ppv", True), "^-", label="PPV")
        ax2.plot(values, get("pixel_f1"), "d-", label="pixel F1")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_xlabel(sweep["parameter"])
        ax2.set_title("metrics at a fixed threshold")
        _legend_below(ax2, ncol=2)
        ax2.grid(alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# the document
# --------------------------------------------------------------------------------------------------

def _regions_line(cfg: dict) -> str:
    """The regions of the run named as the detector names them (older metrics: student regions)."""
    names = {f.name for f in dataclasses.fields(DetectorConfig)}
    try:
        return regions_description(DetectorConfig(**{k: v for k, v in cfg.items() if k in names}))
    except TypeError:
        return "regions ?"


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def num(v, fmt="{:.4g}") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return fmt.format(v) if isinstance(v, float) else str(v)


class Doc:
    """Blocks rendered to Markdown and HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: Sequence[str]):
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence]):
        self.blocks.append(("table", list(header), [[str(c) for c in r] for r in rows]))

    def img(self, rel: str, alt: str):
        self.blocks.append(("img", rel, alt))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                esc = [[c.replace("|", "\\|") for c in r] for r in b[2]]
                lines = ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
                lines += ["| " + " | ".join(r) + " |" for r in esc]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{e(c)}</th>" for c in b[1])
                rows = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in b[2])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b[0] == "img":
                body.append(f'<figure><a href="{e(b[1])}"><img src="{e(b[1])}" alt="{e(b[2])}"></a>'
                            f"<figcaption>{e(b[2])}</figcaption></figure>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
                 "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f0f0f0}"
                 "td.num{text-align:right}img{max-width:100%}"
                 "figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}code{background:#f4f4f4}")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


NUMBER_CELL = re.compile(r"^(?:[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?|n/a|nan|inf|\d+/\d+)$", re.I)


def _td(cell: str) -> str:
    """A table cell; numbers (and n/a) right-aligned, text left-aligned."""
    return f'<td class="num">{_inline(cell)}</td>' if NUMBER_CELL.match(cell.strip()) else f"<td>{_inline(cell)}</td>"


def _inline(text: str) -> str:
    """Markdown `code` and [text](link) spans to HTML (everything else escaped)."""
    out, pos = [], 0
    for m in re.finditer(r"`([^`]+)`|\[([^\]]+)\]\(([^)]+)\)", text):
        out.append(html.escape(text[pos:m.start()]))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(m.group(1))}</code>")
        else:
            out.append(f'<a href="{html.escape(m.group(3))}">{html.escape(m.group(2))}</a>')
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


PER_FRAME_COLUMNS = ("index", "frame_id", "n_pos", "ap", "fpr95", "auroc", "f1_at_threshold", "tp_px",
                     "fp_px", "fn_px", "n_gt", "n_pred", "siou_gt", "ppv", "component_f1_mean",
                     "instances", "false_instances", "gt_components", "gt_detected", "detector_ms",
                     "latency_ms", "stamp_ns")


def write_per_frame_csv(per_frame: Sequence[dict], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PER_FRAME_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in per_frame:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in PER_FRAME_COLUMNS})
    return path


def write_report(out: Path, metrics: dict, sink, worst_n: int = 6, max_table_rows: int = 200) -> dict:
    """Write figures, worst frames, ``per_frame.csv``, ``report.md`` and ``report.html`` into ``out``.

    ``metrics`` is the ``metrics.json`` dictionary; ``sink`` the :class:`ScoreSink` that made it (for
    the cached frames of the worst-frame pictures). Adds ``worst_frames`` to ``metrics`` and returns
    {name: path} of what was written.
    """
    out = Path(out)
    fig_dir = out / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    px = metrics["pixel"]
    cfg = metrics.get("config", {})
    curve = px.get("curve") or {}
    for name, fn in (("pr_curve", lambda p: plot_pr(curve, px, p)),
                     ("roc_curve", lambda p: plot_roc(curve, px, p)),
                     ("score_histogram", lambda p: plot_histogram(
                         metrics["score_histogram"],
                         {"detector score_threshold": cfg.get("score_threshold"), **f1_thresholds(px)}, p)),
                     ("per_frame", lambda p: plot_per_frame(metrics["per_frame"], p))):
        path = fn(fig_dir / f"{name}.png")
        if path is not None:
            written[name] = path
    if metrics.get("driving", {}).get("frames"):
        written["driving_bands"] = plot_bands(metrics["driving"], fig_dir / "driving_bands.png")
    for sw in metrics.get("sweeps", []):
        written[f"sweep_{sw['parameter']}"] = plot_sweep(sw, fig_dir / f"sweep_{sw['parameter']}.png")
    worst = []
    for rank, row in enumerate(worst_frames(metrics["per_frame"], worst_n), 1):
        fr = sink.load_frame(row["index"])
        pic = frame_panels(fr["image"], fr["scores"], fr["instances"], fr["labels"], max_width=WORST_PANEL_WIDTH)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in row["frame_id"])[:60]
        rel = f"{FIGURES}/worst_{rank:02d}_{safe}.png"
        cv2.imwrite(str(out / rel), pic, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        worst.append({"rank": rank, "frame_id": row["frame_id"], "index": row["index"],
                      "f1_at_threshold": row["f1_at_threshold"], "ap": row["ap"],
                      "tp_px": row["tp_px"], "fp_px": row["fp_px"], "fn_px": row["fn_px"], "picture": rel})
        written[f"worst_{rank:02d}"] = out / rel
    metrics["worst_frames"] = worst
    written["per_frame_csv"] = write_per_frame_csv(metrics["per_frame"], out / "per_frame.csv")

    doc = build_document(metrics, written, out, max_table_rows)
    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html("csl_ros evaluation report"))
    written["report_md"] = out / "report.md"
    written["report_html"] = out / "report.html"
    return written


def build_document(m: dict, written: dict, out: Path, max_table_rows: int = 200) -> Doc:
    px = m["pixel"]
    comp = m.get("components")
    cfg = m.get("config", {})
    counts = m.get("counts", {})
    run = m.get("run", {})
    doc = Doc()

    def rel(key):
        return str(Path(written[key]).relative_to(out)) if key in written else None

    doc.h(1, "csl_ros evaluation report")
    doc.ul([
        f"bag: `{run.get('bag', '?')}`",
        f"mode: {run.get('mode_description', run.get('mode', '?'))}",
        f"track: {m['track']} (component size filters: predicted >= {comp['segsize'] if comp else '?'} px, "
        f"ground truth >= {comp['instsize'] if comp else '?'} px); protocol: {m['protocol']} "
        f"({m.get('protocol_description', '')})",
        f"detector: scheme {cfg.get('scheme', '?')}, "
        f"{teacher_description(cfg.get('teacher', '?'), bool(cfg.get('teacher_flip')))}, "
        f"{_regions_line(cfg)}, network input "
        f"{cfg.get('input_height', '?')}x{cfg.get('input_width', '?')} (HxW)"
        f"{second_pass_description(cfg['input_height'], cfg['input_width'], cfg.get('test_scale') or 1.0) if 'input_height' in cfg else ''}"
        f", score_threshold "
        f"{cfg.get('score_threshold', '?')}, min_instance_area {cfg.get('min_instance_area', '?')}",
        f"backend {run.get('backend') or '?'} on {run.get('device') or '?'}",
        *([("shipped models: " + ", ".join(f"{k} `{v['file']}` (sha256 {str(v['sha256'])[:12]})"
                                           for k, v in run["shipped_models"]["models"].items()))]
          if run.get("shipped_models") else []),
        f"written {run.get('created', '')} by csl-ros {run.get('version', '')}; "
        f"all numbers in [metrics.json](metrics.json), per frame in [per_frame.csv](per_frame.csv)",
    ])
    doc.h(2, "Frames")
    meanings = m.get("count_meanings", {})
    doc.table(["count", "frames", "meaning"], [[k, v, meanings.get(k, "")] for k, v in counts.items()])
    doc.h(2, "Pixel metrics")
    thresholds = f1_thresholds(px)
    doc.table(["AP", "FPR95", "AUROC", "best F1", *thresholds, "AP (trapezoid, pre-2023)", "anomaly px",
               "in-distribution px"],
              [[pct(px["ap"]), pct(px["fpr95"]), pct(px["auroc"]), pct(px["best_f1"]),
                *(num(v) for v in thresholds.values()), pct(px["ap_trapezoid"]), f"{px['n_pos']:,}",
                f"{px['n_neg']:,}"]])
    point_note = (f" The benchmark's code reports it at another index than the best point's; the "
                  f"{POINT_F1_THRESHOLD} is the score at which the best F1 is actually attained, the point "
                  f"marked on the PR curve." if POINT_F1_THRESHOLD in thresholds else
                  " It is the point marked on the PR curve.")
    doc.p(f"AP rule: {px['ap_rule']}. Percentages. The {REPORTED_F1_THRESHOLD} is the score at which the "
          f"benchmark's code (protocol {m['protocol']}) reports the best F1, for `score >= "
          f"{num(px.get('best_f1_threshold'))}`.{point_note} The component metrics binarise at `score > "
          f"{num(px.get('component_threshold'))}` (the {COMPONENT_THRESHOLD}, the benchmark's rule). The "
          f"score histogram marks the best-F1 threshold and the detector's own `score_threshold` (the one "
          f"that makes its instances).")
    for key, caption in (("pr_curve", "pixel precision-recall curve"), ("roc_curve", "pixel ROC curve"),
                         ("score_histogram", "anomaly score of in-distribution vs anomaly pixels")):
        if key in written:
            doc.img(rel(key), caption)
    doc.h(2, "Component metrics")
    if comp is not None:
        doc.table([f"{COMPONENT_THRESHOLD} (score >)", "sIoU gt", "PPV", "mean F1", "F1 @ 0.25", "F1 @ 0.5", "F1 @ 0.75",
                   "GT components", "predicted components"],
                  [[num(comp["score_threshold"]), pct(comp["siou_gt"]), pct(comp["ppv"]), pct(comp["f1_mean"]),
                    pct(comp["f1_25"]), pct(comp["f1_50"]), pct(comp["f1_75"]), comp["n_gt_components"],
                    comp["n_pred_components"]]])
    else:
        doc.p("Not computed (see the notes).")
    inst = m.get("instances", {})
    doc.h(2, "Detector instances")
    doc.table(["instances", "false instances", "GT components", "detected", "instance recall",
               "instance precision", "fragmentation"],
              [[inst.get("instances"), inst.get("false_instances"), inst.get("gt_components"),
                inst.get("gt_detected"), pct(inst.get("instance_recall")), pct(inst.get("instance_precision")),
                num(inst.get("fragmentation"), "{:.2f}")]])
    doc.p(inst.get("description", "") + (". " + inst["note"] if inst.get("note") else ""))

    add_report_section(doc, m.get("driving"), rel("driving_bands"))
    for sw in m.get("sweeps", []):
        doc.h(2, f"Sweep: {sw['parameter']}")
        doc.p(sw["description"] + ". One pass of network outputs: nothing before the instance step "
              "was run again per value.")
        header = ["value", "instances", "false", "GT detected", "GT components", "inst. recall",
                  "inst. precision"]
        has_comp = any("components" in r for r in sw["rows"])
        if has_comp:
            header += ["pixel P", "pixel R", "pixel F1", "sIoU gt", "PPV", "comp. mean F1", "comp. F1 @ 0.5"]
        rows = []
        for r in sw["rows"]:
            row = [num(r["value"]), r["instances"], r["false_instances"], r["gt_detected"], r["gt_components"],
                   pct(r["instance_recall"]), pct(r["instance_precision"])]
            if has_comp:
                c = r["components"]
                row += [pct(r["pixel_precision"]), pct(r["pixel_recall"]), pct(r["pixel_f1"]), pct(c["siou_gt"]),
                        pct(c["ppv"]), pct(c["f1_mean"]), pct(c["f1_50"])]
            rows.append(row)
        doc.table(header, rows)
        key = f"sweep_{sw['parameter']}"
        if key in written:
            doc.img(rel(key), f"sweep of {sw['parameter']}")
    timing = m.get("timing", {})
    doc.h(2, "Timing")
    rows = []
    for stage, st in (timing.get("detector_stages_ms") or {}).items():
        if st:
            rows.append([f"detector: {stage}", st["n"], f"{st['mean']:.1f}", f"{st['median']:.1f}",
                         f"{st['p95']:.1f}", f"{st['max']:.1f}"])
    for key, label in (("latency_ms", "publish -> anomaly_score received"), ("frame_ms", "evaluator per frame")):
        st = timing.get(key)
        if st:
            rows.append([label, st["n"], f"{st['mean']:.1f}", f"{st['median']:.1f}", f"{st['p95']:.1f}",
                         f"{st['max']:.1f}"])
    if rows:
        doc.table(["ms", "n", "mean", "median", "p95", "max"], rows)
    doc.ul([f"{k.replace('_', ' ')}: {num(v, '{:.2f}')}" for k, v in timing.items()
            if not isinstance(v, dict) and v is not None])
    diag = run.get("node_diagnostics")
    if diag:
        doc.p(f"The node's own statistics (its last `/diagnostics` message, {run.get('node', '')}):")
        doc.table(["value", ""], [[k, v] for k, v in diag.items()])
    doc.h(2, "Worst frames")
    worst = m.get("worst_frames", [])
    if worst:
        doc.p("Lowest pixel F1 at the detector's score_threshold (ties: lowest AP). Panels: image | "
              "anomaly colour map / ground truth | the detector's instances (red outline) with the "
              "ground-truth outline (green).")
        for w in worst:
            doc.img(w["picture"], f"#{w['rank']} {w['frame_id']}: pixel F1 {pct(w['f1_at_threshold'])} "
                                  f"(TP {w['tp_px']}, FP {w['fp_px']}, FN {w['fn_px']} px), AP {pct(w['ap'])}")
    else:
        doc.p("No frame has a defined pixel F1 at the threshold (no anomaly pixels and no false positives).")
    doc.h(2, "Per-frame metrics")
    if "per_frame" in written:
        doc.img(rel("per_frame"), "per-frame metrics along the sequence")
    pf = m.get("per_frame", [])
    doc.p("AP, FPR95 and AUROC of each frame alone (exact curve); pixel F1 at `score >= score_threshold`; "
          "sIoU/PPV/mean F1 of the frame's components at the benchmark threshold; instance counts of the "
          "detector's own instances." + (f" First {max_table_rows} of {len(pf)} frames shown; all in "
                                         f"[per_frame.csv](per_frame.csv)." if len(pf) > max_table_rows else ""))
    header = ["#", "frame", "anomaly px", "AP", "FPR95", "AUROC", "F1@thr", "sIoU gt", "PPV", "comp. F1",
              "inst.", "false", "GT det./comp."]
    timing_col = "latency ms" if any("latency_ms" in r for r in pf) else "detector ms"
    header.append(timing_col)
    rows = []
    for r in pf[:max_table_rows]:
        t = r.get("latency_ms", r.get("detector_ms"))
        rows.append([r["index"], r["frame_id"], r["n_pos"], pct(r["ap"]), pct(r["fpr95"]), pct(r["auroc"]),
                     pct(r["f1_at_threshold"]), pct(r.get("siou_gt")), pct(r.get("ppv")),
                     pct(r.get("component_f1_mean")), r["instances"], r["false_instances"],
                     f"{r['gt_detected']}/{r['gt_components']}", "n/a" if t is None else f"{t:.0f}"])
    doc.table(header, rows)
    notes = m.get("notes", [])
    if notes:
        doc.h(2, "Notes")
        doc.ul(notes)
    doc.h(2, "Configuration")
    doc.table(["setting", "value"], [[k, f"`{v}`"] for k, v in cfg.items()])
    return doc
