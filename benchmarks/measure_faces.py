"""The faces a model makes, measured on an identity held out of its training (`rgbdface score`).

    python benchmarks/measure_faces.py --heldout WORK/heldout [--model DIR] [--label NAME] [--speech FILE]

WORK/heldout is `prep-depth examples/obama.jpg -o WORK/heldout --size 64 --studio-views 32
--talking-clips 1` (examples/train_bundled_model.sh makes it). obama.jpg is never seen in
training. What runs, with seed 0 (--seeds K: talk and generate with each of seeds 0..K-1, rows the mean
over them and, for face found, colour and mouth sync, each seed's value in brackets):

- talk: obama.jpg speaking 4 s of real speech (espeak-ng's voice reading a fixed sentence,
  or --speech FILE), 25 steps (--steps, --scheduler); face found, flicker, colour dE, mouth-audio r, depth face;
- the codec floor: the reference's own face crop through the latent codec and back (and through
  depth2img's codec when the model has its own): what a perfect copy in latent space would score;
- reconstruction: talk from the first frame of obama's rendered talking clip with its audio;
  PSNR / SSIM / depth RMSE (mm) against the rendered frames;
- generate: 4 samples (25 steps) of each of three references made from obama.jpg: the colour
  photo, the same photo in black and white, and a cold-tinted copy; face found, colour dE,
  chroma, and the reference sensitivity of colour against black and white (same seed), at
  guidance 1 and 3;
- depth2img: 4 samples (25 steps, seeds 0-3) from obama's own estimated depth with obama.jpg as
  the reference; face found and colour dE;
- depth: `eval --data WORK/heldout` (studio renders with exact depth, and the photo's
  mesh-fit depth), RMSE in mm and the nearest-point offset (% of the image width: how far
  the nearest point lies from the nose tip), against the mean face of the training data when
  --train-data is given.

The table goes to stdout and to benchmarks/results/faces_LABEL.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "The quick brown fox jumps over the lazy dog. Portraits that move with depth, one word at a time."


def rgbdface(*args: str, capture: bool = False) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "rgbdface.cli.app", *map(str, args)], env=env, text=True,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit(f"rgbdface {' '.join(map(str, args))} failed: {r.stderr.strip().splitlines()[-1:]}")
    return r.stdout


def made(out: Path, *args: str) -> None:
    """rgbdface ARGS, unless `out` exists already (a --keep folder of an earlier run keeps its outputs)."""
    if not Path(out).exists():
        rgbdface(*args)


def score(*args: str) -> dict:
    return json.loads(rgbdface("score", *args, "--format", "json", "-q", capture=True))


def clip_ceiling(clip: Path) -> dict:
    """The talk measures of the rendered clip itself (its mouth follows its audio by construction)."""
    from rgbdface.data.io import load_depth, load_image
    from rgbdface.data.audio import read_wav
    from rgbdface.metrics.generated import score_frames

    rgb = np.stack([load_image(p) for p in sorted(clip.glob("rgb_*"))])
    depth = [load_depth(p) for p in sorted(clip.glob("depth_*"))]
    return score_frames(rgb, rgb[0], depth=depth, wave=read_wav(clip / "audio.wav")[0], detect=False).to_dict()


def speech(tmp: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    raw = tmp / "speech_raw.wav"
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: pass --speech FILE (4 s or more of speech)")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), SENTENCE], check=True)
    return raw


def references(tmp: Path) -> dict[str, Path]:
    from rgbdface.data.io import load_image, save_image

    img = load_image(ROOT / "examples" / "obama.jpg").astype(np.float32)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    cold = img * np.array([0.75, 0.9, 1.2], np.float32)
    out = {"colour": ROOT / "examples" / "obama.jpg", "bw": tmp / "obama_bw.png", "cold": tmp / "obama_cold.png"}
    save_image(out["bw"], np.repeat(grey[..., None], 3, -1).clip(0, 255).round().astype(np.uint8))
    save_image(out["cold"], cold.clip(0, 255).round().astype(np.uint8))
    return out


def mean_and_seeds(values: list[float], digits: int) -> str:
    """The mean of per-seed values, and with more than one seed each seed's value in brackets."""
    text = f"{np.mean(values):.{digits}f}"
    return text + (" (" + " / ".join(f"{v:.{digits}f}" for v in values) + ")" if len(values) > 1 else "")


