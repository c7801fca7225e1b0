"""Helpers of the launch files (launch/*.launch.py), kept ROS-free so they are tested without the
``launch``/``launch_ros`` packages: the launch arguments both files declare (the forwarded ones
described by the one schema), camera list parsing, topic remappings, the typed parameter overrides a
launch argument forwards to the node (validated against the schema) and the detector node's settings."""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Mapping

from csl_ros.config import DetectorConfig, NodeConfig, apply_overrides
from csl_ros.ros.outputs import output_topic

# Launch arguments forwarded to every node as parameters of the same name. An empty value keeps the
# params file's value (or the schema default); anything else is validated here, at launch time.
FORWARDED_PARAMETERS = ("teacher", "scheme", "score_threshold", "min_instance_area", "device", "backend",
                        "auto_activate")



def _schema_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for cls in (DetectorConfig, NodeConfig) for f in dataclasses.fields(cls)}


def _forwarded_argument(name: str) -> tuple[str, str, str]:
    """(name, default, description) of a forwarded parameter's launch argument, from the schema's help."""
    meta = _schema_fields()[name].metadata
    if name == "auto_activate":  # the launch files always start a usable node unless told otherwise
        return name, "true", meta["help"] + " false leaves the node unconfigured for a lifecycle manager."
    extra = f" Range {meta['range'][0]}..{meta['range'][1]}." if meta.get("range") else ""
    return name, "", f"{meta['help']}{extra} Empty keeps the params file's value."


# (name, default, description) of the arguments every detector launch file declares, in order; the
# params_file default None stands for the installed config/driving.yaml (see launch_arguments).
DETECTOR_LAUNCH_ARGUMENTS = (
    ("image_topic", "image_raw", "Image topic of each camera, relative to its namespace (or absolute). "
     "With use_compressed the node reads <image_topic>/compressed."),
    ("camera_info_topic", "camera_info", "CameraInfo topic of each camera, relative to its namespace "
     "(or absolute); gives the flat-ground geometry for obstacle distances."),
    ("namespace", "csl", "Namespace of the detector nodes; the node of camera C runs in /<namespace>/C."),
    ("params_file", None, "ROS 2 parameters file (/**: ros__parameters:) of the detector nodes; default "
     "the installed config/driving.yaml."),
    *(_forwarded_argument(name) for name in FORWARDED_PARAMETERS),
    ("use_sim_time", "false", "Use /clock (replaying a bag with --clock)."),
)


def launch_arguments(arguments, share_dir: str) -> list[tuple[str, str, str]]:
    """The (name, default, description) triples to declare, the params_file default resolved to
    ``<share_dir>/config/driving.yaml``."""
    default_params = os.path.join(share_dir, "config", "driving.yaml")
    return [(n, default_params if n == "params_file" and d is None else d, t) for n, d, t in arguments]


def detector_launch_description(arguments, launch_function):
    """The LaunchDescription of a detector launch file: the declared ``arguments`` (name, default,
    description) and ``OpaqueFunction(launch_function)``. Imports the launch packages here, so this
    module stays importable (and tested) without them. No DDS environment is set here: csl_node and
    csl-ros evaluate select the large-image Fast DDS profile themselves (csl_ros.ros.dds), and the
    other processes keep the default environment, which interoperates with it."""
    # optional: the launch API and an ament install (the helpers above are tested without them)
    from ament_index_python.packages import get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    share = get_package_share_directory("csl_ros")
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, default, description in launch_arguments(arguments, share)),
        OpaqueFunction(function=launch_function),
    ])


