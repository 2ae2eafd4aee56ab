"""Every pipeline in low precision on the CPU (bf16 weights, and float32 weights under bf16 autocast),
against float32; loading only the weights a task runs."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from motion_helpers import speech_like
from rgbdface.cli.app import app
from rgbdface.models.model import load_model
from rgbdface.pipelines.depth import estimate_depth
from rgbdface.pipelines.depth2img import depth2img
from rgbdface.pipelines.generate import generate
from rgbdface.pipelines.talk import talk_frames
from rgbdface.utils import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def models():
    return {"fp32": load_model(), "bf16": load_model(dtype=torch.bfloat16)}


@pytest.fixture(scope="module")
def crop(astronaut):
    return astronaut[:200, 150:350]


def _corr(a, b, mask=None):
    a, b = (np.asarray(x, np.float64).ravel() for x in (a, b))
    if mask is not None:
        a, b = a[mask.ravel()], b[mask.ravel()]
    return float(np.corrcoef(a, b)[0, 1])


def _runs(models, fn):
    """fn(model) with float32 weights, bf16 weights, and float32 weights under CPU bf16 autocast."""
    out = {"fp32": fn(models["fp32"]), "bf16": fn(models["bf16"])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out["autocast"] = fn(models["fp32"])
    return out


def test_bf16_weights_load_as_bf16(models):
    assert models["bf16"].dtype == torch.bfloat16
    assert {p.dtype for p in models["bf16"].parameters()} == {torch.bfloat16}


def test_generate_in_bf16(models, crop):
    runs = _runs(models, lambda m: generate(m, crop, steps=2, seed=1))
    for kind in ("bf16", "autocast"):
        assert runs[kind].rgb.shape == runs["fp32"].rgb.shape
        assert _corr(runs[kind].rgb, runs["fp32"].rgb) > 0.95, kind
        assert _corr(runs[kind].depth, runs["fp32"].depth) > 0.95, kind


def test_estimate_depth_in_bf16(models, astronaut):
    runs = _runs(models, lambda m: estimate_depth(m, astronaut, steps=2))
    for kind in ("bf16", "autocast"):
        valid = runs[kind].valid & runs["fp32"].valid
        assert valid.sum() > 1000
        assert _corr(runs[kind].depth, runs["fp32"].depth, valid) > 0.95, kind


def test_depth2img_in_bf16(models, astronaut):
    depth = estimate_depth(models["fp32"], astronaut, steps=1).to_units()
    runs = _runs(models, lambda m: depth2img(m, depth, reference=astronaut, steps=2))
    for kind in ("bf16", "autocast"):
        assert _corr(runs[kind].image, runs["fp32"].image) > 0.95, kind


def test_talk_in_bf16(models, crop):
    wave = speech_like(0.7)
    runs = _runs(models, lambda m: list(talk_frames(m, crop, wave, steps=2)))
    for kind in ("bf16", "autocast"):
        assert len(runs[kind]) == len(runs["fp32"]) == 18
        rgb = lambda frames: np.stack([f.rgb for f in frames])  # noqa: E731
        assert _corr(rgb(runs[kind]), rgb(runs["fp32"])) > 0.95, kind


def test_relight_and_estimate_depth_commands_take_dtype_bf16(astronaut, portrait_path, tmp_path):
    for args, out in ((["estimate-depth", str(portrait_path), "-o", str(tmp_path / "d.png"), "--steps", "1"], "d.png"),
                      (["relight", str(portrait_path), "-o", str(tmp_path / "r.png"), "--steps", "1", "--light", "1,0,1"], "r.png")):
        r = runner.invoke(app, [*args, "--dtype", "bf16", "--device", "cpu", "-q"])
        assert r.exit_code == 0, r.output
        assert (tmp_path / out).stat().st_size > 0


def test_a_task_loads_only_its_stage_weights(astronaut):
    full = load_model()
    depth_only = load_model(stages={2})
    assert {"unet", "motion"} <= depth_only.skipped and depth_only.motion is None
    assert all(p.is_meta for p in depth_only.joint.unet.parameters())  # no memory, nothing read
    assert not any(p.is_meta for p in depth_only.masked.unet.parameters())
    a, b = estimate_depth(full, astronaut, steps=1), estimate_depth(depth_only, astronaut, steps=1)
    assert np.array_equal(a.depth, b.depth)
    with pytest.raises(InputError, match="loaded for stage 2"):
        depth_only.require_stage(1, "generate")
    with pytest.raises(ValueError, match="whole model"):
        depth_only.save_pretrained("/nonexistent/never-written")
    talk_only = load_model(stages={3})
    assert {"masked_unet"} <= talk_only.skipped and talk_only.motion is not None
    assert all(p.is_meta for p in talk_only.masked.unet.parameters())
    loaded = sum(p.numel() for p in talk_only.parameters() if not p.is_meta)
    assert loaded < sum(p.numel() for p in full.parameters())


def test_vae_slicing_codes_the_same_latents_and_images(models):
    """slice_size codes a batch a few images at a time: the same results (to rounding), less memory at once."""
    from rgbdface.pipelines.memory import TensorMemory

    codec = models["fp32"].codec
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        whole_z, whole_x = codec.encode(x), None
        with TensorMemory() as whole_mem:
            whole_x = codec.decode(whole_z)
        codec.slice_size = 2
        try:
            sliced_z = codec.encode(x)
            with TensorMemory() as sliced_mem:
                sliced_x = codec.decode(whole_z)
        finally:
            codec.slice_size = None
    torch.testing.assert_close(sliced_z, whole_z, rtol=0, atol=1e-5)
    torch.testing.assert_close(sliced_x, whole_x, rtol=0, atol=1e-5)
    assert sliced_mem.peak < whole_mem.peak
