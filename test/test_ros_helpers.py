"""ROS-free parts of the node: latest-frame slot, statistics, bad-frame reasons, parameter planning,
marker geometry. No DDS needed."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from csl_ros.config import DetectorConfig, NodeConfig
from csl_ros.ros.image_conversion import ImageFormatError, compressed_msg_to_rgb, image_msg_to_rgb
from csl_ros.ros.markers import MAX_DEPTH_M, marker_array_msg, obstacle_marker_specs, score_color
from csl_ros.ros.params import parameter_specs, plan_parameter_changes
from csl_ros.ros.stats import (ERROR, OK, WARN, LatencyWindow, LatestFrameSlot, NodeStats, RateMeter, Throttle,
                               bad_frame_reason, diagnostic_summary)


# --- latest-frame slot -------------------------------------------------------------------------------------
def test_slot_keeps_only_the_newest_and_counts_drops():
    slot = LatestFrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.dropped == 2
    assert slot.take(timeout=0) == 3
    assert slot.take(timeout=0) is None


def test_slot_take_wakes_on_put_and_on_close():
    slot = LatestFrameSlot()
    got = []
    t = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    t.start()
    time.sleep(0.05)
    slot.put("frame")
    t.join(2)
    assert got == ["frame"]
    t = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    t0 = time.monotonic()
    t.start()
    time.sleep(0.05)
    slot.close()
    t.join(2)
    assert got[-1] is None and time.monotonic() - t0 < 2
    slot.reopen()
    slot.put("again")
    assert slot.take(timeout=0) == "again"


# --- statistics -------------------------------------------------------------------------------------------
def test_rate_meter_counts_events_in_window():
    clock = [0.0]
    meter = RateMeter(window_s=2.0, clock=lambda: clock[0])
    assert meter.rate_hz() == 0.0
    for i in range(21):  # 10 Hz for 2 s
        clock[0] = i * 0.1
        meter.tick()
    assert meter.rate_hz() == pytest.approx(10.0, rel=1e-6)
    assert meter.total == 21
    clock[0] = 10.0  # long silence: window empties
    assert meter.rate_hz() == 0.0


def test_latency_percentiles():
    win = LatencyWindow(size=100)
    assert np.isnan(win.percentiles()[50])
    for v in range(1, 201):  # only the last 100 (101..200) are kept
        win.add(v)
    p = win.percentiles()
    assert p[50] == pytest.approx(150.5)
    assert 195 < p[99] <= 200


def test_throttle_per_key():
    clock = [0.0]
    th = Throttle(5.0, clock=lambda: clock[0])
    assert th.ready("a") and th.ready("b")
    assert not th.ready("a")
    clock[0] = 5.1
    assert th.ready("a")


def test_node_stats_snapshot_lists_bad_reasons():
    st = NodeStats()
    st.count_bad("step_mismatch")
    st.count_bad("step_mismatch")
    st.count_bad("non_finite")
    snap = st.snapshot(dropped=4)
    assert snap["bad_frames"] == 3 and snap["bad_frames.step_mismatch"] == 2
    assert snap["bad_frames.non_finite"] == 1 and snap["frames_dropped"] == 4


def _img(**kw):
    base = dict(height=4, width=4, encoding="rgb8", step=12, is_bigendian=0, data=bytes(48))
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("msg, reason", [
    (_img(encoding="yuv420"), "unsupported_encoding"),
    (_img(height=0, width=0, step=0, data=b""), "zero_size"),
    (_img(height=100000, width=100000, step=300000, data=bytes(10)), "absurd_size"),
    (_img(step=4), "step_mismatch"),
    (_img(data=bytes(20)), "data_too_short"),
    (_img(encoding="32FC1", step=16, data=np.full(16, np.nan, np.float32).tobytes()), "non_finite"),
])
def test_bad_frame_reason_matches_conversion_errors(msg, reason):
    with pytest.raises(ImageFormatError) as exc:
        image_msg_to_rgb(msg)
    assert bad_frame_reason(str(exc.value)) == reason


def test_bad_frame_reason_compressed():
    for data, reason in ((b"", "empty_compressed"), (b"\xff\xd8 not a jpeg", "decode_failed")):
        with pytest.raises(ImageFormatError) as exc:
            compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=data))
        assert bad_frame_reason(str(exc.value)) == reason
    assert bad_frame_reason("something new") == "other"


def test_diagnostic_summary_levels():
    snap = NodeStats().snapshot(0)
    kw = dict(input_topic="/cam/image", recent_bad=0, input_publishers=1)
    level, msg = diagnostic_summary("unconfigured", snap, recent_input=0, **kw)
    assert level == ERROR and "unconfigured" in msg and "/cam/image" in msg
    level, msg = diagnostic_summary("inactive", snap, recent_input=3, **kw)
    assert level == WARN and "inactive" in msg and "3 frame" in msg
    assert diagnostic_summary("active", snap, recent_input=5, input_age_s=0.1, **kw) == (OK, "active")
    # A slow camera (no frame since the last report, but recently) is fine...
    assert diagnostic_summary("active", snap, recent_input=0, input_age_s=1.5, **kw) == (OK, "active")
    # ...a starved node is not, and the message names the usual cause.
    for age in (None, 2.5):
        level, msg = diagnostic_summary("active", snap, recent_input=0, input_age_s=age, **kw)
        assert level == WARN and "nothing received" in msg and "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA" in msg
    level, msg = diagnostic_summary("active", snap, recent_input=0, input_topic="/x", recent_bad=0,
                                    input_publishers=0)
    assert level == WARN and "no publisher on /x" in msg
    level, msg = diagnostic_summary("active", snap, recent_input=5, input_topic="/x", recent_bad=2,
                                    input_publishers=1)
    assert level == WARN and "2 bad" in msg


# --- parameters -------------------------------------------------------------------------------------------
def test_parameter_specs_come_from_the_schema():
    specs = {s.name: s for s in parameter_specs()}
    det, node = DetectorConfig(), NodeConfig()
    for name, spec in specs.items():
        assert spec.default == getattr(det if spec.owner == "detector" else node, name)
        assert spec.description
    assert specs["score_threshold"].range == (0.0, 1.0) and specs["score_threshold"].type is float
    assert specs["teacher"].choices and "one of: none" in specs["teacher"].additional_constraints
    assert specs["teacher"].reload and not specs["score_threshold"].reload
    assert {"use_compressed", "publish_overlay", "auto_activate"} <= set(specs)


def test_plan_runtime_change():
    plan = plan_parameter_changes(DetectorConfig(), NodeConfig(), {"score_threshold": 0.8, "publish_color": False},
                                  active=True)
    assert plan.detector_config.score_threshold == 0.8
    assert plan.runtime_detector_changes == {"score_threshold": 0.8}
    assert plan.node_config.publish_color is False and plan.reload_changes == []


@pytest.mark.parametrize("changes, words", [
    ({"score_threshold": 1.5}, "outside [0.0, 1.0]"),
    ({"teacher": "bogus"}, "not one of"),
    ({"min_instance_area": -1}, "outside"),
    ({"nonexistent": 1}, "unknown parameter"),
])
def test_plan_rejects_invalid_values_without_clamping(changes, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        plan_parameter_changes(DetectorConfig(), NodeConfig(), changes, active=False)


def test_plan_reload_fields_only_when_not_active():
    with pytest.raises(ValueError, match="teacher needs a model reload: deactivate/cleanup the node first"):
        plan_parameter_changes(DetectorConfig(), NodeConfig(), {"teacher": "msp"}, active=True)
    # Setting a reload field to its current value is harmless while active.
    plan_parameter_changes(DetectorConfig(), NodeConfig(), {"teacher": DetectorConfig().teacher}, active=True)
    plan = plan_parameter_changes(DetectorConfig(), NodeConfig(), {"teacher": "msp", "use_compressed": True},
                                  active=False)
    assert sorted(plan.reload_changes) == ["teacher", "use_compressed"]
    assert plan.runtime_detector_changes == {}


# --- markers ------------------------------------------------------------------------------------------------
def _obstacle(i, contact=(0.5, 1.5, 10.0), w=0.4, h=0.3, score=0.9):
    return SimpleNamespace(id=i, contact_point_m=contact, width_m=w, height_m=h, distance_m=contact[2] if contact else None,
                           max_score=score, mean_score=score)


def test_marker_specs_stand_on_the_ground_at_the_contact_point():
    specs = obstacle_marker_specs([_obstacle(3), _obstacle(4, contact=None, w=None, h=None)])
    assert len(specs) == 2  # the obstacle without geometry gets none
    cube, text = specs
    assert cube.kind == "cube" and cube.id == 3 and text.kind == "text" and text.id == 3
    x, y, z = cube.position
    assert (x, z) == pytest.approx((0.5, 10.0 + 0.2))          # half the (square) depth behind
    assert y + cube.scale[1] / 2 == pytest.approx(1.5)          # bottom face on the road (y down)
    assert cube.scale == pytest.approx((0.4, 0.3, 0.4))
    assert text.position[1] < y and "#3" in text.text and "10.0 m" in text.text
    tracked = _obstacle(7)
    tracked.track_age = 12                                   # a tracked record: its age is in the label
    assert "#7" in obstacle_marker_specs([tracked])[1].text and "age 12" in obstacle_marker_specs([tracked])[1].text
    wide = obstacle_marker_specs([_obstacle(1, w=5.0)])[0]
    assert wide.scale[2] == MAX_DEPTH_M


def test_score_color_goes_yellow_to_red():
    assert score_color(0.5)[:3] == (1.0, 1.0, 0.0)
    assert score_color(1.0)[:3] == (1.0, 0.0, 0.0)


def test_marker_array_msg_starts_with_deleteall():
    msgs = pytest.importorskip("visualization_msgs.msg")
    std = pytest.importorskip("std_msgs.msg")
    header = std.Header(frame_id="camera_optical_frame")
    header.stamp.sec = 42
    arr = marker_array_msg([_obstacle(1), _obstacle(2)], header)
    assert arr.markers[0].action == msgs.Marker.DELETEALL
    kinds = [m.type for m in arr.markers[1:]]
    assert kinds == [msgs.Marker.CUBE, msgs.Marker.TEXT_VIEW_FACING] * 2
    assert all(m.header.frame_id == "camera_optical_frame" and m.header.stamp.sec == 42 for m in arr.markers)
    assert arr.markers[1].scale.x == pytest.approx(0.4) and arr.markers[1].pose.orientation.w == 1.0


def test_docs_list_every_parameter_with_its_reload_class():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "ros.md").read_text()
    runtime_par = text[text.index("Changeable at run time"):text.index("Need a model reload")]
    reload_par = text[text.index("Need a model reload"):text.index("## Diagnostics")]
    specs = parameter_specs()
    assert set(re.findall(r"`(\w+)`", runtime_par)) == {s.name for s in specs if not s.reload}
    assert set(re.findall(r"`(\w+)`", reload_par)) == {s.name for s in specs if s.reload}
