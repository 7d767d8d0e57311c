"""CPU (PyTorch) path of the width-sliced conv ops vs float64 references."""
import pytest
import torch
import torch.nn.functional as F

from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
from slimkernels.ops import _cache as cache_mod
from slimkernels.ops import conv as conv_mod

from tests._caches import fresh_op_caches
from tests._gemm_dtypes import GemmDtypes

# fp32 through Winograd F(4x4, 3x3) (the no-grad path of the 5x5/2 layers at >= 64 channels on
# AVX2 CPUs): its error is 2-3x direct fp32's (max 4.7e-6 .. 1.0e-5 of the output's magnitude
# over 12 seeds of enc2 at w=192, against 2.3e-6 .. 3.8e-6 for F.conv2d; points 0, +-1, +-1/2,
# inf, the best known for F(4, 3); see docs/kernels_conv.md)
WINOGRAD_FP32_TOL = 2e-5

LAYERS = [  # SlimCAE: (transposed, C_in(w), C_out(w), k, stride, pad, output_padding)
    ("enc1", False, lambda w: 3, lambda w: w, 9, 4, 4, 0),
    ("enc2", False, lambda w: w, lambda w: w, 5, 2, 2, 0),
    ("dec1", True, lambda w: w, lambda w: w, 5, 2, 2, 1),
    ("dec3", True, lambda w: w, lambda w: 3, 9, 4, 4, 3),
]


def rel_err(y, r):
    assert torch.isfinite(y).all()
    return ((y.double() - r.double()).abs().max() / r.double().abs().max()).item()


def _gdn_ref(y, beta, gamma, inverse):
    c = y.shape[1]
    norm = F.conv2d(y * y, gamma[:c, :c, None, None].to(y.dtype), beta[:c].to(y.dtype))
    return y * torch.sqrt(norm) if inverse else y * torch.rsqrt(norm)


def _full(name, tr, k, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (192, 192, k, k) if not tr else (192, 192, k, k)
    if name == "enc1":
        shape = (192, 3, k, k)
    if name == "dec3":
        shape = (192, 3, k, k)
    w = torch.randn(shape, generator=g, dtype=torch.float64) / (k * 8)
    b = torch.randn(shape[1] if tr else shape[0], generator=g, dtype=torch.float64)
    return w.to(dtype), b.to(dtype)


@pytest.mark.parametrize("width", [1, 3, 47, 72, 192])
@pytest.mark.parametrize("layer", LAYERS, ids=[l[0] for l in LAYERS])
def test_layers_fp32_vs_float64(layer, width):
    name, tr, fci, fco, k, s, p, op = layer
    ci, co = fci(width), fco(width)
    w, b = _full(name, tr, k)
    x = torch.randn(2, ci, 11, 9, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(width))
    if tr:
        ref = F.conv_transpose2d(x, w[:ci, :co], b[:co], stride=s, padding=p, output_padding=op)
        y = slim_conv_transpose2d(x.float(), w.float(), b.float(), stride=s, padding=p,
                                  output_padding=op, out_width=co)
    else:
        ref = F.conv2d(x, w[:co, :ci], b[:co], stride=s, padding=p)
        y = slim_conv2d(x.float(), w.float(), b.float(), stride=s, padding=p, out_width=co)
    assert y.shape == ref.shape and y.dtype == torch.float32
    wino = conv_mod._use_winograd(x.float(), ci, co, k, s, p, tr)
    assert rel_err(y, ref) < (WINOGRAD_FP32_TOL if wino else 1e-5)


def _fp32_tol(x, ci, co):
    """fp32 tolerance of a no-grad 5x5/2 conv of x: Winograd's where the conv op runs it there."""
    xl = x.contiguous(memory_format=torch.channels_last)
    return WINOGRAD_FP32_TOL if conv_mod._use_winograd(xl, ci, co, 5, 2, 2, False) else 1e-5


def test_cpu_output_channels_last_for_nchw_input_and_switch():
    w, b = _full("enc2", False, 5, torch.float32)
    x = torch.randn(1, 47, 10, 12, generator=torch.Generator().manual_seed(3))
    y = slim_conv2d(x, w, b, stride=2, padding=2, out_width=72)
    assert y.is_contiguous(memory_format=torch.channels_last)
    conv_mod.CPU_CHANNELS_LAST = False
    try:
        y2 = slim_conv2d(x, w, b, stride=2, padding=2, out_width=72)
    finally:
        conv_mod.CPU_CHANNELS_LAST = True
    assert y2.is_contiguous()
    ref = F.conv2d(x.double(), w[:72, :47].double(), b[:72].double(), stride=2, padding=2)
    assert rel_err(y, ref) < _fp32_tol(x, 47, 72) and rel_err(y2, ref) < 1e-5   # y2: F.conv2d


def test_channels_last_kept():
    w, b = _full("enc2", False, 5, torch.float32)
    x = torch.randn(1, 72, 16, 12, generator=torch.Generator().manual_seed(4)).to(
        memory_format=torch.channels_last)
    y = slim_conv2d(x, w, b, stride=2, padding=2, out_width=72)
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), w[:72, :72].double(), b[:72].double(), stride=2, padding=2)
    assert rel_err(y, ref) < _fp32_tol(x, 72, 72)


def _leaves(entry):
    """The tensors of a weight-cache entry (nested tuples / lists)."""
    if isinstance(entry, (tuple, list)):
        return [t for e in entry for t in _leaves(e)]
    return [entry]


