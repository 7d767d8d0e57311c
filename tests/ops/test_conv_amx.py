"""The direct AMX-BF16 CPU conv (csrc/cpu/conv_amx.cpp) against float64 references, and its
dispatch from the no-grad bf16 channels_last path of slimkernels.ops.conv (opt-in:
``CPU_AMX_CONV``)."""
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


@pytest.mark.parametrize("transposed", [False, True])
def test_dispatch_takes_amx_and_falls_back(monkeypatch, transposed):
    name = "_conv_transpose2d_amx" if transposed else "_conv2d_amx"
    monkeypatch.setattr(C, "CPU_AMX_CONV", True)  # opt-in (see slimkernels/ops/conv.py)
    calls = []
    real = getattr(C, name)
    monkeypatch.setattr(C, name, lambda *a: calls.append(1) or real(*a))
    W = _param((192, 192, 5, 5), 11).to(torch.bfloat16)
    b = torch.randn(192).to(torch.bfloat16)
    x = _x(1, 48, 16, 24, 12)
    kw = dict(stride=2, padding=2, out_width=48)
    if transposed:
        op, ref = slim_conv_transpose2d, F.conv_transpose2d
        kw["output_padding"] = 1
    else:
        op, ref = slim_conv2d, F.conv2d
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
