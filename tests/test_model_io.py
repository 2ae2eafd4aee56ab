"""The loading core: save → load is exact; the SD-1.5-layout builder; bad folders."""

import json

import numpy as np
import pytest
import torch

from rgbdface.models.builder import build_from_sd15
from rgbdface.models.model import META_FILE, RGBDFaceModel, load_model
from rgbdface.pipelines.generate import generate
from rgbdface.utils import InputError


def _ref(size=40):
    return (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)


def test_save_load_reproduces_samples_exactly(tiny_model, tiny_model_dir):
    loaded = load_model(tiny_model_dir)
    a = generate(tiny_model, _ref(), num_samples=2, steps=3, guidance=1.5, seed=7)
    b = generate(loaded, _ref(), num_samples=2, steps=3, guidance=1.5, seed=7)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    for (k, v), (k2, v2) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert torch.equal(tiny_model.context, loaded.context)


def test_model_folder_contents(tiny_model_dir):
    meta = json.loads((tiny_model_dir / META_FILE).read_text())
    assert meta["stages"] == [0] and meta["image_size"] == 32 and meta["latent_channels"] == 4
    assert meta["depth"]["order"] == "larger = farther"
    weights = list(tiny_model_dir.rglob("*.safetensors"))
    assert {p.parent.name for p in weights} >= {"vae", "unet", "reference_unet", tiny_model_dir.name}
    assert not [p for p in tiny_model_dir.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]


def test_a_saved_model_does_not_record_where_it_was_loaded_from(tiny_model_dir, tmp_path):
    loaded = load_model(tiny_model_dir)  # diffusers remembers each part's source folder
    assert str(loaded.joint.unet.config._name_or_path) == str(tiny_model_dir / "unet")
    loaded.save_pretrained(tmp_path / "again")
    configs = list((tmp_path / "again").glob("*/config.json"))
    assert len(configs) >= 3
    for f in configs:
        text = f.read_text()
        assert "_name_or_path" not in text and str(tiny_model_dir) not in text, f
    resaved = load_model(tmp_path / "again")
    for (k, v), (k2, v2) in zip(loaded.state_dict().items(), resaved.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_seed_controls_samples(tiny_model):
    a = generate(tiny_model, _ref(), steps=2, seed=1)
    b = generate(tiny_model, _ref(), steps=2, seed=1)
    c = generate(tiny_model, _ref(), steps=2, seed=2)
    assert np.array_equal(a.rgb, b.rgb)
    assert not np.array_equal(a.depth, c.depth)


def test_sd15_builder_loads_and_samples(sd15_dir, tmp_path):
    model = build_from_sd15(sd15_dir, image_size=32)
    assert model.joint.unet.config.in_channels == 8 and model.joint.reference_unet.config.in_channels == 4
    assert model.context.shape == (1, 77, 32)
    assert model.codec.scaling_factor == pytest.approx(0.18215)
    model.save_pretrained(tmp_path / "m")
    loaded = RGBDFaceModel.from_pretrained(tmp_path / "m")
    out = generate(loaded, _ref(), num_samples=1, steps=2)
    assert out.rgb.shape == (1, 32, 32, 3) and np.isfinite(out.depth).all()


def test_sd15_builder_refuses_incomplete_or_pickled_folders(sd15_dir, tmp_path):
    with pytest.raises(InputError, match="missing"):
        build_from_sd15(tmp_path)
    import shutil

    bad = tmp_path / "pickled"
    shutil.copytree(sd15_dir, bad)
    for f in (bad / "unet").glob("*.safetensors"):
        f.unlink()
    (bad / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InputError, match="safetensors"):
        build_from_sd15(bad)


def test_load_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(InputError, match="not an rgbdface model folder"):
        load_model(tmp_path)


def test_require_stage_names_what_is_missing(tiny_model):
    with pytest.raises(InputError, match="stage 2"):
        tiny_model.require_stage(2, "estimate-depth")


def test_unknown_scheduler_is_an_input_error(tiny_model):
    with pytest.raises(InputError, match="unknown scheduler"):
        tiny_model.sampling_scheduler("nonsense")
    for name in ("ddim", "ddpm", "DPMSolverMultistepScheduler", "euler"):
        out = generate(tiny_model, _ref(), steps=2, scheduler=name)
        assert np.isfinite(out.depth).all()


def test_masked_denoiser_round_trip(tiny_model, tmp_path):
    m = tiny_model.clone()
    m.add_masked_denoiser()
    m.meta.stages = [0, 1, 2]
    assert m.masked.in_channels == 18 and m.masked.reference_unet is m.joint.reference_unet
    m.save_pretrained(tmp_path / "m2")
    assert not (tmp_path / "m2" / "masked_reference_unet").exists()
    loaded = load_model(tmp_path / "m2")
    assert loaded.masked is not None and loaded.masked.reference_unet is loaded.joint.reference_unet
    loaded.require_stage(2, "estimate-depth")
    for (k, v), (k2, v2) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    own = tiny_model.clone()
    own.add_masked_denoiser(own_reference=True)
    own.save_pretrained(tmp_path / "m3")
    assert (tmp_path / "m3" / "masked_reference_unet").is_dir()
    assert load_model(tmp_path / "m3").masked.reference_unet is not None


def test_half_weights_load_as_float32_of_the_half_values(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "full")
    tiny_model.save_pretrained(tmp_path / "half", half=True)
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*.safetensors"))
    assert size(tmp_path / "half") < 0.6 * size(tmp_path / "full")
    loaded = load_model(tmp_path / "half")
    for (k, v), (k2, v2) in zip(tiny_model.state_dict().items(), loaded.state_dict().items()):
        assert v2.dtype == v.dtype and torch.equal(v2, v.half().to(v.dtype) if v.is_floating_point() else v), k
    assert np.isfinite(generate(loaded, _ref(), steps=2).depth).all()


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler"])
def test_sampling_starts_at_pure_noise_level(tiny_model, name):
    """Trailing spacing: the first step is t = T - 1 (where training put pure noise), for any step count."""
    T = tiny_model.scheduler_config["num_train_timesteps"]
    for steps in (1, 4, 10):
        s = tiny_model.sampling_scheduler(name)
        s.set_timesteps(steps)
        assert len(s.timesteps) == steps and int(s.timesteps[0]) == T - 1


def test_a_schedule_that_names_its_spacing_keeps_it(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model, "scheduler_config", dict(tiny_model.scheduler_config, timestep_spacing="leading"))
    s = tiny_model.sampling_scheduler("ddim")
    s.set_timesteps(10)
    assert int(s.timesteps[0]) == 901  # leading: 900 + steps_offset 1
