"""Width-sliced convolution and transposed convolution (dispatcher + PyTorch paths).

``weight`` is always the FULL parameter; the active slice is read in place. On CUDA (or under
``TRITON_INTERPRET=1`` with ``backend="triton"``) the Triton implicit-GEMM kernels of
:mod:`slimkernels.kernels.conv` run, with GDN / IGDN fused in their epilogue. On CPU the op calls
oneDNN (``F.conv2d``) on the sliced *view* (measured no slower than a contiguous copy, see
``bench/results/cpu/conv.md``), in channels_last (an NCHW input is converted once; the output is
channels_last, so the next layer needs no conversion: ``CPU_CHANNELS_LAST``), and under ``torch.autocast("cpu", torch.bfloat16)`` casts the full weight once per weight version
instead of once per call and width (autocast's own cache skips sliced, non-leaf weights).

Without gradient (inference: ``compress`` / ``decompress``) the CPU path goes one step further
(``CPU_PREPACK``): the active weight slice is cast, rearranged for the chosen formulation and
reordered into oneDNN's blocked layout ONCE per (parameter, version, slice, dtype, geometry) and
kept in a small LRU cache; the conv then runs ``torch.ops.mkldnn._convolution_pointwise`` on it.
A plain ``F.conv2d`` call reorders the weight on every call (0.2-0.7 ms for a 192x192x5x5 bf16
slice, 10-30 % of the conv). Narrow bf16 stride-s convs whose channel count fills AMX tiles badly
(48 channels: 2 tiles of 32 per tap, 75 % used) read x through a free channels_last view with
``s`` neighbouring columns folded into the channels (``_wfold``), which fills the tiles at the
cost of ``s*ceil(k/s)/k`` the MACs. A parameter updated in place (optimizer step,
``load_state_dict``, ``torch.no_grad(): w.mul_(2)``) bumps its version and invalidates its
entries; writes through ``.data`` bypass version counting: call :func:`clear_weight_caches` then
(it also drops the Triton path's weight copies).
"""
from __future__ import annotations

import functools
import numbers
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import as_width, check_tensor_args, is_int
from .._cpu import cpu_kernels, functorch_transform, real_tensors, refuse_jit_trace, tracing
from ..backend import resolve_backend
from . import conv_image, image_io, winograd
from . import _cache
from ._cache import _CAST_CACHE, _PACK_CACHE, _cached  # noqa: F401 (tests read them here)
from . import _raw
from ._raw import cpu_capability, onednn_half as _onednn_half
from .gdn import _SCALAR_NAMES as _GDN_SCALARS
from .gdn import (_check_gdn_params, _check_gdn_scalars, _cpu_kernel_gdn, _effective_params,
                  _kernel_scalars, _packed_gamma, _params_readable, cpu_kernels_available)
from .gdn import gdn as _gdn, gdn_reference, half_without_onednn
from .._amp import no_autocast


def _gdn_kwargs(spec, inverse: bool, backend: str, device: torch.device, channels: int,
                where: str):
    """The ops.gdn keyword arguments of a conv op's ``gdn`` / ``igdn`` / ``out_igdn`` argument
    (``where``: the op and argument, for messages), checked for a GDN over ``channels``
    channels on ``device``, with ``inverse`` and the conv's resolved ``backend`` (the GDN runs on
    the conv's backend: a dict's own ``"backend"`` entry must name the same one)."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        kw = dict(spec)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        kw = {"beta": spec[0], "gamma": spec[1]}
    else:
        raise ValueError("gdn/igdn must be a (beta, gamma) tuple or a dict of slimkernels.ops.gdn "
                         f"arguments, got {type(spec).__name__}")
    unknown = sorted(set(kw) - _GDN_KEYS)
    if unknown:
        raise ValueError(f"gdn/igdn dict: unknown entries {unknown} (known: {sorted(_GDN_KEYS)})")
    if kw.pop("inverse", inverse) != inverse:
        raise ValueError(f"gdn/igdn dict says inverse={not inverse}, but this argument is "
                         f"{'an IGDN' if inverse else 'a GDN'}: pass it as "
                         f"{'gdn=' if inverse else 'igdn= / out_igdn='} instead")
    own = kw.pop("backend", None)
    if own is not None and (not isinstance(own, str) or own.strip().lower() != backend):
        raise ValueError(f"gdn/igdn dict: backend={own!r}, but the conv runs on {backend!r} and "
                         "its GDN with it: drop the entry, or pass backend= to the conv op")
    if "beta" not in kw or "gamma" not in kw:
        raise ValueError("gdn/igdn dict needs 'beta' and 'gamma' entries")
    check_tensor_args("gdn/igdn", beta=kw["beta"], gamma=kw["gamma"])
    _check_gdn_params(kw["beta"], kw["gamma"], channels, device, where)
    _check_gdn_scalars(kw, "gdn/igdn dict")
    kw["inverse"] = inverse
    kw["backend"] = backend
    return kw


_GDN_KEYS = {"beta", "gamma", "inverse", "backend", *_GDN_SCALARS}


def _effective(kw, c):
    """The effective (beta[:c], gamma[:c, :c]) of a gdn kwargs dict (SlimGDN+ scalars applied,
    in at least float32, as the GDN op and the kernels apply them: bf16 parameters had got them
    in bf16, 6-8e-4 off)."""
    return _effective_params(kw["beta"], kw["gamma"], c, *(kw.get(n) for n in _GDN_SCALARS),
                             torch.float32)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _gdn_params_need_grad(kw) -> bool:
    return kw is not None and _needs_grad(*[v for v in kw.values() if isinstance(v, torch.Tensor)])


# ---------------------------------------------------------------------------------------------
# CPU helpers
# ---------------------------------------------------------------------------------------------
# The UPPER_CASE constants below are dispatch switches; each comment gives the measurement that
# set it. Scripts named there as /tmp/sNN/... or /work/prof/... were a sitting's scratch scripts
# and are not kept: `python bench/ab_switch.py SWITCH --values A,B` re-measures any switch end to
# end (compress / decompress of the bundled model, per width), bench/bench_conv_amx.py and
# bench/bench_conv_avx2.py the layers.
#: On CPU, convert NCHW inputs to channels_last before calling oneDNN (one pass over x; its output
#: is then channels_last too, so a model pays it once at the first layer). Measured in
#: bench/results/cpu/conv*.md: channels_last is the faster oneDNN layout at every SlimCAE layer,
#: by up to 7x in bf16 (enc1 at w=192: 8.8 ms vs 63 ms NCHW, one thread).
CPU_CHANNELS_LAST = True

_CAST_CACHE_MAX = 64   # (the cache: _cache._CAST_CACHE)


def _autocast_dtype(x: torch.Tensor):
    """The reduced dtype autocast would use for a conv on x's device, or None (also for a
    float64 ``x``: autocast leaves float64 operands alone, and ``F.conv2d`` then computes in
    float64)."""
    dev = x.device.type
    if dev not in ("cpu", "cuda") or x.dtype == torch.float64 or \
            not torch.is_autocast_enabled(dev):
        return None
    dt = torch.get_autocast_dtype(dev)
    return dt if dt in (torch.bfloat16, torch.float16) else None


def _half_compute_dtype(x: torch.Tensor):
    """The half-precision dtype a conv on ``x`` computes in (x's bf16 / fp16, else autocast's),
    or None for a full-precision one."""
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else _autocast_dtype(x)


def _cast_full(t: Optional[torch.Tensor], dtype, in_channel_dim: Optional[int] = None
               ) -> Optional[torch.Tensor]:
    """``t.to(dtype)``, cached by (storage, version) while no gradient is recorded.

    ``in_channel_dim`` (a 4-d weight, no gradient): the copy also gets unit stride along that
    dimension (the input channels: 1 for a conv weight ``[C_out, C_in, k, k]``, 0 for a transposed
    one ``[C_in, C_out, k, k]``), even where no cast is needed; same shape and values."""
    want_layout = in_channel_dim is not None and t is not None and t.dim() == 4 and \
        not _needs_grad(t) and t.stride(in_channel_dim) != 1 and t.shape[in_channel_dim] > 1
    if t is None or (t.dtype == dtype and not want_layout):
        return t
    if _needs_grad(t) or tracing():   # (torch.compile, a torch mode: in the graph, uncached)
        return t.to(dtype)  # in the graph; one cast per call (autocast would do the same)
    inference = t.is_inference()   # (torch.inference_mode: no version counter, not cached)
    key = (t.data_ptr(), tuple(t.shape), t.stride(), dtype, in_channel_dim if want_layout else None)
    hit = None if inference else _CAST_CACHE.get(key)
    if hit is not None and hit[0] == t._version and hit[1] is t:
        return hit[2]
    ver = None if inference else t._version   # (before the copy: an update meanwhile misses)
    gen = _cache.generation()
    # the copy is a normal tensor even under torch.inference_mode() (an inference tensor kept
    # here made a later call that records a gradient for x fail: "Inference tensors cannot be
    # saved for backward")
    with torch.inference_mode(False):
        out = t.detach().to(dtype)
        if want_layout:  # channels_last puts dim 1 at unit stride; a transposed weight swaps first
            perm = (0, 1, 2, 3) if in_channel_dim == 1 else (1, 0, 2, 3)
            out = out.permute(perm).contiguous(memory_format=torch.channels_last).permute(perm)
    if inference:
        return out
    _cache.store_cast(key, (ver, t, out), gen, _CAST_CACHE_MAX)   # t itself: no weak refs
    return out


def cached_weight_copies() -> list:
    """The tensors the weight cast / layout cache holds now (``_cast_full``). A CUDA graph
    captured over them must keep them alive: the cache may drop them (it is cleared when full),
    the graph still reads them (:mod:`slimkernels.cuda_graphs`)."""
    with _cache._PACK_LOCK:   # (another thread's insert may drop entries: drop_orphans)
        return [v[2] for v in _CAST_CACHE.values()]


def _to_channels_last(x: torch.Tensor, switch: bool, dtype=None) -> torch.Tensor:
    """x in ``dtype`` (default: its own) and, when ``switch`` is on and x is a 4-d NCHW tensor
    of more than one channel, channels_last: one copy at most (none when x is already both).
    The CPU (``CPU_CHANNELS_LAST``) and Triton (``TRITON_CHANNELS_LAST``) paths' input layout."""
    dtype = x.dtype if dtype is None else dtype
    if switch and x.dim() == 4 and x.shape[1] > 1 and \
            not x.is_contiguous(memory_format=torch.channels_last):
        return x.to(dtype=dtype, memory_format=torch.channels_last)
    return x if x.dtype == dtype else x.to(dtype)


def _cpu_layout(x):
    return _to_channels_last(x, CPU_CHANNELS_LAST)


def _cpu_operands(x, weight, bias, widx, co):
    """Slice (views) and apply CPU bf16/fp16 autocast by hand: without gradient the FULL weight is
    cast once per weight version (cached) and then sliced; with gradient only the slice is cast,
    in the graph. Returns x, weight slice, bias slice, and whether autocast must be switched off
    around the conv call."""
    x = _cpu_layout(x)
    dt = _autocast_dtype(x)
    if dt is None or not x.is_floating_point():
        return x, weight[widx], None if bias is None else bias[:co], False
    if _needs_grad(weight) or _needs_grad(bias):
        return (x.to(dt), weight[widx].to(dt), None if bias is None else bias[:co].to(dt), True)
    b = _cast_full(bias, dt)
    return x.to(dt), _cast_full(weight, dt)[widx], None if b is None else b[:co], True


