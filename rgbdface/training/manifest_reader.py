"""A reader of the `prep-depth` dataset format, for checkouts where rgbdface.data.manifest is absent.

Format (see rgbdface/data/manifest.py): DATASET/dataset.json names the format and version;
rows live in rows/*.jsonl (one per input) or in manifest.jsonl; one JSON object per sample
with paths relative to DATASET.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rgbdface.utils import InputError

FORMAT, VERSION = "rgbdface-dataset", 1
PATH_FIELDS = ("rgb", "depth", "mask", "landmarks", "audio", "audio_features")


@dataclass
class Sample:
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
    box: tuple | None = None
    view: dict | None = None


def _rows(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"{path}:{n}: not valid JSON; re-run prep-depth for that input") from None
    return out


def load_manifest(dataset_dir: str | Path) -> list[Sample]:
    root = Path(dataset_dir)
    info = root / "dataset.json"
    if not info.exists():
        raise InputError(f"{root}: not an rgbdface dataset (no dataset.json); make one with `rgbdface prep-depth -o {root} ...`")
    meta = json.loads(info.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{root}: dataset format {meta.get('format')} v{meta.get('version')} is not {FORMAT} v{VERSION}; re-run prep-depth")
    if (root / "rows").is_dir():
        rows = [r for f in sorted((root / "rows").glob("*.jsonl")) for r in _rows(f)]
    elif (root / "manifest.jsonl").is_file():
        rows = _rows(root / "manifest.jsonl")
    else:
        rows = []
    rows.sort(key=lambda r: (r["clip"], r["frame"]))
    known = set(Sample.__dataclass_fields__)
    out = []
    for r in rows:
        v = {k: x for k, x in r.items() if k in known}
        for k in PATH_FIELDS:
            if v.get(k) is not None:
                v[k] = root / v[k]
        out.append(Sample(**{"landmarks": None, **v}))
    return out
