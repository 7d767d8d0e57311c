import pytest
import torch

from slimkernels.nn import NonNegativeParametrizer, SlimGDN, SlimGDNPlus, SwitchGDN, lower_bound
from tests._compressai import load_compressai_module


def _gdn64(x, beta, gamma, inverse):
    norm = torch.einsum("ij,njhw->nihw", gamma, x * x) + beta.view(1, -1, 1, 1)
    return x * norm.sqrt() if inverse else x / norm.sqrt()


def test_reparam_roundtrip_and_lower_bound_gradient():
    p = NonNegativeParametrizer(minimum=1e-6)
    v = torch.tensor([0.5, 2.0, 1e-9])
    eff = p(p.init(v))
    torch.testing.assert_close(eff[:2], v[:2], rtol=1e-6, atol=0)
    assert eff[2] >= 1e-6 - 1e-12          # clamped to the minimum
    x = torch.tensor([0.0, 2.0], requires_grad=True)
    b = torch.tensor(1.0)
    lower_bound(x, b).backward(torch.tensor([-1.0, 1.0]))
    # below the bound: gradient passes only when it pushes x up (negative grad)
    assert x.grad.tolist() == [-1.0, 1.0]
    x.grad = None
    lower_bound(x, b).backward(torch.tensor([1.0, 1.0]))
    assert x.grad.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("C", [1, 5, 16])
def test_slim_gdn_matches_float64_formula(inverse, C):
    torch.manual_seed(C)
    g = SlimGDN(16, inverse=inverse).double()
    with torch.no_grad():
        g.gamma.add_(0.05 * torch.rand(16, 16, dtype=torch.float64))
        g.beta.add_(0.1 * torch.rand(16, dtype=torch.float64))
    beta, gamma = g.effective_params()
    x = torch.randn(2, C, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(g(x), _gdn64(x, beta[:C], gamma[:C, :C], inverse),
                               rtol=1e-12, atol=1e-12)


def test_compressai_gdn_state_dict_loads_and_matches():
    mod = load_compressai_module("layers/gdn.py", "compressai.layers.gdn")
    if mod is None:
        pytest.skip("compressai not installed (pip install --no-deps compressai)")
    torch.manual_seed(0)
    for inverse in (False, True):
        ref = mod.GDN(24, inverse=inverse)
        with torch.no_grad():
            ref.gamma.add_(0.02 * torch.rand_like(ref.gamma))
            ref.beta.add_(0.3 * torch.rand_like(ref.beta))
        ours = SlimGDN(24, inverse=inverse)
        ours.load_state_dict(ref.state_dict())          # strict: identical keys
        x = torch.randn(2, 24, 9, 11)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_switch_gdn_picks_width_and_rejects_others():
    sw = SwitchGDN([8, 4])
    with torch.no_grad():
        sw.gdns[1].beta.fill_(2.0)
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(sw(x), sw.gdns[1](x), rtol=0, atol=0)
    assert not torch.allclose(sw(x), sw.gdns[0](torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 4)))[:, :4])
    with pytest.raises(ValueError, match="widths \\[8, 4\\]"):
        sw(torch.randn(1, 5, 3, 3))


def test_slim_gdn_plus_identity_scalars_and_gradients():
    torch.manual_seed(4)
    gp = SlimGDNPlus([8, 4], inverse=False).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(gp(x), gp.gdn(x), rtol=1e-9, atol=1e-9)   # scales 1, biases ~0
    with torch.no_grad():
        gp.gamma_scale[1] = gp.scalar_reparam.init(torch.tensor(2.0, dtype=torch.float64))
        gp.beta_bias[1] = gp.scalar_reparam.init(torch.tensor(0.5, dtype=torch.float64))
    beta, gamma = gp.gdn.effective_params()
    ref = _gdn64(x, beta[:4] + 0.5, 2 * gamma[:4, :4], False)
    torch.testing.assert_close(gp(x), ref, rtol=1e-9, atol=1e-9)
    gp(x).sum().backward()
    for p in (gp.gamma_scale, gp.gamma_bias, gp.beta_scale, gp.beta_bias, gp.gdn.gamma):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert gp.gamma_scale.grad[1] != 0 and gp.gamma_scale.grad[0] == 0


