"""bench/results.py: the ablation rows mean what their labels say, and the hand-written analysis can
only cite numbers the run produced."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from csl_ros.config import DetectorConfig
from csl_ros.model import build_student, connected_components, get_preset, hard_assign
from csl_ros.pipeline import Detector

from bench_modules import load_bench


results = load_bench("results")


@pytest.fixture(scope="module")
def detector_models():
    from csl_ros.teachers.calibration import Calibration
    from csl_ros.teachers.segmenter import ClosedSetSegmenter, preset
    from csl_ros.teachers.teacher import Teacher

    torch.manual_seed(0)
    student = build_student(get_preset("r18_fast")).eval()
    return student, Teacher("msp", ClosedSetSegmenter(preset("fpn_resnet18")), "msp", Calibration("identity"))


def test_hard_rows_are_mask2former_without_split_and_the_split_variant_separately(detector_models):
    """The "hard" row is Mask2Former's hard assignment (query ids, no component split); the
    "hard_split" row is the same labels split into connected components; both as the Detector runs them."""
    region_logits = torch.full((3, 16, 32), -6.0)
    region_logits[0, 2:6, 2:8] = 6.0      # query 0: two separate blobs
    region_logits[0, 10:14, 20:28] = 6.0
    region_logits[1, 8:16, 0:10] = 6.0    # query 1: one blob
    validity_logits = torch.tensor([[4.0, 0.0], [4.0, 0.0], [-4.0, 0.0]])  # v = 0.98, 0.98, 0.02
    probs, v = region_logits.sigmoid(), validity_logits.softmax(-1)[:, 0]
    got = {}
    for variant in ("hard", "hard_split"):
        cfg = DetectorConfig(scheme="2", teacher="msp", device="cpu", backend="eager", input_height=64,
                             input_width=128, **results.VARIANTS[variant])
        det = Detector(cfg, student=detector_models[0], teacher=detector_models[1])
        got[variant] = det._assign(region_logits, v, (64, 128), (64, 128))
    m2f = hard_assign(probs, v, split_components=False).repeat_interleave(4, 0).repeat_interleave(4, 1)
    np.testing.assert_array_equal(got["hard"].numpy(), m2f.numpy())
    assert set(got["hard"].unique().tolist()) == {-1, 0, 1}  # query ids: query 0's two blobs are one region
    split = hard_assign(probs, v, split_components=True).repeat_interleave(4, 0).repeat_interleave(4, 1)
    np.testing.assert_array_equal(got["hard_split"].numpy(), split.numpy())
    assert len(set(got["hard_split"].unique().tolist()) - {-1}) == 3  # the split row: three components
    assert results.VARIANTS["soft_full"]["assignment_resolution"] == "full"


def test_hard_assignment_without_split_keeps_one_query_as_one_region():
    """Two disconnected blobs of one query: one region in the Mask2Former row, two with the split."""
    r = torch.zeros(2, 8, 8)
    r[0, 1:3, 1:3] = 1.0
    r[0, 5:7, 5:7] = 1.0
    v = torch.tensor([0.9, 0.1])
    m2f = hard_assign(r, v, split_components=False)
    assert set(m2f.unique().tolist()) == {-1, 0}
    split = hard_assign(r, v, split_components=True)
    assert len(set(split.unique().tolist()) - {-1}) == 2
    assert connected_components(m2f.numpy(), 8)[0].max() == 1  # the same two blobs, as components


def test_notes_placeholders_are_filled_from_the_run_and_unknown_ones_refused():
    m = {"rows": {"teacher_only/sml/soft": {"ap": 0.20, "fpr95": 0.5}, "2/sml/soft": {"ap": 0.25, "fpr95": 0.4},
                  "1/none/soft": {"ap": 0.05, "fpr95": 1.0}},
         "obstacle_sizes": {"count": 3, "median_px": 64.0, "q25_px": 16.0, "q75_px": 100.0}}
    values = results.note_values(m)
    assert values["alone_sml_ap"] == "20.00" and values["csl_sml_soft_fpr95"] == "40.00"
    assert values["gain_sml_ap"] == "+5.00" and values["gain_sml_rel"] == "25"
    assert values["scheme1_ap"] == "5.00" and values["obstacle_median_cells"] == "4.0"
    assert results.render_notes("SML {alone_sml_ap} -> {csl_sml_soft_ap}", values) == "SML 20.00 -> 25.00"
    with pytest.raises(results.NotesError, match="made_up"):
        results.render_notes("on 60 frames {made_up}", values)


def test_shipped_notes_cite_only_known_values(tmp_path):
    """Every {name} in docs/results_notes.md is one that note_values produces for a full run (names
    are checked against the result keys of a full table, values faked)."""
    import re

    notes = (Path(__file__).resolve().parents[1] / "docs" / "results_notes.md").read_text()
    rows = {"/".join(k): {"ap": 0.1, "fpr95": 0.5, "auroc": 0.9, "s": 1.0} for k in results.table_rows()}
    regions = {v: {"miou": 0.5, "regions_per_frame": 10.0, "assigned_fraction": 0.9} for v in results.VARIANTS}
    diag = {"/".join(k): {"mean_obstacle": 0.1, "mean_road": 0.1, "road_p99": 0.1, "obstacle_median": 0.1,
                          "obstacle_region_purity": 0.5} for k in results.DIAGNOSTIC_ROWS}
    distill = {k: 0.1 for k in ("ap", "fpr95", "pearson", "mean_abs_diff", "mean_dhat", "mean_teacher",
                                "huber_delta", "beyond_delta", "pearson_road", "mean_dhat_road",
                                "mean_teacher_road", "pearson_obstacle", "mean_dhat_obstacle",
                                "mean_teacher_obstacle")}
    m = {"rows": rows, "regions": regions, "segmenter_miou": 0.5, "segmenter_iou": [0.5] * 19, "diagnostics": diag,
         "oracle": {"ap": 0.5, "fpr95": 0.5}, "distillation": distill,
         "obstacle_sizes": {"count": 3, "median_px": 64.0, "q25_px": 16.0, "q75_px": 100.0},
         "tuned_threshold": {"frames": 1, "best_f1": 0.5, "threshold": 0.3}}
    names = set(re.findall(r"{(\w+)}", notes))
    assert names and names <= set(results.note_values(m))
    # the page from saved measurements: tables, the hand-written heading and the filled-in notes
    m["run"] = {"frames": 2, "val_frames": 1, "height": 64, "width": 128, "wall_s": 60.0, "manifest": {}, "default_threshold": 0.05,
                "torch": "x", "machine": "y"}
    (tmp_path / "m.json").write_text(json.dumps(m))
    out = tmp_path / "r.md"
    assert results.main(["--from-json", str(tmp_path / "m.json"), "--out", str(out)]) == 0
    page = out.read_text()
    assert results.NOTES_HEADING in page and "Written by hand" in page and "{" not in page
    assert "| SML + CSL, hard assignment (Mask2Former: v > 0.8, r ≥ 0.5, no component split) | 10.00 | 50.00 |" in page
    assert "input 64×128, single scale (test_scale 1" in page      # a run saved before test_scale was recorded
    m["run"]["test_scale"] = 2.0
    (tmp_path / "m2.json").write_text(json.dumps(m))
    assert results.main(["--from-json", str(tmp_path / "m2.json"), "--out", str(out)]) == 0
    assert "input 64×128, test_scale 2, eager CPU" in out.read_text()
    (tmp_path / "bad.md").write_text("as measured on 60 frames: {made_up_number}")
    assert results.main(["--from-json", str(tmp_path / "m.json"), "--out", str(out),
                         "--notes", str(tmp_path / "bad.md")]) == 1


class _CountingDetector:
    """A stand-in for results.detector(): constant maps, counts its batches and whether it was closed."""
    builds = 0

    def __init__(self, key):
        from types import SimpleNamespace
        type(self).builds += 1
        self.key, self.closed, self.batches = key, False, 0
        self.config = SimpleNamespace(fusion_region_exponent=1.0)

    def detect_batch(self, images):
        from types import SimpleNamespace
        assert not self.closed, f"{self.key}: used after close()"
        self.batches += 1
        return [SimpleNamespace(anomaly_map=np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8),
                                regions=np.zeros((8, 8), np.int32)) for _ in images]

    def close(self):
        self.closed = True


def test_the_tuned_rows_detector_is_built_once_and_closed_after_tuning(monkeypatch):
    """run_rows hands the TUNED_ROW detector back open (every other row's is closed) and tune_threshold
    reuses it instead of building the same detector a second time, then closes it."""
    from types import SimpleNamespace

    labels = np.zeros((8, 8), np.uint8)
    labels[6:, :] = 1
    frame = SimpleNamespace(image=np.zeros((8, 8, 3), np.uint8), ood_labels=labels, seed=0)
    rows = [("teacher_only", "sml", "soft"), results.TUNED_ROW, ("2", "sml", "hard")]
    monkeypatch.setattr(results, "table_rows", lambda scheme1_only=False: rows)
    built = {}
    monkeypatch.setattr(results, "detector",
                        lambda s, t, a, v="soft": built.setdefault((s, t, v), _CountingDetector((s, t, v))))
    monkeypatch.setattr(results, "render", lambda seeds, size, obstacles: [frame] * len(seeds))
    _CountingDetector.builds = 0
    args = SimpleNamespace(scheme1_only=False, batch=2, tune_frames=3, height=8, width=8)
    out, _, det = results.run_rows([frame] * 3, args, lambda msg: None, keep_open=results.TUNED_ROW)
    assert set(out) == set(rows)
    assert det is built[results.TUNED_ROW] and not det.closed
    assert all(d.closed for k, d in built.items() if k != results.TUNED_ROW)
    tuned = results.tune_threshold(args, det)
    assert det.closed and _CountingDetector.builds == len(rows)   # no second build of the tuned row
    assert det.batches == 2 + 2 and tuned["frames"] == 3 and tuned["best_f1"] == pytest.approx(1.0)
    built.clear()
    assert results.run_rows([frame], args, lambda msg: None)[2] is None   # nothing kept open unless asked
    assert all(d.closed for d in built.values())
