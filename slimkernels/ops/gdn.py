"""GDN / IGDN for any active channel count (dispatcher, fused CPU kernel, PyTorch paths)."""
from __future__ import annotations

import contextlib
import functools
import numbers
import threading
from typing import Optional

import torch
import torch.nn.functional as F

from ..backend import resolve_backend

from .._checks import as_flag, check_tensor_args
from .._cpu import cpu_kernels, functorch_transform, refuse_jit_trace, tracing
from ._cache import _cached
from ._raw import cpu_capability, onednn_half


def _fused_kernels():
    """``slimkernels._cpu_kernels`` for the fused GDN kernel, or None (not built, no AMX-BF16 on
    this CPU/OS, or ``SLIMKERNELS_CPU_KERNELS=0``)."""
    return cpu_kernels("amx_available")

def _avx2_kernels():
    """``slimkernels._cpu_kernels`` for the fp32 AVX2 + FMA GDN kernel (CPUs without AMX, e.g.
    AMD EPYC), or None (not built, no AVX2/FMA, or ``SLIMKERNELS_CPU_KERNELS=0``)."""
    return cpu_kernels("gdn_avx2_available")


#: Module switch for the fused CPU kernels; ``False`` (or env ``SLIMKERNELS_CPU_KERNELS=0``,
#: read at every call) forces the PyTorch path :func:`gdn_torch`.
USE_CPU_KERNELS = True
#: On AVX512-BF16 CPUs without AMX, bf16 channels_last x without gradient runs the AVX512-BF16
#: kernel (csrc/cpu/gdn_bf16.cpp) at every width and size. Zen 4 EPYC, 2 threads, IGDN, medians
#: of 50 (``/tmp/gb.py``-style, trainer paused), kernel / PyTorch path (oneDNN bf16 1x1 conv +
#: passes) / AVX2 kernel in ms at 128x192, 64x96, 32x48 pixels: C=48 0.46 / 0.77 / 0.76,
#: 0.105 / 0.29 / 0.19, 0.033 / 0.17 / 0.053; C=96 1.33 / 2.07 / 2.73, 0.34 / 0.59 / 0.78,
#: 0.12 / 0.33 / 0.23; C=192 5.0 / 6.5 / 9.4, 1.17 / 1.50 / 2.27, 0.34 / 0.48 / 0.58.
#: AMX CPUs keep the AMX kernel: on the AMX Xeon (twenty-third sitting, 2 threads, GDN on bf16
#: channels_last x, medians of 15, both kernels called directly in one process) this kernel ran
#: at 0.15-0.47x of it: C=192 8.06 vs 1.24 ms at 128x192 pixels, C=48 0.63 vs 0.22 ms.
USE_AVX512_BF16 = True
#: The AVX512-BF16 and AVX2 GDN kernels read gamma_k packed once per (gamma version, width,
#: scalars) from a cache (:func:`_packed_gamma`) instead of packing it on every call, from
#: ``PACKED_GAMMA_MIN_C`` channels: below, packing costs about what the cache check does (Zen 4,
#: a 4x4-pixel call at C = 48: bf16 21 us either way, AVX2 7.4 packed per call vs 8.4 cached;
#: at C = 192 bf16 111-121 -> 29 us, AVX2 30 -> 19 us). The AMX kernel likewise
#: (:func:`_packed_gamma` with ``kind="amx"``; its own cache holds one packed gamma per thread,
#: and a transform's GDN layers alternate: every call repacked): AMX Xeon, 2 threads, two SwitchGDN layers called
#: alternately on 16x16 pixels (``/tmp/s25/gpack.py``): C = 192 120 -> 83 us per pair (one layer
#: twice: 72 -> 86, the Python cache's check against the kernel's); kodim01 (``/tmp/s25/pg_ab.py``,
#: 6 rounds of 15, switched in one process) ``compress`` / ``decompress`` 1.003 / 1.010x at w=192,
#: 0.992 / 0.999x at 96; 64x64 crops 1.013 / 1.015x at 192, 0.997 / 0.998x at 96.
USE_PACKED_GAMMA = True
PACKED_GAMMA_MIN_C = 64
#: Training on CPU in half precision / under autocast (the autograd composition of
#: :func:`gdn_torch`): run that composition through ``torch.compile`` (inductor fuses x^2, the
#: norm's epilogue and the product, forward and backward, around the 1x1 convolution). Measured
#: (bf16, batch 8, forward+backward, one thread): 192x32x32 19.5 -> 8.4 ms, 192x16x16 4.1 -> 2.8,
#: 48x32x32 3.4 -> 2.3. One graph per shape (~2 s each to compile, the first ~20 s); if compiling
#: fails (no C++ compiler, unsupported platform) it warns once and stays on the eager composition.
#: Off by default; :func:`compiled_training` turns it on for a block (the trainer does, for its
#: steps: ``--compile-gdn``, on by default).
COMPILE_TRAINING = False
#: Which CPU path the last :func:`gdn` call on CPU took: ``"fused"`` (AMX), ``"avx2"``,
#: ``"torch"``, or ``"avx2-train"`` (fp32 with autograd: the AVX2 kernel's forward saving its
#: factors for the hand-written backward) (diagnostics and tests; not thread-safe).
last_cpu_path: Optional[str] = None


def _effective_params(beta, gamma, C, gamma_scale, gamma_bias, beta_scale, beta_bias,
                      dtype=None):
    """The active ``(beta[:C], gamma[:C, :C])`` with the SlimGDN+ scalars applied, in the wider
    of their dtype and ``dtype`` (the compute dtype: bf16 parameters of an fp32 GDN got their
    scalars applied in bf16, 6e-4 off the kernels, which apply them in fp32)."""
    g = gamma[:C, :C]
    b = beta[:C]
    if dtype is not None:
        g = g.to(torch.promote_types(g.dtype, dtype))
        b = b.to(torch.promote_types(b.dtype, dtype))
    # one-element tensors of any shape as 0-d (a [1, 1] beta_scale broadcast beta to [1, C])
    gamma_scale, gamma_bias, beta_scale, beta_bias = (
        v.reshape(()) if isinstance(v, torch.Tensor) else v
        for v in (gamma_scale, gamma_bias, beta_scale, beta_bias))
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


