"""bench/gpu_suite.py and bench/train_gpu.py --dry-run: the GPU machine's commands run on CPU at a tiny
size, in a fresh interpreter with only ``PYTHONPATH=.`` (as on that machine), so they cannot rot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_suite_dry_run_writes_every_row_json_and_markdown(tmp_path):
    variants = "eager fp32,onnxruntime,tensorrt"
    proc = _run(["bench/gpu_suite.py", "--dry-run", "--out", str(tmp_path), "--variants", variants], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert result["dry_run"] and not result["ros_imported"]
    rows = {(r["model"], r["variant"]): r for r in result["rows"]}
    expected = [("HF Mask2Former R-50 (reference)", "eager fp32")] + [
        (m, v) for m in ("shipped default", "r50_paper") for v in variants.split(",")]
    assert list(rows) == expected
    for key in expected[:3] + expected[4:6]:  # CPU: eager and onnxruntime run, tensorrt cannot
        assert rows[key]["status"] == "ok", rows[key]
        assert rows[key]["fps"] > 0 and rows[key]["p99_ms"] >= rows[key]["p50_ms"] > 0
    assert rows[("shipped default", "onnxruntime")]["backend_used"].startswith("student onnxruntime")
    assert rows[("shipped default", "tensorrt")]["status"].startswith("not available")
    assert rows[("shipped default", "eager fp32")]["soak_frames"] == 5
    stages = rows[("shipped default", "eager fp32")]["stages_ms"]
    assert {"preprocess", "network", "teacher", "instances"} <= set(stages) and all(v >= 0 for v in stages.values())
    assert [t["verdict"] for t in result["targets"]] and all(t["verdict"] in ("met", "missed")
                                                             for t in result["targets"])
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| size | model | variant |" in md and "## Targets" in md
    assert md.count("\n| 64x128 |") == 8 + 4  # rows + the stage rows of the 4 detector rows that ran
    assert "by detector stage" in md


def test_gpu_suite_without_cuda_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine would run the whole suite")
    proc = _run(["bench/gpu_suite.py", "--out", str(tmp_path)], tmp_path, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.slow  # ~1 min of CPU: five project commands (training, statistics, results) at 64x128
def test_train_gpu_dry_run_writes_shipped_files_cards_manifest_and_results(tmp_path):
    proc = _run(["bench/train_gpu.py", "--dry-run", "--out", str(tmp_path)], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from csl_ros.model import load_checkpoint
    from csl_ros.shipped import resolve_shipped
    from csl_ros.teachers.teacher import build_teacher

    for name in ("teacher_segmenter", "teacher_segmenter_stats", "teacher_segmenter_closed_set",
                 "teacher_segmenter_closed_set_stats", "student_ca", "student_scheme1"):
        path = resolve_shipped(name, tmp_path)  # in the manifest, SHA-256 checked
        assert (tmp_path / json.loads((tmp_path / "manifest.json").read_text())["models"][name]["card"]).is_file()
    assert load_checkpoint(tmp_path / "student_scheme1.safetensors").model.has_distribution
    build_teacher("sml", segmenter_path=tmp_path / "teacher_segmenter.safetensors",
                  stats_path=tmp_path / "teacher_segmenter.stats.json", device="cpu")
    summary = json.loads((tmp_path / "train_gpu.json").read_text())
    assert set(summary["stages"]) == {"render", "segmenter", "statistics", "student_ca", "student_scheme1",
                                      "outlier_exposure", "statistics_oe", "results"}
    # the shipped teacher is the closed-set one after outlier exposure; scheme 1 learned from the closed set
    oe = summary["stages"]["outlier_exposure"]["command"]
    assert f"init_from={tmp_path / 'teacher_segmenter_closed_set.safetensors'}" in oe and "negatives_max=3" in oe
    s1 = summary["stages"]["student_scheme1"]["command"]
    assert f"student.teacher_path={tmp_path / 'teacher_segmenter_closed_set.safetensors'}" in s1
    results = json.loads((tmp_path / "results.json").read_text())
    assert "2/sml/soft" in results["rows"] and "AUPR" in (tmp_path / "results.md").read_text()
    assert "Trained in" in (tmp_path / "student_ca.md").read_text()
