"""Run the CSL obstacle detector on one or more driving cameras.

    ros2 launch csl_ros driving.launch.py
    ros2 launch csl_ros driving.launch.py cameras:='[front, rear]' teacher:=msp rviz:=true
    ros2 launch csl_ros driving.launch.py params_file:=/path/my.yaml score_threshold:=0.6

One lifecycle node ``csl_detector`` per camera, in ``/<namespace>/<camera>``, reading
``/<camera>/<image_topic>`` and ``/<camera>/<camera_info_topic>``. The nodes configure and activate
themselves (``auto_activate:=false`` leaves them unconfigured for a lifecycle manager).
Large images need Fast DDS's large-data transports, which this file enables (see docs/ros.md for
other RMWs).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from csl_ros.ros.launch_support import (FORWARDED_PARAMETERS, camera_remappings, node_namespace, parse_bool,
                                        parse_cameras, typed_overrides)

PACKAGE = "csl_ros"

# (name, default, description); params_file's default (None) is the installed config/driving.yaml.
LAUNCH_ARGUMENTS = (
    ("cameras", "camera", "Camera namespaces, comma-separated or a list ('[front, rear]'): one detector "
     "node per camera."),
    ("image_topic", "image_raw", "Image topic of each camera, relative to its namespace (or absolute). "
     "With use_compressed the node reads <image_topic>/compressed."),
    ("camera_info_topic", "camera_info", "CameraInfo topic of each camera, relative to its namespace "
     "(or absolute); gives the flat-ground geometry for obstacle distances."),
    ("namespace", "csl", "Namespace of the detector nodes; the node of camera C runs in /<namespace>/C."),
    ("params_file", None, "ROS 2 parameters file (/**: ros__parameters:) for every detector node."),
    ("teacher", "", "Per-pixel OOD teacher: none, msp, maxlogit, sml, entropy, energy or onnx. "
     "Empty keeps the params file's value."),
    ("scheme", "", "CSL scheme: 1, 2 or teacher_only. Empty keeps the params file's value."),
    ("score_threshold", "", "Anomaly score threshold in [0, 1] for obstacle pixels. Empty keeps the "
     "params file's value."),
    ("min_instance_area", "", "Smallest obstacle in pixels. Empty keeps the params file's value."),
    ("device", "", "Torch device: auto, cpu, cuda, cuda:N. Empty keeps the params file's value."),
    ("backend", "", "Inference backend: auto, eager, torchscript, tensorrt. Empty keeps the params "
     "file's value."),
    ("auto_activate", "true", "Configure and activate the nodes on start; false leaves them unconfigured "
     "for a lifecycle manager."),
    ("use_sim_time", "false", "Use /clock (replaying a bag with --clock)."),
    ("log_level", "info", "Log level of the detector nodes (debug, info, warn, error)."),
    ("rviz", "false", "Start rviz2 with config/csl.rviz (camera, colour score map, overlay, obstacle "
     "markers of the first camera)."),
)


def _launch_nodes(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = typed_overrides({name: arg(name) for name in FORWARDED_PARAMETERS})
    overrides["use_sim_time"] = parse_bool(arg("use_sim_time"), "use_sim_time")
    params_file = arg("params_file")
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"params_file {params_file} does not exist")
    actions = []
    for camera in parse_cameras(arg("cameras")):
        actions.append(LifecycleNode(
            package=PACKAGE, executable="csl_node", name="csl_detector",
            namespace=node_namespace(arg("namespace"), camera),
            parameters=[params_file, overrides],
            remappings=camera_remappings(camera, arg("image_topic"), arg("camera_info_topic")),
            arguments=["--ros-args", "--log-level", arg("log_level")],
            output="screen", emulate_tty=True))
    if parse_bool(arg("rviz"), "rviz"):
        rviz_config = os.path.join(get_package_share_directory(PACKAGE), "config", "csl.rviz")
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz_config],
                            parameters=[{"use_sim_time": overrides["use_sim_time"]}], output="screen"))
    return actions


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    declared = []
    for name, default, description in LAUNCH_ARGUMENTS:
        if name == "params_file":
            default = os.path.join(share, "config", "driving.yaml")
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return LaunchDescription([
        # Fast DDS's default transports deliver no 512x1024 or larger image to a best-effort
        # subscriber; LARGE_DATA (TCP + shared memory) delivers them all. Read at participant
        # creation, so it must be set before the nodes start; a value already in the environment
        # wins. Ignored by other RMWs.
        SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS",
                               EnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", default_value="LARGE_DATA")),
        *declared,
        OpaqueFunction(function=_launch_nodes),
    ])
