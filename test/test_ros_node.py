"""The csl_detector lifecycle node with real rclpy and DDS in the test process.

A model-free detector (csl_ros.ros.testing.BrightnessDetector: anomaly = brightness) is injected
through the node's factory, so these tests exercise the ROS layer without trained models.
Each test builds its node in its own namespace; the module uses its own ROS domain and context.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.msg import Log, Parameter as ParameterMsg, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from csl_ros.config import DetectorConfig, NodeConfig  # noqa: E402
from csl_ros.data.synthroad import render_frame  # noqa: E402
from csl_ros.image_codec import fill_image_msg  # noqa: E402
from csl_ros.ros.csl_node import build_engine  # noqa: E402
from csl_ros.ros.node import MESSAGE_TYPES, CslDetectorNode  # noqa: E402
from csl_ros.ros.outputs import NODE_OUTPUTS  # noqa: E402
from csl_ros.ros.testing import BrightnessDetector, private_ros_context  # noqa: E402
from csl_ros.visualize import colorize_instances, colorize_scores, colour_bar_strip, strip_height  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

DOMAIN_ID = random.randint(1, 200)
OUTPUTS = {out.key: (out.topic, MESSAGE_TYPES[out.message]) for out in NODE_OUTPUTS.values()}


@pytest.fixture(scope="module")
def ros():
    """A private rclpy context on a random domain (each Rig spins its own executor in it)."""
    with private_ros_context(DOMAIN_ID, large_data=True) as context:  # large images: large-data transports
        yield context


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


_COUNTER = iter(range(10_000))


class Rig:
    """One node under test plus a probe node publishing camera topics and recording every output."""

    def __init__(self, ros, *, factory=None, overrides=None, activate=True, compressed=False):
        context = ros
        self.ns = f"/t{next(_COUNTER)}"
        self.detectors: list[BrightnessDetector] = []

        def make(cfg):
            det = (factory or BrightnessDetector.from_config)(cfg)
            self.detectors.append(det)
            return det

        params = [Parameter("diagnostics_period_s", value=0.2)]
        params += [Parameter(k, value=v) for k, v in (overrides or {}).items()]
        self.node = CslDetectorNode(detector_factory=make, namespace=self.ns, context=context,
                                    parameter_overrides=params)
        self.probe = rclpy.create_node("probe", namespace=self.ns, context=context)
        self.lock = threading.Lock()
        self.outputs: dict[str, dict[int, object]] = {k: {} for k in OUTPUTS}
        self.diagnostics: list = []
        self.logs: list[str] = []
        for key, (topic, typ) in OUTPUTS.items():
            self.probe.create_subscription(typ, f"{self.ns}/csl_detector/{topic}",
                                           lambda m, key=key: self._record(key, m), 10)
        self.probe.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.probe.create_subscription(Log, "/rosout", self._on_log, 200)
        self.pub = self.probe.create_publisher(CompressedImage if compressed else Image,
                                               "image/compressed" if compressed else "image", 10)
        self.info_pub = self.probe.create_publisher(CameraInfo, "camera_info", 10)
        # One executor thread, as csl_node runs: entities the node destroys (cleanup, reload) are then
        # never in another thread's wait set (rclpy's executors race against destruction there).
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        if activate:
            assert self.node.configure_and_activate()
            self.wait_connected()

    def _record(self, key, msg):
        with self.lock:
            self.outputs[key][msg.header.stamp.sec if key != "obstacles" else msg.markers[0].header.stamp.sec] = msg

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(f"{self.ns}/csl_detector:"):
                with self.lock:
                    self.diagnostics.append(st)

    def _on_log(self, msg):
        if msg.name == f"{self.ns.strip('/')}.csl_detector":
            with self.lock:
                self.logs.append(msg.msg)

    def wait_connected(self):
        wait_for(lambda: self.pub.get_subscription_count() > 0, what="node subscription")
        wait_for(lambda: all(self.node.count_subscribers(f"{self.ns}/csl_detector/{t}") > 0
                             for t, _ in OUTPUTS.values()), what="probe subscriptions")
        time.sleep(0.2)  # let the endpoints finish matching both ways

    def send(self, image, stamp, encoding="rgb8", frame_id="camera_optical_frame"):
        msg = fill_image_msg(Image(), image, encoding)
        msg.header.stamp.sec = stamp
        msg.header.frame_id = frame_id
        self.pub.publish(msg)

    def send_raw(self, **fields):
        msg = Image()
        for k, v in fields.items():
            setattr(msg, k, v)
        self.pub.publish(msg)

    def answered(self, stamp, keys=("score", "instances", "instances_color", "color", "overlay", "obstacles",
                                    "points")):
        with self.lock:
            return all(stamp in self.outputs[k] for k in keys)

    def wait_answer(self, stamp, keys=("score", "instances", "instances_color", "color", "overlay", "obstacles",
                                       "points"),
                    timeout=10.0):
        wait_for(lambda: self.answered(stamp, keys), timeout, f"outputs for stamp {stamp}")
        with self.lock:
            return {k: self.outputs[k][stamp] for k in keys}

    def last_diag(self):
        with self.lock:
            return self.diagnostics[-1] if self.diagnostics else None

    def diag_values(self, status):
        return {kv.key: kv.value for kv in status.values}

    def close(self):
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(5)
        self.node.release_all()
        self.node.destroy_node()
        self.probe.destroy_node()


@pytest.fixture
def rig_factory(ros):
    rigs = []

    def make(**kw):
        rig = Rig(ros, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def road_frame(seed=0, size=(512, 1024)):
    """A synthroad driving frame with an obstacle: (image RGB, camera matrix K)."""
    fr = render_frame(seed, size=size, obstacles="obstacle")
    return fr.image, fr.camera.K


def blob_image(level, size=(256, 512)):
    img = np.zeros((*size, 3), np.uint8)
    img[150:200, 200:300] = level
    return img


# --- outputs ------------------------------------------------------------------------------------------------
def test_every_output_stamped_and_sized_like_the_input(rig_factory):
    rig = rig_factory()
    image, K = road_frame()
    info = CameraInfo(width=image.shape[1], height=image.shape[0], k=[float(v) for v in np.ravel(K)])
    rig.info_pub.publish(info)
    wait_for(lambda: rig.node._camera_info is not None, what="camera_info")
    for stamp in (1, 2, 3):
        bgr = np.ascontiguousarray(image[..., ::-1])
        rig.send(bgr, stamp, encoding="bgr8")
        out = rig.wait_answer(stamp)
        h, w = image.shape[:2]
        for key, enc in (("score", "32FC1"), ("instances", "16UC1"), ("instances_color", "bgr8"),
                         ("color", "bgr8"), ("overlay", "bgr8")):
            msg = out[key]
            if key in ("color", "overlay"):   # the input's rows, then the colour bar strip below them
                assert msg.height == h + strip_height(w) and msg.width >= w and msg.encoding == enc, key
            else:
                assert (msg.height, msg.width, msg.encoding) == (h, w, enc), key
            assert msg.header.frame_id == "camera_optical_frame"
        score = np.frombuffer(bytes(out["score"].data), np.float32).reshape(h, w)
        expected = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        np.testing.assert_allclose(score, expected, atol=1e-6)  # bgr8 input was converted correctly
        color = np.frombuffer(bytes(out["color"].data), np.uint8).reshape(-1, w, 3)
        np.testing.assert_array_equal(color[:h], colorize_scores(score))
        np.testing.assert_array_equal(color[h:], colour_bar_strip(w))
        inst = np.frombuffer(bytes(out["instances"].data), np.uint16).reshape(h, w)
        inst_color = np.frombuffer(bytes(out["instances_color"].data), np.uint8).reshape(h, w, 3)
        np.testing.assert_array_equal(inst_color, colorize_instances(inst))
        markers = out["obstacles"].markers
        assert markers[0].action == Marker.DELETEALL
        cubes = [m for m in markers if m.type == Marker.CUBE]
        assert inst.max() >= 1 and len(cubes) >= 1
        for m in cubes:
            assert m.header.frame_id == "camera_optical_frame" and m.header.stamp.sec == stamp
            assert m.pose.position.z > 0 and m.scale.x > 0 and m.scale.y > 0
        assert any(m.type == Marker.TEXT_VIEW_FACING for m in markers)
    snap = rig.node.stats.snapshot(rig.node.frames_dropped)
    assert snap["frames_processed"] == 3 and snap["bad_frames"] == 0


def test_best_effort_camera_info_with_reliable_image_input_still_gives_markers(rig_factory):
    """camera_info is subscribed best effort whatever input_reliability says, so it matches a
    best-effort camera_info publisher (a reliable subscription would not)."""
    from rclpy.qos import qos_profile_sensor_data

    rig = rig_factory(overrides={"input_reliability": "reliable"})
    info_pub = rig.probe.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
    wait_for(lambda: info_pub.get_subscription_count() > 0, what="camera_info matched best effort")
    image, K = road_frame()
    info = CameraInfo(width=image.shape[1], height=image.shape[0], k=[float(v) for v in np.ravel(K)])
    info_pub.publish(info)
    wait_for(lambda: rig.node._camera_info is not None, what="camera_info received")
    rig.send(image, 1)
    out = rig.wait_answer(1)
    assert [m for m in out["obstacles"].markers if m.type == Marker.CUBE]


class FixedObstacleDetector(BrightnessDetector):
    """One obstacle record with known geometry on every frame (contact point in the optical frame)."""

    def __call__(self, image, camera=None):
        from csl_ros.pipeline.instances import Obstacle

        det = super().__call__(image, camera)
        det.obstacles = [Obstacle(id=7, area_px=100, bbox=(0, 0, 10, 10), mean_score=0.8, max_score=0.9,
                                  contact_point_m=(1.0, 1.5, 10.0), distance_m=10.0, width_m=0.5, height_m=0.4)]
        return det


def test_obstacle_points_in_output_frame_match_hand_geometry(rig_factory):
    """Camera 2 m ahead of base_link, 1.5 m up, turned 90 deg left: the optical point (1 right,
    1.5 down, 10 forward) is at x = 2 + 1, y = 10, z = 1.5 - 1.5 in base_link."""
    import struct

    rig = rig_factory(factory=FixedObstacleDetector, overrides={
        "output_frame": "base_link", "mount_x_m": 2.0, "mount_z_m": 1.5, "mount_yaw_deg": 90.0})
    rig.send(blob_image(200), 1)
    out = rig.wait_answer(1)
    cloud = out["points"]
    assert cloud.header.frame_id == "base_link" and cloud.header.stamp.sec == 1 and cloud.width == 1
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "id", "score", "width_m", "height_m", "age", "coasted"]
    x, y, z, ident, score, w, h, age, coasted = struct.unpack("<fffIfffII", bytes(cloud.data))
    assert coasted == 0
    assert (x, y, z) == pytest.approx((3.0, 10.0, 0.0), abs=1e-5)
    assert (ident, score, w, h) == (7, pytest.approx(0.9), pytest.approx(0.5), pytest.approx(0.4))
    cube = next(m for m in out["obstacles"].markers if m.type == Marker.CUBE)
    assert cube.header.frame_id == "base_link" and cube.id == 7
    # the cube stands on the road: its centre is 0.2 m above the contact point (half its height)
    assert cube.pose.position.z == pytest.approx(0.2, abs=1e-5)


def test_markers_expire_after_the_camera_stops_and_clear_on_deactivate(rig_factory):
    rig = rig_factory(factory=FixedObstacleDetector)
    for stamp in range(1, 7):  # ~10 Hz: the lifetime is two periods of the node's output
        rig.send(blob_image(200), stamp)
        rig.wait_answer(stamp)
        time.sleep(0.1)
    with rig.lock:
        markers = rig.outputs["obstacles"][6].markers
    rate = rig.node.stats.processed.rate_hz()
    lifetimes = [m.lifetime.sec + m.lifetime.nanosec * 1e-9 for m in markers[1:]]
    assert lifetimes and all(lt == pytest.approx(2.0 / rate, rel=0.3) for lt in lifetimes)
    assert 0.1 < lifetimes[0] < 0.5  # 2 periods of ~0.1-0.15 s: gone in rviz soon after the camera stops
    with rig.lock:
        rig.outputs["obstacles"].clear()
    assert _change_state(rig, Transition.TRANSITION_DEACTIVATE)
    wait_for(lambda: rig.outputs["obstacles"], what="markers cleared on deactivate")
    with rig.lock:
        (cleared,) = rig.outputs["obstacles"].values()
    assert [m.action for m in cleared.markers] == [Marker.DELETEALL]


def test_optional_outputs_can_be_switched_off_at_run_time(rig_factory):
    rig = rig_factory()
    rig.node.set_parameters([Parameter("publish_color", value=False), Parameter("publish_overlay", value=False)])
    rig.send(blob_image(200), 1)
    rig.wait_answer(1, keys=("score", "instances", "obstacles"))
    time.sleep(0.3)
    assert not rig.answered(1, keys=("color",)) and not rig.answered(1, keys=("overlay",))


# --- parameters ---------------------------------------------------------------------------------------------
def _set_remote(rig, **values):
    """Set parameters through the node's parameter service, as `ros2 param set` does."""
    client = rig.probe.create_client(SetParameters, f"{rig.ns}/csl_detector/set_parameters")
    assert client.wait_for_service(timeout_sec=5)
    req = SetParameters.Request()
    for name, value in values.items():
        pv = ParameterValue()
        if isinstance(value, bool):
            pv.type, pv.bool_value = ParameterType.PARAMETER_BOOL, value
        elif isinstance(value, float):
            pv.type, pv.double_value = ParameterType.PARAMETER_DOUBLE, value
        elif isinstance(value, int):
            pv.type, pv.integer_value = ParameterType.PARAMETER_INTEGER, value
        else:
            pv.type, pv.string_value = ParameterType.PARAMETER_STRING, value
        req.parameters.append(ParameterMsg(name=name, value=pv))
    future = client.call_async(req)
    wait_for(future.done, 5, "set_parameters response")
    rig.probe.destroy_client(client)
    return future.result().results


