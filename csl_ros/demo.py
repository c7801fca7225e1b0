"""``csl-ros demo``: the end-to-end demonstration on the embedded synthroad default.

The demo is a list of steps (``DEMO_STEPS``) run in order on one shared ``DemoContext``; each step
reads what earlier steps left there and records the files it writes in ``ctx.artifacts``. Later
stages of the project append their steps (record a bag, run the node, write a report) without
changing the command.

Step "drive": render an obstacle-track drive with synthroad; "contact_sheet": 12 frames with their
label overlays; "video": the drive as MP4 (image above its label overlay) and a small GIF.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


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


def step_drive(ctx: DemoContext) -> None:
    from tqdm import tqdm

    from csl_ros.data.synthroad import render_sequence
    t0 = time.perf_counter()
    it = render_sequence(ctx.seed, ctx.frames_n, ctx.size, obstacles="obstacle", speed_mps=ctx.speed_mps, fps=ctx.fps)
    ctx.frames = list(tqdm(it, total=ctx.frames_n, desc="render drive", unit="frame"))
    dt = time.perf_counter() - t0
    n_obst = len({o["instance_id"] for f in ctx.frames for o in f.obstacles})
    ctx.notes.append(f"rendered {len(ctx.frames)} frames {ctx.size[0]}x{ctx.size[1]} in {dt:.1f} s "
                     f"({len(ctx.frames) / max(dt, 1e-9):.1f} frames/s), {n_obst} distinct obstacles seen")


def step_contact_sheet(ctx: DemoContext) -> None:
    from csl_ros.data.preview import save_contact_sheet
    n = len(ctx.frames)
    pick = [ctx.frames[round(i * (n - 1) / 11)] for i in range(12)] if n >= 12 else ctx.frames
    ctx.artifacts["contact_sheet"] = save_contact_sheet(ctx.out / "synthroad_drive_sheet.png", pick)


def step_video(ctx: DemoContext) -> None:
    import cv2
    import imageio.v2 as imageio
    import numpy as np

    from csl_ros.data.preview import label_overlay
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


# Steps run in order; later stages append (name, function) pairs.
DEMO_STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("drive", step_drive),
    ("contact_sheet", step_contact_sheet),
    ("video", step_video),
]


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo on a synthetic drive and write its outputs",
                       description=__doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=60, help="frames of the synthetic drive (default 60)")
    p.add_argument("--size", default="512x1024", help="frame size HxW (default 512x1024)")
    p.set_defaults(func=run)


def run(args) -> int:
    import cv2

    from csl_ros.data.synth_cli import parse_size

    cv2.setNumThreads(1)
    size = parse_size(args.size)
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    ctx = DemoContext(out=Path(args.out), frames_n=int(args.frames), size=size)
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
    return 0
