"""Measures of generated results, computed from their files alone (`rgbdface score`).

Talking heads (an RGB video or frames, optionally its 16-bit depth frames and its audio):

- face found: the share of frames in which MediaPipe face detection finds a face, each
  frame upscaled (bicubic) to `DETECT_SIZE` px first, since the detector is tuned for
  faces much larger than a 64 px crop;
- flicker: the mean absolute change between consecutive RGB frames, 0..255;
- colour dE: CIE76 distance (Euclidean in CIE L*a*b*) between the mean colour of the
  reference's face centre and that of each frame's face centre, averaged over frames;
- mouth-audio r: Pearson r between the speech loudness per frame and the mouth opening
  in the depth frames;
- depth face: the share of depth frames whose valid region is face-sized.

Samples (`generate`, `depth2img`): face found and colour dE per sample, and reference
sensitivity, the mean absolute RGB difference (0..255) between samples made with the same
seed from two different references.

Reconstruction (a talk run from the first frame and the audio of a rendered clip): PSNR
and SSIM of the RGB frames and the depth RMSE (after the paper's per-frame least-squares
scale and shift, in the ground truth's units) against the rendered ground truth.

Geometry: generated frames are face crops framed like the model's training data: the
detected face box is the central 1 / (1 + 2M) of the frame (M the crop margin, 0.6 by
default). The *face centre* is the central square half as wide as that face box; the
*mouth box* spans the middle 40 % of the face box's width and its rows from 62 % to
92 % of its height, where the mouth of a frontal face lies in a detector box.

Mouth opening of a depth frame: its depth over the face box is normalised to [0, 1] by its
2 % / 98 % quantiles (valid pixels; larger = farther), then averaged over the mouth box
with pixels without depth counted as 1 (far: the open mouth of a fitted mesh has no
depth). An opening jaw moves the lips and chin back from the nose and opens a far cavity,
so the number grows with the opening whatever the depth's scale.

Loudness per frame: 20·log10 of the RMS of the frame's audio samples (frame f covers
samples [f·sr/fps, (f+1)·sr/fps)), floored at 60 dB below the loudest frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rgbdface.data.colour import srgb_to_lab

DETECT_SIZE = 256
DEFAULT_MARGIN = 0.6
FACE_SIZED = (0.08, 0.85)  # a face-sized valid depth region covers this share of its frame ...
FACE_SIZED_IN_BOX = 0.5  # ... and at least this share of the face box
LOUDNESS_FLOOR_DB = 60.0


# ----------------------------------------------------------------------------- geometry
def face_box(size: int, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the face box in a size x size crop framed with `margin`."""
    side = size / (1.0 + 2.0 * margin)
    lo = (size - side) / 2.0
    a, b = int(round(lo)), int(round(lo + side))
    return a, b, a, b