def test_parameters_are_declared_with_descriptors(rig_factory):
    rig = rig_factory(activate=False)
    d = rig.node.describe_parameter("score_threshold")
    assert "anomaly score" in d.description and not d.read_only
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.0, 1.0)
    d = rig.node.describe_parameter("min_instance_area")
    assert d.integer_range[0].from_value == 0
    d = rig.node.describe_parameter("teacher")
    assert "sml" in d.additional_constraints and "reload" in d.additional_constraints
    assert rig.node.get_parameter("diagnostics_period_s").value == 0.2  # override applied


def test_live_threshold_change_takes_effect_on_the_next_frame(rig_factory):
    rig = rig_factory()
    img = blob_image(153)  # brightness 0.6
    rig.send(img, 1)
    out = rig.wait_answer(1)
    assert np.frombuffer(bytes(out["instances"].data), np.uint16).max() == 1
    (res,) = _set_remote(rig, score_threshold=0.7)
    assert res.successful, res.reason
    rig.send(img, 2)
    out = rig.wait_answer(2)
    assert np.frombuffer(bytes(out["instances"].data), np.uint16).max() == 0
    assert [m.action for m in out["obstacles"].markers] == [Marker.DELETEALL]  # stale markers removed
    assert rig.detectors[0].seen_thresholds == [DetectorConfig().score_threshold, 0.7]


