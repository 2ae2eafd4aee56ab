"""GPU memory per process for the three training stages and the inference commands at 512 x 512 with
SD-1.5 sizes, accounted on a CPU.

    PYTHONPATH=. python benchmarks/bench_memory.py [--sizes 64 128 192] [--budget-gib 24]

Parameters, gradients and optimizer state are counted from the SD-1.5-size model built without
weights (float32 trained weights and gradients; AdamW 8 bytes per trained parameter, 8-bit
AdamW 2; frozen parts in 16 bits; autocast's 16-bit copies of the trained weights, 2 bytes,
held through a step). Activations are measured: a real training step (forward + backward,
gradient checkpointing as the sd15 recipe sets it) of the full-width model at small crops,
every byte torch allocates counted (rgbdface.pipelines.memory.TensorMemory; gradients dropped
as they are made, since they are counted above), fitted as a + b * pixels over the sizes given
and read at 512 px. The step runs in float32 (bf16 is 20x slower on this CPU), so every value
counts 4 bytes: an upper bound for fp16 autocast, which keeps most activations in 2.
Inference: the same for one no-gradient denoiser call and one VAE decode per image. A GPU adds its CUDA context and allocator slack (RESERVE_GIB).
Results: benchmarks/results/memory.md. These are accounts, not GPU measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "memory.md"
WAV2VEC2_BASE_DIM = 13 * 768  # all hidden states of wav2vec2-base, concatenated (the sd15 recipe's audio features)
GIB = 2**30
RESERVE_GIB = 1.5  # CUDA context (~0.5 GiB) and the caching allocator's fragmentation
TARGET = 512


# ----------------------------------------------------------------------------- the model, without weights or at bf16
def build(image_size: int, meta: bool = False):
    """RGBDFaceModel with SD-1.5 sizes (UNet 860 M, SD VAE, 768-d context): on the meta device, or bf16."""
    import torch
    from accelerate import init_empty_weights

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_train import build as build_sd

    with init_empty_weights(include_buffers=False):
        model = build_sd("sd15", image_size)
    if not meta:  # real float32 tensors of a constant: the sizes matter here, not the values (and random init is slow)
        for m in model.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    m._parameters[name] = torch.nn.Parameter(torch.full(p.shape, 1e-3))
            for name, b in m._buffers.items():
                if b is not None and b.is_meta:
                    m._buffers[name] = torch.zeros(b.shape, dtype=b.dtype)
        model.context = torch.full(model.context.shape, 1e-3)
    return model


def stage_model(stage: int, image_size: int, meta: bool = False):
    """The model and objective of a stage (sd15 recipe), with the parts the stage does not run dropped."""
    from rgbdface.training.config import resolve_config
    from rgbdface.training.motion_setup import add_motion
    from rgbdface.training.objectives import make_objective

    cfg = resolve_config(stage, "sd15", ["data.cache_latents=false"])
    model = build(image_size, meta)
    model.meta.stages = [0, 1]
    if stage == 3:
        add_motion(model, cfg, audio_dim=WAV2VEC2_BASE_DIM)
    obj = make_objective(model, cfg)
    if stage == 2 and not meta:
        model.joint.unet.to("meta")  # stage 2 never runs the joint UNet (the objective leaves it on the host)
    return model, obj, cfg


def count_parameters() -> dict:
    """Per stage: trained and frozen parameters of the parts the stage puts on the GPU."""
    out = {}
    for stage in (1, 2, 3):
        _, obj, cfg = stage_model(stage, TARGET, meta=True)
        trained = {id(p) for p in obj.trainable().values()}
        params = {id(p): p for p in obj.parameters()}  # the objective holds only what it runs
        n_t = sum(p.numel() for i, p in params.items() if i in trained)
        n_f = sum(p.numel() for i, p in params.items() if i not in trained)
        out[stage] = {"trained": n_t, "frozen": n_f, "batch": cfg.optim.batch_size,
                      "frames": cfg.motion.frames if stage == 3 else 0,
                      "motion_frames": cfg.motion.motion_frames if stage == 3 else 0}
    return out


# ----------------------------------------------------------------------------- activations, measured
def measure_training(stage: int, image_size: int) -> dict:
    """Peak bytes torch allocates in one training step of one sample (stage 3: one clip) at `image_size`."""
    import torch

    from bench_train import synthetic_batch
    from rgbdface.pipelines.memory import TensorMemory

    model, obj, cfg = stage_model(stage, image_size)
    obj.enable_gradient_checkpointing()
    for p in obj.trainable().values():  # gradients are accounted separately: drop each as it is made
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    c, h = model.meta.latent_channels, model.latent_size
    frames = cfg.motion.frames if stage == 3 else 0
    batch = synthetic_batch(stage, 1, image_size, c, h, frames, cfg.motion.motion_frames if stage == 3 else 0,
                            WAV2VEC2_BASE_DIM if stage == 3 else 80, cfg.motion.audio_window if stage == 3 else 5)
    t0 = time.perf_counter()
    with TensorMemory() as memory:  # float32 throughout: 4 bytes per value, an upper bound for 16-bit autocast
        loss, _ = obj(batch)
        loss.backward()
        obj.finish()
    return {"peak": memory.peak, "seconds": time.perf_counter() - t0}


def measure_inference(image_size: int) -> dict:
    """Peak bytes of one no-gradient masked-denoiser call (reference set) and one VAE decode, one image each."""
    import torch

    from rgbdface.pipelines.memory import TensorMemory

    model = build(image_size)
    den = model.add_masked_denoiser()
    model.joint.unet.to("meta")  # depth estimation never runs the joint UNet
    s, c = model.latent_size, model.meta.latent_channels
    out = {}
    with torch.no_grad():
        z_ref = torch.randn(1, c, s, s)
        ctx = model.context
        with TensorMemory() as memory:
            den.set_reference(z_ref, ctx)
            memory.reset_peak()  # the reference features are counted once per run below, not per image
            den(torch.randn(1, den.in_channels, s, s), torch.tensor([500]), ctx)
        out["unet"] = memory.peak - memory.live  # transient of one call
        with TensorMemory() as memory:
            den.set_reference(z_ref, ctx)
        out["reference_features"] = memory.peak
        with TensorMemory() as memory:
            model.codec.decode(torch.randn(1, c, s, s))
        out["vae_decode"] = memory.peak
    return out


def fit(sizes: list[int], values: list[float], at: int = TARGET) -> tuple[float, float]:
    """Least squares a + b * pixels; (value at `at` px, largest relative residual over the sizes)."""
    import numpy as np

    x = np.asarray(sizes, float) ** 2
    y = np.asarray(values, float)
    b, a = np.polyfit(x, y, 1)
    resid = float(np.max(np.abs(a + b * x - y) / np.maximum(y, 1)))
    return float(a + b * at**2), resid


# ----------------------------------------------------------------------------- the account
def training_rows(params: dict, acts: dict[int, float | None], budget: float) -> list[list[str]]:
    """Per stage, batch and optimizer: the static memory, the activations (when measured) and the total."""
    rows = []
    for stage, b in ((1, 4), (1, 1), (2, 4), (2, 1), (3, 1)):
        p = params[stage]
        n_t, n_f = p["trained"], p["frozen"]
        act = acts.get(stage)
        static = (4 * n_t + 4 * n_t + 2 * n_f + 2 * n_t) / GIB + RESERVE_GIB  # weights, grads, frozen, autocast copies, reserve
        for opt, per in (("adamw", 8), ("adamw8bit", 2)):
            before = static + per * n_t / GIB
            if act is None:
                act_s, total_s = "not measured", f"{before:.1f} + activations"
                fits = "no" if before > budget else f"if activations <= {budget - before:.1f}"
            else:
                total = before + act * b / GIB  # activations grow with the per-GPU batch (stage 3: clips)
                act_s, total_s, fits = f"{act * b / GIB:.1f}", f"{total:.1f}", "yes" if total <= budget else "no"
            rows.append([str(stage), opt, f"{n_t / 1e6:.0f} / {n_f / 1e6:.0f}", str(b) + (" clip" if stage == 3 else ""),
                         f"{4 * n_t / GIB:.1f}", f"{4 * n_t / GIB:.1f}", f"{per * n_t / GIB:.1f}", f"{2 * n_f / GIB:.1f}",
                         f"{2 * n_t / GIB:.1f}", act_s, total_s, fits])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192], help="crop sizes measured (multiples of 64)")
    ap.add_argument("--budget-gib", type=float, default=24.0)
    ap.add_argument("--cache", type=Path, default=None, help="a JSON-lines file of measures made earlier (and to add to)")
    ap.add_argument("--measured-only", action="store_true", help="make no new measure: report what --cache holds")
    ap.add_argument("--one", nargs=2, metavar=("WHAT", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if args.one:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        what, size = args.one[0], int(args.one[1])
        print(json.dumps(measure_inference(size) if what == "inference" else measure_training(int(what), size)))
        return

    def cached() -> dict:  # measures already made (they take minutes each on a CPU), kept across runs with --cache
        if not (args.cache and args.cache.is_file()):
            return {}
        return {tuple(json.loads(line)["key"]): json.loads(line)["value"] for line in args.cache.read_text().splitlines() if line}

    def one(what: str, size: int) -> dict | None:  # each measure in its own process: its memory is returned after
        if (what, size) in cached():
            return cached()[(what, size)]
        if args.measured_only:
            return None
        print(f"measuring {what} at {size} px ...", file=sys.stderr, flush=True)
        p = subprocess.run([sys.executable, __file__, "--one", what, str(size)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        if p.returncode != 0:
            raise SystemExit(f"bench_memory: {what} at {size} px failed: {p.stderr.strip().splitlines()[-1][:200]}")
        value = json.loads(p.stdout.strip().splitlines()[-1])
        if args.cache:
            with open(args.cache, "a") as f:
                f.write(json.dumps({"key": [what, size], "value": value}) + "\n")
        return value

    params = cached().get(("params", 0))
    if params is None:
        params = count_parameters()
        if args.cache:
            with open(args.cache, "a") as f:
                f.write(json.dumps({"key": ["params", 0], "value": params}) + "\n")
    params = {int(k): v for k, v in params.items()}
    measured = {stage: [one(str(stage), s) for s in args.sizes] for stage in (1, 2, 3)}
    inference = [one("inference", s) for s in args.sizes]
    acts, resid = {}, {}
    for stage, runs in measured.items():
        if all(r is not None for r in runs) and len(runs) >= 2:
            acts[stage], resid[stage] = fit(args.sizes, [r["peak"] for r in runs])
    per_image = {}
    if all(r is not None for r in inference) and len(inference) >= 2:
        per_image = {k: fit(args.sizes, [r[k] for r in inference]) for k in ("unet", "vae_decode", "reference_features")}

    head = ["stage", "optimizer", "trained / frozen params (M)", "batch per GPU", "weights fp32", "grads fp32", "optimizer state",
            "frozen 16-bit", "autocast copies", "activations", "total (GiB)", f"fits {args.budget_gib:g} GiB"]
    lines = [
        "# GPU memory per process at 512 x 512, SD-1.5 sizes (accounted on a CPU)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; no GPU. **Not yet measured on a GPU**: these are "
        "accounts from parameter counts and CPU-measured activations, to be checked by `bash benchmarks/gpu_check.sh`.",
        "",
        "Settings (the sd15 recipe and examples/train_sd15_multigpu.sh): fp16 mixed precision, gradient checkpointing, "
        "frozen parts (VAE, frozen UNets) in 16 bits, only the stage's parts on the GPU, per-GPU batch 4 for stages 1-2 "
        "(global 32 through accumulation; batch 1 with 4 times the accumulation is the fallback: PER_GPU_BATCH=1), one clip of "
        "14 frames + 4 motion frames for stage 3 (wav2vec2-base features). "
        f"Every total includes {RESERVE_GIB} GiB for the CUDA context and allocator slack. Sizes in GiB.",
        "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in training_rows(params, acts, args.budget_gib)]
    lines += [
        "",
        f"Activations per sample (stage 3: per clip), measured at {', '.join(map(str, args.sizes))} px crops and "
        "fitted as a + b * pixels (largest residual of the fit in brackets), read at 512 px:",
        "",
        "| stage | " + " | ".join(f"{s} px (MiB)" for s in args.sizes) + " | 512 px (GiB) | step seconds at the largest |",
        "|" + "---|" * (len(args.sizes) + 3),
    ]
    for stage, runs in measured.items():
        cells = " | ".join("not measured" if r is None else f"{r['peak'] / 2**20:.0f}" for r in runs)
        at = f"{acts[stage] / GIB:.2f} ({resid[stage]:.0%})" if stage in acts else "not measured"
        secs = f"{runs[-1]['seconds']:.0f}" if runs[-1] is not None else "-"
        lines.append(f"| {stage} | {cells} | {at} | {secs} |")
    unet_params = 859.5e6  # one SD-1.5 UNet
    if not per_image:
        lines += ["", "Inference per image and per command: not measured yet (`--sizes 64 128` measures them)."]
    else:
        lines += [
            "",
            "Inference per image at 512 px (fitted the same way, 4 bytes per value); the batch-size table of "
            "rgbdface/pipelines/memory.py is to be checked against these:",
            "",
            "| call | " + " | ".join(f"{s} px (MiB)" for s in args.sizes) + " | 512 px (MiB) |",
            "|" + "---|" * (len(args.sizes) + 2),
        ]
        for k, label in (("unet", "one denoiser call (no gradients)"), ("vae_decode", "VAE decode"),
                         ("reference_features", "ReferenceNet features (once per reference)")):
            lines.append(f"| {label} | " + " | ".join(f"{r[k] / 2**20:.0f}" for r in inference)
                         + f" | {per_image[k][0] / 2**20:.0f} |")
        unet_call, decode, ref_feats = (per_image[k][0] for k in ("unet", "vae_decode", "reference_features"))
        lines += [
            "",
            "Inference commands: 16-bit weights of the parts the command runs (as they load on CUDA), the "
            "reference features, and the larger of the denoiser call and the VAE decode of the batch "
            "(decoded in slices of 4):",
            "",
            "| command | weights (GiB) | denoiser batch | activations (GiB) | total (GiB) |",
            "|---|---|---|---|---|",
        ]
        weights = (2 * unet_params + 83.7e6) * 2 / GIB
        for cmd, extra, unet_batch in (("generate, 1 sample with guidance", 0, 2), ("estimate-depth -b 8", 0, 8),
                                       ("talk, 14 frames with guidance", params[3]["trained"], 28)):
            act = max(unet_batch * unet_call, 4 * decode) + ref_feats
            total = weights + 2 * extra / GIB + act / GIB + RESERVE_GIB
            lines.append(f"| {cmd} | {weights + 2 * extra / GIB:.1f} | {unet_batch} | {act / GIB:.1f} | {total:.1f} |")
    lines += ["", f"Reproduce: `PYTHONPATH=. python benchmarks/bench_memory.py --sizes {' '.join(map(str, args.sizes))}`", ""]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
