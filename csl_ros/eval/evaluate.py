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
import itertools
import json
import sys
import time
from pathlib import Path

from csl_ros.cli import add_command
from csl_ros.detect_cli import add_config_args, detector_config_from_args
from csl_ros.eval.metrics import TRACKS

# Defaults of the live mode match launch/replay_eval.launch.py: the node runs in /csl/camera and
# reads /camera/image_raw and /camera/camera_info.
LIVE_IMAGE_TOPIC = "/camera/image_raw"
LIVE_CAMERA_INFO_TOPIC = "/camera/camera_info"
LIVE_SCORES_TOPIC = "/csl/camera/csl_detector/anomaly_score"

COUNT_MEANINGS = {
    "images": "images read from the bag (after --limit)",
    "labelled": "images with a ground-truth label of the same stamp",
    "scored": "labelled frames whose score map entered the metrics",
    "dropped": "labelled frames without a score map (live: published, never answered by the node; "
               "bag scores: no score message of that stamp)",
    "unlabelled_images": "images without ground truth: not scored (in process: not run)",
    "unmatched_labels": "label messages without an image of the same stamp",
    "published": "images published to the node (live)",
    "answered_unlabelled": "unlabelled images the node answered (live; not scored)",
    "dropped_unlabelled": "unlabelled images the node never answered (live)",
    "unmatched_scores": "score messages whose stamp matches no image of the bag",
    "detector_runs": "images run through the detector (in process with --no-labels: every image)",
    "skipped_records": "damaged bag records skipped with --salvage (listed under skipped_records)",
}


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
                   help="sweep score_threshold or min_instance_area on one pass of network outputs, "
                        "e.g. score_threshold=0.3:0.9:0.1 or min_instance_area=50,100,200 (repeatable)")
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
    base = scores_topic.rstrip("/")
    if base.endswith("/anomaly_score"):
        return base[: -len("anomaly_score")] + "ood_instances"
    return base + "/ood_instances"


