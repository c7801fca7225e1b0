"""Tileable noise tiles shared by every frame (built once from a fixed seed, so deterministic).

Each tile is float32, zero mean, unit standard deviation, and wraps around seamlessly (filtered in the
Fourier domain), so it can be sampled with ``index & (size - 1)``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

_SPECS = {
    # name: (size, gaussian sigma in texels, seed)
    "fine": (512, 0.6, 11),     # asphalt grain, sensor-like detail
    "mid": (512, 3.0, 12),      # foliage, stains, patch edges
    "coarse": (256, 10.0, 13),  # large blotches, clouds, wear
}


def _filtered_noise(size: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    g = np.exp(-2.0 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    out = np.real(np.fft.ifft2(np.fft.fft2(white) * g))
    out = (out - out.mean()) / (out.std() + 1e-12)
    return out.astype(np.float32)


@lru_cache(maxsize=None)
def tile(name: str) -> np.ndarray:
    """The named noise tile ("fine", "mid" or "coarse"), read-only."""
    size, sigma, seed = _SPECS[name]
    t = _filtered_noise(size, sigma, seed)
    t.setflags(write=False)
    return t


@lru_cache(maxsize=None)
def flat_tile(name: str) -> tuple[np.ndarray, int]:
    """(flattened tile, log2 of its side) for fast ``take`` sampling."""
    t = tile(name)
    return t.ravel(), int(np.log2(t.shape[0]))


def sample(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Nearest-texel sample of a tile at float texel coordinates (a = column, b = row)."""
    flat, bits = flat_tile(name)
    m = (1 << bits) - 1
    idx = ((b.astype(np.int32) & m) << bits) | (a.astype(np.int32) & m)
    return flat.take(idx)


def sample_bilinear(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinearly interpolated sample of a tile (for smooth, magnified uses such as clouds)."""
    flat, bits = flat_tile(name)
    m = (1 << bits) - 1
    fa, fb = np.floor(a), np.floor(b)
    wa, wb = (a - fa).astype(np.float32), (b - fb).astype(np.float32)
    ia, ib = fa.astype(np.int64), fb.astype(np.int64)
    r0, r1 = (ib & m) << bits, ((ib + 1) & m) << bits
    c0, c1 = ia & m, (ia + 1) & m
    top = flat.take(r0 | c0) * (1 - wa) + flat.take(r0 | c1) * wa
    bot = flat.take(r1 | c0) * (1 - wa) + flat.take(r1 | c1) * wa
    return top * (1 - wb) + bot * wb


@lru_cache(maxsize=8)
def sensor_noise(h: int, w: int) -> np.ndarray:
    """A (h + 64, w + 64, 3) uint8 field of 128 + 16 N(0, 1); frames take random crops of it."""
    rng = np.random.default_rng(99)
    n = np.clip(128.0 + rng.standard_normal((h + 64, w + 64, 3)) * 16.0, 0, 255).astype(np.uint8)
    n.setflags(write=False)
    return n
