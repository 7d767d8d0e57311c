"""The GDN kernels' gamma packing, done once and cached (``ops.gdn._packed_gamma``,
``_packed_gamma_amx``), for the AVX2 (fp32 panels), the AVX512-BF16 (bf16 panels) and the AMX
kernel: the same bits as packing inside every call, a fresh packing after every change, none for
inference tensors; the bindings' checks."""
import importlib

import pytest
import torch

from slimkernels.ops import _cache
# shared with the AMX kernel's tests: parameters (C_max = 192), SlimGDN+ scalars and the autouse
# fixture that turns the CPU kernels on
from tests.ops.test_gdn_cpu_fused import SCALARS, _kernels_on, _params  # noqa: F401

gdn_mod = importlib.import_module("slimkernels.ops.gdn")  # the module (ops.gdn is the function)
_FORWARD = {"avx2": "gdn_forward_avx2", "bf16": "gdn_forward_bf16"}
_DTYPE = {"avx2": torch.float32, "bf16": torch.bfloat16}


def _available(kind) -> bool:
    K = gdn_mod._avx2_kernels()
    return K is not None and (kind == "avx2" or gdn_mod._bf16_kernel_here())


NEEDS = {k: pytest.mark.skipif(not _available(k), reason=f"no {k} GDN kernel here (CPU, or "
                                "_cpu_kernels not built)") for k in ("avx2", "bf16")}
KINDS = [pytest.param(k, marks=mark) for k, mark in NEEDS.items()]


def _run(kind):
    return gdn_mod._run_avx2 if kind == "avx2" else gdn_mod._run_avx512_bf16


