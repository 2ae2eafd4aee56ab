"""One training loop for the three stages, on Hugging Face Accelerate (paper §5.1, supplement §7.2).

    rgbdface train DATASET -o RUN_DIR -m STAGE0           # stage 1 (init-model --tiny --vae VAE, or --base SD15)
    rgbdface finetune-mask DATASET -o RUN2 -m RUN_DIR     # stage 2 from stage 1
    rgbdface train-motion DATASET -o RUN3 -m RUN2         # stage 3 from stage 2 (or 1: then no stage 2)
    accelerate launch --num_processes 8 -m rgbdface.cli.app train ...   # many GPUs / nodes

RUN_DIR holds config.json (the resolved config), log.jsonl (one JSON object per logged
step), samples/step-*.png (sample grids), checkpoints/step-*/ (see state.py) and, at the
end, model/ — the trained model folder with the stage appended to meta.stages and
meta.crop_margin set to the dataset's crop margin (the newest stage decides the framing).

Everything that can be wrong with the request (config keys, dataset, model stage, run
folder) is checked before any model weights are loaded.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rgbdface.training.config import RunConfig, config_from_dict, resolve_config
from rgbdface.utils import InputError, UsageError, atomic_path, launcher_rank

log = logging.getLogger("rgbdface.training")

COMMAND = {1: "train", 2: "finetune-mask", 3: "train-motion"}
UNTRAINED_CODEC = ("warning: {what} an untrained latent codec (random VAE weights), so what this run learns decodes to noise; "
                   "train one with `rgbdface train-vae DATASET -o VAE` and start from `rgbdface init-model --tiny --vae VAE`")
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "comet_ml": ("comet_ml",),
                   "aim": ("aim",), "mlflow": ("mlflow",), "clearml": ("clearml",), "dvclive": ("dvclive",)}


@dataclass
class TrainRequest:
    """What a training command asks for (the CLI fills it from its options)."""

    stage: int  # 1 train, 2 finetune-mask, 3 train-motion
    dataset: Path  # a prep-depth dataset folder
    run_dir: Path  # output: checkpoints, logs, samples, final model/
    model: Path | None = None  # starting model folder (or a run folder holding model/)
    base: Path | None = None  # stage 1: build stage 0 from this SD-1.5 folder
    tiny: bool = False  # stage 1: build stage 0 from the tiny config
    image_size: int | None = None  # with base/tiny: crop size (default 512 / 64)
    recipe: str | None = None  # tiny | sd15 | file.json (default: by model size)
    overrides: list[str] = field(default_factory=list)  # --set key=value
    max_steps: int | None = None  # shorthand for --set optim.max_steps=N
    resume: bool = False  # continue from the newest checkpoint in run_dir (if any)
    overwrite: bool = False  # replace a finished run's model/
    tracker: str | None = None  # an Accelerate tracker (tensorboard, wandb, ...), if installed
    cpu: bool = False  # train on the CPU even where CUDA is available
    quiet: bool = False  # no progress bar on stderr


# ----------------------------------------------------------------------------- checks before work
def resolve_model_dir(path: Path) -> Path:
    """A model folder, or a run folder whose model/ is one."""
    from rgbdface.models.folder import META_FILE

    path = Path(path)
    if not path.exists():
        raise InputError(f"--model {path}: no such folder")
    if (path / META_FILE).is_file():
        return path
    if (path / "model" / META_FILE).is_file():
        return path / "model"
    raise InputError(f"--model {path}: not an rgbdface model folder (no rgbdface.json); pass a folder from `rgbdface init-model` or a training run")


def read_stages(model_dir: Path) -> list[int]:
    from rgbdface.models.folder import META_FILE

    return list(json.loads((model_dir / META_FILE).read_text()).get("stages", [0]))


def check_model_stage(stage: int, stages: list[int], where: str) -> None:
    from rgbdface.models.folder import STAGE_NAMES

    have = ", ".join(f"{s} ({STAGE_NAMES.get(s, '?')})" for s in stages)
    if stage == 1 and max(stages) > 1:
        raise InputError(f"train: {where} already has stages {have}; retraining stage 1 would invalidate its later stages — "
                         "start from its stage-0/1 model instead")
    if stage in (2, 3) and 1 not in stages:
        raise InputError(f"{COMMAND[stage]} needs a stage-1 (joint RGB+depth) model from `rgbdface train`; {where} has stages {have}")


def check_tracker(tracker: str | None) -> None:
    if tracker is None:
        return
    import importlib.util

    mods = TRACKER_MODULES.get(tracker)
    if mods is None:
        raise InputError(f"--tracker {tracker}: unknown; use one of {', '.join(TRACKER_MODULES)}")
    if not any(importlib.util.find_spec(m) for m in mods):
        raise InputError(f"--tracker {tracker}: not installed; `pip install {mods[0]}` or leave --tracker out")


def check_optimizer(name: str) -> None:
    import importlib.util

    if name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise InputError("optim.optimizer=adamw8bit needs bitsandbytes; `pip install bitsandbytes` or set optim.optimizer=adamw")


def make_optimizer(params: list, o):
    """AdamW with the recipe's settings: torch's, or bitsandbytes' 8-bit one (optim.optimizer)."""
    import torch

    if o.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)


