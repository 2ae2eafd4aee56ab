"""Typed training configuration, recipes and `--set key=value` overrides.

A run is configured by one `RunConfig`. Recipes are JSON files in `rgbdface/configs/`
(`tiny.json`, `sd15.json`) with a `defaults` section and one section per stage
(`stage1`, `stage2`, `stage3`); a command resolves `defaults` ← its stage's section ←
a user file ← `--set` overrides, in that order. The resolved config is written beside
every checkpoint and into the final model's `meta.extra`.

Sections that belong to one stage only (`masks` for stage 2, `motion` for stage 3) are
absent from the other stages' configs, so setting one of their keys there is an error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from rgbdface.utils import InputError, UsageError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
STAGE_SECTIONS = ("defaults", "stage1", "stage2", "stage3")


@dataclass
class OptimConfig:
    lr: float = 1e-5  # learning rate (AdamW), constant after warm-up (paper §5.1: 1e-5)
    # adamw (torch, float32 moments: 8 bytes per trained parameter) | adamw8bit (bitsandbytes' block-wise
    # 8-bit moments: 2 bytes; what lets stage 1 at 512 px fit a 24 GB GPU, see README "Scaling")
    optimizer: str = "adamw"
    warmup_steps: int = 0  # linear warm-up from 0 over this many optimizer steps
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    eps: float = 1e-8  # AdamW epsilon
    batch_size: int = 4  # samples (stage 3: clips) per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step; effective batch = batch_size * grad_accum * processes
    max_steps: int = 1000  # optimizer steps in total (a resumed run stops at the same step)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    ema: bool = False  # keep an exponential moving average of the trained weights
    ema_decay: float = 0.9999  # EMA decay per optimizer step
    ema_for_final: bool = True  # with ema: the final model gets the EMA weights (checkpoints keep both)


@dataclass
class DataConfig:
    studio_fraction: Optional[float] = None  # share of samples drawn from studio data (None = as in the dataset)
    single_sample: str = "skip"  # identity with one sample (no other view for the reference): skip | error | mirror
    cache_latents: bool = False  # keep each sample's VAE latents in memory after first use (small datasets)
    hflip: float = 0.0  # stages 1-2: per-sample probability of mirroring target, depth and reference together
    num_workers: int = 0  # data-loading worker processes per training process
    exclude_identities: list[str] = field(default_factory=list)  # train without these identities (e.g. one held out for evaluation)
    photo_background: float = 0.0  # probability that a studio sample (and its studio reference) is drawn over its identity's photo (a mixed identity's: the photo of its skin)
    random_background: float = 0.0  # probability that a studio sample not drawn over a photo is drawn (with its studio reference) over one random colour field
    colour_jitter: float = 0.0  # probability of one random colour transform on a sample's RGB, its reference and motion frames
    colour_hue: float = 0.0  # share of colour transforms that also turn every hue by a random angle (skin may turn blue)
    same_reference: float = 0.0  # stage 1: probability that a sample is its own reference


@dataclass
class PrecisionConfig:
    mixed_precision: str = "auto"  # auto (fp16 on CUDA, none on CPU) | no | fp16 | bf16
    gradient_checkpointing: bool = False  # recompute activations in backward (CUDA memory saver)
    allow_tf32: bool = True  # TF32 matmuls on Ampere+ GPUs


@dataclass
class LossConfig:
    reference_dropout: float = 0.1  # per-sample probability of dropping the reference (enables CFG on it)
    depth_weight: float = 1.0  # weight of the depth half of eq. (5) (1 = the paper's plain MSE)
    depth_background_weight: float = 1.0  # weight of depth-latent cells whose pixels have no valid depth
    # stage 3: weight of the latent cells (RGB and depth) in each frame's mouth region, from its landmarks: the
    # part of a frame that the speech moves is a few cells, and at weight 1 its error is lost in the whole frame's
    mouth_weight: float = 1.0


@dataclass
class MaskConfig:
    p_joint: float = 0.25  # both domains generated (m_rgb = m_depth = 1): keeps joint generation
    p_image_to_depth: float = 0.35  # RGB known, depth generated (depth estimation)
    p_depth_to_image: float = 0.3  # depth known, RGB generated (depth-conditioned generation)
    p_boxes: float = 0.1  # random rectangles per domain (spatial inpainting, e.g. depth edits)
    box_min: float = 0.25  # smallest box side, as a share of the latent side
    box_max: float = 0.75  # largest box side, as a share of the latent side
    known_weight: float = 0.0  # loss weight of kept (mask 0) latent cells; their noise is given away by the input
    # How kept cells fill the denoiser's noisy-latent slots: "noised" = the forward-diffused known latent
    # (inpainting style), "clean" = the known latent itself, so the pretrained input path sees the image
    # at every noise level (conditioning style); recorded in the model, sampling follows it.
    known_latents: str = "noised"
    own_reference: bool = False  # fine-tune a copy of the ReferenceNet too (else it stays frozen and shared)
    self_reference: float = 0.0  # image -> depth samples: probability that the reference is the sample's own image
    final_step: float = 0.0  # image -> depth samples: probability of training at t = T - 1 (where one-step estimation starts)


@dataclass
class MotionTrainConfig:
    frames: int = 14  # frames generated per clip (paper §5.1)
    motion_frames: int = 4  # ground-truth frames preceding the clip, fed through the ReferenceNet
    first_clip_prob: float = 0.05  # share of clips whose motion frames are the reference repeated (as at inference start)
    audio_encoder: str = "mel"  # mel (offline log-mel) | wav2vec2 (needs audio_model_dir)
    audio_model_dir: str = ""  # local wav2vec2 folder (transformers format, safetensors)
    audio_window: int = 5  # audio frames per video frame (±2, clamped at the clip ends)
    audio_normalise: bool = True  # mel: features relative to each clip's level (gain-independent); a model with motion modules keeps its own
    # the noise of a clip's frames: "frame" = fresh per frame (eq. 5 per frame) or "video" = one noise for every frame,
    # as talk starts a video by default
    noise: str = "frame"
    # what learns: "all" = audio projection, audio attention and temporal modules; "audio" = the audio parts only,
    # the temporal modules kept as the model has them (to go on from a finished stage 3 without moving its frames)
    train: str = "all"
    motion_adapter_dir: str = ""  # local AnimateDiff motion-adapter folder to initialise temporal modules ('' = fresh)
    fps: float = 25.0  # video frame rate the audio features are resampled to


@dataclass
class LogConfig:
    log_every: int = 10  # optimizer steps between log-file lines
    checkpoint_every: int = 500  # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk (0 = all)
    sample_every: int = 500  # optimizer steps between sample grids (0 = off)
    sample_count: int = 2  # references per sample grid
    sample_steps: int = 20  # denoising steps for sample grids (DDIM)


@dataclass
class RunConfig:
    stage: int = 1  # 1 = train, 2 = finetune-mask, 3 = train-motion (set by the command)
    seed: int = 0  # seeds data order, references, masks, noise and timesteps
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)
    masks: Optional[MaskConfig] = None  # stage 2 only
    motion: Optional[MotionTrainConfig] = None  # stage 3 only

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def effective_batch(self) -> int:
        return self.optim.batch_size * self.optim.grad_accum


SECTION_TYPES = {"optim": OptimConfig, "data": DataConfig, "precision": PrecisionConfig, "loss": LossConfig,
                 "log": LogConfig, "masks": MaskConfig, "motion": MotionTrainConfig}


def default_config(stage: int) -> RunConfig:
    return RunConfig(stage=stage, masks=MaskConfig() if stage == 2 else None,
                     motion=MotionTrainConfig() if stage == 3 else None)


# ----------------------------------------------------------------------------- values
def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a JSON value or a command-line string to the field type `tp`; InputError if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, inner, key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config {key}: expected a list (comma-separated on the command line), got {value!r}")
        return [_coerce(v, args[0], key) for v in value]
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise InputError(f"config {key}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise InputError(f"config {key}: {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    raise InputError(f"config {key}: unsupported type {tp}")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(cfg: RunConfig, key: str, value: Any) -> None:
    """Set the dotted `key` (e.g. 'optim.lr') on `cfg`, checking that it exists and the value fits."""
    parts = key.split(".")
    top = _field_types(RunConfig)
    if parts[0] not in top:
        raise InputError(f"unknown config key {key!r}; known sections: {', '.join(top)}")
    if parts[0] in SECTION_TYPES:
        section = getattr(cfg, parts[0])
        stage_only = {"masks": 2, "motion": 3}
        if section is None:
            raise InputError(f"config key {key!r} applies to stage {stage_only[parts[0]]} only, not to stage {cfg.stage}")
        if len(parts) == 1:
            if not isinstance(value, dict):
                raise InputError(f"config {key}: expected a section (JSON object)")
            for k, v in value.items():
                _apply(cfg, f"{key}.{k}", v)
            return
        if len(parts) != 2:
            raise InputError(f"unknown config key {key!r}")
        types = _field_types(type(section))
        if parts[1] not in types:
            raise InputError(f"unknown config key {key!r}; {parts[0]} has: {', '.join(types)}")
        setattr(section, parts[1], _coerce(value, types[parts[1]], key))
    else:
        if len(parts) != 1:
            raise InputError(f"unknown config key {key!r}")
        if parts[0] == "stage":
            if int(value) != cfg.stage:
                raise InputError(f"config stage={value} does not match this command (stage {cfg.stage})")
            return
        setattr(cfg, parts[0], _coerce(value, top[parts[0]], key))


def apply_dict(cfg: RunConfig, d: dict, where: str) -> None:
    if not isinstance(d, dict):
        raise InputError(f"{where}: expected a JSON object")
    for k, v in d.items():
        if isinstance(v, dict) and k in SECTION_TYPES and getattr(cfg, k) is None:
            continue  # a section of another stage in a shared file: not ours
        _apply(cfg, k, v)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file; use tiny, sd15 or a JSON file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"--config {path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def recipe_path(name: str) -> Path:
    """'tiny' / 'sd15' → the shipped recipe; anything else is a path to a JSON file."""
    shipped = CONFIG_DIR / f"{name}.json"
    if "/" not in name and not name.endswith(".json") and shipped.is_file():
        return shipped
    if "/" not in name and not name.endswith(".json"):
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise InputError(f"--config {name}: no such recipe; use one of {names} or a JSON file")
    return Path(name)


def resolve_config(stage: int, recipe: str = "tiny", overrides: list[str] | None = None) -> RunConfig:
    """The run's config: recipe defaults ← recipe stage section ← `--set key=value` overrides.

    A recipe file has sections `defaults`, `stage1`, `stage2`, `stage3`; a file without them
    (e.g. a `config.json` saved with a checkpoint) is one flat RunConfig.
    """
    cfg = default_config(stage)
    path = recipe_path(recipe)
    d = _read_json(path)
    if isinstance(d, dict) and d and set(d) <= set(STAGE_SECTIONS):
        apply_dict(cfg, d.get("defaults", {}), f"{path} (defaults)")
        apply_dict(cfg, d.get(f"stage{stage}", {}), f"{path} (stage{stage})")
    else:
        if isinstance(d, dict) and "stage" in d and int(d["stage"]) != stage:
            raise InputError(f"--config {path}: a stage-{d['stage']} config, but this command trains stage {stage}")
        apply_dict(cfg, d, str(path))
    validate(cfg)  # the recipe alone: a bad file is bad input (exit 1)
    apply_overrides(cfg, overrides or [])  # then --set: a bad value is a usage error (exit 2)
    return cfg


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> None:
    """`--set key=value` items, in order, on top of `cfg`, then the whole config checked.

    A bad item is a usage error (exit 2), like any bad option value; `cfg` must be valid before.
    """
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
        k, v = item.split("=", 1)
        try:
            _apply(cfg, k.strip(), v.strip())
        except InputError as e:
            raise UsageError(f"--set {item}: {e}") from None
    if overrides:
        validate(cfg, UsageError, where="--set: ")


def _non_finite(cfg: RunConfig) -> str | None:
    """The first float value of `cfg` that is NaN or infinite, as 'key=value'."""
    for name in SECTION_TYPES:
        section = getattr(cfg, name)
        if section is None:
            continue
        for f in dataclasses.fields(section):
            v = getattr(section, f.name)
            for x in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(x, float) and not math.isfinite(x):
                    return f"{name}.{f.name}={v}"
    return None


def validate(cfg: RunConfig, error: type[Exception] = InputError, where: str = "") -> None:
    """Values that type-check but cannot work: one line each (raised as `error`, the message after `where`)."""
    bad = _non_finite(cfg)
    if bad is not None:
        raise error(f"{where}config {bad}: every number must be finite (no nan or inf)")
    o = cfg.optim
    checks = [
        (0 <= cfg.seed < 2**63, f"seed must be in [0, 2**63), got {cfg.seed}"),
        (o.lr > 0, f"optim.lr must be > 0, got {o.lr}"),
        (o.eps > 0, f"optim.eps must be > 0, got {o.eps}"),
        (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
        (all(0 <= b < 1 for b in o.betas), f"optim.betas must be in [0, 1), got {o.betas}"),
        (o.optimizer in ("adamw", "adamw8bit"), f"optim.optimizer must be adamw or adamw8bit, got {o.optimizer!r}"),
        (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
        (o.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {o.grad_accum}"),
        (o.max_steps >= 1, f"optim.max_steps must be >= 1, got {o.max_steps}"),
        (o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}"),
        (o.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 = off), got {o.grad_clip}"),
        (0 <= o.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {o.ema_decay}"),
        (cfg.data.studio_fraction is None or 0 <= cfg.data.studio_fraction <= 1,
         f"data.studio_fraction must be in [0, 1] or none, got {cfg.data.studio_fraction}"),
        (cfg.data.single_sample in ("skip", "error", "mirror"), f"data.single_sample must be skip, error or mirror, got {cfg.data.single_sample!r}"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (cfg.precision.mixed_precision in ("auto", "no", "fp16", "bf16"),
         f"precision.mixed_precision must be auto, no, fp16 or bf16, got {cfg.precision.mixed_precision!r}"),
        (0 <= cfg.data.hflip <= 1, f"data.hflip must be in [0, 1], got {cfg.data.hflip}"),
        (0 <= cfg.data.photo_background <= 1, f"data.photo_background must be in [0, 1], got {cfg.data.photo_background}"),
        (0 <= cfg.data.random_background <= 1, f"data.random_background must be in [0, 1], got {cfg.data.random_background}"),
        (0 <= cfg.data.colour_jitter <= 1, f"data.colour_jitter must be in [0, 1], got {cfg.data.colour_jitter}"),
        (0 <= cfg.data.colour_hue <= 1, f"data.colour_hue must be in [0, 1], got {cfg.data.colour_hue}"),
        (0 <= cfg.data.same_reference <= 1, f"data.same_reference must be in [0, 1], got {cfg.data.same_reference}"),
        (0 <= cfg.loss.reference_dropout <= 1, f"loss.reference_dropout must be in [0, 1], got {cfg.loss.reference_dropout}"),
        (cfg.loss.depth_weight >= 0 and cfg.loss.depth_background_weight >= 0 and cfg.loss.mouth_weight >= 0, "loss weights must be >= 0"),
        (cfg.log.log_every >= 1, "log.log_every must be >= 1"),
        (cfg.log.checkpoint_every >= 0 and cfg.log.sample_every >= 0 and cfg.log.keep_checkpoints >= 0,
         "log.checkpoint_every, log.sample_every and log.keep_checkpoints must be >= 0"),
        (cfg.log.sample_count >= 1 and cfg.log.sample_steps >= 1, "log.sample_count and log.sample_steps must be >= 1"),
    ]
    if cfg.masks is not None:
        m = cfg.masks
        ps = (m.p_joint, m.p_image_to_depth, m.p_depth_to_image, m.p_boxes)
        checks += [
            (all(p >= 0 for p in ps) and sum(ps) > 0, "masks.p_* must be >= 0 and not all 0"),
            (m.known_weight >= 0, "masks.known_weight must be >= 0"),
            (0 <= m.self_reference <= 1, f"masks.self_reference must be in [0, 1], got {m.self_reference}"),
            (0 <= m.final_step <= 1, f"masks.final_step must be in [0, 1], got {m.final_step}"),
            (m.known_latents in ("noised", "clean"), "masks.known_latents must be 'noised' or 'clean'"),
            (0 < m.box_min <= m.box_max <= 1, f"masks.box_min/box_max must satisfy 0 < min <= max <= 1, got {m.box_min}/{m.box_max}"),
        ]
    if cfg.motion is not None:
        mo = cfg.motion
        checks += [
            (mo.frames >= 1, f"motion.frames must be >= 1, got {mo.frames}"),
            (mo.motion_frames >= 0, f"motion.motion_frames must be >= 0, got {mo.motion_frames}"),
            (0 <= mo.first_clip_prob <= 1, "motion.first_clip_prob must be in [0, 1]"),
            (mo.audio_encoder in ("mel", "wav2vec2"), f"motion.audio_encoder must be mel or wav2vec2, got {mo.audio_encoder!r}"),
            (mo.audio_window >= 1 and mo.audio_window % 2 == 1, f"motion.audio_window must be odd and >= 1, got {mo.audio_window}"),
            (mo.fps > 0, "motion.fps must be > 0"),
            (mo.noise in ("video", "frame"), f"motion.noise must be video or frame, got {mo.noise!r}"),
            (mo.train in ("all", "audio"), f"motion.train must be all or audio, got {mo.train!r}"),
        ]
    for ok, msg in checks:
        if not ok:
            raise error(where + msg)


def config_from_dict(d: dict) -> RunConfig:
    """Rebuild a saved (resolved) config exactly."""
    cfg = default_config(int(d.get("stage", 1)))
    apply_dict(cfg, {k: v for k, v in d.items() if v is not None}, "saved config")
    return cfg
