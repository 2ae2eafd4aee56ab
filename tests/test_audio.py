"""Audio in: any ffmpeg-readable file → 16 kHz mono; mel and wav2vec2 features at 25 fps; windows; errors."""

import math

import numpy as np
import pytest
import torch

from motion_helpers import SR, speech_like, write_video_with_audio, write_wav
from rgbdface.data.audio import audio_windows, load_audio, num_video_frames
from rgbdface.models.audio import MelAudioEncoder, Wav2VecAudioEncoder, make_audio_encoder
from rgbdface.utils import InputError


def test_load_audio_resamples_and_mixes_down(tmp_path):
    x = speech_like(1.5, sr=44100)
    wave = load_audio(write_wav(tmp_path / "a.wav", x, sr=44100, channels=2))
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 1.5 * SR) <= 2
    assert 0.2 < np.abs(wave).max() <= 1.0
    cut = load_audio(tmp_path / "a.wav", max_seconds=0.5)
    assert abs(cut.size - 0.5 * SR) <= 2


def test_load_audio_reads_the_audio_of_a_video(tmp_path):
    wave = load_audio(write_video_with_audio(tmp_path / "v.mp4", 1.2))
    assert abs(wave.size / SR - 1.2) < 0.05 and np.abs(wave).max() > 0.1


