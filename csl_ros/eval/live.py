"""``csl-ros evaluate --live``: replay a bag to a running ``csl_detector`` node and score its answers.

The evaluator is an rclpy node (``csl_evaluate``) that

1. waits for the detector: a subscriber on the image topic and a publisher of ``--scores-topic``;
   it subscribes with the publisher's reliability, then sends probe frames (the bag's first image
   with stamps outside the bag) until one is answered, so model loading and DDS matching are over
   before the first real frame;
2. reads the detector's settings from its parameters (they, not ``--config``, are what the node ran;
   ``--config``/``--set`` are used only when the parameters cannot be read);
3. publishes the bag's images (``sensor_msgs/Image`` rgb8, header stamp = the bag's stamp) and
   camera_info, at the recorded rate (``--rate recorded`` or a factor of it) or one at a time
   (``--rate max``: the next frame once the node answered, or after ``--timeout``);
4. matches the node's ``~/anomaly_score`` (and ``~/ood_instances``) to the frames by header stamp and
   scores them. The node processes the newest frame only (a one-frame slot), and its outputs arrive
   in order, so an answer for a later stamp means every earlier unanswered frame was dropped by the
   node; frames still unanswered ``--timeout`` seconds after the last one was published are dropped
   as well. Both are counted (``dropped``), never skipped silently.

Large images over Fast DDS need csl_ros's large-image profile (csl_ros.ros.dds), selected before rclpy
is initialised unless the user configured Fast DDS; the node does the same.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

PROBE_STAMP_BASE_NS = 1_000        # probe frames: stamps 1 us + k ns, far outside any real bag
NODE_PARAMETERS_TIMEOUT_S = 5.0
DIAGNOSTICS_WAIT_S = 3.0           # the node's diagnostics period is 1 s by default


@dataclass
class LiveOptions:
    image_topic: str = "/camera/image_raw"
    camera_info_topic: str = "/camera/camera_info"
    scores_topic: str = "/csl/camera/csl_detector/anomaly_score"
    instances_topic: str | None = "/csl/camera/csl_detector/ood_instances"
    rate: str = "recorded"         # "recorded", "max" or a factor of the recorded rate
    timeout_s: float = 30.0
    wait_node_s: float = 120.0
    bag_lag_s: float = 1.0
    instances_grace_s: float = 0.5  # how long a score waits for its instance map
    probe_period_s: float = 1.0
    salvage: bool = False           # skip damaged bag records, listing them (--salvage)


def parse_rate(text: str) -> float | None:
    """'recorded' -> 1.0, 'max' -> None, '0.5' -> 0.5 (a factor of the recorded rate)."""
    t = str(text).strip().lower()
    if t == "max":
        return None
    if t == "recorded":
        return 1.0
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"--rate must be 'recorded', 'max' or a positive factor, got {text!r}") from None
    if not v > 0:
        raise ValueError(f"--rate factor must be > 0, got {text!r}")
    return v


def node_name_of(scores_topic: str) -> str:
    """``/csl/camera/csl_detector/anomaly_score`` -> ``/csl/camera/csl_detector``."""
    base = scores_topic.rstrip("/")
    return base.rsplit("/", 1)[0] if base.endswith("/anomaly_score") else base


@dataclass
class _Inbox:
    """What the subscriptions received, shared with the executor thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = None
    scores: dict = field(default_factory=dict)       # stamp -> (float32 map, monotonic time)
    instances: dict = field(default_factory=dict)    # stamp -> uint16 map
    diagnostics: dict = field(default_factory=dict)  # last status values of the node
    diagnostics_time: float = 0.0                     # monotonic time they arrived
    errors: list = field(default_factory=list)

    def __post_init__(self):
        self.arrived = threading.Condition(self.lock)


def _stamp_of(header) -> int:
    return int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)


