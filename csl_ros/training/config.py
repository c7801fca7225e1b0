"""Training configuration: one dataclass per section, read from / written to YAML, overridden with
``--set section.key=value`` (or ``key=value`` when the key name is unique across sections).

Defaults are the Mask2Former Cityscapes recipe of the spec (section 3): AdamW lr 1e-4, weight decay
0.05 (0 on norms and embeddings), poly(0.9), backbone lr x0.1, full-model gradient clipping at 0.01,
AMP on GPU, random resize + crop 512x1024 + flip + colour jitter. The shipped synthroad models use a
reduced schedule, written down in their model cards.

Pure Python (yaml only): no torch import, so the CLI can parse and validate a config cheaply.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from csl_ros.config import coerce_value

DATASETS = ("synthroad", "cityscapes")
SCHEMES = ("ca", "1")
TEACHER_SCORES = ("msp", "maxlogit", "sml", "entropy", "energy")


@dataclass
class DataConfig:
    """Where training images come from and how they are augmented."""

    dataset: str = field(default="synthroad", metadata={"help": "synthroad or cityscapes", "choices": DATASETS})
    root: str = field(default="", metadata={"help": "Cityscapes root (leftImg8bit/, gtFine/); synthroad: "
                                            "the frame cache folder (empty: ~/.cache/csl_ros/synthroad)"})
    split: str = field(default="train", metadata={"help": "Cityscapes split"})
    synth_frames: int = field(default=2000, metadata={"help": "synthroad: number of training frames "
                                                      "(seeds synth_seed .. synth_seed + synth_frames - 1)"})
    synth_seed: int = field(default=0, metadata={"help": "synthroad: first frame seed"})
    synth_height: int = field(default=256, metadata={"help": "synthroad: rendered frame height"})
    synth_width: int = field(default=512, metadata={"help": "synthroad: rendered frame width"})
    crop_height: int = field(default=512, metadata={"help": "training crop height (padded if larger "
                                                    "than the scaled image)"})
    crop_width: int = field(default=1024, metadata={"help": "training crop width"})
    min_scale: float = field(default=0.5, metadata={"help": "random resize: smallest scale factor "
                                                    "(M2F Cityscapes: short side 512..2048 of 1024 = 0.5..2)"})
    max_scale: float = field(default=2.0, metadata={"help": "random resize: largest scale factor"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip (p = 0.5)"})
    color_jitter: bool = field(default=True, metadata={"help": "SSD-style photometric distortion"})
    cat_max_ratio: float = field(default=1.0, metadata={"help": "crop retry when one class covers more "
                                                        "than this fraction (1.0 = off, as in M2F)"})
    min_component_area: int = field(default=100, metadata={"help": "mask split: drop components "
                                                           "smaller than this (authors' code: 100 px)"})
    workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0 = main process)"})


@dataclass
class OptimConfig:
    """The Mask2Former optimisation recipe."""

    lr: float = field(default=1e-4, metadata={"help": "AdamW base learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (0 on norms and "
                                                        "query/level embeddings)"})
    backbone_lr_multiplier: float = field(default=0.1, metadata={"help": "backbone lr factor"})
    poly_power: float = field(default=0.9, metadata={"help": "poly schedule power"})
    clip_grad_norm: float = field(default=0.01, metadata={"help": "full-model gradient-norm clip "
                                                          "(0 = off)"})
    amp: bool = field(default=True, metadata={"help": "mixed precision (takes effect on GPU only)"})
    max_steps: int = field(default=90_000, metadata={"help": "total optimisation steps"})
    batch_size: int = field(default=16, metadata={"help": "GLOBAL batch size (divided among workers)"})


@dataclass
class StudentConfig:
    """The CSL student and its losses."""

    scheme: str = field(default="ca", metadata={"help": "ca (class-agnostic regions) or 1 (plus the "
                                                "distillation head and Huber loss)", "choices": SCHEMES})
    preset: str = field(default="r50_paper", metadata={"help": "model preset (csl_ros.model.PRESETS)"})
    backbone_weights: str = field(default="", metadata={"help": "ImageNet backbone weights file"})
    init_from: str = field(default="", metadata={"help": "student checkpoint to start from (matching "
                                                 "tensors are copied, e.g. a CA student for scheme 1)"})
    num_points: int = field(default=12544, metadata={"help": "points per mask for matching and losses"})
    distill_weight: float = field(default=1.0, metadata={"help": "lambda_d of the Huber loss (scheme 1)"})
    huber_delta: float = field(default=0.1, metadata={"help": "Huber delta of the distillation loss (scheme 1). "
                                                      "Maps are in [0, 1], so delta >= 1 is plain 0.5 * MSE; "
                                                      "0.1 makes residuals above 0.1 count linearly"})
    teacher: str = field(default="sml", metadata={"help": "scheme 1: score function of the frozen teacher",
                                                  "choices": TEACHER_SCORES})
    teacher_path: str = field(default="", metadata={"help": "scheme 1: segmenter checkpoint (empty: shipped)"})
    teacher_stats_path: str = field(default="", metadata={"help": "scheme 1: its statistics file"})


@dataclass
class SegmenterTrainConfig:
    """The closed-set segmenter (teacher base)."""

    preset: str = field(default="lraspp_mobilenet_v3_large",
                        metadata={"help": "segmenter preset (csl_ros.teachers.segmenter.PRESETS)"})


@dataclass
class RunConfig:
    """Bookkeeping: output, seeds, logging, checkpoints."""

    out_dir: str = field(default="runs/train", metadata={"help": "checkpoints, config and logs go here"})
    seed: int = field(default=0, metadata={"help": "data order, augmentation and sampling are pure "
                                           "functions of (seed, step, rank)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda (torchrun: cuda:LOCAL_RANK)"})
    log_every: int = field(default=10, metadata={"help": "CSV log period in steps"})
    checkpoint_every: int = field(default=1000, metadata={"help": "resumable checkpoint period in steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many periodic checkpoints to keep"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads per worker (0 = torch default)"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar (rank 0)"})


@dataclass
class TrainConfig:
    """A whole training run: ``task`` selects which model section is used."""

    task: str = field(default="student", metadata={"help": "student or segmenter",
                                                   "choices": ("student", "segmenter")})
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    segmenter: SegmenterTrainConfig = field(default_factory=SegmenterTrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # --- validation -------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first invalid value; returns self."""
        for section in _sections(self):
            for f in dataclasses.fields(section):
                choices = f.metadata.get("choices")
                if choices and getattr(section, f.name) not in choices:
                    raise ValueError(f"{_section_name(self, section)}.{f.name}={getattr(section, f.name)!r}: "
                                     f"must be one of {', '.join(choices)}")
        d, o, r = self.data, self.optim, self.run
        positive = {"data.crop_height": d.crop_height, "data.crop_width": d.crop_width,
                    "data.synth_frames": d.synth_frames, "data.synth_height": d.synth_height,
                    "data.synth_width": d.synth_width, "optim.max_steps": o.max_steps,
                    "optim.batch_size": o.batch_size, "optim.lr": o.lr, "run.log_every": r.log_every,
                    "run.checkpoint_every": r.checkpoint_every, "student.num_points": self.student.num_points,
                    "student.huber_delta": self.student.huber_delta, "run.keep_checkpoints": r.keep_checkpoints}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name}={value}: must be > 0")
        non_negative = {"optim.weight_decay": o.weight_decay, "optim.clip_grad_norm": o.clip_grad_norm,
                        "optim.backbone_lr_multiplier": o.backbone_lr_multiplier,
                        "student.distill_weight": self.student.distill_weight, "data.workers": d.workers,
                        "data.min_component_area": d.min_component_area, "run.threads": r.threads,
                        "data.synth_seed": d.synth_seed, "optim.poly_power": o.poly_power}
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name}={value}: must be >= 0")
        if not 0 < d.min_scale <= d.max_scale:
            raise ValueError(f"data.min_scale={d.min_scale}, data.max_scale={d.max_scale}: need "
                             "0 < min_scale <= max_scale")
        if not 0 < d.cat_max_ratio <= 1:
            raise ValueError(f"data.cat_max_ratio={d.cat_max_ratio}: must be in (0, 1]")
        from csl_ros.config import device_error

        if device_error("run.device", r.device):
            raise ValueError(device_error("run.device", r.device))
        if d.dataset == "cityscapes" and not d.root:
            raise ValueError("data.root: the Cityscapes root folder is required for dataset=cityscapes")
        return self

    # --- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a nested mapping; unknown sections or keys are a ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: expected a mapping at the top level")
        cfg = cls()
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                for sub, v in value.items():
                    flat[f"{key}.{sub}"] = v
            else:
                flat[key] = value
        return apply_overrides(cfg, flat, source=source)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_yaml())


