"""ROS 2 glue (rclpy). Nothing here computes model math: it converts messages, calls
:class:`csl_ros.pipeline.Detector` and publishes.

- ``node``: the lifecycle node ``csl_detector`` and the ``csl_node`` executable (imports rclpy);
- ``live_replay``: the client of ``csl-ros evaluate --live`` (replays a bag to the node, scores its answers);
- ``params``, ``stats``, ``markers``, ``launch_support``: ROS-free parameter planning, statistics,
  latest-frame slot, marker geometry and launch helpers, tested without a ROS graph;
- ``testing``: a model-free detector implementing the Detector contract, for tests and benchmarks.
"""
