"""Training configuration: one dataclass per section, read from / written to YAML, overridden with
``--set section.key=value`` (or ``key=value`` when the key name is unique across sections).

Defaults are the Mask2Former Cityscapes recipe of the spec (section 3): AdamW lr 1e-4, weight decay
0.05 (0 on norms and embeddings), poly(0.9), backbone lr x0.1, full-model gradient clipping at 0.01,
AMP on GPU, random resize + crop 512x1024 + flip + colour jitter. The shipped synthroad models use a
reduced schedule, written down in their model cards.

Coercion, ``--set`` overrides, range / choice checks and YAML loading are :mod:`csl_ros.settings`
(the mechanism of every csl_ros configuration). Pure Python (yaml only): no torch import, so the CLI
can parse and validate a config cheaply.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from csl_ros.data.registry import DATASETS as DATASET_REGISTRY
from csl_ros.settings import (apply_overrides, device_error, flatten_sections, load_yaml_config,  # noqa: F401 (API)
                              parse_set_args, validation_errors)
from csl_ros.teachers.registry import TEACHERS

DATASETS = DATASET_REGISTRY.choices(where={"semantic": True})  # datasets with trainIds to train on
# What the student learns (not the detector's csl_ros.config.SCHEMES): class-agnostic regions only, or
# regions plus the scheme-1 distillation head.
STUDENT_SCHEMES = ("ca", "1")
TEACHER_SCORES = TEACHERS.choices()
# Ranges of the numeric settings (csl_ros.settings checks them; never clamped).
AT_LEAST_1 = (1, 2**31 - 1)
AT_LEAST_0 = (0, 2**31 - 1)
NON_NEGATIVE = (0.0, math.inf)


# Height range of the synthetic negatives (csl_ros.training.negatives), as fractions of the crop height:
# the segmenter's outlier exposure and the student's negative regions share it.
NEGATIVE_SIZE = (0.03, 0.35)
# Width / height of a negative (log-uniform): upright to lying objects; above 2, flat debris.
NEGATIVE_ASPECT = (0.5, 2.0)
# Colour-field negatives: saturation range of their colour. From 0.2 up they are colours no class has;
# down to 0 they include the greys of concrete, rock and dark plastic debris, which a road-trained model
# reads as road in shade.
COLOUR_SATURATION = (0.2, 1.0)
# Colour-field negatives: HSV value (brightness) range of their colour. Down to 0.02 they include the
# near-black of tyres and bin bags, darker than any shade the road takes.
COLOUR_VALUE = (0.15, 0.95)
# synthroad frames with rare road paint (zebra crossings ahead, yellow markings) added to the training
# frames: both the segmenter's outlier exposure and the student's negative regions otherwise learn that
# paint on the road is something pasted there. Searched from this seed on (between the training seeds
# 0.. and the validation seeds 1,000,000..).
RARE_PAINT_FIRST_SEED = 500_000
RARE_PAINT_HELP = ("synthroad: extra training frames whose road carries rare paint (a zebra crossing ahead or "
                   "yellow markings), the first such seeds from rare_paint_first_seed on; with negatives, "
                   "paint on the road otherwise looks pasted there (anomalous)")
RARE_PAINT_SEED_HELP = "synthroad: where the search for rare_paint_frames starts"
# help of the negatives' options shared by the segmenter's and the student's configurations
EXCLUDE_SOURCE_ROAD_HELP = ("paste only the pixels of a source patch that were not road in their frame (else its "
                            "road, markings included, is pasted as anomalous too)")
AVOID_ROAD_PAINT_HELP = ("redraw negatives whose mean colour is a road paint colour (white, yellow) under some "
                         "illumination: those teach that lane markings and zebra stripes do not belong on the road")
NEGATIVE_SHADOW_HELP = ("each negative darkens the road at its foot (a soft contact shadow, labels unchanged): "
                        "without it a pasted patch is a decal flat on the road, as road paint is")
# trainId of a pasted negative's pixels in the student's mask split (no Cityscapes class, not void)
NEGATIVE_TRAIN_ID = 254


@dataclass
class DataConfig:
    """Where training images come from and how they are augmented."""

    dataset: str = field(default="synthroad", metadata={"help": "a registered dataset with semantic labels: "
                                                                 + ", ".join(DATASETS), "choices": DATASETS})
    root: str = field(default="", metadata={"help": "Cityscapes root (leftImg8bit/, gtFine/); synthroad: "
                                            "the frame cache folder (empty: ~/.cache/csl_ros/synthroad)"})
    split: str = field(default="train", metadata={"help": "Cityscapes split"})
    synth_frames: int = field(default=2000, metadata={"range": AT_LEAST_1,
                                                      "help": "synthroad: number of training frames "
                                                      "(seeds synth_seed .. synth_seed + synth_frames - 1)"})
    synth_seed: int = field(default=0, metadata={"range": AT_LEAST_0, "help": "synthroad: first frame seed"})
    rare_paint_frames: int = field(default=0, metadata={"range": AT_LEAST_0, "help": RARE_PAINT_HELP})
    rare_paint_first_seed: int = field(default=RARE_PAINT_FIRST_SEED, metadata={"range": AT_LEAST_0,
                                                                                "help": RARE_PAINT_SEED_HELP})
    synth_height: int = field(default=256, metadata={"range": AT_LEAST_1, "help": "synthroad: rendered frame height"})
    synth_width: int = field(default=512, metadata={"range": AT_LEAST_1, "help": "synthroad: rendered frame width"})
    crop_height: int = field(default=512, metadata={"range": AT_LEAST_1,
                                                    "help": "training crop height (padded if larger "
                                                    "than the scaled image)"})
    crop_width: int = field(default=1024, metadata={"range": AT_LEAST_1, "help": "training crop width"})
    min_scale: float = field(default=0.5, metadata={"help": "random resize: smallest scale factor "
                                                    "(M2F Cityscapes: short side 512..2048 of 1024 = 0.5..2)"})
    max_scale: float = field(default=2.0, metadata={"help": "random resize: largest scale factor"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip (p = 0.5)"})
    color_jitter: bool = field(default=True, metadata={"help": "SSD-style photometric distortion"})
    cat_max_ratio: float = field(default=1.0, metadata={"help": "crop retry when one class covers more "
                                                        "than this fraction (1.0 = off, as in M2F)"})
    min_component_area: int = field(default=100, metadata={"range": AT_LEAST_0, "help": "mask split: drop components "
                                                           "smaller than this (authors' code: 100 px)"})
    # synthetic negatives (csl_ros.training.negatives) as regions of their own; 0 = the paper's data
    negatives_max: int = field(default=0, metadata={"range": (0, 64), "help": "synthetic negatives pasted on "
                                                    "the road of each crop, 0..N at random, each a mask-split "
                                                    "region of its own (something that does not belong on the "
                                                    "road is a region); 0 disables"})
    negative_colour_fraction: float = field(default=0.0, metadata={"range": (0.0, 1.0), "help": "share of "
                                            "the negatives that are synthetic colour fields instead of "
                                            "patches of other training frames"})
    negative_road_colour_fraction: float = field(default=0.0, metadata={"range": (0.0, 1.0), "help": "share of "
                                                 "the negatives that are colour fields in the crop's own road "
                                                 "colour under another illumination (asphalt-coloured debris)"})
    negative_exclude_source_road: bool = field(default=False, metadata={"help": EXCLUDE_SOURCE_ROAD_HELP})
    negative_avoid_road_paint: bool = field(default=False, metadata={"help": AVOID_ROAD_PAINT_HELP})
    negative_shadow: bool = field(default=False, metadata={"help": NEGATIVE_SHADOW_HELP})
    negative_min_size: float = field(default=NEGATIVE_SIZE[0], metadata={"range": (1e-3, 1.0), "help": "smallest "
                                     "negative height as a fraction of the crop height (log-uniform)"})
    negative_max_size: float = field(default=NEGATIVE_SIZE[1], metadata={"range": (1e-3, 1.0), "help": "largest "
                                     "negative height as a fraction of the crop height"})
    negative_min_aspect: float = field(default=NEGATIVE_ASPECT[0], metadata={"range": (1e-2, 100.0), "help":
                                       "smallest negative width / height (log-uniform)"})
    negative_max_aspect: float = field(default=NEGATIVE_ASPECT[1], metadata={"range": (1e-2, 100.0), "help":
                                       "largest negative width / height; above 2 adds flat objects lying on "
                                       "the road"})
    negative_min_saturation: float = field(default=COLOUR_SATURATION[0], metadata={"range": (0.0, 1.0), "help":
                                           "colour-field negatives: smallest colour saturation (0: greys)"})
    negative_max_saturation: float = field(default=COLOUR_SATURATION[1], metadata={"range": (0.0, 1.0), "help":
                                           "colour-field negatives: largest colour saturation"})
    workers: int = field(default=0, metadata={"range": AT_LEAST_0,
                                              "help": "DataLoader worker processes (0 = main process)"})


@dataclass
class OptimConfig:
    """The Mask2Former optimisation recipe."""

    lr: float = field(default=1e-4, metadata={"help": "AdamW base learning rate"})
    weight_decay: float = field(default=0.05, metadata={"range": NON_NEGATIVE,
                                                        "help": "AdamW weight decay (0 on norms and "
                                                        "query/level embeddings)"})
    backbone_lr_multiplier: float = field(default=0.1, metadata={"range": NON_NEGATIVE, "help": "backbone lr factor"})
    poly_power: float = field(default=0.9, metadata={"range": NON_NEGATIVE, "help": "poly schedule power"})
    warmup_steps: int = field(default=0, metadata={"range": AT_LEAST_0, "help": "linear learning-rate "
                                                   "warm-up steps before the poly schedule (0 = none)"})
    clip_grad_norm: float = field(default=0.01, metadata={"range": NON_NEGATIVE,
                                                          "help": "full-model gradient-norm clip "
                                                          "(0 = off)"})
    amp: bool = field(default=True, metadata={"help": "mixed precision (takes effect on GPU only)"})
    max_steps: int = field(default=90_000, metadata={"range": AT_LEAST_1, "help": "total optimisation steps"})
    batch_size: int = field(default=16, metadata={"range": AT_LEAST_1,
                                                  "help": "GLOBAL batch size (divided among workers)"})


@dataclass
class StudentConfig:
    """The CSL student and its losses."""

    scheme: str = field(default="ca", metadata={"help": "ca (class-agnostic regions) or 1 (plus the "
                                                "distillation head and Huber loss)", "choices": STUDENT_SCHEMES})
    preset: str = field(default="r50_paper", metadata={"help": "model preset (csl_ros.model.PRESETS)"})
    backbone_weights: str = field(default="", metadata={"help": "ImageNet backbone weights file"})
    init_from: str = field(default="", metadata={"help": "student checkpoint to start from (matching "
                                                 "tensors are copied, e.g. a CA student for scheme 1)"})
    num_points: int = field(default=12544, metadata={"range": AT_LEAST_1,
                                                     "help": "points per mask for matching and losses"})
    distill_weight: float = field(default=1.0, metadata={"range": NON_NEGATIVE,
                                                         "help": "lambda_d of the Huber loss (scheme 1)"})
    huber_delta: float = field(default=0.1, metadata={"help": "Huber delta of the distillation loss (scheme 1). "
                                                      "Maps are in [0, 1], so delta >= 1 is plain 0.5 * MSE; "
                                                      "0.1 makes residuals above 0.1 count linearly"})
    teacher: str = field(default="sml", metadata={"help": "scheme 1: score function of the frozen teacher",
                                                  "choices": TEACHER_SCORES})
    teacher_path: str = field(default="", metadata={"help": "scheme 1: segmenter checkpoint (empty: shipped)"})
    teacher_stats_path: str = field(default="", metadata={"help": "scheme 1: its statistics file"})


@dataclass
class RunConfig:
    """Bookkeeping: output, seeds, logging, checkpoints."""

    out_dir: str = field(default="runs/train", metadata={"help": "checkpoints, config and logs go here"})
    seed: int = field(default=0, metadata={"help": "data order, augmentation and sampling are pure "
                                           "functions of (seed, step, rank)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)"})
    log_every: int = field(default=10, metadata={"range": AT_LEAST_1, "help": "CSV log period in steps"})
    checkpoint_every: int = field(default=1000, metadata={"range": AT_LEAST_1,
                                                          "help": "resumable checkpoint period in steps"})
    keep_checkpoints: int = field(default=2, metadata={"range": AT_LEAST_1,
                                                       "help": "how many periodic checkpoints to keep"})
    threads: int = field(default=0, metadata={"range": AT_LEAST_0,
                                              "help": "torch CPU threads per worker (0 = torch default)"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar (rank 0)"})


@dataclass
class TrainConfig:
    """A whole training run of the student (the segmenter has its own flat
    ``csl_ros.training.segmenter.SegmenterTrainConfig``)."""

    task: str = field(default="student", metadata={"help": "what is trained (student)", "choices": ("student",)})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # --- validation -------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first invalid value; returns self."""
        errors = validation_errors(self)
        if errors:
            raise ValueError(errors[0])
        d, o = self.data, self.optim
        for name, value in {"optim.lr": o.lr, "student.huber_delta": self.student.huber_delta}.items():
            if value <= 0:
                raise ValueError(f"{name}={value}: must be > 0")
        if not 0 < d.min_scale <= d.max_scale:
            raise ValueError(f"data.min_scale={d.min_scale}, data.max_scale={d.max_scale}: need "
                             "0 < min_scale <= max_scale")
        for what in ("size", "aspect", "saturation"):
            lo, hi = getattr(d, f"negative_min_{what}"), getattr(d, f"negative_max_{what}")
            if lo > hi:
                raise ValueError(f"data.negative_min_{what}={lo}, data.negative_max_{what}={hi}: need min <= max")
        if not 0 < d.cat_max_ratio <= 1:
            raise ValueError(f"data.cat_max_ratio={d.cat_max_ratio}: must be in (0, 1]")
        if device_error("run.device", self.run.device):
            raise ValueError(device_error("run.device", self.run.device))
        if DATASET_REGISTRY.entry(d.dataset).root and not d.root:
            raise ValueError(f"data.root: the root folder is required for dataset={d.dataset}")
        return self

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a nested mapping; unknown sections or keys are a ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping at the top level")
        return apply_overrides(cls(), flatten_sections(data), source=source)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_yaml())


def load_train_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                      base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the recipe defaults) updated from a YAML file, then from ``overrides``."""
    cfg = load_yaml_config(base if base is not None else TrainConfig(), path, overrides, "training config")
    return cfg.validate()
