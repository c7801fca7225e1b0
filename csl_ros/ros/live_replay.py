"""``csl-ros evaluate --live``: replay a bag to a running ``csl_detector`` node and score its answers.

:class:`LiveReplay`, the replay client, is an rclpy node (``csl_evaluate``) that

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

import dataclasses
import itertools
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from csl_ros.config import DetectorConfig, apply_overrides
from csl_ros.eval.bag import BagReader, stamp_ns_of
from csl_ros.eval.driving import ground_truth_of
from csl_ros.eval.evaluate import bag_lag_ns, image_count, progress_bar, salvage_report
from csl_ros.eval.scoring import ScoredFrame
from csl_ros.image_codec import fill_image_msg, single_channel_msg_to_array
from csl_ros.ros.dds import PROFILE_VARIABLE, use_large_image_profile
from csl_ros.ros.interfaces import qos_profile
from csl_ros.ros.outputs import node_of_topic, output_topic

PROBE_STAMP_BASE_NS = 1_000        # probe frames: stamps 1 us + k ns, far outside any real bag
NODE_PARAMETERS_TIMEOUT_S = 5.0
DIAGNOSTICS_WAIT_S = 3.0           # the node's diagnostics period is 1 s by default


@dataclass
class LiveOptions:
    image_topic: str = "/camera/image_raw"
    camera_info_topic: str = "/camera/camera_info"
    scores_topic: str = output_topic("score", "/csl/camera")
    instances_topic: str | None = output_topic("instances", "/csl/camera")
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


def _set_stamp(header, stamp_ns: int, frame_id: str = "camera_optical_frame") -> None:
    header.stamp.sec = int(stamp_ns // 10**9)
    header.stamp.nanosec = int(stamp_ns % 10**9)
    header.frame_id = frame_id


def _camera_info_msg(info: dict, stamp_ns: int):
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




COUNT_KEYS = ("images", "labelled", "scored", "dropped", "unlabelled_images", "unmatched_labels", "published",
              "answered_unlabelled", "dropped_unlabelled", "unmatched_scores")


class LiveReplay:
    """One replay of ``bag`` to the running node; :meth:`run` feeds the node's answers to ``sink``
    (a :class:`csl_ros.eval.scoring.ScoreSink`) and returns (counts, run info)."""

    def __init__(self, bag, sink, opts: LiveOptions, *, limit=None, quiet=True) -> None:
        self.factor = parse_rate(opts.rate)
        if opts.timeout_s <= 0 or opts.wait_node_s <= 0:
            raise ValueError("--timeout and --wait-node must be > 0 seconds")
        self.bag, self.sink, self.opts, self.limit, self.quiet = bag, sink, opts, limit, quiet
        self.node_fqn = node_of_topic(opts.scores_topic)
        self.inbox = _Inbox()
        self.counts = dict.fromkeys(COUNT_KEYS, 0)
        self.info: dict = {}
        self.probe_stamps: set[int] = set()
        self.pending: dict[int, tuple] = {}   # stamp -> (BagFrame, monotonic publish time)
        self.first_pub = self.last_answer = None
        self.wait_instances = False
        self.node = self.image_pub = self.info_pub = None

    # --- the run ----------------------------------------------------------------------------------------
    def run(self) -> tuple[dict, dict]:
        reader = BagReader(self.bag, lag_ns=bag_lag_ns(self.opts.bag_lag_s),   # a bad bag fails before ROS
                           salvage=self.opts.salvage)
        try:
            first, frames, total = self._first_frame(reader)
        except BaseException:
            reader.close()
            raise
        # Read by Fast DDS before the participant is created (rclpy.init below): large images need it.
        use_large_image_profile()
        self.info = self._run_info()
        context = rclpy.context.Context()
        rclpy.init(context=context)
        executor = SingleThreadedExecutor(context=context)
        spin = None
        try:
            self.node = rclpy.create_node("csl_evaluate", context=context)
            executor.add_node(self.node)
            spin = threading.Thread(target=executor.spin, name="csl_evaluate_spin", daemon=True)
            spin.start()
            self._create_endpoints()
            self._wait_for_node()
            self._probe(first)
            self._use_node_settings(context)
            self._replay(frames, total, reader)
            self._collect_diagnostics()
        finally:
            reader.close()
            executor.shutdown(timeout_sec=2.0)
            if self.node is not None:
                self.node.destroy_node()
            rclpy.try_shutdown(context=context)
            if spin is not None:
                spin.join(timeout=2.0)
        return self.counts, self.info

    def _first_frame(self, reader):
        """(the first frame, an iterator over all frames from it, the image count or None)."""
        frames = reader.frames()
        if self.limit is not None:
            frames = itertools.islice(frames, self.limit)
        try:
            first = next(frames)
        except StopIteration:
            raise ValueError(f"{self.bag}: the bag has no image frames") from None
        total = image_count(reader)
        if total is not None and self.limit is not None:
            total = min(total, self.limit)
        return first, itertools.chain([first], frames), total

    def _run_info(self) -> dict:
        o = self.opts
        return {"node": self.node_fqn, "scores_topic": o.scores_topic, "instances_topic": o.instances_topic,
                "image_topic": o.image_topic, "camera_info_topic": o.camera_info_topic,
                "rate": o.rate, "backend": None, "device": None,
                "fastdds_builtin_transports": os.environ.get("FASTDDS_BUILTIN_TRANSPORTS"),
                "fastdds_profiles_file": os.environ.get(PROFILE_VARIABLE),
                "ros_domain_id": os.environ.get("ROS_DOMAIN_ID", "0")}

    def _create_endpoints(self) -> None:
        qos_out = qos_profile("reliable", 5)
        self.image_pub = self.node.create_publisher(Image, self.opts.image_topic, qos_out)
        self.info_pub = self.node.create_publisher(CameraInfo, self.opts.camera_info_topic, qos_out)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    # --- subscriptions (executor thread) ----------------------------------------------------------------
    def _on_scores(self, msg) -> None:
        inbox = self.inbox
        try:
            arr = single_channel_msg_to_array(msg, self.opts.scores_topic)
        except ValueError as exc:
            with inbox.lock:
                inbox.errors.append(str(exc))
            return
        with inbox.arrived:
            inbox.scores[stamp_ns_of(msg)] = (arr, time.monotonic())
            inbox.arrived.notify_all()

    def _on_instances(self, msg) -> None:
        try:
            arr = single_channel_msg_to_array(msg, self.opts.instances_topic)
        except ValueError:
            return
        if arr.dtype != np.uint16:
            return
        with self.inbox.arrived:
            self.inbox.instances[stamp_ns_of(msg)] = arr
            self.inbox.arrived.notify_all()

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            if st.name.startswith(self.node_fqn + ":"):
                with self.inbox.arrived:
                    self.inbox.diagnostics = {kv.key: kv.value for kv in st.values}
                    self.inbox.diagnostics_time = time.monotonic()
                    self.inbox.arrived.notify_all()

    # --- 1. the node: a subscriber on the image topic and a publisher of the scores -----------------------
    def _wait_for_node(self) -> None:
        o, node = self.opts, self.node
        self.node_deadline = time.monotonic() + o.wait_node_s
        while time.monotonic() < self.node_deadline:
            if self.image_pub.get_subscription_count() > 0 and node.get_publishers_info_by_topic(o.scores_topic):
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(
                f"no detector node within {o.wait_node_s:g} s: {o.image_topic} has "
                f"{self.image_pub.get_subscription_count()} subscriber(s) and {o.scores_topic} "
                f"{len(node.get_publishers_info_by_topic(o.scores_topic))} publisher(s). Start the node "
                f"(e.g. `ros2 launch csl_ros replay_eval.launch.py`, or csl_node --auto-activate with "
                f"image remapped to {o.image_topic}) and check ROS_DOMAIN_ID "
                f"({self.info['ros_domain_id']})")
        reliability = node.get_publishers_info_by_topic(o.scores_topic)[0].qos_profile.reliability
        qos_in = qos_profile("reliable" if reliability == ReliabilityPolicy.RELIABLE else "best_effort", 100)
        node.create_subscription(Image, o.scores_topic, self._on_scores, qos_in)
        if o.instances_topic:
            node.create_subscription(Image, o.instances_topic, self._on_instances, qos_in)
            self.wait_instances = bool(node.get_publishers_info_by_topic(o.instances_topic))
        self.info["scores_reliability"] = ("reliable" if reliability == ReliabilityPolicy.RELIABLE
                                           else "best_effort")

    def _publish(self, image, camera_info, stamp_ns: int) -> None:
        if camera_info is not None:
            self.info_pub.publish(_camera_info_msg(camera_info, stamp_ns))
        msg = fill_image_msg(Image(), image, "rgb8")
        _set_stamp(msg.header, stamp_ns)
        self.image_pub.publish(msg)

    # --- 2. probe frames until the node answers one -----------------------------------------------------
    def _probe(self, first) -> None:
        o, inbox = self.opts, self.inbox
        t_probe0 = time.monotonic()
        answered = False
        while not answered:
            if time.monotonic() > self.node_deadline + o.timeout_s:
                state = inbox.diagnostics.get("lifecycle_state", "unknown")
                raise TimeoutError(
                    f"{self.node_fqn} did not answer a probe frame on {o.scores_topic} within "
                    f"{o.wait_node_s + o.timeout_s:g} s (its lifecycle state: {state}); activate it "
                    f"(`ros2 lifecycle set {self.node_fqn} activate`, or auto_activate: true)")
            stamp = PROBE_STAMP_BASE_NS + len(self.probe_stamps)
            self.probe_stamps.add(stamp)
            self._publish(first.image, first.camera_info, stamp)
            with inbox.arrived:
                answered = inbox.arrived.wait_for(lambda: any(s in self.probe_stamps for s in inbox.scores),
                                                  timeout=o.probe_period_s)
        self.info["node_ready_s"] = time.monotonic() - t_probe0

    # --- 3. the node's settings -------------------------------------------------------------------------
    def _use_node_settings(self, context) -> None:
        sink = self.sink
        node_cfg, why = _read_node_config(self.node, self.node_fqn, sink.config, context.ok)
        sink.config = node_cfg
        self.info["config_source"] = ("node parameters" if why is None
                                      else f"evaluator --config/--set ({why})")
        if why is not None:
            sink.notes.append(f"live: {why}; the detector settings reported are the evaluator's "
                              f"--config/--set, not necessarily the node's")

    # --- 4. publish the bag, score the answers ----------------------------------------------------------
    def _replay(self, frames, total, reader) -> None:
        counts, inbox, o = self.counts, self.inbox, self.opts
        t_start = stamp0 = t_last_pub = None
        for fr in progress_bar(frames, self.quiet, "live", total):
            counts["images"] += 1
            counts["unlabelled_images" if fr.labels is None else "labelled"] += 1
            if fr.stamp_ns in self.pending or fr.stamp_ns in self.probe_stamps:
                raise ValueError(f"{self.bag}: two images with stamp {fr.stamp_ns} ns; frames are matched by stamp")
            if self.factor is not None:
                if t_start is None:
                    t_start, stamp0 = time.monotonic(), fr.stamp_ns
                self._wait_until(lambda: False, t_start + (fr.stamp_ns - stamp0) / 1e9 / self.factor)
            t_last_pub = time.monotonic()
            if self.first_pub is None:
                self.first_pub = t_last_pub
            self._publish(fr.image, fr.camera_info, fr.stamp_ns)
            self.pending[fr.stamp_ns] = (fr, t_last_pub)
            counts["published"] += 1
            if self.factor is None:
                # score the earlier answers while the node works on this frame, then wait for its answer
                self._drain()
                s = fr.stamp_ns
                with inbox.arrived:
                    inbox.arrived.wait_for(lambda: s in inbox.scores or s not in self.pending, timeout=o.timeout_s)
        counts["unmatched_labels"] = reader.stats.unmatched_labels
        salvage_report(reader, counts, self.info)
        self._wait_until(lambda: not self.pending, time.monotonic() + o.timeout_s)
        self._drain(force_instances=True)
        for stamp in sorted(self.pending):
            self._drop(stamp)
        self.info["publish_s"] = t_last_pub - self.first_pub
        n_answered = counts["scored"] + counts["answered_unlabelled"]
        self.info["answered_per_s"] = (n_answered / (self.last_answer - self.first_pub)
                                       if n_answered and self.last_answer > self.first_pub else None)

    def _complete(self, stamp, frame, t_pub, scores, t_answer, instances) -> None:
        self.last_answer = t_answer
        if frame.labels is None:
            self.counts["answered_unlabelled"] += 1
            return
        self.sink.add(ScoredFrame(stamp, frame.frame_id, frame.image, frame.labels, scores, instances,
                                  latency_ms=(t_answer - t_pub) * 1e3, truth=ground_truth_of(frame)))
        self.counts["scored"] += 1

    def _drop(self, stamp) -> None:
        frame, _ = self.pending.pop(stamp)
        self.counts["dropped" if frame.labels is not None else "dropped_unlabelled"] += 1

    def _take_answers(self, force_instances: bool) -> list:
        """Remove the complete answers from the inbox, in stamp order (probe answers discarded)."""
        inbox, now, ready = self.inbox, time.monotonic(), []
        with inbox.lock:
            for stamp in sorted(inbox.scores):
                arr, t_answer = inbox.scores[stamp]
                if stamp in self.probe_stamps:
                    del inbox.scores[stamp]
                    continue
                inst = inbox.instances.get(stamp)
                if (inst is None and self.wait_instances and not force_instances
                        and now - t_answer < self.opts.instances_grace_s):
                    break          # keep the stamp order: later answers wait for this one
                del inbox.scores[stamp]
                inbox.instances.pop(stamp, None)
                ready.append((stamp, arr, t_answer, inst))
            for stamp in [s for s in inbox.instances if s in self.probe_stamps]:
                del inbox.instances[stamp]
        return ready

    def _drain(self, force_instances: bool = False) -> None:
        """Score every answer that is complete; earlier unanswered frames were dropped by the node."""
        for stamp, arr, t_answer, inst in self._take_answers(force_instances):
            if stamp not in self.pending:
                self.counts["unmatched_scores"] += 1
                continue
            for earlier in [s for s in self.pending if s < stamp]:
                self._drop(earlier)      # outputs arrive in order: the node skipped these
            frame, t_pub = self.pending.pop(stamp)
            self._complete(stamp, frame, t_pub, arr, t_answer, inst)

    def _wait_until(self, done, deadline_t: float) -> None:
        while True:
            self._drain()
            if done() or time.monotonic() >= deadline_t:
                return
            with self.inbox.arrived:
                self.inbox.arrived.wait(timeout=min(0.05, max(0.0, deadline_t - time.monotonic())))

    # --- the node's statistics after the last frame: its next /diagnostics message --------------------------
    def _collect_diagnostics(self) -> None:
        inbox, sink = self.inbox, self.sink
        t_done = time.monotonic()
        with inbox.arrived:
            if not inbox.arrived.wait_for(lambda: inbox.diagnostics_time > t_done, timeout=DIAGNOSTICS_WAIT_S):
                sink.notes.append(f"live: no /diagnostics from {self.node_fqn} within {DIAGNOSTICS_WAIT_S:g} s "
                                  f"after the last frame; backend/device and node statistics may be "
                                  f"missing or stale")
        with inbox.lock:
            diag = dict(inbox.diagnostics)
            if inbox.errors:
                sink.notes.append(f"live: {len(inbox.errors)} score message(s) could not be decoded, e.g. "
                                  f"{inbox.errors[0]}")
        self.info["node_diagnostics"] = diag
        self.info["backend"], self.info["device"] = diag.get("backend"), diag.get("device")
        self.info["probe_frames"] = len(self.probe_stamps)


def evaluate_live(bag, sink, opts: LiveOptions, *, limit=None, quiet=True) -> tuple[dict, dict]:
    """Replay ``bag`` to the running node and feed its answers to ``sink``; returns (counts, run info)."""
    return LiveReplay(bag, sink, opts, limit=limit, quiet=quiet).run()
