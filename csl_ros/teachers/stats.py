"""Teacher statistics: SML class-wise max-logit statistics and global score calibrations.

``StatsAccumulator`` streams over in-distribution images once and produces a ``TeacherStats``:

* SML statistics (spec section 7): for each predicted class c, μ_c and the unbiased σ_c² of the max
  logit over the pixels whose argmax is c. Accumulated in float64 with Chan's parallel merge of
  (count, mean, M2) per batch, which is numerically stable for any number of pixels.
* Calibration quantiles for every score function, fitted **in the same pass** from a uniform pixel
  sample: each pixel gets a random key from a ``torch.Generator`` with a fixed seed and the
  ``reservoir_size`` pixels with the smallest keys are kept (bottom-k reservoir sampling; the sample
  is uniform without replacement and deterministic for a given seed and image order).
  The SML score of a pixel depends on μ/σ, which are only known at the end. Boundary suppression and
  smoothing are linear in the score for a fixed class map, so for each sampled pixel we store the
  post-processed basis maps ``L(−maxlogit·1[ĉ=c])`` and ``L(1[ĉ=c])`` for every class c; at the end
  ``SML = Σ_c L(−maxlogit·1_c)/σ_c + L(1_c)·μ_c/σ_c`` exactly, without a second pass.

The statistics are saved as a small JSON file; ``file_sha256`` gives the digest a manifest records.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from csl_ros.model.integrity import sha256_file as file_sha256  # noqa: F401 (re-exported helper)
from csl_ros.teachers.calibration import CALIBRATION_METHODS, Calibration, fit_calibration
from csl_ros.teachers.registry import TEACHERS, default_calibrations
from csl_ros.teachers.scores import SML_BOUNDARY_ITERATIONS, SML_BOUNDARY_WIDTH, check_logits, sml_postprocess

STATS_FORMAT = "csl_ros.teacher_stats"
STATS_VERSION = 1
QUANTILE_PROBS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def default_stats_path(checkpoint: str | os.PathLike) -> Path:
    """Where the statistics of a teacher checkpoint live by default: ``foo.safetensors`` →
    ``foo.stats.json`` (same for ``.pt``/``.pth``/``.onnx``)."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".stats.json")


