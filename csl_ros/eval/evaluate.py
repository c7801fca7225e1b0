"""The bag runners of ``csl-ros evaluate`` (ROS-free) and what the command reports about a run.

Two of the three ways to get the score maps of a bag's frames live here, both scored by the same code
(``csl_ros.eval.scoring``, the SMIYC protocol of ``csl_ros.eval.metrics``):

* :func:`evaluate_in_process`: read the bag, run the detector on every labelled frame, camera geometry
  from the bag's camera_info;
* :func:`evaluate_recorded`: the bag already holds the node's output (recorded with ``ros2 bag
  record``); nothing is run.

The third, ``--live``, talks to a running node over ROS and is :class:`csl_ros.ros.live_replay.LiveReplay`;
the command itself (options, modes, exit status) is ``csl_ros.evaluate_cli``.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from csl_ros.eval.bag import IMAGE_T, LABEL_TOPIC, BagError, BagReader, stamp_ns_of
from csl_ros.eval.driving import ground_truth_of
from csl_ros.eval.scoring import ScoredFrame
from csl_ros.image_codec import single_channel_msg_to_array
from csl_ros.pipeline import CameraGeometry, Detector
from csl_ros.shipped import MANIFEST, models_dir, read_manifest

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


def _frames(reader, limit):
    frames = reader.frames()
    return itertools.islice(frames, limit) if limit is not None else frames


def progress_bar(it, quiet: bool, desc: str, total=None):
    if quiet:
        return it
    return tqdm(it, desc=desc, unit="frame", total=total)


def bag_lag_ns(seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"--bag-lag must be >= 0, got {seconds}")
    return int(seconds * 1e9)


def image_count(reader) -> int | None:
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
    if detector_factory is None:
        detector_factory = Detector.from_config
    counts = {"images": 0, "labelled": 0, "scored": 0, "dropped": 0, "unlabelled_images": 0,
              "unmatched_labels": 0}
    info = {"backend": None, "device": None}
    frame_ms = []
    with BagReader(bag, lag_ns=bag_lag_ns(bag_lag_s), salvage=salvage) as reader:
        t0 = time.perf_counter()
        detector = detector_factory(cfg)   # after opening the bag: a bad bag fails before model loading
        used = getattr(detector, "config", None)
        if used is not None and used != cfg:
            # the student's metadata filled settings left at the schema default (input size, the
            # threshold tuned for the configured teacher): score and report what the detector runs
            cfg = used
            sink.config = used
        try:
            detector.warmup()
            info["load_s"] = time.perf_counter() - t0
            total = image_count(reader)
            total = min(total, limit) if total is not None and limit is not None else total
            if run_unlabelled:
                counts["detector_runs"] = 0
            for fr in progress_bar(_frames(reader, limit), quiet, "evaluate", total):
                counts["images"] += 1
                if fr.labels is None:
                    counts["unlabelled_images"] += 1
                    if not run_unlabelled:
                        continue
                else:
                    counts["labelled"] += 1
                t0 = time.perf_counter()
                camera = CameraGeometry.from_camera_info(fr.camera_info, fr.image.shape, cfg.camera_height_m,
                                                         cfg.camera_pitch_deg)
                det = detector(fr.image, camera)
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
            salvage_report(reader, counts, info)
        finally:
            detector.close()
    info["frame_ms"] = frame_ms
    return counts, info


def salvage_report(reader, counts: dict, info: dict, extra: list | None = None) -> None:
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
                    array = single_channel_msg_to_array(msg, where)
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
    with BagReader(bag, lag_ns=bag_lag_ns(bag_lag_s), salvage=salvage) as reader:
        for fr in progress_bar(_frames(reader, limit), quiet, "evaluate"):
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
        salvage_report(reader, counts, info, extra=skipped)
    if limit is None:
        counts["unmatched_scores"] = len(set(scores) - used)
    else:
        counts.pop("unmatched_scores")   # score messages past the limit are not comparable
    return counts, info


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


def describe_skipped(d: dict) -> str:
    """One line for a skipped damaged chunk or record (metrics.json ``skipped_records`` entry)."""
    if "byte_offset" in d:
        t = d.get("log_time_ns")
        times = f", messages logged {t[0]}..{t[1]} ns" if t else ""
        topics = f", topics {', '.join(d['topics'])}" if d.get("topics") else ""
        return f"{d['file']} at byte offset {d['byte_offset']}{times}{topics}: {d['reason']}"
    return f"{d['file']}: {d['topic']} record logged at {d['log_time_ns']} ns: {d['reason']}"


def label_topic_check(bag: Path, salvage: bool) -> tuple[str | None, int | None]:
    """(why the bag cannot be scored for want of labels or None, its image count)."""
    with BagReader(bag, salvage=salvage) as reader:
        if LABEL_TOPIC in reader.topics:
            return None, image_count(reader)
        return (f"{bag}: no {LABEL_TOPIC} topic (ground truth); the bag has {sorted(reader.topics)}",
                image_count(reader))


def shipped_models(cfg) -> dict | None:
    """Which shipped models an empty model path stands for: the manifest's file names and SHA-256
    (of this machine's models/ folder; --live runs the node's, normally the same install)."""
    if cfg.student_path and cfg.teacher_path:
        return None
    try:
        directory = models_dir()
        entries = read_manifest(directory).get("models", {})
    except (FileNotFoundError, ValueError):
        return None
    return {"manifest": str(directory / MANIFEST),
            "models": {k: {"file": v.get("file"), "sha256": v.get("sha256")} for k, v in entries.items()}}


def json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
