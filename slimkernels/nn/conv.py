"""Slimmable convolution layers: nn.Conv2d / nn.ConvTranspose2d that run at any active width."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .. import ops
from .._checks import as_flag, as_width, is_int, not_a_tensor, width_list
from .._state import WatchedAttributes
from ._script import NotScriptable


_Size = Union[int, Tuple[int, int]]


def _single(v, name):
    """The one int of a square ``name`` (an int or a pair of equal ints)."""
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"slimmable layers support square {name} only, got {tuple(v)}")
        v = v[0]
    if not is_int(v):
        raise ValueError(f"slimmable layers: {name} must be an int or a pair of equal ints, "
                         f"got {v!r}")
    return int(v)


def _string_padding(padding: str, kernel_size, stride) -> int:
    """nn.Conv2d's ``padding="valid"`` (0) and ``"same"`` (stride 1, odd kernel: k // 2) as the
    int the slimmable ops take; ValueError for what they cannot do."""
    if padding == "valid":
        return 0
    if padding == "same":
        k = _single(kernel_size, "kernel_size")
        if _single(stride, "stride") != 1:
            raise ValueError("SlimConv2d: padding='same' needs stride=1 (as nn.Conv2d)")
        if k % 2 == 0:
            raise ValueError(f"SlimConv2d: padding='same' with the even kernel_size {k} needs "
                             "uneven padding, which the slimmable ops do not do: pad the input "
                             "(F.pad) and use padding=0, or use an odd kernel")
        return k // 2
    raise ValueError(f"SlimConv2d: padding={padding!r}: use an int, 'valid' or 'same'")


def _no_string_padding(layer: str, padding) -> None:
    """ValueError for a string ``padding`` of a transposed layer (nn.ConvTranspose2d has no
    'same' / 'valid': its tuple of the string's letters failed later, as "square padding only,
    got ('s', 'a', 'm', 'e')")."""
    if isinstance(padding, str):
        raise ValueError(f"{layer}: padding={padding!r}: a transposed convolution takes an int "
                         f"padding (nn.ConvTranspose2d has no 'same' or 'valid'); for an output "
                         f"of stride x the input's size with an odd kernel k: padding=(k - 1) "
                         f"// 2 and output_padding=stride - 1")


#: The geometry attributes of nn.Conv2d / nn.ConvTranspose2d and the ints the forward reads.
_GEOMETRY = {"stride": "_s", "padding": "_p", "output_padding": "_op"}

#: nn.Conv2d's attributes the slimmable layers support at one value only (the values accepted).
_FIXED = {"groups": (1,), "dilation": (1, (1, 1)), "padding_mode": ("zeros",)}


def _check_channels(layer: str, in_channels, out_channels) -> None:
    """ValueError unless both channel counts are ints >= 1 (a float was torch's raw "empty():
    argument 'size'" TypeError, 0 a layer without weights and only a warning)."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not is_int(v) or v < 1:
            raise ValueError(f"{layer}: {name} must be an int >= 1, got {v!r}")


def _check_kernel_size(layer: str, kernel_size) -> None:
    """ValueError unless ``kernel_size`` is an int >= 1 or a pair of equal ones (0 had made a
    layer without weights, and only torch's warning, until its forward failed)."""
    k = _single(kernel_size, "kernel_size")
    if k < 1:
        raise ValueError(f"{layer}: kernel_size must be >= 1, got {kernel_size!r}")


def _check_fixed(layer: str, name: str, value) -> None:
    """ValueError unless ``value`` is one that :data:`_FIXED` accepts for attribute ``name``
    (in the constructor's keyword arguments, or set afterwards)."""
    if value not in _FIXED[name]:
        raise ValueError(f"{layer} supports {name}={_FIXED[name][0]!r} only, got {value!r}")


class _SlimMixin(NotScriptable, WatchedAttributes):
    def __setattr__(self, name, value):
        # ``layer.padding = 2`` (or stride / output_padding) after construction, as on an
        # nn.Conv2d: the int the forward passes to the op follows (it was kept from __init__,
        # and the change ignored silently)
        if name in _FIXED and "_k" in self.__dict__:
            # (groups / dilation / padding_mode set after construction, which the constructor
            # refuses: the forward would ignore them silently, as it did)
            _check_fixed(type(self).__name__, name, value)
        if name == "width" and "widths" in self.__dict__:
            # (``layer.width = 5`` had bypassed set_width's check: a 5-channel output of a layer
            # whose widths were [16, 8])
            w = as_width(value, type(self).__name__)
            if w not in self.widths:
                raise ValueError(f"{type(self).__name__}: width {value!r} is not one of "
                                 f"{self.widths}")
            value = w
        if name in _GEOMETRY and "_k" in self.__dict__:
            if name == "padding" and isinstance(value, str):
                if isinstance(self, nn.ConvTranspose2d):
                    _no_string_padding(type(self).__name__, value)
                value = _string_padding(value, self.kernel_size, self.stride)
            n, lo = _single(value, name), 1 if name == "stride" else 0
            if n < lo:   # (was accepted, then refused at forward)
                raise ValueError(f"{type(self).__name__}: {name} must be >= {lo}, got {n}")
            super().__setattr__(name, (n, n))
            super().__setattr__(_GEOMETRY[name], n)
            return
        super().__setattr__(name, value)

    def _init_geometry(self) -> None:
        """The square kernel size, then (through :meth:`__setattr__`) the stride, padding and
        output_padding ints the forward passes to the op, from nn's tuples."""
        self._k = _single(self.kernel_size, "kernel_size")
        for name in _GEOMETRY:
            if hasattr(self, name):
                setattr(self, name, getattr(self, name))

    def _init_widths(self, widths: Optional[Sequence[int]], full: int):
        self.slim_output = widths is not None
        if widths is None:
            widths = [full]
        widths = width_list(widths, type(self).__name__, full)
        self.widths = sorted(set(widths), reverse=True)
        self.width = max(self.widths)

    def set_width(self, width: int) -> None:
        """Set the active output width (one of ``self.widths``) used when ``forward`` gets none."""
        self.width = self._check_width(width)

    def _check_width(self, width: Optional[int]) -> int:
        if width is None:
            return self.width
        w = as_width(width, type(self).__name__)
        if w not in self.widths:
            raise ValueError(f"{type(self).__name__}: width {width} is not one of {self.widths}")
        return w

    def _check_input(self, x: torch.Tensor, full_in: int):
        if not isinstance(x, torch.Tensor):
            raise not_a_tensor(x, type(self).__name__)
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects [N, C, H, W], got {tuple(x.shape)}")
        if x.shape[1] > full_in:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[1]} channels, the layer "
                             f"holds at most {full_in}")


