"""Relighting against the closed form on an analytic sphere, and the `relight` command's errors."""

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from rgbdface.cli.app import app
from rgbdface.data.io import save_depth16
from rgbdface.pipelines.relight import Light, normals_from_depth, relief_depth_scale, relight, shade

H = W = 81
CX = CY = 40
R = 32.0


def sphere(far=500.0):
    """Depth (larger = farther, in pixels) of a sphere of radius R facing the viewer, its true normals, and its disc."""
    v, u = np.mgrid[:H, :W].astype(np.float64)
    x, y = u - CX, -(v - CY)  # x right, y up
    q = R**2 - x**2 - y**2
    disc = q > 0
    z = np.sqrt(np.clip(q, 0, None))  # toward the viewer
    depth = np.where(disc, far - z, 0.0)
    normals = np.stack([x, y, z], -1) / R
    normals[~disc] = 0
    return depth, normals, disc, np.hypot(x, y)


def gray_image(value=200):
    return np.full((H, W, 3), value, np.uint8)


# --------------------------------------------------------------------------- normals


def test_sphere_normals_match_closed_form():
    depth, true_n, disc, rho = sphere()
    n = normals_from_depth(depth, depth_scale=1.0)
    inner = rho < 0.85 * R
    err = np.linalg.norm(n - true_n, axis=-1)
    assert err[inner].max() < 0.02
    assert np.allclose(np.linalg.norm(n[disc], axis=-1), 1, atol=1e-6)
    assert (n[~disc] == 0).all()
    # right side faces +x, top faces +y
    assert n[CY, CX + 20, 0] > 0.5 and n[CY - 20, CX, 1] > 0.5


def test_relief_scale_recovers_the_sphere_from_relative_depth():
    depth, true_n, disc, rho = sphere()
    relative = np.where(disc, 1000 + 37.5 * depth, 0)  # unknown scale and shift
    n = normals_from_depth(relative)  # default relief 0.5 = a hemisphere
    inner = rho < 0.7 * R
    assert np.linalg.norm(n - true_n, axis=-1)[inner].max() < 0.06
    # the relief choice does not depend on the depth's units
    assert relief_depth_scale(relative, disc) * 37.5 == pytest.approx(relief_depth_scale(depth, disc))


def test_planes_and_borders_are_exact_without_leaking():
    v, u = np.mgrid[:20, :30].astype(np.float64)
    depth = 100 + 2.0 * u  # a plane, farther to the right: it faces right (+x), like a sphere's right side
    depth[:, 14] = 0  # an invalid column splits it
    depth[:, 15:] += 5000  # a big step behind the gap must not leak into the normals
    depth[5, 5] = 0  # a hole
    n = normals_from_depth(depth, depth_scale=1.0)
    valid = depth > 0
    expected = np.array([2.0, 0.0, 1.0]) / np.sqrt(5)
    np.testing.assert_allclose(n[valid], np.broadcast_to(expected, n[valid].shape), atol=1e-6)
    assert (n[~valid] == 0).all()


def test_isolated_pixel_faces_the_viewer():
    depth = np.zeros((5, 5))
    depth[2, 2] = 7.0
    n = normals_from_depth(depth, depth_scale=1.0)
    np.testing.assert_allclose(n[2, 2], [0, 0, 1])


def test_torch_input_gives_the_same_normals():
    torch = pytest.importorskip("torch")
    depth, *_ = sphere()
    np.testing.assert_allclose(normals_from_depth(torch.from_numpy(depth)), normals_from_depth(depth))


# --------------------------------------------------------------------------- shading and relighting


def test_frontal_light_gives_n_dot_l():
    depth, true_n, disc, rho = sphere()
    result = relight(gray_image(), depth, [(0, 0, 1)], ambient=0.0, depth_scale=1.0)
    inner = rho < 0.85 * R
    np.testing.assert_allclose(result.shading[inner], true_n[inner, 2], atol=0.02)
    assert result.shading[CY, CX] == pytest.approx(1.0)


def test_light_from_the_right_brightens_the_right_side():
    depth, true_n, disc, rho = sphere()
    result = relight(gray_image(), depth, [Light((1, 0, 0))], ambient=0.1, depth_scale=1.0)
    img = result.image[..., 0].astype(float)
    right = disc & (np.arange(W)[None, :] > CX)
    left = disc & (np.arange(W)[None, :] < CX)
    assert img[right].mean() > img[left].mean() + 50
    assert np.allclose(result.shading[left], 0.1)  # the left half faces away: ambient only
    inner = rho < 0.85 * R
    np.testing.assert_allclose(result.shading[inner], 0.1 + np.maximum(0, true_n[inner, 0]), atol=0.02)


