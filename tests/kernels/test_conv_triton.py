"""Triton width-sliced conv / transposed conv under the interpreter (CPU tensors), vs PyTorch.

References are ``F.conv2d`` / ``F.conv_transpose2d`` (and eager GDN) in float64. Spatial sizes are
tiny (the interpreter is slow) but cover every SlimCAE layer shape, odd sizes and odd widths.

The "exact" tests run in float64 under the interpreter (to 1e-12). The GPU kernels take no
float64, so on a GPU the same tests run in fp32 with TF32 off (tests/conftest.py) to 1e-5;
``SLIMKERNELS_TEST_EXACT=float32`` runs that variant under the interpreter too.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from slimkernels.backend import interpreter_enabled, triton_available

pytestmark = [pytest.mark.interpret,
              pytest.mark.skipif(not (triton_available() and (interpreter_enabled()
                                                              or torch.cuda.is_available())),
                                 reason="needs triton (interpreter or CUDA)")]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
_FP64 = (DEV == "cpu" or interpreter_enabled()) and os.environ.get("SLIMKERNELS_TEST_EXACT") != "float32"
EXACT = torch.float64 if _FP64 else torch.float32  # dtype of the "exact" tests
EXACT_TOL = 1e-12 if _FP64 else 1e-5
OTHER = torch.float32 if _FP64 else torch.bfloat16  # a dtype that is not EXACT
# SlimCAE layers: (kind, C_in, C_out, k, stride, pad, output_padding, input H, W)
W_MAX = 192


def _K():
    from slimkernels.kernels import conv as K
    return K


def _refused_on_gpu(co, dtype):
    """True (after checking the refusal) where the fused (I)GDN epilogue does not take ``co``
    channels of ``dtype`` on this GPU (fp32 above 128 channels spills: refused by design)."""
    K = _K()
    if K.fused_gdn_supported(co, dtype):
        return False
    beta, gamma = _gdn_params(W_MAX)
    wt, b = _params(W_MAX, 8, 3, dtype)
    with pytest.raises(ValueError, match=f"fused GDN for C_out={co}.*gdn=None"):
        K.conv2d_fwd(_x(1, 8, 5, 5, dtype), wt, b, padding=1, out_width=co, gdn=(beta, gamma))
    return True


def rel_err(y, r):
    assert torch.isfinite(y).all(), "non-finite output"
    return ((y.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-30)).item()


def _params(co_max, ci_max, k, dtype, transposed=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (ci_max, co_max, k, k) if transposed else (co_max, ci_max, k, k)
    w = (torch.randn(shape, generator=g, dtype=torch.float64) / (k * (ci_max ** 0.5))).to(DEV, dtype)
    b = torch.randn(co_max, generator=g, dtype=torch.float64).to(DEV, dtype)
    return w, b


def _gdn_params(c_max, seed=1):
    g = torch.Generator().manual_seed(seed)
    beta = (torch.rand(c_max, generator=g, dtype=torch.float64) + 0.5).to(DEV, EXACT)
    gamma = (torch.rand(c_max, c_max, generator=g, dtype=torch.float64) * 0.1).to(DEV, EXACT)
    return beta, gamma


def _x(n, c, h, w, dtype, cl=False, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(DEV, dtype)
    return x.to(memory_format=torch.channels_last) if cl else x


# ---------------------------------------------------------------------------------- forward conv
@pytest.mark.parametrize("ci,co,k,s,p,h,w", [
    (3, 47, 9, 4, 4, 13, 17),      # encoder layer 1 (FLAT_K path), odd width
    (3, 192, 9, 4, 4, 9, 11),      # encoder layer 1 at full width
    (1, 1, 3, 1, 1, 5, 6),         # width 1
    (3, 3, 5, 2, 2, 9, 11),        # width 3
    (47, 47, 5, 2, 2, 9, 11),      # encoder layer 2/3 at odd width
    (72, 72, 5, 2, 2, 7, 9),       # w=72 (not a multiple of 32)
    (192, 192, 5, 2, 2, 5, 7),     # full width
    (20, 33, 3, 1, 0, 6, 5),       # general: 3x3 stride 1 no padding
    (17, 9, 4, 3, 1, 10, 8),       # general: even kernel, stride 3
])
def test_conv_fwd_float64(ci, co, k, s, p, h, w):
    K = _K()
    wt, b = _params(co + 3, ci + 5, k, EXACT)
    x = _x(2 if co < 100 else 1, ci, h, w, EXACT)
    y = K.conv2d_fwd(x, wt, b, stride=s, padding=p, out_width=co)
    r = F.conv2d(x, wt[:co, :ci], b[:co], stride=s, padding=p)
    assert y.shape == r.shape
    assert rel_err(y, r) < EXACT_TOL


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2),
                                       (torch.float16, 2e-3)])
@pytest.mark.parametrize("cl", [False, True])
def test_conv_fwd_dtypes_layouts(dtype, tol, cl):
    K = _K()
    ci, co = 47, 72
    wt, b = _params(96, 64, 5, dtype)
    x = _x(1, ci, 9, 11, dtype, cl)
    y = K.conv2d_fwd(x, wt, b, stride=2, padding=2, out_width=co)
    r = F.conv2d(x.double(), wt[:co, :ci].double(), b[:co].double(), stride=2, padding=2)
    assert y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert rel_err(y, r) < tol


def test_weight_slice_read_in_place_noncontiguous_weight():
    """A weight that is itself a strided view (e.g. transposed storage) is read via strides."""
    K = _K()
    base = torch.randn(5, 5, 40, 30, dtype=EXACT, device=DEV)
    wt = base.permute(2, 3, 0, 1)  # [40, 30, 5, 5], not contiguous
    x = _x(1, 21, 9, 7, EXACT, cl=True)
    y = K.conv2d_fwd(x, wt, None, stride=2, padding=2, out_width=33)
    r = F.conv2d(x, wt[:33, :21], None, stride=2, padding=2)
    assert rel_err(y, r) < EXACT_TOL


# ---------------------------------------------------------------------------- transposed forward
@pytest.mark.parametrize("ci,co,k,s,p,op,h,w", [
    (47, 47, 5, 2, 2, 1, 5, 6),    # decoder layers 1/2, odd width
    (72, 72, 5, 2, 2, 1, 3, 5),
    (192, 192, 5, 2, 2, 1, 3, 4),
    (1, 1, 5, 2, 2, 1, 3, 4),
    (3, 3, 5, 2, 2, 1, 4, 3),
    (47, 3, 9, 4, 4, 3, 3, 4),     # decoder layer 3
    (192, 3, 9, 4, 4, 3, 2, 3),
    (9, 13, 3, 1, 1, 0, 5, 6),     # general: stride 1
    (8, 6, 4, 3, 0, 2, 3, 4),      # general: even kernel, stride 3, no padding
    (8, 6, 3, 2, 1, 0, 4, 5),      # general: odd output size
    (5, 4, 2, 3, 0, 1, 3, 4),      # kernel smaller than stride: phases without any tap
    (3, 2, 2, 3, 0, 2, 1, 2),      # ... and a last output row no input reaches (bias only)
])
@pytest.mark.parametrize("route", ["phase", "col2im", "col2im_bands"])
def test_conv_transpose_fwd_float64(ci, co, k, s, p, op, h, w, route, monkeypatch):
    """Both routes (TCONV_COL2IM_MAX_COLS forced to 0 / to any size) at every shape; col2im
    also in bands of one output phase row each (TCONV_COL2IM_BAND_BYTES forced to 1)."""
    K = _K()
    monkeypatch.setattr(K, "TCONV_COL2IM_MAX_COLS", 0 if route == "phase" else 10 ** 9)
    if route == "col2im_bands":
        monkeypatch.setattr(K, "TCONV_COL2IM_BAND_BYTES", 1)
    taken = []
    real = K._conv_transpose2d_col2im
    monkeypatch.setattr(K, "_conv_transpose2d_col2im",
                        lambda *a: (taken.append(1), real(*a))[1])
    wt, b = _params(co + 2, ci + 4, k, EXACT, transposed=True)
    x = _x(2 if ci < 100 else 1, ci, h, w, EXACT)
    y = K.conv_transpose2d_fwd(x, wt, b, stride=s, padding=p, output_padding=op, out_width=co)
    r = F.conv_transpose2d(x, wt[:ci, :co], b[:co], stride=s, padding=p, output_padding=op)
    assert y.shape == r.shape and bool(taken) == (route != "phase")
    assert rel_err(y, r) < EXACT_TOL


@pytest.mark.parametrize("h,k,s,p,op", [(128, 9, 4, 4, 3), (7, 5, 2, 2, 1), (5, 4, 3, 0, 2),
                                         (4, 2, 3, 0, 1), (6, 3, 1, 1, 0)])
@pytest.mark.parametrize("rows", [1, 2, 5, 1000])
def test_col2im_bands_cover_the_output(h, k, s, p, op, rows):
    """The bands tile [0, H_out) in order, start on phase rows, read only input rows that
    exist, at most ``rows`` of them beyond what one phase row needs, and each band's padding
    maps its first output row to the right input rows (oh = ih*s - pad + kh)."""
    h_out = (h - 1) * s - 2 * p + k + op
    bands = _K().col2im_bands(h, h_out, k, s, p, rows)
    assert bands[0][0] == 0 and bands[-1][1] == h_out
    for (o0, o1, r0, r1, pad_h), nxt in zip(bands, bands[1:] + [None]):
        assert o0 % s == 0 and o0 < o1 and 0 <= r0 <= r1 <= h
        assert nxt is None or nxt[0] == o1
        for oh in range(o0, o1):                       # every input row that reaches oh ...
            for kh in range(k):
                if (oh + p - kh) % s == 0 and 0 <= (oh + p - kh) // s < h:
                    ih = (oh + p - kh) // s
                    assert r0 <= ih < r1                # ... is in the band, at the same place
                    assert (oh - o0) + pad_h == (ih - r0) * s + kh


@pytest.mark.parametrize("co,k,s", [(3, 9, 4), (5, 5, 2), (2, 2, 3), (4, 3, 1)])
def test_col2im_columns_phase_major(co, k, s):
    """The column order is a permutation of the (co, kh, kw) columns in which each output
    phase's taps, and each tap's channels, are one contiguous run."""
    cols = _K().col2im_columns(co, k, k, s).tolist()
    assert sorted(cols) == list(range(co * k * k))
    decoded = [((c // k) // k, (c // k) % k, c % k) for c in cols]   # (co, kh, kw)
    phases = [(kh % s, kw % s) for _, kh, kw in decoded]
    seen = []
    for p_ in phases:                                  # each phase appears as one run
        if not seen or seen[-1] != p_:
            assert p_ not in seen
            seen.append(p_)
    for j in range(0, len(decoded), co):               # a tap's channels 0..co-1 together
        assert [d[0] for d in decoded[j:j + co]] == list(range(co))
        assert len({d[1:] for d in decoded[j:j + co]}) == 1


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("cl", [False, True])
def test_output_layer_takes_col2im(dtype, tol, cl, monkeypatch):
    """The decoder's output layer (3 x 9 x 9 = 243 columns) takes the col2im route by default,
    without bias too, NCHW or channels_last, from the contiguous weight and from the
    input-channel-contiguous copy the no-grad path hands over; a weight whose (C_out, KH, KW)
    are not one strided axis, or a fused epilogue, takes the phase kernel."""
    K = _K()
    taken = []
    real = K._conv_transpose2d_col2im
    monkeypatch.setattr(K, "_conv_transpose2d_col2im",
                        lambda *a: (taken.append(1), real(*a))[1])
    wt, b = _params(3, 56, 9, dtype, transposed=True)
    x = _x(2, 50, 3, 5, dtype, cl=cl)
    r = F.conv_transpose2d(x.double(), wt[:50].double(), b.double(), stride=4, padding=4,
                           output_padding=3)
    wcopy = wt.permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last).permute(1, 0, 2, 3)
    assert wcopy.stride(0) == 1 and torch.equal(wcopy, wt)
    for w_, bias in ((wt, b), (wcopy, b), (wt, None)):
        y = K.conv_transpose2d_fwd(x, w_, bias, stride=4, padding=4, output_padding=3)
        ref = r if bias is not None else r - b.double()[None, :, None, None]
        assert y.dtype == dtype and y.shape == ref.shape and rel_err(y, ref) < tol
        assert y.is_contiguous(memory_format=torch.channels_last) == cl
    assert len(taken) == 3
    wnc = torch.empty(56, 9, 3, 9, dtype=dtype, device=DEV).permute(0, 2, 1, 3)  # co not outer
    wnc.copy_(wt)
    y = K.conv_transpose2d_fwd(x, wnc, b, stride=4, padding=4, output_padding=3)
    assert len(taken) == 3 and rel_err(y, r) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_conv_transpose_fwd_channels_last(dtype, tol):
    K = _K()
    wt, b = _params(80, 50, 5, dtype, transposed=True)
    x = _x(1, 47, 4, 5, dtype, cl=True)
    y = K.conv_transpose2d_fwd(x, wt, b, stride=2, padding=2, output_padding=1, out_width=72)
    r = F.conv_transpose2d(x.double(), wt[:47, :72].double(), b[:72].double(), stride=2, padding=2,
                           output_padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, r) < tol


# ------------------------------------------------------------------------------- fused GDN/IGDN
def _gdn_ref(y, beta, gamma, inverse):
    c = y.shape[1]
    norm = F.conv2d(y * y, gamma[:c, :c, None, None].to(y.dtype), beta[:c].to(y.dtype))
    return y * torch.sqrt(norm) if inverse else y * torch.rsqrt(norm)


@pytest.mark.parametrize("co", [1, 3, 47, 72, 192])
def test_conv_fused_gdn_vs_unfused(co):
    """BLOCK_N = next_pow2(C_out): 16, 16, 64, 128 and 256 (the split-in-halves epilogue)."""
    K = _K()
    if _refused_on_gpu(co, EXACT):
        return
    ci = 5 if co > 100 else 11
    wt, b = _params(W_MAX, 16, 5, EXACT)
    beta, gamma = _gdn_params(W_MAX)
    x = _x(1, ci, 9, 11, EXACT)
    fused = K.conv2d_fwd(x, wt, b, stride=2, padding=2, out_width=co, gdn=(beta, gamma))
    unfused = _gdn_ref(K.conv2d_fwd(x, wt, b, stride=2, padding=2, out_width=co), beta, gamma, False)
    ref = _gdn_ref(F.conv2d(x, wt[:co, :ci], b[:co], stride=2, padding=2), beta, gamma, False)
    # (the kernel module's own pure-PyTorch reference, next to the kernel, says the same)
    assert rel_err(K.conv2d_reference(x, wt, b, stride=2, padding=2, out_width=co,
                                      gdn=(beta, gamma)), ref) < EXACT_TOL
    assert rel_err(fused, ref) < EXACT_TOL
    assert rel_err(unfused, ref) < EXACT_TOL


@pytest.mark.parametrize("co", [3, 72, 144])
def test_conv_transpose_fused_igdn_output(co):
    K = _K()
    wt, b = _params(W_MAX, 8, 5, EXACT, transposed=True)
    beta, gamma = _gdn_params(W_MAX)
    x = _x(1, 7, 3, 4, EXACT)
    if not K.fused_gdn_supported(co, EXACT):  # the GPU refuses, like the conv above
        with pytest.raises(ValueError, match=f"fused GDN for C_out={co}"):
            K.conv_transpose2d_fwd(x, wt, b, stride=2, padding=2, output_padding=1,
                                   out_width=co, gdn=(beta, gamma), inverse=True)
        return
    y = K.conv_transpose2d_fwd(x, wt, b, stride=2, padding=2, output_padding=1, out_width=co,
                               gdn=(beta, gamma), inverse=True)
    ref = _gdn_ref(F.conv_transpose2d(x, wt[:7, :co], b[:co], stride=2, padding=2,
                                      output_padding=1), beta, gamma, True)
    assert rel_err(K.conv_transpose2d_reference(x, wt, b, stride=2, padding=2, output_padding=1,
                                                out_width=co, gdn=(beta, gamma)), ref) < EXACT_TOL
    assert rel_err(y, ref) < EXACT_TOL


def test_fused_gdn_fp32_and_bf16():
    K = _K()
    beta, gamma = _gdn_params(W_MAX)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        if _refused_on_gpu(144, dtype):  # fp32 on a GPU: 144 channels spill, refused
            continue
        wt, b = _params(W_MAX, 50, 5, dtype)
        x = _x(1, 48, 7, 9, dtype, cl=True)
        y = K.conv2d_fwd(x, wt, b, stride=2, padding=2, out_width=144, gdn=(beta, gamma))
        ref = _gdn_ref(F.conv2d(x.double(), wt[:144, :48].double(), b[:144].double(), stride=2,
                                padding=2), beta, gamma, False)
        assert rel_err(y, ref) < tol, dtype


# --------------------------------------------------------------- weight layout on the Triton path
def _slim_20_of_24(transposed, x, weight, b):
    """The 16 -> 20 channel slice of a 24x24 5x5 stride-2 layer through the ops (Triton)."""
    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    if transposed:
        return slim_conv_transpose2d(x, weight, b, stride=2, padding=2, output_padding=1,
                                     out_width=20, backend="triton")
    return slim_conv2d(x, weight, b, stride=2, padding=2, out_width=20, backend="triton")


def _slim_20_of_24_ref(transposed, x, weight, b):
    """:func:`_slim_20_of_24` in float64 PyTorch."""
    w64, b64 = weight.double(), b.double()
    if transposed:
        return F.conv_transpose2d(x.double(), w64[:16, :20], b64[:20], stride=2, padding=2,
                                  output_padding=1)
    return F.conv2d(x.double(), w64[:20, :16], b64[:20], stride=2, padding=2)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_no_grad_path_reads_an_input_channel_contiguous_weight(monkeypatch, transposed):
    """Without gradient the kernels get a cached copy of the full weight with unit input-channel
    stride (what lets the GPU pipeline the weight tiles), same values: the result matches the
    float64 reference, the copy is made once per weight version and renewed after an in-place
    update; with a gradient (or TRITON_WEIGHT_LAYOUT off) the parameter goes as it is."""
    import slimkernels.ops.conv as oc
    K = _K()
    seen = []
    name = "conv_transpose2d_fwd" if transposed else "conv2d_fwd"
    real = getattr(K, name)

    def spy(x, w, *a, **kw):
        seen.append(w)
        return real(x, w, *a, **kw)
    monkeypatch.setattr(K, name, spy)
    fn = "SlimConvTranspose2dFunction" if transposed else "SlimConv2dFunction"
    real_apply = getattr(K, fn).apply
    monkeypatch.setattr(getattr(K, fn), "apply",
                        lambda x, w, *a: (seen.append(w), real_apply(x, w, *a))[1])
    oc.clear_weight_caches()
    wt, b = _params(24, 24, 5, EXACT, transposed=transposed)
    x = _x(1, 16, 7, 6, EXACT)
    ci_dim = 0 if transposed else 1

    def run(weight):
        return _slim_20_of_24(transposed, x, weight, b)

    def ref(weight):
        return _slim_20_of_24_ref(transposed, x, weight, b)

    assert wt.stride(ci_dim) != 1 and wt.is_contiguous()
    with torch.no_grad():
        y = run(wt)
        assert rel_err(y, ref(wt)) < EXACT_TOL
        first = seen[-1]
        assert first is not wt and first.stride(ci_dim) == 1 and first.shape == wt.shape
        assert torch.equal(first, wt) and first.dtype == wt.dtype
        assert any(t is first for t in oc.cached_weight_copies())   # what CUDA graphs keep
        run(wt)
        assert seen[-1] is first                      # cached while the weight is unchanged
        wt.mul_(2.0)                                  # in-place update: a new version
        y2 = run(wt)
        assert seen[-1] is not first and torch.equal(seen[-1], wt)
        assert rel_err(y2, ref(wt)) < EXACT_TOL
        monkeypatch.setattr(oc, "TRITON_WEIGHT_LAYOUT", False)
        run(wt)
        assert seen[-1] is wt
    wg = wt.clone().requires_grad_(True)
    run(wg).sum().backward()
    assert seen[-1] is wg and wg.grad is not None      # training: the parameter itself


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_nchw_input_runs_channels_last(monkeypatch, transposed):
    """An NCHW input reaches the kernels channels_last (TRITON_CHANNELS_LAST: unit-stride channel
    loads; under bf16 autocast cast in the same copy), the output is channels_last, values match
    float64, with and without gradient; switched off, x goes as it is and the output is NCHW."""
    import slimkernels.ops.conv as oc
    K = _K()
    seen = []
    name = "conv_transpose2d_fwd" if transposed else "conv2d_fwd"
    real = getattr(K, name)
    monkeypatch.setattr(K, name, lambda x, *a, **kw: (seen.append(x), real(x, *a, **kw))[1])
    wt, b = _params(24, 24, 5, EXACT, transposed=transposed)
    x = _x(1, 16, 7, 6, EXACT)
    assert not x.is_contiguous(memory_format=torch.channels_last)

    def run(inp):
        return _slim_20_of_24(transposed, inp, wt, b)

    def ref(inp):
        return _slim_20_of_24_ref(transposed, inp, wt, b)

    cl = torch.channels_last
    with torch.no_grad():
        y = run(x)
    assert seen[-1].is_contiguous(memory_format=cl) and y.is_contiguous(memory_format=cl)
    assert rel_err(y, ref(x)) < EXACT_TOL
    xg = x.clone().requires_grad_(True)
    yg = run(xg)
    assert seen[-1].is_contiguous(memory_format=cl) and yg.is_contiguous(memory_format=cl)
    yg.square().sum().backward()
    x64 = x.double().requires_grad_(True)
    ref(x64).square().sum().backward()
    assert rel_err(yg, ref(x)) < EXACT_TOL and rel_err(xg.grad, x64.grad) < EXACT_TOL
    if EXACT == torch.float32:  # bf16 autocast is a GPU-precision case (the interpreter: fp64)
        with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16):
            yb = run(x)
        assert seen[-1].dtype == torch.bfloat16 and seen[-1].is_contiguous(memory_format=cl)
        assert yb.is_contiguous(memory_format=cl) and rel_err(yb, ref(x)) < 2e-2
    monkeypatch.setattr(oc, "TRITON_CHANNELS_LAST", False)
    with torch.no_grad():
        y = run(x)
    assert seen[-1] is x and y.is_contiguous() and rel_err(y, ref(x)) < EXACT_TOL


# ----------------------------------------------------------------------- ops dispatch + backward
@pytest.mark.parametrize("ci,co,k,s,p,h,w", [
    (3, 47, 9, 4, 4, 13, 11),
    (47, 72, 5, 2, 2, 9, 11),
    (72, 3, 5, 2, 2, 7, 6),
])
def test_conv_backward_float64(ci, co, k, s, p, h, w):
    from slimkernels.ops import slim_conv2d
    wt, b = _params(co + 4, ci + 3, k, EXACT)
    x = _x(2, ci, h, w, EXACT)
    outs = []
    for backend in ("triton", "ref"):
        xx = x.clone().requires_grad_()
        ww = wt.clone().requires_grad_()
        bb = b.clone().requires_grad_()
        if backend == "triton":
            y = slim_conv2d(xx, ww, bb, stride=s, padding=p, out_width=co, backend="triton")
        else:
            y = F.conv2d(xx, ww[:co, :ci], bb[:co], stride=s, padding=p)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
        (y * g.to(DEV)).sum().backward()
        outs.append((y, xx.grad, ww.grad, bb.grad))
    for a, r in zip(outs[0], outs[1]):
        assert rel_err(a, r) < EXACT_TOL
    assert outs[0][2][co:].abs().max() == 0 and outs[0][2][:, ci:].abs().max() == 0
    assert outs[0][3][co:].abs().max() == 0


@pytest.mark.parametrize("ci,co,k,s,p,op,h,w", [
    (47, 72, 5, 2, 2, 1, 4, 5),
    (72, 3, 9, 4, 4, 3, 3, 2),
    (3, 5, 3, 1, 1, 0, 5, 4),
])
def test_conv_transpose_backward_float64(ci, co, k, s, p, op, h, w):
    from slimkernels.ops import slim_conv_transpose2d
    wt, b = _params(co + 4, ci + 3, k, EXACT, transposed=True)
    x = _x(2, ci, h, w, EXACT)
    outs = []
    for backend in ("triton", "ref"):
        xx = x.clone().requires_grad_()
        ww = wt.clone().requires_grad_()
        bb = b.clone().requires_grad_()
        if backend == "triton":
            y = slim_conv_transpose2d(xx, ww, bb, stride=s, padding=p, output_padding=op,
                                      out_width=co, backend="triton")
        else:
            y = F.conv_transpose2d(xx, ww[:ci, :co], bb[:co], stride=s, padding=p,
                                   output_padding=op)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=y.dtype)
        (y * g.to(DEV)).sum().backward()
        outs.append((y, xx.grad, ww.grad, bb.grad))
    for a, r in zip(outs[0], outs[1]):
        assert rel_err(a, r) < EXACT_TOL
    assert outs[0][2][ci:].abs().max() == 0 and outs[0][2][:, co:].abs().max() == 0


def test_conv_gdn_backward_through_ops():
    """With gradients recorded the op runs conv (Triton autograd) + GDN op: grads match eager."""
    from slimkernels.ops import slim_conv2d
    wt, b = _params(80, 40, 5, EXACT)
    beta, gamma = _gdn_params(80)
    x = _x(1, 33, 7, 9, EXACT)
    res = []
    for backend in ("triton", "ref"):
        xx, ww = x.clone().requires_grad_(), wt.clone().requires_grad_()
        gg = gamma.clone().requires_grad_()
        if backend == "triton":
            y = slim_conv2d(xx, ww, b, stride=2, padding=2, out_width=72, gdn=(beta, gg),
                            backend="triton")
        else:
            y = _gdn_ref(F.conv2d(xx, ww[:72, :33], b[:72], stride=2, padding=2), beta, gg, False)
        y.pow(2).sum().backward()
        res.append((y, xx.grad, ww.grad, gg.grad))
    for a, r in zip(*res):
        assert rel_err(a, r) < max(EXACT_TOL, 1e-10)


def test_ops_fused_path_no_grad_matches_reference():
    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    wt, b = _params(W_MAX, W_MAX, 5, EXACT)
    beta, gamma = _gdn_params(W_MAX)
    x = _x(1, 47, 5, 7, EXACT)
    kw = {"beta": beta, "gamma": gamma, "gamma_scale": torch.tensor(0.7, dtype=EXACT),
          "beta_bias": 0.25}
    with torch.no_grad():
        y = slim_conv2d(x, wt, b, stride=2, padding=2, out_width=72, gdn=kw, backend="triton")
        g = gamma[:72, :72] * 0.7
        r = _gdn_ref(F.conv2d(x, wt[:72, :47], b[:72], stride=2, padding=2), beta[:72] + 0.25, g,
                     False)
        assert rel_err(y, r) < EXACT_TOL
        z = slim_conv_transpose2d(x, wt, b, stride=2, padding=2, output_padding=1, out_width=48,
                                  out_igdn=(beta, gamma), backend="triton")
        r = _gdn_ref(F.conv_transpose2d(x, wt[:47, :48], b[:48], stride=2, padding=2,
                                        output_padding=1), beta, gamma, True)
        assert rel_err(z, r) < EXACT_TOL


def test_errors_are_clear():
    K = _K()
    wt, b = _params(8, 4, 3, EXACT)
    with pytest.raises(ValueError, match="exceed"):
        K.conv2d_fwd(_x(1, 6, 5, 5, EXACT), wt, b, padding=1)
    with pytest.raises(ValueError, match="dtype"):
        K.conv2d_fwd(_x(1, 4, 5, 5, OTHER), wt, b, padding=1)
    with pytest.raises(ValueError, match="C_out=300"):
        big = torch.zeros(300, 4, 3, 3, dtype=EXACT, device=DEV)
        K.conv2d_fwd(_x(1, 4, 5, 5, EXACT), big, None, padding=1,
                     gdn=(torch.ones(300, dtype=EXACT), torch.zeros(300, 300, dtype=EXACT)))
    with pytest.raises(ValueError, match="output_padding"):
        K.conv_transpose2d_fwd(_x(1, 8, 3, 3, EXACT), wt, None, stride=2, output_padding=2)


def test_triton_path_honours_autocast():
    from slimkernels.ops import slim_conv2d
    wt, b = _params(96, 64, 5, torch.float32)
    x = _x(1, 47, 7, 9, torch.float32, cl=True)
    with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16):
        y = slim_conv2d(x, wt, b, stride=2, padding=2, out_width=72, backend="triton")
    r = F.conv2d(x.double(), wt[:72, :47].double(), b[:72].double(), stride=2, padding=2)
    assert y.dtype == torch.bfloat16
    assert rel_err(y, r) < 2e-2


# -- sixth audit (thirty-second sitting): empty batches, short biases, numpy ints -------------
def test_empty_batch_forward_and_backward_give_empty_results():
    """N = 0: the transposed conv's col2im route divided by its zero row size, and a conv's
    backward (dx by that route) with it."""
    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    wt = torch.randn(4, 6, 3, 3, dtype=EXACT, device=DEV)
    x = torch.randn(0, 4, 5, 5, dtype=EXACT, device=DEV)
    y = slim_conv_transpose2d(x, wt, None, stride=2, padding=1, output_padding=1, backend="triton")
    assert y.shape == (0, 6, 10, 10)
    xg = torch.randn(0, 4, 5, 5, dtype=EXACT, device=DEV, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, dtype=EXACT, device=DEV, requires_grad=True)
    slim_conv2d(xg, w, None, padding=1, backend="triton").sum().backward()
    assert xg.grad.shape == xg.shape and w.grad is not None and not w.grad.any()
    assert _K().conv2d_fwd(x, w.detach(), None, padding=1).shape == (0, 6, 5, 5)


@pytest.mark.parametrize("transposed", [False, True])
def test_kernel_entry_points_refuse_a_bias_shorter_than_the_output(transposed):
    K = _K()
    x = torch.randn(1, 4, 5, 5, dtype=EXACT, device=DEV)
    w = torch.randn(4 if transposed else 8, 8 if transposed else 4, 3, 3, dtype=EXACT, device=DEV)
    fn = K.conv_transpose2d_fwd if transposed else K.conv2d_fwd
    with pytest.raises(ValueError, match="bias must be 1-D with at least C_out=8"):
        fn(x, w, torch.zeros(16, dtype=EXACT, device=DEV)[:2], padding=1)
    y = fn(x, w, torch.zeros(16, dtype=EXACT, device=DEV)[:6], padding=1, out_width=6)
    assert y.shape[1] == 6      # a bias holding the active width is enough


def test_numpy_int_arguments_run_the_triton_path():
    import numpy as np

    from slimkernels.ops import slim_conv2d, slim_conv_transpose2d
    x = torch.randn(1, 4, 9, 9, dtype=EXACT, device=DEV)
    w = torch.randn(6, 4, 3, 3, dtype=EXACT, device=DEV)
    wt = torch.randn(4, 6, 3, 3, dtype=EXACT, device=DEV)
    y = slim_conv2d(x, w, None, stride=np.int64(2), padding=np.int32(1), backend="triton")
    assert rel_err(y, F.conv2d(x, w, None, stride=2, padding=1)) < EXACT_TOL
    y = slim_conv_transpose2d(x, wt, None, stride=np.int64(2), padding=np.int64(1),
                              output_padding=np.int64(1), backend="triton")
    r = F.conv_transpose2d(x, wt, None, stride=2, padding=1, output_padding=1)
    assert rel_err(y, r) < EXACT_TOL
