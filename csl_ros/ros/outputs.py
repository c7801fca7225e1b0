"""The node's outputs, registered once: topic, message type, encoding and the function that renders
them from a frame's detection. ROS-free (message types are named, not imported), so the node, the
live replay client, the launch support, the tests and the benchmarks all read topic names from here.

A new output is one :func:`register_output` call (a key, a topic under the node's private namespace,
the message type, an Image encoding or None, a render function and, optionally, the ``NodeConfig``
flag that turns it on): the node creates its publisher and publishes it, in registration order, to
subscribers only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from csl_ros.ros.markers import Mounting, marker_array_msg, obstacle_points_msg
from csl_ros.visualize import colorize_instances, draw_overlay, score_image

NODE_NAME = "csl_detector"
IMAGE = "sensor_msgs/msg/Image"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"


@dataclass(frozen=True)
class OutputFrame:
    """What a render function may use: one processed camera frame."""

    header: Any                 # the input image's std_msgs/Header (stamp and frame)
    rgb: np.ndarray             # the input image, (H, W, 3) uint8 RGB
    detection: Any              # csl_ros.pipeline.Detection
    node_config: Any            # csl_ros.config.NodeConfig
    mounting: Mounting | None   # the camera's pose in output_frame, or None (optical frame)
    marker_lifetime_s: float


@dataclass(frozen=True)
class NodeOutput:
    """One output topic of the node. ``render`` returns the array of an Image output (``encoding``
    set; the node fills the message) or the finished message of any other output."""

    key: str
    topic: str                                   # relative to the node: ~/<topic>
    message: str                                 # ROS message type, e.g. sensor_msgs/msg/Image
    encoding: str | None
    render: Callable[[OutputFrame], Any]
    enabled_by: str | None = None                # NodeConfig flag that must be true, or None
    description: str = ""

    def enabled(self, node_config) -> bool:
        return self.enabled_by is None or bool(getattr(node_config, self.enabled_by))


NODE_OUTPUTS: dict[str, NodeOutput] = {}


def register_output(output: NodeOutput) -> NodeOutput:
    """Add ``output`` to the node's outputs (a key or topic used twice is a ValueError)."""
    if output.key in NODE_OUTPUTS:
        raise ValueError(f"node output {output.key!r} is registered already")
    if any(o.topic == output.topic for o in NODE_OUTPUTS.values()):
        raise ValueError(f"node output topic ~/{output.topic} is registered already")
    if (output.encoding is None) != (output.message != IMAGE):
        raise ValueError(f"node output {output.key!r}: an encoding is given for Image outputs and only them")
    NODE_OUTPUTS[output.key] = output
    return output


def output_topic(key: str, node_namespace: str = "", node_name: str = NODE_NAME) -> str:
    """The absolute topic of output ``key`` of the node ``node_namespace/node_name``."""
    return f"{node_namespace.rstrip('/')}/{node_name}/{NODE_OUTPUTS[key].topic}"


def sibling_topic(topic: str, key: str, of: str = "score") -> str:
    """The topic of output ``key`` next to ``topic``, the node's output ``of``:
    ``/ns/csl_detector/anomaly_score`` -> ``/ns/csl_detector/ood_instances`` for ``key="instances"``.
    A topic that is not output ``of`` is taken as the node's own name."""
    return f"{node_of_topic(topic, of)}/{NODE_OUTPUTS[key].topic}"


def node_of_topic(topic: str, of: str = "score") -> str:
    """``/csl/camera/csl_detector/anomaly_score`` -> ``/csl/camera/csl_detector``."""
    base = topic.rstrip("/")
    suffix = "/" + NODE_OUTPUTS[of].topic
    return base[: -len(suffix)] if base.endswith(suffix) else base


def _markers(f: OutputFrame):
    return marker_array_msg(f.detection.obstacles, f.header, lifetime_s=f.marker_lifetime_s, mounting=f.mounting,
                            output_frame=f.node_config.output_frame)


def _points(f: OutputFrame):
    return obstacle_points_msg(f.detection.obstacles, f.header, mounting=f.mounting,
                               output_frame=f.node_config.output_frame)


# Registration order is publication order: the scores first (what the evaluator waits for), then
# the instance ids it matches to them.
register_output(NodeOutput("score", "anomaly_score", IMAGE, "32FC1",
                           lambda f: f.detection.anomaly_map.astype(np.float32, copy=False),
                           description="per-pixel anomaly score in [0, 1] (Eq. 3 fusion)"))
register_output(NodeOutput("instances", "ood_instances", IMAGE, "16UC1",
                           lambda f: f.detection.instances.astype(np.uint16, copy=False),
                           description="OOD instance ids, 0 = none"))
register_output(NodeOutput("instances_color", "ood_instances/color", IMAGE, "bgr8",
                           lambda f: colorize_instances(f.detection.instances),
                           description="the instance ids in colour"))
register_output(NodeOutput("color", "anomaly_score/color", IMAGE, "bgr8",
                           lambda f: score_image(f.detection.anomaly_map), enabled_by="publish_color",
                           description="the score as a colour image"))
register_output(NodeOutput("overlay", "overlay", IMAGE, "bgr8",
                           lambda f: draw_overlay(f.rgb, f.detection.anomaly_map, f.detection.instances,
                                                  f.detection.obstacles),
                           enabled_by="publish_overlay", description="scores and obstacles drawn on the image"))
register_output(NodeOutput("obstacles", "obstacles", MARKER_ARRAY, None, _markers,
                           description="a cube and a label per obstacle"))
register_output(NodeOutput("points", "obstacle_points", POINT_CLOUD2, None, _points,
                           description="one point per obstacle, with its score, size and distance"))
