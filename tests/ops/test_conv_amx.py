"""The direct AMX-BF16 CPU conv (csrc/cpu/conv_amx.cpp) against float64 references, and its
dispatch from the no-grad bf16 channels_last path of slimkernels.ops.conv (switch:
``CPU_AMX_CONV``)."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import slimkernels.ops.conv as C
from slimkernels.ops import slim_conv2d, slim_conv_transpose2d

pytestmark = pytest.mark.skipif(C._amx_conv_kernels() is None,
                                reason="no AMX-BF16 here or slimkernels._cpu_kernels not built")

WIDTHS = [1, 3, 16, 17, 47, 48, 72, 96, 192]


def _x(n, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(torch.bfloat16)
    return x.contiguous(memory_format=torch.channels_last)


def _param(shape, seed):
    g = torch.Generator().manual_seed(seed)
    fan = shape[1] * shape[2] * shape[3]
    return torch.randn(*shape, generator=g) / fan ** 0.5


def _close(y, ref):
    assert y.shape == ref.shape
    assert torch.isfinite(y.float()).all()
    err = (y.double() - ref).abs().max().item()
    assert err <= 1e-2 * ref.abs().max().item(), err


def _bf(t):
    return None if t is None else t.to(torch.bfloat16).double()


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_amx_widths(w, with_bias):
    # SlimCAE's w -> w encoder geometry (5x5, stride 2, pad 2), odd image, a slice of a 192 param
    W = _param((192, 192, 5, 5), 1)
    b = torch.randn(192) if with_bias else None
    x = _x(2, w, 11, 13, 2)
    y = C._conv2d_amx(x, W, b, w, 2, 2)
    ref = F.conv2d(x.double(), _bf(W[:w, :w]), None if b is None else b[:w].double(),
                   stride=2, padding=2)
    _close(y, ref)


@pytest.mark.parametrize("w", WIDTHS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_transpose2d_amx_widths(w, with_bias):
    # SlimCAE's w -> w decoder geometry (5x5, stride 2, pad 2, output_padding 1)
    W = _param((192, 192, 5, 5), 3)
    b = torch.randn(192) if with_bias else None
    x = _x(2, w, 7, 9, 4)
    y = C._conv_transpose2d_amx(x, W, b, w, 2, 2, 1)
    ref = F.conv_transpose2d(x.double(), _bf(W[:w, :w]), None if b is None else b[:w].double(),
                             stride=2, padding=2, output_padding=1)
    _close(y, ref)


@pytest.mark.parametrize("ci,co,k,s,p,h,w", [
    (3, 48, 9, 4, 4, 17, 23),     # enc1-like: 3 channels, 9x9 stride 4
    (48, 17, 3, 1, 1, 5, 33),     # stride 1, > 32 output columns (several pixel blocks)
    (40, 72, 5, 2, 2, 1, 1),      # one pixel
    (96, 47, 5, 2, 0, 12, 40),    # no padding
])
def test_conv2d_amx_geometries(ci, co, k, s, p, h, w):
    W = _param((co + 5, ci + 7, k, k), 5)[: co, 2: 2 + ci]  # a strided, offset view
    b = torch.randn(co)
    x = _x(1, ci, h, w, 6)
    y = C._conv2d_amx(x, W, b, co, s, p)
    ref = F.conv2d(x.double(), _bf(W), b.double(), stride=s, padding=p)
    _close(y, ref)


@pytest.mark.parametrize("ci,co,k,s,p,op,h,w", [
    (48, 3, 9, 4, 4, 3, 5, 7),     # dec3-like geometry
    (48, 3, 9, 4, 4, 0, 5, 7),     # ... its last phase column cropped to 1 of 4 output columns
    (72, 3, 9, 4, 4, 2, 6, 9),     # ... to 3 of 4
    (24, 3, 9, 4, 4, 1, 7, 37),    # 3 pixel blocks per row, the last partial, 2 of 4 columns
    (48, 1, 9, 4, 4, 3, 4, 18),    # one output channel: phase rows of 4 elements
    (16, 4, 5, 2, 2, 0, 6, 19),    # 5x5/2 onto 4 channels: phase rows of 8, last column cropped
    (17, 47, 5, 2, 2, 1, 1, 33),
    (64, 64, 3, 2, 1, 0, 6, 5),
])
def test_conv_transpose2d_amx_geometries(ci, co, k, s, p, op, h, w):
    W = _param((ci, co, k, k), 7)
    x = _x(1, ci, h, w, 8)
    y = C._conv_transpose2d_amx(x, W, None, co, s, p, op)
    ref = F.conv_transpose2d(x.double(), _bf(W), None, stride=s, padding=p, output_padding=op)
    _close(y, ref)


def test_weight_update_invalidates_pack():
    W = _param((64, 64, 5, 5), 9)
    x = _x(1, 48, 9, 9, 10)
    C._conv2d_amx(x, W, None, 48, 2, 2)
    with torch.no_grad():
        W.mul_(-2)
    y = C._conv2d_amx(x, W, None, 48, 2, 2)
    _close(y, F.conv2d(x.double(), _bf(W[:48, :48]), None, stride=2, padding=2))


def _op_ref_kwargs(transposed):
    """(our op, the torch reference, their kwargs) for SlimCAE's w -> w 5x5/2 layer at w=48."""
    kw = dict(stride=2, padding=2, out_width=48)
    if transposed:
        kw["output_padding"] = 1
        return slim_conv_transpose2d, F.conv_transpose2d, kw
    return slim_conv2d, F.conv2d, kw


@pytest.mark.parametrize("transposed", [False, True])
def test_dispatch_takes_amx_and_falls_back(monkeypatch, transposed):
    name = "_conv_transpose2d_amx" if transposed else "_conv2d_amx"
    monkeypatch.setattr(C, "CPU_AMX_CONV", True)  # the default; set here so the test says so
    calls = []
    real = getattr(C, name)
    monkeypatch.setattr(C, name, lambda *a: calls.append(1) or real(*a))
    W = _param((192, 192, 5, 5), 11).to(torch.bfloat16)
    b = torch.randn(192).to(torch.bfloat16)
    x = _x(1, 48, 16, 24, 12)
    op, ref, kw = _op_ref_kwargs(transposed)
    r = ref(x.double(), W[:48, :48].double(), b[:48].double(),
            **{k: v for k, v in kw.items() if k != "out_width"})
    with torch.no_grad():
        y = op(x, W, b, **kw)
    assert calls == [1]
    _close(y, r)
    monkeypatch.setattr(C, "CPU_AMX_CONV", False)
    with torch.no_grad():
        y = op(x, W, b, **kw)
    assert calls == [1]
    _close(y, r)


def test_rule_small_or_misaligned_channels():
    """The direct kernel takes narrow small convs (<= 3072 output pixels; <= 128 channels for
    5x5/2-like and transposed convs, <= 64 for the others), and at any size convs of 33..256
    channels on both sides where a side is not a multiple of 32;
    oneDNN keeps the larger convs of multiples of 32, of at most 32 channels, the image layers (3
    channels) and wider."""
    x = _x(1, 8, 4, 4, 30)
    big = 64 * 96
    assert C._use_amx_conv(x, 48, 48, 1536) and C._use_amx_conv(x, 64, 64, 3072)
    assert not C._use_amx_conv(x, 64, 64, big) and not C._use_amx_conv(x, 96, 96, 1536, False)
    for c in (40, 48, 56, 72, 80, 112, 144, 176, 200, 256 - 8):
        assert C._use_amx_conv(x, c, c, big), c
    for c in (16, 24, 32):
        assert not C._use_amx_conv(x, c, c, big), c
    assert C._use_amx_conv(x, 144, 192, big) and C._use_amx_conv(x, 192, 144, big)
    for c in (96, 128, 160, 192, 256):
        assert not C._use_amx_conv(x, c, c, big), c
    assert not C._use_amx_conv(x, 3, 144, big) and not C._use_amx_conv(x, 144, 3, big)
    assert not C._use_amx_conv(x, 264, 264, big)
    assert not C._use_amx_conv(x.contiguous(), 144, 144, big)     # NCHW x: not as it is
    # the wide rule only for the measured geometries (the callers say which: 5x5/2 convs and
    # transposed convs); narrow small convs go at any geometry
    assert not C._use_amx_conv(x, 144, 144, big, False)
    assert C._use_amx_conv(x, 48, 48, 1536, False)
    # small convs of multiples of 32: up to 128 channels for those geometries, 64 for the others
    for c in (96, 128):
        assert C._use_amx_conv(x, c, c, 1536) and not C._use_amx_conv(x, c, c, 1536, False), c
        assert not C._use_amx_conv(x, c, c, big), c
    assert not C._use_amx_conv(x, 160, 160, 1536) and not C._use_amx_conv(x, 192, 192, 1536)


@pytest.mark.parametrize("k, s, direct", [(5, 2, True), (9, 4, True), (3, 2, False),
                                          (3, 1, False), (1, 1, False)])
