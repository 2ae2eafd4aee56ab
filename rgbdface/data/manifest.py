"""The dataset format written by `prep-depth` and read by the training commands.

A dataset is a folder::

    DATASET/
      dataset.json              format name, version, conventions and the crop: {"crop": {"size": S, "margin": M}}
      manifest.jsonl            all rows, one JSON object per line (a snapshot, rebuilt after each run)
      rows/<key>.jsonl          the rows of one input; written last, so its presence means the input is done
      <key>/rgb_000000.jpg      the square RGB crop (uint8; .jpg or .png)
      <key>/depth_000000.png    16-bit depth: camera-space Z in 0.1 mm steps, 0 = no depth
      <key>/mask_000000.png     8-bit face-skin mask: 255 = skin (eyes and mouth opening left out)
      <key>/landmarks_000000.npy  [478, 3] float32 face-mesh landmarks in crop pixels (MediaPipe z)
      <key>/audio.wav           videos: 16 kHz mono PCM, exactly 640 samples (1/25 s) per frame
      <key>/wav2vec.npy         with --wav2vec: [frames, layers * dim] float16 per-frame features
      <key>-studio/...          studio-like renders of <key> (same file names)
      <key>-talk<k>/...         synthetic talking clip k of <key>: 25 fps frames and audio.wav, like a video's clip

Each row (JSON object) has these fields; paths are relative to DATASET:

| field | type | meaning |
|---|---|---|
| id | str | unique sample id, `<clip>/<frame>` |
| rgb, depth, mask, landmarks | str | the sample's files |
| identity | str | who is pictured; references are drawn from other samples of the same identity |
| clip | str | the sequence the frame belongs to (an image is a clip of one frame) |
| frame | int | frame index in the clip, at `fps` (gaps where no face was fitted) |
| source | str | `wild` (fitted face-mesh depth) or `studio` (exact depth of a re-rendered mesh) |
| audio | str or null | the clip's 16 kHz mono WAV (frame f covers samples [640 f, 640 (f + 1))) |
| audio_features | str or null | the clip's per-frame wav2vec 2.0 features (.npy) |
| fps | float or null | frame rate of the clip (videos) |
| size | int | crop side S in pixels |
| camera | object | assumed pinhole intrinsics in crop pixels: fx, fy, cx, cy, width, height |
| depth_unit_mm | float | millimetres per depth-PNG step (0.1) |
| input | str | the input file the sample came from |
| box | [4 floats] or null | crop box x0, y0, x1, y1 in the input's pixels (null for studio renders) |
| view | object or null | studio renders: yaw, pitch, roll and jaw (degrees), blink (0-1), light direction, background colours |

Every crop of a dataset has the same framing, recorded in dataset.json as `crop`: side S
in pixels and margin M (face-box sizes on each side, see `rgbdface.data.face.square_box`).
A model trained on the dataset takes M as its `crop_margin`. Datasets from before the
record have the default margin (`DEFAULT_MARGIN`). prep-depth refuses to add crops of
another size or margin to a dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgbdface.data.face import DEFAULT_MARGIN
from rgbdface.utils import InputError, UsageError, atomic_path

FORMAT = "rgbdface-dataset"
VERSION = 1
MANIFEST = "manifest.jsonl"
ROWS_DIR = "rows"
INFO = "dataset.json"
SOURCES = ("wild", "studio")


@dataclass
class Sample:
    """One row of a dataset manifest, with its file paths resolved against the dataset folder."""

    id: str
    rgb: Path
    depth: Path
    mask: Path
    landmarks: Path | None
    identity: str
    clip: str
    frame: int
    source: str  # "wild" | "studio"
    audio: Path | None = None
    audio_features: Path | None = None
    fps: float | None = None
    size: int = 512
    camera: dict = field(default_factory=dict)
    depth_unit_mm: float = 0.1
    input: str = ""
    box: tuple[float, float, float, float] | None = None
    view: dict | None = None


PATH_FIELDS = ("rgb", "depth", "mask", "landmarks", "audio", "audio_features")


def row_to_sample(row: dict[str, Any], root: Path) -> Sample:
    values = dict(row)
    for k in PATH_FIELDS:
        if values.get(k) is not None:
            values[k] = root / values[k]
    if values.get("box") is not None:
        values["box"] = tuple(values["box"])
    known = set(Sample.__dataclass_fields__)
    return Sample(**{k: v for k, v in values.items() if k in known})


@dataclass
class CropSpec:
    """How a dataset's crops were framed: side in pixels and margin in face-box sizes on each side."""

    size: int | None  # None: a dataset from before the record, with no rows yet
    margin: float = DEFAULT_MARGIN


