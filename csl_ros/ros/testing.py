"""Helpers for exercising the ROS layer: a model-free detector that implements the Detector contract,
and a private rclpy context on its own ROS domain.

The ROS tests and ``bench/node.py`` inject it through the node's ``detector_factory`` so the graph
(subscriptions, conversion, publishing, lifecycle, parameters) is tested without trained models.
Its anomaly map is the image brightness, so a test controls where obstacles appear by drawing bright
blobs; instances and obstacle records come from the pipeline's own instance code.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time

import cv2
import numpy as np

from csl_ros.config import DetectorConfig, apply_overrides
from csl_ros.pipeline import Detection
from csl_ros.pipeline.instances import describe_instances, extract_instances
from csl_ros.ros.dds import PROFILE_VARIABLE, restored_environment, use_large_image_profile


class BrightnessDetector:
    """anomaly = grey level / 255; instances = connected components at ``score_threshold``.

    ``delay_s`` sleeps per frame (a slow model, for back-pressure tests). ``work_passes`` adds a real
    CPU workload of that many 5x5 box filters over the full-size float map (a fixed-cost stand-in for
    a network when measuring overhead).
    """

    def __init__(self, config: DetectorConfig, *, delay_s: float = 0.0, work_passes: int = 0) -> None:
        config.validate()
        self.config = config
        self.delay_s = float(delay_s)
        self.work_passes = int(work_passes)
        self.calls = 0
        self.closed = False
        self.warmed_up = False
        self.seen_thresholds: list[float] = []
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> "BrightnessDetector":
        return cls(cfg)

    def warmup(self) -> None:
        self(np.zeros((self.config.input_height, self.config.input_width, 3), np.uint8))
        self.calls = 0
        self.seen_thresholds.clear()
        self.warmed_up = True

    def update(self, **changes) -> None:
        fields = {f.name: f for f in dataclasses.fields(DetectorConfig)}
        for name in changes:
            if name in fields and fields[name].metadata.get("reload"):
                raise ValueError(f"{name} needs a model reload")
        with self._lock:
            self.config = apply_overrides(self.config, changes)

    def __call__(self, image: np.ndarray, camera=None):
        if self.closed:
            raise RuntimeError("detector used after close()")
        t0 = time.perf_counter()
        with self._lock:
            cfg = self.config
        img = np.asarray(image)
        if img.ndim == 3:
            img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
        scores = img.astype(np.float32) * np.float32(1.0 / 255.0)
        for _ in range(self.work_passes):
            work = cv2.blur(scores, (5, 5))
            scores = np.minimum(scores, work + np.float32(1.0))  # keep the result, don't let it be elided
        if self.delay_s:
            time.sleep(self.delay_s)
        t1 = time.perf_counter()
        instances = extract_instances(scores, None, cfg.score_threshold, cfg.min_instance_area)
        obstacles = describe_instances(instances, scores, camera)
        t2 = time.perf_counter()
        self.calls += 1
        self.seen_thresholds.append(cfg.score_threshold)
        return Detection(anomaly_map=scores, instances=instances, obstacles=obstacles,
                         timings_ms={"network": (t1 - t0) * 1e3, "instances": (t2 - t1) * 1e3,
                                     "total": (t2 - t0) * 1e3},
                         backend="brightness", device="cpu")

    def detect_batch(self, images, cameras=None):
        cameras = cameras or [None] * len(images)
        return [self(im, cam) for im, cam in zip(images, cameras)]

    def close(self) -> None:
        self.closed = True


@contextlib.contextmanager
def private_ros_context(domain_id: int, large_data: bool = False, discovery_range: str | None = None):
    """An rclpy context on ``ROS_DOMAIN_ID=domain_id`` (so parallel test runs do not see each other),
    optionally with the large-image Fast DDS profile (csl_ros.ros.dds; read once per process, before
    its first participant) and ``ROS_AUTOMATIC_DISCOVERY_RANGE=discovery_range``. The environment is
    restored and the context shut down on exit."""
    import rclpy  # optional here: BrightnessDetector serves tests and benchmarks without ROS

    with restored_environment("ROS_DOMAIN_ID", PROFILE_VARIABLE, "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        os.environ["ROS_DOMAIN_ID"] = str(domain_id)
        if large_data:
            use_large_image_profile()
        if discovery_range is not None:
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery_range
        context = rclpy.context.Context()
        rclpy.init(context=context)
        try:
            yield context
        finally:
            rclpy.shutdown(context=context)