def test_wide_conv_rule_follows_the_geometry(monkeypatch, k, s, direct):
    """Convs of 144 channels take the direct kernel only with a kernel of at least 2*s + 1 and
    s > 1 (stride-1 and 3x3/2 convs measured slower there); right either way."""
    calls = []
    real = C._conv2d_amx
    monkeypatch.setattr(C, "_conv2d_amx", lambda *a: calls.append(1) or real(*a))
    W = _param((144, 144, k, k), 33).to(torch.bfloat16)
    x = _x(1, 144, 64 * s, 72 * s, 34)                      # 4608 output pixels
    with torch.no_grad():
        y = slim_conv2d(x, W, None, stride=s, padding=k // 2)
    assert calls == ([1] if direct else [])
    _close(y, F.conv2d(x.double(), W.double(), None, stride=s, padding=k // 2))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("w, direct", [(144, True), (72, True), (192, False), (128, False)])
def test_dispatch_of_wide_layers_follows_the_channel_alignment(monkeypatch, transposed, w,
                                                               direct):
    """SlimCAE's 5x5/2 layers on more than 3072 output (phase) pixels: the direct kernel at
    144 / 72 channels, oneDNN at 192 / 128; both within bf16's 1e-2 of float64."""
    name = "_conv_transpose2d_amx" if transposed else "_conv2d_amx"
    calls = []
    real = getattr(C, name)
    monkeypatch.setattr(C, name, lambda *a: calls.append(1) or real(*a))
    W = _param((192, 192, 5, 5), 31).to(torch.bfloat16)
    b = torch.randn(192).to(torch.bfloat16)
    x = _x(1, w, 64, 64, 32) if transposed else _x(1, w, 128, 128, 32)   # 4096 (phase) pixels
    kw = dict(stride=2, padding=2, out_width=w)
    if transposed:
        kw["output_padding"] = 1
    op, ref = (slim_conv_transpose2d, F.conv_transpose2d) if transposed else \
        (slim_conv2d, F.conv2d)
    r = ref(x.double(), W[:w, :w].double(), b[:w].double(),
            **{k: v for k, v in kw.items() if k != "out_width"})
    with torch.no_grad():
        y = op(x, W, b, **kw)
    assert calls == ([1] if direct else [])
    _close(y, r)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("w", [1, 17, 48, 64])
def test_fp32_input_is_rounded_in_the_kernel(transposed, w):
    # an fp32 x goes to the kernel as it is; the padding copy rounds it to bf16 (RNE, as
    # x.to(torch.bfloat16)): same output bits as the bf16 input
    g = torch.Generator().manual_seed(20 + w)
    xf = torch.randn(2, w, 9, 11, generator=g).contiguous(memory_format=torch.channels_last)
    xb = xf.to(torch.bfloat16)
    assert not torch.equal(xb.float(), xf)        # the rounding matters on this input
    if transposed:
        W = _param((64, 64, 5, 5), 21)
        yf = C._conv_transpose2d_amx(xf, W, None, w, 2, 2, 1)
        yb = C._conv_transpose2d_amx(xb, W, None, w, 2, 2, 1)
        ref = F.conv_transpose2d(xb.double(), _bf(W[:w, :w]), None, stride=2, padding=2,
                                 output_padding=1)
    else:
        W = _param((64, 64, 5, 5), 22)
        yf = C._conv2d_amx(xf, W, None, w, 2, 2)
        yb = C._conv2d_amx(xb, W, None, w, 2, 2)
        ref = F.conv2d(xb.double(), _bf(W[:w, :w]), None, stride=2, padding=2)
    assert yf.dtype == torch.bfloat16
    assert torch.equal(yf, yb)
    _close(yf, ref)


@pytest.mark.parametrize("transposed", [False, True])
def test_autocast_fp32_input_goes_to_the_kernel_without_a_cast(monkeypatch, transposed):
    # under bf16 autocast an fp32 channels_last x is handed to the kernel directly (no
    # x.to(bf16) pass first); with gradient recorded it is not
    monkeypatch.setattr(C, "CPU_AMX_CONV", True)
    name = "_conv_transpose2d_amx" if transposed else "_conv2d_amx"
    seen = []
    real = getattr(C, name)
    monkeypatch.setattr(C, name, lambda x, *a: seen.append(x.dtype) or real(x, *a))
    W = _param((192, 192, 5, 5), 23)
    b = torch.randn(192)
    g = torch.Generator().manual_seed(24)
    x = torch.randn(1, 48, 16, 24, generator=g).contiguous(memory_format=torch.channels_last)
    op, ref, kw = _op_ref_kwargs(transposed)
    r = ref(x.to(torch.bfloat16).double(), _bf(W[:48, :48]), _bf(b[:48]),
            **{k: v for k, v in kw.items() if k != "out_width"})
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x, W, b, **kw)
    assert seen == [torch.float32]
    _close(y, r)
    Wg = W.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x, Wg, b, **kw)
    assert seen == [torch.float32] and y.requires_grad   # the graph path, not the kernel
    _close(y.detach(), r)


def test_kernel_rejects_a_buffer_too_narrow_for_the_over_read():
    ck = C._amx_conv_kernels()
    W = _param((48, 48, 5, 5), 25)
    wpk, nz = C._amx_pack(W)
    x = _x(1, 48, 8, 32, 26)
    y = torch.empty(1, 4, 16, 48, dtype=torch.bfloat16)
    # Wp = 35: 35*48 < 15*2*48 + 8*32, what the last K chunk of a 16-pixel block reads: refused
    with pytest.raises(RuntimeError, match="bad arguments"):
        ck.conv_amx_forward(x.data_ptr(), 1, 1, 8, 32, 48, 12, 35, 2, 2, wpk.data_ptr(),
                            nz.data_ptr(), 5, 5, 2, 48, 0, 4, 16, y.data_ptr(), 4, 16, 48, 1, 1)
    with pytest.raises(RuntimeError, match="bad arguments"):   # unknown dtype code
        ck.conv_amx_forward(x.data_ptr(), 7, 1, 8, 32, 48, 12, 80, 2, 2, wpk.data_ptr(),
                            nz.data_ptr(), 5, 5, 2, 48, 0, 4, 16, y.data_ptr(), 4, 16, 48, 1, 1)


def test_all_zero_weight_tiles_are_skipped_exactly():
    # the sub-pixel phase weight of SlimCAE's 5x5/2 transposed conv has all-zero tiles (taps a
    # phase does not use): the pack marks them, and skipping them changes nothing
    W = _param((48, 48, 5, 5), 27)
    w2, _ = C._subpixel_weight(W, None, 2, 2)
    kc = w2.shape[-1]
    w2 = w2.reshape(48, 4, 48, kc, kc).transpose(0, 1).reshape(4 * 48, 48, kc, kc)
    _, nz = C._amx_pack(w2)
    assert 0 < int(nz.sum()) < nz.numel()
    # a whole output-channel tile of zeros (no chunk left for it) gives exactly the bias
    Wz = _param((48, 40, 3, 3), 28)
    Wz[16:32] = 0
    b = torch.randn(48)
    _, nzz = C._amx_pack(Wz)
    assert int(nzz[1].sum()) == 0 and int(nzz[0].sum()) > 0
    x = _x(1, 40, 9, 21, 29)
    y = C._conv2d_amx(x, Wz, b, 48, 1, 1)
    ref = F.conv2d(x.double(), _bf(Wz), b.double(), stride=1, padding=1)
    _close(y, ref)
    assert torch.equal(y[:, 16:32].float(), b[16:32].to(torch.bfloat16).float()
                       .view(1, 16, 1, 1).expand(1, 16, 9, 21))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("w, direct", [(48, (True, True)), (72, (True, True)),
                                       (96, (False, True)), (192, (False, True)),
                                       (288, (False, False))])
def test_dispatch_of_image_layers_follows_the_width(monkeypatch, transposed, w, direct):
    """SlimCAE's image layers (enc1: 3 -> w, 9x9/4; dec3: w -> 3, its transpose) take the
    direct kernel at any size: enc1 (from an fp32 image under bf16 autocast, as the model calls
    it) onto up to AMX_CONV_IMAGE_MAX_CHANNELS = 72 channels, dec3 from up to
    AMX_CONV_IMAGE_T_MAX_CHANNELS = 256; oneDNN above; both within bf16's 1e-2 of float64. 6144
    output (phase) pixels: above AMX_CONV_MAX_PIXELS, so only the image rule sends them to the
    direct kernel. (Convs without the window layout, on any thread count: with it they go
    further, test_dispatch_of_image_convs_with_the_window_layout.)"""
    direct = direct[transposed]
    monkeypatch.setattr(C, "CPU_AMX_CONV_WINDOWS", False)
    name = "_conv_transpose2d_amx" if transposed else "_conv2d_amx"
    calls = []
    real = getattr(C, name)
    monkeypatch.setattr(C, name, lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(40 + w)
    b = torch.randn(288, generator=g)
    if transposed:
        W = _param((288, 3, 9, 9), 41)
        x = _x(1, w, 64, 96, 42)                          # 6144 phase pixels -> 3 x 256 x 384
        kw = dict(stride=4, padding=4, output_padding=3, out_width=3)
        b = b[:3]
        op, ref, wr, br = slim_conv_transpose2d, F.conv_transpose2d, W[:w], b
    else:
        W = _param((288, 3, 9, 9), 43)
        x = torch.rand(1, 3, 256, 384, generator=g).contiguous(memory_format=torch.channels_last)
        kw = dict(stride=4, padding=4, out_width=w)
        op, ref, wr, br = slim_conv2d, F.conv2d, W[:w], b[:w]
    r = ref(x.to(torch.bfloat16).double(), _bf(wr), br.double(),
            **{k: v for k, v in kw.items() if k != "out_width"})
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x, W, b, **kw)
    assert calls == ([1] if direct else [])
    _close(y, r)
    assert 64 * 96 > C.AMX_CONV_MAX_PIXELS


@pytest.mark.parametrize("k, s, p, op, direct", [(9, 4, 4, 3, True), (5, 2, 2, 1, True),
                                                 (3, 2, 1, 1, False), (4, 2, 1, 0, False)])
def test_transposed_image_rule_only_for_measured_geometries(monkeypatch, k, s, p, op, direct):
    """Onto 3 channels from 48 the image rule holds for kernels of at least 2*s + 1 (9x9/4,
    5x5/2); 3x3/2 and 4x4/2 keep their route. Right either way."""
    calls = []
    real = C._conv_transpose2d_amx
    monkeypatch.setattr(C, "_conv_transpose2d_amx", lambda *a: calls.append(1) or real(*a))
    W = _param((48, 3, k, k), 45)
    x = _x(1, 48, 64, 96, 46)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = slim_conv_transpose2d(x, W, None, stride=s, padding=p, output_padding=op,
                                  out_width=3)
    assert calls == ([1] if direct else [])
    _close(y, F.conv_transpose2d(x.double(), _bf(W), None, stride=s, padding=p,
                                 output_padding=op))


def test_rule_for_image_layers():
    """The callers' image rule lifts the size limits; the layout checks stay."""
    x = _x(1, 8, 4, 4, 44)
    big = 192 * 128
    assert not C._use_amx_conv(x, 3, 48, big) and not C._use_amx_conv(x, 48, 3, big)
    assert C._use_amx_conv(x, 3, 48, big, image=True)
    assert C._use_amx_conv(x, 72, 3, big, image=True)
    assert not C._use_amx_conv(x.contiguous(), 3, 48, big, image=True)   # NCHW x


@pytest.mark.parametrize("group_rows", [1, 2])
@pytest.mark.parametrize("n,h,w", [(1, 11, 13), (2, 9, 70), (3, 1, 40), (1, 7, 1)])
def test_work_groups_cover_every_block(monkeypatch, group_rows, n, h, w):
    """Both work-group shapes (2 rows x 2 column blocks, 4 blocks of a row) compute every output
    pixel, with odd row counts, odd block counts, several images and one row or column."""
    monkeypatch.setattr(C, "AMX_CONV_GROUP_ROWS", group_rows)
    W = _param((48, 40, 5, 5), 40)
    b = torch.randn(48)
    x = _x(n, 40, h, w, 41)
    y = C._conv2d_amx(x, W, b, 48, 2, 2)
    _close(y, F.conv2d(x.double(), _bf(W), b.double(), stride=2, padding=2))
    Wt = _param((40, 24, 5, 5), 42)
    yt = C._conv_transpose2d_amx(x, Wt, None, 24, 2, 2, 1)
    _close(yt, F.conv_transpose2d(x.double(), _bf(Wt), None, stride=2, padding=2,
                                  output_padding=1))


# -- the GDN / IGDN in the epilogue (CPU_AMX_CONV_GDN) ------------------------------------------
@pytest.fixture
def two_threads():
    """The epilogue GDN's thread rule met (AMX_CONV_GDN_MIN_THREADS), whatever the machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _gdn_kw(cmax, seed, inverse, pdtype=torch.float32, scalars=None):
    g = torch.Generator().manual_seed(seed)
    beta = (torch.rand(cmax, generator=g) + 0.5).to(pdtype)
    gamma = (torch.rand(cmax, cmax, generator=g) * 0.1).to(pdtype)
    return {"beta": beta, "gamma": gamma, "inverse": inverse, **(scalars or {})}


def _gdn64(y, kw):
    """float64 GDN / IGDN of a [N, C, H, W] tensor with kw's parameters (SlimGDN+ scalars)."""
    c = y.shape[1]
    b, g = kw["beta"][:c].double(), kw["gamma"][:c, :c].double()
    g = g * kw.get("gamma_scale", 1.0) + kw.get("gamma_bias", 0.0)
    b = b * kw.get("beta_scale", 1.0) + kw.get("beta_bias", 0.0)
    n = torch.einsum("ij,njhw->nihw", g, y * y) + b.view(1, -1, 1, 1)
    return y * n.sqrt() if kw["inverse"] else y / n.sqrt()


_PLUS = {"gamma_scale": 1.5, "gamma_bias": 0.01, "beta_scale": 0.75, "beta_bias": 0.125}


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("c, pdtype, scalars", [
    (48, torch.float32, None),      # SlimCAE's w=48 layers, SwitchGDN / SlimGDN
    (17, torch.bfloat16, None),     # channels not a multiple of 16, bf16 parameters
    (40, torch.float32, _PLUS),     # SlimGDN+ scalars
    (1, torch.float32, None),
])
@pytest.mark.parametrize("inverse", [False, True])
def test_epilogue_gdn_equals_conv_then_gdn_kernel(two_threads, transposed, c, pdtype, scalars,
                                                  inverse):
    """The fused epilogue gives the bits of the conv kernel followed by the GDN op's AMX
    kernel, and the float64 conv + GDN within bf16 accuracy; an odd output size (the sub-pixel
    scatter's cropped phases), several pixel blocks and images."""
    W = _param((64, 64, 5, 5), 30)
    b = torch.randn(64, generator=torch.Generator().manual_seed(29))
    kw = _gdn_kw(64, 31, inverse, pdtype, scalars)   # gamma[:c, :c]: a strided view
    x = _x(2, c, 9, 37, 32)
    g = C._amx_epilogue_gdn(kw, c, 48)
    assert g is not None
    if transposed:
        y_fused = C._conv_transpose2d_amx(x, W, b, c, 2, 2, 0, g)
        y = C._conv_transpose2d_amx(x, W, b, c, 2, 2, 0)
        lin = F.conv_transpose2d(x.double(), _bf(W[:c, :c]), b[:c].double(), stride=2,
                                 padding=2)
    else:
        y_fused = C._conv2d_amx(x, W, b, c, 2, 2, g)
        y = C._conv2d_amx(x, W, b, c, 2, 2)
        lin = F.conv2d(x.double(), _bf(W[:c, :c]), b[:c].double(), stride=2, padding=2)
    gdn_mod = importlib.import_module("slimkernels.ops.gdn")   # (ops.gdn: the function)
    gdn_mod.last_cpu_path = None
    two_pass = C._apply_gdn(y, kw)
    assert gdn_mod.last_cpu_path == "fused"               # the GDN op's AMX kernel
    assert y_fused.shape == two_pass.shape == lin.shape
    assert y_fused.is_contiguous(memory_format=torch.channels_last)
    if c > 1:   # (one channel is NCHW too: the GDN op takes its NCHW path, which rounds apart)
        assert torch.equal(y_fused, two_pass)
    _close(y_fused, _gdn64(lin, kw))


def test_epilogue_gdn_rule_and_fallbacks(monkeypatch, two_threads):
    kw = _gdn_kw(192, 33, False)
    assert C._amx_epilogue_gdn(None, 48, 48) is None
    assert C._amx_epilogue_gdn(kw, 48, 48) is not None
    assert C._amx_epilogue_gdn(kw, 72, 48) is not None                            # conv, w=72
    assert C._amx_epilogue_gdn(kw, C.AMX_CONV_GDN_MAX_CHANNELS + 1, 48) is None   # e.g. w=96
    assert C._amx_epilogue_gdn(kw, 48, 48, 4) is not None           # transposed, 4 phases x 48
    assert C._amx_epilogue_gdn(kw, 72, 72, 4) is None               # 4 x 72 phase channels
    assert C._amx_epilogue_gdn(kw, 48, 3) is None               # from 3 channels, plain copy
    for c in (48, 192):          # enc1 through the window layout: at any width
        assert C._amx_epilogue_gdn(kw, c, 3, windows=True) is not None
    monkeypatch.setattr(C, "AMX_CONV_GDN_WINDOWS", False)
    assert C._amx_epilogue_gdn(kw, 48, 3, windows=True) is None
    assert C._amx_epilogue_gdn(kw, 48, 48, windows=True) is not None             # (the rule)
    monkeypatch.setattr(C, "AMX_CONV_GDN_WINDOWS", True)
    assert C._amx_epilogue_gdn({**kw, "beta_scale": torch.ones(2)}, 48, 48) is None
    assert C._amx_epilogue_gdn({**kw, "beta": kw["beta"].double()}, 48, 48) is None
    assert C._amx_epilogue_gdn({**kw, "beta_bias": torch.tensor(0.5)}, 48, 48)[3] == 0.5
    trained = {**kw, "gamma": kw["gamma"].clone().requires_grad_()}
    assert C._amx_epilogue_gdn(trained, 48, 48) is None                           # grad
    with torch.no_grad():
        assert C._amx_epilogue_gdn(trained, 48, 48) is not None
    torch.set_num_threads(1)                                                      # thread rule
    assert C._amx_epilogue_gdn(kw, 48, 48) is None
    torch.set_num_threads(2)
    monkeypatch.setattr(C, "CPU_AMX_CONV_GDN", False)
    assert C._amx_epilogue_gdn(kw, 48, 48) is None
    assert not C.amx_epilogue_gdn_available()


@pytest.mark.parametrize("transposed, c, fused", [(False, 48, True), (False, 72, True),
                                                   (False, 96, False), (True, 48, True),
                                                   (True, 72, False)])
def test_ops_take_the_epilogue_gdn_by_the_rule(monkeypatch, two_threads, transposed, c, fused):
    """slim_conv2d(gdn=) / slim_conv_transpose2d(out_igdn=) without gradient under bf16: the GDN
    in the direct kernel's epilogue by the channel rule, else the conv then the GDN op; the same
    bits either way."""
    applied = []
    real = C._apply_gdn
    monkeypatch.setattr(C, "_apply_gdn", lambda y, k: applied.append(1) or real(y, k))
    W = _param((96, 96, 5, 5), 34).to(torch.bfloat16)
    b = torch.randn(96).to(torch.bfloat16)
    kw = _gdn_kw(96, 35, transposed)
    x = _x(1, c, 12, 20, 36)
    op, _, okw = _op_ref_kwargs(transposed)
    okw["out_width"] = c
    okw["out_igdn" if transposed else "gdn"] = kw
    with torch.no_grad():
        y = op(x, W, b, **okw)
        assert applied == ([] if fused else [1])
        monkeypatch.setattr(C, "CPU_AMX_CONV_GDN", False)
        y2 = op(x, W, b, **okw)
    assert applied[-1:] == [1]
    assert torch.equal(y, y2)


def test_kernel_rejects_a_gdn_without_beta(two_threads):
    ck = C._amx_conv_kernels()
    W = _param((48, 48, 5, 5), 37)
    wpk, nz = C._amx_pack(W)
    kw = _gdn_kw(48, 38, False)
    packed = C._amx_epilogue_gdn(kw, 48, 48)[0]
    x = _x(1, 48, 8, 32, 39)
    y = torch.empty(1, 4, 16, 48, dtype=torch.bfloat16)
    args = (x.data_ptr(), 1, 1, 8, 32, 48, 12, 80, 2, 2, wpk.data_ptr(), nz.data_ptr(), 5, 5, 2,
            48, 0, 4, 16, y.data_ptr(), 4, 16, 48, 1, 1, 2, packed.data_ptr())
    with pytest.raises(RuntimeError, match="bad arguments"):
        ck.conv_amx_forward(*args, 0)                           # no beta
    with pytest.raises(RuntimeError, match="bad arguments"):
        ck.conv_amx_forward(*args, kw["beta"].data_ptr(), 5)    # unknown beta dtype code


def test_codec_bytes_and_images_equal_with_and_without_the_epilogue_gdn(monkeypatch, two_threads):
    from slimkernels.models import SlimCAE
    torch.manual_seed(40)
    m = SlimCAE(widths=(48, 16)).eval()
    m.update()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(41))
    taken = []
    real = C._amx_epilogue_gdn
    monkeypatch.setattr(C, "_amx_epilogue_gdn",
                        lambda *a, **k: (lambda g: taken.append(g is not None) or g)(real(*a, **k)))
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(C, "CPU_AMX_CONV_GDN", flag)
        m.clear_caches()
        taken.clear()
        for w in (48, 16):
            data = m.compress(x, width=w, precision="bf16")
            out[flag, w] = data, m.decompress(data, precision="bf16")
        # w=48: enc1 (from 3 channels: through the window layout, AMX_CONV_GDN_WINDOWS), enc2,
        # enc3, dec1, dec2 fused; then w=16 (switched off: the layers run one by one, no conv op
        # is asked for a GDN)
        assert taken[:5] == [True] * 5 if flag else taken == [], taken
        assert any(taken[5:]) == flag
    for w in (48, 16):
        assert out[True, w][0] == out[False, w][0]
        assert torch.equal(out[True, w][1], out[False, w][1])


