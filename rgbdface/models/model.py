"""The one loading core: an `RGBDFaceModel` folder ↔ modules on a device.

A model folder holds everything needed to run it, weights as safetensors only:

    rgbdface.json            stages reached, image size, latent channels, depth convention, and
                             crop_margin: the face-crop margin (face-box sizes on each side, see
                             rgbdface.data.face.square_box) of the data it was trained on; inputs
                             are cropped with it (older folders without it: DEFAULT_MARGIN)
    vae/                     diffusers AutoencoderKL (the latent codec)
    scheduler/               the training noise schedule (DDPM, 1000 steps)
    context.safetensors      the cached empty-prompt text embedding [1, L, D]
    unet/ reference_unet/    stage 1: joint RGB + depth denoiser and its ReferenceNet
    masked_unet/             stage 2: the masked (channel-wise inpainting) denoiser
    masked_reference_unet/   stage 2, only if its ReferenceNet was fine-tuned too
    motion/                  stage 3: motion.json (MotionConfig + temporal layout), motion.safetensors
                             (audio projection, audio attention, temporal modules; see motion.py)
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rgbdface.data.face import DEFAULT_MARGIN
from rgbdface.models.codec import LatentCodec
from rgbdface.models.denoiser import RGBDDenoiser
from rgbdface.models.folder import BUNDLED_MODEL, META_FILE, STAGE_NAMES, explain_load_errors, model_folder, read_meta
from rgbdface.utils import InputError, UsageError, atomic_dir

FORMAT_VERSION = 1


@dataclass
class DepthConvention:
    """How depth becomes a latent and back (DESIGN §1, README "Depth")."""

    normalization: str = "per-image 2%/98% quantiles of valid depth -> [-1, 1]"
    order: str = "larger = farther"
    invalid_value: float = 1.0  # invalid pixels are encoded as the far value
    valid_threshold: float = 0.9  # decoded depth above this counts as background in joint generation


@dataclass
class ModelMeta:
    stages: list[int] = field(default_factory=lambda: [0])  # stages reached (0 = built, untrained)
    image_size: int = 512  # pixels per side of the square face crop
    crop_margin: float = DEFAULT_MARGIN  # face-crop margin of the training data (dataset.json); inputs are cropped with it
    known_latents: str = "noised"  # stage 2: kept cells enter the noisy slots forward-diffused ("noised") or as is ("clean")
    depth_steps: Optional[int] = None  # image → depth denoising steps when the caller names none (None: 25)
    depth_flip: bool = False  # image → depth also reads the mirrored image and ensembles both, when the caller names nothing
    talk_guidance: Optional[float] = None  # talk's guidance on the reference when the caller names none (None: 1, off)
    latent_channels: int = 4
    depth: DepthConvention = field(default_factory=DepthConvention)
    base: str = ""  # what stage 0 was built from
    codec_trained: bool = True  # False: vae/ holds random weights (`init-model --tiny` without --vae), so nothing it decodes is an image
    extra: dict = field(default_factory=dict)  # per-stage records (training config, steps, ...)
    format_version: int = FORMAT_VERSION

    @property
    def stage(self) -> int:
        return max(self.stages)

    @property
    def known_clean(self) -> bool:
        """Stage 2 was trained with kept latents clean in the noisy slots (sampling must feed them so)."""
        return self.known_latents == "clean"

    @classmethod
    def from_dict(cls, d: dict) -> "ModelMeta":
        d = dict(d)
        d["depth"] = DepthConvention(**d.get("depth", {}))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class RGBDFaceModel(nn.Module):
    """Codec + denoisers + cached context + metadata; `from_pretrained` / `save_pretrained`."""

    def __init__(self, vae, unet, reference_unet, context: torch.Tensor, meta: ModelMeta, scheduler_config: dict,
                 masked_unet=None, masked_reference_unet=None, masked_vae=None, masked_scheduler_config: dict | None = None):
        super().__init__()
        self.codec = LatentCodec(vae)
        # Stage 2 may keep the codec and schedule it was trained with (take_masked(..., own_codec=True)); else it shares these.
        self.masked_codec = LatentCodec(masked_vae) if masked_vae is not None else self.codec
        self.masked_scheduler_config = dict(masked_scheduler_config) if masked_scheduler_config is not None else None
        self.joint = RGBDDenoiser(unet, reference_unet)
        self.masked = None
        if masked_unet is not None:
            # Without its own ReferenceNet the masked denoiser shares the joint one (and its bank).
            ref = masked_reference_unet if masked_reference_unet is not None else reference_unet
            self.masked = RGBDDenoiser(masked_unet, ref, bank=None if masked_reference_unet is not None else self.joint.bank)
        self.motion = None  # stage 3: a MotionDenoiser around self.joint (add_motion / from_pretrained)
        self.register_buffer("context", context.detach().clone(), persistent=False)  # [1, L, D]
        self.meta = meta
        self.scheduler_config = dict(scheduler_config)
        self.skipped: set[str] = set()  # parts not loaded (placeholders without weights; see from_pretrained's stages)
        self.loaded_stages: set[int] = set(meta.stages)

    # ----------------------------------------------------------------------------- properties
    @property
    def stage(self) -> int:
        return self.meta.stage

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (the VAE's, which every task loads)."""
        return next(self.codec.vae.parameters()).dtype

    @property
    def latent_size(self) -> int:
        return self.meta.image_size // self.codec.downsample

    def require_stage(self, stage: int, task: str) -> None:
        if stage not in self.meta.stages:
            have = ", ".join(f"{s} ({STAGE_NAMES.get(s, '?')})" for s in self.meta.stages)
            raise InputError(
                f"{task} needs a model that reached stage {stage} ({STAGE_NAMES[stage]}); this one has stages {have}"
            )
        if self.skipped and stage not in self.loaded_stages:
            raise InputError(f"{task} needs stage {stage} ({STAGE_NAMES[stage]}) but the model was loaded for stage "
                             f"{'/'.join(map(str, sorted(self.loaded_stages)))} only; load it with stages=None")

    def autocast(self):
        """fp16 autocast on CUDA when the weights are float32; nothing on CPU."""
        if self.device.type == "cuda" and self.dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def add_masked_denoiser(self, own_reference: bool = False) -> RGBDDenoiser:
        """Stage 2 starts here: the masked variant widened from the joint denoiser (see unet.py).

        With `own_reference`, the ReferenceNet is copied so that stage 2 can fine-tune it
        without touching stage 1's; otherwise the two denoisers share it.
        """
        from rgbdface.models.unet import expand_unet_for_masked

        unet = expand_unet_for_masked(copy.deepcopy(self.joint.unet), self.meta.latent_channels)
        if own_reference:
            self.masked = RGBDDenoiser(unet, copy.deepcopy(self.joint.reference_unet))
        else:
            self.masked = RGBDDenoiser(unet, self.joint.reference_unet, bank=self.joint.bank)
        return self.masked

    @property
    def masked_has_own_codec(self) -> bool:
        return self.masked_codec is not self.codec

    def take_masked(self, other: "RGBDFaceModel", own_codec: bool = False) -> RGBDDenoiser:
        """Stage 2 of another run: its masked denoiser, with the ReferenceNet it was trained with (kept as this
        model's masked ReferenceNet, so the joint one stays as it is).

        This lets stage 2 start from a different stage-1 run than the one joint generation and stage 3 use
        (the bundled recipe starts stage 2 from a stage 1 on the photos' own colours). By default the other run
        must share this model's codec and schedule. With `own_codec`, stage 2 keeps the other run's codec and
        schedule (saved as masked_vae/ and masked_scheduler/): depth estimation and depth-to-image then run
        exactly as in that model, while generation and talk use this one's. Raises InputError when `other` has
        no stage 2, or (without `own_codec`) its codec or schedule differ, or its latent layout or text context
        differ."""
        other.require_stage(2, "taking the masked denoiser")
        if other.masked is None:
            raise InputError("taking the masked denoiser: the other model has no masked denoiser loaded")
        codec, schedule = other.masked_codec, other.masked_schedule
        checks = [((self.meta.image_size, self.meta.latent_channels) == (other.meta.image_size, other.meta.latent_channels), "image size or latent channels"),
                  (torch.equal(self.context.cpu().float(), other.context.cpu().float()), "text context")]
        if not own_codec:
            checks += [(_same_weights(self.codec.vae, codec.vae), "latent codec (vae/)"), (self.scheduler_config == schedule, "noise schedule")]
        for ok, what in checks:
            if not ok:
                raise InputError(f"taking the masked denoiser: the two models' {what} differ; stage 2 must be trained on this model's "
                                 + ("latent layout" if own_codec else "codec and schedule, or kept with its own (own_codec)"))
        self.masked = RGBDDenoiser(copy.deepcopy(other.masked.unet), copy.deepcopy(other.masked.reference_unet))
        self.masked.to(device=self.device, dtype=self.dtype)
        if own_codec and not _same_weights(self.codec.vae, codec.vae):
            self.masked_codec = LatentCodec(copy.deepcopy(codec.vae)).to(device=self.device, dtype=self.dtype)
        else:
            self.masked_codec = self.codec
        self.masked_scheduler_config = dict(schedule) if own_codec and schedule != self.scheduler_config else None
        self.meta.stages = sorted(set(self.meta.stages) | {2})
        self.loaded_stages.add(2)
        self.meta.known_latents = other.meta.known_latents
        self.meta.depth_steps, self.meta.depth_flip = other.meta.depth_steps, other.meta.depth_flip
        if "stage2" in other.meta.extra:
            self.meta.extra["stage2"] = copy.deepcopy(other.meta.extra["stage2"])
        return self.masked

    def add_motion(self, config=None, motion_adapter_dir: str | Path | None = None):
        """Stage 3 starts here: audio and temporal attention around the joint denoiser (see motion.py).

        Temporal modules come from AnimateDiff motion-adapter weights in `motion_adapter_dir`
        (as the paper initialises them), else they are new with a zero output projection.
        Audio attention always starts at zero output, so the model first computes stage 1 per frame.
        """
        from rgbdface.models.motion import MotionConfig, MotionDenoiser
        from rgbdface.models.motion_adapter import load_motion_adapter

        config = config if config is not None else MotionConfig()
        if self.motion is not None:
            self.motion.uninstall()
        adapter = load_motion_adapter(motion_adapter_dir, self.joint.unet, config) if motion_adapter_dir is not None else None
        self.motion = MotionDenoiser(self.joint, config, adapter=adapter)
        for part in (self.motion.audio_proj, self.motion.audio_attn, self.motion.temporal):  # the joint parts are in place
            part.to(device=self.device)
            if self.dtype != torch.float32:
                part.to(dtype=self.dtype)
        return self.motion

    # ----------------------------------------------------------------------------- schedulers
    @property
    def masked_schedule(self) -> dict:
        """The schedule stage 2 was trained with: its own (take_masked(..., own_codec=True)) or this model's."""
        return self.masked_scheduler_config if self.masked_scheduler_config is not None else self.scheduler_config

    def noise_scheduler(self, masked: bool = False):
        """The training schedule (DDPM, as the base model was trained); `masked`: stage 2's."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.masked_schedule if masked else self.scheduler_config)

    def sampling_scheduler(self, name: str = "ddim", masked: bool = False):
        """'ddim', 'ddpm', or any diffusers scheduler class name, configured from the training schedule.

        Sampling steps are spaced "trailing" (the first step at t = T - 1, where training put pure
        noise; as Marigold samples) unless the model's schedule names a spacing: diffusers'
        default "leading" spacing starts at T - T/steps, a noise level the model never saw for
        pure noise, and with one step it would start at t = 1."""
        import diffusers

        aliases = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpm": "DPMSolverMultistepScheduler",
                   "euler": "EulerDiscreteScheduler", "unipc": "UniPCMultistepScheduler"}
        cls_name = aliases.get(name.lower(), name)
        cls = getattr(diffusers, cls_name, None)
        if cls is None or not hasattr(cls, "from_config") or not cls_name.endswith("Scheduler"):
            raise UsageError(f"--scheduler {name}: unknown scheduler; use ddim, ddpm, dpm, euler, unipc or a diffusers scheduler class name")
        return cls.from_config({"timestep_spacing": "trailing", **(self.masked_schedule if masked else self.scheduler_config)})

    # ----------------------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | Path, half: bool = False) -> Path:
        """Write the whole model folder atomically (safetensors weights, JSON configs).

        `half` stores the weights as float16 (half the size; the bundled model ships so);
        they load back as float32 holding exactly the float16 values.
        """
        from safetensors.torch import save_file

        self._require_whole("saving")
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            self.joint.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.joint.reference_unet.save_pretrained(tmp / "reference_unet", safe_serialization=True)
            if self.masked is not None:
                if self.masked_has_own_codec:
                    self.masked_codec.vae.save_pretrained(tmp / "masked_vae", safe_serialization=True)
                if self.masked_scheduler_config is not None:
                    (tmp / "masked_scheduler").mkdir()
                    (tmp / "masked_scheduler" / "scheduler_config.json").write_text(json.dumps(self.masked_scheduler_config, indent=2))
                self.masked.unet.save_pretrained(tmp / "masked_unet", safe_serialization=True)
                if self.masked.reference_unet is not self.joint.reference_unet:
                    self.masked.reference_unet.save_pretrained(tmp / "masked_reference_unet", safe_serialization=True)
            if self.motion is not None:
                self.motion.save(tmp / "motion")
            (tmp / "scheduler").mkdir()
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(self.scheduler_config, indent=2))
            save_file({"context": self.context.detach().float().cpu().contiguous()}, str(tmp / "context.safetensors"))
            (tmp / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2))
            _drop_source_paths(tmp)
            if half:
                _halve_weights(tmp)
        return path

    @classmethod
    @explain_load_errors
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        stages: set[int] | None = None) -> "RGBDFaceModel":
        """Load a model folder onto `device` with weights in `dtype` (half precision loads half the bytes
        onto the device, as Marigold's fp16 variant; no autocast then).

        `stages`: load only the weights these stages' tasks run (1: generate, 2: depth estimation,
        depth-to-image, relighting, 3: talk); the other UNets become placeholders without
        weights, which cost neither memory nor loading time. None loads everything.
        """
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from safetensors.torch import load_file

        path = model_folder(path)  # a training run folder means its model/
        meta = ModelMeta.from_dict(read_meta(path))
        if meta.format_version > FORMAT_VERSION:
            raise InputError(f"{path}: model format {meta.format_version} is newer than this rgbdface understands; upgrade rgbdface")
        needed = _needed_parts(path, stages)

        def unet(name):
            if not (path / name).is_dir():
                return None
            if name not in needed:
                with init_empty_weights():
                    u = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path / name))
                u._apply = lambda fn, recurse=True: u  # a placeholder: never moved nor cast
                return u
            return UNet2DConditionModel.from_pretrained(path / name, use_safetensors=True, local_files_only=True)

        vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=True, local_files_only=True)
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        masked_vae = masked_schedule = None
        if (path / "masked_unet").is_dir() and (path / "masked_vae").is_dir():
            masked_vae = AutoencoderKL.from_pretrained(path / "masked_vae", use_safetensors=True, local_files_only=True)
        if (path / "masked_unet").is_dir() and (path / "masked_scheduler").is_dir():
            masked_schedule = json.loads((path / "masked_scheduler" / "scheduler_config.json").read_text())
        context = load_file(str(path / "context.safetensors"))["context"]
        model = cls(vae, unet("unet"), unet("reference_unet"), context, meta, scheduler_config,
                    masked_unet=unet("masked_unet"), masked_reference_unet=unet("masked_reference_unet"),
                    masked_vae=masked_vae, masked_scheduler_config=masked_schedule)
        if (path / "motion").is_dir() and "motion" in needed:
            from rgbdface.models.motion import MotionDenoiser

            model.motion = MotionDenoiser.load(model.joint, path / "motion")
        elif 3 in meta.stages and not (path / "motion").is_dir():
            raise InputError(f"{path}: the model lists stage 3 but has no motion/ folder; it is incomplete, save it again")
        model.skipped = {p for p in ALL_PARTS if (path / p).is_dir() and p not in needed}
        model.loaded_stages = set(meta.stages) if stages is None else set(meta.stages) & set(stages)
        _own_storage(model, dtype)
        return model.to(device=device).eval()

    def _require_whole(self, what: str) -> None:
        if self.skipped:
            raise ValueError(f"{what} needs the whole model, but it was loaded without {', '.join(sorted(self.skipped))}; "
                             "load it with stages=None")

    def clone(self) -> "RGBDFaceModel":
        """A deep copy with freshly attached reference processors (and motion modules, if any)."""
        self._require_whole("clone")
        if self.motion is not None:  # copy the bare UNets, then rebuild the stage-3 wiring on the copy
            self.motion.uninstall()
            try:
                m = self._clone_base()
            finally:
                self.motion.install()
            from rgbdface.models.motion import MotionDenoiser

            m.motion = MotionDenoiser(m.joint, copy.deepcopy(self.motion.config), adapter=copy.deepcopy(self.motion.temporal))
            m.motion.audio_proj.load_state_dict(self.motion.audio_proj.state_dict())
            m.motion.audio_attn.load_state_dict(self.motion.audio_attn.state_dict())
            return m.to(self.device)
        return self._clone_base()

    def _clone_base(self) -> "RGBDFaceModel":
        m = RGBDFaceModel(
            copy.deepcopy(self.codec.vae), copy.deepcopy(self.joint.unet), copy.deepcopy(self.joint.reference_unet),
            self.context, copy.deepcopy(self.meta), self.scheduler_config,
            masked_unet=copy.deepcopy(self.masked.unet) if self.masked is not None else None,
            masked_reference_unet=(copy.deepcopy(self.masked.reference_unet)
                                   if self.masked is not None and self.masked.reference_unet is not self.joint.reference_unet else None),
            masked_vae=copy.deepcopy(self.masked_codec.vae) if self.masked_has_own_codec else None,
            masked_scheduler_config=self.masked_scheduler_config,
        )
        return m.to(self.device)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """The same weights, compared at float16 (a copy saved with save_pretrained(half=True) is the same)."""
    mine, theirs = a.state_dict(), b.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k].cpu().half(), theirs[k].cpu().half()) for k in mine)


ALL_PARTS = ("unet", "reference_unet", "masked_unet", "masked_reference_unet", "motion")


def _needed_parts(path: Path, stages: set[int] | None) -> set[str]:
    """The folder's parts that the tasks of `stages` run (None: all)."""
    if stages is None:
        return set(ALL_PARTS)
    needed = set()
    if 1 in stages or 3 in stages:
        needed |= {"unet", "reference_unet"}
    if 3 in stages:
        needed.add("motion")
    if 2 in stages:  # the masked denoiser with its own ReferenceNet, else the shared stage-1 one
        needed |= {"masked_unet", "masked_reference_unet" if (path / "masked_reference_unet").is_dir() else "reference_unet"}
    return needed


