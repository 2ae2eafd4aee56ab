"""`rgbdface train-vae` and `init-model --tiny --vae`: the tiny configuration's own codec."""

import torch
from diffusers import AutoencoderKL
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.models.unet import tiny_vae_config
from rgbdface.training.vae import VAETrainConfig, load_vae_data, train_vae

runner = CliRunner()


def test_vae_data_ranges(portrait_dataset):
    rgb, depth = load_vae_data(portrait_dataset, 32)
    assert rgb.shape == (3, 3, 32, 32) and depth.shape == (3, 1, 32, 32)
    assert rgb.min() >= -1 and rgb.max() <= 1
    # Depth is the codec's normalisation: face in [-1, 1), background at the far value.
    assert depth.min() == -1 and (depth == 1).any() and (depth < 1).float().mean() > 0.1


def test_vae_training_reduces_reconstruction_error(portrait_dataset):
    rgb, depth = load_vae_data(portrait_dataset, 32)
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(tiny_vae_config(32))

    @torch.no_grad()
    def recon_error():
        x = torch.cat([rgb, depth.expand(-1, 3, -1, -1)])
        return (vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean().item()

    before = recon_error()
    losses = train_vae(vae, rgb, depth, VAETrainConfig(steps=40, batch_size=4, lr=1e-3))
    assert recon_error() < 0.7 * before
    assert sum(losses[-5:]) < sum(losses[:5])
    # Latents are scaled to unit variance.
    with torch.no_grad():
        z = vae.encode(rgb).latent_dist.mean * vae.config.scaling_factor
    assert 0.5 < z.std().item() < 2.0


def test_colour_jitter_shows_the_codec_rgb_in_random_colours(portrait_dataset):
    import numpy as np

    from rgbdface.training.vae import _colours

    rgb, depth = load_vae_data(portrait_dataset, 32)
    assert torch.equal(_colours(rgb, np.random.default_rng(0), 0.0), rgb)
    turned = _colours(rgb, np.random.default_rng(0), 1.0)
    assert turned.shape == rgb.shape and turned.min() >= -1 and turned.max() <= 1
    assert all(not torch.allclose(a, b, atol=0.02) for a, b in zip(turned, rgb))  # every image recoloured
    # same seed without jitter: the same batches and weights as before the option existed
    runs = []
    for p in (0.0, 0.0, 1.0):
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(tiny_vae_config(32))
        runs.append(train_vae(vae, rgb, depth, VAETrainConfig(steps=3, batch_size=4, colour_jitter=p)))
    assert runs[0] == runs[1] and runs[2] != runs[0]


def test_train_vae_cli_then_init_model(portrait_dataset, tmp_path):
    vae_dir = tmp_path / "vae"
    r = runner.invoke(app, ["train-vae", str(portrait_dataset), "-o", str(vae_dir), "--image-size", "32",
                            "--steps", "3", "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert (vae_dir / "config.json").is_file() and list(vae_dir.glob("*.safetensors"))
    # stderr is not a terminal here: plain progress lines, no bar
    assert [line.split()[2] for line in r.stderr.splitlines() if line.startswith("train-vae: step ")] == ["1/3", "2/3", "3/3"]
    assert "\r" not in r.stderr
    r = runner.invoke(app, ["init-model", "--tiny", "--vae", str(vae_dir), "--image-size", "32", "-o", str(tmp_path / "m"), "-q"])
    assert r.exit_code == 0, r.output
    from rgbdface.models.model import load_model

    m = load_model(tmp_path / "m")
    saved = AutoencoderKL.from_pretrained(vae_dir)
    assert m.codec.scaling_factor == saved.config.scaling_factor
    assert torch.equal(m.codec.vae.encoder.conv_in.weight, saved.encoder.conv_in.weight)


def test_train_vae_errors(tmp_path):
    r = runner.invoke(app, ["train-vae", str(tmp_path / "none"), "-o", str(tmp_path / "v")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()
    r = runner.invoke(app, ["init-model", "--tiny", "--vae", str(tmp_path), "-o", str(tmp_path / "m")])
    assert r.exit_code == 1 and "AutoencoderKL" in r.stderr


def test_decoder_only_keeps_every_latent_and_learns_to_decode(portrait_dataset):
    rgb, depth = load_vae_data(portrait_dataset, 32)
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(tiny_vae_config(32))
    train_vae(vae, rgb, depth, VAETrainConfig(steps=5, batch_size=4, lr=1e-3))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    scaling = vae.config.scaling_factor
    x = torch.cat([rgb, depth.expand(-1, 3, -1, -1)])

    @torch.no_grad()
    def error():
        return (vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean().item()

    start = error()
    losses = train_vae(vae, rgb, depth, VAETrainConfig(steps=40, batch_size=4, lr=1e-3, decoder_only=True))
    after = vae.state_dict()
    for k, v in before.items():
        if k.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("decoder."))
    assert vae.config.scaling_factor == scaling  # latents unchanged, so is their scale
    assert error() < 0.8 * start and sum(losses[-5:]) < sum(losses[:5])
    assert all(p.requires_grad for p in vae.parameters())  # the codec is left trainable, as it came


def test_decoder_only_cli(portrait_dataset, tmp_path):
    from rgbdface.models.model import load_model

    first = tmp_path / "vae"
    assert runner.invoke(app, ["train-vae", str(portrait_dataset), "-o", str(first), "--image-size", "32", "--steps", "3", "--batch-size", "2"]).exit_code == 0
    assert runner.invoke(app, ["init-model", "--tiny", "--vae", str(first), "--image-size", "32", "-o", str(tmp_path / "m"), "-q"]).exit_code == 0
    new = tmp_path / "new"
    r = runner.invoke(app, ["train-vae", str(portrait_dataset), "-o", str(new), "--image-size", "32", "--steps", "3", "--batch-size", "2",
                            "--init", str(tmp_path / "m"), "--decoder-only", "--colour-jitter", "0.5"])  # a model folder: its vae/
    assert r.exit_code == 0, r.output
    old, fresh = AutoencoderKL.from_pretrained(first), AutoencoderKL.from_pretrained(new)
    assert fresh.config.scaling_factor == old.config.scaling_factor
    assert torch.equal(fresh.encoder.conv_in.weight, old.encoder.conv_in.weight)
    assert not torch.equal(fresh.decoder.conv_out.weight, old.decoder.conv_out.weight)
    assert load_model(tmp_path / "m").codec.scaling_factor == fresh.config.scaling_factor
    r = runner.invoke(app, ["train-vae", str(portrait_dataset), "-o", str(tmp_path / "x"), "--decoder-only"])
    assert r.exit_code == 2 and "--init" in r.stderr and not (tmp_path / "x").exists()
    r = runner.invoke(app, ["train-vae", str(portrait_dataset), "-o", str(tmp_path / "x"), "--init", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "no codec there" in r.stderr and len(r.stderr.strip().splitlines()) == 1
