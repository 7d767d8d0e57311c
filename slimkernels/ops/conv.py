"""Width-sliced convolution and transposed convolution (dispatcher + PyTorch paths)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..backend import resolve_backend
from .gdn import gdn as _gdn


def slim_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                stride: int = 1, padding: int = 0, out_width: Optional[int] = None, gdn=None,
                backend: Optional[str] = None) -> torch.Tensor:
    """Convolution with the active slice ``weight[:out_width, :x.shape[1]]`` of the full weight.

    Args:
        x: ``[N, C_in, H, W]`` with ``C_in <= C_in_max``.
        weight: full ``[C_out_max, C_in_max, k, k]`` parameter.
        bias: full ``[C_out_max]`` or None.
        out_width: active output channels (default ``C_out_max``).
        gdn: optional ``(beta, gamma)`` or dict of :func:`slimkernels.ops.gdn` arguments to fuse.

    Returns:
        ``[N, out_width, H_out, W_out]``.
    """
    resolve_backend(x, backend)
    ci = x.shape[1]
    co = weight.shape[0] if out_width is None else out_width
    w = weight[:co, :ci]
    b = None if bias is None else bias[:co]
    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    if gdn is not None:
        kw = dict(gdn) if isinstance(gdn, dict) else {"beta": gdn[0], "gamma": gdn[1]}
        y = _gdn(y, **kw)
    return y


def slim_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                          *, stride: int = 1, padding: int = 0, output_padding: int = 0,
                          out_width: Optional[int] = None, igdn=None,
                          backend: Optional[str] = None) -> torch.Tensor:
    """Transposed convolution with the active slice ``weight[:x.shape[1], :out_width]``.

    Args:
        x: ``[N, C_in, H, W]``; weight: full ``[C_in_max, C_out_max, k, k]``; bias ``[C_out_max]``.
        igdn: optional ``(beta, gamma)`` or dict; IGDN is applied to ``x`` before the convolution.

    Returns:
        ``[N, out_width, H_out, W_out]``.
    """
    resolve_backend(x, backend)
    if igdn is not None:
        kw = dict(igdn) if isinstance(igdn, dict) else {"beta": igdn[0], "gamma": igdn[1]}
        kw["inverse"] = True
        x = _gdn(x, **kw)
    ci = x.shape[1]
    co = weight.shape[1] if out_width is None else out_width
    w = weight[:ci, :co]
    b = None if bias is None else bias[:co]
    return F.conv_transpose2d(x, w, b, stride=stride, padding=padding,
                              output_padding=output_padding)