_SCRATCH = threading.local()
#: largest x^2 scratch kept between calls (bytes); larger ones are allocated per call
SCRATCH_MAX_BYTES = 256 * 2 ** 20


def _scratch(shape, dtype, device) -> torch.Tensor:
    """A per-thread CPU buffer for x^2, reused across calls (grown when needed).

    Fresh multi-MB tensors cost page faults on every call (glibc hands large blocks back to the
    OS); reusing one buffer removes that cost for the temporary. Only used without autograd. On
    any other device (CUDA: its caching allocator already reuses blocks) a fresh tensor there.
    """
    if torch.device(device).type != "cpu" or tracing():
        # (under a torch mode, e.g. torch.export's fake tensors, a buffer of that mode: never
        # kept, or every later real call got a fake x^2 and returned a FakeTensor)
        return torch.empty(shape, dtype=dtype, device=device)
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * dtype.itemsize
    if nbytes > SCRATCH_MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device="cpu")
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    buf = bufs.get(dtype)
    if buf is None or buf.numel() < numel:
        # a normal tensor even under torch.inference_mode(): an inference tensor kept here made
        # every later call outside it fail ("Inplace update to inference tensor outside
        # InferenceMode is not allowed")
        with torch.inference_mode(False):
            buf = bufs[dtype] = torch.empty(numel, dtype=dtype, device="cpu")
    return buf[:numel].view(shape)


def _composition(x, g, b, inverse: bool):
    """GDN as ``x * rsqrt(b + g (x^2))`` (IGDN: sqrt) on ``[N, C, H, W]`` x in its own dtype, the
    channel mixing as a 1x1 convolution: the function :data:`COMPILE_TRAINING` compiles."""
    n = F.conv2d(x * x, g[:, :, None, None], b)
    return x * (torch.sqrt(n) if inverse else torch.rsqrt(n))


_COMPILED = {}


@contextlib.contextmanager
def compiled_training(enabled: bool = True):
    """Within the block, CPU autograd GDN in half precision / under autocast runs through
    ``torch.compile`` (:data:`COMPILE_TRAINING`); the previous setting comes back after it.

    Example::

        gdn_ops = importlib.import_module("slimkernels.ops.gdn")   # (ops.gdn: the function)
        with gdn_ops.compiled_training():
            loss, stats = rd_loss(model, x, widths, lambdas, bf16=True)
            loss.backward()
    """
    global COMPILE_TRAINING
    old = COMPILE_TRAINING
    COMPILE_TRAINING = bool(enabled) and not _COMPILED.get("broken", False)
    try:
        yield
    finally:
        COMPILE_TRAINING = old


