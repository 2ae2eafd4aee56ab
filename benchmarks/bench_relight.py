"""Relighting on real photos: the shading measures of rgbdface.metrics.relight, old method against new.

    PYTHONPATH=. python benchmarks/bench_relight.py [--light 1,0.3,1] [--ambient 0.25]

Inputs (none of them a photo the bundled model was trained on as it is here):
- obama.jpg: an identity held out of training;
- cameraman.png: a real grayscale photo, three-quarter view;
- obama_gray: obama.jpg turned to gray;
- grace_hopper_painted: grace_hopper.jpg stylised like an inked painting (OpenCV's edge-preserving `stylization`):
  black outlines of level 0-10 around every feature;
- astronaut_flipcrop: astronaut.jpg mirrored and cropped off-centre (the face near the right edge);
- grace_hopper_oil: grace_hopper.jpg as an oil painting (OpenCV's `xphoto.oilPainting`, 7 px brush): flat strokes;
- biden_statue: biden.jpg as a stone statue: gray, smoothed (bilateral filter), tinted like stone.

'smooth ramp' is a reference, not a method: the head region's feather times a gain that is exactly smooth by
construction (exp(0.6 x / the head's width), one level in log across the head), so its blockiness is the
floor that the input and 8-bit rounding set for a gentle shading change. On the inked painting s is pinned
to 0 along the outlines whatever the gain (0 x gain = 0), so no relighting can score well there.

Modes: 'depth' relights with the 16-bit PNG estimate-depth writes (`--depth d.png`); 'none' with the
depth relight estimates itself when --depth is not given (unrounded, as the command does).
Methods: 'old' is the relighting before the surface/ratio/feather change (image × Lambertian
shading inside depth > 0, a hard cut; without --depth the depth smoothed by the upsampling factor),
reproduced here from the library's normals and shading functions; 'new face' and 'new head' are
`rgbdface.pipelines.relight.relight` with --region face and head (the command's defaults otherwise).

Goals (lower is better): blockiness <= 1.2 and edge ratio <= 0.3 on every input and mode.
Results are printed and written to benchmarks/results/relight.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("old", "new face", "new head", "smooth ramp")
PHOTOS = ("obama", "cameraman", "obama_gray", "astronaut_flipcrop")
RESULTS = ROOT / "benchmarks" / "results" / "relight.md"
EXAMPLES = ROOT / "examples"


def make_inputs() -> dict[str, np.ndarray]:
    """The test photos, all uint8 RGB, made deterministically from the bundled examples."""
    import cv2

    from rgbdface.data.io import load_image

    obama = load_image(EXAMPLES / "obama.jpg")
    gray = np.repeat(cv2.cvtColor(obama, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    hopper = load_image(EXAMPLES / "grace_hopper.jpg")
    painted = cv2.cvtColor(cv2.stylization(cv2.cvtColor(hopper, cv2.COLOR_RGB2BGR), sigma_s=40, sigma_r=0.3), cv2.COLOR_BGR2RGB)
    astro = load_image(EXAMPLES / "astronaut.jpg")[:, ::-1]
    flipcrop = np.ascontiguousarray(astro[20:420, 0:360])
    oil = cv2.cvtColor(cv2.xphoto.oilPainting(cv2.cvtColor(hopper, cv2.COLOR_RGB2BGR), 7, 1), cv2.COLOR_BGR2RGB)
    stone = cv2.bilateralFilter(cv2.cvtColor(load_image(EXAMPLES / "biden.jpg"), cv2.COLOR_RGB2GRAY), 9, 40, 9).astype(np.float64)
    statue = np.clip(np.stack([stone * 0.95 + 20, stone * 0.92 + 18, stone * 0.85 + 14], -1), 0, 255).round().astype(np.uint8)
    return {"obama": obama, "cameraman": load_image(EXAMPLES / "cameraman.png"), "obama_gray": gray,
            "grace_hopper_painted": painted, "astronaut_flipcrop": flipcrop, "grace_hopper_oil": oil, "biden_statue": statue}


def smooth_ramp(image: np.ndarray, result) -> np.ndarray:
    """The reference: image × (1 + weight (exp(0.6 x / width) - 1)) over a relighting's region (float out)."""
    cols = np.flatnonzero(result.region.any(axis=0))
    u = np.arange(image.shape[1], dtype=np.float64)
    gain = np.exp(0.6 * (u - cols.mean()) / max(cols[-1] - cols[0], 1))[None, :, None]
    x = image.astype(np.float64)
    return np.clip(x * (1 + result.weight[..., None] * (gain - 1)), 0, 255 if image.dtype == np.uint8 else 1.0)


