"""Training commands on tiny models and tiny real datasets (PNG + 16-bit depth + manifest), CPU only."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from rgbdface.cli.app import app
from train_helpers import make_dataset

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--set", "log.sample_every=0", "--set", "log.checkpoint_every=0", "--set", "log.log_every=1", "-q"]


def weights(model_dir: Path, part: str) -> dict[str, torch.Tensor]:
    files = sorted((model_dir / part).glob("*.safetensors"))
    assert files, f"no weights in {model_dir / part}"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two identities, three wild frames and one studio view each: 8 samples of 32 px."""
    return make_dataset(tmp_path_factory.mktemp("train") / "data", identities=2, frames=3, studio_per_identity=1)


@pytest.fixture(scope="module")
def audio_data(tmp_path_factory) -> Path:
    """One identity, one clip of 7 frames with 16 kHz audio."""
    return make_dataset(tmp_path_factory.mktemp("train") / "audio", identities=1, frames=7, audio=True)


@pytest.fixture(scope="module")
def stage1_dir(data, tiny_model_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run1"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "-m", str(tiny_model_dir), "--max-steps", "2",
                            "--set", "optim.batch_size=2", *QUIET])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(run / "model")  # stdout: the model folder, nothing else
    return run / "model"


def fixed_batch_loss(model_dir: Path, stage: int, data: Path, n: int = 8) -> float:
    """The stage's loss on a fixed set of samples (fixed noise, timesteps, references, masks)."""
    from rgbdface.models.model import RGBDFaceModel
    from rgbdface.training.config import resolve_config
    from torch.utils.data import default_collate as collate

    from rgbdface.training.data import LatentSpec, read_samples
    from rgbdface.training.loop import make_stream
    from rgbdface.training.objectives import make_objective

    model = RGBDFaceModel.from_pretrained(model_dir)
    cfg = resolve_config(stage, "tiny", ["loss.reference_dropout=0", "seed=123"])
    spec = LatentSpec(model.meta.image_size, model.meta.latent_channels, model.latent_size, 1000)
    stream = make_stream(read_samples(data), cfg, spec)
    batch = collate([stream[i] for i in range(n)])
    obj = make_objective(model, cfg)
    with torch.no_grad():
        loss = float(obj(batch)[0])
    obj.finish()
    return loss