def _compiled_composition(x, g, b, inverse: bool):
    """:func:`_composition` through ``torch.compile`` (one graph per shape and dtype), or None when
    compiling does not work here (then :data:`COMPILE_TRAINING` is switched off, with a warning,
    and :func:`compiled_training` does not try again in this process)."""
    global COMPILE_TRAINING
    fn = _COMPILED.get("fn")
    if fn is None:
        try:
            fn = torch.compile(_composition, dynamic=False, recompile_limit=256)
        except TypeError:  # no such argument (torch 2.11 has none): the global cache_size_limit
            import torch._dynamo.config as dcfg
            dcfg.cache_size_limit = max(dcfg.cache_size_limit, 256)
            fn = torch.compile(_composition, dynamic=False)
        _COMPILED["fn"] = fn
    try:
        return fn(x, g, b, inverse)
    except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, once, loudly
        import warnings
        COMPILE_TRAINING = False
        _COMPILED["broken"] = True
        warnings.warn("slimkernels: torch.compile of the GDN training path failed "
                      f"({type(e).__name__}: {str(e)[:200]}); using the eager composition",
                      RuntimeWarning)
        return None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype of the channel mixing: x's, or the CPU autocast dtype for fp32 x under autocast
    (what ``F.conv2d`` would use there)."""
    if x.dtype == torch.float32 and x.is_cpu and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def gdn_torch(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, *, inverse: bool = False,
              gamma_scale=None, gamma_bias=None, beta_scale=None, beta_bias=None) -> torch.Tensor:
    """The PyTorch path (CPU, or any device without Triton): GDN as one GEMM and in-place ops.

    The channel mixing is one GEMM with beta as its bias and the strided view ``gamma[:C, :C]`` as
    its weight (no slice is copied by this code): oneDNN's 1x1 convolution for fp32 and for
    channels_last (measured fastest there, AMX for bf16), a plain addmm / baddbmm on
    ``x.view(N, C, H*W)`` for half-precision NCHW (where the convolution reorders x and is 2-4x
    slower). Without autograd the GEMM output is turned into y in place (rsqrt_/sqrt_ then mul_)
    and x^2 lives in a reused scratch buffer: one fresh activation-sized allocation instead of the
    eager composition's four. With autograd: fp32 runs :class:`_GDNCpuFunction` (hand-written
    backward, measured 1.1-1.3x eager for forward+backward); half precision and autocast run the
    composition through autograd (the hand-written backward was slower there).
    Under CPU autocast an fp32 x gets its GEMM in the autocast dtype and an fp32 result, as
    ``F.conv2d`` would give.

    Args/Returns: as :func:`gdn`. Output is channels_last when x is, else contiguous NCHW.
    """
    N, C, H, W = x.shape
    cd = _compute_dtype(x)
    b, g = _effective_params(beta, gamma, C, gamma_scale, gamma_bias, beta_scale, beta_bias, cd)
    grad = torch.is_grad_enabled() and (x.requires_grad or b.requires_grad or g.requires_grad)
    channels_last = (x.is_contiguous(memory_format=torch.channels_last)
                     and not x.is_contiguous())
    if not channels_last:
        x = x.contiguous()
    if grad and cd == torch.float32:
        return _GDNCpuFunction.apply(x, b, g, bool(inverse), cd, channels_last)
    with torch.autocast("cpu", enabled=False):
        if grad:  # half precision / autocast: autograd through the composition measured faster
            if COMPILE_TRAINING and x.is_cpu and cd == x.dtype:
                y = _compiled_composition(x, g.to(cd), b.to(cd), bool(inverse))
                if y is not None:
                    return y
            xv = _pixels_view(x, channels_last)
            z = torch.mul(xv, xv) if cd == x.dtype else torch.mul(xv, xv).to(cd)
            n = _norm(xv, x.shape, g.to(cd), b.to(cd), cd, channels_last, z=z)
            y = xv * (torch.sqrt(n) if inverse else torch.rsqrt(n))
            return _image_view(y, x.shape, channels_last)
        xv = _pixels_view(x, channels_last)
        n = _norm(xv, x.shape, g.to(cd), b.to(cd), cd, channels_last)
        n = n.sqrt_() if inverse else n.rsqrt_()
        y = n.mul_(xv) if n.dtype == x.dtype else torch.mul(xv, n)
    return _image_view(y, x.shape, channels_last)


def _pixels_view(x, channels_last):
    """x as [N*H*W, C] (channels_last) or [N, C, H*W] (NCHW): a view, no copy."""
    N, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(N * H * W, C) if channels_last else x.view(N, C, H * W)


def _image_view(t, shape, channels_last):
    N, C, H, W = shape
    return t.view(N, H, W, C).permute(0, 3, 1, 2) if channels_last else t.view(N, C, H, W)


def _norm(xv, shape, gc, bc, cd, channels_last, z=None):
    """n = beta + gamma (x^2) in dtype cd, laid out like ``xv`` (fresh tensor).

    x^2 goes into a reused scratch buffer unless ``z`` (x^2 in dtype cd) is given. The GEMM: oneDNN's 1x1 convolution for fp32 and for
    channels_last; addmm / baddbmm for half-precision NCHW (the convolution reorders x there).
    """
    N, C, H, W = shape
    compiling = torch.compiler.is_dynamo_compiling()
    if z is None and compiling:
        z = torch.mul(xv, xv).to(cd)   # (no out=: what torch.compile traces is functional)
    elif z is None:
        z = _scratch(xv.shape, cd, xv.device)
        torch.mul(xv, xv, out=z)
    if compiling or cd == torch.float32 or channels_last:
        # (under dynamo the bias added apart: torch 2.11's inductor failed to lower a convolution
        # whose bias is a slice of a computed tensor, a slimmable GDN's, "SliceView")
        n = F.conv2d(_image_view(z, shape, channels_last), gc[:, :, None, None],
                     None if compiling else bc)
        if compiling:
            n = n + bc[None, :, None, None]
        return _pixels_view(n, channels_last) if channels_last else n.reshape(N, C, H * W)
    if N == 1:
        return torch.addmm(bc[:, None], gc, z[0]).unsqueeze(0)
    return torch.baddbmm(bc[None, :, None], gc.expand(N, C, C), z)


class _GDNCpuFunction(torch.autograd.Function):
    """GDN / IGDN on CPU with a hand-written backward.

    Saves x, the effective gamma and r = n^(-1/2) (GDN) or n^(1/2) (IGDN), one activation-sized
    tensor besides x (eager autograd keeps x^2, the norm and its rsqrt). Backward:
    ``dn = -1/2 dy x r^3`` (GDN) / ``1/2 dy x / r`` (IGDN), ``dx = dy r + 2 x (gamma^T dn)``
    (one fused addcmul), ``dgamma = dn z^T``, ``dbeta = sum dn``, with the constant factor of
    ``dn`` applied to the small results instead of the activation; the GEMMs in the forward's
    compute dtype (bf16 under autocast, as the eager convolution's backward).
    """

    @staticmethod
    def forward(ctx, x, bk, gk, inverse, cd, channels_last):
        if _avx2_training_covers(x, bk, gk, cd, channels_last):
            global last_cpu_path
            last_cpu_path = "avx2-train"
            # the fp32 AVX2 kernel writes y and the factors r in one pass (the composition
            # below: x^2, GEMM, rsqrt, product): 8x192x32x32 5.2 -> 3.5 ms
            ri = torch.empty_like(x, memory_format=torch.channels_last)
            y = _run_kernel(_avx2_kernels().gdn_forward_avx2, x.detach(), bk.detach(),
                            gk.detach(), "channels_last", inverse, (None,) * 4, 1, r=ri)
            r = _pixels_view(ri, True)
        else:
            with torch.autocast("cpu", enabled=False):
                xv = _pixels_view(x, channels_last)
                r = _norm(xv, x.shape, gk.detach().to(cd), bk.detach().to(cd), cd,
                          channels_last)
                if torch.compiler.is_dynamo_compiling():   # (dynamo refuses to save the
                    r = r.sqrt() if inverse else r.rsqrt()   # in-place result, an alias, for
                else:                                         # backward)
                    r = r.sqrt_() if inverse else r.rsqrt_()
                y = _image_view(torch.mul(xv, r), x.shape, channels_last)
        ctx.save_for_backward(x, gk, r)
        ctx.inverse, ctx.cd, ctx.channels_last = inverse, cd, channels_last
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gk, r = ctx.saved_tensors
        cd, cl = ctx.cd, ctx.channels_last
        N, C, H, W = x.shape
        with torch.autocast("cpu", enabled=False):
            dy = dy.contiguous(memory_format=torch.channels_last if cl else
                               torch.contiguous_format)
            xv, dyv = _pixels_view(x, cl), _pixels_view(dy, cl)
            # u = dn / k: GDN u = dy x r^3 (k = -1/2), IGDN u = dy x / r (k = 1/2); k is folded
            # into the addcmul and the small dgamma / dbeta results: 4 fewer activation passes
            # than computing dn itself (and dy r once for both)
            need_x = ctx.needs_input_grad[0]
            dyr = torch.mul(dyv, r)
            if ctx.inverse:
                u, k = torch.mul(dyv, xv).div_(r), 0.5
            else:
                u, k = torch.mul(dyr, xv).mul_(r).mul_(r), -0.5
            uc, gc = u.to(cd), gk.detach().to(cd)
            dx = dgk = dbk = None
            if need_x:
                dz = torch.mm(uc, gc) if cl else torch.matmul(gc.t(), uc)
                dx = dyr.addcmul_(xv, dz, value=2.0 * k) if dyr.dtype == dz.dtype or \
                    dyr.dtype == torch.float32 else dyr + (2.0 * k) * xv * dz
                dx = _image_view(dx.to(x.dtype), x.shape, cl)
            if ctx.needs_input_grad[2]:
                z = torch.mul(xv, xv).to(cd)
                dgk = (torch.mm(uc.t(), z) if cl else
                       torch.matmul(uc, z.transpose(1, 2)).sum(0)).mul_(k).to(gk.dtype)
            if ctx.needs_input_grad[1]:
                dbk = (u.sum(0) if cl else u.sum((0, 2))).mul_(k).to(gk.dtype)
        return dx, dbk, dgk, None, None, None


# ------------------------------------------------------------------- fused CPU kernel (AMX)
_CK_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def _no_scalars(scalars) -> bool:
    """Whether the four SlimGDN+ scalars are all None."""
    a, b, c, d = scalars
    return a is None and b is None and c is None and d is None


def cpu_kernels_available() -> bool:
    """True when the fused CPU kernel can run here: the ``slimkernels._cpu_kernels`` extension
    was built and the CPU/OS support AMX-BF16 (and :data:`USE_CPU_KERNELS` / the env switch
    ``SLIMKERNELS_CPU_KERNELS`` do not turn it off)."""
    return USE_CPU_KERNELS and _fused_kernels() is not None


def _scalar(v):
    """A SlimGDN+ scalar as a Python float (None -> None); None if it cannot be one."""
    if v is None or isinstance(v, (int, float)):
        return v
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.detach().reshape(()).double())
    return None


def _params_readable(beta, gamma, C: int) -> bool:
    """Whether the CPU GDN kernels can read these parameters at ``C`` channels: CPU tensors,
    gamma ``[>=C, >=C]`` and beta ``[>=C]``, fp32 or bf16 (any strides)."""
    return (beta.is_cpu and gamma.is_cpu and beta.dtype in _CK_DTYPES and
            gamma.dtype in _CK_DTYPES and gamma.dim() == 2 and beta.dim() == 1 and
            gamma.shape[0] >= C and gamma.shape[1] >= C and beta.shape[0] >= C)


def _kernel_operands(x, beta, gamma) -> bool:
    """Whether the CPU GDN kernels can read these operands: x a non-empty fp32 or bf16 CPU
    tensor, the parameters :func:`_params_readable` at x's channels."""
    return x.is_cpu and x.dtype in _CK_DTYPES and x.numel() > 0 and \
        _params_readable(beta, gamma, x.shape[1])


def _kernel_scalars(scalars):
    """The four SlimGDN+ scalars as the kernels take them (floats, None for absent ones), or
    None when one is given but is not a number (:func:`_scalar`)."""
    if _no_scalars(scalars):
        return scalars
    out = tuple(None if s is None else _scalar(s) for s in scalars)
    return None if any(s is not None and v is None for s, v in zip(scalars, out)) else out


def _fused_cpu_layout(x, beta, gamma, scalars):
    """``"nchw"`` / ``"channels_last"`` when the fused kernel covers this call, else None.

    Covered: CPU tensors, x fp32 or bf16, NCHW-contiguous or channels_last, gamma and beta fp32
    or bf16 (any strides), no autograd needed (no tensor requires grad, or grad mode off), CPU
    autocast off or bf16 (fp32 x then gets a single bf16 product, the autocast GEMM precision,
    and an fp32 result), scalars None / numbers / one-element tensors.
    """
    if not _kernel_operands(x, beta, gamma):
        return None
    plain = _no_scalars(scalars)   # SlimGDN / SwitchGDN: nothing to check
    if torch.is_grad_enabled() and (x.requires_grad or beta.requires_grad or gamma.requires_grad
                                    or (not plain and any(isinstance(s, torch.Tensor) and
                                                          s.requires_grad for s in scalars))):
        return None
    if _compute_dtype(x) not in (x.dtype, torch.bfloat16):  # bf16 autocast: one bf16 product
        return None
    if not plain and _kernel_scalars(scalars) is None:
        return None
    if x.is_contiguous():
        return "nchw"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return None


def gdn_cpu_fused(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, *,
                  inverse: bool = False, gamma_scale=None, gamma_bias=None, beta_scale=None,
                  beta_bias=None, layout: Optional[str] = None) -> torch.Tensor:
    """GDN / IGDN in one fused C++ kernel on AMX-BF16 tiles (forward only, no autograd).

    Reads x once and writes y once: per block of pixels x^2 goes into a small per-thread bf16
    buffer, the channel mixing ``beta + gamma z`` runs on AMX tiles with fp32 accumulation, and
    ``y = x * rsqrt(n)`` (IGDN ``x * sqrt(n)``) is written from the tile results. gamma[:C, :C]
    and beta[:C] are read in place (any strides) with the SlimGDN+ scalars applied while packing.
    Pixels are split across ``torch.get_num_threads()`` threads.

    Precision: bf16 x: z and gamma rounded to bf16 (as the eager bf16 convolution), fp32
    accumulation, epilogue in fp32, y rounded once (fp32 x under bf16 CPU autocast: the same
    single bf16 product, fp32 output, as autocast's bf16 GEMM). fp32 x: "bf16x3" -- z and
    gamma split into bf16 hi + lo parts and ``n = z_hi g_hi + z_lo g_hi + z_hi g_lo``
    accumulated in fp32; with z >= 0 and gamma >= 0 (GDN's reparameterization) the relative
    error of n is at most ~3 * 2^-18 (measured max relative error of y vs float64 on the
    benchmark shapes: 1.9e-6 - 3.2e-6 elementwise), the CPU analogue of TF32 on the GPU path.
    rsqrt: rsqrt14 + one Newton step (~1e-7); for a bf16 channels_last y rsqrt14 alone
    (< 2^-14 relative, 64x below the rounding of y to bf16; GDN 1.1-1.23x faster at 128x192
    pixels on the AMX VM, IGDN 1.0-1.05x).

    Args:
        x: ``[N, C, H, W]`` fp32 or bf16 CPU tensor, contiguous NCHW or channels_last.
        beta, gamma: ``[C_max]`` / ``[C_max, C_max]`` fp32 or bf16 CPU tensors.
        layout: ``"nchw"`` / ``"channels_last"`` (None: detected).
        Other args as :func:`gdn`.

    Returns:
        ``[N, C, H, W]`` tensor, x's dtype and memory format.

    Raises:
        RuntimeError: the extension is missing or AMX is unavailable (check
            :func:`cpu_kernels_available` first; :func:`gdn` does and falls back).
        ValueError: a call the kernel does not cover (see :func:`gdn` for the covered set).
    """
    if _fused_kernels() is None:
        raise RuntimeError("slimkernels._cpu_kernels is not available here (not built: reinstall "
                           "slimkernels with a C++17 compiler; no AMX-BF16 on this CPU/OS; or "
                           "SLIMKERNELS_CPU_KERNELS=0): call gdn() or gdn_torch")
    scalars = (gamma_scale, gamma_bias, beta_scale, beta_bias)
    lay = _fused_cpu_layout(x, beta, gamma, scalars)
    if lay is None or (layout is not None and layout != lay):
        raise ValueError("gdn_cpu_fused covers CPU x in fp32/bf16, NCHW-contiguous or "
                         "channels_last, fp32/bf16 parameters, without autograd; use gdn() "
                         f"(it falls back) -- got x {x.dtype} {tuple(x.stride())}, "
                         f"gamma {gamma.dtype}, beta {beta.dtype}")
    return _run_fused(x, beta, gamma, lay, inverse, scalars)


#: NCHW x goes to the AVX2 kernel when it has at least this many channels or at most this many
#: pixels per image: measured on a 2-core EPYC (2 threads, 1xCxHxW fp32, vs gdn_torch, one run):
#: C = 96 / 144 / 192 at 128x192 1.4x / 1.5x / 1.3x faster, C = 48 / 72 at 128x192 1.3x / 1.25x
#: slower (the block transposes), C = 48 / 96 at 32x48 and C = 48 at 64x96 1.2-1.7x faster.
#: On CPUs where ATen runs AVX-512 code (oneDNN's 1x1 convolution is faster there) the wide branch
#: does not pay: measured on a 2-core Zen 4 EPYC (2 threads, fp32 NCHW, gdn_torch time / kernel
#: time, `bench/bench_gdn.py --no-train --threads 2 --widths 192,96,72,48 --cpu-shapes
#: 1x128x192,1x64x96,1x32x48`): C=192 0.78 / 0.91 / 1.04 at 128x192 / 64x96 / 32x48, C=96 0.94 /
#: 1.18 / 1.35, C=48 0.87 / 1.30 / 1.84; so there NCHW goes to the kernel at <= 64x96 pixels with
#: <= 96 channels (``AVX2_NCHW_AVX512_MAX_C``), or at <= 32x48 pixels
#: (``AVX2_NCHW_AVX512_ANY_C_HW``).
AVX2_NCHW_MIN_C = 96
AVX2_NCHW_MAX_SMALL_HW = 64 * 96
AVX2_NCHW_AVX512_MAX_C = 96
AVX2_NCHW_AVX512_ANY_C_HW = 32 * 48


#: bf16 x goes to the AVX2 kernel (widened to fp32 per block, y rounded back once) up to
#: ``AVX2_BF16_MAX_C`` channels at any size, and up to ``AVX2_BF16_SMALL_MAX_C`` channels at most
#: ``AVX2_BF16_SMALL_HW`` pixels per image; elsewhere oneDNN's bf16 1x1 convolution (gdn_torch) is
#: faster. Measured on a 2-core Zen 4 EPYC (AVX512-BF16, no AMX; 2 threads, channels_last,
#: medians of 9 interleaved; `python bench/bench_gdn.py --no-train --force-avx2-bf16 --threads 2
#: --widths 192,96,72,48 --cpu-shapes 1x128x192,1x64x96,1x32x48 --md-name gdn_avx2_bf16`,
#: bench/results/cpu/gdn_avx2_bf16.md), gdn_torch time / kernel time at 128x192 / 64x96 / 32x48:
#: C=48 0.99 / 1.15 / 2.07, C=72 0.91 / 0.92 / 1.33, C=96 0.81 / 0.85 / 1.24, C=192 0.66 / 0.68 /
#: 0.78. In the model (SwitchGDN at w=48 under bf16 autocast) 0.36 -> 0.17 ms at 32x48.
AVX2_BF16_MAX_C = 48
AVX2_BF16_SMALL_MAX_C = 96
AVX2_BF16_SMALL_HW = 32 * 48


def _aten_avx512() -> bool:
    """ATen runs its AVX-512 kernels on this CPU (then oneDNN's GEMMs are AVX-512 too)."""
    return cpu_capability().startswith("AVX512")


def _noamx_kernel(x, beta, gamma, scalars) -> Optional[str]:
    """The one-pass kernel :func:`gdn` runs on this call on a CPU without AMX: ``"avx512-bf16"``
    (bf16 channels_last x on AVX512-BF16 CPUs, ``USE_AVX512_BF16``: any width and size),
    ``"avx2"`` (fp32 x, NCHW where it pays, or channels_last, computed in fp32 (no bf16
    autocast); or other bf16 x with few channels (``AVX2_BF16_MAX_C``,
    ``AVX2_BF16_SMALL_MAX_C``; computed in fp32)), or None (the PyTorch path)."""
    if not USE_CPU_KERNELS or cpu_kernels_available() or _avx2_kernels() is None:
        return None
    C, HW = x.shape[1], x.shape[2] * x.shape[3]
    if x.dtype == torch.bfloat16:
        if USE_AVX512_BF16 and _bf16_kernel_here() and \
                _fused_cpu_layout(x, beta, gamma, scalars) == "channels_last":
            return "avx512-bf16"
        if not (C <= AVX2_BF16_MAX_C or
                (C <= AVX2_BF16_SMALL_MAX_C and HW <= AVX2_BF16_SMALL_HW)):
            return None
    elif x.dtype != torch.float32 or _compute_dtype(x) != torch.float32:
        return None
    lay = _fused_cpu_layout(x, beta, gamma, scalars)
    if lay == "nchw":   # the kernel transposes blocks in and out with scalar loops
        if _aten_avx512():
            ok = HW <= AVX2_NCHW_AVX512_ANY_C_HW or \
                (C <= AVX2_NCHW_AVX512_MAX_C and HW <= AVX2_NCHW_MAX_SMALL_HW)
        else:
            ok = C >= AVX2_NCHW_MIN_C or HW <= AVX2_NCHW_MAX_SMALL_HW
        return "avx2" if ok else None
    return "avx2" if lay == "channels_last" else None


@functools.lru_cache(maxsize=None)
def _bf16_kernel_here() -> bool:
    """The compiled kernels have the AVX512-BF16 GDN and the CPU runs it."""
    K = _avx2_kernels()
    return K is not None and hasattr(K, "gdn_forward_bf16") and bool(K.conv_bf16_available())


def _run_kernel(fn, x, beta, gamma, lay, inverse, scalars, splits, r=None, pack=None):
    """One call of a GDN kernel binding (``gdn_forward``, ``gdn_forward_avx2`` or
    ``gdn_forward_bf16``: the same arguments); y in the layout ``lay`` (x's). ``r`` (AVX2
    kernel, channels_last; optional): a tensor like y that receives the factors ``y / x``.
    ``pack`` (optional): ``"bf16"`` / ``"avx2"`` / ``"amx"``, the kernel's gamma packing, passed
    cached by :func:`_packed_gamma`."""
    N, C, H, W = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last if lay == "channels_last"
                         else torch.contiguous_format)
    gs, gb, bs, bb = scalars if _no_scalars(scalars) else [_scalar(s) for s in scalars]
    packed = None if pack is None else _packed_gamma(pack, gamma, C, gs, gb, splits,
                                                     lay == "channels_last")
    fn(x.data_ptr(), y.data_ptr(), _CK_DTYPES[x.dtype], N, C, H * W, lay == "channels_last",
       gamma.data_ptr(), _CK_DTYPES[gamma.dtype], gamma.stride(0), gamma.stride(1),
       beta.data_ptr(), _CK_DTYPES[beta.dtype], beta.stride(0), 1.0 if gs is None else gs,
       0.0 if gb is None else gb, 1.0 if bs is None else bs, 0.0 if bb is None else bb,
       bool(inverse), splits, torch.get_num_threads(), 0 if r is None else r.data_ptr(),
       0 if packed is None else packed.data_ptr())
    return y


