"""Stage-3 modules: zero-init keeps stage 1, trainable set, audio/temporal/motion effects, AnimateDiff weights, save/load."""

import copy

import pytest
import torch
from einops import rearrange

from motion_helpers import perturb, tiny_motion_model
from rgbdface.models.model import RGBDFaceModel
from rgbdface.models.motion import MotionConfig
from rgbdface.models.motion_adapter import original_to_diffusers_names
from rgbdface.models.temporal import temporal_positions
from rgbdface.utils import InputError

F, N, K, A = 4, 4, 5, 80


@pytest.fixture(scope="module")
def model():
    return tiny_motion_model()


def _inputs(m, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = m.latent_size
    return dict(
        sample=torch.randn(b, F, 8, s, s, generator=g),
        timestep=torch.tensor([700, 300][:b]),
        context=m.context,
        audio=torch.randn(b, F, K, A, generator=g),
        reference=torch.randn(b, 4, s, s, generator=g),
        motion=torch.randn(b, N, 4, s, s, generator=g),
    )


def _stage1(m, x):
    """The same inputs through the bare stage-1 joint denoiser, frame by frame."""
    outs = []
    for i in range(x["sample"].shape[0]):
        t = x["timestep"][i].repeat(F)
        outs.append(m.joint(x["sample"][i], t, m.context, reference=x["reference"][i : i + 1]))
    m.joint.clear_reference()
    return torch.stack(outs)


@torch.no_grad()
def test_zero_init_leaves_stage1_predictions_unchanged(model):
    x = _inputs(model)
    out = model.motion(**x)
    assert out.shape == x["sample"].shape
    ref = _stage1(model, x)
    assert (out - ref).abs().max() <= 1e-6
    # With the reference dropped (the unconditional half of CFG), it matches stage 1 without a reference.
    dropped = model.motion(**x, keep=torch.tensor([False]))
    model.motion.clear()
    plain = model.joint(x["sample"][0], x["timestep"].repeat(F), model.context)
    assert (dropped[0] - plain).abs().max() <= 1e-6
    assert (dropped - out).abs().max() > 1e-4


@torch.no_grad()
def test_audio_and_temporal_modules_act_once_moved_from_zero():
    m = tiny_motion_model()
    x = _inputs(m)
    base = m.motion(**x)
    perturb(m.motion.audio_attn)
    with_audio = m.motion(**x)
    assert (with_audio - base).abs().max() > 1e-3
    other_audio = m.motion(**(x | {"audio": torch.randn_like(x["audio"])}))
    assert (other_audio - with_audio).abs().max() > 1e-3
    # Motion frames change nothing while the temporal modules are zero ...
    assert torch.equal(m.motion(**(x | {"motion": torch.randn_like(x["motion"])})), with_audio)
    # ... and do once they are not.
    perturb(m.motion.temporal)
    a = m.motion(**x)
    b = m.motion(**(x | {"motion": torch.randn_like(x["motion"])}))
    assert (a - b).abs().max() > 1e-3
    # Frames now see each other: changing the first frame's noise changes the last frame's prediction.
    moved = x["sample"].clone()
    moved[:, 0] += 1.0
    c = m.motion(**(x | {"sample": moved}))
    assert (c[:, F - 1] - a[:, F - 1]).abs().max() > 1e-4
    # The bare joint denoiser (per-image generation) is untouched by the stage-3 modules.
    m.motion.clear()
    plain = m.joint(x["sample"][0], x["timestep"].repeat(F), m.context)
    m.motion.uninstall()
    assert torch.equal(plain, m.joint(x["sample"][0], x["timestep"].repeat(F), m.context))


def test_trainable_parameters_are_only_the_stage3_modules(model):
    trainable = {id(p) for p in model.motion.trainable_parameters()}
    frozen = {id(p) for p in [*model.joint.unet.parameters(), *model.joint.reference_unet.parameters(), *model.codec.parameters()]}
    assert trainable and not trainable & frozen
    own = {id(p) for mod in (model.motion.audio_proj, model.motion.audio_attn, model.motion.temporal) for p in mod.parameters()}
    assert trainable == own
    assert set(model.motion.motion_state_dict()) == {
        f"{part}.{k}" for part in ("audio_proj", "audio_attn", "temporal") for k in getattr(model.motion, part).state_dict()}


def test_gradients_reach_the_trainable_modules_only():
    m = tiny_motion_model()
    for p in m.parameters():
        p.requires_grad_(False)
    for p in m.motion.trainable_parameters():
        p.requires_grad_(True)
    x = _inputs(m)
    m.motion(**x).square().mean().backward()
    grads = {n: p.grad for n, p in m.motion.named_parameters() if p.requires_grad}
    # The zero-initialised output layers still learn (the layers before them start with zero gradient).
    outs = [n for n in grads if (n.startswith("audio_attn.") and ".to_out.0." in n) or n.endswith("proj_out.weight")]
    assert len(outs) == 2 * 7 + 10
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in outs), [n for n in outs if grads[n] is None]
    assert all(p.grad is None for p in m.joint.parameters())


