"""A z-buffer triangle rasteriser in NumPy, vectorised over triangles and pixels.

Vertices come in pixels with their camera-space depth, ``(u, v, Z)``. A pixel
belongs to a triangle when its centre ``(j + 0.5, i + 0.5)`` lies inside it;
the nearest triangle (smallest Z) wins. Attributes are interpolated
perspective-correctly: screen-space barycentrics weighted by 1/Z.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from einops import rearrange


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

    with_bary=False skips the barycentric weights (`bary` is then a read-only view of zeros): depth
    and face ids only.

    Per-row arrays are edge-major ([3, R]: long loops, no reductions over a length-3 axis) and
    per-pixel arrays are computed in place: few passes over memory and few fresh pages per call.
    """
    v = np.asarray(verts, np.float64)
    tris = np.asarray(tris, np.int64)
    depth = np.zeros((height, width), np.float32)
    face = np.full((height, width), -1, np.int32)
    bary = np.zeros((height, width, 3), np.float32) if with_bary else np.broadcast_to(np.float32(0), (height, width, 3))
    if len(tris) == 0:
        return Raster(depth, face, bary)

    # 1. Each triangle's pixel bounding box (pixel centres inside it), clipped to the image.
    p = np.ascontiguousarray(rearrange(v[tris], "f k c -> c k f"))  # [3 coords (u, v, Z), 3 corners, F]
    lo, hi = p.min(1), p.max(1)  # [3, F]
    x0 = np.clip(np.ceil(lo[0] - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(hi[0] - 0.5) + 1, 0, width).astype(np.int64)
    y0 = np.clip(np.ceil(lo[1] - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(hi[1] - 0.5) + 1, 0, height).astype(np.int64)
    bw, bh = np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)
    keep = (bw * bh > 0) & (lo[2] > 0)
    tri_id = np.nonzero(keep)[0]

    # 2. Per triangle, the edge functions normalised by its area: w_k(x, y) = A_k x + B_k y + C_k
    #    are the screen-space barycentrics; and 1/Z at its corners. Edge-major: [3, T].
    t = p[:, :, tri_id]  # [3 coords, 3 corners, T]
    area = (t[0, 1] - t[0, 0]) * (t[1, 2] - t[1, 0]) - (t[1, 1] - t[1, 0]) * (t[0, 2] - t[0, 0])
    ok = np.abs(area) > 1e-12
    tri_id, t, area = tri_id[ok], t[:, :, ok], area[ok]
    if len(tri_id) == 0:
        return Raster(depth, face, bary)
    x0, x1, y0, bh = x0[tri_id], x1[tri_id], y0[tri_id], bh[tri_id]
    nxt, prv = t[:, [1, 2, 0]], t[:, [2, 0, 1]]  # for corner k, the opposite edge runs nxt -> prv
    coef_a = (nxt[1] - prv[1]) / area  # [3, T]
    coef_b = (prv[0] - nxt[0]) / area
    coef_c = (nxt[0] * prv[1] - prv[0] * nxt[1]) / area
    inv_zc = 1.0 / t[2]  # [3, T]

    # 3. Per (triangle, row of its box): the span of pixel centres inside all three edges,
    #    w_k = A_k x + c_k >= 0 with c_k = B_k y + C_k.
    row_tri = np.repeat(np.arange(len(tri_id)), bh)  # [R]
    row_y = np.arange(len(row_tri)) + (y0 - (np.cumsum(bh) - bh))[row_tri]  # first row of its box, then +1 per row
    ra = coef_a[:, row_tri]  # [3, R]
    rc = coef_b[:, row_tri]
    rc *= row_y + 0.5
    rc += coef_c[:, row_tri]
    bound = np.negative(rc)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound /= ra  # where A_k = 0 the edge bounds no x: masked out below
    eps = 1e-6
    lo = functools.reduce(np.maximum, [np.where(ra[k] > 0, bound[k], -np.inf) for k in range(3)])  # [R]
    hi = functools.reduce(np.minimum, [np.where(ra[k] < 0, bound[k], np.inf) for k in range(3)])
    j0 = np.maximum(np.ceil(lo - 0.5 - eps), x0[row_tri]).astype(np.int64)
    j1 = np.minimum(np.floor(hi - 0.5 + eps), x1[row_tri] - 1).astype(np.int64)
    count = np.maximum(j1 - j0 + 1, 0)
    if (coef_a == 0).any():  # a horizontal edge bounds rows, not x: rows on its outer side are empty
        flat_ok = functools.reduce(np.logical_and, [(ra[k] != 0) | (rc[k] >= -eps) for k in range(3)])
        count[~flat_ok] = 0
    # 1/Z is linear in screen space: along a row, 1/Z(x) = ia x + ic (perspective-correct depth)
    izc = inv_zc[:, row_tri]  # [3, R]
    ia, ic = _dot3(ra, izc), _dot3(rc, izc)  # [R]

    # 4. One entry per pixel of each span: its depth from the row's 1/Z line.
    starts = np.cumsum(count) - count
    row = np.repeat(np.arange(len(row_tri), dtype=np.int32), count)  # [P]
    px = np.arange(len(row), dtype=np.int64)
    px += (j0 - starts)[row]
    sx = px + 0.5
    inv_z = ia[row]
    inv_z *= sx
    inv_z += ic[row]
    z = np.divide(1.0, inv_z, out=inv_z).astype(np.float32)
    pix = px
    pix += (row_y * width)[row]

    # 5. Z-buffer over the window of pixels the faces touch: the nearest candidate per pixel wins.
    if len(pix) == 0:
        return Raster(depth, face, bary)
    lo_pix = int(pix.min())
    pix -= lo_pix  # now relative to the window
    zbuf = depth.ravel()[lo_pix : lo_pix + int(pix.max()) + 1]  # a view: the window of the depth map
    zbuf.fill(np.inf)
    np.minimum.at(zbuf, pix, z)
    win = np.flatnonzero(z <= zbuf[pix])
    zbuf[zbuf == np.inf] = 0.0
    pix, row = pix[win], row[win]
    pix += lo_pix
    face.ravel()[pix] = tri_id[row_tri][row]

    # 6. Perspective-correct barycentrics of the visible pixels: screen weights times 1/Z, renormalised.
    if with_bary:
        w = np.maximum(ra[:, row] * sx[win] + rc[:, row], 0.0) * izc[:, row]  # [3, P]; clamps rounding-level negatives
        bary.reshape(-1, 3)[pix] = rearrange(w / w.sum(0), "k p -> p k").astype(np.float32)
    return Raster(depth, face, bary)


def _dot3(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over the first axis of a * b for [3, R] arrays, added in the order k = 0, 1, 2."""
    out = a[0] * b[0]
    out += a[1] * b[1]
    out += a[2] * b[2]
    return out
