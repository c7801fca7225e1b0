"""Per-pixel OOD score functions over closed-set logits (spec section 7).

Every function takes logits ``z`` of shape B×K×H×W and returns a raw score of shape B×1×H×W with the
convention **higher = more anomalous**. MSP and entropy are already in [0, 1]; max logit, SML and
energy are unbounded and go through a global calibration (``calibration.py``, spec section 4.4).

SML (Jung et al., ICCV 2021) is implemented from the spec: standardise the max logit with class-wise
statistics of the predicted class, then boundary suppression guided by the predicted class map, then
dilated Gaussian smoothing. Morphology is done with max-pooling and convolutions in plain torch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from csl_ros.teachers.registry import TEACHERS

SCORE_FUNCTIONS = TEACHERS.choices()  # the registered score functions (csl_ros.teachers.registry)

# SML post-processing defaults (spec section 7, the SML repo's eval.py defaults).
SML_BOUNDARY_WIDTH = 4
SML_BOUNDARY_ITERATIONS = 4
SML_SMOOTHING_KERNEL = 7
SML_SMOOTHING_SIGMA = 1.0
SML_SMOOTHING_DILATION = 6


def check_logits(logits: torch.Tensor) -> None:
    """Raise ValueError unless ``logits`` is a floating B×K×H×W tensor with K >= 2."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"logits must be B×K×H×W, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes, got K={logits.shape[1]}")


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """``s = 1 − max_c softmax(z)_c`` (maximum softmax probability baseline), in [0, 1 − 1/K]."""
    check_logits(logits)
    return 1.0 - torch.softmax(logits.float(), dim=1).amax(dim=1, keepdim=True)


def maxlogit_score(logits: torch.Tensor) -> torch.Tensor:
    """``s = −max_c z_c`` (max-logit baseline), unbounded."""
    check_logits(logits)
    return -logits.float().amax(dim=1, keepdim=True)


def entropy_score(logits: torch.Tensor) -> torch.Tensor:
    """``s = −Σ_c p_c log p_c / log K``: softmax entropy normalised to [0, 1]."""
    check_logits(logits)
    logp = torch.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(dim=1, keepdim=True)
    return (ent / math.log(logits.shape[1])).clamp(0.0, 1.0)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``s = −T·logsumexp(z/T)`` (free energy, Liu et al. 2020), T = 1 by default; unbounded."""
    check_logits(logits)
    if not temperature > 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    return -temperature * torch.logsumexp(logits.float() / temperature, dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# SML
# --------------------------------------------------------------------------------------------------

def standardized_max_logit(logits: torch.Tensor, class_mean: torch.Tensor, class_std: torch.Tensor,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly-signed standardized max logit before post-processing.

    ``ĉ = argmax_c z_c``, ``s = −(max_c z_c − μ_ĉ)/σ_ĉ``. Returns ``(s B×1×H×W, ĉ B×H×W int64)``.
    """
    check_logits(logits)
    k = logits.shape[1]
    class_mean = torch.as_tensor(class_mean, dtype=torch.float32).flatten()
    class_std = torch.as_tensor(class_std, dtype=torch.float32).flatten()
    if class_mean.numel() != k or class_std.numel() != k:
        raise ValueError(f"SML statistics have {class_mean.numel()} means and {class_std.numel()} "
                         f"standard deviations but the logits have K={k} classes")
    if class_std.device.type == "cpu" and not bool((class_std > 0).all()):  # no GPU sync per frame
        raise ValueError("SML class standard deviations must all be > 0")
    class_mean, class_std = class_mean.to(logits.device), class_std.to(logits.device)
    max_logit, pred = logits.float().max(dim=1)
    s = -(max_logit - class_mean[pred]) / class_std[pred]
    return s.unsqueeze(1), pred


def _dilate_cross(mask: torch.Tensor) -> torch.Tensor:
    """Binary dilation of a bool B×H×W mask with the 3×3 cross (4-neighbourhood), outside = False.

    Shifted in-place ORs on bools: a max-pool on a float copy costs ~10× more on CPU at 1024×2048.
    """
    out = mask.clone()
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    out[:, :, 1:] |= mask[:, :, :-1]
    out[:, :, :-1] |= mask[:, :, 1:]
    return out