@pytest.mark.parametrize("inverse", [False, True])
def test_slim_gdn_plus_beta_k_keeps_beta_min_when_its_scalars_reach_zero(inverse):
    """beta_k = beta_scale * beta + beta_bias with both scalars only non-negative: both at 0
    (where an optimizer can take them) gave beta_k = 0, a GDN of a zero pixel inf / NaN."""
    gp = SlimGDNPlus([8, 4], inverse=inverse, beta_min=1e-3).double()
    with torch.no_grad():
        gp.beta_scale.zero_()
        gp.beta_bias.zero_()    # (stored below the reparameterization's bound: effective 0)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    x[0, :, 0, 0] = 0
    _, gamma = gp.gdn.effective_params()
    ref = _gdn64(x, torch.full((4,), 1e-3, dtype=torch.float64), gamma[:4, :4], inverse)
    y = gp(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-12)
    # the bound lets a gradient that raises beta_k through (lower_bound): a loss falling as
    # beta_k grows (|y| for GDN, -|y| for IGDN) reaches width 4's bias, and only its
    (-y.abs().sum() if inverse else y.abs().sum()).backward()
    g = gp.beta_bias.grad
    assert torch.isfinite(g).all() and g[1] < 0 and g[0] == 0


def test_slim_gdn_plus_trained_toward_zero_beta_stays_finite():
    torch.manual_seed(0)
    gp = SlimGDNPlus([8, 4])
    x = torch.randn(4, 8, 8, 8)
    opt = torch.optim.Adam(gp.parameters(), lr=0.05)
    for _ in range(40):             # a loss that rewards a larger output: beta_k is pushed down
        y = gp(x)
        assert torch.isfinite(y).all()
        opt.zero_grad()
        (-y.abs().mean()).backward()
        opt.step()
    with torch.no_grad():
        beta_k = gp.op_kwargs(8)["beta"]
    bound = torch.tensor(1e-6).item()   # (float32 1e-6)
    assert bound <= beta_k.min().item() < 1e-4   # it got to the bound, not below
    assert all(torch.isfinite(p).all() for p in gp.parameters())


def test_effective_params_cached_without_grad_and_invalidated_by_updates():
    g = SlimGDN(6)
    with torch.no_grad():
        g.gamma.add_(torch.rand(6, 6) * 0.1)

    def fresh():
        return g.beta_reparam(g.beta).detach(), g.gamma_reparam(g.gamma).detach()

    with torch.no_grad():
        b1, g1 = g.effective_params()
        b2, g2 = g.effective_params()
    assert b1 is b2 and g1 is g2                            # cached: the same tensors
    assert torch.equal(b1, fresh()[0]) and torch.equal(g1, fresh()[1])
    # with autograd: computed, attached to the graph, never cached
    b3, g3 = g.effective_params()
    assert g3.grad_fn is not None and g3 is not g1
    g3.sum().backward()
    assert g.gamma.grad is not None
    # an optimizer step (in place: a version bump) invalidates the cache
    torch.optim.SGD(g.parameters(), lr=0.5).step()
    with torch.no_grad():
        b4, g4 = g.effective_params()
    assert not torch.equal(g4, g1) and torch.equal(g4, fresh()[1])
    # so does load_state_dict (copies in place), a replaced parameter, and a buffer change
    sd = {k: v.clone() for k, v in g.state_dict().items()}
    sd["beta"] = sd["beta"] * 2
    g.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(g.effective_params()[0], fresh()[0])
        g.gamma = torch.nn.Parameter(g.gamma * 0.5)
        assert torch.equal(g.effective_params()[1], fresh()[1])
        g.beta_reparam.lower_bound.bound.fill_(2.0)
        assert torch.equal(g.effective_params()[0], fresh()[0])
        assert bool((g.effective_params()[0] >= 4.0 - 1e-6).all())
        # writes through .data bypass versions: clear_cache() after them
        g.gamma.data.mul_(3.0)
        g.clear_cache()
        assert torch.equal(g.effective_params()[1], fresh()[1])


