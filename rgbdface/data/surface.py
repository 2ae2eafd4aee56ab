"""Depth map + colours → a triangle mesh (trimesh), written as .ply, .obj or .glb.

The camera is the one relighting uses (`rgbdface.pipelines.relight`, which takes
`relief_depth_scale` from here): orthographic,
x to the image's right, y up, z toward the viewer, in pixel units. The pixel in row v,
column u becomes the vertex

    (u + 0.5,  -(v + 0.5),  -s · (depth - min depth))

so the mesh lies over the image with its top-left corner at the origin, and the nearest
point of the surface at z = 0 (everything else behind it, z < 0). `s` converts depth
units into pixels: given (`depth_scale`), or from an assumed relief, as for relighting
(the valid region's depth range spans `relief` × its width; 0.5 ≈ a hemisphere).

Every 2 × 2 block of valid pixels gives two triangles (split along its top-left to
bottom-right diagonal), wound counter-clockwise as seen from the viewer (normals toward
+z); a block with three valid pixels gives one. Each
vertex carries its pixel's colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MESH_SUFFIXES = (".ply", ".obj", ".glb")
DEFAULT_RELIEF = 0.5  # a hemisphere: a sphere's visible depth range is half its width


def to_numpy(x) -> np.ndarray:
    """A numpy array of `x`, which may be a torch tensor on any device."""
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def relief_depth_scale(depth: np.ndarray, valid: np.ndarray, relief: float = DEFAULT_RELIEF) -> float:
    """Pixels per depth unit such that the valid region's depth range spans `relief` × its width.

    A flat region (no depth range) gets 0: its normals all face the viewer.
    """
    if not relief > 0:
        raise ValueError(f"relief={relief!r}: expected a number > 0")
    depth, valid = to_numpy(depth), to_numpy(valid).astype(bool)
    if not valid.any():
        return 0.0
    d = depth[valid].astype(np.float64)
    span = float(d.max() - d.min())
    cols = np.flatnonzero(valid.any(axis=0))
    width = float(cols[-1] - cols[0] + 1)
    return relief * width / span if span > 0 else 0.0


def depth_to_mesh(depth: np.ndarray, valid: np.ndarray | None = None, colors: np.ndarray | None = None,
                  depth_scale: float | None = None, relief: float | None = None):
    """A `trimesh.Trimesh` of the valid pixels of `depth` [H, W] (larger = farther), coloured by `colors` [H, W, 3] uint8."""
    import trimesh

    d = np.asarray(depth, np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {d.shape}")
    valid = (d > 0) & np.isfinite(d) if valid is None else np.asarray(valid, bool)
    if valid.shape != d.shape:
        raise ValueError(f"valid {valid.shape} and depth {d.shape} must have the same shape")
    if colors is not None and np.shape(colors)[:2] != d.shape:
        raise ValueError(f"colors {np.shape(colors)} must be [H, W, 3] of the depth's size {d.shape}")
    if not valid.any():
        raise ValueError("no valid depth: nothing to mesh")
    s = relief_depth_scale(d, valid, relief if relief is not None else DEFAULT_RELIEF) if depth_scale is None else float(depth_scale)

    # 1. Vertices: one per valid pixel
    h, w = d.shape
    index = np.full((h, w), -1, np.int64)
    vs, us = np.nonzero(valid)
    index[vs, us] = np.arange(len(vs))
    z = -s * (d[vs, us] - d[valid].min())
    vertices = np.column_stack([us + 0.5, -(vs + 0.5), z])  # [V, 3]

    # 2. Faces: per 2 × 2 block, two triangles when all four pixels are valid, one when three are.
    # With y up, each corner triple below runs counter-clockwise seen from +z.
    tl, tr = index[:-1, :-1], index[:-1, 1:]  # top-left, top-right   [H-1, W-1]
    bl, br = index[1:, :-1], index[1:, 1:]  # bottom-left, bottom-right
    ok = lambda *c: np.logical_and.reduce([x >= 0 for x in c])
    full = ok(tl, tr, bl, br)
    candidates = [
        ((tl, bl, br), full | (ok(tl, bl, br) & (tr < 0))),
        ((tl, br, tr), full | (ok(tl, br, tr) & (bl < 0))),
        ((bl, br, tr), ok(bl, br, tr) & (tl < 0)),
        ((tl, bl, tr), ok(tl, bl, tr) & (br < 0)),
    ]
    tris = np.concatenate([np.stack([c[keep] for c in corners], -1) for corners, keep in candidates])  # [F, 3]

    # 3. Colours
    vertex_colors = None
    if colors is not None:
        rgb = np.asarray(colors)[vs, us][:, :3].astype(np.uint8)
        vertex_colors = np.column_stack([rgb, np.full(len(rgb), 255, np.uint8)])
    return trimesh.Trimesh(vertices=vertices, faces=tris, vertex_colors=vertex_colors, process=False)


def save_mesh(path: str | Path, mesh) -> Path:
    """Write a mesh atomically; the format follows the suffix (.ply, .obj, .glb)."""
    from rgbdface.utils import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"{path}: unknown mesh suffix {path.suffix!r}; use {', '.join(MESH_SUFFIXES)}")
    with atomic_path(path) as tmp:
        data = mesh.export(file_type=suffix[1:])
        Path(tmp).write_bytes(data if isinstance(data, bytes) else data.encode())
    return path