def _x(kind, C, H, W, seed=1, channels_last=True):
    x = torch.randn(1, C, H, W, generator=torch.Generator().manual_seed(seed)).to(_DTYPE[kind])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns (fp32 or bf16), for exact comparisons that NaN does not upset."""
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def per_call(kind, x, beta, gamma, inverse, sc):
    """The kernel packing gamma_k inside the call (no packed gamma passed)."""
    fn = getattr(gdn_mod._avx2_kernels(), _FORWARD[kind])
    lay = "nchw" if x.is_contiguous() else "channels_last"
    return gdn_mod._run_kernel(fn, x, beta, gamma, lay, inverse, sc, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scalars", list(SCALARS))
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_cached_packing_gives_the_same_bits(monkeypatch, kind, scalars, layout):
    """gamma_k packed once and cached (``USE_PACKED_GAMMA``) against packed inside every call:
    the same bits, for widths around ``PACKED_GAMMA_MIN_C`` from one gamma, a transposed view of
    it and bf16 gamma; cached from ``PACKED_GAMMA_MIN_C`` channels on, a hit the second time."""
    if kind == "bf16" and layout == "nchw":
        pytest.skip("the bf16 kernel takes channels_last x only")
    run = _run(kind)
    beta, gamma = _params(13)
    sc = SCALARS[scalars]
    gs, gb = (1.0, 0.0) if scalars == "none" else sc[:2]
    for g in (gamma, gamma.t().contiguous().t(), gamma.bfloat16()):
        for C in (7, 48, 64, 65, 192):
            x = _x(kind, C, 5, 6, seed=C, channels_last=layout == "channels_last")
            monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", False)
            y_call = run(x, beta, g, True, sc)
            monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", True)
            y_cached = run(x, beta, g, True, sc)
            cached = (("gdn-" + kind, C, gs, gb), id(g)) in _cache._PACK_CACHE
            assert cached == (C >= gdn_mod.PACKED_GAMMA_MIN_C)
            assert torch.equal(bits(y_call), bits(y_cached))
            assert torch.equal(bits(run(x, beta, g, True, sc)), bits(y_call))   # a cache hit


@pytest.mark.parametrize("kind", KINDS)
def test_cached_packing_follows_updates(kind):
    """An in-place update of gamma (a version bump), a replaced gamma and other scalars each get
    their own packing: the result always equals the kernel packing per call."""
    run, x = _run(kind), _x(kind, 72, 4, 5, seed=2)
    assert x.shape[1] >= gdn_mod.PACKED_GAMMA_MIN_C
    beta, gamma = _params(14)
    none, plus = SCALARS["none"], SCALARS["slimgdn+"]
    y0 = run(x, beta, gamma, False, none)
    assert torch.equal(bits(y0), bits(per_call(kind, x, beta, gamma, False, none)))
    gamma.mul_(1.5)
    y1 = run(x, beta, gamma, False, none)
    assert not torch.equal(bits(y1), bits(y0))
    assert torch.equal(bits(y1), bits(per_call(kind, x, beta, gamma, False, none)))
    g2 = gamma.clone() * 0.5
    assert torch.equal(bits(run(x, beta, g2, False, none)),
                       bits(per_call(kind, x, beta, g2, False, none)))
    assert torch.equal(bits(run(x, beta, gamma, False, plus)),
                       bits(per_call(kind, x, beta, gamma, False, plus)))


@pytest.mark.parametrize("kind", KINDS)
def test_no_cached_packing_for_inference_tensors(kind):
    """Under ``torch.inference_mode`` (gamma then an inference tensor, without the version
    counter the cache keys by) the kernel packs gamma itself: same bits as outside it."""
    run, x = _run(kind), _x(kind, 96, 3, 4, seed=3)
    beta, gamma = _params(15)
    sc = SCALARS["slimgdn+"]
    y = run(x, beta, gamma, True, sc)
    with torch.inference_mode():
        gi = gamma.clone()
        assert gi.is_inference()
        y_inf = run(x, beta, gi, True, sc)
    assert torch.equal(bits(y_inf), bits(y))
    assert torch.equal(bits(y), bits(per_call(kind, x, beta, gamma, True, sc)))


@NEEDS["bf16"]
def test_bf16_packing_binding_checks():
    K = gdn_mod._avx2_kernels()
    assert K.gdn_bf16_packed_size(1) == 16 * 2 and K.gdn_bf16_packed_size(192) == 12 * 192 * 16
    assert K.gdn_bf16_packed_size(17) == 2 * 18 * 16
    beta, gamma = _params(1)
    out = torch.empty(K.gdn_bf16_packed_size(8), dtype=torch.int16)
    with pytest.raises(RuntimeError, match="gamma packing"):
        K.gdn_pack_bf16(gamma.data_ptr(), 0, 192, 1, 0, 1.0, 0.0, out.data_ptr())   # C = 0
    with pytest.raises(RuntimeError, match="gamma packing"):
        K.gdn_pack_bf16(gamma.data_ptr(), 0, 192, 1, 8, 1.0, 0.0, 0)               # no output
    with pytest.raises(RuntimeError, match="gamma packing"):
        K.gdn_pack_bf16(gamma.data_ptr(), 2, 192, 1, 8, 1.0, 0.0, out.data_ptr())  # bad dtype


@NEEDS["avx2"]
def test_avx2_packing_binding_checks():
    K = gdn_mod._avx2_kernels()
    assert K.gdn_avx2_packed_size(1) == 16 and K.gdn_avx2_packed_size(192) == 12 * 192 * 16
    assert K.gdn_avx2_packed_size(17) == 2 * 17 * 16
    beta, gamma = _params(1)
    out = torch.empty(K.gdn_avx2_packed_size(8) + 1, dtype=torch.float32)
    for args in ((gamma.data_ptr(), 0, 192, 1, 0, 1.0, 0.0, out.data_ptr()),        # C = 0
                 (gamma.data_ptr(), 0, 192, 1, 8, 1.0, 0.0, 0),                     # no output
                 (gamma.data_ptr(), 0, 192, 1, 8, 1.0, 0.0, out.data_ptr() + 4)):   # misaligned
        with pytest.raises(RuntimeError, match="gamma packing"):
            K.gdn_pack_avx2(*args)
    # the forward refuses a misaligned packed gamma (its panels are read by aligned loads)
    x = _x("avx2", 8, 2, 2)
    y = torch.empty_like(x)
    with pytest.raises(RuntimeError, match="GDN kernel"):
        K.gdn_forward_avx2(x.data_ptr(), y.data_ptr(), 0, 1, 8, 4, True, gamma.data_ptr(), 0,
                           192, 1, beta.data_ptr(), 0, 1, 1.0, 0.0, 1.0, 0.0, False, 1, 1, 0,
                           out.data_ptr() + 4)


NEEDS_AMX = pytest.mark.skipif(gdn_mod._fused_kernels() is None,
                               reason="no AMX-BF16 here or _cpu_kernels not built")


def _amx(x, beta, gamma, inverse, sc):
    lay = "nchw" if x.is_contiguous() else "channels_last"
    return gdn_mod._run_fused(x, beta, gamma, lay, inverse, sc)


@NEEDS_AMX
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])    # splits 1 / 3
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("scalars", ["none", "slimgdn+"])
def test_amx_cached_packing_gives_the_same_bits(monkeypatch, dtype, layout, scalars):
    """The AMX kernel with gamma_k packed once in Python (``gdn_pack_amx``, cached per width,
    scalars, splits and layout) against its own packing in the call: the same bits, around
    ``PACKED_GAMMA_MIN_C``, for a gamma, a transposed view of it and bf16 gamma; cached from
    ``PACKED_GAMMA_MIN_C`` channels on; two gammas alternating (as a transform's layers do)."""
    beta, gamma = _params(16)
    _, other = _params(17)
    sc = SCALARS[scalars]
    gs, gb = (1.0, 0.0) if scalars == "none" else sc[:2]
    splits = 3 if dtype == torch.float32 else 1
    for g in (gamma, gamma.t().contiguous().t(), gamma.bfloat16()):
        for C in (7, 48, 64, 65, 192):
            x = torch.randn(1, C, 5, 6, generator=torch.Generator().manual_seed(C)).to(dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", False)
            y_call, o_call = _amx(x, beta, g, True, sc), _amx(x, beta, other, True, sc)
            monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", True)
            for _ in range(2):   # alternating, then hits
                assert torch.equal(bits(_amx(x, beta, g, True, sc)), bits(y_call))
                assert torch.equal(bits(_amx(x, beta, other, True, sc)), bits(o_call))
            key = (("gdn-amx", C, gs, gb, splits, layout == "channels_last"), id(g))
            assert (key in _cache._PACK_CACHE) == (C >= gdn_mod.PACKED_GAMMA_MIN_C)


@NEEDS_AMX
def test_amx_cached_packing_follows_updates(monkeypatch):
    x = torch.randn(1, 72, 4, 5).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    beta, gamma = _params(18)
    none = SCALARS["none"]

    def fresh(g):
        monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", False)
        try:
            return bits(_amx(x, beta, g, False, none))
        finally:
            monkeypatch.setattr(gdn_mod, "USE_PACKED_GAMMA", True)
    y0 = bits(_amx(x, beta, gamma, False, none))
    assert torch.equal(y0, fresh(gamma))
    gamma.mul_(1.5)
    y1 = bits(_amx(x, beta, gamma, False, none))
    assert not torch.equal(y1, y0) and torch.equal(y1, fresh(gamma))


@NEEDS_AMX
def test_amx_packing_binding_checks():
    K = gdn_mod._fused_kernels()
    assert K.gdn_amx_packed_size(1, 1) == 16 * 32 and K.gdn_amx_packed_size(192, 3) == 192 * 576
    assert K.gdn_amx_packed_size(65, 1) == 80 * 96
    beta, gamma = _params(1)
    out = torch.empty(K.gdn_amx_packed_size(8, 1), dtype=torch.int16)
    with pytest.raises(RuntimeError, match="unsupported arguments"):
        K.gdn_pack_amx(gamma.data_ptr(), 0, gamma.stride(0), 1, 8, 1.0, 0.0, 2, True,
                       out.data_ptr())                                    # splits 2
    with pytest.raises(RuntimeError, match="unsupported arguments"):
        K.gdn_pack_amx(gamma.data_ptr(), 0, gamma.stride(0), 1, 0, 1.0, 0.0, 1, True,
                       out.data_ptr())                                    # C = 0