# ----------------------------------------------------------------------------- learning
def test_stage1_loss_falls_when_overfitting(data, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "-m", str(tiny_model_dir), "--max-steps", "15",
                            "--set", "optim.lr=2e-3", "--set", "optim.batch_size=4", "--set", "loss.reference_dropout=0", *QUIET])
    assert r.exit_code == 0, r.output
    assert "lr" in log_rows(run)[0] and log_rows(run)[-1]["event"] == "done"
    before, after = fixed_batch_loss(tiny_model_dir, 1, data), fixed_batch_loss(run / "model", 1, data)
    print(f"loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before, (before, after)
    meta = json.loads((run / "model" / "rgbdface.json").read_text())
    assert meta["stages"] == [0, 1]
    assert meta["extra"]["stage1"]["config"]["optim"]["lr"] == 2e-3  # the resolved config travels with the model
    assert meta["extra"]["stage1"]["steps"] == 15


def test_stage2_loss_falls_and_stage1_stays(data, stage1_dir, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(app, ["finetune-mask", str(data), "-o", str(run), "-m", str(stage1_dir), "--max-steps", "15",
                            "--set", "optim.lr=2e-3", "--set", "optim.batch_size=4", "--set", "loss.reference_dropout=0", *QUIET])
    assert r.exit_code == 0, r.output
    before, after = fixed_batch_loss(stage1_dir, 2, data), fixed_batch_loss(run / "model", 2, data)
    print(f"loss {before:.4f} -> {after:.4f}")
    assert after < 0.9 * before, (before, after)
    model = run / "model"
    assert json.loads((model / "rgbdface.json").read_text())["stages"] == [0, 1, 2]
    # The masked denoiser trained; the joint denoiser and the shared ReferenceNet did not.
    assert same(weights(model, "unet"), weights(stage1_dir, "unet"))
    assert same(weights(model, "reference_unet"), weights(stage1_dir, "reference_unet"))
    assert not (model / "masked_reference_unet").exists()


# ----------------------------------------------------------------------------- what trains
def test_trainable_sets_per_stage():
    from rgbdface.models.builder import build_tiny
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import make_objective, unreachable_reference_parameters

    # Stage 1: the joint denoiser and the ReferenceNet, less the ReferenceNet's parts nothing reads.
    m = build_tiny(32, seed=0)
    obj = make_objective(m, resolve_config(1, "tiny"))
    names = set(obj.trainable())
    unet = {f"joint.unet.{n}" for n, _ in m.joint.unet.named_parameters()}
    ref = {f"joint.reference_unet.{n}" for n, _ in m.joint.reference_unet.named_parameters()}
    unused = {f"joint.reference_unet.{n}" for n in obj.frozen_unreachable}
    assert names == unet | (ref - unused)
    assert {"joint.reference_unet.conv_out.weight", "joint.reference_unet.conv_norm_out.weight"} <= unused
    assert not any(n.startswith("codec.") for n in names)
    assert unreachable_reference_parameters(m.joint) == []  # all that remain reach the denoiser

    # Stage 2: only the masked denoiser (the ReferenceNet is shared with stage 1 and stays frozen) ...
    m = build_tiny(32, seed=0)
    obj = make_objective(m, resolve_config(2, "tiny"))
    assert set(obj.trainable()) == {f"masked.unet.{n}" for n, _ in m.masked.unet.named_parameters()}
    # ... or with its own ReferenceNet copy, that too.
    m = build_tiny(32, seed=0)
    obj = make_objective(m, resolve_config(2, "tiny", ["masks.own_reference=true"]))
    own = {f"masked.reference_unet.{n}" for n, _ in m.masked.reference_unet.named_parameters()}
    assert set(obj.trainable()) == {f"masked.unet.{n}" for n, _ in m.masked.unet.named_parameters()} | (
        own - {f"masked.reference_unet.{n}" for n in obj.frozen_unreachable})

    # Stage 3: exactly the motion modules' parameters.
    from rgbdface.training.motion_setup import add_motion

    m = build_tiny(32, seed=0)
    cfg = resolve_config(3, "tiny", ["motion.frames=4", "motion.motion_frames=2"])
    add_motion(m, cfg)
    obj = make_objective(m, cfg)
    assert {id(p) for p in obj.trainable().values()} == {id(p) for p in m.motion.trainable_parameters()}


def test_stage3_trains_motion_only(audio_data, stage1_dir, tmp_path):
    run = tmp_path / "run"
    r = runner.invoke(app, ["train-motion", str(audio_data), "-o", str(run), "-m", str(stage1_dir), "--max-steps", "2",
                            "--set", "motion.frames=4", "--set", "motion.motion_frames=2", "--set", "optim.lr=1e-3", *QUIET])
    assert r.exit_code == 0, r.output
    model = run / "model"
    for part in ("unet", "reference_unet", "vae"):  # every stage-1 weight bit-identical
        assert same(weights(model, part), weights(stage1_dir, part)), part
    motion = load_file(str(model / "motion" / "motion.safetensors"))
    audio_out = [v for k, v in motion.items() if k.startswith("audio_attn.") and "to_out.0.weight" in k]
    assert audio_out and any(float(v.abs().max()) > 0 for v in audio_out)  # zero-initialised, then trained
    meta = json.loads((model / "rgbdface.json").read_text())
    assert meta["stages"] == [0, 1, 3]
    assert meta["extra"]["stage3"]["config"]["motion"]["frames"] == 4
    record = json.loads((model / "motion" / "motion.json").read_text())["config"]
    assert record["audio_normalise"] is True  # new runs: level-independent mel features by default

    # continuing a model with motion modules keeps its recorded setting, whatever the run's config says
    again = tmp_path / "again"
    r = runner.invoke(app, ["train-motion", str(audio_data), "-o", str(again), "-m", str(model), "--max-steps", "1",
                            "--set", "motion.frames=4", "--set", "motion.motion_frames=2",
                            "--set", "motion.audio_normalise=false", *QUIET])
    assert r.exit_code == 0, r.output
    assert json.loads((again / "model" / "motion" / "motion.json").read_text())["config"]["audio_normalise"] is True


# ----------------------------------------------------------------------------- exact resume
def test_resume_is_bit_exact(data, tiny_model_dir, tmp_path):
    settings = ["--set", "optim.batch_size=1", "--set", "optim.grad_accum=2", "--set", "optim.ema=true",
                "--set", "optim.ema_decay=0.5", "--set", "data.cache_latents=true", "--set", "loss.reference_dropout=0.5",
                "--set", "optim.lr=1e-3", *QUIET]
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["train", str(data), "-m", str(tiny_model_dir)]
    assert runner.invoke(app, [*common, "-o", str(a), "--max-steps", "4", *settings]).exit_code == 0
    r = runner.invoke(app, [*common, "-o", str(b), "--max-steps", "2", *settings])
    assert r.exit_code == 0, r.output
    ckpt = b / "checkpoints" / "step-00000002"
    assert {p.name for p in ckpt.iterdir()} >= {"model", "optimizer.safetensors", "optimizer.json", "scheduler.json",
                                                 "ema.safetensors", "rng-0.safetensors", "rng-0.json", "state.json", "config.json"}
    assert not any(p.suffix in (".pt", ".pth", ".bin", ".pkl") for p in ckpt.rglob("*"))  # no pickles anywhere
    r = runner.invoke(app, [*common, "-o", str(b), "--max-steps", "4", "--resume", *settings])
    assert r.exit_code == 0, r.output
    for part in ("unet", "reference_unet"):
        assert same(weights(a / "model", part), weights(b / "model", part)), part
    la = [row for row in log_rows(a) if "loss" in row]
    lb = [row for row in log_rows(b) if "loss" in row]
    assert [row["loss"] for row in la] == [row["loss"] for row in lb] and len(la) == 4
    assert same(load_file(str(a / "checkpoints" / "step-00000004" / "optimizer.safetensors")),
                load_file(str(b / "checkpoints" / "step-00000004" / "optimizer.safetensors")))


# ----------------------------------------------------------------------------- two processes
def test_two_processes_agree(data, tiny_model_dir, tmp_path):
    """torchrun, 2 CPU processes (gloo): both ranks end with identical weights, and the pair draws
    exactly the samples of one process with twice the batch."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["train", str(data), "-m", str(tiny_model_dir), "--max-steps", "2", "--cpu", *QUIET]
    two = tmp_path / "two"
    port = str(29500 + os.getpid() % 1000)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                        "-m", "rgbdface.cli.app", *args, "-o", str(two), "--set", "optim.batch_size=2"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    done = [row for row in log_rows(two) if row.get("event") == "done"][0]
    assert len(done["digests"]) == 2 and done["digests"][0] == done["digests"][1]
    assert p.stdout.strip() == str(two / "model")  # only the main process prints
    one = tmp_path / "one"
    assert runner.invoke(app, [*args, "-o", str(one), "--set", "optim.batch_size=4"]).exit_code == 0
    first2, first1 = log_rows(two)[0], log_rows(one)[0]
    assert first2["samples_seen"] == first1["samples_seen"] == 4
    assert first2["loss"] == pytest.approx(first1["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- one-line errors
def _empty_dataset(root: Path) -> Path:
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"format": "rgbdface-dataset", "version": 1}))
    (root / "manifest.jsonl").write_text("")
    return root


@pytest.mark.parametrize("case", ["unknown_key", "other_stage_key", "bad_value", "missing_dataset", "empty_dataset",
                                  "mask_on_stage0", "motion_on_stage0", "motion_without_audio", "single_sample_error",
                                  "checkpoints_without_resume", "no_model_source"])
def test_errors_are_one_line_before_work(case, data, tiny_model_dir, stage1_dir, tmp_path):
    run = tmp_path / "run"
    base = ["train", str(data), "-o", str(run), "-m", str(tiny_model_dir)]
    args, expect = {
        "unknown_key": ([*base, "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
        "other_stage_key": ([*base, "--set", "masks.p_joint=1"], "applies to stage 2 only"),
        "bad_value": ([*base, "--set", "optim.batch_size=two"], "not a valid int"),
        "missing_dataset": (["train", str(tmp_path / "nope"), "-o", str(run), "--tiny"], "no such dataset folder"),
        "empty_dataset": (["train", str(_empty_dataset(tmp_path / "empty")), "-o", str(run), "--tiny"], "has no samples"),
        "mask_on_stage0": (["finetune-mask", str(data), "-o", str(run), "-m", str(tiny_model_dir)], "needs a stage-1"),
        "motion_on_stage0": (["train-motion", str(data), "-o", str(run), "-m", str(tiny_model_dir)], "needs a stage-1"),
        "motion_without_audio": (["train-motion", str(data), "-o", str(run), "-m", str(stage1_dir)], "with audio"),
        "single_sample_error": (
            ["train", str(make_dataset(tmp_path / "single", identities=2, frames=2, single=["person1"])), "-o", str(run),
             "--tiny", "--set", "data.single_sample=error"], "has one sample only"),
        "checkpoints_without_resume": ([*base], "pass --resume"),
        "no_model_source": (["train", str(data), "-o", str(run)], "exactly one of --model"),
    }[case]
    if case == "checkpoints_without_resume":
        (run / "checkpoints" / "step-00000001").mkdir(parents=True)
        (run / "checkpoints" / "step-00000001" / "state.json").write_text("{}")
    r = runner.invoke(app, args)
    # options that conflict and bad --set items are usage errors
    assert r.exit_code == (2 if case in ("no_model_source", "unknown_key", "other_stage_key", "bad_value") else 1), r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rgbdface: error:") and expect in lines[0], r.stderr
    assert r.stdout == ""
    if case != "checkpoints_without_resume":
        assert not run.exists()  # nothing written before the checks pass


def test_show_config_resolves_recipe_and_overrides(data, tiny_model_dir, tmp_path):
    r = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "r"), "-m", str(tiny_model_dir), "--config", "sd15",
                            "--set", "optim.lr=3e-5", "--max-steps", "7", "--show-config"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert cfg["optim"]["lr"] == 3e-5 and cfg["optim"]["max_steps"] == 7
    assert cfg["optim"]["batch_size"] * cfg["optim"]["grad_accum"] == 32  # the paper's batch, by accumulation
    assert cfg["masks"] is None and cfg["motion"] is None


# ----------------------------------------------------------------------------- pieces
def test_sd15_recipe_has_the_paper_settings():
    from rgbdface.training.config import resolve_config

    s1, s3 = resolve_config(1, "sd15"), resolve_config(3, "sd15")
    assert (s1.effective_batch, s1.optim.lr, s1.optim.warmup_steps, s1.optim.max_steps) == (32, 1e-5, 0, 30000)
    assert (s3.effective_batch, s3.motion.frames, s3.motion.motion_frames) == (1, 14, 4)


def test_data_stream_is_a_function_of_seed_and_n(data):
    from rgbdface.training.config import resolve_config
    from rgbdface.training.data import LatentSpec, RankBatches, read_samples
    from rgbdface.training.loop import make_stream

    samples = read_samples(data)
    spec = LatentSpec(32, 4, 8, 1000)
    cfg = resolve_config(1, "tiny", ["data.studio_fraction=0.25"])
    s1, s2 = make_stream(samples, cfg, spec), make_stream(samples, cfg, spec)
    for n in (0, 5, 13):
        a, b = s1[n], s2[n]
        assert a["index"] == b["index"] and torch.equal(a["noise"], b["noise"]) and torch.equal(a["reference"], b["reference"])
        assert a["ref_index"] != a["index"]  # never the target itself
        assert samples[a["ref_index"]].identity == samples[a["index"]].identity
    studio = [samples[s1.order(n)].source == "studio" for n in range(40)]
    assert sum(studio) == 10  # exactly the configured share
    # Two processes take disjoint micro-batches that together are one process's stream.
    r0, r1, one = (iter(RankBatches(3, 2, r, 2)) for r in (0, 1)), None, iter(RankBatches(6, 2, 0, 1))
    r0, r1 = iter(RankBatches(3, 2, 0, 2)), iter(RankBatches(3, 2, 1, 2))
    assert next(r0) + next(r1) == next(one) + next(one)


def test_single_sample_identities(tmp_path):
    from rgbdface.training.data import ImageStream, LatentSpec, read_samples

    samples = read_samples(make_dataset(tmp_path / "d", identities=2, frames=2, single=["person1"]))
    spec = LatentSpec(32, 4, 8, 1000)
    skip = ImageStream(samples, spec, 0, None, "skip")
    assert {samples[i].identity for i in skip.pool} == {"person0"}
    mirror = ImageStream(samples, spec, 0, None, "mirror")
    lone = [n for n in range(8) if samples[mirror.order(n)].identity == "person1"][0]
    item = mirror[lone]
    assert item["mirrored"] and torch.equal(item["reference"], item["rgb"].flip(-1))


def test_hflip_mirrors_target_depth_and_reference_together(tmp_path):
    from rgbdface.training.data import ImageStream, LatentSpec, read_samples

    samples = read_samples(make_dataset(tmp_path / "d", identities=2, frames=3, single=["person1"]))
    spec = LatentSpec(32, 4, 8, 1000)
    plain, half = ImageStream(samples, spec, 0, None, "mirror"), ImageStream(samples, spec, 0, None, "mirror", hflip=0.5)
    flips = [half[n]["flipped"] for n in range(40)]
    assert 8 < sum(flips) < 32  # about half
    for n in range(12):
        a, b = plain[n], half[n]
        assert a["index"] == b["index"] and a["ref_index"] == b["ref_index"] and not a["flipped"]
        f = (lambda x: x.flip(-1)) if b["flipped"] else (lambda x: x)
        assert torch.equal(b["rgb"], f(a["rgb"])) and torch.equal(b["depth"], f(a["depth"]))
        assert torch.equal(b["reference"], f(a["reference"]))  # a lone identity's mirrored reference flips back
        assert torch.equal(b["noise"], a["noise"])


def test_flipped_samples_have_cached_latents_of_their_own(tiny_model, tmp_path):
    from rgbdface.training.config import resolve_config
    from torch.utils.data import default_collate as collate

    from rgbdface.training.data import ImageStream, LatentSpec, read_samples
    from rgbdface.training.objectives import make_objective

    samples = read_samples(make_dataset(tmp_path / "d", identities=1, frames=2))
    cfg = resolve_config(1, "tiny", ["data.cache_latents=true", "data.hflip=1.0"])
    stream = ImageStream(samples, LatentSpec(32, 4, 8, 1000), 0, None, hflip=1.0)
    plain = ImageStream(samples, LatentSpec(32, 4, 8, 1000), 0, None)
    obj = make_objective(tiny_model, cfg)
    with torch.no_grad():
        obj(collate([stream[0]]))
        obj(collate([plain[0]]))
    i = stream[0]["index"]
    flipped, unflipped = obj.cache[("rgb", (i, True))], obj.cache[("rgb", (i, False))]
    assert not torch.allclose(flipped, unflipped)
    np.testing.assert_allclose(flipped.numpy(), tiny_model.codec.encode_rgb(stream[0]["rgb"][None])[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("stage,augment", [(1, False), (2, False), (1, True)])
def test_cached_samples_skip_their_pixels_and_keep_their_loss(monkeypatch, tiny_model, stage, augment, tmp_path):
    """With data.cache_latents, a sample seen once is not decoded again (an augmented one is), and the loss stays the same."""
    from rgbdface.training import data as training_data
    from rgbdface.training.config import resolve_config
    from torch.utils.data import default_collate as collate

    from rgbdface.training.loop import make_stream
    from rgbdface.training.objectives import make_objective

    samples = training_data.read_samples(make_dataset(tmp_path / "d", identities=2, frames=2))
    extra = {1: ["data.same_reference=0.5"], 2: ["masks.self_reference=0.5"]}[stage]
    extra += ["data.colour_jitter=0.5"] if augment else []
    cfg = resolve_config(stage, "tiny", ["data.cache_latents=true", "data.hflip=0.5", "loss.reference_dropout=0", *extra])
    stream = make_stream(samples, cfg, training_data.LatentSpec(32, 4, 8, 1000))
    obj = make_objective(copy.deepcopy(tiny_model), cfg)
    decoded = []
    for name in ("load_rgb", "load_depth_map"):
        real = getattr(training_data, name)
        monkeypatch.setattr(training_data, name, lambda *a, real=real: decoded.append(a) or real(*a))
    items = range(8)
    with torch.no_grad():
        first = float(obj(collate([stream[n] for n in items]))[0])
        obj.finish()
        decoded_first, decoded[:] = len(decoded), []
        stream.cached = obj.cache
        again = collate([stream[n] for n in items])
        assert float(obj(again)[0]) == first
    if augment:
        assert again["fresh"].any() and 0 < len(decoded) < decoded_first
    else:
        assert decoded == []


def test_self_reference_only_where_the_rgb_is_kept(tmp_path):
    from rgbdface.training.data import ImageStream, LatentSpec, read_samples
    from rgbdface.training.masks import MaskSampler

    samples = read_samples(make_dataset(tmp_path / "d", identities=2, frames=3))
    spec = LatentSpec(32, 4, 8, 1000)
    i2d = ImageStream(samples, spec, 0, None, mask_sampler=MaskSampler(0.0, 1.0, 0.0, 0.0), hflip=0.5, self_reference=1.0)
    for n in range(10):
        item = i2d[n]
        assert item["ref_index"] == item["index"] and not item["mirrored"] and not item["m_rgb"].any()
        assert torch.equal(item["reference"], item["rgb"])  # flipped with it when the sample is flipped
    joint = ImageStream(samples, spec, 0, None, mask_sampler=MaskSampler(1.0, 0.0, 0.0, 0.0), self_reference=1.0)
    assert all(joint[n]["ref_index"] != joint[n]["index"] for n in range(10))  # the RGB is generated: never its own image
    half = ImageStream(samples, spec, 0, None, mask_sampler=MaskSampler(0.0, 1.0, 0.0, 0.0), self_reference=0.5)
    own = sum(half[n]["ref_index"] == half[n]["index"] for n in range(40))
    assert 8 < own < 32


def test_mask_kinds_follow_their_probabilities():
    from rgbdface.training.masks import MaskSampler

    ms = MaskSampler(0.5, 0.3, 0.2, 0.0)
    rng = np.random.default_rng(0)
    kinds = {"joint": 0, "i2d": 0, "d2i": 0}
    for _ in range(2000):
        m_rgb, m_depth = ms(rng, 8)
        assert m_rgb.shape == (1, 8, 8)
        key = "joint" if m_rgb.all() and m_depth.all() else "i2d" if not m_rgb.any() else "d2i"
        assert key != "d2i" or not m_depth.any()
        kinds[key] += 1
    assert abs(kinds["joint"] / 2000 - 0.5) < 0.04 and abs(kinds["d2i"] / 2000 - 0.2) < 0.04
    boxes = MaskSampler(0, 0, 0, 1, 0.25, 0.5)
    for _ in range(50):
        m_rgb, m_depth = boxes(rng, 8)
        filled = max(float(m_rgb.sum()), float(m_depth.sum()))
        assert 4 <= filled <= 16 and (m_rgb.sum() < 64 or m_depth.sum() < 64)


@pytest.mark.parametrize("stage", [1, 3])
def test_gradient_checkpointing_gives_the_same_gradients(stage, data, audio_data):
    """The reference/motion conditioning stays set through backward, so recomputation matches."""
    from rgbdface.models.builder import build_tiny
    from rgbdface.training.config import resolve_config
    from torch.utils.data import default_collate as collate

    from rgbdface.training.data import LatentSpec, read_samples
    from rgbdface.training.loop import make_stream
    from rgbdface.training.motion_setup import add_motion, clip_audio_features
    from rgbdface.training.objectives import make_objective

    grads = []
    for checkpointing in (False, True):
        m = build_tiny(32, seed=0)
        if stage == 1:
            cfg = resolve_config(1, "tiny", ["loss.reference_dropout=0.5"])
            samples, feats = read_samples(data), None
        else:
            cfg = resolve_config(3, "tiny", ["motion.frames=2", "motion.motion_frames=1", "loss.reference_dropout=0.5"])
            samples = read_samples(audio_data)
            add_motion(m, cfg, samples)
            with torch.no_grad():  # give the zero-initialised outputs a value, so gradients flow everywhere
                for n, p in m.motion.named_parameters():
                    if "to_out" in n or "proj_out" in n:
                        p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
            feats = clip_audio_features(m, cfg)
        obj = make_objective(m, cfg)
        if checkpointing:
            obj.enable_gradient_checkpointing()
        stream = make_stream(samples, cfg, LatentSpec(32, 4, 8, 1000), feats)
        kept = [n for n in range(64) if stream[n]["keep"]]
        dropped = [n for n in range(64) if not stream[n]["keep"]]
        batch = collate([stream[n] for n in (kept[:2] + dropped[:2] if stage == 1 else kept[:1] + dropped[:1])])
        loss, _ = obj(batch)
        loss.backward()
        obj.finish()
        grads.append({n: p.grad.clone() for n, p in obj.trainable().items() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(obj.trainable())
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------- prediction type
def test_v_prediction_model_learns_the_velocity_and_samples(data, tmp_path):
    """init-model --prediction-type v_prediction: the schedule says so after save/load, the loss target
    is sqrt(a)·eps − sqrt(1−a)·z0 (by hand, not through diffusers), training lowers it, and sampling runs."""
    from rgbdface.models.model import RGBDFaceModel
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import make_objective

    stage0 = tmp_path / "v0"
    r = runner.invoke(app, ["init-model", "--tiny", "--image-size", "32", "--prediction-type", "v_prediction", "-o", str(stage0), "-q"])
    assert r.exit_code == 0, r.output
    model = RGBDFaceModel.from_pretrained(stage0)
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.sampling_scheduler("ddim").config.prediction_type == "v_prediction"

    obj = make_objective(model, resolve_config(1, "tiny", []))
    z0, eps = torch.randn(3, 8, 8, 8), torch.randn(3, 8, 8, 8)
    t = torch.tensor([0, 500, 999])
    a = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(obj._target(z0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * z0)
    obj.finish()

    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "-m", str(stage0), "--max-steps", "15",
                            "--set", "optim.lr=2e-3", "--set", "optim.batch_size=4", "--set", "loss.reference_dropout=0", *QUIET])
    assert r.exit_code == 0, r.output
    before, after = fixed_batch_loss(stage0, 1, data), fixed_batch_loss(run / "model", 1, data)
    assert after < 0.9 * before, (before, after)
    from rgbdface.pipelines.sampling import sample_latents

    trained = RGBDFaceModel.from_pretrained(run / "model")
    z_rgb, z_depth = sample_latents(trained.joint, trained.sampling_scheduler("ddim"), torch.randn(1, 4, 8, 8), trained.context,
                                    steps=3, generator=torch.Generator().manual_seed(0))
    assert z_rgb.shape == z_depth.shape == (1, 4, 8, 8) and torch.isfinite(z_depth).all()
    r = runner.invoke(app, ["init-model", "--tiny", "--prediction-type", "x0", "-o", str(tmp_path / "bad"), "-q"])
    assert r.exit_code == 2 and "--prediction-type x0" in r.output


def test_zero_terminal_snr_schedule_ends_in_pure_noise(tmp_path):
    """init-model --zero-terminal-snr: the saved schedule's last step has no signal left (SD's keeps sqrt(a) = 0.068,
    enough for the image's mean colour to show through), training noises with it, sampling starts there."""
    from rgbdface.models.model import RGBDFaceModel
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import make_objective

    stage0 = tmp_path / "z0"
    r = runner.invoke(app, ["init-model", "--tiny", "--image-size", "32", "--prediction-type", "v_prediction", "--zero-terminal-snr",
                            "-o", str(stage0), "-q"])
    assert r.exit_code == 0, r.output
    model = RGBDFaceModel.from_pretrained(stage0)
    plain = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    a = model.noise_scheduler().alphas_cumprod
    assert plain[-1].sqrt() > 0.06 and float(a[-1]) < 1e-6  # no signal left at t = 999
    assert torch.allclose(a[0], plain[0], atol=1e-3) and (a[1:] < a[:-1]).all()  # the same start, still decreasing
    obj = make_objective(model, resolve_config(1, "tiny", []))
    z0, eps = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    t = torch.tensor([999, 999])
    torch.testing.assert_close(obj.noise_scheduler.add_noise(z0, eps, t), eps, atol=1e-3, rtol=0)  # pure noise
    torch.testing.assert_close(obj._target(z0, eps, t), -z0, atol=1e-3, rtol=0)  # v = -z0 there
    obj.finish()
    sampler = model.sampling_scheduler("ddim")
    sampler.set_timesteps(4)
    assert int(sampler.timesteps[0]) == 999 and float(sampler.alphas_cumprod[999]) < 1e-6
    r = runner.invoke(app, ["init-model", "--tiny", "--zero-terminal-snr", "-o", str(tmp_path / "bad"), "-q"])
    assert r.exit_code == 2 and "--zero-terminal-snr needs --prediction-type v_prediction" in r.output


def test_epsilon_target_is_the_noise(tiny_model):
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import make_objective

    assert tiny_model.scheduler_config["prediction_type"] == "epsilon"
    obj = make_objective(tiny_model.clone(), resolve_config(1, "tiny", []))
    z0, eps = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
    assert torch.equal(obj._target(z0, eps, torch.tensor([3, 900])), eps)
    obj.finish()


# ----------------------------------------------------------------------------- known latents
def test_known_latents_clean_trains_and_samples_as_recorded(data, stage1_dir, tmp_path):
    """masks.known_latents=clean: the model records it, training feeds kept cells their clean latent in the
    noisy slots, and sampling does the same at every step (the noised default does not)."""
    from rgbdface.models.model import RGBDFaceModel
    from rgbdface.pipelines.sampling import Known, sample_latents

    run = tmp_path / "run"
    r = runner.invoke(app, ["finetune-mask", str(data), "-o", str(run), "-m", str(stage1_dir), "--max-steps", "1",
                            "--set", "optim.batch_size=2", "--set", "masks.known_latents=clean", *QUIET])
    assert r.exit_code == 0, r.output
    model = RGBDFaceModel.from_pretrained(run / "model")
    assert model.meta.known_latents == "clean"
    assert RGBDFaceModel.from_pretrained(stage1_dir).meta.known_latents == "noised"  # the default, also for old folders

    seen = []
    unet_forward = model.masked.unet.forward

    def spy(x, *args, **kwargs):
        seen.append(x[:, :8].clone())  # the noisy slots: [RGB | depth] latents
        return unet_forward(x, *args, **kwargs)

    model.masked.unet.forward = spy
    z_ref = torch.randn(1, 4, 8, 8)
    for clean in (True, False):
        seen.clear()
        sample_latents(model.masked, model.sampling_scheduler("ddim"), z_ref, model.context, steps=3,
                       generator=torch.Generator().manual_seed(0), known=Known(rgb=z_ref, m_rgb=0.0, m_depth=1.0, clean=clean))
        assert len(seen) == 3
        kept_equal = [torch.allclose(x[:, :4], z_ref) for x in seen]
        assert all(kept_equal) if clean else not any(kept_equal)

    # Training: the kept RGB cells of an image→depth batch carry z0 in the noisy slots.
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import make_objective

    for mode in ("clean", "noised"):
        obj = make_objective(model, resolve_config(2, "tiny", [f"masks.known_latents={mode}"]))
        z0, z_t = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8)
        batch = {"m_rgb": torch.zeros(2, 1, 8, 8), "m_depth": torch.ones(2, 1, 8, 8)}
        out = obj.known_in_noisy(batch, z0, z_t)
        assert torch.equal(out[:, 4:], z_t[:, 4:])  # generated depth stays noisy
        assert torch.equal(out[:, :4], z0[:, :4] if mode == "clean" else z_t[:, :4])
        obj.finish()


def test_exclude_identities_holds_identities_out_of_training(data, tiny_model_dir, tmp_path):
    from rgbdface.training.config import resolve_config
    from rgbdface.training.data import exclude_identities, read_samples
    from rgbdface.utils import InputError

    assert resolve_config(1, "tiny", ["data.exclude_identities=person1, person0"]).data.exclude_identities == ["person1", "person0"]
    assert resolve_config(1, "tiny", ["data.exclude_identities=[]"]).data.exclude_identities == []
    assert resolve_config(1, "tiny").data.exclude_identities == []
    samples = read_samples(data)
    kept = exclude_identities(samples, ["person1"])
    assert kept == [s for s in samples if s.identity == "person0"] and 0 < len(kept) < len(samples)
    with pytest.raises(InputError, match="no identity 'nobody'.*it has: person0, person1"):
        exclude_identities(samples, ["nobody"])
    with pytest.raises(InputError, match="every identity"):
        exclude_identities(samples, ["person0", "person1"])

    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "-m", str(tiny_model_dir), "--max-steps", "1",
                            "--set", "optim.batch_size=2", "--set", "data.exclude_identities=person1", *QUIET])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "config.json").read_text())["data"]["exclude_identities"] == ["person1"]
    r = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "bad"), "-m", str(tiny_model_dir), "--max-steps", "1",
                            "--set", "data.exclude_identities=nobody", *QUIET])
    assert r.exit_code == 1 and "no identity 'nobody'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad" / "model").exists()


