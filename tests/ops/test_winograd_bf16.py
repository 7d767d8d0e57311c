"""bf16 Winograd (the bf16 path of slimkernels.ops.winograd, AVX512-BF16 CPUs): the bf16 GEMM
against float64 of its bf16 operands, the input transform's bf16 input and output against the
fp32 transform and torch's rounding, whole convs against the float64 reference of the same
algorithm (operands rounded to bf16), the conv op's dispatch, and the bundled model's RD."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from slimkernels.ops import conv as conv_mod
from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
from slimkernels.ops import winograd as Wg

_FLAGS = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
needs_transforms = pytest.mark.skipif(not Wg.winograd_available(),
                                      reason="no AVX2 + FMA here or _cpu_kernels not built")
needs_bf16 = pytest.mark.skipif(not Wg.gemm_bf16_available(),
                                reason="no AVX512-BF16 here or _cpu_kernels not built")
# Against the float64 reference of the same algorithm (V and U rounded to bf16 as the kernels
# round them): what is left is the final rounding of y to bf16 (half an ulp: 2e-3 of |y|) and
# the rare V element whose fp32 value rounds to the other bf16 neighbour than its float64 value.
# Measured over 12 seeds x 5 shapes: max 3.3e-3 of the largest output, norm 1.7e-3. Skipping the
# rounding of either operand in the reference reads 3e-2 .. 1e-1 (the bf16 algorithm's own
# error against exact float64: 10-20x a direct bf16 conv's), a wrong tap or tile O(1).
TOL_MAX, TOL_NORM = 5e-3, 2.5e-3


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _errs(y, ref):
    """(max |y - ref| / max |ref|, ||y - ref|| / ||ref||); y finite and of ref's shape."""
    assert y.shape == ref.shape, (tuple(y.shape), tuple(ref.shape))
    assert torch.isfinite(y).all(), "NaN/Inf in the result"
    d = y.double() - ref
    return (d.abs().max() / ref.abs().max()).item(), (d.norm() / ref.norm()).item()


def _case(N, ci, co, H, W, k, transposed, seed):
    g = _gen(seed)
    x = torch.randn(N, ci, H, W, generator=g).to(torch.bfloat16)
    shape = (ci, co, k, k) if transposed else (co, ci, k, k)
    w = torch.randn(*shape, generator=g) / (ci * k * k / (4 if transposed else 1)) ** 0.5
    return x, w, torch.randn(co, generator=g)


# -- the bf16 GEMM ---------------------------------------------------------------------------
def test_gemm_bf16_available_matches_the_cpu():
    K = Wg._kernels()
    if K is None or not hasattr(K, "batched_gemm_bf16_available"):
        pytest.skip("kernels not built or switched off")
    want = all(f" {f}" in _FLAGS for f in ("avx512f", "avx512bw", "avx512vl", "avx512_bf16"))
    assert bool(K.batched_gemm_bf16_available()) == want


@needs_bf16
@pytest.mark.parametrize("B, T, K, N", [
    (36, 242, 768, 192),  # SlimCAE's w=192 enc2 round: 4 groups of 3 vectors, 12 pair blocks
    (36, 37, 288, 72),    # 72 columns: a 3-vector and a 2-vector group (8 lanes last)
    (2, 5, 7, 3),         # odd K: the last element read alone; fewer rows than a tile
    (3, 17, 1, 16),       # K = 1: one lone element
    (1, 64, 33, 200),     # 13 vectors, odd K across a block of 64
    (36, 130, 129, 97),   # rows across two work blocks, odd K past two blocks, 1 lane last
])
def test_gemm_bf16_matches_float64_of_its_operands(B, T, K, N):
    g = _gen(B * 1000 + N + K)
    V = torch.randn(B, T, K, generator=g).to(torch.bfloat16)
    U = torch.randn(B, K, N, generator=g)
    Up = Wg.pack_bf16_pairs(U)
    guard = torch.full((B * T * N + 64,), 7.0)   # the tail past M must stay untouched
    M = guard[:B * T * N].view(B, T, N)
    ref = torch.bmm(V.double(), U.to(torch.bfloat16).double())
    for nt in (1, 2):
        M.fill_(float("nan"))                    # written, not read
        Wg._kernels().batched_gemm_bf16(V.data_ptr(), Up.data_ptr(), M.data_ptr(), B, T, K, N, nt)
        assert _errs(M, ref)[0] < 1e-5
        assert (guard[B * T * N:] == 7.0).all()


