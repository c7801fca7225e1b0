"""``csl_node``: the executable of the ``csl_detector`` lifecycle node (``ros2 run csl_ros csl_node``),
and ``--build-engine``, which builds and caches the inference engine, then exits."""
from __future__ import annotations

import argparse
import re
import sys
import time

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.utilities import remove_ros_args

from csl_ros.cli import OneLineErrorParser
from csl_ros.ros.dds import use_large_image_profile
from csl_ros.ros.node import CslDetectorNode


def build_engine(node: CslDetectorNode) -> int:
    """Build (or load) the configured inference engine into the cache, report what was built."""
    cfg, log = node.detector_config, node.get_logger()
    log.info(f"building the {cfg.backend} engine for input {cfg.input_height}x{cfg.input_width} (HxW), {cfg.precision} on "
             f"{cfg.device} into {cfg.engine_cache_dir}{' (forced rebuild)' if cfg.force_rebuild_engine else ''}"
             ": a TensorRT build can take several minutes")
    t0 = time.monotonic()
    detector = node.detector_factory(cfg)
    try:
        detector.warmup()
        det = detector(np.zeros((cfg.input_height, cfg.input_width, 3), np.uint8))
    finally:
        detector.close()
    log.info(f"engine ready in {time.monotonic() - t0:.1f} s: backend {det.backend} on {det.device}")
    if cfg.backend != "auto" and det.backend != cfg.backend:
        log.error(f"requested backend {cfg.backend} but the detector fell back to {det.backend} (see above)")
        return 1
    return 0


def _rcl_error_line(exc: Exception) -> str:
    """rcl's message on one line, without its C source locations (", at /project/src/parse.c:835")."""
    text = " ".join(str(exc).split())
    return re.sub(r",? at /\S+:\d+", "", text).strip()


def build_arg_parser() -> argparse.ArgumentParser:
    """The ``csl_node`` command line (ROS arguments after ``--ros-args`` are removed before parsing)."""
    parser = OneLineErrorParser(
        prog="csl_node", description="csl_node: the CSL road-obstacle detector (ROS 2 lifecycle node "
        "csl_detector). Parameters: --ros-args --params-file FILE -p name:=value; see `ros2 param describe`.")
    parser.add_argument("--auto-activate", action="store_true",
                        help="configure and activate on start (same as the auto_activate parameter)")
    parser.add_argument("--build-engine", action="store_true",
                        help="build and cache the inference engine (TensorRT/TorchScript) for the "
                             "configured model, input size and precision, then exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        args = build_arg_parser().parse_args(remove_ros_args(argv)[1:])
    except rclpy._rclpy_pybind11.RCLError as exc:  # a broken or missing --params-file, bad --ros-args
        print(f"csl_node: error: {_rcl_error_line(exc)}", file=sys.stderr)
        return 2
    use_large_image_profile()  # before the DDS participant exists (csl_ros.ros.dds)
    rclpy.init(args=argv)
    node = None
    try:
        node = CslDetectorNode()
        if args.build_engine:
            return build_engine(node)
        if (args.auto_activate or node.node_config.auto_activate) and not node.configure_and_activate():
            node.get_logger().error("auto-activation failed (see above); the node stays up, unconfigured")
        # One executor thread: entities destroyed by cleanup are never in another thread's wait set
        # (rclpy's executors race against destruction there); inference has its own worker thread.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, FileNotFoundError, rclpy.exceptions.ParameterException) as exc:
        print(f"csl_node: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.release_all()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
