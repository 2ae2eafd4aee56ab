"""The latent codec: depth normalisation, replication and mean-of-channels decoding."""

import torch

from rgbdface.models.codec import FAR, normalize_depth


def test_normalize_depth_robust_quantiles_and_far_invalid():
    d = torch.linspace(1.0, 2.0, 100).reshape(1, 1, 10, 10).clone()
    d[0, 0, 0, :3] = 0.0  # invalid pixels
    n = normalize_depth(d)
    valid = d > 0
    assert n.min() >= -1 and n.max() <= 1
    assert torch.all(n[~valid] == FAR)
    # Order is kept: larger = farther.
    v = n[valid]
    assert torch.all(v[1:] >= v[:-1])
    # 2% / 98% quantiles land on -1 / +1, the middle in between.
    q = torch.quantile(d[valid], torch.tensor([0.02, 0.98]))
    assert torch.isclose(n[d == d[valid].min()], torch.tensor(-1.0)).all()
    mid = (q[0] + q[1]) / 2
    idx = (d - mid).abs().argmin()
    assert abs(n.flatten()[idx].item()) < 0.05


def test_normalize_depth_is_affine_invariant_and_handles_empty():
    d = torch.rand(2, 1, 8, 8) + 0.5
    torch.testing.assert_close(normalize_depth(d), normalize_depth(3.0 * d + 7.0), rtol=0, atol=1e-5)
    empty = torch.zeros(1, 1, 4, 4)
    assert torch.all(normalize_depth(empty) == FAR)


@torch.no_grad()
def test_codec_shapes_determinism_and_depth_decoding(tiny_model):
    codec = tiny_model.codec
    assert codec.downsample == 4
    depth = torch.rand(2, 1, 32, 32) + 1.0
    z = codec.encode_depth(depth)
    assert z.shape == (2, 4, 8, 8)
    assert torch.equal(z, codec.encode_depth(depth))  # posterior mean: deterministic
    # Depth is replicated to 3 channels before encoding: same latent as encoding the replicated map.
    torch.testing.assert_close(z, codec.encode(normalize_depth(depth).expand(-1, 3, -1, -1)))
    d = codec.decode_depth(z)
    assert d.shape == (2, 1, 32, 32) and d.min() >= -1 and d.max() <= 1
    torch.testing.assert_close(d, codec.decode(z).mean(1, keepdim=True))
