"""The fused CPU GDN kernel (slimkernels._cpu_kernels, AMX-BF16) against a float64 reference,
and the dispatch between it and the PyTorch path."""
import importlib

import pytest
import torch

from slimkernels.ops import gdn, gdn_reference
from slimkernels.ops.gdn import cpu_kernels_available, gdn_cpu_fused

gdn_mod = importlib.import_module("slimkernels.ops.gdn")  # the module (ops.gdn is the function)

C_MAX = 192
WIDTHS = [1, 3, 17, 48, 72, 96, 144, 192]
SCALARS = {"none": (None, None, None, None), "slimgdn+": (1.3, 0.02, 0.8, 0.1)}


def _cpu_has_amx():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags and " amx_tile" in flags and " avx512_bf16" in flags


HAS_AMX = _cpu_has_amx()
needs_fused = pytest.mark.skipif(not HAS_AMX, reason="CPU without AMX-BF16: the fused kernel "
                                                     "cannot run here (the fallback is tested)")


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    monkeypatch.delenv("SLIMKERNELS_CPU_KERNELS", raising=False)
    monkeypatch.setattr(gdn_mod, "USE_CPU_KERNELS", True)


def _params(seed=0, dtype=torch.float32, size=C_MAX):
    g = torch.Generator().manual_seed(seed)
    beta = (torch.rand(size, generator=g) + 0.5).to(dtype)
    gamma = (torch.rand(size, size, generator=g) * 0.1).to(dtype)  # not symmetric
    return beta, gamma


def check_nan_and_inf_stay_nan(x, run):
    """x (>= 6 channels, >= 3x4 pixels) with a NaN at channel 5 of pixel (1, 2) and an inf at
    channel 3 of pixel (2, 0), through ``run(x, beta, gamma)``: NaN in every output of the NaN's
    pixel (n is NaN, not a finite number from a rounding), NaN where the exact form is inf/inf,
    the other pixels finite."""
    beta, gamma = _params(2)
    x[0, 5, 1, 2] = float("nan")
    x[0, 3, 2, 0] = float("inf")
    y = run(x, beta, gamma)
    assert torch.isnan(y[0, :, 1, 2]).all() and torch.isnan(y[0, 3, 2, 0])
    finite = torch.ones_like(y, dtype=torch.bool)
    finite[0, :, 1, 2] = False
    finite[0, :, 2, 0] = False
    assert torch.isfinite(y[finite]).all()


def _x(N, C, H, W, channels_last, dtype=torch.float32, seed=1):
    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _errs(y, ref):
    """(max elementwise relative error, max error relative to max |ref|); NaN never passes."""
    y, ref = y.double(), ref.double()
    assert torch.isfinite(y).all(), "NaN/Inf in the result"
    d = (y - ref).abs()
    return ((d / ref.abs().clamp_min(1e-30)).max().item(),
            (d.max() / ref.abs().max().clamp_min(1e-30)).item())


def _ref(x, beta, gamma, inverse, sc):
    gs, gb, bs, bb = sc
    return gdn_reference(x.double(), beta.double(), gamma.double(), inverse=inverse,
                         gamma_scale=gs, gamma_bias=gb, beta_scale=bs, beta_bias=bb)


def test_cpu_kernels_available_matches_the_cpu():
    """On a CPU with AMX-BF16 the extension must be built and usable (fails if it is not)."""
    assert cpu_kernels_available() == HAS_AMX


@needs_fused
@pytest.mark.parametrize("C", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scalars", list(SCALARS))
def test_fused_matches_float64(C, dtype, channels_last, inverse, scalars):
    beta, gamma = _params()
    sc = SCALARS[scalars]
    x = _x(2, C, 5, 7, channels_last, dtype)
    gs, gb, bs, bb = sc
    gdn_mod.last_cpu_path = None
    with torch.no_grad():
        y = gdn(x, beta, gamma, inverse=inverse, gamma_scale=gs, gamma_bias=gb, beta_scale=bs,
                beta_bias=bb)
    assert gdn_mod.last_cpu_path == "fused"
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last and C > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()
    elem, norm = _errs(y, _ref(x, beta, gamma, inverse, sc))
    if dtype == torch.float32:  # bf16x3 channel mixing: the fp32 accuracy class
        assert elem < 1e-5, elem
    else:
        assert norm < 1e-2 and elem < 2e-2, (elem, norm)


@needs_fused
@pytest.mark.parametrize("C", [48, 72, 192])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_bf16_within_one_ulp_of_its_own_products(C, inverse, channels_last):
    _check_within_one_ulp(C, inverse, channels_last)


@needs_fused
@pytest.mark.parametrize("C", [16 * v + t for v in range(13) for t in (1, 16)])
@pytest.mark.parametrize("inverse", [False, True])
def test_bf16_channels_last_every_vector_count_within_one_ulp(C, inverse):
    """The bf16 channels_last kernel is unrolled per count of 16-channel vectors (1..12, a
    masked last one; above 192 channels the generic loop): every count, with and without a
    tail, within one ulp of its own products."""
    _check_within_one_ulp(C, inverse, True)


def _check_within_one_ulp(C, inverse, channels_last):
    """A bf16 x: y is x * rsqrt(n) (x * sqrt(n)) of the kernel's own n (beta + bf16 gamma times
    bf16 x^2, exact sums) to within one bf16 unit in the last place. The channels_last kernel
    takes rsqrt14 without a Newton step for a bf16 y (relative error < 2^-14, far below the
    2^-8 of the rounding to bf16): a cruder root (8 bits) breaks this bound."""
    beta, gamma = _params(5, size=max(C, C_MAX))
    x = _x(1, C, 16, 24, channels_last, torch.bfloat16, seed=6)
    with torch.no_grad():
        y = gdn(x, beta, gamma, inverse=inverse)
    assert gdn_mod.last_cpu_path == "fused"
    xd = x.double()
    z = (x.float() ** 2).bfloat16().double()
    g = gamma[:C, :C].bfloat16().double()
    n = beta[:C].double().view(1, C, 1, 1) + torch.einsum("ij,njhw->nihw", g, z)
    ref = xd * (n.sqrt() if inverse else n.rsqrt())
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-30))) - 7)  # bf16: 8 bits
    err = (y.double() - ref).abs() / ulp
    assert torch.isfinite(y).all()
    assert err.max().item() <= 1.0, err.max().item()


