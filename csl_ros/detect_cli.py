"""``csl-ros detect IMAGE_VIDEO_OR_DIR --out DIR``: run the CSL detector on image and video files.

Writes per image: ``<stem>_anomaly.npy`` (float32 map), ``<stem>_anomaly.png`` (colour map with its
colour bar below), ``<stem>_instances.png`` (uint16 ids, 0 = none), ``<stem>_instances_color.png`` (one
colour per id), ``<stem>_overlay.jpg`` and ``<stem>_obstacles.json``.
Video files (.mp4, .avi, .mkv, .mov) are read frame by frame (every ``--every``-th frame), one set of
outputs per frame named ``<stem>_f<frame index, 6 digits>_*``. A folder is searched for images and
videos (``--recursive``: its subfolders too, mirrored under ``--out``). Two inputs with the same stem
in one folder (``x.png`` and ``x.jpg``) never overwrite each other: their outputs are named
``x_png_*`` and ``x_jpg_*``. A file that cannot be read is reported and skipped; the run goes on and
ends with a one-line summary, exit status 1 if any file failed (2: bad arguments).
With the camera's focal length and principal point (``--fx``, ``--cy``, optionally ``--cx``) obstacles
get metric positions and distances (flat road, camera height and pitch from the config).

    csl-ros detect frame.png --out det --config config/driving.yaml --fx 2262 --cy 513
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from csl_ros.cli import add_command
from csl_ros.config import load_configs, parse_set_args, regions_description
from csl_ros.data.loaders import read_rgb
from csl_ros.visualize import colorize_instances, draw_overlay, score_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The config options shared by every command that builds a detector."""
    p.add_argument("--config", help="YAML parameter file (e.g. config/driving.yaml); defaults from the schema")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of csl_ros.config (repeatable), e.g. --set teacher=energy")


def detector_config_from_args(args):
    det, _node = load_configs(args.config, parse_set_args(args.set))
    return det


def register(sub) -> None:
    p = add_command(sub, "detect", "run the detector on images, videos or a directory of them", __doc__)
    p.add_argument("input", help="an image file, a video file (.mp4, .avi, .mkv, .mov) or a directory "
                                 "of them; the frames are taken in order as one camera stream, obstacles "
                                 "tracked across them with the track_* settings (unconfirmed ones are "
                                 "listed under 'tentative' in the JSON; with track_coast, missed confirmed "
                                 "ones are listed with 'coasted' > 0 at their predicted place)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--recursive", action="store_true",
                   help="also search the subfolders of a directory input; outputs mirror its tree")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="videos: run the detector on every N-th frame (frames 0, N, 2N, ...; default 1)")
    p.add_argument("--fx", type=float,
                   help="focal length in pixels, fx = fy (with --cy: obstacles get metric positions)")
    p.add_argument("--cx", type=float, help="principal point column in pixels (default: the image centre)")
    p.add_argument("--cy", type=float, help="principal point row in pixels (needed with --fx)")
    add_config_args(p)
    p.set_defaults(func=run)


def collect_inputs(src: Path, recursive: bool = False) -> list[Path]:
    """The image and video files of ``src`` (a file, or a folder searched one level or recursively)."""
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    found = src.rglob("*") if recursive else src.iterdir()
    files = sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
    if not files:
        raise ValueError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) or videos "
                         f"({', '.join(VIDEO_SUFFIXES)}){'' if recursive else ' (--recursive searches subfolders)'}")
    return files


def output_prefixes(files: list[Path], src: Path, out: Path) -> dict[Path, Path]:
    """{input: output path prefix}: ``out/<subfolder>/<stem>``, or ``<stem>_<ext>`` when another input
    of the same folder has the same stem, so no output overwrites another."""
    rel = {f: (f.parent.relative_to(src) if src.is_dir() else Path()) for f in files}
    stems = Counter((rel[f], f.stem.lower()) for f in files)
    return {f: out / rel[f] / (f.stem if stems[(rel[f], f.stem.lower())] == 1
                               else f"{f.stem}_{f.suffix[1:].lower()}") for f in files}


