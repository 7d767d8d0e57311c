"""GDN / IGDN for any active channel count (dispatcher + PyTorch paths)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..backend import resolve_backend


def _effective_params(beta, gamma, C, gamma_scale, gamma_bias, beta_scale, beta_bias):
    g = gamma[:C, :C]
    b = beta[:C]
    if gamma_scale is not None:
        g = g * gamma_scale
    if gamma_bias is not None:
        g = g + gamma_bias
    if beta_scale is not None:
        b = b * beta_scale
    if beta_bias is not None:
        b = b + beta_bias
    return b, g


def gdn_reference(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, *, inverse: bool = False,
                  gamma_scale=None, gamma_bias=None, beta_scale=None, beta_bias=None) -> torch.Tensor:
    """Plain PyTorch GDN (x^2 -> 1x1 conv -> sqrt/rsqrt -> mul); the reference for every kernel.

    Args:
        x: ``[N, C, H, W]`` float tensor, active width ``C <= C_max``.
        beta: ``[C_max]`` effective (already reparameterized) beta.
        gamma: ``[C_max, C_max]`` effective gamma, laid out ``[C_out, C_in]``.
        inverse: IGDN (multiply by the norm) instead of GDN (divide).
        gamma_scale, gamma_bias, beta_scale, beta_bias: optional scalars (0-dim tensors or floats)
            of SlimGDN+: ``gamma_k = s * gamma[:C,:C] + b``, ``beta_k = s * beta[:C] + b``.

    Returns:
        ``[N, C, H, W]`` tensor of x's dtype.
    """
    C = x.shape[1]
    b, g = _effective_params(beta, gamma, C, gamma_scale, gamma_bias, beta_scale, beta_bias)
    norm = F.conv2d(x * x, g.to(x.dtype)[:, :, None, None], b.to(x.dtype))
    return x * torch.sqrt(norm) if inverse else x * torch.rsqrt(norm)


def gdn(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, *, inverse: bool = False,
        gamma_scale=None, gamma_bias=None, beta_scale=None, beta_bias=None,
        backend: Optional[str] = None) -> torch.Tensor:
    """GDN (or IGDN with ``inverse=True``) at the active width ``C = x.shape[1]``.

    Args:
        x: ``[N, C, H, W]``, NCHW or channels_last, fp32 / fp16 / bf16.
        beta: ``[C_max]``, gamma: ``[C_max, C_max]`` full effective parameters (read in place).
        backend: ``"triton"`` / ``"torch"`` / ``None`` (automatic, see :mod:`slimkernels.backend`).

    Returns:
        ``[N, C, H, W]`` tensor, same dtype as ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"gdn expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    C = x.shape[1]
    if beta.dim() != 1 or gamma.dim() != 2 or gamma.shape[0] != gamma.shape[1] \
            or beta.shape[0] != gamma.shape[0]:
        raise ValueError(f"gdn expects beta [C_max] and gamma [C_max, C_max], got "
                         f"{tuple(beta.shape)} and {tuple(gamma.shape)}")
    if C > beta.shape[0]:
        raise ValueError(f"x has {C} channels but the GDN parameters hold only {beta.shape[0]}")
    resolve_backend(x, backend)
    return gdn_reference(x, beta, gamma, inverse=inverse, gamma_scale=gamma_scale,
                         gamma_bias=gamma_bias, beta_scale=beta_scale, beta_bias=beta_bias)