# -- CPU, no gradient: prepared (cast, rearranged, oneDNN-reordered) weights, cached -----------
#: Run no-grad CPU convs on cached prepacked weights (see the module docstring).
CPU_PREPACK = True
#: Without gradient, hand GDN/IGDN of conv outputs to the GDN op's fused CPU kernel when it is
#: available (else the prepacked passes of ``_gdn_cpu_nograd``).
CPU_FUSED_GDN = True
#: Fold ``s`` columns into the channels of a reduced-precision stride-``s`` conv when the AMX tile
#: use gain beats the extra MACs by this factor (estimated cost ratio <= this).
WFOLD_MAX_COST = 0.9
#: Fold a few-channel input (C < 16: the image layer, SlimCAE's 3-channel 9x9/4 enc1) only when
#: the conv has at most this many output channels (its cost is not K-starvation alone: oneDNN's
#: small-C kernel. Measured on kodim01, bf16, fold vs not: 1.11-1.37x at 1 thread and 1.25-1.58x
#: at 2 for 16-72 outputs; 1.0-1.1x at 96; 0.37-0.99x at 144-192.)
WFOLD_SMALL_C_MAX_OUT = 72
#: Without gradient, run fp32 convs and transposed convs whose geometry maps onto Winograd
#: F(4x4, 3x3) (:mod:`slimkernels.ops.winograd`: SlimCAE's 5x5/2 layers) that way on AVX2 CPUs
#: (where it was measured: 1.3-2.2x oneDNN's direct fp32 kernels for 96-192 channels on a Zen 3
#: EPYC, 1.0-1.3x at 72 and for the transposed ones at 48), when its batched GEMM ``[tiles, K] x [K, N]`` has
#: ``N >= WINOGRAD_MIN_N`` (a conv: N = C_out; a transposed conv: N = stride^2 * C_out) and
#: ``C_in >= WINOGRAD_MIN_CIN`` (the image layer, 3 channels, measured 0.46-0.83x). 48-channel
#: convs (N = 48) depend on this VM's memory speed: 0.84-0.97x with 32 MB rounds; with rounds
#: sized to the weights (``winograd.CHUNK_*``) 1.5x in a slow-memory phase but 0.86-0.99x in a
#: fast one, and compress at w=48 2-9 % faster in one order-swapped A/B, 6 % slower in another
#: (eighth sitting). Ninth sitting, four more interleaved A/Bs (``/work/prof/ab48*.py``-style,
#: trainer paused): SlimCAE's w=48 enc2 2.97 vs 4.24 ms (1.43x), enc3 0.86 vs 1.10 ms (1.27x),
#: the encoder 10.3 vs 11.3 ms, ``compress`` 6-8 % faster in both orders. Five of six A/Bs
#: favour Winograd, so 48-channel convs take it too. A transposed conv onto 1-3 channels goes to
#: the image kernel below ``WINOGRAD_IMAGE_MIN_CIN`` inputs. AVX-512 CPUs and bf16 have rules
#: of their own below (``WINOGRAD_AVX512_MIN_C``, ``CPU_WINOGRAD_BF16``).
CPU_WINOGRAD = True
WINOGRAD_MIN_N = 48
WINOGRAD_MIN_CIN = 32
#: ... and on AVX-512 CPUs (the same AVX2 transforms), without gradient, when both sides have
#: at least ``WINOGRAD_AVX512_MIN_C`` channels. Zen 4 EPYC, 2 threads, medians of 9, fp32,
#: Winograd / oneDNN ms on kodim01's shapes (``/tmp/wino2.py``-style, trainer paused): C = 192
#: enc2 33.2 / 53.1 (1.60x), enc3 1.49x, dec1 1.45x, dec2 1.57x; C = 144 1.57 / 1.29 / 1.35 /
#: 1.48x; C = 96 1.41 / 1.16 / 1.59 / 1.56x; C = 72 1.28 / 1.30 / 2.25 / 1.88x; C = 48 enc2 4.06
#: vs 3.28 ms, dec2 4.47 vs 3.30 (0.8x: oneDNN). Training (``_use_winograd_grad``) keeps to
#: AVX2 CPUs (not measured here).
CPU_WINOGRAD_AVX512 = True
WINOGRAD_AVX512_MIN_C = 72
#: Those AVX-512 thresholds were measured with ``torch.bmm`` as the rounds' GEMM. With the
#: AVX-512 batched GEMM (``winograd.GEMM_AVX512``) Winograd takes no-grad fp32 convs from
#: ``WINOGRAD_AVX512_GEMM_MIN_C`` channels on both sides, and at any size except wide layers
#: (``C_in * C_out >= WINOGRAD_WIDE_CHANNELS``, whose transformed weight every call reads), which
#: need ``WINOGRAD_AVX512_GEMM_MIN_TILES_WIDE`` tiles. Zen 4 EPYC, 2 threads, kodim01's layers,
#: Winograd / oneDNN speed of enc2 / enc3 / dec1 / dec2 (``python bench/bench_conv_avx2.py
#: --repeats 25 --widths 192,48,32,24``, and ``24,32,48``): 192 channels 1.95 / 1.65 / 1.74 /
#: 1.84x (``--repeats 15``); 48 1.41 / 1.27 / 1.15 / 1.47x and 1.44 / 1.41 / 1.52 / 1.47x; 32
#: 1.42-1.60x; 24 1.20-1.57x (a 15-repeat run of all widths in a slow phase of this VM read
#: 0.91-1.13x at 48 and 0.77-0.92x at 24; with the tuned malloc and ``torch.bmm`` as the base
#: rule: 16 channels 0.90-1.72x, so not there). Small inputs (``/tmp/s21/wtiles.py``: the
#: layers at 1-36 tiles, medians of 41): 48 and 96 channels 1.06-1.95x at every tile count; 192
#: 0.47-0.67x at 1-4 tiles, 1.15-1.20x at 9, 1.38x at 16.
WINOGRAD_AVX512_GEMM_MIN_C = 24
WINOGRAD_AVX512_GEMM_MIN_TILES_WIDE = 9
#: (For a transposed conv the channel test is on the GEMM's N = stride^2 * C_out, so SlimCAE's
#: output layer, 9x9/4 onto RGB, N = 48, qualifies, and from ``WINOGRAD_IMAGE_MIN_CIN`` inputs
#: takes Winograd instead of the image kernel, as on AVX2 CPUs: kodim01's dec3, fp32, image
#: kernel / Winograd 13.60 / 9.71 ms at 192 inputs (1.40x), 10.80 / 8.86 at 144 (1.22x), 7.37 /
#: 6.52 at 96 (1.13x), 3.82 / 5.69 at 48 (0.67x: the image kernel stays), medians of 15,
#: ``/tmp/s21/dec3w.py``; a later run read 1.38-1.41x at 192, 0.96-1.01x at 144, 0.81x at 96;
#: fp32 ``decompress`` 1.05-1.10x at w = 96 / 144 / 192 in two A/Bs, ``bench/ab_checkouts.py``.)
#: ... and when the call has enough 4x4 tiles (the batched GEMM's M: batch x tiles of the output
#: grid for a conv, of the input grid for a transposed conv): Winograd reads its cached
#: transformed weight (36 K x N floats: 21 MB at 192 channels) once per call, which small images
#: do not repay. Measured per layer, no grad, fp32, 2 threads, Winograd / oneDNN speed
#: (``/work/prof/wino_tiles*.py``, interleaved, trainer paused; eleventh sitting): a 5x5/2 conv at
#: 192 channels 0.30x with 1 tile, 0.60-0.68x with 4, 0.84-0.97x with 9, 1.11-1.26x with 16,
#: 1.79x with 36; at 144 0.94x with 16; at 96 and 72 0.95-1.0x with 1-4, 1.05-1.30x with 9; the
#: transposed 5x5/2 at 192 and 144 0.94-0.95x with 16 tiles, 1.17-1.22x with 25; at 96 and 72
#: 1.17-1.21x with 9. So ``WINOGRAD_MIN_TILES``, and ``WINOGRAD_MIN_TILES_WIDE`` when
#: ``C_in * C_out >= WINOGRAD_WIDE_CHANNELS`` (the transformed weight outgrows the caches; 16
#: tiles take the convs' gain and the transposed convs' ~5 % loss). ``compress`` /
#: ``decompress`` with this rule against Winograd at any size (``/work/prof/small_rule.py``,
#: 9 interleaved rounds): 1.6-1.7x / 1.5-1.6x faster for a 32x32 image at w=192 and 144,
#: 1.3-1.6x for 64x64 and 96x96, 1.05-1.2x for 128x128 at w=192; from 256x256 on every layer
#: has 16 tiles or more and nothing changes (a Kodak image: 96-1536 tiles per layer).
WINOGRAD_MIN_TILES = 8
WINOGRAD_MIN_TILES_WIDE = 16
WINOGRAD_WIDE_CHANNELS = 144 * 144
#: ... except narrow layers (at most ``WINOGRAD_NARROW_C`` channels on both sides), which take
#: Winograd at any tile count: there every step of a codec's transform is a call of the compiled
#: kernels, which the CPU replay (:mod:`slimkernels.cpu_replay`, sitting 53: with the AVX2
#: batched GEMM, ``winograd.GEMM_AVX2``) repeats without the Python between them, where a
#: oneDNN conv kept the whole transform eager. Zen 3 EPYC, 2 threads, the bundled model on
#: kodim01's top-left crops, ``compress`` / ``decompress`` with this rule against the tile
#: threshold alone, 9 interleaved rounds of medians of 7 (``/tmp/small.py``): replayed (the
#: default) w=48 1.57-1.88x at 32x32-128x128, w=72 1.30-1.49x at 32-128, w=96 1.14-1.27x at
#: 64-128; eager (``cpu_replay=False``, or a layer called alone) w=48 0.92-1.04x, w=72
#: 0.83-1.00x, w=96 0.73-0.97x: so up to 72 channels. From 256x256 on every layer had enough
#: tiles already.
WINOGRAD_NARROW_C = 72
#: With gradient (training in fp32 on AVX2 CPUs), run the same layers by Winograd as well: the
#: forward and the input gradient (:class:`~slimkernels.ops.winograd.WinogradConv2dFunction`),
#: on weights transformed per call in fp32 (one AVX2 pass from the weight slice: ~3 ms per
#: direction at 192 channels), and the weight gradient by F(3x3, 4x4) (w=192 enc2 1.56x
#: oneDNN's, dec2 2.0x). Measured at SlimCAE's
#: training shapes (batch 8, 128x128 crops, Zen 3 EPYC, interleaved A/B), forward + backward of
#: one layer against oneDNN: at w=192 1.26-1.31x with 128 Winograd tiles (enc2, dec2: 16x16
#: phase grids), 0.92-0.94x with 32 (enc3, dec1); at w=96 1.17-1.19x and 0.87-0.91x. Since
#: the weight gradient writes its final layout and the trainer tunes malloc (allocator.py), the
#: narrow and 32-tile layers measure faster alone too (enc2 / dec2 at w=72 1.41x / 1.42x, w=48
#: 1.36x / 1.27x; enc3 / dec1 at w=192 1.11x / 1.08x, 72 1.12x / 1.15x, 48 0.95x / 0.98x:
#: forward + backward of one layer), but not inside a training step: crop 128, five
#: configurations interleaved in one process (trainer paused), median s/step: 96 tiles / 96
#: channels 0.582, 96 / 48 0.582, 32 / 96 0.610, 32 / 48 0.600 (another run: 32 / 48 0.740
#: against 0.680). So calls with >= ``WINOGRAD_TRAIN_MIN_TILES`` tiles and
#: ``WINOGRAD_TRAIN_MIN_N`` channels on both sides, as before. Whole training step (``python
#: bench/bench_train_step.py``): 1.09-1.10x at crop 128, 1.31x at 256.
CPU_WINOGRAD_TRAIN = True
#: ... and on AVX-512 CPUs with the AVX-512 batched GEMM (``winograd.GEMM_AVX512``: the forward
#: and input-gradient rounds; the weight gradient keeps ``torch.bmm``), same thresholds. Zen 4
#: EPYC, 2 threads, fp32 training step of the bundled model (batch 8), on vs off, interleaved
#: (``python bench/bench_train_step.py --no-plain`` with this switch forced on, sitting 21): crop
#: 128 0.468 vs 0.544 s (1.16x, 6 rounds), crop 256 1.64 vs 2.17 s (1.32x, 4 rounds). (Zen 4
#: trains in bf16 by default, which this path leaves alone; AVX-512 CPUs without bf16, e.g. Ice
#: Lake, train in fp32.)
CPU_WINOGRAD_TRAIN_AVX512 = True
WINOGRAD_TRAIN_MIN_TILES = 96
WINOGRAD_TRAIN_MIN_N = 96
#: A transposed conv onto an image (fewer than ``WINOGRAD_MIN_CIN`` outputs, e.g. SlimCAE's 9x9/4
#: dec3 onto RGB: ``stride^2 * C_out = 48`` phase channels) takes Winograd in training too when
#: it has ``>= WINOGRAD_TRAIN_IMAGE_MIN_CIN`` inputs (and enough tiles): forward + backward at
#: batch 8, 32x32 -> 128x128, against oneDNN's sub-pixel conv: 1.60x at C_in = 192 (17.9 vs
#: 28.7 ms), 1.53x 144, 1.27x 96, 1.31x 72, 1.06x 48 (``python /work/prof/dec3.py``-style A/B,
#: trainer paused). The image *input* layer (9x9/4 from RGB) stays on oneDNN: 0.93x-0.77x.
WINOGRAD_TRAIN_IMAGE_MIN_CIN = 72
#: Without gradient, run bf16 5x5/2 convs (SlimCAE's enc2 / enc3) on AVX512-BF16 CPUs without
#: AMX by bf16 Winograd (``winograd.GEMM_BF16``: V rounded to bf16, vdpbf16ps GEMM with fp32
#: sums, fp32 output transform) when both sides have ``WINOGRAD_BF16_MIN_C`` channels and the
#: call has ``WINOGRAD_MIN_TILES_WIDE`` tiles; ``CPU_WINOGRAD_BF16_TRANSPOSED`` does the same for
#: the transposed convs (dec1 / dec2) and is OFF by default. Zen 4 EPYC, 2 threads, kodim01's
#: layers, bf16 Winograd / oneDNN (``python bench/bench_conv_avx2.py --precision bf16 --opt-in
#: --repeats 11 --widths 192,144,96``): enc2 / enc3 / dec1 / dec2 1.59 / 1.56 / 1.65 / 1.63x at
#: 192 channels, 1.40 / 1.48 / 1.62 / 1.44x at 144; 0.86-0.93x at 96 and 0.54-0.82x at 48-72
#: (``/tmp/s22/wsp.py``), hence 144. ``compress`` (default precision = bf16 here) against the
#: commit before: 1.22x at w=192, 1.12x at 144, unchanged below (``python bench/ab_checkouts.py
#: --sizes 0 --widths 192,144,96,48 --rounds 8``). The price is accuracy: the algorithm errs
#: 10-20x a direct bf16 conv (see ``slimkernels.ops.winograd``). In the encoder that moves the
#: few latents sitting at a rounding boundary (symbols equal to fp32's: 99.17-99.74 % against
#: 99.59-99.83 % for the direct bf16 encoder, kodim01-03 and the sample image): on all 24 Kodak
#: images PSNR -0.021 dB against fp32 at w=192 (direct bf16: -0.017), -0.014 at 144 (-0.011),
#: rate +0.04 % (+0.03 %). In the decoder it lands in the image: with the transposed convs too,
#: -0.035 dB at w=192 (-0.021 at 144) for ``decompress`` 1.26x (1.13x) faster
#: (``/tmp/s22/rd.py``, ``/tmp/s22/ab.py``): twice the direct bf16 path's loss, still within the
#: issue's 0.05 dB, but off by default; set it for speed.
CPU_WINOGRAD_BF16 = True
CPU_WINOGRAD_BF16_TRANSPOSED = False
WINOGRAD_BF16_MIN_C = 144
#: Without gradient, run fp32 convs on few-channel inputs and transposed convs onto 1-3 output
#: channels (the image layers) with the direct AVX2 kernels of :mod:`slimkernels.ops.conv_image`
#: on AVX2 CPUs (SlimCAE on a Zen 3 EPYC: enc1 1.1x oneDNN at 2 threads, 1.3x at 1; dec3
#: 1.4-1.6x the prepacked sub-pixel conv).
CPU_IMAGE_CONV = True
#: ... except that a no-grad transposed conv onto an image with at least this many inputs runs
#: by Winograd (when ``_use_winograd`` admits it) rather than the image kernel: SlimCAE's dec3
#: on a 768x512 Kodak image, Winograd / image kernel, three interleaved runs (trainer paused):
#: layer 1.30-1.34x at 192, 1.38x at 144, 1.08-1.12x at 96, 1.02x at 72, 0.89x at 48 in two
#: runs, 0.6-1.0x in a third (a slow phase for Winograd); ``decompress`` 1.03x at 192, 1.04x
#: at 144, 1.05x at 96, 1.03x at 72 (``/work/prof/dec3e2e.py``: 10 rounds, both orders).
WINOGRAD_IMAGE_MIN_CIN = 96
#: Without gradient, run bf16 transposed convs onto 1-3 output channels (SlimCAE's 9x9/4 output
#: layer) with the image kernel's AVX512-BF16 variant on CPUs that have it and no AMX (AMX CPUs
#: keep oneDNN's AMX routes: on the AMX Xeon the bf16 image kernels run 3.5-7x slower than them,
#: enc1 / dec3 2.67 / 3.23 ms against 0.59 / 0.90 at C = 48, 10.3 / 11.8 against 1.56 / 1.88 at
#: 192; twenty-third sitting, 2 threads, medians of 15, ``_amx`` patched off in one process,
#: ``/tmp/img_amx.py``-style on ``bench_conv_avx2``'s layers): exact taps (2/3 of the sub-pixel
#: products), fp32 sums, no phase shuffle copy. Zen 4 EPYC, kodim01's dec3 ([1, C, 128, 192]
#: -> 3 x 512 x 768), 2 threads, medians of 30 (``/tmp/tb3.py``-style, trainer paused):
#: 2.0-2.2 vs 2.6-2.8 ms at C = 48, 7.2 vs 9.8-10.1 ms at 192 (1.3-1.4x). Likewise bf16 convs
#: from few input channels (enc1, 3 -> C, 9x9/4) by the image conv kernel's AVX512-BF16 variant
#: (8-pixel x 3-panel tiles): kodim01, 2 threads, medians of 30 (``/tmp/tc.py``-style), against
#: oneDNN with folded columns (``_wfold``): 1.50 vs 1.84 ms at C = 48, 2.70 vs 3.32 at 72, 3.41
#: vs 4.01 at 96, 4.98 vs 5.46 at 144, 5.83 vs 7.44 at 192.
CPU_IMAGE_CONV_BF16 = True
#: ... and fp32 ones on AVX-512 CPUs too (``CPU_IMAGE_CONV`` keeps the other image kernels to
#: AVX2-level CPUs), by the kernel's AVX-512 variant (``conv_image.FP32_AVX512``): Zen 4 EPYC,
#: kodim01's dec3, 2 threads, medians of 20: 3.4 vs 4.9 ms at C = 48, 6.9 vs 10.5 at 96, 13.3
#: vs 19.3 at 192 against oneDNN's fp32 sub-pixel conv. On the AMX Xeon (Intel AVX-512, twenty-
#: third sitting, ``python bench/bench_conv_avx2.py --threads 2 --repeats 9``): dec3 at 48 / 72
#: inputs (the image kernel) 1.34 / 1.36x oneDNN, enc1 0.95-1.07x at 48-192.
CPU_IMAGE_CONV_T_AVX512 = True
#: ... and the fp32 convs from few input channels (enc1) on AVX-512 CPUs by the conv kernel's
#: AVX-512 variant (``conv_image.FP32_AVX512``: 8-pixel x 3-panel tiles of 16 lanes; its AVX2
#: variant is not used there, so that CPUs with two 512-bit FMA units are not held to 8 lanes).
#: Zen 4 EPYC, kodim01's enc1 (3 -> C, 9x9/4, [1, 3, 512, 768]), 2 threads, tuned malloc,
#: medians of 21 interleaved (``/tmp/s21/enc1ab.py``): 2.71 / 4.50 / 5.56 / 8.38 / 10.94 ms at
#: C = 48 / 72 / 96 / 144 / 192 against oneDNN's 3.51 / 5.39 / 6.57 / 10.13 / 12.50 (1.14-1.29x;
#: ``python bench/bench_conv_avx2.py --repeats 15``, default malloc: 1.04-1.17x; fp32 ``compress``
#: of kodim01 1.04 / 1.03 / 1.02x at w = 48 / 96 / 192, ``bench/ab_checkouts.py``, 10 rounds;
#: the AVX2 variant 0.98-1.03x the AVX-512 one there: both at the FMA peak, ~210 GFLOP/s). Not
#: measured on Intel AVX-512 CPUs.
CPU_IMAGE_CONV_AVX512 = True


def clear_weight_caches() -> None:
    """Drop every cached weight copy of the conv ops: the casts and the input-channel-contiguous
    layout copies of both backends (the Triton path on CUDA reads such a copy without gradient)
    and the CPU path's prepacked weights. Needed only after writing a parameter through
    ``.data`` (EMA updates, some optimizers), which does not bump its version counter;
    in-place updates, ``load_state_dict`` and optimizer steps are detected without it (the
    steps of torch's fused optimizers, which do not bump the counters themselves, through the
    hook of :mod:`slimkernels._optim_versions`, installed with this module). A model
    built on :class:`slimkernels.codec.SlimCodec` has ``clear_caches()``, which calls this and
    drops its own caches too."""
    _cache.clear()


#: :func:`clear_weight_caches`' earlier name (kept for code that imports it: the same function).
clear_cpu_caches = clear_weight_caches


