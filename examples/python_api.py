"""rgbdface from Python: depth, relighting and joint RGB + depth samples with one loaded model.

    python examples/python_api.py examples/astronaut.jpg out/
"""

import sys
from pathlib import Path

from rgbdface.data.face import crop_face
from rgbdface.data.io import colorize_depth, load_image, save_depth16, save_image
from rgbdface.models.model import load_model
from rgbdface.pipelines.depth import estimate_depth
from rgbdface.pipelines.generate import generate
from rgbdface.pipelines.relight import Light, relight

image_path = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/astronaut.jpg")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "out")
out.mkdir(parents=True, exist_ok=True)

model = load_model()  # the bundled rgbdface-tiny; load_model("path/to/model", device="cuda") for your own
image = load_image(image_path)

# 1. Image → depth (stage 2), at the input's size; 0 outside the face.
depth = estimate_depth(model, image, steps=10, seed=0)
save_depth16(out / "depth.png", depth.to_u16())
save_image(out / "depth_preview.png", colorize_depth(depth.depth, depth.valid))

# 2. Relight from that depth: a light from the upper right plus ambient.
lit = relight(image, depth.to_u16(), [Light((1.0, 1.0, 1.0))], ambient=0.3)
save_image(out / "relit.png", lit.image)

# 3. Joint RGB + depth samples of the same person (stage 1).
samples = generate(model, crop_face(image, size=model.meta.image_size, margin=model.meta.crop_margin).image, num_samples=2, steps=10, seed=0)
for i in range(2):
    save_image(out / f"sample{i}_rgb.png", samples.rgb[i])
    save_image(out / f"sample{i}_depth.png", colorize_depth(samples.depth[i], samples.valid[i]))
print("\n".join(sorted(str(p) for p in out.iterdir())))