def _boundary_mask(pred: torch.Tensor) -> torch.Tensor:
    """Bool B×H×W: ``dilation(pred, cross) ≠ erosion(pred, 3×3 square)``, outside pixels ignored.

    The centre is in both windows, so this holds iff a 4-neighbour is larger than the centre or an
    8-neighbour is smaller: 12 shifted integer comparisons, exact for any label values.
    """
    p = pred
    b = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
    # (centre slice, neighbour slice) pairs for the offsets (−1, 0), (+1, 0), (0, −1), (0, +1)
    cross = (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
             ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
             ((slice(None), slice(None), slice(1, None)), (slice(None), slice(None), slice(None, -1))),
             ((slice(None), slice(None), slice(None, -1)), (slice(None), slice(None), slice(1, None))))
    diagonal = (((slice(None), slice(1, None), slice(1, None)), (slice(None), slice(None, -1), slice(None, -1))),
                ((slice(None), slice(None, -1), slice(None, -1)), (slice(None), slice(1, None), slice(1, None))),
                ((slice(None), slice(1, None), slice(None, -1)), (slice(None), slice(None, -1), slice(1, None))),
                ((slice(None), slice(None, -1), slice(1, None)), (slice(None), slice(1, None), slice(None, -1))))
    for centre, neighbour in cross:
        b[centre] |= p[neighbour] != p[centre]  # larger (dilation) or smaller (erosion) neighbour
    for centre, neighbour in diagonal:
        b[centre] |= p[neighbour] < p[centre]   # the diagonals are in the erosion's square only
    return b


def find_boundaries(pred: torch.Tensor) -> torch.Tensor:
    """Class boundaries of a label map: ``dilation(pred, cross) ≠ erosion(pred, 3×3 square)``.

    ``pred`` is B×H×W (integer class indices). Returns a B×1×H×W float map of 0/1.
    """
    if pred.dim() != 3:
        raise ValueError(f"prediction map must be B×H×W, got shape {tuple(pred.shape)}")
    return _boundary_mask(pred).unsqueeze(1).float()


