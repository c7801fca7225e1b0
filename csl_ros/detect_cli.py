"""``csl-ros detect IMAGE_OR_DIR --out DIR``: run the detector on image files.

Writes per image: ``<stem>_anomaly.npy`` (float32 map), ``<stem>_anomaly.png`` (colour map),
``<stem>_instances.png`` (uint16 ids), ``<stem>_overlay.jpg`` and ``<stem>_obstacles.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The config options shared by every command that builds a detector."""
    p.add_argument("--config", help="YAML parameter file (e.g. config/driving.yaml); defaults from the schema")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of csl_ros.config (repeatable), e.g. --set teacher=energy")


def detector_config_from_args(args):
    from csl_ros.config import load_configs, parse_set_args

    det, _node = load_configs(args.config, parse_set_args(args.set))
    return det


def register(sub) -> None:
    p = sub.add_parser("detect", help="run the detector on an image or a directory of images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="an image file or a directory of images (taken in name order as the "
                   "frames of one camera: obstacles are tracked across them with the track_* settings; "
                   "unconfirmed ones are listed under 'tentative' in the JSON)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--fx", type=float, help="focal length in pixels (with --cy: enables metric obstacles)")
    p.add_argument("--cx", type=float)
    p.add_argument("--cy", type=float)
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import cv2
    import numpy as np

    from csl_ros.pipeline import CameraGeometry, Detector
    from csl_ros.visualize import colorize_scores, draw_overlay

    src = Path(args.input)
    if src.is_dir():
        files = sorted(f for f in src.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)})")
    elif src.is_file():
        files = [src]
    else:
        raise FileNotFoundError(f"{src}: no such file or directory")
    cfg = detector_config_from_args(args)
    detector = Detector.from_config(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{f}: not a readable image")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        cam = None
        if args.fx and args.cy is not None:
            cx = args.cx if args.cx is not None else rgb.shape[1] / 2
            cam = CameraGeometry(args.fx, args.fx, cx, args.cy, cfg.camera_height_m, cfg.camera_pitch_deg)
        det = detector(rgb, cam)
        np.save(out / f"{f.stem}_anomaly.npy", det.anomaly_map)
        cv2.imwrite(str(out / f"{f.stem}_anomaly.png"), colorize_scores(det.anomaly_map))
        cv2.imwrite(str(out / f"{f.stem}_instances.png"), det.instances)
        cv2.imwrite(str(out / f"{f.stem}_overlay.jpg"), draw_overlay(rgb, det.anomaly_map, det.instances, det.obstacles))
        (out / f"{f.stem}_obstacles.json").write_text(json.dumps(
            {"image": str(f), "backend": det.backend, "device": det.device, "timings_ms": det.timings_ms,
             "obstacles": det.obstacles_json(), "tentative": [o.to_dict() for o in det.tentative]}, indent=2))
        print(f"{f.name}: {len(det.obstacles)} obstacle(s), {det.timings_ms['total']:.0f} ms ({det.backend})")
    print(f"wrote {len(files)} result(s) to {out}")
    return 0
