"""Helpers of the launch files (launch/*.launch.py), kept ROS-free so they are tested without the
``launch``/``launch_ros`` packages: camera list parsing, topic remappings and the typed parameter
overrides a launch argument forwards to the node (validated against the one schema)."""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from csl_ros.config import DetectorConfig, NodeConfig, apply_overrides

# Launch arguments forwarded to every node as parameters of the same name. An empty value keeps the
# params file's value (or the schema default); anything else is validated here, at launch time.
FORWARDED_PARAMETERS = ("teacher", "scheme", "score_threshold", "min_instance_area", "device", "backend",
                        "auto_activate")

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
    scores = f"{node_namespace(namespace, camera)}/csl_detector/anomaly_score"
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
