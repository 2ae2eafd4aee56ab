"""Stage-3 training data: loss.mouth_weight weighs the latent cells of each frame's mouth region (found from its landmarks);
motion.noise gives a clip one noise for every frame or one per frame."""

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate as collate

from rgbdface.data import mesh
from rgbdface.training.data import ClipStream, LatentSpec, mouth_region, read_samples


def _landmarks(tmp_path, points: dict[int, tuple[float, float]]):
    lm = np.zeros((478, 3), np.float32)
    for i, (x, y) in points.items():
        lm[i, :2] = (x, y)
    path = tmp_path / "landmarks.npy"
    np.save(path, lm)
    return path


def test_mouth_region_by_hand(tmp_path):
    # corners at x 20 and 36 (width 16, a quarter is 4), upper lip at y 40, chin at y 60
    path = _landmarks(tmp_path, {mesh.MOUTH_CORNERS[0]: (20, 44), mesh.MOUTH_CORNERS[1]: (36, 44),
                                 mesh.UPPER_LIP_TOP: (28, 40), mesh.CHIN: (28, 60)})
    region = mouth_region(path, 64, 64)
    expected = torch.zeros(1, 64, 64)
    expected[:, 40:61, 16:41] = 1.0
    assert torch.equal(region, expected)
    # landmarks of a 128 px crop, frames of 64 px: the same box at half the scale
    path = _landmarks(tmp_path, {mesh.MOUTH_CORNERS[0]: (40, 88), mesh.MOUTH_CORNERS[1]: (72, 88),
                                 mesh.UPPER_LIP_TOP: (56, 80), mesh.CHIN: (56, 120)})
    assert torch.equal(mouth_region(path, 128, 64), expected)
    # a box reaching past the frame is cut at its edge; no landmarks, no region
    path = _landmarks(tmp_path, {mesh.MOUTH_CORNERS[0]: (50, 44), mesh.MOUTH_CORNERS[1]: (62, 44),
                                 mesh.UPPER_LIP_TOP: (56, 40), mesh.CHIN: (56, 70)})
    assert mouth_region(path, 64, 64)[0, 63, 63] == 1 and mouth_region(path, 64, 64)[0, :40].sum() == 0
    assert mouth_region(None, 64, 64).sum() == 0


@pytest.fixture(scope="module")
def talking_clip(tmp_path_factory, examples_dir):
    """obama.jpg at 64 px with one 1.2 s talking clip (real prep-depth output)."""
    from rgbdface.data.prep import PrepConfig, prepare_dataset

    root = tmp_path_factory.mktemp("mouth") / "obama"
    assert not prepare_dataset([examples_dir / "obama.jpg"], root, PrepConfig(size=64, talking_clips=1, clip_seconds=1.2)).failed
    return root


def test_clip_mouth_regions_cover_the_rendered_mouth(talking_clip):
    samples = read_samples(talking_clip)
    kw = dict(frames=4, motion_frames=2, audio_features=lambda s: np.zeros((100, 2), np.float32), window=3)
    item = ClipStream(samples, LatentSpec(64, 4, 16, 1000), 0, mouth=True, **kw)[0]
    assert "mouth" not in ClipStream(samples, LatentSpec(64, 4, 16, 1000), 0, **kw)[0]
    assert item["mouth"].shape == (4, 1, 64, 64)
    for region, j in zip(item["mouth"], item["indices"].tolist()):
        lm = np.load(samples[j].landmarks)[:, :2]
        inner = lm[mesh.mouth_loop()].round().astype(int)  # every point of the lips' inner edge lies in the region
        assert all(region[0, y, x] == 1 for x, y in inner)
        assert region[0, int(lm[mesh.NOSE_TIP, 1]), int(lm[mesh.NOSE_TIP, 0])] == 0  # the nose does not
        assert 0.02 < float(region.mean()) < 0.25


