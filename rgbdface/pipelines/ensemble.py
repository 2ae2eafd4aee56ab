"""Test-time ensembling of affine-invariant depth maps (as Marigold does, paper §5.2).

Each ensemble member is a relative depth map, known only up to scale and shift. The
members are brought into one frame before they are combined:

1. pick the reference member: the one closest to the pixelwise median of all members
   after each is standardised over the valid mask (zero median, unit mean absolute
   deviation), so one odd member cannot become the frame ("median"); or the first;
2. fit every member onto the reference by least squares (scale and shift over the valid
   mask, `rgbdface.metrics.depth.fit_scale_shift`);
3. the result is the pixelwise median of the aligned members, and the uncertainty their
   scaled median absolute deviation, 1.4826 · median |aligned - median| (the standard
   deviation for Gaussian spread), in the result's units.

Members that are affine maps of each other therefore give back the reference member
exactly, with zero uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbdface.metrics.depth import fit_scale_shift

MAD_TO_STD = 1.4826
REFERENCES = ("median", "first")


@dataclass
class EnsembleResult:
    """depth: [H, W] float32 median of the aligned members, in the reference member's frame.
    uncertainty: [H, W] float32 scaled MAD of the aligned members (same units; 0 for one member).
    aligned: [N, H, W] float32 members after scale/shift alignment; scales, shifts: [N] each.
    reference: index of the member that set the frame."""

    depth: np.ndarray
    uncertainty: np.ndarray
    aligned: np.ndarray
    scales: np.ndarray
    shifts: np.ndarray
    reference: int


def _standardize(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    v = x[valid]
    centre = np.median(v)
    spread = np.mean(np.abs(v - centre))
    return (x - centre) / spread if spread > 0 else x - centre


def median_member(members: np.ndarray, valid: np.ndarray) -> int:
    """The index of the member closest (mean absolute difference over `valid`) to the pixelwise median, affine-invariantly."""
    z = np.stack([_standardize(m, valid) for m in members])  # [N, H, W]
    med = np.median(z, axis=0)
    dist = [float(np.mean(np.abs(zi - med)[valid])) for zi in z]
    return int(np.argmin(dist))


def ensemble_depth(members: np.ndarray, valid: np.ndarray | None = None, reference: str = "median") -> EnsembleResult:
    """Align relative depth maps [N, H, W] to one frame over `valid` [H, W] (default: everywhere) and take their median."""
    members = np.asarray(members, np.float64)
    if members.ndim != 3 or members.shape[0] < 1:
        raise ValueError(f"members must be [N, H, W] with N >= 1, got shape {members.shape}")
    valid = np.ones(members.shape[1:], bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != members.shape[1:]:
        raise ValueError(f"valid {valid.shape} does not match the members' size {members.shape[1:]}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
    if not valid.any():
        valid = np.ones_like(valid)  # nothing to restrict to: align over the whole map

    # 1. The frame: one member, chosen robustly
    ref = 0 if reference == "first" or len(members) == 1 else median_member(members, valid)

    # 2. Least-squares scale and shift of every member onto it
    fits = [(1.0, 0.0) if i == ref else fit_scale_shift(m[valid], members[ref][valid]) for i, m in enumerate(members)]
    scales = np.array([f[0] for f in fits])
    shifts = np.array([f[1] for f in fits])
    aligned = members * scales[:, None, None] + shifts[:, None, None]  # [N, H, W]

    # 3. Median and scaled median absolute deviation
    depth = np.median(aligned, axis=0)
    uncertainty = MAD_TO_STD * np.median(np.abs(aligned - depth), axis=0)
    return EnsembleResult(
        depth=depth.astype(np.float32), uncertainty=uncertainty.astype(np.float32), aligned=aligned.astype(np.float32),
        scales=scales, shifts=shifts, reference=ref,
    )