class SlimConv2d(_SlimMixin, nn.Conv2d):
    """``nn.Conv2d`` (its keyword arguments, the same state_dict keys) that runs at any active
    width. Positionally ``bias`` comes after ``padding`` (nn.Conv2d has ``dilation`` there).

    The input width is ``x.shape[1]``; the output width is ``width`` (per call), else the one set
    by :meth:`set_width`, else the widest of ``widths`` (``out_channels`` by default). The op
    reads ``weight[:w_out, :w_in]`` in place. Square kernels/strides/paddings, groups=1,
    dilation=1.

    Args:
        widths: allowed output widths (default: only ``out_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: _Size = 0, bias: bool = True,
                 widths: Optional[Sequence[int]] = None, **kwargs):
        _check_channels("SlimConv2d", in_channels, out_channels)
        _check_kernel_size("SlimConv2d", kernel_size)
        for name in [n for n in _FIXED if n in kwargs]:   # (in _FIXED's order)
            _check_fixed("SlimConv2d", name, kwargs[name])
        # (SlimConv2d(4, 4, 3, 1, 1, 2), nn.Conv2d's dilation=2, had made a bias silently)
        bias = as_flag(bias, "bias (the 6th positional argument; dilation is not taken)",
                       "SlimConv2d")
        if isinstance(padding, str):
            padding = _string_padding(padding, kernel_size, stride)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         bias=bias, **kwargs)
        self._init_geometry()
        self._init_widths(widths, out_channels)

    def forward(self, x: torch.Tensor, width: Optional[int] = None,
                gdn: Optional[dict] = None) -> torch.Tensor:
        """``x``: ``[N, C_in<=in_channels, H, W]`` -> ``[N, width, H', W']`` (x's dtype;
        bf16 under bf16 autocast).

        ``gdn``: optional :func:`slimkernels.ops.gdn` keyword dict (e.g. a GDN layer's
        ``op_kwargs(width)``) applied to the output, fused into the convolution where the backend
        can."""
        self._check_input(x, self.in_channels)
        return ops.slim_conv2d(x, self.weight, self.bias, stride=self._s, padding=self._p,
                               out_width=self._check_width(width), gdn=gdn)

    # what this conv with a GDN in its epilogue computes (SlimSequential's fusion): a subclass or
    # patch with another forward is not fused (slimkernels._hooks.runs_more_than_forward)
    _op_forward = forward


class SlimConvTranspose2d(_SlimMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (its keyword arguments and the same state_dict keys) at any active
    width. Positionally ``bias`` comes after ``output_padding`` (nn.ConvTranspose2d has
    ``groups`` there).

    Reads ``weight[:w_in, :w_out]`` (PyTorch's ``[C_in, C_out, k, k]`` layout) in place; the
    output width is as in :class:`SlimConv2d` (per call, :meth:`set_width`, else the widest of
    ``widths``).

    Args:
        widths: allowed output widths (default: only ``out_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _Size,
                 stride: _Size = 1, padding: _Size = 0, output_padding: _Size = 0,
                 bias: bool = True, widths: Optional[Sequence[int]] = None, **kwargs):
        _check_channels("SlimConvTranspose2d", in_channels, out_channels)
        _check_kernel_size("SlimConvTranspose2d", kernel_size)
        for name in [n for n in _FIXED if n in kwargs]:   # (in _FIXED's order)
            _check_fixed("SlimConvTranspose2d", name, kwargs[name])
        _no_string_padding("SlimConvTranspose2d", padding)
        bias = as_flag(bias, "bias (the 7th positional argument; groups is not taken)",
                       "SlimConvTranspose2d")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         output_padding=output_padding, bias=bias, **kwargs)
        self._init_geometry()
        self._init_widths(widths, out_channels)

    def forward(self, x: torch.Tensor, width: Optional[int] = None,
                output_size: None = None, out_igdn: Optional[dict] = None,
                out_clamp=None) -> torch.Tensor:
        """``x``: ``[N, C_in<=in_channels, H, W]`` -> ``[N, width, H', W']`` (x's dtype;
        bf16 under bf16 autocast).

        ``out_igdn``: optional :func:`slimkernels.ops.gdn` keyword dict applied (as IGDN) to the
        output, fused into the transposed convolution where the backend can. ``out_clamp``:
        optional ``(lo, hi)``: the output as float32 clamped to it (see
        :func:`slimkernels.ops.slim_conv_transpose2d`). ``output_size``: not taken (torch's
        ``ConvTranspose2d`` argument, kept for its signature; the output size follows from
        ``output_padding``): ValueError unless None."""
        if output_size is not None:
            raise ValueError("SlimConvTranspose2d does not take output_size; set output_padding")
        self._check_input(x, self.in_channels)
        return ops.slim_conv_transpose2d(x, self.weight, self.bias, stride=self._s,
                                         padding=self._p, output_padding=self._op,
                                         out_width=self._check_width(width), out_igdn=out_igdn,
                                         out_clamp=out_clamp)

    # what this conv with a GDN in its epilogue computes (SlimSequential's fusion): a subclass or
    # patch with another forward is not fused (slimkernels._hooks.runs_more_than_forward)
    _op_forward = forward