@torch.no_grad()
def _own_storage(module: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """Copy every weight out of the loaded (memory-mapped, unaligned) file buffers, as `dtype`.

    CPU kernels pick code paths by memory alignment, so without this a loaded model could
    differ from the saved one in the last bits; it also frees the files for replacement.
    """
    for t in list(module.parameters()) + list(module.buffers()):
        t.data = t.data.to(dtype).clone() if t.is_floating_point() else t.data.clone()


def _drop_source_paths(folder: Path) -> None:
    """Remove diffusers' `_name_or_path` (the folder a part was loaded from) from the saved configs: a
    model folder does not record where it was built."""
    for f in folder.glob("*/config.json"):
        config = json.loads(f.read_text())
        if config.pop("_name_or_path", None) is not None:
            f.write_text(json.dumps(config, indent=2) + "\n")


def _halve_weights(folder: Path) -> None:
    """Rewrite every weight file under `folder` (but the cached context) with float16 tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for f in folder.rglob("*.safetensors"):
        if f.name == "context.safetensors":
            continue
        with safe_open(str(f), "pt") as h:
            meta = h.metadata()
            tensors = {k: h.get_tensor(k) for k in h.keys()}
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, str(f), metadata=meta)


def load_model(path: str | Path | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
               stages: set[int] | None = None) -> RGBDFaceModel:
    """Load a model folder, or the bundled default when `path` is None (`stages`: see from_pretrained)."""
    return RGBDFaceModel.from_pretrained(model_folder(path), device=device, dtype=dtype, stages=stages)
