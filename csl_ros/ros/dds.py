"""Fast DDS settings for camera-sized images, shared by every csl_ros process that joins a ROS graph
(the node, the live evaluator, the demo, the benchmarks, the tests). ROS-free.

Fast DDS's default shared-memory segment (512 KiB) cannot hold a camera frame, so best-effort
frames of 512x1024 or more between processes are mostly lost. ``fastdds_large_images.xml`` keeps
the default transports (UDPv4 + shared memory, so tools in a default environment still discover and
read everything) with a 64 MiB segment. Fast DDS reads it from ``FASTDDS_DEFAULT_PROFILES_FILE``
once per process, before the first participant, so :func:`use_large_image_profile` must run before
``rclpy.init``. A user's own Fast DDS configuration (a profiles file or FASTDDS_BUILTIN_TRANSPORTS)
is left alone. Measured figures: docs/ros.md ("Large images over DDS"), from ``bench/dds.py``.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, MutableMapping

PROFILE_FILE = str(Path(__file__).resolve().with_name("fastdds_large_images.xml"))
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"
# Any of these set: the user configured Fast DDS already.
USER_SETTINGS = (PROFILE_VARIABLE, "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_BUILTIN_TRANSPORTS")


def use_large_image_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the large-image profile in ``environ`` (default ``os.environ``) unless the user
    configured Fast DDS or chose another RMW; returns the profile set, or None."""
    env = os.environ if environ is None else environ
    rmw = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if not rmw.startswith("rmw_fastrtps") or any(env.get(k) for k in USER_SETTINGS):
        return None
    env[PROFILE_VARIABLE] = PROFILE_FILE
    return PROFILE_FILE


@contextlib.contextmanager
def restored_environment(*names: str) -> Iterator[None]:
    """Run the block, then put each ``os.environ[name]`` back as it was (unset if it was unset): the
    demo and the tests change ROS_DOMAIN_ID and the DDS settings for their own graph only."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
