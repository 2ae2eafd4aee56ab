"""A model folder's own record (rgbdface.json), read without torch.

Commands read what they need from it before loading any weights: the face-crop margin
the model was trained on (so the input is cropped the model's way and a bad image fails
before the slow load) or the stages it reached. `model_folder` resolves a missing
`--model` to the bundled model, and a training run folder to the model/ it holds, exactly as
`load_model` does.
"""

from __future__ import annotations

import json
import re
import struct
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
    """The model's rgbdface.json as a dict (see `ModelMeta` for its fields), after `check_model_folder`."""
    folder = model_folder(path)
    return check_model_folder(folder)


# ----------------------------------------------------------------------------- checks before loading
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS = "diffusion_pytorch_model.safetensors"
DEPTH_KEYS = ("normalization", "order", "invalid_value", "valid_threshold")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be whole (no valid header, or a size its header does not account for), else None.

    Reads the header only (the first bytes), not the tensors.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "truncated"
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
            return "truncated or not safetensors"
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "not a safetensors file"
    return None if 8 + n + end == size else "truncated"


def _read_json_object(path: Path, fix: str) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing; {fix}") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path}: not valid JSON; {fix}") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a JSON object, got a {type(d).__name__}; {fix}")
    return d


def _check_weights(path: Path, fix: str) -> None:
    if not path.is_file():
        pickles = sorted(p.name for p in path.parent.glob("*") if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise InputError(f"{path.parent}: holds pickled weights ({pickles[0]}), which rgbdface never loads; "
                             "convert them to safetensors (e.g. diffusers' save_pretrained(safe_serialization=True))")
        raise InputError(f"{path}: missing; {fix}")
    why = safetensors_problem(path)
    if why:
        raise InputError(f"{path}: {why}; {fix}")


def _check_meta(meta: dict, where: Path, fix: str) -> None:
    def bad(key: str, want: str) -> InputError:
        return InputError(f"{where}: {key} must be {want}, got {meta.get(key)!r}; {fix}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    stages = meta.get("stages", [0])
    if not isinstance(stages, list) or not stages or not all(is_int(x) and x in STAGE_NAMES for x in stages):
        raise bad("stages", "a list of stage numbers 0-3")
    if not is_int(meta.get("image_size", 512)) or meta.get("image_size", 512) < 8:
        raise bad("image_size", "a whole number of pixels >= 8")
    if not is_int(meta.get("latent_channels", 4)) or meta.get("latent_channels", 4) < 1:
        raise bad("latent_channels", "a whole number >= 1")
    if not is_int(meta.get("format_version", 1)):
        raise bad("format_version", "a whole number")
    margin = meta.get("crop_margin", DEFAULT_MARGIN)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not 0 <= margin < 10:
        raise bad("crop_margin", "a number of face-box sizes")
    if meta.get("known_latents", "noised") not in ("noised", "clean"):
        raise bad("known_latents", "'noised' or 'clean'")
    steps = meta.get("depth_steps")
    if steps is not None and (not is_int(steps) or steps < 1):
        raise bad("depth_steps", "null or a whole number >= 1")
    if not isinstance(meta.get("depth_flip", False), bool):
        raise bad("depth_flip", "true or false")
    guidance = meta.get("talk_guidance")
    if guidance is not None and (not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not guidance >= 1):
        raise bad("talk_guidance", "null or a number >= 1")
    depth = meta.get("depth", {})
    if not isinstance(depth, dict) or set(depth) - set(DEPTH_KEYS):
        raise bad("depth", f"an object with keys among {', '.join(DEPTH_KEYS)}")
    if not isinstance(meta.get("extra", {}), dict):
        raise bad("extra", "an object")


def check_model_folder(folder: Path) -> dict:
    """Every file a model folder needs, checked before any weights load (JSON parsed, safetensors
    headers and sizes read); returns rgbdface.json as a dict. One line says what is missing or wrong.
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise InputError(f"{folder}: not an rgbdface model folder (no {META_FILE}); pass a folder made by `rgbdface init-model` or training")
    fix = "the model folder is damaged or incomplete: save or copy it again"
    meta = _read_json_object(meta_path, fix)
    _check_meta(meta, meta_path, fix)
    stages = meta.get("stages", [0])
    parts = ["vae", "unet", "reference_unet"] + (["masked_unet"] if 2 in stages else [])
    parts += [p for p in ("masked_unet", "masked_reference_unet", "masked_vae") if p not in parts and (folder / p).is_dir()]
    for part in parts:
        _read_json_object(folder / part / "config.json", fix)
        _check_weights(folder / part / WEIGHTS, fix)
    _read_json_object(folder / "scheduler" / "scheduler_config.json", fix)
    if (folder / "masked_scheduler").is_dir():
        _read_json_object(folder / "masked_scheduler" / "scheduler_config.json", fix)
    _check_weights(folder / "context.safetensors", fix)
    if 3 in stages or (folder / "motion").is_dir():
        record = _read_json_object(folder / "motion" / "motion.json", fix)
        if not isinstance(record.get("config"), dict) or not isinstance(record.get("temporal"), dict):
            raise InputError(f"{folder / 'motion' / 'motion.json'}: needs objects 'config' and 'temporal'; {fix}")
        _check_weights(folder / "motion" / "motion.safetensors", fix)
    return meta


def explain_load_errors(load):
    """Turn a library's error while loading a checked model folder into one line naming the folder."""
    import functools

    @functools.wraps(load)
    def wrapper(cls, path, *args, **kwargs):
        try:
            return load(cls, path, *args, **kwargs)
        except InputError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as e:
            if isinstance(e, RuntimeError) and any(w in str(e).lower() for w in ("out of memory", "cuda", "mps")):
                raise  # the device's trouble, not the folder's
            first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            first = re.sub(r"\s*https?://\S+", "", first)
            first = first if len(first) <= 160 else first[:157] + "..."
            raise InputError(f"{path}: cannot be loaded ({type(e).__name__}: {first}); "
                             "the model folder is damaged or was edited: save or copy it again") from None

    return wrapper


def model_crop_margin(path: str | Path | None) -> float:
    """The face-crop margin the model was trained on (models from before the record: the default)."""
    return float(read_meta(path).get("crop_margin", DEFAULT_MARGIN))
