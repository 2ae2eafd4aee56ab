"""Studio-like renders with exact depth: the fitted, textured face mesh seen anew.

These stand in for the paper's studio captures (multi-view faces with registered
meshes, paper §5.1). From one fitted portrait (its crop, landmarks and camera-space
mesh), each view:

1. opens the jaw: lower-face vertices turn about the axis through the jaw hinges
   (landmarks near the ears), weighted from 0 above the mouth to 1 below it;
2. turns the head (yaw, pitch, roll) about its centre, keeping its distance;
3. closes the mouth opening with a fan set back into the mouth (the mouth interior, textured
   from the source's mouth opening and darkened);
4. rasterises with the z-buffer, textures from the source crop (perspective-correct),
   shades with a Lambertian light from a new direction, and puts a new background behind.

Depth is exact for what is drawn: the rendered mesh's camera-space Z. The mask is the
visible face skin (eyes and the mouth interior left out), as for fitted samples.

Mixed identities: the mesh topology is MediaPipe's for every fit, so the shape of one
portrait can wear the texture of another (`render_view(texture_crop, texture_landmarks,
shape_vertices, ..., shape_landmarks=...)`); `View.albedo` changes the skin tone (a gain
per channel on the texture, before shading). prep-depth --studio-mix uses both.

Talking clips (`plan_talking_clip`) string views into a 25 fps sequence driven by
speech-like synthetic audio (data/speech.py): the jaw follows the audio's syllable
envelope, leading the sound by a frame as in real speech, the head drifts slowly and
the eyes blink now and then. They teach mouth opening <-> audio energy, not phonetics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbdface.data import mesh
from rgbdface.data.camera import Camera, EYE_DISTANCE_MM, eye_distance_px
from rgbdface.data.raster import rasterize

JAW_HINGES = (234, 454)  # face-outline points beside the ears
MOUTH_DEPTH_MM = 18.0  # how far the mouth-interior fan sits behind the lips
MOUTH_SHADE = 0.7


@dataclass
class View:
    """One studio view: angles in degrees, light as a unit vector (camera space, towards the light)."""

    yaw: float
    pitch: float
    roll: float
    jaw: float
    light: tuple[float, float, float]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    blink: float = 0.0  # eyelid closure, 0 = open, 1 = shut
    albedo: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain on the skin texture (RGB)

    def to_dict(self) -> dict:
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll, "jaw": self.jaw, "blink": self.blink, "light": list(self.light),
                "background": [list(c) for c in self.background], "albedo": [round(a, 4) for a in self.albedo]}


@dataclass
class StudioRender:
    """rgb: [S, S, 3] uint8; depth: [S, S] float32 mm (0 = background); mask: [S, S] bool skin;
    landmarks: [478, 3] float32 in crop pixels with MediaPipe-style z (pixels, relative to the head centre)."""

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray


ALBEDO_GAIN = (0.55, 1.3)  # overall skin-texture gain: darker to lighter skin than the source photo
ALBEDO_TINT = 0.08  # per-channel spread about it: warmer, cooler, greener


def random_albedo(rng: np.random.Generator) -> tuple[float, float, float]:
    """A skin-tone change for a mixed identity: one gain for the texture, tinted a little per channel."""
    gain = rng.uniform(*ALBEDO_GAIN)
    return tuple(float(gain * (1.0 + t)) for t in rng.uniform(-ALBEDO_TINT, ALBEDO_TINT, 3))


def random_view(rng: np.random.Generator) -> View:
    """Head pose, jaw and light drawn from ranges a studio rig covers for a frontal camera (skin tone kept)."""
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.3), -1.0])
    light /= np.linalg.norm(light)
    colours = rng.integers(20, 236, size=(2, 3))
    return View(
        yaw=float(rng.uniform(-30, 30)),
        pitch=float(rng.uniform(-15, 15)),
        roll=float(rng.uniform(-10, 10)),
        jaw=float(rng.uniform(0, 14)),
        light=tuple(float(v) for v in light),
        background=(tuple(int(v) for v in colours[0]), tuple(int(v) for v in colours[1])),
    )


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-space rotation (x right, y down, z forward): yaw about y, pitch about x, roll about z."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def _rotate_about(points: np.ndarray, axis_a: np.ndarray, axis_b: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate each point about the line a-b by its own angle (radians), Rodrigues' formula."""
    k = (axis_b - axis_a) / np.linalg.norm(axis_b - axis_a)
    v = points - axis_a
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return axis_a + v * c + np.cross(k, v) * s + k * (v @ k)[:, None] * (1 - c)