@needs_fused
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_many_blocks_two_threads(channels_last, dtype):
    """More pixels than one block (tails in both layouts), N > 1, pixels split over 2 threads;
    tensor-valued SlimGDN+ scalars."""
    beta, gamma = _params(3)
    x = _x(3, 72, 33, 37, channels_last, dtype, seed=4)
    sc = (torch.tensor(0.9), torch.tensor(0.01), torch.tensor(1.1), torch.tensor(0.05))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y = gdn(x, beta, gamma, gamma_scale=sc[0], gamma_bias=sc[1], beta_scale=sc[2],
                beta_bias=sc[3])
    finally:
        torch.set_num_threads(old)
    assert gdn_mod.last_cpu_path == "fused"
    elem, norm = _errs(y, _ref(x, beta, gamma, False, sc))
    assert (elem < 1e-5) if dtype == torch.float32 else (norm < 1e-2), (elem, norm)


@needs_fused
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_strided_and_bf16_parameters(channels_last):
    """gamma / beta as strided views (a transposed parameter, every other element of a longer
    vector) and as bf16 tensors: read in place with their strides."""
    beta, gamma = _params(5)
    gamma_t = gamma.t().contiguous().t()  # same values, strides (1, 192)
    beta_s = torch.stack([beta, -beta], 1).reshape(-1)[::2]  # stride 2
    assert gamma_t.stride() == (1, C_MAX) and beta_s.stride() == (2,)
    x = _x(1, 96, 9, 11, channels_last)
    y = gdn(x, beta_s, gamma_t, inverse=True)
    assert gdn_mod.last_cpu_path == "fused"
    assert _errs(y, _ref(x, beta, gamma, True, SCALARS["none"]))[0] < 1e-5
    bb, gb = beta.bfloat16(), gamma.bfloat16()
    y = gdn(x, bb, gb)
    assert gdn_mod.last_cpu_path == "fused"
    assert _errs(y, _ref(x, bb, gb, False, SCALARS["none"]))[0] < 1e-5


@needs_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_fused_special_values_like_reference(inverse, channels_last, dtype):
    """n = 0 (zero beta and zero x) and x = 0 rows: same zeros / infs / NaNs as the reference
    (bf16 channels_last: the pass without a Newton step, whose IGDN must not make 0 * inf)."""
    beta, gamma = _params(6)
    beta = beta.clone()
    beta[:4] = 0.0
    x = _x(1, 8, 3, 5, channels_last, dtype)
    x[:, :, 0, :] = 0.0  # n = beta: zero for channels 0..3
    y = gdn(x, beta, gamma, inverse=inverse)
    assert gdn_mod.last_cpu_path == "fused"
    ref = gdn_reference(x.double(), beta.double(), gamma.double(), inverse=inverse)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    ok = ~torch.isnan(ref)
    assert torch.equal(torch.isinf(y[ok]), torch.isinf(ref[ok]))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(y[ok].double(), ref[ok], rtol=tol, atol=0)


def test_forced_off_takes_the_torch_path(monkeypatch):
    beta, gamma = _params()
    x = _x(1, 48, 5, 7, True)
    ref = _ref(x, beta, gamma, False, SCALARS["none"])
    monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    assert not cpu_kernels_available()
    y = gdn(x, beta, gamma)
    assert gdn_mod.last_cpu_path == "torch"
    assert _errs(y, ref)[0] < 1e-5
    monkeypatch.delenv("SLIMKERNELS_CPU_KERNELS")
    monkeypatch.setattr(gdn_mod, "USE_CPU_KERNELS", False)
    gdn(x, beta, gamma)
    assert gdn_mod.last_cpu_path == "torch"