def test_switch_gdn_inference_uses_current_parameters():
    # the cached parameters follow an update between two no-grad calls
    sg = SwitchGDN([4, 8])
    x = torch.rand(1, 4, 3, 5)
    with torch.no_grad():
        y0 = sg(x)
        sg.gdns[0].beta.add_(1.0)
        y1 = sg(x)
    ref = sg.gdns[0](x.requires_grad_(True)).detach()      # with autograd: the uncached path
    assert not torch.allclose(y0, y1)
    torch.testing.assert_close(y1, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gdn_layer_under_inference_mode(dtype):
    """Under torch.inference_mode (effective parameters are then inference tensors, which have
    no version counter) a wide layer gives what it gives under no_grad, on every CPU path."""
    g = SlimGDN(192)
    with torch.no_grad():
        g.gamma.add_(torch.rand(192, 192) * 0.05)
    x = torch.randn(1, 96, 5, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = g(x)
    g.clear_cache()
    with torch.inference_mode():
        y = g(x)
    assert y.dtype == dtype and torch.equal(y, ref)


@pytest.mark.parametrize("variant", ["slim", "switch", "slim+"])
def test_a_gdn_run_under_inference_mode_still_trains_its_input(variant):
    """(the effective-parameter cache built inside torch.inference_mode held inference tensors:
    a later backward through the frozen layer failed, "Inference tensors cannot be saved for
    backward".)"""
    from slimkernels.nn import make_gdn
    torch.manual_seed(0)
    g = make_gdn(variant, [8, 4]).eval().requires_grad_(False)
    with torch.inference_mode():
        g(torch.rand(1, 8, 5, 5), 8) if variant != "slim" else g(torch.rand(1, 8, 5, 5))
    x = torch.rand(1, 8, 5, 5, requires_grad=True)
    y = g(x, 8) if variant != "slim" else g(x)
    y.square().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_make_gdn_names_empty_widths():
    from slimkernels.nn import make_gdn
    with pytest.raises(ValueError, match="make_gdn: widths must not be empty"):
        make_gdn("slim", [])


def test_make_gdn_takes_exactly_the_listed_variants():
    """(make_gdn also took an undocumented "slimplus": the same layers as "slim+", but SlimCAE
    stored the alias in config(), so the same weights had two model ids and files written
    under one did not decode under the other.)"""
    from slimkernels.models import SlimCAE
    from slimkernels.nn import GDN_VARIANTS, SlimGDN, SlimGDNPlus, SwitchGDN, make_gdn
    kinds = {"switch": SwitchGDN, "slim": SlimGDN, "slim+": SlimGDNPlus}
    assert set(GDN_VARIANTS) == set(kinds)
    for name in GDN_VARIANTS:
        assert type(make_gdn(name, [8, 4])) is kinds[name]
    for bad in ("Slim", "gdn", "slim plus"):
        with pytest.raises(ValueError, match=r"unknown GDN variant .* switch, slim, slim\+"):
            make_gdn(bad, [8, 4])
        with pytest.raises(ValueError, match="unknown GDN variant"):
            SlimCAE((16, 8), gdn=bad)


def test_models_written_with_the_earlier_slimplus_spelling_still_load_with_their_id(tmp_path):
    """(refusing the undocumented 'slimplus' made model files and checkpoints that stored it
    unloadable, "damaged: write it again", which no version could: it is read as slim+, and
    the stored spelling, part of the model id, is kept, so files coded with it still decode.)"""
    from slimkernels.models import SlimCAE
    from slimkernels.nn import SlimGDNPlus, make_gdn
    from slimkernels.pretrained import load_model, save_model
    assert type(make_gdn("slimplus", [8, 4])) is SlimGDNPlus
    torch.manual_seed(0)
    old = SlimCAE((16, 8), gdn="slimplus").eval()
    old.update()
    path = str(tmp_path / "m.pt")
    save_model(old, path)
    m = load_model(path)
    assert m.config()["gdn"] == "slimplus" and m.model_id() == old.model_id()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(m.decompress(old.compress(x, 8)), old.decompress(old.compress(x, 8)))


@pytest.mark.parametrize("kw,match", [
    ({"beta_min": float("nan")}, r"beta_min must be a finite number in \[0, inf\)"),
    ({"beta_min": -1.0}, r"beta_min must be a finite number in \[0, inf\)"),
    ({"beta_min": "x"}, "beta_min must be a finite number"),
    ({"gamma_init": float("nan")}, "gamma_init must be a finite number"),
    ({"gamma_init": float("inf")}, "gamma_init must be a finite number")])
def test_gdn_layers_refuse_non_finite_or_negative_init_values(kw, match):
    """(beta_min=nan or gamma_init=nan / inf built a layer whose output was NaN everywhere;
    beta_min=-1 raised "float() argument must be ... not 'complex'" from a negative ** 0.5, and
    beta_min='x' "could not convert string to float" naming no argument.)"""
    for build in (lambda: SlimGDN(4, **kw), lambda: SwitchGDN([8, 4], **kw),
                  lambda: SlimGDNPlus([8, 4], **kw)):
        with pytest.raises(ValueError, match=f"SlimGDN: {match}"):
            build()
    with pytest.raises(ValueError, match=r"NonNegativeParametrizer: minimum must be a finite "
                                         r"number in \[0, inf\), got -1"):
        NonNegativeParametrizer(minimum=-1)
    with pytest.raises(ValueError, match=r"reparam_offset must be a finite number in \[0, inf\)"):
        NonNegativeParametrizer(reparam_offset=-1)
    assert float(NonNegativeParametrizer(reparam_offset=0).pedestal) == 0   # (no pedestal: fine)
    g = SlimGDN(4, beta_min=0.0, gamma_init=0.0)   # (the bounds themselves are fine)
    assert torch.isfinite(g(torch.rand(1, 4, 3, 3))).all()


@pytest.mark.parametrize("cls", [SlimGDNPlus, SwitchGDN])
def test_a_state_dict_of_other_widths_is_refused_naming_them(cls, tmp_path):
    """The per-width parameters are matched by position: SlimGDNPlus([96, 48])'s scalars loaded
    silently into SlimGDNPlus([48, 96]) (swapped) and ([96, 72]) (width 48's to 72). The
    widths ride in the state dict's metadata (through torch.save / torch.load too); a plain
    dict without them loads as before; the model id does not change."""
    torch.manual_seed(0)
    src = cls([96, 48])
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.rand_like(p))
    path = tmp_path / "sd.pt"
    torch.save(src.state_dict(), path)
    for sd in (src.state_dict(), torch.load(path, weights_only=True)):
        for widths in ([48, 96], [96, 72]):
            want = (r"saved with widths \[96, 48\], this one has "
                    rf"\[{widths[0]}, {widths[1]}\].*widths=\[96, 48\]")
            with pytest.raises(RuntimeError, match=want):
                cls(widths).load_state_dict(sd)
        same = cls([96, 48])
        same.load_state_dict(sd)
        x = torch.rand(1, 48, 4, 4)
        torch.testing.assert_close(same(x), src(x), rtol=0, atol=0)
    if cls is SlimGDNPlus:   # (a plain dict: no metadata, loads by position as it always did)
        cls([48, 96]).load_state_dict(dict(src.state_dict()))


def test_the_widths_metadata_leaves_the_model_id_alone():
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    m = SlimCAE(widths=(16, 8), gdn="slim+")
    sd = m.state_dict()
    assert sd._metadata["g_a.1"]["widths"] == [16, 8]
    m2 = SlimCAE(widths=(16, 8), gdn="slim+")
    m2.load_state_dict(dict(sd))   # (no metadata)
    assert m2.model_id() == m.model_id()


def test_flags_and_widths_that_are_not_bools_or_ints_are_refused():
    """SlimGDN(inverse="no") was an IGDN (bool("no")); op_kwargs(48.5) ran at width 48.5."""
    for cls, args in ((SlimGDN, (8,)), (SwitchGDN, ([8, 4],)), (SlimGDNPlus, ([8, 4],))):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: inverse must be True or False"):
            cls(*args, inverse="no")
        assert cls(*args, inverse=1).inverse is True
    g = SlimGDN(8)
    for bad in (4.5, True, "4"):
        with pytest.raises(ValueError, match="width must be an int"):
            g.op_kwargs(bad)
    assert g.op_kwargs(torch.tensor(4))["inverse"] is False
