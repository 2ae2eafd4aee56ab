"""Monocular facial depth estimation: image → depth with the masked (stage-2) model (paper §4.1, §5.2).

The input is cropped to the face (the shared crop of `rgbdface.data.face`, with the
margin the model was trained on: `model.meta.crop_margin`), encoded,
and used twice: as the known RGB latent (m_rgb = 0, keep) and as the reference of the
ReferenceNet (the identity is the image's own). The depth latent is generated
(m_depth = 1), decoded, optionally ensembled over several seeds, and pasted back into
the input's full frame. Outside the face region (from the fitted face mesh) depth is 0.

Depth is relative (affine-invariant), larger = farther, in the decoder's range [-1, 1];
`relative_depth_to_u16` maps it to 1..65535 for 16-bit PNGs (0 = no depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from rgbdface.data.face import DEFAULT_MARGIN, FaceCrop, crop_face, paste_back
from rgbdface.models.folder import DEFAULT_DEPTH_STEPS  # (also part of this module's API)
from rgbdface.models.model import RGBDFaceModel
from rgbdface.pipelines.common import image_to_tensor, resize_map
from rgbdface.pipelines.ensemble import REFERENCES, ensemble_depth
from rgbdface.pipelines.sampling import Known, sample_latents

CROP_SIZE = 512  # the face crop the mesh is fitted on; the model reads it resized to its own size
U16_PER_UNIT = 65534 / 2  # 16-bit PNG steps per unit of relative depth (see relative_depth_to_u16)


@dataclass
class DepthInput:
    """An image ready for estimation.

    image: [H, W, 3] uint8, the full frame.  crop: its face crop (CROP_SIZE, with landmarks).
    mask:  [S, S] bool, the face region in the crop.  name: for messages.
    margin: the crop margin it was cropped with (must be the model's `meta.crop_margin`).
    """

    image: np.ndarray
    crop: FaceCrop
    mask: np.ndarray
    name: str = "image"
    margin: float = DEFAULT_MARGIN


@dataclass
class DepthResult:
    """Estimated depth of one image.

    depth:       [H, W] float32 relative depth in [-1, 1] (larger = farther) at the input's size; 0 outside `valid`.
    valid:       [H, W] bool, the face region (inside the face crop).
    uncertainty: [H, W] float32 spread of the ensemble members (scaled MAD, depth units; 0 outside `valid`),
                 or None for a single member.
    crop:        the face crop the model saw (box, landmarks).
    crop_depth:  [s, s] float32 the depth in the crop frame at the model's resolution, over the whole crop.
    crop_valid:  [s, s] bool the face region there.
    members:     [N, s, s] float32 the ensemble members after alignment (N = ensemble, twice that with flip).
    """

    depth: np.ndarray
    valid: np.ndarray
    uncertainty: np.ndarray | None
    crop: FaceCrop
    crop_depth: np.ndarray
    crop_valid: np.ndarray
    members: np.ndarray

    def to_u16(self) -> np.ndarray:
        """The 16-bit PNG encoding: 1..65535 inside `valid`, 0 elsewhere (`relative_depth_to_u16`)."""
        from rgbdface.data.io import relative_depth_to_u16

        return relative_depth_to_u16(self.depth, self.valid)

    def to_units(self) -> np.ndarray:
        """float32 [H, W] in the 16-bit PNG's units without rounding: 1..65535 inside `valid`, 0 elsewhere."""
        d = 1.0 + (np.clip(self.depth.astype(np.float64), -1.0, 1.0) + 1.0) * U16_PER_UNIT
        return np.where(self.valid, d, 0.0).astype(np.float32)


def face_region_mask(crop: FaceCrop) -> np.ndarray:
    """[S, S] bool: the face region of a crop: where its fitted face mesh is rasterised (`render_face_depth`).

    That is the face skin plus the closed eyes, forehead to chin (where prep-depth's ground
    truth has depth); the mouth opening, hair, neck and background are outside it.
    """
    from rgbdface.data.depth import render_face_depth

    if crop.landmarks is None:
        raise ValueError("face_region_mask needs a crop with landmarks (crop_face(..., with_landmarks=True))")
    return render_face_depth(crop.landmarks, crop.size).depth > 0


def prepare_depth_input(image: np.ndarray, name: str = "image", crop_size: int = CROP_SIZE, margin: float = DEFAULT_MARGIN) -> DepthInput:
    """Find the face and its region (no model needed). Raises NoFaceError / InputError naming `name`.

    margin: the crop margin of the model that will read it (`model.meta.crop_margin`, or
    `rgbdface.models.folder.model_crop_margin(folder)` before the model is loaded).
    """
    crop = crop_face(image, size=crop_size, margin=margin, name=name, with_landmarks=True)
    return DepthInput(image=image, crop=crop, mask=face_region_mask(crop), name=name, margin=margin)


def depth_steps(model: RGBDFaceModel, steps: int | None) -> int:
    """The steps asked for, else the model's own choice (`meta.depth_steps`), else DEFAULT_DEPTH_STEPS."""
    if steps is not None:
        return steps
    return model.meta.depth_steps or DEFAULT_DEPTH_STEPS


def depth_flip(model: RGBDFaceModel, flip: bool | None) -> bool:
    """Whether to average in the mirrored image's estimate: as asked, else the model's own choice (`meta.depth_flip`)."""
    return bool(model.meta.depth_flip) if flip is None else bool(flip)


def check_inputs(model: RGBDFaceModel, inputs: list[DepthInput] | None, steps: int, ensemble: int, guidance: float, reference: str) -> None:
    """Raise on a model without stage 2 (InputError) or a bad argument (ValueError naming it); inputs=None skips them."""
    model.require_stage(2, "depth estimation")
    if model.masked is None:
        raise ValueError("the model lists stage 2 but has no masked denoiser (masked_unet/)")
    if inputs is not None and (not inputs or not all(isinstance(x, DepthInput) for x in inputs)):
        raise ValueError("inputs must be a non-empty list of DepthInput (see prepare_depth_input)")
    for x in inputs or []:
        if abs(x.margin - model.meta.crop_margin) > 1e-9:
            raise ValueError(f"inputs: {x.name} was cropped with margin {x.margin:g} but the model was trained on margin "
                             f"{model.meta.crop_margin:g}; prepare it with prepare_depth_input(..., margin=model.meta.crop_margin)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = off), got {guidance}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


@torch.no_grad()
def estimate_depths(
    model: RGBDFaceModel,
    inputs: list[DepthInput],
    steps: int | None = None,
    seed: int = 0,
    scheduler: str = "ddim",
    ensemble: int = 1,
    guidance: float = 1.0,
    reference: str = "median",
    progress: bool = False,
    flip: bool | None = None,
) -> list[DepthResult]:
    """Estimate the depth of several prepared images in one batch (B images × `ensemble` members).

    An image's depth does not depend on the batch it is in (see `sample_depth`). steps=None: the
    model's `meta.depth_steps`, else 25. flip: also estimate the mirrored crop and ensemble its
    (mirrored back) members with the others; None: the model's `meta.depth_flip`.
    """
    # 1. Check inputs
    steps, flip = depth_steps(model, steps), depth_flip(model, flip)
    check_inputs(model, inputs, steps, ensemble, guidance, reference)

    # 2.–4. Sample the ensemble members in the crop frame
    members = sample_depth(model, [x.crop.image for x in inputs], steps=steps, seed=seed, scheduler=scheduler,
                           ensemble=ensemble, guidance=guidance, progress=progress, flip=flip)  # [B, N, s, s], N = 2 x ensemble with flip

    # 5. Per image: ensemble in the crop frame, then paste into the full frame
    return [_finish(x, m, reference) for x, m in zip(inputs, members)]


@torch.no_grad()
def sample_depth(
    model: RGBDFaceModel,
    crops: list[np.ndarray],
    steps: int = 25,
    seed: int = 0,
    scheduler: str = "ddim",
    ensemble: int = 1,
    guidance: float = 1.0,
    progress: bool = False,
    flip: bool = False,
) -> np.ndarray:
    """Depth samples [B, N, s, s] (float32, [-1, 1], model resolution) of face crops (uint8 RGB [S, S, 3] each).

    Every crop draws its noise from its own generator seeded with `seed`, so a crop's depth
    does not depend on the batch it is in.

    flip: test-time mirroring. Each crop is also estimated mirrored left-right (same seed) and
    those members, mirrored back, follow its own: [B, 2N, s, s]. A face is nearly symmetric
    but a model's errors need not be, so the two estimates' mean is steadier (twice the compute).
    """
    if flip:
        both = sample_depth(model, [*crops, *(np.ascontiguousarray(c[:, ::-1]) for c in crops)], steps=steps, seed=seed,
                            scheduler=scheduler, ensemble=ensemble, guidance=guidance, progress=progress)
        b = len(crops)
        return np.concatenate([both[:b], both[b:, :, :, ::-1]], axis=1)
    device, dtype = model.device, model.dtype
    size = model.meta.image_size
    generators = [torch.Generator().manual_seed(seed) for _ in crops]

    with model.autocast():
        # 2. Encode the face crops (VAE); each image is its own reference
        rgb = torch.cat([image_to_tensor(c, size, device) for c in crops]).to(dtype)  # [B, 3, S, S]
        z_rgb = model.masked_codec.encode_rgb(rgb)  # [B, C, s, s]

        # 3. Generate depth with RGB known (ReferenceNet once, masked UNet per step)
        _, z_depth = sample_latents(
            model.masked, model.sampling_scheduler(scheduler, masked=True), z_rgb, model.context.to(dtype),
            num_per_reference=ensemble, steps=steps, guidance=guidance, generator=generators,
            known=Known(rgb=z_rgb, m_rgb=0.0, m_depth=1.0, clean=model.meta.known_clean), progress=progress,
        )  # [B·N, C, s, s]

        # 4. Decode depth (VAE: mean of the 3 channels)
        depth = model.masked_codec.decode_depth(z_depth).float()  # [B·N, 1, S, S]
    return rearrange(depth, "(b n) 1 h w -> b n h w", n=ensemble).cpu().numpy()


def _finish(x: DepthInput, members: np.ndarray, reference: str) -> DepthResult:
    s = members.shape[-1]
    crop_valid = resize_map(x.mask, (s, s))  # [s, s] bool
    ens = ensemble_depth(members, crop_valid, reference=reference)
    valid = paste_back(x.mask.astype(np.float32), x.crop, fill=0.0) > 0.5  # [H, W]
    depth = np.where(valid, paste_back(ens.depth, x.crop, fill=0.0), 0.0).astype(np.float32)
    uncertainty = None
    if len(members) > 1:
        uncertainty = np.where(valid, paste_back(ens.uncertainty, x.crop, fill=0.0), 0.0).astype(np.float32)
    return DepthResult(depth=depth, valid=valid, uncertainty=uncertainty, crop=x.crop,
                       crop_depth=ens.depth, crop_valid=crop_valid, members=ens.aligned)


def estimate_depth(model: RGBDFaceModel, image: np.ndarray, name: str = "image", **kwargs) -> DepthResult:
    """Estimate the relative depth of the face in `image` (uint8 RGB [H, W, 3]) at the image's size.

    kwargs: steps, seed, scheduler, ensemble, guidance, reference, progress, flip (see `estimate_depths`).
    """
    return estimate_depths(model, [prepare_depth_input(image, name, margin=model.meta.crop_margin)], **kwargs)[0]


def estimate_depth_crop(model: RGBDFaceModel, crop: np.ndarray, steps: int | None = None, seed: int = 0, scheduler: str = "ddim",
                        ensemble: int = 1, guidance: float = 1.0, reference: str = "median", flip: bool | None = None) -> np.ndarray:
    """Depth [S, S] float32 in [-1, 1] of an image that is already a face crop (uint8 RGB [S, S, 3]), over the whole crop.

    No face detection and no mask: for crops made by prep-depth (evaluation) or `crop_face`,
    framed with the model's `meta.crop_margin`.
    Ensemble members are aligned over the whole crop. flip: as in `estimate_depths`.
    """
    crop = np.asarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"crop must be a square uint8 RGB array [S, S, 3], got {crop.dtype} {crop.shape}")
    steps, flip = depth_steps(model, steps), depth_flip(model, flip)
    check_inputs(model, None, steps, ensemble, guidance, reference)
    members = sample_depth(model, [crop], steps=steps, seed=seed, scheduler=scheduler, ensemble=ensemble, guidance=guidance, flip=flip)[0]
    depth = ensemble_depth(members, reference=reference).depth  # [s, s]
    size = crop.shape[0]
    return depth if depth.shape[0] == size else resize_map(depth, (size, size))
