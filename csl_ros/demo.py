"""``csl-ros demo``: the end-to-end demonstration: a synthroad drive through the CSL node over ROS, scored.

In order: build the detector from ``config/driving.yaml`` (default: the shipped synthroad models;
fails at once, naming models/manifest.json, when they are missing); render an obstacle-track drive
with synthroad; write a contact sheet of 12 frames with their label overlays, the drive as MP4 (image
above its label overlay) and a small GIF, and the drive as a rosbag2 (images, camera_info, ground
truth); start the ``csl_detector`` node (in this process, on its own ROS context) with that detector,
replay the bag to it over ROS topics with ``csl-ros evaluate --live`` (``--rate max``: every frame is
answered), score what it published and write the report (``eval/report.html``) and an overlay video
(``eval/overlay.mp4``).

The network runs at the schema default 256x512 (HxW, the shipped models' training size) unless
``--set input_height=...`` says otherwise, so the demo takes a few minutes on two CPU cores.

    csl-ros demo --out demo_out
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from csl_ros.cli import add_command, build_parser, image_size_arg
from csl_ros.config import load_configs, parse_set_args, second_pass_description, teacher_description
from csl_ros.data.loaders import Synthroad
from csl_ros.data.preview import label_overlay, save_contact_sheet
from csl_ros.data.synthroad import render_sequence
from csl_ros.evaluate_cli import LIVE_CAMERA_INFO_TOPIC, LIVE_IMAGE_TOPIC, evaluate_command
from csl_ros.ros.dds import PROFILE_VARIABLE, restored_environment, use_large_image_profile

DEMO_SWEEP = "score_threshold=0.02,0.05,0.1,0.2,0.3,0.5,0.7"   # wide: scores of obstacles vary by model
NODE_NAMESPACE = "/csl/camera"                 # as launch/replay_eval.launch.py starts the node


@dataclass
class DemoContext:
    out: Path
    frames_n: int
    size: tuple[int, int]
    seed: int = 7
    speed_mps: float = 10.0
    fps: float = 10.0
    frames: list = field(default_factory=list)        # synthroad Frames of the drive
    artifacts: dict = field(default_factory=dict)     # name -> Path
    notes: list = field(default_factory=list)         # lines for the summary
    config_path: str | None = None                    # ROS params file of the node
    overrides: dict = field(default_factory=dict)     # --set values
    rate: str = "max"                                 # replay rate of the live evaluation
    detector_config: object = None
    node_config: object = None
    detector: object = None                           # built by "models", handed to the node
    mounting: dict = field(default_factory=dict)      # camera_height_m / camera_pitch_deg of the drive


def default_params_file() -> Path:
    """config/driving.yaml: the source tree's, else the installed share/csl_ros/config one."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / "driving.yaml"]
    try:
        from ament_index_python.packages import get_package_share_directory  # optional: a colcon install

        candidates.append(Path(get_package_share_directory("csl_ros")) / "config" / "driving.yaml")
    except Exception:  # not in a sourced ROS workspace
        pass
    candidates.append(Path(sys.prefix) / "share" / "csl_ros" / "config" / "driving.yaml")
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError("config/driving.yaml not found (looked in: "
                            + ", ".join(str(c) for c in candidates) + "); pass --config")


def step_models(ctx: DemoContext) -> None:
    """Build the detector first: a missing model fails before anything is rendered."""
    from csl_ros.pipeline import Detector  # deferred: torch; csl-ros imports this module for its parser

    ctx.detector_config, ctx.node_config = load_configs(ctx.config_path, ctx.overrides)
    t0 = time.perf_counter()
    ctx.detector = Detector.from_config(ctx.detector_config)
    cfg = ctx.detector.config   # with what the student checkpoint carries (input size, test_scale)
    ctx.notes.append(f"detector: scheme {cfg.scheme}, {teacher_description(cfg.teacher, cfg.teacher_flip)}, "
                     f"network {cfg.input_height}x{cfg.input_width}"
                     f"{second_pass_description(cfg.input_height, cfg.input_width, cfg.test_scale)}, "
                     f"backend {ctx.detector.backend} on {ctx.detector.device}, "
                     f"loaded in {time.perf_counter() - t0:.1f} s")


def step_drive(ctx: DemoContext) -> None:
    t0 = time.perf_counter()
    it = render_sequence(ctx.seed, ctx.frames_n, ctx.size, obstacles="obstacle", speed_mps=ctx.speed_mps, fps=ctx.fps)
    ctx.frames = list(tqdm(it, total=ctx.frames_n, desc="render drive", unit="frame"))
    dt = time.perf_counter() - t0
    n_obst = len({o["instance_id"] for f in ctx.frames for o in f.obstacles})
    ctx.notes.append(f"rendered {len(ctx.frames)} frames {ctx.size[0]}x{ctx.size[1]} in {dt:.1f} s "
                     f"({len(ctx.frames) / max(dt, 1e-9):.1f} frames/s), {n_obst} distinct obstacles seen")
    _use_drive_mounting(ctx)


