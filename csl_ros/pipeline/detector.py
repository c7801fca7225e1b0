"""The detector: one camera image in; anomaly map, OOD instances and obstacles out. No ROS.

Flow per batch (CSL inference, spec section 4):
  letterbox to the network size -> student (region logits, validity, scheme-1 D-hat) and/or teacher
  (per-pixel D) -> soft assignment (Eq. 2) at stride 4, labels upsampled (or at the network input,
  assignment_resolution="full") -> structure-constrained
  fusion (Eq. 3) at the input resolution -> instances (components of H >= threshold within regions)
  -> obstacle records with flat-ground geometry.

Calling the detector on one image (``detector(image, camera)``) treats the calls as the frames of one
camera stream and tracks the obstacles across them (``csl_ros.pipeline.tracking``, the ``track_*``
settings): ``Detection.obstacles`` are the confirmed tracks' records, ``Detection.tentative`` the rest.
``detect_batch`` is stateless (independent images, several cameras): every record is reported.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from csl_ros.config import (SCALE_FUSIONS, DetectorConfig, apply_model_settings, apply_overrides,
                            regions_description)
from csl_ros.data.synthroad.labels import ROAD as ROAD_TRAIN_ID  # Cityscapes trainId of road
from csl_ros.model import (connected_components, hard_assign, load_checkpoint, soft_assign, soft_assign_region_logits,
                           structure_constrained_fusion)
from csl_ros.model.device import resolve_device
from csl_ros.model_settings import model_settings
from csl_ros.pipeline.backends import CompiledModel, compile_network
from csl_ros.pipeline.geometry import CameraGeometry
from csl_ros.pipeline.instances import Obstacle, faint_candidates, obstacles_of
from csl_ros.pipeline.timing import StageTimer
from csl_ros.pipeline.tracking import Tracker, TrackingParams
from csl_ros.shipped import resolve_shipped
from csl_ros.teachers.hf import Mask2FormerRegions, resolve_hf_dir
from csl_ros.teachers.real_models import load_hf_model
from csl_ros.teachers.teacher import build_teacher

log = logging.getLogger("csl_ros.detector")

# Names of the shipped synthroad students in models/manifest.json.
SHIPPED_STUDENT = {"1": "student_scheme1", "2": "student_ca"}
# Fields that can change while running (everything else needs the models reloaded).
RUNTIME_FIELDS = tuple(f.name for f in dataclasses.fields(DetectorConfig) if not f.metadata["reload"])


@dataclass
class Detection:
    anomaly_map: np.ndarray            # float32 (H, W) in [0, 1], input image size
    instances: np.ndarray              # uint16 (H, W), 0 = none
    obstacles: list[Obstacle]
    timings_ms: dict[str, float] = field(default_factory=dict)
    backend: str = "eager"
    device: str = "cpu"
    backends: str = ""                 # every network's backend, e.g. "student onnxruntime (CPU...), teacher ..."
    regions: np.ndarray | None = None  # int32 (H, W) region ids used by the fusion (None: teacher only)
    tentative: list[Obstacle] = field(default_factory=list)  # tracked, not (yet) confirmed: not reported
    road_roi: np.ndarray | None = None  # bool (H, W): the teacher's dilated road with ``road_roi`` on, else None

    def obstacles_json(self) -> list[dict]:
        return [o.to_dict() for o in self.obstacles]


class _StudentForward(torch.nn.Module):
    """Plain-tensor view of the student for tracing/compiling: (region, validity, distribution)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, images):
        out = self.student(images)
        return out.region_logits, out.validity_logits, out.distribution


