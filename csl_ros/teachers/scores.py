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


def _dilate_cross(x: torch.Tensor) -> torch.Tensor:
    """Grey dilation with the 3×3 cross (4-neighbourhood); outside pixels are ignored (geodesic)."""
    vertical = F.max_pool2d(x, kernel_size=(3, 1), stride=1, padding=(1, 0))
    horizontal = F.max_pool2d(x, kernel_size=(1, 3), stride=1, padding=(0, 1))
    return torch.maximum(vertical, horizontal)


def _erode_square(x: torch.Tensor) -> torch.Tensor:
    """Grey erosion with the 3×3 square; outside pixels are ignored (max-pool pads with −inf)."""
    return -F.max_pool2d(-x, kernel_size=3, stride=1, padding=1)


def find_boundaries(pred: torch.Tensor) -> torch.Tensor:
    """Class boundaries of a label map: ``dilation(pred, cross) ≠ erosion(pred, 3×3 square)``.

    ``pred`` is B×H×W (integer class indices). Returns a B×1×H×W float map of 0/1.
    """
    if pred.dim() != 3:
        raise ValueError(f"prediction map must be B×H×W, got shape {tuple(pred.shape)}")
    p = pred.unsqueeze(1).float()
    return (_dilate_cross(p) != _erode_square(p)).float()


def expand_boundaries(boundaries: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate a 0/1 map with the L1 ball (diamond) of ``radius``, as ``radius`` cross dilations."""
    out = boundaries
    for _ in range(radius):
        out = _dilate_cross(out)
    return out


def _box_sum3(x: torch.Tensor) -> torch.Tensor:
    """Sum over each 3×3 window after replication padding of 1 (x is N×1×H×W)."""
    ones = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), ones)


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
    boundaries = find_boundaries(pred)  # B×1×H×W
    out = score.reshape(b * c, 1, h, w).float()
    for i in range(iterations):
        radius = 0 if (width == 0 or i == iterations - 1) else width - step * i - 1
        non_boundary = (expand_boundaries(boundaries, radius) == 0).to(out.dtype)
        non_boundary = non_boundary.repeat_interleave(c, dim=0)  # (B·C)×1×H×W
        prev = out
        total = _box_sum3(prev * non_boundary)
        count = _box_sum3(non_boundary).round()
        mean = torch.where(count == 0, prev, total / count.clamp_min(1.0))
        out = torch.where(non_boundary == 0, mean, prev)
    return out.reshape(b, c, h, w)


def gaussian_kernel(size: int = SML_SMOOTHING_KERNEL, sigma: float = SML_SMOOTHING_SIGMA) -> torch.Tensor:
    """Normalised size×size Gaussian (sum 1), centred at (size−1)/2."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).float()


def dilated_smoothing(score: torch.Tensor, kernel_size: int = SML_SMOOTHING_KERNEL,
                      sigma: float = SML_SMOOTHING_SIGMA, dilation: int = SML_SMOOTHING_DILATION,
                      ) -> torch.Tensor:
    """Dilated Gaussian smoothing: replication padding of ``dilation·(k−1)/2`` px (18 for the
    defaults), then a k×k Gaussian conv with the given dilation. Output has the input size."""
    if score.dim() != 4:
        raise ValueError(f"score must be B×C×H×W, got shape {tuple(score.shape)}")
    if kernel_size % 2 != 1:
        raise ValueError(f"smoothing kernel size must be odd, got {kernel_size}")
    b, c, h, w = score.shape
    pad = dilation * (kernel_size - 1) // 2
    kernel = gaussian_kernel(kernel_size, sigma).to(score.device, score.dtype)[None, None]
    x = F.pad(score.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(x, kernel, dilation=dilation).reshape(b, c, h, w)


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