# -- the clamped float32 output (slim_conv_transpose2d's out_clamp) -----------------------------
@pytest.mark.parametrize("ci, co, k, s, p, op, h, w", [
    (48, 3, 9, 4, 4, 3, 6, 9),      # SlimCAE's output layer (the image rule)
    (48, 3, 9, 4, 4, 0, 5, 7),      # its last phase column cropped
    (48, 48, 5, 2, 2, 1, 5, 7),     # a hidden layer (no image rule)
])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-0.25, 0.125)])
def test_out_clamp_in_the_epilogue_equals_clamp_after(ci, co, k, s, p, op, h, w, bounds):
    W = _param((ci, co, k, k), 50) * 4
    b = torch.randn(co, generator=torch.Generator().manual_seed(51)) * 0.2
    x = _x(2, ci, h, w, 52)
    x[1, 3, 2, 1] = float("nan")                        # a NaN stays NaN
    y = C._conv_transpose2d_amx(x, W, b, co, s, p, op)
    yc = C._conv_transpose2d_amx(x, W, b, co, s, p, op, clamp=bounds)
    ref = y.float().clamp(*bounds)
    assert yc.dtype == torch.float32 and yc.is_contiguous(memory_format=torch.channels_last)
    assert torch.isnan(ref).any() and torch.equal(torch.isnan(yc), torch.isnan(ref))
    assert torch.equal(torch.nan_to_num(yc), torch.nan_to_num(ref))
    assert (yc == bounds[0]).any() and (yc == bounds[1]).any()      # both bounds bite