@needs_bf16
def test_gemm_bf16_nan_stays_in_its_row():
    g = _gen(5)
    V = torch.randn(1, 16, 64, generator=g).to(torch.bfloat16)
    V[0, 3, 10] = float("nan")
    U = torch.randn(1, 64, 48, generator=g)
    M, Up = torch.empty(1, 16, 48), Wg.pack_bf16_pairs(U)  # (held: read by address)
    Wg._kernels().batched_gemm_bf16(V.data_ptr(), Up.data_ptr(), M.data_ptr(), 1, 16, 64, 48, 1)
    assert torch.isnan(M[0, 3]).all()
    assert torch.isfinite(torch.cat([M[0, :3], M[0, 4:]])).all()


@needs_bf16
def test_gemm_bf16_refuses_bad_arguments():
    K = Wg._kernels()
    V, M = torch.zeros(1, 2, 4, dtype=torch.bfloat16), torch.empty(1, 2, 4)
    U = Wg.pack_bf16_pairs(torch.ones(1, 4, 4))
    for args in [(0, U.data_ptr(), M.data_ptr(), 1, 2, 4, 4),
                 (V.data_ptr(), U.data_ptr(), 0, 1, 2, 4, 4),
                 (V.data_ptr(), U.data_ptr(), M.data_ptr(), 1, 0, 4, 4),
                 (V.data_ptr(), U.data_ptr(), M.data_ptr(), 1, 2, -4, 4)]:
        with pytest.raises(RuntimeError, match="batched_gemm_bf16: bad arguments"):
            K.batched_gemm_bf16(*args, 1)


