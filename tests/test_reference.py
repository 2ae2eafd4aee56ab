"""ReferenceNet with mutual self-attention: effect, dropout, and one pass per reference."""

import copy

import torch

from rgbdface.models.denoiser import RGBDDenoiser
from rgbdface.pipelines.sampling import sample_latents


def _inputs(model, b=2):
    g = torch.Generator().manual_seed(1)
    s = model.latent_size
    x = torch.randn(b, 8, s, s, generator=g)
    z_ref = torch.randn(1, 4, s, s, generator=g)
    return x, z_ref, torch.full((b,), 400)


def _plain_unet(model):
    """The denoiser with diffusers' default attention: the same weights, no reference attention."""
    unet = copy.deepcopy(model.joint.unet)
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    return unet


@torch.no_grad()
def test_reference_changes_the_prediction(tiny_model):
    x, z_ref, t = _inputs(tiny_model)
    den = tiny_model.joint
    with_ref = den(x, t, tiny_model.context, reference=z_ref)
    den.clear_reference()
    without = den(x, t, tiny_model.context)
    assert (with_ref - without).abs().max() > 1e-4
    # A different reference gives a different prediction.
    other = den(x, t, tiny_model.context, reference=torch.randn_like(z_ref))
    den.clear_reference()
    assert (other - with_ref).abs().max() > 1e-4


@torch.no_grad()
def test_dropping_the_reference_gives_the_plain_unet(tiny_model):
    x, z_ref, t = _inputs(tiny_model)
    den = tiny_model.joint
    plain = _plain_unet(tiny_model)(x, t, encoder_hidden_states=tiny_model.context.expand(2, -1, -1)).sample
    dropped = den(x, t, tiny_model.context, reference=z_ref, keep=torch.tensor([False, False]))
    den.clear_reference()
    assert torch.equal(dropped, plain)
    none = den(x, t, tiny_model.context)
    assert torch.equal(none, plain)


