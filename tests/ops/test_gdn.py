"""The GDN dispatcher and its PyTorch (CPU) path against a float64 reference."""
import pytest
import torch

from slimkernels.ops import gdn, gdn_reference
from slimkernels.ops.gdn import gdn_torch

from tests._caches import fresh_op_caches
from tests._gemm_dtypes import GemmDtypes

C_MAX = 192


def _params(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    beta = (torch.rand(C_MAX, generator=g) + 0.5).to(dtype)
    gamma = (torch.rand(C_MAX, C_MAX, generator=g) * 0.1).to(dtype)  # not symmetric
    return beta, gamma


def _x(N, C, H, W, channels_last, seed=1):
    x = torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "NaN/Inf in the result"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


SCALARS = {"none": (None, None, None, None), "slimgdn+": (1.3, 0.02, 0.8, 0.1)}


@pytest.mark.parametrize("C", [1, 3, 17, 48, 72, 96, 144, 192])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_forward_fp32_matches_float64(C, channels_last, inverse):
    beta, gamma = _params()
    x = _x(2, C, 5, 7, channels_last)
    y = gdn(x, beta, gamma, inverse=inverse)
    ref = gdn_reference(x.double(), beta.double(), gamma.double(), inverse=inverse)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert _rel(y, ref) < 1e-5
    if channels_last and C > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("N", [1, 3])
def test_forward_half_dtypes(dtype, channels_last, N):
    beta, gamma = _params()
    x = _x(N, 72, 9, 5, channels_last).to(dtype)
    y = gdn(x, beta, gamma)
    assert y.dtype == dtype
    ref = gdn_reference(x.double(), beta.double(), gamma.double())
    assert _rel(y, ref) < 1e-2


@pytest.mark.parametrize("scalars", list(SCALARS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("C", [17, 96])
def test_gradients_match_float64(scalars, channels_last, inverse, C):
    beta, gamma = _params()
    x = _x(2, C, 5, 3, channels_last)
    vals = SCALARS[scalars]
    scal = [None if v is None else torch.tensor(v) for v in vals]
    leaves = [x, beta, gamma] + [s for s in scal if s is not None]
    for t in leaves:
        t.requires_grad_(True)
    kw = lambda sc: dict(zip(("gamma_scale", "gamma_bias", "beta_scale", "beta_bias"), sc))
    y = gdn(x, beta, gamma, inverse=inverse, **kw(scal))
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(C))
    grads = torch.autograd.grad(y, leaves, dy)
    leaves64 = [t.detach().double().requires_grad_(True) for t in leaves]
    it = iter(leaves64[3:])
    scal64 = [None if s is None else next(it) for s in scal]
    y64 = gdn_reference(*leaves64[:3], inverse=inverse, **kw(scal64))
    grads64 = torch.autograd.grad(y64, leaves64, dy.double())
    assert _rel(y, y64) < 1e-5
    for name, a, b in zip(["x", "beta", "gamma", "s1", "s2", "s3", "s4"], grads, grads64):
        if b.dim() == 0:  # a signed sum of C*C terms: error relative to the terms' magnitudes
            dg, db = grads64[2][:C, :C], grads64[1][:C]
            terms = {"s1": dg * leaves64[2][:C, :C] / leaves64[3],
                     "s2": dg / leaves64[3],
                     "s3": db * leaves64[1][:C] / leaves64[5],
                     "s4": db / leaves64[5]}[name]
            assert (a.double() - b).abs() < 1e-5 * terms.abs().sum(), name
        else:
            assert _rel(a, b) < 1e-5, name
    # only the active slice receives gradient
    assert grads[2][C:].abs().max() == 0 and grads[2][:, C:].abs().max() == 0
    assert grads[1][C:].abs().max() == 0


def test_autocast_bf16_matches_conv2d_under_autocast():
    beta, gamma = _params()
    x = _x(2, 48, 7, 9, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gdn(x, beta, gamma)
        ref = gdn_reference(x, beta, gamma)  # F.conv2d path, autocast to bf16
    assert y.dtype == ref.dtype == torch.float32
    assert _rel(y, ref) < 1e-2
    ref64 = gdn_reference(x.double(), beta.double(), gamma.double())
    assert _rel(y, ref64) < 1e-2
    # and it trains: gradients flow under autocast
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gdn(x, beta, gamma).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_no_grad_path_equals_grad_path():
    beta, gamma = _params()
    x = _x(1, 96, 6, 10, False)
    with torch.no_grad():
        a = gdn_torch(x, beta, gamma)
    b = gdn_torch(x, beta, gamma.clone().requires_grad_(True))
    assert torch.equal(a, b.detach())


def test_non_contiguous_input_and_params():
    beta, gamma = _params()
    big = torch.randn(2, 64, 9, 12)
    x = big[:, :40, :, ::2]  # neither NCHW- nor channels_last-contiguous
    gT = gamma.t().contiguous().t()  # same values, transposed storage
    y = gdn(x, beta, gT)
    ref = gdn_reference(x.double(), beta.double(), gamma.double())
    assert _rel(y, ref) < 1e-5


@pytest.mark.parametrize("bad, msg", [
    (lambda b, g: (torch.randn(2, 3, 4), b, g), "N, C, H, W"),
    (lambda b, g: (torch.randn(1, 200, 3, 3), b, g), "only 192"),
    (lambda b, g: (torch.randn(1, 8, 3, 3), b[:100], g), "beta"),
    (lambda b, g: (torch.randn(1, 8, 3, 3), b, g[:, :100]), "gamma"),
    (lambda b, g: (torch.randint(0, 3, (1, 8, 3, 3)), b, g), "floating-point"),
])
def test_errors_name_the_problem(bad, msg):
    beta, gamma = _params()
    with pytest.raises(ValueError, match=msg):
        gdn(*bad(beta, gamma))


def test_reference_is_the_formula():
    beta, gamma = _params(dtype=torch.float64)
    x = torch.randn(1, 5, 2, 3, dtype=torch.float64)
    n = beta[:5, None, None] + torch.einsum("ij,njhw->nihw", gamma[:5, :5], x * x)
    torch.testing.assert_close(gdn_reference(x, beta, gamma), x / n.sqrt())
    torch.testing.assert_close(gdn_reference(x, beta, gamma, inverse=True), x * n.sqrt())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_bf16_gradients(channels_last, inverse):
    beta, gamma = _params()
    x = _x(2, 48, 5, 7, channels_last).bfloat16().requires_grad_(True)
    g = gamma.clone().requires_grad_(True)
    y = gdn(x, beta, g, inverse=inverse)
    assert y.dtype == torch.bfloat16
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    dx, dg = torch.autograd.grad(y, (x, g), dy.bfloat16())
    x64 = x.detach().double().requires_grad_(True)
    g64 = gamma.double().requires_grad_(True)
    y64 = gdn_reference(x64, beta.double(), g64, inverse=inverse)
    dx64, dg64 = torch.autograd.grad(y64, (x64, g64), dy.bfloat16().double())
    assert _rel(dx, dx64) < 2e-2 and _rel(dg, dg64) < 2e-2


def test_fp32_backward_saves_little():
    """The fp32 autograd path is the hand-written Function (x, gamma_k and n^-1/2 saved)."""
    beta, gamma = _params()
    x = _x(1, 17, 4, 6, False).requires_grad_(True)
    y = gdn(x, beta, gamma)
    assert "GDNCpuFunction" in type(y.grad_fn).__name__


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scalars", list(SCALARS))
def test_compiled_training_path_matches_float64(monkeypatch, channels_last, inverse, scalars):
    """COMPILE_TRAINING (the trainer's --compile-gdn): the bf16 autograd composition through
    torch.compile gives the forward and every gradient of the float64 formula (bf16 tolerance)."""
    import importlib
    gdn_mod = importlib.import_module("slimkernels.ops.gdn")
    monkeypatch.setattr(gdn_mod, "COMPILE_TRAINING", True)
    calls = []
    real = gdn_mod._compiled_composition
    monkeypatch.setattr(gdn_mod, "_compiled_composition",
                        lambda *a: calls.append(1) or real(*a))
    beta, gamma = _params(5)
    sc = SCALARS[scalars]
    x = _x(2, 24, 6, 5, channels_last).bfloat16().requires_grad_(True)
    b, g = beta.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
    sct = [None if v is None else torch.tensor(v, requires_grad=True) for v in sc]
    kw = dict(zip(("gamma_scale", "gamma_bias", "beta_scale", "beta_bias"), sct))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gdn(x, b, g, inverse=inverse, **kw)
    # (where oneDNN has no bf16, no AVX-512, a bf16 GDN runs in float32: not the composition)
    assert calls == ([] if gdn_mod.half_without_onednn(x) else [1])
    assert y.dtype == torch.bfloat16
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(6)).bfloat16()
    ins = [x, b, g] + [v for v in sct if v is not None]
    grads = torch.autograd.grad(y, ins, dy)
    x64 = x.detach().double().requires_grad_(True)
    b64, g64 = beta.double().requires_grad_(True), gamma.double().requires_grad_(True)
    sc64 = [None if v is None else torch.tensor(v, dtype=torch.float64, requires_grad=True)
            for v in sc]
    kw64 = dict(zip(("gamma_scale", "gamma_bias", "beta_scale", "beta_bias"), sc64))
    y64 = gdn_reference(x64, b64, g64, inverse=inverse, **kw64)
    ins64 = [x64, b64, g64] + [v for v in sc64 if v is not None]
    grads64 = torch.autograd.grad(y64, ins64, dy.double())
    assert _rel(y.detach(), y64) < 1e-2
    for got, want in zip(grads, grads64):
        assert _rel(got, want) < 2e-2


def test_compiled_training_path_falls_back_when_compiling_fails(monkeypatch):
    import importlib
    gdn_mod = importlib.import_module("slimkernels.ops.gdn")
    monkeypatch.setattr(gdn_mod, "COMPILE_TRAINING", True)
    monkeypatch.setattr(gdn_mod, "_COMPILED", {})

    def broken(*a, **k):
        def fn(*a, **k):
            raise RuntimeError("no C++ compiler")
        return fn
    monkeypatch.setattr(torch, "compile", broken)
    beta, gamma = _params()
    x = _x(1, 8, 4, 4, True).bfloat16().requires_grad_(True)
    if gdn_mod.half_without_onednn(x):
        pytest.skip("no bf16 in oneDNN here (no AVX-512): bf16 GDNs run in float32, not the "
                    "compiled bf16 composition")
    with pytest.warns(RuntimeWarning, match="torch.compile of the GDN training path failed"):
        y = gdn(x, beta, gamma)
    assert gdn_mod.COMPILE_TRAINING is False and gdn_mod._COMPILED["broken"]
    with gdn_mod.compiled_training():          # not tried again in this process
        assert gdn_mod.COMPILE_TRAINING is False
    ref = gdn_reference(x.detach().double(), beta.double(), gamma.double())
    assert _rel(y.detach(), ref) < 1e-2


def test_compiled_training_context_restores_the_setting():
    import importlib
    gdn_mod = importlib.import_module("slimkernels.ops.gdn")
    assert gdn_mod.COMPILE_TRAINING is False
    with gdn_mod.compiled_training():
        assert gdn_mod.COMPILE_TRAINING is True
        with gdn_mod.compiled_training(False):
            assert gdn_mod.COMPILE_TRAINING is False
        assert gdn_mod.COMPILE_TRAINING is True
    assert gdn_mod.COMPILE_TRAINING is False


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_torch_path_off_cpu_allocates_on_the_input_device(channels_last):
    """The no-grad path reuses a per-thread CPU scratch buffer for x^2; on any other device (a
    GPU run found gdn_torch failing on CUDA tensors) x^2 must live on x's device. The meta
    device stands in for CUDA here: shapes and devices propagate, nothing is computed."""
    x = torch.randn(2, 8, 5, 6, device="meta")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    beta, gamma = torch.ones(8, device="meta"), torch.ones(8, 8, device="meta")
    with torch.no_grad():
        for inverse in (False, True):
            y = gdn_torch(x, beta, gamma, inverse=inverse)
            assert y.device.type == "meta" and y.shape == x.shape


def test_slimgdn_plus_scalars_on_bf16_parameters_apply_in_the_compute_dtype():
    """fp32 x, bf16 beta / gamma with SlimGDN+ scalars: the PyTorch path (a strided x, or with
    gradient) applied the scalars in bf16 (6.5e-4 off the float64 reference), the kernels in
    fp32 (1e-6): the result depended on x's layout."""
    from slimkernels.ops import gdn
    torch.manual_seed(0)
    C = 16
    x = torch.randn(1, C, 8, 8)
    beta = (torch.rand(C) + 0.5).bfloat16()
    gamma = (torch.rand(C, C) * 0.1).bfloat16()
    g, b = gamma.double() * 1.3, beta.double() * 1.2
    n = torch.einsum("oi,nihw->nohw", g, x.double() ** 2) + b[None, :, None, None]
    r = x.double() / n.sqrt()
    xs = torch.zeros(1, C, 8, 16)
    xs[..., ::2] = x
    xs = xs[..., ::2]                       # the same values, strided: the PyTorch path
    for xi in (x, xs, x.clone().requires_grad_()):
        y = gdn(xi, beta, gamma, gamma_scale=1.3, beta_scale=1.2)
        assert ((y.double() - r).abs().max() / r.abs().max()).item() < 1e-5


def test_gdn_of_an_input_without_channels_is_refused():
    """gdn() of a [1, 0, H, W] x raised torch's "expected weight to be at least 1"."""
    from slimkernels.ops import gdn
    with pytest.raises(ValueError, match=r"gdn: x \(1, 0, 8, 8\) has no channels"):
        gdn(torch.rand(1, 0, 8, 8), torch.rand(48), torch.rand(48, 48))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.float32])