def test_lights_add_up_and_intensity_scales():
    depth, *_ = sphere()
    n = normals_from_depth(depth, depth_scale=1.0)
    a = shade(n, [(1, 0, 1)], ambient=0)
    b = shade(n, [(0, 1, 0, 0.5)], ambient=0)
    both = shade(n, [(1, 0, 1), Light((0, 2, 0), 0.5)], ambient=0.2)
    np.testing.assert_allclose(both, a + b + 0.2, atol=1e-6)


def test_ambient_only_is_uniform():
    depth, _, disc, _ = sphere()
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3)).astype(np.uint8)
    result = relight(image, depth, [], ambient=0.5)
    assert np.all(result.shading[disc] == 0.5)
    expected = np.round(image[disc].astype(float) * 0.5)
    np.testing.assert_array_equal(result.image[disc], expected)


def test_outside_the_valid_region_is_unchanged():
    depth, _, disc, _ = sphere()
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3)).astype(np.uint8)
    result = relight(image, depth, [(1, 1, 1, 2.0)], ambient=0.3)
    np.testing.assert_array_equal(result.image[~disc], image[~disc])
    np.testing.assert_array_equal(result.valid, disc)
    assert result.image.dtype == np.uint8
    assert not np.array_equal(result.image[disc], image[disc])


def test_float_images_stay_in_range():
    depth, _, disc, _ = sphere()
    result = relight(np.full((H, W, 3), 0.8), depth, [(0, 0, 1, 3.0)], ambient=0.0)
    assert result.image.dtype == np.float64 and result.image.max() <= 1.0
    assert result.image[CY, CX, 0] == pytest.approx(1.0)  # 0.8 × 3 clipped


def test_relight_rejects_bad_inputs():
    depth, *_ = sphere()
    with pytest.raises(ValueError, match="must match"):
        relight(np.zeros((H, W + 1, 3), np.uint8), depth, [(0, 0, 1)])
    with pytest.raises(ValueError, match="no direction"):
        relight(gray_image(), depth, [(0, 0, 0)])
    with pytest.raises(ValueError, match="ambient"):
        relight(gray_image(), depth, [(0, 0, 1)], ambient=-1)


@pytest.mark.parametrize("text,ok", [("1,0,0", True), (" -1, 0.5 ,2,0.3", True), ("1,0", False),
                                     ("a,b,c", False), ("0,0,0", False), ("1,2,3,-1", False), ("1,2,3,4,5", False),
                                     ("nan,0,1", False)])
def test_light_parse(text, ok):
    if ok:
        light = Light.parse(text)
        assert np.linalg.norm(light.unit) == pytest.approx(1)
    else:
        with pytest.raises(ValueError, match="light"):
            Light.parse(text)


# --------------------------------------------------------------------------- the command


def run(*args):
    return CliRunner().invoke(app, ["relight", *map(str, args)])


@pytest.fixture
def files(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    depth, _, disc, _ = sphere()
    d16 = np.where(disc, np.round(depth * 10), 0).astype(np.uint16)  # 0.1-pixel units
    save_depth16(inp / "d.png", d16)
    iio.imwrite(inp / "face.png", gray_image(180))
    out = tmp_path / "out"
    out.mkdir()
    return inp / "face.png", inp / "d.png", out, disc


def test_cli_relights_and_writes_layers(files):
    image, depth, out, disc = files
    r = run(image, "--depth", depth, "--light", "1,0,0", "--ambient", "0", "-o", out / "lit.png",
            "--normals", out / "n.png", "--shading", out / "s.png")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    lit = iio.imread(out / "lit.png")
    assert lit.shape == (H, W, 3)
    right = disc & (np.arange(W)[None, :] > CX + 4)
    left = disc & (np.arange(W)[None, :] < CX - 4)
    assert lit[right].mean() > 60 and lit[left].max() == 0
    assert (lit[~disc] == 180).all()
    normals = iio.imread(out / "n.png")
    assert normals.shape == (H, W, 3) and (normals[~disc] == 0).all()
    assert normals[CY, CX + 20, 0] > 200  # +x encoded as red
    shading = iio.imread(out / "s.png")
    assert shading.shape == (H, W) and shading[CY, CX + 30] > shading[CY, CX + 5]
    assert sorted(p.name for p in out.iterdir()) == ["lit.png", "n.png", "s.png"]


def test_cli_depth_scale_option(files):
    image, depth, out, disc = files
    # depth is stored in 0.1-pixel units, so 0.1 pixels per unit reproduces the sphere
    r = run(image, "-d", depth, "-l", "0,0,1", "-a", "0", "--depth-scale", "0.1", "-o", out / "a.png", "--shading", out / "s.png")
    assert r.exit_code == 0, r.output
    _, true_n, _, rho = sphere()
    shading = iio.imread(out / "s.png") / 255.0
    inner = rho < 0.85 * R
    np.testing.assert_allclose(shading[inner], true_n[inner, 2], atol=0.03)


def assert_failed_cleanly(r, out, code, *words):
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0]
    assert r.stdout == ""
    assert list(out.iterdir()) == []  # nothing written, not even a temporary file


