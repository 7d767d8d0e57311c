import numpy as np
import pytest
import torch

from slimkernels.nn import EntropyBottleneck, SlimEntropyBottleneck
from tests._compressai import load_compressai_module


def _trained_bottleneck(C=4, steps=120, seed=0):
    torch.manual_seed(seed)
    eb = EntropyBottleneck(C)
    opt = torch.optim.Adam([p for n, p in eb.named_parameters() if n != "quantiles"], lr=1e-2)
    aux = torch.optim.Adam([eb.quantiles], lr=2e-1)
    scales = torch.tensor([0.5, 1.0, 3.0, 8.0])[:C].view(1, C, 1, 1)
    for _ in range(steps):
        y = torch.randn(4, C, 8, 8) * scales + 2.0
        _, lik = eb(y, training=True)
        loss = -torch.log2(lik).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        aux.zero_grad(); eb.loss().backward(); aux.step()
    return eb


def test_likelihoods_form_a_distribution_over_integer_bins():
    eb = _trained_bottleneck()
    grid = torch.arange(-80, 81, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 4, -1, 1)
    _, lik = eb(grid.contiguous() + eb.medians().view(1, -1, 1, 1), training=False)
    total = lik.sum(dim=2).flatten()
    torch.testing.assert_close(total, torch.ones(4), rtol=0, atol=1e-3)


def test_training_adds_noise_and_eval_rounds_around_median():
    eb = _trained_bottleneck(steps=50)
    y = torch.randn(2, 4, 5, 5) * 3
    y_tr, _ = eb(y, training=True)
    d = y_tr - y
    assert d.abs().max() <= 0.5 and d.abs().max() > 0
    y_ev, _ = eb(y, training=False)
    m = eb.medians().view(1, -1, 1, 1)
    torch.testing.assert_close(y_ev, torch.round(y - m) + m, rtol=0, atol=0)
    s = eb.quantize_symbols(y)
    assert s.dtype == torch.int32
    torch.testing.assert_close(eb.dequantize_symbols(s), y_ev, rtol=0, atol=0)



def test_training_noise_does_not_depend_on_the_latent_layout():
    """The noise of a seed, per element, is the same for an NCHW and a channels_last latent
    (drawn in NCHW order): the CPU kernels give channels_last latents and PyTorch's own convs
    NCHW ones, so the same seed trained other noise on each path."""
    eb = EntropyBottleneck(4)
    y = torch.randn(2, 4, 5, 6)
    torch.manual_seed(7)
    a, _ = eb(y, training=True)
    torch.manual_seed(7)
    b, _ = eb(y.contiguous(memory_format=torch.channels_last), training=True)
    assert not torch.equal(a, y)
    torch.testing.assert_close(a, b, rtol=0, atol=0)

