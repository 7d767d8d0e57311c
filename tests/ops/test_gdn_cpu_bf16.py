"""The bf16 AVX512-BF16 GDN kernel (slimkernels._cpu_kernels.gdn_forward_bf16, for CPUs with
AVX512-BF16 and without AMX) against a float64 reference at its stated precision, and the
dispatch to it."""
import importlib
import os

import pytest
import torch

from slimkernels.ops import gdn
# shared with the AMX kernel's tests: parameters (C_max = 192), SlimGDN+ scalars, the AMX probe
# and the autouse fixture that turns the CPU kernels on
from tests.ops.test_gdn_cpu_packing import bits
from tests.ops.test_gdn_cpu_fused import HAS_AMX, SCALARS, _kernels_on, _params  # noqa: F401
from tests.ops.test_gdn_cpu_fused import check_nan_and_inf_stay_nan

gdn_mod = importlib.import_module("slimkernels.ops.gdn")  # the module (ops.gdn is the function)

_FLAGS = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
HAS_AVX512_BF16 = all(f" {f}" in _FLAGS for f in ("avx2", "fma", "avx512f", "avx512bw",
                                                  "avx512vl", "avx512_bf16"))
needs_kernel = pytest.mark.skipif(gdn_mod._avx2_kernels() is None or
                                  not gdn_mod._bf16_kernel_here(),
                                  reason="no AVX512-BF16 here or _cpu_kernels not built")
no_amx = pytest.mark.skipif(HAS_AMX, reason="AMX CPU: gdn() takes the AMX kernel")


def _x(N, C, H, W, seed=1):
    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(seed)).bfloat16()
    return x.contiguous(memory_format=torch.channels_last)


def _run(x, beta, gamma, inverse, sc=SCALARS["none"]):
    return gdn_mod._run_avx512_bf16(x, beta, gamma, inverse, sc)


def _kernel_ref(x, beta, gamma, inverse, sc):
    """float64 at the kernel's stated precision: z = bf16(x^2), gamma_k = bf16(gamma * gs + gb)
    (scalars applied in fp32), beta_k = beta * bs + bb, n = beta_k + gamma_k z exactly."""
    gs, gb, bs, bb = (d if v is None else v for v, d in zip(sc, (1.0, 0.0, 1.0, 0.0)))
    C = x.shape[1]
    g = (gamma[:C, :C].float() * gs + gb).bfloat16().double()
    b = beta[:C].float().double() * bs + bb
    xd = x.double()
    z = (x.float() * x.float()).bfloat16().double()
    n = b.view(1, C, 1, 1) + torch.einsum("oi,nihw->nohw", g, z)
    return xd * n.sqrt() if inverse else xd / n.sqrt()


def _check(y, ref):
    """One rounding to bf16 (half an ulp: 2^-8 relative) of the fp32 result, plus the fp32
    accumulation and reciprocal square root (1e-5 relative)."""
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert torch.isfinite(y).all(), "NaN/Inf in the result"
    err = (y.double() - ref).abs()
    bound = ref.abs() * (2.0 ** -8 + 1e-5) + 1e-30
    assert (err <= bound).all(), (err / ref.abs().clamp_min(1e-30)).max().item()


def test_available_matches_the_cpu():
    K = gdn_mod._avx2_kernels()
    assert (K is not None and gdn_mod._bf16_kernel_here()) == (HAS_AVX512_BF16 and K is not None)


@needs_kernel
@pytest.mark.parametrize("C", [1, 2, 15, 16, 17, 31, 33, 48, 72, 192])
@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
@pytest.mark.parametrize("scalars", ["none", "slimgdn+"])
def test_matches_float64(C, inverse, scalars):
    """Odd widths (a pad channel pair), partial and odd numbers of 16-channel panels, and 2 x 7 x
    11 = 154 pixels: three 48-pixel blocks, 12-pixel micro-tiles and single-pixel tails."""
    beta, gamma = _params(C)
    x = _x(2, C, 7, 11, seed=C)
    sc = SCALARS[scalars]
    y = _run(x, beta, gamma, inverse, sc)
    assert y.is_contiguous(memory_format=torch.channels_last)
    _check(y, _kernel_ref(x, beta, gamma, inverse, sc))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_parameter_dtypes_and_strided_gamma(dtype):
    """bf16 / fp32 beta and gamma, and a gamma read through its strides (a transposed view; fp32
    gamma with unit stride along its input channels is packed by vector conversions, any other
    element by element)."""
    beta, gamma = _params(3, dtype)
    x = _x(1, 41, 6, 9, seed=4)
    gt = gamma.t().contiguous().t()   # same values, strides (1, 192)
    assert gt.stride() == (1, 192)
    for g in (gamma, gt):
        for sc in ("none", "slimgdn+"):
            _check(_run(x, beta, g, True, SCALARS[sc]),
                   _kernel_ref(x, beta, gamma, True, SCALARS[sc]))


