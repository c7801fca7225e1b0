"""Architecture configuration of the CSL student and the registry of named presets.

A :class:`ModelConfig` fully determines the parameter shapes of :class:`~csl_ros.model.student.CSLStudent`,
so it is stored next to the weights in every checkpoint (see :mod:`csl_ros.model.checkpoint`).
Training hyper-parameters (loss weights, point sampling) live in :class:`~csl_ros.model.criterion.LossConfig`.

Presets:

``r50_paper``
    The paper's network (spec section 2): ResNet-50, FPN pixel decoder with 256 channels, 100 region
    queries, 9 masked-attention decoder layers, hidden 256, 8 heads, FFN 2048, scheme-1 head with C=1.
``r101``
    The same with ResNet-101 (the paper's "ResNet100" footnote, spec section 1.3).
``r18_fast``
    A small member of the same family for CPU tests, embedded targets and quick training:
    ResNet-18 trunk, 128 pixel-decoder / embedding / transformer channels (GroupNorm 32 still divides
    them), 50 queries (the mask split of a 512x1024 road crop rarely yields more than ~40 components
    of >= 100 px), 6 decoder layers (two full cycles over the 1/32, 1/16, 1/8 scales, so every scale is
    attended twice), 4 heads of 32 channels (the paper's head width), FFN 512 (4x hidden instead of the
    paper's 8x, to keep the decoder cheap). Everything else (losses, deep supervision, post-norm,
    assignment, fusion) is identical to ``r50_paper``.
``r18_lite``
    ``r18_fast`` with a half-width ResNet-18 trunk (stages of 32, 64, 128, 256 channels) and 96
    decoder channels (3 heads of 32, FFN 384): about a third of its parameters, so the shipped
    models trained from scratch on synthroad stay a few MB in float16. No ImageNet weights fit it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from csl_ros.settings import apply_overrides, setting, validation_errors

from .backbone import BACKBONES as BACKBONE_REGISTRY

BACKBONES = BACKBONE_REGISTRY.choices()  # the registered backbone builders (csl_ros.model.backbone)
BACKBONE_NORMS = ("bn", "frozen_bn")

# Input normalisation of Mask2Former / detectron2 torchvision-style ResNets (RGB, 0-255 input).
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)


@dataclass(frozen=True)
class ModelConfig:
    """Every architecture choice of the CSL student (spec section 2). Frozen: presets are shared."""

    backbone: str = setting("resnet50", "Backbone builder, one of BACKBONES (the ResNet trunks, or a "
                            "registered one).", choices=BACKBONES)
    backbone_width: float = field(default=1.0, metadata={
        "help": "Channel multiplier of the ResNet trunk's stages (1 = the standard network, which ImageNet "
                "weights fit; 0.5 = a quarter of the parameters, for small shipped models)."})
    backbone_norm: str = setting("bn", "'bn' (trainable BatchNorm, the released configs) or 'frozen_bn' "
                                 "(fixed statistics, for fine-tuning with tiny per-device batches; spec "
                                 "ambiguity #13).", choices=BACKBONE_NORMS)
    conv_dim: int = field(default=256, metadata={"help": "Channels of the FPN pixel decoder outputs."})
    mask_dim: int = field(default=256, metadata={"help": "Channels of the per-pixel embeddings E and "
                                                 "of the region prototypes P."})
    hidden_dim: int = field(default=256, metadata={"help": "Transformer decoder width."})
    num_queries: int = field(default=100, metadata={"help": "Number N of learnable region queries."})
    dec_layers: int = field(default=9, metadata={"help": "Masked-attention decoder layers (M2F's "
                                                 "DEC_LAYERS minus one); predictions = dec_layers + 1."})
    nheads: int = field(default=8, metadata={"help": "Attention heads."})
    dim_feedforward: int = field(default=2048, metadata={"help": "FFN hidden width."})
    num_feature_levels: int = field(default=3, metadata={"help": "Scales cycled by the decoder "
                                                         "(1/32, 1/16, 1/8)."})
    gn_groups: int = field(default=32, metadata={"help": "GroupNorm groups in the pixel decoder."})
    distill_channels: int = field(default=1, metadata={
        "help": "C of the scheme-1 distillation head (1 = OOD probability with a sigmoid, >1 = class "
                "distribution with a softmax, 0 = no head, scheme 2 only)."})
    detach_embeddings: bool = field(default=False, metadata={
        "help": "Stop the distillation loss's gradient at E (ablation; the paper trains end to end)."})
    size_divisibility: int = field(default=32, metadata={"help": "Inputs are padded to a multiple."})
    pixel_mean: tuple = field(default=PIXEL_MEAN, metadata={"help": "RGB mean subtracted (0-255)."})
    pixel_std: tuple = field(default=PIXEL_STD, metadata={"help": "RGB std divided (0-255)."})

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep the frozen dataclass hashable and comparable.
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        if isinstance(self.backbone_width, int) and not isinstance(self.backbone_width, bool):
            object.__setattr__(self, "backbone_width", float(self.backbone_width))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        errors = validation_errors(self, prefix="ModelConfig.")  # choices (csl_ros.settings)
        if errors:
            raise ValueError(errors[0])
        if isinstance(self.backbone_width, bool) or not isinstance(self.backbone_width, (int, float)) \
                or not 0 < self.backbone_width <= 4:
            raise ValueError(f"ModelConfig.backbone_width={self.backbone_width!r}: must be a number in (0, 4]")
        for name in ("conv_dim", "mask_dim", "hidden_dim", "num_queries", "dec_layers", "nheads",
                     "dim_feedforward", "gn_groups", "size_divisibility"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name}={value!r}: must be a positive integer")
        if self.num_feature_levels != 3:
            raise ValueError(f"ModelConfig.num_feature_levels={self.num_feature_levels}: the FPN pixel "
                             "decoder provides exactly 3 scales (1/32, 1/16, 1/8)")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"ModelConfig.hidden_dim={self.hidden_dim} is not divisible by "
                             f"nheads={self.nheads}")
        if self.hidden_dim % 2:
            raise ValueError(f"ModelConfig.hidden_dim={self.hidden_dim}: the sine positional encoding "
                             "needs an even width")
        if self.conv_dim % self.gn_groups:
            raise ValueError(f"ModelConfig.conv_dim={self.conv_dim} is not divisible by "
                             f"gn_groups={self.gn_groups}")
        if self.distill_channels > 0 and self.mask_dim % self.gn_groups:
            raise ValueError(f"ModelConfig.mask_dim={self.mask_dim} is not divisible by "
                             f"gn_groups={self.gn_groups} (the distillation head uses GroupNorm)")
        if self.size_divisibility % 32:
            raise ValueError(f"ModelConfig.size_divisibility={self.size_divisibility}: must be a "
                             "multiple of the backbone stride 32")
        if not isinstance(self.distill_channels, int) or self.distill_channels < 0:
            raise ValueError(f"ModelConfig.distill_channels={self.distill_channels!r}: must be >= 0")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError("ModelConfig.pixel_mean/pixel_std: need 3 values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown} (written by a newer csl_ros?)")
        return apply_overrides(cls(), data)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def diff(self, other: "ModelConfig") -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: ``{name: (self_value, other_value)}``."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}


PRESETS: dict[str, ModelConfig] = {
    "r50_paper": ModelConfig(),
    "r101": ModelConfig(backbone="resnet101"),
    "r18_fast": ModelConfig(backbone="resnet18", conv_dim=128, mask_dim=128, hidden_dim=128,
                            num_queries=50, dec_layers=6, nheads=4, dim_feedforward=512),
    "r18_lite": ModelConfig(backbone="resnet18", backbone_width=0.5, conv_dim=96, mask_dim=96, hidden_dim=96,
                            num_queries=50, dec_layers=6, nheads=3, dim_feedforward=384),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset, optionally with fields replaced (``get_preset("r18_fast", distill_channels=0)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    if not overrides:
        return PRESETS[name]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown} in overrides of preset {name!r}")
    return apply_overrides(PRESETS[name], overrides)
