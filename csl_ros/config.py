"""The one configuration schema of csl_ros.

Every runtime setting lives here once, as a dataclass field with its default, a description and its
valid range or choices. The ROS node declares its parameters from these fields (with
``ParameterDescriptor`` ranges), ``config/*.yaml`` files are read into them, and the CLI's
``--config FILE --set key=value`` goes through them too, so a default is never written twice. The
mechanism (coercion, overrides, range and choice checks, YAML) is :mod:`csl_ros.settings`, shared
with the model and training configs.

Pure Python: no torch, no rclpy.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping

from csl_ros.settings import (DEVICE_PATTERN, apply_overrides, check_value, coerce_value, device_error,  # noqa: F401
                              field_type, parse_set_args, read_yaml_mapping, setting, validation_errors)
from csl_ros.teachers.registry import NO_TEACHER, ONNX_TEACHER
from csl_ros.teachers.registry import TEACHERS as TEACHER_REGISTRY

# Every registered score function, plus no teacher and an ONNX-exported method (a live view: a teacher
# registered later is a valid choice too).
TEACHERS = TEACHER_REGISTRY.choices(before=(NO_TEACHER,), after=(ONNX_TEACHER,))
SCHEMES = ("1", "2", "teacher_only")
SCALE_FUSIONS = ("geometric", "mean", "max")   # csl_ros.pipeline.detector.combine_scales


def _opt(default, help, *, range=None, choices=None, reload=False, ros=True, device=False):
    """A schema field (:func:`csl_ros.settings.setting`). ``reload``: changing it needs the models
    reloaded (refused while active). ``ros``: declared as a node parameter."""
    return setting(default, help, range=range, choices=choices, device=device, reload=reload, ros=ros)


@dataclass
class DetectorConfig:
    """Settings of the detector pipeline (model, teacher, fusion, instances, backend, geometry)."""

    # --- models and method -------------------------------------------------------------------
    scheme: str = _opt("2", "CSL scheme: '1' = distilled student head (no teacher at run time), "
                       "'2' = fuse the teacher's per-pixel scores with the student's regions, "
                       "'teacher_only' = the teacher's scores without fusion (for comparison).",
                       choices=SCHEMES, reload=True)
    teacher: str = _opt("maxlogit", "Per-pixel OOD teacher for scheme 2 / teacher_only: none, "
                        + ", ".join(f"{n} ({TEACHER_REGISTRY.entry(n).help})" if TEACHER_REGISTRY.entry(n).help
                                    else n for n in TEACHER_REGISTRY)
                        + ", or onnx (an external method exported to ONNX, see teacher_path).",
                        choices=TEACHERS, reload=True)
    student_path: str = _opt("", "CSL student checkpoint (.safetensors or .pt). Empty: the shipped "
                             "synthroad model for the chosen scheme.", reload=True)
    teacher_path: str = _opt("", "Teacher model: the closed-set segmenter (.safetensors/.pt), a Hugging "
                             "Face SegFormer/Mask2Former directory or hf:<repo>[@revision] (from the "
                             "local cache, see csl-ros models fetch) for msp/maxlogit/sml/entropy/"
                             "energy/rba, or the .onnx file for teacher=onnx. Empty: the shipped "
                             "synthroad segmenter.", reload=True)
    onnx_output: str = _opt("", "Output of an ONNX teacher to use, by name. Empty: its first output.",
                            reload=True)
    allow_download: bool = _opt(False, "Let an hf:<repo> teacher_path / regions_path download from the "
                                "Hugging Face hub when it is not in the local cache (off: never at start).",
                                reload=True)
    teacher_stats_path: str = _opt("", "SML statistics / score calibration file of the teacher. Empty: "
                                   "the one stored next to the teacher checkpoint.", reload=True)
    regions: str = _opt("student", "Region proposals for scheme 2: 'student' (the CSL student) or "
                        "'mask2former' (the queries of a closed-set Mask2Former, regions_path; no CSL "
                        "training needed).", choices=("student", "mask2former"), reload=True)
    regions_path: str = _opt("", "Mask2Former (Hugging Face directory or hf:<repo>) for regions="
                             "mask2former. Empty: the teacher's, when it is a Mask2Former (one forward "
                             "pass for both).", reload=True)
    assignment: str = _opt("soft", "Region assignment: 'soft' (CSL Eq. 2, every pixel assigned) or "
                           "'hard' (Mask2Former/EntitySeg thresholds, for the ablation).",
                           choices=("soft", "hard"))
    assignment_resolution: str = _opt("stride4", "Where the region assignment (Eq. 2, or the hard "
                                      "baseline) takes its argmax: 'stride4' = on the student's 1/4-resolution "
                                      "region maps, labels upsampled (fast); 'full' = on the region scores "
                                      "bilinearly upsampled to the network input size, as Mask2Former's "
                                      "inference does (exact, slower).", choices=("stride4", "full"))
    split_regions: bool = _opt(True, "Split every assigned region into 8-connected components before "
                               "fusion (region proposals at the disconnected-component level).")
    fusion_mode: str = _opt("product", "Structure-constrained fusion (Eq. 3): 'product' = region mean x "
                            "pixel score (the paper), 'region_mean', or 'arithmetic' (ablations).",
                            choices=("product", "region_mean", "arithmetic"))
    fusion_region_exponent: float = _opt(1.0, "Weight of the student's region in the 'product' fusion: "
                                         "H = m^exponent x D (m: the region's mean teacher score, D: the "
                                         "pixel's). 1 = Eq. 3 of the paper; lower keeps more of the score "
                                         "of a pixel the teacher flags inside a region the student did not "
                                         "separate (small and flat obstacles in the road's region); 0 = "
                                         "the teacher alone. Default: the shipped models' tuned value (the "
                                         "score threshold is tuned with it); a student checkpoint that "
                                         "carries its own replaces the default.", range=(0.0, 4.0))

    # --- instances and obstacles ----------------------------------------------------------------
    score_threshold: float = _opt(0.1, "Fused anomaly score at or above which a pixel is anomalous. "
                                  "Default: the shipped models' threshold tuned with the default teacher; "
                                  "a student checkpoint that carries its own (per teacher) replaces the "
                                  "default.", range=(0.0, 1.0))
    score_hysteresis: float = _opt(1.0, "Hysteresis thresholding (as Canny's edges): an instance is a "
                                   "connected area of scores at or above score_hysteresis x score_threshold "
                                   "that reaches score_threshold in at least one pixel, so an obstacle "
                                   "whose peak is found keeps its fainter parts and one blob stays one. "
                                   "1 = a single threshold.", range=(0.01, 1.0))
    min_instance_area: int = _opt(100, "Smallest OOD instance kept, in pixels of the input image.",
                                  range=(0, 10_000_000))
    min_split_fraction: float = _opt(0.4, "A connected anomalous area is cut along the student's "
                                     "regions only into pieces covering at least this share of it (two "
                                     "touching obstacles); smaller pieces join the largest, so one "
                                     "obstacle stays one instance. 0 = every region piece is an instance; "
                                     "above 0.5 no area is ever cut. Default: chosen with the shipped "
                                     "models on the tuning drives (bench/driving.py --split-fractions).",
                                     range=(0.0, 1.0))
    max_obstacle_height_m: float = _opt(0.0, "Largest height of an obstacle standing on the road, in "
                                        "metres at the distance of its ground contact point (flat-ground "
                                        "geometry from camera_info and the mounting): a taller instance is "
                                        "not one obstacle on the road (the far end of the road with the "
                                        "scenery behind it, a curb followed into the distance) and is "
                                        "dropped. 0 = off; no effect on frames without camera geometry.",
                                        range=(0.0, 100.0))
    max_obstacle_distance_m: float = _opt(0.0, "Range of the obstacle output, in metres ahead (flat-ground "
                                          "distance of the ground contact point): farther instances are "
                                          "not reported (the flat-ground distance and the pixels of a far "
                                          "obstacle are the least reliable; a planner has its own range of "
                                          "interest); an instance whose bottom lies at or above the horizon "
                                          "never meets the road and is beyond any range. Applied to the "
                                          "pieces (anomalous area x student region) before instances form, "
                                          "so a near obstacle joined to the far horizon band is reported "
                                          "alone. 0 = off; no effect on frames without camera geometry.",
                                          range=(0.0, 10000.0))
    road_roi: bool = _opt(False, "Keep only instances touching the drivable road predicted by the "
                          "teacher's segmenter (when the teacher has one).")

    # --- tracking across frames (one camera stream) ------------------------------------------------
    track_confirm_hits: int = _opt(1, "An obstacle is reported once its track was seen in this many of "
                                   "the last track_confirm_window frames (k of n; 1 of 1 = every "
                                   "detection at once, no tracking delay).", range=(1, 100))
    track_confirm_window: int = _opt(1, "Frames of the confirmation window (n of k of n); >= "
                                     "track_confirm_hits.", range=(1, 100))
    track_max_missed: int = _opt(0, "A track is deleted after this many consecutive frames without a "
                                 "detection (0: at the first miss).", range=(0, 100))
    track_coast: bool = _opt(False, "A confirmed track missed in a frame is still reported (coasted) "
                             "until it is deleted (track_max_missed), at the position predicted from "
                             "its last two detections (constant velocity in the image and on the "
                             "ground) and flagged with the frames since its last detection.")
    track_continue_ratio: float = _opt(1.0, "A confirmed track missed in a frame continues on a faint "
                                       "instance there: an area of scores at or above track_continue_ratio "
                                       "x score_threshold that never reaches score_threshold and associates "
                                       "with the track (the second, low-score association of ByteTrack). "
                                       "Such an instance is reported for the track only, never starts one. "
                                       "1 = off.", range=(0.01, 1.0))
    track_gate_m: float = _opt(3.0, "Association gate on the ground when the camera geometry is known: "
                               "largest contact-point distance between a track and a detection, in "
                               "metres, or 20 % of the obstacle's distance when that is larger.",
                               range=(0.1, 100.0))
    track_min_iou: float = _opt(0.1, "Association without geometry: smallest bounding-box IoU between a "
                                "track's last box and a detection.", range=(0.0, 1.0))

    # --- compute --------------------------------------------------------------------------------
    input_height: int = _opt(256, "Network input height in pixels (images are resized/padded to it). "
                             "Default: the shipped models' training size; a student checkpoint that "
                             "carries its own replaces the default.", range=(64, 4096), reload=True)
    input_width: int = _opt(512, "Network input width in pixels (default: as input_height).",
                            range=(64, 8192), reload=True)
    test_scale: float = _opt(2.0, "Test-time second scale: also run the networks at test_scale x the "
                             "input size and take the geometric mean of the two fused maps (small and "
                             "distant obstacles get more pixels; what only one scale sees fades). The "
                             "regions of the instances stay those of the input size; the networks are "
                             "compiled for the second size at its first frame. 1 = single scale. "
                             "Default: the shipped models' tuned value; a student checkpoint that "
                             "carries its own replaces the default.",
                             range=(1.0, 4.0))
    scale_fusion: str = _opt("geometric", "How the two scales' fused maps combine with test_scale > 1: "
                             "'geometric' mean (an anomaly must show at both scales), arithmetic 'mean', "
                             "or 'max' (either scale suffices: obstacles too small for the input size "
                             "count at the second scale alone). Default: the one the shipped threshold "
                             "was tuned with (mean and max cost recall at equal false alarms on the "
                             "tuning drives: bench/train_shipped.sh, step 6c).", choices=SCALE_FUSIONS)
    teacher_flip: bool = _opt(False, "Test-time flip of the teacher: its score map is the mean of the image's "
                              "and the horizontally mirrored image's (mirrored back), at each scale; the "
                              "student's regions stay those of the image. What shows in one of the two passes "
                              "only (noise of the teacher, not of the scene) fades. Doubles the teacher's "
                              "passes. config/driving.yaml turns it on (bench/train_shipped.sh step 6i).")
    device: str = _opt("auto", "Torch device: auto (cuda if available), cpu, cuda, cuda:N.", reload=True,
                       device=True)
    backend: str = _opt("auto", "Inference backend of the student and the teacher: auto (the fastest "
                        "measured on this kind of device: onnxruntime on CPU), eager, torchscript, compile "
                        "(torch.compile; CUDA graphs on GPU), onnxruntime (TensorRT/CUDA/CPU execution "
                        "provider), tensorrt (torch-tensorrt, GPU only). Failures fall back to eager.",
                        choices=("auto", "eager", "torchscript", "compile", "onnxruntime", "tensorrt"), reload=True)
    precision: str = _opt("fp32", "fp32 or fp16 (fp16 only takes effect on GPU).",
                          choices=("fp32", "fp16"), reload=True)
    engine_cache_dir: str = _opt("~/.cache/csl_ros/engines", "Where compiled TensorRT/TorchScript/ONNX "
                                 "engines are cached (keyed by model hash, size, precision, version).",
                                 reload=True)
    force_rebuild_engine: bool = _opt(False, "Ignore a cached engine and build it again.", reload=True)

    # --- camera mounting for flat-ground geometry -------------------------------------------------
    camera_height_m: float = _opt(1.5, "Camera height above the road plane in metres.", range=(0.1, 10.0))
    camera_pitch_deg: float = _opt(0.0, "Camera pitch in degrees, positive looking down.",
                                   range=(-45.0, 45.0))

    def validate(self) -> None:
        """Raise ``ValueError`` naming every invalid field."""
        errors = validation_errors(self)
        if self.track_confirm_hits > self.track_confirm_window:
            errors.append(f"track_confirm_hits={self.track_confirm_hits} exceeds track_confirm_window="
                          f"{self.track_confirm_window} (k of n needs k <= n)")
        if errors:
            raise ValueError("invalid configuration: " + "; ".join(errors))


# Settings that act only after the fused anomaly map, the regions and the road ROI (instances, output range,
# tracking, flat-ground geometry) or on no output at all (where engines are kept, whether a download may
# happen). Every other setting may change the maps: a cache of maps (bench/driving.py) keys on all the
# others (``map_settings``), so a new setting is part of the key unless it is listed here.
AFTER_MAP_FIELDS = frozenset({
    "score_threshold", "score_hysteresis", "min_instance_area", "min_split_fraction", "max_obstacle_height_m",
    "max_obstacle_distance_m", "track_confirm_hits", "track_confirm_window", "track_max_missed", "track_coast",
    "track_continue_ratio", "track_gate_m", "track_min_iou", "camera_height_m", "camera_pitch_deg",
    "engine_cache_dir", "force_rebuild_engine", "allow_download"})


def map_settings(config: DetectorConfig) -> dict[str, Any]:
    """The settings of ``config`` that may change its fused map, regions or road ROI: every field but
    ``AFTER_MAP_FIELDS``, by name."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in AFTER_MAP_FIELDS}


