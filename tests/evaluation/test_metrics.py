"""PSNR and MS-SSIM against a float64 NumPy/SciPy reference and known properties."""
import math

import numpy as np
import pytest
import torch

from slimkernels.evaluation.metrics import (MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_db, psnr, ssim,
                                            to_uint8_values)

from .conftest import make_image


# -- independent float64 reference (NumPy / SciPy, no torch) -----------------------------------
def _ref_gauss(size=11, sigma=1.5):
    c = np.arange(size) - size // 2
    g = np.exp(-c ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _ref_valid_filter(img, g):
    """Separable 'valid' correlation (SciPy's C implementation), cropped to fully-covered pixels."""
    from scipy import ndimage

    r = len(g) // 2
    out = ndimage.correlate1d(ndimage.correlate1d(img, g, axis=1, mode="constant"), g, axis=0,
                              mode="constant")
    return out[r:-r, r:-r]


def _ref_down(img):
    """2x2 average with one zero row/column on both sides of an odd side (count_include_pad)."""
    h, w = img.shape
    ph, pw = h % 2, w % 2
    p = np.pad(img, ((ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph) // 2, (w + 2 * pw) // 2
    p = p[: 2 * oh, : 2 * ow]
    return p.reshape(oh, 2, ow, 2).mean(axis=(1, 3))


def _ref_ms_ssim(a, b, L=255.0):
    """a, b: [H, W, 3] uint8 -> MS-SSIM (float64), channel-wise then averaged."""
    g = _ref_gauss()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        prod = 1.0
        for lvl, wgt in enumerate(MS_SSIM_WEIGHTS):
            mx, my = _ref_valid_filter(x, g), _ref_valid_filter(y, g)
            vx = _ref_valid_filter(x * x, g) - mx ** 2
            vy = _ref_valid_filter(y * y, g) - my ** 2
            cxy = _ref_valid_filter(x * y, g) - mx * my
            cs = ((2 * cxy + c2) / (vx + vy + c2))
            if lvl < 4:
                prod *= max(cs.mean(), 0.0) ** wgt
                x, y = _ref_down(x), _ref_down(y)
            else:
                s = ((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs).mean()
                prod *= max(s, 0.0) ** wgt
        vals.append(prod)
    return float(np.mean(vals))


def _t(arr):
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255.0


def test_psnr_known_value():
    a = np.full((20, 30, 3), 100, np.uint8)
    b = a.copy()
    b[..., 0] += 6  # MSE = 36 / 3 = 12
    expect = 20 * math.log10(255) - 10 * math.log10(12.0)
    assert float(psnr(_t(a), _t(b))[0]) == pytest.approx(expect, abs=1e-10)
    assert float(psnr(torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1))[0]) \
        == pytest.approx(expect, abs=1e-10)


def test_psnr_rounds_to_8bit_and_is_per_image():
    x = torch.rand(2, 3, 16, 16)
    q = to_uint8_values(x) / 255
    jitter = q + 0.4 / 255 * (torch.rand_like(q) - 0.5)  # stays within the same 8-bit bin
    assert torch.isinf(psnr(q, jitter)).all()
    y = x.clone()
    y[1] = 1 - y[1]
    p = psnr(x, y)
    assert p.shape == (2,) and p.dtype == torch.float64
    assert math.isinf(p[0]) and math.isfinite(p[1])


def test_psnr_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="NaN"):
        psnr(torch.full((1, 3, 4, 4), float("nan")), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.rand(8, 8), torch.rand(8, 8))


@pytest.mark.parametrize("h,w", [(176, 200), (171, 203)])
def test_ms_ssim_matches_float64_reference(h, w):
    a = make_image(3, h, w)
    rng = np.random.default_rng(4)
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).round().astype(np.uint8)
    got = float(ms_ssim(_t(a), _t(b))[0])
    ref = _ref_ms_ssim(a, b)
    assert 0.5 < ref < 1.0
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_ms_ssim_properties():
    a = make_image(5, 176, 176)
    rng = np.random.default_rng(6)
    x = _t(a)
    assert float(ms_ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-12)
    vals = []
    for sd in (2, 8, 30):
        b = np.clip(a + rng.normal(0, sd, a.shape), 0, 255).round().astype(np.uint8)
        y = _t(b)
        v = float(ms_ssim(x, y)[0])
        assert float(ms_ssim(y, x)[0]) == pytest.approx(v, abs=1e-12)  # symmetric
        assert 0.0 <= v < 1.0
        vals.append(v)
    assert vals[0] > vals[1] > vals[2]
    batch = ms_ssim(torch.cat([x, x]), torch.cat([x, _t(b)]))
    assert batch.shape == (2,) and batch[0] == pytest.approx(1.0) and batch[1] == pytest.approx(vals[2])
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


def test_ms_ssim_db_refuses_a_value_above_one():
    assert ms_ssim_db(1.0) == math.inf and math.isnan(ms_ssim_db(float("nan")))
    assert ms_ssim_db(1.0 + 1e-9) == math.inf   # (rounding of near-identical images)
    for bad in (1.2, torch.tensor([0.5, 1.2])):
        with pytest.raises(ValueError, match="at most 1"):
            ms_ssim_db(bad)
    t = ms_ssim_db(torch.tensor([0.99, 1.0 + 1e-9], dtype=torch.float64))
    assert float(t[0]) == pytest.approx(20.0) and float(t[1]) == math.inf


def test_ssim_and_ms_ssim_size_checks():
    with pytest.raises(ValueError, match="> 160"):
        ms_ssim(torch.rand(1, 3, 160, 300), torch.rand(1, 3, 160, 300))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.rand(1, 3, 10, 30), torch.rand(1, 3, 10, 30))
    assert float(ssim(torch.ones(1, 3, 20, 20) * 0.5, torch.ones(1, 3, 20, 20) * 0.5)[0]) == pytest.approx(1.0)


