"""Relighting scored against ground truth: studio renders with exact depth under light A and light B.

    PYTHONPATH=. python benchmarks/bench_relight_studio.py [--size 256]

Each example portrait is fitted (MediaPipe face mesh, as prep-depth does) and rendered by
prep-depth's studio renderer (`rgbdface.data.studio.render_view`, shading in linear light) in
three head poses, each under a light A and a light B (same pose, same texture). The render
under A is relit to B, with the render's exact depth (camera Z in mm, 1 depth unit = fx / Z
pixels) or with the depth the bundled model estimates from the render under A, and scored
against the render under B inside the face-skin mask: PSNR (dB, 8-bit RGB) and SSIM (mean of
the SSIM map, scikit-image's defaults, over the mask). The renderer's shading is
0.75 · (0.6 + max(0, n · l)), so the target light is B at intensity 1 with ambient 0.6.

Methods:
- 'unchanged': the render under A itself (what relighting must beat);
- 'old': the relighting before the surface/ratio change: A × (0.6 + max(0, n · l_B)) inside depth > 0;
- 'old, best exposure': the same times the one factor that fits it best to B over the mask (an oracle
  that only helps it);
- 'new': `rgbdface.pipelines.relight.relight(A, depth, [B], ambient=0.6, region='face')` (the photo's own
  light estimated);
- 'new, frontal photo light': the same with the photo's light taken as frontal (`photo_light=(0, 0, 1)`),
  as it was before the light was estimated;
- 'new, no feather': the same with feather=0, to show what the fade-in costs here: the renders'
  depth covers the face exactly, so the feather leaves the outer band of the scored region part-lit.

Textures: 'photo' renders the crop of the real photo, which carries that photo's own shading (mostly
from above: the light fitted to a render under ambient light alone points 55-80 degrees up for three
of the four); 'delit' divides the crop's linear luminance by its Gaussian blur (sigma 1/16 of the crop)
first, so that the studio light is the only light on the face, as the ground truth assumes.

Results are printed and written to benchmarks/results/relight_studio.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "relight_studio.md"
PORTRAITS = ("obama.jpg", "astronaut.jpg", "grace_hopper.jpg", "biden.jpg")
TEXTURES = ("photo", "delit")
AMBIENT = 0.6  # the studio renderer's 0.45 / 0.75
# (yaw, pitch, light A, light B); lights in the relighting frame: x right, y up, z toward the viewer
CASES = [
    (0.0, 0.0, (-0.7, 0.3, 1.0), (0.8, 0.2, 1.0)),
    (20.0, -5.0, (0.0, 0.6, 1.0), (-0.8, -0.2, 0.8)),
    (-20.0, 5.0, (0.7, 0.0, 1.0), (0.0, 0.0, 1.0)),
]


def studio_light(light) -> tuple[float, float, float]:
    """Relighting frame (y up, z toward the viewer) → the renderer's camera frame (y down, z forward)."""
    v = np.array([light[0], -light[1], -light[2]], np.float64)
    return tuple(float(x) for x in v / np.linalg.norm(v))


