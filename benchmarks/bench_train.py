"""Training throughput and peak memory per stage, on the CPU.

    PYTHONPATH=. python benchmarks/bench_train.py [--steps 3] [--sd-size 128] [--skip-sd]
    PYTHONPATH=. python benchmarks/bench_train.py --cached-pixels DATASET [--steps 5]

Two model sizes, random weights, synthetic batches (so data loading is not measured):

- tiny:  the tiny recipe's model (64 px crops, 16×16 latents) with its batch sizes and AdamW.
- sd15:  the SD-1.5 layout at full width (UNet 860 M parameters, SD VAE, 768-d context) at a
         reduced crop size (--sd-size, default 128 px) with batch 1 (stage 3: one clip of
         14 frames + 4 motion frames). To fit a CPU machine's memory the optimizer is plain
         SGD (no state); the AdamW state the recipe would add (8 bytes per trained parameter)
         is given in its own column.

Each stage runs in its own process (peak memory = that process's maximum RSS). The first
step is a warm-up and is not timed. Results are printed and written to
benchmarks/results/train.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "train.md"
WAV2VEC2_BASE_DIM = 13 * 768  # all hidden states of wav2vec2-base, concatenated (the sd15 recipe's audio features)


def build(size: str, image_size: int):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from rgbdface.models.builder import SD_SCHEDULE, _joint_from_base, build_tiny

    if size == "tiny":
        return build_tiny(image_size, seed=0)
    torch.manual_seed(0)
    # from_config with explicit channel counts, as a base model's folder would be read
    unet = UNet2DConditionModel.from_config(dict(sample_size=image_size // 8, in_channels=4, out_channels=4,
                                                 cross_attention_dim=768, attention_head_dim=8))
    vae = AutoencoderKL.from_config(dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                                         block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215, sample_size=image_size))
    context = torch.randn(1, 77, 768)
    return _joint_from_base(vae, unet, context, SD_SCHEDULE, image_size, base="random SD-1.5 layout")


def synthetic_batch(stage: int, b: int, s: int, c: int, h: int, frames: int = 0, motion: int = 0, audio_dim: int = 80, k: int = 5):
    import torch

    g = torch.Generator().manual_seed(0)
    depth = torch.where(torch.rand(b, 1, s, s, generator=g) > 0.3, 5000 + 500 * torch.rand(b, 1, s, s, generator=g), torch.zeros(1))
    if stage in (1, 2):
        batch = {"index": torch.arange(b), "ref_index": torch.arange(b), "mirrored": [False] * b, "flipped": [False] * b,
                 "rgb": torch.rand(b, 3, s, s, generator=g) * 2 - 1, "depth": depth,
                 "reference": torch.rand(b, 3, s, s, generator=g) * 2 - 1,
                 "keep": torch.ones(b, dtype=torch.bool), "noise": torch.randn(b, 2 * c, h, h, generator=g),
                 "timestep": torch.randint(0, 1000, (b,), generator=g)}
        if stage == 2:
            batch["m_rgb"] = torch.zeros(b, 1, h, h)
            batch["m_depth"] = torch.ones(b, 1, h, h)
        return batch
    return {"rgb": torch.rand(b, frames, 3, s, s, generator=g) * 2 - 1,
            "depth": depth[:, None].expand(-1, frames, -1, -1, -1).clone(),
            "reference": torch.rand(b, 3, s, s, generator=g) * 2 - 1,
            "motion": torch.rand(b, motion, 3, s, s, generator=g) * 2 - 1,
            "audio": torch.randn(b, frames, k, audio_dim, generator=g),
            "keep": torch.ones(b, dtype=torch.bool), "noise": torch.randn(b, frames, 2 * c, h, h, generator=g),
            "timestep": torch.randint(0, 1000, (b,), generator=g)}


def run_one(stage: int, size: str, image_size: int, steps: int) -> dict:
    """One stage in this process: build, warm up, time `steps` optimizer steps."""
    import torch

    from rgbdface.training.config import resolve_config
    from rgbdface.training.motion_setup import add_motion
    from rgbdface.training.objectives import make_objective

    recipe = "tiny" if size == "tiny" else "sd15"
    cfg = resolve_config(stage, recipe, ["data.cache_latents=false"])
    model = build(size, image_size)
    if stage == 2:
        model.meta.stages = [0, 1]
    if stage == 3:
        model.meta.stages = [0, 1]
        add_motion(model, cfg, audio_dim=WAV2VEC2_BASE_DIM if size == "sd15" else None)
    obj = make_objective(model, cfg)
    params = list(obj.trainable().values())
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in model.parameters())
    if size == "tiny":
        opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    else:
        opt = torch.optim.SGD(params, lr=cfg.optim.lr)
    b = cfg.optim.batch_size if size == "tiny" else 1
    c, h = model.meta.latent_channels, model.latent_size
    frames = cfg.motion.frames if stage == 3 else 0
    batch = synthetic_batch(stage, b, image_size, c, h, frames, cfg.motion.motion_frames if stage == 3 else 0,
                            model.motion.config.audio_dim if stage == 3 else 80, cfg.motion.audio_window if stage == 3 else 5)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = obj(batch)
        loss.backward()
        obj.finish()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    per_step = sum(times) / len(times)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    unit = "clips" if stage == 3 else "samples"
    return {"stage": stage, "size": size, "image_size": image_size, "batch": b, "frames": frames, "unit": unit,
            "trainable_m": n_train / 1e6, "params_m": n_all / 1e6, "s_per_step": per_step, "per_s": b / per_step,
            "peak_gib": peak_gib, "optimizer": type(opt).__name__, "adamw_state_gib": 8 * n_train / 2**30, "loss": float(loss.detach())}


def cached_pixels_ab(dataset: Path, steps: int, rounds: int = 3) -> str:
    """Stage 1, tiny recipe, real data with the latent cache full: CPU time to make a batch when the data
    stream decodes every sample's pixels (as before) and when it skips those whose latents are cached
    (stream.cached), alternating `rounds` times over `steps` batches each; beside it, one training step."""
    import statistics

    import torch
    from torch.utils.data import default_collate

    from rgbdface.data.io import load_image
    from rgbdface.models.builder import build_tiny
    from rgbdface.training.config import resolve_config
    from rgbdface.training.data import LatentSpec, read_samples
    from rgbdface.training.loop import make_stream
    from rgbdface.training.objectives import make_objective

    cfg = resolve_config(1, "tiny", ["data.cache_latents=true"])
    model = build_tiny(64, seed=0)
    obj = make_objective(model, cfg)
    params = list(obj.trainable().values())
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    samples = read_samples(dataset)
    stream = make_stream(samples, cfg, LatentSpec(64, model.meta.latent_channels, model.latent_size, 1000))
    b = cfg.optim.batch_size
    batches = [list(range(k, k + b)) for k in range(0, 2 * len(samples) + 2 * b, b)]
    with torch.no_grad():  # every sample (and its mirror image) seen once: the cache is full
        for idx in batches:
            obj(default_collate([stream[k] for k in idx]))
            obj.finish()

    def make(idx) -> float:
        t0 = time.process_time()
        default_collate([stream[k] for k in idx])
        return time.process_time() - t0

    cpu = {"decoded": [], "skipped": []}
    for r in range(rounds):
        for how in cpu:
            stream.cached = obj.cache if how == "skipped" else None
            cpu[how] += [make(batches[(r * steps + k) % len(batches)]) for k in range(steps)]
    step_cpu = []
    for idx in batches[:steps]:
        batch = default_collate([stream[k] for k in idx])
        t0 = time.process_time()
        loss, _ = obj(batch)
        loss.backward()
        obj.finish()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_cpu.append(time.process_time() - t0)
    dec, skip, step = (statistics.median(v) for v in (cpu["decoded"], cpu["skipped"], step_cpu))
    size = load_image(samples[0].rgb).shape[0]
    return "\n".join([
        "# Training with cached latents: pixels decoded or skipped (stage 1, tiny recipe, CPU)", "",
        f"Dataset {dataset.name}: {len(samples)} samples of {size} px, model at 64 px, batch {b}, torch threads "
        f"{torch.get_num_threads()}, 1-minute load average {os.getloadavg()[0]:.1f}. CPU time of this process "
        f"(less sensitive to other processes than wall time), median over {rounds} alternating blocks of {steps} batches, "
        "after every latent is cached.", "",
        "| part of a step | CPU s |", "|---|---:|",
        f"| making a batch, every sample's pixels decoded | {dec:.3f} |",
        f"| making a batch, pixels of cached samples skipped | {skip:.4f} |",
        f"| the model's step (forward, backward, AdamW) | {step:.3f} |", "",
        f"Skipping saves {(dec - skip) / (dec + step):.0%} of a step's CPU time (data + model).", ""])


def sd_state_estimate(image_size: int) -> dict[int, tuple[float, float, float]]:
    """Per stage, without allocating: (trained M params, all M params, GiB of float32 weights + grads + AdamW state)."""
    from accelerate import init_empty_weights

    from rgbdface.training.config import resolve_config
    from rgbdface.training.motion_setup import add_motion

    out = {}
    with init_empty_weights(include_buffers=True):
        for stage in (1, 2, 3):
            m = build("sd15", image_size)
            if stage == 1:
                trained = [*m.joint.unet.parameters(), *m.joint.reference_unet.parameters()]
            elif stage == 2:
                trained = list(m.add_masked_denoiser().unet.parameters())
            else:
                add_motion(m, resolve_config(3, "sd15"), audio_dim=WAV2VEC2_BASE_DIM)
                trained = m.motion.trainable_parameters()
            n_t = sum(p.numel() for p in trained)
            n_all = sum(p.numel() for p in m.parameters())
            out[stage] = (n_t / 1e6, n_all / 1e6, (4 * n_all + 12 * n_t) / 2**30)
    return out


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per stage (after one warm-up)")
    ap.add_argument("--tiny-size", type=int, default=64)
    ap.add_argument("--sd-size", type=int, default=128, help="crop size for the SD-1.5-layout model")
    ap.add_argument("--sd-steps", type=int, default=2)
    ap.add_argument("--skip-sd", action="store_true")
    ap.add_argument("--one", nargs=3, metavar=("STAGE", "SIZE", "IMAGE"), help=argparse.SUPPRESS)
    ap.add_argument("--cached-pixels", type=Path, metavar="DATASET",
                    help="only compare decoding and skipping the pixels of cached samples on this prep-depth dataset "
                         "(results/train_cached_pixels.md)")
    args = ap.parse_args()
    if args.cached_pixels:
        text = cached_pixels_ab(args.cached_pixels, args.steps)
        print(text)
        (RESULTS.parent / "train_cached_pixels.md").write_text(text)
        return
    if args.one:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        stage, size, image = int(args.one[0]), args.one[1], int(args.one[2])
        print(json.dumps(run_one(stage, size, image, args.steps if size == "tiny" else args.sd_steps)))
        return

    runs = [(s, "tiny", args.tiny_size) for s in (1, 2, 3)]
    if not args.skip_sd:
        runs += [(s, "sd15", args.sd_size) for s in (1, 2, 3)]
    rows = []
    estimate = sd_state_estimate(args.sd_size) if not args.skip_sd else {}
    for stage, size, image in runs:
        if size == "sd15":
            # SGD in the run: weights + grads, plus the build's copies; skip what cannot fit rather than be OOM-killed
            t, a, full = estimate[stage]
            need = (4 * a * 1e6 + 4 * t * 1e6) / 2**30 * 1.6
            if need > available_gib():
                rows.append({"stage": stage, "size": size, "image_size": image, "trainable_m": t, "params_m": a,
                             "error": f"not run: needs > {need:.0f} GiB (weights + grads), {available_gib():.0f} GiB free",
                             "adamw_state_gib": 8 * t * 1e6 / 2**30, "full_gib": full})
                continue
        print(f"stage {stage} {size} {image}px ...", file=sys.stderr, flush=True)
        p = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--sd-steps", str(args.sd_steps),
                            "--one", str(stage), size, str(image)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        if p.returncode != 0:
            reason = "killed (out of memory?)" if p.returncode < 0 else p.stderr.strip().splitlines()[-1][:120]
            rows.append({"stage": stage, "size": size, "image_size": image, "error": reason})
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))

    lines = [
        "# Training throughput (CPU)",
        "",
        f"Device: CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), float32, "
        "random weights, synthetic batches (no data loading). tiny: the tiny recipe (AdamW). "
        "sd15: SD-1.5 layout at full width, batch 1, SGD; the AdamW state it would add is its own column.",
        "",
        "| stage | model | crop | batch | trained / all params (M) | s / step | samples/s | peak RSS (GiB) | + AdamW state (GiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            params = f"{r['trainable_m']:.1f} / {r['params_m']:.1f}" if "trainable_m" in r else ""
            adamw = f"{r['adamw_state_gib']:.1f}" if "adamw_state_gib" in r else ""
            lines.append(f"| {r['stage']} | {r['size']} | {r['image_size']} | 1 | {params} | | {r['error']} | | {adamw} |")
            continue
        batch = f"{r['batch']} × {r['frames']} frames" if r["stage"] == 3 else str(r["batch"])
        extra = "(AdamW in run)" if r["optimizer"] == "AdamW" else f"{r['adamw_state_gib']:.1f}"
        lines.append(f"| {r['stage']} | {r['size']} | {r['image_size']} | {batch} | {r['trainable_m']:.1f} / {r['params_m']:.1f} "
                     f"| {r['s_per_step']:.2f} | {r['per_s']:.2f} {r['unit']} | {r['peak_gib']:.2f} | {extra} |")
    lines += ["", "Stage 3 counts clips per second (each clip = `frames` frames plus the motion frames)."]
    if estimate:
        lines += ["", "SD-1.5 layout, float32 training state without activations (weights of every part + gradients "
                  "+ AdamW moments of the trained part), computed from parameter counts:", "",
                  "| stage | trained / all params (M) | weights + grads + AdamW (GiB) |", "|---|---|---|"]
        lines += [f"| {s} | {t:.1f} / {a:.1f} | {g:.1f} |" for s, (t, a, g) in estimate.items()]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
