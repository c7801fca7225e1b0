"""ROS-free parts of the node: latest-frame slot, statistics, bad-frame reasons, parameter planning,
marker geometry. No DDS needed."""
from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from csl_ros.config import DetectorConfig, NodeConfig
from csl_ros.image_codec import ImageFormatError, compressed_image_size, compressed_msg_to_rgb, image_msg_to_rgb
from csl_ros.ros.markers import (MAX_DEPTH_M, Mounting, marker_array_msg, obstacle_marker_specs, obstacle_points,
                                 obstacle_points_msg, score_color)
from csl_ros.ros.outputs import (IMAGE, MARKER_ARRAY, NODE_OUTPUTS, NodeOutput, node_of_topic, output_topic,
                                 register_output, sibling_topic)
from csl_ros.ros.params import parameter_specs, plan_parameter_changes
from csl_ros.ros.stats import (ERROR, OK, RECENT_WINDOW_S, WARN, LatencyWindow, LatestFrameSlot, NodeStats, RateMeter,
                               Throttle, bad_frame_reason, diagnostic_summary)


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
    (_img(encoding="yuv422", width=3, step=6, data=bytes(24)), "odd_width"),
    (_img(encoding="yuyv", width=1, step=2, data=bytes(8)), "odd_width"),
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


def _png(width, height, rows=None):
    """A PNG stream with the given header size; ``rows``: True for a complete, valid image (zero pixels,
    compressed row by row so the test never holds the raw image)."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if rows:
        comp, row, parts = zlib.compressobj(1), bytes(1 + 3 * width), []
        parts += [comp.compress(row) for _ in range(height)]
        idat = b"".join(parts) + comp.flush()
    else:
        idat = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_compressed_size_is_checked_from_the_header_before_decoding():
    big = _png(20000, 20000, rows=True)  # valid, a few MB, 1.2 GB decoded
    assert len(big) < 8_000_000 and compressed_image_size(big) == ("png", 20000, 20000)
    for data in (big, _png(100000, 100000)):
        with pytest.raises(ImageFormatError) as exc:
            compressed_msg_to_rgb(SimpleNamespace(format="png", data=data))
        assert bad_frame_reason(str(exc.value)) == "absurd_size" and "header" in str(exc.value)
    small = _png(40, 30, rows=True)
    assert compressed_msg_to_rgb(SimpleNamespace(format="png", data=small)).shape == (30, 40, 3)
    for ext, size in ((".jpg", (53, 37)), (".png", (53, 37)), (".webp", (53, 37)), (".bmp", (53, 37))):
        ok, buf = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
        assert compressed_image_size(buf.tobytes())[1:] == size, ext
    with pytest.raises(ImageFormatError) as exc:  # no header we can read the size from: not decoded
        compressed_msg_to_rgb(SimpleNamespace(format="tiff", data=b"II*\x00" + bytes(100)))
    assert bad_frame_reason(str(exc.value)) == "decode_failed"


def test_diagnostic_summary_levels():
    snap = NodeStats().snapshot(0)
    kw = dict(input_topic="/cam/image", input_publishers=1)
    level, msg = diagnostic_summary("unconfigured", snap, recent_input=0, **kw)
    assert level == ERROR and "unconfigured" in msg and "/cam/image" in msg
    level, msg = diagnostic_summary("inactive", snap, recent_input=3, **kw)
    assert level == WARN and "inactive" in msg and "3 frame" in msg
    assert diagnostic_summary("active", snap, recent_input=5, input_age_s=0.1, **kw) == (OK, "active")
    # A slow camera (no frame since the last report, but recently) is fine...
    assert diagnostic_summary("active", snap, recent_input=0, input_age_s=1.5, **kw) == (OK, "active")
    # ...a starved node is not, and the message points at the usual causes.
    for age in (None, 2.5):
        level, msg = diagnostic_summary("active", snap, recent_input=0, input_age_s=age, **kw)
        assert level == WARN and "nothing received" in msg and "QoS" in msg and "troubleshooting" in msg
    level, msg = diagnostic_summary("active", snap, input_age_s=None, input_topic="/x", input_publishers=0)
    assert level == WARN and "no publisher on /x" in msg
    level, msg = diagnostic_summary("active", snap, input_age_s=0.1, recent={"bad_frames": 2}, **kw)
    assert level == WARN and "2 bad" in msg and "last 10 s" in msg
    level, msg = diagnostic_summary("active", snap, input_age_s=0.1, recent={"publish_errors": 1}, **kw)
    assert level == WARN and "1 publishing error" in msg
    # Recent errors do not hide a camera that stopped: starvation is reported first.
    level, msg = diagnostic_summary("active", snap, input_age_s=3.0, recent={"bad_frames": 2}, **kw)
    assert level == WARN and "nothing received" in msg
    # Start-up grace: activated a moment ago, no frame yet.
    level, msg = diagnostic_summary("active", snap, input_age_s=1.0, starved_after_s=5.0, first_frame_pending=True,
                                    camera_info="missing", **kw)
    assert level == OK and "waiting for the first frame" in msg
    for info, words in (("missing", "no camera_info received on /cam/info"), ("uncalibrated", "uncalibrated")):
        level, msg = diagnostic_summary("active", snap, input_age_s=0.1, camera_info=info,
                                        camera_info_topic="/cam/info", **kw)
        assert level == WARN and words in msg and "no markers" in msg


def test_node_stats_errors_age_out_of_the_recent_window():
    clock = [0.0]
    st = NodeStats(recent_bad=RateMeter(RECENT_WINDOW_S, clock=lambda: clock[0]))
    st.count_bad("odd_width")
    assert st.recent_errors()["bad_frames"] == 1
    clock[0] = RECENT_WINDOW_S + 0.1
    assert st.recent_errors()["bad_frames"] == 0 and st.snapshot(0)["bad_frames"] == 1  # the total stays


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
        plan_parameter_changes(DetectorConfig(), NodeConfig(), {"teacher": "energy"}, active=True)
    # Setting a reload field to its current value is harmless while active.
    plan_parameter_changes(DetectorConfig(), NodeConfig(), {"teacher": DetectorConfig().teacher}, active=True)
    plan = plan_parameter_changes(DetectorConfig(), NodeConfig(), {"teacher": "energy", "use_compressed": True},
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


def test_mounting_places_optical_points_in_the_output_frame_by_hand():
    # Camera 2 m ahead of base_link, 1.5 m up, looking along base_link's x: optical (x right, y down,
    # z forward) -> base_link (x forward, y left, z up).
    m = Mounting(x=2.0, z=1.5)
    assert m.point((1.0, 1.5, 10.0)) == pytest.approx((12.0, -1.0, 0.0))  # 10 m ahead, 1 m right, on the ground
    # The same camera turned 90 deg to the left (yaw): forward becomes +y, right becomes +x.
    m = Mounting(x=2.0, z=1.5, yaw_deg=90.0)
    assert m.point((1.0, 1.5, 10.0)) == pytest.approx((3.0, 10.0, 0.0))
    # Pitched 10 deg down: a point 10 m along the optical axis is 10 cos10 ahead and 10 sin10 below.
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    assert Mounting(pitch_deg=10.0).point((0.0, 0.0, 10.0)) == pytest.approx((10 * c, 0.0, -10 * s))
    # The orientation quaternion rotates the optical axes the same way.
    for mount in (Mounting(), Mounting(yaw_deg=90.0), Mounting(roll_deg=30, pitch_deg=-20, yaw_deg=170)):
        x, y, z, w = mount.quaternion()
        q = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(q, mount.rotation(), atol=1e-9)


def test_obstacle_points_one_per_obstacle_with_geometry():
    pts = obstacle_points([_obstacle(3), _obstacle(4, contact=None, w=None, h=None)], Mounting(x=2.0, z=1.5))
    assert pts == [pytest.approx((12.0, -0.5, 0.0, 3, 0.9, 0.4, 0.3, 0, 0))]
    msgs = pytest.importorskip("sensor_msgs.msg")
    std = pytest.importorskip("std_msgs.msg")
    header = std.Header(frame_id="camera_optical_frame")
    cloud = obstacle_points_msg([_obstacle(3)], header, mounting=Mounting(x=2.0, z=1.5), output_frame="base_link")
    assert cloud.header.frame_id == "base_link" and (cloud.width, cloud.height, cloud.point_step) == (1, 1, 36)
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "id", "score", "width_m", "height_m", "age", "coasted"]
    assert [f.offset for f in cloud.fields] == [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert cloud.fields[3].datatype == msgs.PointField.UINT32 and cloud.fields[0].datatype == msgs.PointField.FLOAT32
    assert cloud.fields[7].datatype == cloud.fields[8].datatype == msgs.PointField.UINT32
    x, y, z, i, score, w, h, age, coasted = __import__("struct").unpack("<fffIfffII", bytes(cloud.data))
    assert (x, y, z, i, age, coasted) == (pytest.approx(12.0), pytest.approx(-0.5), pytest.approx(0.0), 3, 0, 0)


def test_marker_lifetime_and_output_frame():
    pytest.importorskip("visualization_msgs.msg")
    std = pytest.importorskip("std_msgs.msg")
    header = std.Header(frame_id="camera_optical_frame")
    arr = marker_array_msg([_obstacle(1)], header, lifetime_s=0.25, mounting=Mounting(x=2.0, z=1.5),
                           output_frame="base_link")
    cube = arr.markers[1]
    assert all(m.header.frame_id == "base_link" for m in arr.markers)
    assert (cube.lifetime.sec, cube.lifetime.nanosec) == (0, 250_000_000)
    # the cube's centre: half its height above and half its depth behind the contact point (optical),
    # i.e. in base_link 0.2 m further ahead and 0.15 m up
    assert (cube.pose.position.x, cube.pose.position.z) == pytest.approx((12.0 + 0.2, 0.15))


def test_docs_list_every_parameter_with_its_reload_class():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "ros.md").read_text()
    runtime_par = text[text.index("Changeable at run time"):text.index("Need a model reload")]
    reload_par = text[text.index("Need a model reload"):text.index("## Diagnostics")]
    specs = parameter_specs()
    assert set(re.findall(r"`(\w+)`", runtime_par)) == {s.name for s in specs if not s.reload}
    assert set(re.findall(r"`(\w+)`", reload_par)) == {s.name for s in specs if s.reload}


# --- the node's outputs registry ------------------------------------------------------------------------------
def test_output_topics_come_from_the_registry():
    assert output_topic("score", "/csl/camera") == "/csl/camera/csl_detector/anomaly_score"
    assert output_topic("instances", "") == "/csl_detector/ood_instances"
    assert sibling_topic("/ns/csl_detector/anomaly_score", "instances") == "/ns/csl_detector/ood_instances"
    assert sibling_topic("/ns/other_name", "overlay") == "/ns/other_name/overlay"   # taken as the node
    assert node_of_topic("/csl/camera/csl_detector/anomaly_score/") == "/csl/camera/csl_detector"
    # every flag an output names is a NodeConfig field (a node parameter)
    flags = {o.enabled_by for o in NODE_OUTPUTS.values() if o.enabled_by}
    assert flags and flags <= {f.name for f in dataclasses.fields(NodeConfig)}


def test_register_output_refuses_a_second_key_or_topic_and_misplaced_encodings(monkeypatch):
    monkeypatch.setattr("csl_ros.ros.outputs.NODE_OUTPUTS", dict(NODE_OUTPUTS))
    from csl_ros.ros import outputs

    def render(frame):
        return frame.detection.anomaly_map

    with pytest.raises(ValueError, match="'score' is registered already"):
        register_output(NodeOutput("score", "elsewhere", IMAGE, "32FC1", render))
    with pytest.raises(ValueError, match="~/overlay is registered already"):
        register_output(NodeOutput("overlay2", "overlay", IMAGE, "bgr8", render))
    with pytest.raises(ValueError, match="encoding"):
        register_output(NodeOutput("markers2", "markers2", MARKER_ARRAY, "bgr8", render))
    with pytest.raises(ValueError, match="encoding"):
        register_output(NodeOutput("image2", "image2", IMAGE, None, render))
    register_output(NodeOutput("score_copy", "anomaly_score/copy", IMAGE, "32FC1", render))
    assert list(outputs.NODE_OUTPUTS)[-1] == "score_copy" and "score_copy" not in NODE_OUTPUTS
