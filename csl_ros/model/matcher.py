"""Hungarian matching of region queries to mask-split targets (Mask2Former's matcher with one class;
spec section 3), and the point-sampling helpers shared with the criterion."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Sample B x C x H x W maps at normalised coords B x P x 2 (x, y in [0, 1]) -> B x C x P, bilinear,
    ``align_corners=False`` (predictions and targets are read at the same physical points)."""
    return F.grid_sample(maps, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def pad_targets(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad K x H x W target masks at the bottom/right to ``size`` (the area covered by the
    stride-4 predictions, see StudentOutput). Padding is background for every target (as in M2F)."""
    if masks.dim() != 3:
        raise ValueError(f"target masks must be K x H x W, got shape {tuple(masks.shape)}")
    dh, dw = size[0] - masks.shape[-2], size[1] - masks.shape[-1]
    if not (0 <= dh < 4 and 0 <= dw < 4):
        raise ValueError(f"target masks of {tuple(masks.shape[-2:])} do not fit the predictions covering "
                         f"{tuple(size)} (targets must be at the input image's resolution)")
    return F.pad(masks.float(), (0, dw, 0, dh))


def pairwise_sigmoid_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """N x P logits, K x P targets -> N x K mean-over-points BCE of every prediction/target pair."""
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """N x K dice loss ``1 - (2 sum p t + 1) / (sum p + sum t + 1)`` with p = sigmoid(logits)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one matching minimising
    ``C[n, k] = w_cls * (-v_n) + w_bce * BCE_pts(m_n, t_k) + w_dice * Dice_pts(m_n, t_k)``
    on ``num_points`` uniformly random points, solved by ``scipy.optimize.linear_sum_assignment``.
    With K > N targets only N are matched; with K = 0 nothing is."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are zero")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, validity_logits: Tensor, region_logits: Tensor, targets: list[Tensor]
                ) -> list[tuple[Tensor, Tensor]]:
        """validity_logits B x N x 2, region_logits B x N x h x w, targets: per image K x H x W masks
        already padded to (4h, 4w) (see :func:`pad_targets`). Returns per image (query idx, target idx)."""
        indices = []
        for b, tgt in enumerate(targets):
            num_targets = tgt.shape[0]
            if num_targets == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            validity = validity_logits[b].float().softmax(-1)[:, 0]              # N
            coords = torch.rand(1, self.num_points, 2, device=region_logits.device)
            pred = point_sample(region_logits[b][:, None].float(), coords.expand(region_logits.shape[1], -1, -1))
            pred = pred.squeeze(1)                                              # N x P
            gt = point_sample(tgt[:, None].float().to(pred.device), coords.expand(num_targets, -1, -1)).squeeze(1)
            cost = (self.cost_mask * pairwise_sigmoid_bce(pred, gt)
                    + self.cost_dice * pairwise_dice(pred, gt)
                    - self.cost_class * validity[:, None])
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