def test_float_parameter_accepts_an_integer(rig_factory):
    """`ros2 param set <node> score_threshold 1` sends an integer: it is the float 1.0."""
    rig = rig_factory()
    (res,) = _set_remote(rig, score_threshold=1)
    assert res.successful, res.reason
    assert rig.node.get_parameter("score_threshold").value == 1.0
    assert rig.node.detector_config.score_threshold == 1.0
    (res,) = _set_remote(rig, score_threshold=2)  # still range-checked
    assert not res.successful and "out of range" in res.reason


@pytest.mark.parametrize("values, words", [
    ({"score_threshold": 1.5}, "out of range"),
    ({"score_threshold": -0.1}, "out of range"),
    ({"min_instance_area": -5}, "out of range"),
    ({"teacher": "bogus"}, "teacher='bogus' is not one of"),
    ({"fusion_mode": "sum"}, "is not one of"),
    ({"score_threshold": "high"}, "Wrong parameter type"),
    ({"teacher": "energy"}, "teacher needs a model reload: deactivate/cleanup the node first"),
    ({"use_compressed": True}, "use_compressed needs a model reload"),
])
def test_invalid_or_reload_parameters_rejected_with_reason(rig_factory, values, words):
    rig = rig_factory()
    (res,) = _set_remote(rig, **values)
    assert not res.successful and words in res.reason
    # Never clamped or half-applied: the parameter and the node's config keep the old value.
    name = next(iter(values))
    owner = DetectorConfig if name in DetectorConfig.__dataclass_fields__ else NodeConfig
    default = getattr(owner(), name)
    assert rig.node.get_parameter(name).value == default
    cfg = rig.node.detector_config if owner is DetectorConfig else rig.node.node_config
    assert getattr(cfg, name) == default


