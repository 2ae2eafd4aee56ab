"""Make the README's pictures with the bundled model.

    python examples/make_readme_figures.py docs/figures

- depth_relight.png: face crop | estimated depth | relit from the left | relit from the right
- talk.png: talking-head frames (synthetic speech) over their jointly generated depth
"""

import sys
from pathlib import Path

import numpy as np

from rgbdface.data.face import crop_box_to, crop_face
from rgbdface.data.io import colorize_depth, load_image, save_image
from rgbdface.data.speech import synthesize
from rgbdface.models.model import load_model
from rgbdface.pipelines.depth import estimate_depth
from rgbdface.pipelines.relight import Light, relight
from rgbdface.pipelines.talk import talk_frames

PANEL = 160  # display size of each panel, pixels


def panel(img: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upscale to PANEL × PANEL, so the model's pixels stay visible."""
    idx = np.arange(PANEL) * img.shape[0] // PANEL
    return img[idx][:, idx]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    model = load_model()

    # 1. Depth and relighting; obama.jpg is the identity held out of training.
    rows = []
    for name in ("astronaut.jpg", "grace_hopper.jpg", "obama.jpg"):
        image = load_image(here / name)
        d = estimate_depth(model, image, steps=20, seed=0, ensemble=3)
        depth_u16 = d.to_u16()
        views = [image, colorize_depth(d.depth, d.valid)]
        for light in ((-1.0, 0.3, 1.0), (1.0, 0.3, 1.0)):
            upscale = (d.crop.box[2] - d.crop.box[0]) / model.meta.image_size  # smooth the upsampling's facets
            views.append(relight(image, depth_u16, [Light(light)], ambient=0.35, smooth=upscale).image)
        box = d.crop.box
        rows.append(np.concatenate([panel(crop_box_to(v, box, 256)) for v in views], axis=1))
    save_image(out / "depth_relight.png", np.concatenate(rows, axis=0))

    # 2. Talking head: 2 s of synthetic speech, every 5th frame, RGB over depth.
    reference = crop_face(load_image(here / "astronaut.jpg"), size=model.meta.image_size, margin=model.meta.crop_margin).image
    wave = synthesize(2.0, np.random.default_rng(0)).audio
    frames = [f for f in talk_frames(model, reference, wave, steps=20, seed=0) if f.index % 5 == 0][:10]
    rgb = np.concatenate([panel(f.rgb) for f in frames], axis=1)
    depth = np.concatenate([panel(colorize_depth(f.depth, f.valid)) for f in frames], axis=1)
    save_image(out / "talk.png", np.concatenate([rgb, depth], axis=0))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures"))
