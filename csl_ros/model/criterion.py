"""Training losses of the CSL student (spec section 3): validity cross-entropy, region BCE + dice on
importance-sampled points for Hungarian-matched pairs, deep supervision over every decoder prediction,
and the scheme-1 distillation Huber loss.

    L = sum over predictions (w_v L_v + w_bce L_bce + w_dice L_dice) + lambda_d L_d
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .matcher import HungarianMatcher, pad_targets, point_sample
from .student import OUTPUT_STRIDE, StudentOutput


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and point sampling (defaults: the released CA configs / Mask2Former, spec 1.2, 3)."""

    validity_weight: float = 2.0          # class weight of the validity CE (and of its matching cost)
    bce_weight: float = 5.0               # region BCE on sampled points (and matching cost)
    dice_weight: float = 5.0              # region dice on sampled points (and matching cost)
    no_object_weight: float = 0.1         # CE class weight of the no-object class
    num_points: int = 12544               # points per mask, for the matching and the losses
    oversample_ratio: float = 3.0         # importance sampling: draw ratio x num_points candidates ...
    importance_sample_ratio: float = 0.75  # ... keep this fraction as the most uncertain, rest random
    deep_supervision: bool = True         # losses on all dec_layers + 1 predictions (else the last only)
    distill_weight: float = 1.0           # lambda_d of the scheme-1 Huber loss (spec ambiguity #11)
    huber_delta: float = 0.1              # Huber delta of the distillation loss (see SetCriterion.distill_loss);
    #                                       the training schema's student.huber_delta has the same default

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"LossConfig.{f.name}={value}: must be >= 0")
        if self.num_points < 1:
            raise ValueError("LossConfig.num_points must be >= 1")
        if self.oversample_ratio < 1:
            raise ValueError("LossConfig.oversample_ratio must be >= 1")
        if not 0 <= self.importance_sample_ratio <= 1:
            raise ValueError("LossConfig.importance_sample_ratio must be in [0, 1]")
        if self.huber_delta <= 0:
            raise ValueError("LossConfig.huber_delta must be > 0")


def uncertain_point_coords(logits: Tensor, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float) -> Tensor:
    """Mask2Former / PointRend importance sampling on M x 1 x h x w logits -> M x num_points x 2:
    of ``oversample_ratio * num_points`` random candidates keep the ``importance_sample_ratio *
    num_points`` with the highest uncertainty -|logit|, then add fresh uniform points."""
    m = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    candidates = torch.rand(m, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates).abs()[:, 0]          # M x S
    top = uncertainty.topk(num_uncertain, dim=1).indices
    coords = candidates.gather(1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(m, num_random, 2, device=logits.device)], dim=1)
    return coords


