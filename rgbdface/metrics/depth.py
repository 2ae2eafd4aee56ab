"""The relative-depth protocol of the paper (§5.2, Table 1), as in MiDaS, LDM3D and Marigold.

Per image, over the valid pixels (gt > 0, pred > 0, and the mask if given):

1. fit a scale and shift of the prediction onto the ground truth by least squares,
   either in depth space (``"least_square"``, the default) or in disparity space
   (``"least_square_disparity"``), and clip the aligned depth to at least 1e-6;
2. AbsRel = mean |p - g| / g, δk = share of max(p/g, g/p) < 1.25**k (k = 1, 2, 3),
   RMSE = sqrt(mean (p - g)²) in the ground truth's units;
3. nearest-point offset: the distance between the centroid of the aligned prediction's
   nearest 2 % of the valid pixels (smallest depth, at least one pixel; pixels tied with the
   last one are taken too) and the centroid of the ground truth's nearest 2 %, in % of the
   image width. On a face the nearest point is the nose tip: a depth map whose nearest point
   sits above the nose or to one side scores badly here even when its RMSE does not. It is
   measured on the aligned prediction, so a negative fitted scale (a prediction turned
   around) counts against it.

The per-image numbers are then averaged over images. The nearest-point offset is averaged
too (not its median): a method that misplaces the nose on a third of the images should show
it, and the median would hide any minority of failures.

Disparity space follows the MiDaS/Marigold convention: the prediction is taken to be
an affine-invariant *disparity* (what MiDaS, DPT or Depth Anything output), fitted onto
1 / gt, and the aligned disparity is turned back into depth by 1 / x. A prediction of
depth (such as `estimate-depth`'s, larger = farther) belongs in depth space.

Everything is computed in float64; inputs may be any real array type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from rgbdface.utils import InputError, exists

EPS = 1e-6  # aligned depth (and disparity) never falls below this
ALIGNMENTS = ("least_square", "least_square_disparity")
METRICS = ("abs_rel", "delta1", "delta2", "delta3", "rmse", "nearest_offset")
NEAREST_SHARE = 0.02  # the nearest-point offset compares the centroids of the nearest 2 % of valid pixels
DEPTH_SUFFIXES = (".png", ".npy")
ERROR_RANGE = 0.1  # error maps span -0.1..0.1 of the gt depth range (paper, supp. Fig. 10)


# ----------------------------------------------------------------------------- alignment


def fit_scale_shift(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (scale, shift) minimising sum (scale * x + shift - y)² over 1-D arrays.

    Solved on centred values for numerical stability. A constant `x` cannot carry a
    scale: it gets scale 0 and shift mean(y).
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.size == 0 or x.size != y.size:
        raise ValueError(f"fit_scale_shift needs two equally long, non-empty arrays, got {x.size} and {y.size}")
    xm, ym = x.mean(), y.mean()
    xc = x - xm
    var = float(np.dot(xc, xc))
    scale = float(np.dot(xc, y - ym)) / var if var > 0 else 0.0
    return scale, float(ym - scale * xm)


def align_least_squares(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, space: str = "depth"
) -> tuple[np.ndarray, float, float]:
    """Align a relative prediction onto metric ground truth; returns (aligned depth, scale, shift).

    pred, gt: [H, W] arrays; valid: [H, W] bool, the pixels the fit uses (they need gt > 0).
    space="depth": aligned = scale * pred + shift, fitted onto gt.
    space="disparity": the prediction is an affine-invariant disparity; scale * pred + shift
    is fitted onto 1 / gt, clipped to at least 1e-6, and inverted back to depth.
    The aligned map covers every pixel (float64) and is at least 1e-6 everywhere.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    valid = np.asarray(valid, bool)
    if pred.shape != gt.shape or valid.shape != gt.shape:
        raise ValueError(f"pred {pred.shape}, gt {gt.shape} and valid {valid.shape} must have the same shape")
    if not valid.any():
        raise ValueError("no valid pixels to align on")
    if np.any(gt[valid] <= 0):
        raise ValueError("valid pixels need gt > 0")
    if space == "depth":
        scale, shift = fit_scale_shift(pred[valid], gt[valid])
        aligned = scale * pred + shift
    elif space == "disparity":
        scale, shift = fit_scale_shift(pred[valid], 1.0 / gt[valid])
        aligned = 1.0 / np.maximum(scale * pred + shift, EPS)
    else:
        raise ValueError(f"space={space!r}: expected 'depth' or 'disparity'")
    return np.maximum(aligned, EPS), scale, shift


