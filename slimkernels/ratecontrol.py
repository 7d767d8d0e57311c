"""Rate control: choose the sub-network width for a target rate or quality.

Works with any model that has ``widths`` (widest first), ``compress(x, width, precision=...)``
and ``decompress(data, precision=...)``: :class:`slimkernels.models.SlimCAE` and every
:class:`slimkernels.codec.SlimCodec`.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from ._checks import check_image_tensor


__all__ = ["Codec", "rd_table", "pick_width", "width_for_target_bpp", "width_for_target_psnr",
           "compress_to_target_bpp"]


class Codec(Protocol):
    """What rate control needs from a model."""

    widths: Sequence[int]

    def compress(self, x: torch.Tensor, width: Optional[int] = None, *,
                 precision: str = "auto", **kwargs) -> bytes:
        """``[1, 3, H, W]`` float image in [0, 1] -> the bytes of one file at ``width``
        (as :meth:`slimkernels.codec.SlimCodec.compress`)."""
        ...

    def decompress(self, data: bytes, *, precision: str = "auto") -> torch.Tensor:
        """The bytes of :meth:`compress` -> ``[1, 3, H, W]`` float32 image in [0, 1] (as
        :meth:`slimkernels.codec.SlimCodec.decompress`)."""
        ...


def _widest_first(model: Codec) -> List[int]:
    """``model.widths`` widest first (a Codec may list them in any order)."""
    return sorted(model.widths, reverse=True)


def rd_table(model: Codec, x: torch.Tensor, precision: str = "auto",
             **compress_kwargs) -> List[Dict]:
    """Compress ``x`` ``[1, 3, H, W]`` float in [0, 1] at every width:
    ``[{"width": int, "bpp": float, "psnr": float, "bytes": int}]``, widest first (bpp of the
    whole ``.slim`` file; PSNR in dB on 8-bit rounded RGB, ``inf`` for a lossless result).
    ``compress_kwargs`` (e.g. ``streams=``) go to every ``model.compress`` call."""
    check_image_tensor(x, "rd_table")
    if not _widest_first(model):
        raise ValueError(f"{type(model).__name__} has no widths to choose from")
    H, W = x.shape[-2:]
    ref = x.detach().clamp(0, 1).mul(255).round()   # (x may record a gradient: not needed)
    out = []
    for w in _widest_first(model):
        data = model.compress(x, w, precision=precision, **compress_kwargs)
        xh = model.decompress(data, precision=precision).mul(255).round()
        mse = float(((xh - ref) ** 2).mean())
        psnr = 10 * math.log10(255 ** 2 / mse) if mse > 0 else float("inf")
        out.append({"width": w, "bpp": 8 * len(data) / (H * W), "psnr": psnr, "bytes": len(data)})
    return out


def _positive_target(t, what: str) -> float:
    """``t`` as a float when it is a finite real number > 0 (numpy and 0-d tensor numbers
    pass), else ValueError naming ``what`` (a str or None said "must be real number, not str";
    an int beyond float range was an OverflowError; a bool is refused, as the library's other
    numbers refuse it: ``True`` was a target of 1.0)."""
    try:
        v = float(t)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{what} must be a finite number > 0, got {t!r:.60}") from None
    if isinstance(t, (str, bool)) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {t!r:.60}")
    return v


def pick_width(rows: List[Dict], target_bpp: Optional[float] = None,
               target_psnr: Optional[float] = None) -> int:
    """The width for a target from :func:`rd_table` rows (any order): for ``target_bpp`` the
    widest whose bpp is at most the target (else the one of the smallest bpp); for
    ``target_psnr`` the narrowest whose PSNR reaches it (else the one of the highest PSNR);
    ties go to the narrower width. (The fallbacks were the narrowest and the widest width: on
    small images neither need be the closest, e.g. 38.7 dB at the widest against 43.1 dB at
    the next.)

    Raises:
        ValueError: not exactly one target given, a target that is not a finite positive
            number, or no rows.
    """
    if (target_bpp is None) == (target_psnr is None):
        raise ValueError("give exactly one of target_bpp and target_psnr")
    t = _positive_target(target_bpp if target_bpp is not None else target_psnr, "the target")
    if not rows:
        raise ValueError("no rate-distortion rows to choose from")
    rows = sorted(rows, key=lambda r: -r["width"])   # widest first, whatever the given order
    if target_bpp is not None:
        fits = [r["width"] for r in rows if r["bpp"] <= t]
        return fits[0] if fits else min(reversed(rows), key=lambda r: r["bpp"])["width"]
    good = [r["width"] for r in rows if r["psnr"] >= t]
    return good[-1] if good else max(reversed(rows), key=lambda r: r["psnr"])["width"]


def compress_to_target_bpp(model: Codec, x: torch.Tensor, target_bpp: float,
                           precision: str = "auto", **compress_kwargs) -> Tuple[int, bytes, bool]:
    """``(width, data, fits)``: the file of the widest width whose file for ``x``
    ``[1, 3, H, W]`` is at most ``target_bpp``, or the smallest file if none is (``fits``
    False; ties: the narrower width). Compresses widest first and stops at the first that fits; the bytes
    returned are the ones measured, so that what a caller writes is what met the target.
    ``compress_kwargs`` (e.g. ``streams=``) go to every ``model.compress`` call: they change the
    file's size.

    Raises:
        ValueError: ``target_bpp`` not a finite number > 0, or a model without widths.
    """
    target_bpp = _positive_target(target_bpp, "target bpp")
    check_image_tensor(x, "compress_to_target_bpp")
    H, W = x.shape[-2:]
    widths = _widest_first(model)
    if not widths:
        raise ValueError(f"{type(model).__name__} has no widths to choose from")
    best = None
    for w in widths:  # widest first: stop at the first that fits
        data = model.compress(x, w, precision=precision, **compress_kwargs)
        if 8 * len(data) / (H * W) <= target_bpp:
            return w, data, True
        if best is None or len(data) <= len(best[1]):
            best = (w, data)
    return best[0], best[1], False


def width_for_target_bpp(model: Codec, x: torch.Tensor, target_bpp: float,
                         precision: str = "auto", **compress_kwargs) -> int:
    """The widest width whose file for ``x`` ``[1, 3, H, W]`` is at most ``target_bpp`` (the
    one of the smallest file if none is): :func:`compress_to_target_bpp`'s width.
    ``compress_kwargs`` (e.g. ``streams=``) must be those the file will be written with: they
    change its size.

    Raises:
        ValueError: ``target_bpp`` not a finite number > 0.
    """
    return compress_to_target_bpp(model, x, target_bpp, precision, **compress_kwargs)[0]


def width_for_target_psnr(model: Codec, x: torch.Tensor, target_psnr: float,
                          precision: str = "auto") -> int:
    """The narrowest (cheapest) width whose PSNR on ``x`` ``[1, 3, H, W]`` reaches
    ``target_psnr`` dB (the one of the highest PSNR if none does).

    Raises:
        ValueError: ``target_psnr`` not a finite number > 0.
    """
    target_psnr = _positive_target(target_psnr, "target PSNR")
    return pick_width(rd_table(model, x, precision), target_psnr=target_psnr)
