"""The ROS 2 lifecycle node ``csl_detector``: camera images in, anomaly scores, OOD instances,
obstacle markers and diagnostics out. Glue only: the model work is :class:`csl_ros.pipeline.Detector`.

Lifecycle: configure builds the detector (loads models, builds or loads the cached engine, warms
up) and the topics; activate starts the inference worker; deactivate stops it; cleanup/shutdown
release the detector (and its GPU memory). Back-pressure: the subscription callback only drops the
message into a one-frame slot and returns; a worker thread converts and processes the newest frame,
so a camera faster than inference never builds a queue (replaced frames are counted as dropped).
"""
from __future__ import annotations

import dataclasses
import re
import sys
import threading
import time
from typing import Any, Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from csl_ros.config import MODEL_SETTINGS, DetectorConfig, NodeConfig, apply_overrides
from csl_ros.ros.dds import use_large_image_profile
from csl_ros.ros.image_conversion import ImageFormatError, compressed_msg_to_rgb, fill_image_msg, image_msg_to_rgb
from csl_ros.ros.markers import Mounting, clear_markers_msg, marker_array_msg, obstacle_points_msg
from csl_ros.ros.params import parameter_specs, plan_parameter_changes
from csl_ros.ros.stats import LatestFrameSlot, NodeStats, Throttle, bad_frame_reason, diagnostic_summary

NODE_NAME = "csl_detector"
LOG_PERIOD_S = 5.0  # throttle for repeated warnings (per bad-frame reason, inactive node)
# After activation, the first frame may take this long (DDS discovery, a camera starting up) before
# /diagnostics reports "nothing received".
STARTUP_GRACE_S = 5.0


def default_detector_factory(cfg: DetectorConfig):
    from csl_ros.pipeline import Detector

    return Detector.from_config(cfg)


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
                      else ReliabilityPolicy.RELIABLE)


def _descriptor(spec) -> ParameterDescriptor:
    d = ParameterDescriptor(description=spec.description, additional_constraints=spec.additional_constraints,
                            read_only=False)
    if spec.range is not None and spec.type is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                     to_value=float(spec.range[1]), step=0.0)]
    elif spec.range is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return d


