"""estimate-depth against diffusers' MarigoldDepthPipeline: seconds per image and per denoising step.

Both run the same architecture with random weights (timing only), on the same face
crop, with the same DDIM schedule and number of steps, in the same process:

- **rgbdface**: the stage-2 masked UNet (4C + 2 in, 2C out) with mutual self-attention
  on ReferenceNet features; the ReferenceNet runs once per image, the VAE encodes the
  crop once and decodes the depth once (`rgbdface.pipelines.depth.estimate_depths`).
- **Marigold**: `diffusers.MarigoldDepthPipeline` with a UNet of the same size and
  layout (8 in: image latent + depth latent, 4 out) and a VAE of the same size.

Per step = the mean wall time of one denoiser call (forward hooks around the UNet);
per image = the whole pipeline call (face detection and the face mesh are not in it;
they are measured once on their own). Architectures: `tiny` (the bundled
configuration, 64 px crops) and `sd15` (Stable Diffusion 1.5: 512 px, 860 M-parameter
UNet). On a CPU keep sd15 to 1–2 steps.

    python benchmarks/bench_estimate_depth.py [--arch tiny sd15] [--steps 10] [--sd15-steps 2] [--repeats 3] [--device auto]

Prints a Markdown table on stdout and writes it to benchmarks/results/estimate_depth.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
GOAL = 1.15  # rgbdface's time per step at most this multiple of Marigold's


# ----------------------------------------------------------------------------- architectures


def sd15_unet_config(in_channels: int = 4, out_channels: int = 4) -> dict:
    """Stable Diffusion 1.5's UNet layout (what `init-model --base` widens)."""
    return dict(
        sample_size=64, in_channels=in_channels, out_channels=out_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
        cross_attention_dim=768, norm_num_groups=32,
    )


def sd15_vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, scaling_factor=0.18215,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
    )


@dataclass
class Arch:
    name: str
    image_size: int
    unet: dict  # the base (RGB) UNet config
    vae: dict
    context: tuple[int, int]  # (tokens, width) of the cached empty-prompt embedding


def arch(name: str) -> Arch:
    from rgbdface.models.unet import tiny_unet_config, tiny_vae_config

    if name == "tiny":
        return Arch("tiny", 64, tiny_unet_config(sample_size=16), tiny_vae_config(64), (8, 32))
    if name == "sd15":
        return Arch("sd15", 512, sd15_unet_config(), sd15_vae_config(), (77, 768))
    raise SystemExit(f"unknown --arch {name}; use tiny or sd15")