def face_centre_box(size: int, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the face centre: the central square half as wide as the face box."""
    side = size / (1.0 + 2.0 * margin) / 2.0
    lo = (size - side) / 2.0
    a, b = int(round(lo)), int(round(lo + side))
    return a, b, a, b


def mouth_box(size: int, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the mouth region within the face box."""
    y0, y1, x0, x1 = face_box(size, margin)
    h, w = y1 - y0, x1 - x0
    return (y0 + int(round(0.62 * h)), y0 + int(round(0.92 * h)), x0 + int(round(0.30 * w)), x0 + int(round(0.70 * w)))


# ----------------------------------------------------------------------------- per-frame measures
def mean_lab(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The L*a*b* of the mean sRGB colour inside `box` of a uint8 RGB image: [3]."""
    y0, y1, x0, x1 = box
    patch = np.asarray(image, np.float64)[y0:y1, x0:x1].reshape(-1, 3)
    return srgb_to_lab(patch.mean(0)[None])[0]


def colour_distance(reference: np.ndarray, frame: np.ndarray, margin: float = DEFAULT_MARGIN) -> float:
    """CIE76 ΔE between the face-centre colours of two crops of the same framing (resized to the frame's size)."""
    size = frame.shape[0]
    if reference.shape[:2] != frame.shape[:2]:
        reference = resize(reference, size)
    box = face_centre_box(size, margin)
    return float(np.linalg.norm(mean_lab(reference, box) - mean_lab(frame, box)))


def resize(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    import cv2

    flag = {"area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}[interpolation]
    if interpolation == "area" and size > image.shape[0]:
        flag = cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=flag)


def face_found(frame: np.ndarray, min_score: float = 0.5) -> bool:
    """MediaPipe face detection finds a face in the frame upscaled to DETECT_SIZE px."""
    from rgbdface.data.face import detect_faces

    big = resize(frame, DETECT_SIZE, "cubic") if frame.shape[0] != DETECT_SIZE else frame
    return bool(detect_faces(big, min_score=min_score))


def flicker(frames: np.ndarray) -> float:
    """Mean absolute change between consecutive frames [F, H, W, 3] (0..255); nan for fewer than 2 frames."""
    f = np.asarray(frames, np.float64)
    if len(f) < 2:
        return float("nan")
    return float(np.abs(np.diff(f, axis=0)).mean())


def normalise_depth(depth: np.ndarray, region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Depth inside `region` scaled to [0, 1] by the 2 % / 98 % quantiles of its valid (> 0) pixels, and the
    validity mask; all-invalid or flat regions give zeros."""
    y0, y1, x0, x1 = region
    d = np.asarray(depth, np.float64)[y0:y1, x0:x1]
    valid = d > 0
    out = np.zeros_like(d)
    if valid.sum() >= 2:
        lo, hi = np.quantile(d[valid], [0.02, 0.98])
        if hi > lo:
            out[valid] = np.clip((d[valid] - lo) / (hi - lo), 0.0, 1.0)
    return out, valid


def mouth_opening(depth: np.ndarray, margin: float = DEFAULT_MARGIN) -> float:
    """How open the mouth of one depth frame [S, S] (0 = no depth, larger = farther) is (module doc)."""
    size = depth.shape[0]
    fb = face_box(size, margin)
    norm, valid = normalise_depth(depth, fb)
    my0, my1, mx0, mx1 = mouth_box(size, margin)
    sl = (slice(my0 - fb[0], my1 - fb[0]), slice(mx0 - fb[2], mx1 - fb[2]))
    return float(np.where(valid[sl], norm[sl], 1.0).mean())


def face_sized_depth(depth: np.ndarray, margin: float = DEFAULT_MARGIN) -> bool:
    """The frame's valid depth covers a face-sized share of it (FACE_SIZED) and most of the face box."""
    valid = np.asarray(depth) > 0
    y0, y1, x0, x1 = face_box(depth.shape[0], margin)
    share = valid.mean()
    return bool(FACE_SIZED[0] <= share <= FACE_SIZED[1] and valid[y0:y1, x0:x1].mean() >= FACE_SIZED_IN_BOX)


def loudness_per_frame(wave: np.ndarray, n_frames: int, fps: float = 25.0, sample_rate: int = 16000) -> np.ndarray:
    """dB loudness of each video frame's audio [n_frames] (module doc); frames past the audio get the floor."""
    wave = np.asarray(wave, np.float64).ravel()
    out = np.empty(n_frames)
    for f in range(n_frames):
        a, b = int(round(f * sample_rate / fps)), int(round((f + 1) * sample_rate / fps))
        chunk = wave[a:b]
        out[f] = np.sqrt(np.mean(chunk ** 2)) if chunk.size else 0.0
    db = 20.0 * np.log10(np.maximum(out, 1e-12))
    return np.maximum(db, db.max() - LOUDNESS_FLOOR_DB)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two equally long series; nan when either is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size != b.size or a.size < 2:
        raise ValueError(f"pearson needs two equally long series of 2 or more values, got {a.size} and {b.size}")
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR (dB) of uint8 images; inf when identical."""
    mse = np.mean((np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def _gaussian_blur(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian filter over the first two axes of [H, W, ...], edges mirrored (…c b a | a b c…)."""
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (x.ndim - 2)
    x = np.pad(x, pad, mode="symmetric")
    h, w = x.shape[0] - 2 * radius, x.shape[1] - 2 * radius
    x = sum(k[i] * x[i:i + h] for i in range(k.size))
    return sum(k[i] * x[:, i:i + w] for i in range(k.size))


def ssim(pred: np.ndarray, gt: np.ndarray, sigma: float = 1.5) -> float:
    """SSIM (Wang et al. 2004) of two uint8 RGB images: Gaussian-weighted windows (σ 1.5, 11 x 11), K1 0.01,
    K2 0.03, data range 255, per channel; the mean over the pixels at least a window radius from the border
    and over the channels (as scikit-image's `structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False)`)."""
    x, y = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"the two images differ in shape: {x.shape} and {y.shape}")
    r = int(3.5 * sigma + 0.5)
    if min(x.shape[:2]) < 2 * r + 1:
        raise ValueError(f"SSIM needs images of at least {2 * r + 1} x {2 * r + 1} px, got {x.shape[0]} x {x.shape[1]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_blur(x, sigma, r), _gaussian_blur(y, sigma, r)
    vx = _gaussian_blur(x * x, sigma, r) - mx * mx
    vy = _gaussian_blur(y * y, sigma, r) - my * my
    cxy = _gaussian_blur(x * y, sigma, r) - mx * my
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[r:-r, r:-r].mean())


def reference_sensitivity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute RGB difference (0..255) between two sets of samples [N, H, W, 3] made from different references."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"the two sets of samples differ in shape: {a.shape} and {b.shape}")
    return float(np.abs(a - b).mean())


def chroma(image: np.ndarray, margin: float = DEFAULT_MARGIN) -> float:
    """C*ab (colourfulness) of the face centre's mean colour: about 0 for a grey or black-and-white face."""
    lab = mean_lab(image, face_centre_box(image.shape[0], margin))
    return float(np.hypot(lab[1], lab[2]))


# ----------------------------------------------------------------------------- whole results
@dataclass
class Scores:
    """What `score` reports: name → value (nan where not measured), plus counts."""

    values: dict
    counts: dict

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else round(float(v), 4)) for k, v in self.values.items()} | self.counts


def score_frames(frames: np.ndarray, reference: np.ndarray, margin: float = DEFAULT_MARGIN, depth: list | None = None,
                 wave: np.ndarray | None = None, fps: float = 25.0, sample_rate: int = 16000, detect: bool = True) -> Scores:
    """Talk measures of RGB frames [F, S, S, 3] (uint8) against the reference crop (uint8, same framing),
    with optional depth frames ([S, S] each, 0 = no depth) and the audio."""
    n = len(frames)
    v = {
        "face_found": float(np.mean([face_found(f) for f in frames])) if detect else float("nan"),
        "flicker": flicker(frames),
        "colour_de": float(np.mean([colour_distance(reference, f, margin) for f in frames])),
        "reference_chroma": chroma(resize(reference, frames.shape[1]), margin),
        "chroma": float(np.mean([chroma(f, margin) for f in frames])),
        "mouth_audio_r": float("nan"),
        "depth_face": float("nan"),
    }
    if depth is not None:
        v["depth_face"] = float(np.mean([face_sized_depth(d, margin) for d in depth]))
        if wave is not None:
            m = min(len(depth), n)
            v["mouth_audio_r"] = pearson(loudness_per_frame(wave, m, fps, sample_rate), [mouth_opening(d, margin) for d in depth[:m]])
    return Scores(v, {"frames": n, "depth_frames": 0 if depth is None else len(depth)})


def score_samples(samples: np.ndarray, reference: np.ndarray, margin: float = DEFAULT_MARGIN, against: np.ndarray | None = None,
                  detect: bool = True) -> Scores:
    """Sample measures of [N, S, S, 3] uint8 samples of one reference (and of another, same seed: `against`)."""
    v = {
        "face_found": float(np.mean([face_found(f) for f in samples])) if detect else float("nan"),
        "colour_de": float(np.mean([colour_distance(reference, f, margin) for f in samples])),
        "reference_chroma": chroma(resize(reference, samples.shape[1]), margin),
        "chroma": float(np.mean([chroma(f, margin) for f in samples])),
        "reference_sensitivity": float("nan") if against is None else reference_sensitivity(samples, against),
    }
    return Scores(v, {"samples": len(samples)})


def score_reconstruction(frames: np.ndarray, gt_frames: np.ndarray, depth: list | None = None, gt_depth: list | None = None) -> Scores:
    """PSNR / SSIM of RGB frames against ground truth (first min(F, F_gt) frames) and depth RMSE after per-frame
    least-squares alignment inside the ground truth's valid pixels."""
    from rgbdface.metrics.depth import evaluate_pair

    m = min(len(frames), len(gt_frames))
    v = {"psnr": float(np.mean([psnr(frames[i], gt_frames[i]) for i in range(m)])),
         "ssim": float(np.mean([ssim(frames[i], gt_frames[i]) for i in range(m)])),
         "depth_rmse": float("nan")}
    if depth is not None and gt_depth is not None:
        k = min(len(depth), len(gt_depth))
        rm = []
        for i in range(k):
            try:
                rm.append(evaluate_pair(np.asarray(depth[i], np.float64), np.asarray(gt_depth[i], np.float64))["rmse"])
            except ValueError:  # no pixel with depth in both: not scored
                continue
        v["depth_rmse"] = float(np.mean(rm)) if rm else float("nan")
    return Scores(v, {"frames": m})