def test_temporal_modules_sit_after_every_layer_and_motion_features_are_recorded(model):
    positions = temporal_positions(model.joint.unet)
    # tiny UNet: 3 down blocks × 1 layer, the mid block, 3 up blocks × 2 layers
    assert [p for p, _, _ in positions] == [
        "down_blocks.0.attentions.0", "down_blocks.1.attentions.0", "down_blocks.2.resnets.0", "mid_block.attentions.0",
        "up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.1.attentions.0", "up_blocks.1.attentions.1",
        "up_blocks.2.attentions.0", "up_blocks.2.attentions.1"]
    assert len(model.motion.audio_attn) == sum(n.endswith("attn2.processor") for n in model.joint.unet.attn_processors) == 7
    x = _inputs(model)
    model.motion.clear()
    with torch.no_grad():
        model.motion.set_motion(x["motion"], model.context)
    feats = model.motion.state.motion
    assert set(feats) == {p for p, _, _ in positions}
    assert feats["down_blocks.0.attentions.0"].shape == (N, 32, 8, 8)
    assert feats["mid_block.attentions.0"].shape == (N, 64, 2, 2)
    assert not model.joint.bank  # recording motion frames does not touch the reference features
    model.motion.clear()


def _tiny_adapter(model, seed=1, **overrides):
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    c = model.joint.unet.config
    kw = dict(block_out_channels=tuple(c.block_out_channels), motion_layers_per_block=c.layers_per_block,
              motion_num_attention_heads=4, motion_norm_num_groups=8, motion_max_seq_length=24)
    return MotionAdapter(**(kw | overrides))


def test_animatediff_adapter_loads_from_a_diffusers_folder(model, tmp_path):
    adapter = _tiny_adapter(model)
    adapter.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    m = tiny_motion_model()
    m.add_motion(MotionConfig.tiny(), motion_adapter_dir=tmp_path / "adapter")
    for k, v in adapter.state_dict().items():
        assert torch.equal(m.motion.temporal.state_dict()[k], v), k
    x = _inputs(m)
    with torch.no_grad():  # pretrained temporal weights act from the start
        assert (m.motion(**x) - _stage1(m, x)).abs().max() > 1e-3
    # An adapter for another layout is refused with one line.
    _tiny_adapter(model, block_out_channels=(32, 32, 64)).save_pretrained(tmp_path / "bad", safe_serialization=True)
    with pytest.raises(InputError, match="channels"):
        tiny_motion_model().add_motion(MotionConfig.tiny(), motion_adapter_dir=tmp_path / "bad")