def test_no_grad_after_inference_mode(dtype):
    """The PyTorch path (a strided x here; any float64 / float16 x) under inference_mode had
    allocated its reused x^2 buffer as an inference tensor; the next call outside it failed
    ("Inplace update to inference tensor outside InferenceMode is not allowed")."""
    fresh_op_caches()
    torch.manual_seed(0)
    beta, gamma = (torch.rand(8) + 0.5).to(dtype), (torch.eye(8) * 0.1).to(dtype)
    x = torch.randn(1, 8, 32, 32, dtype=dtype)
    with torch.inference_mode():
        gdn(x[:, :, ::2], beta, gamma)
    xs = x[:, :, ::4]
    with torch.no_grad():
        y = gdn(xs, beta, gamma)
    ref = gdn_reference(xs.double(), beta.double(), gamma.double())
    tol = 1e-5 if dtype != torch.float16 else 1e-2
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < tol


def test_training_after_inference_mode():
    fresh_op_caches()
    beta, gamma = torch.ones(8), torch.eye(8) * 0.1
    x = torch.randn(1, 8, 32, 32)
    with torch.inference_mode():
        gdn(x[:, :, ::2], beta, gamma)
    xg = x[:, :, :8].clone().requires_grad_()
    gdn(xg, beta, gamma).sum().backward()
    xr = x[:, :, :8].double().requires_grad_()
    gdn_reference(xr, beta.double(), gamma.double()).sum().backward()
    assert ((xg.grad.double() - xr.grad).abs().max() / xr.grad.abs().max()).item() < 1e-5