@torch.no_grad()
def test_per_sample_dropout_matches_separate_runs(tiny_model):
    x, z_ref, t = _inputs(tiny_model)
    den = tiny_model.joint
    mixed = den(x, t, tiny_model.context, reference=z_ref, keep=torch.tensor([True, False]))
    kept = den(x, t, tiny_model.context, keep=None)  # features still in the bank: both keep
    den.clear_reference()
    plain = den(x, t, tiny_model.context)
    torch.testing.assert_close(mixed[0], kept[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(mixed[1], plain[1], rtol=0, atol=1e-5)


@torch.no_grad()
def test_sampling_runs_the_reference_net_once_per_reference(tiny_model):
    calls = []
    handle = tiny_model.joint.reference_unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        x, z_ref, _ = _inputs(tiny_model)
        steps = 5
        unet_calls = []
        h2 = tiny_model.joint.unet.register_forward_hook(lambda *a: unet_calls.append(1))
        sample_latents(tiny_model.joint, tiny_model.sampling_scheduler("ddim"), z_ref, tiny_model.context,
                       num_per_reference=3, steps=steps, guidance=2.0, generator=torch.Generator().manual_seed(0))
        h2.remove()
    finally:
        handle.remove()
    assert len(calls) == 1
    assert len(unet_calls) == steps
    assert not tiny_model.joint.bank  # features are released after sampling


@torch.no_grad()
def test_each_sample_reads_its_own_reference(tiny_model):
    """Two references in one batch: each sample matches the run with its reference alone."""
    den = tiny_model.joint
    s = tiny_model.latent_size
    g = torch.Generator().manual_seed(3)
    refs = torch.randn(2, 4, s, s, generator=g)
    x = torch.randn(4, 8, s, s, generator=g)
    t = torch.full((4,), 250)
    both = den(x, t, tiny_model.context, reference=refs)  # samples 0,1 → ref 0; 2,3 → ref 1
    first = den(x[:2], t[:2], tiny_model.context, reference=refs[:1])
    second = den(x[2:], t[2:], tiny_model.context, reference=refs[1:])
    den.clear_reference()
    torch.testing.assert_close(both[:2], first, rtol=0, atol=1e-5)
    torch.testing.assert_close(both[2:], second, rtol=0, atol=1e-5)


def test_reference_gradients_flow_in_training(tiny_model):
    m = tiny_model.clone().train()
    x, z_ref, t = _inputs(m)
    loss = m.joint(x, t, m.context, reference=z_ref).square().mean()
    loss.backward()
    ref_grads = [p.grad for n, p in m.joint.reference_unet.named_parameters() if "attn1" in n and "to_q" not in n]
    assert any(g is not None and g.abs().sum() > 0 for g in ref_grads)
    assert isinstance(m.joint, RGBDDenoiser)



class _ConcatenatedReference:
    """Mutual self-attention written plainly: the stock processor over [own tokens | reference tokens]."""

    def __init__(self, read):
        self.read = read

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        from diffusers.models.attention_processor import AttnProcessor2_0

        ref = self.read.bank.features[self.read.name][self.read.bank.index]
        return AttnProcessor2_0()(attn, hidden_states, torch.cat([hidden_states, ref], dim=1), attention_mask, temb)


@torch.no_grad()
def test_cached_reference_keys_values_equal_plain_concatenation(tiny_model):
    """Inference projects each layer's reference keys/values once and reuses them at every step;
    that equals attending over the concatenated tokens, step after step."""
    from rgbdface.models.reference import ReferenceReadProcessor

    den = copy.deepcopy(tiny_model.joint)
    g = torch.Generator().manual_seed(0)
    s = tiny_model.latent_size
    z_ref, x = torch.randn(2, 4, s, s, generator=g), torch.randn(4, 8, s, s, generator=g)
    ctx, index = tiny_model.context, torch.tensor([0, 0, 1, 1])
    den.set_reference(z_ref, ctx)
    first = den(x, torch.tensor(10), ctx, ref_index=index)
    assert den.bank.projected  # filled by the first step
    second = den(x, torch.tensor(700), ctx, ref_index=index)  # served from the cache
    originals = dict(den.unet.attn_processors)
    den.unet.set_attn_processor({n: _ConcatenatedReference(p) if isinstance(p, ReferenceReadProcessor) else p for n, p in originals.items()})
    den.bank.index = index
    plain = [den.unet(x, torch.tensor(t), encoder_hidden_states=ctx.expand(4, -1, -1)).sample for t in (10, 700)]
    assert torch.allclose(first, plain[0], atol=1e-5) and torch.allclose(second, plain[1], atol=1e-5)
    den.unet.set_attn_processor(originals)
    den.set_reference(z_ref.flip(0), ctx)  # a new reference drops the cached projections
    swapped = den(x, torch.tensor(10), ctx, ref_index=index)
    assert not torch.allclose(swapped, first, atol=1e-4)


@torch.no_grad()
def test_reference_dropout_reads_nothing_back_per_layer(tiny_model):
    """A `keep` on the device is read on the host once per call, not in each self-attention layer."""
    from sync_helpers import SyncCounter, on_fake_device

    x, z_ref, t = _inputs(tiny_model, b=4)
    den = tiny_model.joint
    layers = sum(name.endswith("attn1.processor") for name in den.unet.attn_processors)
    assert layers >= 4
    expected = {}
    for pattern in ([True, False, True, False], [False] * 4, [True] * 4):
        den.set_reference(z_ref, tiny_model.context)
        expected[tuple(pattern)] = den(x, t, tiny_model.context, keep=torch.tensor(pattern))
        keep = on_fake_device(torch.tensor(pattern))
        SyncCounter.count = 0
        out = den(x, t, tiny_model.context, keep=keep)
        assert SyncCounter.count <= 1, (pattern, SyncCounter.count, layers)
        # the same tensor again (a sampler's next step): nothing read back at all
        SyncCounter.count = 0
        den(x, t, tiny_model.context, keep=keep)
        assert SyncCounter.count == 0
        torch.testing.assert_close(out.as_subclass(torch.Tensor), expected[tuple(pattern)], rtol=0, atol=0)
    den.clear_reference()