def codec_floor(reference: Path, model_dir: str | None) -> list[tuple[str, str]]:
    """The reference's own face crop through the latent codec and back, at the model's size: the colour dE and
    face found of a result that copied the reference perfectly in latent space. For talk and generate (vae/) and,
    when the model has its own, for depth -> image (masked_vae/)."""
    import torch

    from rgbdface.data.face import crop_face
    from rgbdface.data.io import load_image
    from rgbdface.metrics.generated import colour_distance, face_found
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.common import image_to_tensor, tensor_to_images

    m = load_model(model_dir) if model_dir else load_model()
    crop = crop_face(load_image(reference), size=256, margin=m.meta.crop_margin, name=str(reference)).image  # as `score` crops it
    rows = []
    for name, codec in (("codec", m.codec), ("depth2img's codec", m.masked_codec if m.masked_codec is not m.codec else None)):
        if codec is None:
            continue
        with torch.no_grad():
            back = tensor_to_images(codec.decode_rgb(codec.encode_rgb(image_to_tensor(crop, m.meta.image_size))))[0]
        rows.append((f"the reference through the {name} alone: colour dE / face found", f"{colour_distance(crop, back):.1f} / {face_found(back):d}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heldout", required=True, type=Path)
    ap.add_argument("--model", default=None)
    ap.add_argument("--label", default="bundled")
    ap.add_argument("--speech", default=None)
    ap.add_argument("--train-data", default=None, type=Path)
    ap.add_argument("--keep", default=None, type=Path, help="keep the generated files here")
    ap.add_argument("--noise", default="video", choices=["video", "frame"], help="talk's initial noise (talk --noise)")
    ap.add_argument("--strength", default="1", help="talk --strength")
    ap.add_argument("--guidance", default=None, help="talk --guidance (guidance on the reference) [default: the model's own]")
    ap.add_argument("--scheduler", default="ddim", help="talk and generate --scheduler")
    ap.add_argument("--steps", default="25", help="talk and generate --steps")
    ap.add_argument("--seeds", type=int, default=1, help="talk and generate with seeds 0..K-1; rows give the mean (and per seed)")
    ap.add_argument("--talk-only", action="store_true", help="talk and the re-created clip only (no generate, no depth)")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    model = ["--model", a.model] if a.model else []
    sampling = ["--scheduler", a.scheduler, "--steps", a.steps]
    talk_guidance = ["--guidance", a.guidance] if a.guidance is not None else []
    tmp = Path(tempfile.mkdtemp(prefix="measure-faces-")) if a.keep is None else a.keep
    tmp.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []

    # 1. talk on real speech
    wav = speech(tmp, a.speech)
    obama = ROOT / "examples" / "obama.jpg"
    talks = []
    for seed in range(a.seeds):  # a talk video's frames are near-identical: each seed is one draw of the face
        at = "" if seed == 0 else f"_s{seed}"
        made(tmp / f"talk_rgb{at}", "talk", obama, wav, "-o", tmp / f"talk{at}.mp4", "--max-seconds", "4", "--rgb-frames", tmp / f"talk_rgb{at}",
             "--depth-frames", tmp / f"talk_depth{at}", "--noise", a.noise, "--strength", a.strength, *talk_guidance,
             "--seed", seed, "-q", *sampling, *model)
        talks.append(score(tmp / f"talk_rgb{at}", "-r", obama, "--kind", "talk", "--audio", wav, "--depth-frames", tmp / f"talk_depth{at}"))
    t = {k: [x[k] for x in talks] for k in ("face_found", "flicker", "colour_de", "mouth_audio_r", "depth_face")}
    rows += [("talk: face found (goal >= 0.95)", mean_and_seeds(t["face_found"], 2)),
             ("talk: flicker, 0..255 (goal <= 6)", f"{np.mean(t['flicker']):.1f}"),
             ("talk: colour dE (goal <= 8)", mean_and_seeds(t["colour_de"], 1)),
             ("talk: mouth-audio r (goal >= 0.3)", mean_and_seeds(t["mouth_audio_r"], 2)),
             ("talk: depth face share", f"{np.mean(t['depth_face']):.2f}")]

    rows += codec_floor(obama, a.model)

    # 2. reconstruction of the held-out rendered talking clip from its first frame and its audio
    clip = next(p for p in sorted(a.heldout.iterdir()) if p.is_dir() and "-talk" in p.name)
    from rgbdface.data.io import load_image, save_image
    from rgbdface.metrics.generated import resize

    first = tmp / "clip_first_frame.png"  # upscaled: the detector needs a face of 32 px or more
    save_image(first, resize(load_image(sorted(clip.glob("rgb_*"))[0]), 256, "cubic"))
    made(tmp / "rec_rgb", "talk", first, clip / "audio.wav", "-o", tmp / "rec.mp4", "--rgb-frames", tmp / "rec_rgb", "--depth-frames",
         tmp / "rec_depth", "--noise", a.noise, "--strength", a.strength, *talk_guidance, "-q", *sampling, *model)
    r = score(tmp / "rec_rgb", "-r", first, "--audio", clip / "audio.wav", "--depth-frames", tmp / "rec_depth", "--gt", clip)
    truth = clip_ceiling(clip)
    unit = json.loads((a.heldout / "dataset.json").read_text()).get("depth_unit_mm", 0.1)
    rows += [("reconstruction: PSNR (dB)", f"{r['psnr']:.1f}"), ("reconstruction: SSIM", f"{r['ssim']:.3f}"),
             ("reconstruction: depth RMSE (mm)", f"{r['depth_rmse'] * unit:.1f}"),
             ("reconstruction: mouth-audio r (the rendered clip itself: %.2f)" % truth["mouth_audio_r"], f"{r['mouth_audio_r']:.2f}")]

    if not a.talk_only:
        # 3. generate from three references; sensitivity colour vs black-and-white at the same seed
        refs = references(tmp)
        gen = {}
        for g in ("1", "3"):
            for name, ref in refs.items():
                if g == "3" and name == "cold":
                    continue
                for seed in range(a.seeds if g == "1" else 1):
                    out = tmp / (f"gen_g{g}_{name}" + ("" if seed == 0 else f"_s{seed}"))
                    made(out, "generate", ref, "-o", out, "-n", "4", "--guidance", g, "--seed", seed, "-q", *sampling, *model)
                    gen[g, name, seed] = out
        seeds = range(a.seeds)
        s = {(name, seed): score(gen["1", name, seed], "-r", refs[name]) for name in refs for seed in seeds}
        sens1 = np.mean([score(gen["1", "colour", seed], "-r", refs["colour"], "--against", gen["1", "bw", seed], "--no-detect")["reference_sensitivity"]
                         for seed in seeds])
        sens3 = score(gen["3", "colour", 0], "-r", refs["colour"], "--against", gen["3", "bw", 0], "--no-detect")["reference_sensitivity"]
        found = [np.mean([s[n, seed]["face_found"] for n in refs]) for seed in seeds]
        de = np.mean([s[key]["colour_de"] for key in s])
        mean_of = (lambda name, k: np.mean([s[name, seed][k] for seed in seeds]))
        rows += [(f"generate: face found, {12 * a.seeds} samples (goal >= 0.9)", mean_and_seeds(found, 2)),
                 ("generate: colour dE (goal <= 8)", f"{de:.1f}"),
                 ("generate: chroma of b/w samples (reference: %.1f)" % s["bw", 0]["reference_chroma"], f"{mean_of('bw', 'chroma'):.1f}"),
                 ("generate: chroma of colour samples (reference: %.1f)" % s["colour", 0]["reference_chroma"], f"{mean_of('colour', 'chroma'):.1f}"),
                 ("generate: reference sensitivity colour vs b/w, 0..255", f"{sens1:.1f}"),
                 ("generate: the same at --guidance 3", f"{sens3:.1f}")]

        # 4. depth -> image: obama's own estimated depth, obama as the reference, four seeds
        depth = tmp / "obama_depth.png"
        made(depth, "estimate-depth", obama, "-o", depth, "-q", *model)
        d2i = tmp / "depth2img"
        for seed in range(4):
            made(d2i / f"obama_{seed}.png", "depth2img", depth, "-r", obama, "-o", d2i / f"obama_{seed}.png", "--seed", seed, "-q", *sampling, *model)
        d = score(d2i, "-r", obama)
        rows += [("depth2img: face found, 4 samples of the photo's own depth", f"{d['face_found']:.2f}"),
                 ("depth2img: colour dE", f"{d['colour_de']:.1f}")]

        # 5. depth on the held-out identity: studio renders (exact) and the photo's mesh-fit depth
        for source in ("studio", "wild"):
            methods = ["--method", f"model:{a.model}" if a.model else "model", "--method", "plane"]
            if a.train_data:
                methods += ["--method", f"mean-face:{a.train_data}"]
            e = json.loads(rgbdface("eval", "--data", a.heldout, "--source", source, *methods, "--units", "mm", "--format", "json", "-q",
                                    capture=True))
            for label, rep in e.items():
                what = f"depth ({source}, {rep['n_images']} images)"
                rows += [(f"{what}: RMSE of {label.split(':')[0]} (mm)", f"{rep['rmse']:.1f}"),
                         (f"{what}: nearest-point offset of {label.split(':')[0]} (% of width)", f"{rep['nearest_offset']:.1f}")]

    lines = [f"# Faces of model `{a.label}` on a held-out identity (obama.jpg)", "",
             f"`python benchmarks/measure_faces.py --heldout WORK/heldout --label {a.label}"
             + (f" --model {a.model}" if a.model else "") + (" --train-data WORK/data" if a.train_data else "")
             + (f" --noise {a.noise}" if a.noise != "video" else "") + (f" --strength {a.strength}" if float(a.strength) != 1 else "")
             + (f" --guidance {a.guidance}" if a.guidance is not None else "")
             + (f" --scheduler {a.scheduler}" if a.scheduler != "ddim" else "") + (f" --steps {a.steps}" if int(a.steps) != 25 else "")
             + (f" --seeds {a.seeds}" if a.seeds != 1 else "")
             + (" --talk-only" if a.talk_only else "") + "`", "",
             "| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / f"faces_{a.label}.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
