"""The evaluation report as a reader sees it: both best-F1 thresholds named, legends outside the data,
a colour bar under every score picture, and the HTML page opened in headless Chromium (no console errors,
no missing images, a screenshot with the figures where the page puts them)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")

from chromium import Chromium, find_chromium  # noqa: E402
from test_visualize import assert_colour_bar_below  # noqa: E402

from csl_ros.cli import build_parser, main  # noqa: E402
from csl_ros.eval import report as R  # noqa: E402
from csl_ros.evaluate_cli import evaluate_command  # noqa: E402
from csl_ros.ros.testing import BrightnessDetector  # noqa: E402
from csl_ros.visualize import strip_height  # noqa: E402

BROWSER_WIDTH = 1200   # CSS px of the page's viewport


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory) -> Path:
    """The test suite's small evaluation: 6 synthroad frames (128x256) in a bag, scored in process by the
    model-free brightness detector; returns the output directory with report.html."""
    root = tmp_path_factory.mktemp("report")
    assert main(["bag", "convert", "--dataset", "synthroad", "--frames", "6", "--size", "128x256",
                 "--out", str(root / "drive"), "--quiet"]) == 0
    out = root / "eval"
    args = build_parser().parse_args(["evaluate", "--bag", str(root / "drive"), "--out", str(out), "--quiet",
                                      "--set", "score_threshold=0.7", "--sweep", "score_threshold=0.5:0.9:0.2"])
    assert evaluate_command(args, detector_factory=BrightnessDetector) == 0
    return out


def pixel_table(md: str) -> dict[str, str]:
    """The Pixel metrics table of report.md as {column: cell}."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("| AP |"))
    return dict(zip([c.strip() for c in lines[i].split("|")[1:-1]], [c.strip() for c in lines[i + 2].split("|")[1:-1]]))


def test_each_threshold_named_once_with_its_value(small_eval):
    m = json.loads((small_eval / "metrics.json").read_text())
    px = m["pixel"]
    md = (small_eval / "report.md").read_text()
    cells = pixel_table(md)
    assert cells[R.REPORTED_F1_THRESHOLD] == R.num(px["best_f1_threshold"])
    # the official protocol reports the best point's own threshold: one column, not two equal ones
    assert px["best_f1_point_threshold"] == px["best_f1_threshold"] and R.POINT_F1_THRESHOLD not in cells
    assert sum("threshold" in c for c in cells) == 1
    assert f"| {R.COMPONENT_THRESHOLD} (score >) |" in md
    assert f"`score > {R.num(px['component_threshold'])}`" in md


def test_a_reported_threshold_off_the_point_gets_its_own_name(small_eval):
    m = json.loads((small_eval / "metrics.json").read_text())
    m["pixel"]["best_f1_point_threshold"] = m["pixel"]["best_f1_threshold"] / 2
    assert list(R.f1_thresholds(m["pixel"])) == [R.REPORTED_F1_THRESHOLD, R.POINT_F1_THRESHOLD]
    cells = pixel_table(R.build_document(m, {}, small_eval).markdown())
    assert cells[R.REPORTED_F1_THRESHOLD] == R.num(m["pixel"]["best_f1_threshold"])
    assert cells[R.POINT_F1_THRESHOLD] == R.num(m["pixel"]["best_f1_point_threshold"])


def test_detector_line_names_the_second_pass_and_the_teacher_flip(small_eval):
    m = json.loads((small_eval / "metrics.json").read_text())
    m["config"].update(input_height=256, input_width=512, test_scale=1.0, teacher="maxlogit", teacher_flip=False)
    line = next(t for t in R.build_document(m, {}, small_eval).markdown().splitlines() if "detector: scheme" in t)
    assert "teacher maxlogit, " in line and "(HxW), score_threshold" in line and "mirrored" not in line
    m["config"].update(test_scale=2.0, teacher_flip=True)
    line = next(t for t in R.build_document(m, {}, small_eval).markdown().splitlines() if "detector: scheme" in t)
    assert "teacher maxlogit averaged with its pass on the mirrored image (teacher_flip), " in line
    assert "network input 256x512 (HxW) with a second pass at test_scale 2 (512x1024), score_threshold" in line


