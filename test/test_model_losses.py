"""Hungarian matcher and training losses (spec section 3)."""
import math

import pytest
import torch

from csl_ros.model import HungarianMatcher, LossConfig, SetCriterion, StudentOutput
from csl_ros.model.criterion import uncertain_point_coords
from csl_ros.model.matcher import pairwise_dice, pairwise_sigmoid_bce

H, W = 32, 48   # input size; predictions at 8 x 12


def _targets(k, seed=0):
    """K disjoint rectangles at input resolution."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(k, H, W, dtype=torch.bool)
    for i in range(k):
        y = int(torch.randint(0, H - 8, (1,), generator=g))
        masks[i, y:y + 8, i * (W // k):(i + 1) * (W // k)] = True
    return masks


def _perfect_logits(masks, n, order=None):
    """Region logits at stride 4 equal to +-10 on each target mask (query order[k] predicts target k)
    and -10 elsewhere; validity logits: valid for the predicting queries, no-object for the rest."""
    k = masks.shape[0]
    order = list(range(k)) if order is None else order
    low = torch.nn.functional.avg_pool2d(masks[:, None].float(), 4)[:, 0] > 0.5
    region = torch.full((n, H // 4, W // 4), -10.0)
    validity = torch.tensor([[-5.0, 5.0]]).repeat(n, 1)
    for t, q in enumerate(order):
        region[q] = torch.where(low[t], 10.0, -10.0)
        validity[q] = torch.tensor([5.0, -5.0])
    return region, validity


def _output(region, validity, aux=0):
    region, validity = region[None].clone().requires_grad_(), validity[None].clone().requires_grad_()
    return StudentOutput(region, validity, region.new_zeros(1, 0, *region.shape[-2:]),
                         tuple(region * 0.5 for _ in range(aux)), tuple(validity for _ in range(aux)))


def test_matcher_recovers_a_known_permutation():
    torch.manual_seed(0)
    masks = _targets(4)
    order = [5, 2, 7, 0]
    region, validity = _perfect_logits(masks, n=8, order=order)
    matcher = HungarianMatcher(num_points=500)
    (rows, cols), = matcher(validity[None], region[None], [masks.float()])
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 5, 1: 2, 2: 7, 3: 0}


def test_matcher_pairwise_costs_by_hand():
    logits = torch.tensor([[0.0, 0.0], [2.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    bce = pairwise_sigmoid_bce(logits, targets)
    assert bce[0, 0] == pytest.approx(math.log(2))
    assert bce[1, 0] == pytest.approx(math.log(1 + math.exp(-2)))
    dice = pairwise_dice(logits, targets)
    assert dice[0, 0] == pytest.approx(1 - (2 * 0.5 + 1) / (1.0 + 1 + 1))


def test_matcher_more_targets_than_queries_and_no_targets():
    masks = _targets(6)
    region, validity = torch.randn(4, H // 4, W // 4), torch.randn(4, 2)
    matcher = HungarianMatcher(num_points=200)
    (rows, cols), (rows0, cols0) = matcher(torch.stack([validity] * 2), torch.stack([region] * 2),
                                           [masks.float(), torch.zeros(0, H, W)])
    assert len(rows) == 4 and len(set(cols.tolist())) == 4 and max(cols.tolist()) < 6
    assert len(rows0) == 0 and len(cols0) == 0


def test_perfect_prediction_beats_permuted_and_loss_is_matching_invariant():
    masks = _targets(3)
    crit = SetCriterion(LossConfig(num_points=400, deep_supervision=False))
    perfect = _perfect_logits(masks, n=6)
    torch.manual_seed(1)
    loss_perfect = crit(_output(*perfect), [masks])["loss"]
    # The same prediction with the queries reordered: the matcher undoes it, the loss is unchanged.
    reorder = torch.tensor([4, 0, 5, 1, 3, 2])
    torch.manual_seed(1)
    loss_reordered = crit(_output(perfect[0][reorder], perfect[1][reorder]), [masks])["loss"]
    assert loss_reordered.item() == pytest.approx(loss_perfect.item(), rel=1e-4)
    # Region masks permuted against the validity scores: valid queries now predict the wrong masks.
    permuted = (perfect[0][torch.tensor([3, 4, 5, 0, 1, 2])], perfect[1])
    torch.manual_seed(1)
    loss_permuted = crit(_output(*permuted), [masks])["loss"]
    assert loss_perfect.item() < 0.2 * loss_permuted.item()


def test_loss_finite_with_zero_targets_and_with_more_targets_than_queries():
    crit = SetCriterion(LossConfig(num_points=300))
    torch.manual_seed(2)
    region, validity = torch.randn(4, H // 4, W // 4), torch.randn(4, 2)
    for targets in ([torch.zeros(0, H, W, dtype=torch.bool)], [_targets(7)]):
        out = _output(region, validity, aux=2)
        losses = crit(out, targets)
        assert all(torch.isfinite(v) for v in losses.values())
        losses["loss"].backward()
        assert torch.isfinite(out.region_logits.grad).all() and torch.isfinite(out.validity_logits.grad).all()
    # Without targets every query is pushed towards no-object and the region terms vanish.
    losses = crit(_output(region, validity, aux=2), [torch.zeros(0, H, W)])
    assert losses["loss_bce"] == 0 and losses["loss_dice"] == 0 and losses["loss_validity"] > 0
    assert {"loss_validity_0", "loss_bce_1", "loss_dice_1"} <= set(losses)


def test_validity_loss_by_hand():
    crit = SetCriterion()
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    loss = crit.validity_loss(logits, [(torch.tensor([0]), torch.tensor([0]))])
    ce_matched, ce_unmatched = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    assert loss.item() == pytest.approx((ce_matched + 0.1 * ce_unmatched) / 1.1, rel=1e-6)


def test_region_losses_by_hand():
    # Logit 0 everywhere (p = 0.5) against an empty target: BCE = ln 2 per point, dice with P points
    # = 1 - 1 / (0.5 P + 1); two matched masks, num_masks = 2 -> the per-mask values. (An all-ones
    # target would not do: like Mask2Former, point sampling reads zeros beyond the map's border.)
    p = 100
    crit = SetCriterion(LossConfig(num_points=p))
    region = torch.zeros(1, 3, 4, 4)
    targets = [torch.zeros(2, 16, 16)]
    bce, dice = crit.region_losses(region, targets, [(torch.tensor([0, 2]), torch.tensor([0, 1]))], num_masks=2)
    assert bce.item() == pytest.approx(math.log(2), rel=1e-5)
    assert dice.item() == pytest.approx(1 - 1 / (0.5 * p + 1), rel=1e-5)


def test_importance_sampling_prefers_uncertain_points():
    torch.manual_seed(3)
    logits = torch.full((1, 1, 16, 16), 20.0)
    logits[..., :, 8:] = 0.0                   # the right half is uncertain (|logit| = 0)
    coords = uncertain_point_coords(logits, num_points=400, oversample_ratio=3.0, importance_sample_ratio=0.75)
    assert coords.shape == (1, 400, 2)
    assert (coords[0, :300, 0] >= 0.5 - 1 / 32).all()       # the 300 important ones: uncertain half
    assert 0.2 < (coords[0, 300:, 0] < 0.5).float().mean() < 0.8  # the 100 fresh ones: uniform


def test_distill_huber_loss_by_hand_and_resolution_handling():
    crit = SetCriterion(LossConfig(huber_delta=1.0))
    d = torch.full((1, 1, 5, 6), 0.25)
    assert crit.distill_loss(d, torch.full((1, 1, 5, 6), 0.75)).item() == pytest.approx(0.5 * 0.5 ** 2)
    assert crit.distill_loss(d * 0, torch.full((1, 1, 5, 6), 2.0)).item() == pytest.approx(2.0 - 0.5)
    # A teacher at the input resolution (18 x 23 -> stride-4 cells 5 x 6) is averaged per 4 x 4 cell.
    teacher = torch.zeros(1, 1, 18, 23)
    teacher[..., :4, :4] = 1.0
    expected = torch.zeros(1, 1, 5, 6)
    expected[..., 0, 0] = 1.0
    assert crit.distill_loss(expected, teacher).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="teacher"):
        crit.distill_loss(d, torch.zeros(1, 1, 40, 40))
    with pytest.raises(ValueError, match="distillation head"):
        crit(_output(torch.zeros(2, 5, 6), torch.zeros(2, 2), aux=1), [torch.zeros(0, 18, 23)],
             teacher=torch.zeros(1, 1, 18, 23))


def test_default_huber_delta_is_robust_on_unit_range_maps():
    """On [0, 1] maps every residual is <= 1, so delta = 1 is 0.5 * MSE everywhere; the default delta
    (0.1) is linear above 0.1: a residual of 0.5 costs delta * (0.5 - delta / 2), not 0.5 * 0.5 ** 2,
    and its gradient is capped at delta while a small residual keeps the quadratic gradient."""
    from csl_ros.training.config import StudentConfig

    delta = LossConfig().huber_delta
    assert delta == StudentConfig().huber_delta == pytest.approx(0.1)  # one default for training and loss
    crit = SetCriterion()
    teacher = torch.zeros(1, 1, 1, 2)
    d = torch.tensor([[[[0.5, 0.05]]]], requires_grad=True)
    loss = crit.distill_loss(d, teacher)
    assert loss.item() == pytest.approx((delta * (0.5 - delta / 2) + 0.5 * 0.05 ** 2) / 2)
    assert loss.item() < 0.5 * (0.5 ** 2 + 0.05 ** 2) / 2  # less than the delta = 1 (MSE) loss
    loss.backward()
    assert d.grad.flatten().tolist() == pytest.approx([delta / 2, 0.05 / 2])  # outlier capped, inlier linear


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="no_object_weight"):
        LossConfig(no_object_weight=-1)
    with pytest.raises(ValueError, match="importance"):
        LossConfig(importance_sample_ratio=1.5)
    crit = SetCriterion(LossConfig(num_points=50))
    out = _output(torch.zeros(2, H // 4, W // 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="auxiliary"):
        crit(out, [_targets(1)])
    with pytest.raises(ValueError, match="target lists"):
        crit(_output(torch.zeros(2, H // 4, W // 4), torch.zeros(2, 2), aux=1), [_targets(1), _targets(1)])
    with pytest.raises(ValueError, match="do not fit"):
        crit(_output(torch.zeros(2, H // 4, W // 4), torch.zeros(2, 2), aux=1), [torch.zeros(1, H + 8, W)])