def test_reload_parameter_accepted_while_inactive_and_applied_on_activate(rig_factory):
    rig = rig_factory()
    assert _change_state(rig, Transition.TRANSITION_DEACTIVATE)
    assert rig.node.lifecycle_state == "inactive"
    (res,) = _set_remote(rig, teacher="energy")
    assert res.successful, res.reason
    assert rig.node.detector is rig.detectors[0]  # not rebuilt until activation
    assert _change_state(rig, Transition.TRANSITION_ACTIVATE)  # rebuilds with the new teacher
    rig.wait_connected()  # the rebuilt topics are new endpoints
    assert len(rig.detectors) == 2 and rig.detectors[0].closed
    assert rig.node.detector.config.teacher == "energy"
    rig.send(blob_image(200), 5)
    rig.wait_answer(5)


# --- lifecycle ----------------------------------------------------------------------------------------------
def _change_state(rig, transition_id):
    client = rig.probe.create_client(ChangeState, f"{rig.ns}/csl_detector/change_state")
    assert client.wait_for_service(timeout_sec=5)
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
    wait_for(future.done, 10, "change_state response")
    rig.probe.destroy_client(client)
    return future.result().success


def test_lifecycle_transitions_through_the_services(rig_factory):
    rig = rig_factory(activate=False)
    assert rig.node.lifecycle_state == "unconfigured" and rig.node.detector is None
    # Unconfigured with a camera publishing: ERROR in diagnostics, and said in the log.
    wait_for(lambda: rig.last_diag() is not None and rig.last_diag().level == b"\x02", what="ERROR diagnostics")
    assert "unconfigured" in rig.last_diag().message
    wait_for(lambda: any("unconfigured" in m for m in rig.logs), what="unconfigured log line")

    assert _change_state(rig, Transition.TRANSITION_CONFIGURE)
    assert rig.node.lifecycle_state == "inactive" and rig.detectors[0].warmed_up
    wait_for(lambda: "inactive" in rig.last_diag().message and rig.last_diag().level == b"\x01",
             what="WARN inactive diagnostics")
    rig.wait_connected()
    rig.send(blob_image(200), 1)  # ignored while inactive, and the log says so
    wait_for(lambda: rig.node.stats.ignored_inactive >= 1, what="ignored frame")
    wait_for(lambda: any("node is inactive" in m and "ignored" in m for m in rig.logs), what="inactive log line")
    assert not rig.answered(1, keys=("score",))

    assert _change_state(rig, Transition.TRANSITION_ACTIVATE)
    # Start-up grace: right after activation, no false "nothing received".
    wait_for(lambda: "waiting for the first frame" in rig.last_diag().message, what="start-up grace")
    assert rig.last_diag().level == b"\x00"
    rig.send(blob_image(200), 2)
    rig.wait_answer(2)
    wait_for(lambda: "no camera_info received" in rig.last_diag().message, what="camera_info missing")
    assert rig.diag_values(rig.last_diag())["camera_info"] == "missing"
    rig.info_pub.publish(CameraInfo(width=512, height=256, k=[400.0, 0, 256, 0, 400.0, 128, 0, 0, 1]))
    rig.send(blob_image(200), 3)
    rig.wait_answer(3)
    wait_for(lambda: rig.last_diag().level == b"\x00", what="OK diagnostics")
    values = rig.diag_values(rig.last_diag())
    assert values["lifecycle_state"] == "active" and values["backend"] == "brightness" and values["device"] == "cpu"
    assert values["camera_info"] == "calibrated" and float(values["camera_info_age_s"]) < 5
    for key in ("input_rate_hz", "processed_rate_hz", "frames_dropped", "latency_p50_ms", "latency_p95_ms",
                "latency_p99_ms", "bad_frames"):
        assert key in values

    assert _change_state(rig, Transition.TRANSITION_DEACTIVATE)
    rig.send(blob_image(200), 4)
    wait_for(lambda: rig.node.stats.ignored_inactive >= 2, what="ignored frame after deactivate")
    assert not rig.answered(4, keys=("score",))
    assert _change_state(rig, Transition.TRANSITION_CLEANUP)
    assert rig.node.lifecycle_state == "unconfigured" and rig.detectors[0].closed and rig.node.detector is None
    assert not _change_state(rig, Transition.TRANSITION_ACTIVATE)  # invalid from unconfigured


