"""Depth-buffered rasteriser for the vertical parts of a scene.

Two primitives, both written through one inverse-depth buffer (``invz``, 0 = nothing / sky), so
draw order never matters:

* ``polygon``: a planar polygon in world coordinates, flat-coloured or textured through the exact
  plane-to-image homography. Its inverse depth is affine in (u, v), evaluated over its bounding box.
* ``sprite``: a flat cut-out standing on the ground and facing the camera (a fronto-parallel plane,
  so its projection is exactly affine), made of coloured parts drawn with OpenCV in metres.

All work happens inside each primitive's clipped bounding box, so the cost follows the covered area.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .camera import View, clip_near
from .labels import VOID
from .noise import tile

_SHIFT = 3            # sub-pixel bits for cv2 polygon filling
_ONE = 1 << _SHIFT


@lru_cache(maxsize=4)
def _pixel_noise(h: int, w: int) -> np.ndarray:
    """Leafy noise at pixel scale, (h + 512, w + 512), tiled from the noise tiles (read-only)."""
    t = 0.6 * tile("mid") + 0.5 * tile("fine")
    reps = ((h + 512) // 512 + 1, (w + 512) // 512 + 1)
    field = np.tile(t, reps)[:h + 512, :w + 512].astype(np.float32)
    field.setflags(write=False)
    return field


@dataclass
class Part:
    """One coloured piece of a sprite, in metres: x right (as seen), y up from the ground contact.

    ``kind`` is "poly" (filled polygon), "line" (polyline of ``width`` metres), "hole" (erases
    earlier parts of the same sprite, e.g. the opening of a tyre) or "decal" (a filled polygon drawn
    only over earlier parts of the same sprite: spots on a body never stick out of it). ``tex`` is the
    amplitude of a world-scaled noise texture (foliage, fabric); ``cyl`` > 0 shades the part like a
    vertical cylinder of that radius centred at x = ``cyl_x``.
    """

    pts: np.ndarray
    color: tuple
    label: int
    inst: int = 0
    kind: str = "poly"
    width: float = 0.0
    closed: bool = False
    tex: float = 0.0
    tex_scale: float = 20.0
    cyl: float = 0.0
    cyl_x: float = 0.0


class Raster:
    """Colour, inverse depth, trainId and instance buffers of one frame."""

    def __init__(self, view: View):
        self.view = view
        h, w = view.h, view.w
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), np.float32)
        self.invz = np.zeros((h, w), np.float32)
        self.lab = np.full((h, w), VOID, np.uint8)
        self.inst = np.zeros((h, w), np.int32)
        self.shadow = np.zeros((h, w), np.uint8)
        self._shadows: list = []
        self._us = np.arange(w, dtype=np.float32)
        self._vs = np.arange(h, dtype=np.float32)

    # -- helpers ----------------------------------------------------------------------------
    def _bbox(self, px: np.ndarray, pad: float = 1.0):
        (mx, my), (Mx, My) = px.min(axis=0).tolist(), px.max(axis=0).tolist()
        x0 = max(int(math.floor(mx - pad)), 0)
        x1 = min(int(math.ceil(Mx + pad)) + 1, self.w)
        y0 = max(int(math.floor(my - pad)), 0)
        y1 = min(int(math.ceil(My + pad)) + 1, self.h)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, x1, y0, y1

    def _commit(self, box, vis: np.ndarray, invz, colors: np.ndarray, labels, insts) -> None:
        """Masked writes inside a primitive's bounding box (``vis``: uint8 mask). ``invz``,
        ``labels`` and ``insts`` are scalars or box-sized arrays; ``colors`` is (bh, bw, 3) float32.
        OpenCV's masked copy is an order of magnitude faster than numpy boolean assignment."""
        x0, x1, y0, y1 = box
        shape = vis.shape
        if np.isscalar(invz):
            invz = np.full(shape, invz, np.float32)
        if np.isscalar(labels):
            labels = np.full(shape, labels, np.uint8)
        if np.isscalar(insts):
            insts = np.full(shape, insts, np.int32)
        cv2.copyTo(invz, vis, self.invz[y0:y1, x0:x1])
        cv2.copyTo(labels, vis, self.lab[y0:y1, x0:x1])
        cv2.copyTo(insts, vis, self.inst[y0:y1, x0:x1])
        cv2.copyTo(colors, vis, self.img[y0:y1, x0:x1])

    # -- planar polygons -----------------------------------------------------------------------
    def polygon(self, pts: np.ndarray, label: int, inst: int = 0, color=None, shade=1.0,
                texture: np.ndarray | None = None, tex_frame=None, wrap: bool = False) -> bool:
        """Draw a planar world polygon (N, 3). ``tex_frame`` = (P0, E1, E2): world position of
        texture pixel (a, b) is P0 + a E1 + b E2; ``wrap`` repeats the texture beyond its edges.
        ``shade``: scalar or RGB light factor. Returns whether anything was visible."""
        v = self.view
        pc = (pts - v.C) @ v.R
        if pc[:, 2].max() < v.NEAR:
            return False
        # Plane of the polygon in the optical frame: n . p = dist (1/z is then affine in u, v).
        (p0x, p0y, p0z), (p1x, p1y, p1z), (p2x, p2y, p2z) = pc[:3].tolist()
        ax, ay, az = p1x - p0x, p1y - p0y, p1z - p0z
        bx, by, bz = p2x - p0x, p2y - p0y, p2z - p0z
        nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
        dist = nx * p0x + ny * p0y + nz * p0z
        if abs(dist) < 1e-6 * (abs(nx) + abs(ny) + abs(nz) + 1e-12):
            return False  # seen edge-on
        clipped = clip_near(pc)
        if len(clipped) < 3:
            return False
        px = v.project_cam(clipped)
        box = self._bbox(px)
        if box is None:
            return False
        x0, x1, y0, y1 = box
        bw, bh = x1 - x0, y1 - y0
        mask = np.zeros((bh, bw), np.uint8)
        poly = np.round((px - (x0, y0)) * _ONE).astype(np.int32)
        cv2.fillPoly(mask, [poly], 255, lineType=cv2.LINE_8, shift=_SHIFT)
        a = nx / (v.fx * dist)
        b = ny / (v.fy * dist)
        c = (nz - nx * v.cx / v.fx - ny * v.cy / v.fy) / dist
        invz = (self._us[x0:x1] * np.float32(a))[None, :] + (self._vs[y0:y1] * np.float32(b) + np.float32(c))[:, None]
        vis = cv2.bitwise_and(mask, cv2.compare(invz, self.invz[y0:y1, x0:x1], cv2.CMP_GT))
        if not cv2.countNonZero(vis):
            return False
        sh = np.broadcast_to(np.asarray(shade, np.float64), (3,))
        if texture is not None:
            p0, e1, e2 = tex_frame
            hom = np.column_stack([v.Rt @ e1, v.Rt @ e2, v.Rt @ (p0 - v.C)])
            kt = np.array([[v.fx, 0, v.cx - x0], [0, v.fy, v.cy - y0], [0, 0, 1]])
            warped = cv2.warpPerspective(texture, kt @ hom, (bw, bh), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_WRAP if wrap else cv2.BORDER_REPLICATE)
            colors = cv2.multiply(warped, (sh[0] / 255.0, sh[1] / 255.0, sh[2] / 255.0, 0.0), dtype=cv2.CV_32F)
        else:
            colors = np.empty((bh, bw, 3), np.float32)
            colors[:] = np.asarray(color, np.float64) * sh
        self._commit(box, vis, invz, colors, label, inst)
        return True

    # -- sprites ---------------------------------------------------------------------------------
    def sprite(self, anchor: np.ndarray, parts: list[Part], depth_offset: float = 0.0) -> bool:
        """Draw parts in the camera-facing vertical plane through the ground point ``anchor``.

        The plane is fronto-parallel, so its projection is exactly the affine map built here from
        the camera's right and up axes; its inverse depth is constant. Returns whether anything
        showed.
        """
        v = self.view
        rel = anchor - v.C
        pa = rel @ v.R
        z = pa[2] - depth_offset
        if z < v.NEAR + 0.2:
            return False
        rx, rz = rel[2], -rel[0]
        nr = math.hypot(rx, rz) + 1e-12
        rt = v.Rt
        ex0 = (rt[0, 0] * rx + rt[0, 2] * rz) / nr
        ex1 = (rt[1, 0] * rx + rt[1, 2] * rz) / nr
        sx, sy = v.fx / z, v.fy / z
        u0 = v.fx * pa[0] / pa[2] + v.cx
        v0 = v.fy * pa[1] / pa[2] + v.cy
        aff = np.array([[sx * ex0, sx * rt[0, 1]], [sy * ex1, sy * rt[1, 1]]])
        sizes = [len(p.pts) for p in parts]
        q = np.concatenate([p.pts for p in parts]) @ aff.T
        q[:, 0] += u0
        q[:, 1] += v0
        scale = math.sqrt(sx * sy)
        pad = 1.0
        for p in parts:
            if p.kind == "line":
                pad = max(pad, 1.0 + p.width * scale)
        box = self._bbox(q, pad)
        if box is None:
            return False
        x0, x1, y0, y1 = box
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        qi = np.round((q - (x0, y0)) * _ONE).astype(np.int32)
        start = 0
        for k, (p, n) in enumerate(zip(parts, sizes)):
            poly = qi[start:start + n]
            start += n
            if p.kind == "poly":
                cv2.fillPoly(canvas, [poly], k + 1, lineType=cv2.LINE_8, shift=_SHIFT)
            elif p.kind == "hole":
                cv2.fillPoly(canvas, [poly], 0, lineType=cv2.LINE_8, shift=_SHIFT)
            elif p.kind == "decal":
                decal = np.zeros_like(canvas)
                cv2.fillPoly(decal, [poly], 1, lineType=cv2.LINE_8, shift=_SHIFT)
                canvas[(decal > 0) & (canvas > 0)] = k + 1
            else:
                cv2.polylines(canvas, [poly], p.closed, k + 1, thickness=max(1, int(round(p.width * scale))),
                              lineType=cv2.LINE_8, shift=_SHIFT)
        invz = np.float32(1.0 / z)
        vis = cv2.bitwise_and(canvas, cv2.compare(self.invz[y0:y1, x0:x1], float(invz), cv2.CMP_LT))
        if not cv2.countNonZero(vis):
            return False
        n = len(parts)
        pal = np.zeros((256, 1, 3), np.float32)
        labs = np.zeros((256, 1), np.uint8)
        insts = np.zeros((256, 1), np.int32)
        special = False
        for k, p in enumerate(parts):
            pal[k + 1, 0] = p.color
            labs[k + 1, 0] = p.label
            insts[k + 1, 0] = p.inst
            special = special or p.tex or p.cyl
        colors = cv2.LUT(cv2.merge((canvas, canvas, canvas)), pal)
        if special and canvas.size > 1500:
            self._sprite_shading(parts, canvas, colors, aff, u0 - x0, v0 - y0, qi, sizes)
        self._commit(box, vis, invz, colors, cv2.LUT(canvas, labs), cv2.LUT(canvas, insts) if n else 0)
        return True

    def _sprite_shading(self, parts, canvas, colors, aff, ou, ov, qi, sizes):
        """Foliage/fabric texture and cylinder shading in the sprite's metric coordinates.

        Each effect is computed only inside the bounding box of the parts that use it. The texture
        is the noise tiles mapped by the sprite's own affine map (cv2.warpAffine, wrap-around), so it
        sticks to the object; one texture scale per sprite (that of its first textured part).
        """
        bh, bw = canvas.shape
        inv = np.linalg.inv(aff)
        spans = []
        start = 0
        for p, n in zip(parts, sizes):
            q = qi[start:start + n]
            start += n
            spans.append((q[:, 0].min() >> _SHIFT, q[:, 0].max() >> _SHIFT, q[:, 1].min() >> _SHIFT,
                          q[:, 1].max() >> _SHIFT))

        def sub(flag):
            sel = [sp for p, sp in zip(parts, spans) if flag(p)]
            if not sel:
                return None
            x0 = max(min(sp[0] for sp in sel) - 2, 0)
            x1 = min(max(sp[1] for sp in sel) + 3, bw)
            y0 = max(min(sp[2] for sp in sel) - 2, 0)
            y1 = min(max(sp[3] for sp in sel) + 3, bh)
            return (x0, x1, y0, y1) if x1 > x0 and y1 > y0 else None

        tex_box = sub(lambda p: p.tex)
        if tex_box is not None:
            x0, x1, y0, y1 = tex_box
            texa = np.zeros((256, 1), np.float32)
            for k, p in enumerate(parts):
                texa[k + 1, 0] = p.tex
            sc = next(p.tex_scale for p in parts if p.tex)
            px_per_texel = math.sqrt(abs(np.linalg.det(aff))) / (sc * 3.1)
            if px_per_texel < 1.0:
                # Minified far away: the world-scaled texture would only alias, so use pixel-scale
                # noise anchored at the sprite's ground point (cheap: a slice of a cached field).
                sw, sh = x1 - x0, y1 - y0
                field = _pixel_noise(self.h, self.w)
                oy, ox = int(y0 - ov) % 512, int(x0 - ou) % 512
                n1 = field[oy:oy + sh, ox:ox + sw] * cv2.LUT(canvas[y0:y1, x0:x1], texa)
                n1 += np.float32(1.0)
                colors[y0:y1, x0:x1] *= n1[..., None]
                tex_box = None
        if tex_box is not None:
            # Evaluate the texture on a grid as coarse as its finest detail allows, then upsample;
            # below one pixel per fine texel the fine layer is left out (it would only alias).
            use_fine = px_per_texel >= 1.0
            f = int(min(4, max(1, 2 * px_per_texel if use_fine else 1.5 * 3.1 * px_per_texel)))
            sw, sh = x1 - x0, y1 - y0
            gw, gh = -(-sw // f), -(-sh // f)
            # grid pixel (x, y) -> sub-box pixel (f x, f y) -> metres -> texels
            lin = inv * (sc * f)
            off = -(inv * sc) @ np.array([ou - x0, ov - y0])
            m1 = np.hstack([lin, off[:, None]]).astype(np.float64)
            n1 = cv2.warpAffine(tile("mid"), m1, (gw, gh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_WRAP)
            if use_fine:
                n2 = cv2.warpAffine(tile("fine"), m1 * 3.1, (gw, gh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_WRAP)
                n1 *= np.float32(0.6)
                n1 += np.float32(0.5) * n2
            else:
                n1 *= np.float32(0.8)
            if f > 1:
                n1 = cv2.resize(n1, (gw * f, gh * f), interpolation=cv2.INTER_LINEAR)[:sh, :sw]
            n1 *= cv2.LUT(canvas[y0:y1, x0:x1], texa)
            n1 += np.float32(1.0)
            colors[y0:y1, x0:x1] *= n1[..., None]
        cyl_box = sub(lambda p: p.cyl)
        if cyl_box is not None:
            x0, x1, y0, y1 = cyl_box
            rad = np.zeros((256, 1), np.float32)
            cxs = np.zeros((256, 1), np.float32)
            for k, p in enumerate(parts):
                rad[k + 1, 0] = 1.0 / p.cyl if p.cyl else 0.0
                cxs[k + 1, 0] = p.cyl_x
            du = (np.arange(x0, x1, dtype=np.float32) - np.float32(ou))[None, :]
            dv = (np.arange(y0, y1, dtype=np.float32) - np.float32(ov))[:, None]
            lx = np.float32(inv[0, 0]) * du + np.float32(inv[0, 1]) * dv
            c = canvas[y0:y1, x0:x1]
            r = (lx - cv2.LUT(c, cxs)) * cv2.LUT(c, rad)
            f = np.clip(1.0 - 0.55 * r * r + 0.12 * r, 0.3, 1.2)
            colors[y0:y1, x0:x1] *= f[..., None]

    # -- shadows on the ground ------------------------------------------------------------------
    def ground_shadow(self, pts: np.ndarray, value: int) -> None:
        """Queue a convex ground polygon (N, 2) of world (X, Z) as shadowed with strength ``value``
        (0..255); ``flush_shadows`` rasterises the queue (darker shadows win where they overlap)."""
        self._shadows.append((int(value), pts))

    def flush_shadows(self) -> None:
        if not self._shadows:
            return
        v = self.view
        self._shadows.sort(key=lambda e: e[0])
        sizes = [len(p) for _, p in self._shadows]
        xz = np.concatenate([p for _, p in self._shadows])
        world = np.column_stack([xz[:, 0], np.zeros(len(xz)), xz[:, 1]])
        pc = (world - v.C) @ v.R
        ok = pc[:, 2] >= v.NEAR
        px = np.zeros((len(pc), 2))
        px[ok] = v.project_cam(pc[ok])
        start = 0
        lim = 4.0 * max(self.w, self.h)
        for (value, _), n in zip(self._shadows, sizes):
            sl = slice(start, start + n)
            start += n
            if ok[sl].all():
                q = px[sl]
            else:
                c = clip_near(pc[sl])
                if len(c) < 3:
                    continue
                q = v.project_cam(c)
            (mx, my), (Mx, My) = q.min(axis=0).tolist(), q.max(axis=0).tolist()
            if Mx < 0 or mx >= self.w or My < 0 or my >= self.h:
                continue
            q = np.clip(q, -lim, lim)
            cv2.fillConvexPoly(self.shadow, np.round(q * _ONE).astype(np.int32), value, lineType=cv2.LINE_8,
                               shift=_SHIFT)
        self._shadows = []