@dataclass
class Plan:
    """A checked request: where the model comes from, the resolved config, what to resume."""

    request: TrainRequest
    config: RunConfig
    samples: list
    init: str  # description of the starting model
    model_dir: Path | None  # starting model folder (None: build from base/tiny)
    resume_from: Path | None  # checkpoint to continue from
    crop_margin: float  # the dataset's face-crop margin (dataset.json), which the trained model takes
    damaged: list[Path] = field(default_factory=list)  # newer checkpoints than resume_from that are damaged (set aside)


def plan(req: TrainRequest) -> Plan:
    """Every check that needs no weights: flags, model stage, config, run folder, dataset, tracker."""
    from rgbdface.data.manifest import check_files, read_crop, read_samples
    from rgbdface.models.folder import check_model_folder

    stage = req.stage
    # 1. Where the starting model comes from
    sources = [req.model is not None, req.base is not None, req.tiny]
    if stage == 1 and sum(sources) != 1:
        raise UsageError("train: give exactly one of --model STAGE0_DIR, --base SD15_DIR or --tiny")
    if stage != 1 and (req.base is not None or req.tiny):
        raise UsageError(f"{COMMAND[stage]}: --base/--tiny build an untrained model; pass --model STAGE1_DIR instead")
    if req.resume and req.overwrite:
        raise UsageError(f"{COMMAND[stage]}: --resume continues the run, --overwrite trains it again from the start; pass one")
    if stage != 1 and req.model is None:
        raise UsageError(f"{COMMAND[stage]}: --model STAGE1_DIR is required (a model trained by `rgbdface train`)")
    model_dir, image_size = None, req.image_size
    if req.model is not None:
        model_dir = resolve_model_dir(req.model)
        check_model_folder(model_dir)
        check_model_stage(stage, read_stages(model_dir), str(req.model))
        image_size = json.loads((model_dir / "rgbdface.json").read_text()).get("image_size", 512)
    elif req.base is not None:
        image_size = image_size or 512
    else:
        image_size = image_size or 64
    init = str(model_dir) if model_dir else (f"base:{req.base}" if req.base else f"tiny:{image_size}")
    dataset = read_samples(req.dataset)  # a missing dataset fails here, before torch is imported

    from rgbdface.training.data import exclude_identities
    from rgbdface.training.state import newest_valid_checkpoint, read_state

    if stage == 2 and model_dir is not None and any((model_dir / part).is_dir() for part in ("masked_vae", "masked_scheduler")):
        raise InputError(f"--model {req.model}: its stage 2 keeps a codec and schedule of its own (joined from another model); "
                         "run finetune-mask on the model that stage 2 came from and join it again")
    if req.tiny or (model_dir is not None and not json.loads((model_dir / "rgbdface.json").read_text()).get("codec_trained", True)):
        log.warning(UNTRAINED_CODEC.format(what="--tiny builds a model with" if req.tiny else f"--model {req.model} has"))

    # 2. Config: saved config on resume, else recipe; --set on top; unknown keys fail here
    overrides = list(req.overrides) + ([f"optim.max_steps={req.max_steps}"] if req.max_steps is not None else [])
    run_dir = Path(req.run_dir)
    ckpt, damaged = newest_valid_checkpoint(run_dir)
    if (ckpt is not None or damaged) and not req.resume and not req.overwrite:
        raise InputError(f"{run_dir}: holds checkpoints of an earlier run; pass --resume to continue it, --overwrite to "
                         "train again from the start, or choose another -o")
    if not req.resume:
        ckpt, damaged = None, []  # --overwrite: the earlier run's checkpoints, log and samples go when training starts
    elif ckpt is None and damaged:
        path, why = damaged[0]
        raise InputError(f"{path}: damaged ({why}) and no older checkpoint is whole; pass --overwrite to train again from the start")
    for path, why in damaged:
        log.warning("warning: %s is damaged (%s); resuming from %s instead", path, why, ckpt)
    if ckpt is not None:
        state, saved = read_state(ckpt)
        if state.stage != stage:
            raise InputError(f"{run_dir}: its checkpoints are from stage {state.stage} ({COMMAND[state.stage]}), not {COMMAND[stage]}")
        cfg = config_from_dict(saved)
        from rgbdface.training.config import apply_overrides, validate

        validate(cfg)
        apply_overrides(cfg, overrides)
        init = state.init_model or init
    else:
        recipe = req.recipe or ("sd15" if image_size >= 256 else "tiny")
        cfg = resolve_config(stage, recipe, overrides)
    if (run_dir / "model").exists() and not req.overwrite and not req.resume:
        raise InputError(f"{run_dir}/model: a finished run is there; pass --overwrite to replace it or choose another -o")

    # 3. The dataset: present, non-empty, of the right kind for the stage
    samples = exclude_identities(dataset, cfg.data.exclude_identities)
    make_stream(samples, cfg, spec=None)  # raises the dataset's one-line errors (identities, audio, clip length)
    if stage == 3:
        from rgbdface.training.motion_setup import audio_fields, check_audio_source

        check_audio_source(samples, cfg)
    # Every file the run will read, before step 0 (existence and size only: fast)
    check_files(samples, ("rgb", "depth"), Path(req.dataset))
    if stage == 3:
        check_files(samples, audio_fields(cfg), Path(req.dataset))
    check_tracker(req.tracker)
    check_optimizer(cfg.optim.optimizer)
    return Plan(req, cfg, samples, init, model_dir, ckpt, read_crop(req.dataset).margin, [path for path, _ in damaged])


