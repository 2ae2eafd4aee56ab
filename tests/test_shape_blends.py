"""prep-depth --shape-blends: new face shapes from the space the fitted portraits span; and leaving
identities out of training leaves out what was made from them."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.camera import Camera, landmarks_to_camera
from rgbdface.data.io import load_depth, load_image
from rgbdface.data.manifest import load_manifest
from rgbdface.data.prep import aligned_shapes, random_shape
from rgbdface.data.studio import View, render_view
from rgbdface.utils import InputError

SIZE = 64


def prep(*args: str):
    return CliRunner().invoke(app, ["prep-depth", *args, "--size", str(SIZE), "-q"])


def _turn(points: np.ndarray, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return points @ rot.T


def test_alignment_removes_pose_scale_and_place_but_keeps_shape():
    rng = np.random.default_rng(0)
    face = rng.normal(0, 10, (478, 3)) + 32
    other = face + rng.normal(0, 1.0, face.shape)  # another shape
    moved = _turn(face, 25) * 1.7 + np.array([5.0, -3.0, 2.0])  # the first shape, posed, scaled and moved
    a = aligned_shapes([face, moved, other])
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)  # the same shape once aligned
    assert np.abs(a[0] - a[2]).mean() > 0.3  # a different one stays different
    # no mirror image: a shape aligned onto its own mirror image would not match it
    mirrored = face * np.array([-1.0, 1.0, 1.0])
    m = aligned_shapes([face, mirrored])
    assert np.abs(m[0] - m[1]).mean() > 1.0


def test_random_shapes_spread_about_the_mean_as_the_portraits_do():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 10, (478, 3))
    aligned = np.stack([base + rng.normal(0, 1.0, base.shape) for _ in range(4)])
    mean = aligned.mean(0)
    np.testing.assert_allclose(random_shape(aligned, rng, spread=0.0), mean)
    portraits = np.mean([np.sum((a - mean) ** 2) for a in aligned])
    draws = np.mean([np.sum((random_shape(aligned, rng) - mean) ** 2) for _ in range(400)])
    assert 0.8 * portraits < draws < 1.2 * portraits
    # by hand: weights w give mean + sum_i w_i (a_i - mean)
    w = np.random.default_rng(7).normal(0.0, 0.5, 4)
    np.testing.assert_allclose(random_shape(aligned, np.random.default_rng(7)), mean + np.einsum("p,pnk->nk", w, aligned - mean))


@pytest.fixture(scope="module")
def blended(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("blend")
    inputs = [str(examples_dir / f"{n}.jpg") for n in ("astronaut", "biden", "grace_hopper")]
    r = prep(*inputs, "-o", str(out), "--shape-blends", "4", "--blend-views", "2")
    assert r.exit_code == 0, r.stderr
    return out, load_manifest(out)


def test_each_blend_is_a_new_shape_under_each_portrait_skin_in_turn(blended):
    root, samples = blended
    wild = {s.identity: s for s in samples if s.source == "wild"}
    blends = {}
    for s in samples:
        if s.identity.startswith("blend"):
            blends.setdefault(s.identity, []).append(s)
    assert sorted(blends) == ["blend000+astronaut", "blend001+biden", "blend002+grace_hopper", "blend003+astronaut"]
    assert all(len(v) == 2 for v in blends.values())
    for name, rows in blends.items():
        texture = wild[name.split("+")[1]]
        for s in rows:
            assert s.view["texture"] == texture.id and sorted(s.view["shapes"]) == sorted(w.id for w in wild.values())
            depth, mask = load_depth(s.depth), load_image(s.mask)[..., 0] > 127
            assert mask.sum() > 0.03 * SIZE * SIZE and (depth[mask] > 0).all()
    # each is a shape no portrait has: under its first view, every portrait's own mesh renders another depth,
    # further from the blend's than a tenth of how far the portraits' are from one another
    cam = Camera.for_crop(SIZE)
    fits = [(load_image(w.rgb), np.load(w.landmarks)) for w in wild.values()]

    def apart(a: np.ndarray, b: np.ndarray) -> float:
        both = (a > 0) & (b > 0)
        return float(np.abs((a - a[both].mean()) - (b - b[both].mean()))[both].mean())

    for rows in blends.values():
        v = rows[0].view
        view = View(v["yaw"], v["pitch"], v["roll"], v["jaw"], tuple(v["light"]), tuple(map(tuple, v["background"])), v["blink"])
        own = [render_view(image, lm, landmarks_to_camera(lm, cam), cam, view).depth for image, lm in fits]
        spread = np.mean([apart(a, b) for i, a in enumerate(own) for b in own[i + 1:]])
        assert spread > 0.3  # mm: the portraits' shapes differ
        assert min(apart(load_depth(rows[0].depth), o) for o in own) > 0.1 * spread
    # one skin tone per blend, not the photo's own
    tones = {k: {tuple(s.view["albedo"]) for s in v} for k, v in blends.items()}
    assert all(len(t) == 1 and next(iter(t)) != (1.0, 1.0, 1.0) for t in tones.values())


def test_rerun_keeps_finished_blends_and_adds_the_missing(tmp_path, examples_dir):
    out = tmp_path / "ds"
    inputs = [str(examples_dir / "astronaut.jpg"), str(examples_dir / "biden.jpg")]
    assert prep(*inputs, "-o", str(out), "--shape-blends", "1", "--blend-views", "1").exit_code == 0
    first = out / "rows" / "mix-blend000.jsonl"
    stamp = first.stat().st_mtime_ns
    r = prep(*inputs, "-o", str(out), "--shape-blends", "2", "--blend-views", "1")
    assert r.exit_code == 0, r.stderr
    assert first.stat().st_mtime_ns == stamp
    assert {s.identity for s in load_manifest(out) if s.identity.startswith("blend")} == {"blend000+astronaut", "blend001+biden"}


def test_one_portrait_is_reported_and_bad_counts_are_usage_errors(tmp_path, examples_dir):
    r = prep(str(examples_dir / "astronaut.jpg"), "-o", str(tmp_path / "one"), "--shape-blends", "2")
    assert r.exit_code == 1 and "--shape-blends needs at least two fitted portraits" in r.stderr
    assert [s.identity for s in load_manifest(tmp_path / "one")] == ["astronaut"]
    for args in (("--shape-blends", "-1"), ("--shape-blends", "1", "--blend-views", "0")):
        r = prep(str(examples_dir / "astronaut.jpg"), "-o", str(tmp_path / "bad"), *args)
        assert r.exit_code == 2 and args[-2] in r.stderr


def test_leaving_an_identity_out_leaves_out_what_was_made_from_it(blended, tmp_path, examples_dir):
    from rgbdface.training.data import exclude_identities, read_samples

    samples = read_samples(blended[0])
    kept = exclude_identities(samples, ["biden"])
    assert kept and all(s.identity != "biden" for s in kept)
    assert not [s for s in kept if s.identity.startswith("blend")]  # every blend has biden's shape in it
    out = tmp_path / "mix"
    assert prep(str(examples_dir / "astronaut.jpg"), str(examples_dir / "biden.jpg"), "-o", str(out), "--studio-mix", "1").exit_code == 0
    kept = {s.identity for s in exclude_identities(read_samples(out), ["biden"])}
    assert kept == {"astronaut", "astronaut+astronaut"}  # not astronaut+biden nor biden+astronaut
    with pytest.raises(InputError, match="no identity 'blend000'"):
        exclude_identities(samples, ["blend000"])
