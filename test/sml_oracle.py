"""Test oracle: the SML boundary suppression and dilated smoothing as shipped before the speed-up
(issue 15), kept verbatim so that ``csl_ros.teachers.scores`` can be checked against it to 1e-5.

Max-pool morphology on float maps, a 1-channel 3×3 conv for the window sums and a 7×7 dilated conv
for the smoothing. Not used by the package.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SML_BOUNDARY_WIDTH = 4
SML_BOUNDARY_ITERATIONS = 4
SML_SMOOTHING_KERNEL = 7
SML_SMOOTHING_SIGMA = 1.0
SML_SMOOTHING_DILATION = 6


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
    """The pre-speed-up computation (argument checks left to the package's function)."""
    b, c, h, w = score.shape
    if iterations == 0:
        return score
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
    """The pre-speed-up computation: a k×k dilated Gaussian conv after replication padding."""
    b, c, h, w = score.shape
    pad = dilation * (kernel_size - 1) // 2
    kernel = gaussian_kernel(kernel_size, sigma).to(score.device, score.dtype)[None, None]
    x = F.pad(score.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(x, kernel, dilation=dilation).reshape(b, c, h, w)