def test_out_clamp_through_the_op_on_every_route(monkeypatch):
    W = _param((48, 3, 9, 9), 53).to(torch.bfloat16) * 4
    b = torch.randn(3).to(torch.bfloat16)
    x = _x(1, 48, 6, 9, 54)
    kw = dict(stride=4, padding=4, output_padding=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = slim_conv_transpose2d(x, W, b, **kw).float().clamp(0, 1)
        got = slim_conv_transpose2d(x, W, b, out_clamp=(0, 1), **kw)          # the kernel's
        monkeypatch.setattr(C, "CPU_AMX_CONV", False)
        other = slim_conv_transpose2d(x, W, b, out_clamp=(0, 1), **kw)        # clamp after
    assert got.dtype == other.dtype == torch.float32
    assert torch.equal(got, ref)
    _close(other, ref.double())
    # with gradient: the clamp keeps autograd
    xg = x.float().requires_grad_()
    yg = slim_conv_transpose2d(xg, W.float(), b.float(), out_clamp=(0, 1), **kw)
    yg.sum().backward()
    assert yg.dtype == torch.float32 and float(yg.detach().min()) >= 0 and \
        float(yg.detach().max()) <= 1
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("bad", [(1.0, 0.0), ("a", 1), (0.0, float("inf")), (0.0,), 3])
def test_out_clamp_rejects_bad_bounds(bad):
    W = _param((8, 3, 5, 5), 55)
    with pytest.raises(ValueError, match="out_clamp"):
        slim_conv_transpose2d(torch.rand(1, 8, 4, 4), W, None, stride=2, padding=2,
                              output_padding=1, out_clamp=bad)


def test_kernel_rejects_a_clamped_output_with_a_gdn_or_bad_bounds(two_threads):
    ck = C._amx_conv_kernels()
    W = _param((48, 48, 5, 5), 56)
    wpk, nz = C._amx_pack(W)
    packed = C._amx_epilogue_gdn(_gdn_kw(48, 57, False), 48, 48)[0]
    beta = torch.ones(48)
    x = _x(1, 48, 8, 32, 58)
    yf = torch.empty(1, 4, 16, 48)
    head = (x.data_ptr(), 1, 1, 8, 32, 48, 12, 80, 2, 2, wpk.data_ptr(), nz.data_ptr(), 5, 5, 2,
            48, 0, 4, 16, 0, 4, 16, 48, 1, 1, 2)
    with pytest.raises(RuntimeError, match="bad arguments"):     # a GDN and a clamped output
        ck.conv_amx_forward(*head, packed.data_ptr(), beta.data_ptr(), 0, 1, 1.0, 0.0, False,
                            yf.data_ptr(), 0.0, 1.0)
    with pytest.raises(RuntimeError, match="bad arguments"):     # lo > hi
        ck.conv_amx_forward(*head, 0, 0, 0, 1, 1.0, 0.0, False, yf.data_ptr(), 1.0, 0.0)
    with pytest.raises(RuntimeError, match="bad arguments"):     # neither y nor yf
        ck.conv_amx_forward(*head)


# -- the window layout of x (CPU_AMX_CONV_WINDOWS) -----------------------------------------------
def _switched(monkeypatch, switch, fn):
    """[fn() with the module switch ``switch`` on, fn() with it off]."""
    out = []
    for flag in (True, False):
        monkeypatch.setattr(C, switch, flag)
        out.append(fn())
    return out


def _both_layouts(monkeypatch, fn):
    """fn() with the window layout allowed and with the padded copy only."""
    return _switched(monkeypatch, "CPU_AMX_CONV_WINDOWS", fn)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("group_rows", [1, 2])
@pytest.mark.parametrize("ci, co, k, s, p, n, h, w", [
    (3, 48, 9, 4, 4, 1, 67, 53),      # enc1: several bands of 8 output rows, odd sizes
    (3, 17, 9, 4, 4, 2, 37, 21),      # two images, odd output rows (groups across images)
    (3, 72, 9, 4, 0, 3, 13, 40),      # no padding, three images
    (3, 16, 9, 4, 4, 1, 5, 3),        # an image narrower than the kernel
    (2, 40, 9, 4, 4, 1, 20, 30),      # 18 taps, 16-byte pixel step
    (3, 24, 5, 2, 2, 2, 19, 35),      # 5x5/2 from RGB: 15 taps, 12-byte step
    (3, 48, 9, 4, 4, 1, 9, 4001),     # 1001 output columns: bands shrink to 2 rows
])
def test_window_layout_equals_padded_copy(monkeypatch, threads, group_rows, ci, co, k, s, p,
                                          n, h, w):
    """The window layout (one aligned 64-byte row per input row and output column, built band by
    band by each worker) gives the padded copy's output bit for bit, for bf16 and fp32 x, over
    bands, images, borders and both work-group shapes; both within bf16's 1e-2 of float64."""
    monkeypatch.setattr(C, "AMX_CONV_GROUP_ROWS", group_rows)
    nt = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        W = _param((co, ci, k, k), 50 + k)
        b = torch.randn(co, generator=torch.Generator().manual_seed(51))
        xf = torch.rand(n, ci, h, w, generator=torch.Generator().manual_seed(52))
        xf = xf.contiguous(memory_format=torch.channels_last)
        for x in (xf.to(torch.bfloat16), xf):
            yw, yp = _both_layouts(monkeypatch, lambda: C._conv2d_amx(x, W, b, co, s, p))
            assert torch.equal(yw.view(torch.int16), yp.view(torch.int16))
            _close(yw, F.conv2d(x.to(torch.bfloat16).double(), _bf(W), b.double(), stride=s,
                                padding=p))
    finally:
        torch.set_num_threads(nt)


def test_window_layout_reads_only_the_taps(monkeypatch):
    """A NaN pixel reaches only the outputs whose taps read it through the window layout (as in
    float64); the padded copy's last K chunk also multiplies the zero weights past the 27 taps
    with the next pixel's channels, so the NaN spreads to the output on its left there: this is
    how the test knows the window layout ran."""
    W = _param((48, 3, 9, 9), 53)
    x = torch.rand(1, 3, 32, 64, generator=torch.Generator().manual_seed(54)).to(torch.bfloat16)
    x[0, 0, 10, 4 * 5 + 5] = float("nan")  # column 25: taps of output columns 6..7, not 5
    x = x.contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.double(), _bf(W), None, stride=4, padding=4)
    yw, yp = _both_layouts(monkeypatch, lambda: C._conv2d_amx(x, W, None, 48, 4, 4))
    bad = torch.isnan(ref)
    assert bad[0, :, :, 6].any() and not bad[0, :, :, 5].any()
    assert torch.equal(torch.isnan(yw.float()), bad)
    assert torch.isnan(yp.float()[0, :, :, 5]).any()
    ok = ~bad
    err = (yw.double()[ok] - ref[ok]).abs().max().item()
    assert err <= 1e-2 * ref[ok].abs().max().item()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("w, direct", [(48, (True, True)), (72, (True, True)),
                                       (96, (True, True)), (144, (True, True)),
                                       (192, (True, True)), (256, (True, True)),
                                       (288, (False, False))])