#: name -> (packed size binding, packing binding, element dtype) of the kernels' gamma panels
_PACKINGS = {"bf16": ("gdn_bf16_packed_size", "gdn_pack_bf16", torch.int16),
             "avx2": ("gdn_avx2_packed_size", "gdn_pack_avx2", torch.float32),
             "amx": ("gdn_amx_packed_size", "gdn_pack_amx", torch.int16)}


def _packed_gamma(kind: str, gamma: torch.Tensor, C: int, gs: Optional[float],
                  gb: Optional[float], splits: int = 1, channels_last: bool = True,
                  always: bool = False) -> Optional[torch.Tensor]:
    """gamma_k = ``gamma[:C, :C] * gs + gb`` (``gs``, ``gb``: the SlimGDN+ gamma scalars as
    floats, None for 1 / 0) packed for the AVX512-BF16 (``kind="bf16"``: int16 bf16 panels),
    AVX2 (``"avx2"``: fp32 panels) or AMX (``"amx"``: int16 bf16 parts for ``splits`` 1 or 3, in
    the operand order of ``channels_last`` or NCHW x) kernel, a 1-D CPU tensor, cached while
    gamma keeps its identity, version and storage (the CPU ops' weight cache,
    :mod:`slimkernels.ops._cache`; an inference tensor is packed anew on every call), per width
    and scalars (and, for AMX, splits and layout); None when ``USE_PACKED_GAMMA`` is off or C is
    below ``PACKED_GAMMA_MIN_C``: the kernel packs it in the call then (at C = 192, 26 (bf16)
    and 30 us (AVX2) of a 4x4-pixel call on Zen 4; the AMX kernel keeps one packing per thread,
    which a transform's alternating GDN layers replaced on every call, ~24 us at C = 192).
    ``always``: packed whatever those switches say (the direct AMX conv's fused GDN needs it)."""
    if not always and (not USE_PACKED_GAMMA or C < PACKED_GAMMA_MIN_C):
        return None
    gs, gb = 1.0 if gs is None else gs, 0.0 if gb is None else gb
    amx = kind == "amx"
    K = _fused_kernels() if amx else _avx2_kernels()
    size, pack, dtype = _PACKINGS[kind]
    extra = (splits, channels_last) if amx else ()   # the AMX packing's own parameters

    def build():
        out = torch.empty(getattr(K, size)(C, *extra[:1]), dtype=dtype, device="cpu")
        getattr(K, pack)(gamma.data_ptr(), _CK_DTYPES[gamma.dtype], gamma.stride(0),
                         gamma.stride(1), C, gs, gb, *extra, out.data_ptr())
        return out
    return _cached(("gdn-" + kind, C, gs, gb, *extra), (gamma,), build)