def test_configure_failure_is_reported_and_node_stays_unconfigured(rig_factory):
    def broken(cfg):
        raise FileNotFoundError("student checkpoint /nope/student.safetensors not found")

    rig = rig_factory(factory=broken, activate=False)
    assert not rig.node.configure_and_activate()
    assert rig.node.lifecycle_state == "unconfigured"
    wait_for(lambda: any("/nope/student.safetensors" in m for m in rig.logs), what="configure error log")
    cfg = rig.node.detector_config    # sizes are HxW everywhere, the log included
    size = f"input {cfg.input_height}x{cfg.input_width} (HxW)"
    wait_for(lambda: any("loading the detector" in m and size in m for m in rig.logs), what="HxW in the log")


def test_parameters_follow_the_settings_the_detector_took_from_its_checkpoint(rig_factory):
    """Detector.from_config may take input size / threshold from the student's metadata for
    parameters left at their defaults: the node's parameters then say what is used."""
    import dataclasses

    def from_checkpoint(cfg):
        return BrightnessDetector(dataclasses.replace(cfg, input_height=96, score_threshold=0.4))

    rig = rig_factory(factory=from_checkpoint)
    assert rig.node.get_parameter("input_height").value == 96
    assert rig.node.get_parameter("score_threshold").value == 0.4
    assert rig.node.detector_config.score_threshold == 0.4
    wait_for(lambda: any("from the student checkpoint" in m for m in rig.logs), what="log line")
    rig.send(blob_image(153), 1)
    rig.wait_answer(1)
    assert rig.detectors[0].seen_thresholds == [0.4]


def test_a_rebuild_takes_the_new_teachers_threshold_not_the_one_shown(rig_factory):
    """The threshold a checkpoint gave for one teacher is not the user's: after a switch to another
    teacher the rebuilt detector takes that teacher's, and the parameter shows it; a threshold the
    user set is kept through rebuilds."""
    import dataclasses

    default = DetectorConfig().score_threshold
    tuned = {"maxlogit": 0.05, "msp": 0.3, "energy": 0.02}

    def from_checkpoint(cfg):   # as Detector.from_config with per-teacher thresholds in the metadata
        thr = tuned[cfg.teacher] if cfg.score_threshold == default else cfg.score_threshold
        return BrightnessDetector(dataclasses.replace(cfg, score_threshold=thr))

    rig = rig_factory(factory=from_checkpoint, overrides={"teacher": "maxlogit"})
    assert rig.node.get_parameter("score_threshold").value == 0.05
    for teacher, want in (("msp", 0.3), ("energy", 0.02)):
        assert _change_state(rig, Transition.TRANSITION_DEACTIVATE)
        (res,) = _set_remote(rig, teacher=teacher)
        assert res.successful, res.reason
        assert _change_state(rig, Transition.TRANSITION_ACTIVATE)
        assert rig.node.detector.config.score_threshold == want
        assert rig.node.get_parameter("score_threshold").value == want
    (res,) = _set_remote(rig, score_threshold=0.5)
    assert res.successful, res.reason
    assert _change_state(rig, Transition.TRANSITION_DEACTIVATE)
    (res,) = _set_remote(rig, teacher="msp")
    assert _change_state(rig, Transition.TRANSITION_ACTIVATE)
    assert rig.node.detector.config.score_threshold == 0.5


def test_build_engine_reports_backend(rig_factory):
    rig = rig_factory(activate=False)
    assert build_engine(rig.node) == 0
    assert rig.detectors[-1].closed
    rig2 = rig_factory(activate=False, overrides={"backend": "tensorrt"})
    assert build_engine(rig2.node) == 1  # the fake detector "falls back" to another backend
    wait_for(lambda: any("requested backend tensorrt" in m for m in rig2.logs), what="fallback error log")


# --- back-pressure ------------------------------------------------------------------------------------------
def test_slow_model_processes_only_the_newest_frame(rig_factory):
    delay = 0.25
    rig = rig_factory(factory=lambda cfg: BrightnessDetector(cfg, delay_s=delay))
    img = blob_image(200)
    n = 20
    for stamp in range(1, n + 1):  # 50 Hz camera, 4 Hz model
        rig.send(img, stamp)
        time.sleep(0.02)
    rig.wait_answer(n, keys=("score",), timeout=5)  # the newest frame is always processed
    time.sleep(delay + 0.2)
    with rig.lock:
        processed = sorted(rig.outputs["score"])
    snap = rig.node.stats.snapshot(rig.node.frames_dropped)
    assert len(processed) <= 5 < n, processed  # no backlog was worked through
    assert snap["frames_dropped"] >= n - 5 - 2
    assert snap["frames_dropped"] + snap["frames_processed"] == snap["frames_received"]
    # Latency (receipt -> published) stays bounded by about two inference times, never the queue length.
    assert snap["latency_p99_ms"] < 1000 * (2 * delay + 0.3)


# --- bad input ----------------------------------------------------------------------------------------------
W, H = 64, 32
_GOOD = blob_image(200, size=(H, W))

