"""``csl-ros demo`` end to end on tiny random-weight models (render -> bag -> node over DDS -> live
evaluation -> report + overlay video), and its clear failure when the shipped models are missing."""
from __future__ import annotations

import json

import pytest

from csl_ros.cli import main


@pytest.fixture(scope="module")
def tiny_sets(tiny_model_files):
    sets = [*tiny_model_files, "teacher=msp", "input_height=64", "input_width=128", "device=cpu", "backend=eager"]
    return [a for s in sets for a in ("--set", s)]


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.timeout(300)
def test_demo_runs_the_node_live_and_writes_the_report(tiny_sets, tmp_path, capsys):
    pytest.importorskip("rclpy")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "3", "--size", "128x256", *tiny_sets]) == 0
    printed = capsys.readouterr().out
    report = out / "eval" / "report.html"
    assert f"the report is {report}" in printed
    for name in ("synthroad_drive_sheet.png", "synthroad_drive.mp4", "drive_bag/metadata.yaml",
                 "eval/report.md", "eval/metrics.json", "eval/overlay.mp4", "eval/figures/pr_curve.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    m = json.loads((out / "eval" / "metrics.json").read_text())
    assert m["run"]["mode"] == "live" and m["run"]["node"] == "/csl/camera/csl_detector"
    assert m["counts"]["published"] == 3 and m["counts"]["scored"] == 3 and m["counts"]["dropped"] == 0
    # the node ran what the demo configured: driving.yaml plus the --set overrides
    assert m["run"]["config_source"] == "node parameters"
    assert m["config"]["teacher"] == "msp" and m["config"]["input_width"] == 128
    # ... with the rendered camera's mounting (driving.yaml's generic 1.5 m / 0 deg would misplace the range)
    from csl_ros.data.synthroad import render_sequence

    cam = next(iter(render_sequence(7, 1, (128, 256), obstacles="obstacle"))).camera
    assert m["config"]["camera_height_m"] == pytest.approx(cam.height_m, abs=1e-3) != 1.5
    assert m["config"]["camera_pitch_deg"] == pytest.approx(cam.pitch_deg, abs=0.2) and cam.pitch_deg > 0.5
    assert "node mounting from the rendered camera" in printed
    from csl_ros.config import DetectorConfig, load_configs
    from csl_ros.demo import default_params_file

    det_cfg, _ = load_configs(default_params_file())
    # one default: the schema's (the shipped models' tuned threshold), which driving.yaml leaves alone
    assert det_cfg.score_threshold == DetectorConfig().score_threshold
    assert m["config"]["score_threshold"] == det_cfg.score_threshold
    assert [s["parameter"] for s in m["sweeps"]] == ["score_threshold"]
    # the driving figures: by distance band, tracked with driving.yaml's tracking, printed by the demo
    d = m["driving"]
    assert d["frames"] == 3 and d["distance_sources"] and set(d) >= {"per_frame", "tracked"}
    assert d["tracking"]["confirm_hits"] == det_cfg.track_confirm_hits
    assert "driving: per frame: recall within 30 m" in printed
    # the detector line names the shipped default's second pass (the tiny students carry no test_scale)
    # and driving.yaml's teacher flip
    scale = DetectorConfig().test_scale
    assert (f"network 64x128 with a second pass at test_scale {scale:g} ({round(64 * scale)}x{round(128 * scale)}),"
            in printed)
    assert det_cfg.teacher_flip and m["config"]["teacher_flip"] is True
    assert "averaged with its pass on the mirrored image (teacher_flip)" in printed
    assert "Driving metrics" in (out / "eval" / "report.md").read_text()


def test_demo_without_shipped_models_names_the_manifest(tmp_path, monkeypatch, capsys):
    from csl_ros import shipped

    monkeypatch.delenv("CSL_ROS_MODELS_DIR", raising=False)
    monkeypatch.setattr(shipped, "MANIFEST", "no_such_manifest.json")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--frames", "2", "--size", "64x128"]) == 2
    err = capsys.readouterr().err
    assert "no shipped models found" in err and "manifest.json" in err
    assert not (out / "synthroad_drive.mp4").exists()      # failed before rendering anything


def test_demo_rejects_a_bad_rate_and_setting(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "a"), "--rate", "fast"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "b"), "--set", "score_threshold=3"]) == 2
    assert "score_threshold" in capsys.readouterr().err


def test_demo_mounting_comes_from_the_drive_unless_set():
    """The node's mounting is the rendered camera's (height, median pitch), unless --set names it."""
    import dataclasses
    from types import SimpleNamespace

    from csl_ros.config import DetectorConfig
    from csl_ros.demo import DemoContext, _use_drive_mounting

    frames = [SimpleNamespace(camera=SimpleNamespace(height_m=1.25, pitch_deg=p)) for p in (1.0, 1.4, 1.2)]
    ctx = DemoContext(out=None, frames_n=3, size=(64, 128), frames=frames, detector_config=DetectorConfig())
    _use_drive_mounting(ctx)
    assert (ctx.detector_config.camera_height_m, ctx.detector_config.camera_pitch_deg) == (1.25, 1.2)
    assert ctx.mounting == {"camera_height_m": 1.25, "camera_pitch_deg": 1.2}
    user = DemoContext(out=None, frames_n=3, size=(64, 128), frames=frames, overrides={"camera_pitch_deg": "2"},
                       detector_config=dataclasses.replace(DetectorConfig(), camera_pitch_deg=2.0))
    _use_drive_mounting(user)
    assert user.detector_config.camera_pitch_deg == 2.0 and user.detector_config.camera_height_m == 1.5
    assert user.mounting == {}