@pytest.mark.parametrize("width", [48, 192])
def test_bf16_autocast_matches_and_caches_weight_cast(width):
    conv_mod.clear_weight_caches()
    w, b = _full("enc2", False, 5, torch.float32)
    x = torch.randn(1, width, 12, 10)
    ref = F.conv2d(x.double(), w[:width, :width].double(), b[:width].double(), stride=2, padding=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = slim_conv2d(x, w, b, stride=2, padding=2, out_width=width)
        y2 = slim_conv2d(x, w, b, stride=2, padding=2, out_width=width)
        auto = F.conv2d(x, w[:width, :width], b[:width], stride=2, padding=2)
    assert y.dtype == torch.bfloat16 == auto.dtype
    assert rel_err(y, ref) < 1e-2
    assert torch.equal(y, y2)
    if conv_mod._onednn_half(torch.bfloat16):
        cache = conv_mod._PACK_CACHE if conv_mod._onednn(torch.bfloat16) else \
            conv_mod._CAST_CACHE
        assert len(cache) in (1, 2)  # prepacked slice (+bias), or full weight + full bias: once
    else:   # (no bf16 in oneDNN: the float32 op reads the weights, no bf16 copy is made)
        assert not conv_mod._CAST_CACHE and not any(
            torch.bfloat16 in (getattr(v, "dtype", None) for v in _leaves(e))
            for e in conv_mod._PACK_CACHE.values())
    # an in-place update of the weight invalidates the cached cast
    with torch.no_grad():
        w.mul_(2.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y3 = slim_conv2d(x, w, None, stride=2, padding=2, out_width=width)
    ref3 = F.conv2d(x.double(), w[:width, :width].double(), None, stride=2, padding=2)  # doubled w
    assert rel_err(y3, ref3) < 1e-2


def test_bf16_autocast_with_grad_flows_to_weight_slice():
    w, b = _full("enc2", False, 5, torch.float32)
    w.requires_grad_()
    x = torch.randn(1, 47, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = slim_conv2d(x, w, b, stride=2, padding=2, out_width=72)
    y.float().sum().backward()
    assert w.grad[72:].abs().max() == 0 and w.grad[:, 47:].abs().max() == 0
    assert w.grad[:72, :47].abs().max() > 0


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_float64_under_bf16_autocast_stays_float64(transposed, grad):
    """Autocast leaves float64 operands alone (F.conv2d computes them in float64); the ops had
    cast them to bf16 (2.7e-3 relative error, a bf16 output). A float64 x with float32 weights is
    refused as outside autocast, naming autocast's rule."""
    name = "dec1" if transposed else "enc2"
    w, b = _full(name, transposed, 5, torch.float64)
    x = torch.randn(1, 40, 9, 11, dtype=torch.float64, requires_grad=grad)
    op, ref_op = ((slim_conv_transpose2d, F.conv_transpose2d) if transposed else
                  (slim_conv2d, F.conv2d))
    kw = dict(stride=2, padding=2, **({"output_padding": 1} if transposed else {}))
    ws = w[:40, :24] if transposed else w[:24, :40]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x, w, b, out_width=24, **kw)
        with torch.no_grad():
            ref = ref_op(x, ws, b[:24], **kw)
        assert ref.dtype == torch.float64
        with pytest.raises(ValueError, match="autocast leaves float64 alone"):
            op(x, w.float(), b.float(), out_width=24, **kw)
    assert y.dtype == torch.float64
    assert rel_err(y.detach(), ref) < 1e-12
    if grad:
        y.sum().backward()
        xr = x.detach().clone().requires_grad_()
        ref_op(xr, ws, b[:24], **kw).sum().backward()
        assert x.grad.dtype == torch.float64 and rel_err(x.grad, xr.grad) < 1e-12


@pytest.mark.parametrize("width", [47, 192])
def test_gdn_fused_cpu_nograd_and_grad(width):
    w, b = _full("enc2", False, 5, torch.float64)
    g = torch.Generator().manual_seed(3)
    beta = torch.rand(192, generator=g, dtype=torch.float64) + 0.5
    gamma = torch.rand(192, 192, generator=g, dtype=torch.float64) * 0.1
    x = torch.randn(1, width, 9, 11, dtype=torch.float64, generator=g)
    ref = _gdn_ref(F.conv2d(x, w[:width, :width], b[:width], stride=2, padding=2), beta, gamma,
                   False)
    with torch.no_grad():
        y = slim_conv2d(x.float(), w.float(), b.float(), stride=2, padding=2, out_width=width,
                        gdn=(beta.float(), gamma.float()))
    wino = conv_mod._use_winograd(x.float(), width, width, 5, 2, 2, False)
    assert rel_err(y, ref) < (WINOGRAD_FP32_TOL if wino else 1e-5)
    xx = x.clone().requires_grad_()
    y = slim_conv2d(xx, w, b, stride=2, padding=2, out_width=width, gdn={"beta": beta, "gamma": gamma})
    y.sum().backward()
    xr = x.clone().requires_grad_()
    _gdn_ref(F.conv2d(xr, w[:width, :width], b[:width], stride=2, padding=2), beta, gamma,
             False).sum().backward()
    assert rel_err(xx.grad, xr.grad) < 1e-10


def test_transposed_igdn_input_and_output():
    w, b = _full("dec1", True, 5, torch.float64)
    g = torch.Generator().manual_seed(4)
    beta = torch.rand(192, generator=g, dtype=torch.float64) + 0.5
    gamma = torch.rand(192, 192, generator=g, dtype=torch.float64) * 0.1
    x = torch.randn(1, 72, 5, 6, dtype=torch.float64)
    y = slim_conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1, out_width=48,
                              igdn=(beta, gamma), out_igdn=(beta, gamma))
    ref = F.conv_transpose2d(_gdn_ref(x, beta, gamma, True), w[:72, :48], b[:48], stride=2,
                             padding=2, output_padding=1)
    ref = _gdn_ref(ref, beta, gamma, True)
    assert rel_err(y, ref) < 1e-12


def test_errors():
    w, b = _full("enc2", False, 5, torch.float32)
    with pytest.raises(ValueError, match="out_width"):
        slim_conv2d(torch.randn(1, 8, 9, 9), w, b, out_width=193)
    with pytest.raises(ValueError, match="channels"):
        slim_conv2d(torch.randn(1, 200, 9, 9), w, b)
    with pytest.raises(ValueError, match="4-D"):
        slim_conv2d(torch.randn(8, 9, 9), w, b)
    with pytest.raises(ValueError, match="output_padding"):
        slim_conv_transpose2d(torch.randn(1, 8, 5, 5), w, b, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="gdn"):
        slim_conv2d(torch.randn(1, 8, 9, 9), w, b, gdn=torch.ones(3))
    beta, gamma = torch.rand(192) + 0.5, torch.rand(192, 192) * 0.1
    for bad, msg in ((dict(gamma_scale="2"), "gamma_scale must be a number"),
                     (dict(beta_bias=torch.ones(2)), "beta_bias must be a number"),
                     (dict(gama_scale=2.0), r"unknown entries \['gama_scale'\]"),
                     (dict(inverse=True), "says inverse=True, but this argument is a GDN")):
        with pytest.raises(ValueError, match=msg):   # (were ignored, overridden or torch errors)
            slim_conv2d(torch.randn(1, 8, 9, 9), w, b, gdn=dict(beta=beta, gamma=gamma, **bad))
    with pytest.raises(ValueError, match="says inverse=False, but this argument is an IGDN"):
        slim_conv_transpose2d(torch.randn(1, 8, 5, 5), w, b, stride=2, output_padding=1,
                              out_igdn=dict(beta=beta, gamma=gamma, inverse=False))


@pytest.mark.parametrize("grad", [False, True])
def test_gdn_parameters_of_a_conv_are_checked_for_the_channels_they_serve(grad):
    """gdn= (the conv's out_width channels), igdn= (x's channels) and out_igdn= (out_width):
    beta [C_max] and gamma [C_max, C_max] float on x's device with C_max >= those channels, a
    ValueError naming the argument otherwise (a short beta had been a conv's 'expected bias of
    size' error, a short or 1-D gamma oneDNN's 'could not create a primitive descriptor' or an
    IndexError)."""
    x = torch.randn(1, 8, 6, 6, requires_grad=grad)
    w, wt = torch.randn(16, 8, 3, 3), torch.randn(8, 16, 3, 3)
    beta, gamma = torch.rand(16) + 0.5, torch.rand(16, 16) * 0.1
    shape = "expects beta \\[C_max\\] and gamma \\[C_max, C_max\\]"
    cases = [
        (dict(gdn=(beta[:4], gamma)), "slim_conv2d\\(gdn=...\\) " + shape),
        (dict(gdn=(beta, gamma[:, :4])), "slim_conv2d\\(gdn=...\\) " + shape),
        (dict(gdn=(beta, gamma[0])), "slim_conv2d\\(gdn=...\\) " + shape),
        (dict(gdn=(beta[None], gamma)), "slim_conv2d\\(gdn=...\\) " + shape),
        (dict(gdn=(beta[:12], gamma[:12, :12])),
         "slim_conv2d\\(gdn=...\\): the GDN runs on 16 channels but its parameters hold only 12"),
        (dict(gdn=(beta.int(), gamma)), "expects floating-point beta and gamma"),
        (dict(gdn=(beta, gamma.to("meta"))), "x is on cpu but beta on cpu and gamma on meta"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            slim_conv2d(x, w, **kw)
    # out_width=12 needs only 12 of them
    y = slim_conv2d(x, w, out_width=12, gdn=(beta[:12], gamma[:12, :12]))
    assert y.shape == (1, 12, 4, 4)
    ref = _gdn_ref(F.conv2d(x.double(), w[:12].double()), beta.double(), gamma.double(), False)
    assert rel_err(y, ref) < 1e-5
    tcases = [
        (dict(igdn=(beta[:4], gamma[:4, :4])),
         "slim_conv_transpose2d\\(igdn=...\\): the GDN runs on 8 channels but its parameters "
         "hold only 4"),
        (dict(out_igdn=(beta[:8], gamma[:8, :8])),
         "slim_conv_transpose2d\\(out_igdn=...\\): the GDN runs on 16 channels but its "
         "parameters hold only 8"),
        (dict(out_igdn=dict(beta=beta, gamma=gamma[:, :3])),
         "slim_conv_transpose2d\\(out_igdn=...\\) " + shape),
    ]
    for kw, msg in tcases:
        with pytest.raises(ValueError, match=msg):
            slim_conv_transpose2d(x, wt, **kw)
    # igdn= on 8 input channels with 8-channel parameters, out_igdn= on 16 with 16
    y = slim_conv_transpose2d(x, wt, igdn=(beta[:8], gamma[:8, :8]), out_igdn=(beta, gamma))
    ref = _gdn_ref(x.double(), beta[:8].double(), gamma[:8, :8].double(), True)
    ref = _gdn_ref(F.conv_transpose2d(ref, wt.double()), beta.double(), gamma.double(), True)
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_weight_or_bias_on_another_device_is_refused(transposed, autocast):
    """(The direct AMX kernel under bf16 autocast read a meta bias's address 0 as 'no bias' and
    returned the conv without it.)"""
    w, b = _full("enc2", False, 5, torch.float32)
    x = torch.rand(1, 48, 16, 16)
    op = slim_conv_transpose2d if transposed else slim_conv2d
    kw = dict(stride=2, padding=2, out_width=48, **({"output_padding": 1} if transposed else {}))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with pytest.raises(ValueError, match="bias is on meta but x is on cpu"):
            op(x, w, b.to("meta"), **kw)
        with pytest.raises(ValueError, match="weight is on meta but x is on cpu"):
            op(x, w.to("meta"), b, **kw)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("empty", ["batch", "height"])
def test_empty_input_gives_an_empty_output(transposed, autocast, empty):
    """(Under bf16 autocast the direct AMX kernel got the empty input and refused it.)"""
    w, b = _full("enc2", False, 5, torch.float32)
    x = torch.rand((0, 48, 16, 16) if empty == "batch" else (1, 48, 0, 16))
    op = slim_conv_transpose2d if transposed else slim_conv2d
    kw = dict(stride=2, padding=2, out_width=48, **({"output_padding": 1} if transposed else {}))
    if empty == "height":   # (torch's own convs refuse it too)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with pytest.raises(ValueError, match=r"x \(1, 48, 0, 16\) has no pixels"):
                op(x, w, b, **kw)
        return
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = op(x, w, b, **kw)
    ref = (F.conv_transpose2d(x, w[:48, :48], b[:48], stride=2, padding=2, output_padding=1)
           if transposed else F.conv2d(x, w[:48, :48], b[:48], stride=2, padding=2))
    assert y.shape == ref.shape and y.numel() == 0


@pytest.mark.parametrize("layer", ["enc1", "1x1", "dec3"])
@pytest.mark.parametrize("grad", [False, True])
def test_an_empty_batch_through_the_few_channel_layers(layer, grad):
    """fp32 without gradient the image-layer kernels took the empty batch and refused it
    ("conv2d_image: x must be a non-empty ..."): the 3 -> C first layer, any conv of <= 8 input
    channels, a transposed conv onto 1-3 channels. Empty in, empty out, as on the other routes."""
    if layer == "enc1":
        op, w, b = slim_conv2d, torch.randn(48, 3, 9, 9), torch.randn(48)
        x, kw = torch.rand(0, 3, 32, 32), dict(stride=4, padding=4)
        ref = F.conv2d(x, w, b, stride=4, padding=4)
    elif layer == "1x1":
        op, w, b = slim_conv2d, torch.randn(8, 8, 1, 1), torch.randn(8)
        x, kw = torch.rand(0, 8, 8, 8), dict(stride=1, padding=0)
        ref = F.conv2d(x, w, b)
    else:
        op, w, b = slim_conv_transpose2d, torch.randn(48, 3, 9, 9), torch.randn(3)
        x, kw = torch.rand(0, 48, 8, 8), dict(stride=4, padding=4, output_padding=3)
        ref = F.conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3)
    w.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        y = op(x, w, b, **kw)
    assert y.shape == ref.shape and y.numel() == 0 and y.dtype == torch.float32


@pytest.mark.parametrize("transposed", [False, True])
def test_an_input_without_channels_is_refused(transposed):
    """slim_conv2d of a [1, 0, H, W] x returned a tensor of 0 output channels (documented:
    out_width), the transposed conv raised torch's "expected weight to be at least 1"."""
    op = slim_conv_transpose2d if transposed else slim_conv2d
    w, b = torch.randn(48, 48, 5, 5), torch.randn(48)
    kw = dict(stride=2, padding=2, out_width=48)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), \
                pytest.raises(ValueError, match=r"x \(1, 0, 8, 8\) has no channels"):
            op(torch.rand(1, 0, 8, 8), w.requires_grad_(grad), b, **kw)


@pytest.mark.parametrize("transposed", [False, True])
def test_dtypes_the_op_cannot_run_are_named(transposed):
    """Integer x, or x / weight / bias of different dtypes outside autocast, reached torch:
    "Input type (int) and bias type (float) should be the same", "slow_conv_transpose2d_out_cpu
    not implemented for 'Int'". Under autocast a bf16 x with float32 weights is the supported
    mixed case."""
    op = slim_conv_transpose2d if transposed else slim_conv2d
    w, b = torch.randn(48, 48, 5, 5), torch.randn(48)
    x = torch.randn(1, 48, 8, 8)
    kw = dict(stride=2, padding=2)
    with pytest.raises(ValueError, match="x must be a floating-point tensor, got torch.int32"):
        op(x.int(), w, b, **kw)
    with pytest.raises(ValueError, match="bias must be a floating-point tensor, got torch.int64"):
        op(x, w, b.long(), **kw)
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        with pytest.raises(ValueError, match=f"x is {dt} but the weight torch.float32 and the "
                                             f"bias torch.float32: cast x"):
            op(x.to(dt), w, b, **kw)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        y = op(x.bfloat16(), w, b, **kw)
    ref = (F.conv_transpose2d if transposed else F.conv2d)(x.double(), w.double(), b.double(),
                                                           **kw)
    assert y.dtype == torch.bfloat16
    assert float((y.double() - ref).abs().max() / ref.abs().max()) < 2e-2


@pytest.mark.parametrize("kh,kw", [(3, 5), (5, 3), (9, 5)])
@pytest.mark.parametrize("grad", [False, True])
def test_a_non_square_transposed_kernel_onto_few_channels(kh, kw, grad):
    """The sub-pixel route (C_out * stride^2 <= 64) assumed k x k and failed on a 3x5 kernel
    ("shape '[16, 3, 9]' is invalid"); non-square kernels take torch's transposed conv."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 12, 20)
    w = (torch.randn(16, 3, kh, kw) * 0.1).requires_grad_(grad)
    b = torch.randn(3)
    with torch.set_grad_enabled(grad):
        y = slim_conv_transpose2d(x, w, b, stride=2, padding=1)
    ref = F.conv_transpose2d(x.double(), w.detach().double(), b.double(), stride=2, padding=1)
    assert y.shape == ref.shape
    assert float((y.detach().double() - ref).abs().max() / ref.abs().max()) < 1e-5


@pytest.mark.parametrize("bad", [48.5, 48.0, "48", True, None])
def test_out_width_must_be_an_int(bad):
    import numpy as np
    w, b = _full("enc2", False, 5, torch.float32)
    x = torch.rand(1, 8, 9, 9)
    if bad is None:   # the default: the weight's output channels
        assert slim_conv2d(x, w, b, out_width=bad).shape[1] == 192
        return
    with pytest.raises(ValueError, match="out_width must be an int"):   # (was truncated: 48)
        slim_conv2d(x, w, b, out_width=bad)
    assert slim_conv2d(x, w, b, out_width=np.int64(48)).shape[1] == 48
    assert slim_conv2d(x, w, b, out_width=torch.tensor(48)).shape[1] == 48   # (as the layers)
    with pytest.raises(ValueError, match="out_width must be an int"):
        slim_conv2d(x, w, b, out_width=torch.tensor(48.0))


def test_transposed_padding_that_empties_the_output_is_named():
    w, _ = _full("enc2", False, 5, torch.float32)
    x = torch.rand(1, 48, 1, 1)
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with pytest.raises(ValueError, match=r"empty -14x-14 output: lower the padding"):
                slim_conv_transpose2d(x, w, None, stride=2, padding=10, output_padding=1,
                                      out_width=48)
            for op_ in (1.5, None, True):
                with pytest.raises(ValueError, match="output_padding=.* must be an int"):
                    slim_conv_transpose2d(x, w, None, stride=2, padding=2, output_padding=op_)


@pytest.mark.parametrize("kw,msg", [
    (dict(stride=0), "stride must be an int >= 1, got 0"),
    (dict(stride=2.0), "stride must be an int >= 1, got 2.0"),
    (dict(stride=True), "stride must be an int >= 1, got True"),
    (dict(padding=-1), "padding must be an int >= 0, got -1"),
    (dict(bias_len=7), r"bias must be the full \[192\] parameter"),
    (dict(size=2), r"x \(1, 8, 2, 2\) is smaller than the 5x5 kernel with padding 0"),
])
@pytest.mark.parametrize("transposed", [False, True])
def test_geometry_errors_name_the_argument(kw, msg, transposed):
    import numpy as np
    w, b0 = _full("enc2", False, 5, torch.float32)            # [192, 192, 5, 5]
    kw = dict(kw)
    b = torch.zeros(kw.pop("bias_len")) if "bias_len" in kw else b0
    small = "size" in kw
    size = kw.pop("size", 9)
    x = torch.randn(1, 8, size, size)
    op = slim_conv_transpose2d if transposed else slim_conv2d
    if transposed and small:                                 # any input size is valid there
        assert op(x, w, b, **kw).shape[1] == 192
        return
    with pytest.raises(ValueError, match=msg):
        op(x, w, b, **kw)
    # numpy integers are ints
    assert op(x, w, b0, stride=np.int64(1), padding=np.int64(2)).shape[1] == 192


@pytest.mark.parametrize("k,s,p,op,H,W", [(9, 4, 4, 3, 5, 7), (9, 4, 4, 3, 1, 1), (5, 2, 2, 1, 6, 5),
                                          (3, 2, 1, 1, 4, 4), (4, 2, 1, 0, 5, 3), (2, 3, 0, 0, 4, 4),
                                          (7, 3, 1, 2, 3, 4)])
def test_subpixel_transposed_conv_equals_conv_transpose2d_float64(k, s, p, op, H, W):
    from slimkernels.ops.conv import conv_transpose2d_subpixel
    torch.manual_seed(k * 10 + s)
    x = torch.randn(2, 5, H, W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref = F.conv_transpose2d(x, w, b, stride=s, padding=p, output_padding=op)
    got = conv_transpose2d_subpixel(x, w, b, s, p, op)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (x, w, b), g)
    grads = torch.autograd.grad(got, (x, w, b), g)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_output_layer_uses_subpixel_path_and_matches(monkeypatch):
    import slimkernels.ops.conv as C
    calls = []
    orig = C.conv_transpose2d_subpixel
    monkeypatch.setattr(C, "conv_transpose2d_subpixel", lambda *a: calls.append(1) or orig(*a))
    torch.manual_seed(0)
    x = torch.randn(1, 24, 4, 6, dtype=torch.float64)
    w = torch.randn(32, 3, 9, 9, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    y = C.slim_conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3, backend="torch")
    assert calls, "the 9x9/4 output layer should take the sub-pixel path on CPU"
    ref = F.conv_transpose2d(x, w[:24], b, stride=4, padding=4, output_padding=3)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


# -- the prepacked no-grad CPU path (cached oneDNN weights, column fold) ----------------------
ALL_LAYERS = [  # every SlimCAE layer: (name, transposed, C_in(w), C_out(w), k, s, p, op, x hw)
    ("enc1", False, lambda w: 3, lambda w: w, 9, 4, 4, 0, (21, 26)),
    ("enc2", False, lambda w: w, lambda w: w, 5, 2, 2, 0, (11, 10)),
    ("enc3", False, lambda w: w, lambda w: w, 5, 2, 2, 0, (7, 9)),
    ("dec1", True, lambda w: w, lambda w: w, 5, 2, 2, 1, (3, 5)),
    ("dec2", True, lambda w: w, lambda w: w, 5, 2, 2, 1, (5, 4)),
    ("dec3", True, lambda w: w, lambda w: 3, 9, 4, 4, 3, (4, 7)),
]


def _layer_case(layer, width, seed=0):
    name, tr, fci, fco, k, s, p, op, (h, w_) = layer
    ci, co = fci(width), fco(width)
    g = torch.Generator().manual_seed(seed)
    shape = (192, 3 if name == "dec3" else 192, k, k) if tr else (192, 3 if name == "enc1" else 192,
                                                                  k, k)
    wt = torch.randn(shape, generator=g, dtype=torch.float64) / (k * 4)
    b = torch.randn(shape[1] if tr else shape[0], generator=g, dtype=torch.float64)
    x = torch.randn(2, ci, h, w_, generator=g, dtype=torch.float64)
    if tr:
        ref = F.conv_transpose2d(x, wt[:ci, :co], b[:co], stride=s, padding=p, output_padding=op)

        def run(xx, ww, bb):
            return slim_conv_transpose2d(xx, ww, bb, stride=s, padding=p, output_padding=op,
                                         out_width=co)
    else:
        ref = F.conv2d(x, wt[:co, :ci], b[:co], stride=s, padding=p)

        def run(xx, ww, bb):
            return slim_conv2d(xx, ww, bb, stride=s, padding=p, out_width=co)
    return x, wt, b, ref, run


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("width", [1, 3, 47, 48, 72, 192])
@pytest.mark.parametrize("layer", ALL_LAYERS, ids=[l[0] for l in ALL_LAYERS])
def test_prepacked_nograd_every_layer_vs_float64(layer, width, dtype):
    conv_mod.clear_weight_caches()
    x, wt, b, ref, run = _layer_case(layer, width)
    xf = x.float().contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        y = run(xf, wt.float(), b.float())
        y2 = run(x.float(), wt.float(), b.float())  # NCHW input: converted once, same result
    assert y.shape == ref.shape
    assert y.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    _, tr, fci, fco, k, s, p, _, _ = layer
    wino = dtype == "fp32" and conv_mod._use_winograd(xf, fci(width), fco(width), k, s, p, tr)
    assert rel_err(y, ref) < (1e-2 if dtype == "bf16" else WINOGRAD_FP32_TOL if wino else 1e-5)
    assert torch.equal(y, y2)
    ci = x.shape[1]
    # (bf16 where oneDNN has none: the float32 op runs, with its caches, and rounds)
    fp32 = dtype == "fp32" or not conv_mod._onednn_half(torch.bfloat16)
    # fp32 from < 8 input channels on AVX-512: the image conv kernel's AVX-512 variant when it
    # takes the conv (enc1; it caches its packed weight), else F.conv2d
    image = fp32 and not tr and conv_mod._image_kernels_apply(
        xf, wt.float(), ci, conv_mod.conv_image.MAX_INPUT_CHANNELS)
    min_ci = 8 if fp32 and conv_mod._cpu_capability() == "AVX512" and not image else 2
    if conv_mod._onednn(torch.float32 if fp32 else y.dtype) and ci >= min_ci:
        assert len(conv_mod._PACK_CACHE) >= 1  # the prepacked path ran
        if image:
            assert any(k[0][0] == "image" for k in conv_mod._PACK_CACHE)
    else:  # fp32 with < 8 input channels on AVX-512 (not the image kernel), 1 channel: F.conv
        assert len(conv_mod._PACK_CACHE) == 0


def test_prepacked_takes_column_fold_for_narrow_bf16(monkeypatch):
    """At 48 channels the bf16 stride-2 conv reads x with columns folded into channels (on AMX),
    and matches float64; wide (192) and fp32 convs do not fold."""
    if not (conv_mod._onednn(torch.bfloat16) and conv_mod._amx()):
        pytest.skip("needs oneDNN bf16 with AMX")
    monkeypatch.setattr(conv_mod, "CPU_AMX_CONV", False)  # the oneDNN path, not the direct kernel
    calls = []
    orig = conv_mod._fold_input
    monkeypatch.setattr(conv_mod, "_fold_input", lambda *a: calls.append(a[0].shape) or orig(*a))
    for width, dtype, folds in ((48, "bf16", True), (47, "bf16", True), (192, "bf16", False),
                                (48, "fp32", False), (72, "bf16", False)):
        calls.clear()
        x, wt, b, ref, run = _layer_case(ALL_LAYERS[1], width, seed=width)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                             enabled=dtype == "bf16"):
            y = run(x.float(), wt.float(), b.float())
        assert bool(calls) == folds, (width, dtype)
        assert rel_err(y, ref) < (1e-2 if dtype == "bf16" else 1e-5)


def test_prepacked_folds_the_image_layer_only_when_narrow(monkeypatch):
    """The 3-channel 9x9/4 image layer (enc1) folds its columns in bf16 up to
    WFOLD_SMALL_C_MAX_OUT output channels (measured faster there, slower at 144-192), and matches
    float64 either way; a width not a multiple of the stride never folds."""
    if not (conv_mod._onednn(torch.bfloat16) and conv_mod._amx()):
        pytest.skip("needs oneDNN bf16 with AMX")
    monkeypatch.setattr(conv_mod, "CPU_AMX_CONV", False)  # the oneDNN path (Kodak-size images)
    calls = []
    orig = conv_mod._fold_input
    monkeypatch.setattr(conv_mod, "_fold_input", lambda *a: calls.append(a[0].shape) or orig(*a))
    enc1 = ALL_LAYERS[0]
    wide_ok = enc1[:-1] + ((21, 28),)                     # W = 28: a multiple of the stride
    for layer, width, folds in ((wide_ok, 48, True), (wide_ok, 72, True), (wide_ok, 96, False),
                                (wide_ok, 192, False), (enc1, 48, False)):
        calls.clear()
        x, wt, b, ref, run = _layer_case(layer, width, seed=width)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(x.float(), wt.float(), b.float())
        assert bool(calls) == folds, (layer[-1], width)
        assert rel_err(y, ref) < 1e-2
    assert conv_mod.WFOLD_SMALL_C_MAX_OUT == 72


@pytest.mark.parametrize("k,s,p,H,W", [(5, 2, 2, 11, 10), (5, 2, 2, 6, 4), (9, 4, 4, 9, 12),
                                       (3, 3, 0, 7, 9), (4, 2, 2, 5, 8)])
def test_conv2d_wfold_equals_conv2d_float64_with_grad(k, s, p, H, W):
    torch.manual_seed(k * 7 + s)
    x = torch.randn(2, 5, H, W, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, b, stride=s, padding=p)
    got = conv_mod.conv2d_wfold(x.contiguous(memory_format=torch.channels_last), w, b, s, p)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="multiples of stride"):
        conv_mod.conv2d_wfold(x[..., :W - 1], w, b, s, p)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("transposed", [False, True])
def test_prepacked_cache_invalidated_by_in_place_updates(transposed, dtype):
    conv_mod.clear_weight_caches()
    layer = ALL_LAYERS[3] if transposed else ALL_LAYERS[1]
    x, wt, b, _, run = _layer_case(layer, 48)
    w32, b32, x32 = wt.float(), b.float(), x.float()
    wino = dtype == "fp32" and conv_mod._use_winograd(x.float(), 48, 48, 5, 2, 2, transposed)
    tol = 1e-2 if dtype == "bf16" else WINOGRAD_FP32_TOL if wino else 1e-5
    conv = F.conv_transpose2d if transposed else F.conv2d
    kw = dict(stride=2, padding=2, **({"output_padding": 1} if transposed else {}))

    def check(w_, b_):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                             enabled=dtype == "bf16"):
            y = run(x32, w_, b_)
            y_again = run(x32, w_, b_)
        r = conv(x, (w_[:48, :48]).double(), b_[:48].double(), **kw)
        assert rel_err(y, r) < tol and torch.equal(y, y_again)
        return y

    y0 = check(w32, b32)
    with torch.no_grad():
        w32[:48, :48].mul_(-3.0)                      # in place through a view
    y1 = check(w32, b32)
    assert not torch.allclose(y0.float(), y1.float())
    with torch.no_grad():
        b32.add_(5.0)                                 # the bias alone
    check(w32, b32)
    p = torch.nn.Parameter(w32.clone())
    check(p, b32)
    p.grad = torch.ones_like(p)
    torch.optim.SGD([p], lr=0.5).step()               # optimizer step: version bump
    check(p, b32)
    p.data.mul_(0.5)                                  # .data bypasses versions: clear by hand
    conv_mod.clear_weight_caches()
    check(p, b32)
    assert len(conv_mod._PACK_CACHE) <= cache_mod._PACK_CACHE_MAX


def test_prepacked_cache_is_bounded_lru(monkeypatch):
    conv_mod.clear_weight_caches()
    monkeypatch.setattr(cache_mod, "_PACK_CACHE_MAX", 3)
    w, b = _full("enc2", False, 5, torch.float32)
    with torch.no_grad():
        for width in (8, 9, 10, 11, 12):
            x = torch.randn(1, width, 6, 6)
            y = slim_conv2d(x, w, b, stride=2, padding=2, out_width=width)
            r = F.conv2d(x.double(), w[:width, :width].double(), b[:width].double(), stride=2,
                         padding=2)
            assert rel_err(y, r) < 1e-5
    if conv_mod._onednn(torch.float32):
        assert len(conv_mod._PACK_CACHE) == 3


def test_prepacked_cache_keeps_at_most_max_shapes_per_weight(monkeypatch):
    """Entries built for an input shape: at most _PACK_CACHE_MAX_SHAPES shapes per weight and
    configuration, the least recently used shape dropped first (a hit counts as a use); another
    weight's shapes, another configuration's and the entries without a shape stay."""
    conv_mod.clear_weight_caches()
    monkeypatch.setattr(cache_mod, "_PACK_CACHE_MAX_SHAPES", 3)
    w1, w2 = torch.ones(4), torch.ones(4)
    built = []

    def get(w, shape, cfg="a"):
        key = ("test", cfg, shape) if shape is not None else ("test", cfg)
        return cache_mod._cached(key, (w,), lambda: built.append((id(w), cfg, shape)) or shape,
                                 shaped=shape is not None)

    def shapes(w, cfg="a"):
        return [k[0][2] for k in conv_mod._PACK_CACHE
                if k[0][:2] == ("test", cfg) and len(k[0]) == 3 and k[1] == id(w)]
    get(w1, None)
    get(w2, (9,))
    get(w1, (9,), "b")
    for n in range(1, 6):
        assert get(w1, (n,)) == (n,)
    assert shapes(w1) == [(3,), (4,), (5,)]
    nb = len(built)
    assert get(w1, (3,)) == (3,) and len(built) == nb     # a hit: (3,) is the newest now
    get(w1, (6,))
    assert shapes(w1) == [(5,), (3,), (6,)]
    assert shapes(w2) == [(9,)] and shapes(w1, "b") == [(9,)]
    assert any(k[0] == ("test", "a") and k[1] == id(w1) for k in conv_mod._PACK_CACHE)
    conv_mod.clear_weight_caches()


def test_prepacked_onednn_weights_kept_for_at_most_max_shapes(monkeypatch):
    """The oneDNN prepacked conv weights (one per input shape) of a 192-channel bf16 layer over
    five image sizes: the newest _PACK_CACHE_MAX_SHAPES kept, every output right."""
    if not conv_mod._onednn(torch.bfloat16):
        pytest.skip("no oneDNN bf16 prepacked convs here")
    conv_mod.clear_weight_caches()
    monkeypatch.setattr(cache_mod, "_PACK_CACHE_MAX_SHAPES", 2)
    w, b = _full("enc2", False, 5, torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for n in range(5):
            x = torch.randn(1, 192, 8 + 2 * n, 12).contiguous(memory_format=torch.channels_last)
            y = slim_conv2d(x, w, b, stride=2, padding=2, out_width=192)
            r = F.conv2d(x.to(torch.bfloat16).double(), w.to(torch.bfloat16).double(),
                         b.double(), stride=2, padding=2)
            assert rel_err(y, r) < 1e-2
    kept = [k[0][-1] for k in conv_mod._PACK_CACHE if k[0][0] == "conv"]
    assert kept == [(1, 192, 14, 12), (1, 192, 16, 12)], kept
    conv_mod.clear_weight_caches()


def test_prepacked_gdn_cache_follows_gdn_parameters():
    conv_mod.clear_weight_caches()
    w, b = _full("enc2", False, 5, torch.float64)
    g = torch.Generator().manual_seed(5)
    beta = torch.rand(192, generator=g, dtype=torch.float64) + 0.5
    gamma = torch.rand(192, 192, generator=g, dtype=torch.float64) * 0.1
    x = torch.randn(1, 47, 9, 12, dtype=torch.float64)
    for dtype, tol in (("fp32", 1e-5), ("bf16", 1e-2)):
        gm, bt = gamma.float(), beta.float()
        for step in range(2):
            ref = _gdn_ref(F.conv2d(x, w[:47, :47], b[:47], stride=2, padding=2), bt.double(),
                           gm.double(), False)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                 enabled=dtype == "bf16"):
                y = slim_conv2d(x.float(), w.float(), b.float(), stride=2, padding=2,
                                out_width=47, gdn={"beta": bt, "gamma": gm, "gamma_scale": 0.5})
            ref = _gdn_ref(F.conv2d(x, w[:47, :47], b[:47], stride=2, padding=2), bt.double(),
                           gm.double() * 0.5, False)
            assert rel_err(y, ref) < tol
            with torch.no_grad():
                gm.mul_(3.0)
                bt.add_(1.0)


@pytest.mark.parametrize("k,s,p,op,Co", [(9, 4, 4, 3, 3), (4, 2, 1, 0, 3), (3, 2, 1, 1, 5),
                                         (7, 3, 1, 2, 2)])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_prepacked_subpixel_general_vs_float64(k, s, p, op, Co, dtype):
    conv_mod.clear_weight_caches()
    torch.manual_seed(k + s)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    w = torch.randn(8, Co, k, k, dtype=torch.float64) / k
    b = torch.randn(Co, dtype=torch.float64)
    ref = F.conv_transpose2d(x, w[:6], b, stride=s, padding=p, output_padding=op)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        y = slim_conv_transpose2d(x.float(), w.float(), b.float(), stride=s, padding=p,
                                  output_padding=op)
    assert y.shape == ref.shape
    assert rel_err(y, ref) < (1e-2 if dtype == "bf16" else 1e-5)


@pytest.mark.parametrize("k,s,p,op,Co", [(9, 4, 4, 3, 3), (4, 2, 1, 0, 3), (3, 2, 1, 1, 5),
                                         (9, 4, 4, 3, 1), (5, 2, 2, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_subpixel_prepacked_shuffle_vs_float64(k, s, p, op, Co, dtype):
    """The prepacked sub-pixel conv itself (whatever route the op would take here): its phase
    shuffle moves runs of s*Co elements as 8-byte words when they are a multiple of 8 bytes
    (bf16 9x9/4 onto 3 channels: 24 bytes) and element by element otherwise (bf16 s=2 onto 3:
    12 bytes); both against float64."""
    if not conv_mod._onednn(dtype):
        pytest.skip(f"no oneDNN {dtype} convolution in this build/CPU: the prepacked path is off")
    conv_mod.clear_weight_caches()
    torch.manual_seed(k + s + Co)
    x = torch.randn(2, 6, 5, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(8, Co, k, k) / k).to(dtype)
    b = torch.randn(Co).to(dtype)
    with torch.no_grad():
        y = conv_mod._subpixel_prepacked(x, w, b, Co, s, p, op)
    ref = F.conv_transpose2d(x.double(), w[:6].double(), b.double(), stride=s, padding=p,
                             output_padding=op)
    assert y.shape == ref.shape and y.dtype == dtype
    assert torch.isfinite(y.float()).all()
    assert rel_err(y, ref) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_prepacked_igdn_input_and_output_vs_float64(dtype):
    conv_mod.clear_weight_caches()
    w, b = _full("dec1", True, 5, torch.float64)
    g = torch.Generator().manual_seed(6)
    beta = torch.rand(192, generator=g, dtype=torch.float64) + 0.5
    gamma = torch.rand(192, 192, generator=g, dtype=torch.float64) * 0.1
    x = torch.randn(1, 47, 5, 6, dtype=torch.float64)
    ref = F.conv_transpose2d(_gdn_ref(x, beta, gamma, True), w[:47, :72], b[:72], stride=2,
                             padding=2, output_padding=1)
    ref = _gdn_ref(ref, beta, gamma, True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        y = slim_conv_transpose2d(x.float(), w.float(), b.float(), stride=2, padding=2,
                                  output_padding=1, out_width=72,
                                  igdn=(beta.float(), gamma.float()),
                                  out_igdn=(beta.float(), gamma.float()))
    assert y.shape == ref.shape
    assert rel_err(y, ref) < (1e-2 if dtype == "bf16" else 1e-5)
    import sys
    gdn_mod = sys.modules["slimkernels.ops.gdn"]
    # fp32: the AVX2 kernel takes both IGDNs; bf16: it takes them too (47 channels <=
    # AVX2_BF16_MAX_C; 72 <= AVX2_BF16_SMALL_MAX_C on 10x12 pixels)
    assert 47 <= gdn_mod.AVX2_BF16_MAX_C and 72 <= gdn_mod.AVX2_BF16_SMALL_MAX_C
    avx2 = gdn_mod._avx2_kernels() is not None
    if conv_mod._onednn(y.dtype) and not conv_mod._fused_cpu_gdn_available() and not avx2:
        # both IGDNs ran the prepacked passes (NCHW fp32 x converted)
        assert sorted(k[0][1] for k in conv_mod._PACK_CACHE if k[0][0] == "gdn") == [47, 72]
    elif avx2 and not conv_mod._fused_cpu_gdn_available():
        # both ran the AVX2 kernel; in bf16 on AVX512-BF16 CPUs the output IGDN (of the
        # channels_last conv output) the AVX512-BF16 one
        last = "avx512-bf16" if dtype == "bf16" and gdn_mod._bf16_kernel_here() else "avx2"
        assert gdn_mod.last_cpu_path == last
        assert not [k for k in conv_mod._PACK_CACHE if k[0][0] == "gdn"]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_nograd_gdn_fused_kernel_and_passes_agree_with_float64(fused, dtype, monkeypatch):
    """Without grad the conv ops hand GDN/IGDN to the GDN op's fused CPU kernel when available,
    else to the prepacked passes; both match float64 (SlimGDN+ scalars included)."""
    import sys
    gdn_mod = sys.modules["slimkernels.ops.gdn"]
    if fused and not conv_mod._fused_cpu_gdn_available():
        pytest.skip("no fused CPU GDN kernel here")
    monkeypatch.setattr(conv_mod, "CPU_FUSED_GDN", fused)
    w, b = _full("enc2", False, 5, torch.float64)
    wt, bt = _full("dec1", True, 5, torch.float64, seed=1)
    g = torch.Generator().manual_seed(7)
    beta = torch.rand(192, generator=g, dtype=torch.float64) + 0.5
    gamma = torch.rand(192, 192, generator=g, dtype=torch.float64) * 0.1
    x = torch.randn(1, 47, 10, 12, dtype=torch.float64)
    spec = {"beta": beta.float(), "gamma": gamma.float(), "gamma_scale": 0.5, "beta_bias": 0.25}
    ref = _gdn_ref(F.conv2d(x, w[:72, :47], b[:72], stride=2, padding=2), beta + 0.25,
                   gamma * 0.5, False)
    ref = _gdn_ref(F.conv_transpose2d(ref, wt[:72, :47], bt[:47], stride=2, padding=2,
                                      output_padding=1), beta + 0.25, gamma * 0.5, True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        gdn_mod.last_cpu_path = None
        y = slim_conv2d(x.float(), w.float(), b.float(), stride=2, padding=2, out_width=72,
                        gdn=spec)
        y = slim_conv_transpose2d(y, wt.float(), bt.float(), stride=2, padding=2,
                                  output_padding=1, out_width=47, out_igdn=spec)
    assert gdn_mod.last_cpu_path == ("fused" if fused else None)
    assert y.shape == ref.shape
    assert rel_err(y, ref) < (1e-2 if dtype == "bf16" else 1e-5)


def test_prepacked_path_from_several_threads(monkeypatch):
    """Concurrent no-grad calls with a tiny cache (constant eviction) stay correct."""
    from tests._threads import run_in_threads
    conv_mod.clear_weight_caches()
    monkeypatch.setattr(cache_mod, "_PACK_CACHE_MAX", 2)
    w, b = _full("enc2", False, 5, torch.float32)
    xs = {wd: torch.randn(1, wd, 6, 8) for wd in (8, 9, 10, 11)}
    refs = {wd: F.conv2d(x.double(), w[:wd, :wd].double(), b[:wd].double(), stride=2, padding=2)
            for wd, x in xs.items()}

    def work(seed):
        errors = []
        for i in range(40):
            wd = (8, 9, 10, 11)[(seed + i) % 4]
            with torch.no_grad():
                y = slim_conv2d(xs[wd], w, b, stride=2, padding=2, out_width=wd)
            if rel_err(y, refs[wd]) > 1e-5:
                errors.append(wd)
        return errors
    assert not run_in_threads(work, 4)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("prepack", [True, False])
def test_inference_tensor_weights(monkeypatch, autocast, prepack):
    """Weights made under torch.inference_mode have no version counter for the weight caches
    (prepacked weights, cast copies) to key by: they are prepared on every call instead, same
    results; nothing of them stays in the caches."""
    monkeypatch.setattr(conv_mod, "CPU_PREPACK", prepack)
    conv_mod.clear_weight_caches()
    with torch.inference_mode():
        w, b = torch.randn(16, 12, 5, 5), torch.randn(16)
        wt, bt = torch.randn(12, 16, 5, 5), torch.randn(16)
        x = torch.randn(1, 10, 9, 11)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for _ in range(2):
                y = slim_conv2d(x, w, b, stride=2, padding=2, out_width=14)
                yt = slim_conv_transpose2d(x, wt, bt, stride=2, padding=2, output_padding=1,
                                           out_width=14)
    ref = F.conv2d(x.double(), w[:14, :10].double(), b[:14].double(), stride=2, padding=2)
    reft = F.conv_transpose2d(x.double(), wt[:10, :14].double(), bt[:14].double(), stride=2,
                              padding=2, output_padding=1)
    tol = 2e-2 if autocast else 1e-5
    assert rel_err(y, ref) < tol and rel_err(yt, reft) < tol
    assert len(conv_mod._PACK_CACHE) == 0 and len(conv_mod._CAST_CACHE) == 0


# -- CPU audit (thirty-second sitting): one output column in bf16 --------------------------------
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("k, stride, pad, ci, co, h, w", [
    (5, 2, 2, 192, 192, 32, 2),     # SlimCAE's enc3 on a 16-pixel-wide image
    (5, 2, 2, 16, 48, 40, 1),
    (9, 4, 4, 3, 48, 64, 4),        # enc1 on a 4-pixel-wide input
    (5, 3, 2, 150, 72, 40, 3),
])
def test_bf16_strided_conv_with_one_output_column(k, stride, pad, ci, co, h, w, grad):
    """torch's oneDNN bf16 conv returns garbage (NaN, 1e18, O(1) error; it varies between runs)
    for a strided conv whose output is one column wide: the op runs it transposed."""
    torch.manual_seed(0)
    wt, b = torch.randn(co, ci, k, k) / 30, torch.randn(co)
    for cl in (False, True):
        x = torch.randn(1, ci, h, w)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(grad)
        r = F.conv2d(x.detach().bfloat16().double(), wt.bfloat16().double(), b.bfloat16().double(),
                     stride=stride, padding=pad)
        assert r.shape[3] == 1 and r.shape[2] > 1
        for _ in range(3):
            with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16):
                y = slim_conv2d(x, wt, b, stride=stride, padding=pad)
            assert y.shape == r.shape
            assert torch.isfinite(y).all()
            assert ((y.double() - r).abs().max() / r.abs().max()).item() < 1e-2
        with torch.no_grad():    # bf16 tensors without autocast take the same route
            y = slim_conv2d(x.detach().bfloat16(), wt.bfloat16(), b.bfloat16(), stride=stride,
                            padding=pad)
        assert ((y.double() - r).abs().max() / r.abs().max()).item() < 1e-2
        if grad:
            y = slim_conv2d(x, wt, b, stride=stride, padding=pad)
            with torch.autocast("cpu", torch.bfloat16):
                slim_conv2d(x, wt, b, stride=stride, padding=pad).float().sum().backward()
            assert torch.isfinite(x.grad).all()


# -- CPU audit (thirty-third sitting): oneDNN bf16 with C_in * k a multiple of 32 ---------------
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("ci, k, stride, pad, co", [
    (8, 8, 1, 0, 65), (12, 8, 1, 3, 96), (8, 12, 2, 0, 40), (4, 16, 1, 8, 65),
    (14, 16, 1, 0, 33), (8, 8, 4, 4, 96),
])
def test_bf16_conv_with_few_channels_and_a_wide_kernel(ci, k, stride, pad, co, grad):
    """torch's oneDNN bf16 conv returns O(1) relative error for fewer than 16 input channels
    whose C_in * k is a multiple of 32 and >= 64 (torch 2.13, AMX Xeon): the op computes those
    in float32 where the direct AMX kernel does not take them."""
    torch.manual_seed(1)
    wt, b = torch.randn(co, ci, k, k) / (ci * k * k) ** 0.5, torch.randn(co)
    x = torch.rand(2, ci, k + 4 * stride + 3, k + 3 * stride + 5)
    r = F.conv2d(x.bfloat16().double(), wt.bfloat16().double(), b.bfloat16().double(),
                 stride=stride, padding=pad)
    for cl in (False, True):
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x.clone()
        xi.requires_grad_(grad)
        with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16):
            y = slim_conv2d(xi, wt, b, stride=stride, padding=pad)
        assert y.dtype == torch.bfloat16 and y.shape == r.shape
        assert ((y.double() - r).abs().max() / r.abs().max()).item() < 1e-2
        if grad:
            y.float().sum().backward()
            assert torch.isfinite(xi.grad).all()
        with torch.no_grad():    # bf16 tensors without autocast
            y = slim_conv2d(xi.detach().bfloat16(), wt.bfloat16(), b.bfloat16(), stride=stride,
                            padding=pad)
        assert y.dtype == torch.bfloat16
        assert ((y.double() - r).abs().max() / r.abs().max()).item() < 1e-2


# -- CPU audit (forty-eighth sitting): oneDNN bf16 forward and gradients on a scan's shapes -----
BF16_WRONG_CASES = [  # (transposed, C_in, C_out, k, stride, pad, output_padding, H, W)
    (False, 8, 16, 8, 1, 0, 0, 20, 17),     # C_in * k = 64 (the forward)
    (False, 16, 8, 4, 4, 0, 0, 24, 20),     # 16 / 24 channels, k 4 / 8 / 12, stride 4, no padding
    (False, 24, 8, 8, 4, 0, 0, 32, 32),
    (False, 20, 8, 8, 8, 0, 0, 32, 32),     # 20 / 28 channels at stride 8
    (False, 16, 8, 3, 2, 1, 0, 2, 1),       # one input column (one output row): the weight grad
    (True, 16, 8, 8, 1, 0, 0, 6, 5),        # x's gradient is a conv with C_in * k = 64
    (True, 8, 16, 4, 4, 0, 0, 6, 5),        # ... a conv of 16 channels, k 4, stride 4
    (True, 64, 64, 5, 2, 2, 1, 8, 1),       # the decoder's 5x5/2 on one input column
    (True, 1, 8, 3, 4, 1, 0, 1, 1),
]


@pytest.mark.parametrize("leaves", ["fp32 autocast", "bf16"])
@pytest.mark.parametrize("case", BF16_WRONG_CASES)
def test_bf16_convs_with_gradients_on_shapes_onednn_gets_wrong(case, leaves):
    """torch's oneDNN bf16 convs (torch 2.13, AMX Xeon) return O(1) relative error, 1e35 or NaN
    in the forward or a gradient on these shapes (a scan of ~146,000 convs,
    ``ops.conv._onednn_bf16_wrong``): the ops run them in float32 and round. Forward and the
    gradients of x, the weight and the bias against float64, with and without a gradient
    recorded, under autocast and on bf16 tensors (before: 0.8-1.4 relative error, NaN)."""
    tr, ci, co, k, s, p, op, H, W = case
    torch.manual_seed(3)
    wshape = (ci, co, k, k) if tr else (co, ci, k, k)
    x, w = torch.randn(1, ci, H, W), torch.randn(wshape) / (ci * k) ** 0.5
    b = torch.randn(co) * 0.1
    x, w, b = (t.bfloat16().float() for t in (x, w, b))

    def conv(x, w, b, lib=True):
        if tr:
            f = slim_conv_transpose2d if lib else F.conv_transpose2d
            return f(x, w, b, stride=s, padding=p, output_padding=op)
        return (slim_conv2d if lib else F.conv2d)(x, w, b, stride=s, padding=p)

    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    ref = conv(xd, wd, bd, lib=False)
    g = torch.randn(ref.shape).bfloat16().double()
    ref.backward(g)

    def close(a, r):
        a = a.double()
        assert torch.isfinite(a).all()
        return ((a - r).abs().max() / r.abs().max()).item() < 1e-2

    dt = torch.bfloat16 if leaves == "bf16" else torch.float32
    leaf = [t.to(dt).requires_grad_() for t in (x, w, b)]
    with torch.autocast("cpu", torch.bfloat16, enabled=leaves != "bf16"):
        y = conv(*leaf)
        with torch.no_grad():
            y0 = conv(*(t.detach() for t in leaf))
    assert y.dtype == y0.dtype == torch.bfloat16
    assert close(y, ref.detach()) and close(y0, ref.detach())
    y.backward(g.to(y.dtype))
    for t, r, name in zip(leaf, (xd, wd, bd), ("x", "weight", "bias")):
        assert t.grad.dtype == dt and close(t.grad, r.grad), name


# -- the torch backend on another device than the CPU (CUDA with backend="torch", MPS, meta) ----
META_CASES = [  # (transposed, C_in, C_out max, k, stride, pad, output_padding, out_width)
    (False, 24, 32, 5, 2, 2, 0, 16),
    (False, 3, 32, 9, 4, 4, 0, 32),
    (True, 24, 32, 5, 2, 2, 1, 16),
    (True, 24, 3, 9, 4, 4, 3, 3),
]


def _meta_operands(tr, ci, co_max, k, grad):
    w = torch.randn((32, co_max, k, k) if tr else (co_max, 32, k, k), requires_grad=grad)
    b = torch.randn(co_max, requires_grad=grad)
    return w, b


def _conv_call(tr, x, w, b, stride, pad, op, co, extra):
    if tr:
        return slim_conv_transpose2d(x, w, b, stride=stride, padding=pad, output_padding=op,
                                     out_width=co, backend="torch", **extra)
    return slim_conv2d(x, w, b, stride=stride, padding=pad, out_width=co, backend="torch",
                       **extra)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", META_CASES)
def test_meta_tensors_give_the_cpu_shapes_and_dtypes(case, grad):
    """Shape inference on the meta device: the CPU kernels (AMX, Winograd, oneDNN prepacking)
    are for CPU tensors; another device runs PyTorch's own convolution of the slice (before:
    'conv2d_winograd: x must be a ... CPU tensor')."""
    tr, ci, co_max, k, s, p, op, co = case
    g = (torch.rand(32) + 0.5, 0.1 * torch.rand(32, 32))
    extras = [{}]
    if tr:
        extras += [{"igdn": g}, {"out_igdn": g}] if co > 3 else [{"out_clamp": (0.0, 1.0)}]
    else:
        extras += [{"gdn": g}]
    for extra in extras:
        for autocast in (False, True):
            w, b = _meta_operands(tr, ci, co_max, k, grad)
            x = torch.rand(2, ci, 20, 12)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                ref = _conv_call(tr, x, w, b, s, p, op, co, extra)
            meta = {kk: tuple(t.to("meta") for t in v) if kk != "out_clamp" else v
                    for kk, v in extra.items()}
            wm, bm = (t.detach().to("meta").requires_grad_(grad) for t in (w, b))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = _conv_call(tr, x.to("meta"), wm, bm, s, p, op, co, meta)
            assert y.is_meta and y.shape == ref.shape, (extra, autocast)
            if not autocast:   # (the CPU autocast does not reach a meta tensor's conv)
                assert y.dtype == ref.dtype, (extra, autocast)


@pytest.mark.parametrize("case", META_CASES)
def test_the_conv_of_another_device_is_the_slices_convolution(case):
    """The route those devices take, on float64 CPU tensors: the active slice's convolution
    (a wrong slice, e.g. a transposed weight cut as [:co, :ci], gives other values)."""
    tr, ci, co_max, k, s, p, op, co = case
    g = torch.Generator().manual_seed(1)
    w = torch.randn((32, co_max, k, k) if tr else (co_max, 32, k, k), generator=g,
                    dtype=torch.float64)
    b = torch.randn(co_max, generator=g, dtype=torch.float64)
    x = torch.randn(2, ci, 20, 12, generator=g, dtype=torch.float64)
    y = conv_mod._plain_conv(x, w, b, co, s, p, op, transposed=tr)
    if tr:
        full = F.conv_transpose2d(torch.cat([x, torch.zeros(2, 32 - ci, 20, 12,
                                                            dtype=torch.float64)], 1),
                                  w, b, stride=s, padding=p, output_padding=op)
    else:
        full = F.conv2d(x, w[:, :ci], b, stride=s, padding=p)
    torch.testing.assert_close(y, full[:, :co], rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", META_CASES)
def test_cuda_under_the_torch_backend_matches_float64(case, grad, monkeypatch):
    """CUDA tensors with backend="torch" (SLIMKERNELS_BACKEND=torch): PyTorch's convolution of
    the slice (before, without gradient, they reached the CPU Winograd / oneDNN paths)."""
    tr, ci, co_max, k, s, p, op, co = case
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)   # (fp32 tolerance)
    w, b = (t.cuda() for t in _meta_operands(tr, ci, co_max, k, False))
    x = torch.rand(2, ci, 20, 12, device="cuda")
    ref = conv_mod._plain_conv(x.double(), w.double(), b.double(), co, s, p, op, transposed=tr)
    with torch.set_grad_enabled(grad):
        wg, bg = (t.detach().requires_grad_(grad) for t in (w, b))
        y = _conv_call(tr, x, wg, bg, s, p, op, co, {})
    assert rel_err(y.detach(), ref) < 1e-5


def _no_triton_conv(monkeypatch):
    """The Triton conv kernels' entry points made to fail the test when called."""
    from slimkernels.kernels import conv as K

    def refuse(*a, **k):
        raise AssertionError("a float64 conv on a GPU device reached the Triton kernels")
    for name in ("conv2d_fwd", "conv_transpose2d_fwd"):
        monkeypatch.setattr(K, name, refuse)
    for name in ("SlimConv2dFunction", "SlimConvTranspose2dFunction"):
        monkeypatch.setattr(getattr(K, name), "apply", refuse)


