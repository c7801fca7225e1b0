"""ROS 2 glue (rclpy). Nothing here computes model math: it converts messages, calls
:class:`csl_ros.pipeline.Detector` and publishes. Modules import rclpy lazily where they can, so the
conversion helpers work (and are tested) without a ROS graph."""