def test_animatediff_adapter_loads_from_original_names(model, tmp_path):
    from safetensors.torch import save_file

    adapter = _tiny_adapter(model, seed=2)
    renames = [(".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."), (".norm1.", ".norms.0."),
               (".norm2.", ".norms.1."), (".norm3.", ".ff_norm.")]
    original = {}
    for k, v in adapter.state_dict().items():
        if k.endswith("pos_embed.pe"):
            continue
        block, rest = k.split(".motion_modules.", 1)
        j, rest = rest.split(".", 1)
        for new, old in renames:
            rest = rest.replace(new, old)
        original[f"{block}.motion_modules.{j}.temporal_transformer.{rest}"] = v.contiguous()
    save_file(original, str(tmp_path / "mm_tiny.safetensors"))
    assert original_to_diffusers_names(original).keys() <= adapter.state_dict().keys()
    m = tiny_motion_model()
    m.add_motion(MotionConfig.tiny(temporal_heads=4), motion_adapter_dir=tmp_path / "mm_tiny.safetensors")
    own = m.motion.temporal.state_dict()
    for k, v in adapter.state_dict().items():
        if not k.endswith(".pe"):
            assert torch.equal(own[k], v), k
    with pytest.raises(InputError, match="no such"):
        m.add_motion(MotionConfig.tiny(), motion_adapter_dir=tmp_path / "missing")


@torch.no_grad()
def test_save_load_is_exact_and_clone_keeps_motion(tmp_path):
    m = tiny_motion_model()
    perturb(m.motion.audio_attn, seed=3)
    perturb(m.motion.temporal, seed=4)
    torch.nn.init.normal_(m.motion.audio_proj.net[0].weight)
    m.motion.config.audio_folder = "unused-for-mel"
    m.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "motion" / "motion.safetensors").is_file()
    loaded = RGBDFaceModel.from_pretrained(tmp_path / "m")
    assert loaded.meta.stages == [0, 1, 3] and loaded.motion.config == m.motion.config
    a, b = m.motion.motion_state_dict(), loaded.motion.motion_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = _inputs(m)
    assert torch.equal(m.motion(**x), loaded.motion(**x))
    twin = m.clone()
    assert torch.equal(twin.motion(**x), m.motion(**x))
    perturb(twin.motion.temporal, seed=9)  # the copy is independent
    assert not torch.equal(twin.motion(**x), m.motion(**x))


def test_audio_normalise_is_saved_and_a_record_without_it_means_raw_log_mel(tmp_path):
    import json
    from pathlib import Path

    from motion_helpers import speech_like
    from rgbdface.models.motion import MOTION_CONFIG

    x = speech_like(1.0)
    m = tiny_motion_model()
    m.motion.config.audio_normalise = True
    m.save_pretrained(tmp_path / "m")
    loaded = RGBDFaceModel.from_pretrained(tmp_path / "m")
    assert loaded.motion.config.audio_normalise is True
    enc = loaded.motion.audio_encoder()
    assert enc.normalise and torch.allclose(enc.video_features(x * 7.0), enc.video_features(x), atol=1e-4)

    record_path = tmp_path / "m" / "motion" / MOTION_CONFIG  # a model folder written before the setting existed
    record = json.loads(record_path.read_text())
    del record["config"]["audio_normalise"]
    record_path.write_text(json.dumps(record))
    old = RGBDFaceModel.from_pretrained(tmp_path / "m").motion
    assert old.config.audio_normalise is False
    feats = old.audio_encoder().native(torch.from_numpy(x))
    assert torch.equal(feats, torch.log(old.audio_encoder().filters @ torch.stft(
        torch.from_numpy(x), n_fft=400, hop_length=160, window=torch.hann_window(400), center=True,
        pad_mode="reflect", return_complex=True).abs().square() + 1e-6).T)
    # the bundled model was trained with level-normalised mel features and says so
    shipped = Path(__file__).parents[1] / "rgbdface" / "weights" / "rgbdface-tiny" / "motion" / MOTION_CONFIG
    assert json.loads(shipped.read_text())["config"]["audio_normalise"] is True


def test_stage3_without_motion_folder_is_refused(tmp_path):
    from rgbdface.models.builder import build_tiny

    m = build_tiny(32)
    m.meta.stages = [0, 1, 3]
    m.save_pretrained(tmp_path / "m")
    with pytest.raises(InputError, match="motion/"):
        RGBDFaceModel.from_pretrained(tmp_path / "m")


def test_config_checks():
    with pytest.raises(ValueError, match="audio_encoder"):
        MotionConfig(audio_encoder="mfcc")
    with pytest.raises(ValueError, match="temporal_max_frames"):
        MotionConfig(frames=30, motion_frames=4)
    with pytest.raises(ValueError, match="odd"):
        MotionConfig(audio_window=4)