@dataclass
class NodeConfig:
    """ROS I/O settings of the node (topics, QoS, optional outputs). ROS-free on purpose."""

    use_compressed: bool = _opt(False, "Subscribe to image/compressed (sensor_msgs/CompressedImage) "
                                "instead of image (sensor_msgs/Image).", reload=True)
    input_reliability: str = _opt("best_effort", "QoS reliability of the camera subscription "
                                  "(sensor-data default: best_effort).",
                                  choices=("best_effort", "reliable"), reload=True)
    output_reliability: str = _opt("reliable", "QoS reliability of the publishers (reliable so rviz "
                                   "shows them without tweaks).", choices=("best_effort", "reliable"),
                                   reload=True)
    publish_color: bool = _opt(True, "Publish ~/anomaly_score/color (bgr8 colour map).")
    publish_overlay: bool = _opt(True, "Publish ~/overlay (bgr8 image with instances outlined).")
    marker_lifetime_frames: float = _opt(2.0, "Lifetime of the obstacle markers in frame periods of the "
                                         "node's output (its measured processing rate; 1 s per period "
                                         "until measured), so they vanish when the camera stops. 0: "
                                         "until replaced.", range=(0.0, 1000.0))
    output_frame: str = _opt("", "Frame of ~/obstacles and ~/obstacle_points, e.g. base_link, placed "
                             "by the mount_* parameters (the camera's pose in it; tf2 is not used). "
                             "Empty: the input image's optical frame (header.frame_id).")
    mount_x_m: float = _opt(0.0, "Camera position in output_frame: x (metres).", range=(-100.0, 100.0))
    mount_y_m: float = _opt(0.0, "Camera position in output_frame: y (metres).", range=(-100.0, 100.0))
    mount_z_m: float = _opt(0.0, "Camera position in output_frame: z (metres).", range=(-100.0, 100.0))
    mount_roll_deg: float = _opt(0.0, "Camera roll in output_frame (degrees; REP 103 body frame x "
                                 "forward, y left, z up).", range=(-180.0, 180.0))
    mount_pitch_deg: float = _opt(0.0, "Camera pitch in output_frame (degrees, positive looking down).",
                                  range=(-90.0, 90.0))
    mount_yaw_deg: float = _opt(0.0, "Camera yaw in output_frame (degrees, positive turning left).",
                                range=(-180.0, 180.0))
    diagnostics_period_s: float = _opt(1.0, "Period of /diagnostics messages in seconds.",
                                       range=(0.05, 60.0), reload=True)
    auto_activate: bool = _opt(False, "Configure and activate the lifecycle node on start.", reload=True)


