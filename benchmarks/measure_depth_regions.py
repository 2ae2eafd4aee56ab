"""Where a depth estimate loses to the mean face: RMSE over the upper and lower face, and the signed nearest-point offset.

    python benchmarks/measure_depth_regions.py --data DATA --train-data WORK/data [--model DIR] [--label NAME]

DATA: a held-out prep-depth dataset, e.g. WORK/heldout-faces or WORK/heldout of examples/train_bundled_model.sh.

For every studio sample of the held-out dataset (exact depth), grouped by clip (the studio views, each
talking clip): the model's one-call estimate of the 64 px crop (`estimate_depth_crop`, the model's own
steps) and the mean face of TRAIN_DATA's other identities (`eval --method mean-face`), each fitted onto the
ground truth by least-squares scale and shift over the face-skin mask, as `eval` does. Reported per method:

- RMSE (mm) over the whole mask, over its upper part (rows above 55 % of the mask's height: forehead,
  eyes, nose) and over its lower part (mouth, cheeks, chin);
- the nearest-point offset as a signed (down, right) shift in pixels, averaged over the samples (negative
  down = the estimate's nearest 2 % lie above the ground truth's, i.e. above the nose tip), and its mean
  length in % of the width (`eval`'s nearest-point offset).

The table goes to stdout and to benchmarks/results/depth_regions_LABEL.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
UPPER = 0.55  # rows of the mask above this share of its height are the upper face


def split_rows(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mask's upper (rows above UPPER of its height) and lower parts."""
    rows = np.nonzero(valid.any(1))[0]
    cut = rows.min() + UPPER * (rows.max() - rows.min())
    upper = valid.copy()
    upper[int(np.ceil(cut)):] = False
    return upper, valid & ~upper


def region_scores(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, unit_mm: float) -> dict:
    """RMSE (mm) over the mask and its upper / lower parts after a least-squares fit, and the signed nearest-point shift (px)."""
    from rgbdface.metrics.depth import align_least_squares, nearest_centroid

    aligned = align_least_squares(np.asarray(pred, np.float64), np.asarray(gt, np.float64), valid)[0]
    err = (aligned - gt) * unit_mm
    upper, lower = split_rows(valid)
    rmse = {name: float(np.sqrt((err[m] ** 2).mean())) for name, m in (("all", valid), ("upper", upper), ("lower", lower))}
    return rmse | {"shift": nearest_centroid(aligned, valid) - nearest_centroid(gt, valid)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--train-data", required=True, type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--label", default="bundled")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from rgbdface.data.io import load_depth, load_image
    from rgbdface.data.manifest import load_manifest
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.depth import estimate_depth_crop
    from rgbdface.pipelines.depth_methods import mean_face_template

    model = load_model(a.model) if a.model else load_model()
    samples = [s for s in load_manifest(a.data) if s.source == "studio"]
    if not samples:
        raise SystemExit(f"{a.data}: no studio samples (exact depth) to score")
    held = {s.identity for s in samples}
    size = load_image(samples[0].rgb).shape[0]
    template = mean_face_template([s for s in load_manifest(a.train_data) if s.identity not in held], size)
    scores: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for s in samples:
        gt = load_depth(s.depth).astype(np.float64)
        mask = load_image(s.mask)
        valid = (gt > 0) & ((mask.max(-1) if mask.ndim == 3 else mask) > 0)
        for method, pred in (("model", estimate_depth_crop(model, load_image(s.rgb))), ("mean face", template)):
            scores[s.clip, method].append(region_scores(pred, gt, valid, s.depth_unit_mm))

    lines = [f"# Where depth loses to the mean face: upper and lower face, and the nearest point (`{a.label}`)", "",
             f"`python benchmarks/measure_depth_regions.py --data DATA --train-data WORK/data --label {a.label}"
             + (" --model MODEL" if a.model else "") + "`", "",
             "| clip | method | images | RMSE (mm) | upper face | lower face | nearest point: mean shift down, right (px) | mean offset (% of width) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (clip, method), rows in sorted(scores.items()):
        shift = np.array([r["shift"] for r in rows])
        cells = [clip, method, str(len(rows))] + [f"{np.mean([r[k] for r in rows]):.2f}" for k in ("all", "upper", "lower")]
        cells += [f"{shift[:, 0].mean():+.2f}, {shift[:, 1].mean():+.2f}", f"{100 * np.hypot(*shift.T).mean() / size:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / f"depth_regions_{a.label}.md").write_text(text)


if __name__ == "__main__":
    main()
