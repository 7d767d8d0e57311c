"""Fused GDN/IGDN Triton kernels, forward and every gradient, against a float64 reference.

Runs on CPU tensors under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when no
GPU is present); there tl.dot computes in fp32, so fp32 results must match to ~1e-5. The
``cuda``-marked tests check the same on a GPU with TF32 tensor cores (~1e-3).
"""
import pytest
import torch

triton = pytest.importorskip("triton")

from slimkernels.backend import interpreter_enabled  # noqa: E402
from slimkernels.ops import gdn, gdn_reference  # noqa: E402

C_MAX = 192
WIDTHS = [1, 3, 17, 48, 72, 96, 144, 192]
SCALARS = {"none": (None, None, None, None), "slimgdn+": (1.3, 0.02, 0.8, 0.1)}
NAMES = ["x", "beta", "gamma", "gamma_scale", "gamma_bias", "beta_scale", "beta_bias"]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not interpreter_enabled():  # pragma: no cover
    pytest.skip("no GPU and TRITON_INTERPRET is off", allow_module_level=True)

pytestmark = pytest.mark.interpret


def _rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "NaN/Inf in the result"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _case(C, channels_last, scalars, dtype=torch.float32, N=2, H=3, W=5, seed=0,
          device=DEVICE):
    g = torch.Generator().manual_seed(seed + C)
    beta = torch.rand(C_MAX, generator=g) + 0.5
    gamma = torch.rand(C_MAX, C_MAX, generator=g) * 0.1
    x = torch.randn(N, C, H, W, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scal = [None if v is None else torch.tensor(v) for v in SCALARS[scalars]]
    return [t if t is None else t.to(device) for t in [x, beta, gamma] + scal]


def _run(x, beta, gamma, scal, inverse, backend, dy=None, fp64=False):
    """Forward + gradients of every tensor input (None scalars skipped)."""
    leaves = [x, beta, gamma] + [s for s in scal if s is not None]
    if fp64:
        leaves = [t.detach().double() for t in leaves]
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    it = iter(leaves[3:])
    sc = [None if s is None else next(it) for s in scal]
    kw = dict(zip(("gamma_scale", "gamma_bias", "beta_scale", "beta_bias"), sc))
    if backend == "reference":
        y = gdn_reference(*leaves[:3], inverse=inverse, **kw)
    else:
        y = gdn(*leaves[:3], inverse=inverse, backend=backend, **kw)
    if dy is None:
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device)
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    return y, grads, dy


def _check(C, channels_last, inverse, scalars, dtype, tol, device=DEVICE, **shape):
    x, beta, gamma, *scal = _case(C, channels_last, scalars, dtype, device=device, **shape)
    y, grads, dy = _run(x, beta, gamma, scal, inverse, "triton")
    y64, grads64, _ = _run(x, beta, gamma, scal, inverse, "reference", dy=dy.double(), fp64=True)
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last and C > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.grad_fn is not None and "GDNFunction" in type(y.grad_fn).__name__
    # every quantity is measured before any assert: a failure names all that are off (on a GPU
    # run, one message then says whether the forward, dx, dgamma or the scalars went wrong)
    errs = {"y": _rel(y, y64)}
    names = [n for n, s in zip(NAMES, [1, 1, 1] + scal) if s is not None]
    ref = dict(zip(names, grads64))
    for name, a, b in zip(names, grads, grads64):
        assert a.shape == b.shape, name
        if b.dim() == 0:
            # a scalar's gradient is a signed sum over C x C (or C) terms: measure the error
            # against the sum of the terms' magnitudes (its condition), not the cancelled result
            dg, db = ref["gamma"][:C, :C].cpu(), ref["beta"][:C].cpu()
            sg = scal[0].double().cpu() if scal[0] is not None else 1.0
            sb = scal[2].double().cpu() if scal[2] is not None else 1.0
            terms = {"gamma_scale": dg / sg * gamma[:C, :C].double().cpu(),
                     "gamma_bias": dg / sg, "beta_scale": db / sb * beta[:C].double().cpu(),
                     "beta_bias": db / sb}[name]
            assert torch.isfinite(a), name
            errs[name] = ((a.double().cpu() - b.cpu()).abs() / terms.abs().sum()).item()
        else:
            errs[name] = _rel(a, b)
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"relative error above {tol:g}: " + ", ".join(
        f"{k} {v:.2e}" for k, v in bad.items()) + f" (all: {errs})"
    # gradient only on the active slice
    assert grads[2][C:].abs().sum() == 0 and grads[2][:, C:].abs().sum() == 0
    assert grads[1][C:].abs().sum() == 0