def open_jaw(vertices: np.ndarray, degrees: float) -> np.ndarray:
    """Turn the lower face down about the jaw hinges by `degrees`, fading in from the upper lip to the lower lip."""
    v = np.asarray(vertices, np.float64)
    if degrees == 0:
        return v.copy()
    hinge_a, hinge_b = v[JAW_HINGES[0]], v[JAW_HINGES[1]]
    up = v[mesh.NOSE_TIP] - v[mesh.CHIN]
    up /= np.linalg.norm(up)
    h = (v - v[mesh.LOWER_LIP_INNER]) @ up  # height above the lower inner lip
    gap = max(float((v[mesh.UPPER_LIP_INNER] - v[mesh.LOWER_LIP_INNER]) @ up), 1.0)
    weight = np.clip(1.0 - h / gap, 0.0, 1.0)  # 1 at and below the lower lip, 0 from the upper lip up
    sign = 1.0 if np.cross(hinge_b - hinge_a, up) @ np.array([0, 0, -1.0]) > 0 else -1.0
    # positive angle moves the chin away from the nose (down)
    out = _rotate_about(v, hinge_a, hinge_b, sign * np.radians(degrees) * weight)
    if np.linalg.norm(out[mesh.CHIN] - v[mesh.NOSE_TIP]) < np.linalg.norm(v[mesh.CHIN] - v[mesh.NOSE_TIP]):
        out = _rotate_about(v, hinge_a, hinge_b, -sign * np.radians(degrees) * weight)
    return out


