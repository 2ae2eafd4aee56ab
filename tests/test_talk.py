"""`rgbdface talk` on a tiny stage-3 model: frame count, mp4 streams, motion frames, flat memory, errors."""

import math
import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from motion_helpers import SR, perturb, speech_like, tiny_motion_model, write_video_with_audio, write_wav
from rgbdface.cli.app import app
from rgbdface.data.video import probe
from rgbdface.data.audio import load_audio
from rgbdface.pipelines.talk import ClipProgress, denoise_clip, talk, talk_frames
from rgbdface.utils import InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return tiny_motion_model()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("talk") / "tiny3"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("audio") / "speech.wav", speech_like(0.9))


def _frame_count(path):
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def test_talk_writes_a_playable_video_with_audio(model_dir, portrait_path, speech, tmp_path):
    out, depth = tmp_path / "out.mp4", tmp_path / "depth.mp4"
    r = runner.invoke(app, ["talk", str(portrait_path), str(speech), "-o", str(out), "--depth-video", str(depth),
                            "--side-by-side", "--rgb-frames", str(tmp_path / "rgb"), "--depth-frames", str(tmp_path / "d"),
                            "--model", str(model_dir), "--steps", "1", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    assert "clip 2/2" in r.stderr and "ETA" in r.stderr
    frames = math.ceil(0.9 * 25)  # 23 frames: two clips of 14, the last one cut
    info = probe(out)
    assert info == {"video_codec": "h264", "pix_fmt": "yuv420p", "fps": 25.0, "size": (64, 32), "audio_codec": "aac"}
    assert probe(depth)["size"] == (32, 32) and probe(depth)["audio_codec"] == "aac"
    assert _frame_count(out) == _frame_count(depth) == frames
    # The audio track is the input's: as long, and still speech.
    back = load_audio(out)
    assert abs(back.size / SR - 0.9) < 0.03
    rgb = sorted((tmp_path / "rgb").iterdir())
    dep = sorted((tmp_path / "d").iterdir())
    assert [p.name for p in rgb] == [f"{i:06d}.png" for i in range(frames)] == [p.name for p in dep]
    d = iio.imread(dep[-1])
    assert d.dtype == np.uint16 and d.shape == (32, 32)
    assert iio.imread(rgb[0]).shape == (32, 32, 3)
    # Nothing else was left in the folder (no temporary files).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "depth.mp4", "out.mp4", "rgb"]


def test_frame_count_follows_the_audio_of_a_video_and_max_seconds(model_dir, portrait_path, tmp_path):
    clip = write_video_with_audio(tmp_path / "speech.mp4", 1.0)
    out = tmp_path / "o.mp4"
    r = runner.invoke(app, ["talk", str(portrait_path), str(clip), "-o", str(out), "--max-seconds", "0.5",
                            "--model", str(model_dir), "--steps", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    assert _frame_count(out) == math.ceil(0.5 * 25) == 13
    assert abs(load_audio(out).size / SR - 0.5) < 0.03


def test_frame_count_matches_duration(model, astronaut):
    crop = astronaut[:200, 150:350]  # any RGB array; talk_frames takes a face crop as is
    for seconds in (0.04, 0.6):
        frames = list(talk_frames(model, crop, speech_like(seconds), steps=1))
        assert len(frames) == math.ceil(seconds * 25) and [f.index for f in frames] == list(range(len(frames)))
        f = frames[-1]
        assert f.rgb.shape == (32, 32, 3) and f.rgb.dtype == np.uint8 and f.depth.shape == (32, 32) and f.valid.dtype == bool


@torch.no_grad()
def test_motion_frames_carry_the_previous_clip_into_the_next(astronaut):
    m = tiny_motion_model()
    perturb(m.motion.temporal, scale=0.5)
    cfg, s = m.motion.config, m.latent_size
    g = torch.Generator().manual_seed(0)
    windows = torch.randn(1, cfg.frames, cfg.audio_window, cfg.audio_dim, generator=g)
    noise = torch.randn(1, cfg.frames, 8, s, s, generator=g)
    z_ref = torch.randn(1, 4, s, s, generator=g)
    m.motion.set_reference(z_ref, m.context)
    previous = denoise_clip(m, windows, z_ref[:, None].repeat(1, 4, 1, 1, 1), noise, steps=1)  # a first clip
    motion = previous[:, -4:, :4]  # its last 4 generated RGB latents
    a = denoise_clip(m, windows, motion, noise, steps=1)
    changed = motion.clone()
    changed[:, -1] = torch.randn(changed[:, -1].shape, generator=g)  # a different last frame
    b = denoise_clip(m, windows, changed, noise, steps=1)
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(a, denoise_clip(m, windows, motion, noise, steps=1))  # and nothing else differs
    # With the temporal modules at their zero initialisation the motion frames have no effect.
    m0 = tiny_motion_model()
    m0.motion.set_reference(z_ref, m0.context)
    assert torch.equal(denoise_clip(m0, windows, motion, noise, steps=1), denoise_clip(m0, windows, changed, noise, steps=1))
    m.motion.clear(), m0.motion.clear()


def test_frames_stream_and_memory_does_not_grow_with_audio_length(model, astronaut, tmp_path):
    crop = astronaut[:200, 150:350]

    def run(seconds):
        written, at_clip = [], []
        growth = {}

        def on_clip(p: ClipProgress):
            at_clip.append(p.frames_done)
            if p.clip == 1:  # audio is loaded and features computed: measure from here
                tracemalloc.reset_peak()
                growth["base"] = tracemalloc.get_traced_memory()[0]

        tracemalloc.start()
        try:
            for f in talk_frames(model, crop, speech_like(seconds), steps=1, on_clip=on_clip):
                written.append(f.index)
                del f
                # A frame reaches the caller before the next clip is denoised.
                assert len(at_clip) >= (f_index := written[-1]) // 14
            peak = tracemalloc.get_traced_memory()[1] - growth["base"]
        finally:
            tracemalloc.stop()
        return peak, len(written)

    short_peak, short_n = run(1.2)
    long_peak, long_n = run(3.0)
    assert (short_n, long_n) == (30, 75)
    frame_bytes = 32 * 32 * (3 + 4 + 1)  # rgb + depth + valid, if they were kept
    assert long_peak - short_peak < (long_n - short_n) * frame_bytes / 4, (short_peak, long_peak)


def test_torch_memory_is_flat_in_audio_length_and_decoding_is_sliced(model, astronaut):
    """Every byte torch allocates (a dispatch-level count: the CPU's allocator statistics): a 3 s clip
    peaks no higher than a 1.2 s one but for the longer audio's per-frame features; decoding a
    frame at a time peaks lower than the whole clip at once, with the same frames."""
    from rgbdface.pipelines.memory import TensorMemory

    crop = astronaut[:200, 150:350]
    dim = model.motion.config.audio_dim

    def run(seconds, decode_batch=None):
        frames = []
        with TensorMemory() as memory:
            for f in talk_frames(model, crop, speech_like(seconds), steps=1, decode_batch=decode_batch):
                frames.append(f.rgb.copy())  # a copy: the frame itself holds torch memory (a numpy view)
        return memory.peak, frames

    (short, short_frames), (long, long_frames) = run(1.2), run(3.0)
    assert (len(short_frames), len(long_frames)) == (30, 75)
    features_growth = (75 - 30) * dim * 4  # float32 [N, A] of the extra 1.8 s, kept on the host
    assert long - short <= 1.5 * features_growth, (short, long, features_growth)

    (whole, whole_frames), (one, one_frames) = run(1.2, decode_batch=14), run(1.2, decode_batch=1)
    assert one < whole, (one, whole)
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(whole_frames, one_frames))


def test_talk_streams_to_writers_and_leaves_nothing_when_interrupted(model, astronaut, speech, tmp_path):
    crop = astronaut[:200, 150:350]

    def stop(p):
        if p.clip == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        talk(model, crop, speech, load_audio(speech), tmp_path / "o.mp4", depth_video=tmp_path / "d.mp4",
             rgb_frames=tmp_path / "rgb", steps=1, on_clip=stop)
    assert list(tmp_path.iterdir()) == []
    assert not model.joint.bank and not model.motion.state.motion  # features released


def _make_bad(kind, tmp_path):
    p = tmp_path / "a.wav"
    if kind == "silent":
        write_wav(p, np.zeros(SR, np.float32))
    elif kind == "empty":
        write_wav(p, np.zeros(0, np.float32))
    elif kind == "unreadable":
        p.write_text("definitely not audio")
    return p


@pytest.mark.parametrize("kind", ["silent", "empty", "unreadable", "no_face", "no_stage3", "unwritable", "not_video"])
def test_errors_are_one_line_and_leave_no_file(kind, model_dir, tiny_model_dir, portrait_path, speech, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    ref, audio, mdir = portrait_path, speech, model_dir
    out = work / "out.mp4"
    if kind in ("silent", "empty", "unreadable"):
        audio = _make_bad(kind, work)
    elif kind == "no_face":
        ref = work / "wall.png"
        iio.imwrite(ref, np.full((96, 96, 3), 180, np.uint8))
    elif kind == "no_stage3":
        mdir = tiny_model_dir  # stage 0 only
    elif kind == "unwritable":
        (work / "file").write_text("x")
        out = work / "file" / "out.mp4"  # a path below a file
    elif kind == "not_video":
        out = work / "out.txt"
    before = sorted(p.name for p in work.iterdir())
    r = runner.invoke(app, ["talk", str(ref), str(audio), "-o", str(out), "--model", str(mdir), "--steps", "1"])
    assert r.exit_code == (2 if kind == "not_video" else 1), r.output  # a wrong -o suffix is a usage error
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rgbdface: error:"), r.stderr
    expect = {"silent": "silent", "empty": "no audio", "unreadable": "not readable audio", "no_face": "no face",
              "no_stage3": "stage 3", "unwritable": "cannot write", "not_video": "video file"}[kind]
    assert expect in err[0]
    assert sorted(p.name for p in work.iterdir()) == before


def test_wav2vec_model_needs_its_folder(model, tmp_path):
    m = tiny_motion_model()
    m.motion.config.audio_encoder, m.motion.config.audio_folder = "wav2vec2", str(tmp_path / "moved")
    with pytest.raises(InputError, match="--wav2vec"):
        m.motion.audio_encoder()


def test_one_noise_for_the_video_leaves_only_the_model_to_change_frames(astronaut):
    """noise="video": frames differ only by what audio, motion frames and temporal attention make of them;
    with those at their zero initialisation every frame is the same. noise="frame": fresh noise per frame."""
    m = tiny_motion_model()  # audio and temporal attention zero-initialised
    wave = speech_like(1.0)  # 25 frames: several clips
    still = np.stack([f.rgb for f in talk_frames(m, astronaut, wave, steps=2, noise="video")])
    assert len(still) == 25 and (still == still[0]).all()
    fresh = np.stack([f.rgb for f in talk_frames(m, astronaut, wave, steps=2, noise="frame")])
    assert np.abs(np.diff(fresh.astype(int), axis=0)).mean() > 1
    with pytest.raises(ValueError, match="noise"):
        next(talk_frames(m, astronaut, wave, steps=2, noise="clip"))


def test_strength_starts_every_clip_from_the_reference_and_its_depth(astronaut):
    """strength < 1 (bundled model, stages 2 and 3): clips start from the reference's own latents noised to a
    late step and take only the remaining steps, so the frames keep the reference far more than from pure noise;
    strength 1 is the unchanged default."""
    from rgbdface.data.face import crop_face
    from rgbdface.metrics.generated import psnr
    from rgbdface.models.model import load_model
    from rgbdface.pipelines.common import image_to_tensor, tensor_to_images

    m = load_model()
    S = m.meta.image_size
    ref = crop_face(astronaut, size=256, margin=m.meta.crop_margin).image
    wave = speech_like(0.2)  # 5 frames, one clip
    small = tensor_to_images(image_to_tensor(ref, S))[0]
    with torch.no_grad():
        round_trip = tensor_to_images(m.codec.decode_rgb(m.codec.encode_rgb(image_to_tensor(ref, S))))[0]

    def frames(steps=4, **kw):
        return np.stack([f.rgb for f in talk_frames(m, ref, wave, steps=steps, **kw)])

    default, full = frames(), frames(strength=1.0)
    assert np.array_equal(default, full)
    late = frames(steps=20, strength=0.05)  # one step, from the reference noised to the last step's level (t = 49)
    # against what the codec itself keeps of the reference (the latent a late start begins from): far closer
    kept = np.mean([psnr(f, round_trip) for f in late])
    assert kept > np.mean([psnr(f, round_trip) for f in full]) + 5
    assert np.mean([psnr(f, small) for f in late]) > psnr(round_trip, small) - 3
    # every denoising step reads the reference's features (the depth estimate for the start must not clear them)
    seen = []
    forward = m.joint.forward

    def recording(*args, **kw):
        seen.append(len(m.joint.bank.features))
        return forward(*args, **kw)

    m.joint.forward = recording
    try:
        frames(strength=0.5)
    finally:
        del m.joint.forward
    assert len(seen) == 2 and min(seen) > 0
    for bad in (0.0, 1.5, 0.1):  # 0.1 of 4 steps leaves none
        with pytest.raises(ValueError, match="strength"):
            next(talk_frames(m, ref, wave, steps=4, strength=bad))
    with pytest.raises(InputError, match="stage 2"):
        next(talk_frames(tiny_motion_model(), astronaut, wave, steps=2, strength=0.5))  # no depth model for the start


def test_bad_strength_is_a_one_line_usage_error(model_dir, portrait_path, speech, tmp_path):
    r = runner.invoke(app, ["talk", str(portrait_path), str(speech), "-o", str(tmp_path / "t.mp4"), "--model", str(model_dir),
                            "--strength", "0", "--steps", "4"])
    assert r.exit_code == 2 and r.stderr.strip().startswith("rgbdface: error: --strength 0.0") and len(r.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_guidance_defaults_to_the_model_own_choice(astronaut):
    """talk_frames(guidance=None) takes the model's meta.talk_guidance (None: 1); an explicit value wins."""
    m = tiny_motion_model()
    perturb(m.motion)
    wave = speech_like(0.2)  # one clip

    def frames(**kw):
        return np.stack([f.rgb for f in talk_frames(m, astronaut, wave, steps=2, **kw)])

    off, guided = frames(guidance=1.0), frames(guidance=2.0)
    assert not np.array_equal(off, guided)  # guidance on the reference changes the frames
    assert np.array_equal(frames(), off)  # no choice in the model: off
    m.meta.talk_guidance = 2.0
    assert np.array_equal(frames(), guided)
    assert np.array_equal(frames(guidance=1.0), off)


def test_bundled_model_guides_talk_on_its_reference():
    from rgbdface.models.folder import BUNDLED_MODEL, read_meta

    assert read_meta(BUNDLED_MODEL)["talk_guidance"] == 2.0