def decode_float_image(msg, where: str = ""):
    """sensor_msgs/Image 32FC1 / 16UC1 / mono8 (rclpy or rosbags message) -> 2-D numpy array."""
    import numpy as np

    dtypes = {"32FC1": np.float32, "16UC1": np.uint16, "mono16": np.uint16, "mono8": np.uint8,
              "8UC1": np.uint8, "64FC1": np.float64}
    enc = str(msg.encoding)
    if enc not in dtypes:
        raise ValueError(f"{where}: expected a single-channel image (32FC1, 16UC1, mono8), got {enc!r}")
    dt = np.dtype(dtypes[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = msg.data
    raw = buf.view(np.uint8).ravel() if isinstance(buf, np.ndarray) else np.frombuffer(buf, np.uint8)
    if h <= 0 or w <= 0 or step < w * dt.itemsize or raw.size < h * step:
        raise ValueError(f"{where}: {enc} image {h}x{w} (HxW) with step {step} does not fit its {raw.size} bytes")
    rows = raw[: h * step].reshape(h, step)[:, : w * dt.itemsize]
    return np.ascontiguousarray(rows).view(dt).reshape(h, w).astype(dt.newbyteorder("="))


def camera_geometry(info: dict | None, image_shape, cfg):
    """CameraGeometry from a bag's camera_info dict and the config's mounting (None without K)."""
    if info is None or info.get("fx", 0) <= 0 or info.get("fy", 0) <= 0:
        return None
    from csl_ros.pipeline import CameraGeometry

    cam = CameraGeometry(info["fx"], info["fy"], info["cx"], info["cy"], cfg.camera_height_m,
                         cfg.camera_pitch_deg)
    h, w = image_shape[:2]
    if info.get("width") and info.get("height") and (info["width"], info["height"]) != (w, h):
        cam = cam.scaled(w / info["width"], h / info["height"])
    return cam


def _frames(reader, limit):
    frames = reader.frames()
    return itertools.islice(frames, limit) if limit is not None else frames


def _bar(it, quiet: bool, desc: str, total=None):
    if quiet:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit="frame", total=total)


def _bag_lag_ns(seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"--bag-lag must be >= 0, got {seconds}")
    return int(seconds * 1e9)


def _image_count(reader) -> int | None:
    try:
        for c in reader._reader.connections:
            if c.topic == reader.image_topic:
                return int(c.msgcount)
    except AttributeError:
        pass
    return None


# --------------------------------------------------------------------------------------------------
# in process
# --------------------------------------------------------------------------------------------------

def evaluate_in_process(bag, sink, cfg, *, limit=None, detector_factory=None, bag_lag_s=1.0,
                        quiet=True, run_unlabelled=False, salvage=False) -> tuple[dict, dict]:
    """Run the detector on every labelled frame of ``bag`` and feed ``sink``; returns (counts, run info).

    ``detector_factory(cfg)`` builds the detector (default ``Detector.from_config``).
    ``run_unlabelled``: also run (and time) the detector on images without ground truth (--no-labels).
    """
    from csl_ros.eval.bag import BagReader
    from csl_ros.eval.driving import ground_truth_of
    from csl_ros.eval.scoring import ScoredFrame

    if detector_factory is None:
        from csl_ros.pipeline import Detector

        detector_factory = Detector.from_config
    counts = {"images": 0, "labelled": 0, "scored": 0, "dropped": 0, "unlabelled_images": 0,
              "unmatched_labels": 0}
    info = {"backend": None, "device": None}
    frame_ms = []
    with BagReader(bag, lag_ns=_bag_lag_ns(bag_lag_s), salvage=salvage) as reader:
        t0 = time.perf_counter()
        detector = detector_factory(cfg)   # after opening the bag: a bad bag fails before model loading
        try:
            detector.warmup()
            info["load_s"] = time.perf_counter() - t0
            total = _image_count(reader)
            total = min(total, limit) if total is not None and limit is not None else total
            if run_unlabelled:
                counts["detector_runs"] = 0
            for fr in _bar(_frames(reader, limit), quiet, "evaluate", total):
                counts["images"] += 1
                if fr.labels is None:
                    counts["unlabelled_images"] += 1
                    if not run_unlabelled:
                        continue
                else:
                    counts["labelled"] += 1
                t0 = time.perf_counter()
                det = detector(fr.image, camera_geometry(fr.camera_info, fr.image.shape, cfg))
                frame_ms.append((time.perf_counter() - t0) * 1e3)
                info["backend"], info["device"] = det.backend, det.device
                if run_unlabelled:
                    counts["detector_runs"] += 1
                if fr.labels is None:
                    continue
                sink.add(ScoredFrame(fr.stamp_ns, fr.frame_id, fr.image, fr.labels, det.anomaly_map,
                                     det.instances, det.regions, det.timings_ms, truth=ground_truth_of(fr)))
                counts["scored"] += 1
            counts["unmatched_labels"] = reader.stats.unmatched_labels
            _salvage_report(reader, counts, info)
        finally:
            detector.close()
    info["frame_ms"] = frame_ms
    return counts, info


def _salvage_report(reader, counts: dict, info: dict, extra: list | None = None) -> None:
    """Under --salvage: the count and the list of every damaged record the reader skipped."""
    if reader.salvage:
        skipped = list(reader.stats.skipped) + list(extra or [])
        counts["skipped_records"] = len(skipped)
        info["skipped_records"] = skipped
    info["bag_integrity"] = {"mcap_chunks_verified": reader.stats.chunks_verified,
                             "mcap_chunks_without_crc": reader.stats.chunks_without_crc}
    info.setdefault("bag_notes", []).extend(reader.stats.notes)


# --------------------------------------------------------------------------------------------------
# recorded node outputs in the bag
# --------------------------------------------------------------------------------------------------

def read_topic_images(bag: Path, topic: str, cache_dir: Path, required: bool = True,
                      salvage: bool = False, skipped: list | None = None) -> dict[int, Path]:
    """Every single-channel image of ``topic`` in ``bag``, saved as .npy by header stamp.

    ``salvage``: damaged records are left out and appended to ``skipped`` (damaged chunks are
    listed by the frame reader, which reads the same files).
    """
    import numpy as np

    from csl_ros.eval.bag import IMAGE_T, BagError, BagReader, stamp_ns_of

    cache_dir.mkdir(parents=True, exist_ok=True)
    with BagReader(bag, salvage=salvage) as reader:
        topics = reader.topics
        if topic not in topics:
            if not required:
                return {}
            raise BagError(f"{bag}: no topic {topic} (the node's output); the bag has {sorted(topics)}")
        if topics[topic] != IMAGE_T:
            raise BagError(f"{bag}: {topic} is {topics[topic]}, not {IMAGE_T}")
        found: dict[int, Path] = {}
        n_skipped = len(reader.stats.skipped)
        try:
            for conn, t_ns, raw in reader.messages([topic]):
                where = f"{bag}: {topic} at {t_ns} ns"
                msg = reader.decode(conn, raw, t_ns)
                if msg is None:
                    continue
                try:
                    array = decode_float_image(msg, where)
                except ValueError as exc:
                    if not salvage:
                        raise
                    reader.skip(topic, t_ns, str(exc).rsplit(": ", 1)[-1])
                    continue
                stamp = stamp_ns_of(msg)
                path = cache_dir / f"{stamp}.npy"
                np.save(path, array)
                found[stamp] = path
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"{bag}: {topic} unreadable after {len(found)} message(s) "
                           f"({type(exc).__name__}: {exc}); the file is truncated or corrupt") from exc
        if skipped is not None:   # records only: the frame reader lists the damaged chunks
            skipped += [d for d in reader.stats.skipped[n_skipped:] if "topic" in d]
    return found


