"""The Triton conv path's operands as PyTorch allows them (found by an audit under the
interpreter): a strided or expanded bias / beta, SlimGDN+ scalars on bf16 parameters and as
one-element tensors of any shape. Runs as tests/kernels/test_conv_triton.py does."""
import pytest
import torch
import torch.nn.functional as F

from tests.kernels.test_conv_triton import DEV, EXACT, EXACT_TOL, pytestmark, rel_err  # noqa: F401


def _randn(*shape, seed=0, dtype=EXACT, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEV, dtype)


def _gdn_params(c, dtype=EXACT, seed=1):
    g = torch.Generator().manual_seed(seed)
    beta = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(DEV, dtype)
    gamma = (torch.rand(c, c, generator=g, dtype=torch.float64) * 0.1).to(DEV, dtype)
    return beta, gamma


def _gdn_ref(y, beta, gamma, inverse, gs=None, gb=None, bs=None, bb=None):
    """float64 (I)GDN of y with the effective parameters (SlimGDN+ scalars applied exactly)."""
    c = y.shape[1]
    y = y.double()
    b, g = beta[:c].double(), gamma[:c, :c].double()
    if gs is not None:
        g = g * gs
    if gb is not None:
        g = g + gb
    if bs is not None:
        b = b * bs
    if bb is not None:
        b = b + bb
    n = F.conv2d(y * y, g[:, :, None, None], b)
    return y * torch.sqrt(n) if inverse else y * torch.rsqrt(n)


# -- 1. a bias that is not contiguous ---------------------------------------------------------
@pytest.mark.parametrize("route", ["conv", "tconv_phase", "tconv_col2im"])
def test_strided_bias_is_read_through_its_stride(route, monkeypatch):
    """A 1-D bias with stride 2 (a column of a [C, 2] tensor) is a valid bias for F.conv2d; the
    conv kernels' epilogue (and col2im_kernel) load ``b_ptr + offs_n`` as if its stride were 1,
    so they add the wrong entries (every other element of the storage): 16-27 % relative error."""
    from slimkernels.kernels import conv as K
    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    bias = _randn(8, 2, seed=2)[:, 0]
    assert bias.stride() == (2,)
    x = _randn(1, 5, 4, 4, seed=3)
    if route == "conv":
        w = _randn(8, 5, 3, 3, seed=1)
        y = slim_conv2d(x, w, bias, padding=1, backend="triton")
        r = F.conv2d(x, w, bias, padding=1)
    else:
        monkeypatch.setattr(K, "TCONV_COL2IM_MAX_COLS", 0 if route == "tconv_phase" else 10 ** 9)
        w = _randn(5, 8, 3, 3, seed=1)
        y = slim_conv_transpose2d(x, w, bias, stride=2, padding=1, output_padding=1,
                                  backend="triton")
        r = F.conv_transpose2d(x, w, bias, stride=2, padding=1, output_padding=1)
    assert rel_err(y, r) < EXACT_TOL


# -- 2. a beta that is not contiguous in the fused (I)GDN epilogue -----------------------------
@pytest.mark.parametrize("transposed", [False, True], ids=["conv_gdn", "tconv_out_igdn"])
def test_fused_gdn_reads_a_strided_beta_through_its_stride(transposed):
    """``gdn=(beta, gamma)`` with a beta of stride 2: the GDN op (and the conv's unfused path)
    read beta through its stride, the fused epilogue (kernels.conv._prep_gdn keeps the view,
    _gdn_store_chunk loads ``beta_ptr + offs_i``) reads the wrong entries: ~2 % off."""
    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    beta2 = torch.stack([_gdn_params(8)[0], _gdn_params(8, seed=5)[0]], 1)   # [8, 2]
    beta, gamma = beta2[:, 0], _gdn_params(8)[1]
    assert beta.stride() == (2,)
    x = _randn(1, 5, 4, 4, seed=3)
    with torch.no_grad():
        if transposed:
            w = _randn(5, 8, 3, 3, seed=1)
            y = slim_conv_transpose2d(x, w, None, stride=2, padding=1, output_padding=1,
                                      out_igdn=(beta, gamma), backend="triton")
            r = F.conv_transpose2d(x, w, None, stride=2, padding=1, output_padding=1)
        else:
            w = _randn(8, 5, 3, 3, seed=1)
            y = slim_conv2d(x, w, None, padding=1, gdn=(beta, gamma), backend="triton")
            r = F.conv2d(x, w, None, padding=1)
    assert rel_err(y, _gdn_ref(r, beta, gamma, transposed)) < EXACT_TOL