class CslDetectorNode(LifecycleNode):
    """Managed node; ``detector_factory(DetectorConfig)`` builds the detector (injectable for tests)."""

    def __init__(self, *, detector_factory: Callable[[DetectorConfig], Any] | None = None,
                 node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.detector_factory = detector_factory or default_detector_factory
        self._specs = parameter_specs()
        for spec in self._specs:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        values = {s.name: self.get_parameter(s.name).value for s in self._specs}
        owners = {s.name: s.owner for s in self._specs}
        # Choices are not checked by rclpy's descriptors: validate the start-up values with the schema.
        self._det_cfg = apply_overrides(DetectorConfig(), {k: v for k, v in values.items() if owners[k] == "detector"})
        self._node_cfg = apply_overrides(NodeConfig(), {k: v for k, v in values.items() if owners[k] == "node"})
        self._cfg_lock = threading.Lock()
        self._adopting = False
        self._pending: dict[str, Any] = {}  # run-time detector changes, applied before the next frame
        self.add_pre_set_parameters_callback(self._integers_as_floats)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.stats = NodeStats()
        self._slot: LatestFrameSlot = LatestFrameSlot()
        self._state = "unconfigured"
        self._detector = None
        self._built_with: tuple | None = None
        self._pubs: dict[str, Any] = {}
        self._subs: list = []
        self._camera_info: tuple | None = None  # (K, width, height)
        self._camera_info_state, self._camera_info_at = "missing", None  # or "uncalibrated"/"calibrated", time
        self._active_since: float | None = None
        self._last_marker_header = None  # of the latest ~/obstacles message, for clearing them
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._backend_device = ("", "", "")
        self._bad_log = Throttle(LOG_PERIOD_S)
        self._state_log = Throttle(LOG_PERIOD_S)
        self._last_report = 0  # frames received at the previous diagnostics
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(self._node_cfg.diagnostics_period_s, self._publish_diagnostics)

    # --- public state ---------------------------------------------------------------------------------
    @property
    def lifecycle_state(self) -> str:
        return self._state

    @property
    def detector_config(self) -> DetectorConfig:
        return self._det_cfg

    @property
    def node_config(self) -> NodeConfig:
        return self._node_cfg

    @property
    def detector(self):
        return self._detector

    @property
    def frames_dropped(self) -> int:
        return self._slot.dropped

    @property
    def input_topic(self) -> str:
        return self.resolve_topic_name("image/compressed" if self._node_cfg.use_compressed else "image")

    def configure_and_activate(self) -> bool:
        ok = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
        return ok and self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    # --- parameters -------------------------------------------------------------------------------------
    def _integers_as_floats(self, params: list) -> list:
        """``ros2 param set <node> score_threshold 1`` sends an integer: make it the float it means
        (rclpy would refuse it as the wrong type before any validation)."""
        floats = {s.name for s in self._specs if s.type is float}
        return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
                if p.name in floats and p.type_ == Parameter.Type.INTEGER else p for p in params]

    def _on_set_parameters(self, params) -> SetParametersResult:
        if self._adopting:  # the detector's own values, already in use (see _adopt_model_settings)
            with self._cfg_lock:
                self._det_cfg = dataclasses.replace(self._det_cfg, **{p.name: p.value for p in params})
            return SetParametersResult(successful=True)
        with self._cfg_lock:
            try:
                plan = plan_parameter_changes(self._det_cfg, self._node_cfg, {p.name: p.value for p in params},
                                              active=self._state == "active")
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            period_changed = plan.node_config.diagnostics_period_s != self._node_cfg.diagnostics_period_s
            self._det_cfg, self._node_cfg = plan.detector_config, plan.node_config
            self._pending.update(plan.runtime_detector_changes)
        if period_changed:
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(self._node_cfg.diagnostics_period_s, self._publish_diagnostics)
        if plan.reload_changes:
            self.get_logger().info(f"{', '.join(plan.reload_changes)} changed: applied when the node is next "
                                   "configured or activated (models and topics are rebuilt then)")
        return SetParametersResult(successful=True)

    def _reload_key(self) -> tuple:
        return tuple(getattr(self._det_cfg if s.owner == "detector" else self._node_cfg, s.name)
                     for s in self._specs if s.reload)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._build()
        except Exception as exc:  # a missing model file etc.: say why and stay unconfigured
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._detector is None or self._built_with != self._reload_key():
            self.get_logger().info("reload parameters changed since configure: rebuilding the detector")
            self._release()
            result = self.on_configure(state)
            if result != TransitionCallbackReturn.SUCCESS:
                return result
        result = super().on_activate(state)  # enables the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._stop.clear()
        self._slot.reopen()
        self._worker = threading.Thread(target=self._work, name="csl_detector_worker", daemon=True)
        self._worker.start()
        self._active_since = time.monotonic()
        self._state = "active"
        self.get_logger().info(f"active: processing {self.input_topic}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._active_since = None
        if self._last_marker_header is not None and "obstacles" in self._pubs:  # no stale obstacles in rviz
            self._pubs["obstacles"].publish(clear_markers_msg(self._last_marker_header))
        self._state = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release_all()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release_all()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def release_all(self) -> None:
        """Stop processing and release the detector and topics (shutdown, error, process exit)."""
        self._stop_worker()
        self._release()

    def _build(self) -> None:
        with self._cfg_lock:
            cfg, node_cfg = self._det_cfg, self._node_cfg
            self._pending.clear()  # already part of cfg
        log = self.get_logger()
        log.info(f"loading the detector: scheme {cfg.scheme}, teacher {cfg.teacher}, device {cfg.device}, "
                 f"backend {cfg.backend}, precision {cfg.precision}, input {cfg.input_height}x{cfg.input_width} (HxW)")
        # (csl_ros.pipeline.backends logs when it actually builds a TensorRT engine, and only then.)
        self._detector = self.detector_factory(cfg)
        self._adopt_model_settings(cfg, getattr(self._detector, "config", cfg))
        self._detector.warmup()
        self._built_with = self._reload_key()
        q_out = _qos(node_cfg.output_reliability, 5)
        self._pubs = {
            "score": self.create_lifecycle_publisher(Image, "~/anomaly_score", q_out),
            "color": self.create_lifecycle_publisher(Image, "~/anomaly_score/color", q_out),
            "instances": self.create_lifecycle_publisher(Image, "~/ood_instances", q_out),
            "instances_color": self.create_lifecycle_publisher(Image, "~/ood_instances/color", q_out),
            "overlay": self.create_lifecycle_publisher(Image, "~/overlay", q_out),
            "obstacles": self.create_lifecycle_publisher(MarkerArray, "~/obstacles", q_out),
            "points": self.create_lifecycle_publisher(PointCloud2, "~/obstacle_points", q_out),
        }
        q_in = _qos(node_cfg.input_reliability, 1)
        if node_cfg.use_compressed:
            self._subs = [self.create_subscription(CompressedImage, "image/compressed", self._on_image, q_in)]
        else:
            self._subs = [self.create_subscription(Image, "image", self._on_image, q_in)]
        # camera_info is always best effort: a best-effort subscription matches every publisher, while a
        # reliable one would not match a best-effort camera_info (no markers, and no error anywhere).
        self._subs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                                   _qos("best_effort", 5)))
        log.info(f"configured: input {self.input_topic} ({node_cfg.input_reliability}), outputs under "
                 f"{self.get_fully_qualified_name()}/ ({node_cfg.output_reliability})")

    def _adopt_model_settings(self, asked: DetectorConfig, used: DetectorConfig) -> None:
        """Make the parameters say what the detector uses when it took settings from the student
        checkpoint (input size, tuned threshold) for parameters left at their defaults."""
        taken = {k: getattr(used, k) for k in MODEL_SETTINGS if getattr(used, k) != getattr(asked, k)}
        if not taken:
            return
        self.get_logger().info("from the student checkpoint (parameters left at their defaults): "
                               + ", ".join(f"{k}={v}" for k, v in taken.items()))
        self._adopting = True
        try:
            self.set_parameters([Parameter(k, value=v) for k, v in taken.items()])
        finally:
            self._adopting = False

    def _release(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._subs, self._pubs, self._camera_info = [], {}, None
        self._camera_info_state, self._camera_info_at = "missing", None
        if self._detector is not None:
            try:
                self._detector.close()
            finally:
                self._detector = None
                self._built_with = None

    def _stop_worker(self) -> None:
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=60.0)
            self._worker = None

    # --- input ----------------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        now = time.monotonic()
        self.stats.received.tick(now)
        if self._state != "active":
            self.stats.ignored_inactive += 1
            return
        self._slot.put((msg, now))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        k = [float(v) for v in msg.k]
        self._camera_info_at = time.monotonic()
        if k[0] <= 0.0 or k[4] <= 0.0:
            self._camera_info_state = "uncalibrated"
            if self._state_log.ready("camera_info"):
                self.get_logger().warning("camera_info has no calibration (fx or fy is 0): obstacles get no "
                                       "metric position until a calibrated camera_info arrives")
            return
        self._camera_info = (k, int(msg.width), int(msg.height))
        self._camera_info_state = "calibrated"

    def _camera_geometry(self, height: int, width: int, cfg: DetectorConfig):
        info = self._camera_info
        if info is None:
            return None
        from csl_ros.pipeline import CameraGeometry

        k, w, h = info
        cam = CameraGeometry.from_K(k, height_m=cfg.camera_height_m, pitch_deg=cfg.camera_pitch_deg)
        if w > 0 and h > 0 and (w, h) != (width, height):  # camera_info of the unscaled sensor
            cam = cam.scaled(width / w, height / h)
        return cam

    # --- processing -----------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.1)
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as exc:  # the worker must outlive any single frame
                if not self.context.ok():
                    return  # ROS is shutting down (e.g. SIGINT while publishing)
                self.stats.count_publish_error()
                if self._bad_log.ready("publish_error"):
                    self.get_logger().error(f"publishing a frame's outputs failed: {type(exc).__name__}: {exc}")

    def _convert(self, msg) -> np.ndarray | None:
        """The frame as RGB, or None after counting it as a bad frame under its reason."""
        try:
            return compressed_msg_to_rgb(msg) if isinstance(msg, CompressedImage) else image_msg_to_rgb(msg)
        except Exception as exc:  # every undecodable input is a bad frame, never a publishing error
            reason = bad_frame_reason(str(exc)) if isinstance(exc, ImageFormatError) else "conversion_failed"
            self.stats.count_bad(reason)
            if self._bad_log.ready(reason):
                self.get_logger().warning(f"bad input frame on {self.input_topic} ({reason}): {exc}; skipped "
                                          f"(logged at most every {LOG_PERIOD_S:g} s per reason)")
            return None

    def _process(self, msg, t_received: float) -> None:
        log = self.get_logger()
        rgb = self._convert(msg)
        if rgb is None:
            return
        with self._cfg_lock:
            cfg, node_cfg, pending, self._pending = self._det_cfg, self._node_cfg, self._pending, {}
        detector = self._detector
        try:
            if pending:
                detector.update(**pending)
            t0 = time.monotonic()
            det = detector(rgb, self._camera_geometry(rgb.shape[0], rgb.shape[1], cfg))
            detector_ms = (time.monotonic() - t0) * 1e3
        except Exception as exc:  # never let one frame take the node down
            self.stats.count_detector_error()
            if self._bad_log.ready("detector_error"):
                log.error(f"detector failed on a frame: {type(exc).__name__}: {exc}")
            return
        self._publish(msg.header, rgb, det, node_cfg)
        self._backend_device = (det.backend, det.device, getattr(det, "backends", ""))
        self.stats.processed.tick()
        self.stats.detector_ms.add(detector_ms)
        self.stats.latency_ms.add((time.monotonic() - t_received) * 1e3)

    def _publish(self, header, rgb: np.ndarray, det, node_cfg: NodeConfig) -> None:
        from csl_ros.visualize import colorize_instances, draw_overlay, score_image

        pubs = self._pubs

        def image(key: str, make: Callable[[], np.ndarray], encoding: str) -> None:
            # Skip the work (colour map, overlay, serialisation) for outputs nobody listens to.
            if pubs[key].get_subscription_count() == 0:
                return
            msg = fill_image_msg(Image(), make(), encoding)
            msg.header = header
            pubs[key].publish(msg)

        image("score", lambda: det.anomaly_map.astype(np.float32, copy=False), "32FC1")
        image("instances", lambda: det.instances.astype(np.uint16, copy=False), "16UC1")
        image("instances_color", lambda: colorize_instances(det.instances), "bgr8")
        if node_cfg.publish_color:
            image("color", lambda: score_image(det.anomaly_map), "bgr8")
        if node_cfg.publish_overlay:
            image("overlay", lambda: draw_overlay(rgb, det.anomaly_map, det.instances, det.obstacles), "bgr8")
        mounting = Mounting.from_config(node_cfg) if node_cfg.output_frame else None
        if pubs["obstacles"].get_subscription_count():
            rate = self.stats.processed.rate_hz()
            lifetime = node_cfg.marker_lifetime_frames * (1.0 / rate if rate > 0 else 1.0)
            markers = marker_array_msg(det.obstacles, header, lifetime_s=lifetime, mounting=mounting,
                                       output_frame=node_cfg.output_frame)
            pubs["obstacles"].publish(markers)
            self._last_marker_header = markers.markers[0].header
        if pubs["points"].get_subscription_count():
            pubs["points"].publish(obstacle_points_msg(det.obstacles, header, mounting=mounting,
                                                       output_frame=node_cfg.output_frame))

    # --- diagnostics ----------------------------------------------------------------------------------
    def _diagnostics_status(self) -> DiagnosticStatus:
        snap = self.stats.snapshot(self._slot.dropped)
        received = snap["frames_received"]
        recent_input, self._last_report = received - self._last_report, received
        topic = self.input_topic
        publishers = self.count_publishers(topic)
        now = time.monotonic()
        last, since = self.stats.received.last, self._active_since
        starved_after = max(2.0, 2 * self._node_cfg.diagnostics_period_s)
        # Age of the input, counted from activation when no frame came since: the start-up grace.
        first_pending = since is not None and (last is None or last < since)
        if first_pending:
            age, starved_after = now - since, max(starved_after, STARTUP_GRACE_S)
        else:
            age = None if last is None else now - last
        info_topic = self.resolve_topic_name("camera_info")
        level, message = diagnostic_summary(
            self._state, snap, input_topic=topic, recent_input=recent_input, input_publishers=publishers,
            input_age_s=age, starved_after_s=starved_after, recent=self.stats.recent_errors(),
            camera_info=self._camera_info_state, camera_info_topic=info_topic, first_frame_pending=first_pending)
        silent = self._state != "active" or "nothing received" in message
        if silent and (recent_input or publishers) and self._state_log.ready(message.split(":")[0]):
            self.get_logger().warning(message)
        cfg = self._det_cfg
        backend, device, backends = self._backend_device
        info_age = "" if self._camera_info_at is None else now - self._camera_info_at
        values = {"lifecycle_state": self._state, "input_topic": topic, "input_publishers": publishers,
                  "backend": backend or f"{cfg.backend} (requested)", "device": device or f"{cfg.device} (requested)",
                  "backends": backends or "-",
                  "scheme": cfg.scheme, "teacher": cfg.teacher, "score_threshold": cfg.score_threshold,
                  "camera_info_topic": info_topic, "camera_info": self._camera_info_state,
                  "camera_info_age_s": info_age, **snap}
        status = DiagnosticStatus(level=bytes([level]), name=f"{self.get_fully_qualified_name()}: csl detector",
                                  message=message, hardware_id=device or cfg.device)
        status.values = [KeyValue(key=k, value=f"{v:.2f}" if isinstance(v, float) else str(v))
                         for k, v in values.items()]
        return status

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self._diagnostics_status()]
        self._diag_pub.publish(arr)


