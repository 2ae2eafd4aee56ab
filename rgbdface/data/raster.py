"""A z-buffer triangle rasteriser in NumPy, vectorised over triangles and pixels.

Vertices come in pixels with their camera-space depth, ``(u, v, Z)``. A pixel
belongs to a triangle when its centre ``(j + 0.5, i + 0.5)`` lies inside it;
the nearest triangle (smallest Z) wins. Attributes are interpolated
perspective-correctly: screen-space barycentrics weighted by 1/Z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Raster:
    """depth: [H, W] float32 Z (0 = empty); face: [H, W] int32 triangle index (-1 = empty);
    bary: [H, W, 3] float32 perspective-correct barycentric weights (0 where empty)."""

    depth: np.ndarray
    face: np.ndarray
    bary: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        return self.face >= 0

    def interpolate(self, values: np.ndarray, tris: np.ndarray) -> np.ndarray:
        """Interpolate per-vertex values [N, C] over the covered pixels → [H, W, C] (0 elsewhere)."""
        values = np.asarray(values, np.float32)
        out = np.zeros(self.face.shape + values.shape[1:], np.float32)
        ok = self.covered
        corners = tris[self.face[ok]]  # [P, 3]
        w = self.bary[ok]  # [P, 3]
        out[ok] = np.einsum("pk,pk...->p...", w, values[corners])
        return out


def rasterize(verts: np.ndarray, tris: np.ndarray, height: int, width: int, with_bary: bool = True) -> Raster:
    """Rasterise triangles `tris` [F, 3] of vertices `verts` [N, 3] = (u, v, Z > 0) into an H x W z-buffer.

    with_bary=False skips the barycentric weights (`bary` stays zero): depth and face ids only.
    """
    v = np.asarray(verts, np.float64)
    tris = np.asarray(tris, np.int64)
    depth = np.zeros((height, width), np.float32)
    face = np.full((height, width), -1, np.int32)
    bary = np.zeros((height, width, 3), np.float32)
    if len(tris) == 0:
        return Raster(depth, face, bary)

    # 1. Each triangle's pixel bounding box (pixel centres inside it), clipped to the image.
    p = v[tris]  # [F, 3 corners, 3]
    x0 = np.clip(np.ceil(p[:, :, 0].min(1) - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(p[:, :, 0].max(1) - 0.5) + 1, 0, width).astype(np.int64)
    y0 = np.clip(np.ceil(p[:, :, 1].min(1) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(p[:, :, 1].max(1) - 0.5) + 1, 0, height).astype(np.int64)
    bw, bh = np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)
    keep = (bw * bh > 0) & (p[:, :, 2].min(1) > 0)
    tri_id = np.nonzero(keep)[0]

    # 2. Per triangle, the edge functions normalised by its area: w_k(x, y) = A_k x + B_k y + C_k
    #    are the screen-space barycentrics; and 1/Z at its corners.
    t = p[tri_id]  # [T, 3, 3]
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])
    ok = np.abs(area) > 1e-12
    tri_id, t, area = tri_id[ok], t[ok], area[ok]
    if len(tri_id) == 0:
        return Raster(depth, face, bary)
    x0, x1, y0, bh = x0[tri_id], x1[tri_id], y0[tri_id], bh[tri_id]
    nxt, prv = t[:, [1, 2, 0]], t[:, [2, 0, 1]]  # for corner k, the opposite edge runs nxt -> prv
    coef_a = (nxt[..., 1] - prv[..., 1]) / area[:, None]  # [T, 3]
    coef_b = (prv[..., 0] - nxt[..., 0]) / area[:, None]
    coef_c = (nxt[..., 0] * prv[..., 1] - prv[..., 0] * nxt[..., 1]) / area[:, None]
    inv_zc = 1.0 / t[..., 2]  # [T, 3]

    # 3. Per (triangle, row of its box): the span of pixel centres inside all three edges,
    #    w_k = A_k x + c_k >= 0 with c_k = B_k y + C_k.
    row_tri = np.repeat(np.arange(len(tri_id)), bh)  # [R]
    row_y = y0[row_tri] + (np.arange(len(row_tri)) - np.repeat(np.cumsum(bh) - bh, bh))
    ra, rc = coef_a[row_tri], coef_b[row_tri] * (row_y[:, None] + 0.5) + coef_c[row_tri]  # [R, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -rc / ra
    eps = 1e-6
    lo = np.where(ra > 0, bound, -np.inf).max(1)
    hi = np.where(ra < 0, bound, np.inf).min(1)
    flat_ok = np.where(ra == 0, rc >= -eps, True).all(1)
    j0 = np.maximum(np.ceil(lo - 0.5 - eps), x0[row_tri]).astype(np.int64)
    j1 = np.minimum(np.floor(hi - 0.5 + eps), x1[row_tri] - 1).astype(np.int64)
    count = np.where(flat_ok, np.maximum(j1 - j0 + 1, 0), 0)
    # 1/Z is linear in screen space: along a row, 1/Z(x) = ia x + ic (perspective-correct depth)
    izc = inv_zc[row_tri]
    ia, ic = (ra * izc).sum(1), (rc * izc).sum(1)  # [R]

    # 4. One entry per pixel of each span: its depth from the row's 1/Z line.
    starts = np.cumsum(count) - count
    row = np.repeat(np.arange(len(row_tri), dtype=np.int32), count)  # [P]
    px = np.arange(len(row), dtype=np.int64) + (j0 - starts)[row]
    sx = px + 0.5
    z = (1.0 / (ia[row] * sx + ic[row])).astype(np.float32)
    pix = row_y[row] * width + px

    # 5. Z-buffer over the window of pixels the faces touch: the nearest candidate per pixel wins.
    if len(pix) == 0:
        return Raster(depth, face, bary)
    lo_pix = int(pix.min())
    local = pix - lo_pix
    zbuf = np.full(int(local.max()) + 1, np.inf, np.float32)
    np.minimum.at(zbuf, local, z)
    depth.ravel()[lo_pix : lo_pix + len(zbuf)] = np.where(zbuf < np.inf, zbuf, 0.0)
    win = np.flatnonzero(z <= zbuf[local])
    pix, row = pix[win], row[win]
    face.ravel()[pix] = tri_id[row_tri[row]]

    # 6. Perspective-correct barycentrics of the visible pixels: screen weights times 1/Z, renormalised.
    if with_bary:
        w = np.maximum(ra[row] * sx[win, None] + rc[row], 0.0) * izc[row]  # [P, 3]; clamps rounding-level negatives
        bary.reshape(-1, 3)[pix] = (w / w.sum(1, keepdims=True)).astype(np.float32)
    return Raster(depth, face, bary)
