"""The fp32 AVX2 + FMA GDN kernel (slimkernels._cpu_kernels.gdn_forward_avx2, for CPUs without
AMX) against a float64 reference, and the dispatch to it."""
import importlib
import os

import pytest
import torch

from slimkernels._cpu import cpu_kernels
from slimkernels.ops import gdn
# shared with the AMX kernel's tests: parameters (C_max = 192), SlimGDN+ scalars, the float64
# reference, the AMX probe and the autouse fixture that turns the CPU kernels on
from tests.ops.test_gdn_cpu_fused import HAS_AMX, SCALARS, _kernels_on, _params, _ref  # noqa: F401
from tests.ops.test_gdn_cpu_fused import check_nan_and_inf_stay_nan

gdn_mod = importlib.import_module("slimkernels.ops.gdn")  # the module (ops.gdn is the function)

_FLAGS = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
HAS_AVX2 = " avx2" in _FLAGS and " fma" in _FLAGS
needs_avx2 = pytest.mark.skipif(cpu_kernels("gdn_avx2_available") is None,
                                reason="no AVX2 + FMA here or slimkernels._cpu_kernels not built")


def _x(N, C, H, W, seed=1, channels_last=True):
    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _max_rel(y, ref):
    y, ref = y.double(), ref.double()
    assert torch.isfinite(y).all(), "NaN/Inf in the result"
    return ((y - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()


def _run(x, beta, gamma, inverse, sc):
    return gdn_mod._run_avx2(x, beta, gamma, inverse, sc)


def test_available_matches_the_cpu():
    """On an x86 CPU with AVX2 + FMA the kernel must be built and usable (fails if it is not)."""
    assert (cpu_kernels("gdn_avx2_available") is not None) == HAS_AVX2


@needs_avx2
@pytest.mark.parametrize("C", [1, 2, 3, 8, 15, 16, 17, 33, 48, 72, 96, 144, 191, 192])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("sc", list(SCALARS), ids=list(SCALARS))
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_matches_float64_reference(C, inverse, sc, layout):
    """fp32 arithmetic: fp32 relative error (1e-5) elementwise at every channel count (16-
    channel panels with a masked tail) and pixel count (6-pixel tiles, 24-pixel blocks, tails;
    NCHW blocks stay within an image), y in x's layout."""
    beta, gamma = _params()
    x = _x(2, C, 7, 11, channels_last=layout == "channels_last")  # 77 pixels: tails
    y = _run(x, beta, gamma, inverse, SCALARS[sc])
    assert y.shape == x.shape and y.dtype == torch.float32
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()
    assert _max_rel(y, _ref(x, beta, gamma, inverse, SCALARS[sc])) < 1e-5


@needs_avx2
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_threads_give_the_same_result(threads, layout, dtype):
    """Pixels split across threads: every split gives the same values (each pixel's sums run in
    the same order whatever thread takes it), fp32 and bf16 x."""
    beta, gamma = _params(3)
    x = _x(2, 48, 37, 29, seed=4, channels_last=layout == "channels_last").to(dtype)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(x, beta, gamma, False, SCALARS["none"])
        torch.set_num_threads(threads)
        many = _run(x, beta, gamma, False, SCALARS["none"])
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


@needs_avx2
def test_parameters_read_in_place_any_strides_and_bf16():
    """gamma[:C, :C] read through its strides (a transposed view too) and bf16 parameters
    (widened exactly), without copies by the caller."""
    beta, gamma = _params(5)
    x = _x(1, 40, 9, 10, seed=6)
    gt = gamma.t()                                   # strides (1, C_MAX)
    y = _run(x, beta, gt, False, SCALARS["none"])
    assert _max_rel(y, _ref(x, beta, gt, False, SCALARS["none"])) < 1e-5
    b16, g16 = beta.bfloat16(), gamma.bfloat16()
    y = _run(x, b16, g16, True, SCALARS["slimgdn+"])
    assert _max_rel(y, _ref(x, b16.float(), g16.float(), True, SCALARS["slimgdn+"])) < 1e-5


@needs_avx2
@pytest.mark.parametrize("C", [1, 17, 48, 96, 192])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("sc", list(SCALARS), ids=list(SCALARS))
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_bf16_x_computed_in_fp32_and_rounded_once(C, inverse, sc, layout):
    """bf16 x: widened exactly, computed in fp32, y rounded to bf16 once (to nearest even, as
    torch rounds): y is within one bf16 ulp (2^-8 relative) of the float64 result of the same
    bf16 inputs everywhere, and equal to that result rounded to bf16 almost everywhere (only
    values within fp32 error of a rounding boundary may differ)."""
    beta, gamma = _params()
    x = _x(2, C, 7, 11, channels_last=layout == "channels_last").bfloat16()
    y = _run(x, beta, gamma, inverse, SCALARS[sc])
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                           else torch.contiguous_format)
    ref = _ref(x.double(), beta, gamma, inverse, SCALARS[sc])
    assert _max_rel(y, ref) < 2 ** -8
    same = (y == ref.to(torch.bfloat16)).double().mean().item()
    assert same > 0.995, f"only {same:.4f} of y equal the correctly rounded result"


@needs_avx2
def test_bf16_x_nan_and_inf_stay_nan():
    """A NaN in x gives NaN in its pixel's outputs (not a finite number from the rounding); an
    inf x gives NaN where the exact form is inf/inf."""
    check_nan_and_inf_stay_nan(_x(1, 16, 3, 4, seed=3).bfloat16(),
                               lambda x, beta, gamma: _run(x, beta, gamma, False, SCALARS["none"]))


@needs_avx2
@pytest.mark.skipif(HAS_AMX, reason="AMX CPU: gdn() takes the AMX kernel (tested elsewhere)")
def test_gdn_sends_narrow_bf16_to_it(monkeypatch):
    """gdn() on bf16 x without the AVX512-BF16 kernel (off here, or a CPU without it): up to
    AVX2_BF16_MAX_C channels at any size and up to AVX2_BF16_SMALL_MAX_C on small images -> the
    AVX2 kernel; wider -> the PyTorch path (oneDNN's bf16 GEMM is faster there); the values agree
    with the PyTorch path to bf16 tolerance. (Where oneDNN has no bf16, no AVX-512, the wide ones
    run as float32, rounded: the AVX2 kernel's float32 path.)"""
    monkeypatch.setattr(gdn_mod, "USE_AVX512_BF16", False)
    beta, gamma = _params(7)
    small = gdn_mod.AVX2_BF16_SMALL_HW
    assert gdn_mod.AVX2_BF16_MAX_C < gdn_mod.AVX2_BF16_SMALL_MAX_C < 192 and small >= 96
    cases = [(gdn_mod.AVX2_BF16_MAX_C, 96, 80, "avx2"),            # large image, narrow
             (gdn_mod.AVX2_BF16_SMALL_MAX_C, 8, 12, "avx2"),       # small image, medium width
             (gdn_mod.AVX2_BF16_SMALL_MAX_C, 96, 80, "torch"),     # large image, medium width
             (gdn_mod.AVX2_BF16_SMALL_MAX_C + 1, 8, 12, "torch")]  # too wide for the kernel
    for C, H, W, path in cases:
        assert (H * W <= small) == (H == 8)
        if path == "torch" and not gdn_mod.onednn_half(torch.bfloat16):
            path = "avx2"
        x = _x(1, C, H, W, seed=C).bfloat16()
        with torch.no_grad():
            y = gdn(x, beta, gamma, inverse=True)
            assert gdn_mod.last_cpu_path == path, (C, H, W)
            y0 = gdn_mod.gdn_torch(x, beta, gamma, inverse=True)
        assert y.dtype == torch.bfloat16 and _max_rel(y, y0) < 2e-2


@needs_avx2
@pytest.mark.skipif(HAS_AMX, reason="AMX CPU: gdn() takes the AMX kernel (tested elsewhere)")
def test_gdn_dispatches_to_it_and_falls_back():
    """gdn(): fp32 NCHW or channels_last without autograd or autocast -> the AVX2 kernel; other
    strides, bf16 autocast or SLIMKERNELS_CPU_KERNELS=0 -> the PyTorch path (a gradient: the
    training forward on the kernel); same values."""
    beta, gamma = _params(7)
    x = _x(1, 24, 6, 9, seed=8)
    ref = _ref(x, beta, gamma, False, SCALARS["none"])
    y = gdn(x, beta, gamma)
    assert gdn_mod.last_cpu_path == "avx2" and _max_rel(y, ref) < 1e-5
    yn = gdn(x.contiguous(), beta, gamma)                 # NCHW: the kernel too, NCHW out
    assert gdn_mod.last_cpu_path == "avx2" and yn.is_contiguous() and _max_rel(yn, ref) < 1e-5
    gdn(x.contiguous(memory_format=torch.channels_last)[:, :, ::2], beta, gamma)  # strided
    assert gdn_mod.last_cpu_path == "torch"
    big = _x(1, 48, 96, 96, seed=9, channels_last=False)   # narrow and large NCHW: PyTorch
    assert big.shape[2] * big.shape[3] > gdn_mod.AVX2_NCHW_MAX_SMALL_HW > 0
    gdn(big, beta, gamma)
    assert gdn_mod.last_cpu_path == "torch"
    gdn(big.contiguous(memory_format=torch.channels_last), beta, gamma)
    assert gdn_mod.last_cpu_path == "avx2"
    xg = x.clone().requires_grad_(True)
    gdn(xg, beta, gamma).sum().backward()
    assert gdn_mod.last_cpu_path == "avx2-train" and xg.grad is not None   # see the next tests
    with torch.autocast("cpu", torch.bfloat16):
        gdn(x, beta, gamma)   # (no bf16 in oneDNN, no AVX-512: float32, the kernel)
    assert gdn_mod.last_cpu_path == ("torch" if gdn_mod.onednn_half(torch.bfloat16) else "avx2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMKERNELS_CPU_KERNELS", "0")
        y0 = gdn(x, beta, gamma)
        assert gdn_mod.last_cpu_path == "torch"
    assert _max_rel(y0, ref) < 1e-5


@needs_avx2
@pytest.mark.skipif(HAS_AMX, reason="AMX CPU: gdn() takes the AMX kernel (tested elsewhere)")
@pytest.mark.parametrize("avx512", [False, True], ids=["aten-avx2", "aten-avx512"])
def test_nchw_rule_follows_the_aten_cpu_level(monkeypatch, avx512):
    """fp32 NCHW: on AVX2-level CPUs wide layers go to the kernel at any size; where ATen runs
    AVX-512 (oneDNN faster there) only small images or <= AVX2_NCHW_AVX512_MAX_C channels at
    <= AVX2_NCHW_MAX_SMALL_HW pixels do."""
    monkeypatch.setattr(gdn_mod, "_aten_avx512", lambda: avx512)
    beta, gamma = _params(8)
    wide_large = _x(1, 96, 96, 80, seed=10, channels_last=False)
    assert 96 * 80 > gdn_mod.AVX2_NCHW_MAX_SMALL_HW and 96 >= gdn_mod.AVX2_NCHW_MIN_C
    small = _x(1, 144, 8, 12, seed=11, channels_last=False)
    medium = _x(1, 72, 60, 80, seed=12, channels_last=False)   # 4800 pixels, 72 channels
    assert 60 * 80 <= gdn_mod.AVX2_NCHW_MAX_SMALL_HW and 60 * 80 > gdn_mod.AVX2_NCHW_AVX512_ANY_C_HW
    want = {"wide_large": "torch" if avx512 else "avx2", "small": "avx2", "medium": "avx2"}
    for name, x in (("wide_large", wide_large), ("small", small), ("medium", medium)):
        with torch.no_grad():
            y = gdn(x, beta, gamma)
        assert gdn_mod.last_cpu_path == want[name], name
        assert _max_rel(y, _ref(x, beta, gamma, False, SCALARS["none"])) < 1e-5


@needs_avx2
def test_fused_conv_gdn_chain_uses_it_without_changing_the_model_output():
    """The conv op's GDN epilogue on CPU (slim_conv2d(..., gdn=)) and a whole SlimCAE encoder in
    fp32 agree with the PyTorch path (SLIMKERNELS_CPU_KERNELS=0) to fp32 tolerance."""
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    m = SlimCAE(widths=(32, 16)).eval()
    x = torch.rand(1, 3, 64, 48).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for w in (32, 16):
            y = m.g_a(x, w)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("SLIMKERNELS_CPU_KERNELS", "0")
                y0 = m.g_a(x, w)
            assert (y - y0).abs().max() <= 1e-5 * y0.abs().max()


@needs_avx2
@pytest.mark.skipif(HAS_AMX, reason="AMX CPU: training GDN takes the PyTorch composition")
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("sc", ["none", "slimgdn+"])
def test_training_forward_runs_the_kernel_with_float64_gradients(inverse, sc):
    """fp32 channels_last x with autograd: the forward is the kernel (y and the saved factors r in
    one pass), the hand-written backward uses r; values and gradients of x, beta and gamma (and
    the SlimGDN+ scalars) match float64 autograd. NCHW x and SLIMKERNELS_CPU_KERNELS=0 take the
    PyTorch composition with the same values."""
    beta, gamma = _params(11)
    x = _x(2, 40, 5, 7, seed=12).requires_grad_(True)
    beta.requires_grad_(True)
    gamma.requires_grad_(True)
    scal = [None if v is None else torch.tensor(v, requires_grad=True) for v in SCALARS[sc]]
    kw = dict(zip(("gamma_scale", "gamma_bias", "beta_scale", "beta_bias"), scal))
    leaves = [x, beta, gamma] + [s for s in scal if s is not None]
    y = gdn(x, beta, gamma, inverse=inverse, **kw)
    assert gdn_mod.last_cpu_path == "avx2-train"
    assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(13))
    grads = torch.autograd.grad(y, leaves, dy)
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    it = iter(leaves64[3:])
    kw64 = dict(zip(kw, [None if s is None else next(it) for s in scal]))
    y64 = gdn_mod.gdn_reference(*leaves64[:3], inverse=inverse, **kw64)
    grads64 = torch.autograd.grad(y64, leaves64, dy.double())
    assert _max_rel(y, y64) < 1e-5
    for a, b in zip(grads, grads64):
        assert torch.isfinite(a).all()
        assert (a.double() - b).abs().max() <= 1e-5 * b.abs().max()
    yn = gdn(x.contiguous(), beta, gamma, inverse=inverse, **kw)
    assert gdn_mod.last_cpu_path == "torch" and _max_rel(yn, y64) < 1e-5
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLIMKERNELS_CPU_KERNELS", "0")
        y0 = gdn(x, beta, gamma, inverse=inverse, **kw)
        assert gdn_mod.last_cpu_path == "torch" and _max_rel(y0, y64) < 1e-5