def test_ms_ssim_matches_pytorch_msssim(monkeypatch):
    pm = pytest.importorskip("pytorch_msssim", reason="pytorch-msssim is not installed")
    import sys

    pms = sys.modules["pytorch_msssim.ssim"]
    a = make_image(7, 200, 232)
    rng = np.random.default_rng(8)
    b = np.clip(a + rng.normal(0, 10, a.shape), 0, 255).round().astype(np.uint8)
    xa = torch.from_numpy(a).permute(2, 0, 1)[None].double()
    xb = torch.from_numpy(b).permute(2, 0, 1)[None].double()
    ours = float(ms_ssim(_t(a), _t(b))[0])
    # as shipped: pytorch_msssim builds its Gaussian window in float32 (~1e-7 relative error)
    theirs = float(pm.ms_ssim(xa, xb, data_range=255, size_average=True))
    assert ours == pytest.approx(theirs, rel=1e-5)
    # with a float64 window the two agree to float64 rounding
    orig = pms._fspecial_gauss_1d

    def gauss64(size, sigma):
        c = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-(c ** 2) / (2 * sigma ** 2))
        return (g / g.sum())[None, None]

    monkeypatch.setattr(pms, "_fspecial_gauss_1d", gauss64)
    theirs64 = float(pms.ms_ssim(xa, xb, data_range=255, size_average=True))
    monkeypatch.setattr(pms, "_fspecial_gauss_1d", orig)
    assert ours == pytest.approx(theirs64, rel=1e-10)