# ----------------------------------------------------------------------------- metrics


def _valid_pair(pred, gt, valid) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if valid is None:
        valid = gt > 0
    valid = np.asarray(valid, bool)
    if not valid.any():
        raise ValueError("no valid pixels")
    return pred[valid], gt[valid]


def abs_rel(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean absolute relative error, mean |p - g| / g over the valid pixels (default gt > 0)."""
    p, g = _valid_pair(pred, gt, valid)
    return float(np.mean(np.abs(p - g) / g))


def delta(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, k: int = 1) -> float:
    """Threshold accuracy δk: the share of valid pixels with max(p/g, g/p) < 1.25**k."""
    p, g = _valid_pair(pred, gt, valid)
    ratio = np.maximum(p / g, g / p)
    return float(np.mean(ratio < 1.25**k))


def rmse(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Root mean squared error sqrt(mean (p - g)²) over the valid pixels, in gt units."""
    p, g = _valid_pair(pred, gt, valid)
    return float(np.sqrt(np.mean((p - g) ** 2)))


def nearest_centroid(depth: np.ndarray, valid: np.ndarray, share: float = NEAREST_SHARE) -> np.ndarray:
    """(row, col) centroid of the nearest `share` of the valid pixels (smallest depth; at least one).

    Pixels tied with the last one taken are taken too, so the answer does not depend on the
    order of the pixels: a constant map gives the centroid of all its valid pixels.
    """
    depth = np.asarray(depth, np.float64)
    valid = np.asarray(valid, bool)
    values = depth[valid]
    if values.size == 0:
        raise ValueError("no valid pixels")
    k = max(1, int(share * values.size))
    cut = np.partition(values, k - 1)[k - 1]
    rows, cols = np.nonzero(valid & (depth <= cut))
    return np.array([rows.mean(), cols.mean()])


def nearest_offset(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, share: float = NEAREST_SHARE) -> float:
    """Distance between the centroids of the nearest `share` of valid pixels of pred and of gt,
    in % of the image width (the number of columns). 0 = the nearest point is where it should be."""
    gt = np.asarray(gt, np.float64)
    if valid is None:
        valid = gt > 0
    offset = nearest_centroid(pred, valid, share) - nearest_centroid(gt, valid, share)
    return float(100.0 * np.hypot(*offset) / gt.shape[-1])


def valid_mask(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The protocol's valid pixels: gt > 0, pred > 0, both finite, and mask (nonzero) if given."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    valid = (gt > 0) & (pred > 0) & np.isfinite(gt) & np.isfinite(pred)
    if exists(mask):
        valid &= np.asarray(mask) != 0
    return valid


def _alignment_space(alignment: str) -> str:
    if alignment == "least_square":
        return "depth"
    if alignment == "least_square_disparity":
        return "disparity"
    raise ValueError(f"alignment={alignment!r}: expected one of {', '.join(ALIGNMENTS)}")


def _score(pred, gt, mask, alignment) -> tuple[dict, np.ndarray, np.ndarray]:
    """Align and score one pair; returns (metrics, aligned depth, valid)."""
    space = _alignment_space(alignment)
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction is {_size(pred)} but ground truth is {_size(gt)}")
    if exists(mask) and np.shape(mask) != gt.shape:
        raise ValueError(f"mask is {_size(np.asarray(mask))} but ground truth is {_size(gt)}")
    valid = valid_mask(pred, gt, mask)
    if not valid.any():
        raise ValueError("no valid pixels (need gt > 0 and pred > 0 inside the mask)")
    aligned, scale, shift = align_least_squares(pred, gt, valid, space=space)
    row = {
        "abs_rel": abs_rel(aligned, gt, valid),
        "delta1": delta(aligned, gt, valid, 1),
        "delta2": delta(aligned, gt, valid, 2),
        "delta3": delta(aligned, gt, valid, 3),
        "rmse": rmse(aligned, gt, valid),
        "nearest_offset": nearest_offset(aligned, gt, valid),
        "n_valid": int(valid.sum()),
        "scale": scale,
        "shift": shift,
    }
    return row, aligned, valid


def evaluate_pair(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, alignment: str = "least_square"
) -> dict:
    """Align one prediction onto its ground truth and score it.

    Returns {abs_rel, delta1, delta2, delta3, rmse, nearest_offset, n_valid, scale, shift}
    (nearest_offset in % of the image width). Raises
    ValueError for shapes that differ or when no pixel is valid.
    """
    return _score(pred, gt, mask, alignment)[0]


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}" if a.ndim == 2 else str(tuple(a.shape))


# ----------------------------------------------------------------------------- error maps


def error_map(
    aligned: np.ndarray, gt: np.ndarray, valid: np.ndarray, error_range: float = ERROR_RANGE
) -> np.ndarray:
    """Signed error (aligned - gt) as uint8 RGB [H, W, 3], like the paper's supp. Fig. 10.

    The error is divided by the gt depth range over the valid pixels; -error_range maps to
    blue (prediction too near), 0 to white (no error), +error_range to red (too far).
    Pixels outside `valid` are black.
    """
    aligned = np.asarray(aligned, np.float64)
    gt = np.asarray(gt, np.float64)
    valid = np.asarray(valid, bool)
    out = np.zeros(gt.shape + (3,), np.uint8)
    if not valid.any():
        return out
    g = gt[valid]
    span = max(float(g.max() - g.min()), EPS)
    t = np.clip((aligned - gt) / (span * error_range), -1.0, 1.0)
    fade = 1.0 - np.abs(t)  # 1 = white
    r = np.where(t > 0, 1.0, fade)
    b = np.where(t < 0, 1.0, fade)
    rgb = np.stack([r, fade, b], axis=-1)
    out[valid] = (rgb[valid] * 255.0).round().astype(np.uint8)
    return out


# ----------------------------------------------------------------------------- many images

# A sample is a name and a loader; the loader returns (pred, gt, mask or None) and raises
# InputError/ValueError for a sample that cannot be evaluated. Folders, datasets or methods
# run in memory all feed `evaluate_samples` this way.
Sample = tuple[str, Callable[[], tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]]


@dataclass
class EvalReport:
    """The outcome of an evaluation: per-image rows, failures by name, and the mean over images."""

    alignment: str
    units: str = "gt"  # what RMSE is in: "mm", or "gt" (the ground truth's own units)
    images: list[dict] = field(default_factory=list)  # {name, abs_rel, delta1..3, rmse, nearest_offset, n_valid, scale, shift}
    failed: list[dict] = field(default_factory=list)  # {name, error}: not scored, and counted
    unmatched: list[str] = field(default_factory=list)  # predictions with no ground truth (not scored)
    degenerate: list[str] = field(default_factory=list)  # constant ground truth over the valid pixels: skipped, counted

    @property
    def n_images(self) -> int:
        return len(self.images)

    def summary(self) -> dict:
        """Each metric averaged over images (NaN when no image was scored), plus the counts."""
        out = {m: (float(np.mean([r[m] for r in self.images])) if self.images else math.nan) for m in METRICS}
        out.update(n_images=self.n_images, n_failed=len(self.failed), n_degenerate=len(self.degenerate),
                   alignment=self.alignment, rmse_units=self.units)
        return out

    def to_dict(self) -> dict:
        """JSON-ready: the summary's keys, then `images`, `failed`, `unmatched`, `degenerate` (NaN → None)."""
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.summary().items()}
        out.update(images=self.images, failed=self.failed, unmatched=self.unmatched, degenerate=self.degenerate)
        return out