# -- 3. SlimGDN+ scalars on bf16 GDN parameters in the fused epilogue --------------------------
@pytest.mark.parametrize("transposed", [False, True], ids=["conv_gdn", "tconv_out_igdn"])
def test_fused_gdn_applies_scalars_to_bf16_params_in_fp32(transposed):
    """fp32 activations, bf16 GDN parameters with SlimGDN+ scalars: ops.gdn applies the scalars
    in fp32 (ops.gdn._effective_params: 'bf16 parameters of an fp32 GDN got their scalars
    applied in bf16, 6e-4 off'), the fused conv path (ops.conv._effective) still in bf16:
    6-8e-4 relative error where the unfused path is ~1e-7."""
    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    beta, gamma = _gdn_params(40, dtype=torch.bfloat16)
    sc = dict(gamma_scale=0.7, gamma_bias=0.013, beta_scale=1.3, beta_bias=0.1)
    kw = dict(beta=beta, gamma=gamma, **sc)
    x = _randn(1, 17, 5, 4, seed=3, dtype=torch.float32)
    b = _randn(40, seed=2, dtype=torch.float32)
    with torch.no_grad():
        if transposed:
            w = _randn(40, 40, 3, 3, seed=1, dtype=torch.float32, scale=0.2)
            y = slim_conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1,
                                      out_width=33, out_igdn=kw, backend="triton")
            r = F.conv_transpose2d(x.double(), w[:17, :33].double(), b[:33].double(), stride=2,
                                   padding=1, output_padding=1)
        else:
            w = _randn(40, 40, 3, 3, seed=1, dtype=torch.float32, scale=0.2)
            y = slim_conv2d(x, w, b, padding=1, out_width=33, gdn=kw, backend="triton")
            r = F.conv2d(x.double(), w[:33, :17].double(), b[:33].double(), padding=1)
    ref = _gdn_ref(r, beta, gamma, transposed, 0.7, 0.013, 1.3, 0.1)
    assert rel_err(y, ref) < 1e-5


# -- 4. one-element beta scalars of more than one dimension in the fused epilogue -------------
@pytest.mark.parametrize("name", ["beta_scale", "beta_bias"])
def test_fused_gdn_takes_one_element_beta_scalars_of_any_shape(name):
    """``_check_gdn_scalars`` admits any one-element float tensor and the path with gradient
    takes ``torch.tensor([[0.8]])``; without gradient ops.conv._effective broadcasts beta[:C] to
    [1, C] and _prep_gdn refuses it: 'GDN parameters hold 1 channels, the conv outputs 33'."""
    from slimkernels.ops import slim_conv2d
    f32 = torch.float32   # (fp32: the path with gradient then runs the Triton GDN op)
    beta, gamma = _gdn_params(40, dtype=f32)
    x = _randn(1, 17, 5, 4, seed=3, dtype=f32)
    w = _randn(40, 17, 3, 3, seed=1, dtype=f32, scale=0.2)
    kw = {"beta": beta, "gamma": gamma, name: torch.full((1, 1), 0.8, dtype=f32, device=DEV)}
    r = F.conv2d(x.double(), w[:33].double(), None, padding=1)
    ref = _gdn_ref(r, beta, gamma, False, **{"bs" if name == "beta_scale" else "bb": 0.8})
    y_grad = slim_conv2d(x.clone().requires_grad_(), w, None, padding=1, out_width=33, gdn=kw,
                         backend="triton")
    assert rel_err(y_grad.detach(), ref) < 1e-5   # the path with gradient takes it
    with torch.no_grad():
        y = slim_conv2d(x, w, None, padding=1, out_width=33, gdn=kw, backend="triton")
    assert rel_err(y, ref) < 1e-5