@needs_kernel
@pytest.mark.parametrize("scalars", ["none", "slimgdn+"])
@pytest.mark.parametrize("C", [17, 48, 192])
def test_gamma_packing_gives_the_same_bits_either_way(scalars, C):
    """fp32 gamma with unit stride (converted 16 lanes at a time when there are no scalars) and
    the same values read through a transposed view (element by element) give the same bits:
    values at bf16 rounding ties, the largest fp32 denormals (which round up to a normal bf16,
    as torch rounds them; a hardware conversion flushes them to zero), tiny denormals, -0, inf
    and NaN; with SlimGDN+ scalars a product then a sum, never one fused rounding (the
    reference rounds both)."""
    beta, gamma = _params(7)
    special = torch.tensor([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 0.05391377, -0.0,
                            float("inf"), float("nan"), 1e-45])
    special = torch.cat([special, torch.tensor([0x007FFFFF, 0x007F8000, 0x007F7FFF],
                                               dtype=torch.int32).view(torch.float32)])
    flat = gamma.view(-1)
    flat[torch.arange(len(special)) * 97 % flat.numel()] = special
    gt = gamma.t().contiguous().t()
    assert gt.stride() == (1, 192) and torch.equal(gt.nan_to_num(), gamma.nan_to_num())
    x = _x(1, C, 5, 7, seed=11)
    sc = SCALARS[scalars]
    for inverse in (False, True):
        y_vec, y_el = _run(x, beta, gamma, inverse, sc), _run(x, beta, gt, inverse, sc)
        assert torch.equal(bits(y_vec), bits(y_el))


@needs_kernel
@pytest.mark.parametrize("strided", [False, True])
def test_scalars_are_a_product_then_a_sum(strided):
    """SlimGDN+ scalars applied while packing round the product and then the sum, as torch's
    ``gamma * gs + gb`` does (one fused rounding would differ in some elements): the same bits
    as the scalar-free call on the effective parameters computed by torch."""
    beta, gamma = _params(9)
    gs, gb, bs, bb = SCALARS["slimgdn+"]
    # gamma values whose bf16 gamma_k differs between the two roundings and one fused rounding:
    # those whose gamma * gs + gb lands next to a bf16 rounding tie (fp32 bits hi:0x8000)
    gs32, gb32 = torch.tensor(gs).float(), torch.tensor(gb).float()
    ties = (torch.arange(0x3D20, 0x3D70, dtype=torch.int32) * 65536 + 0x8000).view(torch.float32)
    centre = ((ties.double() - gb32.double()) / gs32.double()).float().view(torch.int32)
    cand = (centre[:, None] + torch.arange(-64, 65, dtype=torch.int32)).view(torch.float32).view(-1)
    two = (cand * gs32 + gb32).bfloat16()
    fused = (cand.double() * gs32.double() + gb32.double()).float().bfloat16()
    sensitive = cand[two != fused]
    assert sensitive.numel() >= 8
    gamma[:40, :40] = sensitive[torch.arange(1600) % sensitive.numel()].view(40, 40)
    g = gamma.t().contiguous().t() if strided else gamma
    x = _x(2, 40, 6, 9, seed=5)
    for inverse in (False, True):
        y = _run(x, beta, g, inverse, (gs, gb, bs, bb))
        y_eff = _run(x, beta * bs + bb, gamma * gs + gb, inverse, SCALARS["none"])
        assert torch.equal(bits(y), bits(y_eff))


