"""Score the running detector node on a recorded bag: the node plus the live evaluator.

    ros2 launch csl_ros replay_eval.launch.py bag:=/data/laf_val out:=/tmp/laf_report

Starts one ``csl_detector`` (auto-activated, in ``/<namespace>/<camera>``) and
``csl-ros evaluate --live --bag BAG --out DIR`` (with the node's topics), which publishes the bag's
images on the camera topic, scores what the node publishes on ``~/anomaly_score`` and counts the
frames the node dropped. The launch ends when the evaluator exits.
"""
import os

from launch.actions import EmitEvent, ExecuteProcess, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from csl_ros.ros.launch_support import (DETECTOR_LAUNCH_ARGUMENTS, detector_launch_description,
                                        detector_node_settings, evaluator_command, parse_cameras)

PACKAGE = "csl_ros"

# (name, default, description); the detector's own arguments are shared with driving.launch.py.
LAUNCH_ARGUMENTS = (
    ("bag", "", "The rosbag2 to replay (directory or .mcap/.db3), e.g. one written by `csl-ros bag`."),
    ("out", "eval_out", "Output directory of the evaluator (metrics.json, report, worst frames)."),
    ("camera", "camera", "Camera namespace the bag's images are published under."),
    *DETECTOR_LAUNCH_ARGUMENTS,
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
    (camera,) = parse_cameras(arg("camera"))
    node = LifecycleNode(package=PACKAGE, executable="csl_node", name="csl_detector",
                         **detector_node_settings(arg, camera), output="screen", emulate_tty=True)
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
    return detector_launch_description(LAUNCH_ARGUMENTS, _launch)