def test_pack_bf16_pairs_layout():
    U = torch.randn(36, 5, 3)
    P = Wg.pack_bf16_pairs(U)
    assert P.shape == (36, 3, 3, 2) and P.dtype == torch.bfloat16 and P.is_contiguous()
    for k in range(5):
        assert torch.equal(P[:, k // 2, :, k % 2], U[:, k].to(torch.bfloat16))
    assert (P[:, 2, :, 1] == 0).all()           # the partner of an odd K's last row
    with pytest.raises(ValueError, match=r"\[B, K, N\]"):
        Wg.pack_bf16_pairs(torch.randn(5, 3))


# -- the input transform with bf16 x and / or bf16 V ---------------------------------------------
@needs_transforms
@pytest.mark.parametrize("C", [5, 8, 13, 48])
def test_input_transform_reads_and_writes_bf16(C):
    """bf16 x is widened exactly (V equals the fp32 transform of x.float(), bit for bit); bf16 V
    is the fp32 V rounded as torch rounds (bit for bit, NaN kept NaN); nothing past V written."""
    K = Wg._kernels()
    N, H, W, s, P = 2, 13, 11, 2, 2
    th, tw = -(-((H + 2 * P - 5) // s + 1) // 4), -(-((W + 2 * P - 5) // s + 1) // 4)
    T, kd = N * th * tw, s * s * C
    g = _gen(C)
    x = torch.randn(N, C, H, W, generator=g).to(torch.bfloat16)
    x[1, C - 1, 3, 4] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last)
    xf = x.float().contiguous(memory_format=torch.channels_last)

    def run(src, x_bf16, v_dtype):
        buf = torch.full((36 * T * kd + 32,), 3.0).to(v_dtype)
        K.winograd_input(src.data_ptr(), N, H, W, C, s, P, th, tw, 0, T, buf.data_ptr(), 2,
                         x_bf16=x_bf16, V_bf16=v_dtype == torch.bfloat16)
        assert (buf[36 * T * kd:] == 3.0).all()
        return buf[:36 * T * kd]
    v32 = run(xf, False, torch.float32)
    assert torch.equal(run(x, True, torch.float32).view(torch.int32), v32.view(torch.int32))
    want = v32.to(torch.bfloat16)
    assert torch.isnan(want).any()
    for src, xb in ((xf, False), (x, True)):
        got = run(src, xb, torch.bfloat16)
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        fin = ~torch.isnan(want)
        assert torch.equal(got[fin].view(torch.int16), want[fin].view(torch.int16))


# -- whole convs ---------------------------------------------------------------------------
CASES = [(1, 48, 48, 37, 29), (2, 7, 5, 16, 16), (1, 144, 160, 32, 40), (1, 72, 72, 33, 41)]


@needs_bf16
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_conv_matches_the_reference_of_the_same_algorithm(case, transposed):
    N, ci, co, H, W = case
    x, w, b = _case(N, ci, co, H, W, 5, transposed, seed=ci + co)
    if transposed:
        U = Wg.pack_bf16_pairs(Wg.winograd_conv_transpose2d_weight(w, 2, 2))
        y = Wg.conv_transpose2d_winograd(x, U, b, 5, 2, 2, 1)
        ref = Wg.conv_transpose2d_winograd_reference(x.double(), w.double(), b.double(), 2, 2,
                                                     1, operands=torch.bfloat16)
        exact = F.conv_transpose2d(x.double(), w.double(), b.double(), 2, 2, 1)
    else:
        U = Wg.pack_bf16_pairs(Wg.winograd_conv2d_weight(w, 2))
        y = Wg.conv2d_winograd(x, U, None if ci == 7 else b, 5, 2, 2)
        ref = Wg.conv2d_winograd_reference(x.double(), w.double(), None if ci == 7 else b.double(),
                                           2, 2, operands=torch.bfloat16)
        exact = F.conv2d(x.double(), w.double(), None if ci == 7 else b.double(), 2, 2)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    e_max, e_norm = _errs(y, ref)
    assert e_max < TOL_MAX and e_norm < TOL_NORM
    # the reference models the bf16 operands: against exact float64 the error is far larger
    assert _errs(ref, exact)[1] > 4 * e_norm


@needs_transforms
def test_bf16_x_with_fp32_weights_runs_the_fp32_gemm():
    """bf16 x with fp32 transformed weights: the fp32 algorithm on the widened x; bf16 out."""
    x, w, b = _case(1, 16, 24, 20, 20, 5, False, seed=3)
    y = Wg.conv2d_winograd(x, Wg.winograd_conv2d_weight(w, 2), b, 5, 2, 2)
    ref = F.conv2d(x.double(), w.double(), b.double(), 2, 2)
    assert y.dtype == torch.bfloat16
    assert _errs(y, ref)[0] < 2 ** -8 + 2e-5       # the final rounding to bf16 only


@needs_bf16
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_bf16_output_is_the_fp32_output_rounded(transposed):
    """The output transform writes a bf16 y itself: bit for bit the fp32 y of the same
    products rounded by torch (both algorithms: fp32 weights and bf16 pairs)."""
    x, w, _ = _case(2, 47, 13, 9, 11, 5, transposed, seed=8)
    if transposed:
        U = Wg.winograd_conv_transpose2d_weight(w, 2, 2)

        def f(xx, UU):
            return Wg.conv_transpose2d_winograd(xx, UU, None, 5, 2, 2, 1)
    else:
        U = Wg.winograd_conv2d_weight(w, 2)

        def f(xx, UU):
            return Wg.conv2d_winograd(xx, UU, None, 5, 2, 2)
    for UU in (U, Wg.pack_bf16_pairs(U)):
        y, y32 = f(x, UU), f(x.float(), UU)     # bf16 x widens exactly: the same products
        assert y.dtype == torch.bfloat16 and y32.dtype == torch.float32
        assert torch.isfinite(y32).all()
        assert torch.equal(y, y32.to(torch.bfloat16))


@needs_transforms
def test_bad_bf16_weights_are_refused(monkeypatch):
    x, w, b = _case(1, 8, 8, 12, 12, 5, False, seed=4)
    U = Wg.pack_bf16_pairs(Wg.winograd_conv2d_weight(w, 2))
    with pytest.raises(ValueError, match="does not fit"):
        Wg.conv2d_winograd(x[:, :4], U, b, 5, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        Wg.conv2d_winograd(x, U[..., 0], b, 5, 2, 2)
    with pytest.raises(ValueError, match="does not fit"):
        Wg.conv2d_winograd(x, U.float(), b, 5, 2, 2)
    monkeypatch.setattr(Wg, "GEMM_BF16", False)
    with pytest.raises(ValueError, match="AVX512-BF16 GEMM"):
        Wg.conv2d_winograd(x, U, b, 5, 2, 2)


@needs_transforms
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_weight_gradients_refuse_bf16_x(transposed):
    """The weight gradients (and the training Functions whose backward runs them) are fp32 only:
    bf16 x is refused with a ValueError before any kernel reads it (the input transform would
    read it as fp32: past its end)."""
    x, w, b = _case(1, 8, 8, 12, 12, 5, transposed, seed=6)
    gy_shape = (F.conv_transpose2d(x.float(), w, None, 2, 2, 1) if transposed
                else F.conv2d(x.float(), w, None, 2, 2)).shape
    gy = torch.randn(gy_shape)
    grad = Wg.conv_transpose2d_weight_grad if transposed else Wg.conv2d_weight_grad
    with pytest.raises(ValueError, match="fp32"):
        grad(x.to(torch.bfloat16), gy, 5, 2, 2)
    fn = Wg.WinogradConvTranspose2dFunction if transposed else Wg.WinogradConv2dFunction
    args = (2, 2, 1) if transposed else (2, 2)
    with pytest.raises(ValueError, match="fp32"):
        fn.apply(x.to(torch.bfloat16).requires_grad_(), w.requires_grad_(), b, *args)
    dw = grad(x.float(), gy, 5, 2, 2)                       # fp32 still runs, and is right
    wd = w.detach().double().requires_grad_()
    yd = F.conv_transpose2d(x.double(), wd, None, 2, 2, 1) if transposed \
        else F.conv2d(x.double(), wd, None, 2, 2)
    (gdw,) = torch.autograd.grad(yd, wd, gy.double())
    assert torch.isfinite(dw).all()
    assert float((dw.double() - gdw).abs().max()) <= 1e-5 * float(gdw.abs().max())


# -- dispatch from the conv ops --------------------------------------------------------------
def _as_if_no_amx(monkeypatch):
    """The routes of an AVX512-BF16 CPU without AMX (the Zen 4) on any CPU: no AMX GEMM tiles
    (``_amx``) and no direct AMX conv kernel, which AMX CPUs try first."""
    monkeypatch.setattr(conv_mod, "_amx", lambda: False)
    monkeypatch.setattr(conv_mod, "_amx_conv_kernels", lambda: None)


def _count_calls(monkeypatch, name):
    calls = []
    real = getattr(Wg, name)

    def spy(*a, **k):
        calls.append(k_dtype(a))
        return real(*a, **k)
    monkeypatch.setattr(Wg, name, spy)
    return calls


def k_dtype(args):
    """The transformed weight's dtype of a conv2d_winograd / conv_transpose2d_winograd call."""
    return args[1].dtype


@needs_bf16
def test_no_grad_bf16_convs_take_bf16_winograd_from_enough_channels(monkeypatch):
    """Under bf16 autocast without gradient, on AVX512-BF16 CPUs without AMX: 5x5/2 convs and
    transposed convs with ``WINOGRAD_BF16_MIN_C`` channels on both sides and
    ``WINOGRAD_MIN_TILES_WIDE`` tiles run by bf16 Winograd (values as the reference of the
    algorithm); fewer channels or tiles, a gradient, AMX or the switches off: not."""
    _as_if_no_amx(monkeypatch)
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_BF16", True)
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_BF16_TRANSPOSED", True)   # (off by default)
    conv = _count_calls(monkeypatch, "conv2d_winograd")
    convt = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    c = conv_mod.WINOGRAD_BF16_MIN_C
    x, w, b = _case(1, c, c, 32, 32, 5, False, seed=11)          # 16x16 output: 16 tiles
    xt, wt, bt = _case(1, c, c, 16, 16, 5, True, seed=12)        # 16 input tiles
    x, xt = x.float(), xt.float()

    def run(conv_kw=None, convt_x=xt, grad=False):
        """One conv and one transposed conv; returns the calls each made."""
        conv.clear(), convt.clear()
        ww = w.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            kw = conv_kw or {}
            y = slim_conv2d(kw.get("x", x), ww, b, stride=2, padding=2,
                            out_width=kw.get("out_width"))
            yt = slim_conv_transpose2d(convt_x, wt, bt, stride=2, padding=2, output_padding=1)
        return (list(conv), list(convt)), (y, yt)
    calls, (y, yt) = run()
    assert calls == ([torch.bfloat16], [torch.bfloat16])
    ref = Wg.conv2d_winograd_reference(x.double(), w.double(), b.double(), 2, 2,
                                       operands=torch.bfloat16)
    reft = Wg.conv_transpose2d_winograd_reference(xt.double(), wt.double(), bt.double(), 2, 2, 1,
                                                  operands=torch.bfloat16)
    # (autocast rounds x to bf16: x already holds bf16 values)
    assert max(_errs(y, ref)[0], _errs(yt, reft)[0]) < TOL_MAX
    # too narrow (c - 1 outputs; c - 1 inputs), too few tiles (12x12 outputs: 9; 12x12 inputs: 9)
    assert run({"out_width": c - 1}, xt[:, :c - 1])[0] == ([], [])
    assert run({"x": x[:, :, :24, :24]}, xt[:, :, :12, :12])[0] == ([], [])
    assert run(grad=True)[0][0] == []                         # a gradient: oneDNN
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_BF16", False)
    assert run()[0] == ([], [torch.bfloat16])
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_BF16_TRANSPOSED", False)
    assert run()[0] == ([], [])
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_BF16", True)
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_BF16_TRANSPOSED", True)
    monkeypatch.setattr(conv_mod, "_amx", lambda: True)           # AMX CPUs: their own kernels
    monkeypatch.setattr(conv_mod, "_conv2d_amx_if_eligible", lambda *a: None)
    monkeypatch.setattr(conv_mod, "_conv_transpose2d_amx_if_eligible", lambda *a: None)
    assert run()[0] == ([], [])


# -- the bundled model ---------------------------------------------------------------------------
def _sample():
    from slimkernels.io import read_image
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return read_image(os.path.join(here, "slimkernels", "assets", "sample.png"))[0]


@needs_bf16
@pytest.mark.parametrize("width", [192, 144])
def test_bundled_encoder_with_bf16_winograd_keeps_the_latents(monkeypatch, width):
    """The bundled model's bf16 analysis transform, enc2 by bf16 Winograd (counted), on the
    sample image: >= 99 % of the quantized latents equal fp32's (measured 99.56 % at w=192 and
    99.74 % at 144; the direct bf16 encoder 99.69 / 99.82 %: Winograd's extra error moves
    latents that sit at a rounding boundary, ~0.004 dB on Kodak)."""
    from slimkernels.pretrained import load_model
    _as_if_no_amx(monkeypatch)
    conv = _count_calls(monkeypatch, "conv2d_winograd")
    model, x = load_model(), _sample()
    eb = model.entropy_bottleneck.for_width(width)
    sym = {}
    for p in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
            sym[p] = eb.quantize_symbols(model.encode(x, width).float())
    assert conv.count(torch.bfloat16) == 1          # (fp32 runs Winograd too, on fp32 weights)
    assert (sym["bf16"] == sym["fp32"]).float().mean().item() >= 0.99


@needs_bf16
@pytest.mark.parametrize("width", [192, 144])
def test_bundled_decoder_with_bf16_winograd(monkeypatch, width):
    """With ``CPU_WINOGRAD_BF16_TRANSPOSED`` (off by default), dec2 by bf16 Winograd (counted):
    the sample image decoded in bf16 from fp32's file is within 50 dB PSNR of fp32's decoding
    (measured 53.7 / 53.3 dB at w = 192 / 144; the direct bf16 decoder 54.5 / 54.4) and loses
    at most 0.05 dB against the original."""
    from slimkernels.pretrained import load_model
    _as_if_no_amx(monkeypatch)
    monkeypatch.setattr(conv_mod, "CPU_WINOGRAD_BF16_TRANSPOSED", True)
    convt = _count_calls(monkeypatch, "conv_transpose2d_winograd")
    model, x = load_model(), _sample()

    def psnr(a, b):
        mse = ((torch.round(a.clamp(0, 1) * 255) - torch.round(b.clamp(0, 1) * 255)) ** 2).mean()
        return 10 * math.log10(255 ** 2 / mse.item())
    data = model.compress(x, width, precision="fp32")
    y32 = model.decompress(data, precision="fp32")
    assert torch.bfloat16 not in convt              # (fp32 runs Winograd too, on fp32 weights)
    y16 = model.decompress(data, precision="bf16")
    assert convt.count(torch.bfloat16) == 1
    assert psnr(y16, y32) >= 50
    assert psnr(y32, x) - psnr(y16, x) < 0.05