def dataset_info(crop: CropSpec) -> dict:
    from rgbdface.data import camera

    return {
        "format": FORMAT,
        "version": VERSION,
        "depth": "camera-space Z along the optical axis, uint16 PNG, 0 = no depth",
        "depth_unit_mm": camera.DEPTH_UNIT_MM,
        "camera": f"pinhole, principal point at the crop centre, focal length {camera.FOCAL_FACTOR} x crop size",
        "scale": f"eye-centre distance {camera.EYE_DISTANCE_MM} mm",
        "mask": "face skin, 255 = skin; eyes and mouth opening excluded",
        "crop": {"size": crop.size, "margin": crop.margin},
    }


def read_crop(root: Path) -> CropSpec:
    """The crop framing of the dataset at `root` (older datasets: the default margin, the size of their rows)."""
    root = Path(root)
    path = root / INFO
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{root}: not an rgbdface dataset (no {INFO}); make one with `rgbdface prep-depth -o {root} ...`") from None
    except json.JSONDecodeError:
        raise InputError(f"{path}: not valid JSON; restore it or prepare the dataset again") from None
    crop = info.get("crop")
    if crop is not None:
        return CropSpec(size=int(crop["size"]), margin=float(crop["margin"]))
    # An older dataset: the default margin, and the size of its first row (if it has rows yet)
    first = next(iter(sorted((root / ROWS_DIR).glob("*.jsonl"))), root / MANIFEST)
    line = next((x for x in first.read_text().splitlines() if x.strip()), None) if first.is_file() else None
    size = json.loads(line).get("size") if line is not None else None
    return CropSpec(size=int(size) if size is not None else None, margin=DEFAULT_MARGIN)


def write_info(root: Path, crop: CropSpec) -> None:
    """Write dataset.json for a new dataset; for an existing one, refuse crops of another framing.

    Mixing framings would silently corrupt the dataset: a model trained on it could not
    know how to crop. An older dataset's info gains the crop record here.
    """
    path = Path(root) / INFO
    info = dataset_info(crop)
    if path.exists():
        have = read_crop(root)
        if have.size not in (None, crop.size) or abs(have.margin - crop.margin) > 1e-9:
            got = (f"--size {have.size} " if have.size is not None else "") + f"--margin {have.margin:g}"
            raise UsageError(f"-o {root}: the dataset's crops were made with {got}, not --size {crop.size} --margin {crop.margin:g}; "
                             "pass the same values or prepare into another folder")
        info = json.loads(path.read_text())
        if "crop" in info:
            return
        info["crop"] = {"size": crop.size, "margin": crop.margin}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")


def rows_path(root: Path, key: str) -> Path:
    return Path(root) / ROWS_DIR / f"{key}.jsonl"


def write_rows(root: Path, key: str, rows: list[dict]) -> Path:
    """Write one input's rows atomically: this marks the input as finished."""
    path = rows_path(root, key)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{path}:{n}: not valid JSON; re-run prep-depth for that input") from None
    return rows


def collect_rows(root: Path) -> list[dict]:
    """All rows of a dataset from its per-input files, sorted by clip and frame."""
    files = sorted((Path(root) / ROWS_DIR).glob("*.jsonl"))
    rows = [r for f in files for r in _read_jsonl(f)]
    return sorted(rows, key=lambda r: (r["clip"], r["frame"]))


def write_manifest(root: Path) -> Path:
    """Rebuild manifest.jsonl from the per-input rows (safe to run from any shard at any time)."""
    path = Path(root) / MANIFEST
    rows = collect_rows(root)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return path


def load_manifest(dataset_dir: str | Path) -> list[Sample]:
    """Read a dataset's samples (from its per-input rows, so unfinished shards never hide finished ones)."""
    root = Path(dataset_dir)
    info = root / INFO
    if not info.exists():
        raise InputError(f"{root}: not an rgbdface dataset (no {INFO}); make one with `rgbdface prep-depth -o {root} ...`")
    meta = json.loads(info.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{root}: dataset format {meta.get('format')} v{meta.get('version')} is not {FORMAT} v{VERSION}; re-run prep-depth")
    rows = collect_rows(root) if (root / ROWS_DIR).is_dir() else _read_jsonl(root / MANIFEST)
    return [row_to_sample(r, root) for r in rows]


def read_samples(dataset: str | Path) -> list:
    """The dataset's rows (rgbdface.data.manifest.Sample), or a one-line error if it is missing or empty."""
    root = Path(dataset)
    if not root.exists():
        raise InputError(f"{root}: no such dataset folder; make one with `rgbdface prep-depth`")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; pass a dataset folder made by `rgbdface prep-depth`")
    samples = load_manifest(root)
    if not samples:
        raise InputError(f"{root}: the dataset has no samples; run `rgbdface prep-depth` on some portraits or videos first")
    return samples
