"""The node's /diagnostics status (docs/ros.md, "Diagnostics"): its level and message
(:func:`csl_ros.ros.stats.diagnostic_summary`) and its key/values, published every
``diagnostics_period_s`` by :class:`csl_ros.ros.node.CslDetectorNode` through this mixin."""
from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from csl_ros.config import regions_description
from csl_ros.ros.stats import diagnostic_summary

# After activation, the first frame may take this long (DDS discovery, a camera starting up) before
# /diagnostics reports "nothing received".
STARTUP_GRACE_S = 5.0


class NodeDiagnosticsMixin:
    """Builds and publishes the node's status. Uses the node's ``stats``, ``_slot``, ``_state``,
    ``_det_cfg``, ``_node_cfg``, ``_active_since``, ``_camera_info_state``/``_at``, ``_backend_device``,
    ``_state_log``, ``_last_report`` and ``_diag_pub``."""

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
                  "scheme": cfg.scheme, "teacher": cfg.teacher, "regions": regions_description(cfg),
                  # pixels of a ready teacher map outside its declared range (counted, never hidden)
                  "teacher_out_of_range_pixels": getattr(getattr(self._detector, "teacher", None),
                                                         "out_of_range_pixels", 0),
                  "score_threshold": cfg.score_threshold,
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
