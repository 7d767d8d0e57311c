"""A reusable base class for slimmable codecs: subclass it, get compress/decompress for free.

:class:`SlimCodec` gives any slimmable autoencoder the whole coding path of
:class:`slimkernels.models.SlimCAE`: quantization by the per-width entropy model, the C++ range
coder (:mod:`slimkernels.coding`) and the ``.slim`` container (:mod:`slimkernels.container`).
A subclass builds three things in ``__init__`` and describes itself in :meth:`SlimCodec.config`:

* ``self.g_a``: analysis transform, called ``g_a(x, width)``: ``[N, 3, H, W]`` ->
  ``[N, width, H/s, W/s]`` (``s`` = :attr:`SlimCodec.downsampling`);
* ``self.g_s``: synthesis transform, called ``g_s(y_hat, width)``: ``[N, width, h, w]`` ->
  ``[N, 3, s*h, s*w]``;
* ``self.entropy_bottleneck``: a :class:`slimkernels.nn.SlimEntropyBottleneck` over the widths.

:class:`SlimSequential` chains slimmable layers and hands each the active width. Example::

    class Tiny(SlimCodec):
        downsampling = 4
        def __init__(self, widths=(32, 16)):
            super().__init__(widths)
            N = self.widths[0]
            self.g_a = SlimSequential(SlimConv2d(3, N, 5, 2, 2, widths=self.widths),
                                      SlimGDN(N),
                                      SlimConv2d(N, N, 5, 2, 2, widths=self.widths))
            self.g_s = SlimSequential(SlimConvTranspose2d(N, N, 5, 2, 2, 1, widths=self.widths),
                                      SlimGDN(N, inverse=True),
                                      SlimConvTranspose2d(N, 3, 5, 2, 2, 1))
            self.entropy_bottleneck = SlimEntropyBottleneck(self.widths)
        def config(self):
            return {"arch": "tiny", "widths": self.widths}

    model = Tiny().eval(); model.update()
    data = model.compress(x, width=16)            # bytes of a .slim file
    x_hat = model.decompress(data)                # [1, 3, H, W] float32 in [0, 1]
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import operator
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from . import coding, container
from ._cpu import _module as _cpu_module, cpu_kernels, switched_off as _cpu_switched_off
from ._cpu import functorch_transform, tracing as _cpu_tracing
from .ops import image_io
from .ops.image_io import bf16_to_image, image_to_bf16, value_range
from ._hooks import runs_more_than_forward
from ._amp import no_autocast
from ._fork import one_thread_in_forked_child
from ._state import (WatchedAttributes, attribute_version, cached_on_module, first_non_finite,
                     state_tensors)
from ._checks import as_flag, as_width, check_image_tensor, is_int, not_a_tensor, width_list
from .nn.entropy import check_quantization

__all__ = ["SlimCodec", "SlimSequential", "model_fingerprint", "latent_indexes", "channel_indexes",
           "native_bf16", "resolve_precision", "auto_streams", "coder_pool",
           "coder_encode_threads", "PRECISIONS",
           "STREAM_MIN_SYMBOLS", "PIXEL_RANGE", "DECODE_MAX_PIXELS"]

#: The values of ``compress`` / ``decompress``'s ``precision``: ``"auto"`` (the default: bf16
#: autocast where the device computes bf16 natively, else fp32), ``"fp32"`` and ``"bf16"``.
PRECISIONS = ("auto", "fp32", "bf16")


_TAKES_WIDTH: Dict[type, bool] = {}   # (a dict, not an lru_cache: torch.compile traces
# through it without dynamo's warning about the lru_cache wrapper it ignores)


def _takes_width(cls: type) -> bool:
    """Whether ``cls.forward`` accepts a second positional argument (the active width)."""
    v = _TAKES_WIDTH.get(cls)
    if v is None:
        v = _TAKES_WIDTH[cls] = _forward_takes_width(cls)
    return v


def _forward_takes_width(cls: type) -> bool:
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]   # after self
    except (TypeError, ValueError):
        return True
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(pos) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _plain_sequential(g) -> bool:
    """Whether ``g`` is a :class:`SlimSequential` running SlimSequential's own ``forward``, with
    no hooks or instance-level ``forward`` (so that a path calling its layers one by one computes
    what calling ``g`` does)."""
    return isinstance(g, SlimSequential) and type(g).forward is SlimSequential.forward and \
        not runs_more_than_forward(g)


class SlimSequential(WatchedAttributes, nn.Sequential):
    """``nn.Sequential`` whose ``forward(x, width)`` hands the active width to every layer that
    takes one (``forward(x, width)``: slimkernels' slimmable layers, or your own); other layers
    (activations, a plain ``nn.Conv2d``) are called with ``x`` alone.

    A layer whose output size is fixed (``slim_output = False``, e.g. a last ``SlimConv2d`` built
    without ``widths``) gets ``None`` instead. On the Triton backend (CUDA) a convolution
    followed by a GDN layer (or a transposed convolution followed by an IGDN layer) runs as one
    fused op (:func:`slimkernels.ops.slim_conv2d` with ``gdn=``, ``slim_conv_transpose2d`` with
    ``out_igdn=``): the same result, the GDN in the conv kernel's epilogue. On a CPU with the
    AMX kernels, without gradient, too: the direct AMX conv (the narrow widths' layers) runs the
    GDN in its epilogue (``slimkernels.ops.conv.CPU_AMX_CONV_GDN``), and the other convs chain
    the GDN op's CPU kernel, the call the GDN layer makes (same bits either way). Elsewhere on
    the PyTorch backend the layers run one by one (the fused op would only chain the same
    calls). ``fuse_gdn`` (class or instance attribute) overrides it: True always fuses, False
    never, None (default) as above. A GDN layer with hooks (forward or backward, its own or
    global ones) or an instance-level ``forward`` is never fused: it runs as its own call, so
    that they see it (:func:`slimkernels._hooks.runs_more_than_forward`).
    """

    fuse_gdn: Optional[bool] = None

    def fuses(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` fuses conv + GDN pairs for this input (see ``fuse_gdn``)."""
        if self.fuse_gdn is not None:
            return self.fuse_gdn
        from .backend import resolve_backend
        if resolve_backend(x) == "triton":
            return True
        from .ops.conv import amx_epilogue_gdn_available
        return x.is_cpu and not torch.is_grad_enabled() and amx_epilogue_gdn_available()

    def forward(self, x: torch.Tensor, width: Optional[int] = None, start: int = 0,
                stop: Optional[int] = None) -> torch.Tensor:
        """``x``: ``[N, C, H, W]``; returns the last layer's output. ``start``: run the layers
        from this index on (``x`` is then the output of layer ``start - 1``); ``stop``: up to
        this index, excluded (default: all; a conv is then not fused with a GDN at ``stop``)."""
        from .nn.conv import SlimConv2d, SlimConvTranspose2d

        if not isinstance(x, torch.Tensor):
            raise not_a_tensor(x, type(self).__name__)
        layers = list(self)
        if stop is not None:
            stop = _layer_index(stop, len(layers), "stop", type(self).__name__, "the layer count")
            layers = layers[:stop]
        start = _layer_index(start, len(layers), "start", type(self).__name__, "<= stop")
        fuse = self.fuses(x)
        i = int(start)
        while i < len(layers):
            layer = layers[i]
            w = _layer_width(layer, width)
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if fuse and hasattr(nxt, "op_kwargs") and isinstance(layer, (SlimConv2d,
                                                                        SlimConvTranspose2d)) \
                    and not runs_more_than_forward(nxt) and not runs_more_than_forward(layer):
                out_w = layer._check_width(w)
                if isinstance(layer, SlimConv2d) and not nxt.inverse:
                    x = layer(x, w, gdn=nxt.op_kwargs(out_w))
                    i += 2
                    continue
                if isinstance(layer, SlimConvTranspose2d) and nxt.inverse:
                    x = layer(x, w, out_igdn=nxt.op_kwargs(out_w))
                    i += 2
                    continue
            x = layer(x, w) if _takes_width(type(layer)) else layer(x)
            i += 1
        return x


def _layer_index(v, n: int, name: str, where: str, bound: str) -> int:
    """``v`` (an int, numpy int or 0-dim integer tensor: what ``operator.index`` takes) in
    ``0..n``; ValueError naming ``name`` otherwise (-1 ran the last layer first; past the end
    ran none; 0.7 was truncated)."""
    try:
        i = operator.index(v)
    except TypeError:
        i = None
    if i is None or isinstance(v, bool) or not 0 <= i <= n:
        raise ValueError(f"{where}: {name} must be an int in 0..{n} ({bound}), got {v!r}")
    return i


def _layer_width(layer: nn.Module, width: Optional[int]) -> Optional[int]:
    """The width a :class:`SlimSequential` passes to ``layer``: ``width``, or None for a layer
    whose output size is fixed (``slim_output = False``)."""
    return width if getattr(layer, "slim_output", True) else None


class _WidthSlices(torch.autograd.Function):
    """``h[:, :k]`` for each ``k`` in ``widths``, each a dense copy in ``h``'s memory format
    (channels_last or contiguous); the backward adds each slice's gradient into the first ``k``
    channels of one ``h``-sized gradient (autograd's own slice backward would build one zero
    tensor of ``h``'s size per slice and sum them)."""

    @staticmethod
    def forward(ctx, h, *widths):
        fmt = _dense_format(h)
        ctx.shape, ctx.fmt, ctx.widths = h.shape, fmt, widths
        return tuple(h[:, :k].contiguous(memory_format=fmt) for k in widths)

    @staticmethod
    def backward(ctx, *grads):
        g = None
        for k, gk in zip(ctx.widths, grads):
            if gk is None:
                continue
            if g is None:
                g = gk.new_zeros(ctx.shape).contiguous(memory_format=ctx.fmt)
            g[:, :k] += gk
        return (g,) + (None,) * len(ctx.widths)


def _dense_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-d channels_last (and not also NCHW-contiguous) tensor, else the
    contiguous format."""
    if t.dim() == 4 and not t.is_contiguous() and \
            t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _config_json(config: Dict) -> str:
    """``config`` as JSON with sorted keys (what :func:`model_fingerprint` hashes); ValueError
    naming ``config()`` for values JSON cannot hold (json's own "Object of type set is not JSON
    serializable" named neither the method nor the remedy)."""
    try:
        return json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the codec's config() must return JSON values (dicts with str keys, "
                         f"lists, str, int, float, bool, None), got {config!r}: {e}") from None


_ORIG_MOD = re.compile(r"(^|\.)_orig_mod\.")


def model_fingerprint(model: nn.Module, config: Dict) -> bytes:
    """16 bytes: the first half of SHA-256 over ``config`` (JSON, sorted keys) and every
    state_dict tensor (name, dtype, shape, raw bytes) in name order. The ``.slim`` model id.

    Same algorithm as :meth:`slimkernels.models.SlimCAE.model_id`, so a file names the exact
    weights that wrote it; put an architecture name in ``config`` to tell codecs apart.
    """
    h = hashlib.sha256(_config_json(config).encode())
    # (the names without torch.compile's wrapper: ``model.g_a = torch.compile(model.g_a)`` puts
    # "_orig_mod." into them, and the same weights had another id: files refused both ways)
    named = {_ORIG_MOD.sub(r"\1", k): v for k, v in model.state_dict().items()}
    for k, v in sorted(named.items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        # (flat first: a 0-dim tensor, e.g. a parametrization's scalar, cannot be viewed as bytes)
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # (no copy)
    return h.digest()[:16]


def _first_parameter_of(root: nn.Module) -> Optional[torch.Tensor]:
    """``next(root.parameters(), None)`` without its chain of generators (one per tree level:
    ~3.5 us warm and ~30 cold per call on SlimCAE, where every compress and decompress asks
    for it): the same pre-order walk over the modules, each once, to the first parameter."""
    stack, seen = [root], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        for p in m._parameters.values():
            if p is not None:
                return p
        stack.extend(reversed([c for c in m._modules.values() if c is not None]))
    return None


def _weight_problem(model: nn.Module) -> Optional[Tuple[str, str, str]]:
    """``(what coding needs, what the first floating-point state tensor that is not float32 or
    not finite is, what to do)``, else None."""
    sd = model.state_dict()
    for k, v in sd.items():
        if v.is_floating_point() and v.dtype != torch.float32:
            return ("every weight in float32", f"{k} is {v.dtype}",
                    "call model.float() (for bf16 transforms pass precision='bf16', which "
                    "autocasts)")
    bad = first_non_finite(sd)
    if bad is not None:
        return ("finite weights", f"{bad} holds NaN or inf",
                "the model is broken (a diverged training step?); load good weights")
    return None


def latent_indexes(width: int, h: int, w: int) -> np.ndarray:
    """The coder's CDF index of every latent element: int32 ``[1, width, h, w]`` holding ``c``
    at ``(0, c, i, j)`` (each channel has its own CDF in a width's entropy model). Pass it as
    ``indexes`` to :func:`slimkernels.coding.encode` / :func:`~slimkernels.coding.decode`.

    The array is cached per shape and read-only (the coder only reads it); copy it to modify it.
    :func:`channel_indexes` gives the same bytes without the array's 4 bytes per symbol.
    """
    check = coding._check_int   # (ints only: int(3.9) was 3)
    return _latent_indexes(check(width, "width", 1), check(h, "h", 0), check(w, "w", 0))


def channel_indexes(width: int) -> np.ndarray:
    """The compact form of :func:`latent_indexes`: int32 ``[1, width, 1, 1]`` holding ``c`` at
    ``(0, c, 0, 0)``, so that the ``h * w`` symbols of channel ``c`` use CDF ``c``. Pass it as
    ``indexes`` to :func:`slimkernels.coding.encode` (with the ``[1, width, h, w]`` symbols) and
    :func:`~slimkernels.coding.decode` (with ``shape=(1, width, h, w)``): the bytes are those of
    :func:`latent_indexes`, and the coder reads one index per channel instead of one per symbol.

    Cached per width and read-only.
    """
    return _channel_indexes(coding._check_int(width, "width", 1))


@functools.lru_cache(maxsize=32)
def _channel_indexes(width: int) -> np.ndarray:
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    a = np.arange(width, dtype=np.int32).reshape(1, width, 1, 1)
    a.setflags(write=False)
    return a


_INDEXES_CACHE: Dict[Tuple[int, int, int], np.ndarray] = {}
_INDEXES_CACHE_MAX = 8                 # shapes kept
_INDEXES_CACHE_MAX_BYTES = 8 << 20     # larger index arrays are built per call, not kept


def _latent_indexes(width: int, h: int, w: int) -> np.ndarray:
    key = (width, h, w)
    a = _INDEXES_CACHE.get(key)
    if a is None:
        a = np.ascontiguousarray(np.broadcast_to(
            np.arange(width, dtype=np.int32)[None, :, None, None], (1, width, h, w)))
        a.setflags(write=False)
        if a.nbytes <= _INDEXES_CACHE_MAX_BYTES:
            if len(_INDEXES_CACHE) >= _INDEXES_CACHE_MAX:
                _INDEXES_CACHE.pop(next(iter(_INDEXES_CACHE)))
            _INDEXES_CACHE[key] = a
    return a


# -- precision -----------------------------------------------------------------------------------
def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def _cpu_native_bf16() -> bool:
    if not torch.backends.mkldnn.is_available():  # bf16 CPU convolutions go through oneDNN
        return False
    get_caps = getattr(torch.cpu, "get_capabilities", None)   # torch >= 2.5 (cpuinfo)
    if get_caps is not None:
        try:
            caps = get_caps()
            if "amx_bf16" in caps or "avx512_bf16" in caps:
                return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))
        except Exception:  # pragma: no cover - a torch build without cpuinfo
            pass
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # torch 2.3-2.4
    if probe is not None:
        try:
            if probe():
                return True
        except Exception:  # pragma: no cover
            pass
    flags = _cpu_flags()                                      # Linux without the above
    return "amx_bf16" in flags or "avx512_bf16" in flags


def native_bf16(device=None) -> bool:
    """Whether ``device`` (``torch.device`` or str; default CPU) computes bfloat16 natively.

    CPU: AMX-BF16 or AVX512-BF16 (read from ``torch.cpu.get_capabilities()``, else torch's
    AVX512-BF16 probe, else the ``/proc/cpuinfo`` flags) and oneDNN present. CUDA: compute
    capability >= 8.0 (Ampere and newer), asked of the device at each call. Any other device:
    False. The CPU answer is cached.
    """
    dev = torch.device("cpu" if device is None else device)
    if dev.type == "cpu":
        return _cpu_native_bf16()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return torch.cuda.get_device_capability(dev)[0] >= 8
    return False


def resolve_precision(precision: str = "auto", device=None) -> str:
    """The transforms' precision that ``precision`` means on ``device``: ``"fp32"`` or ``"bf16"``.

    ``"auto"`` is ``"bf16"`` (autocast) where :func:`native_bf16` is true, else ``"fp32"``;
    ``"fp32"`` and ``"bf16"`` are returned as given (bf16 works everywhere; on a CPU whose
    oneDNN has no bf16, i.e. without AVX-512, the convs and GDNs compute in fp32 and round
    their outputs to bf16, at about fp32's cost). The entropy coding is exact in every
    precision: a file written in one precision decodes in the other to the same latents.

    Raises:
        ValueError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got "
                         f"{precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def _tables(eb) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    # (cdfs int32 [C, L], cdf_lengths int32 [C], offsets int32 [C]) on the CPU
    if hasattr(eb, "cdf_tables"):           # public accessor, when the entropy model has one
        out = eb.cdf_tables()
    else:
        out = (eb._quantized_cdf.cpu().numpy(), eb._cdf_length.cpu().numpy(),
               eb._offset.cpu().numpy())
    for name, a in zip(("CDF table", "CDF lengths", "CDF offsets"), out):
        if a.dtype != np.int32:   # (e.g. loaded from a file that stored them as int64 / float)
            raise ValueError(f"the entropy model's {name} is {a.dtype}, not int32: call "
                             f"model.update() to rebuild the tables")
    return out


def _dense(t: torch.Tensor, dtype: torch.dtype, memory_format: torch.memory_format,
           ranges: Optional[list] = None) -> torch.Tensor:
    """``t`` in ``dtype`` and ``memory_format`` with the dense strides of that format (one copy,
    or none when ``t`` already is). ``Tensor.contiguous`` keeps degenerate strides of size-1
    dimensions (a batch stride of 3 for a channels_last view of an HWC image); this does not. A
    single image whose other strides are the dense ones is returned as a view with the dense
    strides (no copy). ``ranges`` (a list, optional): receives ``(min, max)`` of ``t``'s values
    when the copy is the fp32 -> bf16 image cast, which measures them in the same pass
    (:func:`~slimkernels.ops.image_io.image_to_bf16`); nothing otherwise."""
    N, C, H, W = t.shape
    want = ((C * H * W, 1, W * C, C) if memory_format == torch.channels_last
            else (C * H * W, H * W, W, 1))
    if t.dtype == dtype and t.stride() == want:
        return t
    if t.dtype == dtype and N == 1 and t.stride()[1:] == want[1:]:
        return t.as_strided(t.shape, want)   # one image: only the batch stride differs, a view
    if t.is_cpu and t.dtype == torch.float32 and dtype == torch.bfloat16 and \
            memory_format == torch.channels_last:
        # one pass where the compiled kernel runs, torch's passes else
        if ranges is None:
            return image_to_bf16(t)
        out, rng = image_to_bf16(t, with_range=True)
        ranges.append(rng)
        return out
    if t.is_cpu and t.dtype.itemsize > dtype.itemsize and t.is_contiguous() and \
            memory_format == torch.channels_last:
        # NCHW -> channels_last with a narrowing cast: cast first (a dense pass), then the
        # transposing copy moves the narrow type (a 3x512x768 fp32 image to bf16 channels_last:
        # 0.53 vs 1.30 ms in one copy_, Zen 4, 2 threads)
        t = t.to(dtype)
    out = torch.empty((N, C, H, W), dtype=dtype, device=t.device, memory_format=memory_format)
    return out.copy_(t)


def _cropped(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``image[..., :height, :width]``; ``image`` itself when it has that size (a view made cold
    right after a transform costs ~20 us)."""
    if image.shape[-2] == height and image.shape[-1] == width:
        return image
    return image[..., :height, :width]


def _image_output(x_hat: torch.Tensor) -> torch.Tensor:
    """The synthesis transform's output ``[N, 3, H, W]`` as the float32 image clamped to [0, 1],
    in x_hat's layout: one pass of :func:`slimkernels.ops.image_io.bf16_to_image` for a bf16
    x_hat, ``x_hat.float().clamp_(0, 1)`` (in place on an fp32 x_hat) otherwise."""
    if x_hat.dtype == torch.bfloat16:
        return bf16_to_image(x_hat)
    return x_hat.float().clamp_(0, 1)


def _latent_kernels():
    """``slimkernels._cpu_kernels`` when its latent (de)quantization runs here (AVX-512, or AVX2 +
    FMA), else None."""
    return cpu_kernels("latents_simd_available")


def _dense_layout(t: torch.Tensor) -> Optional[bool]:
    """True / False when ``t`` is dense channels_last / contiguous NCHW, else None."""
    if t.is_contiguous():
        return False
    return True if t.is_contiguous(memory_format=torch.channels_last) else None


def _coding_medians(eb) -> torch.Tensor:
    """float32 ``[C]`` contiguous CPU medians of ``eb`` (cached by the entropy model when it
    offers :meth:`~slimkernels.nn.entropy.EntropyBottleneck.coding_medians`)."""
    if hasattr(eb, "coding_medians"):
        return eb.coding_medians()
    return eb.medians().detach().to("cpu", torch.float32).contiguous()


def _quantize(eb, y: torch.Tensor) -> torch.Tensor:
    """``eb.quantize_symbols(y)`` (int32 ``round(float(y) - median)``, ties to even) as contiguous
    NCHW; see :func:`_quantize_counted`."""
    return _quantize_counted(eb, y)[0]


def _quantize_counted(eb, y: torch.Tensor, medians: Optional[torch.Tensor] = None,
                      as_numpy: bool = False) -> Tuple[Union[torch.Tensor, np.ndarray], int]:
    """``(symbols, invalid)``: ``eb.quantize_symbols(y)`` (int32 ``round(float(y) - median)``,
    ties to even) as contiguous NCHW ``[N, C, H, W]``, and the number of symbols equal to
    ``INT32_MIN`` (what NaN, inf and values beyond the int32 range become).

    On CPU, for fp32 / bf16 ``y`` (channels_last or NCHW), one pass of the AVX-512 or AVX2 kernel
    ``slimkernels._cpu_kernels.quantize_latents`` (the transpose to the coder's NCHW order and
    the count included; AVX-512: 0.41 -> ~0.05 ms at w=192, 768x512; AVX2 on a Zen 3 EPYC:
    0.26 -> 0.06 ms at w=48, dequantization 0.18 -> 0.06 ms); elsewhere 3 torch passes (the
    subtraction promotes a bf16 ``y`` to fp32 itself, rounding is in place, and the int32 cast
    writes NCHW directly) and one more for the count. ``medians``: ``_coding_medians(eb)`` when
    the caller has it. ``as_numpy``: the symbols as a numpy int32 array (on the CPU), the form the
    coder takes (the kernel then writes into a numpy array: compress's hot path, where every
    Python step right after the transform runs cold)."""
    ck = _latent_kernels() if y.is_cpu and y.dim() == 4 else None
    layout = _dense_layout(y) if ck is not None and y.dtype in (torch.float32,
                                                                  torch.bfloat16) else None
    if layout is not None:
        med = _coding_medians(eb) if medians is None else medians
        if as_numpy:   # the array made by the binding (no Python steps around it)
            return ck.quantize_latents_array(y.data_ptr(), 1 if y.dtype == torch.bfloat16 else 0,
                                             layout, *y.shape, med.data_ptr(),
                                             torch.get_num_threads())
        out = torch.empty(y.shape, dtype=torch.int32, device=y.device)
        bad = ck.quantize_latents(y.data_ptr(), 1 if y.dtype == torch.bfloat16 else 0, layout,
                                  *y.shape, med.data_ptr(), out.data_ptr(),
                                  torch.get_num_threads())
        return out, int(bad)
    m = eb.medians().view(1, -1, 1, 1)
    if y.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        y = y.float()          # e.g. float64: round to fp32 first, as the entropy model does
    with no_autocast(y.device.type):
        out = torch.sub(y, m).round_().to(torch.int32, memory_format=torch.contiguous_format)
    bad = int((out == torch.iinfo(torch.int32).min).sum())
    return (out.cpu().numpy(), bad) if as_numpy else (out, bad)


def _dequantize(eb, sym: torch.Tensor, channels_last: bool = False,
                medians: Optional[torch.Tensor] = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``eb.dequantize_symbols(sym)`` (float32 ``sym + median``), dense channels_last when asked.
    On CPU with ``channels_last``, one pass of ``slimkernels._cpu_kernels.dequantize_latents``
    (transpose from the coder's NCHW order included); else the int32 + float32 addition (which
    promotes to float32 itself, exact for ``|sym| < 2**24``) and, for channels_last, one copy.
    ``medians``: ``_coding_medians(eb)`` when the caller has it. ``dtype`` bfloat16: that float32
    rounded to bf16 (nearest even, ``.to(torch.bfloat16)``), by the kernel in the same pass."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"_dequantize gives float32 or bfloat16, got {dtype}")
    ck = _latent_kernels() if channels_last and sym.is_cpu and \
        sym.dtype == torch.int32 and sym.dim() == 4 and sym.is_contiguous() else None
    if ck is not None:
        med = _coding_medians(eb) if medians is None else medians
        out = torch.empty(sym.shape, dtype=dtype, device=sym.device,
                          memory_format=torch.channels_last)
        ck.dequantize_latents(sym.data_ptr(), *sym.shape, med.data_ptr(), out.data_ptr(),
                              torch.get_num_threads(), int(dtype == torch.bfloat16))
        return out
    m = eb.medians().view(1, -1, 1, 1)
    with no_autocast(sym.device.type):
        y = torch.add(sym, m)
    return _dense(y, dtype, torch.channels_last) if channels_last else y.to(dtype)


def _beyond_support(sym: torch.Tensor, plan) -> Optional[int]:
    """The largest ``|symbol|`` of the decoded latent ``sym`` (int32, CPU) when it lies beyond
    every value the width's CDF tables cover (``plan``: :meth:`SlimCodec._latent_plan`'s
    ``(medians, cdfs, lengths, offsets, idx)``), else None. Such symbols are coded as escapes:
    legal, but with next to no probability under the model (the bundled model's largest on
    Kodak and on flat, noise and checkerboard images: 72); a forged file of them (e.g. all
    100000) drives the synthesis transform to inf / NaN, which :meth:`SlimCodec.decompress`
    checks for only then. :meth:`SlimCodec.decompress` calls it only for a latent with escaped
    symbols (the decoder counts them): the min / max of the symbols cost 39 / 126 us at w=48 /
    192 on a Kodak image right after the decoder, 2 threads; a sum of the image, when needed,
    ~60 us."""
    s = sym.numpy() if sym.is_cpu else sym.cpu().numpy()
    if s.size == 0:
        return None
    _, _, lengths, offsets, _ = plan
    # symbols offset .. offset + length - 3 are values of a table (the last two: escape, end)
    reach = max(int(np.abs(offsets).max()), int(np.abs(offsets + lengths - 3).max()))
    top = max(-int(s.min()), int(s.max()))
    return top if top > reach else None


#: Latent symbols per range-coder substream when ``compress(streams=None)`` picks the count.
STREAM_MIN_SYMBOLS = 1 << 16


#: The most pixels :meth:`SlimCodec.decompress` and :meth:`SlimCodec.decompress_latent` decode by
#: default (their ``max_pixels``): Pillow's decompression-bomb limit for reading an image (2x its
#: default ``PIL.Image.MAX_IMAGE_PIXELS``, ~179 MP), so that every image the command line reads
#: also decodes. A file of a few MB of the most likely symbols asks for a 16384 x 16384 image
#: (1.7 MB at w=48: a 3 GB image, 5.4 GB at its peak, measured); the limit refuses it before
#: anything is decoded. ``max_pixels=None`` decodes any size the format holds.
DECODE_MAX_PIXELS = 2 * 89_478_485

#: ``compress`` rejects an image with a value outside this range (every value is checked): [0, 1]
#: pixels with slack for resampling overshoot; it catches 0-255 images passed as floats.
PIXEL_RANGE = (-0.5, 1.5)

#: In bf16 on a CPU with the direct AMX conv, a float32 image with the dense channels_last
#: strides goes to the analysis transform as it is (its first conv rounds it to bf16 while it
#: reads it: the same bytes) and its range is measured by a pass that writes nothing, instead of
#: the bf16 cast (``SlimCAE._image_input``). Forty-first sitting, kodim01, 2 threads
#: (``python bench/ab_switch.py CPU_IMAGE_AS_IS --module slimkernels.codec --rounds 40 --ops
#: compress``): 1.01 / 1.02 / 1.02 / 1.01 / 1.01x at w = 48 / 72 / 96 / 144 / 192, the same
#: bytes (docs/performance.md).
CPU_IMAGE_AS_IS = True

#: ... and that image's range is checked by the first conv as it reads it
#: (:func:`slimkernels.ops.image_io.checked_by_first_conv`: the direct AMX conv compares every
#: value in its window build, in the CPU replay too), instead of by a pass of its own over the
#: image (4.7 MB for a Kodak image).
CPU_IMAGE_RANGE_IN_CONV = True

#: ``SlimCodec._image_input``'s note that the first conv checks the image's range.
_RANGE_IN_CONV = object()


def _check_pixel_range(x: torch.Tensor) -> None:
    """ValueError if a value of the image ``x`` (``[1, 3, H, W]`` float, any layout or device)
    reaches outside :data:`PIXEL_RANGE` or is not finite: every value, by
    :func:`~slimkernels.ops.image_io.value_range` (a dense float32 CPU image: one pass of the
    compiled kernel, ~0.05 ms for 768x512 on 2 threads; else ``torch.aminmax``)."""
    _check_value_range(*value_range(x))


def _check_value_range(lo: float, hi: float) -> None:
    """ValueError if an image's values, ``lo`` .. ``hi`` (floats; NaN: the image holds a NaN),
    are not finite or reach outside :data:`PIXEL_RANGE`."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("compress: the image is not finite (it holds NaN or inf); pass a finite "
                         "float image in [0, 1]")
    reach = pixel_values_outside(lo, hi)
    if reach is not None:
        raise ValueError(f"compress expects a float image in [0, 1]; its values reach {reach}")


def pixel_values_outside(lo: float, hi: float) -> Optional[str]:
    """``"lo .. hi"`` (with a hint for 0-255 values) when images whose values span ``lo`` ..
    ``hi`` reach outside :data:`PIXEL_RANGE` or are NaN, else None: the tail of the messages of
    ``compress`` and the trainer's ``validate``."""
    if PIXEL_RANGE[0] <= lo and hi <= PIXEL_RANGE[1]:   # (NaN fails it)
        return None
    return f"{lo:.4g} .. {hi:.4g}" + (" (0-255 pixel values? divide by 255)" if hi > 2.0 else "")


@functools.lru_cache(maxsize=None)
def _torch_on_openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def coder_pool() -> str:
    """The thread pool ``compress`` / ``decompress`` give the entropy coder's substreams
    (``pool=`` of :func:`slimkernels.coding.encode`): ``"openmp"`` where torch's CPU threads are
    OpenMP and ``slimkernels._cpu_kernels`` is built, else ``"coder"``. Torch's OpenMP threads
    are still spinning right after the transform and start at once, where a sleeping worker of
    the coder's own pool took ~0.25 ms to wake up (768x512, 2-core AMX Xeon VM, bf16: the
    2-substream encode right after the encoder transform 288 -> 196 us at w=96, 490 -> 354-420
    us at w=192). Same bytes either way. ``SLIMKERNELS_CPU_KERNELS=0`` (no compiled CPU kernels)
    also means ``"coder"``. The coder's threads: :func:`coder_encode_threads` to encode,
    ``torch.get_num_threads()`` to decode (at most one per substream)."""
    if _cpu_switched_off() or not _torch_on_openmp():
        return "coder"
    return "openmp" if coding.openmp_pool_available() else "coder"


def coder_encode_threads(pool: str, streams: int) -> int:
    """The threads ``compress`` gives the coder to encode ``streams`` substreams on ``pool``
    (:func:`coder_pool`'s): ``torch.get_num_threads()`` on ``"openmp"``, whose threads are
    still spinning right after the transform, so that one substream on 2 threads has its 4 rANS
    lanes coded as two halves (the same bytes; kodim01 in situ on 2 threads, 1 substream:
    137 -> 114 us at w=48, 182 -> 169 at w=72); on ``"coder"`` at most one per substream: its
    workers sleep during the transform, and waking one for a half cost more than the half saved
    (137 -> 168 us at w=48, 203 -> 250 at w=72)."""
    n = torch.get_num_threads()
    return n if pool == "openmp" else min(n, int(streams))


def auto_streams(num_symbols: int) -> int:
    """The substream count ``compress`` uses by default for ``num_symbols`` latent symbols:
    ``num_symbols // STREAM_MIN_SYMBOLS`` clamped to ``[1, min(torch.get_num_threads(), 255)]``
    (the coder runs one thread per substream, two on a lone substream's lane halves on the
    OpenMP pool, :func:`coder_encode_threads`; a substream costs ~26 bytes of header and flush).
    """
    return max(1, min(int(num_symbols) // STREAM_MIN_SYMBOLS, torch.get_num_threads(), 255))


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=precision == "bf16")


class SlimCodec(WatchedAttributes, nn.Module):
    """Base class of a slimmable codec: forward for training, compress/decompress for coding.

    Args:
        widths: the sub-network widths (latent channels); stored sorted widest first in
            ``self.widths``.

    Class attributes:
        downsampling: total stride ``s`` of ``g_a`` (images are padded to a multiple of it).
        input_channels_last: memory format of the transforms' inputs in ``compress`` /
            ``decompress``: None (default) channels_last on CPU and CUDA, where the convolutions
            run channels_last (for ``decompress`` on CPU, and on other devices, the layout of
            the model's parameters), True always channels_last, False always contiguous NCHW.
        CUDA_GRAPHS_KEPT: CUDA graphs kept per model for the ``cuda_graph`` path of
            ``compress`` / ``decompress`` (4: the least recently used is dropped beyond).
        cpu_replay: on CPU, ``compress`` / ``decompress`` replay a transform whose every step
            is a compiled kernel (recorded at the second call with the same width, precision,
            image size and thread count, checked against the eager transform at the third):
            the Python dispatch between the kernels goes (w=48 on a Kodak image: the encoder
            1.83 -> 1.36 ms). Same bytes. True (default) or False (always eager). See
            :mod:`slimkernels.cpu_replay`; :meth:`clear_caches` drops the recordings.
        CPU_REPLAYS_KEPT: recordings kept per model (32; a recording holds no activations:
            each replay allocates its buffers and frees them with its output). One per
            transform, width, precision and input shape: coding at SlimCAE's 5 widths takes 10
            (20 in two precisions); with 8 kept, a cycle over the widths recorded every call
            anew (a recording costs more than the eager call: kodim01 decompress at w=48 32.3
            instead of ~21.5 ms, Zen 3).

    Raises:
        ValueError: ``widths`` empty, not positive, or wider than ``container.MAX_WIDTH``.
    """

    downsampling: int = 16
    input_channels_last: Optional[bool] = None
    CUDA_GRAPHS_KEPT: int = 4
    cpu_replay: bool = True
    CPU_REPLAYS_KEPT: int = 32
    # (switching the replay or the caches' sizes does not change what the transforms compute:
    # the recordings stay, _state.WatchedAttributes)
    _unwatched_attributes = frozenset({"cpu_replay", "CPU_REPLAYS_KEPT", "CUDA_GRAPHS_KEPT"})

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        ws = sorted(set(width_list(widths, type(self).__name__)), reverse=True)
        if ws[-1] < 1:
            raise ValueError(f"widths must be positive integers, got {list(widths)}")
        if ws[0] > container.MAX_WIDTH:   # (SlimCAE(widths=[2**16]) went on to build its
            # 65536-channel layers: the process was killed for its memory)
            raise ValueError(f"{type(self).__name__}: width {ws[0]} is wider than a .slim file "
                             f"can name (at most {container.MAX_WIDTH}): use narrower widths")
        self.widths = ws

    def _stride(self) -> int:
        """:attr:`downsampling` checked: an int >= 1 (0 was a ZeroDivisionError inside
        ``compress``, None a TypeError from ``int()``, 4.5 ran as 4)."""
        s = self.downsampling
        if not is_int(s) or s < 1:
            raise ValueError(f"{type(self).__name__}.downsampling must be an int >= 1 (g_a's "
                             f"total stride), got {s!r}")
        return int(s)

    # -- to be provided by a subclass --------------------------------------------------------
    def config(self) -> Dict:
        """JSON-serializable constructor arguments (and an architecture name); hashed into
        :meth:`model_id`. Subclasses must override it."""
        raise NotImplementedError(f"{type(self).__name__} must define config()")

    # -- transforms ----------------------------------------------------------------------------
    def _width(self, width: Optional[int]) -> int:
        if width is None:
            return self.widths[0]
        w = as_width(width, type(self).__name__)
        if w not in self.widths:
            raise ValueError(f"width {width} is not one of this model's widths {self.widths}")
        return w

    def encode(self, x: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
        """Analysis: ``[N, 3, H, W]`` -> latent ``[N, width, H/s, W/s]`` (default: widest).
        ValueError for an input that is not ``[N, 3, H, W]`` (the first conv would read a 1- or
        2-channel image through the first channels of its weight)."""
        self._check_rgb(x)
        return self._transform_module("g_a")(x, self._width(width))

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Synthesis: ``[N, w, h, w']`` -> ``[N, 3, s*h, s*w']`` (width ``w = y_hat.shape[1]``)."""
        if not isinstance(y_hat, torch.Tensor):
            raise not_a_tensor(y_hat, f"{type(self).__name__}.decode", "latent [N, width, h, w]")
        if y_hat.dim() != 4:
            raise ValueError(f"{type(self).__name__}.decode expects a latent [N, width, h, w], "
                             f"got {tuple(getattr(y_hat, 'shape', ())) or type(y_hat).__name__}")
        return self._transform_module("g_s")(y_hat, self._width(y_hat.shape[1]))

    def _transform_module(self, name: str):
        """``self.<name>`` (``g_a`` / ``g_s``), after refusing a module whose ``forward`` takes no
        width (a plain ``nn.Sequential`` gave torch's "forward() takes 2 positional arguments"
        from inside the call)."""
        g = getattr(self, name)
        if isinstance(g, nn.Module) and "forward" not in g.__dict__ and \
                not _takes_width(type(g)):
            raise TypeError(f"{type(self).__name__}.{name} is a {type(g).__name__} whose "
                            f"forward(x) takes no width: the codec calls {name}(x, width); build "
                            f"it as a slimkernels.nn.SlimSequential (it hands the width to the "
                            f"layers that take one) or give its forward a width argument")
        return g

    def forward(self, x: torch.Tensor, width: Optional[int] = None,
                quantization: str = "noise") -> Dict:
        """Run sub-network ``width`` on ``x`` ``[N, 3, H, W]`` float32 (H, W multiples of ``s``).

        Args:
            quantization: training mode only: ``"noise"`` (default) decodes ``y + U(-0.5, 0.5)``;
                ``"mixed"`` decodes the rounded latent with a straight-through gradient, the
                likelihoods staying those of the noisy latent
                (:meth:`slimkernels.nn.EntropyBottleneck.forward`).
        Returns:
            ``{"x_hat": [N, 3, H, W], "likelihoods": {"y": [N, width, H/s, W/s] float32}}``;
            noisy (or mixed) quantization in training mode, median rounding in eval mode.
        """
        self._check_sides(x)
        return self._quantize_and_decode(self.encode(x, width), quantization)

    def _check_rgb(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise not_a_tensor(x, type(self).__name__, "RGB image [N, 3, H, W]")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects RGB images [N, 3, H, W], "
                             f"got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")

    def _check_sides(self, x: torch.Tensor) -> None:
        """``forward``'s input: RGB with sides that are multiples of ``s`` (its ``x_hat`` is then
        x's size; otherwise it came back larger, and a distortion against x broadcast)."""
        self._check_rgb(x)
        s = self._stride()
        if x.shape[2] % s or x.shape[3] % s:
            raise ValueError(f"{type(self).__name__}.forward: the image is "
                             f"{x.shape[2]}x{x.shape[3]}, its sides must be multiples of {s} "
                             "(crop or pad it: compress() pads by edge replication itself)")

    def _quantize_and_decode(self, y: torch.Tensor, quantization: str = "noise") -> Dict:
        # forward's second half: the entropy model (noise, mixed or rounding), then the synthesis
        if quantization == "noise":   # (so an entropy model without the argument still works)
            y_hat, lik = self.entropy_bottleneck(y)
        else:
            y_hat, lik = self.entropy_bottleneck(y, quantization=quantization)
        return {"x_hat": self.decode(y_hat.to(y.dtype)), "likelihoods": {"y": lik}}

    def forward_widths(self, x: torch.Tensor, widths: Sequence[int],
                       quantization: str = "noise") -> List[Dict]:
        """``[self.forward(x, w, quantization) for w in widths]``: the same values (and
        gradients), for the joint training of several widths, with the analysis transform's first
        layer run once.

        When ``g_a`` is a plain :class:`SlimSequential` (no forward or hooks of its own, nor an
        ``encode`` of the codec's) that starts with a :class:`~slimkernels.nn.SlimConv2d` of
        SlimConv2d's ``forward`` on the image (its input channels are fixed; its hooks then run
        once, with the widest output), the
        first layer's output at width ``k`` is the first ``k`` channels of its output at the
        widest width: it runs once at the widest of ``widths`` (and, with gradient, its weight
        gradient once), and each narrower width takes a slice. Elsewhere (another ``g_a``, or a
        ``g_a`` that fuses the first conv with its GDN: the Triton backend) one ``forward`` per
        width, and so for a subclass that overrides :meth:`forward`. SlimCAE's training step
        (batch 8, fp32, 2-core EPYC, interleaved A/B): 1.07x at 128x128 crops, 1.01-1.02x at
        256x256 (the narrower widths' slices are copies).

        Args:
            x: ``[N, 3, H, W]`` float in [0, 1] (H, W multiples of ``s``).
            widths: widths of this model, in any order (duplicates allowed).
            quantization: ``"noise"`` or ``"mixed"``, as in :meth:`forward`.
        Returns:
            one :meth:`forward` dict per entry of ``widths``, in that order.
        """
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Iterable):
            raise TypeError(f"{type(self).__name__}.forward_widths takes a list of widths, got "
                            f"{widths!r}: for one width call forward(x, width)")
        ws = [self._width(w) for w in widths]
        check_quantization(quantization)
        kw = {} if quantization == "noise" else {"quantization": quantization}
        self._check_rgb(x)
        first = self._shared_first_layer(x)
        if first is None or len(set(ws)) < 2:
            return [self.forward(x, w, **kw) for w in ws]
        self._check_sides(x)
        top = max(ws)
        h = first(x, top)
        narrow = sorted({w for w in ws if w < top}, reverse=True)
        if functorch_transform(h):   # (torch.func, forward AD: autograd's own slices, which
            slices = {w: h[:, :w] for w in narrow}   # they see through; the Function has no
        else:                                         # vmap rule nor jvp)
            slices = dict(zip(narrow, _WidthSlices.apply(h, *narrow)))
        slices[top] = h
        return [self._quantize_and_decode(self.g_a(slices[w], w, start=1), quantization)
                for w in ws]

    def _own_transform(self, *names: str) -> bool:
        """Whether each of the methods ``names`` is SlimCodec's own: not overridden by the class
        nor set on the instance (the paths that call ``g_a`` / ``g_s`` layer by layer skip it)."""
        d = self.__dict__
        return all(getattr(type(self), n) is getattr(SlimCodec, n) and n not in d for n in names)

    def _shared_first_layer(self, x: torch.Tensor) -> Optional[nn.Module]:
        # g_a's first layer when forward_widths may run it once for all widths, else None
        from .nn.conv import SlimConv2d

        g = self.g_a
        if not self._own_transform("forward", "encode") or not _plain_sequential(g) or \
                len(g) < 2 or g.fuses(x):
            return None   # (an encode or g_a of its own: g_a's layers are not called one by one)
        first = g[0]
        # (a first layer with a forward of its own runs per width; its hooks run once, as the
        # layer does)
        if not isinstance(first, SlimConv2d) or "forward" in first.__dict__ or \
                type(first).forward is not SlimConv2d.forward or not first.slim_output or \
                x.dim() != 4 or x.shape[1] != first.in_channels:
            return None
        return first

    def aux_loss(self) -> torch.Tensor:
        """The entropy models' auxiliary (quantile) loss summed over widths (0-dim float32)."""
        return self.entropy_bottleneck.loss()

    def update(self, force: bool = True) -> bool:
        """Build the integer CDF tables (int32 buffers) of every width; call after training and
        before :meth:`compress`. ``force``: rebuild the tables even where they exist (default);
        False builds only the widths without them. Returns True when tables were (re)built.
        ValueError for a model on the meta device, or a ``force`` that is not True / False."""
        self._refuse_meta("update")
        force = as_flag(force, "force", f"{type(self).__name__}.update")
        return self.entropy_bottleneck.update(force)

    def _latent_plan(self, eb, width: int):
        """``(medians, cdfs, cdf_lengths, offsets, channel indexes)`` of ``width``'s entropy model
        ``eb`` as the CPU quantization and the coder read them (see :func:`_coding_medians`,
        :func:`_tables`, :func:`channel_indexes`), cached per width for the current weights: keyed
        by the state key of :meth:`model_id`, which ``compress`` computes first (without it, not
        cached)."""
        mid = self.__dict__.get("_model_id_cache")
        plans = self.__dict__.get("_latent_plans")
        if mid is not None and plans is not None and plans[0] == mid[0] and width in plans[1]:
            return plans[1][width]
        plan = (_coding_medians(eb), *_tables(eb), channel_indexes(width))
        if mid is not None:
            if plans is None or plans[0] != mid[0]:
                plans = self.__dict__["_latent_plans"] = (mid[0], {})
            plans[1][width] = plan
        return plan

    def model_id(self) -> bytes:
        """16-byte id (``bytes`` of length 16) of this model's config and weights (see
        :func:`model_fingerprint`). Cached until a parameter or buffer changes (tracked by the
        tensors' version counters), a module is added, removed or replaced, or the config
        changes. ValueError for a model on the meta device (no values to hash)."""
        self._refuse_meta("model_id")
        return self._checked_id()[0]

    def _checked_id(self):
        """``(model_id, problem)``: ``problem`` names the first floating-point parameter or
        buffer that is not float32 or not finite (None if all are fine), which :meth:`compress`
        and :meth:`decompress` refuse; both cached with the id (no walk of their own per
        call)."""
        cfg = self.config()
        return cached_on_module(self, "_model_id_cache", self,
                                lambda: (model_fingerprint(self, cfg), _weight_problem(self)),
                                extra=_config_json(cfg))

    def _coding_id(self, op: str) -> bytes:
        """:meth:`model_id`, after refusing a model with weights that are not all float32 (the
        first one's dtype is checked by ``_coding_device``; a submodule converted alone, e.g.
        ``g_s.half()``, failed inside autocast) or not finite (``decompress`` returned a NaN
        image)."""
        mid, problem = self._checked_id()
        if problem is not None:
            need, what, todo = problem
            raise ValueError(f"{op} needs {need}, but {what}: {todo}")
        return mid

    def clear_caches(self) -> None:
        """Drop every inference cache tied to this model's weights: the conv ops' weight copies
        (:func:`slimkernels.ops.clear_weight_caches`: casts, layouts, prepacked), the layers' cached effective GDN
        parameters, the entropy models' coding medians and CDF tables, the :meth:`model_id`
        and the CUDA graphs of ``cuda_graph=True``. Needed only after writing a parameter or
        buffer through ``.data`` (which bypasses version counters) or setting a plain attribute
        on a module class of your own inside the model; in-place updates, ``load_state_dict``,
        optimizer steps (fused ones too: :mod:`slimkernels._optim_versions`) and attributes set
        on the library's modules (``layer.padding = 1``) are detected without it."""
        from .ops.conv import clear_weight_caches
        clear_weight_caches()   # (also stops builds in flight from being kept: bump_generation)
        for m in self.modules():
            if m is not self and callable(getattr(m, "clear_cache", None)):
                m.clear_cache()
        self.__dict__.pop("_model_id_cache", None)
        self.__dict__.pop("_cuda_graphs", None)
        self.__dict__.pop("_cpu_replays", None)
        self.__dict__.pop("_latent_plans", None)

    # -- coding --------------------------------------------------------------------------------
    def _first_parameter(self) -> torch.Tensor:
        p = _first_parameter_of(self)
        if p is None:
            raise ValueError(f"{type(self).__name__} has no parameters: build its g_a, g_s and "
                             f"entropy_bottleneck in __init__ (docs/tutorial_custom_codec.md)")
        return p

    def _refuse_meta(self, op: str) -> torch.Tensor:
        """The first parameter; ValueError when the weights are on the meta device (a model
        built for shapes only: ``op`` needs values)."""
        p = self._first_parameter()
        if p.is_meta:
            raise ValueError(f"{op} needs the model's weights, but they are on the meta device "
                             f"(shapes without values): load them first, e.g. "
                             f"model.to_empty(device='cpu') then load_state_dict, or "
                             f"slimkernels.pretrained.load_model")
        return p

    def _coding_device(self, op: str) -> torch.device:
        """The device :meth:`compress` / :meth:`decompress` run on; ValueError for a model
        whose weights are not float32 (the coding path keeps fp32 weights and reaches lower
        precision through autocast)."""
        p = self._refuse_meta(op)
        if p.dtype != torch.float32:
            raise ValueError(f"{op} needs the model's weights in float32, got {p.dtype}: call "
                             f"model.float() (for bf16 transforms pass precision='bf16', which "
                             f"autocasts)")
        if p.device.type == "cpu":
            one_thread_in_forked_child(op, depth=2)   # (compress -> _coding_device -> here)
        return p.device

    def _transforms_channels_last(self, device: torch.device) -> Optional[bool]:
        """``input_channels_last`` when set; else True where the convolutions run channels_last
        anyway (CPU: ``CPU_CHANNELS_LAST``; CUDA: ``TRITON_CHANNELS_LAST``), so that the one copy
        the input needs also converts it; else None (the parameters' layout)."""
        from .ops import conv as conv_ops

        cl = self.input_channels_last
        if cl is None and ((device.type == "cpu" and conv_ops.CPU_CHANNELS_LAST) or
                           (device.type == "cuda" and conv_ops.TRITON_CHANNELS_LAST)):
            cl = True
        return cl

    def _params_channels_last(self) -> bool:
        # see input_channels_last; by default channels_last models get channels_last inputs
        cl = self.input_channels_last
        if cl is None:
            w = next((p for p in self.parameters() if p.dim() == 4), None)
            cl = (w is not None and not w.is_contiguous()
                  and w.is_contiguous(memory_format=torch.channels_last))
        return bool(cl)

    def _like_params(self, t: torch.Tensor) -> torch.Tensor:
        return _dense(t, t.dtype, torch.channels_last if self._params_channels_last()
                      else torch.contiguous_format)

    def _image_input(self, x: torch.Tensor, precision: str,
                     ranges: Optional[list] = None) -> torch.Tensor:
        """The padded image as the analysis transform's input, in ONE copy at most.

        Layout: ``input_channels_last`` when set; else on CPU and CUDA channels_last (the
        convolutions run channels_last there, :data:`slimkernels.ops.conv.CPU_CHANNELS_LAST`,
        :data:`~slimkernels.ops.conv.TRITON_CHANNELS_LAST`: converting here saves their
        conversion), elsewhere the parameters' layout. The strides are always the dense
        ones: an image read from an HWC buffer is "channels_last" with batch stride 3, which
        oneDNN runs 1.7-3x slower in bf16 (measured, Kodak 768x512). In bf16, when ``g_a`` starts
        with a :class:`~slimkernels.nn.SlimConv2d` (which casts its input to bf16 anyway), the
        cast is done here in the same copy; but where the direct AMX conv runs, a float32 image
        that already has the dense channels_last strides (:func:`slimkernels.io.read_image`'s)
        goes as it is: the conv rounds it to bf16 as it reads it, the same bits as the cast
        (``compress`` 1.01-1.02x, :data:`CPU_IMAGE_AS_IS`). ``ranges``: as for :func:`_dense`
        (the image's ``(min, max)`` when that cast measured them; for an image passed as it is,
        ``_RANGE_IN_CONV`` where the first conv checks it, :data:`CPU_IMAGE_RANGE_IN_CONV`, else
        by :func:`~slimkernels.ops.image_io.value_range`, a pass that writes nothing)."""
        from .nn.conv import SlimConv2d
        from .ops.conv import amx_conv_available

        cl = self._transforms_channels_last(x.device)
        if cl is None:
            return self._like_params(x)
        first = self.g_a[0] if isinstance(self.g_a, nn.Sequential) and len(self.g_a) else None
        # (an encode of its own gets the image as it is: it may compute on it before g_a casts)
        dtype = (torch.bfloat16 if precision == "bf16" and isinstance(first, SlimConv2d) and
                 self._own_transform("encode") else x.dtype)
        if dtype == torch.bfloat16 and cl and x.dtype == torch.float32 and x.is_cpu and \
                x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and \
                CPU_IMAGE_AS_IS and amx_conv_available():
            if ranges is not None:
                ranges.append(_RANGE_IN_CONV if CPU_IMAGE_RANGE_IN_CONV else value_range(x))
            dtype = x.dtype
        return _dense(x, dtype, torch.channels_last if cl else torch.contiguous_format, ranges)

    def _latent_input(self, eb, sym: torch.Tensor, precision: str,
                      medians: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The dequantized latent ``y_hat`` (float32 ``sym + median``) as the synthesis
        transform's input, in one pass and at most one cast.

        On CUDA channels_last (the Triton convolutions' input). On CPU in bf16, when ``g_s``
        starts with one of this library's layers (an IGDN or a transposed conv: they compute in
        bf16 under autocast anyway), bf16, channels_last (unless ``input_channels_last`` says
        otherwise): the first IGDN then runs the one-pass
        bf16 GDN kernel (AVX512-BF16; :func:`slimkernels.ops.gdn.gdn`) instead of the PyTorch
        path it takes for fp32 x under autocast. In float32 on CPU, when ``g_s`` starts with one
        of these layers, channels_last too (their layout there, ``CPU_CHANNELS_LAST``: the
        dequantization's one pass writes it). Elsewhere float32 in the parameters' layout."""
        from .nn.conv import SlimConvTranspose2d
        from .nn.gdn import SlimGDN, _WidthSelectedGDN

        dev = sym.device
        first = self.g_s[0] if isinstance(self.g_s, nn.Sequential) and len(self.g_s) else None
        ours = dev.type == "cpu" and \
            isinstance(first, (SlimGDN, _WidthSelectedGDN, SlimConvTranspose2d)) and \
            self._own_transform("decode")   # (a decode of its own gets the latent as before)
        bf16 = ours and precision == "bf16"
        # the transforms' layout (input_channels_last when set) on CUDA and where one of our
        # layers takes the latent on CPU (it would convert it: no add-then-copy, and no torch
        # copy in the transform, which keeps the CPU replay open to it)
        cl = self._transforms_channels_last(dev) if dev.type == "cuda" or ours else None
        return _dequantize(eb, sym, self._params_channels_last() if cl is None else cl, medians,
                           torch.bfloat16 if bf16 else torch.float32)

    def _checked_image_input(self, x: torch.Tensor, precision: str, deferred: bool
                             ) -> Tuple[torch.Tensor, bool]:
        """:meth:`compress`'s :meth:`_image_input` of its padded float32 image ``x``, with the
        range check of every value where it is ``deferred`` (the CPU: from the cast's own
        measure, else a pass, :func:`_check_pixel_range`): ``(the transform's input, in_conv)``,
        ``in_conv`` True where the first conv checks the image instead (:meth:`_encode_image`).
        Elsewhere compress checked every value before."""
        ranges = [] if deferred else None
        t = self._image_input(x, precision, ranges)
        in_conv = bool(ranges) and ranges[0] is _RANGE_IN_CONV
        if deferred and not in_conv:
            if ranges:
                _check_value_range(*ranges[0])
            else:
                _check_pixel_range(x)
        return t, in_conv

    def _encode_image(self, x: torch.Tensor, width: int, precision: str, dev: torch.device,
                      cuda_graph: Optional[bool], mid: bytes, in_conv: bool) -> torch.Tensor:
        """:meth:`compress`'s analysis transform of ``x`` (``_image_input``'s) at ``width``:
        the latent. ``in_conv``: the image's range is checked by the first conv as it reads it
        (``_image_input`` said so: :data:`CPU_IMAGE_RANGE_IN_CONV`), which raises
        :data:`slimkernels.ops.image_io.ImageRangeError`; those recordings are keyed apart.
        Where no conv took the check (a hook or a ``forward`` of its own handed the first conv
        another tensor), ``x`` is measured here (ValueError, compress's message)."""
        fn = lambda t: self.encode(t, width)  # noqa: E731
        if not in_conv:
            return self._transform("encode", fn, x, (width, precision), dev, precision,
                                   cuda_graph, mid)
        with image_io.checked_by_first_conv(x, *PIXEL_RANGE) as check:
            y = self._transform("encode", fn, x, (width, precision, "range"), dev, precision,
                                cuda_graph, mid)
        if not check.taken:   # (no conv got the image itself: a hook, a forward of its own)
            _check_value_range(*value_range(x))
        return y

    @torch.no_grad()
    def compress(self, x: torch.Tensor, width: Optional[int] = None, *, precision: str = "auto",
                 streams: Optional[int] = None, metadata: Optional[Dict[str, bytes]] = None,
                 cuda_graph: Optional[bool] = None) -> bytes:
        """Compress one image to the bytes of a ``.slim`` file.

        Args:
            x: ``[1, 3, H, W]`` or ``[3, H, W]`` float in [0, 1], any ``H, W >= 1`` (padded to a
                multiple of ``s`` by edge replication; cropped back by :meth:`decompress`).
            width: sub-network width (default: the widest).
            precision: ``"auto"`` (default: bf16 autocast for the transform where the device
                computes bf16 natively, see :func:`resolve_precision`, else fp32), ``"fp32"`` or
                ``"bf16"``. The quantization and the entropy coding run in fp32 / integers
                whatever the precision; the file does not depend on the decoder's precision.
            streams: range-coder substreams (1..255), coded and decoded in parallel threads.
                Default (None): one per :data:`STREAM_MIN_SYMBOLS` latent symbols, at most
                ``torch.get_num_threads()`` (each substream costs ~26 bytes; for a 768x512
                image with 2 threads: 1 stream at w=48 and 72, encoded on torch's OpenMP
                threads by 2 threads each coding 2 of its 4 rANS lanes (1.2x in situ, same
                bytes; :func:`coder_encode_threads`), 2 at w=96 and above, where they halve
                the coding time for +0.01-0.12 % of rate). The bytes then depend on
                the thread count; any decoder reads any stream count.
            metadata: custom ``str -> bytes`` fields stored in the container.
            cuda_graph: on a CUDA model, run the analysis transform from a CUDA graph captured
                for this width, precision and padded image size (and the current weights),
                replayed afterwards: the Triton kernels' launch costs go (the w=48 encoder on an
                H200: 0.70 -> 0.20 ms; ``compress`` 1.3-1.4x faster end to end). None (default):
                captured at the second call with the same key (a one-off image size runs
                without, at no capture cost); True: at the first; False: never. Same bytes.
                Ignored on CPU. Graphs are kept per model (:meth:`clear_caches` drops them; at
                most ``CUDA_GRAPHS_KEPT``), each with the memory of one transform call.

        Raises:
            TypeError: ``x`` is not a tensor (e.g. the ``(x, note)`` tuple of
                :func:`slimkernels.io.read_image`: pass ``x``).
            ValueError: bad shape, dtype, width, precision or ``metadata`` (see
                :func:`slimkernels.container.check_metadata`); an image with a value far
                outside [0, 1] (e.g. 0-255 pixel values; see :data:`PIXEL_RANGE`: every value
                is checked) or a NaN / inf; a model that is not finite (NaN / inf reach the
                latent); a latent of another shape than ``[1, width, H/s, W/s]``
                from the analysis transform (a ``g_a`` or ``downsampling`` that does not match).
            RuntimeError: :meth:`update` was not called.
        """
        check_image_tensor(x, "compress")
        width = self._width(width)
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"compress expects one RGB image [1, 3, H, W], got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"compress expects a float image in [0, 1], got dtype {x.dtype}")
        if metadata is not None:   # (before the work: a bad entry failed after the coding)
            container.check_metadata(metadata)
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise ValueError(f"compress expects an image of at least 1x1 pixels, got "
                             f"{tuple(x.shape)}")
        if max(x.shape[-2:]) > container.MAX_SIDE:   # (before the transform: pack refuses it)
            # (width x height, as info and decompress say it; it said height x width)
            raise ValueError(f"compress: the image is {x.shape[-1]}x{x.shape[-2]} pixels (width "
                             f"x height); a .slim file holds sides of at most "
                             f"{container.MAX_SIDE}: split the image")
        dev = self._coding_device("compress")
        # Every value's range is checked. On CPU after the image's cast to the transform's
        # input: from that cast's own measure when it is the bf16 image cast, or by the first
        # conv as it reads the image, else (fp32, another first layer) by a pass of its own;
        # elsewhere first, by a pass.
        deferred = x.is_cpu and dev.type == "cpu"
        if not deferred:
            _check_pixel_range(x)
        precision = resolve_precision(precision, dev)
        eb = self.entropy_bottleneck.for_width(width)
        if not eb.has_tables():
            raise RuntimeError("the entropy model has no CDF tables: call model.update() first")
        H, W = x.shape[-2:]
        s = self._stride()
        ph, pw = (-H) % s, (-W) % s
        x = x.to(dev, torch.float32)
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        image = x
        x, in_conv = self._checked_image_input(image, precision, deferred)
        mid = self._coding_id("compress")   # once: the graph cache's key, the container's field
        try:
            y = self._encode_image(x, width, precision, dev, cuda_graph, mid, in_conv)
        except image_io.ImageRangeError as e:
            refused = e
        else:
            refused = None
        if refused is not None:   # (raised here: the message names the values' range)
            _check_value_range(*value_range(image))
            raise refused
        want = (1, width, (H + ph) // s, (W + pw) // s)
        if tuple(y.shape) != want:   # (before the quantizer reads the width's medians per channel)
            raise ValueError(f"compress: the analysis transform returned a latent of shape "
                             f"{tuple(y.shape)}, expected {list(want)} (width {width}; the image "
                             f"padded to {H + ph}x{W + pw} over downsampling = {s}): check the "
                             f"widths of g_a's last layer and the class's downsampling")
        med, cdfs, lengths, offsets, idx = self._latent_plan(eb, width)
        sym, invalid = _quantize_counted(eb, y, med, as_numpy=True)
        if invalid:  # NaN / inf / |y| >= 2^31
            raise ValueError("compress: the latent has NaN, inf or values beyond the int32 range: "
                             "the image (or the model's weights) is not finite; pass a finite "
                             "float image in [0, 1]")
        _, C, h, w = sym.shape
        if streams is None:
            streams = auto_streams(sym.size)
        else:
            streams = coding._check_int(streams, "streams", 1, 255)
        pool = coder_pool()
        payload = coding.encode_prepared(sym, idx, h * w, cdfs, lengths, offsets,
                                         eb.precision, streams,
                                         coder_encode_threads(pool, streams), pool)
        return container.pack(container.SlimFile(
            model_id=mid, width=width, height=H, img_width=W, streams=streams,
            payload=payload, metadata=dict(metadata or {})))

    @torch.no_grad()
    def decompress_latent(self, data: bytes, *, max_pixels: Optional[int] = DECODE_MAX_PIXELS
                          ) -> Tuple[container.SlimFile, torch.Tensor]:
        """Parse ``data`` and decode its symbols: ``(SlimFile, int32 [1, width, h, w])``.

        ``max_pixels``: as :meth:`decompress` (the image's pixels, not the latent's).

        Raises:
            slimkernels.container.SlimFormatError: invalid file, another model's file, or a
                width this model does not have.
            slimkernels.container.ImageTooLargeError: see :meth:`decompress`.
            ValueError: the model is on the meta device; a bad ``max_pixels``.
        """
        self._refuse_meta("decompress_latent")
        f, sym, _, _ = self._decode_symbols(data, max_pixels)
        return f, sym

    def _decode_symbols(self, data: bytes, max_pixels: Optional[int] = DECODE_MAX_PIXELS):
        """:meth:`decompress_latent`, the width's :meth:`_latent_plan` (``decompress``
        dequantizes with its medians) and the number of escaped symbols (values outside their
        channel's table: none, and so none beyond the model's range, in the files ``compress``
        writes of real images); ``(file, symbols, plan, escapes)``."""
        if max_pixels is not None:   # (before the file: a bad argument is the caller's)
            max_pixels = coding._check_int(max_pixels, "max_pixels", 1)
        f = container.unpack(data)
        if max_pixels is not None and f.height * f.img_width > max_pixels:
            raise container.ImageTooLargeError(
                f.img_width, f.height, max_pixels,
                "pass a larger max_pixels (or None) to decode it")
        mine = self._coding_id("decompress")
        if f.model_id != mine:
            raise container.ModelMismatchError(
                f"this file was written with a different model (id {f.model_id.hex()}); this "
                f"model's id is {mine.hex()}: decode it with the model that wrote it")
        if f.width not in self.widths:
            raise container.SlimFormatError(f"the file's width {f.width} is not one of this "
                                            f"model's widths {self.widths}")
        eb = self.entropy_bottleneck.for_width(f.width)
        s = self._stride()
        h, w = -(-f.height // s), -(-f.img_width // s)
        plan = self._latent_plan(eb, f.width)
        _, cdfs, lengths, offsets, idx = plan
        payload = f.payload if isinstance(f.payload, (bytes, bytearray)) else bytes(f.payload)
        # the coder validates the payload (never reads outside it); what it rejects is a
        # corrupt file, reported as the format's error (the header's CRC held)
        stats = np.zeros(1, np.int64)
        try:
            sym = coding.decode_prepared(payload, idx, h * w, (1, f.width, h, w), cdfs, lengths,
                                         offsets, eb.precision, torch.get_num_threads(),
                                         coder_pool(), stats)
        except ValueError as e:   # (the header's size and width say what was asked for)
            raise container.SlimFormatError(
                f"corrupt .slim payload: {e}; the header says a {f.img_width}x{f.height} image at "
                f"width {f.width}, {f.width * h * w} latent symbols") from None
        return f, torch.from_numpy(sym), plan, int(stats[0])

    @torch.no_grad()
    def decompress(self, data: bytes, *, precision: str = "auto",
                   cuda_graph: Optional[bool] = None,
                   max_pixels: Optional[int] = DECODE_MAX_PIXELS) -> torch.Tensor:
        """Decode the bytes of a ``.slim`` file to ``[1, 3, H, W]`` float32 in [0, 1].

        Args:
            precision: ``"auto"`` (default), ``"fp32"`` or ``"bf16"`` (autocast for the synthesis
                transform; see :meth:`compress`). Any precision decodes any file: the latents are
                decoded exactly from the integer CDF tables.
            cuda_graph: the synthesis transform from a CUDA graph (see :meth:`compress`: by
                default from the second call with the same width, precision and image size); the
                image returned is a tensor of its own either way. Ignored on CPU.
            max_pixels: the most pixels (H x W) of an image this call decodes (default
                :data:`DECODE_MAX_PIXELS`, ~179 MP: Pillow's limit for reading one); a file
                asking for more is refused before anything is decoded. None: no limit.

        Raises:
            slimkernels.container.ImageTooLargeError: the file's image has more than
                ``max_pixels`` pixels (a ValueError).
            slimkernels.container.SlimFormatError: see :meth:`decompress_latent`; also a file
                whose latent lies far outside the entropy model's range and decodes to a
                non-finite image (a forged or foreign payload: ``compress`` never writes one).
            ValueError: unknown ``precision``; a synthesis transform whose output is not
                ``[1, 3, >= H, >= W]`` for the file's image (``g_s`` not ending in 3 channels,
                or not upsampling by ``downsampling``).
        """
        dev = self._coding_device("decompress")
        precision = resolve_precision(precision, dev)
        f, sym, plan, escapes = self._decode_symbols(data, max_pixels)
        # symbols beyond every table's range are escapes: a file without any needs no pass over
        # its symbols (kodim01, 2 threads: 39 / 126 us at w=48 / 192 right after the decoder;
        # none of the 24 Kodak images' files has an escape at w=48 or w=192)
        beyond = _beyond_support(sym, plan) if escapes else None
        eb = self.entropy_bottleneck.for_width(f.width)
        y_hat = self._latent_input(eb, sym.to(dev), precision,
                                   plan[0] if dev.type == "cpu" else None)
        # f.model_id: checked equal to this model's id by decompress_latent
        image = self._synthesize(y_hat, f, dev, precision, cuda_graph)
        if beyond is not None and not bool(torch.isfinite(image.sum())):
            raise container.SlimFormatError(
                f"corrupt .slim payload: its latent holds symbols up to {beyond}, beyond the "
                f"entropy model's range, and decodes to a non-finite image: a damaged, forged or "
                f"foreign payload, or one compressed with a model whose analysis transform gives "
                f"latents that far out (damaged weights: compress it again with a sound model)")
        return image

    def _synthesize(self, y_hat: torch.Tensor, f, dev: torch.device, precision: str,
                    cuda_graph: Optional[bool]) -> torch.Tensor:
        """:meth:`decompress`'s last step: the float32 image ``[N, 3, f.height, f.img_width]``
        in [0, 1] of the latent ``y_hat`` of file ``f`` (its width, size and model id), on the
        CPU from the last layer where :meth:`_decodes_image` (else the synthesis transform,
        then ``_image_output``), cropped to the file's size."""
        if dev.type == "cpu" and self._decodes_image(f.width, precision):
            image = self._transform("decode-image", self._decode_image, y_hat,
                                    (f.width, precision), dev, precision, cuda_graph, f.model_id)
        else:
            x_hat = self._transform("decode", self.decode, y_hat, (f.width, precision), dev,
                                    precision, cuda_graph, f.model_id)
            image = _image_output(x_hat)
        s = self._stride()
        want = (1, 3, y_hat.shape[-2] * s, y_hat.shape[-1] * s)
        if tuple(image.shape) != want:   # (a larger one had been cropped to a corner, silently)
            raise ValueError(f"decompress: the synthesis transform returned {tuple(image.shape)}, "
                             f"expected {list(want)} for this file's {y_hat.shape[-2]}x"
                             f"{y_hat.shape[-1]} latent: check that g_s ends in 3 channels and "
                             f"upsamples by downsampling = {s} (its output_padding)")
        return _cropped(image, f.height, f.img_width)

    def _decodes_image(self, width: int, precision: str) -> bool:
        """Whether a CPU ``decompress`` at ``width`` and ``precision`` (resolved) takes the image
        from the synthesis transform's last layer (:meth:`_decode_image`): in bf16 where the
        direct AMX conv runs (its epilogue writes the image: elsewhere the clamp would be the
        same second pass, with the layer's input still held), :meth:`decode` is SlimCodec's (not
        overridden, not set on the instance), ``g_s`` a :class:`SlimSequential` with its class's
        ``forward`` and no hooks, ending in a :class:`~slimkernels.nn.SlimConvTranspose2d`
        without hooks or its own ``forward`` (they would see the clamped image instead of the
        layer's output), and that layer's input (``width`` channels at 1 / stride^2 of its
        pixels) is no larger than its output: its input and the float32 image are then no more
        memory at once than the bf16 output and the image of the two passes (SlimCAE: w <= 48;
        at w=72 and 96 the peak rose by 1-2 MiB, past the next width's)."""
        from .nn.conv import SlimConvTranspose2d
        from .ops import conv as conv_ops
        if precision != "bf16" or not conv_ops.amx_conv_available():
            return False
        g_s = getattr(self, "g_s", None)
        if not (self._own_transform("decode") and _plain_sequential(g_s) and
                len(g_s) > 0 and isinstance(g_s[-1], SlimConvTranspose2d)):
            return False   # (a decode, g_s or g_s forward of its own, or hooks on g_s)
        last = g_s[-1]
        s = last._s * last._s
        return int(width) <= last.out_channels * s and not runs_more_than_forward(last)

    def _decode_image(self, y_hat: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` then the float32 image clamped to [0, 1] (``_image_output``), the
        clamp given to the last layer (``out_clamp``): on the direct AMX CPU kernel its epilogue
        writes the image (no bf16 output and second pass; the same values). Needs
        :meth:`_decodes_image` at this width."""
        width = self._width(y_hat.shape[1])
        g_s = self.g_s
        last = g_s[-1]
        h = g_s(y_hat, width, stop=len(g_s) - 1)
        return last(h, _layer_width(last, width), out_clamp=(0.0, 1.0))

    def _cpu_transform(self, kind: str, run, x: torch.Tensor, key) -> torch.Tensor:
        """``run(x)`` on CPU, replayed (:mod:`slimkernels.cpu_replay`) when ``cpu_replay`` is on
        and the compiled kernels are there; needs :meth:`model_id` computed for the current
        weights (its state key keys the recordings)."""
        kernels = _cpu_module()
        d = self.__dict__
        cache = d.get("_model_id_cache")
        if not self.cpu_replay or kernels is None or _cpu_switched_off() or _cpu_tracing() or \
                cache is None or not x.is_cpu or "encode" in d or "decode" in d or \
                "_decode_image" in d:   # (an instance's own encode / decode: not what a
            return run(x)               # recording saw; a torch mode: see _cpu.tracing)
        replays = d.get("_cpu_replays")
        if replays is None:
            from .cpu_replay import ReplayCache
            replays = d["_cpu_replays"] = ReplayCache(self.CPU_REPLAYS_KEPT)
        # the class's transform methods key the recordings too (one patched on the class after
        # a recording ran the recorded kernels, not the new code)
        cls = type(self)
        # (and the modules' plain attributes: a recording runs what they did then)
        return replays.run((kind,) + tuple(key) + (cls.encode, cls.decode, cls._decode_image),
                           run, x, (cache[0], attribute_version()), lambda: state_tensors(self),
                           kernels, lambda: list(self.modules()))

    def _transform(self, kind: str, fn, x: torch.Tensor, key, dev: torch.device,
                   precision: str, cuda_graph: Optional[bool], model_id: bytes
                   ) -> torch.Tensor:
        """``fn(x)`` under the precision's autocast; on a GPU from a CUDA graph unless
        ``cuda_graph`` is False (None: captured at the key's second use, True: at its first).
        ``model_id``: this model's :meth:`model_id` (the caller has it; 40-70 us to compute)."""
        def run(t):
            with _autocast(dev, precision):
                return fn(t)
        if cuda_graph not in (None, True, False):
            raise ValueError(f"cuda_graph must be None, True or False, got {cuda_graph!r}")
        if dev.type == "cpu":
            return self._cpu_transform(kind, run, x, key)
        if cuda_graph is False or dev.type != "cuda":
            return run(x)
        graphs = self.__dict__.get("_cuda_graphs")
        if graphs is None:
            from .cuda_graphs import GraphCache
            from .ops.conv import cached_weight_copies
            graphs = self.__dict__["_cuda_graphs"] = GraphCache(self.CUDA_GRAPHS_KEPT,
                                                                keepalive=cached_weight_copies)
        return graphs.run((kind,) + tuple(key), run, x, (model_id, attribute_version()),
                          capture_after=1 if cuda_graph else 2)
