"""The detector pipeline (ROS-free): image in; anomaly map, OOD instances and obstacles out.

Used the same way by the ROS node, the evaluator and ``csl-ros detect``.
"""
from csl_ros.pipeline.detector import Detection, Detector, as_rgb_uint8
from csl_ros.pipeline.geometry import CameraGeometry
from csl_ros.pipeline.instances import Obstacle, describe_instances, extract_instances, obstacles_of

__all__ = ["CameraGeometry", "Detection", "Detector", "Obstacle", "as_rgb_uint8", "describe_instances",
           "extract_instances", "obstacles_of"]
