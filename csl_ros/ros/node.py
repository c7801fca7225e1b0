"""The ROS 2 lifecycle node ``csl_detector``: camera images in, anomaly scores, OOD instances,
obstacle markers and diagnostics out. Glue only: the model work is :class:`csl_ros.pipeline.Detector`.

Lifecycle: configure builds the detector (loads models, builds or loads the cached engine, warms
up) and the topics; activate starts the inference worker; deactivate stops it; cleanup/shutdown
release the detector (and its GPU memory). Back-pressure: the subscription callback only drops the
message into a one-frame slot and returns; a worker thread converts and processes the newest frame,
so a camera faster than inference never builds a queue (replaced frames are counted as dropped).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from visualization_msgs.msg import MarkerArray

from csl_ros.config import DetectorConfig, NodeConfig, mounting_warnings, regions_description
from csl_ros.image_codec import ImageFormatError, compressed_msg_to_rgb, fill_image_msg, image_msg_to_rgb
from csl_ros.pipeline import CameraGeometry, Detector
from csl_ros.ros.diagnostics import NodeDiagnosticsMixin
from csl_ros.ros.interfaces import qos_profile
from csl_ros.ros.markers import Mounting, clear_markers_msg
from csl_ros.ros.node_parameters import NodeParametersMixin
from csl_ros.ros.outputs import IMAGE, MARKER_ARRAY, NODE_NAME, NODE_OUTPUTS, POINT_CLOUD2, OutputFrame
from csl_ros.ros.stats import LatestFrameSlot, NodeStats, Throttle, bad_frame_reason

MESSAGE_TYPES = {IMAGE: Image, MARKER_ARRAY: MarkerArray, POINT_CLOUD2: PointCloud2}
LOG_PERIOD_S = 5.0  # throttle for repeated warnings (per bad-frame reason, inactive node)


def default_detector_factory(cfg: DetectorConfig):
    return Detector.from_config(cfg)


class CslDetectorNode(NodeParametersMixin, NodeDiagnosticsMixin, LifecycleNode):
    """Managed node; ``detector_factory(DetectorConfig)`` builds the detector (injectable for tests)."""

    def __init__(self, *, detector_factory: Callable[[DetectorConfig], Any] | None = None,
                 node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.detector_factory = detector_factory or default_detector_factory
        self._declare_parameters()

        self.stats = NodeStats()
        self._slot: LatestFrameSlot = LatestFrameSlot()
        self._state = "unconfigured"
        self._detector = None
        self._built_with: tuple | None = None
        self._pubs: dict[str, Any] = {}
        self._subs: list = []
        self._camera_info: CameraInfo | None = None  # the last calibrated one
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
            cfg, node_cfg = self._asked_config(self._det_cfg), self._node_cfg
            self._pending.clear()  # already part of cfg
        log = self.get_logger()
        log.info(f"loading the detector: scheme {cfg.scheme}, teacher {cfg.teacher}, "
                 f"{regions_description(cfg)}, device {cfg.device}, backend {cfg.backend}, "
                 f"precision {cfg.precision}, input {cfg.input_height}x{cfg.input_width} (HxW)")
        # (csl_ros.pipeline.backends logs when it actually builds a TensorRT engine, and only then.)
        for warning in mounting_warnings(cfg, node_cfg):
            log.warning(warning)
        self._detector = self.detector_factory(cfg)
        self._adopt_model_settings(cfg, getattr(self._detector, "config", cfg))
        self._detector.warmup()
        self._built_with = self._reload_key()
        q_out = qos_profile(node_cfg.output_reliability, 5)
        self._pubs = {out.key: self.create_lifecycle_publisher(MESSAGE_TYPES[out.message], f"~/{out.topic}", q_out)
                      for out in NODE_OUTPUTS.values()}
        q_in = qos_profile(node_cfg.input_reliability, 1)
        if node_cfg.use_compressed:
            self._subs = [self.create_subscription(CompressedImage, "image/compressed", self._on_image, q_in)]
        else:
            self._subs = [self.create_subscription(Image, "image", self._on_image, q_in)]
        # camera_info is always best effort: a best-effort subscription matches every publisher, while a
        # reliable one would not match a best-effort camera_info (no markers, and no error anywhere).
        self._subs.append(self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                                   qos_profile("best_effort", 5)))
        log.info(f"configured: input {self.input_topic} ({node_cfg.input_reliability}), outputs under "
                 f"{self.get_fully_qualified_name()}/ ({node_cfg.output_reliability})")

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
        self._camera_info = msg
        self._camera_info_state = "calibrated"

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
            camera = CameraGeometry.from_camera_info(self._camera_info, rgb.shape, cfg.camera_height_m,
                                                     cfg.camera_pitch_deg)
            det = detector(rgb, camera)
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
        rate = self.stats.processed.rate_hz()
        frame = OutputFrame(header, rgb, det, node_cfg,
                            mounting=Mounting.from_config(node_cfg) if node_cfg.output_frame else None,
                            marker_lifetime_s=node_cfg.marker_lifetime_frames * (1.0 / rate if rate > 0 else 1.0))
        for out in NODE_OUTPUTS.values():
            pub = self._pubs[out.key]
            # Skip the work (colour map, overlay, serialisation) for outputs nobody listens to.
            if not out.enabled(node_cfg) or pub.get_subscription_count() == 0:
                continue
            rendered = out.render(frame)
            if out.encoding is not None:
                msg = fill_image_msg(Image(), rendered, out.encoding)
                msg.header = header
            else:
                msg = rendered
            pub.publish(msg)
            if out.key == "obstacles":
                self._last_marker_header = msg.markers[0].header