@pytest.mark.parametrize("C", WIDTHS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
@pytest.mark.parametrize("scalars", list(SCALARS))
def test_fp32_forward_and_all_gradients(C, channels_last, inverse, scalars):
    """Every width x layout x GDN/IGDN x SlimGDN+ scalars: y, dx, dbeta, dgamma, d(scalars)."""
    _check(C, channels_last, inverse, scalars, torch.float32, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("C", [17, 96])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_half_inputs(dtype, C, channels_last):
    _check(C, channels_last, False, "slimgdn+", dtype, 1e-2)
    _check(C, channels_last, True, "none", dtype, 1e-2)


def test_odd_spatial_several_pixel_blocks():
    """More pixels than one block, N > 1 crossing image boundaries inside a block."""
    _check(72, True, False, "slimgdn+", torch.float32, 1e-5, N=3, H=7, W=9)
    _check(48, False, True, "none", torch.float32, 1e-5, N=3, H=7, W=9)


def test_non_contiguous_inputs_and_strided_params():
    x, beta, gamma, *scal = _case(48, False, "none")
    big = torch.randn(2, 64, 3, 10, device=x.device)
    xs = big[:, :48, :, ::2]  # neither layout: copied to contiguous first
    gT = gamma.t().contiguous().t()  # same values, column-major storage
    y = gdn(xs, beta, gT, backend="triton")
    ref = gdn_reference(xs.double(), beta.double(), gamma.double())
    assert _rel(y, ref) < 1e-5


def test_grad_through_reparameterized_params():
    """beta/gamma as non-leaf tensors (like the model layer's reparameterization)."""
    x, beta, gamma, *_ = _case(17, True, "none")
    vb = beta.sqrt().requires_grad_(True)
    vg = gamma.sqrt().requires_grad_(True)
    x.requires_grad_(True)
    y = gdn(x, vb * vb, vg * vg, backend="triton")
    y.square().sum().backward()
    vb64 = vb.detach().double().requires_grad_(True)
    vg64 = vg.detach().double().requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    gdn_reference(x64, vb64 * vb64, vg64 * vg64).square().sum().backward()
    for a, b in ((x.grad, x64.grad), (vb.grad, vb64.grad), (vg.grad, vg64.grad)):
        assert _rel(a, b) < 1e-5


def test_fp32_precision_argument():
    from slimkernels.kernels.gdn import gdn_triton
    x, beta, gamma, *_ = _case(17, False, "none")
    with pytest.raises(ValueError, match="fp32_precision"):
        gdn_triton(x, beta, gamma, fp32_precision="fast")
    y = gdn_triton(x, beta, gamma, fp32_precision="ieee")
    assert _rel(y, gdn_reference(x.double(), beta.double(), gamma.double())) < 1e-5


@pytest.mark.cuda
@pytest.mark.tf32
@pytest.mark.parametrize("C", [48, 72, 192])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_cuda_tf32(C, channels_last, inverse):
    """On a GPU: TF32 tensor cores, autotuned configs, a realistic shape."""
    _check(C, channels_last, inverse, "slimgdn+", torch.float32, 1e-3, device="cuda",
           N=2, H=33, W=47)


@pytest.mark.cuda
@pytest.mark.parametrize("C", [72, 144, 192])
@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_cuda_fp32_many_pixel_blocks(C, inverse):
    """Full fp32 (TF32 off: tests/conftest.py) on a GPU with many pixel blocks and channel
    tiles (the first H200 run, 2026-12-04, saw a 2e-2 dx error at C=192 with TF32 on this shape:
    a shared-memory race of the pipelined wgmma, see _gdn_bwd_dx_kernel; ieee runs no wgmma)."""
    _check(C, True, inverse, "slimgdn+", torch.float32, 1e-5, device="cuda", N=2, H=33, W=47)


def _config_lists():
    """Each kernel's autotune list, by the name kernels.gdn._pick gives it."""
    from slimkernels.kernels import configs
    return {"fwd": configs.GDN_FWD_CONFIGS, "bwd_dx": configs.GDN_BWD_DX_CONFIGS,
            "bwd_dgamma": configs.GDN_BWD_DGAMMA_CONFIGS}


def _each_config():
    return [(name, i) for name, cfgs in _config_lists().items() for i in range(len(cfgs))]


@pytest.mark.tf32
@pytest.mark.parametrize("name,index", _each_config(), ids=lambda v: str(v))
def test_each_config(monkeypatch, name, index):
    """Every autotune config of each GDN kernel on its own (the others at their first), C=192,
    several pixel blocks: on a GPU with TF32 (~1e-3), names the config if only some are wrong
    there; under the interpreter (exact fp32, 1e-5) checks each config's tiling and masks."""
    from slimkernels.kernels import gdn as G
    lists = _config_lists()

    def pick(tuned, kernel, kname):
        cfg = lists[kname][index if kname == name else 0]
        return kernel, dict(cfg["kwargs"], num_warps=cfg["num_warps"],
                            num_stages=cfg["num_stages"])
    monkeypatch.setattr(G, "_pick", pick)
    on_gpu = DEVICE == "cuda"
    shape = dict(N=2, H=33, W=47) if on_gpu else dict(N=2, H=9, W=11)  # > 128 pixels
    _check(192, True, False, "slimgdn+", torch.float32, 1e-3 if on_gpu else 1e-5, **shape)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_half(dtype):
    _check(144, True, False, "slimgdn+", dtype, 1e-2, device="cuda", N=2, H=33, W=47)


@pytest.mark.parametrize("allow,want", [(True, "tf32"), (False, "ieee")])
def test_fp32_precision_default_follows_pytorch_switches(monkeypatch, allow, want):
    """fp32_precision=None picks TF32 exactly when PyTorch's switches allow it (as the conv
    kernels do), so that a user who turns TF32 off gets full fp32 GDN too."""
    from slimkernels.kernels import gdn as G
    seen = []
    monkeypatch.setattr(G.GDNFunction, "apply", lambda *a: seen.append(a[-1]) or a[0])
    x, beta, gamma, *_ = _case(17, False, "none")
    from tests._tf32 import tf32_switches
    with tf32_switches(allow, allow):
        G.gdn_triton(x, beta, gamma)
        G.gdn_triton(x, beta, gamma, fp32_precision="ieee")
    assert seen == [want, "ieee"]


def test_dgamma_splits():
    from slimkernels.kernels.gdn import _DGAMMA_TARGET_PROGRAMS, dgamma_splits
    assert dgamma_splits(30, 17) == 1                       # one split of 64 pixels or fewer
    assert dgamma_splits(286, 72) == 5                      # >= 64 pixels per split
    assert dgamma_splits(98304, 48) == _DGAMMA_TARGET_PROGRAMS  # one 64x64 tile
    assert dgamma_splits(98304, 192) == _DGAMMA_TARGET_PROGRAMS // 9
    for C in (1, 48, 192, 256, 1024):  # the scratch stays small: splits * C * C * 4 bytes
        assert dgamma_splits(10 ** 7, C) * C * C * 4 <= _DGAMMA_TARGET_PROGRAMS * 64 * 64 * 4


@pytest.mark.parametrize("C,N,H,W", [(72, 2, 13, 11), (130, 1, 9, 23)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_gradients_over_several_splits_and_tiles(C, N, H, W, channels_last):
    """dgamma / dbeta summed over several pixel splits (286 and 207 pixels: 5 and 4 splits, the
    last one partial) and several gamma tiles (C=72: 2x2, C=130: 3x3 of 64x64), fp32 to 1e-5."""
    from slimkernels.kernels.gdn import dgamma_splits
    assert dgamma_splits(N * H * W, C) > 1
    _check(C, channels_last, False, "slimgdn+", torch.float32, 1e-5, N=N, H=H, W=W)


# -- sixth audit (thirty-second sitting) -----------------------------------------------------
def test_gdn_triton_refuses_short_or_misplaced_parameters():
    """The kernels read beta[:C] / gamma[:C, :C] by pointer: a shorter one was read past its end."""
    from slimkernels.kernels.gdn import gdn_triton
    x = torch.rand(1, 8, 3, 3, device=DEVICE)
    store = torch.full((16,), 100.0, device=DEVICE)
    gamma = 0.1 * torch.eye(8, device=DEVICE)
    with pytest.raises(ValueError, match=r"x has 8 channels but beta is \(2,\)"):
        gdn_triton(x, store[:2], gamma)
    with pytest.raises(ValueError, match=r"x has 8 channels but gamma is \(8, 4\)"):
        gdn_triton(x, store[:8], gamma[:, :4])
    with pytest.raises(ValueError, match="gamma must be a 2-D float tensor"):
        gdn_triton(x, store[:8], store[:8])
    with pytest.raises(ValueError, match="x must be a 4-D"):
        gdn_triton(x[0], store[:8], gamma)


def test_float64_gdn_is_exact_on_the_triton_backend():
    """The Triton GDN kernels compute in fp32: float64 x goes to the PyTorch formula through
    ops.gdn (exact, gradcheck passes) and gdn_triton refuses it by name."""
    from slimkernels.kernels.gdn import gdn_triton
    torch.manual_seed(0)
    x = torch.randn(2, 7, 5, 5, dtype=torch.float64, device=DEVICE)
    beta = torch.rand(7, dtype=torch.float64, device=DEVICE) + 0.5
    gamma = torch.rand(7, 7, dtype=torch.float64, device=DEVICE) * 0.1
    for inverse in (False, True):
        y = gdn(x, beta, gamma, inverse=inverse, backend="triton")
        assert y.dtype == torch.float64
        assert _rel(y, gdn_reference(x, beta, gamma, inverse=inverse)) < 1e-14
    xx = x[:1, :, :2, :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: gdn(t, beta, gamma, backend="triton"), (xx,))
    with pytest.raises(ValueError, match="float64 use slimkernels.ops.gdn"):
        gdn_triton(x, beta, gamma)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_gdn_scalars_must_be_one_element_on_both_paths(backend):
    x = torch.rand(1, 4, 3, 3, device=DEVICE)
    b, g = torch.ones(4, device=DEVICE), 0.1 * torch.eye(4, device=DEVICE)
    with pytest.raises(ValueError, match="gdn: gamma_scale must be a number or a one-element"):
        gdn(x, b, g, gamma_scale=torch.tensor([1., 2., 3., 4.], device=DEVICE), backend=backend)
    y = gdn(x, b, g, gamma_scale=torch.tensor([2.0], device=DEVICE), backend=backend)
    r = gdn_reference(x.double(), b.double(), 2 * g.double())
    assert _rel(y, r) < 1e-5


def test_conv_ops_run_their_gdn_on_the_conv_backend(monkeypatch):
    """An explicit backend= reached the conv but not its unfused GDN (which followed the
    environment / device); a gdn dict's own backend entry was dropped silently."""
    import importlib

    import slimkernels.kernels.gdn as KG
    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    OG = importlib.import_module("slimkernels.ops.gdn")
    monkeypatch.delenv("SLIMKERNELS_BACKEND", raising=False)
    calls = []
    real = KG.gdn_triton
    monkeypatch.setattr(KG, "gdn_triton", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    x = torch.randn(1, 4, 6, 6, device=DEVICE, requires_grad=True)   # grad: GDN not fused
    w, b = torch.randn(8, 4, 3, 3, device=DEVICE), torch.randn(8, device=DEVICE)
    beta, gamma = torch.ones(8, device=DEVICE), 0.1 * torch.eye(8, device=DEVICE)
    slim_conv2d(x, w, b, padding=1, gdn=(beta, gamma), backend="triton")
    assert len(calls) == 1
    slim_conv_transpose2d(torch.randn(1, 8, 4, 4, device=DEVICE, requires_grad=True), w, None,
                          stride=2, padding=1, output_padding=1, igdn=(beta, gamma),
                          backend="triton")
    assert len(calls) == 2
    calls.clear()
    slim_conv2d(x, w, b, padding=1, gdn=(beta, gamma), backend="torch")
    assert calls == [] and (DEVICE != "cpu" or OG.last_cpu_path is not None)
    with pytest.raises(ValueError, match="backend='triton', but the conv runs on 'torch'"):
        slim_conv2d(x, w, b, padding=1, gdn={"beta": beta, "gamma": gamma, "backend": "triton"},
                    backend="torch")
    y = slim_conv2d(x, w, b, padding=1, gdn={"beta": beta, "gamma": gamma, "backend": "Triton"},
                    backend="triton")
    assert len(calls) == 1 and y.shape == (1, 8, 6, 6)


def test_triton_weight_copy_is_dropped_by_clear_weight_caches(monkeypatch):
    """Without gradient the Triton path reads a cached copy of the weight keyed on its version;
    a write through .data does not bump it: clear_weight_caches() is the documented remedy."""
    import torch.nn.functional as F

    from slimkernels.nn.conv import SlimConv2d
    from slimkernels.ops import clear_weight_caches
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "triton")
    torch.manual_seed(0)
    m = SlimConv2d(8, 8, 3, padding=1).to(DEVICE)
    x = torch.randn(1, 8, 5, 5, device=DEVICE)
    with torch.no_grad():
        m(x)
        m.weight.data.mul_(2.0)
        clear_weight_caches()
        y = m(x)
        r = F.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1)
    assert _rel(y, r) < 1e-5