def as_rgb_uint8(image) -> np.ndarray:
    """Accept (H, W, 3) RGB, (H, W) grey or (H, W, 4) RGBA uint8; anything else is a ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has zero size {image.shape[:2]}")
    return image


def combine_scales(first: torch.Tensor, second: torch.Tensor, mode: str) -> torch.Tensor:
    """The fused anomaly maps of the input size and of ``test_scale`` (same size, in [0, 1]) as one:
    ``"geometric"`` mean sqrt(a b) (an anomaly must show at both scales: single-scale noise fades, and
    so does what only the larger scale resolves), ``"mean"`` (a + b) / 2, or ``"max"`` (either scale
    suffices)."""
    if mode == "geometric":
        return torch.sqrt(first * second)
    if mode == "mean":
        return 0.5 * (first + second)
    if mode == "max":
        return torch.maximum(first, second)
    raise ValueError(f"scale_fusion {mode!r} is not one of {', '.join(SCALE_FUSIONS)}")


class Detector:
    """CSL obstacle detector (scheme 1, scheme 2 or teacher only) on one backend and device."""

    def __init__(self, cfg: DetectorConfig, student=None, teacher=None, *, model_hash: str = "",
                 regions=None):
        """``regions``: a region proposer replacing the student's regions (``regions: mask2former``;
        images → (region logits B×N×h/4×w/4, validity v_n B×N))."""
        cfg.validate()
        self.config = cfg
        self.device = resolve_device(cfg.device)
        if cfg.scheme in ("2", "teacher_only") and teacher is None:
            raise ValueError(f"scheme {cfg.scheme!r} needs a teacher (teacher={cfg.teacher!r})")
        if cfg.regions == "mask2former" and cfg.scheme == "2" and regions is None:
            raise ValueError("regions='mask2former' needs a Mask2Former region proposer (regions_path)")
        if regions is not None and cfg.scheme != "2":
            raise ValueError(f"regions='mask2former' fuses regions with a teacher: scheme '2', not "
                             f"{cfg.scheme!r}")
        self.regions = regions
        if (cfg.scheme == "1" or (cfg.scheme == "2" and regions is None)) and student is None:
            raise ValueError(f"scheme {cfg.scheme!r} needs a CSL student")
        if cfg.scheme == "1" and not student.has_distribution:
            raise ValueError("scheme 1 needs a student with a distillation head (distill_channels > 0); "
                             "this checkpoint is class-agnostic only: use scheme 2 with a teacher")
        self.teacher = teacher
        self._model_hash = model_hash
        self._student_eager = None   # the uncompiled student, compiled once per network size
        if student is not None and cfg.scheme != "teacher_only" and regions is None:
            self._student_eager = _StudentForward(student).to(self.device).eval()
        if teacher is not None:
            teacher.model.to(self.device)
        # the compiled networks of each network size (test_scale's second pass has its own)
        self._networks: dict[tuple[int, int], tuple[CompiledModel | None, CompiledModel | None]] = {}
        self._networks_at((cfg.input_height, cfg.input_width))
        self.backends = ", ".join(f"{role} {net.describe()}" for role, net in
                                  (("student", self.network), ("teacher", self.teacher_network)) if net)
        if regions is not None and regions.shared:
            self.backends = "teacher eager (its Mask2Former queries give the regions)"
        if self.backends:
            log.info("inference backends on %s: %s%s", self.device, self.backends,
                     f" (backend auto: measured fastest on {self.device.type} first)" if cfg.backend == "auto" else "")
        self.tracker = Tracker(TrackingParams.from_config(cfg))

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> "Detector":
        """Load the student and/or teacher named by ``cfg`` (shipped defaults when paths are empty).
        Settings the student checkpoint carries (input size, tuned score threshold: see
        csl_ros.model_settings) replace those ``cfg`` leaves at the schema default."""
        cfg.validate()
        device = resolve_device(cfg.device)
        student = teacher = None
        model_hash = ""
        if cfg.scheme == "1" or (cfg.scheme == "2" and cfg.regions == "student"):
            path = cfg.student_path
            if not path:
                path = resolve_shipped(SHIPPED_STUDENT[cfg.scheme])
            loaded = load_checkpoint(path, device="cpu")
            student, model_hash = loaded.model, loaded.sha256
            cfg, taken = apply_model_settings(cfg, model_settings(loaded.metadata, source=str(path)))
            if taken:
                log.info("%s: using the checkpoint's %s (left at the schema default)", path,
                         ", ".join(f"{k}={v}" for k, v in taken.items()))
        if cfg.scheme in ("2", "teacher_only"):
            if cfg.teacher == "none":
                raise ValueError(f"scheme {cfg.scheme!r} needs a teacher; teacher is 'none'")

            teacher = build_teacher(cfg.teacher, segmenter_path=cfg.teacher_path,
                                    stats_path=cfg.teacher_stats_path,
                                    onnx_path=cfg.teacher_path if cfg.teacher == "onnx" else "",
                                    onnx_output=cfg.onnx_output or None, device=device,
                                    allow_download=cfg.allow_download)
        regions = None
        if cfg.scheme == "2" and cfg.regions == "mask2former":
            regions = cls._region_proposer(cfg, teacher, device)
        return cls(cfg, student, teacher, model_hash=model_hash, regions=regions)

    @staticmethod
    def _region_proposer(cfg: DetectorConfig, teacher, device):
        """A Mask2Former region proposer; the teacher's own model when it is that Mask2Former."""
        teacher_model = getattr(teacher, "model", None)
        if getattr(teacher_model, "kind", None) == "mask2former":
            try:
                same = not cfg.regions_path or (resolve_hf_dir(cfg.regions_path).resolve()
                                                == teacher_model.path.resolve())
            except FileNotFoundError:  # not local yet (allow_download): another model
                same = False
            if same:
                return Mask2FormerRegions(teacher_model, shared=True)
        if not cfg.regions_path:
            raise ValueError("regions='mask2former' needs regions_path (a Hugging Face Mask2Former) "
                             "unless the teacher is one")
        return Mask2FormerRegions(load_hf_model(cfg.regions_path, device, cfg.allow_download))

    @property
    def regions_description(self) -> str:
        """What the fusion's regions come from, for every report."""
        return regions_description(self.config)

    @property
    def network(self) -> CompiledModel | None:
        """The compiled student at the input size (None without a student, or after ``close``)."""
        return self._networks.get((self.config.input_height, self.config.input_width), (None, None))[0]

    @property
    def teacher_network(self) -> CompiledModel | None:
        """The compiled teacher at the input size (None when the teacher is not compiled, or after
        ``close``)."""
        return self._networks.get((self.config.input_height, self.config.input_width), (None, None))[1]

    def _networks_at(self, size: tuple[int, int]) -> tuple[CompiledModel | None, CompiledModel | None]:
        """(student, teacher) compiled for network input ``size``, built on first use: the input size
        at construction, test_scale's size at its first frame (``warmup`` runs it)."""
        if size not in self._networks:
            student = teacher = None
            if self._student_eager is not None:
                example = torch.zeros(1, 3, *size)
                student = self._compile(self._student_eager, example, self._model_hash, "student")
            # The teacher's segmenter goes through the same backends (an ONNX teacher already is a
            # session). Its input is the letterboxed uint8 batch.
            # A Mask2Former shared with the regions stays eager: the regions read its query outputs.
            if (self.teacher is not None and isinstance(self.teacher.model, torch.nn.Module)
                    and self.config.scheme in ("2", "teacher_only")
                    and not (self.regions is not None and self.regions.shared)):
                example = torch.zeros(1, 3, *size, dtype=torch.uint8)
                teacher = self._compile(self.teacher.model, example, "", "teacher")
            self._networks[size] = (student, teacher)
        return self._networks[size]

    def _compile(self, module, example, model_hash: str, role: str) -> CompiledModel:
        cfg = self.config
        net = compile_network(module, example, backend=cfg.backend, device=self.device, precision=cfg.precision,
                              cache_dir=cfg.engine_cache_dir, model_hash=model_hash,
                              force_rebuild=cfg.force_rebuild_engine)
        if net.fallback_reason:
            log.warning("%s inference backend fell back to %s (%s)", role, net.backend, net.fallback_reason)
        return net

    @property
    def backend(self) -> str:
        """The student's backend (the teacher's in teacher-only mode)."""
        net = self.network or self.teacher_network
        return net.backend if net is not None else "eager"

    def update(self, **changes) -> None:
        """Apply run-time changes (thresholds, fusion options, mounting); they take effect on the next
        frame. Fields that need the models reloaded are refused."""
        reload = sorted(k for k in changes if k not in RUNTIME_FIELDS)
        if reload:
            raise ValueError(f"{', '.join(reload)} need(s) a model reload: build a new Detector")
        self.config = apply_overrides(self.config, changes)

    def warmup(self) -> None:
        self.detect_batch([np.zeros((self.config.input_height, self.config.input_width, 3), np.uint8)])

    def close(self) -> None:
        self._networks.clear()
        self._student_eager = None
        self.teacher = None
        self.regions = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # --- inference ---------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, camera: CameraGeometry | None = None) -> Detection:
        """One frame of this detector's camera stream: detection, then tracking (module docs)."""
        det = self.detect_batch([image], [camera])[0]
        t0 = time.perf_counter()   # host work only: the faint areas (a second extraction) and the tracker
        faint = faint_candidates(det.anomaly_map, det.regions, self.config, camera, det.road_roi)
        tracked = self.tracker.update(det.obstacles, TrackingParams.from_config(self.config), faint)
        ms = (time.perf_counter() - t0) * 1e3
        det.timings_ms["tracking"] = ms
        det.timings_ms["total"] = det.timings_ms.get("total", 0.0) + ms
        det.obstacles = [o for o in tracked if o.confirmed]
        det.tentative = [o for o in tracked if not o.confirmed]
        return det

    def _letterbox(self, images: list[np.ndarray], size: tuple[int, int] | None = None
                   ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Resize each image to fit the network size (``size``, default the configured input size)
        keeping its aspect ratio; pad bottom/right."""
        H, W = size or (self.config.input_height, self.config.input_width)
        batch = np.zeros((len(images), H, W, 3), np.uint8)
        valid = []
        for i, img in enumerate(images):
            s = min(H / img.shape[0], W / img.shape[1])
            h, w = max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))
            batch[i, :h, :w] = img if (h, w) == img.shape[:2] else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            if h < H or w < W:  # pad with the edge colour, not black: black borders look anomalous
                batch[i, h:, :w] = batch[i, h - 1:h, :w]
                batch[i, :, w:] = batch[i, :, w - 1:w]
            valid.append((h, w))
        return torch.from_numpy(batch).permute(0, 3, 1, 2), valid  # uint8 B x 3 x H x W

    def _fused_maps(self, images: list[np.ndarray], timer: StageTimer, scale: float = 1.0) -> list[tuple]:
        """Per image: (fused anomaly map H0 x W0 float tensor on the device, region labels or None,
        the teacher's segmentation at the valid network size or None) with the networks at ``scale``
        x the input size, each size on its own compiled networks (``_networks_at``)."""
        cfg = self.config
        size = (round(cfg.input_height * scale), round(cfg.input_width * scale))
        suffix = "" if scale == 1.0 else f" x{scale:g}"
        with timer.stage("preprocess" + suffix):
            x, valid = self._letterbox(images, size)
            xd = x.to(self.device)  # one tensor for the teacher and shared regions (matched by identity)
        network, teacher_network = self._networks_at(size)
        region_logits = validity = distribution = None
        if network is not None:
            with timer.stage("network" + suffix):
                region_logits, validity_logits, distribution = network(xd.float())
                validity = validity_logits.float().softmax(-1)[..., 0]
        teacher_maps = teacher_seg = None
        if self.teacher is not None and cfg.scheme in ("2", "teacher_only"):
            with timer.stage("teacher" + suffix):  # before shared Mask2Former regions: they reuse its pass
                mirrored = None
                if cfg.teacher_flip:  # first, so that the image's own pass is the one shared regions read
                    mirrored = self.teacher(xd.flip(-1), network=teacher_network).score_map.flip(-1)
                t_out = self.teacher(xd, network=teacher_network)
                teacher_maps = t_out.score_map if mirrored is None else 0.5 * (t_out.score_map + mirrored)
                teacher_seg = t_out.segmentation
        if self.regions is not None:
            with timer.stage("regions" + suffix):
                region_logits, validity = self.regions(xd)
        out = []
        for b, img in enumerate(images):
            H0, W0 = img.shape[:2]
            h, w = valid[b]
            with timer.stage("assignment" + suffix):
                regions = None
                if region_logits is not None:
                    regions = self._assign(region_logits[b], validity[b], (h, w), (H0, W0))
            with timer.stage("fusion" + suffix):
                if cfg.scheme == "1":
                    d = distribution[b, :1]
                    d = F.interpolate(d[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
                else:
                    d = teacher_maps[b]
                d = _crop_resize(d[:, :h, :w], (H0, W0))
                fused = (_fusion(d, regions, cfg.fusion_mode, cfg.fusion_region_exponent)[0]
                         if regions is not None else d[0])
                fused = fused.clamp_(0.0, 1.0).float()
            out.append((fused, regions, teacher_seg[b, :h, :w] if teacher_seg is not None else None))
        return out

    @torch.inference_mode()
    def detect_batch(self, images, cameras=None) -> list[Detection]:
        """Run several images (e.g. cameras) in one forward pass (two with ``test_scale`` > 1)."""
        if len(images) == 0:
            return []
        images = [as_rgb_uint8(im) for im in images]
        cameras = list(cameras) if cameras is not None else [None] * len(images)
        if len(cameras) != len(images):
            raise ValueError(f"{len(images)} images but {len(cameras)} cameras")
        cfg = self.config
        timer = StageTimer(self.device)
        maps = self._fused_maps(images, timer)
        if cfg.test_scale != 1.0:
            second = self._fused_maps(images, timer, cfg.test_scale)
            with timer.stage("fusion"):
                maps = [(combine_scales(a, a2, cfg.scale_fusion), regions, seg)
                        for (a, regions, seg), (a2, _, _) in zip(maps, second)]
        results = []
        for (fused, regions, seg), img, cam in zip(maps, images, cameras):
            H0, W0 = img.shape[:2]
            anomaly = fused.cpu().numpy()
            with timer.stage("instances"):
                regions_np = regions.cpu().numpy() if regions is not None else None
                roi = None
                if cfg.road_roi and seg is not None:
                    roi = self._road_roi(seg, (H0, W0))
                inst, obstacles = obstacles_of(anomaly, regions_np, cfg, cam, roi)
            results.append(Detection(anomaly, inst, obstacles, backend=self.backend, device=str(self.device),
                                     backends=self.backends,
                                     regions=regions_np.astype(np.int32) if regions_np is not None else None,
                                     road_roi=roi))
        timings = timer.result()
        timings["total"] = sum(timings.values())
        for r in results:
            r.timings_ms = dict(timings)
        return results

    def _assign(self, region_logits: torch.Tensor, v: torch.Tensor,
                valid: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
        """Region labels at the input image size from the region logits (N×h/4×w/4, r_n = sigmoid) and
        v_n (N). ``assignment_resolution="stride4"``: Eq. 2 (or the hard baseline) runs at stride 4 on
        the valid (un-padded) part and the labels are upsampled nearest, never N full-size float maps.
        ``"full"``: Mask2Former's inference, the whole stride-4 logit maps bilinearly upsampled to the
        network input, cropped to the valid part, then the assignment (and the component split) at that
        resolution."""
        cfg = self.config
        if cfg.assignment_resolution == "full":
            h, w = valid
            full = (region_logits.shape[-2] * 4, region_logits.shape[-1] * 4)
            if cfg.assignment == "soft":
                # banded exact upsampling: at most N x 64 rows of floats at once
                labels = soft_assign_region_logits(region_logits, v, out_size=full, split_components=False,
                                                   exact=True)[:h, :w]
                if cfg.split_regions:  # after the crop, so no component joins through the padding
                    labels = torch.from_numpy(connected_components(labels.cpu().numpy(), 8)[0]).to(labels.device)
            else:  # the hard baseline needs every query's whole-image area: N full-size maps
                probs = F.interpolate(region_logits[None].float(), size=full, mode="bilinear",
                                      align_corners=False)[0, :, :h, :w].sigmoid()
                labels = hard_assign(probs, v, split_components=cfg.split_regions)
        else:
            h4, w4 = math.ceil(valid[0] / 4), math.ceil(valid[1] / 4)
            probs = region_logits[:, :h4, :w4].float().sigmoid()
            if cfg.assignment == "soft":
                labels = soft_assign(probs, v, split_components=cfg.split_regions)
            else:
                labels = hard_assign(probs, v, split_components=cfg.split_regions)
        return F.interpolate(labels[None, None].float(), size=out_size, mode="nearest")[0, 0].long()

    @torch.inference_mode()
    def teacher_classes(self, image: np.ndarray) -> np.ndarray | None:
        """The teacher's class map (argmax, e.g. Cityscapes trainIds; uint8) of ``image`` as the first pass
        sees it (letterboxed at the input size), at the image size: the map ``road_roi`` reads. None when
        the configured scheme runs no teacher or the teacher gives scores only (an ONNX score map)."""
        if self.teacher is None or self.config.scheme not in ("2", "teacher_only"):
            return None
        image = as_rgb_uint8(image)
        x, ((h, w),) = self._letterbox([image])
        seg = self.teacher(x.to(self.device), network=self._networks_at(tuple(x.shape[-2:]))[1]).segmentation
        return None if seg is None else _classes_at(seg[0, :h, :w], image.shape[:2])

    def _road_roi(self, seg: torch.Tensor, out_size) -> np.ndarray:
        road = _classes_at(seg, out_size) == ROAD_TRAIN_ID
        # Obstacles sit on the road but are not road themselves: grow the road to reach their pixels.
        k = max(3, int(0.03 * out_size[0]) | 1)
        return cv2.dilate(road.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)


def _classes_at(seg: torch.Tensor, size) -> np.ndarray:
    """A class map (h x w, the valid part of the network input) resized (nearest) to ``size`` (H, W), uint8."""
    return cv2.resize(seg.to(torch.uint8).cpu().numpy(), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def _crop_resize(d: torch.Tensor, size) -> torch.Tensor:
    if tuple(d.shape[-2:]) == tuple(size):
        return d.float()
    return F.interpolate(d[None].float(), size=size, mode="bilinear", align_corners=False)[0]


def _fusion(d: torch.Tensor, regions: torch.Tensor, mode: str, region_exponent: float = 1.0) -> torch.Tensor:
    return structure_constrained_fusion(d.clamp(min=0.0), regions, mode, region_exponent)