def is_degenerate(gt: np.ndarray, valid: np.ndarray) -> bool:
    """A ground truth that is constant over the valid pixels: any prediction aligns onto it exactly
    (a scale of 0), so it would score as perfect and say nothing about the prediction."""
    g = np.asarray(gt, np.float64)[valid]
    return g.size > 0 and float(g.max() - g.min()) == 0.0


def evaluate_samples(
    samples: Iterable[Sample],
    alignment: str = "least_square",
    error_maps_dir: str | Path | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    units: str = "gt",
) -> EvalReport:
    """Score each sample; a sample that fails to load or to score is recorded by name, not dropped,
    and one whose ground truth is constant over its valid pixels is skipped and listed (`degenerate`).

    With `error_maps_dir`, an error map `<name>.png` is written (atomically) for each scored sample.
    `progress` may wrap the iterable (e.g. a progress bar). `units` names what the loaders' ground
    truth (and so RMSE) is in.
    """
    _alignment_space(alignment)  # check it before any work
    report = EvalReport(alignment=alignment, units=units)
    items = progress(samples) if exists(progress) else samples
    for name, load in items:
        try:
            pred, gt, mask = load()
            if np.shape(pred) == np.shape(gt) and is_degenerate(gt, valid_mask(pred, gt, mask if np.shape(mask) == np.shape(gt) else None)):
                report.degenerate.append(name)
                continue
            row, aligned, valid = _score(pred, gt, mask, alignment)
        except (InputError, ValueError) as e:
            report.failed.append({"name": name, "error": str(e)})
            continue
        except Exception as e:  # an unreadable file of any kind fails alone; the batch goes on
            report.failed.append({"name": name, "error": f"could not be scored ({type(e).__name__}: {e})"})
            continue
        report.images.append({"name": name, **row})
        if exists(error_maps_dir):
            from rgbdface.data.io import save_image

            save_image(Path(error_maps_dir) / f"{name}.png", error_map(aligned, gt, valid))
    return report