def make_stream(samples: list, cfg: RunConfig, spec, audio_features=None):
    from rgbdface.training.data import ClipStream, ImageStream
    from rgbdface.training.masks import MaskSampler

    if cfg.stage in (1, 2):
        return ImageStream(samples, spec, cfg.seed, cfg.data.studio_fraction, cfg.data.single_sample,
                           cfg.loss.reference_dropout, MaskSampler.from_config(cfg.masks) if cfg.stage == 2 else None, cfg.data.hflip,
                           cfg.masks.self_reference if cfg.stage == 2 else 0.0, cfg.data.photo_background, cfg.data.colour_jitter,
                           cfg.data.same_reference, cfg.data.colour_hue, cfg.data.random_background,
                           cfg.masks.final_step if cfg.stage == 2 else 0.0)
    mo = cfg.motion
    return ClipStream(samples, spec, cfg.seed, mo.frames, mo.motion_frames, audio_features, mo.audio_window,
                      mo.first_clip_prob, cfg.loss.reference_dropout, cfg.data.photo_background, cfg.data.colour_jitter,
                      cfg.data.colour_hue, mouth=cfg.loss.mouth_weight != 1.0, noise=mo.noise,
                      random_background=cfg.data.random_background)


# ----------------------------------------------------------------------------- the loop
def lr_lambda(warmup: int):
    """Constant learning rate (paper §5.1) after an optional linear warm-up."""
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _load_model(p: Plan, accelerator):
    import torch

    from rgbdface.models.builder import build_from_sd15, build_tiny
    from rgbdface.models.model import RGBDFaceModel

    req = p.request
    if p.resume_from is not None:
        model = RGBDFaceModel.from_pretrained(p.resume_from / "model")
    elif p.model_dir is not None:
        model = RGBDFaceModel.from_pretrained(p.model_dir)
    elif req.base is not None:
        model = build_from_sd15(req.base, req.image_size or 512)
    else:
        model = build_tiny(req.image_size or 64, seed=p.config.seed)
    if p.config.stage == 3 and getattr(model, "motion", None) is None:
        from rgbdface.training.motion_setup import add_motion

        add_motion(model, p.config, p.samples)
    return model  # on the CPU: the objective moves the parts its stage runs


