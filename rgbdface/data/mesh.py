"""The MediaPipe face mesh as triangles, and the regions prep-depth needs from it.

MediaPipe publishes the face mesh's topology only as edges
(``FACEMESH_TESSELATION``). Its triangles are the 3-cycles of that edge graph,
less the "separating" 3-cycles that enclose a vertex instead of bounding a face
(removing their three corners cuts the graph in two). The result is a manifold
surface of 852 triangles over the first 468 landmarks, with three holes: the two
eye openings and the mouth opening. Landmarks 468-477 are the irises.

- ``skin_triangles()``: the 852 face-mesh triangles (face skin, lips included).
- ``eye_triangles()``: fans from each iris centre over its eye opening, closing the
  eye holes so depth covers the eyes (the mask leaves them out).
- ``mouth_loop()``: the inner lip contour, ordered, for the mouth interior.
"""

from __future__ import annotations

import functools
from collections import defaultdict, deque

import numpy as np

NUM_MESH_VERTICES = 468
RIGHT_IRIS_CENTRE = 468  # subject's right eye (image left on a frontal face)
LEFT_IRIS_CENTRE = 473
NOSE_TIP = 1
FOREHEAD_TOP = 10
CHIN = 152
# outer and inner corners of each eye: the eye centres used for scale
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
UPPER_LIP_INNER = 13
UPPER_LIP_TOP = 0  # the outer upper lip's highest point
MOUTH_CORNERS = (61, 291)
LOWER_LIP_INNER = 14


def _connections():
    from mediapipe.python.solutions import face_mesh_connections

    return face_mesh_connections


def _loop(edges) -> np.ndarray:
    """Order the vertices of a set of edges that form one closed loop."""
    nb = defaultdict(list)
    for a, b in edges:
        nb[a].append(b)
        nb[b].append(a)
    start = min(nb)
    order, prev, cur = [start], None, start
    while True:
        nxt = next(v for v in nb[cur] if v != prev) if prev is not None else nb[cur][0]
        if nxt == start:
            break
        order.append(nxt)
        prev, cur = cur, nxt
    if len(order) != len(nb):
        raise RuntimeError("face-mesh contour is not a single loop")
    return np.array(order, dtype=np.int32)


def _components(edges) -> list[set]:
    nb = defaultdict(set)
    for a, b in edges:
        nb[a].add(b)
        nb[b].add(a)
    seen, comps = set(), []
    for v in nb:
        if v in seen:
            continue
        comp, todo = set(), [v]
        while todo:
            u = todo.pop()
            if u not in comp:
                comp.add(u)
                todo.extend(nb[u] - comp)
        seen |= comp
        comps.append(comp)
    return comps


@functools.lru_cache(maxsize=None)
def skin_triangles() -> np.ndarray:
    """[852, 3] int32 face-mesh triangles, consistently oriented (neighbours wind alike)."""
    edges = {tuple(sorted(e)) for e in _connections().FACEMESH_TESSELATION}
    nb = defaultdict(set)
    for a, b in edges:
        nb[a].add(b)
        nb[b].add(a)
    candidates = {tuple(sorted((a, b, c))) for a, b in edges for c in nb[a] & nb[b]}

    def separating(tri) -> bool:
        rest = set(range(NUM_MESH_VERTICES)) - set(tri)
        start = next(iter(rest))
        seen, todo = {start}, [start]
        while todo:
            for w in nb[todo.pop()]:
                if w in rest and w not in seen:
                    seen.add(w)
                    todo.append(w)
        return len(seen) < len(rest)

    count = defaultdict(int)
    for t in candidates:
        for e in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2])):
            count[e] += 1
    # only a 3-cycle whose edges all border 3+ cycles can be separating: test just those
    suspects = [t for t in candidates if all(count[e] >= 3 for e in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2])))]
    faces = sorted(candidates - {t for t in suspects if separating(t)})
    return _orient(np.array(faces, dtype=np.int32))


def _orient(tris: np.ndarray) -> np.ndarray:
    """Flip triangles so neighbours traverse their shared edge in opposite directions."""
    tris = tris.copy()
    by_edge = defaultdict(list)
    for i, t in enumerate(tris):
        for k in range(3):
            by_edge[tuple(sorted((t[k], t[(k + 1) % 3])))].append(i)
    done = np.zeros(len(tris), bool)
    for seed in range(len(tris)):
        if done[seed]:
            continue
        done[seed] = True
        todo = deque([seed])
        while todo:
            i = todo.popleft()
            t = tris[i]
            for k in range(3):
                a, b = t[k], t[(k + 1) % 3]
                for j in by_edge[tuple(sorted((a, b)))]:
                    if j == i or done[j]:
                        continue
                    u = list(tris[j])  # the neighbour must run b -> a
                    ia = u.index(a)
                    if u[(ia + 1) % 3] == b:  # runs a -> b as well: flip it
                        tris[j] = tris[j][::-1]
                    done[j] = True
                    todo.append(j)
    return tris


@functools.lru_cache(maxsize=None)
def eye_loops() -> tuple[np.ndarray, np.ndarray]:
    """Ordered eyelid contours (right eye, left eye), subject's sides."""
    c = _connections()
    return _loop(c.FACEMESH_RIGHT_EYE), _loop(c.FACEMESH_LEFT_EYE)


@functools.lru_cache(maxsize=None)
def mouth_loop() -> np.ndarray:
    """The ordered inner lip contour (the edge of the mouth opening)."""
    for comp in _components(_connections().FACEMESH_LIPS):
        if UPPER_LIP_INNER in comp:
            edges = [e for e in _connections().FACEMESH_LIPS if e[0] in comp]
            return _loop(edges)
    raise RuntimeError("inner lip contour not found")


def _fan(centre: int, loop: np.ndarray) -> np.ndarray:
    return np.stack([np.full(len(loop), centre), loop, np.roll(loop, -1)], 1).astype(np.int32)


@functools.lru_cache(maxsize=None)
def eye_triangles() -> np.ndarray:
    """[32, 3] fans from each iris centre over its eye opening (closes the eye holes)."""
    right, left = eye_loops()
    return np.concatenate([_fan(RIGHT_IRIS_CENTRE, right), _fan(LEFT_IRIS_CENTRE, left)])


def mouth_triangles(centre_index: int) -> np.ndarray:
    """Fan over the mouth opening from an extra vertex `centre_index` (appended by the caller)."""
    return _fan(centre_index, mouth_loop())


def vertex_normals(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [N, 3] in camera space (camera looks along +Z),
    signed so that the normal at the nose tip points back at the camera (negative Z)."""
    a, b, c = verts[tris[:, 0]], verts[tris[:, 1]], verts[tris[:, 2]]
    fn = np.cross(b - a, c - a)
    vn = np.zeros_like(verts, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, tris[:, k], fn)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    return -vn if vn[NOSE_TIP, 2] > 0 else vn