def _avx2_training_covers(x, beta, gamma, cd, channels_last) -> bool:
    """Whether :class:`_GDNCpuFunction` runs its forward on the AVX2 kernel (with the factors
    saved for the backward): the kernel is switched on and available (and AMX is not), x is fp32
    channels_last on the CPU, computed in fp32, with fp32 / bf16 parameters covering its
    channels."""
    if not channels_last or cd != torch.float32 or x.dtype != torch.float32:
        return False
    if not USE_CPU_KERNELS or cpu_kernels_available() or _avx2_kernels() is None:
        return False
    return _kernel_operands(x, beta, gamma)


def _run_avx2(x, beta, gamma, inverse, scalars):
    """The AVX2 kernel (fp32 arithmetic: FMA accumulation, refined reciprocal square root; bf16
    x widened, y rounded to bf16); arguments already validated by :func:`_noamx_kernel`. y in x's
    layout and dtype."""
    lay = "nchw" if x.is_contiguous() else "channels_last"
    return _run_kernel(_avx2_kernels().gdn_forward_avx2, x, beta, gamma, lay, inverse, scalars, 1,
                       pack="avx2")


def _run_avx512_bf16(x, beta, gamma, inverse, scalars):
    """The AVX512-BF16 kernel (bf16 autocast precision: z = x^2 and gamma in bf16, fp32 sums,
    y rounded to bf16 once); arguments already validated by :func:`_noamx_kernel`."""
    return _run_kernel(_avx2_kernels().gdn_forward_bf16, x, beta, gamma, "channels_last",
                       inverse, scalars, 1, pack="bf16")