def _use_drive_mounting(ctx: DemoContext) -> None:
    """The node's ``camera_height_m`` / ``camera_pitch_deg`` become the rendered camera's (its height and
    median pitch over the drive: a vehicle's calibrated static mounting), as a user sets them for their
    car: config/driving.yaml's generic 1.5 m / 0 deg would misplace every contact point (the range
    ``max_obstacle_distance_m`` and the markers). A ``--set`` of either wins."""
    if not ctx.frames or {"camera_height_m", "camera_pitch_deg"} & set(ctx.overrides):
        return
    mounting = {"camera_height_m": round(float(ctx.frames[0].camera.height_m), 4),
                "camera_pitch_deg": round(float(np.median([f.camera.pitch_deg for f in ctx.frames])), 4)}
    ctx.detector_config = dataclasses.replace(ctx.detector_config, **mounting)
    ctx.mounting = mounting
    ctx.notes.append(f"node mounting from the rendered camera: height {mounting['camera_height_m']:.2f} m, "
                     f"pitch {mounting['camera_pitch_deg']:.2f} deg")


def step_contact_sheet(ctx: DemoContext) -> None:
    n = len(ctx.frames)
    pick = [ctx.frames[round(i * (n - 1) / 11)] for i in range(12)] if n >= 12 else ctx.frames
    ctx.artifacts["contact_sheet"] = save_contact_sheet(ctx.out / "synthroad_drive_sheet.png", pick)


