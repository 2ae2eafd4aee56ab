"""How well a model's latent codec keeps colours: encode and decode the held-out face in four colourings.

    python benchmarks/measure_codec_colour.py --heldout WORK/heldout --model A [--model B ...] [--label NAME]

WORK/heldout is `prep-depth examples/obama.jpg -o WORK/heldout --size 64` (any folder whose photo row
is a 64 px face crop); `--model` is a model folder or `bundled`. The face crop goes through the codec
(posterior mean, then decode) as it is, in black and white, cold-tinted and with its hues turned by
120 degrees. Per model: colour dE (CIE76, face centre) between each input and its reconstruction,
the chroma of the black-and-white one's reconstruction (its input: 0), and PSNR; then, over every
sample of WORK/heldout (the photo and its studio renders), the mean absolute RGB error and the RMSE of
the depth round trip on face pixels, both in the codec's [-1, 1] units. A denoiser can copy no colour
that its codec loses, and reads depth from no detail it drops. The table goes to stdout and to benchmarks/results/codec_colour_LABEL.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def colourings(face: np.ndarray) -> dict[str, np.ndarray]:
    from rgbdface.training.data import LUMA, hue_rotation

    x = face.astype(np.float32) / 255.0
    grey = x @ LUMA
    out = {"colour": x, "black and white": np.repeat(grey[..., None], 3, -1), "cold": x * np.array([0.75, 0.9, 1.2], np.float32),
           "hues turned 120°": x @ hue_rotation(2 * np.pi / 3).T.astype(np.float32)}
    return {k: (v.clip(0, 1) * 255).round().astype(np.uint8) for k, v in out.items()}


def round_trip(vae, img: np.ndarray) -> np.ndarray:
    import torch

    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 127.5 - 1.0
    with torch.no_grad():
        y = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
    return ((y.clamp(-1, 1) + 1.0) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)


def whole_set(vae, heldout: Path) -> tuple[float, float]:
    """Mean |RGB error| and depth RMSE on face pixels of every sample's round trip, in [-1, 1] units."""
    import torch

    from rgbdface.training.vae import load_vae_data

    rgb, depth = load_vae_data(heldout, vae.config.sample_size)
    with torch.no_grad():
        r = vae.decode(vae.encode(rgb).latent_dist.mean).sample
        d = vae.decode(vae.encode(depth.expand(-1, 3, -1, -1)).latent_dist.mean).sample.mean(1, keepdim=True)
    face = depth < 1  # the codec's far value marks pixels without depth
    return float((r - rgb).abs().mean()), float((d - depth)[face].pow(2).mean().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heldout", required=True, type=Path)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--label", default="codecs")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from rgbdface.data.io import load_image
    from rgbdface.data.manifest import read_samples
    from rgbdface.metrics.generated import chroma, colour_distance, psnr
    from rgbdface.models.model import load_model

    photo = next(s for s in read_samples(a.heldout) if s.source != "studio")
    inputs = colourings(load_image(photo.rgb))
    rows = []
    for name in a.model:
        path = ROOT / "rgbdface" / "weights" / "rgbdface-tiny" if name == "bundled" else Path(name)
        vae = load_model(path).codec.vae.float().eval()
        out = {k: round_trip(vae, v) for k, v in inputs.items()}
        des = " / ".join(f"{colour_distance(inputs[k], out[k]):.1f}" for k in inputs)
        ps = np.mean([psnr(out[k], inputs[k]) for k in inputs])
        rgb_err, depth_err = whole_set(vae, a.heldout)
        rows.append(f"| {name} | {des} | {chroma(out['black and white']):.1f} | {ps:.1f} | {rgb_err:.3f} | {depth_err:.3f} |")
    lines = [f"# Colours through the latent codec (held-out face, {photo.rgb.name})", "",
             "`python benchmarks/measure_codec_colour.py --heldout WORK/heldout " + " ".join(f"--model {m}" for m in a.model)
             + (f" --label {a.label}" if a.label != "codecs" else "") + "`", "",
             f"| model | colour dE after the round trip: {' / '.join(inputs)} | chroma of the black-and-white one (input 0.0) | PSNR (dB) "
             "| all samples: mean \\|RGB error\\| | all samples: depth RMSE on the face |",
             "|---|---|---:|---:|---:|---:|"] + rows
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / f"codec_colour_{a.label}.md").write_text(text)


if __name__ == "__main__":
    main()