def require_executable(package: str, executable: str, reason: str) -> str:
    """Path of ``executable`` of ROS package ``package`` (lib/<package>/<executable>, as launch_ros
    finds it); FileNotFoundError naming it and ``reason`` when it is not installed, so a launch file
    can refuse before it starts anything."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix  # optional (see above)

    try:
        path = os.path.join(get_package_prefix(package), "lib", package, executable)
    except PackageNotFoundError:
        path = None
    if path is None or not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{reason}, but {package} is not installed (no executable {executable} "
                                f"in the ament index): install ros-$ROS_DISTRO-{package.replace('_', '-')} "
                                f"or launch without it; nothing was started")
    return path


def detector_node_settings(arg: Callable[[str], str], camera: str) -> dict:
    """``namespace``, ``parameters`` and ``remappings`` of the csl_detector node of ``camera``, from the
    launch arguments read by ``arg(name)``. Raises ValueError / FileNotFoundError naming a bad value."""
    overrides = typed_overrides({name: arg(name) for name in FORWARDED_PARAMETERS})
    overrides["use_sim_time"] = parse_bool(arg("use_sim_time"), "use_sim_time")
    params_file = arg("params_file")
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"params_file {params_file} does not exist")
    return {"namespace": node_namespace(arg("namespace"), camera), "parameters": [params_file, overrides],
            "remappings": camera_remappings(camera, arg("image_topic"), arg("camera_info_topic"))}


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_cameras(text: str) -> list[str]:
    """``"front"``, ``"front, rear"``, ``"[front, rear]"`` or ``"['/front', 'rear']"`` -> namespaces."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    cameras = []
    for item in re.split(r"[,\s]+", body):
        name = item.strip().strip("'\"").strip("/")
        if not name:
            continue
        if not _NAME.match(name):
            raise ValueError(f"cameras: {item!r} is not a valid ROS namespace")
        if name in cameras:
            raise ValueError(f"cameras: {name!r} is listed twice")
        cameras.append(name)
    if not cameras:
        raise ValueError(f"cameras: no camera namespace in {text!r}")
    return cameras


def node_namespace(namespace: str, camera: str) -> str:
    """Namespace of the detector for ``camera``: ``/<namespace>/<camera>``."""
    parts = [p for p in (namespace.strip("/"), camera.strip("/")) if p]
    return "/" + "/".join(parts)


def camera_remappings(camera: str, image_topic: str, camera_info_topic: str) -> list[tuple[str, str]]:
    """The node's relative inputs -> the camera's topics (relative topic names live in the camera's
    namespace; absolute ones are used as given)."""

    def topic(name: str) -> str:
        return name if name.startswith("/") else f"/{camera.strip('/')}/{name}"

    image = topic(image_topic)
    return [("image", image), ("image/compressed", f"{image}/compressed"), ("camera_info", topic(camera_info_topic))]


def evaluator_command(bag: str, out: str, *, camera: str, image_topic: str, camera_info_topic: str,
                      namespace: str, rate: str = "recorded", extra: str = "") -> list[str]:
    """``csl-ros evaluate --live`` wired to the node that replay_eval.launch.py starts: the evaluator
    publishes on the topics the node's inputs are remapped to and scores the node's anomaly_score."""
    remap = dict(camera_remappings(camera, image_topic, camera_info_topic))
    scores = output_topic("score", node_namespace(namespace, camera))
    return ["csl-ros", "evaluate", "--live", "--bag", bag, "--out", out,
            "--image-topic", remap["image"], "--camera-info-topic", remap["camera_info"],
            "--scores-topic", scores, "--rate", rate, *extra.split()]


def typed_overrides(raw: Mapping[str, str]) -> dict:
    """Launch-argument strings -> parameter values of the schema's types, for the given non-empty
    arguments. Raises ValueError naming an invalid value, so a typo fails the launch at once."""
    given = {k: v for k, v in raw.items() if v != ""}
    det_names = {f.name for f in dataclasses.fields(DetectorConfig)}
    node_names = {f.name for f in dataclasses.fields(NodeConfig)}
    unknown = sorted(set(given) - det_names - node_names)
    if unknown:
        raise ValueError(f"not a csl_detector parameter: {', '.join(unknown)}")
    det = apply_overrides(DetectorConfig(), {k: v for k, v in given.items() if k in det_names})
    node = apply_overrides(NodeConfig(), {k: v for k, v in given.items() if k in node_names})
    return {k: getattr(det if k in det_names else node, k) for k in given}


def parse_bool(text: str, name: str) -> bool:
    low = str(text).strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"{name}: expected true or false, got {text!r}")