@pytest.mark.parametrize("case", META_CASES)
def test_float64_off_the_cpu_takes_pytorch_conv_under_the_triton_backend(case, monkeypatch):
    """float64 on a device other than the CPU never reaches the Triton kernels (their float64
    tl.dot spills heavily on sm_90 and never ran on a GPU): the meta device stands in for CUDA
    here, with backend="triton" (the interpreter is on in these tests); the result has the
    shape and dtype of PyTorch's conv. On CPU tensors (the interpreter) float64 stays on the
    kernels, whose exact tests need it."""
    tr, ci, co_max, k, s, p, op, co = case
    _no_triton_conv(monkeypatch)
    seen = []
    real = conv_mod._plain_conv
    monkeypatch.setattr(conv_mod, "_plain_conv",
                        lambda x, w, b, *a, **kw: seen.append((w.dtype, b.dtype)) or
                        real(x, w, b, *a, **kw))
    x = torch.empty(2, ci, 20, 12, dtype=torch.float64, device="meta")
    # float32 weights too: cast to x's float64 (as the Triton path casts them to x's dtype)
    for wdt in (torch.float64, torch.float32):
        w, b = (t.to("meta", wdt) for t in _meta_operands(tr, ci, co_max, k, False))
        if tr:
            y = slim_conv_transpose2d(x, w, b, stride=s, padding=p, output_padding=op,
                                      out_width=co, backend="triton")
            want = F.conv_transpose2d(x, w[:ci, :co].double(), b[:co].double(), stride=s,
                                      padding=p, output_padding=op)
        else:
            y = slim_conv2d(x, w, b, stride=s, padding=p, out_width=co, backend="triton")
            want = F.conv2d(x, w[:co, :ci].double(), b[:co].double(), stride=s, padding=p)
        assert y.is_meta and y.shape == want.shape and y.dtype == torch.float64
    assert seen == [(torch.float64, torch.float64)] * 2
    assert conv_mod._triton_takes_dtype(torch.empty(1, dtype=torch.float64))       # the CPU
    assert conv_mod._triton_takes_dtype(torch.empty(1, device="meta"))             # float32
    assert not conv_mod._triton_takes_dtype(torch.empty(1, dtype=torch.float64, device="meta"))


