"""Synthetic negatives on the road, for outlier exposure without any OOD data.

A closed-set segmenter trained on in-distribution frames only is confident on most unseen objects: a
blue box on the road is "car" or "building" to it, so every logit teacher (MSP, max logit, SML,
entropy, energy) scores it as known. Outlier exposure (Hendrycks et al. 2019) fixes this by showing
the network outliers during training; SMIYC methods usually paste COCO/ADE20K objects (Meta-OoD,
PEBAL, RbA+OE). We use no outside data and none of the test obstacles: the negatives are
CutPaste-style (Li et al., CVPR 2021) patches cut from *other in-distribution frames* with a random
polygon outline and a random colour gain, standing on a road pixel of the crop. The network learns
"something that does not belong here, on the road" without ever seeing an obstacle of the test
generator (``csl_ros.data.synthroad.obstacles`` is not used). The loss on their pixels is the
entropy maximisation of Chan et al. (ICCV 2021, Meta-OoD): cross-entropy against the uniform
distribution over the K classes.

A second kind (``colour_fraction`` of the negatives) is a *synthetic colour field* instead of a source
patch: a random colour with a vertical shading ramp and low-frequency multiplicative noise (the
procedural textures of DRAEM, Zavrtanik et al., ICCV 2021, without its texture dataset). The source
patches are all in-distribution content, so alone they teach "known scenery out of place"; an
object of a plain colour that no class has (turquoise, orange) is neither, and a closed-set model
keeps calling it known. Colour fields cover that, still without OOD data or the test generator.

A third kind (``road_colour_fraction``) is a colour field in the crop's *own road colour* under another
illumination (its mean road colour times a gain of ``ROAD_COLOUR_GAIN``): debris the colour of the
asphalt (a chunk of it, a tyre tread, grey plastic), which neither a source patch nor a random colour
shows often. Only its outline, shading and contact shadow tell it from the road.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..data.synthroad.labels import ROAD as ROAD_TRAIN_ID  # Cityscapes trainId of road
from ..data.synthroad.world import WHITE_PAINT, YELLOW_PAINT
from .config import COLOUR_SATURATION, COLOUR_VALUE, NEGATIVE_ASPECT

MAX_SOURCE_ROAD_FRACTION = 0.3   # a patch that is mostly road would teach "road is anomalous"
SOURCE_TRIES = 4
# Road paint: the white and yellow of synthroad's lane markings and zebra crossings, the usual marking
# colours on real roads too; illumination from shade to sun scales them by PAINT_GAIN_RANGE.
ROAD_PAINT_COLOURS = (WHITE_PAINT, YELLOW_PAINT)
PAINT_GAIN_RANGE = (0.6, 1.4)
PAINT_COLOUR_TOLERANCE = 0.12
PAINT_OVER_ROAD = 1.3
ROAD_COLOUR_GAIN = (0.6, 1.4)    # road-coloured negatives: shade to sun on the crop's road colour
ROAD_COLOUR_TINT = 0.03          # and a small per-channel tint


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, n: int) -> int:
    return int(torch.randint(0, max(1, n), (), generator=gen))


def polygon_mask(h: int, w: int, gen: torch.Generator) -> np.ndarray:
    """(h, w) bool: a random star-shaped polygon filling most of the box (6-11 vertices)."""
    k = 6 + _randint(gen, 6)
    angles = np.sort(torch.rand(k, generator=gen).numpy().astype(np.float64) * 2 * math.pi)
    radii = 0.55 + 0.45 * torch.rand(k, generator=gen).numpy().astype(np.float64)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    pts = np.stack([cx + radii * np.cos(angles) * w / 2.0, cy + radii * np.sin(angles) * h / 2.0], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def colour_field(h: int, w: int, gen: torch.Generator,
                 saturation: tuple[float, float] = COLOUR_SATURATION,
                 value: tuple[float, float] = COLOUR_VALUE, base: torch.Tensor | None = None) -> torch.Tensor:
    """(3, h, w) float in [0, 1]: a random colour (uniform hue, ``saturation`` (default 0.2-1), HSV
    ``value`` (default 0.15-0.95)), or ``base`` (3,) when given, shaded by a vertical ramp (lit top,
    darker base) and low-frequency noise (a 2-6 cell grid upsampled bicubic), the look of a painted or
    weathered solid object."""
    rgb = base.float() if base is not None else torch.tensor(
        colorsys.hsv_to_rgb(_uniform(gen, 0, 1), _uniform(gen, *saturation), _uniform(gen, *value)))
    ramp = torch.linspace(_uniform(gen, 1.0, 1.3), _uniform(gen, 0.6, 1.0), h).view(1, h, 1)
    cells = 2 + _randint(gen, 5)
    noise = 1.0 + _uniform(gen, 0.05, 0.35) * (2 * torch.rand(1, 1, cells, cells, generator=gen) - 1)
    noise = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0]
    return (rgb.view(3, 1, 1).float() * ramp * noise).clamp_(0, 1)


def _source_patch(sources, gen: torch.Generator, ph: int, pw: int, exclude_source_road: bool
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A (3, ph, pw) patch of a random source frame at the source's own scale, resized, with a random
    colour gain, and the (bh, bw) mask of its non-road source pixels with ``exclude_source_road`` (else
    None); (None, None) when the drawn box is mostly road (``MAX_SOURCE_ROAD_FRACTION``) or too small."""
    src_img, src_lab = sources[_randint(gen, len(sources))]
    sh, sw = src_lab.shape
    if sh < 4 or sw < 4:
        return None, None
    bh, bw = min(sh, max(4, ph)), min(sw, max(4, pw))
    y0, x0 = _randint(gen, sh - bh + 1), _randint(gen, sw - bw + 1)
    src_road = src_lab[y0:y0 + bh, x0:x0 + bw] == ROAD_TRAIN_ID
    if float(src_road.mean()) > MAX_SOURCE_ROAD_FRACTION:
        return None, None
    patch = torch.from_numpy(np.ascontiguousarray(src_img[y0:y0 + bh, x0:x0 + bw])).permute(2, 0, 1)
    patch = F.interpolate(patch.float().div_(255.0)[None], size=(ph, pw), mode="bilinear", align_corners=False)[0]
    gain = torch.tensor([_uniform(gen, 0.6, 1.4) for _ in range(3)]).view(3, 1, 1)
    patch = (patch * gain * _uniform(gen, 0.5, 1.3)).clamp_(0, 1)
    return patch, (torch.from_numpy(~src_road) if exclude_source_road else None)


