"""Run the CSL obstacle detector on one or more driving cameras.

    ros2 launch csl_ros driving.launch.py
    ros2 launch csl_ros driving.launch.py cameras:='[front, rear]' teacher:=msp rviz:=true
    ros2 launch csl_ros driving.launch.py params_file:=/path/my.yaml score_threshold:=0.6

One lifecycle node ``csl_detector`` per camera, in ``/<namespace>/<camera>``, reading
``/<camera>/<image_topic>`` and ``/<camera>/<camera_info_topic>``. The nodes configure and activate
themselves (``auto_activate:=false`` leaves them unconfigured for a lifecycle manager).
The nodes select csl_ros's large-image Fast DDS profile themselves; a camera driver publishing large
best-effort images needs it too (docs/ros.md, "Large images over DDS"). ``ros2 launch csl_ros driving.launch.py --show-args`` describes every argument.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from csl_ros.ros.launch_support import (DETECTOR_LAUNCH_ARGUMENTS, detector_launch_description,
                                        detector_node_settings, parse_bool, parse_cameras, require_executable)

PACKAGE = "csl_ros"

# (name, default, description); the detector's own arguments are shared with replay_eval.launch.py.
LAUNCH_ARGUMENTS = (
    ("cameras", "camera", "Camera namespaces, comma-separated or a list ('[front, rear]'): one detector "
     "node per camera."),
    *DETECTOR_LAUNCH_ARGUMENTS,
    ("log_level", "info", "Log level of the detector nodes (debug, info, warn, error)."),
    ("rviz", "false", "Start rviz2 with config/csl.rviz (camera, colour score map, overlay, obstacle "
     "markers of the first camera)."),
)


def _launch_nodes(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    rviz = parse_bool(arg("rviz"), "rviz")
    if rviz:  # before any node exists: a missing rviz2 must not leave a detector running on its own
        require_executable("rviz2", "rviz2", "rviz:=true")
    actions = []
    for camera in parse_cameras(arg("cameras")):
        actions.append(LifecycleNode(
            package=PACKAGE, executable="csl_node", name="csl_detector", **detector_node_settings(arg, camera),
            arguments=["--ros-args", "--log-level", arg("log_level")], output="screen", emulate_tty=True))
    if rviz:
        rviz_config = os.path.join(get_package_share_directory(PACKAGE), "config", "csl.rviz")
        actions.append(Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz_config],
                            parameters=[{"use_sim_time": parse_bool(arg("use_sim_time"), "use_sim_time")}],
                            output="screen"))
    return actions


def generate_launch_description():
    return detector_launch_description(LAUNCH_ARGUMENTS, _launch_nodes)
