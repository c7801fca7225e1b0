"""Launch files and rviz config: valid Python/YAML, every argument described, every forwarded
parameter in the schema. The ``launch``/``launch_ros`` packages are not on PyPI, so the launch
logic runs here against small recording stand-ins of their classes; the real packages are used
when importable (a ROS installation)."""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

from csl_ros.config import DetectorConfig, NodeConfig, load_configs
from csl_ros.ros.launch_support import (FORWARDED_PARAMETERS, camera_remappings, node_namespace, parse_bool,
                                        parse_cameras, typed_overrides)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
SCHEMA_NAMES = {f.name for cls in (DetectorConfig, NodeConfig) for f in dataclasses.fields(cls)}


def test_launch_files_exist():
    assert {p.name for p in LAUNCH_FILES} >= {"driving.launch.py", "replay_eval.launch.py"}


def _used_configurations(tree: ast.Module) -> set[str]:
    """Names read through LaunchConfiguration("x") or the local arg("x") helper."""
    used = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("LaunchConfiguration", "arg")
                and node.args and isinstance(node.args[0], ast.Constant)):
            used.add(node.args[0].value)
    return used


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_valid_python_with_described_arguments(path, monkeypatch):
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    compile(tree, str(path), "exec")
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    arguments = _load_with_fakes(monkeypatch, path).LAUNCH_ARGUMENTS
    names = [a[0] for a in arguments]
    assert len(names) == len(set(names)), "duplicate launch argument"
    for name, default, description in arguments:
        assert isinstance(description, str) and len(description) > 15, f"{name} needs a description"
        assert default is None or isinstance(default, str), name
    used = _used_configurations(tree)
    assert used <= set(names), f"undeclared launch arguments used: {used - set(names)}"
    # Every forwarded parameter is a declared argument and a schema field.
    assert set(FORWARDED_PARAMETERS) <= set(names)
    assert set(FORWARDED_PARAMETERS) <= SCHEMA_NAMES


def test_params_file_and_rviz_config_are_valid():
    det, node = load_configs(ROOT / "config" / "driving.yaml")  # unknown keys would raise
    assert node.auto_activate is True
    rviz = yaml.safe_load((ROOT / "config" / "csl.rviz").read_text())
    vm = rviz["Visualization Manager"]
    assert vm["Global Options"]["Fixed Frame"] == "camera_optical_frame"
    displays = {d["Class"]: d for d in vm["Displays"]}
    topics = [d["Topic"]["Value"] for d in vm["Displays"] if "Topic" in d]
    assert "rviz_default_plugins/MarkerArray" in displays and "rviz_default_plugins/Image" in displays
    ns = node_namespace("csl", "camera")  # the defaults of driving.launch.py
    assert f"{ns}/csl_detector/anomaly_score/color" in topics and f"{ns}/csl_detector/overlay" in topics
    assert f"{ns}/csl_detector/obstacles" in topics and "/camera/image_raw" in topics


# --- launch_support ---------------------------------------------------------------------------------------
def test_shared_detector_arguments_are_described_by_the_schema():
    from csl_ros.ros.launch_support import DETECTOR_LAUNCH_ARGUMENTS, launch_arguments

    described = {name: (default, text) for name, default, text in DETECTOR_LAUNCH_ARGUMENTS}
    assert set(FORWARDED_PARAMETERS) <= set(described)
    assert described["teacher"][1].startswith(DetectorConfig.__dataclass_fields__["teacher"].metadata["help"])
    assert "Range 0.0..1.0" in described["score_threshold"][1] and described["score_threshold"][0] == ""
    assert described["auto_activate"][0] == "true"
    resolved = dict((n, d) for n, d, _ in launch_arguments(DETECTOR_LAUNCH_ARGUMENTS, "/opt/share/csl_ros"))
    assert resolved["params_file"] == "/opt/share/csl_ros/config/driving.yaml"


def test_parse_cameras():
    assert parse_cameras("camera") == ["camera"]
    assert parse_cameras("[front, rear]") == ["front", "rear"]
    assert parse_cameras("['/front', \"rear\"] ") == ["front", "rear"]
    assert parse_cameras("front,sensors/left") == ["front", "sensors/left"]
    for bad in ("", "[]", "front, front", "3d-cam"):
        with pytest.raises(ValueError):
            parse_cameras(bad)


def test_namespaces_and_remappings():
    assert node_namespace("csl", "front") == "/csl/front"
    assert node_namespace("", "/front") == "/front"
    assert camera_remappings("front", "image_raw", "camera_info") == [
        ("image", "/front/image_raw"), ("image/compressed", "/front/image_raw/compressed"),
        ("camera_info", "/front/camera_info")]
    assert camera_remappings("front", "/other/img", "/other/info")[0] == ("image", "/other/img")