def _lid_arcs(loop: np.ndarray, corners: tuple[int, int], v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split an eye contour at its corners into (upper lid, lower lid), each ordered from corners[0]."""
    i, j = (int(np.nonzero(loop == c)[0][0]) for c in corners)
    ring = np.roll(loop, -i)
    j = (j - i) % len(loop)
    one, other = ring[: j + 1], np.append(ring[j:], ring[0])[::-1]
    up = v[mesh.FOREHEAD_TOP] - v[mesh.CHIN]
    return (one, other) if (v[one] @ up).mean() > (v[other] @ up).mean() else (other, one)


def close_eyes(vertices: np.ndarray, amount: float) -> np.ndarray:
    """Lower each upper eyelid onto the lower one by `amount` (0 open, 1 shut); the iris follows it down."""
    v = np.asarray(vertices, np.float64).copy()
    if amount <= 0:
        return v
    right, left = mesh.eye_loops()
    for loop, corners, iris in ((right, mesh.RIGHT_EYE_CORNERS, range(468, 473)), (left, mesh.LEFT_EYE_CORNERS, range(473, 478))):
        upper, lower = _lid_arcs(loop, corners, v)
        # pair each upper-lid point with the lower-lid point at the same fraction of the way along
        s_up, s_lo = np.linspace(0, 1, len(upper)), np.linspace(0, 1, len(lower))
        target = np.stack([np.interp(s_up, s_lo, v[lower, k]) for k in range(3)], 1)
        v[upper[1:-1]] += amount * (target[1:-1] - v[upper[1:-1]])
        iris = list(iris)
        v[iris] += amount * (v[lower].mean(0) - v[iris[0]])
    return v


def render_view(crop: np.ndarray, landmarks: np.ndarray, vertices: np.ndarray, camera: Camera, view: View, shape_landmarks: np.ndarray | None = None,
                linear: bool = False) -> StudioRender:
    """Render the textured mesh of one fitted crop under `view` (see the module doc for the steps).

    `crop` and `landmarks` give the texture, `vertices` (camera-space mm, MediaPipe topology)
    the shape. They usually come from the same fit; for a mixed identity the shape comes from
    another portrait, whose landmarks (`shape_landmarks`) set the scale of the output landmarks.
    linear: shade in linear light (the texture decoded from sRGB, shaded, encoded again), as a
    camera sees light add up; by default the shading multiplies the encoded values."""
    import cv2

    size = crop.shape[0]
    n = len(vertices)
    # 1-2. jaw and eyelids, then head pose about the head centre
    v = close_eyes(open_jaw(vertices, view.jaw), view.blink)
    centre = v[:468].mean(0)
    v = (v - centre) @ _rotation(view.yaw, view.pitch, view.roll).T + centre
    # 3. mouth interior: a fan from a point behind the lips, along the head's backward direction
    loop = mesh.mouth_loop()
    normals = mesh.vertex_normals(v, mesh.skin_triangles())
    back = -normals[mesh.NOSE_TIP]
    mouth_centre = v[loop].mean(0) + MOUTH_DEPTH_MM * back
    v_all = np.vstack([v, mouth_centre])
    skin, eyes, mouth = mesh.skin_triangles(), mesh.eye_triangles(), mesh.mouth_triangles(n)
    tris = np.concatenate([skin, eyes, mouth])
    # 4. rasterise; texture coordinates are the landmarks' positions in the source crop
    uvz = camera.project(v_all)
    r = rasterize(uvz, tris, size, size)
    n_skin, n_face = len(skin), len(skin) + len(eyes)
    uv_src = np.vstack([landmarks[:, :2], landmarks[loop, :2].mean(0)])
    uv = r.interpolate(uv_src, tris)  # [S, S, 2]
    tex = cv2.remap(crop, uv[..., 0] - 0.5, uv[..., 1] - 0.5, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    tex *= np.asarray(view.albedo, np.float32)
    nrm = r.interpolate(np.vstack([mesh.vertex_normals(v, np.concatenate([skin, eyes])), -back]), tris)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-6)
    light = -np.asarray(view.light)  # normals point at the camera (-Z); light given towards the light source
    shade = 0.45 + 0.75 * np.clip(-(nrm @ light), 0.0, 1.0)
    if linear:
        tex = np.where(tex <= 10.31475, tex / (255 * 12.92), ((tex / 255 + 0.055) / 1.055) ** 2.4).astype(np.float32)
    colour = tex * shade[..., None]
    inside_mouth = r.face >= n_face  # textured from the source's mouth opening, unlit and darkened
    colour[inside_mouth] = tex[inside_mouth] * MOUTH_SHADE
    if linear:
        colour = np.clip(colour, 0, None)
        colour = 255 * np.where(colour <= 0.0031308, 12.92 * colour, 1.055 * np.power(colour, 1 / 2.4) - 0.055)
    # background: a vertical gradient between two colours
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    c0, c1 = (np.array(c, np.float32) for c in view.background)
    bg = np.broadcast_to(c0 * (1 - t) + c1 * t, (size, size, 3))
    rgb = np.where(r.covered[..., None], colour, bg)
    rgb = np.clip(rgb, 0, 255).round().astype(np.uint8)
    mask = (r.face >= 0) & (r.face < n_skin)
    # landmarks of the new view, MediaPipe-style: z in pixels relative to the head centre
    mm_per_px = EYE_DISTANCE_MM / eye_distance_px(landmarks if shape_landmarks is None else shape_landmarks)
    z0 = camera.fx * mm_per_px
    lm = np.column_stack([uvz[:n, :2], (uvz[:n, 2] - z0) / mm_per_px]).astype(np.float32)
    return StudioRender(rgb, r.depth, mask, lm)


# --- talking clips ---------------------------------------------------------------------


@dataclass
class TalkingPlan:
    """A talking clip before rendering: one View per frame and the clip's audio.

    views: F views at `fps`; audio: [round(F * sample_rate / fps)] float32, frame f covering
    samples [f sr / fps, (f + 1) sr / fps); envelope: [F] per-frame syllable envelope in [0, 1]."""

    views: list[View]
    audio: np.ndarray
    envelope: np.ndarray
    fps: float
    sample_rate: int


MOUTH_LEAD_FRAMES = 1  # the jaw moves ~40 ms before the sound it shapes


def plan_talking_clip(n_frames: int, fps: float, rng: np.random.Generator, max_jaw: tuple[float, float] = (12.0, 18.0)) -> TalkingPlan:
    """Audio and per-frame views of a synthetic talking clip (see the module doc)."""
    from rgbdface.data.speech import synthesize

    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    # 1. Audio: exactly n_frames / fps seconds; the per-frame envelope drives the jaw.
    speech = synthesize(n_frames / fps, rng)
    env = speech.frame_envelope(fps)[:n_frames]  # [F]
    ahead = np.append(env[MOUTH_LEAD_FRAMES:], np.full(MOUTH_LEAD_FRAMES, env[-1]))[:n_frames]
    jaw = float(rng.uniform(*max_jaw)) * np.convolve(np.pad(ahead, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")  # a little jaw inertia
    # 2. Head: a base pose plus slow drift (two sines per angle, 0.15-0.6 Hz) and small nods on stressed syllables.
    t = np.arange(n_frames) / fps
    base = rng.uniform([-15, -8, -5], [15, 8, 5])
    amp = np.array([3.0, 2.0, 1.5])
    angles = []
    for k in range(3):
        f, ph = rng.uniform(0.15, 0.6, 2), rng.uniform(0, 2 * np.pi, 2)
        angles.append(base[k] + amp[k] * 0.5 * (np.sin(2 * np.pi * f[0] * t + ph[0]) + np.sin(2 * np.pi * f[1] * t + ph[1])))
    angles[1] = angles[1] + 1.5 * ahead
    # 3. Blinks: every 2-5 s, five frames closing and opening.
    blink = np.zeros(n_frames)
    shape = np.array([0.4, 0.9, 1.0, 0.6, 0.2])
    f0 = int(rng.uniform(0.3, 3.0) * fps)
    while f0 < n_frames:
        blink[f0 : f0 + len(shape)] = shape[: n_frames - f0]
        f0 += int(rng.uniform(2.0, 5.0) * fps)
    # 4. One light and background for the clip.
    still = random_view(rng)
    views = [View(float(angles[0][i]), float(angles[1][i]), float(angles[2][i]), float(jaw[i]), still.light, still.background, float(blink[i])) for i in range(n_frames)]
    return TalkingPlan(views, speech.audio, env.astype(np.float32), fps, speech.sample_rate)