def _run_fused(x, beta, gamma, lay, inverse, scalars):
    """The AMX kernel; arguments already validated by :func:`_fused_cpu_layout`."""
    return _run_kernel(_fused_kernels().gdn_forward, x, beta, gamma, lay, inverse, scalars,
                       3 if _compute_dtype(x) == torch.float32 else 1, pack="amx")


def _cpu_kernel_gdn(x, beta, gamma, inverse, scalars) -> Optional[torch.Tensor]:
    """y from one of the one-pass CPU kernels when one covers this call (``last_cpu_path`` set
    to it): the AMX kernel where the CPU has it, else :func:`_noamx_kernel`'s; None when none
    does. The conv op's fused GDN asks here first, its own no-grad passes after."""
    global last_cpu_path
    if cpu_kernels_available():
        lay = _fused_cpu_layout(x, beta, gamma, scalars)
        if lay is None:
            return None
        last_cpu_path = "fused"
        return _run_fused(x, beta, gamma, lay, inverse, scalars)
    kernel = _noamx_kernel(x, beta, gamma, scalars)
    if kernel is None:
        return None
    last_cpu_path = kernel
    run = _run_avx512_bf16 if kernel == "avx512-bf16" else _run_avx2
    return run(x, beta, gamma, inverse, scalars)