def test_dispatch_of_image_convs_with_the_window_layout(monkeypatch, threads, w, direct):
    """With the window layout, convs from an image take the direct kernel onto up to
    AMX_CONV_MISALIGNED_MAX_CHANNELS (256) whatever the thread count (the route once depended on
    it: other bf16 bytes on one thread); without it, only up to 72."""
    nt = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calls = []
        real = C._conv2d_amx
        monkeypatch.setattr(C, "_conv2d_amx", lambda *a: calls.append(1) or real(*a))
        g = torch.Generator().manual_seed(55)
        W = _param((288, 3, 9, 9), 56)
        b = torch.randn(288, generator=g)
        # 64 x 96 = 6144 output pixels: above AMX_CONV_MAX_PIXELS (only the image rule decides)
        x = torch.rand(1, 3, 256, 384, generator=g).contiguous(memory_format=torch.channels_last)
        r = F.conv2d(x.to(torch.bfloat16).double(), _bf(W[:w]), b[:w].double(), stride=4,
                     padding=4)
        for windows in (True, False):
            monkeypatch.setattr(C, "CPU_AMX_CONV_WINDOWS", windows)
            calls.clear()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                y = slim_conv2d(x, W, b, stride=4, padding=4, out_width=w)
            want = direct[threads - 1] if windows else w <= C.AMX_CONV_IMAGE_MAX_CHANNELS
            assert calls == ([1] if want else []), (windows, calls)
            _close(y, r)
    finally:
        torch.set_num_threads(nt)


def _codec_same_either_way(monkeypatch, switch, widths, seed):
    """A SlimCAE of ``widths`` (weights from ``seed``) codes a random 70 x 100 image in bf16 at
    each width to the same bytes and decodes it to the same image with the module switch
    ``switch`` on as off."""
    from slimkernels.models import SlimCAE
    torch.manual_seed(seed)
    m = SlimCAE(widths=widths).eval()
    m.update()
    x = torch.rand(1, 3, 70, 100, generator=torch.Generator().manual_seed(seed + 1))
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(C, switch, flag)
        m.clear_caches()
        for w in widths:
            data = m.compress(x, width=w, precision="bf16")
            out[flag, w] = data, m.decompress(data, precision="bf16")
    for w in widths:
        assert out[True, w][0] == out[False, w][0]
        assert torch.equal(out[True, w][1], out[False, w][1])


def test_codec_bytes_equal_with_and_without_the_window_layout(monkeypatch, two_threads):
    """SlimCAE at narrow widths (enc1 on the direct kernel either way): the same bytes and
    images with the window layout as with the padded copy."""
    _codec_same_either_way(monkeypatch, "CPU_AMX_CONV_WINDOWS", (48, 16), 57)


# -- channels padded to a multiple of 32 in the padded copy (CPU_AMX_CONV_PAD_CHANNELS) -----------
def test_rule_for_padded_channels(monkeypatch):
    """A transposed conv's copy holds the input channels rounded up to a multiple of 32 where the
    extra products are at most AMX_CONV_PAD_CHANNELS_GAIN (1/2) of the share of tile rows that
    straddle two cache lines, onto at least AMX_CONV_PAD_CHANNELS_MIN_OUT (16) channels."""
    got = {c: C._amx_padded_channels(c, 48) for c in (24, 40, 48, 64, 72, 96, 144, 200)}
    assert got == {24: 32, 40: None, 48: None, 64: None, 72: 96, 96: None, 144: 160, 200: 224}
    assert C._amx_padded_channels(72, 3) is None        # onto an image: not padded
    monkeypatch.setattr(C, "CPU_AMX_CONV_PAD_CHANNELS", False)
    assert C._amx_padded_channels(72, 48) is None


@pytest.mark.parametrize("ci, co, h, w", [(72, 72, 7, 9), (24, 40, 5, 33), (144, 24, 4, 6),
                                          (72, 17, 1, 1)])
