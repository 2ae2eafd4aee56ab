"""Make the README's pictures with the bundled model.

    python examples/make_readme_figures.py docs/figures [depth_relight|relight|talk ...]

- depth_relight.png: face crop | estimated depth | relit from the left | relit from the right
- relight.png: relighting layers and lights (input | normals | albedo | left | right | two coloured
  lights | an environment), then frames of an orbiting light
- talk.png: the held-out identity's reference, then talking-head frames (synthetic speech), over
  their jointly generated depth
- generate.png: joint samples next to their reference (the held-out identity in colour, then in
  black and white; the same seed), RGB over depth

Without names after the folder, every figure is made.
"""

import sys
from pathlib import Path

import numpy as np

from rgbdface.data.face import crop_box_to, crop_face
from rgbdface.data.io import colorize_depth, load_image, save_image
from rgbdface.data.speech import synthesize
from rgbdface.models.model import load_model
from rgbdface.pipelines.depth import estimate_depth
from rgbdface.data.face import person_mask
from rgbdface.pipelines.relight import Light, albedo_to_rgb, env_to_sh, normals_to_rgb, orbit_lights, relight
from rgbdface.pipelines.talk import talk_frames

PANEL = 160  # display size of each panel, pixels


def panel(img: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upscale to PANEL × PANEL, so the model's pixels stay visible."""
    idx = np.arange(PANEL) * img.shape[0] // PANEL
    return img[idx][:, idx]


def sky(h: int = 64) -> np.ndarray:
    """A synthetic equirectangular environment [h, 2h, 3] (linear): blue sky, a warm sun up and to the right
    of the camera's back, dark ground."""
    lat = (0.5 - (np.arange(h) + 0.5) / h)[:, None] * np.pi
    lon = ((np.arange(2 * h) + 0.5) / (2 * h) - 0.5)[None, :] * 2 * np.pi
    env = np.where(lat[..., None] > 0, np.array([0.25, 0.35, 0.6]) * (0.5 + lat[..., None]), np.array([0.08, 0.07, 0.06]))
    env = np.broadcast_to(env, (h, 2 * h, 3)).copy()
    sun = (np.abs(lat - 0.5) < 0.25) & (np.abs(np.abs(lon) - 2.4) < 0.3) & (lon > 0)  # behind the camera, to the right
    env[sun] = [14.0, 10.5, 7.0]
    return env


def relight_views(image: np.ndarray, depth: np.ndarray, person: np.ndarray) -> list[np.ndarray]:
    """input | normals | albedo | from the left | from the right | warm key + cool fill | environment (head region)."""
    kw = dict(region="head", person=person, ambient=0.2)
    left = relight(image, depth, [Light((-1.0, 0.3, 0.6))], **kw)
    views = [image, normals_to_rgb(left.normals, left.region), albedo_to_rgb(left.albedo), left.image]
    views.append(relight(image, depth, [Light((1.0, 0.3, 0.6))], **kw).image)
    views.append(relight(image, depth, [Light((1.0, 0.4, 0.7), 1.1, (1.0, 0.75, 0.5)), Light((-1.0, 0.0, 0.5), 0.6, (0.45, 0.6, 1.0))], **kw).image)
    views.append(relight(image, depth, [], env_sh=env_to_sh(sky()), **{**kw, "ambient": 0.0}).image)
    return views


def main(out: Path, figures: set[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    model = load_model()

    # 1. Depth and relighting; obama.jpg is the identity held out of training.
    if "depth_relight" in figures:
        rows = []
        for name in ("astronaut.jpg", "grace_hopper.jpg", "obama.jpg"):
            image = load_image(here / name)
            d = estimate_depth(model, image, steps=20, seed=0, ensemble=3)
            views = [image, colorize_depth(d.depth, d.valid)]
            person = person_mask(image)
            for light in ((-1.0, 0.3, 0.6), (1.0, 0.3, 0.6)):
                views.append(relight(image, d.to_u16(), [Light(light)], ambient=0.2, region="head", person=person).image)
            box = d.crop.box
            rows.append(np.concatenate([panel(crop_box_to(v, box, 256)) for v in views], axis=1))
        save_image(out / "depth_relight.png", np.concatenate(rows, axis=0))

    # 2. Relighting: layers, coloured lights, an environment, an orbit; the depth as the commands estimate it.
    if "relight" in figures:
        rows = []
        for name in ("obama.jpg", "astronaut.jpg"):
            image = load_image(here / name)
            d = estimate_depth(model, image)
            views = relight_views(image, d.to_u16(), person_mask(image))
            rows.append(np.concatenate([crop_box_to(v, d.crop.box, 160) for v in views], axis=1))
        image = load_image(here / "obama.jpg")
        d = estimate_depth(model, image)
        person = person_mask(image)
        first = relight(image, d.to_u16(), [Light((0, 0, 1))], region="head", person=person, ambient=0.2)
        frames = [relight(image, d.to_u16(), [l], region="head", person=person, ambient=0.2, original=first.original_shading,
                             photo_light=first.photo_light).image
                  for l in orbit_lights(7)]
        rows.append(np.concatenate([crop_box_to(v, d.crop.box, 160) for v in frames], axis=1))
        save_image(out / "relight.png", np.concatenate(rows, axis=0))

    # 3. Talking head of the held-out identity: 2 s of synthetic speech, every 5th frame, the reference
    #    first, RGB over depth.
    if "talk" in figures:
        reference = crop_face(load_image(here / "obama.jpg"), size=model.meta.image_size, margin=model.meta.crop_margin).image
        wave = synthesize(2.0, np.random.default_rng(0)).audio
        frames = [f for f in talk_frames(model, reference, wave, steps=20, seed=0) if f.index % 5 == 0][:9]
        blank = np.zeros_like(reference)
        rgb = np.concatenate([panel(reference)] + [panel(f.rgb) for f in frames], axis=1)
        depth = np.concatenate([panel(blank)] + [panel(colorize_depth(f.depth, f.valid)) for f in frames], axis=1)
        save_image(out / "talk.png", np.concatenate([rgb, depth], axis=0))

    # 4. Joint samples next to their reference: the held-out identity in colour and in black and white
    #    (the same seed), RGB over depth.
    if "generate" in figures:
        from rgbdface.pipelines.generate import generate

        colour = crop_face(load_image(here / "obama.jpg"), size=512, margin=model.meta.crop_margin).image
        grey = np.repeat((colour.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
        rows = []
        for ref in (colour, grey.round().astype(np.uint8)):
            s = generate(model, ref, num_samples=4, steps=25, seed=0)
            small = crop_box_to(ref, (0, 0, ref.shape[1], ref.shape[0]), model.meta.image_size)
            rows.append(np.concatenate([panel(small)] + [panel(x) for x in s.rgb], axis=1))
            rows.append(np.concatenate([panel(np.zeros_like(small))] + [panel(colorize_depth(d, v)) for d, v in zip(s.depth, s.valid)], axis=1))
        save_image(out / "generate.png", np.concatenate(rows, axis=0))

if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures"), set(sys.argv[2:]) or {"depth_relight", "relight", "talk", "generate"})