_SCALAR_NAMES = ("gamma_scale", "gamma_bias", "beta_scale", "beta_bias")


def _check_gdn_scalars(kw: dict, where: str) -> None:
    """The SlimGDN+ scalars among ``kw``: each None, a real number or a one-element float
    tensor (a longer tensor would broadcast over gamma's columns on one path and fail on
    another). Raises ValueError naming the entry."""
    for k in _SCALAR_NAMES:
        v = kw.get(k)
        if v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool)) or \
                (isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point()):
            continue
        raise ValueError(f"{where}: {k} must be a number or a one-element float tensor, "
                         f"got {v!r}")


def _check_gdn_params(beta: torch.Tensor, gamma: torch.Tensor, channels: int,
                      device: torch.device, where: str) -> None:
    """The full effective GDN parameters a GDN over ``channels`` channels on ``device`` reads:
    ``beta`` ``[C_max]`` and ``gamma`` ``[C_max, C_max]`` floating-point tensors on ``device``
    with ``C_max >= channels``. Raises ValueError naming ``where`` (the op and argument) and
    what was wrong."""
    if beta.dim() != 1 or gamma.dim() != 2 or gamma.shape[0] != gamma.shape[1] \
            or beta.shape[0] != gamma.shape[0]:
        raise ValueError(f"{where} expects beta [C_max] and gamma [C_max, C_max], got "
                         f"{tuple(beta.shape)} and {tuple(gamma.shape)}")
    if channels > beta.shape[0]:
        raise ValueError(f"{where}: the GDN runs on {channels} channels but its parameters hold "
                         f"only {beta.shape[0]}: pass beta [>= {channels}] and gamma "
                         f"[>= {channels}, >= {channels}]")
    if not (beta.is_floating_point() and gamma.is_floating_point()):
        raise ValueError(f"{where} expects floating-point beta and gamma, got {beta.dtype} and "
                         f"{gamma.dtype}")
    if beta.device != device or gamma.device != device:
        raise ValueError(f"{where}: x is on {device} but beta on {beta.device} and gamma on "
                         f"{gamma.device}; move the parameters to x's device")