def _set_stamp(header, stamp_ns: int, frame_id: str = "camera_optical_frame") -> None:
    header.stamp.sec = int(stamp_ns // 10**9)
    header.stamp.nanosec = int(stamp_ns % 10**9)
    header.frame_id = frame_id


def _camera_info_msg(info: dict, stamp_ns: int):
    from sensor_msgs.msg import CameraInfo

    msg = CameraInfo()
    _set_stamp(msg.header, stamp_ns)
    msg.width, msg.height = int(info.get("width", 0)), int(info.get("height", 0))
    fx, fy, cx, cy = (float(info[k]) for k in ("fx", "fy", "cx", "cy"))
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def _read_node_config(node, node_fqn: str, fallback, context_ok):
    """The detector settings of the node ``node_fqn`` from its parameters, or (fallback, reason)."""
    import dataclasses

    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    from csl_ros.config import DetectorConfig, apply_overrides

    names = [f.name for f in dataclasses.fields(DetectorConfig)]
    client = node.create_client(GetParameters, f"{node_fqn}/get_parameters")
    try:
        if not client.wait_for_service(timeout_sec=NODE_PARAMETERS_TIMEOUT_S):
            return fallback, f"the parameter service of {node_fqn} did not answer"
        future = client.call_async(GetParameters.Request(names=names))
        deadline = time.monotonic() + NODE_PARAMETERS_TIMEOUT_S
        while not future.done() and time.monotonic() < deadline and context_ok():
            time.sleep(0.01)
        if not future.done() or future.result() is None:
            return fallback, f"reading the parameters of {node_fqn} timed out"
        values = [parameter_value_to_python(v) for v in future.result().values]
        if len(values) != len(names):
            return fallback, f"{node_fqn} returned {len(values)} of {len(names)} detector parameters"
        got = {n: v for n, v in zip(names, values) if v is not None}
        return apply_overrides(DetectorConfig(), got, strict=False), None
    except Exception as exc:  # a node of another version, a type mismatch: keep the evaluator's config
        return fallback, f"the parameters of {node_fqn} could not be used ({type(exc).__name__}: {exc})"
    finally:
        node.destroy_client(client)


def evaluate_live(bag, sink, opts: LiveOptions, *, limit=None, quiet=True) -> tuple[dict, dict]:
    """Replay ``bag`` to the running node and feed its answers to ``sink``; returns (counts, run info)."""
    import itertools

    from csl_ros.eval.bag import BagReader
    from csl_ros.eval.driving import ground_truth_of
    from csl_ros.eval.evaluate import _bag_lag_ns, _bar, _image_count, _salvage_report, decode_float_image
    from csl_ros.eval.scoring import ScoredFrame

    factor = parse_rate(opts.rate)
    if opts.timeout_s <= 0 or opts.wait_node_s <= 0:
        raise ValueError("--timeout and --wait-node must be > 0 seconds")
    reader = BagReader(bag, lag_ns=_bag_lag_ns(opts.bag_lag_s),   # a bad bag fails before ROS starts
                       salvage=opts.salvage)
    frames = reader.frames()
    if limit is not None:
        frames = itertools.islice(frames, limit)
    try:
        first = next(frames)
    except StopIteration:
        reader.close()
        raise ValueError(f"{bag}: the bag has no image frames") from None
    frames = itertools.chain([first], frames)
    total = _image_count(reader)
    total = min(total, limit) if total is not None and limit is not None else total

    # Read by Fast DDS before the participant is created (rclpy.init below): large images need it.
    from csl_ros.ros.dds import PROFILE_VARIABLE, use_large_image_profile

    use_large_image_profile()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from csl_ros.ros.image_conversion import fill_image_msg

    node_fqn = node_name_of(opts.scores_topic)
    inbox = _Inbox()
    counts = {"images": 0, "labelled": 0, "scored": 0, "dropped": 0, "unlabelled_images": 0,
              "unmatched_labels": 0, "published": 0, "answered_unlabelled": 0, "dropped_unlabelled": 0,
              "unmatched_scores": 0}
    info: dict = {"node": node_fqn, "scores_topic": opts.scores_topic, "instances_topic": opts.instances_topic,
                  "image_topic": opts.image_topic, "camera_info_topic": opts.camera_info_topic,
                  "rate": opts.rate, "backend": None, "device": None,
                  "fastdds_builtin_transports": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS"),
                  "fastdds_profiles_file": os.environ.get(PROFILE_VARIABLE),
                  "ros_domain_id": os.environ.get("ROS_DOMAIN_ID", "0")}

    context = rclpy.context.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    node = None
    spin = None
    try:
        node = rclpy.create_node("csl_evaluate", context=context)
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, name="csl_evaluate_spin", daemon=True)
        spin.start()
        qos_out = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        image_pub = node.create_publisher(Image, opts.image_topic, qos_out)
        info_pub = node.create_publisher(CameraInfo, opts.camera_info_topic, qos_out)

        def on_scores(msg):
            try:
                arr = decode_float_image(msg, opts.scores_topic)
            except ValueError as exc:
                with inbox.lock:
                    inbox.errors.append(str(exc))
                return
            with inbox.arrived:
                inbox.scores[_stamp_of(msg.header)] = (arr, time.monotonic())
                inbox.arrived.notify_all()

        def on_instances(msg):
            try:
                arr = decode_float_image(msg, opts.instances_topic)
            except ValueError:
                return
            if arr.dtype != np.uint16:
                return
            with inbox.arrived:
                inbox.instances[_stamp_of(msg.header)] = arr
                inbox.arrived.notify_all()

        def on_diagnostics(msg):
            for st in msg.status:
                if st.name.startswith(node_fqn + ":"):
                    with inbox.arrived:
                        inbox.diagnostics = {kv.key: kv.value for kv in st.values}
                        inbox.diagnostics_time = time.monotonic()
                        inbox.arrived.notify_all()

        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)

        # 1. the node: a subscriber on the image topic and a publisher of the scores
        deadline = time.monotonic() + opts.wait_node_s
        while time.monotonic() < deadline:
            if image_pub.get_subscription_count() > 0 and node.get_publishers_info_by_topic(opts.scores_topic):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(
                f"no detector node within {opts.wait_node_s:g} s: {opts.image_topic} has "
                f"{image_pub.get_subscription_count()} subscriber(s) and {opts.scores_topic} "
                f"{len(node.get_publishers_info_by_topic(opts.scores_topic))} publisher(s). Start the node "
                f"(e.g. `ros2 launch csl_ros replay_eval.launch.py`, or csl_node --auto-activate with "
                f"image remapped to {opts.image_topic}) and check ROS_DOMAIN_ID "
                f"({info['ros_domain_id']})")
        pub_info = node.get_publishers_info_by_topic(opts.scores_topic)[0]
        reliability = pub_info.qos_profile.reliability
        qos_in = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE,
                            reliability=(ReliabilityPolicy.RELIABLE if reliability == ReliabilityPolicy.RELIABLE
                                         else ReliabilityPolicy.BEST_EFFORT))
        node.create_subscription(Image, opts.scores_topic, on_scores, qos_in)
        wait_instances = False
        if opts.instances_topic:
            node.create_subscription(Image, opts.instances_topic, on_instances, qos_in)
            wait_instances = bool(node.get_publishers_info_by_topic(opts.instances_topic))
        info["scores_reliability"] = "reliable" if reliability == ReliabilityPolicy.RELIABLE else "best_effort"

        def publish(image, camera_info, stamp_ns):
            if camera_info is not None:
                info_pub.publish(_camera_info_msg(camera_info, stamp_ns))
            msg = fill_image_msg(Image(), image, "rgb8")
            _set_stamp(msg.header, stamp_ns)
            image_pub.publish(msg)

        # 2. probe frames until the node answers one
        t_probe0 = time.monotonic()
        probe_stamps: set[int] = set()
        answered = False
        while not answered:
            if time.monotonic() > deadline + opts.timeout_s:
                state = inbox.diagnostics.get("lifecycle_state", "unknown")
                raise TimeoutError(
                    f"{node_fqn} did not answer a probe frame on {opts.scores_topic} within "
                    f"{opts.wait_node_s + opts.timeout_s:g} s (its lifecycle state: {state}); activate it "
                    f"(`ros2 lifecycle set {node_fqn} activate`, or auto_activate: true)")
            stamp = PROBE_STAMP_BASE_NS + len(probe_stamps)
            probe_stamps.add(stamp)
            publish(first.image, first.camera_info, stamp)
            with inbox.arrived:
                answered = inbox.arrived.wait_for(lambda: any(s in probe_stamps for s in inbox.scores),
                                                  timeout=opts.probe_period_s)
        info["node_ready_s"] = time.monotonic() - t_probe0

        # 3. the node's settings
        node_cfg, why = _read_node_config(node, node_fqn, sink.config, context.ok)
        sink.config = node_cfg
        info["config_source"] = "node parameters" if why is None else f"evaluator --config/--set ({why})"
        if why is not None:
            sink.notes.append(f"live: {why}; the detector settings reported are the evaluator's "
                              f"--config/--set, not necessarily the node's")

        # 4. publish the bag, score the answers
        pending: dict[int, tuple] = {}   # stamp -> (BagFrame, monotonic publish time)
        answers = {"first_pub": None, "last": None}

        def complete(stamp, frame, t_pub, scores, t_answer, instances):
            answers["last"] = t_answer
            if frame.labels is None:
                counts["answered_unlabelled"] += 1
                return
            sink.add(ScoredFrame(stamp, frame.frame_id, frame.image, frame.labels, scores, instances,
                                 latency_ms=(t_answer - t_pub) * 1e3, truth=ground_truth_of(frame)))
            counts["scored"] += 1

        def drop(stamp):
            frame, _ = pending.pop(stamp)
            counts["dropped" if frame.labels is not None else "dropped_unlabelled"] += 1

        def drain(force_instances=False):
            """Score every answer that is complete; earlier unanswered frames were dropped by the node."""
            now = time.monotonic()
            ready = []
            with inbox.lock:
                for stamp in sorted(inbox.scores):
                    arr, t_answer = inbox.scores[stamp]
                    if stamp in probe_stamps:
                        del inbox.scores[stamp]
                        continue
                    inst = inbox.instances.get(stamp)
                    if (inst is None and wait_instances and not force_instances
                            and now - t_answer < opts.instances_grace_s):
                        break          # keep the stamp order: later answers wait for this one
                    del inbox.scores[stamp]
                    inbox.instances.pop(stamp, None)
                    ready.append((stamp, arr, t_answer, inst))
                for stamp in [s for s in inbox.instances if s in probe_stamps]:
                    del inbox.instances[stamp]
            for stamp, arr, t_answer, inst in ready:
                if stamp not in pending:
                    counts["unmatched_scores"] += 1
                    continue
                for earlier in [s for s in pending if s < stamp]:
                    drop(earlier)      # outputs arrive in order: the node skipped these
                frame, t_pub = pending.pop(stamp)
                complete(stamp, frame, t_pub, arr, t_answer, inst)

        def wait_until(done, deadline_t):
            while True:
                drain()
                if done() or time.monotonic() >= deadline_t:
                    return
                with inbox.arrived:
                    inbox.arrived.wait(timeout=min(0.05, max(0.0, deadline_t - time.monotonic())))

        t_start = None
        stamp0 = None
        for fr in _bar(frames, quiet, "live", total):
            counts["images"] += 1
            if fr.labels is None:
                counts["unlabelled_images"] += 1
            else:
                counts["labelled"] += 1
            if fr.stamp_ns in pending or fr.stamp_ns in probe_stamps:
                raise ValueError(f"{bag}: two images with stamp {fr.stamp_ns} ns; frames are matched by stamp")
            if factor is not None:
                if t_start is None:
                    t_start, stamp0 = time.monotonic(), fr.stamp_ns
                due = t_start + (fr.stamp_ns - stamp0) / 1e9 / factor
                wait_until(lambda: False, due)
            t_last_pub = time.monotonic()
            if answers["first_pub"] is None:
                answers["first_pub"] = t_last_pub
            publish(fr.image, fr.camera_info, fr.stamp_ns)
            pending[fr.stamp_ns] = (fr, t_last_pub)
            counts["published"] += 1
            if factor is None:
                # score the earlier answers while the node works on this frame, then wait for its answer
                drain()
                s = fr.stamp_ns
                with inbox.arrived:
                    inbox.arrived.wait_for(lambda: s in inbox.scores or s not in pending, timeout=opts.timeout_s)
        counts["unmatched_labels"] = reader.stats.unmatched_labels
        _salvage_report(reader, counts, info)
        wait_until(lambda: not pending, time.monotonic() + opts.timeout_s)
        drain(force_instances=True)
        for stamp in sorted(pending):
            drop(stamp)
        info["publish_s"] = t_last_pub - answers["first_pub"]
        n_answered = counts["scored"] + counts["answered_unlabelled"]
        info["answered_per_s"] = (n_answered / (answers["last"] - answers["first_pub"])
                                  if n_answered and answers["last"] > answers["first_pub"] else None)
        # the node's statistics after the last frame: its next /diagnostics message
        t_done = time.monotonic()
        with inbox.arrived:
            if not inbox.arrived.wait_for(lambda: inbox.diagnostics_time > t_done, timeout=DIAGNOSTICS_WAIT_S):
                sink.notes.append(f"live: no /diagnostics from {node_fqn} within {DIAGNOSTICS_WAIT_S:g} s "
                                  f"after the last frame; backend/device and node statistics may be "
                                  f"missing or stale")
        with inbox.lock:
            diag = dict(inbox.diagnostics)
            if inbox.errors:
                sink.notes.append(f"live: {len(inbox.errors)} score message(s) could not be decoded, e.g. "
                                  f"{inbox.errors[0]}")
        info["node_diagnostics"] = diag
        info["backend"], info["device"] = diag.get("backend"), diag.get("device")
        info["probe_frames"] = len(probe_stamps)
    finally:
        reader.close()
        executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown(context=context)
        if spin is not None:
            spin.join(timeout=2.0)
    return counts, info
