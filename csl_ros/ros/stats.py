"""ROS-free bookkeeping for the node: the latest-frame slot, rate and latency statistics, bad-frame
reasons and log throttling. Kept out of ``node.py`` so it is unit tested without a ROS graph."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, TypeVar

import numpy as np

T = TypeVar("T")


class LatestFrameSlot(Generic[T]):
    """A one-element mailbox between the subscription callback and the inference worker.

    ``put`` replaces whatever is waiting (the replaced frame is dropped and counted), so when the
    camera is faster than inference only the newest frame is ever processed and no queue builds up.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; return True when it replaced an unprocessed frame (a drop)."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """Wait up to ``timeout`` seconds for a frame and remove it; None on timeout or close."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> None:
        with self._cond:
            self._item = None

    def close(self) -> None:
        """Wake a waiting ``take`` (used to stop the worker)."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = float(window_s)
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.total = 0
        self.last: float | None = None  # clock time of the latest event

    def tick(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        with self._lock:
            self._times.append(now)
            self.total += 1
            self.last = now
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def count(self, now: float | None = None) -> int:
        """Events in the window ending at ``now``."""
        now = self._clock() if now is None else now
        with self._lock:
            self._trim(now)
            return len(self._times)

    def rate_hz(self, now: float | None = None) -> float:
        """Events per second in the window: (n - 1) intervals over the span of n events; 0 with
        fewer than two events."""
        now = self._clock() if now is None else now
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


class LatencyWindow:
    """The last ``size`` latency samples (milliseconds) and their percentiles."""

    def __init__(self, size: int = 500) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=int(size))
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._samples.append(float(ms))

    def __len__(self) -> int:
        return len(self._samples)

    def percentiles(self, qs=(50, 95, 99)) -> dict[int, float]:
        """{q: value}; NaN for every q while there is no sample."""
        with self._lock:
            data = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        if data.size == 0:
            return {q: float("nan") for q in qs}
        vals = np.percentile(data, qs)
        return {q: float(v) for q, v in zip(qs, vals)}


# Short keys for the bad-frame counters, matched against ImageFormatError messages (the conversion
# module words each problem distinctly); the first match wins.
_BAD_FRAME_REASONS = (
    ("unsupported encoding", "unsupported_encoding"),
    ("zero-size", "zero_size"),
    ("absurd image size", "absurd_size"),
    ("needs an even width", "odd_width"),
    ("step", "step_mismatch"),
    ("height*step needs", "data_too_short"),
    ("nan or inf", "non_finite"),
    ("empty compressedimage", "empty_compressed"),
    ("could not be decoded", "decode_failed"),
)


def bad_frame_reason(message: str) -> str:
    """Short counter key for an image conversion error message ('other' when unrecognised)."""
    low = message.lower()
    # "data has N bytes, height*step needs M" also contains "step": test it first.
    if "height*step needs" in low:
        return "data_too_short"
    for needle, key in _BAD_FRAME_REASONS:
        if needle in low:
            return key
    return "other"


class Throttle:
    """At most one event per ``period_s`` for each key (per-reason log throttling)."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = float(period_s)
        self._clock = clock
        self._last: dict[Any, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: Any) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                return False
            self._last[key] = now
            return True


# Errors (bad frames, detector and publishing failures) set the diagnostic level for this long after
# they happen, then age out, so a past error never hides what the node is doing now.
RECENT_WINDOW_S = 10.0


def _recent() -> RateMeter:
    return RateMeter(RECENT_WINDOW_S)


