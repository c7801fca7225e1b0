"""csl_ros: CSL road-obstacle / out-of-distribution segmentation for ROS 2.

Layers, imports pointing one way only:
``model`` (pure PyTorch) <- ``pipeline`` (image in, scores/instances/obstacles out) <- ``ros`` (rclpy
glue), ``eval`` and ``cli``. ``data`` (synthroad and dataset loaders) depends on numpy/OpenCV only.
"""
__version__ = "0.1.0"