def test_cli_missing_image(files):
    image, depth, out, _ = files
    r = run(image.with_name("nope.png"), "-d", depth, "-l", "0,0,1", "-o", out / "o.png")
    assert_failed_cleanly(r, out, 1, "nope.png")


def test_cli_not_an_image(files):
    image, depth, out, _ = files
    fake = image.with_name("fake.jpg")
    fake.write_text("not an image")
    r = run(fake, "-d", depth, "-l", "0,0,1", "-o", out / "o.png", "--normals", out / "n.png")
    assert_failed_cleanly(r, out, 1, "fake.jpg", "not a readable image")


def test_cli_depth_of_another_size(files):
    image, depth, out, _ = files
    small = depth.with_name("small.png")
    save_depth16(small, np.ones((10, 12), np.uint16))
    r = run(image, "-d", small, "-l", "0,0,1", "-o", out / "o.png", "--shading", out / "s.png")
    assert_failed_cleanly(r, out, 1, "12x10", f"{W}x{H}")


@pytest.mark.parametrize("bad", ["1,0", "x,0,1", "0,0,0", "1,1,1,-2"])
def test_cli_bad_light(files, bad):
    image, depth, out, _ = files
    r = run(image, "-d", depth, "-l", "0,0,1", "-l", bad, "-o", out / "o.png")
    assert_failed_cleanly(r, out, 2, "--light", repr(bad))


def test_cli_needs_a_light_and_a_depth(files):
    image, depth, out, _ = files
    assert_failed_cleanly(run(image, "-d", depth, "-o", out / "o.png"), out, 2, "--light")
    r = run(image, "-l", "0,0,1", "-o", out / "o.png")
    assert r.exit_code != 0
    assert_failed_cleanly(r, out, r.exit_code, "--depth")


def test_cli_unknown_output_suffix(files):
    image, depth, out, _ = files
    r = run(image, "-d", depth, "-l", "0,0,1", "-o", out / "o.xyz")
    assert_failed_cleanly(r, out, 2, "o.xyz")


def test_cli_outputs_must_differ(files):
    image, depth, out, _ = files
    r = run(image, "-d", depth, "-l", "0,0,1", "-o", out / "o.png", "--normals", out / "o.png")
    assert_failed_cleanly(r, out, 2, "different files")


def test_smoothing_removes_upsampling_facets_and_keeps_the_region():
    import numpy as np

    from rgbdface.pipelines.relight import normals_from_depth, smooth_depth

    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    coarse = 1.0 + (xx - 0.5) ** 2 + (yy - 0.5) ** 2  # a smooth bowl at 16 px
    idx = np.arange(96) * 16 // 96
    blocky = coarse[idx][:, idx]  # nearest upsampling ×6: flat facets
    blocky[:, :10] = 0  # an invalid strip
    sm = smooth_depth(blocky, sigma=6)
    assert (sm[:, :10] == 0).all() and (sm[:, 10:] > 0).all()
    rough = lambda d: np.abs(np.diff(normals_from_depth(d, d > 0, depth_scale=40)[20:-20, 30:-20, 0], axis=1)).mean()
    assert rough(sm) < 0.3 * rough(blocky)
    assert np.array_equal(smooth_depth(blocky, 0), blocky)
