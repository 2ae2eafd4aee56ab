"""A model folder's own record (rgbdface.json), read without torch.

Commands read what they need from it before loading any weights: the face-crop margin
the model was trained on (so the input is cropped the model's way and a bad image fails
before the slow load) or the stages it reached. `model_folder` resolves a missing
`--model` to the bundled model, and a training run folder to the model/ it holds, exactly as
`load_model` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from rgbdface.data.face import DEFAULT_MARGIN
from rgbdface.utils import InputError

META_FILE = "rgbdface.json"
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "rgbdface-tiny"
PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the denoisers may be trained to predict
DEFAULT_DEPTH_STEPS = 25  # image-to-depth denoising steps of a model whose meta names none (depth_steps)
STAGE_NAMES = {0: "initialised (untrained)", 1: "joint RGB+depth", 2: "masked (image↔depth)", 3: "motion (audio+temporal)"}


def model_folder(path: str | Path | None) -> Path:
    """The model folder `path`, the model/ of a training run folder `path`, or the bundled model when it is
    None; a one-line error if there is none."""
    if path is None:
        if not (BUNDLED_MODEL / META_FILE).is_file():
            raise InputError("no --model given and the bundled model is not installed; pass --model DIR (e.g. one made by `rgbdface init-model --tiny -o DIR`)")
        return BUNDLED_MODEL
    path = Path(path)
    if not path.exists():
        raise InputError(f"--model {path}: no such folder")
    if not (path / META_FILE).is_file() and (path / "model" / META_FILE).is_file():
        return path / "model"  # the run folder of `rgbdface train`, `finetune-mask` or `train-motion`
    return path


def read_meta(path: str | Path | None) -> dict:
    """The model's rgbdface.json as a dict (see `ModelMeta` for its fields)."""
    folder = model_folder(path)
    meta = folder / META_FILE
    if not meta.is_file():
        raise InputError(f"{folder}: not an rgbdface model folder (no {META_FILE}); pass a folder made by `rgbdface init-model` or training")
    try:
        return json.loads(meta.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{meta}: not valid JSON; the model folder is damaged, save or copy it again") from None


def model_crop_margin(path: str | Path | None) -> float:
    """The face-crop margin the model was trained on (models from before the record: the default)."""
    return float(read_meta(path).get("crop_margin", DEFAULT_MARGIN))
