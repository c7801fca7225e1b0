"""Scheme-1 distillation head (spec section 2.4; the paper does not describe it)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .pixel_decoder import ConvNormAct, c2_xavier_fill


class DistillationHead(nn.Module):
    """Per-pixel distribution D-hat on the embeddings E: Conv3x3 + GN + ReLU -> Conv1x1 to C channels,
    then a sigmoid (C = 1, the OOD probability) or a softmax over channels (C > 1, a class distribution).

    Output: B x C x H/4 x W/4 in [0, 1]. The distill loss (Huber, spec section 3) compares it with the
    teacher's map resized to the same resolution.
    """

    def __init__(self, in_channels: int, channels: int, gn_groups: int = 32, detach_embeddings: bool = False):
        super().__init__()
        if channels < 1:
            raise ValueError(f"distillation head needs channels >= 1, got {channels}")
        self.channels = channels
        self.detach_embeddings = detach_embeddings
        self.conv = ConvNormAct(in_channels, in_channels, 3, gn_groups, relu=True)
        self.predict = nn.Conv2d(in_channels, channels, 1)
        c2_xavier_fill(self.predict)

    def forward(self, embeddings: Tensor) -> Tensor:
        if self.detach_embeddings:  # ablation: the distill loss does not shape the shared trunk
            embeddings = embeddings.detach()
        logits = self.predict(self.conv(embeddings))
        return torch.sigmoid(logits) if self.channels == 1 else torch.softmax(logits, dim=1)