# DetectorConfig fields a student checkpoint can carry in its metadata (csl_ros.model_settings):
# the input size it was trained for, and the score threshold tuned for it with the test-time scale and
# the fusion's region exponent it was tuned at (both move the fused scores, so they go together).
MOUNT_ANGLE_TOLERANCE_DEG = 0.5


def mounting_warnings(detector: DetectorConfig, node: NodeConfig) -> list[str]:
    """What does not fit between the two camera poses a node holds: the road plane of every distance and
    contact point (``camera_pitch_deg``, no roll: the flat-ground geometry has none) and the camera in
    ``output_frame`` (``mount_pitch_deg``, ``mount_roll_deg``, placing the points there). With a vehicle frame
    level with the road (REP 105's base_link on flat ground) the mount's pitch is the camera's pitch to the
    road and its roll is the road's roll, zero; when either differs, the contact points do not lie on a level
    ground in ``output_frame``. Empty without ``output_frame`` (the points stay in the optical frame)."""
    if not node.output_frame:
        return []
    warnings = []
    if abs(detector.camera_pitch_deg - node.mount_pitch_deg) > MOUNT_ANGLE_TOLERANCE_DEG:
        warnings.append(
            f"camera_pitch_deg {detector.camera_pitch_deg:g} (the road plane of the distances) and mount_pitch_deg "
            f"{node.mount_pitch_deg:g} (the camera in {node.output_frame}) differ: the obstacles' contact points will "
            f"not lie on a level ground in {node.output_frame}; with a frame level with the road set both to the "
            f"camera's pitch")
    if abs(node.mount_roll_deg) > MOUNT_ANGLE_TOLERANCE_DEG:
        warnings.append(
            f"mount_roll_deg {node.mount_roll_deg:g} (the camera in {node.output_frame}) is not 0 while the road "
            f"plane of the distances has no roll: the obstacles' distances and contact points assume a camera level "
            f"across the road; level the camera or give output_frame no roll against it")
    return warnings


