"""End-to-end measurements: SlimCAE ``compress`` / ``decompress`` at every width, side by side.

In ONE run, interleaved (round-robin, medians), on one image:

* ours: :meth:`SlimCAE.compress` / :meth:`SlimCAE.decompress`, ``precision="fp32"`` and ``"bf16"``
  (the default ``"auto"`` is one of them: :func:`default_precision`), and the same pipeline step
  by step to split the time into transform / entropy coding / container (the split's bytes are
  checked equal to the API's);
* plain: the same SlimCAE in plain PyTorch (:mod:`bench.plain_slimcae`: ``F.conv2d`` on sliced
  weights, eager GDN, NCHW), loading the same state_dict, in fp32 (the issue's baseline: what a
  user would write) and under bf16 autocast (what a user would write knowing autocast); its
  latent is rounded, coded and packed exactly like ours, so the ratio isolates the transforms;
* CompressAI ``bmshj2018-factorized`` quality 6 (N=192, M=320, random weights: the same
  transform cost, while its coder codes a larger payload than a trained model's would, so its
  coding time is over-counted), its own ``compress`` / ``decompress`` (``compressai.ans`` rANS).

Peak memory: a fresh subprocess per implementation (glibc told to return every block >= 64 KiB
to the OS on free, so RSS follows the live tensors) runs each operation once (warm-up), resets
the kernel's RSS high-water mark (``/proc/self/clear_refs``), runs it again and reports
``VmHWM - VmRSS_before`` (falls back to ``ru_maxrss`` deltas where clear_refs is unavailable).

Library only; :mod:`bench.report` runs it and writes the files. Every speed number is a median
of interleaved repeats, and every comparison is a ratio inside the same run.
"""
from __future__ import annotations

import functools
import glob
import importlib.machinery
import importlib.util
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import time
import types
from typing import Callable, Dict, List, Optional, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from plain_slimcae import PlainSlimCAE  # noqa: E402
from slimkernels import coding, container  # noqa: E402
from slimkernels.models import SlimCAE  # noqa: E402

WIDTHS = (192, 144, 96, 72, 48)
KODAK = os.environ.get("SLIMKERNELS_KODAK", "/work/shared/data/kodak")
DEFAULT_IMAGE = "kodim01.png"
QUICK_HW = (64, 96)  # --quick: a tiny crop
PRECISIONS = ("fp32", "bf16")


def default_precision(device="cpu") -> str:
    """What ``compress`` / ``decompress`` run by default (``precision="auto"``) on ``device``:
    ``"bf16"`` or ``"fp32"`` (``"fp32"`` for a library without the ``auto`` default)."""
    try:
        from slimkernels.codec import resolve_precision
    except ImportError:  # pragma: no cover - an older slimkernels
        return "fp32"
    return resolve_precision("auto", device)


# --------------------------------------------------------------------------------- inputs
def load_image(path: Optional[str] = None, quick: bool = False) -> torch.Tensor:
    """The benchmark image ``[1, 3, H, W]`` float32 in [0, 1].

    ``path`` defaults to kodim01 (768x512) of ``$SLIMKERNELS_KODAK``; without Kodak a fixed
    random image of that size is used. ``quick`` crops the top-left 64x96.

    Raises:
        FileNotFoundError: ``path`` was given and is not a file (a given path is never
            replaced by noise: timings of noise would pass for timings of that image).
    """
    from slimkernels.io import read_image

    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such image file")
        x, _ = read_image(path)
    elif os.path.exists(os.path.join(KODAK, DEFAULT_IMAGE)):
        x, _ = read_image(os.path.join(KODAK, DEFAULT_IMAGE))
    else:   # (no path given and no Kodak here: the fallback the docstring names)
        x = torch.rand(1, 3, 512, 768, generator=torch.Generator().manual_seed(0))
    if quick:
        x = x[..., :QUICK_HW[0], :QUICK_HW[1]].contiguous()
    return x


def image_source(path: Optional[str] = None) -> str:
    """What :func:`load_image` reads for ``path``: the file, or the random fallback's name
    (only without a ``path``: a given one that is missing is :func:`load_image`'s error)."""
    if path is not None:
        return path
    path = os.path.join(KODAK, DEFAULT_IMAGE)
    return path if os.path.exists(path) else "random 768x512 (Kodak not found)"


def image_error(path: Optional[str], option: str = "--image") -> Optional[str]:
    """The one-line error for an ``--image`` that :func:`load_image` would refuse, or None
    (None for no path: the default image, or noise without Kodak). For the scripts to refuse
    it before they measure or create anything."""
    if path is not None and not os.path.isfile(path):
        return f"{option} {path}: no such image file (leave {option} out for the default image)"
    return None


def model_error(path: Optional[str], option: str = "--model") -> Optional[str]:
    """The one-line error for a ``--model`` that is not a file, or None (None for no path: the
    bundled model). For the scripts to refuse it before they set anything up (torch.load's
    traceback came after, or after an output folder was made)."""
    if path is not None and not os.path.isfile(path):
        return f"{option} {path}: no such file (leave {option} out for the bundled model)"
    return None


def refuse(ap, *errors) -> None:
    """``ap.error`` (one line, exit status 2) for the first of ``errors`` that is not None or
    empty (the ``*_error`` checks here, each computed once), else nothing."""
    for err in errors:
        if err:
            ap.error(err)


def widths_error(widths, have, option: str = "--widths", whose: str = "the model"
                 ) -> Optional[str]:
    """The one-line error for ``widths`` (given as ``option``) that are not among ``have``, the
    widths of ``whose`` model, or None: for the scripts to refuse them before they measure (the
    codec's ValueError came as a traceback at the first timed call)."""
    bad = [w for w in widths if w not in have]
    return f"{option} {bad} are not widths of {whose} {list(have)}" if bad else None


