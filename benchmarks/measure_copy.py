"""How much of its reference a model's stage-1 denoiser carries into what it predicts.

    python benchmarks/measure_copy.py --model A [--model B ...] [--label NAME]

`--model` is a model folder or `bundled`. Each portrait of examples/ (obama.jpg, held out of the bundled
model's training, and the four training portraits) is cropped at the model's framing and size. Its RGB
latent, with a depth latent of zeros, is noised to step t (three noise draws), and the joint denoiser,
given the same image as its reference, predicts the clean latents in one step; the decoded RGB is scored
by PSNR against the crop. The codec's own round trip (encode, decode) is the ceiling no denoiser passes.

Read: at t = 999 (pure noise under a zero-terminal-SNR schedule) the image can only come from the
reference, so PSNR there is how much of a reference the ReferenceNet path copies; a training portrait
far above the held-out one means the model recalls the people it was trained on rather than copying
the one it is shown. The table goes to stdout and to benchmarks/results/copy_LABEL.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PORTRAITS = {"obama (held out)": "obama.jpg", "astronaut": "astronaut.jpg", "biden": "biden.jpg",
             "grace_hopper": "grace_hopper.jpg", "cameraman": "cameraman.png"}
STEPS = (50, 400, 999)
DRAWS = 3


def psnr(a, b) -> float:
    return float(10 * np.log10(4.0 / max(float(((a - b) ** 2).mean()), 1e-12)))  # images in [-1, 1]


def measure(model_arg: str) -> dict[str, dict[str, float]]:
    import torch

    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.common import image_to_tensor

    m = load_model(None if model_arg == "bundled" else model_arg, stages={1})
    S = m.meta.image_size
    ab = m.sampling_scheduler("ddim").alphas_cumprod
    v_pred = m.scheduler_config.get("prediction_type") == "v_prediction"
    out: dict[str, dict[str, float]] = {}
    for name, file in PORTRAITS.items():
        crop = crop_face(load_image(ROOT / "examples" / file), size=4 * S, margin=m.meta.crop_margin).image
        x = image_to_tensor(crop, S)
        row = {}
        with torch.no_grad():
            z = m.codec.encode_rgb(x)
            row["codec round trip"] = psnr(m.codec.decode_rgb(z), x)
            z0 = torch.cat([z, torch.zeros_like(z)], 1)
            m.joint.set_reference(z, m.context)
            try:
                for t in STEPS:
                    a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
                    scores = []
                    for k in range(DRAWS):
                        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(k))
                        zt = a * z0 + s * noise
                        pred = m.joint(zt, torch.tensor([t]), m.context)
                        x0 = a * zt - s * pred if v_pred else (zt - s * pred) / a.clamp(min=1e-4)
                        scores.append(psnr(m.codec.decode_rgb(x0[:, :z.shape[1]]), x))
                    row[f"t = {t}"] = float(np.mean(scores))
            finally:
                m.joint.clear_reference()
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--label", default="models")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    lines = [f"# How much of its reference each stage-1 denoiser copies (`{a.label}`)", "",
             "`python benchmarks/measure_copy.py " + " ".join(f"--model {m}" for m in a.model) + f" --label {a.label}`", "",
             "PSNR (dB) of the one-step prediction, the image as its own reference, mean of 3 noise draws; "
             "the codec's round trip is the ceiling.", ""]
    for model_arg in a.model:
        res = measure(model_arg)
        cols = list(next(iter(res.values())))
        lines += [f"## {model_arg}", "", "| portrait | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        lines += [f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |" for name, row in res.items()]
        train = [row for name, row in res.items() if "held out" not in name]
        held = next(row for name, row in res.items() if "held out" in name)
        gap = np.mean([r["t = 999"] for r in train]) - held["t = 999"]
        lines += ["", f"At t = 999, training portraits minus the held-out one: {gap:+.1f} dB.", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / f"copy_{a.label}.md").write_text(text)


if __name__ == "__main__":
    main()