@pytest.mark.parametrize("case", ["grad", "fp16", "strided_x", "autocast_fp16"])
def test_uncovered_calls_fall_back(case):
    """Autograd, fp16, non-contiguous x and fp16 CPU autocast keep the PyTorch path (and its
    semantics: gradients flow, autocast's fp16 GEMM); where oneDNN has no fp16 (no AVX-512) the
    fp16 ones run as float32 (and round), down float32's path."""
    beta, gamma = _params()
    x = _x(1, 17, 5, 7, False)
    want = "torch"
    if case in ("fp16", "autocast_fp16") and not gdn_mod.onednn_half(torch.float16):
        gdn(x, beta, gamma)
        want = gdn_mod.last_cpu_path
    if case == "grad":
        x.requires_grad_(True)
        y = gdn(x, beta, gamma)
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    elif case == "fp16":
        y = gdn(x.half(), beta, gamma)
    elif case == "strided_x":
        y = gdn(_x(1, 17, 5, 14, False)[..., ::2], beta, gamma)
    else:
        with torch.autocast("cpu", dtype=torch.float16):
            y = gdn(x, beta, gamma)
    assert gdn_mod.last_cpu_path == want
    assert torch.isfinite(y).all()


@needs_fused
def test_gdn_cpu_fused_rejects_uncovered_calls():
    beta, gamma = _params()
    with pytest.raises(ValueError, match="gdn_cpu_fused covers"):
        gdn_cpu_fused(_x(1, 8, 3, 3, False).half(), beta, gamma)


def test_without_the_extension_gdn_falls_back(monkeypatch):
    """A build without slimkernels._cpu_kernels (non-x86, no compiler support): gdn still works
    through the PyTorch path; the direct entry point says what is missing."""
    monkeypatch.setattr(gdn_mod, "_fused_kernels", lambda: None)
    monkeypatch.setattr(gdn_mod, "_avx2_kernels", lambda: None)
    assert not cpu_kernels_available()
    beta, gamma = _params()
    x = _x(1, 17, 5, 7, True)
    y = gdn(x, beta, gamma)
    assert gdn_mod.last_cpu_path == "torch"
    assert _errs(y, _ref(x, beta, gamma, False, SCALARS["none"]))[0] < 1e-5
    with pytest.raises(RuntimeError, match="_cpu_kernels is not available here"):
        gdn_cpu_fused(x, beta, gamma)


@needs_fused
def test_binding_rejects_bad_arguments():
    ck = gdn_mod._fused_kernels()
    x = torch.ones(1, 4, 2, 2)
    y = torch.empty_like(x)
    beta, gamma = _params()
    with pytest.raises(RuntimeError, match="unsupported arguments"):
        ck.gdn_forward(x.data_ptr(), y.data_ptr(), 0, 1, 4, 4, False, gamma.data_ptr(), 0, 192, 1,
                       beta.data_ptr(), 0, 1, 1.0, 0.0, 1.0, 0.0, False, 2, 1)  # splits=2


@needs_fused
@pytest.mark.parametrize("channels_last", [False, True])
def test_packed_gamma_cache_follows_the_parameter(channels_last):
    """The kernel reuses the last packed gamma only for identical bytes, scalars and width: an
    in-place update of the parameter, other scalars or another width must all be seen."""
    beta, gamma = _params(7)
    x = _x(1, 48, 5, 7, channels_last)
    none = SCALARS["none"]
    for step in range(3):
        y = gdn(x, beta, gamma)
        assert _errs(y, _ref(x, beta, gamma, False, none))[0] < 1e-5, step
        with torch.no_grad():
            gamma[3, 5] += 0.05  # one element, in place: same pointer, same version semantics
    sc = SCALARS["slimgdn+"]
    y = gdn(x, beta, gamma, gamma_scale=sc[0], gamma_bias=sc[1], beta_scale=sc[2],
            beta_bias=sc[3])
    assert _errs(y, _ref(x, beta, gamma, False, sc))[0] < 1e-5
    x2 = _x(1, 47, 5, 7, channels_last)
    assert _errs(gdn(x2, beta, gamma), _ref(x2, beta, gamma, False, none))[0] < 1e-5
    for dtype in (torch.bfloat16, torch.float32):  # same width, other x dtype (other split)
        xd = x.to(dtype)
        elem, norm = _errs(gdn(xd, beta, gamma), _ref(xd, beta, gamma, False, none))
        assert (elem < 1e-5) if dtype == torch.float32 else (norm < 1e-2)


@needs_fused
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_under_bf16_autocast(channels_last):
    """fp32 x under CPU bf16 autocast: the fused kernel with one bf16 product (autocast's GEMM
    precision), fp32 output, bf16 accuracy class; the PyTorch path agrees within it."""
    beta, gamma = _params(8)
    x = _x(2, 72, 7, 9, channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = gdn(x, beta, gamma, inverse=True)
        assert gdn_mod.last_cpu_path == "fused"
        y_torch = gdn_mod.gdn_torch(x, beta, gamma, inverse=True)
    assert y.dtype == torch.float32
    ref = _ref(x, beta, gamma, True, SCALARS["none"])
    elem, norm = _errs(y, ref)
    assert norm < 1e-2 and elem > 1e-5, (elem, norm)  # bf16 class, not the fp32 (x3) one
    assert _errs(y_torch, ref)[1] < 1e-2