def output_file_error(path: str, option: str, force: bool) -> Optional[str]:
    """The one-line error for an output file ``path`` (given as ``option``) that a script could
    not write, or would replace without ``--force``; None when it can go ahead. Checked before
    measuring: a missing folder used to fail only after the whole run, and an existing file
    (often a tracked table) was silently replaced."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{option} {path} is a folder: give a file name"
    if not os.path.isdir(folder):
        return f"{option} {path}: the folder {folder} does not exist: create it first"
    if os.path.exists(path) and not force:
        return f"{option} {path} exists: --force to replace it, or give another file"
    if not os.access(folder, os.W_OK):
        return f"{option} {path}: the folder {folder} is not writable"
    return None


def load_model(path: Optional[str] = None, seed: int = 0):
    """``(SlimCAE in eval mode with CDF tables, description)``.

    ``path``: a slimkernels model file (``{"format": "slimkernels-model", ...}``), a trainer
    checkpoint (``{"model": state_dict, ...}``), or None: the bundled model if this install has
    one, else random weights (``torch.manual_seed(seed)``).
    """
    if path is None:
        try:
            from slimkernels.pretrained import bundled_model_path
            path = bundled_model_path()
        except Exception:  # pragma: no cover - pretrained module optional
            path = None
    if path is None:
        torch.manual_seed(seed)
        model = SlimCAE()
        desc = f"random weights (seed {seed})"
    else:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(obj, dict) and "state_dict" in obj:
            cfg, sd, desc = obj.get("config", {}), obj["state_dict"], f"model file {path}"
        elif isinstance(obj, dict) and "model" in obj:
            cfg = {}
            sd, desc = obj["model"], f"trainer checkpoint {path} (step {obj.get('step')})"
        else:
            raise ValueError(f"{path}: neither a slimkernels model file nor a trainer checkpoint")
        if not cfg:
            gdn = "switch" if any(".gdns." in k for k in sd) else (
                "slim+" if any(k.endswith("gamma_scale") for k in sd) else "slim")
            widths = sorted({int(v.shape[0]) for k, v in sd.items()
                             if k.startswith("entropy_bottleneck.bottlenecks.")
                             and k.endswith("quantiles")}, reverse=True)
            cfg = {"widths": widths, "gdn": gdn}
        model = SlimCAE(**cfg)
        model.load_state_dict(sd)
    model.eval()
    if not all(b.has_tables() for b in model.entropy_bottleneck.bottlenecks):
        model.update()
    return model, desc


# ------------------------------------------------------------------------ CompressAI loading
def _compressai_root() -> Optional[str]:
    pkg = sys.modules.get("compressai")
    if pkg is not None and getattr(pkg, "__path__", None):  # a stub (ours, tests/_compressai.py)
        return list(pkg.__path__)[0]
    spec = importlib.util.find_spec("compressai")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _load_file(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_compressai_factorized():
    """CompressAI's ``FactorizedPrior`` class (``bmshj2018-factorized``), or None.

    The ``compressai`` package ``__init__`` imports datasets, torchvision, torch-geometric (point
    clouds) and more; this loads only the files the model needs, from the installed package, with
    stubs for ``compressai.registry`` (a no-op ``register_model``) and ``compressai.latent_codecs``
    (``LatentCodec`` is only a base class there). The ``_CXX`` and ``ans`` extensions are loaded
    by file. The stubs stay in ``sys.modules`` under ``compressai.*``.
    """
    root = _compressai_root()
    if root is None:
        return None
    if "compressai.models.google" in sys.modules:
        return sys.modules["compressai.models.google"].FactorizedPrior
    import torch.nn as nn

    def pkg(name, sub):
        m = sys.modules.get(name)
        if m is None or getattr(m, "__file__", None):  # a real package import would pull deps
            m = types.ModuleType(name)
            m.__path__ = [os.path.join(root, *sub)]
            # a real spec, so importlib.util.find_spec() keeps working for other code
            m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            m.__spec__.submodule_search_locations = m.__path__
            sys.modules[name] = m
        return m

    top = pkg("compressai", ())
    for ext in ("_CXX", "ans"):
        hits = glob.glob(os.path.join(root, ext + ".*so")) + glob.glob(os.path.join(root, ext + ".*pyd"))
        if not hits:
            return None
        setattr(top, ext, _load_file("compressai." + ext, hits[0]))
    # what compressai/__init__.py defines for the entropy models: the "ans" coder only
    top.get_entropy_coder = lambda: "ans"
    top.available_entropy_coders = lambda: ["ans"]
    _load_file("compressai.ops", os.path.join(root, "ops", "__init__.py"))
    em = pkg("compressai.entropy_models", ("entropy_models",))
    src = _load_file("compressai.entropy_models.entropy_models",
                     os.path.join(root, "entropy_models", "entropy_models.py"))
    em.EntropyBottleneck, em.GaussianConditional = src.EntropyBottleneck, src.GaussianConditional
    layers = pkg("compressai.layers", ("layers",))
    layers.GDN = _load_file("compressai.layers.gdn", os.path.join(root, "layers", "gdn.py")).GDN
    layers.MaskedConv2d = _load_file("compressai.layers.layers",
                                     os.path.join(root, "layers", "layers.py")).MaskedConv2d
    def stub(name):
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        return m

    reg = stub("compressai.registry")
    reg.register_model = lambda name: (lambda cls: cls)
    sys.modules["compressai.registry"] = reg
    lc = stub("compressai.latent_codecs")

    class LatentCodec(nn.Module):  # only a base class / isinstance target in models/base.py
        pass

    lc.LatentCodec = LatentCodec
    sys.modules["compressai.latent_codecs"] = lc
    pkg("compressai.models", ("models",))
    _load_file("compressai.models.utils", os.path.join(root, "models", "utils.py"))
    _load_file("compressai.models.base", os.path.join(root, "models", "base.py"))
    google = _load_file("compressai.models.google", os.path.join(root, "models", "google.py"))
    return google.FactorizedPrior


def make_compressai(N: int = 192, M: int = 320, seed: int = 0):
    """``bmshj2018-factorized`` quality 6 (N=192, M=320) with random weights and CDF tables."""
    cls = load_compressai_factorized()
    if cls is None:
        return None
    torch.manual_seed(seed)
    m = cls(N, M).eval()
    m.update(force=True)
    return m


# ----------------------------------------------------------------------------------- pipelines
def _tables(eb):
    """The coder's tables as ``compress`` / ``decompress`` get them (the library's own step: the
    entropy model's cached arrays where it has them)."""
    return _codec_fn("_tables", lambda e: (e._quantized_cdf.cpu().numpy(),
                                           e._cdf_length.cpu().numpy(),
                                           e._offset.cpu().numpy()))(eb)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work (timings on CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _codec_fn(name: str, fallback):
    """``slimkernels.codec.<name>`` (the API's own step), or ``fallback`` for an older library."""
    import slimkernels.codec as codec
    return getattr(codec, name, fallback)


def _auto_streams(n: int) -> int:
    """The substream count ``compress`` picks by default (1 for a library without the choice)."""
    try:
        from slimkernels.codec import auto_streams
    except ImportError:  # pragma: no cover - an older slimkernels
        return 1
    return auto_streams(n)


def _pool_kw():
    """``{"pool": ..., "threads": ...}`` as ``compress`` / ``decompress`` pass them to the coder
    ({} for a library without the choice)."""
    try:
        from slimkernels.codec import coder_pool
    except ImportError:  # pragma: no cover - an older slimkernels
        return {}
    return {"pool": coder_pool(), "threads": torch.get_num_threads()}


def _indexes(C, h, w):
    """``(indexes, decode kwargs)`` as ``compress`` / ``decompress`` pass them to the coder: the
    compact per-channel form where the library has it (``channel_indexes``), else the per-symbol
    array."""
    try:
        from slimkernels.codec import channel_indexes
    except ImportError:  # pragma: no cover - an older slimkernels
        from slimkernels.models.slimcae import _indexes as idx
        return idx(C, h, w), {}
    return channel_indexes(C), {"shape": (1, C, h, w)}


def _layout(model: SlimCAE, t: torch.Tensor, channels_last: bool, image_precision=None
            ) -> torch.Tensor:
    """The transforms' input layout: forced channels_last (the proposal), else what the model's
    compress/decompress do (``_image_input`` for the image when ``image_precision`` is given and
    the model has it, ``_like_params`` where the model has it, else channels_last only for
    channels_last parameters)."""
    if channels_last:
        return t.contiguous(memory_format=torch.channels_last)
    if image_precision is not None and hasattr(model, "_image_input"):
        return model._image_input(t, image_precision)
    if hasattr(model, "_like_params"):
        return model._like_params(t)
    if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _code_latent(model: SlimCAE, eb, y: torch.Tensor, width: int, H: int, W: int, mid: bytes,
                 streams: Optional[int] = None):
    """``compress``'s steps after the transform on the latent ``y``: quantization, coding and
    the container, as the method runs them; ``(bytes, the time the coding ended)``. Ours and
    the plain baseline both call it, so that their difference is the transforms alone."""
    if hasattr(model, "_latent_plan") and hasattr(coding, "encode_prepared"):
        # as compress: the per-width tables cached for the weights, the symbols quantized into
        # the coder's numpy form, the coder's thin entry
        med, cdf, lengths, offsets, idx = model._latent_plan(eb, width)
        quantize = _codec_fn("_quantize_counted", None)
        if _takes_kwarg(quantize, "as_numpy"):
            sym = quantize(eb, y, med, as_numpy=True)[0]
        else:   # (an older checkout)
            sym = quantize(eb, y, med)[0].cpu().numpy()
        _, C, h, w = sym.shape
        if streams is None:
            streams = _auto_streams(sym.size)
        kw = _pool_kw()
        threads = _codec_fn("coder_encode_threads", lambda pool, k: kw["threads"])(kw["pool"],
                                                                                  streams)
        payload = coding.encode_prepared(sym, idx, h * w, cdf, lengths, offsets,
                                         eb.precision, streams, threads, kw["pool"])
    else:
        sym = (_codec_fn("_quantize", lambda e, t: e.quantize_symbols(t))(eb, y).cpu()
               .contiguous())
        _, C, h, w = sym.shape
        cdf, lengths, offsets = _tables(eb)
        if streams is None:
            streams = _auto_streams(sym.numel())
        payload = coding.encode(sym.numpy(), _indexes(C, h, w)[0], cdf, lengths, offsets,
                                precision=eb.precision, streams=streams, **_pool_kw())
    t2 = time.perf_counter()
    f = container.SlimFile(model_id=mid, width=width, height=H, img_width=W,
                           streams=streams, payload=payload, metadata={})
    return container.pack(f), t2


@torch.no_grad()
def ours_compress_split(model: SlimCAE, x: torch.Tensor, width: int, precision: str = "fp32",
                        streams: Optional[int] = None, channels_last: bool = False):
    """:meth:`SlimCAE.compress` step by step: ``(bytes, {"transform", "entropy", "container"} s)``.

    Mirrors the method (padding, layout, autocast, quantization, coding, packing) so that its
    bytes equal ``model.compress(x, width, precision=precision)`` (checked in
    :func:`e2e_timings`). ``channels_last=True`` is the proposed model-level change: run the
    transforms on a channels_last input whatever the parameters' layout.
    """
    t0 = time.perf_counter()
    H, W = x.shape[-2:]
    s = int(getattr(model, "downsampling", 16))
    ph, pw = (-H) % s, (-W) % s
    xp = x.float().to(next(model.parameters()).device)
    if ph or pw:
        xp = torch.nn.functional.pad(xp, (0, pw, 0, ph), mode="replicate")
    if hasattr(model, "_checked_image_input") and not channels_last:
        # compress's own step: the input and the image's range check (the cast's measure, a
        # pass, or the first conv's in the transform)
        xp, in_conv = model._checked_image_input(xp, precision, xp.is_cpu)
    else:   # (a proposed layout, or an older checkout)
        xp, in_conv = _layout(model, xp, channels_last, image_precision=precision), False
    eb = model.entropy_bottleneck.for_width(width)   # compress takes it before the transform
    mid = model.model_id()   # compress computes it here, before the transform
    if hasattr(model, "_encode_image") and not channels_last:   # as compress runs it
        y = model._encode_image(xp, width, precision, xp.device, None, mid, in_conv)
    elif hasattr(model, "_transform") and not channels_last:   # (an older checkout)
        y = model._transform("encode", lambda t: model.encode(t, width), xp, (width, precision),
                             xp.device, precision, None, mid)
    else:
        with torch.autocast(xp.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = model.encode(xp, width)
    _sync(xp.device)
    t1 = time.perf_counter()
    data, t2 = _code_latent(model, eb, y, width, H, W, mid, streams)
    t3 = time.perf_counter()
    return data, {"transform": t1 - t0, "entropy": t2 - t1, "container": t3 - t2}


@functools.lru_cache(maxsize=None)
def _takes_kwarg(fn, name: str) -> bool:
    """Whether ``fn`` has a parameter ``name`` (cached: the timed sections call it)."""
    return name in inspect.signature(fn).parameters


def _decode_symbols(model: SlimCAE, f):
    """``decompress``'s entropy decoding of the unpacked file ``f``, as the method runs it:
    ``(entropy model, int32 symbols [1, width, h, w], coding medians or None)``. Ours and the
    plain baseline both call it."""
    eb = model.entropy_bottleneck.for_width(f.width)
    ds = int(getattr(model, "downsampling", 16))
    h, w = -(-f.height // ds), -(-f.img_width // ds)
    med = None
    if hasattr(model, "_latent_plan") and hasattr(coding, "decode_prepared"):
        # as decompress: the per-width tables cached for the weights, the coder's thin entry
        med, cdf, lengths, offsets, idx = model._latent_plan(eb, f.width)
        kw = _pool_kw()
        sym = torch.from_numpy(coding.decode_prepared(
            f.payload, idx, h * w, (1, f.width, h, w), cdf, lengths, offsets, eb.precision,
            kw["threads"], kw["pool"]))
    else:
        cdf, lengths, offsets = _tables(eb)
        idx, kw = _indexes(f.width, h, w)
        sym = torch.from_numpy(coding.decode(f.payload, idx, cdf, lengths, offsets,
                                             precision=eb.precision, **kw, **_pool_kw()))
    return eb, sym, med


@torch.no_grad()
def ours_decompress_split(model: SlimCAE, data: bytes, precision: str = "fp32",
                          channels_last: bool = False):
    """:meth:`SlimCAE.decompress` step by step: ``(x_hat, {"container", "entropy", "transform"})``
    (``channels_last``: as in :func:`ours_compress_split`)."""
    t0 = time.perf_counter()
    f = container.unpack(data)
    if f.model_id != model.model_id():
        raise ValueError("file written by another model")
    t1 = time.perf_counter()
    eb, sym, med = _decode_symbols(model, f)
    t2 = time.perf_counter()
    dev = next(model.parameters()).device
    if not channels_last and hasattr(model, "_latent_input"):  # the model's own input rule
        y_hat = (model._latent_input(eb, sym.to(dev), precision) if med is None or
                 dev.type != "cpu" else model._latent_input(eb, sym, precision, med))
    else:
        y_hat = _layout(model, _codec_fn("_dequantize", lambda e, t: e.dequantize_symbols(t))(
            eb, sym.to(dev)), channels_last)
    if hasattr(model, "_synthesize") and not channels_last:   # decompress's own last step
        x_hat = model._synthesize(y_hat, f, dev, precision, None)
    else:   # (an older checkout, or the channels_last proposal)
        if hasattr(model, "_transform") and not channels_last:   # as decompress runs it
            x_hat = model._transform("decode", model.decode, y_hat, (f.width, precision), dev,
                                     precision, None, f.model_id)
        else:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                x_hat = model.decode(y_hat)
        x_hat = _codec_fn("_image_output", lambda t: t.float().clamp_(0, 1))(x_hat)
        x_hat = x_hat[..., :f.height, :f.img_width]
    _sync(dev)
    t3 = time.perf_counter()
    return x_hat, {"container": t1 - t0, "entropy": t2 - t1, "transform": t3 - t2}


@torch.no_grad()
def plain_compress(plain: PlainSlimCAE, model: SlimCAE, x: torch.Tensor, width: int,
                   split: Optional[Dict] = None, precision: str = "fp32") -> bytes:
    """The plain transforms (``precision="bf16"``: under ``torch.autocast`` bf16, the way a user
    would add it), then the same rounding, coding (same default substream count) and container
    as ours.

    (Sizes that are not multiples of 16 are padded like ours. The model id is taken before the
    timer, as ``compress`` takes it from its cache; the steps after the transform are
    :func:`_code_latent`, the same as ours.)"""
    mid = model.model_id()
    t0 = time.perf_counter()
    H, W = x.shape[-2:]
    ph, pw = (-H) % 16, (-W) % 16
    xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        y = plain.encode(xp, width)
    _sync(x.device)
    t1 = time.perf_counter()
    data, t2 = _code_latent(model, model.entropy_bottleneck.for_width(width), y, width, H, W,
                            mid)
    if split is not None:
        split.update(transform=t1 - t0, entropy=t2 - t1, container=time.perf_counter() - t2)
    return data


@torch.no_grad()
def plain_decompress(plain: PlainSlimCAE, model: SlimCAE, data: bytes,
                     split: Optional[Dict] = None, precision: str = "fp32") -> torch.Tensor:
    """Same container and coder steps as ours (:func:`_decode_symbols`), then the plain
    dequantization and decoder transform (bf16: autocast)."""
    t0 = time.perf_counter()
    f = container.unpack(data)
    if f.model_id != model.model_id():
        raise ValueError("file written by another model")
    _, sym, _ = _decode_symbols(model, f)
    t1 = time.perf_counter()
    m = model.entropy_bottleneck.for_width(f.width).medians()
    y_hat = sym.to(m.device).float() + m.view(1, -1, 1, 1)
    with torch.autocast(y_hat.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        x_hat = plain.decode(y_hat)
    x_hat = x_hat.float()[..., :f.height, :f.img_width].clamp_(0, 1)
    _sync(x_hat.device)
    if split is not None:
        split.update(entropy=t1 - t0, transform=time.perf_counter() - t1)
    return x_hat


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """PSNR (dB) of 8-bit-rounded images in [0, 1] (float64)."""
    a = torch.round(x.double().clamp(0, 1) * 255)
    b = torch.round(x_hat.double().clamp(0, 1) * 255)
    mse = torch.mean((a - b) ** 2).item()
    return float("inf") if mse == 0 else 10 * __import__("math").log10(255.0 ** 2 / mse)


# ---------------------------------------------------------------------------------- timing
def interleaved(fns: Dict[str, Callable[[], Optional[Dict]]], repeats: int, warmup: int = 1,
                burst: int = 1) -> Dict[str, Dict[str, float]]:
    """Run every fn round-robin (``warmup`` unrecorded rounds, then ``repeats``); each fn may
    return a dict of component seconds. Returns ``{name: {"total": median s, component: median
    s, ..., "n": repeats}}``.

    ``burst > 1``: in every round each fn runs ``burst`` times back to back and only the last
    call is recorded: the steady state of that configuration (as in a loop over images with
    one setting), while the round-robin still spreads the machine's load over all of them (in a
    new order every round, fixed seed: a fixed order put ~10 % between two identical
    configurations on a Zen 3 VM, by position alone). The
    first calls absorb the cost of switching configurations (caches, and glibc returning the
    previous configuration's freed buffers to the OS so that the next one page-faults fresh
    memory: +5.7 ms on a 10.5 ms bf16 encode at w=192 right after an fp32 one, measured).
    """
    samples: Dict[str, List[Dict[str, float]]] = {k: [] for k in fns}
    order = list(fns.items())
    rng = random.Random(0)
    for r in range(warmup + repeats):
        rng.shuffle(order)     # no fn always right after the same neighbour
        for k, f in order:
            for _ in range(max(1, int(burst)) - 1):
                f()
            t0 = time.perf_counter()
            parts = f()
            dt = time.perf_counter() - t0
            if r >= warmup:
                samples[k].append({"total": dt, **(parts if isinstance(parts, dict) else {})})
    out = {}
    for k, rows in samples.items():
        keys = rows[0].keys()
        out[k] = {c: statistics.median(r[c] for r in rows) for c in keys}
        out[k]["min"] = min(r["total"] for r in rows)
        out[k]["n"] = len(rows)
    return out


def plain_precisions(precisions) -> List[str]:
    """The plain baseline's precisions: always fp32 (the issue's baseline), plus bf16 when ours
    is measured in bf16 (so bf16 is also compared with bf16)."""
    return ["fp32"] + (["bf16"] if "bf16" in precisions else [])


def e2e_timings(model: SlimCAE, x: torch.Tensor, widths=WIDTHS, repeats: int = 5, warmup: int = 1,
                precisions=PRECISIONS, compressai_model=None, proposals: bool = False,
                log=print, burst: int = 1) -> Dict:
    """Interleaved timings of every configuration at every width, plus fidelity checks.

    Returns ``{"rows": [...], "compressai": {...} or None, "checks": {...}}``; row keys:
    ``width``, ``impl`` (``ours`` / ``plain``), ``precision``, ``op`` (``compress`` /
    ``decompress``), ``ms`` (API call, median), ``split_ms`` ({transform, entropy, container}
    from the step-by-step run, medians), ``bytes``, ``bpp``, ``psnr``. With ``proposals``, impl
    ``ours+cl`` is the step-by-step pipeline with the transforms on channels_last inputs (a
    proposed change of ``SlimCAE.compress/decompress``; its ``ms`` is the step-by-step total).
    """
    plain = PlainSlimCAE.from_model(model).eval()
    H, W = x.shape[-2:]
    fns: Dict[str, Callable] = {}
    data: Dict = {}
    checks: Dict = {}
    for width in widths:
        for p in precisions:
            b_api = model.compress(x, width, precision=p)
            b_split, _ = ours_compress_split(model, x, width, p)
            checks[f"split_bytes_equal_api_w{width}_{p}"] = b_api == b_split
            data[("ours", p, width)] = b_api
            fns[f"ours|{p}|{width}|compress"] = (
                lambda w=width, p=p: (model.compress(x, w, precision=p), None)[1])
            fns[f"ours|{p}|{width}|compress_split"] = (
                lambda w=width, p=p: ours_compress_split(model, x, w, p)[1])
            fns[f"ours|{p}|{width}|decompress"] = (
                lambda w=width, p=p: (model.decompress(data[("ours", p, w)], precision=p), None)[1])
            fns[f"ours|{p}|{width}|decompress_split"] = (
                lambda w=width, p=p: ours_decompress_split(model, data[("ours", p, w)], p)[1])
            if proposals:
                data[("ours+cl", p, width)] = ours_compress_split(model, x, width, p,
                                                                  channels_last=True)[0]
                if hasattr(type(model), "input_channels_last"):  # the model's own switch
                    model.input_channels_last = True
                    try:
                        b_cl = model.compress(x, width, precision=p)
                    finally:
                        del model.input_channels_last
                    checks[f"cl_split_bytes_equal_api_input_channels_last_w{width}_{p}"] = (
                        b_cl == data[("ours+cl", p, width)])
                fns[f"ours+cl|{p}|{width}|compress"] = (
                    lambda w=width, p=p: ours_compress_split(model, x, w, p, channels_last=True)[1])
                fns[f"ours+cl|{p}|{width}|decompress"] = (
                    lambda w=width, p=p: ours_decompress_split(
                        model, data[("ours+cl", p, w)], p, channels_last=True)[1])
        for p in plain_precisions(precisions):
            data[("plain", p, width)] = plain_compress(plain, model, x, width, precision=p)

            def pc(w=width, p=p):
                s = {}
                plain_compress(plain, model, x, w, s, precision=p)
                return s

            def pd(w=width, p=p):
                s = {}
                plain_decompress(plain, model, data[("plain", p, w)], s, precision=p)
                return s
            fns[f"plain|{p}|{width}|compress"] = pc
            fns[f"plain|{p}|{width}|decompress"] = pd
    cai_data = None
    if compressai_model is not None:
        with torch.no_grad():
            cai_data = compressai_model.compress(x)

        def cc():
            with torch.no_grad():
                compressai_model.compress(x)

        def cd():
            with torch.no_grad():
                compressai_model.decompress(cai_data["strings"], cai_data["shape"])
        fns["compressai|fp32|0|compress"] = cc
        fns["compressai|fp32|0|decompress"] = cd
    log(f"e2e: {len(fns)} configurations x {repeats} repeats (+{warmup} warm-up), interleaved"
        + (f", each timed call after {burst - 1} untimed one(s) of the same configuration"
           if burst > 1 else ""))
    t = interleaved(fns, repeats, warmup, burst=burst)

    rows = []
    x_plain = {}
    for width in widths:
        x_plain[width] = plain_decompress(plain, model, data[("plain", "fp32", width)])
    for width in widths:
        ref = x_plain[width]
        impls = [("ours", q) for q in precisions] + [("plain", q) for q in
                                                     plain_precisions(precisions)]
        if proposals:
            impls += [("ours+cl", q) for q in precisions]
        for impl, p in impls:
            b = data[(impl, p, width)]
            if impl == "ours":
                x_hat = model.decompress(b, precision=p)
            elif impl == "ours+cl":
                x_hat = ours_decompress_split(model, b, p, channels_last=True)[0]
            elif p == "fp32":
                x_hat = ref
            else:
                x_hat = plain_decompress(plain, model, b, precision=p)
            q = {"psnr": psnr(x, x_hat), "bytes": len(b), "bpp": len(b) * 8 / (H * W),
                 "max_abs_diff_vs_plain": (x_hat - ref).abs().max().item()}
            for op in ("compress", "decompress"):
                key = f"{impl}|{p}|{width}|{op}"
                row = {"width": width, "impl": impl, "precision": p, "op": op,
                       "ms": t[key]["total"] * 1e3, "min_ms": t[key]["min"] * 1e3,
                       "n": t[key]["n"], **q}
                sk = key + "_split" if impl == "ours" else key  # ours+cl, plain: split only
                row["split_ms"] = {c: t[sk][c] * 1e3 for c in ("transform", "entropy", "container")
                                   if c in t[sk]}
                rows.append(row)
                log(f"  w={width:3d} {impl:5s} {p} {op:10s} {row['ms']:8.1f} ms  "
                    + " ".join(f"{c}={v:.1f}" for c, v in row["split_ms"].items())
                    + f"  {row['bpp']:.3f} bpp  {row['psnr']:.2f} dB")
    cai = None
    if compressai_model is not None:
        x_hat = compressai_model.decompress(cai_data["strings"], cai_data["shape"])["x_hat"]
        nbytes = sum(len(s) for s in cai_data["strings"][0])
        cai = {"model": "bmshj2018-factorized q6 (N=192, M=320), random weights",
               "compress_ms": t["compressai|fp32|0|compress"]["total"] * 1e3,
               "decompress_ms": t["compressai|fp32|0|decompress"]["total"] * 1e3,
               "compress_min_ms": t["compressai|fp32|0|compress"]["min"] * 1e3,
               "decompress_min_ms": t["compressai|fp32|0|decompress"]["min"] * 1e3,
               "bytes": nbytes, "n": t["compressai|fp32|0|compress"]["n"],
               "psnr": psnr(x, x_hat)}
        log(f"  CompressAI factorized q6: compress {cai['compress_ms']:.1f} ms, decompress "
            f"{cai['decompress_ms']:.1f} ms")
    return {"rows": rows, "compressai": cai, "checks": checks,
            "image": {"height": int(H), "width": int(W)}}


def psnr_at_rate(curve, bpp: float) -> float:
    """PSNR of an RD curve ``[(bpp, psnr), ...]`` at rate ``bpp``: piecewise linear in log-rate,
    extended linearly past the end points (the widest width's rate may be a little above the
    anchor's). A single point: its PSNR."""
    import math
    pts = sorted((math.log(b), q) for b, q in curve if b > 0)
    if not pts:
        return float("nan")
    if len(pts) == 1:
        return pts[0][1]
    t = math.log(bpp)
    i = 1
    while i < len(pts) - 1 and t > pts[i][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    return y0 + (y1 - y0) * (t - x0) / (x1 - x0) if x1 != x0 else (y0 + y1) / 2


def ratios(e2e: Dict, widths=WIDTHS) -> List[Dict]:
    """Per impl (``ours``, and ``ours+cl`` when measured), width, precision and op: speed vs
    plain fp32 (``speedup_vs_plain``: the issue's baseline, whatever our precision), vs plain in
    the same precision (``speedup_vs_plain_same_precision``: bf16 against plain bf16 autocast)
    and vs CompressAI (same-run ratios), the entropy-coding share, and the RD difference vs
    plain fp32: ``dpsnr_vs_plain_db``, ``dbpp_vs_plain`` and ``rd_loss_vs_plain_db`` (the PSNR
    plain fp32's RD curve over the widths reaches at our rate, minus ours: the loss at equal
    rate; a bf16 encoder that spends 0.1 % more bits for 0.05 dB more is no loss)."""
    get = {(r["impl"], r["precision"], r["width"], r["op"]): r for r in e2e["rows"]}
    cai = e2e.get("compressai")
    out = []
    impls = [i for i in ("ours", "ours+cl") if any(r["impl"] == i for r in e2e["rows"])]
    anchor = [(get[("plain", "fp32", w, "compress")]["bpp"], get[("plain", "fp32", w, "compress")]
               ["psnr"]) for w in widths if ("plain", "fp32", w, "compress") in get]
    for impl in impls:
        for width in widths:
            for p in sorted({r["precision"] for r in e2e["rows"] if r["impl"] == impl}):
                for op in ("compress", "decompress"):
                    o, pl = get.get((impl, p, width, op)), get.get(("plain", "fp32", width, op))
                    if not o or not pl:
                        continue
                    row = {"impl": impl, "width": width, "precision": p, "op": op,
                           "ours_ms": o["ms"], "plain_ms": pl["ms"],
                           "speedup_vs_plain": pl["ms"] / o["ms"],
                           "transform_speedup_vs_plain": (pl["split_ms"]["transform"]
                                                          / o["split_ms"]["transform"]),
                           "entropy_share": o["split_ms"]["entropy"] / sum(o["split_ms"].values()),
                           "dpsnr_vs_plain_db": o["psnr"] - pl["psnr"],
                           "dbpp_vs_plain": o["bpp"] - pl["bpp"],
                           "rd_loss_vs_plain_db": psnr_at_rate(anchor, o["bpp"]) - o["psnr"],
                           "max_abs_diff_vs_plain": o["max_abs_diff_vs_plain"]}
                    same = get.get(("plain", p, width, op))
                    if same:
                        row["plain_same_precision_ms"] = same["ms"]
                        row["speedup_vs_plain_same_precision"] = same["ms"] / o["ms"]
                    if cai:
                        row["speedup_vs_compressai"] = cai[f"{op}_ms"] / o["ms"]
                    out.append(row)
    return out


def ours_steps(model: SlimCAE, width: int, part: str):
    """Our encoder (``part="enc"``) or decoder at ``width`` as ``[(name, fn)]``, names as
    :meth:`PlainSlimCAE.encoder_steps`; each fn is the model's own layer call."""
    seq = model.g_a if part == "enc" else model.g_s
    names = ([f"enc.{n}{i}" for i in (1, 2, 3) for n in ("conv", "gdn")] if part == "enc" else
             [f"dec.{n}{i}" for i in (1, 2, 3) for n in ("igdn", "tconv")])
    return [(nm, (lambda x, L=L: L(x, width if getattr(L, "slim_output", True) else None)))
            for nm, L in zip(names, seq)]


#: The layers of :func:`layer_calls` (SlimCAE's), in chain order.
LAYERS = tuple([f"enc.{n}{i}" for i in (1, 2, 3) for n in ("conv", "gdn")] +
               [f"dec.{n}{i}" for i in (1, 2, 3) for n in ("igdn", "tconv")])


@torch.no_grad()
def layer_calls(model: SlimCAE, plain: PlainSlimCAE, x: torch.Tensor, width: int, part: str,
                precisions=PRECISIONS) -> Tuple[List[str], Dict]:
    """``(names, {(name, precision, impl): fn})``: each layer of the encoder (``part="enc"``)
    or decoder at ``width`` as a call on its real input (this image): ours (each precision, bf16
    under autocast) on the activations of our own chain (their layout and dtype), plain fp32
    (``impl="plain"``, precision ``"fp32"``) on the plain chain's. The decoder's input: the
    plain encoder's latent of ``x``, quantized and dequantized. The calls hold their inputs."""
    psteps = plain.encoder_steps(width) if part == "enc" else plain.decoder_steps(width)
    if part == "enc":
        inp = x
    else:
        eb = model.entropy_bottleneck.for_width(width)
        inp = eb.dequantize_symbols(eb.quantize_symbols(plain.encode(x, width)))
    fns = {}
    a = inp
    for name, f in psteps:  # the inputs every layer sees (plain fp32 activations)
        fns[(name, "fp32", "plain")] = (lambda f=f, a_in=a: f(a_in))
        a = f(a)
    for p in precisions:
        # our layers see what our own chain hands them (layout, and bf16 under autocast)
        a = _layout(model, inp, False, image_precision=p if part == "enc" else None)
        for name, f in ours_steps(model, width, part):
            def run(f=f, a_in=a, p=p):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
                    return f(a_in)
            fns[(name, p, "ours")] = run
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
                a = f(a)
    return [name for name, _ in psteps], fns


@torch.no_grad()
def layer_timings(model: SlimCAE, x: torch.Tensor, widths=WIDTHS, repeats: int = 5,
                  precisions=PRECISIONS, warmup: int = 1, log=print) -> List[Dict]:
    """Each layer of the encoder and decoder on its real input (:func:`layer_calls`): ours
    (each precision) and plain fp32; interleaved, medians.

    Rows: ``layer``, ``width``, ``precision``, ``ours_ms``, ``plain_ms``, ``speedup``."""
    plain = PlainSlimCAE.from_model(model).eval()
    rows = []
    for width in widths:
        for part in ("enc", "dec"):
            names, calls = layer_calls(model, plain, x, width, part, precisions)
            t = interleaved(calls, repeats, warmup=warmup)
            for p in precisions:
                for name in names:
                    o, pl = t[(name, p, "ours")]["total"], t[(name, "fp32", "plain")]["total"]
                    rows.append({"layer": name, "width": width, "precision": p,
                                 "ours_ms": o * 1e3, "plain_ms": pl * 1e3, "speedup": pl / o})
                    log(f"  layer {name:10s} w={width:3d} {p}: ours {o * 1e3:7.2f} ms  plain "
                        f"{pl * 1e3:7.2f} ms  x{pl / o:.2f}")
    return rows


# ---------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _first_call(fn):
    """``(fn(), the RSS in KiB before it, its time in s)``: a configuration's first call in
    :func:`_mem_child` (the RSS after collecting garbage)."""
    import gc
    gc.collect()
    pre = _status_kb("VmRSS") or 0
    t = time.perf_counter()
    out = fn()
    return out, pre, time.perf_counter() - t


def _mem_child(common: Dict, configs: List[Dict]):
    """Runs in a fresh process (see :func:`peak_memory`); yields one result per config: run the
    op three times (warm-up; for ours the CPU replay's recording and check, so that the measured
    call is the steady state), reset the RSS high-water mark, run it again; the peak RSS above
    the pre-call RSS (MiB); and ``retained_mib``, the RSS the configuration's first calls left
    resident (after its warm-up, above the RSS before its first call: weight caches, prepacked
    and cast weights, replays), which the peak above the pre-call RSS does not show."""
    import gc
    import resource

    if common.get("threads"):
        torch.set_num_threads(int(common["threads"]))
    x = load_image(common.get("image"), common.get("quick", False))
    cache: Dict = {}
    for c in configs:
        impl, op, width, p = c["impl"], c["op"], c["width"], c["precision"]
        if impl == "compressai":
            if "cai" not in cache:
                cache["cai"] = make_compressai()
            m = cache["cai"]
            with torch.no_grad():
                enc, pre, t_first = _first_call(lambda: m.compress(x))

            def run(m=m, enc=enc):
                with torch.no_grad():
                    if op == "compress":
                        m.compress(x)
                    else:
                        m.decompress(enc["strings"], enc["shape"])
        else:
            if "model" not in cache:
                cache["model"] = load_model(common.get("model"), common.get("seed", 0))[0]
            model = cache["model"]
            if op == "layer":   # one layer on its real input (layer_calls), as layer_timings
                part = "enc" if c["layer"].startswith("enc.") else "dec"
                if cache.get("layers_key") != (width, part):
                    cache.pop("layers", None)   # (the previous width's activations first)
                    if "plain" not in cache:
                        cache["plain"] = PlainSlimCAE.from_model(model).eval()
                    cache["layers"] = layer_calls(model, cache["plain"], x, width, part,
                                                  precisions=(p,) if impl == "ours" else ())[1]
                    cache["layers_key"] = (width, part)
                calls = cache["layers"]
                if (c["layer"], p, impl) not in calls:   # (another precision in the same child)
                    calls.update(layer_calls(model, cache["plain"], x, width, part,
                                             precisions=(p,))[1])
                f = calls[(c["layer"], p, impl)]
                _, pre, t_first = _first_call(f)

                def run(f=f):
                    with torch.no_grad():
                        f()
            elif impl == "plain":
                if "plain" not in cache:
                    cache["plain"] = PlainSlimCAE.from_model(model).eval()
                plain = cache["plain"]
                b, pre, t_first = _first_call(lambda: plain_compress(plain, model, x, width))
                run = ((lambda: plain_compress(plain, model, x, width)) if op == "compress"
                       else (lambda: plain_decompress(plain, model, b)))
            else:
                b, pre, t_first = _first_call(lambda: model.compress(x, width, precision=p))
                run = ((lambda: model.compress(x, width, precision=p)) if op == "compress"
                       else (lambda: model.decompress(b, precision=p)))
        for i in range(3):   # warm-up: oneDNN primitives, weight caches, lazy allocations, and
            t0 = time.perf_counter()   # a CPU replay's recording and check (the third call)
            run()
            if i == 0 and op == "decompress":   # the op's first call (compress: the one above)
                t_first = time.perf_counter() - t0
        gc.collect()
        method = "VmHWM after clear_refs" if _reset_hwm() else "ru_maxrss delta"
        before = _status_kb("VmRSS") or 0
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        if method.startswith("VmHWM"):
            peak = (_status_kb("VmHWM") or 0) - before
        else:
            peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                       - max(before, maxrss_before))
        yield {**c, "peak_mib": peak / 1024.0, "rss_before_mib": before / 1024.0,
               "retained_mib": max(0, before - pre) / 1024.0, "first_call_ms": t_first * 1e3,
               "method": method}


def peak_memory(configs: List[Dict], common: Dict, log=print, timeout: float = 600) -> List[Dict]:
    """Peak RSS (MiB) of one call above the RSS before it, for each configuration.

    One fresh subprocess per implementation (ours / plain / compressai) measures its
    configurations one after the other; glibc is told to serve every block >= 64 KiB by mmap and
    return it on free, so RSS follows the live tensors (no allocator caching) and the high-water
    mark, reset before each measured call, is that call's peak.

    ``configs``: dicts with ``impl`` (ours/plain/compressai), ``op``, ``width``, ``precision``;
    ``common``: ``image``, ``quick``, ``model``, ``seed``, ``threads``.
    """
    rows = []
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["MALLOC_TRIM_THRESHOLD_"] = "131072"
    groups: Dict[str, List[Dict]] = {}
    for c in configs:
        groups.setdefault(c["impl"], []).append(c)
    for impl, cs in groups.items():
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--mem-child",
                            json.dumps({"common": common, "configs": cs})],
                           capture_output=True, text=True, env=env, timeout=timeout)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("MEM ")]
        if r.returncode != 0 or len(lines) != len(cs):
            raise RuntimeError(f"memory subprocess for {impl} failed (rc {r.returncode}): "
                               f"{r.stderr[-2000:]}")
        for ln in lines:
            res = json.loads(ln[4:])
            rows.append(res)
            log(f"  mem {res['impl']:10s} {res['precision']} w={res['width']:3d} "
                f"{res.get('layer', res['op']):10s} peak +{res['peak_mib']:.1f} MiB")
    return rows


def layer_memory_configs(widths=WIDTHS, precisions=PRECISIONS, plain=True) -> List[Dict]:
    """The memory configurations of every layer (:data:`LAYERS`) on its real input, per width:
    ours in each precision, plain fp32 (``op="layer"``, ``layer``: its name)."""
    cfg = []
    for w in widths:
        for name in LAYERS:
            for p in precisions:
                cfg.append({"impl": "ours", "op": "layer", "layer": name, "width": w,
                            "precision": p})
            if plain:
                cfg.append({"impl": "plain", "op": "layer", "layer": name, "width": w,
                            "precision": "fp32"})
    return cfg


def memory_configs(widths=WIDTHS, precisions=PRECISIONS, plain=True, compressai=True,
                   ops=("compress", "decompress")) -> List[Dict]:
    """The default set of memory configurations."""
    cfg = []
    for op in ops:
        for w in widths:
            for p in precisions:
                cfg.append({"impl": "ours", "op": op, "width": w, "precision": p})
            if plain:
                cfg.append({"impl": "plain", "op": op, "width": w, "precision": "fp32"})
        if compressai:
            cfg.append({"impl": "compressai", "op": op, "width": 0, "precision": "fp32"})
    return cfg


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--mem-child":   # (peak_memory's children)
        _spec = json.loads(sys.argv[2])
        for _res in _mem_child(_spec["common"], _spec["configs"]):
            print("MEM " + json.dumps(_res), flush=True)
    else:   # (run as a script it used to print nothing and exit 0, as if it had measured)
        print("bench/e2e.py is a library: run python bench/report.py", file=sys.stderr)
        sys.exit(2)
