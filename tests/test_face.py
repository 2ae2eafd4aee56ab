"""The shared face-crop helper on real portraits."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from rgbdface.data import face
from rgbdface.data.face import FaceCrop, NoFaceError, crop_box_to, crop_face, detect_faces, face_landmarks, paste_back
from rgbdface.data.io import load_image
from rgbdface.utils import InputError
from tests_helpers import two_faces

NOSE_TIP = 1


def test_detects_one_face_on_each_portrait(portraits):
    assert len(portraits) >= 2
    for path in portraits:
        img = load_image(path)
        faces = detect_faces(img)
        assert len(faces) == 1, path.name
        lm = face_landmarks(img)[0]
        f = faces[0]
        # the detector's box holds the face mesh's nose tip
        assert f.x0 < lm[NOSE_TIP, 0] < f.x1 and f.y0 < lm[NOSE_TIP, 1] < f.y1, path.name
        assert 0.5 < f.score <= 1.0


def test_crop_is_square_and_centred_on_the_face(astronaut):
    crop = crop_face(astronaut, size=256, with_landmarks=True, name="astronaut")
    assert crop.image.shape == (256, 256, 3) and crop.image.dtype == np.uint8
    x0, y0, x1, y1 = crop.box
    assert x1 - x0 == pytest.approx(y1 - y0)
    assert crop.source_size == astronaut.shape[:2]
    lm = crop.landmarks
    assert lm.shape == (478, 3)
    # the face sits in the middle of the crop, taking roughly a third to a half of its width
    centre = lm[:, :2].mean(0)
    assert np.all(np.abs(centre - 128) < 40)
    assert 0.25 < np.ptp(lm[:, 0]) / 256 < 0.6


def test_crop_landmarks_agree_with_source_landmarks(astronaut):
    crop = crop_face(astronaut, with_landmarks=True)
    on_source = face_landmarks(astronaut)[0]
    back = crop.to_source(crop.landmarks)
    assert np.abs(back[:, :2] - on_source[:, :2]).mean() < 1.5  # source pixels
    assert np.abs(back[:, 2] - on_source[:, 2]).mean() < 2.0


def test_paste_back_restores_the_source_inside_the_box(astronaut):
    crop = crop_face(astronaut, size=512)
    back = paste_back(crop.image, crop, fill=0)
    assert back.shape == astronaut.shape and back.dtype == np.uint8
    x0, y0, x1, y1 = (int(round(v)) for v in crop.box)
    inner = (slice(max(y0, 0) + 2, min(y1, 512) - 2), slice(max(x0, 0) + 2, min(x1, 512) - 2))
    diff = np.abs(back[inner].astype(int) - astronaut[inner].astype(int))
    assert diff.mean() < 3
    # outside the crop box: the fill value
    ones = paste_back(np.ones((512, 512), np.float32), crop, fill=0, interpolation="nearest")
    assert ones[:, : max(x0 - 1, 0)].sum() == 0 and ones[:, min(x1 + 1, 512) :].sum() == 0
    assert ones[inner].min() == 1


def test_crop_box_past_the_border_replicates_the_edge(astronaut):
    out = crop_box_to(astronaut, (-100.0, 0.0, 100.0, 200.0), 200)
    # left half lies outside the source: every column there repeats source column 0
    np.testing.assert_allclose(out[:, :95].astype(int), np.repeat(out[:, 95:96], 95, axis=1).astype(int), atol=1)
    assert np.abs(out[:, 99].astype(int) - astronaut[:200, 0].astype(int)).mean() < 2
    zeros = crop_box_to(astronaut, (-100.0, 0.0, 100.0, 200.0), 200, border="constant")
    assert zeros[:, :95].max() == 0


def test_large_downscale_is_filtered_and_aligned(astronaut):
    big = np.repeat(np.repeat(astronaut, 8, axis=0), 8, axis=1)  # 4096 x 4096, each pixel an 8x8 block
    box = (100.0, 50.0, 400.0, 350.0)
    small = crop_box_to(astronaut, box, 150)
    from_big = crop_box_to(big, tuple(v * 8 for v in box), 150)
    assert np.abs(small.astype(int) - from_big.astype(int)).mean() < 4


def test_no_face_names_the_input():
    import skimage.data

    with pytest.raises(NoFaceError, match=r"^coffee: no face found; pass a photo with a visible face$"):
        crop_face(skimage.data.coffee(), name="coffee")


def test_tiny_face_is_rejected(astronaut):
    import cv2

    tiny = cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA)  # face ~20 px
    with pytest.raises(InputError, match="tiny"):
        crop_face(tiny, name="tiny")
    with pytest.raises(InputError, match="only 20x20 pixels"):
        crop_face(cv2.resize(astronaut, (20, 20)), name="speck")


def test_which_picks_faces_by_size(examples_dir):
    canvas = two_faces(examples_dir)
    faces = detect_faces(canvas)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    first, second = crop_face(canvas, which="largest"), crop_face(canvas, which=1)
    assert (first.box[0] + first.box[2]) / 2 < 512 < (second.box[0] + second.box[2]) / 2
    with pytest.raises(NoFaceError, match="face 2 requested but 2 found"):
        crop_face(canvas, which=2)


def test_mediapipe_objects_are_cached_and_work_in_spawned_workers(astronaut):
    from concurrent.futures import ProcessPoolExecutor

    box = crop_face(astronaut).box
    n = len(face._MP_OBJECTS)
    assert crop_face(astronaut).box == box
    assert len(face._MP_OBJECTS) == n  # a second call builds no new graphs
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        child_box = pool.submit(crop_face, astronaut).result(timeout=120).box
    np.testing.assert_allclose(child_box, box, atol=1e-3)


def test_forked_child_gets_a_clear_error_not_a_crash(astronaut):
    crop_face(astronaut)  # MediaPipe runs in this (parent) process
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_try_in_child, args=(astronaut, queue))
    proc.start()
    message = queue.get(timeout=60)
    proc.join(timeout=60)
    assert "start worker processes with the 'spawn' method" in message


def _try_in_child(img, queue):
    try:
        crop_face(img)
        queue.put("no error")
    except RuntimeError as e:
        queue.put(str(e))


def test_facecrop_coordinate_round_trip():
    crop = FaceCrop(np.zeros((100, 100, 3), np.uint8), (10.0, 20.0, 60.0, 70.0), (80, 90))
    pts = np.array([[10.0, 20.0, 5.0], [35.0, 45.0, -2.0]])
    np.testing.assert_allclose(crop.to_crop(pts), [[0, 0, 10], [50, 50, -4]], atol=1e-5)
    np.testing.assert_allclose(crop.to_source(crop.to_crop(pts)), pts, atol=1e-4)