BAD_FRAMES = {
    # rgb8 header on a mono8-sized buffer: step is one byte per pixel
    "wrong_encoding": (dict(height=H, width=W, encoding="rgb8", step=W, data=bytes(W * H)), "step_mismatch"),
    "step_not_matching_width": (dict(height=H, width=W, encoding="rgb8", step=3 * W - 1, data=bytes(3 * W * H)),
                                "step_mismatch"),
    "data_shorter_than_height_step": (dict(height=H, width=W, encoding="rgb8", step=3 * W, data=bytes(3 * W * H - 7)),
                                      "data_too_short"),
    "zero_size": (dict(height=0, width=0, encoding="rgb8", step=0, data=b""), "zero_size"),
    "absurd_size": (dict(height=100_000, width=100_000, encoding="rgb8", step=300_000, data=bytes(16)), "absurd_size"),
    "nan_in_float_image": (dict(height=H, width=W, encoding="32FC1", step=4 * W,
                                data=np.where(np.arange(W * H) % 7 == 0, np.nan, 0.5).astype(np.float32).tobytes()),
                           "non_finite"),
    "unsupported_encoding": (dict(height=H, width=W, encoding="bayer_rggb8", step=W, data=bytes(W * H)),
                             "unsupported_encoding"),
    "yuv422_odd_width": (dict(height=H, width=W - 1, encoding="yuv422", step=2 * (W - 1), data=bytes(2 * (W - 1) * H)),
                         "odd_width"),
    "yuyv_width_1": (dict(height=H, width=1, encoding="yuyv", step=2, data=bytes(2 * H)), "odd_width"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_input_is_counted_logged_and_skipped(rig_factory, case):
    fields, reason = BAD_FRAMES[case]
    rig = rig_factory()
    rig.send(_GOOD, 1)
    rig.wait_answer(1, keys=("score",))
    fields = dict(fields)
    fields["data"] = bytes(fields["data"])
    rig.send_raw(**fields)
    wait_for(lambda: rig.node.stats.bad_frames[reason] == 1, what=f"bad frame counted as {reason}")
    wait_for(lambda: any(reason in m and "bad input frame" in m for m in rig.logs), what="bad-frame log line")
    rig.send(_GOOD, 2)  # the next good frame is processed
    rig.wait_answer(2, keys=("score", "instances"))
    wait_for(lambda: rig.diag_values(rig.last_diag()).get(f"bad_frames.{reason}") == "1",
             what="reason in /diagnostics")
    assert rig.node.lifecycle_state == "active"


def test_corrupt_compressed_image_is_skipped(rig_factory):
    rig = rig_factory(overrides={"use_compressed": True}, compressed=True)
    ok, jpeg = cv2.imencode(".jpg", _GOOD[..., ::-1])
    assert ok

    def send(data, stamp):
        msg = CompressedImage(format="jpeg", data=bytes(data))
        msg.header.stamp.sec = stamp
        rig.pub.publish(msg)

    send(jpeg.tobytes(), 1)
    out = rig.wait_answer(1, keys=("score",))
    assert (out["score"].height, out["score"].width) == (H, W)
    corrupt = bytearray(jpeg.tobytes())
    corrupt[2:] = os.urandom(len(corrupt) - 2)[: len(corrupt) - 2]  # keeps the JPEG magic, garbage after
    send(corrupt[:40], 2)
    wait_for(lambda: rig.node.stats.bad_frames["decode_failed"] == 1, what="corrupt jpeg counted")
    wait_for(lambda: any("decode_failed" in m for m in rig.logs), what="decode log line")
    send(jpeg.tobytes(), 3)
    rig.wait_answer(3, keys=("score",))
    huge = bytearray(cv2.imencode(".png", _GOOD)[1].tobytes())
    huge[16:24] = (100_000).to_bytes(4, "big") * 2  # the header claims 100000x100000
    send(huge, 4)
    wait_for(lambda: rig.node.stats.bad_frames["absurd_size"] == 1, what="huge png counted as absurd_size")
    send(jpeg.tobytes(), 5)
    rig.wait_answer(5, keys=("score",))
    assert rig.node.stats.publish_errors == 0 and rig.node.stats.detector_errors == 0


def test_diagnostics_return_to_nothing_received_after_an_error(rig_factory):
    """A past error does not hide a camera that stopped: the level follows a recent window."""
    rig = rig_factory()
    rig.info_pub.publish(CameraInfo(width=W, height=H, k=[100.0, 0, 32, 0, 100.0, 16, 0, 0, 1]))
    rig.send(_GOOD, 1)
    rig.wait_answer(1, keys=("score",))
    rig.send_raw(**BAD_FRAMES["yuyv_width_1"][0])
    wait_for(lambda: "bad input frame" in rig.last_diag().message, what="bad-frame WARN")
    # The camera stops (its publisher stays): within a few periods "nothing received", not the old error.
    wait_for(lambda: "nothing received" in rig.last_diag().message, timeout=10, what="nothing received")
    assert rig.node.stats.publish_errors == 0


# --- large images through DDS, from another process ----------------------------------------------------------
PUBLISHER = textwrap.dedent("""
    import sys, time
    import numpy as np, rclpy
    from sensor_msgs.msg import Image
    from rclpy.qos import qos_profile_sensor_data
    from csl_ros.image_codec import fill_image_msg
    ns, n, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rclpy.init()
    node = rclpy.create_node("camera", namespace=ns)
    pub = node.create_publisher(Image, "image", qos_profile_sensor_data)
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for stamp in range(1, n + 1):
        msg = fill_image_msg(Image(), img, "rgb8")
        msg.header.stamp.sec = stamp
        pub.publish(msg)
        time.sleep(float(sys.argv[5]))
    time.sleep(1.0)
    rclpy.shutdown()
""")


@pytest.mark.parametrize("discovery_range", [None, "LOCALHOST"], ids=["range_unset", "LOCALHOST"])
def test_full_size_frames_through_dds_from_another_process(discovery_range):
    """1024x2048 rgb8 (6 MB) best effort between processes, with ROS_AUTOMATIC_DISCOVERY_RANGE unset and
    LOCALHOST: every frame reaches the node (counted) and gets its answer. The camera process has the
    setting docs/ros.md asks of a camera driver (the large-image Fast DDS profile)."""
    n, h, w = 5, 1024, 2048
    domain = (DOMAIN_ID + 17) % 200 + 1
    env = dict(_node_env(), ROS_DOMAIN_ID=str(domain))
    if discovery_range:
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery_range
    with private_ros_context(domain, large_data=True, discovery_range=discovery_range) as context:
        rig = Rig(context, overrides={"publish_overlay": False, "publish_color": False})
        try:
            proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, rig.ns, str(n), str(h), str(w), "0.6"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                for stamp in range(1, n + 1):
                    out = rig.wait_answer(stamp, keys=("score", "instances"), timeout=30)
                    assert (out["score"].height, out["score"].width) == (h, w)
                    assert (out["instances"].height, out["instances"].width) == (h, w)
            finally:
                try:
                    output = proc.communicate(timeout=30)[0]
                except subprocess.TimeoutExpired:
                    proc.kill()
                    output = proc.communicate()[0]
            assert proc.returncode == 0, output
            snap = rig.node.stats.snapshot(rig.node.frames_dropped)
            assert snap["frames_received"] == n and snap["frames_processed"] == n
        finally:
            rig.close()


DEFAULT_ENV_SUBSCRIBER = textwrap.dedent("""
    import sys, time
    import rclpy
    from sensor_msgs.msg import Image
    topic = sys.argv[1]
    rclpy.init()
    node = rclpy.create_node("user_tool")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and topic not in dict(node.get_topic_names_and_types()):
        rclpy.spin_once(node, timeout_sec=0.1)
    print("visible", topic in dict(node.get_topic_names_and_types()), flush=True)
    got = []
    node.create_subscription(Image, topic, got.append, 10)  # what `ros2 topic echo` subscribes with
    while time.monotonic() < deadline and not got:
        rclpy.spin_once(node, timeout_sec=0.1)
    print("received", " ".join(f"{m.width}x{m.height}:{m.encoding}" for m in got[:1]) or "nothing", flush=True)
    rclpy.shutdown()
""")


def _default_env(**extra):
    """The environment of a shell where nobody configured DDS (no Fast DDS variables)."""
    env = {k: v for k, v in _node_env().items() if not k.startswith(("FASTDDS_", "FASTRTPS_"))}
    return dict(env, **extra)


@pytest.mark.timeout(240)
def test_default_environment_tool_reads_the_node_started_like_the_launch_file(ros):
    """csl_node as driving.launch.py starts it (params file, auto_activate, real shipped models), and a
    ROS 2 tool in a default environment (no Fast DDS settings): the tool sees the node's topic and
    reads its full-size anomaly_score (512x1024 float32, 2 MB)."""
    ns = f"/t{next(_COUNTER)}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    node = subprocess.Popen([sys.executable, "-m", "csl_ros.ros.csl_node", "--ros-args", "--params-file",
                             os.path.join(root, "config", "driving.yaml"), "-r", f"__ns:={ns}",
                             "-p", "device:=cpu", "-p", "backend:=eager"],
                            env=_default_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tool = subprocess.Popen([sys.executable, "-c", DEFAULT_ENV_SUBSCRIBER, f"{ns}/csl_detector/anomaly_score"],
                            env=_default_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    camera = rclpy.create_node("camera", namespace=ns, context=ros)
    try:
        pub = camera.create_publisher(Image, "image", 1)
        image, _ = road_frame(size=(512, 1024))
        stamp, deadline = 0, time.monotonic() + 200
        while tool.poll() is None and node.poll() is None and time.monotonic() < deadline:
            stamp += 1
            msg = fill_image_msg(Image(), image, "rgb8")
            msg.header.stamp.sec = stamp
            pub.publish(msg)
            time.sleep(1.0)
        output = tool.communicate(timeout=30)[0]
        assert "visible True" in output and "received 1024x512:32FC1" in output, output
    finally:
        for proc in (tool, node):
            if proc.poll() is None:
                proc.send_signal(__import__("signal").SIGINT)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
        camera.destroy_node()


# --- the csl_node executable -------------------------------------------------------------------------------
def _node_env():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # os.environ holds the large-image Fast DDS profile (test/conftest.py): the camera driver's setting.
    return dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID),
                PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))


