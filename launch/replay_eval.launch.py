"""Score the running detector node on a recorded bag: the node plus the live evaluator.

    ros2 launch csl_ros replay_eval.launch.py bag:=/data/laf_val out:=/tmp/laf_report

Starts one ``csl_detector`` (auto-activated, in ``/<namespace>/<camera>``) and
``csl-ros evaluate --live --bag BAG --out DIR`` (with the node's topics), which publishes the bag's
images on the camera topic, scores what the node publishes on ``~/anomaly_score`` and counts the
frames the node dropped. The launch ends when the evaluator exits.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode

from csl_ros.ros.launch_support import (FORWARDED_PARAMETERS, camera_remappings, evaluator_command, node_namespace,
                                        parse_bool, parse_cameras, typed_overrides)

PACKAGE = "csl_ros"

# (name, default, description); params_file's default (None) is the installed config/driving.yaml.
LAUNCH_ARGUMENTS = (
    ("bag", "", "The rosbag2 to replay (directory or .mcap/.db3), e.g. one written by `csl-ros bag`."),
    ("out", "eval_out", "Output directory of the evaluator (metrics.json, report, worst frames)."),
    ("camera", "camera", "Camera namespace the bag's images are published under."),
    ("image_topic", "image_raw", "Image topic of the camera, relative to its namespace (or absolute)."),
    ("camera_info_topic", "camera_info", "CameraInfo topic of the camera, relative to its namespace "
     "(or absolute)."),
    ("namespace", "csl", "Namespace of the detector node: it runs in /<namespace>/<camera>."),
    ("params_file", None, "ROS 2 parameters file (/**: ros__parameters:) of the detector node."),
    ("teacher", "", "Per-pixel OOD teacher: none, msp, maxlogit, sml, entropy, energy or onnx. "
     "Empty keeps the params file's value."),
    ("scheme", "", "CSL scheme: 1, 2 or teacher_only. Empty keeps the params file's value."),
    ("score_threshold", "", "Anomaly score threshold in [0, 1]. Empty keeps the params file's value."),
    ("min_instance_area", "", "Smallest obstacle in pixels. Empty keeps the params file's value."),
    ("device", "", "Torch device: auto, cpu, cuda, cuda:N. Empty keeps the params file's value."),
    ("backend", "", "Inference backend: auto, eager, torchscript, tensorrt. Empty keeps the params "
     "file's value."),
    ("auto_activate", "true", "Configure and activate the node on start (the evaluator needs it active)."),
    ("use_sim_time", "false", "Use /clock for the node."),
    ("rate", "recorded", "Evaluator publishing rate: 'recorded' (the bag's stamps), a factor of it, or "
     "'max' (next frame as soon as the node answered)."),
    ("evaluator_args", "", "Extra arguments appended to `csl-ros evaluate --live` (space-separated), "
     "e.g. '--track laf --video'."),
)


def _launch(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    bag, out = arg("bag"), arg("out")
    if not bag:
        raise ValueError("bag:=PATH is required")
    if not os.path.exists(bag):
        raise FileNotFoundError(f"bag {bag} does not exist")
    overrides = typed_overrides({name: arg(name) for name in FORWARDED_PARAMETERS})
    overrides["use_sim_time"] = parse_bool(arg("use_sim_time"), "use_sim_time")
    params_file = arg("params_file")
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"params_file {params_file} does not exist")
    (camera,) = parse_cameras(arg("camera"))
    node = LifecycleNode(
        package=PACKAGE, executable="csl_node", name="csl_detector",
        namespace=node_namespace(arg("namespace"), camera),
        parameters=[params_file, overrides],
        remappings=camera_remappings(camera, arg("image_topic"), arg("camera_info_topic")),
        output="screen", emulate_tty=True)
    # Topics follow the node's remappings and namespace, so changing camera/namespace keeps them paired.
    evaluator = ExecuteProcess(
        cmd=evaluator_command(bag, out, camera=camera, image_topic=arg("image_topic"),
                              camera_info_topic=arg("camera_info_topic"), namespace=arg("namespace"),
                              rate=arg("rate"), extra=arg("evaluator_args")),
        name="csl_evaluate", output="screen", emulate_tty=True)
    # The evaluation is the point of this launch: stop everything when it finishes.
    stop_when_done = RegisterEventHandler(OnProcessExit(
        target_action=evaluator, on_exit=[EmitEvent(event=Shutdown(reason="evaluation finished"))]))
    return [node, evaluator, stop_when_done]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    declared = []
    for name, default, description in LAUNCH_ARGUMENTS:
        if name == "params_file":
            default = os.path.join(share, "config", "driving.yaml")
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return LaunchDescription([
        # Large images over Fast DDS need the large-data transports (docs/ros.md).
        SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS",
                               EnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", default_value="LARGE_DATA")),
        *declared,
        OpaqueFunction(function=_launch),
    ])