def test_typed_overrides_use_schema_types_and_reject_bad_values():
    typed = typed_overrides({"scheme": "2", "score_threshold": "0.6", "min_instance_area": "50",
                             "auto_activate": "true", "teacher": ""})
    assert typed == {"scheme": "2", "score_threshold": 0.6, "min_instance_area": 50, "auto_activate": True}
    assert isinstance(typed["scheme"], str)  # stays a string parameter, not YAML's int 2
    with pytest.raises(ValueError, match="teacher"):
        typed_overrides({"teacher": "bogus"})
    with pytest.raises(ValueError, match="outside"):
        typed_overrides({"score_threshold": "3"})
    with pytest.raises(ValueError, match="not a csl_detector parameter"):
        typed_overrides({"score_treshold": "0.3"})
    assert parse_bool("True", "x") is True and parse_bool("0", "x") is False
    with pytest.raises(ValueError):
        parse_bool("maybe", "rviz")


# --- launch logic against recording stand-ins --------------------------------------------------------------
class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context):
        return context.launch_configurations[self.args[0]]


class _PackageNotFound(KeyError):
    pass


# ROS packages the fake ament index knows (name -> install prefix); tests add rviz2 when they need it.
FAKE_PREFIXES: dict[str, str] = {}


def _package_prefix(package):
    if package not in FAKE_PREFIXES:
        raise _PackageNotFound(package)
    return FAKE_PREFIXES[package]


def _fake_launch_modules(share: Path) -> dict[str, types.ModuleType]:
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    def recorded(name):
        return type(name, (_Recorded,), {})

    actions = {n: recorded(n) for n in ("DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable",
                                        "ExecuteProcess", "RegisterEventHandler", "EmitEvent", "IncludeLaunchDescription")}
    return {
        "launch": module("launch", LaunchDescription=recorded("LaunchDescription")),
        "launch.actions": module("launch.actions", **actions),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=_LaunchConfiguration,
                                       EnvironmentVariable=recorded("EnvironmentVariable")),
        "launch.event_handlers": module("launch.event_handlers", OnProcessExit=recorded("OnProcessExit")),
        "launch.events": module("launch.events", Shutdown=recorded("Shutdown")),
        "launch.conditions": module("launch.conditions", IfCondition=recorded("IfCondition")),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=recorded("Node"), LifecycleNode=recorded("LifecycleNode")),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages",
                                              get_package_share_directory=lambda pkg: str(share),
                                              get_package_prefix=_package_prefix,
                                              PackageNotFoundError=_PackageNotFound),
    }