@needs_kernel
def test_fp32_denormal_gamma_rounds_as_torch():
    """The largest fp32 denormals round up to the smallest normal bf16 (torch's rounding):
    with x = 1e19 that product outweighs beta = 1, so flushing it to zero would show."""
    beta = torch.ones(192)
    gamma = torch.zeros(192, 192)
    gamma[0, 0] = torch.tensor([0x007FFFFF], dtype=torch.int32).view(torch.float32)[0]
    assert gamma[0, 0].bfloat16().item() > 0
    x = torch.zeros(1, 16, 1, 1).bfloat16().contiguous(memory_format=torch.channels_last)
    x[0, 0] = 1e19
    y = _run(x, beta, gamma, False)
    ref = _kernel_ref(x, beta, gamma, False, SCALARS["none"])
    _check(y, ref)
    assert y[0, 0].float().item() < 0.9 * x[0, 0].float().item()   # n = 1 + g z, not 1


@needs_kernel
def test_threads_give_the_same_bits():
    beta, gamma = _params(5)
    x = _x(1, 96, 32, 48, seed=6)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = _run(x, beta, gamma, False)
        torch.set_num_threads(2)
        y2 = _run(x, beta, gamma, False)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(y1, y2)


@needs_kernel
def test_nan_and_inf_stay_nan():
    """A NaN in x gives NaN in every output of its pixel (n is NaN); an inf x gives NaN where the
    exact form is inf/inf; the other pixels stay finite."""
    check_nan_and_inf_stay_nan(_x(1, 20, 3, 4, seed=3),
                               lambda x, beta, gamma: _run(x, beta, gamma, False))


@needs_kernel
def test_bad_arguments_are_refused():
    """The binding refuses fp32 x, NCHW x and the factor output (a RuntimeError naming the
    kernel), never reading or writing out of bounds."""
    K = gdn_mod._avx2_kernels()
    beta, gamma = _params(1)
    x = _x(1, 8, 2, 3)
    y = torch.empty_like(x)

    def call(xdtype=K.BF16, channels_last=True, splits=1, r=0):
        K.gdn_forward_bf16(x.data_ptr(), y.data_ptr(), xdtype, 1, 8, 6, channels_last,
                           gamma.data_ptr(), K.F32, 192, 1, beta.data_ptr(), K.F32, 1, 1.0, 0.0,
                           1.0, 0.0, False, splits, 1, r)
    call()
    for bad in (dict(xdtype=K.F32), dict(channels_last=False), dict(splits=3),
                dict(r=y.data_ptr())):
        with pytest.raises(RuntimeError, match="gdn_forward_bf16|GDN kernel"):
            call(**bad)


@needs_kernel
@no_amx
def test_gdn_dispatches_to_it(monkeypatch):
    """gdn(): bf16 channels_last x without autograd -> this kernel at any width (192 included,
    beyond the AVX2 kernel's bf16 rule); NCHW bf16 x, a gradient, or USE_AVX512_BF16 = False ->
    another path; the values agree."""
    beta, gamma = _params(7)
    x = _x(1, 192, 8, 12, seed=8)
    ref = _kernel_ref(x, beta, gamma, True, SCALARS["none"])
    with torch.no_grad():
        y = gdn(x, beta, gamma, inverse=True)
    assert gdn_mod.last_cpu_path == "avx512-bf16"
    _check(y, ref)
    with torch.no_grad():
        gdn(x.contiguous(), beta, gamma, inverse=True)
    assert gdn_mod.last_cpu_path != "avx512-bf16"
    gdn(x, beta, gamma.clone().requires_grad_(True), inverse=True)
    assert gdn_mod.last_cpu_path == "torch"
    monkeypatch.setattr(gdn_mod, "USE_AVX512_BF16", False)
    with torch.no_grad():
        y2 = gdn(x, beta, gamma, inverse=True)
    assert gdn_mod.last_cpu_path == "torch"   # 192 channels on 96 pixels: the PyTorch path
    assert (y2.double() - ref).abs().max() / ref.abs().max() < 1e-2


@needs_kernel
def test_random_shapes_match_float64():
    """A seeded sweep: widths 1-192, batches 1-3, images 1-20 pixels a side, GDN and IGDN,
    SlimGDN+ scalars or none."""
    import random
    rng = random.Random(3)
    for i in range(40):
        N, C, H, W = rng.randint(1, 3), rng.randint(1, 192), rng.randint(1, 20), rng.randint(1, 20)
        beta, gamma = _params(i)
        sc = SCALARS["slimgdn+" if i % 2 else "none"]
        x = _x(N, C, H, W, seed=i)
        inverse = rng.random() < 0.5
        _check(_run(x, beta, gamma, inverse, sc), _kernel_ref(x, beta, gamma, inverse, sc))