@pytest.mark.parametrize("args, words", [
    (["--ros-args", "-p", "teacher:=bogus"], "teacher='bogus' is not one of"),
    (["--ros-args", "-p", "device:=tpu"], "device='tpu' is not a device"),
    (["--ros-args", "--params-file", "BROKEN"], "Couldn't parse params file"),
    (["--ros-args", "--params-file", "/nonexistent/params.yaml"], "Error opening YAML file"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_csl_node_rejects_bad_arguments_with_one_clear_line(tmp_path, args, words):
    broken = tmp_path / "broken.yaml"
    broken.write_text("/**:\n  ros__parameters:\n    teacher: [sml\n")
    args = [str(broken) if a == "BROKEN" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "csl_ros.ros.csl_node", *args],
                          env=_node_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("csl_node: error:") and words in lines[0], proc.stderr


def test_csl_node_reports_unconfigured_and_exits_cleanly_on_sigint(ros):
    import signal

    ns = f"/t{next(_COUNTER)}"
    probe = rclpy.create_node("probe", namespace=ns, context=ros)
    executor = SingleThreadedExecutor(context=ros)
    executor.add_node(probe)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    statuses = []
    probe.create_subscription(DiagnosticArray, "/diagnostics",
                              lambda m: statuses.extend(s for s in m.status if s.name.startswith(f"{ns}/csl_detector:")), 10)
    proc = subprocess.Popen([sys.executable, "-m", "csl_ros.ros.csl_node", "--ros-args", "-r", f"__ns:={ns}",
                             "-p", "diagnostics_period_s:=0.2"], env=_node_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: statuses, timeout=60, what="diagnostics of the csl_node process")
        assert statuses[-1].level == b"\x02" and "unconfigured" in statuses[-1].message
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
        assert "Traceback" not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        executor.shutdown(timeout_sec=5)
        thread.join(5)
        probe.destroy_node()


# --- the real detector --------------------------------------------------------------------------------------
def _random_weight_detector(cfg):
    """The real CSL Detector (scheme 2, r18_fast student, MSP teacher) with random weights: the real
    contract and code path; only the scores are meaningless."""
    import dataclasses

    import torch

    from csl_ros.model import build_student, get_preset
    from csl_ros.pipeline import Detector
    from csl_ros.teachers.calibration import Calibration
    from csl_ros.teachers.segmenter import DEFAULT_PRESET, ClosedSetSegmenter
    from csl_ros.teachers.segmenter import preset as seg_preset
    from csl_ros.teachers.teacher import Teacher

    torch.manual_seed(0)
    teacher = Teacher("msp", ClosedSetSegmenter(seg_preset(DEFAULT_PRESET)), "msp", Calibration("identity"))
    return Detector(dataclasses.replace(cfg, teacher="msp"), student=build_student(get_preset("r18_fast")),
                    teacher=teacher)


@pytest.mark.slow
def test_real_detector_behind_the_node(rig_factory):
    rig = rig_factory(factory=_random_weight_detector,
                      overrides={"input_height": 128, "input_width": 256, "device": "cpu", "backend": "eager",
                                 "teacher": "msp"})
    image, K = road_frame(size=(256, 512))
    rig.info_pub.publish(CameraInfo(width=512, height=256, k=[float(v) for v in np.ravel(K)]))
    wait_for(lambda: rig.node._camera_info is not None, what="camera_info")
    rig.send(image, 1)
    out = rig.wait_answer(1, timeout=60)
    assert (out["score"].height, out["score"].width) == (256, 512)
    score = np.frombuffer(bytes(out["score"].data), np.float32)
    assert np.isfinite(score).all() and score.min() >= 0 and score.max() <= 1
    results = _set_remote(rig, score_threshold=0.9, min_instance_area=0)
    assert all(r.successful for r in results), [r.reason for r in results]
    rig.send(image, 2)
    out = rig.wait_answer(2, timeout=60)
    cfg = rig.node.detector.config  # the real Detector.update took the run-time changes
    assert (cfg.score_threshold, cfg.min_instance_area) == (0.9, 0)
    inst = np.frombuffer(bytes(out["instances"].data), np.uint16).reshape(256, 512)
    cubes = [m for m in out["obstacles"].markers if m.type == Marker.CUBE]
    assert len(cubes) <= int(inst.max())  # one per instance with a ground contact point
    score2 = np.frombuffer(bytes(out["score"].data), np.float32).reshape(256, 512)
    assert (score2[inst > 0] >= 0.9).all()  # instances are made at the new threshold
    wait_for(lambda: rig.diag_values(rig.last_diag()).get("backend") == "eager", what="backend in diagnostics")
    assert rig.diag_values(rig.last_diag())["backends"] == "student eager, teacher eager"


def test_node_with_hf_rba_teacher_and_mask2former_regions(rig_factory, tiny_hf_models):
    pytest.importorskip("transformers")
    from csl_ros.pipeline import Detector

    rig = rig_factory(factory=Detector.from_config,
                      overrides={"scheme": "2", "teacher": "rba", "regions": "mask2former",
                                 "teacher_path": str(tiny_hf_models["mask2former"]), "input_height": 64,
                                 "input_width": 128, "device": "cpu", "backend": "eager"})
    rig.send(blob_image(200, size=(64, 128)), 1)
    out = rig.wait_answer(1, timeout=60)
    score = np.frombuffer(bytes(out["score"].data), np.float32)
    assert score.size == 64 * 128 and np.isfinite(score).all() and 0 <= score.min() <= score.max() <= 1
    wait_for(lambda: "closed-set Mask2Former" in rig.diag_values(rig.last_diag()).get("regions", ""),
             what="regions named in the diagnostics")
    assert rig.diag_values(rig.last_diag())["teacher_out_of_range_pixels"] == "0"