@pytest.mark.parametrize("kind", ["missing", "unreadable", "empty", "silent", "no_audio_track"])
def test_bad_audio_is_a_one_line_input_error(kind, tmp_path):
    p = tmp_path / "a.wav"
    if kind == "unreadable":
        p.write_text("not audio at all")
    elif kind == "empty":
        write_wav(p, np.zeros(0, np.float32))
    elif kind == "silent":
        write_wav(p, np.zeros(SR, np.float32))
    elif kind == "no_audio_track":
        import imageio.v3 as iio

        p = tmp_path / "still.png"
        iio.imwrite(p, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError) as e:
        load_audio(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg


@pytest.mark.parametrize("seconds", [0.04, 1.0, 1.01, 2.37])
def test_mel_features_have_one_row_per_video_frame(seconds):
    x = speech_like(seconds)
    enc = MelAudioEncoder()
    feats = enc.video_features(x)
    assert feats.shape == (math.ceil(seconds * 25 - 1e-9), 80) == (num_video_frames(x.size), enc.dim)
    assert torch.isfinite(feats).all()
    assert torch.equal(feats, MelAudioEncoder().video_features(x))  # deterministic
    other = enc.video_features(speech_like(seconds, seed=1) * 0.2)
    assert not torch.allclose(feats, other)


def test_mel_features_follow_loudness_over_time():
    x = speech_like(2.0)
    x[: SR] *= 0.01  # the first second is much quieter
    feats = MelAudioEncoder().video_features(x)  # [50, 80]
    energy = feats.mean(dim=1)
    assert energy[5:20].mean() < energy[30:45].mean() - 2


def _raw_log_mel(x: np.ndarray) -> torch.Tensor:
    """log(mel power + 1e-6) at 100 frames/s, written out from torch.stft: the unnormalised features."""
    from rgbdface.models.audio import mel_filterbank

    spec = torch.stft(torch.from_numpy(x), n_fft=400, hop_length=160, window=torch.hann_window(400), center=True,
                      pad_mode="reflect", return_complex=True)
    return torch.log(mel_filterbank(400, 80, SR, 0.0, 8000.0) @ spec.abs().square() + 1e-6).T


def test_normalised_mel_features_do_not_depend_on_gain():
    x = speech_like(1.6)
    x[SR // 2: SR] = 0.0  # a pause of digital silence inside the speech
    enc = MelAudioEncoder(normalise=True)
    same = enc.video_features(x)
    for g in (0.1, 10.0):
        assert torch.allclose(enc.video_features(x * g), same, atol=1e-4), g
    raw = MelAudioEncoder().video_features
    assert (raw(x * 10.0) - raw(x))[:10].mean() > 4  # unnormalised, the gain shifts the speech's features (log 100 = 4.6)


def test_normalised_mel_silence_sits_at_the_floor():
    enc = MelAudioEncoder(normalise=True)
    floor = math.log(enc.FLOOR)
    x = speech_like(2.0)
    x[SR // 2: 3 * SR // 2] = 0.0  # one second of digital zeros
    feats = enc.native(torch.from_numpy(x))  # [T', 80] at 100 frames/s
    assert torch.isfinite(feats).all()
    assert torch.allclose(feats[60:140], torch.full_like(feats[60:140], floor))  # away from the edges' windows
    assert feats[:40].mean() > floor + 3  # speech lies well above it
    # low room noise in place of the zeros lands on (nearly) the same floor
    noisy = x.copy()
    noisy[SR // 2: 3 * SR // 2] = 1e-4 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    quiet = enc.native(torch.from_numpy(noisy))[60:140]
    assert (quiet - floor).abs().max() < 0.05
    zeros = enc.video_features(np.zeros(SR, np.float32))
    assert zeros.shape == (25, 80) and torch.isfinite(zeros).all() and torch.allclose(zeros, torch.full_like(zeros, floor))


def test_mel_record_keeps_normalise_and_an_old_record_computes_as_before():
    assert MelAudioEncoder(normalise=True).record() == {"kind": "mel", "dim": 80, "normalise": True}
    old = make_audio_encoder("mel", 80)  # a record without the field
    assert old.normalise is False
    x = speech_like(1.0)
    assert torch.equal(old.native(torch.from_numpy(x)), _raw_log_mel(x))
    assert make_audio_encoder("mel", 80, normalise=True).normalise is True


def test_audio_windows_are_clamped_at_the_ends():
    feats = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 3)  # frame f has value f
    w = audio_windows(feats, k=5)
    assert w.shape == (6, 5, 3)
    assert w[0, :, 0].tolist() == [0, 0, 0, 1, 2]
    assert w[3, :, 0].tolist() == [1, 2, 3, 4, 5]
    assert w[5, :, 0].tolist() == [3, 4, 5, 5, 5]
    with pytest.raises(ValueError):
        audio_windows(feats, k=4)


def test_windows_of_chosen_frames_are_rows_of_the_full_windows():
    """Training windows a clip's target frames, inference every frame: one function, the same windows."""
    feats = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    full = audio_windows(feats, k=5)
    assert torch.equal(audio_windows(feats, k=5, frames=[0, 3, 9]), full[[0, 3, 9]])
    stored = feats.numpy().astype(np.float16)  # prep-depth's wav2vec.npy
    w = audio_windows(stored, k=3, frames=[9])
    assert w.dtype == torch.float32 and torch.equal(w, audio_windows(feats, k=3)[[9]])


@pytest.fixture(scope="module")
def wav2vec_dir(tmp_path_factory):
    """A tiny wav2vec 2.0 built from config and saved as safetensors (no download)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                         conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         do_stable_layer_norm=False, feat_extract_norm="group")
    path = tmp_path_factory.mktemp("w2v") / "wav2vec2-tiny"
    Wav2Vec2Model(cfg).save_pretrained(path, safe_serialization=True)
    return path


def test_wav2vec_features_concatenate_all_layers(wav2vec_dir):
    from transformers import Wav2Vec2Model

    enc = make_audio_encoder("wav2vec2", folder=wav2vec_dir)
    assert isinstance(enc, Wav2VecAudioEncoder) and enc.dim == 3 * 16  # (2 layers + embedding) × 16
    x = speech_like(1.3)
    feats = enc.video_features(x)
    assert feats.shape == (33, 48) and torch.isfinite(feats).all()
    assert enc.record() == {"kind": "wav2vec2", "dim": 48, "folder": str(wav2vec_dir)}
    # Each block of 16 columns follows one layer's hidden states (layer-major concatenation).
    model = Wav2Vec2Model.from_pretrained(wav2vec_dir, use_safetensors=True).eval()
    xt = torch.from_numpy(x)[None]
    xt = (xt - xt.mean()) / torch.sqrt(xt.var() + 1e-7)
    with torch.no_grad():
        last = model(xt, output_hidden_states=True).hidden_states[-1][0]  # [T', 16]
    last = torch.nn.functional.interpolate(last.T[None], size=33, mode="linear", align_corners=False)[0].T
    torch.testing.assert_close(feats[:, 32:], last, rtol=1e-4, atol=1e-4)


def test_wav2vec_long_audio_is_chunked_to_the_same_frame_count(wav2vec_dir):
    x = speech_like(1.0)
    whole = Wav2VecAudioEncoder(wav2vec_dir).native(torch.from_numpy(x))
    chunked = Wav2VecAudioEncoder(wav2vec_dir, chunk_seconds=0.5, margin_seconds=0.1).native(torch.from_numpy(x))
    assert abs(whole.shape[0] - chunked.shape[0]) <= 1 and chunked.shape[1] == whole.shape[1]


def test_wav2vec_folder_errors(tmp_path, wav2vec_dir):
    with pytest.raises(InputError, match="--wav2vec"):
        make_audio_encoder("wav2vec2", folder=None)
    with pytest.raises(InputError, match="no such folder"):
        make_audio_encoder("wav2vec2", folder=tmp_path / "nope")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((wav2vec_dir / "config.json").read_text())
    with pytest.raises(InputError, match="safetensors"):
        make_audio_encoder("wav2vec2", folder=bare)
    with pytest.raises(InputError, match="expects 99"):
        make_audio_encoder("wav2vec2", dim=99, folder=wav2vec_dir)


def test_wav2vec_features_match_the_training_features_of_prep_depth(wav2vec_dir):
    from rgbdface.models.audio import wav2vec_features

    x = speech_like(1.3)
    ours = Wav2VecAudioEncoder(wav2vec_dir).video_features(x)
    stored = torch.from_numpy(wav2vec_features(wav2vec_dir, x, n_frames=33).astype(np.float32))
    torch.testing.assert_close(ours, stored, rtol=2e-3, atol=2e-3)  # stored as float16