def road_paint_colour(colours: torch.Tensor) -> torch.Tensor:
    """(...,) bool: which RGB ``colours`` (..., 3) in [0, 1] are a road paint colour
    (``ROAD_PAINT_COLOURS``) under some illumination: ``colour ≈ k * paint`` with k in
    ``PAINT_GAIN_RANGE`` and a residual below ``PAINT_COLOUR_TOLERANCE`` of the colour's norm."""
    colours = colours.float()
    paints = torch.tensor(ROAD_PAINT_COLOURS, dtype=torch.float32)            # (P, 3)
    k = (colours @ paints.T) / (paints * paints).sum(1)                       # (..., P) least-squares gains
    residual = (colours[..., None, :] - k[..., None] * paints).norm(dim=-1)    # (..., P)
    residual = residual / colours.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    lo, hi = PAINT_GAIN_RANGE
    return ((k >= lo) & (k <= hi) & (residual < PAINT_COLOUR_TOLERANCE)).any(-1)


def looks_like_road_paint(colour: torch.Tensor) -> bool:
    """Whether the RGB ``colour`` (3,) is a road paint colour (:func:`road_paint_colour`). Why it
    matters: a negative of paint's colour on the road is a lane marking or a zebra stripe to the eye,
    and teaching it as anomalous makes every marking an obstacle."""
    return bool(road_paint_colour(colour))


