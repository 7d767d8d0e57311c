"""Image quality metrics on 8-bit RGB: PSNR and MS-SSIM (Wang et al. 2003).

Both take images as float tensors in [0, 1] (``[N, 3, H, W]`` or ``[3, H, W]``) or uint8
tensors/arrays in [0, 255], round them to 8-bit values first (what a decoder writes to a PNG),
and compute in float64. This is the field's convention for Kodak tables (Yang et al. 2021).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from ..codec import PIXEL_RANGE

ImageLike = Union[torch.Tensor, np.ndarray]

#: MS-SSIM scale weights of Wang, Simoncelli & Bovik (2003), as in pytorch_msssim / TF.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
#: MS-SSIM needs both image sides above this (its 5th scale would be smaller than the window).
MS_SSIM_MIN_SIDE = (WIN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


def to_uint8_values(x: ImageLike) -> torch.Tensor:
    """Image -> ``[N, 3, H, W]`` float64 tensor of 8-bit values (integers 0..255).

    Args:
        x: float tensor/array in [0, 1] (rounded as ``round(clamp(x, 0, 1) * 255)``), or a uint8
            tensor/array in [0, 255]; shape ``[N, 3, H, W]`` or ``[3, H, W]``.

    Raises:
        ValueError: wrong rank, not 3 channels, empty, a non-finite float image, or a float
            image with values far outside [0, 1] (beyond ``slimkernels.codec.PIXEL_RANGE``:
            0-255 values passed as floats, which the clamp turned into a wrong PSNR silently).
    """
    t = torch.as_tensor(x)
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4:
        raise ValueError(f"expected an image [N, C, H, W] or [C, H, W], got shape {tuple(t.shape)}")
    if t.shape[1] != 3:   # (RGBA was averaged over 4 channels; [H, W, 3] from PIL / numpy gave
        # SSIM's "got (768, 3)")
        hint = (": an [H, W, 3] array (numpy / PIL)? pass x.permute(2, 0, 1) / "
                "x.transpose(2, 0, 1)" if t.shape[-1] == 3 else "")
        raise ValueError(f"expected an RGB image (3 channels), got shape {tuple(t.shape)}{hint}")
    if t.numel() == 0:   # (PSNR NaN)
        raise ValueError(f"the image is empty: shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.to(torch.float64)
    if not torch.is_floating_point(t):
        raise ValueError(f"expected a float image in [0, 1] or uint8, got dtype {t.dtype}")
    t = t.detach().to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError("the image holds NaN or inf values")
    if t.numel() and (t.min() < PIXEL_RANGE[0] or t.max() > PIXEL_RANGE[1]):
        raise ValueError(f"a float image must hold values in [0, 1]; this one reaches "
                         f"{float(t.min()):.4g} .. {float(t.max()):.4g}"
                         + (" (0-255 pixel values? divide by 255, or pass uint8)"
                            if float(t.max()) > 2.0 else ""))
    return t.clamp(0, 1).mul(255).round()


def _pair(a: ImageLike, b: ImageLike):
    x, y = to_uint8_values(a), to_uint8_values(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return x, y.to(x.device)


def mse(a: ImageLike, b: ImageLike) -> torch.Tensor:
    """Per-image mean squared error of the 8-bit values: ``[N]`` float64."""
    x, y = _pair(a, b)
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(a: ImageLike, b: ImageLike) -> torch.Tensor:
    """Per-image PSNR in dB on 8-bit rounded RGB: ``20 log10 255 - 10 log10 MSE``.

    Returns:
        ``[N]`` float64 (``inf`` for identical images).

    Raises:
        ValueError: as :func:`to_uint8_values` (wrong rank, non-finite or 0-255 float images), or
            the two images' shapes differ.
    """
    m = mse(a, b)
    return 20 * np.log10(255.0) - 10 * torch.log10(m)


def gaussian_window(size: int = WIN_SIZE, sigma: float = WIN_SIGMA,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalized 1-D Gaussian ``[size]`` (the separable SSIM window)."""
    c = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(c ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_plane(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    k = g.numel()
    H, W = x.shape[-2:]
    w = [float(v) for v in g]
    out = x[:, 0:W - k + 1] * w[0]
    for i in range(1, k):
        out.add_(x[:, i:W - k + 1 + i], alpha=w[i])
    x = out
    out = x[0:H - k + 1, :] * w[0]
    for i in range(1, k):
        out.add_(x[i:H - k + 1 + i, :], alpha=w[i])
    return out


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of ``[..., H, W]`` (each plane on its own).

    A CPU float64 ``x`` goes to the compiled kernel (``_cpu_kernels.ssim_filter``: the same sums
    in the same tap order, one cache-sized block of rows at a time: ~8x faster on a Kodak
    image's 15 planes on a Zen 3); elsewhere sums of shifted slices, one plane at a time
    (cache-sized temporaries: float64 grouped convolutions take a slow path on CPU).
    """
    H, W = x.shape[-2:]
    planes = x.reshape(-1, H, W)
    K = _filter_kernel(planes, g)
    if K is not None:
        planes, g = planes.contiguous(), g.contiguous()
        k = g.numel()
        out = torch.empty(planes.shape[0], H - k + 1, W - k + 1, dtype=torch.float64)
        K.ssim_filter(planes.data_ptr(), planes.shape[0], H, W, g.data_ptr(), k,
                      out.data_ptr(), torch.get_num_threads())
    else:
        out = torch.stack([_filter_plane(p, g) for p in planes])
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


def _filter_kernel(planes: torch.Tensor, g: torch.Tensor):
    """The compiled kernels' module when it takes this filter (CPU float64 planes and taps, at
    least one plane, each at least as large as the window; built and not switched off by
    ``SLIMKERNELS_CPU_KERNELS=0``), else None."""
    from .._cpu import cpu_kernels
    k = g.numel()
    if planes.dtype != torch.float64 or g.dtype != torch.float64 or not planes.is_cpu or \
            not g.is_cpu or planes.shape[0] == 0 or k < 1 or min(planes.shape[-2:]) < k or \
            planes.requires_grad:
        return None
    return cpu_kernels("ssim_filter_available")


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float):
    """Per-image, per-channel mean SSIM and contrast-structure term: ``([N, C], [N, C])``."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, g), _filter(y, g)
    sxx = _filter(x * x, g) - mu_x ** 2
    syy = _filter(y * y, g) - mu_y ** 2
    sxy = _filter(x * y, g) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _check_data_range(data_range) -> None:
    """ValueError unless ``data_range`` is 255: the metrics compare the images' 8-bit values
    (a [0, 1] float image is converted first), so pytorch_msssim's ``data_range=1.0`` for such
    an image was a much lower score, silently (MS-SSIM 0.790 for 0.940), and 0, -255 or inf
    were taken."""
    if data_range != 255:
        raise ValueError(f"data_range must be 255 (the images are compared as 8-bit values, "
                         f"a float image in [0, 1] converted first), got {data_range!r:.40}: "
                         f"leave it out")


def ssim(a: ImageLike, b: ImageLike, data_range: float = 255.0) -> torch.Tensor:
    """Single-scale SSIM (11x11 Gaussian, sigma 1.5) on 8-bit values: ``[N]`` float64.
    ``data_range``: 255 (another value is a ValueError: see :func:`ms_ssim`)."""
    _check_data_range(data_range)
    x, y = _pair(a, b)
    if min(x.shape[-2:]) < WIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {WIN_SIZE}x{WIN_SIZE}, got "
                         f"{tuple(x.shape[-2:])}")
    s, _ = _ssim_cs(x, y, gaussian_window(dtype=x.dtype).to(x.device), data_range)
    return s.mean(1)


def ms_ssim(a: ImageLike, b: ImageLike, data_range: float = 255.0) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003) on 8-bit rounded RGB, per image.

    Five scales with weights :data:`MS_SSIM_WEIGHTS`, an 11x11 Gaussian window (sigma 1.5), K1 0.01,
    K2 0.03, 2x2 average-pool downsampling (zero padding of odd sizes, as pytorch_msssim), negative
    per-channel SSIM/CS values clipped to 0, channels averaged at the end. Matches
    ``pytorch_msssim.ms_ssim(x, y, data_range=255)``.

    Args:
        a, b: images ``[N, 3, H, W]`` / ``[3, H, W]``, float in [0, 1] or uint8.
        data_range: dynamic range of the 8-bit values: 255, the only value taken (the images
            are compared as 8-bit values whatever their dtype: pass [0, 1] floats with the
            default, not pytorch_msssim's ``data_range=1.0``).

    Returns:
        ``[N]`` float64 in [0, 1].

    Raises:
        ValueError: shapes differ, the smaller side is <= 160 pixels (the 5th scale would be
            smaller than the window), or ``data_range`` is not 255.
    """
    _check_data_range(data_range)
    x, y = _pair(a, b)
    levels = len(MS_SSIM_WEIGHTS)
    if min(x.shape[-2:]) <= MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs both image sides > {MS_SSIM_MIN_SIDE} pixels, got "
                         f"{tuple(x.shape[-2:])}")
    g = gaussian_window(dtype=x.dtype).to(x.device)
    w = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    mcs = []
    for i in range(levels):
        s, cs = _ssim_cs(x, y, g, data_range)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [d % 2 for d in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
    vals = torch.stack(mcs + [torch.relu(s)], dim=0)  # [levels, N, C]
    return torch.prod(vals ** w.view(-1, 1, 1), dim=0).mean(1)


#: How far above 1 a value may lie and still be taken as MS-SSIM 1 by :func:`ms_ssim_db` (the
#: rounding of a computed MS-SSIM of near-identical images).
MS_SSIM_ROUNDING = 1e-6


def ms_ssim_db(value: Union[float, torch.Tensor]):
    """MS-SSIM on a dB scale, ``-10 log10(1 - ms_ssim)`` (how RD plots usually show it): inf
    for 1.0 (identical images; without numpy's divide-by-zero warning), NaN for NaN.

    Args:
        value: MS-SSIM, a float or a float tensor of any shape, at most 1 (values up to
            :data:`MS_SSIM_ROUNDING` above it, rounding, are taken as 1).

    Raises:
        ValueError: a value further above 1 (no MS-SSIM is: NaN and numpy's warning before)."""
    if isinstance(value, torch.Tensor):
        if bool((value > 1 + MS_SSIM_ROUNDING).any()):
            raise ValueError(f"ms_ssim_db: MS-SSIM is at most 1, got a tensor with values up to "
                             f"{float(value.max()):.6g}")
        return -10 * torch.log10(1 - value.clamp_max(1))
    if value > 1 + MS_SSIM_ROUNDING:
        raise ValueError(f"ms_ssim_db: MS-SSIM is at most 1, got {value!r:.40}")
    value = min(value, 1.0) if value == value else value   # (NaN stays NaN)
    with np.errstate(divide="ignore"):
        return float(-10 * np.log10(1 - value))
