"""The CSL student: class-agnostic Mask2Former with a validity head and the scheme-1 distillation head.

``CSLStudent(config)(images)`` maps RGB images (float, 0-255, B x 3 x H x W, any H and W) to plain
tensors (:class:`StudentOutput`). Post-processing (soft assignment, fusion) lives in
:mod:`csl_ros.model.assignment`, outside the module, so the module traces and exports to ONNX whole.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import BACKBONES, check_backbone, load_backbone_weights
from .config import ModelConfig, get_preset
from .heads import DistillationHead
from .pixel_decoder import FPNPixelDecoder
from .transformer_decoder import MaskedTransformerDecoder

OUTPUT_STRIDE = 4


class StudentOutput(NamedTuple):
    """Outputs of :class:`CSLStudent` for a B x 3 x H x W input; h = ceil(H/4), w = ceil(W/4).

    Cell (i, j) of the stride-4 maps covers input pixels [4i, 4i+4) x [4j, 4j+4); the last row/column
    may extend past the input when H or W is not a multiple of 4 (use :func:`upsample_to_input`).
    """

    region_logits: Tensor         # B x N x h x w, region scores r = sigmoid(region_logits) (Eq. 2)
    validity_logits: Tensor       # B x N x 2, [valid, no-object]; v = softmax(.)[..., 0]
    distribution: Tensor          # B x C x h x w scheme-1 D-hat in [0, 1]; C = 0 without a head
    aux_region_logits: tuple      # training only: the dec_layers earlier predictions, else ()
    aux_validity_logits: tuple    # training only, matching aux_region_logits


def upsample_to_input(maps: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Stride-4 maps (... x h x w) to the input size H x W: upsample by exactly 4 (keeping the grid
    alignment of :class:`StudentOutput`), then crop. Works on 3-D or 4-D tensors."""
    squeeze = maps.dim() == 3
    x = maps.unsqueeze(0) if squeeze else maps
    h, w = x.shape[-2:]
    if h * OUTPUT_STRIDE < size[0] or w * OUTPUT_STRIDE < size[1]:
        raise ValueError(f"upsample_to_input: maps of {h}x{w} at stride 4 cannot cover {size[0]}x{size[1]}")
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    x = F.interpolate(x, size=(h * OUTPUT_STRIDE, w * OUTPUT_STRIDE), mode=mode, **kwargs)
    x = x[..., : size[0], : size[1]]
    return x.squeeze(0) if squeeze else x


class CSLStudent(nn.Module):
    """Backbone (ResNet) -> FPN pixel decoder (E and three scales) -> masked-attention decoder
    (N region prototypes, validity) -> region logits = P . E; plus the scheme-1 head D-hat on E.

    ``backbone``: a module to use instead of the registered builder ``config.backbone``
    (``csl_ros.model.backbone.BACKBONES``); it returns four maps at strides 4..32 and exposes their
    ``out_channels``. A checkpoint rebuilds its backbone from the config, so register a backbone that
    should be saved and loaded."""

    def __init__(self, config: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = BACKBONES.get(config.backbone)(config) if backbone is None else backbone
        channels = check_backbone(self.backbone, "the backbone" if backbone is not None else
                                  f"backbone {config.backbone!r}")
        self.pixel_decoder = FPNPixelDecoder(channels, config.conv_dim, config.mask_dim,
                                             config.gn_groups)
        self.transformer_decoder = MaskedTransformerDecoder(
            in_channels=config.conv_dim, hidden_dim=config.hidden_dim, mask_dim=config.mask_dim,
            num_queries=config.num_queries, nheads=config.nheads, dim_feedforward=config.dim_feedforward,
            num_layers=config.dec_layers, num_levels=config.num_feature_levels)
        self.distill_head = (DistillationHead(config.mask_dim, config.distill_channels, config.gn_groups,
                                              config.detach_embeddings)
                             if config.distill_channels > 0 else None)
        # Derived from the config, so not part of the state dict.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), persistent=False)

    def normalize_and_pad(self, images: Tensor) -> Tensor:
        """(images - mean) / std, then zero padding (= the mean colour) at the bottom/right to a multiple
        of ``size_divisibility``, as Mask2Former's ImageList does after normalisation."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"CSLStudent expects B x 3 x H x W RGB images, got shape {tuple(images.shape)}")
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        div = self.config.size_divisibility
        pad_h = (div - images.shape[-2] % div) % div
        pad_w = (div - images.shape[-1] % div) % div
        return F.pad(x, (0, pad_w, 0, pad_h))

    def forward(self, images: Tensor) -> StudentOutput:
        """images: B x 3 x H x W, RGB, 0-255 (float or uint8). See :class:`StudentOutput`."""
        h = (images.shape[-2] + OUTPUT_STRIDE - 1) // OUTPUT_STRIDE
        w = (images.shape[-1] + OUTPUT_STRIDE - 1) // OUTPUT_STRIDE
        res = self.backbone(self.normalize_and_pad(images))
        embeddings, multi_scale = self.pixel_decoder(*res)
        validity, region = self.transformer_decoder(multi_scale, embeddings)
        region = [r[..., :h, :w] for r in region]  # drop the padding's cells
        if self.distill_head is not None:
            distribution = self.distill_head(embeddings)[..., :h, :w]
        else:
            distribution = embeddings.new_zeros((embeddings.shape[0], 0, h, w))
        aux = self.training
        return StudentOutput(region[-1], validity[-1], distribution,
                             tuple(region[:-1]) if aux else (), tuple(validity[:-1]) if aux else ())

    @property
    def has_distribution(self) -> bool:
        return self.distill_head is not None


def build_student(config: ModelConfig | str = "r50_paper", backbone_weights: str | os.PathLike | None = None
                  ) -> CSLStudent:
    """A randomly initialised student for a config or preset name; optionally with ImageNet backbone
    weights from a user file (torchvision ``.pth`` / detectron2 ``.pkl`` / ``.safetensors``)."""
    if isinstance(config, str):
        config = get_preset(config)
    model = CSLStudent(config)
    if backbone_weights:
        load_backbone_weights(model.backbone, backbone_weights)
    return model


def optimizer_param_groups(model: CSLStudent, lr: float, weight_decay: float,
                           backbone_lr_multiplier: float = 0.1) -> list[dict]:
    """AdamW parameter groups of the Mask2Former recipe (spec section 3): backbone lr x0.1; no weight
    decay on normalisation layers and on the query / level embeddings."""
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_backbone = module_name.startswith("backbone")
            no_decay = isinstance(module, norm_types) or isinstance(module, nn.Embedding)
            key = (lr * (backbone_lr_multiplier if is_backbone else 1.0), 0.0 if no_decay else weight_decay)
            groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), params in groups.items()]
