"""Depth → image with a reference's identity, and depth-driven editing of a region (paper §4.1, §5.3, Fig. 5).

The stage-2 model generates RGB with the depth known (m_rgb = 1, m_depth = 0); the
ReferenceNet carries the identity of the reference portrait.

How a depth map is aligned with the images (depth: larger = farther, 0 = no depth,
any units: it is normalised per image as in training):

Face crops use the margin the model was trained on (`model.meta.crop_margin`).

- **Full mode** (`depth`, `reference`). A depth map of the reference's size is a
  full-frame depth of the reference's framing: it is cropped with the reference's face
  box, and the result is that square face crop (CROP_SIZE px). A depth map of another
  size whose depth pixels are framed as in a face crop (a face about 40 % of the side
  wide, near the centre; e.g. from `generate` or `prep-depth`) is already a face crop:
  it is used as it is, the reference is cropped to its face, and the result has the
  depth's size. Any other depth map is a full frame of another photo (e.g. from
  `estimate-depth`): it is cropped around its depth pixels with the model's framing
  (`face_box_of_depth`) and the result is a CROP_SIZE face crop.
- **Region mode** (`depth`, `image`, `region`; the reference defaults to the image).
  The edited depth and the region mask have the image's size. The face crop of the
  image sets the frame; inside it the model regenerates the latent cells the region
  touches, keeping the rest of the image as the known RGB, and the result is pasted
  back into the full frame only inside the region. Outside the region (and outside the
  face crop) the image is unchanged, pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rgbdface.data.face import DEFAULT_MARGIN, FaceCrop, crop_box_to, crop_face, paste_back
from rgbdface.models.model import RGBDFaceModel
from rgbdface.pipelines.common import image_to_tensor, tensor_to_images
from rgbdface.pipelines.sampling import Known, sample_latents
from rgbdface.utils import InputError, exists

CROP_SIZE = 512  # face crops (full-frame depth, region mode) are taken at this size


@dataclass
class Depth2ImgInput:
    """A depth-to-image task in the face-crop frame.

    depth:     [S, S] float32 depth in the crop (0 = none).
    reference: the reference's face crop (identity).
    image:     region mode: the face crop of the image being edited (its box maps back to `full`).
    full:      region mode: [H, W, 3] uint8 the image being edited.
    region:    region mode: [S, S] bool, where to regenerate in the crop; `region_full` [H, W] bool in the full frame.
    margin:    the crop margin of the face crops (must be the model's `meta.crop_margin`).
    cropped_from_full_frame: full mode: the depth was a full frame of another photo, cropped around its face.
    """

    depth: np.ndarray
    reference: FaceCrop
    image: FaceCrop | None = None
    full: np.ndarray | None = None
    region: np.ndarray | None = None
    region_full: np.ndarray | None = None
    margin: float = DEFAULT_MARGIN
    cropped_from_full_frame: bool = False

    @property
    def size(self) -> int:
        return int(self.depth.shape[0])


@dataclass
class Depth2ImgResult:
    """image:   full mode: [S, S, 3] uint8 the generated face crop; region mode: [H, W, 3] uint8 the edited image.
    crop:    [S, S, 3] uint8 the generated face crop (before compositing).
    changed: region mode: [H, W] bool, the pixels taken from the generated crop; None in full mode."""

    image: np.ndarray
    crop: np.ndarray
    changed: np.ndarray | None = None


def crop_depth(depth: np.ndarray, box, size: int) -> np.ndarray:
    """Crop a depth map with holes (0 = none) to `box` at size × size without blending depth into the holes.

    Normalised interpolation: depth·valid and valid are resampled alike and divided; a pixel
    keeps depth where at least half of its footprint had depth.
    """
    d = np.asarray(depth, np.float32)
    valid = (d > 0).astype(np.float32)
    num = crop_box_to(d * valid, box, size, interpolation="linear", border="constant")
    den = crop_box_to(valid, box, size, interpolation="linear", border="constant")
    return np.where(den >= 0.5, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def _resize_depth(depth: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[S, S] depth with holes → ([1, 1, size, size] depth, [1, 1, size, size] bool valid), by normalised interpolation."""
    d = torch.from_numpy(np.ascontiguousarray(depth, np.float32))[None, None]
    v = (d > 0).float()
    if d.shape[-1] != size:
        kw = dict(size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        num, den = F.interpolate(d * v, **kw), F.interpolate(v, **kw)
        d, v = num / den.clamp(min=1e-6), (den >= 0.5).float()
    return d * v, v.bool()


# Where a face crop's depth pixels lie, measured on prep-depth crops (margin 0.6) of the example portraits: the
# face mesh spans 0.34-0.44 of the side in width and 0.36-0.50 in height, its pixels' mean at 0.43-0.54 across
# and 0.51-0.56 down. Widths scale with the margin as 1 / (1 + 2 margin).
MESH_WIDTH, MESH_HEIGHT, MESH_CENTRE = 0.40, 0.46, (0.48, 0.53)


def _mesh_fractions(margin: float) -> tuple[float, float]:
    k = (1 + 2 * DEFAULT_MARGIN) / (1 + 2 * margin)
    return MESH_WIDTH * k, MESH_HEIGHT * k


def is_face_crop(depth: np.ndarray, margin: float = DEFAULT_MARGIN) -> bool:
    """Whether a depth map is framed as a face crop of `margin`: square, its depth pixels about as wide as a
    face in such a crop (0.6-1.6 times) and centred within 12 % of the side of where a crop puts them."""
    h, w = depth.shape
    ys, xs = np.nonzero(depth > 0)
    if h != w or xs.size == 0:
        return False
    fw, _ = _mesh_fractions(margin)
    width = (xs.max() - xs.min() + 1) / w
    cx, cy = xs.mean() / w, ys.mean() / h
    return 0.6 * fw <= width <= 1.6 * fw and abs(cx - MESH_CENTRE[0]) < 0.12 and abs(cy - MESH_CENTRE[1]) < 0.12


def face_box_of_depth(depth: np.ndarray, margin: float = DEFAULT_MARGIN) -> tuple[float, float, float, float]:
    """The square crop box that frames the depth pixels of a full-frame depth map (estimate-depth's: depth on the
    face only) as a face crop of `margin` frames its face: the inverse of the fractions above."""
    ys, xs = np.nonzero(depth > 0)
    fw, fh = _mesh_fractions(margin)
    side = ((xs.max() - xs.min() + 1) / fw + (ys.max() - ys.min() + 1) / fh) / 2
    x0, y0 = xs.mean() + 0.5 - MESH_CENTRE[0] * side, ys.mean() + 0.5 - MESH_CENTRE[1] * side
    return (float(x0), float(y0), float(x0 + side), float(y0 + side))


def prepare_depth2img(
    depth: np.ndarray,
    reference: np.ndarray | None = None,
    image: np.ndarray | None = None,
    region: np.ndarray | None = None,
    names: dict[str, str] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> Depth2ImgInput:
    """Align the depth (and region) with the face crops; see the module docstring. No model needed.

    margin: the crop margin of the model that will run it (`model.meta.crop_margin`, or
    `rgbdface.models.folder.model_crop_margin(folder)` before the model is loaded).
    Raises InputError (one line, naming the inputs via `names`: depth, reference, image, region) on bad input.
    """
    names = {"depth": "depth", "reference": "reference", "image": "image", "region": "region", **(names or {})}
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
    if not (depth > 0).any():
        raise InputError(f"{names['depth']}: no pixel has depth (all 0); pass a depth map with the face")
    if exists(image) != exists(region):
        raise ValueError("region mode needs both image and region")

    # 1. Full mode: a full-frame depth of the reference, or a square depth in the crop frame
    if not exists(image):
        if not exists(reference):
            raise ValueError("full mode needs a reference image")
        h, w = reference.shape[:2]
        if depth.shape == (h, w):
            ref = crop_face(reference, size=CROP_SIZE, margin=margin, name=names["reference"])
            return Depth2ImgInput(depth=crop_depth(depth, ref.box, CROP_SIZE), reference=ref, margin=margin)
        if is_face_crop(depth, margin):
            ref = crop_face(reference, size=depth.shape[0], margin=margin, name=names["reference"])
            return Depth2ImgInput(depth=depth, reference=ref, margin=margin)
        # a full frame of another photo: crop around its face, framed as the model's crops
        ys, xs = np.nonzero(depth > 0)
        if xs.size > 0.9 * depth.size:
            raise InputError(f"{names['depth']}: a {depth.shape[1]}x{depth.shape[0]} depth map not framed as a face crop, with depth "
                             f"everywhere, so its face cannot be located; pass a face-crop depth, a depth of the reference's size "
                             f"({w}x{h}, full frame), or a depth with 0 outside the face (as estimate-depth writes)")
        if min(xs.max() - xs.min(), ys.max() - ys.min()) < 8:
            raise InputError(f"{names['depth']}: its depth covers {xs.max() - xs.min() + 1}x{ys.max() - ys.min() + 1} pixels, "
                             "too few for a face; pass a face-crop depth or a full-frame depth of a face")
        ref = crop_face(reference, size=CROP_SIZE, margin=margin, name=names["reference"])
        return Depth2ImgInput(depth=crop_depth(depth, face_box_of_depth(depth, margin), CROP_SIZE), reference=ref,
                              margin=margin, cropped_from_full_frame=True)

    # 2. Region mode: depth and region in the image's frame, cropped with its face box
    h, w = image.shape[:2]
    for key, arr in (("depth", depth), ("region", region)):
        if arr.shape[:2] != (h, w):
            raise InputError(f"{names[key]}: {key} is {arr.shape[1]}x{arr.shape[0]} but {names['image']} is {w}x{h}; they must match")
    region_full = np.asarray(region).astype(bool)
    if not region_full.any():
        raise InputError(f"{names['region']}: the region mask is empty; mark the pixels to regenerate (nonzero)")
    crop = crop_face(image, size=CROP_SIZE, margin=margin, name=names["image"])
    region_crop = crop_box_to(region_full.astype(np.float32), crop.box, CROP_SIZE, interpolation="linear", border="constant") > 0
    if not region_crop.any():
        raise InputError(f"{names['region']}: the region lies outside the face crop of {names['image']}; mark pixels on the face")
    ref = crop if not exists(reference) else crop_face(reference, size=CROP_SIZE, margin=margin, name=names["reference"])
    return Depth2ImgInput(depth=crop_depth(depth, crop.box, CROP_SIZE), reference=ref, image=crop, full=image,
                          region=region_crop, region_full=region_full, margin=margin)


def check_inputs(model: RGBDFaceModel, inp: Depth2ImgInput, steps: int, guidance: float) -> None:
    model.require_stage(2, "depth-to-image")
    if model.masked is None:
        raise ValueError("the model lists stage 2 but has no masked denoiser (masked_unet/)")
    if not isinstance(inp, Depth2ImgInput):
        raise ValueError("inp must be a Depth2ImgInput (see prepare_depth2img)")
    if abs(inp.margin - model.meta.crop_margin) > 1e-9:
        raise ValueError(f"inp was cropped with margin {inp.margin:g} but the model was trained on margin {model.meta.crop_margin:g}; "
                         "prepare it with prepare_depth2img(..., margin=model.meta.crop_margin)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = off), got {guidance}")


@torch.no_grad()
def run_depth2img(
    model: RGBDFaceModel,
    inp: Depth2ImgInput,
    steps: int = 25,
    seed: int = 0,
    scheduler: str = "ddim",
    guidance: float = 1.0,
    progress: bool = False,
) -> Depth2ImgResult:
    """Generate the image that follows `inp.depth` with the identity of `inp.reference`."""
    # 1. Check inputs
    check_inputs(model, inp, steps, guidance)
    device, dtype = model.device, model.dtype
    size = model.meta.image_size
    generator = torch.Generator().manual_seed(seed)
    region_mode = exists(inp.image)

    with model.autocast():
        # 2. Encode the reference, the depth and, when editing, the image (VAE)
        z_ref = model.masked_codec.encode_rgb(image_to_tensor(inp.reference.image, size, device).to(dtype))  # [1, C, s, s]
        d, valid = _resize_depth(inp.depth, size)  # [1, 1, S, S]
        z_depth = model.masked_codec.encode_depth(d.to(device, dtype), valid.to(device))  # [1, C, s, s]
        known = Known(depth=z_depth, m_rgb=1.0, m_depth=0.0, clean=model.meta.known_clean)
        if region_mode:
            z_image = model.masked_codec.encode_rgb(image_to_tensor(inp.image.image, size, device).to(dtype))  # [1, C, s, s]
            r = torch.from_numpy(inp.region.astype(np.float32))[None, None]
            r = F.interpolate(r, size=(size, size), mode="area")  # [1, 1, S, S]: any coverage counts
            m_rgb = (F.adaptive_max_pool2d(r, z_image.shape[-2:]) > 0).to(device, dtype)  # [1, 1, s, s]
            known = Known(rgb=z_image, depth=z_depth, m_rgb=m_rgb, m_depth=0.0, clean=model.meta.known_clean)

        # 3. Generate RGB with depth known (ReferenceNet once, masked UNet per step)
        z_rgb, _ = sample_latents(model.masked, model.sampling_scheduler(scheduler, masked=True), z_ref, model.context.to(dtype),
                                  steps=steps, guidance=guidance, generator=generator, known=known, progress=progress)

        # 4. Decode (VAE) and bring to the crop's size
        rgb = model.masked_codec.decode_rgb(z_rgb).float()  # [1, 3, S, S]
    if inp.size != size:
        rgb = F.interpolate(rgb, size=(inp.size, inp.size), mode="bicubic", align_corners=False, antialias=True)
    crop = tensor_to_images(rgb)[0]  # [S', S', 3] uint8
    if not region_mode:
        return Depth2ImgResult(image=crop, crop=crop)

    # 5. Region mode: paste back into the full frame, inside the region only
    inside = paste_back(np.ones(crop.shape[:2], np.float32), inp.image, fill=0.0) >= 1.0 - 1e-4  # [H, W]
    changed = inp.region_full & inside
    pasted = paste_back(crop, inp.image)  # [H, W, 3]
    out = np.where(changed[..., None], pasted, inp.full).astype(np.uint8)
    return Depth2ImgResult(image=out, crop=crop, changed=changed)


def depth2img(
    model: RGBDFaceModel,
    depth: np.ndarray,
    reference: np.ndarray | None = None,
    image: np.ndarray | None = None,
    region: np.ndarray | None = None,
    **kwargs,
) -> Depth2ImgResult:
    """Depth → image (full mode: depth + reference) or a depth-driven edit (region mode: depth + image + region).

    kwargs: steps, seed, scheduler, guidance, progress (see `run_depth2img`).
    """
    return run_depth2img(model, prepare_depth2img(depth, reference, image, region, margin=model.meta.crop_margin), **kwargs)