def list_depth_files(folder: str | Path) -> tuple[dict[str, Path], list[str]]:
    """Depth files (16-bit PNG or .npy) under `folder`, keyed by path without suffix.

    Keys are relative to the folder (the stem for a flat folder). Hidden files are skipped.
    Returns (files, problems): a key present with both suffixes is a problem, reported by name.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: no such folder; check the path")
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a folder; pass a folder of depth files")
    files: dict[str, Path] = {}
    problems: list[str] = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or p.suffix.lower() not in DEPTH_SUFFIXES or any(s.startswith(".") for s in rel.parts):
            continue
        key = rel.with_suffix("").as_posix()
        if key in files:
            problems.append(key)
            continue
        files[key] = p
    return files, problems


def is_extra_output(key: str, keys) -> bool:
    """`key` names estimate-depth's preview or uncertainty file of a depth map `keys` also holds (STEM_preview → STEM)."""
    return any(key.endswith(x) and key[: -len(x)] in keys for x in ("_preview", "_uncertainty"))


def folder_samples(
    pred_dir: str | Path, gt_dir: str | Path, mask_dir: str | Path | None = None, gt_unit_mm: float | None = None
) -> tuple[list[Sample], list[dict], list[str]]:
    """Pair the files of two (or three) folders by name; returns (samples, failed, unmatched).

    Every ground-truth file becomes a sample or a failure: a missing prediction or mask is a
    failure named by the ground truth. Predictions with no ground truth are listed as unmatched.
    A colour image is refused as ground truth or prediction. With `gt_unit_mm`, ground truth is
    converted to millimetres (one step = that many mm).
    """
    from rgbdface.data.io import load_depth

    preds, pred_dups = list_depth_files(pred_dir)
    gts, gt_dups = list_depth_files(gt_dir)
    masks, mask_dups = list_depth_files(mask_dir) if exists(mask_dir) else ({}, [])
    failed = [{"name": k, "error": f"both .png and .npy in {d}; keep one"} for dups, d in
              ((pred_dups, pred_dir), (gt_dups, gt_dir), (mask_dups, mask_dir)) for k in dups]
    bad = {f["name"] for f in failed}

    samples: list[Sample] = []
    for name, gt_path in gts.items():
        if name in bad:
            continue
        if name not in preds:
            failed.append({"name": name, "error": f"no prediction of this name in {pred_dir}"})
            continue
        if exists(mask_dir) and name not in masks:
            failed.append({"name": name, "error": f"no mask of this name in {mask_dir}"})
            continue
        pred_path, mask_path = preds[name], masks.get(name)

        def load(pred_path=pred_path, gt_path=gt_path, mask_path=mask_path):
            mask = load_depth(mask_path) > 0 if exists(mask_path) else None
            gt = load_depth(gt_path, single_channel=True)
            return load_depth(pred_path, single_channel=True), gt * gt_unit_mm if exists(gt_unit_mm) else gt, mask

        samples.append((name, load))
    unmatched = sorted(k for k in preds if k not in gts and not is_extra_output(k, preds))
    return samples, failed, unmatched


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    mask_dir: str | Path | None = None,
    alignment: str = "least_square",
    error_maps_dir: str | Path | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    gt_unit_mm: float | None = None,
) -> EvalReport:
    """Evaluate predictions against ground truth matched by file name (16-bit PNG or .npy, 0 = invalid).

    Masks (optional) are matched the same way; nonzero = evaluate. Sizes that differ, a ground
    truth with no valid pixel, or a missing prediction are recorded in `report.failed` by name.
    RMSE is in the ground truth's units, or in mm with `gt_unit_mm` (mm per ground-truth step).
    """
    samples, failed, unmatched = folder_samples(pred_dir, gt_dir, mask_dir, gt_unit_mm)
    report = evaluate_samples(samples, alignment=alignment, error_maps_dir=error_maps_dir, progress=progress,
                              units="gt" if gt_unit_mm is None else "mm")
    report.failed = failed + report.failed
    report.unmatched = unmatched
    return report