def test_plot_legends_lie_outside_the_axes(small_eval, tmp_path, monkeypatch):
    m = json.loads((small_eval / "metrics.json").read_text())
    figures = []
    save = R._save
    monkeypatch.setattr(R, "_save", lambda fig, path: (figures.append(fig), save(fig, path))[1])
    px, cfg = m["pixel"], m["config"]
    R.plot_pr(px["curve"], px, tmp_path / "pr.png")
    R.plot_roc(px["curve"], px, tmp_path / "roc.png")
    R.plot_histogram(m["score_histogram"], {"score_threshold": cfg["score_threshold"], **R.f1_thresholds(px)},
                     tmp_path / "hist.png")
    R.plot_per_frame(m["per_frame"], tmp_path / "pf.png")
    R.plot_sweep(m["sweeps"][0], tmp_path / "sweep.png")
    assert len(figures) == 5
    n_legends = 0
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            n_legends += 1
            lb, ab = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
            assert not lb.overlaps(ab), f"{ax.get_title()}: legend {lb} over the axes {ab}"
    assert n_legends >= 5


def test_worst_frame_panels_carry_their_legends_below(small_eval):
    m = json.loads((small_eval / "metrics.json").read_text())
    assert m["worst_frames"]
    pic = cv2.imread(str(small_eval / m["worst_frames"][0]["picture"]))
    # 2x2 panels, each: title bar, the picture (128x256 enlarged to 384 px wide), the legend strip
    pw = pic.shape[1] // 2
    ph = round(128 * 384 / 256)
    sh = strip_height(pw)
    title_h = (pic.shape[0] // 2) - ph - sh
    assert title_h >= 18
    for row in (0, 1):   # anomaly score (top right) and the overlay (bottom right): a colour bar each
        top = row * (title_h + ph + sh)
        assert_colour_bar_below(pic[top:top + title_h + ph + sh, pw:], pw)


# --------------------------------------------------------------------------------------------------
# the HTML report in a browser
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = find_chromium()
    if exe is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)")
    b = Chromium(exe, tmp_path_factory.mktemp("chromium_profile"))
    yield b
    b.close()


PAGE_FACTS = """JSON.stringify({
  height: document.documentElement.scrollHeight,
  width: document.documentElement.scrollWidth,
  title: document.title,
  headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent),
  images: Array.from(document.images).map(i => {
    const r = i.getBoundingClientRect();
    return {src: i.getAttribute('src'), complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
            rect: [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]};
  }),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
})"""


def test_html_report_in_headless_chromium(small_eval, browser):
    session = browser.open((small_eval / "report.html").as_uri(), width=BROWSER_WIDTH)
    facts = json.loads(browser.evaluate(PAGE_FACTS, session))
    assert browser.problems(session) == [], "the page logged errors while loading"
    assert facts["title"] == "csl_ros evaluation report"
    for h in ("Pixel metrics", "Component metrics", "Worst frames", "Per-frame metrics", "Configuration"):
        assert h in facts["headings"]
    # every figure the report wrote is on the page, loaded (a missing file has naturalWidth 0)
    srcs = [i["src"] for i in facts["images"]]
    on_disk = sorted(str(p.relative_to(small_eval)) for p in (small_eval / "figures").glob("*.png"))
    assert sorted(srcs) == on_disk
    for img in facts["images"]:
        assert img["complete"] and img["natural"][0] > 0, f"{img['src']} did not load"
        x, y, w, h = img["rect"]
        assert w > 100 and h > 50 and x + w <= BROWSER_WIDTH + 1, img     # shown, not overflowing
    for href in facts["links"]:                                           # local links resolve
        if not re.match(r"^[a-z]+:", href):
            assert (small_eval / href).exists(), href
    # no horizontal scrolling; the page is as long as its content
    assert facts["width"] <= BROWSER_WIDTH
    bottom = max(y + h for _, y, _, h in (i["rect"] for i in facts["images"]))
    assert bottom < facts["height"] < bottom + 20000

    shot = cv2.imdecode(np.frombuffer(browser.screenshot(session, BROWSER_WIDTH, facts["height"]), np.uint8),
                        cv2.IMREAD_COLOR)
    assert shot.shape[:2] == (facts["height"], BROWSER_WIDTH)
    assert (shot[:, :20] > 240).all(), "the left margin should be blank page"
    for img in facts["images"]:   # each figure is drawn where the page says, looking like its file
        x, y, w, h = (int(round(v)) for v in img["rect"])
        shown = shot[y:y + h, x:x + w].astype(np.float32)
        src = cv2.imread(str(small_eval / img["src"]), cv2.IMREAD_COLOR)
        expected = cv2.resize(src, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
        assert shown.std() > 5, f"{img['src']}: blank on screen"
        corr = np.corrcoef(shown.ravel(), expected.ravel())[0, 1]
        assert corr > 0.9, f"{img['src']}: the screenshot differs from the file (correlation {corr:.2f})"