def test_stage3_loss_weighs_the_mouth_cells(talking_clip, monkeypatch):
    from rgbdface.training.config import resolve_config
    from rgbdface.training.objectives import Objective, make_objective
    from tests.motion_helpers import tiny_motion_model

    model = tiny_motion_model()
    samples = read_samples(talking_clip)
    spec = LatentSpec(32, model.meta.latent_channels, model.latent_size, 1000)
    feats = lambda s: torch.randn(100, model.motion.config.audio_dim, generator=torch.Generator().manual_seed(0))  # noqa: E731
    stream = ClipStream(samples, spec, 0, frames=2, motion_frames=model.motion.config.motion_frames, audio_features=feats,
                        window=model.motion.config.audio_window, mouth=True)
    batch = collate([stream[0]])
    seen = []
    original = Objective._weighted_mse

    def spy(pred, target, w, c):
        seen.append(w)
        return original(pred, target, w, c)

    monkeypatch.setattr(Objective, "_weighted_mse", staticmethod(spy))
    losses = {}
    for weight in (1.0, 4.0):
        obj = make_objective(model, resolve_config(3, "tiny", [f"loss.mouth_weight={weight}", "motion.frames=2"]))
        with torch.no_grad():
            losses[weight], _ = obj(batch)
    plain, weighted = seen
    cells = torch.nn.functional.max_pool2d(batch["mouth"][0], model.codec.downsample) > 0  # [F, 1, h, w]
    assert 0 < int(cells.sum()) < cells.numel()
    assert torch.equal(plain, torch.ones_like(plain))  # weight 1: as without regions
    assert torch.equal(weighted, torch.where(cells, 4.0, 1.0).expand_as(weighted))
    assert not torch.isclose(losses[1.0], losses[4.0])


def test_clip_noise_shared_by_every_frame_or_drawn_per_frame(talking_clip):
    samples = read_samples(talking_clip)
    kw = dict(frames=4, motion_frames=2, audio_features=lambda s: np.zeros((100, 2), np.float32), window=3)
    video = ClipStream(samples, LatentSpec(64, 4, 16, 1000), 0, noise="video", **kw)[0]["noise"]
    frame = ClipStream(samples, LatentSpec(64, 4, 16, 1000), 0, noise="frame", **kw)[0]["noise"]
    assert all(torch.equal(video[0], v) for v in video)  # one noise for the clip, as talk starts a video
    assert torch.equal(video[0], frame[0]) and not torch.equal(frame[0], frame[1])
    from rgbdface.training.config import resolve_config

    assert resolve_config(3, "tiny").motion.noise == "frame"  # eq. 5 per frame unless asked


def test_stage3_can_train_the_audio_parts_alone(talking_clip, tmp_path):
    from typer.testing import CliRunner

    from rgbdface.cli.app import app
    from rgbdface.models.builder import build_tiny
    from rgbdface.models.model import RGBDFaceModel

    stage1 = build_tiny(64, seed=0)
    stage1.meta.stages = [0, 1]
    tiny_model_dir = stage1.save_pretrained(tmp_path / "stage1")

    common = ["--set", "motion.frames=4", "--set", "motion.motion_frames=2", "--set", "log.sample_every=0",
              "--set", "log.checkpoint_every=0", "-q"]
    r = CliRunner().invoke(app, ["train-motion", str(talking_clip), "-o", str(tmp_path / "s3"), "-m", str(tiny_model_dir),
                                 "--max-steps", "1", *common])
    assert r.exit_code == 0, r.output
    first = RGBDFaceModel.from_pretrained(tmp_path / "s3" / "model").motion
    r = CliRunner().invoke(app, ["train-motion", str(talking_clip), "-o", str(tmp_path / "audio"), "-m", str(tmp_path / "s3" / "model"),
                                 "--max-steps", "2", "--set", "motion.train=audio", "--set", "optim.lr=0.01", *common])
    assert r.exit_code == 0, r.output
    then = RGBDFaceModel.from_pretrained(tmp_path / "audio" / "model").motion
    for a, b in zip(first.temporal.state_dict().values(), then.temporal.state_dict().values()):
        assert torch.equal(a, b)  # the temporal modules as they were
    assert any(not torch.equal(a, b) for a, b in zip(first.audio_attn.state_dict().values(), then.audio_attn.state_dict().values()))
    r = CliRunner().invoke(app, ["train-motion", str(talking_clip), "-o", str(tmp_path / "bad"), "-m", str(tiny_model_dir),
                                 "--set", "motion.train=temporal", *common])
    assert r.exit_code == 2 and "motion.train must be all or audio" in r.stderr
