"""``csl-ros bag``: convert benchmark datasets to rosbag2 (``convert``) and summarise a bag (``info``).

Each frame becomes a sensor_msgs/Image (or CompressedImage), its CameraInfo and its ground-truth label
image under one header stamp, so ``csl-ros evaluate`` and ``ros2 bag play`` can use it.

    csl-ros bag convert --dataset laf-noknown --root /data/LostAndFound --out laf_noknown_bag
    csl-ros bag convert --dataset synthroad --frames 200 --out drive --format sqlite3 --rate 10
    csl-ros bag info drive
"""
from __future__ import annotations

import itertools
from pathlib import Path

from csl_ros.cli import add_command, image_size_arg
from csl_ros.data.loaders import open_dataset
from csl_ros.data.registry import DATASETS

CONVERT_DOC = """csl-ros bag convert: write a benchmark dataset (or a synthroad drive) as a rosbag2.

Images on /camera/image_raw (or .../compressed), camera_info and the ground-truth labels, one header
stamp per frame at --rate. Datasets: smiyc-anomaly / smiyc-obstacle (SegmentMeIfYouCan), laf
(LostAndFound, --split), laf-noknown, fishyscapes-laf (labels; images from --laf-root), synthroad
(rendered on the fly; the synthroad options below), and any other registered dataset with
obstacle labels.

    csl-ros bag convert --dataset smiyc-obstacle --root /data/dataset_ObstacleTrack --out obstacle_bag
"""
INFO_DOC = """csl-ros bag info: topics, message counts and frames of a rosbag2.

    csl-ros bag info drive --check
"""

# The registered datasets with obstacle labels (a live view), and which command-line argument gives
# each loader option a dataset declares (csl_ros.data.registry).
BAG_DATASETS = DATASETS.choices(where={"anomaly_labels": True})
OPTION_ARGS = {"split": "split", "laf_root": "laf_root", "seed": "seed", "n_frames": "frames",
               "size": "size", "obstacles": "obstacles", "speed_mps": "speed", "fps": "rate"}


def register(subparsers) -> None:
    p = add_command(subparsers, "bag", "rosbag2 conversion of benchmark datasets, bag summary", __doc__)
    sub = p.add_subparsers(dest="bag_command", metavar="BAG_COMMAND")
    sub.required = True

    c = add_command(sub, "convert", "write a dataset as a rosbag2 (images, camera info, labels)", CONVERT_DOC)
    c.add_argument("--dataset", required=True, choices=BAG_DATASETS, help="the dataset to convert")
    c.add_argument("--root", type=Path, default=None,
                   help="dataset folder (not used for synthroad)")
    c.add_argument("--out", required=True, type=Path, help="bag folder to create (must not exist)")
    c.add_argument("--format", default="mcap", choices=("mcap", "sqlite3"),
                   help="storage: mcap (Foxglove, ros2 bag with the mcap plugin) or sqlite3")
    c.add_argument("--compressed", action="store_true",
                   help="images as sensor_msgs/CompressedImage on /camera/image_raw/compressed")
    c.add_argument("--compressed-format", default="jpeg", choices=("jpeg", "png"),
                   help="codec for --compressed (png is lossless)")
    c.add_argument("--rate", type=float, default=10.0, help="frame rate of the stamps (Hz)")
    c.add_argument("--bag-version", type=int, default=8, choices=(8, 9),
                   help="rosbag2 metadata version: 8 (Jazzy and later) or 9 (Kilted)")
    c.add_argument("--limit", type=int, default=None, help="convert only the first N frames (count)")
    c.add_argument("--split", default="test", choices=("test", "train"), help="laf: LostAndFound split")
    c.add_argument("--laf-root", type=Path, default=None,
                   help="fishyscapes-laf: LostAndFound tree holding the images (leftImg8bit/{train,test}/"
                        "...; default: --root, --root/dataset_LostAndFound or ../dataset_LostAndFound)")
    g = c.add_argument_group("synthroad (--dataset synthroad: a drive rendered on the fly)")
    g.add_argument("--seed", type=int, default=0, help="seed of the drive (default 0)")
    g.add_argument("--frames", type=int, default=100, help="number of frames of the drive (default 100)")
    g.add_argument("--size", type=image_size_arg, default=(512, 1024),
                   help="frame size HxW in pixels (default 512x1024)")
    g.add_argument("--obstacles", default="obstacle", choices=("none", "obstacle", "anomaly"),
                   help="OOD obstacles: none, obstacle (on the road, Obstacle-Track labels) or anomaly "
                        "(anywhere, Anomaly-Track labels); default obstacle")
    g.add_argument("--speed", type=float, default=10.0, help="ego speed in m/s (default 10)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_convert)

    i = add_command(sub, "info", "topics, message counts and frames of a bag", INFO_DOC)
    i.add_argument("bag", type=Path, help="rosbag2 folder (with its metadata.yaml)")
    i.add_argument("--check", action="store_true",
                   help="also decode every frame (finds truncated or corrupt data)")
    i.set_defaults(func=run_info)


def open_for_bag(args):
    entry = DATASETS.entry(args.dataset)
    if entry.root and args.root is None:
        raise ValueError(f"--root is required for --dataset {args.dataset}")
    options = {name: getattr(args, OPTION_ARGS[name]) for name in entry.options
               if name in OPTION_ARGS and getattr(args, OPTION_ARGS[name]) is not None}
    if "require_labels" in entry.options:
        options["require_labels"] = False     # test images without labels still make a bag
    return open_dataset(args.dataset, args.root if entry.root else None, **options)


def run_convert(args) -> int:
    # deferred: rosbags, the eval extra (csl-ros imports every command module to build its parser)
    from csl_ros.eval.bag import write_bag

    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be >= 1")
    ds = open_for_bag(args)
    n = len(ds) if args.limit is None else min(args.limit, len(ds))
    records = itertools.islice(iter(ds), n)
    summary = write_bag(records, args.out, storage=args.format, compressed=args.compressed,
                        compressed_format=args.compressed_format, rate_hz=args.rate,
                        version=args.bag_version, dataset=args.dataset,
                        progress=not args.quiet, total=n)
    print(f"wrote {summary.path} ({summary.storage}): {summary.frames} frames, "
          f"{summary.labelled} labelled, topics: {', '.join(sorted(summary.topics))}")
    return 0


def run_info(args) -> int:
    # deferred: rosbags, the eval extra (csl-ros imports every command module to build its parser)
    from csl_ros.eval.bag import BagReader

    with BagReader(args.bag) as reader:
        print(f"{args.bag}: {reader.message_count} messages")
        s = reader.stats
        if s.chunks_verified or s.chunks_without_crc:
            print(f"  integrity: {s.chunks_verified} MCAP chunk(s) CRC-verified, "
                  f"{s.chunks_without_crc} without a CRC (not verifiable)")
        for topic, msgtype in sorted(reader.topics.items()):
            print(f"  {topic:<32} {msgtype}")
        for key, value in sorted(reader.custom.items()):
            print(f"  custom {key} = {value}")
        if args.check:
            n = sum(1 for _ in reader.frames())
            s = reader.stats
            print(f"  frames: {n} decoded, {s.matched} with labels, "
                  f"{s.unmatched_labels} labels without an image")
    return 0