def _sections(cfg: TrainConfig) -> list[Any]:
    return [cfg] + [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(
        getattr(cfg, f.name))]


def _section_name(cfg: TrainConfig, section: Any) -> str:
    for f in dataclasses.fields(cfg):
        if getattr(cfg, f.name) is section:
            return f.name
    return "train"


def _coerce(value: Any, current: Any, name: str) -> Any:
    """Convert a YAML / command-line value to the type of the field's current value."""
    return coerce_value(value, type(current), name)


def apply_overrides(cfg: TrainConfig, values: Mapping[str, Any], source: str = "--set") -> TrainConfig:
    """Return a copy of ``cfg`` with ``{"section.key": value}`` (or ``{"key": value}`` for a key
    name that exists in exactly one section) applied, coerced and validated."""
    cfg = dataclasses.replace(cfg, **{f.name: dataclasses.replace(getattr(cfg, f.name))
                                      for f in dataclasses.fields(cfg)
                                      if dataclasses.is_dataclass(getattr(cfg, f.name))})
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if dataclasses.is_dataclass(getattr(cfg, f.name))}
    top = {f.name for f in dataclasses.fields(cfg) if f.name not in sections}
    for key, raw in values.items():
        if key in top:
            setattr(cfg, key, _coerce(raw, getattr(cfg, key), key))
            continue
        if "." in key:
            section_name, name = key.split(".", 1)
            if section_name not in sections:
                raise ValueError(f"{source}: unknown config section {section_name!r} in {key!r}; known "
                                 f"sections: {', '.join(sections)}")
            section = sections[section_name]
        else:
            owners = [s for s, sec in sections.items() if key in {f.name for f in dataclasses.fields(sec)}]
            if len(owners) != 1:
                known = sorted(f"{s}.{f.name}" for s, sec in sections.items() for f in dataclasses.fields(sec))
                why = "is ambiguous (in " + ", ".join(owners) + ")" if owners else "is unknown"
                raise ValueError(f"{source}: config key {key!r} {why}; known keys: {', '.join(known)}")
            section_name, name, section = owners[0], key, sections[owners[0]]
        names = {f.name for f in dataclasses.fields(section)}
        if name not in names:
            raise ValueError(f"{source}: unknown config key {section_name}.{name}; known keys of "
                             f"{section_name}: {', '.join(sorted(names))}")
        setattr(section, name, _coerce(raw, getattr(section, name), f"{section_name}.{name}"))
    return cfg.validate()


def parse_set_args(items) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``; values are parsed as YAML scalars (1e-4, true, ...)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        out[key.strip()] = value if isinstance(parsed, (dict, list)) or parsed is None else parsed
    return out


def load_train_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                      base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the recipe defaults) updated from a YAML file, then from ``overrides``."""
    cfg = base if base is not None else TrainConfig()
    if path is not None:
        from csl_ros.config import read_yaml_mapping

        data = read_yaml_mapping(path, "training config")
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                flat.update({f"{key}.{sub}": v for sub, v in value.items()})
            else:
                flat[key] = value
        cfg = apply_overrides(cfg, flat, source=str(path))
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg.validate()
