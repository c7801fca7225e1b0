"""Global calibration of raw teacher scores to [0, 1] (spec section 4.4).

CSL's structure-constrained fusion multiplies a region mean by the pixel score (Eq. 3), so the teacher
map D must be non-negative, on a common [0, 1] scale, and comparable across images (AP and FPR95 pool
the pixels of a whole dataset). Hence one **global** monotone map per teacher, fitted once on
in-distribution pixels and stored with the teacher. Methods:

``logistic`` (default for unbounded scores)
    ``D = sigmoid((s − q99) / τ)`` with ``τ = (q99 − q50) / ln 99``, where q50/q99 are the median and
    99th percentile of the score on in-distribution pixels. So ``D(q50) = 0.01`` and ``D(q99) = 0.5``:
    D ≥ 0.5 reads "more anomalous than 99 % of in-distribution pixels", most ID pixels sit near 0
    like the probabilistic teachers of the paper (ObsNet, DaCUP), and the map is *strictly*
    increasing, so it does not change the pixel ranking (AP/FPR95 of the teacher alone are unchanged)
    up to float32 resolution: values stay distinct below 1 up to about ``q99 + 3.6·(q99 − q50)``
    (16.6 τ), far beyond where in-distribution pixels lie.
``quantile_linear``
    ``D = clip((s − q01)/(q99 − q01), 0, 1)``, the spec's first example. It saturates: the top 1 % of
    ID pixels and every anomaly above them tie at 1, which costs AP, hence not the default.
``affine``
    ``D = clip(scale·s + offset, 0, 1)``: a declared map (RbA: ``scale = offset = 1``, i.e.
    ``clip(1 − Σ_c tanh(l_c), 0, 1)``), or fitted like quantile_linear (q01 → 0, q99 → 1) for a
    ready-made ONNX map with another range.
``identity``
    ``D = clip(s, 0, 1)`` for scores that are already probabilities (MSP, entropy, ready-made
    anomaly maps).
``per_image_minmax``
    ``D = (s − min_image)/(max_image − min_image)``. **Ablation only**: it makes scores of different
    images incomparable, which is wrong for pooled metrics. It is never chosen by default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

CALIBRATION_METHODS = ("logistic", "quantile_linear", "affine", "identity", "per_image_minmax")
# Methods whose parameters come from in-distribution data (the others need none).
FITTED_METHODS = ("logistic", "quantile_linear", "affine")


@dataclass(frozen=True)
class Calibration:
    """A monotone map from raw scores to [0, 1]; ``params`` holds the fitted constants."""

    method: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose one of "
                             f"{', '.join(CALIBRATION_METHODS)}")
        need = {"logistic": ("center", "scale"), "quantile_linear": ("low", "high"),
                "affine": ("scale", "offset")}.get(self.method, ())
        missing = [k for k in need if k not in self.params]
        if missing:
            raise ValueError(f"{self.method} calibration needs parameter(s) {', '.join(missing)}")
        for k in need:
            if not math.isfinite(float(self.params[k])):
                raise ValueError(f"{self.method} calibration parameter {k} is not finite")
        if self.method in ("logistic", "affine") and not float(self.params["scale"]) > 0:
            raise ValueError(f"{self.method} calibration needs scale > 0, got {self.params['scale']}")
        if self.method == "quantile_linear" and not float(self.params["high"]) > float(self.params["low"]):
            raise ValueError("quantile_linear calibration needs high > low, got "
                             f"low={self.params['low']} high={self.params['high']}")

    @property
    def is_global(self) -> bool:
        """False only for the per-image min–max ablation."""
        return self.method != "per_image_minmax"

    def __call__(self, score: torch.Tensor) -> torch.Tensor:
        """Map a B×…  raw score tensor to [0, 1] (float32)."""
        s = score.float()
        if self.method == "logistic":
            return torch.sigmoid((s - float(self.params["center"])) / float(self.params["scale"]))
        if self.method == "quantile_linear":
            lo, hi = float(self.params["low"]), float(self.params["high"])
            return ((s - lo) / (hi - lo)).clamp(0.0, 1.0)
        if self.method == "affine":
            return (s * float(self.params["scale"]) + float(self.params["offset"])).clamp(0.0, 1.0)
        if self.method == "identity":
            return s.clamp(0.0, 1.0)
        # per_image_minmax (ablation): each image of the batch on its own.
        flat = s.reshape(s.shape[0], -1)
        lo = flat.amin(dim=1).view(-1, *([1] * (s.dim() - 1)))
        hi = flat.amax(dim=1).view(-1, *([1] * (s.dim() - 1)))
        return ((s - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)

    def to_dict(self) -> dict:
        return {"method": self.method, **{k: float(v) for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        if not isinstance(d, dict) or "method" not in d:
            raise ValueError(f"calibration entry must be a mapping with a 'method', got {d!r}")
        return cls(d["method"], {k: float(v) for k, v in d.items() if k != "method"})


def fit_calibration(method: str, quantiles: dict[float, float]) -> Calibration:
    """Build a calibration from in-distribution score quantiles ``{p: q_p}`` (needs 0.01/0.5/0.99).

    Raises ValueError when the ID scores are degenerate (e.g. all equal), since no monotone map can
    then be fitted.
    """
    if method in ("identity", "per_image_minmax"):
        return Calibration(method)
    if method not in FITTED_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of "
                         f"{', '.join(CALIBRATION_METHODS)}")
    try:
        q01, q50, q99 = (float(quantiles[p]) for p in (0.01, 0.5, 0.99))
    except KeyError as exc:
        raise ValueError(f"calibration needs the 1st, 50th and 99th percentiles, missing {exc}") from None
    if method == "logistic":
        if not q99 > q50:
            raise ValueError(f"degenerate in-distribution scores (q50={q50}, q99={q99}): cannot fit "
                             "a logistic calibration")
        return Calibration("logistic", {"center": q99, "scale": (q99 - q50) / math.log(99.0)})
    if not q99 > q01:
        raise ValueError(f"degenerate in-distribution scores (q01={q01}, q99={q99}): cannot fit "
                         f"a {method} calibration")
    if method == "affine":
        return Calibration("affine", {"scale": 1.0 / (q99 - q01), "offset": -q01 / (q99 - q01)})
    return Calibration("quantile_linear", {"low": q01, "high": q99})