def video_frames(path: Path, every: int):
    """(frame index, RGB frame) of every ``every``-th frame of a video; ValueError if unreadable."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError("not a readable video")
    try:
        index = 0
        while True:
            ok = cap.grab()
            if not ok:
                break
            if index % every == 0:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    raise ValueError(f"frame {index} does not decode")
                yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
        if index == 0:
            raise ValueError("no frame decodes (not a video, or corrupt)")
    finally:
        cap.release()


def run(args, detector_factory=None) -> int:
    """The ``csl-ros detect`` command; ``detector_factory`` replaces ``Detector.from_config`` (tests)."""
    from csl_ros.pipeline import CameraGeometry  # deferred: torch; csl-ros imports this module for its parser

    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    src = Path(args.input)
    files = collect_inputs(src, args.recursive)
    cfg = detector_config_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # an unusable --out fails before the models load
    if detector_factory is None:
        from csl_ros.pipeline import Detector  # deferred: torch (see above)

        detector_factory = Detector.from_config

    detector = detector_factory(cfg)
    regions = regions_description(getattr(detector, "config", cfg))
    print(f"detector: scheme {cfg.scheme}, teacher {cfg.teacher}"
          f"{f' ({cfg.teacher_path})' if cfg.teacher_path else ''}, {regions}")
    prefixes = output_prefixes(files, src, out)

    used: set[Path] = set()

    def detect_one(rgb, prefix: Path, source: str):
        base, k = prefix, 2
        while prefix in used:           # e.g. an image named like a video's frame outputs
            prefix, k = base.with_name(f"{base.name}_{k}"), k + 1
        used.add(prefix)
        cam = None
        if args.fx and args.cy is not None:
            cx = args.cx if args.cx is not None else rgb.shape[1] / 2
            cam = CameraGeometry(args.fx, args.fx, cx, args.cy, cfg.camera_height_m, cfg.camera_pitch_deg)
        det = detector(rgb, cam)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        np.save(f"{prefix}_anomaly.npy", det.anomaly_map)
        cv2.imwrite(f"{prefix}_anomaly.png", score_image(det.anomaly_map))
        cv2.imwrite(f"{prefix}_instances.png", det.instances)
        cv2.imwrite(f"{prefix}_instances_color.png", colorize_instances(det.instances))
        cv2.imwrite(f"{prefix}_overlay.jpg", draw_overlay(rgb, det.anomaly_map, det.instances, det.obstacles))
        Path(f"{prefix}_obstacles.json").write_text(json.dumps(
            {"image": source, "backend": det.backend, "device": det.device, "regions": regions,
             "timings_ms": det.timings_ms, "obstacles": det.obstacles_json(),
             "tentative": [o.to_dict() for o in det.tentative]}, indent=2))
        return det

    n_images = n_videos = n_video_frames = 0
    failed: list[tuple[Path, str]] = []
    try:
        for f in files:
            prefix = prefixes[f]
            try:
                if f.suffix.lower() in VIDEO_SUFFIXES:
                    n = n_obstacles = 0
                    for index, rgb in video_frames(f, args.every):
                        det = detect_one(rgb, prefix.with_name(f"{prefix.name}_f{index:06d}"), f"{f}#{index}")
                        n += 1
                        n_obstacles += len(det.obstacles)
                    n_videos += 1
                    n_video_frames += n
                    print(f"{f.name}: {n} frame(s) (every {args.every}), {n_obstacles} obstacle(s) in all")
                else:
                    det = detect_one(read_rgb(f), prefix, str(f))
                    n_images += 1
                    print(f"{f.name}: {len(det.obstacles)} obstacle(s), {det.timings_ms['total']:.0f} ms "
                          f"({det.backend})")
            except (ValueError, OSError, cv2.error) as exc:
                failed.append((f, str(exc)))
                print(f"csl-ros detect: skipped {f}: {exc}", file=sys.stderr)
    finally:
        close = getattr(detector, "close", None)
        if close is not None:
            close()
    done = n_images + n_videos
    summary = (f"detect: {done} of {len(files)} file(s) processed ({n_images} image(s), {n_videos} "
               f"video(s) with {n_video_frames} frame(s)), {len(failed)} failed")
    if failed:
        summary += " (" + "; ".join(f"{f.name}: {why}" for f, why in failed[:5]) + \
                   (f"; and {len(failed) - 5} more" if len(failed) > 5 else "") + ")"
    teacher = getattr(detector, "teacher", None)
    if getattr(teacher, "out_of_range_pixels", 0):
        summary += (f"; the teacher's map left its declared range {teacher.map_range} in "
                    f"{teacher.out_of_range_pixels} pixel(s) of {teacher.out_of_range_frames} frame(s)")
    print(f"{summary}; results in {out}")
    return 1 if failed else 0
