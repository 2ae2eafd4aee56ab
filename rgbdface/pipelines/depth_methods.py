"""Depth methods compared on a prep-depth dataset, as in the paper's Table 1.

Each method maps a dataset sample's RGB crop to a depth map of the crop's size
(larger = farther, > 0 wherever it predicts). Every method is scored on the same
pixels — ground truth > 0 inside the sample's face-skin mask — so a method must
predict everywhere there; one that cannot fit a sample fails on it by name.

- `model[:DIR]`  the model's image → depth (stage 2); DIR defaults to the bundled model
- `mesh`         the MediaPipe face-mesh fit rasterised with the assumed camera: the
                 pseudo ground truth of in-the-wild data (the paper's 3DMM-fit baseline)
- `plane`        a constant depth: after alignment, the mean ground-truth depth
- `mean-face[:DATASET]`  the average normalised face depth of a (training) dataset, in
                 crop coordinates; without DATASET, of the other identities evaluated
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rgbdface.utils import InputError, UsageError

METHODS = ("model", "mesh", "plane", "mean-face")


@dataclass
class Method:
    """A named depth predictor: predict(sample, rgb) → depth [S, S] float (> 0 where predicted)."""

    label: str
    predict: Callable
    notes: dict = field(default_factory=dict)


def parse_method(spec: str) -> tuple[str, str | None]:
    """'name' or 'name:ARG' → (name, arg); unknown names are a UsageError."""
    name, _, arg = spec.partition(":")
    if name not in METHODS:
        raise UsageError(f"--method {spec}: unknown method; use one of {', '.join(METHODS)} (model and mean-face take ':DIR')")
    return name, (arg or None)


def _normalise(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Depth over `valid` mapped to [0, 1] by its 2 % / 98 % quantiles (0 outside)."""
    out = np.zeros(depth.shape, np.float64)
    if valid.any():
        lo, hi = np.quantile(depth[valid], [0.02, 0.98])
        out[valid] = np.clip((depth[valid] - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return out


def mesh_method() -> Method:
    from rgbdface.data.depth import render_face_depth
    from rgbdface.data.face import crop_landmarks

    def predict(sample, rgb):
        fd = render_face_depth(crop_landmarks(rgb, name=sample.id), rgb.shape[0])
        return fd.depth

    return Method("mesh", predict)


def plane_method() -> Method:
    return Method("plane", lambda sample, rgb: np.ones(rgb.shape[:2], np.float32))


def mean_face_template(samples, size: int) -> np.ndarray:
    """The average of normalised ground-truth depth maps (crop coordinates), where any covers; else their mean."""
    from rgbdface.data.io import load_depth
    from rgbdface.pipelines.common import resize_map

    total = np.zeros((size, size))
    count = np.zeros((size, size))
    for s in samples:
        d = load_depth(s.depth)
        if d.shape != (size, size):
            d = resize_map(d, (size, size), mode="nearest")
        valid = d > 0
        total += _normalise(d, valid)
        count += valid
    if not count.any():
        raise InputError("mean-face: the reference samples have no valid depth")
    template = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return np.nan_to_num(template, nan=float(np.nanmean(template)))


def mean_face_method(reference_samples, label: str = "mean-face", exclude_identity: bool = False) -> Method:
    """With `exclude_identity`, each sample is predicted from the other identities' samples only."""
    cache: dict = {}

    def predict(sample, rgb):
        size = rgb.shape[0]
        key = (size, sample.identity if exclude_identity else None)
        if key not in cache:
            refs = [s for s in reference_samples if not (exclude_identity and s.identity == sample.identity)]
            if not refs:
                raise InputError("mean-face needs another identity; pass --method mean-face:TRAIN_DATASET")
            cache[key] = mean_face_template(refs, size)
        return 1.0 + cache[key]  # > 0 everywhere

    return Method(label, predict)


def model_method(model_dir: str | None, device: str = "cpu", steps: int | None = None, ensemble: int = 1, seed: int = 0,
                 flip: bool | None = None) -> Method:
    """The model's image → depth on the crop, unmasked so that it covers every evaluated pixel."""
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.depth import estimate_depth_crop

    model = load_model(model_dir, device=device, stages={2})
    model.require_stage(2, "eval --method model")

    def predict(sample, rgb):
        out = estimate_depth_crop(model, rgb, steps=steps, ensemble=ensemble, seed=seed, flip=flip)
        return out + 2.0  # relative depth in [-1, 1] → positive

    return Method(f"model:{model_dir}" if model_dir else "model (bundled)", predict)


def build_methods(specs: list[str], samples, device: str = "cpu", steps: int | None = None, ensemble: int = 1, seed: int = 0,
                  flip: bool | None = None) -> list[Method]:
    methods = []
    for spec in specs:
        name, arg = parse_method(spec)
        if name == "model":
            methods.append(model_method(arg, device=device, steps=steps, ensemble=ensemble, seed=seed, flip=flip))
        elif name == "mesh":
            methods.append(mesh_method())
        elif name == "plane":
            methods.append(plane_method())
        else:
            if arg is None:
                methods.append(mean_face_method(samples, exclude_identity=True))
            else:
                from rgbdface.data.manifest import load_manifest

                methods.append(mean_face_method(load_manifest(Path(arg)), label=f"mean-face:{Path(arg).name}", exclude_identity=True))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise InputError("--method: the same method is given twice")
    return methods


def dataset_samples(samples, method: Method, in_mm: bool = True):
    """Evaluation samples (name, loader) for `rgbdface.metrics.depth.evaluate_samples`; ground truth in
    millimetres (each row's `depth_unit_mm`), or in the dataset's own steps without `in_mm`."""
    from rgbdface.data.io import load_depth, load_image

    def loader(s):
        def load():
            gt = load_depth(s.depth, single_channel=True) * (s.depth_unit_mm if in_mm else 1.0)
            mask = load_depth(s.mask) > 0
            rgb = load_image(s.rgb)
            pred = np.asarray(method.predict(s, rgb), np.float64)
            if pred.shape != gt.shape:
                raise InputError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
            return pred, gt, mask

        return load

    return [(s.id.replace("/", "_"), loader(s)) for s in samples]


def prediction_samples(pred_dir, samples, in_mm: bool = True):
    """Pair estimate-depth's full-frame outputs (PRED/STEM.png or .npy) with the dataset samples cropped from
    the input STEM: each prediction is cropped with the sample's box and resampled to the crop size, then
    scored against the sample's depth inside its face-skin mask.

    Only crops of still images pair (a video's frames have no single prediction); for an input with several
    crops in the dataset (several faces) each crop is scored. Returns (samples, failed, unmatched) as
    `rgbdface.metrics.depth.folder_samples` does; previews and uncertainty files are ignored.
    """
    from rgbdface.data.face import crop_box_to
    from rgbdface.data.io import load_depth
    from rgbdface.data.prep import is_video
    from rgbdface.metrics.depth import is_extra_output, list_depth_files

    preds, dups = list_depth_files(pred_dir)
    failed = [{"name": k, "error": f"both .png and .npy in {pred_dir}; keep one"} for k in dups]
    by_stem: dict[str, list[str]] = {}
    for key in preds:
        if not is_extra_output(key, preds):
            by_stem.setdefault(Path(key).name, []).append(key)
    crops = [s for s in samples if s.box is not None and s.input and not is_video(Path(s.input))]
    used, out = set(), []
    for s in crops:
        stem = Path(s.input).stem
        name = f"{stem}/{s.id.replace('/', '_')}" if sum(Path(c.input).stem == stem for c in crops) > 1 else stem
        keys = by_stem.get(stem, [])
        if len(keys) != 1:
            failed.append({"name": name, "error": f"no prediction {stem}.png in {pred_dir}" if not keys else
                           f"several predictions named {stem} in {pred_dir} ({', '.join(keys)}); keep one"})
            continue
        used.add(keys[0])

        def load(s=s, path=preds[keys[0]]):
            full = load_depth(path, single_channel=True)
            x0, y0, x1, y1 = s.box
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if not (0 <= cx < full.shape[1] and 0 <= cy < full.shape[0]):
                raise InputError(f"{path}: is {full.shape[1]}x{full.shape[0]}, but the face of {s.input} is at ({cx:.0f}, {cy:.0f}); "
                                 "pass the full-frame depth of the same image (estimate-depth's output)")
            pred = crop_box_to(full, s.box, s.size, interpolation="nearest", border="constant")
            gt = load_depth(s.depth, single_channel=True) * (s.depth_unit_mm if in_mm else 1.0)
            mask = load_depth(s.mask) > 0
            return pred, gt, mask

        out.append((name, load))
    unmatched = sorted(k for k in preds if k not in used and not is_extra_output(k, preds))
    return out, failed, unmatched