def _load_with_fakes(monkeypatch, path: Path):
    for name, mod in _fake_launch_modules(ROOT).items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location(f"_launch_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(monkeypatch, filename, **launch_args):
    module = _load_with_fakes(monkeypatch, ROOT / "launch" / filename)
    desc = module.generate_launch_description()
    entities = desc.args[0]
    declared = {e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert all(kw["description"] for kw in declared.values())
    values = {name: kw["default_value"] for name, kw in declared.items()}
    unknown = set(launch_args) - set(values)
    assert not unknown, f"not launch arguments: {unknown}"
    values.update(launch_args)
    context = types.SimpleNamespace(launch_configurations=values)
    # No DDS environment from the launch files: the processes select the large-image profile themselves
    # and everything else (rviz2, the user's tools) keeps the default environment.
    assert not [e for e in entities if type(e).__name__ == "SetEnvironmentVariable"]
    opaque = next(e for e in entities if type(e).__name__ == "OpaqueFunction")
    return opaque.kwargs["function"](context), declared


def _check_parameters(node_action):
    params_file, overrides = node_action.kwargs["parameters"]
    assert Path(params_file) == ROOT / "config" / "driving.yaml"
    assert set(overrides) <= SCHEMA_NAMES | {"use_sim_time"}, set(overrides) - SCHEMA_NAMES
    load_configs(params_file, {k: v for k, v in overrides.items()})  # every value valid for the schema
    return overrides


@pytest.fixture
def rviz_installed(tmp_path, monkeypatch):
    exe = tmp_path / "lib" / "rviz2" / "rviz2"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setitem(FAKE_PREFIXES, "rviz2", str(tmp_path))


def test_rviz_true_without_rviz2_fails_before_starting_anything(monkeypatch):
    with pytest.raises(FileNotFoundError, match="rviz:=true, but rviz2 is not installed.*nothing was started"):
        _run(monkeypatch, "driving.launch.py", rviz="true")  # raised before any action is returned


def test_driving_launch_one_node_per_camera(monkeypatch, rviz_installed):
    actions, declared = _run(monkeypatch, "driving.launch.py", cameras="[front, rear]", teacher="msp",
                             score_threshold="0.6", scheme="1", rviz="true", use_sim_time="true")
    nodes = [a for a in actions if type(a).__name__ == "LifecycleNode"]
    assert [n.kwargs["namespace"] for n in nodes] == ["/csl/front", "/csl/rear"]
    for node, cam in zip(nodes, ("front", "rear")):
        kw = node.kwargs
        assert (kw["package"], kw["executable"], kw["name"]) == ("csl_ros", "csl_node", "csl_detector")
        assert ("image", f"/{cam}/image_raw") in kw["remappings"]
        assert ("camera_info", f"/{cam}/camera_info") in kw["remappings"]
        overrides = _check_parameters(node)
        assert overrides == {"teacher": "msp", "score_threshold": 0.6, "scheme": "1", "auto_activate": True,
                             "use_sim_time": True}
    rviz = [a for a in actions if type(a).__name__ == "Node"]
    assert len(rviz) == 1 and rviz[0].kwargs["executable"] == "rviz2"
    rviz_file = Path(rviz[0].kwargs["arguments"][1])
    assert rviz_file == ROOT / "config" / "csl.rviz" and rviz_file.is_file()


def test_driving_launch_defaults(monkeypatch):
    actions, declared = _run(monkeypatch, "driving.launch.py")
    (node,) = actions  # one camera, no rviz
    assert _check_parameters(node) == {"auto_activate": True, "use_sim_time": False}


def test_driving_launch_rejects_invalid_values_at_launch(monkeypatch):
    with pytest.raises(ValueError, match="teacher"):
        _run(monkeypatch, "driving.launch.py", teacher="sml2")
    with pytest.raises(ValueError, match="device='tpu' is not a device"):
        _run(monkeypatch, "driving.launch.py", device="tpu")
    with pytest.raises(FileNotFoundError, match="params_file"):
        _run(monkeypatch, "driving.launch.py", params_file="/nonexistent.yaml")


def test_replay_eval_launch(monkeypatch, tmp_path):
    bag = tmp_path / "bag"
    bag.mkdir()
    actions, declared = _run(monkeypatch, "replay_eval.launch.py", bag=str(bag), out=str(tmp_path / "out"),
                             teacher="energy")
    node = next(a for a in actions if type(a).__name__ == "LifecycleNode")
    assert _check_parameters(node)["teacher"] == "energy"
    proc = next(a for a in actions if type(a).__name__ == "ExecuteProcess")
    cmd = proc.kwargs["cmd"]
    assert cmd[:7] == ["csl-ros", "evaluate", "--live", "--bag", str(bag), "--out", str(tmp_path / "out")]
    flags = dict(zip(cmd[7::2], cmd[8::2]))
    remaps = dict(node.kwargs["remappings"])
    # The evaluator publishes where the node listens and scores what the node publishes.
    assert flags["--image-topic"] == remaps["image"] and flags["--camera-info-topic"] == remaps["camera_info"]
    assert flags["--scores-topic"] == f"{node.kwargs['namespace']}/csl_detector/anomaly_score"
    # ...and the evaluator's own parser accepts every flag (the default topics are its defaults too).
    from csl_ros.cli import build_parser
    from csl_ros import evaluate_cli as evaluate_module

    args = build_parser().parse_args(cmd[1:])
    assert args.live and (args.image_topic, args.scores_topic) == (evaluate_module.LIVE_IMAGE_TOPIC,
                                                                   evaluate_module.LIVE_SCORES_TOPIC)
    assert args.camera_info_topic == evaluate_module.LIVE_CAMERA_INFO_TOPIC
    assert any(type(a).__name__ == "RegisterEventHandler" for a in actions)
    with pytest.raises(ValueError, match="bag"):
        _run(monkeypatch, "replay_eval.launch.py")


# --- the real launch API, where installed ---------------------------------------------------------------------
@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_generate_launch_description_with_real_launch(path):
    pytest.importorskip("launch.actions")  # (the repo's launch/ folder alone would import as "launch")
    pytest.importorskip("launch_ros.actions")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument

    try:
        get_package_share_directory("csl_ros")
    except PackageNotFoundError:
        pytest.skip("csl_ros is not installed in an ament prefix (colcon build)")
    spec = importlib.util.spec_from_file_location(f"_real_{path.stem.replace('.', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    desc = module.generate_launch_description()
    assert isinstance(desc, LaunchDescription)
    declared = [e for e in desc.entities if isinstance(e, DeclareLaunchArgument)]
    assert {d.name for d in declared} == {a[0] for a in module.LAUNCH_ARGUMENTS}
    assert all(d.description for d in declared)