class SetCriterion(nn.Module):
    """Computes the losses of a :class:`StudentOutput` (training mode, with auxiliary predictions)
    against per-image mask-split targets (K x H x W boolean masks at the input resolution; K may be 0)
    and, for scheme 1, the teacher's per-pixel map (B x C x H x W in [0, 1])."""

    def __init__(self, config: LossConfig = LossConfig()):
        super().__init__()
        self.config = config
        self.matcher = HungarianMatcher(config.validity_weight, config.bce_weight, config.dice_weight,
                                        config.num_points)
        self.register_buffer("class_weights", torch.tensor([1.0, config.no_object_weight]), persistent=False)

    def validity_loss(self, validity_logits: Tensor, indices: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Weighted CE over all queries: class 0 (valid) for matched queries, 1 (no-object) otherwise."""
        b, n, _ = validity_logits.shape
        target = torch.ones(b, n, dtype=torch.int64, device=validity_logits.device)
        for i, (src, _) in enumerate(indices):
            target[i, src.to(target.device)] = 0
        return F.cross_entropy(validity_logits.float().transpose(1, 2), target, self.class_weights)

    def region_losses(self, region_logits: Tensor, targets: list[Tensor], indices: list[tuple[Tensor, Tensor]],
                      num_masks: float) -> tuple[Tensor, Tensor]:
        """Sum over matched pairs of point-sampled BCE (mean over points) and dice, / num_masks."""
        src = torch.cat([region_logits[i, s.to(region_logits.device)] for i, (s, _) in enumerate(indices)])
        if src.shape[0] == 0:
            zero = region_logits.sum() * 0.0  # keeps the graph connected
            return zero, zero
        tgt = torch.cat([t[k.to(t.device)] for t, (_, k) in zip(targets, indices)]).to(src.device)
        src = src[:, None].float()
        cfg = self.config
        with torch.no_grad():
            coords = uncertain_point_coords(src, cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio)
            labels = point_sample(tgt[:, None].float(), coords)[:, 0]
        logits = point_sample(src, coords)[:, 0]
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(1).sum() / num_masks
        probs = logits.sigmoid()
        dice = 1 - (2 * (probs * labels).sum(-1) + 1) / (probs.sum(-1) + labels.sum(-1) + 1)
        return bce, dice.sum() / num_masks

    def distill_loss(self, distribution: Tensor, teacher: Tensor) -> Tensor:
        """Mean Huber loss between D-hat (B x C x h x w) and the teacher map at D-hat's resolution: a
        teacher at the input resolution H x W is padded (replicate) to 4h x 4w and averaged over 4x4
        cells; one already at h x w is used as is.

        The paper's L_d ("mean Huber loss between the predicted per-pixel distribution and the output of
        the base teacher") gives no delta. Both maps lie in [0, 1], so every residual is at most 1: with
        the spec's delta = 1 the loss is exactly 0.5 * MSE and its robust (linear) part never acts.
        The default delta = 0.1 (a tenth of the map's range) keeps the quadratic fit for the small
        residuals that make up almost all in-distribution pixels (the calibrated teacher map is near 0
        there) and caps the gradient of residuals above 0.1 at delta, so the teacher's sparse spikes
        (rare classes, object borders) do not dominate the distillation."""
        if teacher.dim() != 4 or teacher.shape[:2] != distribution.shape[:2]:
            raise ValueError(f"teacher map must be B x C x H x W matching D-hat {tuple(distribution.shape[:2])}, "
                             f"got {tuple(teacher.shape)}")
        h, w = distribution.shape[-2:]
        teacher = teacher.to(distribution.device, torch.float32)
        if tuple(teacher.shape[-2:]) != (h, w):
            full = (h * OUTPUT_STRIDE, w * OUTPUT_STRIDE)
            dh, dw = full[0] - teacher.shape[-2], full[1] - teacher.shape[-1]
            if not (0 <= dh < OUTPUT_STRIDE and 0 <= dw < OUTPUT_STRIDE):
                raise ValueError(f"teacher map of {tuple(teacher.shape[-2:])} is neither at the input "
                                 f"resolution nor at D-hat's {(h, w)}")
            teacher = F.avg_pool2d(F.pad(teacher, (0, dw, 0, dh), mode="replicate"), OUTPUT_STRIDE)
        return F.huber_loss(distribution.float(), teacher, delta=self.config.huber_delta)

    def forward(self, outputs: StudentOutput, targets: list[Tensor], teacher: Tensor | None = None
                ) -> dict[str, Tensor]:
        """Returns a dict with ``loss`` (the weighted total to minimise) and its unweighted parts:
        ``loss_validity``, ``loss_bce``, ``loss_dice`` for the final prediction, ``..._{i}`` for the
        auxiliary prediction i, and ``loss_distill`` when a teacher map is given."""
        b = outputs.region_logits.shape[0]
        if len(targets) != b:
            raise ValueError(f"got {len(targets)} target lists for a batch of {b} images")
        h, w = outputs.region_logits.shape[-2:]
        padded = [pad_targets(t, (h * OUTPUT_STRIDE, w * OUTPUT_STRIDE)) for t in targets]
        num_masks = float(max(sum(t.shape[0] for t in targets), 1))
        predictions = [("", outputs.validity_logits, outputs.region_logits)]
        if self.config.deep_supervision:
            if len(outputs.aux_region_logits) == 0:
                raise ValueError("deep supervision needs the auxiliary predictions: run the model in train() mode "
                                 "or set LossConfig(deep_supervision=False)")
            predictions += [(f"_{i}", v, r) for i, (v, r) in
                            enumerate(zip(outputs.aux_validity_logits, outputs.aux_region_logits))]
        cfg = self.config
        losses: dict[str, Tensor] = {}
        total = outputs.region_logits.new_zeros(())
        for suffix, validity, region in predictions:
            indices = self.matcher(validity, region, padded)
            loss_v = self.validity_loss(validity, indices)
            loss_bce, loss_dice = self.region_losses(region, padded, indices, num_masks)
            losses.update({f"loss_validity{suffix}": loss_v, f"loss_bce{suffix}": loss_bce,
                           f"loss_dice{suffix}": loss_dice})
            total = total + cfg.validity_weight * loss_v + cfg.bce_weight * loss_bce + cfg.dice_weight * loss_dice
        if teacher is not None:
            if outputs.distribution.shape[1] == 0:
                raise ValueError("a teacher map was given but the model has no distillation head "
                                 "(ModelConfig.distill_channels = 0)")
            losses["loss_distill"] = self.distill_loss(outputs.distribution, teacher)
            total = total + cfg.distill_weight * losses["loss_distill"]
        losses["loss"] = total
        return losses
