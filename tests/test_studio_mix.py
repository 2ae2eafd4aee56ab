"""prep-depth --studio-mix: mixed identities (the shape of one portrait under the skin of another)."""

from __future__ import annotations

import os

import numpy as np
import torch
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.camera import Camera, landmarks_to_camera
from rgbdface.data.face import crop_face
from rgbdface.data.io import load_depth, load_image
from rgbdface.data.manifest import load_manifest
from rgbdface.data.studio import View, render_view

SIZE = 96


def prep(*args: str):
    return CliRunner().invoke(app, ["prep-depth", *args, "--size", str(SIZE), "-q"])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("mix")
    r = prep(str(examples_dir / "astronaut.jpg"), str(examples_dir / "biden.jpg"), "-o", str(out), "--studio-mix", "2")
    assert r.exit_code == 0, r.stderr
    return out, load_manifest(out)


def test_every_ordered_pair_and_each_portrait_with_itself(mixed):
    _, samples = mixed
    studio = [s for s in samples if s.source == "studio"]
    by_identity = {}
    for s in studio:
        by_identity.setdefault(s.identity, []).append(s)
    assert sorted(by_identity) == ["astronaut+astronaut", "astronaut+biden", "biden+astronaut", "biden+biden"]
    assert all(len(v) == 2 for v in by_identity.values())
    wild = {s.identity: s for s in samples if s.source == "wild"}
    for s in by_identity["astronaut+biden"]:
        assert s.view["shape"] == wild["astronaut"].id and s.view["texture"] == wild["biden"].id
        depth, mask = load_depth(s.depth), load_image(s.mask)[..., 0] > 127
        assert mask.sum() > 0.03 * SIZE * SIZE and (depth[mask] > 0).all()
    # one skin tone per mixed identity, the same in each of its views, and not the source's
    tones = {k: {tuple(s.view["albedo"]) for s in v} for k, v in by_identity.items()}
    assert all(len(t) == 1 for t in tones.values())
    assert len({next(iter(t)) for t in tones.values()}) == 4
    assert all(next(iter(t)) != (1.0, 1.0, 1.0) for t in tones.values())


@pytest.fixture(scope="module")
def fits(examples_dir):
    crops = {n: crop_face(load_image(examples_dir / f"{n}.jpg"), SIZE, with_landmarks=True) for n in ("astronaut", "biden")}
    cam = Camera.for_crop(SIZE)
    return {n: (c.image, c.landmarks, landmarks_to_camera(c.landmarks, cam)) for n, c in crops.items()}, cam


VIEW = View(12.0, -5.0, 3.0, 6.0, (0.3, -0.2, -0.93), ((40, 60, 80), (90, 70, 50)))


def test_shape_from_one_portrait_skin_from_the_other(fits):
    (f, cam) = fits
    a_img, a_lm, a_v = f["astronaut"]
    b_img, b_lm, b_v = f["biden"]
    mix = render_view(b_img, b_lm, a_v, cam, VIEW, shape_landmarks=a_lm)  # astronaut's shape, biden's skin
    own_a = render_view(a_img, a_lm, a_v, cam, VIEW)
    own_b = render_view(b_img, b_lm, b_v, cam, VIEW)
    # geometry is the shape portrait's, exactly: depth, mask and landmarks
    np.testing.assert_array_equal(mix.depth, own_a.depth)
    np.testing.assert_array_equal(mix.mask, own_a.mask)
    np.testing.assert_allclose(mix.landmarks, own_a.landmarks, atol=1e-4)
    assert not np.array_equal(mix.depth, own_b.depth)
    # colour is the texture portrait's: the skin's mean colour is nearer biden's render than the astronaut's
    skin = own_a.mask & own_b.mask
    mean = lambda r: r.rgb[skin].astype(float).mean(0)
    assert np.linalg.norm(mean(mix) - mean(own_b)) < np.linalg.norm(mean(mix) - mean(own_a))


