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
import os
import stat
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
# Fields every row must have, with their JSON types (the rest may be absent or null)
REQUIRED = {"id": str, "rgb": str, "depth": str, "mask": str, "identity": str, "clip": str, "frame": int, "source": str}
OPTIONAL = {"landmarks": str, "audio": str, "audio_features": str, "fps": (int, float), "size": int, "camera": dict,
            "depth_unit_mm": (int, float), "input": str, "box": list, "view": dict}


class _Inside:
    """Where a manifest path really points (symlinks resolved), cached per folder: it must stay inside the dataset."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self.dirs: dict[str, str] = {}

    def __call__(self, rel: str) -> bool:
        p = Path(rel)
        if not rel or p.is_absolute() or p.drive or p.name in ("", ".", ".."):
            return False
        parent = str(p.parent)
        real_parent = self.dirs.get(parent)
        if real_parent is None:
            real_parent = self.dirs[parent] = os.path.realpath(os.path.join(self.root, parent))
        full = os.path.join(real_parent, p.name)
        if os.path.islink(full):
            full = os.path.realpath(full)
        return full.startswith(self.root + os.sep)


def _type_name(tp) -> str:
    return " or ".join(t.__name__ for t in tp) if isinstance(tp, tuple) else tp.__name__


def check_row(row: Any, where: str, inside: _Inside) -> None:
    """A row's fields and paths: one line naming the row and what is wrong with it.

    Every path must be relative to the dataset folder and resolve inside it (symlinks
    too), so a manifest can never make a command read files from elsewhere.
    """
    if not isinstance(row, dict):
        raise InputError(f"{where}: a row must be a JSON object, got {type(row).__name__}; re-run prep-depth for that input")
    name = f"{where} (row {row['id']!r})" if isinstance(row.get("id"), str) else where
    missing = [k for k in REQUIRED if row.get(k) is None]
    if missing:
        raise InputError(f"{name}: no {', '.join(missing)}; every row needs {', '.join(REQUIRED)} (re-run prep-depth for that input)")
    for k, tp in {**REQUIRED, **OPTIONAL}.items():
        v = row.get(k)
        if v is not None and (not isinstance(v, tp) or isinstance(v, bool)):
            raise InputError(f"{name}: {k} must be a {_type_name(tp)}, got {v!r}; re-run prep-depth for that input")
    for k in PATH_FIELDS:
        v = row.get(k)
        if v is not None and not inside(v):
            raise InputError(f"{name}: {k} {v!r} is outside the dataset folder; manifest paths must be relative to it "
                             "and stay inside it (no absolute paths, '..' or links out)")


def row_to_sample(row: dict[str, Any], root: Path) -> Sample:
    values = dict(row)
    for k in PATH_FIELDS:
        if values.get(k) is not None:
            values[k] = root / values[k]
    if values.get("box") is not None:
        values["box"] = tuple(values["box"])
    known = set(Sample.__dataclass_fields__)
    return Sample(**{k: v for k, v in values.items() if k in known})


def check_files(samples: list[Sample], fields=("rgb", "depth"), root: Path | None = None) -> None:
    """A fast pass over every file of `fields` the samples name (field names, or a function sample → names;
    null fields are skipped): each must be a non-empty regular file. One line names the first missing
    ones and the count.

    Run before any work, so that a run does not find a missing file after hours.
    """
    bad: list[str] = []
    seen: set[Path] = set()
    for s in samples:
        for k in (fields(s) if callable(fields) else fields):
            path = getattr(s, k)
            if path is None or path in seen:  # a clip's audio is named by each of its rows
                continue
            seen.add(path)
            try:
                st = os.stat(path)
                ok = stat.S_ISREG(st.st_mode) and st.st_size > 0
            except OSError:
                ok = False
            if not ok:
                bad.append(f"{path.relative_to(root) if root is not None and path.is_relative_to(root) else path} ({k} of {s.id})")
    if bad:
        where = f"{root}: " if root is not None else ""
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise InputError(f"{where}{len(bad)} file{'s' if len(bad) > 1 else ''} named by the manifest "
                         f"{'are' if len(bad) > 1 else 'is'} missing or empty: {shown}; "
                         "re-run prep-depth on those inputs (--overwrite) or remove their rows")


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


def _read_located(path: Path) -> list[tuple[str, Any]]:
    """(where, value) for each non-blank line of a JSONL file; `where` is `path:line`."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (JSON lines); re-run prep-depth") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError:
                raise InputError(f"{path}:{n}: not valid JSON; re-run prep-depth for that input") from None
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in _read_located(path)]


def rows_of(root: Path, key: str) -> list[dict]:
    """The rows of one finished input (its rows file)."""
    return _read_jsonl(rows_path(root, key))


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


def read_dataset_info(root: Path) -> dict:
    """dataset.json of the dataset at `root`, checked to be this format and version (one-line errors)."""
    root = Path(root)
    path = root / INFO
    if not path.is_file():
        raise InputError(f"{root}: not an rgbdface dataset (no {INFO}); make one with `rgbdface prep-depth -o {root} ...`")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not text"
        raise InputError(f"{path}: not valid JSON ({why}); restore it or prepare the dataset again") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object; restore it or prepare the dataset again")
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{root}: dataset format {meta.get('format')} v{meta.get('version')} is not {FORMAT} v{VERSION}; re-run prep-depth")
    return meta


def load_manifest(dataset_dir: str | Path) -> list[Sample]:
    """Read a dataset's samples (from its per-input rows, so unfinished shards never hide finished ones).

    Every row is checked (its fields, and that its paths stay inside the dataset folder) before
    any is returned; a bad row is a one-line InputError naming its file and line.
    """
    root = Path(dataset_dir)
    read_dataset_info(root)
    rows_dir = root / ROWS_DIR
    files = sorted(rows_dir.glob("*.jsonl")) if rows_dir.is_dir() else [root / MANIFEST]
    if not rows_dir.is_dir() and not files[0].is_file():
        raise InputError(f"{root}: the dataset has no {MANIFEST} and no {ROWS_DIR}/; prepare it again with `rgbdface prep-depth`")
    located = [item for f in files for item in _read_located(f)]
    inside = _Inside(root)
    for where, row in located:
        check_row(row, where, inside)
    rows = [row for _, row in located]
    if rows_dir.is_dir():
        rows.sort(key=lambda r: (r["clip"], r["frame"]))
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