def test_the_loop_reads_device_values_back_once_per_log_line(data, tiny_model_dir, tmp_path, monkeypatch):
    """Losses stay on the device between log lines: no host-device sync per micro-step."""
    from sync_helpers import SyncCounter, on_fake_device

    from rgbdface.training.objectives import JointObjective

    forward = JointObjective.forward

    def on_device(self, batch):  # the loss and its logged parts as if computed on an accelerator
        loss, parts = forward(self, batch)
        return on_fake_device(loss), {k: on_fake_device(v) for k, v in parts.items()}

    monkeypatch.setattr(JointObjective, "forward", on_device)
    SyncCounter.count = 0
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "-m", str(tiny_model_dir), "--max-steps", "6",
                            "--set", "optim.batch_size=2", "--set", "optim.grad_accum=2", "--set", "log.sample_every=0",
                            "--set", "log.checkpoint_every=0", "--set", "log.log_every=3", "-q"])
    assert r.exit_code == 0, r.output
    rows = [row for row in log_rows(run) if "step" in row and "loss" in row]
    assert [row["step"] for row in rows] == [3, 6]
    assert SyncCounter.count == len(rows), SyncCounter.count  # one read-back per log line, not 6 steps x 2 micro-steps
    assert all(np.isfinite(row[k]) for row in rows for k in ("loss", "loss_rgb", "loss_depth", "grad_norm"))


