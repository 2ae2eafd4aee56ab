"""The H.264 writer (imageio-ffmpeg): odd frame sizes padded, audio muxed and cut, nothing written without frames."""

import numpy as np
import pytest

from motion_helpers import speech_like, write_wav
from rgbdface.data.audio import load_audio
from rgbdface.data.video import VideoWriter, probe


def test_odd_frames_are_padded_and_the_audio_is_cut(tmp_path):
    wav = write_wav(tmp_path / "s.wav", speech_like(1.0))
    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=25, audio=wav, audio_seconds=0.4) as w:
        for i in range(10):
            w.write(np.full((33, 47, 3), 20 * i, np.uint8))
    assert probe(out) == {"video_codec": "h264", "pix_fmt": "yuv420p", "fps": 25.0, "size": (48, 34), "audio_codec": "aac"}
    assert abs(load_audio(out).size / 16000 - 0.4) < 0.05


def test_frames_must_match_and_a_video_needs_one(tmp_path):
    w = VideoWriter(tmp_path / "v.mp4")
    with pytest.raises(ValueError, match="no frames"):
        w.close()
    with pytest.raises(ValueError, match="differs"):
        with VideoWriter(tmp_path / "w.mp4") as w:
            w.write(np.zeros((16, 16, 3), np.uint8))
            w.write(np.zeros((16, 18, 3), np.uint8))


def test_frames_scaled_for_detection_come_without_a_size_note(tmp_path, caplog):
    from rgbdface.data.video import read_frames, video_size

    with VideoWriter(tmp_path / "v.mp4", fps=25) as w:
        for i in range(5):
            w.write(np.full((72, 128, 3), 40 * i, np.uint8))
    size = video_size(tmp_path / "v.mp4")
    with caplog.at_level("WARNING"):
        small = list(read_frames(tmp_path / "v.mp4", 25.0, width=64, size=size))
        full = list(read_frames(tmp_path / "v.mp4", 25.0))
    assert [f.shape for f in small] == [(36, 64, 3)] * 5 and [f.shape for f in full] == [(72, 128, 3)] * 5
    assert caplog.records == []  # imageio-ffmpeg's note that the frames differ in size from the source's
