"""ROS 2 glue (rclpy). Nothing here computes model math: it converts messages, calls
:class:`csl_ros.pipeline.Detector` and publishes.

- ``node``: the lifecycle node ``csl_detector`` (imports rclpy), with its parameters
  (``node_parameters``), /diagnostics (``diagnostics``), QoS and descriptors (``interfaces``);
- ``csl_node``: the ``csl_node`` executable (``--build-engine`` included);
- ``outputs``: the registry of the node's output topics (ROS-free), read by the node, the replay
  client, the launch support and the tests;
- ``live_replay``: the client of ``csl-ros evaluate --live`` (replays a bag to the node, scores its answers);
- ``params``, ``stats``, ``markers``, ``launch_support``, ``dds``: ROS-free parameter planning,
  statistics, latest-frame slot, marker geometry, launch helpers and DDS settings, tested without a
  ROS graph;
- ``testing``: a model-free detector implementing the Detector contract, for tests and benchmarks.
"""