def test_transposed_conv_with_padded_channels(monkeypatch, ci, co, h, w):
    """With the channels padded (zero channels in the copy, zero weights for them) the output is
    within bf16's 1e-2 of float64, as without; an fp32 x gives the bf16 x's bits (the copy rounds
    it); the kernel got the padded count."""
    seen = []
    real = C._amx_conv_run
    monkeypatch.setattr(C, "_amx_conv_run", lambda *a: seen.append(a[-1]) or real(*a))
    W = _param((ci, co, 5, 5), 60)
    b = torch.randn(co, generator=torch.Generator().manual_seed(61))
    xf = torch.randn(2, ci, h, w, generator=torch.Generator().manual_seed(62))
    xf = xf.contiguous(memory_format=torch.channels_last)
    xb = xf.to(torch.bfloat16)
    ref = F.conv_transpose2d(xb.double(), _bf(W), b.double(), stride=2, padding=2,
                             output_padding=1)
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(C, "CPU_AMX_CONV_PAD_CHANNELS", flag)
        seen.clear()
        out[flag] = C._conv_transpose2d_amx(xb, W, b, co, 2, 2, 1)
        assert seen == [-(-ci // 32) * 32 if flag else None]
        _close(out[flag], ref)
        yf = C._conv_transpose2d_amx(xf, W, b, co, 2, 2, 1)
        assert torch.equal(yf.view(torch.int16), out[flag].view(torch.int16))


def test_kernel_rejects_bad_padded_channels():
    ck = C._amx_conv_kernels()
    W = _param((48, 48, 3, 3), 63)
    x = _x(1, 48, 8, 32, 64)
    y = torch.empty(1, 8, 32, 48, dtype=torch.bfloat16)
    for cp in (64, 32, 72):   # packed for 64: Cp below C, or not a multiple of 32 -> refused
        wpk, nz = C._amx_pack(F.pad(W, (0, 0, 0, 0, 0, 16)))
        args = (x.data_ptr(), 1, 1, 8, 32, 48, 10, 64, 1, 1, wpk.data_ptr(), nz.data_ptr(), 3,
                3, 1, 48, 0, 8, 32, y.data_ptr(), 8, 32, 48, 1, 1)
        if cp == 64:
            ck.conv_amx_forward(*args, Cp=cp)
            ref = F.conv2d(x.double(), _bf(W), None, padding=1)
            _close(y.permute(0, 3, 1, 2), ref)
        else:
            with pytest.raises(RuntimeError, match="bad arguments"):
                ck.conv_amx_forward(*args, Cp=cp)


# -- x read in place by the groups inside it (CPU_AMX_CONV_IN_PLACE) ------------------------------
class _Counted:
    """The kernels' module with every conv_amx_forward call's stats (work groups read in place,
    all work groups) recorded in ``calls``, and the channel tiles run in pairs in ``paired``."""

    def __init__(self, mod):
        self.mod, self.calls, self.paired = getattr(mod, "mod", mod), [], []

    def __getattr__(self, name):
        return getattr(self.mod, name)

    def conv_amx_forward(self, *a, **k):
        st = torch.zeros(3, dtype=torch.int64)
        self.mod.conv_amx_forward(*a, **k, stats=st.data_ptr())
        self.calls.append(tuple(st.tolist()[:2]))
        self.paired.append(int(st[2]))


def _switched_counted(monkeypatch, switch, fn, stat):
    """[(fn(), its kernel calls' ``stat``: an attribute of :class:`_Counted`)] with the module
    switch ``switch`` on, then off."""
    ck = _Counted(C._amx_conv_kernels())
    monkeypatch.setattr(C, "_amx_conv_kernels", lambda: ck)

    def counted():
        ck.calls.clear()
        ck.paired.clear()
        return fn(), list(getattr(ck, stat))
    return _switched(monkeypatch, switch, counted)


def _both_sources(monkeypatch, fn):
    """fn() with x read in place where it can be and with the padded copy only, and the stats of
    each one's kernel calls."""
    return _switched_counted(monkeypatch, "CPU_AMX_CONV_IN_PLACE", fn, "calls")


def test_in_place_groups_of_an_encoder_layer(monkeypatch, two_threads):
    """48 -> 48 channels, 5x5/2, pad 2, 40 x 100 pixels: 20 x 50 outputs, 4 column blocks of 16.
    Inside x: output rows 1..18 (row 0 reads the top padding, row 19 the bottom: (2 + 40 - 5) / 2
    = 18) and column blocks 1..2 (block 0 reads the left padding; block 3 reads past column 99:
    (100 + 2 - 30) * 48 - 8 * 32 = 3200 elements, 3200 // (32 * 48) = 2). The border column
    blocks 0 and 3 pair up, so of 10 row pairs x 2 column pairs the 8 row pairs 1..8 x the pair
    (1, 2) read x: 8 of 20 groups, per image. The same bits as the padded copy."""
    W = _param((48, 48, 5, 5), 70)
    b = torch.randn(48, generator=torch.Generator().manual_seed(71))
    x = _x(2, 48, 40, 100, 72)
    (yi, si), (yc, sc) = _both_sources(monkeypatch, lambda: C._conv2d_amx(x, W, b, 48, 2, 2))
    assert si == [(16, 40)] and sc == [(0, 40)]
    assert torch.equal(yi.view(torch.int16), yc.view(torch.int16))
    _close(yi, F.conv2d(x.double(), _bf(W), b.double(), stride=2, padding=2))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("group_rows", [1, 2])
@pytest.mark.parametrize("transposed, ci, co, k, s, p, n, h, w", [
    (False, 48, 48, 5, 2, 2, 2, 45, 131),    # enc2-like, odd sizes, two images
    (False, 72, 40, 3, 1, 1, 3, 17, 70),     # stride 1, three images, pixels 144 bytes apart
    (False, 96, 72, 3, 2, 2, 2, 45, 74),     # padding above k // 2
    (False, 16, 33, 9, 4, 0, 1, 70, 200),    # no padding, a partial channel tile
    (False, 48, 16, 5, 2, 2, 1, 9, 200),     # a single inside row pair
    (True, 48, 48, 5, 2, 2, 2, 33, 70),      # dec2-like
    (True, 48, 3, 9, 4, 4, 1, 40, 90),       # dec3-like: onto an image, phase rows of 12
    (True, 96, 24, 5, 2, 2, 1, 20, 41),
])
def test_in_place_equals_padded_copy(monkeypatch, threads, group_rows, transposed, ci, co, k, s,
                                     p, n, h, w):
    """Convs and transposed convs (one stride-1 conv over sub-pixel phases) whose inside groups
    read x in place: the padded copy's bits, within bf16's 1e-2 of float64, and with 2-row groups
    some groups (all without padding) read in place (4 blocks of one row are rarely all inside
    on these narrow images); an fp32 x (the copy rounds it) never does."""
    monkeypatch.setattr(C, "AMX_CONV_GROUP_ROWS", group_rows)
    monkeypatch.setattr(C, "CPU_AMX_CONV_PAD_CHANNELS", False)  # (else no transposed conv here)
    nt = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(73)
        xf = torch.randn(n, ci, h, w, generator=g).contiguous(memory_format=torch.channels_last)
        x = xf.to(torch.bfloat16)
        if transposed:
            W = _param((ci, co, k, k), 74)
            b = torch.randn(co, generator=g)
            op = s - 1

            def run(v):
                return C._conv_transpose2d_amx(v, W, b, co, s, p, op)
            ref = F.conv_transpose2d(x.double(), _bf(W), b.double(), stride=s, padding=p,
                                     output_padding=op)
        else:
            W = _param((co, ci, k, k), 74)
            b = torch.randn(co, generator=g)

            def run(v):
                return C._conv2d_amx(v, W, b, co, s, p)
            ref = F.conv2d(x.double(), _bf(W), b.double(), stride=s, padding=p)
        (yi, si), (yc, sc) = _both_sources(monkeypatch, lambda: run(x))
        assert len(si) == 1 and (group_rows == 1 or 0 < si[0][0]) and si[0][0] <= si[0][1], si
        assert sc[0][0] == 0
        assert torch.equal(yi.view(torch.int16), yc.view(torch.int16))
        _close(yi, ref)
        (yf, sf), _ = _both_sources(monkeypatch, lambda: run(xf))
        assert sf[0][0] == 0 and torch.equal(yf.view(torch.int16), yi.view(torch.int16))
    finally:
        torch.set_num_threads(nt)


def test_in_place_with_the_epilogue_gdn(monkeypatch, two_threads):
    """The fused GDN of a 48-channel layer over in-place groups: the padded copy's bits."""
    W = _param((48, 48, 5, 5), 75)
    b = torch.randn(48, generator=torch.Generator().manual_seed(76))
    gdn = C._amx_epilogue_gdn(_gdn_kw(48, 77, False), 48, 48)
    x = _x(1, 48, 40, 100, 78)
    (yi, si), (yc, _) = _both_sources(monkeypatch, lambda: C._conv2d_amx(x, W, b, 48, 2, 2, gdn))
    assert si[0][0] > 0
    assert torch.equal(yi.view(torch.int16), yc.view(torch.int16))


def test_codec_bytes_equal_with_x_read_in_place(monkeypatch, two_threads):
    """SlimCAE at narrow widths on an image whose layers have inside groups: the same bytes and
    images with x read in place as with the padded copy, through the CPU replay too (five calls:
    recorded at the second, verified at the third, replayed after)."""
    from slimkernels.models import SlimCAE
    torch.manual_seed(79)
    m = SlimCAE(widths=(48, 16)).eval()
    m.update()
    x = torch.rand(1, 3, 128, 512, generator=torch.Generator().manual_seed(80))
    kernels = C._amx_conv_kernels
    real = kernels()
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(C, "CPU_AMX_CONV_IN_PLACE", flag)
        for w in (48, 16):
            ck = _Counted(real)   # (the replay repeats calls of the real module: counted apart)
            monkeypatch.setattr(C, "_amx_conv_kernels", lambda: ck)
            m.clear_caches()
            m.compress(x, width=w, precision="bf16")
            assert any(c[0] > 0 for c in ck.calls) == flag
            monkeypatch.setattr(C, "_amx_conv_kernels", kernels)
            m.clear_caches()
            data = [m.compress(x, width=w, precision="bf16") for _ in range(5)]
            assert len(set(data)) == 1
            out[flag, w] = data[0], [m.decompress(data[0], precision="bf16") for _ in range(5)]
            if w == 48:   # (at 16 a decoder layer may take oneDNN's conv: not replayed)
                replays = [e.replays for e in m._cpu_replays.entries()]   # encoder, decoder
                assert len(replays) == 2 and min(replays) >= 2, replays
    for w in (48, 16):
        assert out[True, w][0] == out[False, w][0]
        for img in out[True, w][1] + out[False, w][1]:
            assert torch.equal(img, out[True, w][1][0])


# -- seeded random geometries (the cases above, drawn) -------------------------------------------
def test_window_layout_equals_padded_copy_on_random_geometries(monkeypatch):
    """60 seeded draws of convs the window layout takes (kw*C <= 32, pixel step off 64 bytes):
    images, sizes down to the kernel, paddings, strides, output counts, bf16 / fp32 x, both
    work-group shapes, 1 / 2 threads: the padded copy's bits every time."""
    rng = __import__("random").Random(3)
    nt = torch.get_num_threads()
    done = 0
    try:
        while done < 60:
            ci, k, s = rng.randint(1, 4), rng.choice([3, 5, 7, 9]), rng.choice([2, 3, 4])
            if k * ci > 32 or (s * ci * 2) % 64 == 0:
                continue
            p, n = rng.randint(0, k // 2), rng.randint(1, 3)
            h, w = rng.randint(max(1, k - 2 * p), 40), rng.randint(max(1, k - 2 * p), 60)
            co = rng.choice([1, 16, 17, 33, 48])
            torch.set_num_threads(rng.choice([1, 2]))
            monkeypatch.setattr(C, "AMX_CONV_GROUP_ROWS", rng.choice([1, 2]))
            g = torch.Generator().manual_seed(done)
            x = torch.randn(n, ci, h, w, generator=g)
            if rng.random() < 0.5:
                x = x.to(torch.bfloat16)
            x = x.contiguous(memory_format=torch.channels_last)
            W = torch.randn(co, ci, k, k, generator=g)
            b = torch.randn(co, generator=g)
            yw, yp = _both_layouts(monkeypatch, lambda: C._conv2d_amx(x, W, b, co, s, p))
            assert torch.equal(yw.view(torch.int16), yp.view(torch.int16)), (ci, k, s, p, n, h, w)
            done += 1
    finally:
        torch.set_num_threads(nt)


def test_transposed_conv_on_random_geometries(monkeypatch):
    """40 seeded draws of transposed convs on the direct kernel (sub-pixel phases; phase rows of
    1-16 elements, multiples of 16 and others; padded channels or not; cropped rows and
    columns): within bf16's 1e-2 of float64, and the clamped float32 output equal to the bf16
    output clamped."""
    rng = __import__("random").Random(4)
    nt = torch.get_num_threads()
    done = 0
    try:
        while done < 40:
            s = rng.choice([2, 4])
            k = rng.choice([5, 7]) if s == 2 else 9
            p, op = rng.randint(0, k // 2), rng.randint(0, s - 1)
            ci, co = rng.choice([8, 24, 48, 72, 144]), rng.choice([1, 3, 4, 8, 16, 24, 48])
            n, h, w = rng.randint(1, 2), rng.randint(1, 12), rng.randint(1, 36)
            torch.set_num_threads(rng.choice([1, 2]))
            monkeypatch.setattr(C, "AMX_CONV_GROUP_ROWS", rng.choice([1, 2]))
            g = torch.Generator().manual_seed(100 + done)
            x = torch.randn(n, ci, h, w, generator=g).to(torch.bfloat16)
            x = x.contiguous(memory_format=torch.channels_last)
            W = torch.randn(ci, co, k, k, generator=g) / (ci * k) ** 0.5
            b = torch.randn(co, generator=g)
            y = C._conv_transpose2d_amx(x, W, b, co, s, p, op)
            if y is None:        # a tap plan that crops x: not the direct kernel's
                continue
            ref = F.conv_transpose2d(x.double(), _bf(W), b.double(), stride=s, padding=p,
                                     output_padding=op)
            _close(y, ref)
            yc = C._conv_transpose2d_amx(x, W, b, co, s, p, op, None, (-0.5, 0.5))
            assert torch.equal(yc, y.float().clamp(-0.5, 0.5)), (s, k, p, op, ci, co, h, w)
            done += 1
    finally:
        torch.set_num_threads(nt)


def _random_geometry(rng, monkeypatch, cis, cos, n_max, h_max, w_max, cos_transposed=None):
    """A random conv or (with probability 0.4) transposed conv for the random-geometry tests:
    ``(transposed, ci, co, k, s, p, n, h, w)``, input channels from ``cis``, output channels from
    ``cos`` (``cos_transposed`` when given), kernel 3 / 5 / 9, stride 1 / 2 / 4, up to
    ``n_max`` images of up to ``h_max`` x ``w_max``; the thread count, the work-group shape and
    the padded channels drawn and set too (the caller restores the threads). None for a
    transposed kernel smaller than its stride (draw again)."""
    transposed = rng.random() < 0.4
    ci = rng.choice(cis)
    co = rng.choice(cos_transposed if transposed and cos_transposed else cos)
    k, s = rng.choice([3, 5, 9]), rng.choice([1, 2, 4])
    if transposed and k < s:
        return None
    p, n = rng.randint(0, k // 2), rng.randint(1, n_max)
    h, w = rng.randint(max(1, k - 2 * p), h_max), rng.randint(max(1, k - 2 * p), w_max)
    torch.set_num_threads(rng.choice([1, 2]))
    monkeypatch.setattr(C, "AMX_CONV_GROUP_ROWS", rng.choice([1, 2]))
    monkeypatch.setattr(C, "CPU_AMX_CONV_PAD_CHANNELS", rng.random() < 0.5)
    return transposed, ci, co, k, s, p, n, h, w


def test_in_place_equals_padded_copy_on_random_geometries(monkeypatch):
    """40 seeded draws of bf16 convs and transposed convs with groups inside x (channels 16-144,
    kernels 3-9, strides, paddings, images, sizes, both work-group shapes, 1 / 2 threads): the
    padded copy's bits every time."""
    rng = __import__("random").Random(5)
    nt = torch.get_num_threads()
    done = 0
    try:
        while done < 40:
            drawn = _random_geometry(rng, monkeypatch, [16, 24, 48, 72, 96, 144],
                                     [3, 16, 17, 48, 72], 3, 60, 160)
            if drawn is None:
                continue
            transposed, ci, co, k, s, p, n, h, w = drawn
            g = torch.Generator().manual_seed(200 + done)
            x = torch.randn(n, ci, h, w, generator=g).to(torch.bfloat16)
            x = x.contiguous(memory_format=torch.channels_last)
            if transposed:
                W = torch.randn(ci, co, k, k, generator=g)
                b = torch.randn(co, generator=g)
                op = rng.randint(0, s - 1)
                (yi, si), (yc, _) = _both_sources(
                    monkeypatch, lambda: C._conv_transpose2d_amx(x, W, b, co, s, p, op))
            else:
                W = torch.randn(co, ci, k, k, generator=g)
                b = torch.randn(co, generator=g)
                (yi, si), (yc, _) = _both_sources(
                    monkeypatch, lambda: C._conv2d_amx(x, W, b, co, s, p))
            if yi is None:        # a tap plan that crops x: not the direct kernel's
                continue
            assert torch.equal(yi.view(torch.int16), yc.view(torch.int16)), \
                (transposed, ci, co, k, s, p, n, h, w)
            done += bool(si and si[0][0] > 0)
    finally:
        torch.set_num_threads(nt)


# -- pairs of output channel tiles sharing each A tile load (CPU_AMX_CONV_PAIR_TILES) -------------
def _paired_and_single(monkeypatch, fn):
    """fn() with pairs of channel tiles run together where they can be and one tile at a time,
    with the channel tiles each call's work groups ran in pairs."""
    return _switched_counted(monkeypatch, "CPU_AMX_CONV_PAIR_TILES", fn, "paired")


def test_paired_channel_tiles_equal_one_at_a_time_on_random_geometries(monkeypatch):
    """40 seeded draws of bf16 / fp32 convs and transposed convs (1-5 channel tiles, partial
    ones, kernels 3-9, strides 1-4, the window layout and x in place where they apply, both work
    group shapes, 1 / 2 threads, the clamped fp32 output): the bits of one channel tile at a
    time, within bf16's 1e-2 of float64; a plain conv pairs every tile but an odd last one, and
    the switch off pairs none."""
    rng = __import__("random").Random(11)
    nt = torch.get_num_threads()
    done = 0
    try:
        while done < 40:
            drawn = _random_geometry(rng, monkeypatch, [3, 16, 24, 48, 72],
                                     [16, 17, 32, 40, 48, 64, 80], 2, 40, 120,
                                     cos_transposed=[3, 16, 17, 32, 48, 72])
            if drawn is None:
                continue
            transposed, ci, co, k, s, p, n, h, w = drawn
            g = torch.Generator().manual_seed(300 + done)
            x = torch.randn(n, ci, h, w, generator=g)
            if rng.random() < 0.7:
                x = x.to(torch.bfloat16)
            x = x.contiguous(memory_format=torch.channels_last)
            b = torch.randn(co, generator=g)
            clamp = (-0.5, 0.5) if transposed and rng.random() < 0.3 else None
            if transposed:
                W = _param((ci, co, k, k), 400 + done)
                op = rng.randint(0, s - 1)

                def run():
                    return C._conv_transpose2d_amx(x, W, b, co, s, p, op, None, clamp)

                def reference():
                    return F.conv_transpose2d(_bf(x), _bf(W), b.double(), stride=s, padding=p,
                                              output_padding=op)
            else:
                W = _param((co, ci, k, k), 400 + done)

                def run():
                    return C._conv2d_amx(x, W, b, co, s, p)

                def reference():
                    return F.conv2d(_bf(x), _bf(W), b.double(), stride=s, padding=p)
            (yp, paired), (y1, single) = _paired_and_single(monkeypatch, run)
            if yp is None:        # a tap plan that crops x: not the direct kernel's
                continue
            ref = reference()
            what = (transposed, ci, co, k, s, p, n, h, w, clamp)
            assert len(paired) == 1 and single == [0], what
            if not transposed:
                assert paired[0] == (co + 15) // 16 // 2 * 2, what
            bits = torch.int16 if yp.dtype == torch.bfloat16 else torch.int32
            assert torch.equal(yp.view(bits), y1.view(bits)), what
            _close(yp, ref.clamp(*clamp) if clamp else ref)
            done += 1
    finally:
        torch.set_num_threads(nt)


@pytest.mark.parametrize("ci, co, k, s, p, want", [
    (48, 48, 5, 2, 2, 8),     # dec2-like: 4 phases of 3 tiles, a pair in each phase
    (24, 16, 9, 4, 4, 16),    # 16 phases of one tile: their chunks pair them all
])
def test_paired_channel_tiles_of_sub_pixel_phases(monkeypatch, ci, co, k, s, p, want):
    """A transposed conv's channel tiles pair only with a neighbour that skips the same taps
    (with the same count, another phase's taps are other chunks): ``want`` of its tiles run in
    pairs, the bits of one tile at a time."""
    monkeypatch.setattr(C, "CPU_AMX_CONV_PAD_CHANNELS", False)
    W = _param((ci, co, k, k), 87)
    b = torch.randn(co, generator=torch.Generator().manual_seed(88))
    x = _x(1, ci, 20, 50, 89)
    (yp, paired), (y1, _) = _paired_and_single(
        monkeypatch, lambda: C._conv_transpose2d_amx(x, W, b, co, s, p, s - 1))
    assert paired == [want]
    assert torch.equal(yp.view(torch.int16), y1.view(torch.int16))
    _close(yp, F.conv_transpose2d(_bf(x), _bf(W), b.double(), stride=s, padding=p,
                                  output_padding=s - 1))


def test_channel_tiles_with_as_many_other_chunks_are_not_paired():
    """Two channel tiles that skip as many chunks but not the same ones (tile_nz) are run one at
    a time (a pair reads one chunk list for both): pair_tiles on gives pair_tiles off's bits,
    with no tile paired; the same two tiles skipping the same chunk do pair."""
    ck = C._amx_conv_kernels()
    ci, co, k, H, W = 16, 32, 3, 12, 40
    x = _x(1, ci, H, W, 90)
    wpk, nz = C._amx_pack(_param((co, ci, k, k), 91))
    y = {}
    for skip in ((0, 2), (1, 1)):          # the tap row each channel tile skips
        nz2 = nz.clone()
        nz2[0, skip[0]] = 0
        nz2[1, skip[1]] = 0
        for pair in (True, False):
            st = torch.zeros(3, dtype=torch.int64)
            out = torch.empty(1, H, W, co, dtype=torch.bfloat16)
            ck.conv_amx_forward(x.data_ptr(), 1, 1, H, W, ci, H + 2, W + 34, 1, 1,
                                wpk.data_ptr(), nz2.data_ptr(), k, k, 1, co, 0, H, W,
                                out.data_ptr(), H, W, co, 1, 1, stats=st.data_ptr(),
                                pair_tiles=pair)
            y[skip, pair] = (out, int(st[2]))
        assert y[skip, True][1] == (0 if skip == (0, 2) else 2)
        assert y[skip, False][1] == 0
        assert torch.equal(y[skip, True][0].view(torch.int16), y[skip, False][0].view(torch.int16))
    assert not torch.equal(y[(0, 2), True][0], y[(1, 1), True][0])


def test_paired_channel_tiles_with_the_epilogue_gdn(monkeypatch, two_threads):
    """The fused GDN of a 48-channel layer (3 channel tiles: a pair and a single one), through
    x in place and through the window layout of an image layer: the same bits either way."""
    W = _param((48, 48, 5, 5), 81)
    b = torch.randn(48, generator=torch.Generator().manual_seed(82))
    gdn = C._amx_epilogue_gdn(_gdn_kw(48, 83, False), 48, 48)
    x = _x(1, 48, 40, 100, 84)
    (yp, paired), (y1, _) = _paired_and_single(monkeypatch,
                                               lambda: C._conv2d_amx(x, W, b, 48, 2, 2, gdn))
    assert paired == [2] and torch.equal(yp.view(torch.int16), y1.view(torch.int16))
    W1 = _param((48, 3, 9, 9), 85)
    xi = _x(1, 3, 64, 200, 86)
    (yp, paired), (y1, _) = _paired_and_single(monkeypatch,
                                               lambda: C._conv2d_amx(xi, W1, b, 48, 4, 4, gdn))
    assert paired == [2] and torch.equal(yp.view(torch.int16), y1.view(torch.int16))


# -- the GDN of a conv read through the window layout, band by band (AMX_CONV_GDN_WINDOWS) --------
def _kernel_reads_windows(k, ci, s):
    """Whether the kernel takes the window layout for this conv: with it no work group reads x
    in place (stats[0]), without it (windows=False) some do, on a 64 x 200 bf16 image."""
    ck = C._amx_conv_kernels()
    H, W, co, p = 64, 200, 32, k // 2
    x = _x(1, ci, H, W, 100)
    wpk, nz = C._amx_pack(_param((co, ci, k, k), 101))
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    wp = max(W + 2 * p, (-(-Wo // 16) * 16 - 1) * s + -(-(-(-(k * ci) // 32) * 32) // ci))
    y = torch.empty(1, Ho, Wo, co, dtype=torch.bfloat16)
    inside = []
    for windows in (True, False):
        st = torch.zeros(3, dtype=torch.int64)
        ck.conv_amx_forward(x.data_ptr(), 1, 1, H, W, ci, H + 2 * p, wp, p, p, wpk.data_ptr(),
                            nz.data_ptr(), k, k, s, co, 0, Ho, Wo, y.data_ptr(), Ho, Wo, co, 1,
                            1, windows=windows, stats=st.data_ptr())
        inside.append(int(st[0]))
    assert inside[1] > 0, (k, ci, s)      # (else this geometry cannot tell)
    return inside[0] == 0


@pytest.mark.parametrize("k, ci, s, want", [
    (9, 3, 4, True),      # enc1: 27 elements, 24-byte step
    (5, 3, 2, True),      # 15 elements, 12-byte step
    (9, 2, 4, True),      # 18 elements, 16-byte step
    (3, 10, 2, True),
    (1, 16, 1, True),
    (9, 4, 4, False),     # 36 elements: more than one K chunk
    (1, 32, 1, False),    # 32 elements but a 64-byte step
    (2, 16, 2, False),    # 32 elements, 64-byte step
    (5, 48, 2, False),    # enc2
])
def test_window_rule_mirrors_the_kernels(k, ci, s, want):
    """_amx_windows gives csrc/cpu/conv_amx.cpp's conv_amx_windows for a plain conv (a tap row
    of at most 32 elements, a pixel step that is not a multiple of 64 bytes), as the kernel
    shows it: with the window layout no work group reads x in place."""
    assert C._amx_windows(k, ci, s) == want
    assert _kernel_reads_windows(k, ci, s) == want


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("c, n, h, w", [
    (48, 1, 67, 53),      # several bands of 8 output rows, a partial column block
    (17, 2, 41, 21),      # channels not a multiple of 16, two images of 11 output rows (a
                          # work group of 2 rows spans both images)
    (96, 1, 45, 70),
    (192, 1, 20, 130),    # SlimCAE's widest
    (48, 1, 9, 4001),     # 1001 output columns: bands of 2 rows
])
@pytest.mark.parametrize("inverse", [False, True])
def test_window_layout_gdn_equals_conv_then_gdn_kernel(c, n, h, w, inverse, threads):
    """enc1's geometry (9x9/4 from RGB, the window layout) with the GDN run band by band on the
    output in y: the bits of the conv followed by the GDN op's AMX kernel, within bf16's
    accuracy of the float64 conv + GDN; odd sizes, several bands and images, both thread
    counts (the work groups split across threads mid-band)."""
    assert C._amx_windows(9, 3, 4)
    W = _param((192, 3, 9, 9), 90)
    b = torch.randn(192, generator=torch.Generator().manual_seed(91))
    kw = _gdn_kw(192, 92, inverse)
    x = _x(n, 3, h, w, 93)
    nt = torch.get_num_threads()
    torch.set_num_threads(2)          # (the rule's thread count, for the arguments)
    try:
        g = C._amx_epilogue_gdn(kw, c, 3, windows=True)
        assert g is not None
        torch.set_num_threads(threads)
        y_fused = C._conv2d_amx(x, W, b, c, 4, 4, g)
        y = C._conv2d_amx(x, W, b, c, 4, 4)
        torch.set_num_threads(2)
        two_pass = C._apply_gdn(y, kw)
    finally:
        torch.set_num_threads(nt)
    lin = F.conv2d(x.double(), _bf(W[:c]), b[:c].double(), stride=4, padding=4)
    assert y_fused.shape == two_pass.shape == lin.shape
    assert torch.equal(y_fused, two_pass)
    assert not torch.equal(y_fused, y)                     # (the GDN ran)
    _close(y_fused, _gdn64(lin, kw))


def test_slim_conv2d_takes_the_window_gdn_and_the_codec_bytes_stay(monkeypatch, two_threads):
    """slim_conv2d(gdn=) of an image at any width runs the GDN in the kernel (no GDN op after)
    where AMX_CONV_GDN_WINDOWS, else after it: the same bits; a SlimCAE's bytes and images are
    the same either way."""
    applied = []
    real = C._apply_gdn
    monkeypatch.setattr(C, "_apply_gdn", lambda y, k: applied.append(1) or real(y, k))
    W = _param((192, 3, 9, 9), 94)
    b = torch.randn(192, generator=torch.Generator().manual_seed(95))
    kw = _gdn_kw(192, 96, False)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(97))
    x = x.contiguous(memory_format=torch.channels_last)
    out = {}
    for flag in (True, False):
        monkeypatch.setattr(C, "AMX_CONV_GDN_WINDOWS", flag)
        applied.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out[flag] = slim_conv2d(x, W, b, stride=4, padding=4, out_width=144, gdn=kw)
        assert applied == ([] if flag else [1])
    assert torch.equal(out[True], out[False])
    _codec_same_either_way(monkeypatch, "AMX_CONV_GDN_WINDOWS", (96, 48, 16), 98)


@pytest.mark.parametrize("ci, co, k, s, hw", [
    (3, 48, 9, 4, 4),      # enc1 of a 4x4 image: one output pixel
    (48, 48, 5, 2, 2),     # enc2-like from 2x2: one output pixel
    (3, 1, 9, 4, 16),      # one output channel
    (48, 1, 5, 2, 8),
])
def test_a_gdn_whose_output_is_both_layouts_keeps_the_op(ci, co, k, s, hw):
    """An output of one pixel or one channel is NCHW-contiguous too, and the GDN op runs its
    NCHW kernel there, which rounds apart from the channels_last one of the conv's fused GDN:
    such an output keeps the op, so 1 thread (no fusion by the thread rule) and 2 threads give
    the same bits (they differed in 8-11 of 50 seeds)."""
    nt = torch.get_num_threads()
    try:
        for seed in range(50):
            g = torch.Generator().manual_seed(seed)
            W = torch.randn(48, ci, k, k, generator=g) / (ci * k * k) ** 0.5
            b = torch.randn(48, generator=g)
            kw = {"beta": torch.rand(48, generator=g) + 0.5,
                  "gamma": torch.rand(48, 48, generator=g) * 0.1, "inverse": False}
            x = torch.rand(1, ci, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
            out = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    out[threads] = slim_conv2d(x, W, b, stride=s, padding=k // 2, out_width=co,
                                               gdn=kw)
            assert torch.equal(out[1], out[2]), seed
    finally:
        torch.set_num_threads(nt)


# -- the range check of an fp32 x (compress's image: ops.image_io.checked_by_first_conv) --------
_RANGE = (-0.5, 1.5)


@pytest.mark.parametrize("windows", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("ci, co, k, s, p, n, h, w", [
    (3, 48, 9, 4, 4, 1, 67, 53),      # enc1: several bands, odd sizes (the windows read all)
    (3, 17, 9, 4, 4, 2, 37, 21),      # two images
    (3, 24, 5, 2, 2, 2, 19, 35),      # 5x5/2 from RGB
    (3, 16, 3, 4, 1, 1, 21, 23),      # 3x3/4: the windows skip rows and columns (scanned after)
    (3, 16, 9, 4, 0, 1, 30, 30),      # no padding: the last row and column no output reads
    (3, 16, 9, 4, 0, 1, 13, 69),      # 16 output columns, all inside the row: no edge windows
])
def test_range_check_sees_every_value(monkeypatch, windows, threads, ci, co, k, s, p, n, h, w):
    """The kernel's range check of an fp32 x refuses a value above or below the bounds, NaN or
    inf wherever it lies (corners, edges, a row or column that no output reads), through the
    window layout and the padded copy, on 1 and 2 threads; the bounds themselves pass, and the
    output is the one without the check."""
    from slimkernels.ops import image_io
    monkeypatch.setattr(C, "CPU_AMX_CONV_WINDOWS", windows)
    nt = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(h * w + co)
        x = (torch.rand(n, ci, h, w, generator=g) * 1.9 - 0.45).contiguous(
            memory_format=torch.channels_last)
        x[0, 0, 0, 1], x[-1, -1, -1, -2] = _RANGE          # the bounds: allowed
        W, b = _param((co, ci, k, k), 5), torch.randn(co, generator=g)
        y = C._conv2d_amx(x, W, b, co, s, p)
        assert torch.equal(C._conv2d_amx(x, W, b, co, s, p, check=_RANGE), y)
        spots = [(0, 0, 0, 0), (n - 1, ci - 1, h - 1, w - 1), (0, ci - 1, 0, w - 1),
                 (n - 1, 0, h - 1, 0), (0, 1, h // 2, w // 2), (n - 1, 2, h - 1, w // 3)]
        for spot in spots:
            for bad in (1.5001, -0.5001, float("nan"), float("inf"), -float("inf"), 200.0):
                xb = x.clone(memory_format=torch.channels_last)
                xb[spot] = bad
                with pytest.raises(image_io.ImageRangeError, match="outside"):
                    C._conv2d_amx(xb, W, b, co, s, p, check=_RANGE)
    finally:
        torch.set_num_threads(nt)


def test_range_check_is_for_an_fp32_x_only():
    """A bf16 x is not an image the kernel checks: bad arguments. (The range error is a
    ValueError.)"""
    from slimkernels.ops import image_io
    x = _x(1, 3, 20, 20, 4)
    with pytest.raises(RuntimeError, match="bad arguments"):
        C._conv2d_amx(x, _param((16, 3, 9, 9), 6), None, 16, 4, 4, check=_RANGE)
    assert issubclass(image_io.ImageRangeError, ValueError)