def expand_boundaries(boundaries: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate a 0/1 B×1×H×W map with the L1 ball (diamond) of ``radius``, as ``radius`` cross dilations."""
    out = boundaries[:, 0] != 0
    for _ in range(radius):
        out = _dilate_cross(out)
    return out.unsqueeze(1).to(boundaries.dtype)


def _box_sum3(x: torch.Tensor) -> torch.Tensor:
    """Sum over each 3×3 window after replication padding of 1 (x is N×H×W), as two separable
    3-tap sums of shifted views (a 1-channel conv2d is im2col-bound on CPU)."""
    x = F.pad(x.unsqueeze(1), (1, 1, 1, 1), mode="replicate")[:, 0]
    rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]
    return rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]


def boundary_suppression(score: torch.Tensor, pred: torch.Tensor, width: int = SML_BOUNDARY_WIDTH,
                         iterations: int = SML_BOUNDARY_ITERATIONS) -> torch.Tensor:
    """SML boundary suppression (spec section 7).

    Boundaries ``B`` of the predicted class map are found once. At iteration i the boundary is
    expanded by radius ``r_i = width − (width/iterations)·i − 1`` (``r = 0`` at the last iteration);
    every pixel in the expanded boundary takes the mean of the *non-boundary* pixels of its 3×3
    window (replication padding), or keeps its value when there are none. Only boundary pixels
    change. ``score`` is B×C×H×W (C channels share the class map ``pred`` B×H×W); the operation is
    linear in ``score`` for a fixed ``pred``.
    """
    if score.dim() != 4:
        raise ValueError(f"score must be B×C×H×W, got shape {tuple(score.shape)}")
    b, c, h, w = score.shape
    if pred.shape != (b, h, w):
        raise ValueError(f"prediction map shape {tuple(pred.shape)} does not match score {tuple(score.shape)}")
    if width < 0 or iterations < 0:
        raise ValueError("boundary width and iterations must be >= 0")
    if iterations == 0:
        return score
    if width % iterations != 0:
        raise ValueError(f"boundary width {width} must be a multiple of the iterations {iterations}")
    step = width // iterations
    radii = [0 if (width == 0 or i == iterations - 1) else width - step * i - 1 for i in range(iterations)]
    # The expanded boundaries are nested (radius r is the cross dilation of radius r − 1): build
    # each once, max(radii) dilations in all, instead of r dilations per iteration.
    expanded = [_boundary_mask(pred)]
    for _ in range(max(radii)):
        expanded.append(_dilate_cross(expanded[-1]))
    out = score.float()
    for radius in radii:
        boundary = expanded[radius].unsqueeze(1)                  # B×1×H×W bool
        non_boundary = (~boundary).to(out.dtype)
        total = _box_sum3((out * non_boundary).reshape(b * c, h, w)).reshape(b, c, h, w)
        count = _box_sum3(non_boundary[:, 0]).unsqueeze(1)       # exact small integers
        mean = torch.where(count == 0, out, total / count.clamp_min(1.0))
        out = torch.where(boundary, mean, out)
    return out


def gaussian_kernel(size: int = SML_SMOOTHING_KERNEL, sigma: float = SML_SMOOTHING_SIGMA) -> torch.Tensor:
    """Normalised size×size Gaussian (sum 1), centred at (size−1)/2."""
    g = _gaussian_taps(size, sigma)
    return (g[:, None] * g[None, :]).float()


def _gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian (float64, sum 1): the 2-D kernel is its outer product."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def dilated_smoothing(score: torch.Tensor, kernel_size: int = SML_SMOOTHING_KERNEL,
                      sigma: float = SML_SMOOTHING_SIGMA, dilation: int = SML_SMOOTHING_DILATION,
                      ) -> torch.Tensor:
    """Dilated Gaussian smoothing: replication padding of ``dilation·(k−1)/2`` px (18 for the
    defaults), then a k×k Gaussian with the given dilation. Output has the input size.

    The Gaussian is separable: a vertical then a horizontal k-tap pass, each a weighted sum of
    shifted views (2k multiply-adds per pixel instead of k², and no im2col of a 1-channel conv).
    """
    if score.dim() != 4:
        raise ValueError(f"score must be B×C×H×W, got shape {tuple(score.shape)}")
    if kernel_size % 2 != 1:
        raise ValueError(f"smoothing kernel size must be odd, got {kernel_size}")
    b, c, h, w = score.shape
    pad = dilation * (kernel_size - 1) // 2
    taps = _gaussian_taps(kernel_size, sigma).tolist()
    x = F.pad(score.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode="replicate")[:, 0]
    rows = x[:, :h] * taps[0]
    for i in range(1, kernel_size):
        rows.add_(x[:, i * dilation:i * dilation + h], alpha=taps[i])
    out = rows[:, :, :w] * taps[0]
    for i in range(1, kernel_size):
        out.add_(rows[:, :, i * dilation:i * dilation + w], alpha=taps[i])
    return out.reshape(b, c, h, w)


def sml_postprocess(score: torch.Tensor, pred: torch.Tensor, boundary_width: int = SML_BOUNDARY_WIDTH,
                    boundary_iterations: int = SML_BOUNDARY_ITERATIONS, smoothing: bool = True,
                    ) -> torch.Tensor:
    """Boundary suppression then dilated smoothing (the order of the SML paper and spec)."""
    out = boundary_suppression(score, pred, boundary_width, boundary_iterations)
    if smoothing:
        out = dilated_smoothing(out)
    return out


def sml_score(logits: torch.Tensor, class_mean, class_std, boundary_width: int = SML_BOUNDARY_WIDTH,
              boundary_iterations: int = SML_BOUNDARY_ITERATIONS, smoothing: bool = True,
              ) -> torch.Tensor:
    """Standardized max logit, anomaly-signed: standardise → boundary suppression → smoothing.

    ``class_mean``/``class_std`` are μ_c and σ_c of the max logit over training pixels predicted as
    class c (``TeacherStats``). Returns B×1×H×W, unbounded.
    """
    s, pred = standardized_max_logit(logits, class_mean, class_std)
    return sml_postprocess(s, pred, boundary_width, boundary_iterations, smoothing)


def sml_score_from_stats(logits: torch.Tensor, stats) -> torch.Tensor:
    """:func:`sml_score` with μ_c, σ_c and the post-processing of a ``TeacherStats`` (the registered
    ``sml`` teacher)."""
    if stats is None or not stats.has_class_stats:
        raise ValueError("the sml score needs class-wise max-logit statistics (a teacher stats "
                         "file made by `csl-ros teacher fit-stats`)")
    return sml_score(logits, stats.class_mean, stats.class_std, **stats.sml_params)


def compute_score(name: str, logits: torch.Tensor, stats=None) -> torch.Tensor:
    """Raw score ``name`` (a registered teacher, ``TEACHERS``) of ``logits``; a score that needs
    statistics (SML) gets ``stats`` (a TeacherStats)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown score function {name!r}; choose one of {', '.join(SCORE_FUNCTIONS)}")
    entry = TEACHERS.entry(name)
    score = entry.load()
    return score(logits, stats) if entry.needs_stats else score(logits)