def old_relight(image: np.ndarray, depth: np.ndarray, light, ambient: float, smooth: float = 0.0) -> np.ndarray:
    """The relighting before this change: image × (ambient + max(0, n·l)) where depth > 0, the image elsewhere
    (uint8 in, uint8 out; float in 0..1, float out)."""
    from rgbdface.pipelines.relight import normals_from_depth, relief_depth_scale, shade, smooth_depth

    if smooth > 0:
        depth = smooth_depth(depth, smooth)
    valid = depth > 0
    normals = normals_from_depth(depth, valid, depth_scale=relief_depth_scale(depth, valid))
    shading = shade(normals, [light], ambient, valid)
    top = 255.0 if image.dtype == np.uint8 else 1.0
    lit = np.clip(image.astype(np.float64) * shading[..., None], 0, top)
    if image.dtype == np.uint8:
        lit = lit.round()
    return np.where(valid[..., None], lit, image).astype(image.dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--light", default="1,0.3,1")
    ap.add_argument("--ambient", type=float, default=0.25)
    ap.add_argument("--save", type=Path, default=None, help="also write every relit image into this folder")
    args = ap.parse_args()

    from rgbdface.data.face import person_mask
    from rgbdface.data.io import save_image
    from rgbdface.metrics.relight import relight_measures
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.depth import estimate_depth
    from rgbdface.pipelines.relight import Light, relight

    light = Light.parse(args.light)
    model = load_model()
    rows = []
    for name, image in make_inputs().items():
        t0 = time.perf_counter()
        est = estimate_depth(model, image, name=name)  # the model's defaults, as the commands use them
        upscale = (est.crop.box[2] - est.crop.box[0]) / model.meta.image_size
        person = person_mask(image)
        depths = {"depth": est.to_u16().astype(np.float32), "none": est.to_units()}
        for mode, depth in depths.items():
            for method in METHODS:
                def run(img):
                    if method == "old":
                        return old_relight(img, depth, light, args.ambient, smooth=upscale if mode == "none" else 0.0)
                    if method == "smooth ramp":
                        r = smooth_ramp(img, relight(image, depth, [light], ambient=args.ambient, region="head", person=person))
                        return r.round().astype(np.uint8) if img.dtype == np.uint8 else r
                    return relight(img, depth, [light], ambient=args.ambient, region=method.split()[1], person=person).image
                lit = run(image)  # 8-bit, as written
                unrounded = run(image / 255.0) * 255.0  # the same from a float image: no 8-bit rounding
                m, u = relight_measures(image, lit), relight_measures(image.astype(np.float64), unrounded)
                rows.append((name, mode, method, m.blockiness, m.edge_ratio, u.blockiness, u.edge_ratio, m.changed_px))
                if args.save:
                    save_image(args.save / f"{name}_{mode}_{method.replace(' ', '_')}.png", lit)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    lines = [f"Light {args.light}, ambient {args.ambient}; depth from the bundled model (defaults). "
             "Blockiness goal <= 1.2, edge ratio goal <= 0.3 (lower is better). 'written' = the 8-bit output; "
             "'unrounded' = the same relighting of the photo as floats, before rounding to 8 bits.", "",
             "| input | mode | method | blockiness, written | edge ratio, written | blockiness, unrounded | edge ratio, unrounded | changed px |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {mo} | {me} | {b:.2f} | {e:.2f} | {bu:.2f} | {eu:.2f} | {c} |" for n, mo, me, b, e, bu, eu, c in rows]
    groups = (("all inputs", None), ("the four photos", PHOTOS), ("the oil painting and the statue", ("grace_hopper_oil", "biden_statue")),
              ("the inked painting", ("grace_hopper_painted",)))
    for title, inputs in groups:
        lines += ["", f"Worst over {title} and both modes:", "",
                  "| method | blockiness, written | edge ratio, written | blockiness, unrounded | edge ratio, unrounded |", "|---|---|---|---|---|"]
        for method in METHODS:
            sel = [r for r in rows if r[2] == method and (inputs is None or r[0] in inputs)]
            lines.append(f"| {method} | " + " | ".join(f"{max(r[k] for r in sel):.2f}" for k in (3, 4, 5, 6)) + " |")
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("# relight: shading measures on real photos\n\n`PYTHONPATH=. python benchmarks/bench_relight.py`\n\n" + text + "\n")


if __name__ == "__main__":
    main()
