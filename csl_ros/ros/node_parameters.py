"""The node's ROS parameters: declared from the one schema (``csl_ros.config`` through
``csl_ros.ros.params``), validated by it on every change, and the detector's own settings written
back (``_adopt_model_settings``). Mixed into :class:`csl_ros.ros.node.CslDetectorNode`."""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter

from csl_ros.config import MODEL_SETTINGS, DetectorConfig, NodeConfig, apply_overrides
from csl_ros.ros.interfaces import parameter_descriptor
from csl_ros.ros.params import parameter_specs, plan_parameter_changes


class NodeParametersMixin:
    """Parameter declaration and callbacks; owns ``_specs``, ``_det_cfg``, ``_node_cfg``, ``_cfg_lock``,
    ``_pending`` and ``_adopting``, and uses the node's ``_state``, ``_diag_timer`` and
    ``_publish_diagnostics``."""

    def _declare_parameters(self) -> None:
        self._specs = parameter_specs()
        for spec in self._specs:
            self.declare_parameter(spec.name, spec.default, parameter_descriptor(spec))
        values = {s.name: self.get_parameter(s.name).value for s in self._specs}
        owners = {s.name: s.owner for s in self._specs}
        # Choices are not checked by rclpy's descriptors: validate the start-up values with the schema.
        self._det_cfg = apply_overrides(DetectorConfig(), {k: v for k, v in values.items() if owners[k] == "detector"})
        self._node_cfg = apply_overrides(NodeConfig(), {k: v for k, v in values.items() if owners[k] == "node"})
        self._cfg_lock = threading.Lock()
        self._adopting = False
        self._adopted: set[str] = set()   # parameters that show a checkpoint's value, not the user's
        self._pending: dict[str, Any] = {}  # run-time detector changes, applied before the next frame
        self.add_pre_set_parameters_callback(self._integers_as_floats)
        self.add_on_set_parameters_callback(self._on_set_parameters)

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
            self._adopted -= {p.name for p in params}   # the user's value from now on (a refused one is not)
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

    def _asked_config(self, cfg: DetectorConfig) -> DetectorConfig:
        """``cfg`` with the parameters that show a checkpoint's value back at the schema default, so a
        rebuild (another student, another teacher and so its tuned threshold) takes the new model's."""
        defaults = DetectorConfig()
        return dataclasses.replace(cfg, **{k: getattr(defaults, k) for k in self._adopted})

    def _adopt_model_settings(self, asked: DetectorConfig, used: DetectorConfig) -> None:
        """Make the parameters say what the detector uses when it took settings from the student
        checkpoint (input size, tuned threshold) for parameters left at their defaults."""
        self._adopted |= {k for k in MODEL_SETTINGS if getattr(used, k) != getattr(asked, k)}
        with self._cfg_lock:
            shown = self._det_cfg
        taken = {k: getattr(used, k) for k in MODEL_SETTINGS if getattr(used, k) != getattr(shown, k)}
        if not taken:
            return
        self.get_logger().info("from the student checkpoint (parameters left at their defaults): "
                               + ", ".join(f"{k}={v}" for k, v in taken.items()))
        self._adopting = True
        try:
            self.set_parameters([Parameter(k, value=v) for k, v in taken.items()])
        finally:
            self._adopting = False