def evaluate_recorded(bag, sink, scores_topic: str, instances_topic: str | None, *, limit=None,
                      bag_lag_s=1.0, quiet=True, salvage=False) -> tuple[dict, dict]:
    """Score the node outputs recorded in ``bag`` (matched to its images and labels by stamp)."""
    import numpy as np

    from csl_ros.eval.bag import BagReader
    from csl_ros.eval.driving import ground_truth_of
    from csl_ros.eval.scoring import ScoredFrame

    skipped: list = []
    scores = read_topic_images(bag, scores_topic, sink.cache_root / "recorded_scores", salvage=salvage,
                               skipped=skipped)
    inst = (read_topic_images(bag, instances_topic, sink.cache_root / "recorded_instances", required=False,
                              salvage=salvage, skipped=skipped)
            if instances_topic else {})
    counts = {"images": 0, "labelled": 0, "scored": 0, "dropped": 0, "unlabelled_images": 0,
              "unmatched_labels": 0, "unmatched_scores": 0}
    used: set[int] = set()
    info = {"backend": None, "device": None, "scores_topic": scores_topic,
            "instances_topic": instances_topic if inst else None}
    with BagReader(bag, lag_ns=_bag_lag_ns(bag_lag_s), salvage=salvage) as reader:
        for fr in _bar(_frames(reader, limit), quiet, "evaluate"):
            counts["images"] += 1
            if fr.stamp_ns in scores:
                used.add(fr.stamp_ns)
            if fr.labels is None:
                counts["unlabelled_images"] += 1
                continue
            counts["labelled"] += 1
            if fr.stamp_ns not in scores:
                counts["dropped"] += 1
                continue
            instances = np.load(inst[fr.stamp_ns]) if fr.stamp_ns in inst else None
            if instances is not None and instances.dtype != np.uint16:
                instances = None
            sink.add(ScoredFrame(fr.stamp_ns, fr.frame_id, fr.image, fr.labels, np.load(scores[fr.stamp_ns]),
                                 instances, truth=ground_truth_of(fr)))
            counts["scored"] += 1
        counts["unmatched_labels"] = reader.stats.unmatched_labels
        _salvage_report(reader, counts, info, extra=skipped)
    if limit is None:
        counts["unmatched_scores"] = len(set(scores) - used)
    else:
        counts.pop("unmatched_scores")   # score messages past the limit are not comparable
    return counts, info


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------

def run(args) -> int:
    try:
        return evaluate_command(args)
    except TimeoutError as exc:   # --live: no node, or it never answered
        print(f"csl-ros evaluate: error: {exc}", file=sys.stderr)
        return 1


