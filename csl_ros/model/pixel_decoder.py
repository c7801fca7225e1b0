"""FPN pixel decoder with GroupNorm (Mask2Former's ``BasePixelDecoder``; spec section 2.2).

The paper names "FPN as the pixel decoder"; torchvision's FeaturePyramidNetwork differs (no norm, no
ReLU on the outputs), so the decoder is written here.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2's ``c2_xavier_fill``: kaiming-uniform with a=1 (Caffe2 "XavierFill"), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias when normalised) + optional GroupNorm + optional ReLU, c2_xavier-initialised."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int | None, relu: bool):
        conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=groups is None)
        c2_xavier_fill(conv)
        layers: list[nn.Module] = [conv]
        if groups is not None:
            layers.append(nn.GroupNorm(groups, cout))
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class FPNPixelDecoder(nn.Module):
    """Top-down FPN over res2..res5.

    * res5 -> 3x3 conv + GN + ReLU;
    * res4, res3, res2: y = (1x1 lateral conv + GN)(res_i) + nearest_upsample(y); y = (3x3 conv + GN + ReLU)(y);
    * ``multi_scale_features`` = the first three outputs [1/32, 1/16, 1/8];
    * per-pixel embeddings E = 3x3 conv (no norm) on the 1/4 output.
    """

    def __init__(self, in_channels: tuple[int, int, int, int], conv_dim: int = 256, mask_dim: int = 256,
                 gn_groups: int = 32):
        super().__init__()
        c2, c3, c4, c5 = in_channels
        self.top = ConvNormAct(c5, conv_dim, 3, gn_groups, relu=True)
        # Ordered res4, res3, res2 (top-down).
        self.laterals = nn.ModuleList([ConvNormAct(c, conv_dim, 1, gn_groups, relu=False)
                                       for c in (c4, c3, c2)])
        self.outputs = nn.ModuleList([ConvNormAct(conv_dim, conv_dim, 3, gn_groups, relu=True)
                                      for _ in range(3)])
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, res2: Tensor, res3: Tensor, res4: Tensor, res5: Tensor
                ) -> tuple[Tensor, list[Tensor]]:
        """Returns (E: B x mask_dim x H/4 x W/4, [f32, f16, f8] each B x conv_dim x h x w)."""
        y = self.top(res5)
        multi_scale = [y]
        for lateral, output, feature in zip(self.laterals, self.outputs, (res4, res3, res2)):
            cur = lateral(feature)
            y = output(cur + F.interpolate(y, size=cur.shape[-2:], mode="nearest"))
            if len(multi_scale) < 3:
                multi_scale.append(y)
        return self.mask_features(y), multi_scale