def _float64_conv_and_gdn_vs_plain(case, grad, dev, wdt=torch.float64):
    """slim_conv2d with a fused-GDN argument (slim_conv_transpose2d with an out_igdn) on a
    float64 x on ``dev`` (the weight and bias in ``wdt``) against PyTorch's float64 conv of the
    slice and the (I)GDN written out; gradients of x and the weight when ``grad``."""
    tr, ci, co_max, k, s, p, op, co = case
    w, b = (t.to(dev, wdt) for t in _meta_operands(tr, ci, co_max, k, False))
    x = torch.rand(2, ci, 20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(7)
    beta = (torch.rand(co_max, generator=g, dtype=torch.float64) + 0.5).to(dev)
    gamma = (torch.rand(co_max, co_max, generator=g, dtype=torch.float64) * 0.1).to(dev)
    outs = []
    for plain in (False, True):
        xg, wg, bg = (t.detach().clone().to(dev).requires_grad_(grad) for t in (x, w, b))
        with torch.set_grad_enabled(grad):
            if plain:
                y = conv_mod._plain_conv(xg, wg.double(), bg.double(), co, s, p, op,
                                         transposed=tr)
                n = torch.sqrt(beta[:co, None, None] +
                               torch.einsum("oc,nchw->nohw", gamma[:co, :co], y * y))
                y = y * n if tr else y / n
            elif tr:
                y = slim_conv_transpose2d(xg, wg, bg, stride=s, padding=p, output_padding=op,
                                          out_width=co, out_igdn=(beta, gamma))
            else:
                y = slim_conv2d(xg, wg, bg, stride=s, padding=p, out_width=co,
                                gdn=(beta, gamma))
            if grad:
                (y * y).sum().backward()
        outs.append((y.detach(), xg.grad, wg.grad))
    (y, gx, gw), (ref, rx, rw) = outs
    assert y.dtype == torch.float64 and y.device == ref.device and rel_err(y, ref) < 1e-12
    if grad:   # (a float32 weight's gradient: float64 sums rounded, possibly in another order)
        assert gw.dtype == wdt and rel_err(gx, rx) < 1e-12
        assert rel_err(gw, rw) < (1e-12 if wdt == torch.float64 else 1e-6)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", META_CASES)
def test_cpu_float64_conv_and_gdn_match_pytorch(case, grad):
    """The CPU side of the CUDA test below (the same comparison): float64 conv + (I)GDN and its
    gradients equal PyTorch's float64 conv and the (I)GDN written out."""
    _float64_conv_and_gdn_vs_plain(case, grad, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("wdt", [torch.float64, torch.float32])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("case", META_CASES)
def test_cuda_float64_matches_pytorch_without_the_triton_kernels(case, grad, wdt, monkeypatch):
    """float64 CUDA x under the default backend (Triton on a GPU): PyTorch's float64
    convolution of the slice (cuDNN) and its gradients, float32 weights cast to float64 as the
    Triton path casts them, the fused-GDN argument run after it by the GDN op (which sends
    float64 to PyTorch too), no Triton conv kernel called."""
    _no_triton_conv(monkeypatch)
    _float64_conv_and_gdn_vs_plain(case, grad, "cuda", wdt)


# -- state a call under torch.inference_mode() leaves behind, then a call outside it ------------
def test_autocast_conv_after_inference_mode_input_grad():
    """bf16 autocast on a 1-channel input (the route that casts the full weight through the
    cast cache): a call under inference_mode had cached the cast weight as an inference tensor;
    the next call recording a gradient for x (frozen weights) failed ("Inference tensors cannot
    be saved for backward")."""
    fresh_op_caches()
    torch.manual_seed(0)
    w, b, x = torch.randn(8, 4, 3, 3), torch.randn(8), torch.randn(1, 1, 6, 6)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        slim_conv2d(x, w, b, padding=1)
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = slim_conv2d(xg, w, b, padding=1)
    y.float().sum().backward()
    ref = F.conv2d(x.double(), w[:, :1].double(), b.double(), padding=1)
    assert rel_err(y, ref) < 1e-2
    xr = x.double().requires_grad_()
    F.conv2d(xr, w[:, :1].double(), b.double(), padding=1).sum().backward()
    assert rel_err(xg.grad, xr.grad) < 1e-2


def test_autocast_transposed_conv_after_inference_mode_input_grad():
    fresh_op_caches()
    torch.manual_seed(0)
    w, x = torch.randn(4, 48, 5, 5), torch.randn(1, 1, 4, 4)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        slim_conv_transpose2d(x, w, stride=2, padding=2, output_padding=1)
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = slim_conv_transpose2d(xg, w, stride=2, padding=2, output_padding=1)
    y.float().sum().backward()
    xr = x.double().requires_grad_()
    F.conv_transpose2d(xr, w[:1].double(), stride=2, padding=2,
                       output_padding=1).sum().backward()
    assert rel_err(xg.grad, xr.grad) < 1e-2


def test_transposed_conv_weight_grad_after_inference_mode():
    """A transposed conv onto few channels (the image layer: the sub-pixel route) under
    inference_mode had cached its tap-index tensor as an inference tensor; training the weight
    afterwards failed ("Inference tensors cannot be saved for backward")."""
    fresh_op_caches()
    torch.manual_seed(0)
    w = (torch.randn(48, 3, 9, 9) * 0.02).requires_grad_()
    x = torch.randn(1, 48, 4, 4)
    with torch.inference_mode():
        slim_conv_transpose2d(x, w, stride=4, padding=4, output_padding=3)
    slim_conv_transpose2d(x, w, stride=4, padding=4, output_padding=3).sum().backward()
    ref_w = w.detach().double().requires_grad_()
    F.conv_transpose2d(x.double(), ref_w, stride=4, padding=4, output_padding=3).sum().backward()
    assert rel_err(w.grad, ref_w.grad) < 1e-5


def test_fp16_weights_of_a_transposed_conv_under_bf16_autocast():
    """F.conv_transpose2d runs fp16 parameters under bf16 CPU autocast; the no-grad direct AMX
    route's weight preparation had failed inside torch ("Unexpected floating ScalarType in
    at::autocast::prioritize": CPU autocast's cat of the fp16 slice)."""
    fresh_op_caches()
    torch.manual_seed(0)
    w = (torch.randn(48, 48, 5, 5) * 0.03).half()
    b = (torch.randn(48) * 0.1).half()
    x = torch.randn(1, 48, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = slim_conv_transpose2d(x, w, b, stride=2, padding=2, output_padding=1, out_width=47)
    ref = F.conv_transpose2d(x.double(), w[:, :47].double(), b[:47].double(), stride=2,
                             padding=2, output_padding=1)
    assert y.dtype == torch.bfloat16 and rel_err(y, ref) < 2e-2


def test_an_empty_batch_through_a_transposed_conv_onto_few_channels_has_gradients():
    """N = 0 (documented as fine): the sub-pixel route's pixel_shuffle backward had refused it
    ("PixelShuffleBackward0 returned an invalid gradient"); F.conv_transpose2d gives zeros."""
    w = torch.randn(8, 3, 9, 9, requires_grad=True)
    x = torch.randn(0, 8, 4, 4, requires_grad=True)
    y = slim_conv_transpose2d(x, w, stride=4, padding=4, output_padding=3)
    assert y.shape == (0, 3, 16, 16)
    y.sum().backward()
    assert x.grad.shape == x.shape and float(w.grad.abs().sum()) == 0.0


def test_the_earlier_public_names_still_import():
    """(clear_cpu_caches, kept as clear_weight_caches' earlier name, and the kernels' GDN
    reference gdn_torch_reference were removed as unused this sitting: code importing them
    broke.)"""
    from slimkernels.ops import conv as conv_mod
    from slimkernels.ops import gdn_reference
    assert conv_mod.clear_cpu_caches is conv_mod.clear_weight_caches
    pytest.importorskip("triton")
    from slimkernels.kernels.gdn import gdn_torch_reference
    x, beta, gamma = torch.rand(1, 4, 3, 3), torch.ones(4), 0.1 * torch.eye(4)
    assert torch.equal(gdn_torch_reference(x, beta, gamma), gdn_reference(x, beta, gamma))


@pytest.mark.parametrize("transposed", [False, True])
def test_arguments_that_are_not_tensors_are_a_type_error_naming_them(transposed):
    """A numpy x had been read by the shape check ("x must be a 4-D tensor, got (1, 8, 9, 9)",
    its own shape) and a numpy GDN parameter failed with an AttributeError."""
    import numpy as np
    op = slim_conv_transpose2d if transposed else slim_conv2d
    name = op.__name__
    w, b = _full("dec1" if transposed else "enc2", transposed, 5, torch.float32)
    x = torch.rand(1, 8, 9, 9)
    gdn = (torch.ones(192), 0.1 * torch.eye(192))
    for args, kw, what in (((x.numpy(), w, b), {}, "x"), ((x, w.numpy(), b), {}, "weight"),
                           ((x, w, b.tolist()), {}, "bias"),
                           ((x, w, b), {"gdn" if not transposed else "igdn": (gdn[0].numpy(),
                                                                               gdn[1])}, "beta")):
        with pytest.raises(TypeError, match=rf"{what} must be a torch\.Tensor.*, got "
                                            rf"(numpy\.ndarray: convert it with torch\.from_numpy"
                                            rf"\({what}\)|list)"):
            op(*args, stride=2, padding=2, **kw)
    y = op(x, w, b, stride=2, padding=2, gdn=gdn) if not transposed else \
        op(x, w, b, stride=2, padding=2, igdn=gdn)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("op", [slim_conv2d, slim_conv_transpose2d])
def test_a_stride_or_padding_beyond_any_image_is_named(op):
    """(stride=2**63 failed in a long pybind TypeError, 2**40 in oneDNN's "could not construct a
    memory descriptor".)"""
    x, w = torch.rand(1, 4, 8, 8), torch.rand(4, 4, 3, 3)
    for kw in (dict(stride=2 ** 63), dict(stride=2 ** 40), dict(stride=2 ** 24),
               dict(stride=2, padding=2 ** 40)):
        what = "stride" if kw["stride"] > 2 else "padding"
        with pytest.raises(ValueError, match=rf"{op.__name__}: {what} \d+ is beyond any image "
                                             r"\(at most 16777215\)"):
            op(x, w, **kw)
    assert op(x, w, stride=3, padding=1).shape[:2] == (1, 4)


# -- CPUs whose oneDNN has no bf16 / fp16 (no AVX-512, e.g. a Zen 3 EPYC) ---------------------
@pytest.mark.parametrize("tr", [False, True])
@pytest.mark.parametrize("leaves", ["fp32 autocast", "bf16"])
@pytest.mark.parametrize("grad", [False, True])
def test_half_convs_run_in_float32_where_onednn_has_no_half(monkeypatch, tr, leaves, grad):
    """Where torch's oneDNN has no bf16 (``_raw.onednn_half`` False: no AVX-512), torch's bf16
    convs fall back to ATen's im2col ones: ~100x slower than float32 and, on a Zen 3 EPYC,
    1.6e-2 relative error on a 16 -> 8 8x8 transposed conv (float32-and-round: 2.8e-3). The ops
    run every bf16 conv there in float32 (the float32 op itself on float32 weights, its CPU
    kernels and caches) and round: no conv or GEMM receives a bf16 tensor, and the result is
    the float32 op's, rounded, bit for bit (the patch makes any CPU that machine)."""
    monkeypatch.setattr(conv_mod, "_onednn_half", lambda dt: False, raising=False)
    torch.manual_seed(5)
    ci, co = 24, 16
    wshape = (ci, co, 5, 5) if tr else (co, ci, 5, 5)
    x, w, b = torch.randn(1, ci, 12, 10), torch.randn(wshape) * 0.1, torch.randn(co) * 0.1
    if leaves == "bf16":
        x, w, b = x.bfloat16(), w.bfloat16(), b.bfloat16()
    kw = dict(stride=2, padding=2, **({"output_padding": 1} if tr else {}))
    op = slim_conv_transpose2d if tr else slim_conv2d
    with torch.no_grad(), GemmDtypes():   # the float32 op on the same values (and path), rounded
        ref = op(x.float(), w.float(), b.float(), **kw).bfloat16()
    leaf = [t.clone().requires_grad_(grad) for t in (x, w, b)]
    with GemmDtypes() as rec, torch.autocast("cpu", torch.bfloat16, enabled=leaves != "bf16"):
        y = op(*leaf, **kw)
    assert rec.seen and all(dt == torch.float32 for _, dt in rec.seen), rec.seen
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)
    if grad:
        y.float().square().sum().backward()
        for t in leaf:
            assert t.grad is not None and t.grad.dtype == t.dtype
            assert torch.isfinite(t.grad.float()).all()


def test_half_convs_are_within_one_rounding_of_float64_here():
    """On this machine's own path (oneDNN's bf16 where it has it, float32-and-round where it
    does not): bf16 convs of SlimCAE's four geometries within 1e-2 of float64 (the no-AVX-512
    fallback of torch had the transposed 16 -> 8 8x8 conv at 1.6e-2)."""
    torch.manual_seed(6)
    for tr, ci, co, k, s, p, op, H, W in [(True, 16, 8, 8, 1, 0, 0, 6, 5),
                                          (False, 3, 48, 9, 4, 4, 0, 32, 24),
                                          (False, 48, 48, 5, 2, 2, 0, 16, 12),
                                          (True, 48, 48, 5, 2, 2, 1, 8, 6),
                                          (True, 48, 3, 9, 4, 4, 3, 8, 6)]:
        wshape = (ci, co, k, k) if tr else (co, ci, k, k)
        x = torch.randn(1, ci, H, W).bfloat16()
        w = (torch.randn(wshape) / (ci * k) ** 0.5).bfloat16()
        b = (torch.randn(co) * 0.1).bfloat16()
        kw = dict(stride=s, padding=p, **({"output_padding": op} if tr else {}))
        f64 = (F.conv_transpose2d if tr else F.conv2d)(x.double(), w.double(), b.double(), **kw)
        with torch.no_grad():
            y = (slim_conv_transpose2d if tr else slim_conv2d)(x, w, b, **kw)
        assert y.dtype == torch.bfloat16
        assert rel_err(y, f64) < 1e-2, (tr, ci, co, k)