MODEL_SETTINGS = ("input_height", "input_width", "score_threshold", "test_scale", "scale_fusion",
                  "fusion_region_exponent")
# The fused scores' scale depends on the teacher (MSP is a probability, max logit is logistic-calibrated),
# so a checkpoint may carry one tuned threshold per teacher: {teacher: score_threshold}, JSON in the
# metadata. The entry of the configured teacher wins over the plain ``score_threshold``.
THRESHOLDS_BY_TEACHER = "score_threshold_by_teacher"


def apply_model_settings(cfg: DetectorConfig, settings: Mapping[str, Any]) -> tuple[DetectorConfig, dict]:
    """``cfg`` with the model's ``settings`` for every MODEL_SETTINGS field still at its schema default
    (a value the user set wins), and the dict of what was taken from the model. A threshold tuned for
    the configured teacher (``THRESHOLDS_BY_TEACHER``) replaces the plain ``score_threshold``."""
    defaults = DetectorConfig()
    settings = dict(settings)
    by_teacher = settings.pop(THRESHOLDS_BY_TEACHER, None) or {}
    if cfg.teacher in by_teacher:
        settings["score_threshold"] = by_teacher[cfg.teacher]
    taken = {k: v for k, v in settings.items()
             if k in MODEL_SETTINGS and getattr(cfg, k) == getattr(defaults, k) and getattr(cfg, k) != v}
    return dataclasses.replace(cfg, **taken), taken