def build_rgbdface(a: Arch):
    """The stage-2 model of this architecture, random weights; the joint UNet (unused here) is dropped to save memory."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from rgbdface.models.builder import SD_SCHEDULE
    from rgbdface.models.model import ModelMeta, RGBDFaceModel
    from rgbdface.models.unet import expand_unet_for_joint

    torch.manual_seed(0)
    base = UNet2DConditionModel.from_config(a.unet)
    reference = copy.deepcopy(base)
    joint = expand_unet_for_joint(base)
    del base
    context = torch.randn(1, *a.context)
    meta = ModelMeta(stages=[0, 1, 2], image_size=a.image_size, latent_channels=4, base=a.name)
    model = RGBDFaceModel(AutoencoderKL.from_config(a.vae), joint, reference, context, meta, SD_SCHEDULE)
    model.add_masked_denoiser()
    model.joint.unet = torch.nn.Linear(1, 1)  # depth estimation never runs the joint UNet; keeps `model.dtype` working
    return model.eval()


def build_marigold(a: Arch):
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel

    from rgbdface.models.builder import SD_SCHEDULE

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config({**a.unet, "in_channels": 8, "out_channels": 4})
    vae = AutoencoderKL.from_config(a.vae)
    scheduler = DDIMScheduler.from_config(SD_SCHEDULE)
    pipe = MarigoldDepthPipeline(unet=unet, vae=vae, scheduler=scheduler, text_encoder=None, tokenizer=None,
                                 prediction_type="depth", default_processing_resolution=a.image_size)
    pipe.empty_text_embedding = torch.randn(1, *a.context)  # what the text encoder would give once
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- timing


@dataclass
class CallTimer:
    """Wall time of every forward call of a module (CUDA-synchronised)."""

    times: list[float] = field(default_factory=list)
    _start: float = 0.0

    def attach(self, module: torch.nn.Module) -> None:
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _pre(self, *_):
        self._sync()
        self._start = time.perf_counter()

    def _post(self, *_):
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def face_input():
    from rgbdface.data.io import load_image
    from rgbdface.pipelines.depth import prepare_depth_input

    image = load_image(ROOT / "examples" / "astronaut.jpg")
    t = time.perf_counter()
    x = prepare_depth_input(image, "astronaut")
    return x, time.perf_counter() - t


def bench_arch(a: Arch, steps: int, repeats: int, device: str, x, warmup_steps: int) -> list[dict]:
    from PIL import Image

    from rgbdface.pipelines.depth import estimate_depths

    ours = build_rgbdface(a).to(device)
    marigold = build_marigold(a).to(device)
    step_ours, ref_ours, step_mg = CallTimer(), CallTimer(), CallTimer()
    step_ours.attach(ours.masked.unet)
    ref_ours.attach(ours.masked.reference_unet)
    step_mg.attach(marigold.unet)
    crop = Image.fromarray(x.crop.image)

    def run_ours(n=steps):
        estimate_depths(ours, [x], steps=n, seed=0)

    def run_marigold(n=steps):
        with torch.no_grad(), ours.autocast():  # fp16 autocast on CUDA, nothing on the CPU: the same for both
            marigold(crop, num_inference_steps=n, ensemble_size=1, processing_resolution=a.image_size,
                     generator=torch.Generator().manual_seed(0), output_type="np")

    # a warm-up each (first calls allocate and touch every weight), then alternate so both see the same machine load
    run_ours(warmup_steps), run_marigold(warmup_steps)
    for t in (step_ours, ref_ours, step_mg):
        t.times.clear()
    image_ours, image_mg = [], []
    for _ in range(repeats):
        image_ours.append(timed(run_ours))
        image_mg.append(timed(run_marigold))
    rows = []
    for name, per_image, per_step, extra in (
        ("rgbdface estimate-depth", image_ours, step_ours.times, statistics.median(ref_ours.times)),
        ("diffusers Marigold", image_mg, step_mg.times, None),
    ):
        rows.append(dict(arch=a.name, pipeline=name, image_size=a.image_size, steps=steps,
                         params=sum(p.numel() for p in (ours.masked.unet if name.startswith("rgbdface") else marigold.unet).parameters()),
                         per_image=statistics.median(per_image), per_step=statistics.median(per_step), min_step=min(per_step),
                         reference=extra, n_steps=len(per_step), runs=repeats))
    rows[0]["ratio"] = rows[0]["per_step"] / rows[1]["per_step"]
    rows[0]["min_ratio"] = rows[0]["min_step"] / rows[1]["min_step"]
    rows[0]["image_ratio"] = rows[0]["per_image"] / rows[1]["per_image"]
    del ours, marigold
    return rows


def bench_unet_calls(a: Arch, calls: int, device: str) -> dict:
    """One denoiser call each, alternating, on fixed inputs: the per-step cost without the pipelines around it."""
    ours, marigold = build_rgbdface(a).to(device), build_marigold(a).to(device)
    s = a.image_size // ours.codec.downsample
    g = torch.Generator().manual_seed(0)
    z_ref = torch.randn(1, 4, s, s, generator=g).to(device)
    x_ours, x_mg = torch.randn(1, 18, s, s, generator=g).to(device), torch.randn(1, 8, s, s, generator=g).to(device)
    t, ctx = torch.tensor([500], device=device), ours.context
    times = {"reference": [], "ours": [], "marigold": []}
    with torch.no_grad(), ours.autocast():
        ours.masked.set_reference(z_ref, ctx), ours.masked(x_ours, t, ctx), marigold.unet(x_mg, t, encoder_hidden_states=ctx)
        for _ in range(calls):
            times["reference"].append(timed(lambda: ours.masked.set_reference(z_ref, ctx)))
            times["ours"].append(timed(lambda: ours.masked(x_ours, t, ctx)))
            times["marigold"].append(timed(lambda: marigold.unet(x_mg, t, encoder_hidden_states=ctx)))
    out = {k: (statistics.median(v), min(v)) for k, v in times.items()}
    return dict(arch=a.name, calls=calls, **out)


# ----------------------------------------------------------------------------- report


def table(rows: list[dict], device_name: str, face_s: float, unet_rows: list[dict]) -> str:
    lines = [
        f"# estimate-depth vs diffusers Marigold (random weights, same architecture, same steps, one process)",
        "",
        f"Device: {device_name}; machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Medians over `runs` timed runs per pipeline, "
        "the two pipelines alternating, after one warm-up run each (1 step for sd15 on a CPU).",
        "",
        "| arch | crop | steps | runs | pipeline | UNet params | s / image | s / step | fastest step | ReferenceNet (once) | step ratio (median, fastest) | image ratio |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = f"{r['reference']:.3f} s" if r["reference"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x, {r['min_ratio']:.2f}x" if "ratio" in r else "1.00x"
        iratio = f"{r['image_ratio']:.2f}x" if "image_ratio" in r else "1.00x"
        lines.append(f"| {r['arch']} | {r['image_size']} px | {r['steps']} | {r['runs']} | {r['pipeline']} | {r['params'] / 1e6:.1f} M | "
                     f"{r['per_image']:.3f} | {r['per_step']:.4f} | {r['min_step']:.4f} | {ref} | {ratio} | {iratio} |")
    lines += [
        "",
        f"Face detection + face mesh + face-region raster (estimate-depth only, not in the table): {face_s:.3f} s per image.",
        f"Goal: rgbdface's time per step ≤ {GOAL:.2f}× Marigold's (the ReferenceNet runs once per image; "
        "its features are reused at every step). The verdict uses the denoiser calls alone below; the pipeline "
        "figures above include whatever else the machine was doing.",
    ]
    lines += [
        "",
        "Denoiser calls alone (fixed inputs, alternating; median / fastest seconds per call):",
        "",
        "| arch | calls | ReferenceNet | rgbdface masked UNet + reference attention | Marigold UNet | step ratio (median, fastest) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for u in unet_rows:
        (rm, rf), (om, of), (mm, mf) = u["reference"], u["ours"], u["marigold"]
        lines.append(f"| {u['arch']} | {u['calls']} | {rm:.4f} / {rf:.4f} | {om:.4f} / {of:.4f} | {mm:.4f} / {mf:.4f} | "
                     f"{om / mm:.2f}x, {of / mf:.2f}x |")
    lines.append("")
    for u in unet_rows:
        ratio = u["ours"][0] / u["marigold"][0]
        verdict = "met" if ratio <= GOAL else "not met"
        lines.append(f"- {u['arch']}: {ratio:.2f}× Marigold's time per denoiser call (median of the calls alone) — {verdict}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    ap.add_argument("--steps", type=int, default=10, help="denoising steps for tiny (and sd15 on CUDA)")
    ap.add_argument("--sd15-steps", type=int, default=None, help="denoising steps for sd15 (default: 2 on CPU, --steps on CUDA)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per pipeline")
    ap.add_argument("--sd15-repeats", type=int, default=2, help="timed runs per pipeline for sd15 on a CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "estimate_depth.md")
    args = ap.parse_args()

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device_name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    x, face_s = face_input()
    rows, unet_rows = [], []
    for name in args.arch:
        a = arch(name)
        cpu_sd = name == "sd15" and device == "cpu"
        steps = args.sd15_steps or (2 if cpu_sd else args.steps) if name == "sd15" else args.steps
        repeats = args.sd15_repeats if cpu_sd else args.repeats
        rows += bench_arch(a, steps, repeats, device, x, warmup_steps=1 if cpu_sd else steps)
        unet_rows.append(bench_unet_calls(a, 4 if cpu_sd else 50, device))
        print(f"{name}: done", flush=True)
    text = table(rows, device_name, face_s, unet_rows)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