def gdn(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, *, inverse: bool = False,
        gamma_scale=None, gamma_bias=None, beta_scale=None, beta_bias=None,
        backend: Optional[str] = None) -> torch.Tensor:
    """GDN (or IGDN with ``inverse=True``) at the active width ``C = x.shape[1]``.

    Args:
        x: ``[N, C, H, W]``, NCHW or channels_last, fp32 / fp16 / bf16.
        beta: ``[C_max]``, gamma: ``[C_max, C_max]`` full effective parameters (read in place).
        inverse: IGDN (``x * sqrt(n)``) instead of GDN (``x / sqrt(n)``).
        gamma_scale, gamma_bias, beta_scale, beta_bias: SlimGDN+ scalars (None, floats or 0-dim
            tensors, differentiable): ``gamma_k = gamma_scale * gamma[:C, :C] + gamma_bias``,
            ``beta_k = beta_scale * beta[:C] + beta_bias``.
        backend: ``"triton"`` / ``"torch"`` / ``None`` (automatic, see :mod:`slimkernels.backend`):
            CUDA tensors run the fused Triton kernels (:mod:`slimkernels.kernels.gdn`). CPU
            tensors run the fused C++ kernel :func:`gdn_cpu_fused` (AMX-BF16) when
            :func:`cpu_kernels_available` and the call is covered (fp32/bf16 x, NCHW or
            channels_last, fp32/bf16 parameters, no autograd, CPU autocast off or bf16: an fp32
            x then gets one bf16 product and an fp32 result, as autocast's GEMM); on CPUs
            without AMX but with AVX2 + FMA, fp32 x without autograd or autocast (channels_last;
            NCHW where it pays, see ``AVX2_NCHW_MIN_C``) runs a fused fp32 AVX2 kernel
            (csrc/cpu/gdn_avx2.cpp: fp32 accumulation, refined reciprocal square root), and on
            those with AVX512-BF16 bf16 channels_last x without autograd a one-pass bf16 kernel
            (csrc/cpu/gdn_bf16.cpp, ``USE_AVX512_BF16``: bf16 autocast precision, one rounding
            of y); else :func:`gdn_torch` (training, fp16, other layouts). float64 x runs
            :func:`gdn_torch` on either backend (the Triton GDN kernels compute in fp32).

    Precision on CPU: the fused kernel computes the fp32 channel mixing as "bf16x3" (bf16 hi/lo
    splits of x^2 and gamma, fp32 accumulation; relative error of the norm <= ~2^-16, measured
    ~2e-6 max elementwise relative error of y vs float64), the CPU analogue of the GPU path's
    TF32; bf16 x as one bf16 product with fp32 accumulation. ``gdn_torch`` is full fp32.

    Raises:
        TypeError: ``x``, ``beta`` or ``gamma`` is not a ``torch.Tensor`` (e.g. a numpy array).
        ValueError: wrong shapes, C > C_max, non-float dtypes, parameters on another device.

    Returns:
        ``[N, C, H, W]`` tensor, same dtype as ``x`` (an input without pixels, N, H or W = 0:
        an empty one).
    """
    refuse_jit_trace("gdn")
    check_tensor_args("gdn", x=x, beta=beta, gamma=gamma)
    inverse = as_flag(inverse, "inverse", "gdn")
    if x.dim() != 4:
        raise ValueError(f"gdn expects x of shape [N, C, H, W], got {tuple(x.shape)}")
    C = x.shape[1]
    if C == 0:
        raise ValueError(f"gdn: x {tuple(x.shape)} has no channels: the active width must be "
                         f">= 1")
    if not x.is_floating_point():
        raise ValueError(f"gdn expects floating-point x, beta, gamma, got {x.dtype}, "
                         f"{beta.dtype}, {gamma.dtype}")
    _check_gdn_params(beta, gamma, C, x.device, "gdn")
    kw = dict(inverse=inverse, gamma_scale=gamma_scale, gamma_bias=gamma_bias,
              beta_scale=beta_scale, beta_bias=beta_bias)
    _check_gdn_scalars(kw, "gdn")
    if x.shape[-2] == 0 or x.shape[-1] == 0:   # no pixels (a pointwise op: an empty result, as
        return x.clone()                       # for N = 0; the 1x1 conv inside refused them)
    if functorch_transform(x, beta, gamma, gamma_scale, gamma_bias, beta_scale, beta_bias):
        # (torch.func, forward AD: PyTorch's own ops, which they see through)
        resolve_backend(x, backend)   # (its checks of the name)
        return gdn_reference(x, beta, gamma, **kw)
    if resolve_backend(x, backend) == "triton" and x.dtype != torch.float64:
        from ..kernels.gdn import gdn_triton
        return gdn_triton(x, beta, gamma, **kw)
    global last_cpu_path
    scalars = (gamma_scale, gamma_bias, beta_scale, beta_bias)
    if x.is_cpu:
        y = _cpu_kernel_gdn(x, beta, gamma, inverse, scalars)
        if y is not None:
            return y
        if half_without_onednn(x):   # (float32, rounded: see half_without_onednn)
            with torch.autocast("cpu", enabled=False):
                y = gdn(x.float(), beta, gamma, backend=backend, **kw)
            return y.to(x.dtype)
        last_cpu_path = "torch"
    return gdn_torch(x, beta, gamma, **kw)


def half_without_onednn(x: torch.Tensor) -> bool:
    """Whether the channel mixing of a CPU GDN of ``x`` would be a half-precision GEMM (x bf16 /
    fp16, or fp32 under half autocast) on a CPU where torch's oneDNN does not compute that dtype
    (:func:`slimkernels.ops._raw.onednn_half`: no AVX-512). There the GDN ops compute in float32
    and round the result to x's dtype: ATen's fallback GEMMs made a bf16 GDN of
    [1, 96, 128, 192] take 1.1 s (NCHW) / 86 ms (channels_last) against 9-11 ms in float32 on a
    Zen 3 EPYC (2 threads), and its training step 2.5 s against 47 ms ([2, 192, 64, 64])."""
    cd = _compute_dtype(x)
    return x.is_cpu and cd in (torch.bfloat16, torch.float16) and not onednn_half(cd)
