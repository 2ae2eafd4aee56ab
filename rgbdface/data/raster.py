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


def rasterize(verts: np.ndarray, tris: np.ndarray, height: int, width: int) -> Raster:
    """Rasterise triangles `tris` [F, 3] of vertices `verts` [N, 3] = (u, v, Z > 0) into an H x W z-buffer."""
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
    n = bw * bh
    keep = (n > 0) & (p[:, :, 2].min(1) > 0)
    tri_id = np.nonzero(keep)[0]
    n = n[keep]

    # 2. Per triangle, the edge functions normalised by its area: w_k(x, y) = A_k x + B_k y + C_k
    #    are the screen-space barycentrics; and 1/Z at its corners.
    t = p[tri_id]  # [T, 3, 3]
    area = (t[:, 1, 0] - t[:, 0, 0]) * (t[:, 2, 1] - t[:, 0, 1]) - (t[:, 1, 1] - t[:, 0, 1]) * (t[:, 2, 0] - t[:, 0, 0])
    ok = np.abs(area) > 1e-12
    tri_id, t, area, n = tri_id[ok], t[ok], area[ok], n[ok]
    nxt, prv = t[:, [1, 2, 0]], t[:, [2, 0, 1]]  # for corner k, the opposite edge runs nxt -> prv
    coef_a = ((nxt[..., 1] - prv[..., 1]) / area[:, None]).astype(np.float32)  # [T, 3]
    coef_b = ((prv[..., 0] - nxt[..., 0]) / area[:, None]).astype(np.float32)
    coef_c = ((nxt[..., 0] * prv[..., 1] - prv[..., 0] * nxt[..., 1]) / area[:, None]).astype(np.float32)
    inv_zc = (1.0 / t[..., 2]).astype(np.float32)  # [T, 3]

    # 3. Per (triangle, row of its box): the span of pixel centres inside all three edges,
    #    w_k = A_k x + c_k >= 0 with c_k = B_k y + C_k, then one entry per pixel of the span.
    row_tri = np.repeat(np.arange(len(tri_id)), bh[tri_id])  # [R]
    row_y = y0[tri_id][row_tri] + (np.arange(len(row_tri)) - np.repeat(np.cumsum(bh[tri_id]) - bh[tri_id], bh[tri_id]))
    cy = row_y.astype(np.float64)[:, None] + 0.5
    ra, rc = coef_a[row_tri].astype(np.float64), coef_b[row_tri] * cy + coef_c[row_tri]  # [R, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -rc / ra
    eps = 1e-6
    lo = np.where(ra > 0, bound, -np.inf).max(1)
    hi = np.where(ra < 0, bound, np.inf).min(1)
    flat_ok = np.where(ra == 0, rc >= -eps, True).all(1)
    j0 = np.maximum(np.ceil(lo - 0.5 - eps), x0[tri_id][row_tri]).astype(np.int64)
    j1 = np.minimum(np.floor(hi - 0.5 + eps), x1[tri_id][row_tri] - 1).astype(np.int64)
    count = np.where(flat_ok, np.maximum(j1 - j0 + 1, 0), 0)
    row = np.repeat(np.arange(len(row_tri)), count)  # [P]
    px = j0[row] + (np.arange(len(row)) - np.repeat(np.cumsum(count) - count, count))
    py = row_y[row]
    local = row_tri[row]
    sx = (px + 0.5).astype(np.float32)
    w = coef_a[local] * sx[:, None] + (coef_b[local] * (py[:, None] + 0.5).astype(np.float32) + coef_c[local])  # [P, 3]
    w = np.maximum(w, 0)  # at most rounding-level negatives at the span ends

    # 4. Perspective-correct depth: 1/Z is linear in screen space.
    wz = w * inv_zc[local]
    inv_z = wz.sum(1)
    z = 1.0 / inv_z
    owner = tri_id[local]

    # 5. Z-buffer: the nearest candidate per pixel wins.
    pix = py * width + px
    zbuf = np.full(height * width, np.inf, np.float32)
    np.minimum.at(zbuf, pix, z)
    win = z <= zbuf[pix]
    pix, owner, z, wz, inv_z = pix[win], owner[win], z[win], wz[win], inv_z[win]
    depth.ravel()[pix] = z
    face.ravel()[pix] = owner
    bary.reshape(-1, 3)[pix] = wz / inv_z[:, None]
    return Raster(depth, face, bary)