def evaluate_command(args, detector_factory=None) -> int:
    """The ``csl-ros evaluate`` command; ``detector_factory`` replaces ``Detector.from_config`` (tests)."""
    from csl_ros import __version__
    from csl_ros.eval.driving import driving_summary_line
    from csl_ros.eval.report import write_report
    from csl_ros.eval.metrics import summary_lines
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
    missing, n_images = _label_topic_check(args.bag, args.salvage)
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
            from csl_ros.eval.live import LiveOptions, evaluate_live

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
        shipped = _shipped_models(cfg_used)
        if shipped:
            result["run"]["shipped_models"] = shipped
        if counts["dropped"]:
            result["notes"].append(f"{counts['dropped']} labelled frame(s) were dropped (no score map): the "
                                   f"metrics cover {counts['scored']} of {counts['labelled']} labelled frames")
        if skipped is not None:
            result["skipped_records"] = skipped
            result["notes"] += [f"--salvage skipped {_describe_skipped(d)}" for d in skipped]
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
        (out / "metrics.json").write_text(json.dumps(result, indent=1, default=_json_default))
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


def run_failures(counts: dict, *, no_labels: bool = False, allow_dropped: bool = False) -> list[str]:
    """Why a finished run must exit non-zero (empty: exit 0). Dropped frames are labelled frames
    without a score map and labels without an image (a damaged or missing image record)."""
    failures = []
    if counts["scored"] == 0 and not no_labels:
        failures.append(f"no frame was scored ({counts['labelled']} labelled of {counts['images']} "
                        f"images); the metrics are undefined")
    dropped = counts.get("dropped", 0) + counts.get("unmatched_labels", 0)
    if dropped and not allow_dropped and not no_labels:
        failures.append(f"{dropped} labelled frame(s) dropped ({counts.get('dropped', 0)} without a score "
                        f"map, {counts.get('unmatched_labels', 0)} labels without an image); the metrics "
                        f"cover {counts['scored']} frame(s); pass --allow-dropped to accept that")
    if counts.get("skipped_records") and not allow_dropped:
        failures.append(f"--salvage skipped {counts['skipped_records']} damaged record(s) (listed in "
                        f"metrics.json skipped_records); frames in them are missing from the metrics; "
                        f"pass --allow-dropped to accept that")
    return failures


def _describe_skipped(d: dict) -> str:
    """One line for a skipped damaged chunk or record (metrics.json ``skipped_records`` entry)."""
    if "byte_offset" in d:
        t = d.get("log_time_ns")
        times = f", messages logged {t[0]}..{t[1]} ns" if t else ""
        topics = f", topics {', '.join(d['topics'])}" if d.get("topics") else ""
        return f"{d['file']} at byte offset {d['byte_offset']}{times}{topics}: {d['reason']}"
    return f"{d['file']}: {d['topic']} record logged at {d['log_time_ns']} ns: {d['reason']}"


def _label_topic_check(bag: Path, salvage: bool) -> tuple[str | None, int | None]:
    """(why the bag cannot be scored for want of labels or None, its image count)."""
    from csl_ros.eval.bag import LABEL_TOPIC, BagReader

    with BagReader(bag, salvage=salvage) as reader:
        if LABEL_TOPIC in reader.topics:
            return None, _image_count(reader)
        return (f"{bag}: no {LABEL_TOPIC} topic (ground truth); the bag has {sorted(reader.topics)}",
                _image_count(reader))


def _shipped_models(cfg) -> dict | None:
    """Which shipped models an empty model path stands for: the manifest's file names and SHA-256
    (of this machine's models/ folder; --live runs the node's, normally the same install)."""
    if cfg.student_path and cfg.teacher_path:
        return None
    try:
        from csl_ros.shipped import MANIFEST, models_dir, read_manifest

        directory = models_dir()
        entries = read_manifest(directory).get("models", {})
    except (FileNotFoundError, ValueError):
        return None
    return {"manifest": str(directory / MANIFEST),
            "models": {k: {"file": v.get("file"), "sha256": v.get("sha256")} for k, v in entries.items()}}


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