def build_engine(node: CslDetectorNode) -> int:
    """Build (or load) the configured inference engine into the cache, report what was built."""
    cfg, log = node.detector_config, node.get_logger()
    log.info(f"building the {cfg.backend} engine for input {cfg.input_height}x{cfg.input_width} (HxW), {cfg.precision} on "
             f"{cfg.device} into {cfg.engine_cache_dir}{' (forced rebuild)' if cfg.force_rebuild_engine else ''}"
             ": a TensorRT build can take several minutes")
    t0 = time.monotonic()
    detector = node.detector_factory(cfg)
    try:
        detector.warmup()
        det = detector(np.zeros((cfg.input_height, cfg.input_width, 3), np.uint8))
    finally:
        detector.close()
    log.info(f"engine ready in {time.monotonic() - t0:.1f} s: backend {det.backend} on {det.device}")
    if cfg.backend != "auto" and det.backend != cfg.backend:
        log.error(f"requested backend {cfg.backend} but the detector fell back to {det.backend} (see above)")
        return 1
    return 0


def _rcl_error_line(exc: Exception) -> str:
    """rcl's message on one line, without its C source locations (", at /project/src/parse.c:835")."""
    text = " ".join(str(exc).split())
    return re.sub(r",? at /\S+:\d+", "", text).strip()


