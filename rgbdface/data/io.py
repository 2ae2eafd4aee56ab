"""Reading and writing images and depth maps, atomically and with one-line errors.

Conventions (see README, "File formats"):
- RGB images are uint8 arrays [H, W, 3].
- Depth files are 16-bit PNG with 0 = no depth. Ground truth from `prep-depth`
  stores camera-space Z in 0.1 mm steps (see data/camera.py); predictions store relative depth
  (larger = farther) mapped to 1..65535.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rgbdface.data.png import encode_png  # (also part of this module's API)
from rgbdface.utils import InputError, UsageError, check_input_file, write_bytes_atomic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


MAX_PIXELS_ENV = "RGBDFACE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # 50 megapixels, e.g. 8660 x 5773; larger images are refused before they are decoded


def max_pixels() -> int:
    """The largest image (width x height) any command reads: RGBDFACE_MAX_PIXELS, else 50 megapixels."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None:
        return DEFAULT_MAX_PIXELS
    try:
        n = int(float(value))
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"{MAX_PIXELS_ENV}={value!r}: expected a whole number of pixels, e.g. {DEFAULT_MAX_PIXELS}")
    return n


def check_pixels(width: int, height: int, name: str) -> None:
    """Refuse an image larger than `max_pixels()` (before it is decoded)."""
    limit = max_pixels()
    if width * height > limit:
        raise InputError(f"{name}: {width} x {height} is {width * height / 1e6:.1f} megapixels, over the limit of "
                         f"{limit / 1e6:g}; downscale it first (or raise {MAX_PIXELS_ENV})")


def _open_first_frame(path: Path):
    """The file's first frame as a Pillow image, its size checked before any pixel is decoded (None: Pillow cannot read it)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies instead
            im = Image.open(path)
    except Image.DecompressionBombError:
        check_pixels(*_header_size(path), str(path))
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    check_pixels(*im.size, str(path))
    return im


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _read_pixels(path: Path, what: str) -> np.ndarray:
    """The first frame of an image file as an array, never decoding more than the size limit allows.

    CMYK (and YCCK) JPEGs are converted to RGB by Pillow (through their ICC profile when they embed one);
    every other image is decoded by imageio, first frame only."""
    import warnings

    import imageio.v3 as iio

    im = _open_first_frame(path)
    try:
        if im is not None and im.mode == "CMYK":
            return _cmyk_to_rgb(im)
        with warnings.catch_warnings():  # plugins that do not apply warn as imageio tries them
            warnings.simplefilter("ignore")
            if im is None:  # a format Pillow does not know: ask imageio for the size first
                try:
                    props = iio.improps(path, index=0)
                except Exception as e:
                    raise InputError(f"{path}: not a readable image ({type(e).__name__}); pass {what}") from e
                if len(props.shape) >= 2:
                    check_pixels(props.shape[1], props.shape[0], str(path))
            try:
                return iio.imread(path, index=0)
            except Exception as e:  # imageio raises many types for unreadable files
                raise InputError(f"{path}: not a readable image ({type(e).__name__}); pass {what}") from e
    finally:
        if im is not None:
            im.close()


def _cmyk_to_rgb(im) -> np.ndarray:
    """RGB of a CMYK image: through its embedded ICC profile when Pillow's colour management can, else Pillow's conversion."""
    import io

    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return np.asarray(ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB"))
        except Exception:  # a broken profile or no littlecms: the plain conversion below
            pass
    return np.asarray(im.convert("RGB"))


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3]; grayscale, RGBA, CMYK and 16-bit inputs are converted.

    Only the first frame of an animated or multi-page file is decoded; files larger than
    `max_pixels()` and non-regular files (pipes, devices) are refused with a one-line InputError."""
    path = check_input_file(path, "image file")
    return to_rgb_uint8(_read_pixels(path, "a JPEG or PNG file"), name=str(path))


