"""``csl-ros synth``: render synthroad frames into a real dataset layout (Cityscapes, SMIYC, LostAndFound).

Frame ``i`` of ``--frames N`` is rendered from seed ``--seed`` + ``i`` for the Cityscapes and SMIYC
layouts (any frame can be rendered again alone); the LostAndFound layout is made of drives (drive ``j``
from seed ``--seed`` + ``j``, ``--seq-len`` frames each), one scene folder per drive, as in the real
dataset.

    csl-ros synth --layout smiyc --split validation --frames 20 --size 512x1024 --out smiyc_synth
"""
from __future__ import annotations

from pathlib import Path

import cv2
from tqdm import tqdm

from csl_ros.cli import add_command, image_size_arg
from csl_ros.data.preview import save_contact_sheet
from csl_ros.data.synthroad import render_frame, render_sequence
from csl_ros.data.writers import CityscapesWriter, LostAndFoundWriter, SmiycWriter

DEFAULT_OBSTACLES = {"cityscapes": "none", "smiyc": "obstacle", "laf": "obstacle"}


def register(sub) -> None:
    p = add_command(sub, "synth", "render synthroad frames into a Cityscapes / SMIYC / LostAndFound layout",
                    __doc__)
    p.add_argument("--layout", required=True, choices=("cityscapes", "smiyc", "laf"), help="dataset layout to write")
    p.add_argument("--split", required=True,
                   help="split folder (cityscapes/laf, e.g. train, val, test); for smiyc the fid prefix / scene, "
                        "e.g. validation -> validation0000 (anomaly) or validation_000001 (obstacle)")
    p.add_argument("--frames", type=int, required=True, help="number of frames to write")
    p.add_argument("--size", type=image_size_arg, default=(512, 1024), help="frame size HxW in pixels (default 512x1024)")
    p.add_argument("--out", required=True, help="root folder of the layout")
    p.add_argument("--obstacles", choices=("none", "obstacle", "anomaly"), default=None,
                   help="OOD obstacles: none, obstacle (on the road, Obstacle-Track labels) or anomaly (anywhere, "
                        "Anomaly-Track labels); default: none for cityscapes, obstacle for smiyc and laf")
    p.add_argument("--seed", type=int, default=0, help="seed of the first frame (default 0)")
    p.add_argument("--seq-len", type=int, default=10,
                   help="laf: number of frames per drive / scene folder (default 10)")
    p.add_argument("--preview", default="", help="also write a contact sheet of up to 12 frames to this PNG")
    p.set_defaults(func=run)


def run(args) -> int:
    cv2.setNumThreads(1)
    size = args.size
    n = int(args.frames)
    if n < 1:
        raise ValueError(f"--frames must be >= 1, got {n}")
    if args.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1, got {args.seq_len}")
    obstacles = args.obstacles or DEFAULT_OBSTACLES[args.layout]
    out = Path(args.out)
    if args.layout == "smiyc" and obstacles == "none":
        raise ValueError("the smiyc layout needs --obstacles obstacle (Obstacle Track) or anomaly (Anomaly Track)")
    out.mkdir(parents=True, exist_ok=True)  # an unusable --out fails before anything is rendered

    preview_every = max(1, n // 12)
    preview = []
    bar = tqdm(total=n, desc=f"synth {args.layout} {args.split}", unit="frame")

    def keep(frame, k):
        if args.preview and k % preview_every == 0 and len(preview) < 12:
            preview.append(frame)
        bar.update(1)

    if args.layout == "cityscapes":
        writer = CityscapesWriter(out, args.split)
        for i in range(n):
            f = render_frame(args.seed + i, size, obstacles)
            writer.write(f, seq=args.seed + i)
            keep(f, i)
    elif args.layout == "smiyc":
        writer = SmiycWriter(out, obstacles, prefix=args.split)
        first = 0 if obstacles == "anomaly" else 1   # like the real fids: validation0000 / validation_1
        for i in range(n):
            f = render_frame(args.seed + i, size, obstacles)
            writer.write(f, first + i)
            keep(f, i)
    else:
        writer = LostAndFoundWriter(out, args.split)
        k = 0
        drive = 0
        while k < n:
            m = min(args.seq_len, n - k)
            seed = args.seed + drive
            for f in render_sequence(seed, m, size, obstacles):
                writer.write(f, scene_no=drive + 1, scene=f"Synthroad_{seed}", seq=0, frame_no=f.index)
                keep(f, k)
                k += 1
            drive += 1
    bar.close()
    print(f"wrote {n} {args.layout} frames ({size[0]}x{size[1]}, obstacles={obstacles}) under {out}")
    if args.preview:
        path = save_contact_sheet(args.preview, preview)
        print(f"contact sheet: {path}")
    return 0