def scores(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import structural_similarity

    err = (pred.astype(np.float64) - target.astype(np.float64))[mask]
    mse = float((err**2).mean())
    psnr = 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")
    _, ssim_map = structural_similarity(pred, target, channel_axis=2, data_range=255, full=True)
    return psnr, float(ssim_map.mean(axis=-1)[mask].mean())


def old_relight(image, depth, light, depth_scale=None):
    """image × (ambient + max(0, n·l)) where depth > 0, the image elsewhere; float, unclipped."""
    from rgbdface.pipelines.relight import normals_from_depth, shade

    valid = depth > 0
    n = normals_from_depth(depth, valid, depth_scale=depth_scale)
    return image.astype(np.float64) * shade(n, [light], AMBIENT, valid)[..., None] * valid[..., None] + image * ~valid[..., None]


def to_u8(x):
    return np.clip(x, 0, 255).round().astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--save", type=Path, default=None, help="also write A | B | old | new strips into this folder")
    args = ap.parse_args()

    from rgbdface.data.camera import Camera
    from rgbdface.models.model import load_model

    model = load_model()
    camera = Camera.for_crop(args.size)
    sections = []
    for texture in TEXTURES:
        rows = run_texture(model, camera, args, texture)
        sections.append((texture, rows))
    text = "\n\n".join(table(texture, rows, args.size) for texture, rows in sections)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("# relight: studio renders, light A relit to light B\n\n`PYTHONPATH=. python benchmarks/bench_relight_studio.py`\n\n" + text + "\n")


def delit(image: np.ndarray, size: int) -> np.ndarray:
    """The photo's low-frequency shading divided out: linear luminance over its Gaussian blur (sigma size/16)."""
    import cv2

    from rgbdface.pipelines.relight import LUMA, linear_to_srgb, srgb_to_linear

    lin = srgb_to_linear(image / 255.0)
    lum = lin @ LUMA
    low = cv2.GaussianBlur(lum, (0, 0), size / 16)
    return (np.clip(linear_to_srgb(lin * (np.median(lum) / np.maximum(low, 1e-4))[..., None]), 0, 1) * 255).round().astype(np.uint8)


def run_texture(model, camera, args, texture: str) -> list:
    import dataclasses

    from rgbdface.data.camera import landmarks_to_camera
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image, save_image
    from rgbdface.data.studio import View, render_view
    from rgbdface.pipelines.depth import estimate_depth
    from rgbdface.pipelines.relight import Light, relight

    rows = []  # (portrait, case, depth kind, method, psnr, ssim)
    for name in PORTRAITS:
        t0 = time.perf_counter()
        crop = crop_face(load_image(ROOT / "examples" / name), size=args.size, with_landmarks=True)
        if texture == "delit":
            crop = dataclasses.replace(crop, image=delit(crop.image, args.size))
        vertices = landmarks_to_camera(crop.landmarks, camera)
        for c, (yaw, pitch, la, lb) in enumerate(CASES):
            bg = ((90, 100, 110), (60, 70, 80))
            a = render_view(crop.image, crop.landmarks, vertices, camera, View(yaw, pitch, 0.0, 0.0, studio_light(la), bg), linear=True)
            b = render_view(crop.image, crop.landmarks, vertices, camera, View(yaw, pitch, 0.0, 0.0, studio_light(lb), bg), linear=True)
            mask = a.mask & b.mask
            exact_scale = camera.fx / float(np.median(a.depth[a.depth > 0]))
            est = estimate_depth(model, a.rgb, name=f"{name} view {c}").to_units()
            light = Light(lb)
            rows.append((name, c, "-", "unchanged", *scores(a.rgb, b.rgb, mask)))
            for kind, depth, scale in (("exact", a.depth, exact_scale), ("estimated", est, None)):
                old = old_relight(a.rgb, depth, light, scale)
                k = float((old[mask] * b.rgb[mask]).sum() / max((old[mask] ** 2).sum(), 1e-9))
                new = relight(a.rgb, depth, [light], ambient=AMBIENT, depth_scale=scale, region="face").image
                hard = relight(a.rgb, depth, [light], ambient=AMBIENT, depth_scale=scale, region="face", feather=0).image
                frontal = relight(a.rgb, depth, [light], ambient=AMBIENT, depth_scale=scale, region="face", photo_light=(0, 0, 1)).image
                rows.append((name, c, kind, "old", *scores(to_u8(old), b.rgb, mask)))
                rows.append((name, c, kind, "old, best exposure", *scores(to_u8(old * k), b.rgb, mask)))
                rows.append((name, c, kind, "new", *scores(new, b.rgb, mask)))
                rows.append((name, c, kind, "new, no feather", *scores(hard, b.rgb, mask)))
                rows.append((name, c, kind, "new, frontal photo light", *scores(frontal, b.rgb, mask)))
                if args.save:
                    save_image(args.save / f"{Path(name).stem}_{c}_{kind}_{texture}.png", np.concatenate([a.rgb, b.rgb, to_u8(old), frontal, new], axis=1))
        print(f"{texture} {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return rows


def table(texture: str, rows: list, size: int) -> str:
    lines = [f"## Textures: {texture}", "",
             "Relight the studio render under light A to light B; scored against the render under B inside the face-skin mask "
             f"({len(PORTRAITS)} portraits x {len(CASES)} pose/light pairs, {size} px; higher is better).", "",
             "| depth | method | PSNR (dB) | SSIM | pairs won against old |", "|---|---|---|---|---|"]
    for kind in ("-", "exact", "estimated"):
        for method in ("unchanged", "old", "old, best exposure", "new, frontal photo light", "new", "new, no feather"):
            sel = [r for r in rows if r[2] == kind and r[3] == method]
            if not sel:
                continue
            won = ""
            if method == "new":
                olds = {(r[0], r[1]): r for r in rows if r[2] == kind and r[3] == "old, best exposure"}
                won = f"{sum(r[4] > olds[(r[0], r[1])][4] for r in sel)}/{len(sel)} (PSNR vs best exposure)"
            lines.append(f"| {kind} | {method} | {np.mean([r[4] for r in sel]):.2f} | {np.mean([r[5] for r in sel]):.3f} | {won} |")
    lines += ["", "Per pair (PSNR dB / SSIM):", "", "| portrait | pair | depth | unchanged | old | old, best exposure | new, frontal photo light | new |", "|---|---|---|---|---|---|---|---|"]
    for name in PORTRAITS:
        for c in range(len(CASES)):
            base = next(r for r in rows if r[0] == name and r[1] == c and r[3] == "unchanged")
            for kind in ("exact", "estimated"):
                get = lambda m: next(r for r in rows if r[0] == name and r[1] == c and r[2] == kind and r[3] == m)
                cells = [f"{x[4]:.1f} / {x[5]:.3f}" for x in (base, get("old"), get("old, best exposure"), get("new, frontal photo light"), get("new"))]
                lines.append(f"| {name} | {c} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
