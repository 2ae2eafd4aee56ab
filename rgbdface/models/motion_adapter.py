"""AnimateDiff motion-module weights for the temporal modules (models/temporal.py), from a local folder or file.

A diffusers `MotionAdapter` folder loads as is; a .safetensors file with the original
AnimateDiff names is renamed to diffusers' names (same tensors) and checked against the
UNet's layout. Safetensors only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rgbdface.models.temporal import default_motion_adapter
from rgbdface.utils import InputError

if TYPE_CHECKING:
    from rgbdface.models.motion import MotionConfig


# Original AnimateDiff motion-module names → diffusers MotionAdapter names (a rename, same tensors).
_ORIGINAL_RENAMES = (
    (".temporal_transformer.", "."),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
)


def original_to_diffusers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original AnimateDiff motion-module state dict to diffusers' MotionAdapter names.

    The sinusoidal position tables (`pos_encoder.pe`) are dropped: MotionAdapter recomputes them.
    """
    out = {}
    for k, v in state.items():
        if "pos_encoder" in k or "pos_embed" in k:
            continue
        for old, new in _ORIGINAL_RENAMES:
            k = k.replace(old, new)
        out[k] = v
    return out


def load_motion_adapter(path: str | Path, unet, config: MotionConfig):
    """AnimateDiff motion-module weights from a local folder or file, laid out for `unet`.

    Accepts a diffusers MotionAdapter folder (config.json + *.safetensors) or a .safetensors
    file (or a folder holding one) with the original AnimateDiff names. Safetensors only.
    """
    from diffusers import MotionAdapter
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise InputError(f"--motion-adapter {path}: no such file or folder")
    if path.is_dir() and (path / "config.json").is_file():
        if not any(path.glob("*.safetensors")):
            raise InputError(f"--motion-adapter {path}: no .safetensors weights; convert the adapter to safetensors first")
        return MotionAdapter.from_pretrained(path, use_safetensors=True, local_files_only=True)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files or files[0].suffix != ".safetensors":
        raise InputError(f"--motion-adapter {path}: expected a diffusers MotionAdapter folder or a .safetensors file")
    state = load_file(str(files[0]))
    renamed = original_to_diffusers_names(state)
    adapter = default_motion_adapter(unet, config)
    own = adapter.state_dict()
    unexpected = sorted(k for k in renamed if k not in own)
    missing = sorted(k for k in own if k not in renamed and not k.endswith(".pe"))
    if unexpected or missing:
        example = (unexpected or missing)[0]
        raise InputError(f"--motion-adapter {files[0]}: its weights do not fit this UNet "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {example})")
    for k, v in renamed.items():
        if own[k].shape != v.shape:
            raise InputError(f"--motion-adapter {files[0]}: {k} has shape {tuple(v.shape)}, this UNet needs {tuple(own[k].shape)}")
    adapter.load_state_dict(renamed, strict=False)
    return adapter