def to_rgb_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Convert any 2-D or 3-D image array (gray, gray+alpha, RGB, RGBA; 8 or 16 bit; float) to uint8 RGB."""
    img = np.asarray(img)
    if img.ndim == 4:  # animated GIF etc.: first frame
        img = img[0]
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[0] < 2 or img.shape[1] < 2:
        raise InputError(f"{name}: not a 2-D image (shape {tuple(img.shape)})")
    c = img.shape[2]
    if c in (2, 4):  # drop alpha (composited over black would change the face; keep colour as is)
        img = img[..., : c - 1]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] != 3:
        raise InputError(f"{name}: not a readable image (it decodes to {c} channels, not gray, RGB or RGBA); pass a JPEG or PNG file")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        return (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    info = np.iinfo(img.dtype)
    return ((img.astype(np.float64) - info.min) / (info.max - info.min) * 255).round().astype(np.uint8)


def save_image(path: str | Path, img: np.ndarray) -> Path:
    """Write uint8 RGB (or gray) atomically; the format follows the suffix."""
    import imageio.v3 as iio

    path = Path(path)
    img = np.ascontiguousarray(img)
    # encoded in memory, then written: a failed write (a full disk) leaves no half-open encoder behind
    if path.suffix.lower() == ".png" and img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] == 3):
        data = encode_png(img)  # the fast encoder (data/png.py)
    else:
        data = iio.imwrite("<bytes>", img, extension=path.suffix.lower())
    return write_bytes_atomic(path, data)


def load_depth(path: str | Path, single_channel: bool = False) -> np.ndarray:
    """Read a depth map as float32 [H, W]: a 16-bit (or 8-bit) PNG, or a .npy of floats. 0 = no depth.

    A colour image gives its first channel, unless `single_channel`: then it is refused (an RGB
    picture, such as a depth preview, is not a depth map)."""
    path = check_input_file(path, "depth map (16-bit PNG or .npy)")
    if path.suffix.lower() == ".npy":
        try:
            d = np.load(path, allow_pickle=False, mmap_mode="r")  # the header first: its size is checked before reading
        except Exception as e:
            raise InputError(f"{path}: not a readable .npy array ({type(e).__name__})") from e
        if d.ndim >= 2:
            check_pixels(d.shape[1], d.shape[0], str(path))
        d = np.array(d)
    else:
        d = _read_pixels(path, "a 16-bit PNG or .npy")
    d = np.asarray(d)
    if d.ndim == 3 and single_channel and d.shape[-1] > 1:
        raise InputError(f"{path}: a {d.shape[-1]}-channel colour image, not a depth map; pass a single-channel 16-bit PNG or .npy "
                         "(estimate-depth's --preview pictures are not depth)")
    if d.ndim == 3:
        d = d[..., 0]
    if d.ndim != 2:
        raise InputError(f"{path}: depth must be a single-channel image, got shape {tuple(d.shape)}")
    if not (np.issubdtype(d.dtype, np.integer) or np.issubdtype(d.dtype, np.floating) or d.dtype == bool):
        raise InputError(f"{path}: holds {d.dtype} values, not depth; pass real numbers")
    d = d.astype(np.float32)
    if not np.isfinite(d).all():
        raise InputError(f"{path}: depth contains NaN or inf values")
    return d


def save_depth16(path: str | Path, depth_u16: np.ndarray, text: dict[str, str] | None = None) -> Path:
    """Write a uint16 depth map [H, W] as a 16-bit PNG, atomically; `text`: PNG text chunks (key → value)."""
    from rgbdface.data.png import add_png_text

    depth_u16 = np.asarray(depth_u16)
    if depth_u16.dtype != np.uint16 or depth_u16.ndim != 2:
        raise ValueError(f"save_depth16 expects uint16 [H, W], got {depth_u16.dtype} {depth_u16.shape}")
    data = encode_png(depth_u16)  # about 5x faster than imageio's encoder, files about 8% larger
    return write_bytes_atomic(path, add_png_text(data, text) if text else data)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 RGB image [H, W, 3] (Pillow's libjpeg, 4:2:0; RGB in, no channel swap)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def save_npy(path: str | Path, arr: np.ndarray) -> Path:
    """Write an array as .npy (no pickles), atomically."""
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return write_bytes_atomic(path, buf.getvalue())


def relative_depth_to_u16(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Map relative depth in [-1, 1] (larger = farther) to uint16 1..65535, with 0 where not valid."""
    d = np.clip((np.asarray(depth, np.float64) + 1.0) / 2.0, 0.0, 1.0)
    out = (1.0 + d * 65534.0).round().astype(np.uint16)
    if valid is not None:
        out[~valid] = 0
    return out


def colorize_depth(depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A uint8 RGB preview of a depth map: near = bright warm, far = dark cool; invalid = black."""
    d = np.asarray(depth, np.float64)
    if valid is None:
        valid = d > 0
    out = np.zeros(d.shape + (3,), np.uint8)
    if valid.any():
        lo, hi = np.percentile(d[valid], [1, 99])
        t = np.clip((d - lo) / max(hi - lo, 1e-8), 0, 1)
        t = 1.0 - t  # near = 1
        # a compact perceptual-ish ramp (dark blue -> teal -> yellow)
        r = np.clip(1.5 * t - 0.3, 0, 1)
        g = np.clip(np.sin(np.pi * t * 0.9), 0, 1)
        b = np.clip(0.6 - 0.6 * t + 0.3 * np.sin(np.pi * t), 0, 1)
        rgb = (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)
        out[valid] = rgb[valid]
    return out