def step_video(ctx: DemoContext) -> None:
    import imageio.v2 as imageio  # deferred: the eval extra (csl-ros starts without it)

    h, w = ctx.size
    # at most 640 px wide, dimensions divisible by 16 (keeps every MP4 player happy)
    vw = max(16, (min(w, 640) // 16) * 16)
    vh = max(16, (int(round(h * vw / w)) // 16) * 16)
    mp4 = ctx.out / "synthroad_drive.mp4"
    with imageio.get_writer(mp4, fps=ctx.fps, codec="libx264", quality=6, macro_block_size=16,
                            ffmpeg_params=["-threads", "1"]) as wr:
        for f in ctx.frames:
            img = cv2.resize(f.image, (vw, vh), interpolation=cv2.INTER_AREA)
            ov = cv2.resize(label_overlay(f), (vw, vh), interpolation=cv2.INTER_NEAREST)
            wr.append_data(np.vstack([img, ov]))
    ctx.artifacts["video"] = mp4
    gif = ctx.out / "synthroad_drive.gif"
    gw = min(400, w)
    gh = max(2, int(round(h * gw / w)))
    small = [cv2.resize(f.image, (gw, gh), interpolation=cv2.INTER_AREA) for f in ctx.frames[::2]]
    imageio.mimsave(gif, small, duration=2.0 / ctx.fps, loop=0)
    ctx.artifacts["gif"] = gif


def step_bag(ctx: DemoContext) -> None:
    from csl_ros.eval.bag import write_bag  # deferred: rosbags, the eval extra

    bag = ctx.out / "drive_bag"
    if bag.exists():            # the demo's own bag from an earlier run (rosbag2 never overwrites)
        shutil.rmtree(bag)
    records = (Synthroad.record(f, f"demo_s{ctx.seed}_{i:06d}") for i, f in enumerate(ctx.frames))
    summary = write_bag(records, bag, rate_hz=ctx.fps, dataset="synthroad")
    ctx.artifacts["bag"] = summary.path


def _parameters(ctx: DemoContext):
    from rclpy.parameter import Parameter  # deferred: rclpy, the ros extra (csl-ros starts without it)

    values = {**dataclasses.asdict(ctx.detector_config), **dataclasses.asdict(ctx.node_config)}
    return [Parameter(k, value=v) for k, v in values.items()]


def step_node_eval(ctx: DemoContext) -> None:
    """The node on its own ROS context in this process, the live evaluator talking to it over DDS."""
    with restored_environment("ROS_DOMAIN_ID", PROFILE_VARIABLE):
        _node_eval(ctx)


def _node_eval(ctx: DemoContext) -> None:
    # A private domain unless the user chose one, so a running ROS graph is not disturbed.
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 199)))
    use_large_image_profile()   # read by Fast DDS before rclpy.init below creates the participant

    # deferred: rclpy (the ros extra) and the node, which loads torch
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from csl_ros.ros.node import CslDetectorNode, default_detector_factory

    prebuilt = [ctx.detector]

    def factory(cfg):  # the detector built by "models" first; a reconfigure builds a new one
        return prebuilt.pop() if prebuilt else default_detector_factory(cfg)

    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = executor = thread = None
    try:
        node = CslDetectorNode(detector_factory=factory, namespace=NODE_NAMESPACE, context=context,
                               parameter_overrides=_parameters(ctx),
                               cli_args=["--ros-args", "-r", f"image:={LIVE_IMAGE_TOPIC}",
                                         "-r", f"camera_info:={LIVE_CAMERA_INFO_TOPIC}"])
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        thread = threading.Thread(target=executor.spin, name="csl_demo_node", daemon=True)
        thread.start()
        if not node.configure_and_activate():
            raise RuntimeError("the csl_detector node failed to configure/activate (see its log above)")
        print(f"[demo] node {node.get_fully_qualified_name()} active on ROS_DOMAIN_ID="
              f"{os.environ['ROS_DOMAIN_ID']}, listening on {LIVE_IMAGE_TOPIC}")
        out = ctx.out / "eval"
        argv = ["evaluate", "--live", "--bag", str(ctx.artifacts["bag"]), "--out", str(out), "--rate", ctx.rate,
                "--video", "--sweep", DEMO_SWEEP, "--track", "obstacle",
                "--allow-dropped"]   # a node slower than the replay skips frames: counted in the report
        if ctx.config_path:
            argv += ["--config", str(ctx.config_path)]
        for k, v in {**ctx.overrides, **ctx.mounting}.items():
            argv += ["--set", f"{k}={v}"]
        rc = evaluate_command(build_parser().parse_args(argv))
        if rc != 0:
            raise RuntimeError(f"the live evaluation failed (exit code {rc})")
        from csl_ros.eval.driving import driving_summary_line  # deferred: torch (as in step_models)

        ctx.notes.append(driving_summary_line(json.loads((out / "metrics.json").read_text())["driving"]))
        stats = node.stats.snapshot(node.frames_dropped)
        ctx.notes.append(f"node: {stats.get('frames_processed')} frames processed, "
                         f"{stats.get('frames_dropped')} dropped")
        for name in ("report.html", "report.md", "metrics.json", "overlay.mp4"):
            ctx.artifacts[name.replace(".", "_")] = out / name
    finally:
        if node is not None:
            node.release_all()
        if executor is not None:
            executor.shutdown(timeout_sec=5)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        if thread is not None:
            thread.join(timeout=5)
        ctx.detector = None


# The demo is this list of steps, run in order on one shared DemoContext: each step reads what earlier
# steps left there and records the files it writes in ctx.artifacts. A new step is one more pair here.
DEMO_STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("models", step_models),
    ("drive", step_drive),
    ("contact_sheet", step_contact_sheet),
    ("video", step_video),
    ("bag", step_bag),
    ("node_eval", step_node_eval),
]


def register(sub) -> None:
    p = add_command(sub, "demo", "run the end-to-end demo on a synthetic drive and write its outputs", __doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=40, help="number of frames of the synthetic drive (default 40)")
    p.add_argument("--size", type=image_size_arg, default=(512, 1024),
                   help="frame size HxW in pixels (default 512x1024)")
    p.add_argument("--config", default=None,
                   help="the node's ROS parameters file (default: config/driving.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of csl_ros.config (repeatable)")
    p.add_argument("--rate", default="max",
                   help="replay rate of the live evaluation: max (every frame answered), recorded, or a "
                        "factor of the recorded rate")
    p.set_defaults(func=run)


def run(args) -> int:

    cv2.setNumThreads(1)
    size = args.size
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    from csl_ros.ros.live_replay import parse_rate  # deferred: rclpy, the ros extra

    parse_rate(args.rate)
    ctx = DemoContext(out=Path(args.out), frames_n=int(args.frames), size=size,
                      config_path=str(args.config or default_params_file()),
                      overrides=parse_set_args(args.set), rate=args.rate)
    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for name, step in DEMO_STEPS:
        t = time.perf_counter()
        step(ctx)
        print(f"[demo] {name}: {time.perf_counter() - t:.1f} s")
    for line in ctx.notes:
        print(f"[demo] {line}")
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s; outputs:")
    for name, path in ctx.artifacts.items():
        print(f"  {name:14s} {path}")
    if "report_html" in ctx.artifacts:
        print(f"[demo] the report is {ctx.artifacts['report_html']} (Markdown: {ctx.artifacts['report_md']})")
    return 0
