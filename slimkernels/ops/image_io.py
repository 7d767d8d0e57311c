"""The image at the transforms' two ends on CPU, in one pass each: an fp32 RGB image to the bf16
channels_last input of the analysis transform (:func:`image_to_bf16`), and the synthesis
transform's bf16 output to the fp32 image clamped to [0, 1] (:func:`bf16_to_image`).

On AVX-512 CPUs (F + BW) with ``slimkernels._cpu_kernels`` built (csrc/cpu/image_io.cpp) they run
there, bit-exact with torch's casts for finite values (round to nearest even, subnormals kept;
NaN stays NaN); elsewhere the ``*_reference`` functions next to them, which are torch's own ops.
A 768x512 Kodak image, 2 threads, AMX Xeon: ``image_to_bf16`` of an NCHW image and
``bf16_to_image`` each replace two torch passes (cast + transposing copy; cast + clamp).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Optional, Tuple

import torch

from .. import _recording
from .._cpu import _module as _cpu_module
from .._cpu import cpu_kernels

__all__ = ["image_to_bf16", "image_to_bf16_reference", "bf16_to_image",
           "bf16_to_image_reference", "value_range", "ImageRangeError", "checked_by_first_conv"]


@functools.lru_cache(maxsize=None)
def _range_error_class() -> type:
    ck = _cpu_module()
    if ck is not None and hasattr(ck, "ImageRangeError"):
        err = ck.ImageRangeError   # (what the direct AMX conv's range check raises)
    else:
        class ImageRangeError(ValueError):
            pass
        err = ImageRangeError
    err.__doc__ = ("A value of an image outside the bounds its first conv was told to check "
                   "(slimkernels.ops.image_io.checked_by_first_conv), or NaN.")
    return err


def __getattr__(name: str):
    # ImageRangeError: a value of an image outside the bounds its first conv was told to check
    # (checked_by_first_conv), or NaN; a ValueError (compress turns it into its own message).
    # The compiled kernels' class, looked up at first use: importing the package does not load
    # them (~4.5 ms; an ``except`` clause reads it only when an exception is raised).
    if name == "ImageRangeError":
        return _range_error_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _FirstConvCheck:
    """The image a transform's first conv checks, by address and size, and the bounds."""
    __slots__ = ("ptr", "numel", "lo", "hi", "taken")

    def __init__(self, x: torch.Tensor, lo: float, hi: float):
        self.ptr, self.numel, self.lo, self.hi = x.data_ptr(), x.numel(), float(lo), float(hi)
        self.taken = False


_FIRST_CONV_CHECK: contextvars.ContextVar = contextvars.ContextVar(
    "slimkernels_first_conv_check", default=None)


@contextlib.contextmanager
def checked_by_first_conv(x: torch.Tensor, lo: float, hi: float):
    """Within this context the first :func:`slimkernels.ops.slim_conv2d` that gets ``x`` (a
    float32 CPU tensor: the same data and size) checks that every value of it lies in ``[lo,
    hi]`` and is not NaN, and raises :data:`ImageRangeError` otherwise: the direct AMX conv
    compares the values as it reads them (no pass of its own over the image), any other path
    measures them first (:func:`value_range`). ``compress``'s image range check, where the
    analysis transform takes the image as it is. Per thread and per context (a context
    variable); a CPU replay re-issues the recorded conv with the same bounds. Yields an object
    whose ``taken`` says afterwards whether a conv took the check (also from a replay): where
    none did (a hook or a ``forward`` of its own handed the first conv another tensor), the
    caller must check the image itself."""
    check = _FirstConvCheck(x, lo, hi)
    token = _FIRST_CONV_CHECK.set(check)
    try:
        yield check
    finally:
        _FIRST_CONV_CHECK.reset(token)


def _mark_taken() -> None:
    """A replay's note that its recorded conv checked the current image (see
    :func:`take_first_conv_check`)."""
    c = _FIRST_CONV_CHECK.get()
    if c is not None:
        c.taken = True