def test_albedo_scales_the_skin_and_not_the_background(fits):
    (f, cam) = fits
    img, lm, v = f["astronaut"]
    plain = render_view(img, lm, v, cam, VIEW)
    dark = render_view(img, lm, v, cam, View(**{**VIEW.__dict__, "albedo": (0.5, 0.6, 0.7)}))
    np.testing.assert_array_equal(dark.depth, plain.depth)
    off = ~(plain.depth > 0)
    np.testing.assert_array_equal(dark.rgb[off], plain.rgb[off])
    bright = plain.mask & (plain.rgb.min(-1) > 40) & (plain.rgb.max(-1) < 250)
    ratio = dark.rgb[bright].astype(float) / plain.rgb[bright].astype(float)
    np.testing.assert_allclose(np.median(ratio, 0), (0.5, 0.6, 0.7), atol=0.03)


def test_rerun_keeps_finished_pairs_and_adds_new_ones(tmp_path, examples_dir):
    out = tmp_path / "ds"
    assert prep(str(examples_dir / "astronaut.jpg"), "-o", str(out), "--studio-mix", "1").exit_code == 0
    first = out / "rows" / next(p.name for p in (out / "rows").iterdir() if p.name.startswith("mix-"))
    stamp = first.stat().st_mtime_ns
    r = CliRunner().invoke(app, ["prep-depth", str(examples_dir / "astronaut.jpg"), str(examples_dir / "obama.jpg"), "-o", str(out),
                                 "--size", str(SIZE), "--studio-mix", "1", "--json"])
    assert r.exit_code == 0, r.stderr
    assert first.stat().st_mtime_ns == stamp  # astronaut+astronaut was not redone
    identities = {s.identity for s in load_manifest(out) if s.source == "studio"}
    assert identities == {"astronaut+astronaut", "astronaut+obama", "obama+astronaut", "obama+obama"}
    assert '"skipped"' in r.stdout and "astronaut (shape) + astronaut (texture)" in r.stdout


def test_a_broken_portrait_fails_its_pairs_only(tmp_path, examples_dir):
    out = tmp_path / "ds"
    assert prep(str(examples_dir / "astronaut.jpg"), str(examples_dir / "biden.jpg"), "-o", str(out)).exit_code == 0
    biden = next(s for s in load_manifest(out) if s.identity == "biden")
    os.remove(biden.landmarks)
    r = prep(str(examples_dir / "astronaut.jpg"), str(examples_dir / "biden.jpg"), "-o", str(out), "--studio-mix", "1")
    assert r.exit_code == 1
    failed = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(failed) == 3 and all("biden" in line for line in failed)  # every pair that needs biden's landmarks
    assert {s.identity for s in load_manifest(out) if s.source == "studio"} == {"astronaut+astronaut"}


def test_negative_count_is_a_usage_error(tmp_path, examples_dir):
    r = prep(str(examples_dir / "astronaut.jpg"), "-o", str(tmp_path), "--studio-mix", "-1")
    assert r.exit_code == 2 and "--studio-mix" in r.stderr


def test_a_mixed_identity_is_drawn_over_the_photo_of_its_skin(mixed):
    from rgbdface.training.data import ImageStream, LatentSpec, load_depth_map, load_rgb, photos_by_identity, read_samples

    samples = read_samples(mixed[0])
    photos = photos_by_identity(samples)
    wild = {s.identity: i for i, s in enumerate(samples) if s.source == "wild"}
    assert photos["astronaut+biden"] == [wild["biden"]] and photos["biden+astronaut"] == [wild["astronaut"]]
    assert photos["biden+biden"] == [wild["biden"]] and photos["biden"] == [wild["biden"]]
    stream = ImageStream(samples, LatentSpec(SIZE, 4, SIZE // 8, 1000), 0, None, photo_background=1.0)
    seen = 0
    for n in range(len(stream)):
        item = stream[n]
        s = samples[item["index"]]
        if "+" not in s.identity:
            continue
        photo = load_rgb(samples[wild[s.identity.split("+")[1]]].rgb, SIZE)
        around = load_depth_map(s.depth, SIZE)[0] == 0
        assert torch.equal(item["rgb"][:, around], photo[:, around])
        seen += 1
    assert seen >= 4
