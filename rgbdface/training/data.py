"""Training data: the dataset manifest → deterministic streams of samples (stages 1–2) and clips (stage 3).

Every random choice for the n-th sample of a run — which sample, which reference, the
reference dropout, the stage-2 mask, the noise and the timestep — is a pure function of
(seed, n). So the data-order state of a run is one integer (samples consumed), resuming
is exact, and processes of a multi-process run draw disjoint samples without talking to
each other: process r of w takes micro-batch slots r, r + w, r + 2w, …

Depth files hold camera-space Z (0.1 mm steps, 0 = no depth). Invalid pixels are encoded
as the far value by the codec (DESIGN §1); how much they count in the loss is
`loss.depth_background_weight` (see objectives.py).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rgbdface.data.audio import audio_windows
from rgbdface.data.manifest import read_samples  # noqa: F401  (read here before torch loads; part of this module's API)
from rgbdface.utils import InputError

log = logging.getLogger("rgbdface.training")

# Salts keep the independent draws for one sample apart.
SALT_ORDER, SALT_REF, SALT_KEEP, SALT_MASK, SALT_NOISE, SALT_CLIP, SALT_FLIP, SALT_SELF, SALT_PHOTO, SALT_COLOUR, SALT_SAME, SALT_FIELD, SALT_FINAL = range(13)


def exclude_identities(samples: list, names: list[str], where: str = "data.exclude_identities") -> list:
    """`samples` without those of the identities `names` (order kept), nor those made from their portraits (prep-depth
    --studio-mix, --shape-blends: their shape or skin); a one-line error for a name the dataset does not have, or when
    nothing is left."""
    if not names:
        return samples
    known = sorted({s.identity for s in samples})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"{where}: no identity {', '.join(map(repr, unknown))} in the dataset; it has: {', '.join(known)}")
    excluded = set(names)
    identity_of = {s.id: s.identity for s in samples}
    kept = [s for s in samples if s.identity not in excluded and not excluded & {identity_of.get(i) for i in made_from(s)}]
    if not kept:
        raise InputError(f"{where}: every identity of the dataset is excluded; leave at least one to train on")
    log.info("excluding %d samples of %s; training on %d", len(samples) - len(kept), ", ".join(names), len(kept))
    return kept


def made_from(sample) -> list[str]:
    """The ids of the fitted portraits a made-up sample's shape and skin come from (none for a portrait's own)."""
    view = sample.view or {}
    return [i for i in (view.get("shape"), view.get("texture"), *view.get("shapes", ())) if i]


def draw_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (stable across processes, platforms and Python versions)."""
    h = hashlib.blake2b(np.asarray(keys, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def rng_for(*keys: int) -> np.random.Generator:
    return np.random.default_rng(draw_seed(*keys))


def torch_gen(*keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(draw_seed(*keys))


# ----------------------------------------------------------------------------- order
class Order:
    """n → index into `pool`: epoch-wise permutations, optionally interleaving two sources by a fixed ratio.

    With a studio fraction p, sample n is studio iff floor((n + 1) p) > floor(n p); so among the
    first n samples exactly floor(n p) are studio, and each source walks its own permutations.
    """

    def __init__(self, seed: int, studio: list[int], wild: list[int], studio_fraction: float | None):
        self.seed = seed
        self.p = studio_fraction
        self._perms: dict[tuple[int, int], np.ndarray] = {}  # (group, epoch) → permutation of the group
        if self.p is None:
            self.groups = [sorted(studio + wild)]
        else:
            if self.p > 0 and not studio:
                raise InputError(f"data.studio_fraction={self.p} but the dataset has no studio samples; set data.studio_fraction=none")
            if self.p < 1 and not wild:
                raise InputError(f"data.studio_fraction={self.p} but the dataset has no wild samples; set data.studio_fraction=none")
            self.groups = [wild, studio]

    def _perm(self, group: int, epoch: int) -> np.ndarray:
        """The group's order in that epoch; built once and kept (with the one before), since consecutive
        samples walk the same epoch: building it per sample cost O(pool) each (0.1 s at 1 M samples)."""
        key = (group, epoch)
        perm = self._perms.get(key)
        if perm is None:
            items = self.groups[group]
            perm = np.asarray(items)[rng_for(self.seed, SALT_ORDER, group, epoch).permutation(len(items))]
            self._perms = {k: v for k, v in self._perms.items() if k[0] != group or k[1] == epoch - 1}
            self._perms[key] = perm
        return perm

    def __call__(self, n: int) -> int:
        if self.p is None:
            group, pos = 0, n
        else:
            studio_before = int(np.floor(n * self.p))
            group = int(np.floor((n + 1) * self.p)) > studio_before
            pos = studio_before if group else n - studio_before
        items = self.groups[group]
        epoch, i = divmod(pos, len(items))
        return int(self._perm(group, epoch)[i])


# ----------------------------------------------------------------------------- loading
def load_rgb(path: Path, size: int) -> torch.Tensor:
    """uint8 RGB file → [3, S, S] in [-1, 1] (antialiased bilinear resize if needed)."""
    from rgbdface.data.io import load_image

    x = torch.from_numpy(load_image(path)).permute(2, 0, 1).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return x


def load_depth_map(path: Path | None, size: int) -> torch.Tensor:
    """16-bit depth PNG → [1, S, S] float32 (0 = no depth); nearest resize so invalid pixels stay invalid.

    A row without depth (None) has none anywhere; a named file must exist (runs check before step 0).
    """
    from rgbdface.data.io import load_depth

    if path is None:
        return torch.zeros(1, size, size)
    d = torch.from_numpy(load_depth(path)).float()[None]
    if d.shape[-1] != size or d.shape[-2] != size:
        d = F.interpolate(d[None], size=(size, size), mode="nearest-exact")[0]
    return d


def mouth_region(landmarks_path: Path | None, crop_size: int, size: int) -> torch.Tensor:
    """[1, S, S]: 1 in the box where speech moves the face (from the outer upper lip down to the chin, between the
    mouth corners widened by a quarter of the mouth's width on each side), else 0; all 0 without landmarks.

    `crop_size`: the side of the crop the landmarks' pixels refer to (the sample's `size`)."""
    from rgbdface.data import mesh

    region = torch.zeros(1, size, size)
    if landmarks_path is None:
        return region
    lm = np.load(landmarks_path, allow_pickle=False)[:, :2] * (size / crop_size)
    corners = lm[list(mesh.MOUTH_CORNERS)]
    x0, x1 = corners[:, 0].min(), corners[:, 0].max()
    pad = 0.25 * (x1 - x0)
    y0, y1 = lm[mesh.UPPER_LIP_TOP, 1], lm[mesh.CHIN, 1]
    c0, c1 = (int(np.clip(np.floor(v), 0, size)) for v in (x0 - pad, x1 + pad + 1))
    r0, r1 = (int(np.clip(np.floor(v), 0, size)) for v in (y0, y1 + 1))
    region[:, r0:r1, c0:c1] = 1.0
    return region


# ----------------------------------------------------------------------------- appearance augmentation
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
GREY_PROB = 0.2  # share of colour transforms that make the image black and white
GAINS = (0.6, 1.4)  # per-channel gain (white balance, tint)
SATURATION = (0.0, 1.6)  # 0 = grey, 1 = as is
BRIGHTNESS = (0.7, 1.3)


def hue_rotation(angle: float) -> np.ndarray:
    """3 x 3 rotation of RGB about the grey axis by `angle` radians: every hue turns alike, greys stay."""
    a = np.ones(3) / np.sqrt(3.0)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_colour_matrix(rng: np.random.Generator, hue: float = 0.0) -> torch.Tensor:
    """A random colour transform of RGB in [0, 1] as a 3 x 3 matrix: black and white (GREY_PROB), or a
    saturation change, per-channel gains and a brightness change. With probability `hue` a colour one
    also turns every hue by a uniform random angle, and half of those swap two channels too (the colour
    wheel mirrored): skin may come out green or blue. Applied alike to a target and its reference, it
    leaves the reference as the only source of the target's colours."""
    grey = np.tile(LUMA, (3, 1))
    if rng.random() < GREY_PROB:
        m = grey * rng.uniform(*BRIGHTNESS)
    else:
        sat = rng.uniform(*SATURATION)
        m = rng.uniform(*BRIGHTNESS) * np.diag(rng.uniform(*GAINS, 3)) @ (sat * np.eye(3) + (1 - sat) * grey)
        if hue > 0 and rng.random() < hue:  # drawn after the rest, so hue = 0 draws the same matrices as before
            turn = hue_rotation(rng.uniform(0.0, 2 * np.pi))
            if rng.random() < 0.5:
                i, j = rng.choice(3, size=2, replace=False)
                swap = np.eye(3)
                swap[[i, j]] = swap[[j, i]]
                turn = swap @ turn
            m = turn @ m
    return torch.from_numpy(m.astype(np.float32))


def apply_colour(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """RGB in [-1, 1] [..., 3, H, W] through a colour matrix (in [0, 1] space), clipped back to [-1, 1]."""
    u = (x + 1.0) / 2.0
    u = torch.einsum("ij,...jhw->...ihw", matrix, u)
    return u.clamp(0.0, 1.0) * 2.0 - 1.0


def over_background(rgb: torch.Tensor, depth: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """A studio render [3, S, S] drawn over a background [3, S, S] (a photo or a random field): the render
    where it has depth (the rendered face), the background elsewhere."""
    return torch.where(depth > 0, rgb, background)


def random_field(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A random background [3, S, S] in [-1, 1]: smooth random colours (a 2-5 cell grid, bicubic) with
    finer random detail (8-16 cells) of random strength, so that no two samples share a background."""
    def grid(k: int, scale: float) -> torch.Tensor:
        cells = torch.from_numpy(rng.uniform(-1, 1, (1, 3, k, k)).astype(np.float32)) * scale
        return F.interpolate(cells, size=(size, size), mode="bicubic", align_corners=False)[0]

    return (grid(int(rng.integers(2, 6)), 1.0) + grid(int(rng.integers(8, 17)), float(rng.uniform(0, 0.4)))).clamp(-1, 1)


def photos_by_identity(samples: list) -> dict[str, list[int]]:
    """identity → indices of its photographs (non-studio samples), for data.photo_background. A mixed
    identity (prep-depth --studio-mix) has no photo of its own: it takes the photo that gave it its skin."""
    out: dict[str, list[int]] = {}
    photo_ids: dict[str, int] = {}
    for i, s in enumerate(samples):
        if s.source != "studio":
            out.setdefault(s.identity, []).append(i)
            photo_ids[s.id] = i
    for s in samples:
        texture = (s.view or {}).get("texture")
        if s.identity not in out and texture in photo_ids:
            out[s.identity] = [photo_ids[texture]]
    return out


@dataclass
class LatentSpec:
    """What the data side needs to know of the model: sizes and the noise schedule length."""

    image_size: int
    latent_channels: int
    latent_size: int
    num_train_timesteps: int


def noise_and_timestep(seed: int, n: int, shape: tuple[int, ...], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ε ~ N(0, I) of `shape` and t ~ U{0..T-1} for sample n (eq. 5), from their own generator."""
    g = torch_gen(seed, SALT_NOISE, n)
    t = torch.randint(0, T, (), generator=g)
    return torch.randn(shape, generator=g), t


def background_for(stream, n: int, s) -> torch.Tensor | None:
    """Stream helper: the background studio sample n is drawn over, or None: a photo of `s`'s identity
    (data.photo_background), else a random field (data.random_background)."""
    if s.source != "studio":
        return None
    photos = stream.photos.get(s.identity)
    if stream.photo_background > 0 and photos:
        rng = rng_for(stream.seed, SALT_PHOTO, n)
        if rng.random() < stream.photo_background:
            return load_rgb(stream.samples[photos[int(rng.integers(len(photos)))]].rgb, stream.spec.image_size)
    if stream.random_background > 0:
        rng = rng_for(stream.seed, SALT_FIELD, n)
        if rng.random() < stream.random_background:
            return random_field(rng, stream.spec.image_size)
    return None


def colour_for(stream, n: int) -> torch.Tensor | None:
    """Stream helper: the colour matrix of sample n (data.colour_jitter), or None."""
    if stream.colour_jitter <= 0:
        return None
    rng = rng_for(stream.seed, SALT_COLOUR, n)
    return random_colour_matrix(rng, stream.colour_hue) if rng.random() < stream.colour_jitter else None


# ----------------------------------------------------------------------------- stages 1 and 2
class ImageStream(torch.utils.data.Dataset):
    """Sample n of a run: target RGB + depth, a reference of the same identity, noise, timestep, keep.

    The reference is another sample of the same identity (never the target itself). An identity
    with one sample only is skipped with a warning (`data.single_sample=skip`), rejected
    (`error`), or uses its mirrored image as the other view (`mirror`). With probability
    `hflip` a sample is mirrored left-right as a whole (target RGB, depth and reference): the
    mirror image of a face is another plausible face with its mirrored depth (the crop's
    principal point is its centre), and it balances head turns to either side. With
    probability `self_reference`, a stage-2 sample whose RGB is wholly kept (image → depth)
    takes its own image as the reference, as depth estimation does at inference: the
    reference then tells nothing the kept RGB does not.

    Appearance (all off by default): with probability `photo_background` a studio target is drawn
    over a photo of its identity, and so is its reference when that is a studio render too, so the
    background is the reference's to copy; a studio target not drawn over a photo is drawn, with
    its studio reference, over one random field (`random_field`) with probability `random_background`,
    so that the background cannot be remembered, only copied; with probability `colour_jitter` one random colour
    transform (random_colour_matrix; with probability `colour_hue` its hues turned as well) changes the
    target and its reference alike, so the colours are the reference's to copy. Such samples are encoded afresh (`fresh`), never cached. With
    probability `same_reference` (stage 1) the target is its own reference: copying it is then
    the whole task, which teaches the ReferenceNet path to carry appearance at all. With probability
    `final_step` (stage 2) an image → depth sample is trained at the last timestep, T - 1, where
    estimation in one step starts from pure noise, instead of at a uniform random one.
    """

    def __init__(self, samples: list, spec: LatentSpec, seed: int, studio_fraction: float | None,
                 single_sample: str = "skip", reference_dropout: float = 0.0, mask_sampler=None, hflip: float = 0.0,
                 self_reference: float = 0.0, photo_background: float = 0.0, colour_jitter: float = 0.0,
                 same_reference: float = 0.0, colour_hue: float = 0.0, random_background: float = 0.0,
                 final_step: float = 0.0):
        self.samples, self.spec, self.seed, self.hflip = samples, spec, seed, hflip
        self.colour_hue = colour_hue
        self.same_reference = same_reference
        self.photo_background, self.colour_jitter = photo_background, colour_jitter
        self.random_background = random_background
        self.final_step = final_step
        self.photos = photos_by_identity(samples)
        self.self_reference = self_reference
        self.cached: dict | None = None  # the objective's latent cache, when it runs in this process (see _held)
        self.reference_dropout, self.mask_sampler = reference_dropout, mask_sampler
        by_id: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            by_id.setdefault(s.identity, []).append(i)
        singles = sorted(k for k, v in by_id.items() if len(v) < 2)
        if singles and single_sample == "error":
            raise InputError(f"identity {singles[0]!r} has one sample only (no other view for the reference); "
                             "add frames/views or set data.single_sample=skip or mirror")
        if singles and single_sample == "skip":
            log.warning("skipping %d identities with one sample only (no other view for the reference): %s",
                        len(singles), ", ".join(singles[:5]) + (" ..." if len(singles) > 5 else ""))
            by_id = {k: v for k, v in by_id.items() if len(v) >= 2}
        self.by_id = by_id
        pool = sorted(i for v in by_id.values() for i in v)
        if not pool:
            raise InputError("no identity has two or more samples, so no reference can differ from its target; "
                             "add frames/views (prep-depth --studio N) or set data.single_sample=mirror")
        self.pool = pool
        studio = [i for i in pool if samples[i].source == "studio"]
        wild = [i for i in pool if samples[i].source != "studio"]
        self.order = Order(seed, studio, wild, studio_fraction)

    def __len__(self) -> int:  # one epoch
        return len(self.pool)

    def background_for(self, n: int, s) -> torch.Tensor | None:
        """The background [3, S, S] that studio sample n (row `s`) is drawn over, or None."""
        return background_for(self, n, s)

    def colour_for(self, n: int) -> torch.Tensor | None:
        """The colour matrix of sample n, or None."""
        return colour_for(self, n)

    def reference_of(self, n: int, i: int) -> tuple[int, bool]:
        """(reference index, mirrored) for sample n whose target is i."""
        others = [j for j in self.by_id[self.samples[i].identity] if j != i]
        if not others:
            return i, True
        return others[int(rng_for(self.seed, SALT_REF, n).integers(len(others)))], False

    def _held(self, *keys) -> bool:
        """Whether the objective holds the latents of every (kind, key) already (data.cache_latents)."""
        return self.cached is not None and all(k in self.cached for k in keys)

    def __getitem__(self, n: int) -> dict:
        spec = self.spec
        S = spec.image_size
        i = self.order(n)
        j, mirrored = self.reference_of(n, i)
        s = self.samples[i]
        flip = self.hflip > 0 and bool(rng_for(self.seed, SALT_FLIP, n).random() < self.hflip)
        background = self.background_for(n, s)
        colour = self.colour_for(n)
        fresh = background is not None or colour is not None  # augmented RGB: its latents are not cached
        masks = self.mask_sampler(rng_for(self.seed, SALT_MASK, n), spec.latent_size) if self.mask_sampler is not None else None
        own = False
        if (masks is not None and self.self_reference > 0 and not masks[0].any()
                and rng_for(self.seed, SALT_SELF, n).random() < self.self_reference):
            j, mirrored, own = i, False, True  # image → depth: its own (possibly flipped) image, as at inference
        elif masks is None and self.same_reference > 0 and rng_for(self.seed, SALT_SAME, n).random() < self.same_reference:
            j, mirrored, own = i, False, True  # stage 1: the target is its own reference

        # Pixels whose latents the objective holds are not decoded (zeros of the same shape stand in).
        depth_held = background is None and self._held(("depth", (i, flip)), ("valid", (i, flip)))
        rgb_held = not fresh and self._held(("rgb", (i, flip)))
        ref_held = not fresh and self._held(("reference", (j, mirrored != flip)))
        depth = torch.zeros(1, S, S) if depth_held else load_depth_map(s.depth, S)
        rgb = torch.zeros(3, S, S)
        if not rgb_held or (own and not ref_held):
            rgb = load_rgb(s.rgb, S)
            if background is not None:
                rgb = over_background(rgb, depth, background)
            if flip:
                rgb = rgb.flip(-1)
        if flip and not depth_held:
            depth = depth.flip(-1)
        if ref_held:
            ref = torch.zeros(3, S, S)
        elif own:
            ref = rgb
        else:
            ref = load_rgb(self.samples[j].rgb, S)
            if background is not None and self.samples[j].source == "studio":
                ref = over_background(ref, load_depth_map(self.samples[j].depth, S), background)
            if mirrored != flip:  # a single image's other "view" is its mirror image (never the target pixels); a flip mirrors it too
                ref = ref.flip(-1)
        if colour is not None:
            rgb, ref = apply_colour(rgb, colour), apply_colour(ref, colour)
        keep = bool(rng_for(self.seed, SALT_KEEP, n).random() >= self.reference_dropout)
        noise, t = noise_and_timestep(self.seed, n, (2 * spec.latent_channels, spec.latent_size, spec.latent_size),
                                      spec.num_train_timesteps)
        if (masks is not None and self.final_step > 0 and not masks[0].any() and masks[1].all()
                and rng_for(self.seed, SALT_FINAL, n).random() < self.final_step):
            t = torch.tensor(spec.num_train_timesteps - 1)  # image → depth at the step one-step estimation takes
        item = {
            "n": n, "index": i, "ref_index": j, "mirrored": mirrored, "flipped": flip,
            "rgb": rgb,  # [3, S, S] in [-1, 1]
            "depth": depth,  # [1, S, S], 0 = invalid
            "reference": ref,  # [3, S, S]
            "keep": keep, "noise": noise, "timestep": t,
            "fresh": fresh,  # RGB latents not to be cached
        }
        if masks is not None:
            item["m_rgb"], item["m_depth"] = masks
        return item


# ----------------------------------------------------------------------------- stage 3
@dataclass
class ClipWindow:
    """A run of consecutive frames of one clip: sample indices in frame order."""

    clip: str
    identity: str
    indices: list[int]


def contiguous_runs(samples: list, min_len: int) -> list[ClipWindow]:
    """Each clip split at frame gaps (frames where no face was fitted); runs shorter than min_len dropped."""
    by_clip: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_clip.setdefault(s.clip, []).append(i)
    runs = []
    for clip, idx in sorted(by_clip.items()):
        idx = sorted(idx, key=lambda k: samples[k].frame)
        start = 0
        for k in range(1, len(idx) + 1):
            if k == len(idx) or samples[idx[k]].frame != samples[idx[k - 1]].frame + 1:
                if k - start >= min_len:
                    runs.append(ClipWindow(clip, samples[idx[start]].identity, idx[start:k]))
                start = k
    return runs


class ClipStream(torch.utils.data.Dataset):
    """Clip n of a stage-3 run: F target frames, the n_m ground-truth frames before them, audio windows.

    The motion frames are the frames that precede the target window (paper §5.1); with
    probability `first_clip_prob` they are the reference repeated instead, as for the first
    clip at inference. The reference is a frame of the same identity outside the window
    when there is one. Audio features are per frame [T, A] of the clip, windowed by k.
    `photo_background`, `random_background` and `colour_jitter` act as in ImageStream, alike on every frame of the clip,
    its motion frames and its reference. With `mouth`, each target frame also carries its mouth
    region (`mouth_region`, for `loss.mouth_weight`). `noise`: "frame" draws each frame's noise on its own,
    "video" gives every frame of the clip the first frame's (as talk starts a video).
    """

    def __init__(self, samples: list, spec: LatentSpec, seed: int, frames: int, motion_frames: int,
                 audio_features, window: int = 5, first_clip_prob: float = 0.0, reference_dropout: float = 0.0,
                 photo_background: float = 0.0, colour_jitter: float = 0.0, colour_hue: float = 0.0, mouth: bool = False,
                 noise: str = "frame", random_background: float = 0.0):
        self.samples, self.spec, self.seed = samples, spec, seed
        self.shared_noise = noise == "video"
        self.colour_hue, self.mouth = colour_hue, mouth
        self.photo_background, self.colour_jitter = photo_background, colour_jitter
        self.random_background = random_background
        self.photos = photos_by_identity(samples)
        self.frames, self.motion_frames, self.window = frames, motion_frames, window
        self.first_clip_prob, self.reference_dropout = first_clip_prob, reference_dropout
        self.audio_features = audio_features  # callable: sample → per-frame features [T_clip, A] indexed by frame
        with_audio = [s for s in samples if s.audio is not None or s.audio_features is not None]
        if not with_audio:
            raise InputError("train-motion needs video clips with audio, but the dataset has none; run `rgbdface prep-depth` on videos with sound")
        self.runs = contiguous_runs([s for s in samples], frames + motion_frames)
        self.runs = [r for r in self.runs if samples[r.indices[0]].audio is not None or samples[r.indices[0]].audio_features is not None]
        if not self.runs:
            raise InputError(f"train-motion needs clips of at least {frames + motion_frames} consecutive frames with audio "
                             f"(motion.frames={frames} + motion.motion_frames={motion_frames}); the dataset has none")
        self.by_id: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            self.by_id.setdefault(s.identity, []).append(i)
        self.order = Order(seed, [], list(range(len(self.runs))), None)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, n: int) -> dict:
        spec, F_, M = self.spec, self.frames, self.motion_frames
        run = self.runs[self.order(n)]
        rng = rng_for(self.seed, SALT_CLIP, n)
        start = int(rng.integers(M, len(run.indices) - F_ + 1))  # first target frame within the run
        target = run.indices[start:start + F_]
        window = set(run.indices[start - M:start + F_])
        others = [j for j in self.by_id[run.identity] if j not in window] or [j for j in run.indices if j not in target]
        ref_i = others[int(rng.integers(len(others)))]
        background = background_for(self, n, self.samples[target[0]])
        colour = colour_for(self, n)

        def frame(j: int) -> torch.Tensor:
            x = load_rgb(self.samples[j].rgb, spec.image_size)
            if background is not None and self.samples[j].source == "studio":
                x = over_background(x, load_depth_map(self.samples[j].depth, spec.image_size), background)
            return x if colour is None else apply_colour(x, colour)

        reference = frame(ref_i)
        if M and rng.random() < self.first_clip_prob:
            motion = reference[None].expand(M, -1, -1, -1).clone()
        else:
            motion = torch.stack([frame(j) for j in run.indices[start - M:start]]) \
                if M else torch.zeros(0, 3, spec.image_size, spec.image_size)
        feats = self.audio_features(self.samples[target[0]])  # [T_clip, A], row f = frame f
        frame_ids = [self.samples[j].frame for j in target]
        audio = audio_windows(feats, self.window, frames=frame_ids)  # [F, k, A]
        keep = bool(rng.random() >= self.reference_dropout)
        noise, t = noise_and_timestep(self.seed, n, (F_, 2 * spec.latent_channels, spec.latent_size, spec.latent_size),
                                      spec.num_train_timesteps)
        if self.shared_noise:
            noise = noise[:1].expand_as(noise).clone()
        return {
            "n": n, "indices": torch.tensor(target), "ref_index": ref_i,
            "rgb": torch.stack([frame(j) for j in target]),  # [F, 3, S, S]
            "depth": torch.stack([load_depth_map(self.samples[j].depth, spec.image_size) for j in target]),  # [F, 1, S, S]
            "reference": reference,  # [3, S, S]
            "motion": motion,  # [M, 3, S, S]
            "audio": audio,  # [F, k, A]
            "keep": keep, "noise": noise, "timestep": t,
        } | ({"mouth": torch.stack([mouth_region(self.samples[j].landmarks, self.samples[j].size, spec.image_size) for j in target])}
             if self.mouth else {})  # [F, 1, S, S]


# ----------------------------------------------------------------------------- batching
class RankBatches(torch.utils.data.Sampler):
    """Micro-batches of sample numbers for one process, from micro-batch `start` on, forever.

    Global micro-batch m covers samples [m·w·B, (m+1)·w·B); process r takes its r-th block of B.
    """

    def __init__(self, start: int, batch_size: int, rank: int = 0, world: int = 1):
        self.start, self.b, self.rank, self.world = start, batch_size, rank, world

    def __iter__(self):
        m = self.start
        while True:
            base = (m * self.world + self.rank) * self.b
            yield list(range(base, base + self.b))
            m += 1

    def __len__(self) -> int:  # endless; the loop stops by step count
        return 2**62