def take_first_conv_check(x: torch.Tensor) -> Optional[Tuple[float, float]]:
    """``(lo, hi)`` when ``x`` is the image of the current :func:`checked_by_first_conv` and no
    conv has taken it yet (this call takes it: the caller must check), else None. A CPU replay
    of the call repeats the taking (``slimkernels._recording.on_replay``) with its kernels.
    None while torch.compile traces (the context variable is opaque to dynamo: a compiled conv
    leaves the check to the caller, :func:`checked_by_first_conv`)."""
    if torch.compiler.is_dynamo_compiling():
        return None
    c = _FIRST_CONV_CHECK.get()
    if c is None or c.taken or x.dtype != torch.float32 or not x.is_cpu or \
            x.data_ptr() != c.ptr or x.numel() != c.numel:
        return None
    c.taken = True
    _recording.on_replay(_mark_taken)
    return c.lo, c.hi


def check_values(x: torch.Tensor, lo: float, hi: float) -> None:
    """:data:`ImageRangeError` when a value of ``x`` lies outside ``[lo, hi]`` or is NaN (by
    :func:`value_range`): a conv's check where the direct AMX conv does not run."""
    vlo, vhi = value_range(x)
    if not (lo <= vlo and vhi <= hi):   # (NaN fails it)
        raise _range_error_class()(f"a value of the image is outside [{lo}, {hi}] or not finite "
                              f"(its values span {vlo} .. {vhi})")


def _kernels():
    """``slimkernels._cpu_kernels`` when its image conversions run vectorized here (AVX-512 F +
    BW, not switched off by ``SLIMKERNELS_CPU_KERNELS=0``), else None."""
    return cpu_kernels("image_io_simd_available")


_FP32_MAX = 3.4028234663852886e38


def clamp_bounds(lo, hi, name: str = "bf16_to_image") -> Tuple[float, float]:
    """``(lo, hi)`` as floats; ValueError (naming ``name``) unless they are finite float32
    values with ``lo <= hi`` (the clamp of :func:`bf16_to_image` and of the conv ops'
    ``out_clamp``)."""
    lo, hi = float(lo), float(hi)
    if not (-_FP32_MAX <= lo <= hi <= _FP32_MAX):
        raise ValueError(f"{name}: the bounds must be finite float32 values with lo <= hi, got "
                         f"[{lo}, {hi}]")
    return lo, hi


def _dense_strides(x: torch.Tensor, channels_last: bool) -> tuple:
    N, C, H, W = x.shape
    return (C * H * W, 1, W * C, C) if channels_last else (C * H * W, H * W, W, 1)


def _has_strides(x: torch.Tensor, want: tuple) -> bool:
    """``x``'s strides are ``want`` (the batch stride of a single image aside: an HWC buffer
    viewed as ``[1, 3, H, W]`` has batch stride 3)."""
    return x.stride()[1:] == want[1:] and (x.shape[0] == 1 or x.stride()[0] == want[0])


def value_range(x: torch.Tensor) -> Tuple[float, float]:
    """``(min, max)`` of ``x``'s values (any float tensor) as floats, both NaN when ``x`` holds
    a NaN (``(0.0, 0.0)`` for an empty ``x``); what :func:`image_to_bf16` measures with
    ``with_range=True``. A dense (contiguous or channels_last) float32 CPU tensor: one pass of
    the compiled kernel (a 768x512 RGB image: ~0.05 ms on 2 threads, against ~0.45 for torch's
    ``aminmax``); else ``torch.aminmax``."""
    if x.numel() == 0:
        return 0.0, 0.0
    ck = _kernels() if x.is_cpu and x.dtype == torch.float32 else None
    if ck is not None and (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(
            memory_format=torch.channels_last))):
        lo, hi = ck.value_range(x.data_ptr(), x.numel(), torch.get_num_threads())
        return float(lo), float(hi)
    lo, hi = torch.aminmax(x.detach())   # NaN anywhere: both NaN
    return float(lo), float(hi)