def test_mixed_quantization_decodes_rounded_values_with_straight_through_gradient():
    """quantization="mixed": the synthesis input is the median rounding (the values decode will
    see), its gradient passes straight through to ``y``, and the likelihoods (the rate term) are
    exactly those of noise mode under the same random numbers."""
    eb = _trained_bottleneck(steps=50)
    y0 = torch.randn(2, 4, 5, 5, dtype=torch.float32) * 3
    m = eb.medians().view(1, -1, 1, 1)
    y_n, g_n = y0.clone().requires_grad_(), y0.clone().requires_grad_()
    torch.manual_seed(7)
    y_hat, lik = eb(y_n, training=True, quantization="mixed")
    torch.manual_seed(7)
    y_noise, lik_noise = eb(g_n, training=True)
    torch.testing.assert_close(y_hat, torch.round(y0 - m) + m, rtol=0, atol=0)
    assert not torch.equal(y_hat, y_noise)
    torch.testing.assert_close(lik, lik_noise, rtol=0, atol=0)
    w = torch.randn_like(y0)
    (y_hat * w).sum().backward()
    torch.testing.assert_close(y_n.grad, w, rtol=0, atol=0)        # d y_hat / d y = 1
    # the rate's gradient is that of noise mode
    y_a, y_b = y0.clone().requires_grad_(), y0.clone().requires_grad_()
    torch.manual_seed(3)
    eb(y_a, training=True, quantization="mixed")[1].log().sum().backward()
    torch.manual_seed(3)
    eb(y_b, training=True)[1].log().sum().backward()
    torch.testing.assert_close(y_a.grad, y_b.grad, rtol=0, atol=0)
    # evaluation rounds whatever the training quantization
    torch.testing.assert_close(eb(y0, training=False, quantization="mixed")[0],
                               eb(y0, training=False)[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="quantization must be one of noise, mixed, got 'round'"):
        eb(y0, training=True, quantization="round")
    slim = SlimEntropyBottleneck([4, 2])
    slim.bottlenecks[0].load_state_dict(eb.state_dict())
    torch.testing.assert_close(slim(y0, True, "mixed")[0], y_hat, rtol=0, atol=0)


def test_aux_loss_moves_quantiles_towards_tails():
    eb = _trained_bottleneck()
    q = eb.quantiles.detach()[:, 0]
    # the widest channel (scale 8) needs a wider support than the narrowest (scale 0.5)
    assert (q[3, 2] - q[3, 0]) > 2 * (q[0, 2] - q[0, 0])
    assert torch.isfinite(eb.loss())


def test_update_builds_valid_integer_tables_and_state_dict_roundtrip():
    pytest.importorskip("slimkernels._coder")
    eb = _trained_bottleneck()
    assert not eb.has_tables()
    eb.update()
    assert eb.has_tables()
    cdf, lengths = eb._quantized_cdf.numpy(), eb._cdf_length.numpy()
    for c in range(4):
        L = lengths[c]
        row = cdf[c, :L]
        assert row[0] == 0 and row[-1] == 1 << 16
        assert np.all(np.diff(row) >= 1)
    assert lengths[3] > lengths[0]
    fresh = EntropyBottleneck(4)
    fresh.load_state_dict(eb.state_dict())
    assert fresh.has_tables()
    assert torch.equal(fresh._quantized_cdf, eb._quantized_cdf)


def test_matches_compressai_entropy_bottleneck():
    import sys
    try:
        load_compressai_module("ops/bound_ops.py", "compressai.ops.bound_ops")
    except Exception:  # noqa: BLE001
        pytest.skip("compressai not installed (pip install --no-deps compressai)")
    if "compressai.ops.bound_ops" not in sys.modules:
        pytest.skip("compressai not installed (pip install --no-deps compressai)")
    sys.modules["compressai.ops"].LowerBound = sys.modules["compressai.ops.bound_ops"].LowerBound
    sys.modules["compressai"].get_entropy_coder = lambda: "ans"
    sys.modules["compressai"].available_entropy_coders = lambda: ["ans"]
    try:
        mod = load_compressai_module("entropy_models/entropy_models.py",
                                     "compressai.entropy_models.entropy_models")
    except ImportError as e:
        pytest.skip(f"compressai's entropy model needs {e}")
    torch.manual_seed(0)
    ours = _trained_bottleneck(steps=30)
    ref = mod.EntropyBottleneck(4, filters=(3, 3, 3))   # SlimCAE: 1-3-3-3-1
    sd = ours.state_dict()      # same parameter names as CompressAI's
    skip = ("_offset", "_quantized_cdf", "_cdf_length")
    missing, unexpected = ref.load_state_dict(
        {k: v for k, v in sd.items() if k not in skip}, strict=False)
    assert not unexpected and set(missing) <= set(skip) | {"likelihood_lower_bound.bound"}
    y = torch.randn(2, 4, 6, 5) * 3
    ref.eval()
    y_ref, lik_ref = ref(y, training=False)
    y_ours, lik_ours = ours(y, training=False)
    torch.testing.assert_close(y_ours, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(lik_ours, lik_ref, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ours.loss(), ref.loss(), rtol=1e-5, atol=1e-6)


def test_slim_entropy_bottleneck_per_width():
    seb = SlimEntropyBottleneck([8, 4])
    y = torch.randn(1, 4, 3, 3)
    y_hat, lik = seb(y, training=False)
    assert lik.shape == y.shape and lik.dtype == torch.float32
    assert seb.for_width(4) is seb.bottlenecks[1]
    with pytest.raises(ValueError, match="no entropy model for width 5"):
        seb(torch.randn(1, 5, 3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, lik16 = seb(y.bfloat16(), training=False)
    assert lik16.dtype == torch.float32


def test_coding_medians_cached_until_quantiles_change():
    eb = EntropyBottleneck(5)
    med = eb.coding_medians()
    assert med.dtype == torch.float32 and med.device.type == "cpu" and med.is_contiguous()
    assert med.shape == (5,)
    torch.testing.assert_close(med, eb.medians(), rtol=0, atol=0)
    assert eb.coding_medians() is med                       # cached
    with torch.no_grad():
        eb.quantiles[:, 0, 1] += 1.5                        # in place: version bump
    moved = eb.coding_medians()
    assert moved is not med
    torch.testing.assert_close(moved, eb.medians(), rtol=0, atol=0)
    eb.quantiles.data[:, 0, 1] -= 1.0                       # .data: no version bump
    assert eb.coding_medians() is moved                     # documented: stale until cleared
    eb.clear_cache()
    torch.testing.assert_close(eb.coding_medians(), eb.medians(), rtol=0, atol=0)
    eb.load_state_dict({k: v.clone() + 0.25 if k == "quantiles" else v
                        for k, v in eb.state_dict().items()}, strict=False)
    torch.testing.assert_close(eb.coding_medians(), eb.medians(), rtol=0, atol=0)


def test_cdf_tables_cached_until_update():
    eb = EntropyBottleneck(4)
    with pytest.raises(RuntimeError, match="update"):
        eb.cdf_tables()
    eb.update()
    t1 = eb.cdf_tables()
    assert eb.cdf_tables() is t1                            # cached
    assert [a.dtype for a in t1] == [np.int32] * 3 and t1[0].shape[0] == 4
    np.testing.assert_array_equal(t1[0], eb._quantized_cdf.numpy())
    with torch.no_grad():
        eb.quantiles[:, 0, 2] += 4.0                        # wider support: longer CDFs
    eb.update(force=True)                                   # new buffers: new tables
    t2 = eb.cdf_tables()
    assert t2 is not t1 and t2[0].shape[1] > t1[0].shape[1]
    np.testing.assert_array_equal(t2[1], eb._cdf_length.numpy())
    eb._offset = eb._offset + 1                             # a replaced buffer: new tables
    assert eb.cdf_tables() is not t2
    np.testing.assert_array_equal(eb.cdf_tables()[2], t2[2] + 1)


# -- seventh audit (thirty-second sitting) -----------------------------------------------------
def test_update_refuses_quantiles_that_are_not_finite_or_too_far_apart():
    """NaN quantiles made update() build a 13-entry table that failed only at coding time, as
    a 'wrong total'; quantiles 2e5 apart allocated [C, 3, L] tensors before the precision
    check."""
    eb = EntropyBottleneck(3)
    with torch.no_grad():
        eb.quantiles[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="quantiles of channel 1 are not finite"):
        eb.update()
    assert not eb.has_tables()
    eb = EntropyBottleneck(1)
    with torch.no_grad():
        eb.quantiles[0, 0, 0], eb.quantiles[0, 0, 2] = -1e5, 1e5
    with pytest.raises(ValueError, match="span 200001 integers, more than the 65535"):
        eb.update()
    eb = EntropyBottleneck(1, precision=8)
    with torch.no_grad():
        eb.quantiles[0, 0, 0], eb.quantiles[0, 0, 2] = -300.0, 300.0
    with pytest.raises(ValueError, match="raise precision"):
        eb.update()
    eb = EntropyBottleneck(2)
    with torch.no_grad():
        eb.biases[0][1] = float("nan")
    with pytest.raises(ValueError, match="density is not finite"):
        eb.update()


def test_quantize_symbols_refuses_values_it_cannot_code():
    eb = EntropyBottleneck(2)
    for bad in (float("nan"), float("inf"), 3e9):
        y = torch.tensor([bad, 0.0, 1.4, -1.0]).view(1, 2, 1, 2)
        with pytest.raises(ValueError, match="NaN, inf or values beyond the int32 range"):
            eb.quantize_symbols(y)
    y = torch.tensor([1.4, 2.6, -3e8, -1.0]).view(1, 2, 1, 2)
    m = eb.medians().view(1, 2, 1, 1)
    assert torch.equal(eb.quantize_symbols(y), torch.round(y - m).to(torch.int32))


@pytest.mark.parametrize("kw, msg", [
    (dict(tail_mass=0.0), "tail_mass must be a finite number in \\(0, 1\\)"),
    (dict(tail_mass=2), "tail_mass must be"),
    (dict(init_scale=-1), "init_scale must be a finite number in \\(0, inf\\)"),
    (dict(init_scale=0), "init_scale must be"),
    (dict(init_scale="10"), "init_scale must be"),
    (dict(precision=0), "precision must be an int in 1..16"),
    (dict(precision=16.0), "precision must be an int"),
    (dict(channels=0), "channels must be >= 1"),
    (dict(filters=(3, 0)), "filters must be >= 1"),
    (dict(likelihood_bound=float("nan")), "likelihood_bound must be"),
])
def test_constructor_arguments_are_checked(kw, msg):
    a = dict(channels=2)
    a.update(kw)
    with pytest.raises(ValueError, match=msg):
        EntropyBottleneck(**a)


def test_aux_loss_and_tables_are_float32_under_autocast():
    """(loss() and update() ran their matmuls in bf16 under an enclosing autocast: other CDF
    tables, hence another model id and +0.16 % rate at w=192.)"""
    torch.manual_seed(0)
    eb = EntropyBottleneck(6)
    with torch.no_grad():
        for m in eb.matrices:
            m.add_(0.3 * torch.randn_like(m))
    ref_loss = eb.loss()
    eb.update()
    ref = [b.clone() for b in (eb._quantized_cdf, eb._cdf_length, eb._offset)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = eb.loss()
        eb.update()
    assert loss.dtype == torch.float32 and torch.equal(loss, ref_loss)
    for a, b in zip(ref, (eb._quantized_cdf, eb._cdf_length, eb._offset)):
        assert torch.equal(a, b)


def test_symbol_conversions_check_the_latent_shape():
    eb = EntropyBottleneck(4)
    eb.update()
    for bad in (torch.zeros(1, 5, 2, 2), torch.zeros(4, 2, 2)):
        with pytest.raises(ValueError, match=r"expects \[N, 4, H, W\]"):
            eb.quantize_symbols(bad)
        with pytest.raises(ValueError, match=r"expects \[N, 4, H, W\]"):
            eb.dequantize_symbols(bad.to(torch.int32))


def test_entropy_tables_are_never_uninitialised_during_load_state_dict(monkeypatch):
    """EntropyBottleneck._load_from_state_dict (nn/entropy.py:309) replaces each CDF buffer by
    ``torch.empty_like`` before copying into it: a compress in another thread during the load
    reads uninitialised memory as its tables (seen in e3_updates.py: "cdf_lengths[0] =
    -2146640464 is out of range"). The buffer seen mid-load must hold the old or the new
    values. (empty_like is made to return a sentinel so that 'uninitialised' is deterministic.)"""
    from slimkernels.nn.entropy import EntropyBottleneck
    from slimkernels.pretrained import load_model
    m = load_model()
    sd = m.state_dict()
    eb = m.entropy_bottleneck.for_width(48)
    old = eb._cdf_length.clone()
    new = sd[[k for k in sd if k.endswith("_cdf_length")][0]].clone()
    real_empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like",
                        lambda t, **kw: real_empty_like(t, **kw).fill_(-7) if
                        t.dtype == torch.int32 else real_empty_like(t, **kw))
    seen = []
    real_load = torch.nn.Module._load_from_state_dict

    def spy(self, *a, **k):
        if isinstance(self, EntropyBottleneck) and self.channels == 48:
            seen.append(self._cdf_length.clone())       # what a concurrent reader sees now
        return real_load(self, *a, **k)
    monkeypatch.setattr(torch.nn.Module, "_load_from_state_dict", spy)
    m.load_state_dict(sd)
    assert seen
    mid = seen[0]
    assert torch.equal(mid, old) or any(torch.equal(mid, v) for k, v in sd.items()
                                        if k.endswith("_cdf_length") and v.shape == mid.shape), \
        f"mid-load tables are neither old nor new: {mid[:4].tolist()} (old {old[:4].tolist()})"
    del new


def test_loading_damaged_cdf_tables_is_refused_naming_the_key():
    """(a table entry that was not a tensor raised "'list' object has no attribute 'detach'";
    tables of another channel count, a float dtype or broken contents loaded, and compress then
    said "no CDF tables: call update()" or gave the coder's messages.)"""
    pytest.importorskip("slimkernels._coder")
    eb = _trained_bottleneck()
    eb.update()
    good = eb.state_dict()

    def damaged(**edits):
        sd = {k: v.clone() for k, v in good.items()}
        sd.update(edits)
        return sd
    cdf, length, offset = good["_quantized_cdf"], good["_cdf_length"], good["_offset"]
    bad_rows = cdf.clone()
    bad_rows[1, 1] = bad_rows[1, 0]                  # (not strictly increasing)
    cases = [(damaged(_offset=[0, 0, 0, 0]), "_offset: a CDF table must be an integer tensor, "
                                             "got list"),
             (damaged(_cdf_length=length.float()), "_cdf_length: .* got a torch.float32 tensor"),
             (damaged(_offset=offset[:3]), r"have shapes .* \(3,\), not \[4, L\] / \[4\] / \[4\]"),
             (damaged(_quantized_cdf=cdf[:, None]), "have shapes"),
             (damaged(_cdf_length=length * 0), "the CDF tables are not valid"),
             (damaged(_quantized_cdf=bad_rows), "the CDF tables are not valid")]
    for sd, match in cases:
        fresh = EntropyBottleneck(4)
        with pytest.raises(ValueError, match=match + ".*load it without its CDF tables and call "
                                                     r"update\(\)"):
            fresh.load_state_dict(sd)
    fresh = EntropyBottleneck(4)
    fresh.load_state_dict(good)                      # (the intact tables load as before)
    assert torch.equal(fresh._quantized_cdf, cdf)
    empty = EntropyBottleneck(4).state_dict()         # (as saved before update(): empty tables)
    EntropyBottleneck(4).load_state_dict(empty)


def test_a_tiny_init_scale_is_refused_by_name():
    """(init_scale=1e-30 passed the (0, inf) check, then math.expm1 raised a bare OverflowError
    'math range error'.)"""
    with pytest.raises(ValueError, match="init_scale 1e-30 is too small for 4 layers"):
        EntropyBottleneck(4, init_scale=1e-30)
    assert torch.isfinite(EntropyBottleneck(4, init_scale=1e-3).matrices[0]).all()


def test_tables_of_another_config_are_named_as_such_not_only_as_damage():
    """Loading a SlimEntropyBottleneck into other widths, or tables into another precision, said
    only "the file is damaged"; the message now names the likelier cause first."""
    pytest.importorskip("slimkernels._coder")
    src = SlimEntropyBottleneck([8, 4])
    src.update()
    with pytest.raises(ValueError, match=r"for this model's 6 channels: saved from a model of "
                                         r"other widths .*or a damaged file"):
        SlimEntropyBottleneck([8, 6]).load_state_dict(src.state_dict())
    eb = _trained_bottleneck()
    eb.update()
    with pytest.raises(ValueError, match=r"not valid at this model's precision 8 .*saved from a "
                                         r"model of another precision .*or a damaged file"):
        EntropyBottleneck(4, precision=8).load_state_dict(eb.state_dict())


def test_training_must_be_a_bool():
    """(training="no" was truthy: noise instead of rounding.)"""
    eb = EntropyBottleneck(4).eval()
    y = torch.randn(1, 4, 3, 3)
    for bad in ("no", 0.0, 2):
        with pytest.raises(ValueError, match=r"EntropyBottleneck\(4\): training must be True or "
                                             r"False"):
            eb(y, training=bad)
    torch.testing.assert_close(eb(y, training=0)[0], eb(y, training=False)[0])


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
def test_tables_built_under_inference_mode_are_normal_tensors():
    """``update()`` under ``torch.inference_mode()`` wrote inference tensors (no version
    counter): every cache keyed by the model's state then missed at every call (compress 0.47
    -> 33 ms)."""
    eb = _trained_bottleneck(steps=5)
    with torch.inference_mode():
        assert eb.update()
    for name in ("_quantized_cdf", "_cdf_length", "_offset"):
        assert not getattr(eb, name).is_inference(), name
    assert eb.has_tables()


def test_a_partial_set_of_tables_is_not_tables():
    """A state_dict without ``_quantized_cdf`` loaded with ``strict=False``: ``has_tables()``
    said True, and ``compress`` failed with the coder's "cdf_lengths must be 1-D with
    cdfs.shape[0] = 0 entries"; ``update(force=False)`` now builds them."""
    eb = _trained_bottleneck(steps=5)
    eb.update()
    sd = {k: v for k, v in eb.state_dict().items() if k != "_quantized_cdf"}
    fresh = EntropyBottleneck(4)
    fresh.load_state_dict(sd, strict=False)
    assert not fresh.has_tables()
    assert fresh.update(force=False) and fresh.has_tables()
    assert fresh.update(force=False) is False


def test_slim_update_says_whether_any_width_was_built():
    """``update(force=False)`` built the missing widths' tables and returned False (``all`` of
    the per-width results); the docstring says True when tables were (re)built."""
    sb = SlimEntropyBottleneck([8, 4])
    sb.bottlenecks[0].update()
    assert sb.update(force=False) is True
    assert all(b.has_tables() for b in sb.bottlenecks)
    assert sb.update(force=False) is False


@pytest.mark.parametrize("force", ["no", "False", 2, -1, 0.0, None])
def test_update_refuses_a_force_that_is_not_true_or_false(force):
    """A string such as "no" was truthy: the tables were rebuilt where the caller had asked
    not to (an update(force=False) keeps tables that a program may have set itself)."""
    from slimkernels.models import SlimCAE
    eb, sb, model = EntropyBottleneck(4), SlimEntropyBottleneck([8, 4]), SlimCAE(widths=[8, 4])
    for obj in (eb, sb, model):
        obj.update()
        before = {k: v.clone() for k, v in obj.state_dict().items()}
        with pytest.raises(ValueError, match=f"{type(obj).__name__}.update: force must be True "
                                             f"or False, got {force!r}"):
            obj.update(force=force)
        after = obj.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert obj.update(force=False) is False and obj.update(force=1) is True
