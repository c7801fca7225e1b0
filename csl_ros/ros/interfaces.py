"""rclpy glue shared by the node and the live replay client: QoS profiles and parameter descriptors."""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    """Keep-last ``depth``, volatile; ``reliability`` is ``reliable`` or ``best_effort``."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort"
                      else ReliabilityPolicy.RELIABLE)


def parameter_descriptor(spec) -> ParameterDescriptor:
    """The ROS descriptor of a schema parameter (``csl_ros.ros.params.ParameterSpec``): its description,
    choices as additional constraints, and its range."""
    d = ParameterDescriptor(description=spec.description, additional_constraints=spec.additional_constraints,
                            read_only=False)
    if spec.range is not None and spec.type is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                     to_value=float(spec.range[1]), step=0.0)]
    elif spec.range is not None and spec.type is int:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return d
