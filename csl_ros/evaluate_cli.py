"""``csl-ros evaluate``: score the detector on a rosbag and write metrics.json plus a report.

Three ways to get the score maps of the bag's frames, all scored by the same code (the SMIYC protocol,
as in ``csl-ros metrics``):

* default, in process: read the bag, run the detector (``--config`` / ``--set``) on every labelled
  frame, camera geometry from the bag's camera_info;
* ``--live``: publish the bag's images (and camera_info) on ROS topics, subscribe to a running
  ``csl_detector`` node's ``~/anomaly_score`` and score what the node actually published, matched by
  header stamp; frames the node never answered are counted as dropped;
* ``--scores-topic TOPIC`` (without ``--live``): the bag already holds the node's output (recorded
  with ``ros2 bag record``); nothing is run.

Frames are matched to their ground truth by header stamp and never dropped silently: metrics.json
counts images, labelled frames, scored frames, unlabelled images, labels without an image and
dropped frames. Sweeps (``--sweep score_threshold=0.3:0.9:0.1``, ``--sweep min_instance_area=...``)
reuse the one pass of network outputs.

Exit status: 0 when every labelled frame was scored; 1, with the reason on stderr and in
metrics.json (``run.failures``; the counts are written either way), when no frame was scored, when
the bag has no label topic (``--no-labels`` runs and times the detector only, exit 0), or when any
labelled frame was dropped or, with ``--salvage``, any damaged record skipped (``--allow-dropped``
accepts both); 2 on bad input, a corrupt bag included (one line naming it).

    csl-ros evaluate --bag laf_bag --config config/driving.yaml --out eval_laf --track laf
    csl-ros evaluate --bag drive --out eval_drive --sweep score_threshold=0.3:0.9:0.1
    csl-ros evaluate --live --bag drive --out eval_live --rate max
    csl-ros evaluate --bag recorded --scores-topic /csl/camera/csl_detector/anomaly_score --out eval_rec
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from csl_ros import __version__
from csl_ros.cli import add_command
from csl_ros.detect_cli import add_config_args, detector_config_from_args
from csl_ros.eval.metrics import TRACKS, summary_lines
from csl_ros.ros.outputs import output_topic, sibling_topic

# Defaults of the live mode match launch/replay_eval.launch.py: the node runs in /csl/camera and
# reads /camera/image_raw and /camera/camera_info.
LIVE_IMAGE_TOPIC = "/camera/image_raw"
LIVE_CAMERA_INFO_TOPIC = "/camera/camera_info"
LIVE_SCORES_TOPIC = output_topic("score", "/csl/camera")


def register(subparsers) -> None:
    p = add_command(subparsers, "evaluate", "score the detector on a rosbag (in process, live over ROS, or "
                    "recorded outputs) and write metrics.json + a report", __doc__)
    p.add_argument("--bag", required=True, type=Path, help="rosbag2 folder (e.g. from `csl-ros bag convert`)")
    p.add_argument("--out", required=True, type=Path, help="output folder (metrics.json, report.md/.html, figures/)")
    add_config_args(p)
    p.add_argument("--track", default="obstacle", choices=tuple(TRACKS),
                   help="component size filters (predicted / ground-truth minimum, px): obstacle and "
                        "laf 50/10, anomaly and fishyscapes 500/100")
    p.add_argument("--protocol", default="official", choices=("official", "exact"),
                   help="official: the SMIYC leaderboard's binned curve; exact: every distinct float16 score")
    p.add_argument("--sweep", action="append", default=[], metavar="NAME=A:B:STEP",
                   help="sweep score_threshold, min_instance_area or max_obstacle_height_m on one pass of "
                        "network outputs, e.g. score_threshold=0.3:0.9:0.1 or min_instance_area=50,100,200 "
                        "(repeatable)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the bag (count)")
    p.add_argument("--no-labels", action="store_true",
                   help="the bag has no ground truth (/eval/ood_labels): run and time the detector on "
                        "every image, compute no metric, exit 0 (without it such a bag exits 1)")
    p.add_argument("--allow-dropped", action="store_true",
                   help="exit 0 even when labelled frames were dropped (no score map, or a label "
                        "without its image); they stay counted in metrics.json and the report")
    p.add_argument("--salvage", action="store_true",
                   help="skip damaged bag records (MCAP chunks failing their CRC, undecodable "
                        "messages) instead of stopping; every skipped record is listed in "
                        "metrics.json and the report")
    p.add_argument("--worst", type=int, default=6,
                   help="number of worst frames drawn in the report (default 6)")
    p.add_argument("--video", action="store_true", help="also write overlay.mp4 of every scored frame")
    p.add_argument("--bag-lag", type=float, default=1.0,
                   help="seconds by which the log times of one stamp's messages may trail it (bags "
                        "recorded live); 0 for converted bags is exact but 1 s is harmless")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the per-frame score cache goes (default: a temporary folder, removed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("live and recorded node outputs")
    g.add_argument("--live", action="store_true",
                   help="publish the bag on ROS topics and score the running node's answers")
    g.add_argument("--scores-topic", default=None,
                   help=f"the node's anomaly_score topic: subscribed with --live (default "
                        f"{LIVE_SCORES_TOPIC}), else read from the bag instead of running the detector")
    g.add_argument("--instances-topic", default=None,
                   help="the node's ood_instances topic (default: next to --scores-topic); used for the "
                        "pictures and instance counts, recomputed from the scores when absent")
    g.add_argument("--image-topic", default=LIVE_IMAGE_TOPIC,
                   help=f"--live: topic the bag's images are published on (default {LIVE_IMAGE_TOPIC})")
    g.add_argument("--camera-info-topic", default=LIVE_CAMERA_INFO_TOPIC,
                   help=f"--live: topic of the camera_info (default {LIVE_CAMERA_INFO_TOPIC})")
    g.add_argument("--rate", default="recorded",
                   help="--live: 'recorded' (the bag's stamps), a factor of it (e.g. 0.5), or 'max' "
                        "(next frame as soon as the node answered, or after --timeout)")
    g.add_argument("--timeout", type=float, default=30.0,
                   help="--live: seconds to wait for an answer (per frame with --rate max, and at the end)")
    g.add_argument("--wait-node", type=float, default=120.0,
                   help="--live: seconds to wait for the node to answer a first probe frame (model "
                        "loading and engine builds happen before that)")
    p.set_defaults(func=run)


def instances_topic_for(scores_topic: str) -> str:
    """``/ns/csl_detector/anomaly_score`` -> ``/ns/csl_detector/ood_instances``."""
    return sibling_topic(scores_topic, "instances")


def run(args) -> int:
    try:
        return evaluate_command(args)
    except TimeoutError as exc:   # --live: no node, or it never answered
        print(f"csl-ros evaluate: error: {exc}", file=sys.stderr)
        return 1


def evaluate_command(args, detector_factory=None) -> int:
    """The ``csl-ros evaluate`` command; ``detector_factory`` replaces ``Detector.from_config`` (tests)."""
    # deferred: torch, matplotlib and rosbags (the eval extra); csl-ros imports every command module at start
    from csl_ros.eval.evaluate import (COUNT_MEANINGS, describe_skipped, evaluate_in_process, evaluate_recorded,
                                       json_default, label_topic_check, run_failures, shipped_models)
    from csl_ros.eval.driving import driving_summary_line
    from csl_ros.eval.report import write_report
    from csl_ros.eval.scoring import ScoreSink, parse_sweep, summarize

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.worst < 0:
        raise ValueError(f"--worst must be >= 0, got {args.worst}")
    if not args.bag.exists():
        raise FileNotFoundError(f"bag not found: {args.bag}")
    cfg = detector_config_from_args(args)
    sweeps = [parse_sweep(s) for s in args.sweep]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.live:
        mode = "live"
        scores_topic = args.scores_topic or LIVE_SCORES_TOPIC
        description = (f"live: the bag published on {args.image_topic} (rate {args.rate}), scores "
                       f"from the running node's {scores_topic}")
    elif args.scores_topic:
        mode = "recorded"
        scores_topic = args.scores_topic
        description = f"recorded: the node's {scores_topic} as recorded in the bag (nothing run)"
    else:
        mode = "in-process"
        scores_topic = None
        description = "in process: csl_ros.pipeline.Detector run on every labelled frame of the bag"
    instances_topic = args.instances_topic or (instances_topic_for(scores_topic) if scores_topic else None)
    run_info = {"tool": "csl-ros evaluate", "version": __version__,
                "created": time.strftime("%Y-%m-%d %H:%M:%S %z"), "bag": str(args.bag), "mode": mode,
                "mode_description": description, "config_file": args.config,
                "overrides": list(args.set), "sweeps": list(args.sweep), "limit": args.limit,
                "no_labels": args.no_labels, "allow_dropped": args.allow_dropped}
    missing, n_images = label_topic_check(args.bag, args.salvage)
    if missing and not args.no_labels:
        # Fail before loading models or replaying: nothing could be scored.
        failure = f"{missing}; pass --no-labels to run and time the detector only"
        counts = {"images": n_images, "labelled": 0, "scored": 0}
        (out / "metrics.json").write_text(json.dumps(
            {"run": {**run_info, "failures": [failure]}, "counts": counts,
             "count_meanings": {k: COUNT_MEANINGS[k] for k in counts}, "notes": [failure]}, indent=1))
        print(f"csl-ros evaluate: error: {failure}", file=sys.stderr)
        return 1
    t_start = time.perf_counter()
    with ScoreSink(cfg, track=args.track, protocol=args.protocol, sweeps=sweeps, cache_dir=args.cache_dir,
                   video_path=out / "overlay.mp4" if args.video else None) as sink:
        if mode == "in-process":
            counts, info = evaluate_in_process(args.bag, sink, cfg, limit=args.limit,
                                               detector_factory=detector_factory, bag_lag_s=args.bag_lag,
                                               quiet=args.quiet, run_unlabelled=args.no_labels,
                                               salvage=args.salvage)
        elif mode == "recorded":
            counts, info = evaluate_recorded(args.bag, sink, scores_topic, instances_topic, limit=args.limit,
                                             bag_lag_s=args.bag_lag, quiet=args.quiet, salvage=args.salvage)
        else:
            # rclpy is optional for csl-ros (pip install without [ros]): only --live needs it
            from csl_ros.ros.live_replay import LiveOptions, evaluate_live

            opts = LiveOptions(image_topic=args.image_topic, camera_info_topic=args.camera_info_topic,
                               scores_topic=scores_topic, instances_topic=instances_topic, rate=args.rate,
                               timeout_s=args.timeout, wait_node_s=args.wait_node, bag_lag_s=args.bag_lag,
                               salvage=args.salvage)
            counts, info = evaluate_live(args.bag, sink, opts, limit=args.limit, quiet=args.quiet)
        t_frames = time.perf_counter() - t_start
        metrics = sink.finish()
        cfg_used = sink.config
        timing = metrics.pop("timing")
        if info.get("frame_ms"):
            timing["frame_ms"] = summarize(info.pop("frame_ms"))
        info.pop("frame_ms", None)
        if info.get("load_s") is not None:   # in process: loading the models is not frame time
            timing["model_load_s"] = info.pop("load_s")
            t_frames -= timing["model_load_s"]
        timing["frames_wall_s"] = t_frames
        timing["scored_per_s"] = counts["scored"] / t_frames if t_frames > 0 else None
        failures = run_failures(counts, no_labels=args.no_labels, allow_dropped=args.allow_dropped)
        skipped = info.pop("skipped_records", None)
        bag_notes = info.pop("bag_notes", [])
        result = {
            "run": {**run_info, **info, "failures": failures},
            "counts": counts, "count_meanings": {k: COUNT_MEANINGS[k] for k in counts},
            **metrics, "timing": timing, "config": dataclasses.asdict(cfg_used),
        }
        shipped = shipped_models(cfg_used)
        if shipped:
            result["run"]["shipped_models"] = shipped
        if counts["dropped"]:
            result["notes"].append(f"{counts['dropped']} labelled frame(s) were dropped (no score map): the "
                                   f"metrics cover {counts['scored']} of {counts['labelled']} labelled frames")
        if skipped is not None:
            result["skipped_records"] = skipped
            result["notes"] += [f"--salvage skipped {describe_skipped(d)}" for d in skipped]
        result["notes"] += bag_notes
        if counts.get("unmatched_labels"):
            result["notes"].append(f"{counts['unmatched_labels']} label(s) have no image of the same stamp "
                                   f"(a damaged or missing image record): those frames were dropped")
        if counts["unlabelled_images"]:
            result["notes"].append(f"{counts['unlabelled_images']} image(s) have no ground truth and are "
                                   f"not scored")
        if args.no_labels:
            result["notes"].append("--no-labels: the detector was run and timed only; no metric is computed")
        result["notes"] += [f"exit 1: {f}" for f in failures]
        t0 = time.perf_counter()
        written = write_report(out, result, sink, worst_n=args.worst)
        result["timing"]["report_s"] = time.perf_counter() - t0
        (out / "metrics.json").write_text(json.dumps(result, indent=1, default=json_default))
    print(f"{mode}: {counts['scored']} of {counts['labelled']} labelled frames scored "
          f"({counts['images']} images, {counts['dropped']} dropped, {counts['unlabelled_images']} unlabelled, "
          f"{counts['unmatched_labels']} labels without image)")
    print("\n".join(summary_lines(result)))
    print(driving_summary_line(result["driving"]))
    for sw in result["sweeps"]:
        print(f"sweep {sw['parameter']}: {len(sw['rows'])} values (see the report)")
    print(f"wrote {out / 'metrics.json'}, report {written['report_html']}")
    for failure in failures:
        print(f"csl-ros evaluate: error: {failure}", file=sys.stderr)
    return 1 if failures else 0