def test_float_images_in_0_255_are_refused_not_clamped():
    """(psnr(a * 255, b * 255) clamped both to 1 and returned 20.88 dB for a 34 dB pair.)"""
    import torch

    from slimkernels.evaluation.metrics import ms_ssim, psnr
    a = torch.rand(1, 3, 200, 200, generator=torch.Generator().manual_seed(0))
    b = (a + 0.02 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    for f in (psnr, ms_ssim):
        with pytest.raises(ValueError, match=r"0-255 pixel values\? divide by 255"):
            f(a * 255, b * 255)
    assert torch.isfinite(psnr(a, b)).all()
    with pytest.raises(ValueError, match="data_range must be 255"):
        ms_ssim(a, b, data_range=0)


def test_data_range_other_than_255_is_refused():
    """(pytorch_msssim's data_range=1.0 for [0, 1] images gave MS-SSIM 0.790 for 0.940 and SSIM
    0.431 for 0.869, silently: the images are compared as 8-bit values; 0, -255 and inf were
    taken too.)"""
    import torch

    from slimkernels.evaluation.metrics import ms_ssim, ssim
    a = torch.rand(1, 3, 170, 170, generator=torch.Generator().manual_seed(0))
    b = (a + 0.05).clamp(0, 1)
    for f in (ssim, ms_ssim):
        for bad in (1.0, 0, -255, float("inf")):
            with pytest.raises(ValueError, match="data_range must be 255"):
                f(a, b, data_range=bad)
        assert f(a, b, data_range=255) == f(a, b)


def test_images_that_are_not_rgb_are_refused():
    """(RGBA was averaged over its 4 channels; an [H, W, 3] array gave SSIM's "got (768, 3)";
    an empty image a PSNR of NaN.)"""
    import numpy as np

    from slimkernels.evaluation.metrics import psnr, ssim
    rgba = np.zeros((4, 32, 32), np.uint8)
    with pytest.raises(ValueError, match=r"expected an RGB image \(3 channels\), got shape"):
        psnr(rgba, rgba)
    hwc = np.zeros((32, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"an \[H, W, 3\] array"):
        ssim(hwc, hwc)
    with pytest.raises(ValueError, match="the image is empty"):
        psnr(np.zeros((3, 0, 5), np.uint8), np.zeros((3, 0, 5), np.uint8))


def _kernels_or_skip():
    from slimkernels._cpu import cpu_kernels
    K = cpu_kernels("ssim_filter_available")
    if K is None:
        pytest.skip("_cpu_kernels not built (or switched off): the PyTorch path only")
    return K


@pytest.mark.parametrize("shape", [(15, 96, 130), (3, 11, 11), (2, 43, 27), (1, 75, 17),
                                   (4, 12, 400)])
def test_the_compiled_window_filter_matches_the_shifted_slice_sums(shape):
    """``_filter`` on CPU float64 (the compiled ``ssim_filter``: blocks of 32 rows, 16 columns in
    registers, then the rest) against the PyTorch shifted-slice path: one output row or column,
    several row blocks, widths below and past 16, a strided input, the Gaussian window and
    random (asymmetric) taps. Bit for bit on this CPU
    (the same multiply-adds in the same order); 1e-15 relative is the bound asserted."""
    from slimkernels.evaluation import metrics as M
    _kernels_or_skip()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(*shape, dtype=torch.float64, generator=gen) * 255
    taps = torch.rand(11, dtype=torch.float64, generator=gen)   # (not symmetric: tap order shows)
    for g, xin in ((M.gaussian_window(), x), (taps, x),
                   (taps, x.transpose(-1, -2).contiguous().transpose(-1, -2))):
        assert M._filter_kernel(xin.reshape(-1, *shape[-2:]), g) is not None
        got = M._filter(xin, g)
        ref = torch.stack([M._filter_plane(p, g) for p in xin.reshape(-1, *shape[-2:])])
        assert got.shape == ref.shape == (shape[0], shape[1] - 10, shape[2] - 10)
        assert torch.isfinite(got).all()
        assert ((got - ref).abs() <= 1e-15 * ref.abs().clamp_min(1.0)).all()


def test_ms_ssim_is_the_same_with_and_without_the_compiled_filter(monkeypatch):
    from slimkernels.evaluation import metrics as M
    _kernels_or_skip()
    a = torch.from_numpy(make_image(4, 200, 176)).permute(2, 0, 1).double() / 255
    b = (a + 0.05 * torch.randn(a.shape, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    fast = ms_ssim(a, b)
    monkeypatch.setattr(M, "_filter_kernel", lambda planes, g: None)
    slow = ms_ssim(a, b)
    assert torch.isfinite(fast).all() and abs(float(fast[0]) - float(slow[0])) <= 1e-14


def test_the_compiled_window_filter_refuses_bad_arguments():
    K = _kernels_or_skip()
    x = torch.zeros(2, 12, 12, dtype=torch.float64)
    g = torch.ones(11, dtype=torch.float64)
    out = torch.empty(2, 2, 2, dtype=torch.float64)
    for P, H, W, k in ((2, 10, 12, 11), (2, 12, 10, 11), (2, 12, 12, 0), (-1, 12, 12, 11)):
        with pytest.raises(RuntimeError, match="ssim_filter: bad arguments"):
            K.ssim_filter(x.data_ptr(), P, H, W, g.data_ptr(), k, out.data_ptr(), 1)
    with pytest.raises(RuntimeError, match="ssim_filter: bad arguments"):
        K.ssim_filter(0, 2, 12, 12, g.data_ptr(), 11, out.data_ptr(), 1)
