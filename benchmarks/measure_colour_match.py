"""What a global colour match would do to a model's faces: every output shifted by one CIE L*a*b* offset to the
reference's mean colour, scored as `measure_faces.py` scores the outputs as they are.

    python benchmarks/measure_faces.py --heldout WORK/heldout --keep KEPT     # once: keeps talk and generate outputs
    python benchmarks/measure_colour_match.py --kept KEPT [--label NAME]

The offset is the mean L*a*b* of the reference's face crop at the output's size minus that of the output:
per sample for generate, and for talk one offset for the whole video, from its first 14 frames (a clip),
so that the shift adds no flicker. Differences between pixels are kept (up to the sRGB gamut). Scored for
both, side by side: talk face found, flicker and colour dE; generate face found, colour dE, chroma of the
black-and-white samples and the reference sensitivity colour vs black and white.

The table goes to stdout and to benchmarks/results/colour_match_LABEL.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLIP = 14


def shifted(images: np.ndarray, reference: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """images [N, S, S, 3] moved by the L*a*b* offset that gives `fit` [M, S, S, 3] the reference's mean colour."""
    from rgbdface.data.colour import lab_to_srgb, srgb_to_lab

    offset = srgb_to_lab(reference).reshape(-1, 3).mean(0) - srgb_to_lab(fit).reshape(-1, 3).mean(0)
    return lab_to_srgb(srgb_to_lab(images) + offset)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kept", required=True, type=Path, help="a measure_faces.py --keep folder")
    ap.add_argument("--label", default="bundled")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image
    from rgbdface.metrics import generated as g

    def crop(path: Path, size: int) -> np.ndarray:  # as `rgbdface score` crops a reference
        return g.resize(crop_face(load_image(path), size=256, margin=g.DEFAULT_MARGIN, name=str(path)).image, size)

    def images(folder: Path, pattern: str) -> np.ndarray:
        files = sorted(folder.glob(pattern))
        if not files:
            raise SystemExit(f"{folder}: no {pattern} files; run measure_faces.py with --keep {a.kept} first")
        return np.stack([load_image(p) for p in files])

    rows = []
    talk = images(a.kept / "talk_rgb", "*.png")
    ref = crop(ROOT / "examples" / "obama.jpg", talk.shape[1])
    both = {"as decoded": talk, "matched": shifted(talk, ref, talk[:CLIP])}
    for name, frames in both.items():
        s = g.score_frames(frames, ref).values
        rows.append((f"talk, {name}", f"{s['face_found']:.2f}", f"{s['flicker']:.1f}", f"{s['colour_de']:.1f}", "", ""))

    refs = {"colour": ROOT / "examples" / "obama.jpg", "bw": a.kept / "obama_bw.png", "cold": a.kept / "obama_cold.png"}
    samples = {n: images(a.kept / f"gen_g1_{n}", "*_rgb.png") for n in refs}
    crops = {n: crop(p, samples[n].shape[1]) for n, p in refs.items()}
    for name in ("as decoded", "matched"):
        sets = {n: (x if name == "as decoded" else np.stack([shifted(s[None], crops[n], s[None])[0] for s in x])) for n, x in samples.items()}
        scores = {n: g.score_samples(sets[n], crops[n]).values for n in refs}
        found = np.mean([scores[n]["face_found"] for n in refs])
        de = np.mean([scores[n]["colour_de"] for n in refs])
        sens = g.reference_sensitivity(sets["colour"], sets["bw"])
        rows.append((f"generate, {name}", f"{found:.2f}", "", f"{de:.1f}", f"{scores['bw']['chroma']:.1f}", f"{sens:.1f}"))

    lines = [f"# A global colour match on the faces of model `{a.label}` (obama.jpg, held out)", "",
             f"`python benchmarks/measure_colour_match.py --kept KEPT --label {a.label}` (KEPT: `measure_faces.py --keep KEPT`)", "",
             "| outputs | face found | flicker | colour dE | chroma of b/w samples | reference sensitivity |",
             "|---|---:|---:|---:|---:|---:|"] + ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / f"colour_match_{a.label}.md").write_text(text)


if __name__ == "__main__":
    main()