@dataclass
class NodeStats:
    """Counters and windows the node reports on /diagnostics: totals since start, and the same events
    in the last ``RECENT_WINDOW_S`` seconds (``recent_*``) for the diagnostic level."""

    received: RateMeter = field(default_factory=RateMeter)
    processed: RateMeter = field(default_factory=RateMeter)
    latency_ms: LatencyWindow = field(default_factory=LatencyWindow)
    detector_ms: LatencyWindow = field(default_factory=LatencyWindow)
    bad_frames: collections.Counter = field(default_factory=collections.Counter)
    ignored_inactive: int = 0
    recent_bad: RateMeter = field(default_factory=_recent)
    recent_detector_errors: RateMeter = field(default_factory=_recent)
    recent_publish_errors: RateMeter = field(default_factory=_recent)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def detector_errors(self) -> int:
        return self.recent_detector_errors.total

    @property
    def publish_errors(self) -> int:
        return self.recent_publish_errors.total

    def count_bad(self, reason: str) -> None:
        with self._lock:
            self.bad_frames[reason] += 1
        self.recent_bad.tick()

    def count_detector_error(self) -> None:
        self.recent_detector_errors.tick()

    def count_publish_error(self) -> None:
        self.recent_publish_errors.tick()

    def recent_errors(self) -> dict[str, int]:
        """Bad frames, detector and publishing errors in the last ``RECENT_WINDOW_S`` seconds."""
        return {"bad_frames": self.recent_bad.count(), "detector_errors": self.recent_detector_errors.count(),
                "publish_errors": self.recent_publish_errors.count()}

    def snapshot(self, dropped: int) -> dict[str, Any]:
        """All figures as one flat dict (rates in Hz, latencies in ms)."""
        lat = self.latency_ms.percentiles()
        det = self.detector_ms.percentiles((50,))
        with self._lock:
            bad = dict(self.bad_frames)
        out: dict[str, Any] = {
            "input_rate_hz": self.received.rate_hz(),
            "processed_rate_hz": self.processed.rate_hz(),
            "frames_received": self.received.total,
            "frames_processed": self.processed.total,
            "frames_dropped": dropped,
            "frames_ignored_inactive": self.ignored_inactive,
            "bad_frames": sum(bad.values()),
            "detector_errors": self.detector_errors,
            "publish_errors": self.publish_errors,
            "latency_p50_ms": lat[50],
            "latency_p95_ms": lat[95],
            "latency_p99_ms": lat[99],
            "detector_p50_ms": det[50],
        }
        for reason, n in sorted(bad.items()):
            out[f"bad_frames.{reason}"] = n
        return out


# Diagnostic levels, numerically equal to diagnostic_msgs/DiagnosticStatus (OK=0, WARN=1, ERROR=2).
OK, WARN, ERROR = 0, 1, 2


def diagnostic_summary(state: str, snapshot: dict[str, Any], *, input_topic: str, input_publishers: int,
                       recent_input: int = 0, input_age_s: float | None = None, starved_after_s: float = 2.0,
                       recent: Mapping[str, int] | None = None, camera_info: str = "calibrated",
                       camera_info_topic: str = "camera_info", first_frame_pending: bool = False,
                       ) -> tuple[int, str]:
    """(level, message) for /diagnostics from the lifecycle state and the recent figures.

    ``recent_input``: frames received since the previous report (inactive node);
    ``input_age_s``: seconds since the latest frame, or since activation when that is more recent
    (None: neither), so a node gets ``starved_after_s`` of grace after it starts before "nothing
    received" is reported, and a camera that stops is reported ``starved_after_s`` later whatever
    happened before. ``recent``: bad frames / detector / publishing errors in the last
    ``RECENT_WINDOW_S`` seconds (keys ``bad_frames``, ``detector_errors``, ``publish_errors``).
    ``camera_info``: "calibrated", "uncalibrated" (fx or fy 0) or "missing".
    ``first_frame_pending``: activated recently, no frame yet (within the start-up grace period).
    """
    if state == "unconfigured":
        extra = f" ({input_publishers} publisher(s) on {input_topic} are ignored)" if input_publishers else ""
        return ERROR, ("node is unconfigured: nothing is processed" + extra +
                       "; configure and activate it (ros2 lifecycle set <node> configure, then activate) "
                       "or set auto_activate")
    if state == "inactive":
        extra = (f" ({recent_input} frame(s) on {input_topic} ignored)" if recent_input else
                 f" ({input_publishers} publisher(s) on {input_topic} are ignored)" if input_publishers else "")
        return WARN, "node is inactive: nothing is processed" + extra + "; activate it to start"
    if state != "active":
        return ERROR, f"node is {state}"
    # A silent camera first: errors can only come with frames, so a starved node is starved now.
    starved = input_age_s is None or input_age_s > starved_after_s
    if starved and input_publishers:
        # The classic silent failure: large images that the transport cannot deliver.
        return WARN, (f"active, but nothing received on {input_topic} from its {input_publishers} publisher(s) "
                      f"for {starved_after_s:g} s: check QoS compatibility and, for large images, the DDS "
                      "transport (docs/ros.md, troubleshooting)")
    if starved:
        return WARN, f"active, but no publisher on {input_topic}"
    if first_frame_pending:
        return OK, f"active, waiting for the first frame on {input_topic}"
    recent = recent or {}
    bad, det_err, pub_err = (int(recent.get(k, 0)) for k in ("bad_frames", "detector_errors", "publish_errors"))
    if bad:
        return WARN, f"{bad} bad input frame(s) rejected in the last {RECENT_WINDOW_S:g} s"
    if det_err or pub_err:
        return WARN, (f"{det_err} detector error(s), {pub_err} publishing error(s) in the last "
                      f"{RECENT_WINDOW_S:g} s")
    if camera_info != "calibrated":
        what = "no camera_info received" if camera_info == "missing" else "camera_info is uncalibrated (fx or fy 0)"
        return WARN, (f"active, but {what} on {camera_info_topic}: obstacles get no metric position and no "
                      "markers")
    return OK, "active"