def image_to_bf16_reference(x: torch.Tensor, with_range: bool = False):
    """:func:`image_to_bf16` by torch's ops: a dense cast when ``x`` is NCHW (the transposing copy
    then moves half the bytes), then the copy into channels_last; ``with_range``: and
    :func:`value_range` (a pass of its own)."""
    rng = value_range(x) if with_range else None
    if x.is_contiguous():
        x = x.to(torch.bfloat16)
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device,
                      memory_format=torch.channels_last)
    out.copy_(x)
    return (out, rng) if with_range else out


def image_to_bf16(x: torch.Tensor, with_range: bool = False):
    """``x`` (float32 ``[N, C, H, W]``, any layout) as bfloat16 ``[N, C, H, W]`` with dense
    channels_last strides, rounded as torch rounds (``x.to(torch.bfloat16)``).

    One pass of the compiled kernel for a CPU ``x`` without gradient that is contiguous NCHW or
    dense channels_last (the vector path interleaves 3 channels; other counts take a scalar
    loop); else :func:`image_to_bf16_reference` (which keeps autograd).

    Args:
        with_range: also return ``(min, max)`` of ``x``'s values (floats; both NaN when ``x``
            holds a NaN), measured by the kernel in the same pass (``compress`` checks the
            pixel range with it: no pass of its own over a cold image, ~0.1 ms on a 768x512
            image right after a transform); torch's ``aminmax`` on the other paths.
    Returns:
        The bf16 tensor, or ``(tensor, (min, max))`` with ``with_range``.
    Raises:
        ValueError: ``x`` is not a 4-D float32 tensor.
    """
    if x.dim() != 4 or x.dtype != torch.float32:
        raise ValueError(f"image_to_bf16 expects a float32 [N, C, H, W] tensor, got "
                         f"{x.dtype} {tuple(x.shape)}")
    ck = _kernels() if x.is_cpu and not (x.requires_grad and torch.is_grad_enabled()) else None
    if ck is None:
        return image_to_bf16_reference(x, with_range)
    if _has_strides(x, _dense_strides(x, False)) and x.shape[1] == 3:
        cl = False
    elif _has_strides(x, _dense_strides(x, True)):
        cl = True
    else:
        return image_to_bf16_reference(x, with_range)
    out = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device,
                      memory_format=torch.channels_last)
    lo, hi = ck.image_to_bf16(x.data_ptr(), cl, *x.shape, out.data_ptr(),
                              torch.get_num_threads())
    return (out, (float(lo), float(hi))) if with_range else out


def bf16_to_image_reference(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """:func:`bf16_to_image` by torch's ops."""
    return x.float().clamp_(lo, hi)


def bf16_to_image(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``x`` (bfloat16, any shape) as float32 clamped to ``[lo, hi]`` (NaN stays NaN), in ``x``'s
    layout: ``x.float().clamp_(lo, hi)``.

    One pass of the compiled kernel for a dense CPU ``x`` without gradient (contiguous or
    channels_last); else :func:`bf16_to_image_reference` (which keeps autograd).

    Raises:
        ValueError: ``x`` is not bfloat16, or ``lo > hi``, or a bound is not a finite float32.
    """
    if x.dtype != torch.bfloat16:
        raise ValueError(f"bf16_to_image expects a bfloat16 tensor, got {x.dtype}")
    lo, hi = clamp_bounds(lo, hi)
    ck = _kernels() if x.is_cpu and not (x.requires_grad and torch.is_grad_enabled()) else None
    dense = x.is_contiguous() or (x.dim() == 4 and _has_strides(x, _dense_strides(x, True)))
    if ck is None or not dense:
        return bf16_to_image_reference(x, lo, hi)
    out = torch.empty_like(x, dtype=torch.float32)   # keeps x's dense strides
    ck.bf16_to_image(x.data_ptr(), out.data_ptr(), x.numel(), lo, hi, torch.get_num_threads())
    return out
