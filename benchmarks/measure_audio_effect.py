"""How much the speech moves a talking head: the same talk with the speech, with a quieter copy of it, and with silence.

    python benchmarks/measure_audio_effect.py --model A [--model NAME=B ...] [--label NAME]

`--model` is a model folder or `bundled`, optionally named for the table (`NAME=FOLDER`). For each, `talk_frames` runs on obama.jpg (held out of the bundled
model's training) three times with the same seed and steps: with 2.4 s of synthetic speech (data/speech.py), with the
same speech at a tenth of its level, and with silence, unguided unless --guidance is given. Reported, over the
lower half of the face crop (mouth and jaw): the mean absolute difference of the depth frames (relative depth,
[-1, 1]) and of the RGB frames (0..255) between speech and silence, next to how much consecutive frames of the
speech run differ. A model whose audio path
works opens the mouth with the speech, so speech and silence must differ well beyond the frame-to-frame change;
the quieter copy measures how much the level alone matters (level-normalised mel features make it nearly nothing).
With `--clip DIR` (a synthetic talking clip of prep-depth --talking-clips), the same change between consecutive
depth frames of that clip, normalised as the model's depth is, gives the scale of a jaw that moves with speech.
The table goes to stdout and to benchmarks/results/audio_effect_LABEL.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 2.4


def lower_face_change(a: list, b: list, key: str) -> float:
    """Mean |a - b| of the frames' `key` array over the lower half of the crop."""
    diffs = []
    for x, y in zip(a, b):
        u, v = getattr(x, key).astype(np.float64), getattr(y, key).astype(np.float64)
        h = u.shape[0]
        diffs.append(np.abs(u[h // 2:] - v[h // 2:]).mean())
    return float(np.mean(diffs))


def clip_change(clip: Path) -> float:
    """Mean lower-half change between consecutive depth frames of a rendered clip, in the model's relative depth."""
    from types import SimpleNamespace

    import torch

    from rgbdface.data.io import load_depth
    from rgbdface.models.codec import normalize_depth

    frames = [SimpleNamespace(depth=normalize_depth(torch.from_numpy(load_depth(p))[None, None]).numpy()[0, 0])
              for p in sorted(clip.glob("depth_*"))]
    if len(frames) < 2:
        raise SystemExit(f"--clip {clip}: no depth frames (depth_*.png); pass a talking-clip folder of a prep-depth dataset")
    return lower_face_change(frames[1:], frames[:-1], "depth")


def measure(model_arg: str, steps: int, guidance: float = 1.0) -> dict[str, float]:
    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image
    from rgbdface.data.speech import synthesize
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.talk import talk_frames

    model = load_model(None if model_arg == "bundled" else model_arg)
    ref = crop_face(load_image(ROOT / "examples" / "obama.jpg"), size=256, margin=model.meta.crop_margin).image
    wave = synthesize(SECONDS, np.random.default_rng(0)).audio
    runs = {name: list(talk_frames(model, ref, audio, steps=steps, seed=0, guidance=guidance))
            for name, audio in (("speech", wave), ("quiet", wave * 0.1), ("silence", np.zeros_like(wave)))}
    speech = runs["speech"]
    return {
        "depth: speech vs silence": lower_face_change(speech, runs["silence"], "depth"),
        "depth: speech vs speech at 1/10 level": lower_face_change(speech, runs["quiet"], "depth"),
        "depth: consecutive frames of the speech run": lower_face_change(speech[1:], speech[:-1], "depth"),
        "RGB: speech vs silence": lower_face_change(speech, runs["silence"], "rgb"),
        "RGB: consecutive frames of the speech run": lower_face_change(speech[1:], speech[:-1], "rgb"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="a model folder or 'bundled', or NAME=FOLDER (repeatable)")
    ap.add_argument("--label", default="models")
    ap.add_argument("--steps", type=int, default=10, help="talk's denoising steps")
    ap.add_argument("--guidance", type=float, default=1.0, help="talk's guidance on the reference (1: unguided, as the recorded results)")
    ap.add_argument("--clip", type=Path, default=None, help="a rendered talking clip, for the scale of a moving jaw")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    models = dict(m.split("=", 1) if "=" in m else (m, m) for m in a.model)
    results = {name: measure(path, a.steps, a.guidance) for name, path in models.items()}
    rows = list(next(iter(results.values())))
    lines = ["# How much the speech moves the talking head (obama.jpg, lower half of the face crop)", "",
             "`python benchmarks/measure_audio_effect.py " + " ".join(f"--model {m}" if m == "bundled" else f"--model {m}=MODEL" for m in models)
             + (f" --label {a.label}" if a.label != "models" else "") + (f" --steps {a.steps}" if a.steps != 10 else "")
             + (f" --guidance {a.guidance:g}" if a.guidance != 1 else "") + (f" --clip {a.clip}" if a.clip is not None else "") + "`", "",
             "| mean \\|change\\| | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    lines += [f"| {r} | " + " | ".join(f"{results[m][r]:.4f}" if r.startswith("depth") else f"{results[m][r]:.2f}" for m in models) + " |"
              for r in rows]
    if a.clip is not None:
        lines += ["", f"A rendered talking clip's own consecutive depth frames (`--clip`, {a.clip.name}) change by {clip_change(a.clip):.4f} there."]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / f"audio_effect_{a.label}.md").write_text(text)


if __name__ == "__main__":
    main()