def build_arg_parser() -> argparse.ArgumentParser:
    """The ``csl_node`` command line (ROS arguments after ``--ros-args`` are removed before parsing)."""
    from csl_ros.cli import OneLineErrorParser

    parser = OneLineErrorParser(
        prog="csl_node", description="csl_node: the CSL road-obstacle detector (ROS 2 lifecycle node "
        "csl_detector). Parameters: --ros-args --params-file FILE -p name:=value; see `ros2 param describe`.")
    parser.add_argument("--auto-activate", action="store_true",
                        help="configure and activate on start (same as the auto_activate parameter)")
    parser.add_argument("--build-engine", action="store_true",
                        help="build and cache the inference engine (TensorRT/TorchScript) for the "
                             "configured model, input size and precision, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.utilities import remove_ros_args

    argv = list(sys.argv if argv is None else argv)
    try:
        args = build_arg_parser().parse_args(remove_ros_args(argv)[1:])
    except rclpy._rclpy_pybind11.RCLError as exc:  # a broken or missing --params-file, bad --ros-args
        print(f"csl_node: error: {_rcl_error_line(exc)}", file=sys.stderr)
        return 2
    use_large_image_profile()  # before the DDS participant exists (csl_ros.ros.dds)
    rclpy.init(args=argv)
    node = None
    try:
        node = CslDetectorNode()
        if args.build_engine:
            return build_engine(node)
        if (args.auto_activate or node.node_config.auto_activate) and not node.configure_and_activate():
            node.get_logger().error("auto-activation failed (see above); the node stays up, unconfigured")
        # One executor thread: entities destroyed by cleanup are never in another thread's wait set
        # (rclpy's executors race against destruction there); inference has its own worker thread.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError, rclpy.exceptions.ParameterException) as exc:
        print(f"csl_node: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.release_all()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