MASK2FORMER_REGIONS = "regions from a closed-set Mask2Former, not class-agnostic training"


def regions_description(cfg: DetectorConfig) -> str:
    """Where the fusion's regions come from, named plainly for every report (log, diagnostics,
    detect output, evaluation report)."""
    if cfg.scheme == "teacher_only":
        return "no regions (teacher only)"
    if cfg.scheme == "2" and cfg.regions == "mask2former":
        return f"{MASK2FORMER_REGIONS} ({cfg.regions_path or cfg.teacher_path})"
    return "regions from the CSL student (class-agnostic training)"


def teacher_description(teacher: str, teacher_flip: bool = False) -> str:
    """'teacher T' plus how its map is taken, for every report (driving section, evaluation report)."""
    return f"teacher {teacher}" + (" averaged with its pass on the mirrored image (teacher_flip)" if teacher_flip else "")


def second_pass_description(input_height: int, input_width: int, test_scale: float) -> str:
    """' with a second pass at test_scale s (HxW)' when the detector runs one ('' for one scale)."""
    if test_scale == 1.0:
        return ""
    return (f" with a second pass at test_scale {test_scale:g} "
            f"({round(input_height * test_scale)}x{round(input_width * test_scale)})")


def read_yaml_parameters(path: str | os.PathLike, node_name: str = "csl_detector") -> dict[str, Any]:
    """Read a ROS 2 params file (``/**: ros__parameters:`` or ``<node>: ros__parameters:``) or a
    plain mapping, and return the flat parameter dict."""
    data = read_yaml_mapping(path, "parameters file")
    params: dict[str, Any] = {}
    ros_style = False
    for key, val in data.items():
        if isinstance(val, dict) and "ros__parameters" in val:
            ros_style = True
            if key in ("/**", node_name, f"/{node_name}") or key.endswith("/" + node_name) or key.endswith("/**"):
                params.update(val["ros__parameters"] or {})
    if not ros_style:
        params = dict(data)
    return params


def load_configs(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                 ) -> tuple[DetectorConfig, NodeConfig]:
    """Build (DetectorConfig, NodeConfig) from an optional YAML file plus overrides.

    Unknown keys are an error naming the key, so a typo in a params file is not silently ignored.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_yaml_parameters(path))
    if overrides:
        values.update(overrides)
    det_names = {f.name for f in dataclasses.fields(DetectorConfig)}
    node_names = {f.name for f in dataclasses.fields(NodeConfig)}
    unknown = sorted(set(values) - det_names - node_names - {"use_sim_time"})
    if unknown:
        where = f" in {path}" if path else ""
        raise ValueError(f"unknown setting(s){where}: {', '.join(unknown)}")
    det = apply_overrides(DetectorConfig(), {k: v for k, v in values.items() if k in det_names})
    node = apply_overrides(NodeConfig(), {k: v for k, v in values.items() if k in node_names})
    return det, node


def to_yaml_dict(*cfgs, node_pattern: str = "/**") -> dict:
    params = {}
    for cfg in cfgs:
        params.update(dataclasses.asdict(cfg))
    return {node_pattern: {"ros__parameters": params}}