def road_paint_mask(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(H, W) bool: the road pixels (trainId ``ROAD_TRAIN_ID``) of an H×W×3 uint8 RGB frame whose colour
    is road paint (:func:`road_paint_colour`) and that are brighter than ``PAINT_OVER_ROAD`` times the
    frame's median road brightness (HSV value): its lane markings and zebra stripes, which the labels call road like
    the asphalt around them (a light grey road alone is white paint's colour in the shade)."""
    road = label == ROAD_TRAIN_ID
    mask = np.zeros(label.shape, bool)
    if road.any():
        colours = torch.from_numpy(image[road].astype(np.float32) / 255.0)
        brightness = colours.amax(1)   # HSV value: saturated yellow is as bright as white
        mask[road] = (road_paint_colour(colours) & (brightness > PAINT_OVER_ROAD * brightness.median())).numpy()
    return mask


def paste_negatives(img: torch.Tensor, lab: torch.Tensor, sources, gen: torch.Generator, count: int,
                    size_range: tuple[float, float], *, colour_fraction: float = 0.0,
                    exclude_source_road: bool = False, avoid_road_paint: bool = False,
                    shadow: bool = False, colour_saturation: tuple[float, float] = COLOUR_SATURATION,
                    colour_value: tuple[float, float] = COLOUR_VALUE,
                    aspect_range: tuple[float, float] = NEGATIVE_ASPECT,
                    road_colour_fraction: float = 0.0) -> torch.Tensor:
    """Paste ``count`` negatives onto a road pixel of the crop ``img`` (3×h×w float in [0, 1], edited
    in place); returns the (h, w) bool mask of the pasted pixels.

    ``sources``: indexable of (H×W×3 uint8 RGB, H×W trainIds), the training frames. A negative's
    height is a log-uniform fraction ``size_range`` of the crop height (far and near), its width a
    log-uniform ``aspect_range`` times that (above 2: flat debris lying on the road, planks, lumps);
    its bottom centre is a random road pixel of the crop (it stands on the road). Source patches that
    are mostly road are redrawn (``MAX_SOURCE_ROAD_FRACTION``). A share ``colour_fraction`` of the
    negatives are :func:`colour_field` s (of ``colour_saturation`` and ``colour_value``) instead of
    source patches, and a share ``road_colour_fraction`` (drawn first) colour fields in the crop's mean
    road colour times a gain in ``ROAD_COLOUR_GAIN`` plus a tint of up to ``ROAD_COLOUR_TINT`` per
    channel (:func:`road_coloured`). With
    ``exclude_source_road`` the pixels that were road in the source frame are not pasted: otherwise a
    patch's share of road (up to ``MAX_SOURCE_ROAD_FRACTION``, lane markings and zebra stripes included)
    lands on the road as "anomalous" and teaches the network that road texture can be an obstacle. With
    ``avoid_road_paint`` a negative whose mean colour :func:`looks_like_road_paint` is redrawn (up to
    ``SOURCE_TRIES`` draws in all, else skipped). With ``shadow`` each negative casts a
    :func:`contact_shadow` on the crop's road around its base (those pixels stay labelled road): a pasted
    patch alone is a decal flat on the road, which is what road paint is, while a thing standing on
    the road darkens the road at its foot."""
    _, h, w = img.shape
    outlier = torch.zeros(h, w, dtype=torch.bool)
    road_mask = lab == ROAD_TRAIN_ID
    road = road_mask.nonzero()
    if count <= 0 or road.shape[0] == 0 or len(sources) == 0:
        return outlier
    lo, hi = size_range
    road_colour = img[:, road_mask].mean(1) if road_colour_fraction > 0 else None
    for _ in range(count):
        ph = max(3, round(h * math.exp(_uniform(gen, math.log(lo), math.log(hi)))))
        pw = max(3, round(ph * math.exp(_uniform(gen, math.log(aspect_range[0]), math.log(aspect_range[1])))))
        # drawn only when used: the random stream of a recipe without them stays what it was
        like_road = road_colour_fraction > 0 and float(torch.rand((), generator=gen)) < road_colour_fraction
        colour = not like_road and colour_fraction > 0 and float(torch.rand((), generator=gen)) < colour_fraction
        patch = shape = None
        for _ in range(SOURCE_TRIES):
            if like_road:
                patch, keep = colour_field(ph, pw, gen, base=road_coloured(road_colour, gen)), None
            elif colour:
                patch, keep = colour_field(ph, pw, gen, colour_saturation, colour_value), None
            else:
                patch, keep = _source_patch(sources, gen, ph, pw, exclude_source_road)
            if patch is None:
                continue
            shape = torch.from_numpy(polygon_mask(ph, pw, gen))
            if keep is not None:   # nearest, so a source pixel is either pasted whole or not at all
                keep = F.interpolate(keep[None, None].float(), size=(ph, pw), mode="nearest")[0, 0].bool()
                shape &= keep
            if avoid_road_paint and shape.any() and looks_like_road_paint(patch[:, shape].mean(1)):
                patch = None
                continue
            break
        if patch is None:
            continue
        by, bx = (int(v) for v in road[_randint(gen, road.shape[0])])
        top, left = by - ph + 1, bx - pw // 2
        # clip the negative to the crop
        t0, l0 = max(0, top), max(0, left)
        t1, l1 = min(h, top + ph), min(w, left + pw)
        if t1 <= t0 or l1 <= l0:
            continue
        m = shape[t0 - top:t1 - top, l0 - left:l1 - left]
        if shadow:
            contact_shadow(img, road_mask, by, bx, ph, pw, gen)
        region = img[:, t0:t1, l0:l1]
        region[:, m] = patch[:, t0 - top:t1 - top, l0 - left:l1 - left][:, m]
        outlier[t0:t1, l0:l1] |= m
    return outlier


def road_coloured(road_colour: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(3,) in [0, 1]: ``road_colour`` under another illumination (a gain in ``ROAD_COLOUR_GAIN``) with a
    small per-channel tint (up to ``ROAD_COLOUR_TINT``)."""
    tint = ROAD_COLOUR_TINT * (2 * torch.rand(3, generator=gen) - 1)
    return (road_colour * _uniform(gen, *ROAD_COLOUR_GAIN) + tint).clamp(0, 1)


def contact_shadow(img: torch.Tensor, road: torch.Tensor, by: int, bx: int, ph: int, pw: int,
                   gen: torch.Generator) -> None:
    """Darken the road pixels of ``img`` (3×h×w, in place) under an object of ph×pw px whose base centre
    is (by, bx): a soft ellipse centred on the base, half-width 0.5-0.8 pw and half-height 0.08-0.2 ph
    (the ground is seen at a grazing angle), darkening by 30-75 % at its centre, fading to its rim."""
    h, w = road.shape
    ax = max(1.0, pw * _uniform(gen, 0.5, 0.8))
    ay = max(1.0, ph * _uniform(gen, 0.08, 0.2))
    depth = _uniform(gen, 0.3, 0.75)
    y0, y1 = max(0, int(by - ay)), min(h, int(math.ceil(by + ay)) + 1)
    x0, x1 = max(0, int(bx - ax)), min(w, int(math.ceil(bx + ax)) + 1)
    if y1 <= y0 or x1 <= x0:
        return
    yy = (torch.arange(y0, y1, dtype=torch.float32)[:, None] - by) / ay
    xx = (torch.arange(x0, x1, dtype=torch.float32)[None, :] - bx) / ax
    falloff = (1 - (yy * yy + xx * xx)).clamp(min=0).sqrt() * road[y0:y1, x0:x1]
    img[:, y0:y1, x0:x1] *= 1 - depth * falloff


def uniform_cross_entropy(logits: torch.Tensor, outlier: torch.Tensor) -> torch.Tensor:
    """Entropy maximisation on the outlier pixels (Chan et al. 2021): mean over those pixels of
    ``-(1/K) sum_k log softmax(z)_k``, the cross-entropy against the uniform distribution (minimal,
    log K, when the prediction is uniform). ``logits`` (B, K, H, W), ``outlier`` (B, H, W) bool;
    0 when there is no outlier pixel."""
    if not bool(outlier.any()):
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=1)
    per_pixel = -logp.mean(dim=1)
    return per_pixel[outlier].mean()