def test_final_model_takes_the_ema_weights_in_place(data, tiny_model_dir, tmp_path, monkeypatch):
    """The moving average goes into the trained model itself: no second copy of the model on the device."""
    from rgbdface.models.model import RGBDFaceModel

    def no_copy(self):
        raise AssertionError("the model was copied")

    monkeypatch.setattr(RGBDFaceModel, "clone", no_copy)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", str(data), "-o", str(run), "-m", str(tiny_model_dir), "--max-steps", "2",
                            "--set", "optim.batch_size=2", "--set", "optim.ema=true", "--set", "optim.ema_decay=0.5",
                            "--set", "optim.lr=1e-3", *QUIET])
    assert r.exit_code == 0, r.output
    shadow = load_file(str(run / "checkpoints" / "step-00000002" / "ema.safetensors"))
    final = weights(run / "model", "unet")
    trained = load_file(str(run / "checkpoints" / "step-00000002" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    names = [n for n in shadow if n.startswith("joint.unet.")]
    assert names
    assert all(torch.equal(final[n.removeprefix("joint.unet.")], shadow[n]) for n in names)
    assert not all(torch.equal(trained[n.removeprefix("joint.unet.")], shadow[n]) for n in names)  # EMA differs from the raw weights


def test_checkpoints_keep_the_fp16_gradient_scaler(tmp_path):
    """A resumed fp16 run goes on with the loss scale it had, not the initial one."""
    from types import SimpleNamespace

    from rgbdface.training.state import TrainState, load_training_state, save_checkpoint

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def save_pretrained(self, path):
            Path(path).mkdir()

    def setup():
        model = Model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)

    model, opt, sched, scaler = setup()
    for grad in (float("inf"), float("inf"), 1.0):  # two overflows halve the scale twice, then a good step
        scaler.scale(model.w.sum()).backward()
        model.w.grad.fill_(grad)
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 2.0 ** 14
    accel = SimpleNamespace(is_main_process=True, process_index=0, wait_for_everyone=lambda: None, scaler=scaler)
    ckpt = save_checkpoint(accel, tmp_path, model, opt, ["w"], sched, None, TrainState(step=3), {})
    assert json.loads((ckpt / "scaler.json").read_text())["scale"] == 2.0 ** 14

    _, opt2, sched2, scaler2 = setup()
    load_training_state(ckpt, opt2, ["w"], sched2, None, 0, scaler=scaler2)
    assert scaler2.state_dict() == scaler.state_dict()


def test_sample_order_builds_each_epoch_permutation_once(monkeypatch):
    """Drawing sample n does not rebuild its epoch's permutation (O(dataset) work per sample)."""
    import rgbdface.training.data as data_mod

    built = []
    rng_for = data_mod.rng_for

    def counting(*keys):
        built.append(keys)
        return rng_for(*keys)

    monkeypatch.setattr(data_mod, "rng_for", counting)
    studio, wild = list(range(0, 3000, 3)), [i for i in range(3000) if i % 3]
    order = data_mod.Order(7, studio, wild, 0.25)
    drawn = [order(n) for n in range(12000)]  # 4000 samples of each source a pass: a few epochs each
    assert len(built) <= 8, len(built)
    # the same order as permutations built afresh for every sample
    monkeypatch.setattr(data_mod, "rng_for", rng_for)
    for n in (0, 1, 3999, 4000, 7777, 11999):
        assert data_mod.Order(7, studio, wild, 0.25)(n) == drawn[n]
    # each epoch of a source visits each of its items once
    wild_drawn = [d for d in drawn if d % 3][: len(wild)]
    assert sorted(wild_drawn) == wild


# ----------------------------------------------------------------------------- low precision
@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps one precision per process: start and leave these runs with a clean state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_one_bf16_autocast_step_per_stage(stage, data, audio_data, tiny_model_dir, stage1_dir, tmp_path, monkeypatch,
                                          fresh_accelerate):
    """precision.mixed_precision=bf16 on the CPU: the step runs under bf16 autocast with the frozen parts
    in bf16 and the trained ones in float32; the saved model keeps the frozen weights bit for bit."""
    from rgbdface.training.objectives import OBJECTIVES

    seen = {}
    forward = OBJECTIVES[stage].forward

    def recording(self, batch):
        frozen = [self.model.codec, *self.frozen_modules()]
        seen["autocast"] = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        seen["frozen"] = {p.dtype for m in frozen for p in m.parameters()}
        seen["trained"] = {p.dtype for p in self.trainable().values()}
        loss, parts = forward(self, batch)
        seen["loss"] = float(loss.detach())
        return loss, parts

    monkeypatch.setattr(OBJECTIVES[stage], "forward", recording)
    command, dataset, start = {1: ("train", data, tiny_model_dir), 2: ("finetune-mask", data, stage1_dir),
                               3: ("train-motion", audio_data, stage1_dir)}[stage]
    extra = ["--set", "motion.frames=4", "--set", "motion.motion_frames=2"] if stage == 3 else ["--set", "optim.batch_size=2"]
    run = tmp_path / "run"
    r = runner.invoke(app, [command, str(dataset), "-o", str(run), "-m", str(start), "--max-steps", "1", "--cpu",
                            "--set", "precision.mixed_precision=bf16", "--set", "optim.lr=1e-3", *extra, *QUIET])
    assert r.exit_code == 0, r.output
    assert seen["autocast"] == (True, torch.bfloat16)
    assert seen["frozen"] == {torch.bfloat16} and seen["trained"] == {torch.float32}
    assert np.isfinite(seen["loss"])
    frozen_parts = {1: ["vae"], 2: ["vae", "unet", "reference_unet"], 3: ["vae", "unet", "reference_unet"]}[stage]
    for part in frozen_parts:  # float32 on disk, exactly as they came in
        saved, before = weights(run / "model", part), weights(start, part)
        assert same(saved, before) and all(v.dtype == torch.float32 for v in saved.values()), part
    trained = {1: "unet", 2: "masked_unet"}.get(stage)
    if trained:
        assert not same(weights(run / "model", trained), weights(start, trained if stage == 1 else "unet"))


def test_the_objective_holds_only_the_parts_its_stage_runs():
    """Moving the objective to a device (Accelerate's prepare, DDP) takes the stage's parts alone."""
    from rgbdface.models.builder import build_tiny
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import make_objective

    m = build_tiny(32, seed=0)
    obj = make_objective(m, resolve_config(2, "tiny"))
    held = {id(p) for p in obj.parameters()}
    assert not held & {id(p) for p in m.joint.unet.parameters()}  # stage 2 never runs the joint UNet
    assert {id(p) for p in m.masked.unet.parameters()} | {id(p) for p in m.codec.parameters()} <= held
    obj.to(torch.float64)  # a stand-in for a device move: the parts and the cached context follow, nothing else
    assert m.masked.unet.dtype == torch.float64 and m.context.dtype == torch.float64 and m.joint.unet.dtype == torch.float32


def test_stage3_checkpointing_also_recomputes_the_temporal_modules(audio_data):
    """The temporal modules sit after the UNet's transformers, outside diffusers' per-block
    checkpoints: with gradient checkpointing on they must recompute their own activations too."""
    from torch.utils.data import default_collate as collate

    from rgbdface.models.builder import build_tiny
    from rgbdface.pipelines.memory import TensorMemory
    from rgbdface.training.config import resolve_config
    from rgbdface.training.data import LatentSpec, read_samples
    from rgbdface.training.loop import make_stream
    from rgbdface.training.motion_setup import add_motion, clip_audio_features
    from rgbdface.training.objectives import make_objective

    peaks = {}
    for temporal_checkpoint in (False, True):
        m = build_tiny(32, seed=0)
        cfg = resolve_config(3, "tiny", ["motion.frames=4", "motion.motion_frames=2", "loss.reference_dropout=0"])
        samples = read_samples(audio_data)
        add_motion(m, cfg, samples)
        obj = make_objective(m, cfg)
        obj.enable_gradient_checkpointing()
        assert m.motion.state.checkpoint
        m.motion.state.checkpoint = temporal_checkpoint
        stream = make_stream(samples, cfg, LatentSpec(32, 4, 8, 1000), clip_audio_features(m, cfg))
        batch = collate([stream[0]])
        with TensorMemory() as memory:
            loss, _ = obj(batch)
            loss.backward()
        peaks[temporal_checkpoint] = memory.peak
    assert peaks[True] < 0.9 * peaks[False], peaks


def test_progress_into_a_log_file_is_plain_lines(data, tiny_model_dir, tmp_path):
    """stderr that is not a terminal (nohup, a cluster job's log) gets one line per logged step, no bar."""
    r = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), "-m", str(tiny_model_dir), "--max-steps", "4",
                            "--set", "optim.batch_size=2", "--set", "log.log_every=2", "--set", "log.sample_every=0"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if line.startswith("train: step ")]
    assert [line.split()[2] for line in lines] == ["2/4", "4/4"], r.stderr
    assert all(" loss " in line and line.endswith("samples/s") for line in lines)
    assert "\r" not in r.stderr and "it/s" not in r.stderr