def run(p: Plan) -> Path:
    """Train as planned; returns the final model folder."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from diffusers.utils import logging as diffusers_logging
    from tqdm.auto import tqdm

    from torch.utils.data import default_collate

    from rgbdface.training.data import LatentSpec, RankBatches
    from rgbdface.training.ema import EMA
    from rgbdface.training.grids import sample_grid, write_grid
    from rgbdface.training.objectives import digest, make_objective
    from rgbdface.training.state import TrainState, load_training_state, lock_run, prepare_run_dir, save_checkpoint

    diffusers_logging.set_verbosity_error()
    req, cfg = p.request, p.config
    run_dir = Path(req.run_dir)

    # 1. Accelerate: devices, processes, mixed precision, trackers
    cuda = torch.cuda.is_available() and not req.cpu
    mp = cfg.precision.mixed_precision
    mp = ("fp16" if cuda else "no") if mp == "auto" else mp
    if mp == "fp16" and not cuda:
        raise InputError("precision.mixed_precision=fp16 needs CUDA; use no or bf16 on the CPU")
    accelerator = Accelerator(
        mixed_precision=mp, cpu=req.cpu, gradient_accumulation_steps=cfg.optim.grad_accum, log_with=req.tracker, project_dir=str(run_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    main = accelerator.is_main_process
    if cuda and cfg.precision.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    world = launcher_rank()
    if world is not None and world[1] != accelerator.num_processes:
        raise UsageError(f"WORLD_SIZE={world[1]} is set, but {accelerator.num_processes} process(es) were started; "
                         "start them with `accelerate launch` or `torchrun`, or unset RANK and WORLD_SIZE")
    lock = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_run(run_dir)  # held until the run ends (or this process does): one trainer per run folder
        prepare_run_dir(run_dir, fresh=req.overwrite and not req.resume, damaged=p.damaged)
        with atomic_path(run_dir / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2))

    # 2. Model and what trains (the stage's trainable set; the rest frozen)
    model = _load_model(p, accelerator)
    # The model is cropped for as its data was: the newest stage decides (stage 0 learnt no framing)
    if main and model.stage > 0 and abs(model.meta.crop_margin - p.crop_margin) > 1e-9:
        log.warning("warning: the model's earlier stages were trained on face crops with margin %g, this dataset's have "
                    "margin %g; the trained model takes %g", model.meta.crop_margin, p.crop_margin, p.crop_margin)
    model.meta.crop_margin = p.crop_margin
    if cfg.stage == 2:  # the masked denoiser's input convention travels with it (sampling follows it)
        model.meta.known_latents = cfg.masks.known_latents
    objective = make_objective(model, cfg)
    objective.to(accelerator.device)  # only the stage's parts: e.g. stage 2 leaves the joint UNet on the CPU
    objective.cast_frozen({"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp, torch.float32))
    if cfg.precision.gradient_checkpointing:
        objective.enable_gradient_checkpointing()
    params = objective.trainable()
    names = list(params)
    if main and objective.frozen_unreachable:
        log.info("froze %d ReferenceNet parameters that get no gradient (its output layers)", len(objective.frozen_unreachable))

    # 3. Optimizer (AdamW), constant lr after warm-up, optional EMA
    o = cfg.optim
    optimizer = make_optimizer(list(params.values()), o)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_steps))
    ema = EMA(params, o.ema_decay) if o.ema else None
    objective, optimizer = accelerator.prepare(objective, optimizer)
    inner = accelerator.unwrap_model(objective)

    # 4. Resume: optimizer, scheduler, EMA, RNG; the data order follows from the step
    state = TrainState(stage=cfg.stage, init_model=p.init, dataset=str(req.dataset), world_size=accelerator.num_processes)
    if p.resume_from is not None:
        from rgbdface.training.state import read_state

        state, _ = read_state(p.resume_from)
        load_training_state(p.resume_from, optimizer, names, lr_scheduler, ema, accelerator.process_index,
                            scaler=getattr(accelerator, "scaler", None))
        if state.world_size != accelerator.num_processes and main:
            log.warning("resuming a %d-process run with %d processes: the sample order from here on differs",
                        state.world_size, accelerator.num_processes)
        state.world_size = accelerator.num_processes
        if main:
            log.info("resumed from %s (step %d)", p.resume_from, state.step)
            _truncate_log(run_dir / "log.jsonl", state.step)

    # 5. Data: sample n of the run is a function of (seed, n); this process's micro-batches from here on
    spec = LatentSpec(model.meta.image_size, model.meta.latent_channels, model.latent_size,
                      int(model.scheduler_config.get("num_train_timesteps", 1000)))
    audio_features = None
    if cfg.stage == 3:
        from rgbdface.training.motion_setup import clip_audio_features

        audio_features = clip_audio_features(model, cfg)
    stream = make_stream(p.samples, cfg, spec, audio_features)
    loader = torch.utils.data.DataLoader(
        stream, batch_sampler=RankBatches(state.step * o.grad_accum, o.batch_size, accelerator.process_index, accelerator.num_processes),
        collate_fn=default_collate, num_workers=cfg.data.num_workers,
    )
    batches = iter(loader)
    grid_batch = default_collate([stream[n] for n in range(cfg.log.sample_count)]) if cfg.stage in (1, 2) else None
    if cfg.stage in (1, 2) and inner.cache is not None and cfg.data.num_workers == 0:
        stream.cached = inner.cache  # cached samples skip decoding their pixels (the grids above keep theirs)
    if req.tracker:
        accelerator.init_trackers("rgbdface", config=_flat(cfg.to_dict()))

    # 6. Train: lr → micro-steps (accumulate, no DDP sync until the last) → clip → step → EMA → log/sample/checkpoint
    samples_per_step = o.batch_size * o.grad_accum * accelerator.num_processes
    # a live bar on a terminal; into a log file (nohup, a cluster job) one plain line per logged step instead
    live = sys.stderr.isatty()
    bar = tqdm(total=o.max_steps, initial=state.step, desc=COMMAND[cfg.stage], file=sys.stderr,
               disable=req.quiet or not main or not live, dynamic_ncols=True)
    t_last, window = time.perf_counter(), RunningMeans()
    last_ckpt = state.step
    while state.step < o.max_steps:
        for _ in range(o.grad_accum):
            batch = next(batches)
            # accumulate: processes sync gradients on the last micro-batch only; backward divides the loss by grad_accum
            with accelerator.accumulate(objective), accelerator.autocast():
                loss, parts = objective(batch)
                accelerator.backward(loss)
            inner.finish()
            window.add({"loss": loss.detach(), **parts}, 1.0 / o.grad_accum)  # stays on the device: no sync
        if o.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(list(params.values()), o.grad_clip)
            if grad_norm is not None:  # (DeepSpeed may report none)
                window.add({"grad_norm": torch.as_tensor(grad_norm)})
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update()
        state.step += 1
        state.micro_batches += o.grad_accum
        state.samples_seen += samples_per_step
        window.steps += 1
        bar.update(1)
        log_now = state.step % cfg.log.log_every == 0 or state.step == o.max_steps
        checkpoint_now = cfg.log.checkpoint_every and state.step % cfg.log.checkpoint_every == 0 and state.step < o.max_steps
        if log_now or checkpoint_now:
            # The one host-device sync of a logging interval: means over its steps and processes.
            now, steps = time.perf_counter(), window.steps
            metrics = window.pop(accelerator)
            if not math.isfinite(metrics["loss"]):  # the weights are lost from here on: stop, keep the last good checkpoint
                _diverged(run_dir, state.step, f"the loss is {metrics['loss']}", main)
            state.last_loss = metrics["loss"]
            row = {"step": state.step, **metrics, "lr": lr_scheduler.get_last_lr()[0],
                   "samples_per_s": steps * samples_per_step / max(now - t_last, 1e-9), "samples_seen": state.samples_seen}
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", samples_s=f"{row['samples_per_s']:.2f}")
            if main and log_now and not live and not req.quiet:
                print(f"{COMMAND[cfg.stage]}: step {state.step}/{o.max_steps} loss {metrics['loss']:.4f} "
                      f"{row['samples_per_s']:.2f} samples/s", file=sys.stderr, flush=True)
            if main and log_now:
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            if req.tracker and log_now:
                accelerator.log(row, step=state.step)
            t_last = now
        if main and grid_batch is not None and cfg.log.sample_every and state.step % cfg.log.sample_every == 0:
            with accelerator.autocast():
                grid = sample_grid(inner, grid_batch, cfg.log.sample_steps, cfg.seed)
            write_grid(run_dir / "samples" / f"step-{state.step:08d}.png", grid)
        if checkpoint_now:
            _check_finite(params, run_dir, state.step, main)
            state.digests = _digests(accelerator, params, digest)
            with inner.full_precision():
                save_checkpoint(accelerator, run_dir, inner.model, optimizer, names, lr_scheduler, ema, state, cfg.to_dict(),
                                cfg.log.keep_checkpoints)
            last_ckpt = state.step
    bar.close()

    # 7. Final checkpoint (so a later --resume --max-steps N goes on) and the model folder
    _check_finite(params, run_dir, state.step, main)
    if ema is not None:
        _check_finite(ema.shadow, run_dir, state.step, main)
    state.digests = _digests(accelerator, params, digest)
    if len(set(state.digests)) > 1:
        raise RuntimeError(f"processes ended with different weights ({state.digests}); check the launcher setup")
    if last_ckpt != state.step or not (run_dir / "checkpoints" / f"step-{state.step:08d}").exists():
        with inner.full_precision():
            save_checkpoint(accelerator, run_dir, inner.model, optimizer, names, lr_scheduler, ema, state, cfg.to_dict(),
                            cfg.log.keep_checkpoints)
    out = run_dir / "model"
    if main:
        final = inner.model
        if ema is not None and o.ema_for_final:
            # In place: the final checkpoint above holds the trained weights, and a copy of the
            # whole model on the device would need its memory a second time.
            ema.copy_to_params()
        final.meta.stages = sorted(set(final.meta.stages) | {cfg.stage})
        final.meta.extra[f"stage{cfg.stage}"] = {
            "command": COMMAND[cfg.stage], "config": cfg.to_dict(), "steps": state.step, "samples_seen": state.samples_seen,
            "processes": accelerator.num_processes, "dataset": str(req.dataset), "init": p.init,
            "final_loss": state.last_loss, "ema": bool(ema is not None and o.ema_for_final),
        }
        with inner.full_precision():
            final.save_pretrained(out)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"event": "done", "step": state.step, "digests": state.digests, "model": str(out)}) + "\n")
    accelerator.wait_for_everyone()
    if req.tracker:
        accelerator.end_training()
    if lock is not None:
        lock.close()
    return out


def _diverged(run_dir: Path, step: int, what: str, main: bool) -> None:
    """Stop a run whose loss (or weights) went non-finite: nothing of it is saved, its checkpoints stay."""
    from rgbdface.training.state import latest_checkpoint

    if main:
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"event": "diverged", "step": step, "why": what}) + "\n")
    ckpt = latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is {ckpt} (--resume goes on from it)" if ckpt else "no checkpoint had been written"
    raise InputError(f"step {step}: {what}, not finite; training stopped and nothing of this step was saved; "
                     f"{kept}; lower optim.lr, or check the data and the model")


def _check_finite(tensors: dict, run_dir: Path, step: int, main: bool) -> None:
    """Before anything is saved: every weight finite (one host sync, at save time only)."""
    import torch

    if not bool(torch.stack([t.detach().isfinite().all() for t in tensors.values()]).all()):
        _diverged(run_dir, step, "a weight is", main)


class RunningMeans:
    """Logged values summed where they are computed (the device) over a logging interval.

    Reading a device value on the host waits for all queued work (a host-device sync), so
    the loop adds tensors here each micro-step and reads them back once per log line.
    """

    def __init__(self):
        self.sums: dict = {}
        self.steps = 0  # optimizer steps in the interval

    def add(self, values: dict, weight: float = 1.0) -> None:
        for name, v in values.items():
            v = v.detach().float() * weight
            self.sums[name] = self.sums[name] + v if name in self.sums else v

    def pop(self, accelerator) -> dict[str, float]:
        """Means per optimizer step over the interval and over processes (one read-back); starts a new interval."""
        import torch

        names = sorted(self.sums)
        stacked = torch.stack([self.sums[n].reshape(()).to(accelerator.device) for n in names]) / max(self.steps, 1)
        means = accelerator.reduce(stacked, "mean").tolist()
        self.sums, self.steps = {}, 0
        return dict(zip(names, means))


def _digests(accelerator, params, digest) -> list[str]:
    """Each process's hash of its trained weights (they must agree after every synchronised step)."""
    import torch

    mine = digest(params)
    t = torch.tensor([int(mine, 16) & ((1 << 62) - 1)], dtype=torch.long, device=accelerator.device)
    return [format(int(v), "x") for v in accelerator.gather(t).cpu()]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint we resume from (they will be written again), and any line
    torn by a kill (not valid JSON)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step and "event" not in row:
            keep.append(line)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
        elif v is not None:
            out[f"{prefix}{k}"] = str(v)
    return out


def train(req: TrainRequest) -> Path:
    """Check the request, then train; returns the final model folder."""
    return run(plan(req))