@pytest.mark.parametrize("shape", [(1, 4, 0, 2), (1, 4, 3, 0), (0, 4, 3, 2)])
def test_an_input_without_pixels_gives_an_empty_output(shape):
    """A pointwise op: no pixels, an empty result (an empty height or width had raised torch's
    "Kernel size can't be greater than actual input size" from the 1x1 conv inside)."""
    x = torch.randn(shape, requires_grad=True)
    y = gdn(x, torch.ones(8), torch.eye(8) * 0.1)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (1, 1, 1)])
@pytest.mark.parametrize("grad", [False, True])
def test_one_element_scalars_of_any_shape(shape, grad):
    """The SlimGDN+ scalars may be one-element tensors of any shape (the checks admit them);
    a [1, 1] beta_scale had broadcast beta to [1, C] (torch's bias error in gdn_torch and
    gdn_reference), a [1, 1, 1] one a stride error."""
    torch.manual_seed(0)
    x = torch.rand(1, 8, 4, 4, requires_grad=grad)
    beta, gamma = torch.rand(8) + 0.5, torch.rand(8, 8) * 0.1
    sc = {n: torch.full(shape, v) for n, v in
          (("gamma_scale", 0.7), ("gamma_bias", 0.01), ("beta_scale", 0.8), ("beta_bias", 0.1))}
    ref = gdn_reference(x.detach().double(), beta.double(), gamma.double(), gamma_scale=0.7,
                        gamma_bias=0.01, beta_scale=0.8, beta_bias=0.1)
    for fn in (gdn, gdn_reference):
        y = fn(x, beta, gamma, **sc)
        assert y.shape == x.shape
        assert ((y.detach().double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_arguments_that_are_not_tensors_or_bools_are_refused_naming_them():
    """(numpy arguments failed with an AttributeError; inverse="no" was truthy: an IGDN)."""
    import numpy as np
    x, beta, gamma = torch.rand(1, 4, 3, 3), torch.ones(4), 0.1 * torch.eye(4)
    for args, what in (((x.numpy(), beta, gamma), "x"), ((x, beta.numpy(), gamma), "beta"),
                       ((x, beta, gamma.tolist()), "gamma")):
        with pytest.raises(TypeError, match=rf"gdn: {what} must be a torch\.Tensor"):
            gdn(*args)
    for bad in ("no", "False", 2, 0.0, None):
        with pytest.raises(ValueError, match="gdn: inverse must be True or False"):
            gdn(x, beta, gamma, inverse=bad)
    ref = gdn_reference(x.double(), beta.double(), gamma.double(), inverse=True)
    for ok in (True, 1, np.bool_(True)):
        torch.testing.assert_close(gdn(x, beta, gamma, inverse=ok).double(), ref, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("leaves", ["fp32 autocast", "bf16"])
@pytest.mark.parametrize("grad", [False, True])
def test_half_gdn_runs_in_float32_where_onednn_has_no_half(monkeypatch, channels_last, leaves,
                                                           grad):
    """Where torch's oneDNN has no bf16 (``_raw.onednn_half`` False: no AVX-512), a bf16 GDN's
    channel mixing was an ATen fallback GEMM: a Zen 3 EPYC took 1.1 s for a [1, 96, 128, 192]
    GDN (9-11 ms in float32) and 2.5 s for a training step of [2, 192, 64, 64] (47 ms). There
    it runs in float32 and rounds to x's dtype (under autocast an fp32 x keeps its fp32 result):
    no GEMM receives a bf16 tensor, the values are the float32 op's, bit for bit, and gradients
    flow (the patch makes any CPU that machine)."""
    import importlib
    gdn_mod = importlib.import_module("slimkernels.ops.gdn")
    monkeypatch.setattr(gdn_mod, "onednn_half", lambda dt: False, raising=False)
    beta, gamma = _params(3)
    x = _x(1, 24, 6, 5, channels_last, seed=4)
    if leaves == "bf16":
        x = x.bfloat16()
    with torch.no_grad(), GemmDtypes():   # (the same path: under a mode, PyTorch's)
        ref = gdn(x.float(), beta, gamma, inverse=True, gamma_scale=0.5).to(
            torch.bfloat16 if leaves == "bf16" else torch.float32)
    xl = x.clone().requires_grad_(grad)
    with GemmDtypes() as rec, torch.autocast("cpu", torch.bfloat16, enabled=leaves != "bf16"):
        y = gdn(xl, beta, gamma, inverse=True, gamma_scale=0.5)
    assert rec.seen and all(dt == torch.float32 for _, dt in rec.seen), rec.seen
    assert y.dtype == ref.dtype and torch.equal(y, ref)
    if grad:
        y.float().square().sum().backward()
        assert xl.grad is not None and xl.grad.dtype == xl.dtype
        assert torch.isfinite(xl.grad.float()).all()