@functools.lru_cache(maxsize=None)
def _onednn(dtype) -> bool:
    """Whether torch's prepacked oneDNN conv ops exist here for ``dtype``."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        ops._convolution_pointwise, ops._reorder_convolution_weight  # noqa: B018
        ops._convolution_transpose_pointwise, ops._reorder_convolution_transpose_weight  # noqa
        if dtype == torch.bfloat16:   # (_raw's probe itself, not the rules' patchable alias:
            return _raw.onednn_half(dtype)   # this answer is cached)
    except (AttributeError, RuntimeError):
        return False
    return dtype == torch.float32


@functools.lru_cache(maxsize=None)
def _cpu_capability() -> str:
    """ATen's CPU kernel level here: ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...
    (:func:`slimkernels.ops._raw.cpu_capability`; a function of this module so that tests can
    patch what the conv ops' rules see)."""
    return cpu_capability()


@functools.lru_cache(maxsize=None)
def _amx() -> bool:
    try:
        return bool(torch._C._cpu._init_amx())
    except (AttributeError, RuntimeError):
        return False


def _packable(x: torch.Tensor) -> bool:
    return (CPU_PREPACK and x.dtype in (torch.float32, torch.bfloat16)
            and x.is_contiguous(memory_format=torch.channels_last) and _onednn(x.dtype))


def _amx_k_use(c: int) -> float:
    """Fraction of an AMX bf16 tile's K depth (32) used by a reduction over ``c`` channels."""
    return c / (32 * -(-c // 32))


def _wfold(x: torch.Tensor, k: int, stride: int, padding: int, co: int) -> int:
    """The column fold factor for this conv (``co`` output channels): ``stride`` when folding
    pays (see ``WFOLD_MAX_COST``, ``WFOLD_SMALL_C_MAX_OUT``), else 1. Needs a channels_last x, W
    and padding multiples of the stride."""
    s, c = stride, x.shape[1]
    if s < 2 or x.dtype != torch.bfloat16 or not _amx() or x.shape[-1] % s or padding % s:
        return 1
    if c < 16:
        return s if co <= WFOLD_SMALL_C_MAX_OUT else 1
    kt = -(-k // s)
    cost = (s * kt / k) * _amx_k_use(c) / _amx_k_use(s * c)
    return s if cost <= WFOLD_MAX_COST + 1e-9 else 1


def _fold_weight(w: torch.Tensor, s: int) -> torch.Tensor:
    """``[O, C, kh, kw]`` -> ``[O, s*C, kh, ceil(kw/s)]``: folded channel ``r*C + c`` at column
    tap ``t`` is the original tap ``s*t + r`` (zero past ``kw``)."""
    O, C, kh, kw = w.shape
    kt = -(-kw // s)
    wp = F.pad(w, (0, kt * s - kw))
    return wp.reshape(O, C, kh, kt, s).permute(0, 4, 1, 2, 3).reshape(O, s * C, kh, kt)


def conv2d_wfold(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: int,
                 padding: int) -> torch.Tensor:
    """``F.conv2d(x, w, b, stride, padding)`` with ``stride`` neighbouring columns of x folded into
    its channels: x read through a free view when channels_last, a ``(k, ceil(k/s))`` kernel with
    ``s*C`` input channels and column stride 1 (exact up to float rounding; differentiable).

    Args:
        x: ``[N, C, H, W]`` with ``W`` and ``padding`` multiples of ``stride``; w: ``[O, C, k, k]``;
            b: ``[O]`` or None.
    Returns:
        ``[N, O, (H + 2p - k)//s + 1, (W + 2p - k)//s + 1]``.
    """
    x2, s2, p2 = _fold_input(x, stride, padding)
    return F.conv2d(x2, _fold_weight(w, stride), b, stride=s2, padding=p2)


def _fold_input(x, s, p):
    N, C, H, W = x.shape
    if W % s or p % s:
        raise ValueError(f"conv2d_wfold: W={W} and padding={p} must be multiples of stride={s}")
    x2 = x.permute(0, 2, 3, 1).reshape(N, H, W // s, s * C).permute(0, 3, 1, 2)
    return x2, (s, 1), (p, p // s)


def _prepack_input(x, weight, bias, transposed: bool = False):
    """x laid out and cast for the prepacked no-grad path (and the kernels it dispatches to), or
    None when that path does not apply (gradient recorded, dtype without oneDNN support, weight
    dtype differing without autocast, ``CPU_CHANNELS_LAST`` off, a few-channel conv without
    autocast on an AVX-512 CPU that none of the image kernels takes: fp32 convs there go to the
    AVX-512 fp32 variant, bf16 ones on AVX512-BF16 CPUs to the bf16 one)."""
    if not CPU_PREPACK or not CPU_CHANNELS_LAST or _needs_grad(x, weight, bias) or \
            not x.is_floating_point() or x.shape[1] < 2 or tracing():
        return None   # (a torch mode: oneDNN's prepacking has no fake-tensor rule either)
    dt = _autocast_dtype(x)
    if dt is None and (weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)):
        return None
    if dt is None and x.shape[1] < 8 and _cpu_capability() == "AVX512" and (transposed or not
            _image_kernels_apply(x, weight, x.shape[1], conv_image.MAX_INPUT_CHANNELS)):
        # fp32 on the 3-channel image: prepacking measured 3-5 % slower on an AVX-512 Xeon (enc1,
        # w=192), but 1.7-2.1x faster on an AVX2 EPYC (where F.conv2d on a channels_last image
        # with an NCHW weight picks a slow kernel and returns NCHW); on AVX-512 the image
        # kernels take enc1 from the prepacked path (fp32: CPU_IMAGE_CONV_AVX512; bf16 without
        # autocast: CPU_IMAGE_CONV_BF16, as under autocast)
        return None
    if dt is not None and x.dtype != dt:
        x = x.to(dt)  # before the layout change: that copy then moves half the bytes
    x = _cpu_layout(x)
    return x if _packable(x) else None


def _amx_image_conv_channels(co: int) -> bool:
    """Whether a conv from an image (a tap row of at most 32 elements, 5x5/2-like geometry)
    onto ``co`` channels takes the direct kernel at any size: onto at most
    ``AMX_CONV_IMAGE_MAX_CHANNELS``; with the window layout (``CPU_AMX_CONV_WINDOWS``) onto up to
    ``AMX_CONV_MISALIGNED_MAX_CHANNELS`` that are not a multiple of 32, and onto any count up to
    that with at least ``AMX_CONV_IMAGE_WIDE_MIN_THREADS`` threads (1: whatever the thread count,
    so that the bytes ``compress`` writes do not depend on it)."""
    if co <= AMX_CONV_IMAGE_MAX_CHANNELS:
        return True
    return CPU_AMX_CONV_WINDOWS and co <= AMX_CONV_MISALIGNED_MAX_CHANNELS and (
        co % 32 != 0 or torch.get_num_threads() >= AMX_CONV_IMAGE_WIDE_MIN_THREADS)


def _both_layouts(c: int, hw: int) -> bool:
    """Whether an ``[N, c, h, w]`` output with ``h * w == hw`` is contiguous in the NCHW and
    the channels_last layout at once (one channel, or one pixel): the GDN op then takes its NCHW
    kernel, which rounds apart from the channels_last one a conv's fused GDN runs, so such an
    output keeps the GDN op (the same bits whichever route the rules, the thread count or the
    switches pick)."""
    return c == 1 or hw == 1


def _conv2d_amx_if_eligible(x, weight, bias, co, stride, padding, gdn_kw=None, check=None):
    """The direct AMX conv when this geometry goes there (see ``_use_amx_conv``), else None.
    ``gdn_kw``: the GDN kwargs of the output (or None): applied in the kernel's epilogue where
    :func:`_amx_epilogue_gdn` takes it, else by the GDN op after. ``check``: ``(lo, hi)``, every
    value of the float32 x range-checked by the kernel as it reads it
    (:func:`slimkernels.ops.image_io.checked_by_first_conv`)."""
    if not amx_conv_available():   # (most CPUs: decided before the sizes)
        return None
    k, ci = weight.shape[-1], x.shape[1]
    wide = stride > 1 and k >= 2 * stride + 1
    hw = ((x.shape[2] + 2 * padding - k) // stride + 1) * ((x.shape[3] + 2 * padding - k) //
                                                          stride + 1)
    if weight.shape[-2] == k and _use_amx_conv(
            x, ci, co, x.shape[0] * hw, wide,
            image=wide and k * ci <= 32 and _amx_image_conv_channels(co)):
        g = None if gdn_kw is None or _both_layouts(co, hw) else \
            _amx_epilogue_gdn(gdn_kw, co, ci, windows=_amx_windows(k, ci, stride))
        y = _conv2d_amx(x, weight, bias, co, stride, padding, g, check)
        return y if g is not None else _apply_gdn(y, gdn_kw)
    return None


def _conv_transpose2d_amx_if_eligible(x, weight, bias, co, stride, padding, output_padding,
                                      gdn_kw=None, clamp=None):
    """The direct AMX transposed conv (sub-pixel phases) when this geometry goes there, else
    None (wide, or few output channels outside the image rule, stride 1, kernel <= stride, a tap
    plan that crops x). The image rule (onto <= ``AMX_CONV_IMAGE_MAX_OUT`` channels from <=
    ``AMX_CONV_IMAGE_T_MAX_CHANNELS``) only for kernels of at least ``2 * stride + 1`` (9x9/4 and
    5x5/2, the measured ones). ``gdn_kw``: the IGDN kwargs of the output (or None), in the
    epilogue where :func:`_amx_epilogue_gdn` takes it, else by the GDN op after; ``clamp``: the
    result as float32 clamped (``_clamp_out``; in the epilogue when there is no IGDN)."""
    if not amx_conv_available():
        return None
    k, ci = weight.shape[-1], x.shape[1]
    image = co <= AMX_CONV_IMAGE_MAX_OUT and ci <= AMX_CONV_IMAGE_T_MAX_CHANNELS and \
        k >= 2 * stride + 1
    if stride > 1 and k > stride and weight.shape[-2] == k and \
            (image or not _use_subpixel(k, k, co, stride)) and \
            _use_amx_conv(x, ci, co, x.shape[0] * x.shape[2] * x.shape[3], image=image):
        g = None if gdn_kw is None or _both_layouts(co, 4) else \
            _amx_epilogue_gdn(gdn_kw, co, ci, stride * stride)   # (its output: >= 2x2 pixels)
        kernel_clamp = clamp if gdn_kw is None else None   # (the epilogue clamps a plain output)
        y = _conv_transpose2d_amx(x, weight, bias, co, stride, padding, output_padding, g,
                                  kernel_clamp)
        if y is None:
            return None
        y = y if g is not None else _apply_gdn(y, gdn_kw)
        return y if kernel_clamp is not None else _clamp_out(y, clamp)
    return None


def _winograd_here(k, stride, padding, transposed, avx512: bool = False) -> bool:
    """``CPU_WINOGRAD`` is on, this is an AVX2 CPU (or, with ``avx512``, an AVX-512 one) with the
    kernels built, and Winograd pays for the geometry
    (:func:`~slimkernels.ops.winograd.winograd_pays`: k >= 2 * stride, at most 3 phase taps)."""
    if not CPU_WINOGRAD or _cpu_capability() not in (("AVX2", "AVX512") if avx512 else ("AVX2",)):
        return False
    return winograd.winograd_available() and \
        winograd.winograd_pays(k, stride, padding, transposed)


def _winograd_tiles(x, k, stride, padding, transposed) -> int:
    """4x4 tiles of the stride-1 phase grid of ``x`` ``[N, C, H, W]``: the input's size for a
    transposed conv, the output's for a conv (the batched GEMM's M)."""
    n, _, h, wd = x.shape
    if not transposed:
        h, wd = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    return n * -(-h // 4) * -(-wd // 4)


def _use_winograd(x, ci, co, k, stride, padding, transposed) -> bool:
    """Whether this no-grad conv runs by Winograd (see ``CPU_WINOGRAD``, ``WINOGRAD_MIN_TILES``,
    ``WINOGRAD_NARROW_C``, and on AVX-512 CPUs ``CPU_WINOGRAD_AVX512``,
    ``WINOGRAD_AVX512_GEMM_MIN_C``)."""
    if x.dtype == torch.bfloat16:
        return _use_winograd_bf16(x, ci, co, k, stride, padding, transposed)
    if x.dtype != torch.float32:
        return False
    avx512 = _cpu_capability() == "AVX512"
    wide = ci * co >= WINOGRAD_WIDE_CHANNELS
    if avx512 and winograd._gemm_avx512():
        # both GEMM dimensions: K = C_in (x s^2 for a conv), N = C_out (x s^2 transposed)
        if not CPU_WINOGRAD_AVX512 or \
                min(ci, stride * stride * co if transposed else co) < WINOGRAD_AVX512_GEMM_MIN_C:
            return False
        need = WINOGRAD_AVX512_GEMM_MIN_TILES_WIDE if wide else 1
    else:
        ndim = stride * stride * co if transposed else co
        if ndim < WINOGRAD_MIN_N or ci < WINOGRAD_MIN_CIN:
            return False
        if avx512 and (not CPU_WINOGRAD_AVX512 or min(ci, co) < WINOGRAD_AVX512_MIN_C):
            return False
        need = WINOGRAD_MIN_TILES_WIDE if wide else \
            1 if max(ci, co) <= WINOGRAD_NARROW_C else WINOGRAD_MIN_TILES
    if _winograd_tiles(x, k, stride, padding, transposed) < need:
        return False
    return _winograd_here(k, stride, padding, transposed, avx512=avx512)


def _use_winograd_bf16(x, ci, co, k, stride, padding, transposed) -> bool:
    """Whether this no-grad bf16 conv runs by bf16 Winograd (``CPU_WINOGRAD_BF16``,
    ``CPU_WINOGRAD_BF16_TRANSPOSED``, ``WINOGRAD_BF16_MIN_C``; AVX512-BF16 without AMX)."""
    if not (CPU_WINOGRAD_BF16_TRANSPOSED if transposed else CPU_WINOGRAD_BF16) or \
            min(ci, co) < WINOGRAD_BF16_MIN_C or _amx() or not winograd.gemm_bf16_available():
        return False
    if _winograd_tiles(x, k, stride, padding, transposed) < WINOGRAD_MIN_TILES_WIDE:
        return False
    return _winograd_here(k, stride, padding, transposed, avx512=True)


def _use_winograd_grad(x, w, b, stride, padding, transposed) -> bool:
    """Whether a CPU conv that records a gradient (x and the weight slice ``w`` in fp32, not
    under autocast) runs by :class:`~slimkernels.ops.winograd.WinogradConv2dFunction` (or the
    transposed one): ``CPU_WINOGRAD_TRAIN`` (on AVX-512 CPUs ``CPU_WINOGRAD_TRAIN_AVX512`` and
    the AVX-512 GEMM), the training thresholds, and a geometry whose input gradient maps onto
    Winograd too."""
    if not CPU_WINOGRAD_TRAIN or not torch.is_grad_enabled() or not _needs_grad(x, w, b) or \
            not x.is_cpu or x.dim() != 4 or w.dtype != torch.float32 or tracing() or \
            (b is not None and b.dtype != torch.float32) or w.shape[-1] != w.shape[-2]:
        return False
    ci, co = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    k = w.shape[-1]
    # (a conv's input gradient is a transposed conv onto the same grid)
    if _winograd_tiles(x, k, stride, padding, transposed) < WINOGRAD_TRAIN_MIN_TILES:
        return False
    if transposed and co < WINOGRAD_MIN_CIN:  # onto an image: see WINOGRAD_TRAIN_IMAGE_MIN_CIN
        if ci < WINOGRAD_TRAIN_IMAGE_MIN_CIN:
            return False
    elif min(ci, co) < WINOGRAD_TRAIN_MIN_N:
        return False
    # the forward and the input gradient (the other kind of conv) both map onto 3x3 phases
    avx512 = CPU_WINOGRAD_TRAIN_AVX512 and _cpu_capability() == "AVX512" and \
        winograd._gemm_avx512()
    return _winograd_here(k, stride, padding, transposed, avx512=avx512) and \
        _winograd_here(k, stride, padding, not transposed, avx512=avx512)


def _cached_fp32(key, weight, bias, co, pack):
    """``(pack(), fp32 bias[:co] or None)``, cached like the prepacked weights (``_cached``)."""
    def build():
        return pack(), None if bias is None else bias[:co].detach().float().contiguous()
    return _cached(key, (weight, bias), build)


def _wino_pack(x, transform):
    """The transformed weight for x's dtype: fp32, or bf16 pairs for bf16 x."""
    if x.dtype == torch.bfloat16:
        return lambda: winograd.pack_bf16_pairs(transform())
    return transform


def _conv2d_winograd(x, weight, bias, co, stride, padding):
    ci, k = x.shape[1], weight.shape[-1]
    U, b = _cached_fp32(("wino", co, ci, stride, k, x.dtype), weight, bias, co, _wino_pack(
        x, lambda: winograd.winograd_conv2d_weight(weight[:co, :ci], stride)))
    return winograd.conv2d_winograd(x, U, b, k, stride, padding)


def _conv_transpose2d_winograd(x, weight, bias, co, stride, padding, output_padding):
    ci, k = x.shape[1], weight.shape[-1]
    U, b = _cached_fp32(("winoT", co, ci, stride, padding, k, x.dtype), weight, bias, co,
                        _wino_pack(x, lambda: winograd.winograd_conv_transpose2d_weight(
                            weight[:ci, :co], stride, padding)))
    return winograd.conv_transpose2d_winograd(x, U, b, k, stride, padding, output_padding)


def _image_kernels_apply(x, weight, few: int, limit: int, transposed: bool = False) -> bool:
    """Whether the image-layer kernels take this no-grad conv (``few <= limit`` channels, square
    kernel): fp32 on AVX2 CPUs (``CPU_IMAGE_CONV``) and on AVX-512 CPUs (the transposed kernel:
    ``CPU_IMAGE_CONV_T_AVX512``; the conv kernel's AVX-512 variant: ``CPU_IMAGE_CONV_AVX512``),
    bf16 on AVX512-BF16 CPUs without AMX
    (``CPU_IMAGE_CONV_BF16``)."""
    if few > limit or weight.shape[-2] != weight.shape[-1] or x.numel() == 0:
        return False   # (an empty batch: the kernels refuse it; the other routes return it)
    if x.dtype == torch.bfloat16:
        return CPU_IMAGE_CONV_BF16 and not _amx() and conv_image.image_conv_bf16_available()
    if not CPU_IMAGE_CONV or x.dtype != torch.float32 or not conv_image.image_conv_available():
        return False
    cap = _cpu_capability()
    if cap == "AVX2":
        return True
    if cap != "AVX512":
        return False
    return CPU_IMAGE_CONV_T_AVX512 if transposed else \
        CPU_IMAGE_CONV_AVX512 and conv_image._fp32_avx512()


def _conv2d_image(x, weight, bias, co, stride, padding):
    """The direct conv for a few-channel x (see ``_image_kernels_apply``), or None."""
    ci, k, dt = x.shape[1], weight.shape[-1], x.dtype
    if not _image_kernels_apply(x, weight, ci, conv_image.MAX_INPUT_CHANNELS):
        return None
    wp, b = _cached_fp32(("image", co, ci, k, dt), weight, bias, co,
                         lambda: conv_image.pack_image_conv_weight(weight[:co, :ci], dt))
    return conv_image.conv2d_image(x, wp, b, k, stride, padding, co)


def _conv_transpose2d_image(x, weight, bias, co, stride, padding, output_padding):
    """The direct transposed conv onto 1-3 outputs (see ``_image_kernels_apply``), or None."""
    ci, k, dt = x.shape[1], weight.shape[-1], x.dtype
    if not conv_image.transposed_geometry_ok(k, stride, co, dt) or \
            not _image_kernels_apply(x, weight, co, conv_image.MAX_OUTPUT_CHANNELS, True):
        return None
    lanes = conv_image._lanes(k, co, dt)   # the packing follows the variant this CPU runs
    wp, b = _cached_fp32(("imageT", co, ci, k, dt, lanes), weight, bias, co,
                         lambda: conv_image.pack_image_conv_transpose_weight(weight[:ci, :co],
                                                                             dt))
    return conv_image.conv_transpose2d_image(x, wp, b, k, stride, padding, output_padding, co)


def _conv2d_prepacked(x, weight, bias, co, stride, padding):
    """No-grad CPU conv on the cached prepacked weight slice; x channels_last in its final dtype."""
    ci, k = x.shape[1], weight.shape[-1]
    if weight.shape[-2] == k and _use_winograd(x, ci, co, k, stride, padding, False):
        return _conv2d_winograd(x, weight, bias, co, stride, padding)
    y = _conv2d_image(x, weight, bias, co, stride, padding)
    if y is not None:
        return y
    if x.dtype == torch.bfloat16:
        y = _conv2d_amx_if_eligible(x, weight, bias, co, stride, padding)
        if y is not None:
            return y
    fold = _wfold(x, k, stride, padding, co) if weight.shape[-2] == k else 1
    if fold > 1:
        x, st, pd = _fold_input(x, stride, padding)
    else:
        st, pd = (stride, stride), (padding, padding)
    dt = x.dtype

    def build():
        w = weight[:co, :ci].detach().to(dt)
        if fold > 1:
            w = _fold_weight(w, fold)
        w = torch.ops.mkldnn._reorder_convolution_weight(w.contiguous(), list(pd), list(st),
                                                         [1, 1], 1, list(x.shape))
        return w, None if bias is None else bias[:co].detach().to(dt).contiguous()
    wp, bp = _cached(("conv", co, ci, dt, st, pd, tuple(x.shape)), (weight, bias), build,
                     shaped=True)
    return torch.ops.mkldnn._convolution_pointwise(x, wp, bp, list(pd), list(st), [1, 1], 1,
                                                   "none", [], "")


def _conv_transpose2d_prepacked(x, weight, bias, co, stride, padding, output_padding):
    """No-grad CPU transposed conv on cached prepared weights (sub-pixel or direct oneDNN)."""
    ci, k = x.shape[1], weight.shape[-1]
    dt = x.dtype
    # onto 1-3 channels (N = s^2 * C_out = 48 for SlimCAE's 9x9/4 output layer) Winograd from
    # WINOGRAD_IMAGE_MIN_CIN inputs, the image kernel below that
    wino = weight.shape[-2] == k and _use_winograd(x, ci, co, k, stride, padding, True)
    if not wino or ci < WINOGRAD_IMAGE_MIN_CIN:
        y = _conv_transpose2d_image(x, weight, bias, co, stride, padding, output_padding)
        if y is not None:
            return y
    if wino:
        return _conv_transpose2d_winograd(x, weight, bias, co, stride, padding, output_padding)
    if dt == torch.bfloat16:
        y = _conv_transpose2d_amx_if_eligible(x, weight, bias, co, stride, padding,
                                              output_padding)
        if y is not None:
            return y
    if _use_subpixel(weight.shape[-2], k, co, stride):
        return _subpixel_prepacked(x, weight, bias, co, stride, padding, output_padding)
    st, pd, op = [stride] * 2, [padding] * 2, [output_padding] * 2

    def build():
        w = weight[:ci, :co].detach().to(dt).contiguous()
        w = torch.ops.mkldnn._reorder_convolution_transpose_weight(w, pd, op, st, [1, 1], 1,
                                                                   list(x.shape))
        return w, None if bias is None else bias[:co].detach().to(dt).contiguous()
    wp, bp = _cached(("convT", co, ci, dt, stride, padding, output_padding, tuple(x.shape)),
                     (weight, bias), build, shaped=True)
    return torch.ops.mkldnn._convolution_transpose_pointwise(x, wp, bp, pd, op, st, [1, 1], 1,
                                                             "none", [], "")


def _gdn_cpu_nograd(y: torch.Tensor, kw) -> torch.Tensor:
    """GDN/IGDN on the conv output without gradient: 3 passes (y^2, 1x1 conv into norm, in-place
    rsqrt*y) and no temporaries beyond the norm. The effective ``gamma`` slice (SlimGDN+ scalars
    applied) is prepared, cast and prepacked once per parameter versions (``_cached``)."""
    c = y.shape[1]
    if _packable(y) and c > 1:
        names = sorted(kw)
        srcs = tuple(kw[n] for n in names if isinstance(kw[n], torch.Tensor))
        consts = tuple((n, kw[n]) for n in names if not isinstance(kw[n], torch.Tensor))

        def build():
            beta, gamma = _effective(kw, c)
            g = gamma.detach().to(y.dtype)[:, :, None, None].contiguous()
            g = torch.ops.mkldnn._reorder_convolution_weight(g, [0, 0], [1, 1], [1, 1], 1,
                                                             list(y.shape))
            return g, beta.detach().to(y.dtype).contiguous()
        g, b = _cached(("gdn", c, y.dtype, consts, tuple(y.shape)), srcs, build, shaped=True)
        norm = torch.ops.mkldnn._convolution_pointwise(torch.square(y), g, b, [0, 0], [1, 1],
                                                       [1, 1], 1, "none", [], "")
        if y.dtype == torch.bfloat16:
            # in-place sqrt_/rsqrt_/mul_ on bf16 take a slow path (4.7M elements: 6 ms each
            # against 1.3-2.1 ms out of place, torch 2.13, one thread)
            r = torch.sqrt(norm)
            return torch.mul(r, y) if kw["inverse"] else torch.div(y, r)
    else:
        beta, gamma = _effective(kw, c)
        norm = F.conv2d(y * y, gamma.to(y.dtype)[:, :, None, None], beta.to(y.dtype))
        if norm.dtype == torch.bfloat16 and y.dtype == torch.bfloat16:
            r = torch.sqrt(norm)
            return torch.mul(r, y) if kw["inverse"] else torch.div(y, r)
    if kw["inverse"]:
        return norm.sqrt_().mul_(y)
    return norm.rsqrt_().mul_(y)


#: Triton path without gradient: the kernels read the weight through a cached copy whose input
#: channels have unit stride (one per weight version, in the compute dtype; under autocast it is
#: the cast copy that was made anyway). The model's weights are contiguous ``[C_out, C_in, k, k]``
#: (transposed: ``[C_in, C_out, k, k]``), where neither channel dimension of a weight tile is
#: contiguous: compiled for sm_90 (the runtime specialisation: kw stride 1, others not
#: 16-divisible), the tile then comes in by scalar loads into one shared buffer and the wgmma runs
#: synchronously; with unit input-channel stride the main loop is pipelined (three buffers per
#: operand, 128-bit async copies, a wgmma in flight). Slices of the copy are still read in place.
#: ``False`` reads the parameters as they are. Like the CPU caches, the copy is keyed on the
#: weight's version counter: after a write through ``.data`` call :func:`clear_weight_caches`.
TRITON_WEIGHT_LAYOUT = True


#: On the Triton path, convert an NCHW input to channels_last (in the same copy as an autocast
#: cast): the kernels' activation tiles then load a pixel's channels at unit stride, and the
#: output is channels_last, so a model pays the conversion once, at its first layer. With NCHW
#: inputs the channel loads are H*W apart: the profile of the model on the H200 (NCHW image and
#: parameters, ``bench/results/cuda-nvidia-h200/profile_nchw.md``, sitting 18) had the three decoder
#: convolutions at 0.73 ms of device time at w=192 fp32, the same layers channels_last 0.36 ms
#: (``bench/results/gpu/conv.md``, CUDA-graph replays). ``False`` keeps x's layout.
TRITON_CHANNELS_LAST = True


def _triton_operands(x, weight, bias, transposed: bool = False):
    """Autocast (cached full-weight cast without grad), dtype agreement, the channels_last input
    (``TRITON_CHANNELS_LAST``) and, without gradient, the weight's input-channel-contiguous copy
    (``TRITON_WEIGHT_LAYOUT``) for the Triton path."""
    dt = _autocast_dtype(x) if x.is_floating_point() else None
    x = _to_channels_last(x, TRITON_CHANNELS_LAST, dt)
    weight = _cast_full(weight, x.dtype, in_channel_dim=(0 if transposed else 1)
                        if TRITON_WEIGHT_LAYOUT else None)
    if bias is not None and bias.dtype != x.dtype:
        bias = _cast_full(bias, x.dtype)
    return x, weight, bias


def _fused_cpu_gdn_available() -> bool:
    """Whether :func:`slimkernels.ops.gdn.gdn` runs its one-pass AMX CPU kernel here."""
    return bool(cpu_kernels_available())


def _gdn_tensors(kw) -> tuple:
    """The tensors of a conv op's checked GDN ``kw`` (None: none): parameters and scalars."""
    if kw is None:
        return ()
    return tuple(v for k, v in kw.items() if isinstance(v, torch.Tensor))


def _reference_gdn(y, kw):
    """GDN/IGDN of ``y`` with a conv op's checked ``kw`` (None: ``y``) by
    :func:`slimkernels.ops.gdn_reference`, PyTorch's own ops (under torch.func)."""
    if kw is None:
        return y
    return gdn_reference(y, **{k: v for k, v in kw.items() if k != "backend"})


def _apply_gdn(y, kw):
    """GDN/IGDN of a conv output. CPU without gradient: the GDN op's one-pass kernels where one
    covers y (AMX: fp32/bf16, 2-2.5x faster than the passes below at every SlimCAE shape, e.g.
    bf16 192x128x192: 2.4 vs 4.7 ms, 48x32x48: 0.04 vs 0.09 ms, one thread; AVX512-BF16; AVX2),
    else ``_gdn_cpu_nograd``."""
    if kw is None:
        return y
    if y.is_cpu and not _needs_grad(y) and not _gdn_params_need_grad(kw) and not tracing():
        if y.dtype in (torch.float32, torch.bfloat16) and CPU_FUSED_GDN:
            scalars = tuple(kw.get(n) for n in _GDN_SCALARS)
            out = _cpu_kernel_gdn(y, kw["beta"], kw["gamma"], kw["inverse"], scalars)
            if out is not None:
                return out
            if _fused_cpu_gdn_available():   # AMX CPU, a y its kernel does not take: the op
                return _gdn(y, **kw)
        if half_without_onednn(y):   # in float32, rounded (see half_without_onednn)
            with torch.autocast("cpu", enabled=False):
                return _apply_gdn(y.float(), kw).to(y.dtype)
        return _gdn_cpu_nograd(y, kw)
    return _gdn(y, **kw)


_MAX_GEOMETRY = 1 << 24   # (a stride or padding this large: an error, see _check)


def _check(x, weight, bias, name, transposed, stride, padding):
    """Checks a conv op's arguments (ValueError naming the first problem); returns
    ``(stride, padding)`` as plain ints (numpy ints pass the checks; Triton's launcher takes
    only plain ones)."""
    refuse_jit_trace(name)
    check_tensor_args(name, x=x, weight=weight)
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{name}: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be a 4-D [N, C, H, W] tensor, got {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{name}: weight must be the full 4-D parameter, got "
                         f"{tuple(weight.shape)}")
    # (a kernel handed a weight or bias of another device would read a wrong address, or none)
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: {what} is on {t.device} but x is on {x.device}: move them "
                             f"to one device")
    for what, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and (not t.is_floating_point() or t.is_complex()):
            raise ValueError(f"{name}: {what} must be a floating-point tensor, got {t.dtype}")
    # outside autocast the operands share one dtype (else torch fails inside with "Input type
    # ... and bias type ..."); under autocast the op casts them (x may then be bf16 / fp16)
    if _autocast_dtype(x) is None and x.is_cpu and (
            weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype)):
        raise ValueError(f"{name}: x is {x.dtype} but the weight {weight.dtype}"
                         + ("" if bias is None else f" and the bias {bias.dtype}")
                         + (": autocast leaves float64 alone (as torch's conv does): cast x "
                            "and the weights to one dtype" if torch.is_autocast_enabled("cpu")
                            else ": cast x to the weight's dtype, or run under torch.autocast("
                            "'cpu', torch.bfloat16) for bf16 compute with float32 weights"))
    cin_max = weight.shape[0] if transposed else weight.shape[1]
    if x.shape[1] > cin_max:
        raise ValueError(f"{name}: x has {x.shape[1]} channels but the weight holds {cin_max} "
                         f"input channels")
    if x.shape[1] == 0:
        raise ValueError(f"{name}: x {tuple(x.shape)} has no channels: the active input width "
                         f"must be >= 1")
    cout_max = weight.shape[1] if transposed else weight.shape[0]
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != cout_max):
        raise ValueError(f"{name}: bias must be the full [{cout_max}] parameter (C_out_max), got "
                         f"{tuple(bias.shape)}")
    if not is_int(stride) or stride < 1:
        raise ValueError(f"{name}: stride must be an int >= 1, got {stride!r}")
    if not is_int(padding) or padding < 0:
        raise ValueError(f"{name}: padding must be an int >= 0, got {padding!r}")
    # (2**63 failed in a pybind TypeError, 2**40 in oneDNN's "could not construct a memory
    # descriptor": no geometry of 2**24 pixels a side or more is a real one)
    for what, v in (("stride", stride), ("padding", padding)):
        if v >= _MAX_GEOMETRY:
            raise ValueError(f"{name}: {what} {v} is beyond any image (at most "
                             f"{_MAX_GEOMETRY - 1})")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name}: x {tuple(x.shape)} has no pixels (an empty batch, N = 0, is "
                         f"fine; an empty height or width is not)")
    kh, kw = weight.shape[-2:]
    if not transposed and (x.shape[-2] + 2 * padding < kh or x.shape[-1] + 2 * padding < kw):
        raise ValueError(f"{name}: x {tuple(x.shape)} is smaller than the {kh}x{kw} kernel with "
                         f"padding {padding}")
    return int(stride), int(padding)


# -- CPU: direct AMX-BF16 conv for narrow widths (csrc/cpu/conv_amx.cpp) ---------------------------
#: No-grad bf16 channels_last convs (and stride-s transposed convs, as s*s sub-pixel phases) with
#: at most ``AMX_CONV_MAX_CHANNELS`` input and output channels and at most ``AMX_CONV_MAX_PIXELS``
#: output pixels (phase pixels for the transposed conv) run on the direct AMX kernel instead of
#: oneDNN: in SlimCAE the latent-resolution layers enc3 / dec1 at widths <= 64, where oneDNN's
#: fixed costs dominate. Under bf16 autocast an fp32 x goes to the kernel as it is (it rounds x to
#: bf16 while padding, saving the separate cast pass). Measured (1 thread, 1x3x512x768 image,
#: ``python bench/bench_conv_amx.py``: A/B in one process, best of 2 medians):
#: w=48 enc3 1.30x oneDNN, dec1 1.05-1.30x; larger layers (enc2/dec2, 6144 pixels) and w >= 96
#: are 0.8-1.0x, hence the limits (since sitting 26 up to ``AMX_CONV_SMALL_WIDE_MAX_CHANNELS`` =
#: 128 channels for the 5x5/2-like and transposed geometries, see below). Set False to always use
#: oneDNN.
#: ... and, at any size, convs and transposed convs with more than
#: ``AMX_CONV_MISALIGNED_MIN_CHANNELS`` (from sitting 23 to 25: ``AMX_CONV_MAX_CHANNELS``)
#: channels on both sides when either side is not a multiple of 32 (the AMX tile's K depth),
#: up to ``AMX_CONV_MISALIGNED_MAX_CHANNELS``: oneDNN's bf16 convs there run at the speed of the
#: next multiple of 32 or slower (kodim01's dec2 at 144 channels: 4.0 ms, as at 192), where the
#: direct kernel's time follows the channels. Twenty-third sitting, AMX Xeon, kodim01's 5x5/2
#: layers, direct / oneDNN speed of enc2 / enc3 / dec1 / dec2 (``python bench/bench_conv_amx.py
#: --threads 2 --widths 192,176,160,144,128,112,96,80,72,64,48``, and ``--threads 1``): 2 threads
#: 176 channels 1.00 / 1.12 / 1.10 / 1.02x, 144 1.11 / 1.27 / 1.32 / 1.28x, 112 1.12 / 1.62 /
#: 1.43 / 1.09x, 80 1.20 / 1.37 / 1.24 / 1.23x, 72 0.95 / 1.09 / 1.20 / 1.22x; 1 thread 1.01-1.31x
#: at 176 / 144 / 112 / 80, 0.91-1.20x at 72; at multiples of 32 oneDNN stays (direct
#: 0.73-0.99x at 192 / 160 / 128 / 96 for the large layers; the small ones mixed). End to end
#: against the code before (``python bench/ab_checkouts.py --widths 144,72 --rounds 16``,
#: default bf16): w=144 ``compress`` 1.04-1.09x / ``decompress`` 1.08-1.13x at 2 threads (two
#: runs), 1.03x / 1.16x at 1; w=72 0.99-1.02x / 1.00-1.08x; the other widths take the same
#: routes as before. Convs only with a kernel of at least ``2 * stride + 1`` and stride > 1
#: (5x5/2, the measured case): a review measured stride-1 and 3x3/2 convs at 144-200 channels
#: 0.56-0.83x by the direct kernel; transposed convs gained at 3x3/2 to 9x9/4 (1.16-1.34x).
#: ... and, at any size, the image layers at narrow widths: convs from an image (a tap row of at
#: most 32 elements, e.g. 3 channels at 9x9, the 5x5/2-like geometries above) onto at most
#: ``AMX_CONV_IMAGE_MAX_CHANNELS`` channels, and transposed convs from at most that many onto at
#: most ``AMX_CONV_IMAGE_MAX_OUT`` (the kernel's epilogue scatters the s*s sub-pixel phases: one
#: store per phase row). Twenty-fifth sitting, AMX Xeon, kodim01's enc1 (fp32 image under bf16
#: autocast) / dec3, medians of 4 x 25 interleaved against oneDNN's folded conv / sub-pixel conv
#: (``/tmp/s25/enc1_ab.py``, ``/tmp/s25/img_amx.py``): 2 threads enc1 1.20 / 1.26x at 48 / 72
#: channels, 1.23 / 1.04 / 0.90x at 96 / 144 / 192, dec3 1.23 / 1.14x, 1.15 / 1.04 / 1.06x; 1
#: thread enc1 1.32 / 1.18x, 0.86-0.93x from 96 up, dec3 1.14 / 1.07x, 0.95-1.02x from 96 up.
#: (Copying each pixel block's tap rows to 64-byte aligned rows first, so that the AMX loads do
#: not straddle cache lines (~2.4x faster loads alone), measured 0.92-1.3x of this: not kept.)
#: Twenty-sixth sitting: the misaligned rule from ``AMX_CONV_MISALIGNED_MIN_CHANNELS`` (32) up,
#: not from ``AMX_CONV_MAX_CHANNELS`` (64): the 5x5/2 layers of kodim01's w=48 (enc2 and dec2,
#: 6144 output pixels, above ``AMX_CONV_MAX_PIXELS``) ran on oneDNN. Direct / oneDNN, interleaved
#: in one process (``/tmp/s26/conv48.py``, 40 rounds): 2 threads enc2 / dec2 1.11 / 1.21x at 48
#: channels, 1.19 / 1.21x at 40, 1.10 / 1.01x at 56; 1 thread 1.05 / 1.10x at 48, 0.95 / 1.12x
#: at 40, 1.00 / 0.94x at 56; 32 and 64 (multiples of 32) equal. And the small-conv limit of the
#: 5x5/2-like geometries and transposed convs is ``AMX_CONV_SMALL_WIDE_MAX_CHANNELS`` (128), not
#: 64 (other geometries keep 64): kodim01's enc3 / dec1 at w=96 (1536 pixels; 96 is a multiple of
#: 32, so the misaligned rule did not take them), direct / oneDNN interleaved in one process
#: (``/tmp/s26/conv_small.py``): 2 threads 1.18 / 1.27x at 96 channels, 1.25 / 1.04x at 128,
#: 1.06 / 0.95x at 160, 0.81 / 0.84x at 192; 1 thread 1.01 / 1.12x at 96, 1.00 / 1.06x at 128,
#: 0.74 / 0.85x at 192.
CPU_AMX_CONV = True
AMX_CONV_MAX_CHANNELS = 64
AMX_CONV_MAX_PIXELS = 3072
AMX_CONV_SMALL_WIDE_MAX_CHANNELS = 128
AMX_CONV_MISALIGNED_MIN_CHANNELS = 32
AMX_CONV_MISALIGNED_MAX_CHANNELS = 256
AMX_CONV_IMAGE_MAX_CHANNELS = 72
AMX_CONV_IMAGE_MAX_OUT = 4
#: ... the transposed image layers (dec3) from up to this many channels since the twenty-ninth
#: sitting: the epilogue of a sub-pixel output whose phase rows hold at most 16 elements (4 x 4
#: phases x 3 channels: 12) stores one masked vector per conv pixel and phase row with the mask
#: and bias hoisted (csrc/cpu/conv_amx.cpp ``store_narrow_phases``; the generic runs had cost
#: ~18 cycles each, ~0.7 of dec3's 1.7 ms on one thread at 48 channels: now 1.21 ms, the same
#: bits). ``decompress`` of kodim01 with dec3 direct against oneDNN's sub-pixel conv
#: (``/tmp/s29/e2e_ab.py``, one process, limit switched per round): 2 threads 1.07 / 1.10 / 1.04x
#: at w = 96 / 144 / 192, 1 thread 1.04 / 1.07 / 0.99x.
AMX_CONV_IMAGE_T_MAX_CHANNELS = 256
#: The direct kernel's work groups of 4 pixel blocks (16 output pixels each, sharing every
#: weight tile): 2 = 2 output rows x 2 column blocks (neighbouring rows share most tap rows: the
#: group's input stays in L1 across the channel tiles), 1 = 4 blocks of one row. A microbenchmark
#: of the 5x5/2 48-channel loop (one thread, A tiles from the real padded layout) gave 22 against
#: 31 cycles per tile product; in the codec (``/tmp/s27/grp_ab.py``, one process, interleaved):
#: 2 threads w=48 compress / decompress 1.003-1.034x / 1.017-1.040x, w=72 1.014-1.018x /
#: 1.003-1.012x, layers 0.99-1.05x; 1 thread 0.97-1.01x (noise).
AMX_CONV_GROUP_ROWS = 2
#: The GDN / IGDN that follows a direct AMX conv (a ``gdn=`` / ``out_igdn=`` of the conv ops:
#: :class:`~slimkernels.codec.SlimSequential`'s conv + GDN pairs) runs in that kernel's epilogue
#: (csrc/cpu/conv_amx.cpp, ``epilogue_gdn``): each work group's bf16 output goes through the GDN
#: kernel's row code (``gdn_rows_bf16``) while it is in L1, instead of a write of the conv output
#: and a second pass that reads it back. The same bits as the two passes. Only onto at most
#: ``AMX_CONV_GDN_MAX_CHANNELS`` channels from at least ``AMX_CONV_GDN_MIN_INPUTS`` (first rule:
#: 48 channels; see below for 72): the GDN's
#: buffers and packed gamma share L1 with the conv's weights and input rows, and past that the
#: two passes were faster. Kodak kodim01, 2 threads, layers timed in one process with the switch
#: flipped per round (``/tmp/s28/layers_ab.py``, medians of 120, conv + GDN against the fused
#: conv): at 48 channels enc2 0.495 -> 0.460 ms, enc3 0.140 -> 0.123, dec1 0.219 -> 0.204, dec2
#: 0.755 -> 0.695, but enc1 (from 3 channels) 0.827 -> 0.874; at 72 channels enc1 1.18 -> 1.40,
#: enc2 1.00 -> 1.02, dec2 1.35 -> 1.40; at 96 (enc3, dec1) equal. And only with at least
#: ``AMX_CONV_GDN_MIN_THREADS`` threads: what the fusion saves there is mostly the GDN pass's
#: own start and join of the threads; on one thread the fused layers ran 0.97-1.0x (w=48: enc2
#: 0.872 -> 0.866 ms, enc3 0.204 -> 0.210, dec1 0.340 -> 0.373, dec2 1.294 -> 1.336). Two threads,
#: a second run: enc2 0.455 -> 0.442, enc3 0.130 -> 0.116, dec1 0.202 -> 0.186, dec2 0.652 ->
#: 0.636. End to end at w=48 (``/tmp/s28/gdn_ab.py 48 2``, switch flipped per round, medians of
#: 8 x 11), ``compress`` / ``decompress`` 1.004-1.033x / 1.014-1.058x over four runs.
#: Extended to 72 channels for convs (sitting 28, second look, ``/tmp/s28/layers_ab.py 72 2``
#: twice, kernel times): enc2 1.152 -> 1.129 / 1.106 -> 1.069 ms, enc3 0.324 -> 0.305 / 0.310 ->
#: 0.288; the transposed ones at 72 (4 x 72 = 288 phase channels: a 37 KB group buffer) lost,
#: dec1 0.423 -> 0.439 / 0.425 -> 0.434, dec2 1.572 -> 1.640 / 1.505 -> 1.613, hence at most
#: ``AMX_CONV_GDN_MAX_PHASE_CHANNELS`` (192: 48 channels x 4 phases) conv output channels.
#: (In isolation, ``python bench/bench_conv_amx.py --gdn --threads 2``, with each op's Python
#: call included, every layer gained at 48 and 72: 1.04-1.24x.) Twenty-ninth sitting: with the
#: transposed convs' padded channels and full-vector epilogue stores, 288 (the w=72 decoder
#: fused) gave ``decompress`` at w=72 1.035x / 1.024x in two runs, but the report's peak
#: ``decompress`` memory at w=72 fell to 7.3 MiB, under w=48's 7.6 (the CPU replay's arena at
#: w=48 holds dec1's and dec2's outputs while dec3 writes the fp32 image): the memory goal's
#: "falling with width" broke, so 192 stays.
#: Thirty-fifth sitting: a conv read through the window layout (enc1, see
#: ``CPU_AMX_CONV_WINDOWS``) takes its GDN whatever its channel and input counts
#: (``AMX_CONV_GDN_WINDOWS``), run band by band (csrc/cpu/conv_amx.cpp ``gdn_band``: on the
#: band's output in y once its work groups are done, still in L2, instead of in each group's
#: epilogue between the tile loops). The rule above predates the window layout (enc1 then read
#: the padded copy). Kodak kodim01, 2 threads, ``python bench/ab_switch.py AMX_CONV_GDN_WINDOWS
#: --widths 48,72,96,144,192 --rounds 40 --ops compress`` (the same bytes; an A/A run reads
#: 0.98-1.00x): 1.06 / 1.07 / 1.05 / 1.00 / 1.04x, a run before 1.00-1.04 / 1.07 / 1.04 / 1.07
#: / 1.04x. Against the per-group epilogue (a throwaway build, ``/tmp/s35/band.py``, the three
#: ways rotated per round): w=48 GDN op / epilogue / band 1.00 / 1.03-1.09 / 1.07-1.11x, w=72
#: 1.00 / 0.99 / 1.02x; one thread w=48 1.00 / 0.99 / 0.99x, hence ``AMX_CONV_GDN_MIN_THREADS``
#: still applies.
CPU_AMX_CONV_GDN = True
AMX_CONV_GDN_MAX_CHANNELS = 72
AMX_CONV_GDN_MAX_PHASE_CHANNELS = 192
AMX_CONV_GDN_MIN_INPUTS = 16
AMX_CONV_GDN_MIN_THREADS = 2
AMX_CONV_GDN_WINDOWS = True
#: The direct kernel reads a conv whose tap row fits one 32-element K chunk and whose pixel step
#: is not a multiple of 64 bytes (SlimCAE's enc1: 9x9/4 from 3 channels, 27 elements per tap
#: row, pixels 24 bytes apart) through its window layout (csrc/cpu/conv_amx.hpp,
#: ``ConvAmxArgs::windows``): each worker writes, band by band of 8 output rows, one aligned
#: 64-byte row per (input row, output column) and the tiles load 1 KB blocks, instead of a padded
#: copy whose tile rows straddle cache lines. Same output for finite inputs. Twenty-ninth
#: sitting, AMX Xeon, kodim01's enc1 (bf16 x, ``/tmp/s29/win_ab.py``, switch flipped per call,
#: medians of 80-200): 1 thread 1.18 / 1.20 / 1.23 / 1.13 / 1.18x at 48 / 72 / 96 / 144 / 192
#: channels, 2 threads 1.10 / 1.13 / 1.15 / 1.16 / 1.21x (w=48 2 threads 0.460 against 0.504 ms);
#: ``compress`` of kodim01 (``/tmp/s29/e2e_ab.py``, one process, 8 rounds, three runs)
#: 1.03-1.06x at w=48, 1.02-1.04x at 72, the same bytes. With it, image convs also take the
#: direct kernel onto wider outputs (``_amx_image_conv_channels``): enc1 direct / oneDNN (fp32
#: image under autocast, ``/tmp/s29/enc1_route.py``, 40 rounds): 2 threads 1.28 / 1.23 / 1.18x
#: at 96 / 144 / 192 (1.11-1.48x at 80-176), 1 thread 1.02 / 1.04 / 0.90x; ``compress`` (one
#: process, the limit switched per round) 2 threads 1.04 / 1.17 / 1.015x at w = 96 / 144 / 192
#: (at 144 the whole transform is then compiled kernels: the CPU replay takes it; with the
#: windows switch as the A/B, 1.03 / 1.16 / 0.99x), 1 thread 0.97 / 1.10 / 0.94x. Sitting 29 took
#: the wide counts (96, 192) only from 2 threads; since sitting 33 at any thread count
#: (``AMX_CONV_IMAGE_WIDE_MIN_THREADS`` = 1): the two kernels round bf16 differently, so the
#: route decided by the thread count made ``compress`` at w=192 write other bytes on 1 thread
#: than on 2 (the sample image, ``streams=1``). The price, one thread (``/tmp/s33/ab_wide.py``,
#: 8 interleaved rounds): ``compress`` w=96 / 192 3.9 / 2.1 % slower than on oneDNN.
CPU_AMX_CONV_WINDOWS = True
AMX_CONV_IMAGE_WIDE_MIN_THREADS = 1
#: The direct kernel's padded copy for a transposed conv (a stride-1 conv over sub-pixel
#: phases) holds each pixel's channels rounded up to a multiple of 32, zeros after
#: (``_amx_padded_channels``; ``ConvAmxArgs::Cp``) where the extra products pay (see there):
#: with C = 72 a pixel's channels are 144 bytes apart and 3 of 4 tile rows straddle two cache
#: lines. Twenty-ninth sitting (``python bench/bench_conv_amx.py --pad-channels``): dec1 / dec2
#: 1.09 / 1.22x at 72 channels, 1.13 / 1.15x at 144 (2 threads), 1.14 / 1.24x and 1.15 / 1.13x
#: (1 thread); ``decompress`` 1.01-1.03x at w=72, 1.05-1.09x at 144; onto an image (dec3) it
#: read 0.93-0.99x in situ (its larger copy leaves L2), and at 48 channels (1/3 more products
#: for half the rows) 0.98-1.01x end to end.
CPU_AMX_CONV_PAD_CHANNELS = True
AMX_CONV_PAD_CHANNELS_GAIN = 0.5
AMX_CONV_PAD_CHANNELS_MIN_OUT = 16
#: The direct kernel's work groups whose taps (and last K chunk's over-read) all lie inside a bf16
#: x read it in place (``ConvAmxArgs::in_place``; the same values, so the same output), and its
#: padded copy holds only the spans of the rows the border groups read: the copy was ~0.2 of
#: enc2 at 48 channels (2.4 MB written, then read back). Thirtieth sitting, kodim01's layer
#: shapes, 2 threads, switch flipped per call in one process (``python bench/bench_conv_amx.py
#: --in-place --threads 2``): enc2 1.12 / 1.08 / 1.10 / 1.07x at 48 / 72 / 96 / 144 channels,
#: dec3 (onto the image) 1.04-1.13x at 48-192, the small layers (enc3, dec1, dec2: mostly
#: border groups) 0.98-1.07x; ``compress`` 1.017 / 1.026 / 0.998 / 1.028 / 1.014x and
#: ``decompress`` 1.025 / 1.027 / 1.029 / 1.026 / 1.050x at w = 48 / 72 / 96 / 144 / 192
#: (``/tmp/s29/e2e_ab.py``, 8 rounds).
CPU_AMX_CONV_IN_PLACE = True
#: The direct kernel runs pairs of output channel tiles with the same K chunks together
#: (``ConvAmxArgs::pair_tiles``: 2 pixel blocks x 2 channel tiles in the C tiles, each A tile
#: loaded once for both; the same products in the same order, so the same output).
#: Forty-first sitting, kodim01, bundled model, 2 threads (``python bench/ab_switch.py
#: CPU_AMX_CONV_PAIR_TILES --widths 48,72,96,144,192 --rounds 40``): ``compress`` / ``decompress``
#: 1.00 / 1.02x at w=48, 1.07 / 1.04x at 72, 1.01 / 1.00x at 96, 1.05 / 1.01x at 144, 1.00 /
#: 1.01x at 192; 1 thread 1.01-1.07x / 1.00-1.08x (docs/performance.md).
CPU_AMX_CONV_PAIR_TILES = True


def _amx_conv_kernels():
    """``slimkernels._cpu_kernels`` when its direct AMX conv can run here, else None."""
    return cpu_kernels("amx_available")


def amx_conv_available() -> bool:
    """Whether the direct AMX conv is on (``CPU_AMX_CONV``) and can run here (its kernel built,
    AMX-BF16 usable)."""
    return CPU_AMX_CONV and _amx_conv_kernels() is not None


def _use_amx_conv(x, ci, co, pixels, wide_geometry: bool = True, image: bool = False) -> bool:
    """The direct AMX kernel takes this no-grad conv: x dense channels_last, bf16 (or fp32 that
    the kernel rounds to bf16 while padding, under bf16 autocast), and either narrow and small
    enough, or (``wide_geometry``: a transposed conv, or a conv whose kernel is at least
    ``2 * stride + 1`` with stride > 1, e.g. 5x5/2) wider with a channel count that is not a
    multiple of 32, or (``image``, the caller's rule) an image layer at a narrow width (see
    ``CPU_AMX_CONV``)."""
    if not CPU_AMX_CONV or pixels == 0 or x.numel() == 0:   # (empty: the kernel has no work)
        return False
    most = AMX_CONV_SMALL_WIDE_MAX_CHANNELS if wide_geometry else AMX_CONV_MAX_CHANNELS
    small = image or (ci <= most and co <= most and pixels <= AMX_CONV_MAX_PIXELS)
    if not small and not (wide_geometry and AMX_CONV_MISALIGNED_MIN_CHANNELS < min(ci, co) and
                          max(ci, co) <= AMX_CONV_MISALIGNED_MAX_CHANNELS and (ci % 32 or co % 32)):
        return False
    return x.is_cpu and x.is_contiguous(memory_format=torch.channels_last) and \
        _amx_conv_kernels() is not None


def _amx_direct_input(x, weight, bias) -> bool:
    """Whether x can go to the direct AMX kernel as it is (no cast, no layout change first): no
    gradient, bf16 compute (bf16 autocast on fp32/bf16 x, or bf16 x with bf16 parameters)."""
    if not CPU_PREPACK or not amx_conv_available() or x.shape[1] < 2 \
            or _needs_grad(x, weight, bias):
        return False  # (1 input channel: F.conv, as in the prepacked path)
    if x.dtype == torch.float32:
        return _autocast_dtype(x) == torch.bfloat16
    if x.dtype != torch.bfloat16:
        return False
    dt = _autocast_dtype(x)
    return dt == torch.bfloat16 or (dt is None and weight.dtype == torch.bfloat16 and
                                    (bias is None or bias.dtype == torch.bfloat16))


def _amx_windows(k: int, ci: int, stride: int) -> bool:
    """Whether the direct kernel reads a (square, ``k`` x ``k``, stride ``stride``) conv from
    ``ci`` channels through its window layout (``CPU_AMX_CONV_WINDOWS``; the rule of
    csrc/cpu/conv_amx.cpp ``conv_amx_windows`` for a plain conv: a tap row of at most 32
    elements and a pixel step that is not a multiple of 64 bytes)."""
    return CPU_AMX_CONV_WINDOWS and ci > 0 and k * ci <= 32 and (stride * ci * 2) % 64 != 0


def _amx_pack(w):
    """``[Co, Ci, kh, kw]`` -> ``(tiles, nonzero)``: bf16 VNNI tiles ``[CoP/16, kh, KC, 16, 32]``
    (K = (kx, c) of a tap row, ``KC = ceil(kw*Ci/32)``, ``CoP = round_up(Co, 16)``) and uint8
    ``[CoP/16, kh, KC]``, 0 for an all-zero tile, which the kernel skips (see
    csrc/cpu/conv_amx.hpp)."""
    co, ci, kh, kw = w.shape
    cop, kc = -(-co // 16) * 16, -(-(kw * ci) // 32)
    wp = w.new_zeros(kh, kc * 32, cop, dtype=torch.bfloat16)
    wp[:, :kw * ci, :co] = w.permute(2, 3, 1, 0).reshape(kh, kw * ci, co)
    tiles = wp.view(kh, kc, 16, 2, cop // 16, 16).permute(4, 0, 1, 2, 5, 3).contiguous()
    nonzero = tiles.flatten(3).ne(0).any(dim=3).to(torch.uint8).contiguous()
    return tiles, nonzero


def amx_epilogue_gdn_available() -> bool:
    """Whether the direct AMX conv can run a GDN in its epilogue here (``CPU_AMX_CONV``,
    ``CPU_AMX_CONV_GDN``, ``CPU_FUSED_GDN`` on; the AMX conv and GDN kernels built and usable)."""
    return CPU_AMX_CONV_GDN and CPU_FUSED_GDN and amx_conv_available() and \
        cpu_kernels_available()


def _amx_epilogue_gdn(kw, c: int, ci: int, phases: int = 1, windows: bool = False):
    """The direct AMX conv's fused-GDN arguments (see ``CPU_AMX_CONV_GDN``) for the GDN kwargs
    ``kw`` at ``c`` channels after a conv from ``ci`` (a transposed conv: ``phases`` = stride^2
    sub-pixel phases of ``c`` channels each; ``windows``: a conv the kernel reads through its
    window layout, :func:`_amx_windows`, which takes the GDN at any channel count where
    ``AMX_CONV_GDN_WINDOWS``): ``(packed gamma_k, beta, beta scale, beta bias, inverse)``; None
    when there is no GDN or the epilogue does not take it (switched off, outside the channel
    rule, no AMX GDN kernel, a gradient to record, parameters it cannot read, SlimGDN+ scalars
    that are not numbers, fewer threads than the rule's): the GDN then runs after the conv."""
    by_rule = (windows and AMX_CONV_GDN_WINDOWS) or (
        c <= AMX_CONV_GDN_MAX_CHANNELS and c * phases <= AMX_CONV_GDN_MAX_PHASE_CHANNELS and
        ci >= AMX_CONV_GDN_MIN_INPUTS)
    if kw is None or not CPU_AMX_CONV_GDN or not CPU_FUSED_GDN or not by_rule or \
            torch.get_num_threads() < AMX_CONV_GDN_MIN_THREADS or \
            not cpu_kernels_available() or _gdn_params_need_grad(kw):
        return None
    beta, gamma = kw["beta"], kw["gamma"]
    scalars = _kernel_scalars(tuple(kw.get(n) for n in _GDN_SCALARS))
    if scalars is None or not _params_readable(beta, gamma, c):
        return None
    gs, gb, bs, bb = scalars
    packed = _packed_gamma("amx", gamma, c, gs, gb, 1, True, always=True)
    return (packed, beta, 1.0 if bs is None else bs, 0.0 if bb is None else bb,
            bool(kw["inverse"]))


#: conv_amx_forward's GDN arguments (gdn_gamma .. gdn_inverse) for no GDN, its defaults: passed
#: by position before the clamped output's (a CPU replay re-issues only positional addresses).
_AMX_NO_GDN = (0, 0, 0, 1, 1.0, 0.0, False)


def _amx_conv_run(x, wpk, b, k, s, co, Ho, Wo, out_hw, phase, top, hp, wneed, gdn=None,
                  clamp=None, cp=None, check=None):
    """One call of the kernel (``wpk``: ``_amx_pack``'s pair): x (dense channels_last, bf16 or
    fp32) is padded by ``top`` rows and columns into a ``[N, hp, wp, cp]`` buffer inside the
    kernel (``wp >= wneed``, wide enough for the last K chunk's over-read; ``cp``: its channels
    per pixel, None for x's C, else a multiple of 32 above it, zeros past C, with ``wpk`` packed
    for ``cp`` input channels; the kernel reads the groups inside a bf16 x from x itself where
    ``CPU_AMX_CONV_IN_PLACE``); returns the bf16 channels_last ``[N, Cy, Hy, Wy]`` output.
    ``gdn``: :func:`_amx_epilogue_gdn`'s arguments for a GDN of the output in the epilogue, or
    None. ``clamp`` (``(lo, hi)``, without ``gdn``):
    the output as float32 clamped to ``[lo, hi]`` instead (the bf16 values widened: what
    :func:`slimkernels.ops.image_io.bf16_to_image` of the bf16 output gives). ``check``
    (``(lo, hi)``, a float32 x): every value of x compared with the bounds as the kernel reads
    it; :data:`slimkernels.ops.image_io.ImageRangeError` when one is outside or NaN."""
    N, ci, H, W = x.shape
    cs = ci if cp is None else cp
    kcw = -(-(k * cs) // 32) * 32  # K of a tap row; the last chunk may read past it
    wq = -(-Wo // 16) * 16
    wp = max(wneed, (wq - 1) * s + -(-kcw // cs))
    Hy, Wy = out_hw
    cy = co // (phase * phase)
    y = torch.empty((N, Hy, Wy, cy), dtype=torch.bfloat16 if clamp is None else torch.float32,
                    device=x.device)
    if clamp is not None:   # y at yf, after the GDN arguments (none)
        yp, extra = 0, _AMX_NO_GDN + (y.data_ptr(), clamp[0], clamp[1])
    else:
        yp = y.data_ptr()
        extra = () if gdn is None else (gdn[0].data_ptr(), gdn[1].data_ptr(),
                                        1 if gdn[1].dtype == torch.bfloat16 else 0,
                                        gdn[1].stride(0), gdn[2], gdn[3], gdn[4])
    _amx_conv_kernels().conv_amx_forward(
        x.data_ptr(), 1 if x.dtype == torch.bfloat16 else 0, N, H, W, ci, hp, wp, top, top,
        wpk[0].data_ptr(), wpk[1].data_ptr(), k, k, s, co, 0 if b is None else b.data_ptr(),
        Ho, Wo, yp, Hy, Wy, cy, phase, torch.get_num_threads(), AMX_CONV_GROUP_ROWS, *extra,
        windows=CPU_AMX_CONV_WINDOWS, Cp=0 if cp is None else cp,
        in_place=CPU_AMX_CONV_IN_PLACE, pair_tiles=CPU_AMX_CONV_PAIR_TILES,
        **({} if check is None else {"check_lo": check[0], "check_hi": check[1]}))
    return y.permute(0, 3, 1, 2)


def _conv2d_amx(x, weight, bias, co, stride, padding, gdn=None, check=None):
    """No-grad direct AMX conv (square kernel); x bf16 or fp32 (rounded to bf16 by the kernel),
    dense channels_last. Returns bf16 channels_last (``gdn``: with that epilogue GDN applied,
    ``check``: x's values range-checked, see :func:`_amx_conv_run`)."""
    N, ci, H, W = x.shape
    k, s, p = weight.shape[-1], stride, padding
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1

    def build():
        b = None if bias is None else bias[:co].detach().float().contiguous()
        return _amx_pack(weight[:co, :ci].detach()), b
    wpk, b = _cached(("amx", co, ci), (weight, bias), build)
    return _amx_conv_run(x, wpk, b, k, s, co, Ho, Wo, (Ho, Wo), 1, p, H + 2 * p, W + 2 * p, gdn,
                         check=check)


def _conv_transpose2d_amx(x, weight, bias, co, stride, padding, output_padding, gdn=None,
                          clamp=None):
    """No-grad transposed conv as ``s*s`` sub-pixel phases of one stride-1 direct AMX conv whose
    epilogue scatters each phase to its output pixels (``gdn``: after the GDN of each output
    pixel; ``clamp``: as clamped float32; see :func:`_amx_conv_run`); None when the tap plan
    needs x cropped."""
    N, ci, H, W = x.shape
    k, s, p = weight.shape[-1], stride, padding
    _, lo, _, kc = _subpixel_plan(k, s, p)
    if lo > 0:
        return None
    Ho = (H - 1) * s - 2 * p + k + output_padding
    Wo = (W - 1) * s - 2 * p + k + output_padding
    Qh, Qw = -(-Ho // s), -(-Wo // s)
    cp = _amx_padded_channels(ci, co)

    def build():
        w2, _ = _subpixel_weight(weight[:ci, :co].detach(), None, s, p)
        w2 = w2.reshape(co, s * s, ci, kc, kc).transpose(0, 1).reshape(s * s * co, ci, kc, kc)
        if cp is not None:   # zero weights for the buffer's channels past ci
            w2 = F.pad(w2, (0, 0, 0, 0, 0, cp - ci))
        b = None if bias is None else bias[:co].detach().float().repeat(s * s).contiguous()
        return _amx_pack(w2), b
    wpk, b = _cached(("amxT", co, ci, s, p, k, cp), (weight, bias), build)
    return _amx_conv_run(x, wpk, b, kc, 1, s * s * co, Qh, Qw, (Ho, Wo), s, -lo,
                         max(Qh - 1 + kc, H - lo), max(Qw - 1 + kc, W - lo), gdn, clamp, cp)


def _amx_padded_channels(ci: int, co: int):
    """The channels per pixel of the direct kernel's padded copy for a transposed conv (a
    stride-1 conv over its sub-pixel phases) from ``ci`` onto ``co`` channels: ``ci`` rounded up
    to a multiple of 32 (every A tile row on its own cache lines) where
    ``CPU_AMX_CONV_PAD_CHANNELS`` is on, ``co`` is at least ``AMX_CONV_PAD_CHANNELS_MIN_OUT``
    and the extra products (zero channels) are at most ``AMX_CONV_PAD_CHANNELS_GAIN`` times the
    share of tile rows that straddle two cache lines without it (72 channels: 1/3 more
    products, 3/4 of the rows, padded; 48: 1/3, 1/2, not; 144: 1/9, 1/2, padded); else None
    (x's own count)."""
    if not CPU_AMX_CONV_PAD_CHANNELS or ci % 32 == 0 or co < AMX_CONV_PAD_CHANNELS_MIN_OUT:
        return None
    cp = -(-ci // 32) * 32
    return cp if cp / ci - 1 <= AMX_CONV_PAD_CHANNELS_GAIN * _straddling_rows(ci) else None


@functools.lru_cache(maxsize=None)
def _straddling_rows(ci: int) -> float:
    """The share of a tile's 16 rows (64 bytes each, ``2 * ci`` bytes apart from an aligned
    start) that straddle two cache lines (cached: every eager transposed conv asks)."""
    return sum((i * 2 * ci) % 64 != 0 for i in range(16)) / 16


# -- CPU: a transposed conv with few output channels as a sub-pixel convolution ------------------
SUBPIXEL_MAX_PHASE_CHANNELS = 64   # use it when C_out * stride^2 <= this (the image output layer)


@functools.lru_cache(maxsize=32)
def subpixel_taps(k: int, s: int, p: int):
    """Per output phase ``r`` of a stride-``s`` transposed conv (kernel ``k``, padding ``p``):
    the ``(x row offset, kernel row)`` taps, i.e. output row ``q*s + r`` sums
    ``x[q + offset] * w[kernel row]``. A tuple of ``s`` tuples."""
    taps = []
    for r in range(s):
        c, d = (r + p) % s, (r + p) // s
        taps.append(tuple((d - t, c + s * t) for t in range(max(0, -(-(k - c) // s)))))
    return tuple(taps)


@functools.lru_cache(maxsize=32)
def _subpixel_plan(k: int, s: int, p: int):
    """Tap map of a stride-``s`` transposed conv (kernel ``k``, padding ``p``) as a stride-1 conv
    with ``s*s`` output phases: ``idx[ry, rx, jy, jx]`` is the flat tap ``ky*k + kx`` (``k*k``:
    no tap), and x rows ``q + lo .. q + hi`` feed output row ``q*s + r``."""
    taps = subpixel_taps(k, s, p)
    offs = [o for t in taps for o, _ in t]
    lo, hi = min(offs), max(offs)
    kc = hi - lo + 1
    # (a normal tensor even when first asked for under torch.inference_mode() (an inference
    # tensor kept here made every later training step of the layer fail, "Inference tensors
    # cannot be saved for backward"), and a real one under torch.export's FakeTensorMode (a
    # FakeTensor kept here made every later CPU decompress in the process fail, "Cannot access
    # data pointer of Tensor"))
    idx = np.full((s, s, kc, kc), k * k, dtype=np.int64)
    for ry in range(s):
        for oy, ky in taps[ry]:
            for rx in range(s):
                for ox, kx in taps[rx]:
                    idx[ry, rx, oy - lo, ox - lo] = ky * k + kx
    with real_tensors():
        return torch.from_numpy(idx.reshape(-1)), lo, hi, kc


def _use_subpixel(kh: int, k: int, co: int, stride: int) -> bool:
    """Whether a transposed conv with a ``kh x k`` kernel onto ``co`` channels runs as a
    sub-pixel conv (square kernels only: ``_subpixel_weight``)."""
    return stride > 1 and kh == k > stride and co * stride * stride <= SUBPIXEL_MAX_PHASE_CHANNELS


def _subpixel_weight(w, b, s, p):
    """``[C_in, C_out, k, k]`` -> the ``[C_out*s*s, C_in, kc, kc]`` phase weight, (co, ry, rx)
    order, and the bias repeated per phase. Run eagerly under torch.compile: inductor's CPU
    code for the gather's backward (an accumulating index_put over 36 phase taps, vectorized by
    16 with a transposed tail) corrupted memory, "double free or corruption" (torch 2.13)."""
    if torch.compiler.is_dynamo_compiling():   # (imports nothing; disable() imports dynamo)
        return _subpixel_weight_eager()(w, b, s, p)
    return _subpixel_weight_impl(w, b, s, p)


@functools.lru_cache(maxsize=None)
def _subpixel_weight_eager():
    """:func:`_subpixel_weight_impl` behind ``torch.compiler.disable`` (a graph break), made at
    the first compiled call: decorating it at import pulled in torch._dynamo, ~0.9 s more for
    every ``import slimkernels``."""
    return torch.compiler.disable(_subpixel_weight_impl)


def _subpixel_weight_impl(w, b, s, p):
    Ci, Co, k, _ = w.shape
    idx, lo, hi, kc = _subpixel_plan(k, s, p)
    with no_autocast(w.device.type):   # (moves values only; CPU autocast's cat refused fp16:
        # "Unexpected floating ScalarType in at::autocast::prioritize")
        wf = torch.cat([w.reshape(Ci, Co, k * k), w.new_zeros(Ci, Co, 1)], dim=2)
    w2 = wf[:, :, idx].reshape(Ci, Co, s, s, kc, kc)
    w2 = w2.permute(1, 2, 3, 0, 4, 5).reshape(Co * s * s, Ci, kc, kc)
    return w2, None if b is None else b.repeat_interleave(s * s)


def _subpixel_input(x, k, s, p, output_padding):
    """x padded for the phase conv: returns (x or padded x, symmetric conv padding, Ho, Wo, Qh,
    Qw). When the bottom/right pads do not exceed the top/left one (SlimCAE's 9x9/4 layer) the
    conv pads symmetrically and the extra rows are cropped: no copy of x."""
    _, _, H, W = x.shape
    _, lo, hi, _ = _subpixel_plan(k, s, p)
    Ho = (H - 1) * s - 2 * p + k + output_padding
    Wo = (W - 1) * s - 2 * p + k + output_padding
    Qh, Qw = -(-Ho // s), -(-Wo // s)
    top = max(-lo, 0)
    pad_b = max(0, (Qh - 1) + hi - (H - 1))
    pad_r = max(0, (Qw - 1) + hi - (W - 1))
    if lo <= 0 and pad_b <= top and pad_r <= top:
        return x, top, Ho, Wo, Qh, Qw
    xp = F.pad(x, (top, pad_r, top, pad_b))
    if lo > 0:
        xp = xp[:, :, lo:, lo:]
    return xp, 0, Ho, Wo, Qh, Qw


def conv_transpose2d_subpixel(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                              stride: int, padding: int, output_padding: int) -> torch.Tensor:
    """``F.conv_transpose2d`` computed as one stride-1 ``conv2d`` to ``C_out * stride^2`` phase
    channels followed by ``pixel_shuffle`` (exact up to float rounding; differentiable).

    On CPU this is 2.5x faster in fp32 (1.1-1.4x in bf16) for SlimCAE's 9x9/4 output layer
    (C_out = 3), and slower for wide outputs (see ``SUBPIXEL_MAX_PHASE_CHANNELS``).

    Args:
        x: ``[N, C_in, H, W]``; w: ``[C_in, C_out, k, k]`` (the active slice); b: ``[C_out]``.
    Returns:
        ``[N, C_out, (H-1)*s - 2p + k + op, (W-1)*s - 2p + k + op]``.
    """
    s, k = stride, w.shape[-1]
    w2, bb = _subpixel_weight(w, b, s, padding)
    xp, pc, Ho, Wo, Qh, Qw = _subpixel_input(x, k, s, padding, output_padding)
    y = F.conv2d(xp, w2, bb, padding=pc)[:, :, :Qh, :Qw]
    return F.pixel_shuffle(y, s)[:, :, :Ho, :Wo]


def _subpixel_prepacked(x, weight, bias, co, stride, padding, output_padding):
    """The sub-pixel transposed conv without gradient, on the cached prepacked phase weight.

    Its phase channels are ordered (ry, rx, co), so that the shuffle into the channels_last
    output is one copy with runs of ``s * co`` contiguous elements (``F.pixel_shuffle`` on the
    (co, ry, rx) order takes 1.75 ms for SlimCAE's bf16 output layer against 0.32 ms)."""
    ci, k, dt, s = x.shape[1], weight.shape[-1], x.dtype, stride
    xp, pc, Ho, Wo, Qh, Qw = _subpixel_input(x, k, s, padding, output_padding)
    if not xp.is_contiguous(memory_format=torch.channels_last):
        xp = xp.contiguous(memory_format=torch.channels_last)

    def build():
        w2, _ = _subpixel_weight(weight[:ci, :co].detach().to(dt), None, s, padding)
        kc = w2.shape[-1]
        w2 = w2.reshape(co, s * s, ci, kc, kc).transpose(0, 1).reshape(s * s * co, ci, kc, kc)
        w2 = torch.ops.mkldnn._reorder_convolution_weight(w2.contiguous(), [pc, pc], [1, 1],
                                                          [1, 1], 1, list(xp.shape))
        return w2, None if bias is None else bias[:co].detach().to(dt).repeat(s * s)
    wp, bp = _cached(("subpixel", co, ci, dt, s, padding, k, pc, tuple(xp.shape)),
                     (weight, bias), build, shaped=True)
    y = torch.ops.mkldnn._convolution_pointwise(xp, wp, bp, [pc, pc], [1, 1], [1, 1], 1, "none",
                                                [], "")
    N = y.shape[0]
    yv = y.permute(0, 2, 3, 1)[:, :Qh, :Qw].view(N, Qh, Qw, s, s * co)
    out = torch.empty((N, Qh, s, Qw, s * co), dtype=y.dtype, device=y.device)
    run = s * co * y.element_size()   # bytes of one phase row's contiguous run
    if run % 8 == 0 and y.storage_offset() == 0 and yv.stride(-1) == 1:
        # move the runs as 8-byte words (bf16 output layer: 24-byte runs; the copy 133 -> 88 us
        # alone, kodim01's dec3 on the AMX Xeon 1.02-1.10x at w=192..48, ``decompress``
        # 1.00-1.03x: ``python bench/ab_checkouts.py --widths 192,96,48 --rounds 12``)
        out.view(torch.int64).copy_(yv.view(torch.int64).transpose(2, 3))
    else:
        out.copy_(yv.transpose(2, 3))
    return out.view(N, Qh * s, Qw * s, co)[:, :Ho, :Wo].permute(0, 3, 1, 2)


def _triton_takes_dtype(x: torch.Tensor) -> bool:
    """Whether the Triton conv kernels run ``x`` (the backend resolved to Triton): every dtype
    but float64 on a GPU. There a float64 ``tl.dot`` compiles to a kernel of 255 registers and
    ~300 local-memory (spill) instructions (sm_90, triton 3.6; never run on a GPU), so float64
    CUDA convs go to PyTorch's own (cuDNN, :func:`_float64_conv`), as the GDN op sends float64
    to PyTorch on every device. Under ``TRITON_INTERPRET=1`` (CPU tensors) float64 stays on the
    kernels: the exact references of the interpreter tests."""
    return x.dtype != torch.float64 or x.is_cpu


def _float64_conv(x, weight, bias, co, stride, padding, output_padding=0, transposed=False):
    """:func:`_plain_conv` for a float64 x that the Triton backend does not take
    (:func:`_triton_takes_dtype`), with the weight and bias cast to float64 as the Triton path
    casts them to x's dtype (cached without gradient: :func:`_cast_full`)."""
    return _plain_conv(x, _cast_full(weight, x.dtype), _cast_full(bias, x.dtype), co, stride,
                       padding, output_padding, transposed)


def _plain_conv(x, weight, bias, co, stride, padding, output_padding=0, transposed=False):
    """The torch backend on a device other than the CPU (CUDA under ``backend="torch"``, MPS,
    XPU, meta; float64 CUDA tensors under either backend, :func:`_float64_conv`):
    PyTorch's own convolution of the active slice (views of ``weight`` and
    ``bias``), under that device's autocast; the output in the layout PyTorch gives it (the
    CPU kernels, oneDNN prepacking and Winograd are for CPU tensors only)."""
    ci = x.shape[1]
    b = None if bias is None else bias[:co]
    if transposed:
        return F.conv_transpose2d(x, weight[:ci, :co], b, stride=stride, padding=padding,
                                  output_padding=output_padding)
    return F.conv2d(x, weight[:co, :ci], b, stride=stride, padding=padding)


def _conv_transpose2d_cpu(x, w, b, stride, padding, output_padding):
    # (an empty batch: F.conv_transpose2d, whose backward gives zero gradients; pixel_shuffle's
    # backward refused N = 0, "returned an invalid gradient"). Under torch.compile PyTorch's own
    # transposed conv: the sub-pixel weight's gather runs eagerly there (_subpixel_weight), a
    # graph break that fullgraph=True refuses.
    if x.shape[0] > 0 and _use_subpixel(w.shape[-2], w.shape[-1], w.shape[1], stride) and \
            not torch.compiler.is_dynamo_compiling():
        return conv_transpose2d_subpixel(x, w, b, stride, padding, output_padding)
    return F.conv_transpose2d(x, w, b, stride=stride, padding=padding,
                              output_padding=output_padding)


def _out_width(out_width, co_max, name):
    if out_width is None:
        return co_max
    try:   # (an int, a numpy int or a 0-dim integer tensor, as the layers take widths)
        co = as_width(out_width, name)
    except ValueError:
        raise ValueError(f"{name}: out_width must be an int, got {out_width!r}") from None
    if not 1 <= co <= co_max:
        raise ValueError(f"{name}: out_width={out_width} must be in [1, {co_max}] (the weight's "
                         f"output channels)")
    return co


def _check_clamp(out_clamp, name):
    """``out_clamp`` as a pair of floats (None stays None); ValueError naming what is wrong."""
    if out_clamp is None:
        return None
    try:
        lo, hi = (float(v) for v in out_clamp)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: out_clamp must be a (lo, hi) pair of numbers, got "
                         f"{out_clamp!r}") from None
    return image_io.clamp_bounds(lo, hi, f"{name}: out_clamp")


def _clamp_out(y, clamp):
    """``y`` (``clamp`` None) or ``y.float().clamp(lo, hi)``: one pass of the image kernel for a
    bf16 ``y`` (:func:`slimkernels.ops.image_io.bf16_to_image`, whose reference path keeps
    autograd)."""
    if clamp is None:
        return y
    if y.dtype == torch.bfloat16:
        return image_io.bf16_to_image(y, *clamp)
    return y.float().clamp(*clamp)


# ---------------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------------
def _one_column_out(x, weight, stride, padding) -> bool:
    """Whether a strided CPU conv in bf16 / fp16 (x's dtype or autocast's) has an output one
    column wide and more than one row tall: torch's oneDNN bf16 conv returns garbage for it
    (torch 2.13 on an AMX Xeon: NaN, 1e18 or O(1) relative error that changes from run to run;
    fp32, stride 1 and the transposed image are right), where an image 16 pixels wide puts
    SlimCAE's enc3 (5x5/2). :func:`slim_conv2d` then runs the conv on the transposed image with
    the transposed kernel (one row out, many columns) and transposes the result back."""
    w_out = (x.shape[3] + 2 * padding - weight.shape[3]) // stride + 1
    h_out = (x.shape[2] + 2 * padding - weight.shape[2]) // stride + 1
    if w_out != 1 or h_out < 2:
        return False
    return _half_compute_dtype(x) is not None


def _onednn_bf16_wrong_forward(ci: int, k: int, stride: int, padding: int) -> bool:
    """Whether torch's oneDNN bf16 conv (CPU) computes a conv of ``ci`` input channels, kernel
    width ``k``, ``stride`` and ``padding`` wrong at some input sizes (torch 2.13 on an AMX
    Xeon: O(1) relative error, the same on every run; fp32 is right):

    * fewer than 16 input channels whose ``C_in * k`` is a multiple of 32 and at least 64
      ((8, 8), (12, 8), (8, 12), (4, 16) ... (14, 16)), at any stride, padding and layout;
    * 16 to 31 input channels, ``k`` a multiple of 4, stride 4 or 8 and no padding (16 and 24
      channels at stride 4 and 8, 20 and 28 at stride 8, at some input sizes: e.g. 24x20, 32x32);
      taken here for every stride that is a multiple of 4 and fewer than 32 channels.

    From scans of ``F.conv2d`` on bf16 tensors against float64 (``/tmp/s33/scan_onednn2.py``:
    C_in 1..24, k 1..17, 3264 convs; ``/tmp/s48/scan.py``: C_in 1..33 and 48..192, C_out 1..64,
    k 1..12, strides 1..4, paddings 0 and k // 2, 8 input sizes, forward and both gradients,
    ~146,000 convs; C_in 8..64 at strides 2..8 on 30 sizes). Not on that list (no failure found):
    32 or more input channels, odd kernels (SlimCAE's 5x5 and 9x9), strides 2 and 3 outside the
    first rule."""
    kfold = ci < 16 and ci * k >= 64 and (ci * k) % 32 == 0
    strided = ci < 32 and stride % 4 == 0 and k % 4 == 0 and padding == 0
    return kfold or strided


def _onednn_bf16_wrong(x, weight, co: int, stride: int, padding: int, transposed: bool,
                       grad: bool) -> bool:
    """Whether a CPU conv in bf16 / fp16 (x's dtype or autocast's) would get a wrong result or
    gradient from torch's oneDNN bf16 kernels (:func:`_onednn_bf16_wrong_forward`, same scans):

    * a conv: its forward meets the rules there; with a gradient recorded, also an input one
      column wide (the weight gradient: NaN, 1e35 or O(1) error; rows are right);
    * a transposed conv (its forward is right): with a gradient recorded, x's gradient is a conv
      of the output's gradient onto x (``C_out`` input channels, the same kernel, stride and
      padding) and meets the same rules, and an input one column wide gets wrong x and weight
      gradients (SlimCAE's decoder at a 2x1 latent: x's gradient 1-2 off, once all NaN).

    (A strided conv with one output column goes on the transposed image first:
    :func:`_one_column_out`.) :func:`slim_conv2d` and :func:`slim_conv_transpose2d` run those
    (where the direct AMX kernel does not take them) in float32 and round the result. fp16 is
    routed the same way, conservatively (oneDNN's fp16 convs were right on 600 of the shapes
    found wrong in bf16, the only ones checked); torch 2.11's oneDNN (the GPU machine's stack)
    passes the ops' scan too.

    On a CPU where torch's oneDNN does not take the half dtype (:func:`_onednn_half`: no
    AVX-512, e.g. a Zen 3 EPYC with AVX2 only), every such conv is run in float32 and rounded:
    torch's fallback there (``aten::_slow_conv2d_forward``, ``slow_conv_transpose2d``) erred
    1.6e-2 relative (max over max) on a 16 -> 8 8x8 transposed conv where float32-and-round errs
    2.8e-3, and took 195 ms for the three convs of a bf16 ``compress`` at w=48 that float32
    computes in a few ms."""
    dt = _half_compute_dtype(x)
    if dt is None:
        return False
    if not _onednn_half(dt):
        return True
    k = weight.shape[3]
    thin = grad and x.shape[3] == 1
    if transposed:
        return thin or (grad and _onednn_bf16_wrong_forward(co, k, stride, padding))
    return thin or _onednn_bf16_wrong_forward(x.shape[1], k, stride, padding)


def _fp32_rounded(x, conv):
    """``conv(x in float32)`` with autocast off, returned in the dtype the conv would have had
    in half precision (x's bf16 / fp16, or autocast's); differentiable."""
    dt = _half_compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        y = conv(_cpu_layout(x).float())
    return y.to(dt)


def _float32_weights(weight, bias) -> bool:
    # (autocast over float32 parameters: the float32 op below reads them, and its weight caches)
    return weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)


def _conv2d_fp32_rounded(x, weight, bias, co, stride, padding):
    """:func:`slim_conv2d`'s conv (the active slice) computed in float32 (see
    :func:`_fp32_rounded`): by :func:`slim_conv2d` itself on float32 weights (autocast: its
    float32 CPU kernels and cached weights), else by ``F.conv2d`` on float32 copies."""
    if _float32_weights(weight, bias):
        return _fp32_rounded(x, lambda xf: slim_conv2d(xf, weight, bias, stride=stride,
                                                       padding=padding, out_width=co,
                                                       backend="torch"))
    b = None if bias is None else bias[:co].float()
    w = weight[:co, :x.shape[1]].float()
    return _fp32_rounded(x, lambda xf: F.conv2d(xf, w, b, stride=stride, padding=padding))


def _conv_transpose2d_fp32_rounded(x, weight, bias, co, stride, padding, output_padding):
    """:func:`slim_conv_transpose2d`'s conv (the active slice) computed in float32 (see
    :func:`_conv2d_fp32_rounded`)."""
    if _float32_weights(weight, bias):
        return _fp32_rounded(x, lambda xf: slim_conv_transpose2d(
            xf, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
            out_width=co, backend="torch"))
    b = None if bias is None else bias[:co].float()
    w = weight[:x.shape[1], :co].float()
    return _fp32_rounded(x, lambda xf: F.conv_transpose2d(
        xf, w, b, stride=stride, padding=padding, output_padding=output_padding))


def slim_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                stride: int = 1, padding: int = 0, out_width: Optional[int] = None, gdn=None,
                backend: Optional[str] = None) -> torch.Tensor:
    """Convolution with the active slice ``weight[:out_width, :x.shape[1]]`` of the full weight.

    Args:
        x: ``[N, C_in, H, W]`` with ``C_in <= C_in_max``; NCHW or channels_last; fp32/fp16/bf16.
        weight: full ``[C_out_max, C_in_max, k, k]`` parameter (read in place, never copied).
        bias: full ``[C_out_max]`` or None.
        stride, padding: ints (square).
        out_width: active output channels (default ``C_out_max``).
        gdn: optional ``(beta, gamma)`` or dict of :func:`slimkernels.ops.gdn` arguments (full
            effective parameters; SlimGDN+ scalars allowed) applied to the output. Fused into the
            Triton conv epilogue when no gradient is recorded and ``out_width <= 128`` (any dtype)
            or ``<= 256`` (bf16/fp16); otherwise the conv kernel then the GDN op.
        backend: ``"triton"`` / ``"torch"`` / None (see :mod:`slimkernels.backend`).

    Returns:
        ``[N, out_width, H_out, W_out]``; channels_last (see ``CPU_CHANNELS_LAST`` and
        ``TRITON_CHANNELS_LAST``; the torch backend on another device than the CPU, e.g. CUDA
        with ``backend="torch"``, MPS or meta, runs ``F.conv2d`` on the slice and keeps its
        layout, as float64 CUDA tensors do under either backend); bf16 under bf16 autocast.

    Gradients flow to x, the active slice of ``weight`` (the rest of its gradient is zero),
    ``bias`` and the GDN parameters.

    Raises:
        TypeError: ``x``, ``weight``, ``bias`` (or a GDN's ``beta`` / ``gamma``) is not a
            ``torch.Tensor`` (e.g. a numpy array).
        ValueError: ``out_width`` not an int in ``1 .. C_out_max``, more input channels than
            the weight has (or none), a bias / GDN parameter shorter than the width, tensors
            that are not floating-point, x / weight / bias of different dtypes outside autocast
            (CPU), bad stride / padding, or an unknown ``backend`` name.
        RuntimeError: ``backend="triton"`` where it cannot run these tensors: CPU tensors
            without ``TRITON_INTERPRET=1``, or Triton not installed (the message says which;
            :func:`slimkernels.backend.resolve_backend`).
    """
    stride, padding = _check(x, weight, bias, "slim_conv2d", False, stride, padding)
    co = _out_width(out_width, weight.shape[0], "slim_conv2d")
    name = resolve_backend(x, backend)
    kw = _gdn_kwargs(gdn, False, name, x.device, co, "slim_conv2d(gdn=...)")
    if functorch_transform(x, weight, bias, *_gdn_tensors(kw)):   # (torch.func, forward AD:
        # PyTorch's own ops, which they see through)
        return _reference_gdn(_plain_conv(x, weight, bias, co, stride, padding), kw)
    if name == "triton" and not _triton_takes_dtype(x):
        return _apply_gdn(_float64_conv(x, weight, bias, co, stride, padding), kw)
    if name == "triton":
        from ..kernels import conv as K
        x, weight, bias = _triton_operands(x, weight, bias)
        grad = _needs_grad(x, weight, bias) or _gdn_params_need_grad(kw)
        if kw is not None and not grad and K.fused_gdn_supported(co, x.dtype):
            return K.conv2d_fwd(x, weight, bias, stride=stride, padding=padding, out_width=co,
                                gdn=_effective(kw, co))
        y = K.SlimConv2dFunction.apply(x, weight, bias, stride, padding, co)
        return y if kw is None else _gdn(y, **kw)
    if not x.is_cpu:
        return _apply_gdn(_plain_conv(x, weight, bias, co, stride, padding), kw)
    if stride > 1 and _one_column_out(x, weight, stride, padding):
        # the same conv on the transposed image (the transposed kernel): see _one_column_out
        # (a view of the same data: the call below takes compress's image check, if any)
        y = slim_conv2d(x.transpose(2, 3), weight.transpose(2, 3), bias, stride=stride,
                        padding=padding, out_width=co, gdn=kw, backend="torch")
        return y.transpose(2, 3)
    # the image of compress, whose values this conv checks (image_io.checked_by_first_conv)
    check = image_io.take_first_conv_check(x)
    if _amx_direct_input(x, weight, bias):
        y = _conv2d_amx_if_eligible(x, weight, bias, co, stride, padding, kw, check)
        if y is not None:
            return y
    if check is not None:   # (another path: measured first)
        image_io.check_values(x, *check)
    if _onednn_bf16_wrong(x, weight, co, stride, padding, False, _needs_grad(x, weight, bias)):
        return _apply_gdn(_conv2d_fp32_rounded(x, weight, bias, co, stride, padding), kw)
    xp = _prepack_input(x, weight, bias)
    if xp is not None:
        return _apply_gdn(_conv2d_prepacked(xp, weight, bias, co, stride, padding), kw)
    ci = x.shape[1]
    x, w, b, cast = _cpu_operands(x, weight, bias, (slice(0, co), slice(0, ci)), co)
    if cast:
        with torch.autocast(x.device.type, enabled=False):
            y = F.conv2d(x, w, b, stride=stride, padding=padding)
    elif x.dtype == torch.float32 and _use_winograd_grad(x, w, b, stride, padding, False):
        from .winograd import WinogradConv2dFunction
        y = WinogradConv2dFunction.apply(x, w, b, stride, padding)
    else:
        y = F.conv2d(x, w, b, stride=stride, padding=padding)
    return _apply_gdn(y, kw)


def slim_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                          *, stride: int = 1, padding: int = 0, output_padding: int = 0,
                          out_width: Optional[int] = None, igdn=None,
                          backend: Optional[str] = None, out_igdn=None,
                          out_clamp=None) -> torch.Tensor:
    """Transposed convolution with the active slice ``weight[:x.shape[1], :out_width]``.

    Args:
        x: ``[N, C_in, H, W]``; NCHW or channels_last; fp32/fp16/bf16.
        weight: full ``[C_in_max, C_out_max, k, k]`` (read in place); bias: full ``[C_out_max]``.
        stride, padding, output_padding: ints (square), as in ``F.conv_transpose2d``.
        out_width: active output channels (default ``C_out_max``).
        igdn: optional ``(beta, gamma)`` or dict; IGDN is applied to ``x`` BEFORE the convolution
            (the decoder's order). It runs as its own op (fusing it into this kernel's loads would
            recompute it for every tap: KxK times the IGDN work).
        out_igdn: optional ``(beta, gamma)`` or dict; IGDN applied to the OUTPUT, fused into the
            Triton epilogue when no gradient is recorded. A decoder that passes the NEXT layer's
            IGDN here (and ``igdn=None`` there) gets the fusion for two of its three IGDNs.
        backend: ``"triton"`` / ``"torch"`` / None.
        out_clamp: optional ``(lo, hi)`` (finite floats, ``lo <= hi``): the output as float32
            clamped to ``[lo, hi]`` (NaN kept), e.g. a decoder's last layer giving the image in
            [0, 1]: ``y.float().clamp(lo, hi)`` of the output otherwise returned (after
            ``out_igdn``). Without gradient, on the direct AMX CPU kernel, written by its
            epilogue (no bf16 output and second pass).

    Returns:
        ``[N, out_width, (H-1)*stride - 2*padding + k + output_padding, ...]``; channels_last
        (``CPU_CHANNELS_LAST``, ``TRITON_CHANNELS_LAST``; the torch backend on another device
        than the CPU runs ``F.conv_transpose2d`` on the slice, as :func:`slim_conv2d`); bf16
        under bf16 autocast (float32 with ``out_clamp``). A NaN / inf in ``x`` can reach CPU
        outputs beyond its footprint (zero-padded taps, Winograd tiles: docs/kernels_conv.md).

    Raises:
        TypeError, ValueError, RuntimeError: as :func:`slim_conv2d` (``out_width``, channels,
            parameters, geometry, backend), a bad ``output_padding`` or ``out_clamp``.
    """
    clamp = _check_clamp(out_clamp, "slim_conv_transpose2d")
    stride, padding = _check(x, weight, bias, "slim_conv_transpose2d", True, stride, padding)
    co = _out_width(out_width, weight.shape[1], "slim_conv_transpose2d")
    if not is_int(output_padding) or output_padding < 0 or output_padding >= stride:
        raise ValueError(f"slim_conv_transpose2d: output_padding={output_padding!r} must be an "
                         f"int in [0, stride={stride})")
    output_padding = int(output_padding)
    kh, kw = weight.shape[-2:]
    ho, wo = ((n - 1) * stride - 2 * padding + k + output_padding
              for n, k in zip(x.shape[-2:], (kh, kw)))
    if ho < 1 or wo < 1:
        raise ValueError(f"slim_conv_transpose2d: x {tuple(x.shape)} with the {kh}x{kw} kernel, "
                         f"stride {stride}, padding {padding} and output_padding "
                         f"{output_padding} gives an empty {ho}x{wo} output: lower the padding")
    name = resolve_backend(x, backend)
    kin = _gdn_kwargs(igdn, True, name, x.device, x.shape[1], "slim_conv_transpose2d(igdn=...)")
    kout = _gdn_kwargs(out_igdn, True, name, x.device, co,
                       "slim_conv_transpose2d(out_igdn=...)")
    if functorch_transform(x, weight, bias, *_gdn_tensors(kin), *_gdn_tensors(kout)):
        # (torch.func, forward AD: PyTorch's own ops, which they see through)
        y = _plain_conv(_reference_gdn(x, kin), weight, bias, co, stride, padding,
                        output_padding, transposed=True)
        y = _reference_gdn(y, kout)
        return y if clamp is None else y.float().clamp(*clamp)
    if kin is not None:
        if name == "torch" and x.is_cpu and not _gdn_params_need_grad(kin):
            # cast + channels_last first (no grad): the IGDN then runs the prepacked bf16 passes
            xp = _prepack_input(x, weight, bias, transposed=True)
            x = x if xp is None else xp
        x = _apply_gdn(x, kin) if name == "torch" else _gdn(x, **kin)
    if name == "triton" and not _triton_takes_dtype(x):
        y = _float64_conv(x, weight, bias, co, stride, padding, output_padding, transposed=True)
        return _clamp_out(_apply_gdn(y, kout), clamp)
    if name == "triton":
        from ..kernels import conv as K
        x, weight, bias = _triton_operands(x, weight, bias, transposed=True)
        grad = _needs_grad(x, weight, bias) or _gdn_params_need_grad(kout)
        if kout is not None and not grad and K.fused_gdn_supported(co, x.dtype):
            return _clamp_out(K.conv_transpose2d_fwd(x, weight, bias, stride=stride,
                                                     padding=padding,
                                                     output_padding=output_padding, out_width=co,
                                                     gdn=_effective(kout, co), inverse=True),
                              clamp)
        y = K.SlimConvTranspose2dFunction.apply(x, weight, bias, stride, padding, output_padding,
                                                co)
        return _clamp_out(y if kout is None else _gdn(y, **kout), clamp)
    if not x.is_cpu:
        y = _plain_conv(x, weight, bias, co, stride, padding, output_padding, transposed=True)
        return _clamp_out(_apply_gdn(y, kout), clamp)
    if _amx_direct_input(x, weight, bias):
        y = _conv_transpose2d_amx_if_eligible(x, weight, bias, co, stride, padding,
                                              output_padding, kout, clamp)
        if y is not None:
            return y
    if _onednn_bf16_wrong(x, weight, co, stride, padding, True, _needs_grad(x, weight, bias)):
        y = _conv_transpose2d_fp32_rounded(x, weight, bias, co, stride, padding, output_padding)
        return _clamp_out(_apply_gdn(y, kout), clamp)
    xp = _prepack_input(x, weight, bias, transposed=True)
    if xp is not None:
        y = _conv_transpose2d_prepacked(xp, weight, bias, co, stride, padding, output_padding)
        return _clamp_out(_apply_gdn(y, kout), clamp)
    ci = x.shape[1]
    x, w, b, cast = _cpu_operands(x, weight, bias, (slice(0, ci), slice(0, co)), co)
    if cast:
        with torch.autocast(x.device.type, enabled=False):
            y = _conv_transpose2d_cpu(x, w, b, stride, padding, output_padding)
    elif x.dtype == torch.float32 and _use_winograd_grad(x, w, b, stride, padding, True):
        from .winograd import WinogradConvTranspose2dFunction
        y = WinogradConvTranspose2dFunction.apply(x, w, b, stride, padding, output_padding)
    else:
        y = _conv_transpose2d_cpu(x, w, b, stride, padding, output_padding)
    return _clamp_out(_apply_gdn(y, kout), clamp)
