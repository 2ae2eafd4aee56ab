"""The GPU check: what a GPU run can show that a CPU cannot, in one command (benchmarks/gpu_check.sh).

On a CUDA GPU (SD-1.5 sizes, random weights, 16-bit, under 8 minutes) it records:

1. estimate-depth against diffusers' MarigoldDepthPipeline with a UNet of the same size, fp16,
   in the same process: seconds per image and per denoiser call (goal: per call <= 1.15x Marigold's).
2. talk at 512 x 512: seconds per frame at 25 and 40 steps (and 40 with guidance 3.5, as Hallo
   samples; goal: below Hallo's 1.63 s/frame), and peak memory for 10 s and 40 s of audio (one
   denoising step: memory does not depend on the steps; goal: flat in the audio's length).
3. One training step per stage at 512 x 512 with the sd15 recipe's settings (per-GPU batch 4 for
   stages 1-2, one clip of 14 + 4 frames for stage 3; fp16, gradient checkpointing, frozen parts in
   16 bits, 8-bit AdamW where bitsandbytes is installed): peak memory against 24 GB.
4. fp16 training resumed from a checkpoint: the gradient scaler's state comes back and two steps +
   two resumed steps give the weights of four straight steps.
5. Autocast dtypes in a training step: frozen weights 16-bit, trained weights float32, matmuls 16-bit.

On a CPU the same code runs at the tiny size (bf16 where fp16 is asked, no scaler) in about a
minute, so the suite can run it (tests/test_gpu_check.py). One results file: --out (default
benchmarks/results/gpu_check.md on CUDA, gpu_check_cpu.md on a CPU), rewritten after each section so a run
cut short keeps what finished; --only 1,2,4 runs some sections. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
GIB = 2**30
HALLO_S_PER_FRAME = 1.63  # Hallo at 512 x 512, 40 steps (its paper)
MARIGOLD_GOAL = 1.15
BUDGET_GIB = 24


class Check:
    """Timing and peak memory on the chosen device (CUDA: the allocator's statistics; CPU: TensorMemory)."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.half = torch.float16 if self.cuda else torch.bfloat16  # the mixed-precision dtype of training
        self.infer = torch.float16 if self.cuda else torch.float32  # inference weights (bf16 on a CPU is slow, and tested apart)
        self.size = "sd15" if self.cuda else "tiny"
        self.sections: list[str] = []
        self.failed: list[str] = []

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t, out

    def peak(self, fn) -> tuple[int, object]:
        """Peak bytes allocated above what was there before, while fn() runs."""
        if self.cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base, out
        from rgbdface.pipelines.memory import TensorMemory

        with TensorMemory() as memory:
            out = fn()
        return memory.peak, out

    def section(self, title: str, fn) -> None:
        print(f"gpu_check: {title} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            lines = fn()
        except Exception as e:  # a failed check is recorded and the others still run
            self.failed.append(title)
            lines = [f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "",
                     "```", traceback.format_exc(limit=4).strip(), "```"]
        self.sections += [f"## {title}", "", *lines, "", f"({time.perf_counter() - t:.0f} s)", ""]
        if self.cuda:
            torch.cuda.empty_cache()

    def verdict(self, ok: bool, what: str) -> str:
        if not ok:
            self.failed.append(what)
        return f"- {'met' if ok else 'NOT met'}: {what}"


# ----------------------------------------------------------------------------- 1. estimate-depth vs Marigold
def check_depth(c: Check) -> list[str]:
    from PIL import Image

    from bench_estimate_depth import CallTimer, arch, build_marigold, build_rgbdface
    from rgbdface.data.io import load_image
    from rgbdface.pipelines.depth import estimate_depths, prepare_depth_input

    a = arch(c.size)
    steps, runs = (10, 3) if c.cuda else (3, 2)
    ours = build_rgbdface(a).to(c.device, c.infer)
    marigold = build_marigold(a).to(c.device, c.infer)
    marigold.empty_text_embedding = marigold.empty_text_embedding.to(c.device, c.infer)
    x = prepare_depth_input(load_image(ROOT / "examples" / "astronaut.jpg"), "astronaut")
    crop = Image.fromarray(x.crop.image)
    t_ours, t_mg = CallTimer(), CallTimer()
    t_ours.attach(ours.masked.unet)
    t_mg.attach(marigold.unet)

    def run_ours():
        return estimate_depths(ours, [x], steps=steps, seed=0)

    def run_mg():
        with torch.no_grad():
            return marigold(crop, num_inference_steps=steps, ensemble_size=1, processing_resolution=a.image_size,
                            generator=torch.Generator().manual_seed(0), output_type="np")

    run_ours(), run_mg()  # warm-up
    t_ours.times.clear(), t_mg.times.clear()
    images = {"ours": [], "mg": []}
    for _ in range(runs):
        images["ours"].append(c.timed(run_ours)[0])
        images["mg"].append(c.timed(run_mg)[0])
    per_call = {"ours": float(np.median(t_ours.times)), "mg": float(np.median(t_mg.times))}
    per_image = {k: float(np.median(v)) for k, v in images.items()}
    ratio = per_call["ours"] / per_call["mg"]
    return [
        f"{a.image_size} px, {steps} DDIM steps, {c.infer}, UNet {sum(p.numel() for p in marigold.unet.parameters()) / 1e6:.0f} M "
        "parameters each (Marigold: 8 in, 4 out; ours: the masked UNet, 18 in, 8 out, with mutual self-attention on the "
        f"ReferenceNet's features, which run once per image). Medians of {runs} alternating runs after a warm-up.",
        "",
        "| pipeline | s / image | s / denoiser call |", "|---|---|---|",
        f"| rgbdface estimate-depth | {per_image['ours']:.3f} | {per_call['ours']:.4f} |",
        f"| diffusers MarigoldDepthPipeline | {per_image['mg']:.3f} | {per_call['mg']:.4f} |",
        "",
        f"Per denoiser call: {ratio:.2f}x Marigold's.",
        c.verdict(ratio <= MARIGOLD_GOAL, f"estimate-depth per denoiser call <= {MARIGOLD_GOAL}x Marigold's ({ratio:.2f}x)")
        if c.cuda else f"- (CPU, tiny: the goal of <= {MARIGOLD_GOAL}x is judged on a GPU only)",
    ]


# ----------------------------------------------------------------------------- 2. talk
def talk_model(c: Check):
    from bench_talk import build

    m = build(c.size, 14)
    return m.to(c.device, c.infer)


def check_talk(c: Check) -> list[str]:
    from motion_helpers import speech_like
    from rgbdface.pipelines.talk import talk_frames

    m = talk_model(c)
    crop = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(ROOT / "examples" / "astronaut.jpg").convert("RGB"))
    crop = crop[:300, 100:400]
    clip = speech_like(14 / 25)  # one clip of 14 frames

    def frames(wave, steps, guidance=1.0):
        return sum(1 for _ in talk_frames(m, crop, wave, steps=steps, guidance=guidance))

    frames(clip, 1)  # warm-up
    rows, speed = [], {}
    settings = ((25, 1.0), (40, 1.0), (40, 3.5)) if c.cuda else ((2, 1.0), (3, 1.0), (3, 3.5))  # (a CPU: fewer steps)
    for steps, guidance in settings:
        seconds, n = c.timed(lambda: frames(clip, steps, guidance))
        speed[(steps, guidance)] = seconds / n
        rows.append(f"| {steps} | {guidance:g} | {n} | {seconds / n:.3f} |")
    short, long = (10.0, 40.0) if c.cuda else (1.0, 3.0)
    mem = {}
    for seconds in (short, long):
        mem[seconds], _ = c.peak(lambda: frames(speech_like(seconds), 1))
    growth = (mem[long] - mem[short]) / max(mem[short], 1)
    out = [
        f"{m.meta.image_size} px, random weights, the mel audio encoder, {c.infer}; seconds per frame over one clip of 14 "
        "frames (the first clip's cost: reference, motion frames, denoising, decoding).",
        "",
        "| steps | guidance | frames | s / frame |", "|---|---|---|---|", *rows,
        "",
        f"Peak memory above the loaded model, one denoising step: {short:g} s of audio {mem[short] / 2**20:.1f} MiB, "
        f"{long:g} s {mem[long] / 2**20:.1f} MiB ({growth:+.1%}).",
        c.verdict(growth < 0.05, f"talk memory flat in the audio's length ({growth:+.1%} from {short:g} s to {long:g} s)"),
    ]
    if c.cuda:
        s40 = speed[settings[-1]]
        out.append(c.verdict(s40 < HALLO_S_PER_FRAME, f"talk below Hallo's {HALLO_S_PER_FRAME} s/frame at 40 steps with "
                                                      f"guidance ({s40:.3f} s/frame on this GPU)"))
    return out


# ----------------------------------------------------------------------------- 3.-5. training
def training_objective(c: Check, stage: int):
    from bench_memory import WAV2VEC2_BASE_DIM
    from bench_train import build as build_sd
    from rgbdface.training.config import resolve_config
    from rgbdface.training.motion_setup import add_motion
    from rgbdface.training.objectives import make_objective

    recipe, image = ("sd15", 512) if c.cuda else ("tiny", 64)
    cfg = resolve_config(stage, recipe, ["data.cache_latents=false"])
    with torch.device(c.device if c.cuda else "cpu"):  # built where it runs: random init on a GPU takes seconds
        model = build_sd(c.size, image)
    model.meta.stages = [0, 1]
    if stage == 3:
        add_motion(model, cfg, audio_dim=WAV2VEC2_BASE_DIM if c.cuda else None)
    obj = make_objective(model, cfg)
    obj.to(c.device)
    obj.cast_frozen(c.half)
    obj.enable_gradient_checkpointing()
    return model, obj, cfg


def make_optimizer(params, cfg):
    import importlib.util

    from rgbdface.training.loop import make_optimizer as make

    cfg.optim.optimizer = "adamw8bit" if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available() else "adamw"
    return make(params, cfg.optim), cfg.optim.optimizer


def check_training(c: Check) -> list[str]:
    from bench_memory import WAV2VEC2_BASE_DIM
    from bench_train import synthetic_batch

    rows, notes = [], []
    for stage in (1, 2, 3):
        model, obj, cfg = training_objective(c, stage)
        params = list(obj.trainable().values())
        opt, name = make_optimizer(params, cfg)
        scaler = torch.amp.GradScaler(c.device.type, enabled=c.cuda)
        b = cfg.optim.batch_size
        frames = cfg.motion.frames if stage == 3 else 0
        batch = synthetic_batch(stage, b, model.meta.image_size, model.meta.latent_channels, model.latent_size, frames,
                                cfg.motion.motion_frames if stage == 3 else 0,
                                model.motion.config.audio_dim if stage == 3 else 80, cfg.motion.audio_window if stage == 3 else 5)
        dtypes = {}

        def step():
            with torch.autocast(c.device.type, dtype=c.half):
                conv = (model.masked if stage == 2 else model.joint).unet.conv_in  # the denoiser's first convolution
                h = conv.register_forward_hook(lambda mod, args, out: dtypes.setdefault("matmul", out.dtype) and None)
                try:
                    loss, _ = obj(batch)
                    scaler.scale(loss).backward()
                finally:
                    h.remove()
            obj.finish()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            return loss

        seconds, (peak, loss) = c.timed(lambda: c.peak(step))
        total = (torch.cuda.max_memory_allocated() if c.cuda else peak) / GIB
        frozen = {p.dtype for m in [model.codec, *obj.frozen_modules()] for p in m.parameters()}
        trained = {p.dtype for p in params}
        rows.append(f"| {stage} | {b}{' clip' if stage == 3 else ''} | {name} | {sum(p.numel() for p in params) / 1e6:.0f} M | "
                    f"{seconds:.1f} | {total:.2f} | {float(loss.detach()):.3f} |")
        ok = frozen == {c.half} and trained == {torch.float32} and dtypes.get("matmul") == c.half
        notes.append(c.verdict(ok, f"stage {stage} autocast dtypes: frozen {sorted(map(str, frozen))}, trained "
                                   f"{sorted(map(str, trained))}, convolution output {dtypes.get('matmul')}"))
        if c.cuda:
            notes.append(c.verdict(total <= BUDGET_GIB, f"stage {stage} step at 512 px within {BUDGET_GIB} GB ({total:.1f} GiB)"))
        del model, obj, opt, params
        if c.cuda:
            torch.cuda.empty_cache()
    what = "peak GiB allocated (the whole process)" if c.cuda else "peak GiB torch allocated in the step"
    return [
        f"The sd15 recipe's settings ({'512' if c.cuda else '64'} px, {c.half} autocast, gradient checkpointing, frozen parts "
        "in 16 bits, the GradScaler on CUDA); random weights, a synthetic batch; the first step (optimizer state allocated).",
        "",
        f"| stage | batch | optimizer | trained | s / step | {what} | loss |", "|---|---|---|---|---|---|---|",
        *rows, "", *notes,
    ]


def check_resume(c: Check) -> list[str]:
    from typer.testing import CliRunner

    from rgbdface.cli.app import app
    from rgbdface.models.builder import build_tiny
    from train_helpers import make_dataset

    runner = CliRunner()
    precision = "fp16" if c.cuda else "bf16"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp / "data", identities=2, frames=3, size=32)
        build_tiny(32, seed=0).save_pretrained(tmp / "tiny")
        common = ["train", str(data), "-m", str(tmp / "tiny"), "--set", f"precision.mixed_precision={precision}",
                  "--set", "optim.lr=1e-3", "--set", "optim.batch_size=2", "--set", "log.sample_every=0",
                  "--set", "log.checkpoint_every=0", "--set", "log.log_every=1", "-q"] + ([] if c.cuda else ["--cpu"])
        _reset_accelerate()
        r1 = runner.invoke(app, [*common, "-o", str(tmp / "a"), "--max-steps", "4"])
        _reset_accelerate()
        r2 = runner.invoke(app, [*common, "-o", str(tmp / "b"), "--max-steps", "2"])
        _reset_accelerate()
        r3 = runner.invoke(app, [*common, "-o", str(tmp / "b"), "--max-steps", "4", "--resume"])
        _reset_accelerate()
        for r in (r1, r2, r3):
            if r.exit_code != 0:
                raise RuntimeError(r.output.strip().splitlines()[-1] if r.output.strip() else f"exit {r.exit_code}")
        from safetensors.torch import load_file

        wa = load_file(str(tmp / "a" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
        wb = load_file(str(tmp / "b" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
        same = all(torch.equal(wa[k], wb[k]) for k in wa)
        scaler = tmp / "b" / "checkpoints" / "step-00000002" / "scaler.json"
        lines = [f"Tiny model, {precision} mixed precision: 4 steps, against 2 steps + `--resume` to 4."]
        if c.cuda:
            saved = json.loads(scaler.read_text()) if scaler.is_file() else None
            lines.append(c.verdict(saved is not None, f"the checkpoint keeps the gradient scaler ({saved})"))
        else:
            lines.append("- (CPU: bf16 needs no gradient scaler; its checkpointing is tested in tests/test_training.py)")
        lines.append(c.verdict(same, "resumed weights equal the uninterrupted run's"))
        return lines


def _reset_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


SECTIONS = {
    "1": ("1. estimate-depth against Marigold", check_depth),
    "2": ("2. talk: seconds per frame and memory", check_talk),
    "3": ("3. one training step per stage", check_training),
    "4": ("4. fp16 resume with the gradient scaler", check_resume),
}


def report(c: Check, t0: float, only: list[str], done: bool) -> str:
    name = torch.cuda.get_device_name(c.device) if c.cuda else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    flags = ("" if c.cuda else " --device cpu") + ("" if only == list(SECTIONS) else f" --only {','.join(only)}")
    status = ("Checks failed: " + ", ".join(c.failed) + "." if c.failed else "Every check passed.") if done else \
        "In progress: the sections below are finished, the others were still running."
    head = [
        f"# GPU check ({'SD-1.5 sizes, 512 px' if c.cuda else 'CPU mode: the tiny size, not GPU figures'})", "",
        f"Device: {name}; torch {torch.__version__}; {time.perf_counter() - t0:.0f} s in all. "
        f"Reproduce: `bash benchmarks/gpu_check.sh{flags}`.", "",
        status, "",
    ]
    return "\n".join(head + c.sections)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (CUDA when present)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default: benchmarks/results/gpu_check[_cpu].md)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="the sections to run, e.g. 1,2,4 (default: all)")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if not only or any(s not in SECTIONS for s in only):
        ap.error(f"--only takes section numbers from {','.join(SECTIONS)}, got {args.only!r}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sys.path.insert(0, str(ROOT / "tests"))  # the tiny dataset and speech writers the tests use
    torch.manual_seed(0)
    c = Check(device)
    out = args.out or ROOT / "benchmarks" / "results" / ("gpu_check.md" if c.cuda else "gpu_check_cpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for key in only:
        title, fn = SECTIONS[key]
        c.section(title, lambda fn=fn: fn(c))
        out.write_text(report(c, t0, only, done=False))  # what is finished survives a run cut short
    text = report(c, t0, only, done=True)
    out.write_text(text)
    print(text)
    sys.exit(1 if c.failed else 0)


if __name__ == "__main__":
    main()