@dataclass
class TeacherStats:
    """SML statistics and score calibrations of one teacher (one segmenter or ONNX model)."""

    num_classes: int                       # K of the logits; 1 for a one-channel anomaly map
    class_mean: list[float] | None = None  # μ_c of the max logit over pixels predicted as c
    class_var: list[float] | None = None   # unbiased σ_c²
    class_count: list[int] | None = None   # pixels predicted as c
    fallback_classes: list[int] = field(default_factory=list)  # < 2 pixels: pooled μ/σ² used
    sml_params: dict = field(default_factory=lambda: {"boundary_width": SML_BOUNDARY_WIDTH,
                                                      "boundary_iterations": SML_BOUNDARY_ITERATIONS,
                                                      "smoothing": True})
    quantiles: dict = field(default_factory=dict)     # score -> {p: q_p} on ID pixels
    moments: dict = field(default_factory=dict)       # score -> {"mean", "std"}
    calibration: dict = field(default_factory=dict)   # score -> Calibration
    segmenter_sha256: str | None = None    # digest of the model file the stats were fitted with
    fit_info: dict = field(default_factory=dict)      # data, frames, size, seed, reservoir, ...

    @property
    def has_class_stats(self) -> bool:
        return self.class_mean is not None and self.class_var is not None

    @property
    def class_std(self) -> torch.Tensor:
        if not self.has_class_stats:
            raise ValueError("these teacher statistics have no class-wise max-logit statistics")
        return torch.tensor(self.class_var, dtype=torch.float64).sqrt().float()

    def calibration_for(self, score: str, method: str | None = None) -> Calibration:
        """The stored calibration of ``score``, or a ``method`` refitted from the stored quantiles."""
        if method is None:
            fixed = TEACHERS.entry(score).fixed_calibration if score in TEACHERS else None
            if fixed is not None and score not in self.calibration:
                return Calibration.from_dict(dict(fixed))  # a fixed mapping, nothing to fit
            if score not in self.calibration:
                raise ValueError(f"the teacher statistics have no calibration for score {score!r} "
                                 f"(have: {', '.join(sorted(self.calibration)) or 'none'})")
            return self.calibration[score]
        if method in ("identity", "per_image_minmax"):
            return Calibration(method)
        if score not in self.quantiles:
            raise ValueError(f"the teacher statistics have no quantiles for score {score!r}; "
                             f"cannot fit a {method} calibration")
        return fit_calibration(method, self.quantiles[score])

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": STATS_FORMAT, "version": STATS_VERSION,
            "num_classes": self.num_classes,
            "class_mean": self.class_mean, "class_var": self.class_var, "class_count": self.class_count,
            "fallback_classes": self.fallback_classes,
            "sml_params": self.sml_params,
            "quantiles": {s: {repr(float(p)): float(q) for p, q in qs.items()}
                          for s, qs in self.quantiles.items()},
            "moments": self.moments,
            "calibration": {s: c.to_dict() for s, c in self.calibration.items()},
            "segmenter_sha256": self.segmenter_sha256,
            "fit_info": self.fit_info,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "teacher statistics") -> "TeacherStats":
        if not isinstance(d, dict) or d.get("format") != STATS_FORMAT:
            raise ValueError(f"{source}: not a csl_ros teacher statistics file "
                             f"(format {d.get('format') if isinstance(d, dict) else None!r})")
        if d.get("version") != STATS_VERSION:
            raise ValueError(f"{source}: unsupported statistics version {d.get('version')!r} "
                             f"(this csl_ros reads version {STATS_VERSION})")
        try:
            k = int(d["num_classes"])
            stats = cls(
                num_classes=k,
                class_mean=None if d.get("class_mean") is None else [float(v) for v in d["class_mean"]],
                class_var=None if d.get("class_var") is None else [float(v) for v in d["class_var"]],
                class_count=None if d.get("class_count") is None else [int(v) for v in d["class_count"]],
                fallback_classes=[int(v) for v in d.get("fallback_classes", [])],
                sml_params=dict(d.get("sml_params") or {}),
                quantiles={s: {float(p): float(q) for p, q in qs.items()}
                           for s, qs in (d.get("quantiles") or {}).items()},
                moments=dict(d.get("moments") or {}),
                calibration={s: Calibration.from_dict(c) for s, c in (d.get("calibration") or {}).items()},
                segmenter_sha256=d.get("segmenter_sha256"),
                fit_info=dict(d.get("fit_info") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: malformed teacher statistics: {exc}") from None
        allowed = {"boundary_width", "boundary_iterations", "smoothing"}
        if set(stats.sml_params) - allowed:
            raise ValueError(f"{source}: unknown sml_params key(s) "
                             f"{', '.join(sorted(set(stats.sml_params) - allowed))}")
        if stats.has_class_stats:
            if len(stats.class_mean) != k or len(stats.class_var) != k:
                raise ValueError(f"{source}: class statistics have {len(stats.class_mean)} means and "
                                 f"{len(stats.class_var)} variances for num_classes={k}")
            if not all(math.isfinite(m) for m in stats.class_mean) or not all(
                    math.isfinite(v) and v > 0 for v in stats.class_var):
                raise ValueError(f"{source}: class means must be finite and variances > 0")
        return stats

    def save(self, path: str | os.PathLike) -> str:
        """Write JSON and return its SHA-256."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return file_sha256(path)

    @classmethod
    def load(cls, path: str | os.PathLike, expected_sha256: str | None = None) -> "TeacherStats":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher statistics file not found: {path}")
        if expected_sha256 is not None:
            digest = file_sha256(path)
            if digest != expected_sha256.lower():
                raise ValueError(f"{path}: SHA-256 {digest} does not match the expected "
                                 f"{expected_sha256} (file modified or corrupted)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON teacher statistics: {exc}") from None
        return cls.from_dict(data, source=str(path))


class StatsAccumulator:
    """Streams batches of logits (or one-channel anomaly maps) into a ``TeacherStats``.

    ``update_logits(z)`` with z B×K×H×W from a closed-set segmenter, or ``update_map(m)`` with m
    B×1×H×W from an ONNX teacher that outputs a ready anomaly map; one kind per accumulator.
    """

    def __init__(self, num_classes: int, *, reservoir_size: int = 200_000, seed: int = 0,
                 sml_params: dict | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if reservoir_size < 100:
            raise ValueError(f"reservoir_size must be >= 100, got {reservoir_size}")
        self.num_classes = num_classes
        self.reservoir_size = int(reservoir_size)
        self.seed = int(seed)
        self.sml_params = dict(sml_params or {"boundary_width": SML_BOUNDARY_WIDTH,
                                              "boundary_iterations": SML_BOUNDARY_ITERATIONS,
                                              "smoothing": True})
        self._gen = torch.Generator().manual_seed(self.seed)
        self._kind: str | None = None
        # Registered scores computed per pixel from the logits alone; SML (needs_stats) is
        # reconstructed from its basis maps at the end.
        self.pixel_scores = TEACHERS.names(needs_stats=False, fixed_calibration=None)
        k = num_classes
        self._count = torch.zeros(k, dtype=torch.float64)
        self._mean = torch.zeros(k, dtype=torch.float64)
        self._m2 = torch.zeros(k, dtype=torch.float64)
        self._keys = torch.empty(0, dtype=torch.float64)
        self._values = torch.empty(0, 0, dtype=torch.float32)
        self.pixels = 0
        self.images = 0

    # ---- reservoir ---------------------------------------------------------------------------
    def _threshold(self) -> float:
        if self._keys.numel() < self.reservoir_size:
            return math.inf
        return float(self._keys.max())

    def _candidates(self, n_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the keys of one image's pixels; return (indices that may enter, their keys)."""
        keys = torch.rand(n_pixels, generator=self._gen, dtype=torch.float64)
        idx = torch.nonzero(keys < self._threshold(), as_tuple=False).flatten()
        return idx, keys[idx]

    def _push(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self._values.numel() == 0:
            self._values = torch.empty(0, values.shape[1], dtype=torch.float32)
        self._keys = torch.cat([self._keys, keys])
        self._values = torch.cat([self._values, values.float().cpu()])
        if self._keys.numel() > self.reservoir_size:
            kept = torch.topk(self._keys, self.reservoir_size, largest=False).indices
            self._keys, self._values = self._keys[kept], self._values[kept]

    def _set_kind(self, kind: str) -> None:
        if self._kind not in (None, kind):
            raise ValueError(f"this accumulator already holds {self._kind} data; cannot add {kind}")
        self._kind = kind

    # ---- updates -----------------------------------------------------------------------------
    @torch.no_grad()
    def update_logits(self, logits: torch.Tensor) -> None:
        """Add a batch of closed-set logits B×K×H×W (all pixels count as in-distribution)."""
        check_logits(logits)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have K={logits.shape[1]} classes, accumulator expects "
                             f"{self.num_classes}")
        self._set_kind("logits")
        logits = logits.float()
        k = self.num_classes
        ml, pred = logits.max(dim=1)  # B×H×W
        # Class-wise (count, mean, M2), merged with Chan et al.'s parallel update in float64.
        x = ml.flatten().double()
        c = pred.flatten()
        cnt = torch.bincount(c, minlength=k).double()
        mean_b = torch.bincount(c, weights=x, minlength=k) / cnt.clamp_min(1)
        m2_b = torch.bincount(c, weights=(x - mean_b[c]) ** 2, minlength=k)
        cnt, mean_b, m2_b = cnt.cpu(), mean_b.cpu(), m2_b.cpu()
        n = self._count + cnt
        delta = mean_b - self._mean
        safe_n = n.clamp_min(1)
        self._mean = torch.where(n > 0, self._mean + delta * cnt / safe_n, self._mean)
        self._m2 = self._m2 + m2_b + delta ** 2 * self._count * cnt / safe_n
        self._count = n

        raw = torch.cat([TEACHERS.get(name)(logits) for name in self.pixel_scores], dim=1)  # B×J×H×W
        b, _, h, w = logits.shape
        for i in range(b):
            idx, keys = self._candidates(h * w)
            if idx.numel() == 0:
                continue
            idx_dev = idx.to(logits.device)
            simple = raw[i].reshape(raw.shape[1], -1)[:, idx_dev]  # J×n
            basis = self._sml_basis(ml[i], pred[i], idx_dev)  # 2K×n
            self._push(keys, torch.cat([simple, basis]).T)
        self.pixels += b * h * w
        self.images += b

    def _sml_basis(self, ml: torch.Tensor, pred: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``[L(−ml·1_c) for c] + [L(1_c) for c]`` at pixels ``idx`` of one image (2K×n).

        L = boundary suppression + smoothing for this image's class map; classes absent from the
        image contribute zero maps, so only present classes are computed (in chunks, to bound memory).
        """
        k = self.num_classes
        out = torch.zeros(2 * k, idx.numel(), dtype=torch.float32, device=ml.device)
        present = torch.unique(pred).tolist()
        chunk = 8
        for start in range(0, len(present), chunk):
            cls = present[start:start + chunk]
            onehot = torch.stack([(pred == c).float() for c in cls])  # P×H×W
            maps = torch.cat([-ml.unsqueeze(0) * onehot, onehot]).unsqueeze(0)  # 1×2P×H×W
            post = sml_postprocess(maps, pred.unsqueeze(0), **self.sml_params)[0]
            post = post.reshape(2 * len(cls), -1)[:, idx]
            rows = torch.tensor(cls, device=ml.device)
            out[rows] = post[:len(cls)]
            out[rows + k] = post[len(cls):]
        return out

    @torch.no_grad()
    def update_map(self, score_map: torch.Tensor) -> None:
        """Add a batch of one-channel anomaly maps B×1×H×W (an ONNX teacher's ready output)."""
        if score_map.dim() != 4 or score_map.shape[1] != 1:
            raise ValueError(f"anomaly maps must be B×1×H×W, got shape {tuple(score_map.shape)}")
        self._set_kind("map")
        b, _, h, w = score_map.shape
        for i in range(b):
            idx, keys = self._candidates(h * w)
            if idx.numel():
                self._push(keys, score_map[i].reshape(1, -1)[:, idx.to(score_map.device)].T)
        self.pixels += b * h * w
        self.images += b

    # ---- result ------------------------------------------------------------------------------
    def class_statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """(mean, unbiased var, count, fallback classes) in float64; classes with < 2 pixels or zero
        variance get the pooled statistics of all pixels."""
        n = self._count
        total = float(n.sum())
        if total < 2:
            raise ValueError("too few pixels to compute max-logit statistics (need at least 2)")
        pooled_mean = float((n * self._mean).sum() / total)
        pooled_m2 = float((self._m2 + n * (self._mean - pooled_mean) ** 2).sum())
        pooled_var = pooled_m2 / (total - 1)
        if not pooled_var > 0:
            raise ValueError("the max logit is constant over all pixels; SML statistics are undefined")
        var = torch.where(n >= 2, self._m2 / (n - 1).clamp_min(1), torch.zeros_like(n))
        fallback = [int(c) for c in range(self.num_classes) if not (n[c] >= 2 and var[c] > 0)]
        mean = self._mean.clone()
        for c in fallback:
            mean[c], var[c] = pooled_mean, pooled_var
        return mean, var, n, fallback

    def finalize(self, calibration: str = "logistic", map_calibration: str = "identity",
                 segmenter_sha256: str | None = None, **fit_info) -> TeacherStats:
        """Compute μ/σ², the score quantiles and the calibrations; ``calibration`` is the method for
        the unbounded registered scores (maxlogit, sml, energy), ``map_calibration`` for ONNX maps."""
        for m in (calibration, map_calibration):
            if m not in CALIBRATION_METHODS or m == "per_image_minmax":
                raise ValueError(f"calibration method {m!r} cannot be stored with a teacher; choose "
                                 "logistic, quantile_linear or identity")
        if self._kind is None or self._values.shape[0] == 0:
            raise ValueError("no data was accumulated; cannot fit teacher statistics")
        samples: dict[str, np.ndarray] = {}
        stats = TeacherStats(num_classes=self.num_classes, sml_params=dict(self.sml_params),
                             segmenter_sha256=segmenter_sha256)
        if self._kind == "logits":
            mean, var, count, fallback = self.class_statistics()
            std = var.sqrt()
            k = self.num_classes
            v = self._values.double()
            for j, name in enumerate(self.pixel_scores):
                samples[name] = v[:, j].numpy()
            j = len(self.pixel_scores)
            a, b = v[:, j:j + k], v[:, j + k:j + 2 * k]
            samples["sml"] = (a / std + b * (mean / std)).sum(dim=1).numpy()
            stats.class_mean = mean.tolist()
            stats.class_var = var.tolist()
            stats.class_count = [int(c) for c in count.tolist()]
            stats.fallback_classes = fallback
            methods = default_calibrations()
            for name in TEACHERS.names(bounded=False):
                methods[name] = calibration
        else:
            stats.sml_params = {}
            samples["map"] = self._values[:, 0].double().numpy()
            methods = {"map": map_calibration}
        for name, s in samples.items():
            qs = np.quantile(s, QUANTILE_PROBS)
            stats.quantiles[name] = {float(p): float(q) for p, q in zip(QUANTILE_PROBS, qs)}
            stats.moments[name] = {"mean": float(s.mean()), "std": float(s.std())}
            stats.calibration[name] = fit_calibration(methods[name], stats.quantiles[name])
        stats.fit_info = {"images": self.images, "pixels": self.pixels,
                          "sampled_pixels": int(self._values.shape[0]),
                          "reservoir_size": self.reservoir_size, "seed": self.seed,
                          "sampling": "bottom-k reservoir with torch.Generator keys", **fit_info}
        return stats
