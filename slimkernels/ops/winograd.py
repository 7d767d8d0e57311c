"""Winograd F(4x4, 3x3) convolutions on CPU (AVX2 + FMA): fp32 for inference and training, bf16
for inference on AVX512-BF16 CPUs.

SlimCAE's wide layers are 5x5 stride-2 convs and transposed convs. On a CPU without AMX they are
compute-bound in oneDNN's direct fp32 kernels (~85 % of the FMA peak on a Zen 3 core), so the
only way to make them faster is to do fewer multiplications:

* a stride-``s`` conv whose kernel spans at most 3 taps per phase (``k <= 3s``) is a stride-1
  3x3 correlation over the ``s*s`` polyphase images of x (``K = s*s*C_in`` channels; the 5x5
  kernel is zero-padded to 6x6, 36 taps for 25);
* a stride-``s`` transposed conv with a 3-tap sub-pixel plan is a stride-1 3x3 correlation onto
  ``s*s`` output phases (``s*s*C_out`` channels), as in :func:`conv_transpose2d_subpixel`;
* a 3x3 correlation over 4x4 output tiles costs 36 products per tile and channel pair with
  Winograd's F(4x4, 3x3) against 144 directly: 4x fewer, 2.8x after the zero padding.

Per call: the C++ input transform (``csrc/cpu/winograd.cpp``) writes ``V = B^T d B`` for every
6x6 patch, a batched GEMM (``csrc/cpu/batched_gemm.cpp``: AVX-512, :data:`GEMM_AVX512`, else
AVX2, :data:`GEMM_AVX2`; ``torch.bmm`` with both off) multiplies the 36 ``[tiles, K]`` slices
by the cached transformed weights
``U = G g G^T`` (``[36, K, C_out']``), and the output transform writes ``A^T M A`` (+ bias) into
a channels_last output. The interpolation points are 0, 1, -1, 1/2, -1/2 and infinity. The
result is within ~1e-5 of float64 relative to the output's largest magnitude, about 10x a
direct fp32 conv's error: SlimCAE's 5x5/2 conv on Gaussian data at 48 / 96 / 192 channels
3.8-4.9e-6 / 4.2-5.1e-6 / 5.5-5.9e-6 against 3.5-4.7e-7 for ``F.conv2d`` (4 seeds, 64x96
input); a GDN fused after it up to ~1.6e-5, ~3e-5 with a large gamma.
``slimkernels.ops.conv.CPU_WINOGRAD = False`` runs the direct kernels instead (0.8-3e-6 there).
A non-finite input value reaches every output of the 4x4 output tiles whose 6x6 input tiles
hold it (more pixels than its receptive field: 16 against 9 output pixels for one value of a
5x5/2 conv), and an inf becomes NaN there (inf - inf in the transforms); a direct conv keeps
the inf to its receptive field.

bf16 (AVX512-BF16 CPUs, :func:`gemm_bf16_available`; weights packed by :func:`pack_bf16_pairs`):
the input transform reads bf16 x and writes V rounded to bf16, the GEMM (vdpbf16ps, fp32 sums)
runs at ~2x the fp32 one's rate, the output transform computes in fp32 and rounds y to bf16. The
rounding of both products' operands costs accuracy: against exact float64, 3e-2 (norm) and
~1e-1 of the largest output on Gaussian data (up to 2e-1 on outputs of a few pixels), 10-20x a
direct bf16 conv (~5e-3 on SlimCAE's
activations); the conv op uses it only where that was measured harmless (see
``slimkernels.ops.conv.CPU_WINOGRAD_BF16``). ``conv2d_winograd_reference(...,
operands=torch.bfloat16)`` is that algorithm in float64.

The transformed weights take 4x the memory of the weight slice (36 / 9); they are cached per
(layer, width) by the conv op (:mod:`slimkernels.ops.conv`), which decides where this path runs.
:func:`conv2d_winograd_reference` is the same algorithm in PyTorch ops (any dtype, any device).

Training: :class:`WinogradConv2dFunction` / :class:`WinogradConvTranspose2dFunction` run the
forward and the input gradient (the transposed conv of the output gradient, and vice versa) by
F(4x4, 3x3) on weights transformed per call in fp32, and the weight gradient by F(3x3, 4x4),
the transposed algorithm. The conv op uses them for wide layers with enough tiles
(``slimkernels.ops.conv``).
"""
from __future__ import annotations

import functools
import threading
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .._cpu import cpu_kernels, real_tensors
from .. import _recording
from ._raw import bias_pointer, fp32_cpu_input, torch_avx512

__all__ = ["winograd_available", "winograd_pays", "winograd_conv2d_weight", "winograd_conv_transpose2d_weight",
           "conv2d_winograd", "conv_transpose2d_winograd", "conv2d_winograd_reference",
           "conv_transpose2d_winograd_reference", "winograd_geometry_ok",
           "transform_weight_fp32", "conv2d_weight_fp32", "conv_transpose2d_weight_fp32",
           "conv2d_weight_grad", "conv_transpose2d_weight_grad", "WinogradConv2dFunction",
           "WinogradConvTranspose2dFunction", "pack_bf16_pairs", "gemm_bf16_available",
           "round_gemm"]

#: F(4x4, 3x3) for the points 0, 1, -1, 1/2, -1/2, inf (``Y = A^T [(G g G^T) * (B^T d B)] A``).
_BT = ((0.25, 0, -1.25, 0, 1, 0), (0, -0.25, -0.25, 1, 1, 0), (0, 0.25, -0.25, -1, 1, 0),
       (0, -0.5, -1, 0.5, 1, 0), (0, 0.5, -1, -0.5, 1, 0), (0, 0.25, 0, -1.25, 0, 1))
_G = ((4, 0, 0), (2 / 3, 2 / 3, 2 / 3), (2 / 3, -2 / 3, 2 / 3), (-8 / 3, -4 / 3, -2 / 3),
      (-8 / 3, 4 / 3, -2 / 3), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 0.5, -0.5, 0), (0, 1, 1, 0.25, 0.25, 0),
       (0, 1, -1, 0.125, -0.125, 1))
TILE = 4


def winograd_matrices(dtype=torch.float64, device=None):
    """``(B^T [6, 6], G [6, 3], A^T [4, 6])`` of F(4x4, 3x3) as tensors."""
    return tuple(torch.tensor(m, dtype=dtype, device=device) for m in (_BT, _G, _AT))


@functools.lru_cache(maxsize=1)
def _matrices32() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`winograd_matrices` in fp32, contiguous, built once (handed to the kernels by
    pointer on every training call; never written)."""
    return tuple(m.contiguous() for m in winograd_matrices(dtype=torch.float32))


def _kernels():
    K = cpu_kernels("gdn_avx2_available")  # None when switched off (SLIMKERNELS_CPU_KERNELS=0)
    return K if K is not None and hasattr(K, "winograd_input") else None


def winograd_available() -> bool:
    """True when the compiled AVX2 + FMA transforms can run on this CPU (and are not switched
    off by ``SLIMKERNELS_CPU_KERNELS=0``)."""
    return _kernels() is not None


def _phase_taps(k: int, s: int) -> int:
    return -(-k // s)


def winograd_pays(k: int, stride: int, padding: int, transposed: bool) -> bool:
    """Whether Winograd is worth it for this geometry: it maps (:func:`winograd_geometry_ok`) and
    ``k >= 2 * stride``. A direct conv does ``k^2`` products per output and channel pair (a
    transposed conv ``k^2 / s^2`` per output and ``s^2`` outputs per input pixel: the same ratio),
    F(4x4, 3x3) on the ``s^2`` phases ``2.25 s^2``, so Winograd saves ``k^2 / (2.25 s^2)``: 2.8x
    for SlimCAE's 5x5/2 layers, 4x for a 3x3/1 conv, 1.8x for 4x4/2; at most 1.2x below
    ``k = 2s``, which its transforms do not repay. Zen 4, 96 channels (a review, sitting 21):
    transposed 4x4/2 (p=1) 1.17-1.31x oneDNN and conv 4x4/2 1.09x, but transposed 5x5/3 (p=1)
    0.85x, 6x6/4 0.68x, and 1x1/1, 2x2/2, transposed 2x2/2 0.35-0.56x (at 32 channels)."""
    return winograd_geometry_ok(k, stride, padding, transposed) and k >= 2 * stride


def winograd_geometry_ok(k: int, stride: int, padding: int, transposed: bool) -> bool:
    """Whether a ``k x k`` (transposed) conv with this stride maps onto the 3x3 phase
    correlation: ``ceil(k / stride) <= 3`` taps per phase (conv), a sub-pixel tap plan of at
    most 3 input rows (transposed)."""
    if k < 1 or stride < 1 or padding < 0:
        return False
    if not transposed:
        return _phase_taps(k, stride) <= 3
    from .conv import _subpixel_plan
    _, lo, hi, kc = _subpixel_plan(k, stride, padding)
    return kc <= 3 and hi - lo <= 2


#: Columns of U per GEMM in :func:`_transform_weight`: a float64 block of 36 x 8192 (2.4 MiB)
#: stays in cache; one GEMM into a fresh 42 MiB float64 U (w=192's encoder layer 2) paid 12 ms
#: of page faults and a second pass to round it.
_TRANSFORM_COLUMNS = 8192


def _transform_weight(wc: torch.Tensor) -> torch.Tensor:
    """``[C_out', K, 3, 3]`` (any float dtype) -> ``U [36, K, C_out']`` fp32 (``G g G^T`` in
    float64, then rounded once).

    GEMMs by ``(G kron G) [36, 9]`` of the weight as ``[9, K * C_out']`` (taps, then the
    channels in U's order), in blocks of columns rounded into U as they are made: 5x faster
    than the einsum it replaced (w=192's encoder layer 2, ``[192, 768, 3, 3]``: 12.4 against
    63.5 ms on a Zen 3), which paid for a permuted float64 result and its copy. As accurate:
    every element within one ulp of the correctly rounded fp32 of the exact ``G g G^T`` and
    ~99.3 % of them exactly it (the einsum: ~99.4 %; 24 x 16 random channels against rational
    arithmetic)."""
    _, G, _ = winograd_matrices(device=wc.device)
    GG = torch.kron(G, G)
    co, k = wc.shape[:2]
    n = k * co
    taps = torch.empty(9, n, dtype=torch.float64, device=wc.device)
    taps.view(3, 3, k, co).copy_(wc.detach().permute(2, 3, 1, 0))   # (one pass, any dtype)
    U = torch.empty(36, n, dtype=torch.float32, device=wc.device)
    block = torch.empty(36 * min(n, _TRANSFORM_COLUMNS), dtype=torch.float64, device=wc.device)
    for c0 in range(0, n, _TRANSFORM_COLUMNS):
        c1 = min(n, c0 + _TRANSFORM_COLUMNS)
        part = block[:36 * (c1 - c0)].view(36, c1 - c0)
        torch.mm(GG, taps[:, c0:c1], out=part)
        U[:, c0:c1].copy_(part)
    return U.view(36, k, co)


def _phase_weight_conv(w: torch.Tensor, s: int) -> torch.Tensor:
    """``[C_out, C_in, k, k]`` -> ``[C_out, s*s*C_in, 3, 3]``:
    ``wq[co, (p*s + q)*C_in + ci, a, b] = w[co, ci, s*a + p, s*b + q]`` (zero past k)."""
    co, ci, k, _ = w.shape
    wp = F.pad(w, (0, 3 * s - k, 0, 3 * s - k))
    wq = wp.reshape(co, ci, 3, s, 3, s).permute(0, 3, 5, 1, 2, 4)  # co, p, q, ci, a, b
    return wq.reshape(co, s * s * ci, 3, 3)


def winograd_conv2d_weight(w: torch.Tensor, stride: int) -> torch.Tensor:
    """Transformed weights of a conv for :func:`conv2d_winograd`.

    Args:
        w: ``[C_out, C_in, k, k]`` (the active slice; any float dtype), ``ceil(k/stride) <= 3``.
    Returns:
        ``U [36, stride^2 * C_in, C_out]`` fp32, contiguous.
    """
    if not winograd_geometry_ok(w.shape[-1], stride, 0, False) or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"winograd_conv2d_weight: a {tuple(w.shape[-2:])} kernel at stride "
                         f"{stride} has more than 3 taps per phase; use F.conv2d")
    return _transform_weight(_phase_weight_conv(w.detach(), stride))


def _phase_weight_transposed(w: torch.Tensor, s: int, padding: int) -> Tuple[torch.Tensor, int]:
    """``[C_in, C_out, k, k]`` -> (``[s*s*C_out, C_in, 3, 3]`` with channels (ry, rx, co), the
    row offset ``lo`` of its first tap)."""
    from .conv import _subpixel_plan, _subpixel_weight
    ci, co, k, _ = w.shape
    _, lo, _, kc = _subpixel_plan(k, s, padding)
    w2, _ = _subpixel_weight(w, None, s, padding)                     # (co, ry, rx), ci, kc, kc
    w2 = w2.reshape(co, s * s, ci, kc, kc).transpose(0, 1).reshape(s * s * co, ci, kc, kc)
    return F.pad(w2, (0, 3 - kc, 0, 3 - kc)), lo


def winograd_conv_transpose2d_weight(w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """Transformed weights of a transposed conv for :func:`conv_transpose2d_winograd`.

    Args:
        w: ``[C_in, C_out, k, k]`` (the active slice; any float dtype).
    Returns:
        ``U [36, C_in, stride^2 * C_out]`` fp32 (output channels ordered (ry, rx, co)).
    """
    if not winograd_geometry_ok(w.shape[-1], stride, padding, True) or \
            w.shape[-1] != w.shape[-2]:
        raise ValueError(f"winograd_conv_transpose2d_weight: kernel {tuple(w.shape[-2:])}, "
                         f"stride {stride}, padding {padding} has no 3-tap sub-pixel plan; use "
                         f"F.conv_transpose2d")
    w3, _ = _phase_weight_transposed(w.detach(), stride, padding)
    return _transform_weight(w3)


_FP32 = (torch.float32,)
_FP32_BF16 = (torch.float32, torch.bfloat16)


def _check_x(x: torch.Tensor, name: str, dtypes=_FP32_BF16) -> torch.Tensor:
    """x dense channels_last (``fp32_cpu_input``) of one of ``dtypes``: the forward transforms
    read fp32 or bf16, the weight gradients (and so the training Functions) fp32 only."""
    xc = fp32_cpu_input(x, name, dtypes)
    if not winograd_available():
        raise RuntimeError(f"{name}: the AVX2 + FMA Winograd transforms are not available here "
                           f"(no AVX2, or slimkernels._cpu_kernels did not build); use F.conv2d")
    return xc


def _require_fp32(x: torch.Tensor, name: str) -> None:
    """ValueError unless x is fp32 (the training Functions' check: their forward converts x
    itself, their backward's weight gradient reads fp32 only)."""
    if x.dtype != torch.float32:
        raise ValueError(f"{name}: x must be fp32 (the weight gradient reads fp32 only), got "
                         f"{x.dtype}; cast it, or use conv2d_winograd without gradient for bf16")


#: Tiles per transform -> GEMM -> transform round: as many as keep ``V`` and ``M`` (36 x tiles x
#: (K + N) fp32) within ``CHUNK_U_FACTOR`` times the bytes of the transformed weight ``U``,
#: clamped to [``CHUNK_MIN_BYTES``, ``CHUNK_BYTES``]. Every round reads all of ``U``, so wide
#: layers want few rounds (w=192: U is 21 MB; 32 MB rounds 1.4x faster than 8 MB ones), while
#: narrow layers want rounds that stay in cache when memory is slow (this Zen 3 VM in a slow
#: phase: w=72 1.45x and w=48 1.6x faster with 2 MB rounds than with 32 MB ones; in a fast phase
#: within +-8 % either way). 3x U's bytes (w=144..192: 32 MB, w=96: 16 MB, w=72: 9 MB, w=48:
#: 4 MB) is the compromise: ``python bench/bench_conv_avx2.py --round-mb 2,4,8,16,32``.
#: The workspace (the largest round so far) is kept per thread between calls.
CHUNK_BYTES = 32 << 20
CHUNK_MIN_BYTES = 2 << 20
CHUNK_U_FACTOR = 3.0
#: ... but at least this many tiles (the GEMM's M dimension).
MIN_CHUNK_TILES = 16
_WORKSPACE = threading.local()


def round_tiles(T: int, kdim: int, cp: int) -> int:
    """Tiles per round of a call with ``T`` tiles and a ``[36, kdim, cp]`` transformed weight
    (see ``CHUNK_*``, ``MIN_CHUNK_TILES``). Sized in fp32 bytes for the bf16 algorithm too (its
    U and V take half those bytes, so its rounds are ~4.5x its U's bytes rather than 3x): the bf16 numbers in
    ``conv.CPU_WINOGRAD_BF16`` were measured with these rounds; a bf16 sizing is not measured."""
    chunk = min(CHUNK_BYTES, max(CHUNK_MIN_BYTES, int(CHUNK_U_FACTOR * 4 * 36 * kdim * cp)))
    return min(T, max(MIN_CHUNK_TILES, chunk // (36 * 4 * (kdim + cp))))


def _workspace(n: int) -> torch.Tensor:
    """A per-thread fp32 buffer of >= ``n`` elements, reused across calls (a fresh multi-MB
    tensor per call costs its page faults: ~40 % of the transforms' time). A CPU replay
    (:mod:`slimkernels.cpu_replay`) of a call that used it uses the replaying thread's
    (``_recording.scratch``)."""
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=torch.float32, device="cpu")
        _WORKSPACE.buf = buf
    _recording.scratch(buf, _workspace_bytes)
    return buf


def _workspace_bytes(nbytes: int) -> torch.Tensor:
    """This thread's :func:`_workspace` of at least ``nbytes`` bytes (a replay's scratch)."""
    return _workspace(-(-nbytes // 4))


def release_workspace() -> None:
    """Free this thread's transform buffer (it is reallocated on the next call)."""
    _WORKSPACE.buf = None


#: The 36 products of a round by the AVX-512 batched GEMM (``csrc/cpu/batched_gemm.cpp``: 8-row x
#: 48-column register tiles over the whole K) where the CPU has AVX-512F, else ``torch.bmm``.
#: Zen 4 EPYC, 2 threads, medians of 15 interleaved (``python bench/bench_conv_avx2.py --gemm
#: --repeats 15``), ours vs ``torch.bmm`` at the rounds of SlimCAE's 5x5/2 layers on kodim01
#: ([36 x round tiles x K] x [36 x K x N]): 1.08-1.24x at every width (w=48 enc2, 115 x 192 x
#: 48: 0.356 vs 0.443 ms; w=192 enc2, 242 x 768 x 192: 13.3 vs 14.9 ms), 171-214 GFLOP/s, max
#: error 1.9-3.8e-7 of float64 against bmm's 2.7-6.4e-7 (the reduction sums in blocks of 64).
GEMM_AVX512 = True


def _gemm_avx512() -> bool:
    """:data:`GEMM_AVX512` is on, the kernel is built, the CPU has AVX-512F and torch runs at its
    AVX-512 level here (``ATEN_CPU_CAPABILITY=avx2`` holds these kernels to AVX2 as well)."""
    K = _kernels()
    return GEMM_AVX512 and K is not None and hasattr(K, "batched_gemm_avx512") and \
        bool(K.batched_gemm_avx512_available()) and torch_avx512()


#: ... and where that one does not run (a CPU without AVX-512, or torch held to AVX2 by
#: ``ATEN_CPU_CAPABILITY=avx2``), the AVX2 batched GEMM (4-row x 24-column ymm tiles, the same
#: blocked sums): at least as fast as ``torch.bmm`` (Zen 3 EPYC, 2 threads, medians of 15,
#: ``python bench/bench_conv_avx2.py --gemm --repeats 15``, SlimCAE's rounds on kodim01:
#: 0.98-1.04x at w=192 and 144, 1.07-1.20x at 96-48, both near that CPU's FMA peak, 57-67
#: GFLOP/s; max error 1.9-3.8e-7 of float64 against bmm's 2.7-6.4e-7), and a call of the
#: compiled kernels, so that the CPU replay (:mod:`slimkernels.cpu_replay`) can repeat a
#: transform with Winograd layers there, which it cannot with ``torch.bmm`` in it.
GEMM_AVX2 = True


def _gemm_avx2() -> bool:
    """:data:`GEMM_AVX2` is on, the kernel is built and the CPU has AVX2 + FMA."""
    K = _kernels()
    return GEMM_AVX2 and K is not None and hasattr(K, "batched_gemm_avx2") and \
        bool(K.batched_gemm_avx2_available())


def round_gemm() -> str:
    """Which GEMM the fp32 Winograd rounds run here: ``"avx512"``, ``"avx2"`` or ``"bmm"``
    (``torch.bmm``)."""
    return "avx512" if _gemm_avx512() else "avx2" if _gemm_avx2() else "bmm"


#: bf16 Winograd (transformed weights from :func:`pack_bf16_pairs`) on AVX512-BF16 CPUs:
#: V rounded to bf16 by the input transform, the products by vdpbf16ps with fp32 sums
#: (``batched_gemm_bf16``), the output transform in fp32. Zen 4 EPYC, 2 threads, medians of 11
#: (``python bench/bench_conv_avx2.py --gemm``): 351-416 GFLOP/s at SlimCAE's rounds, 1.8-2.0x
#: the fp32 GEMM.
GEMM_BF16 = True


def gemm_bf16_available() -> bool:
    """:data:`GEMM_BF16` is on, the kernel is built and the CPU has AVX512-BF16 (the bf16
    Winograd path of :func:`conv2d_winograd` / :func:`conv_transpose2d_winograd`). Like the
    other bf16 kernels (image conv, GDN) it is not held back by ``ATEN_CPU_CAPABILITY=avx2``,
    which concerns the fp32 kernels' AVX-512 variants: bf16 has no AVX2 form."""
    K = _kernels()
    return GEMM_BF16 and K is not None and hasattr(K, "batched_gemm_bf16") and \
        bool(K.batched_gemm_bf16_available()) and winograd_available()


def pack_bf16_pairs(U: torch.Tensor) -> torch.Tensor:
    """Transformed weights ``U [B, K, N]`` (fp32; B = 36 for Winograd) -> ``[B, ceil(K/2), N,
    2]`` bf16 (rounded to nearest even), the layout of the bf16 GEMM's right operand: reduction
    rows in pairs, row 2p in slot 0 and row 2p + 1 in slot 1 (zero past an odd K)."""
    if U.dim() != 3:
        raise ValueError(f"pack_bf16_pairs: U must be [B, K, N], got {tuple(U.shape)}")
    kp = -(-U.shape[1] // 2)
    Up = F.pad(U, (0, 0, 0, 2 * kp - U.shape[1])).reshape(U.shape[0], kp, 2, U.shape[2])
    return Up.permute(0, 1, 3, 2).to(torch.bfloat16).contiguous()


def _u_mismatch(U: torch.Tensor, xc: torch.Tensor, fp32_shape: str, pairs_shape: str):
    return ValueError(f"winograd: transformed weight {U.dtype} {tuple(U.shape)} does not fit x "
                      f"{tuple(xc.shape)} (expected fp32 {fp32_shape} or bf16 pairs {pairs_shape})")


def _u_cols(U: torch.Tensor, xc: torch.Tensor) -> int:
    """The GEMM's N of a transformed weight, fp32 ``[36, K, N]`` or bf16 pairs
    ``[36, K/2, N, 2]``."""
    if U.dim() != (4 if U.dtype == torch.bfloat16 else 3):
        raise _u_mismatch(U, xc, "[36, K, N]", "[36, K/2, N, 2]")
    return U.shape[2]


def _check_u(U: torch.Tensor, kdim: int, cp: int, xc: torch.Tensor) -> bool:
    """Validates ``U`` for x; True for bf16 pairs (:func:`pack_bf16_pairs`), False for fp32."""
    bf16 = U.dtype == torch.bfloat16
    want = (36, -(-kdim // 2), cp, 2) if bf16 else (36, kdim, cp)
    if tuple(U.shape) != want or U.dtype not in (torch.float32, torch.bfloat16):
        raise _u_mismatch(U, xc, f"[36, {kdim}, {cp}]", f"[36, {-(-kdim // 2)}, {cp}, 2]")
    if U.device.type != "cpu":
        raise ValueError(f"winograd: the transformed weight is on {U.device}; these kernels run "
                         f"on CPU tensors (transform a CPU weight)")
    if bf16 and not (U.is_contiguous() and gemm_bf16_available()):
        raise ValueError("winograd: bf16 transformed weights need a contiguous tensor and the "
                         "AVX512-BF16 GEMM (gemm_bf16_available()); use fp32 ones")
    return bf16


def _run(xc: torch.Tensor, U: torch.Tensor, bias: Optional[torch.Tensor], s: int, P: int,
         Qh: int, Qw: int, r: int, Ho: int, Wo: int, co: int) -> torch.Tensor:
    K = _kernels()
    N, C, H, W = xc.shape
    th, tw = -(-Qh // TILE), -(-Qw // TILE)
    T = N * th * tw
    kdim, cp = s * s * C, r * r * co
    bf16 = _check_u(U, kdim, cp, xc)
    b, _keep = bias_pointer(bias, co, "winograd")
    nt = torch.get_num_threads()
    tc = round_tiles(T, kdim, cp)
    ws = _workspace(36 * tc * (kdim + cp))
    # y in x's dtype: the output transform rounds a bf16 y itself (no fp32 y and cast pass)
    y = torch.empty((N, co, Ho, Wo), dtype=xc.dtype, device="cpu",
                    memory_format=torch.channels_last)
    # the rounds' GEMM kernel (None: torch.bmm)
    which = "bf16" if bf16 else round_gemm() if U.is_contiguous() else "bmm"
    gemm = None if which == "bmm" else getattr(K, "batched_gemm_" + which)
    xb = xc.dtype == torch.bfloat16   # x and y bf16
    for t0 in range(0, T, tc):
        n = min(tc, T - t0)
        V = ws[:36 * n * kdim]
        V = V.view(torch.bfloat16)[:36 * n * kdim] if bf16 else V
        V = V.view(36, n, kdim)
        M = ws[36 * tc * kdim:36 * tc * kdim + 36 * n * cp].view(36, n, cp)
        K.winograd_input(xc.data_ptr(), N, H, W, C, s, P, th, tw, t0, n, V.data_ptr(), nt,
                         x_bf16=xb, V_bf16=bf16)
        if gemm is not None:
            gemm(V.data_ptr(), U.data_ptr(), M.data_ptr(), 36, n, kdim, cp, nt)
        else:
            torch.bmm(V, U, out=M)
        K.winograd_output(M.data_ptr(), b, N, th, tw, co, r, Ho, Wo, t0, n, y.data_ptr(), nt,
                          y_bf16=xb)
    return y


def conv2d_winograd(x: torch.Tensor, U: torch.Tensor, bias: Optional[torch.Tensor], k: int,
                    stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, w, bias, stride, padding)`` by Winograd F(4x4, 3x3), no gradient.

    Args:
        x: ``[N, C_in, H, W]`` fp32 or bf16 CPU (channels_last avoids a copy).
        U: :func:`winograd_conv2d_weight` of the ``[C_out, C_in, k, k]`` weight at this stride
            (fp32: the fp32 algorithm, bf16 x widened exactly), or that packed by
            :func:`pack_bf16_pairs` (the bf16 algorithm, :func:`gemm_bf16_available` CPUs only:
            ~10x the error of a direct bf16 conv, see the module docstring).
        bias: ``[C_out]`` or None.
        k, stride, padding: the weight's kernel size, and the conv's stride and padding.
    Returns:
        ``[N, C_out, (H + 2p - k)//s + 1, (W + 2p - k)//s + 1]`` in x's dtype, channels_last.
    """
    xc = _check_x(x, "conv2d_winograd")
    _, _, H, W = x.shape
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d_winograd: x {tuple(x.shape)} is smaller than the {k}x{k} "
                         f"kernel with padding {padding}")
    return _run(xc, U, bias, stride, padding, Ho, Wo, 1, Ho, Wo, _u_cols(U, xc))


def conv_transpose2d_winograd(x: torch.Tensor, U: torch.Tensor, bias: Optional[torch.Tensor],
                              k: int, stride: int, padding: int,
                              output_padding: int) -> torch.Tensor:
    """``F.conv_transpose2d(x, w, bias, stride, padding, output_padding)`` by Winograd, no
    gradient (stride-1 3x3 phase correlation, phases interleaved by the output transform).

    Args:
        x: ``[N, C_in, H, W]`` fp32 or bf16 CPU (channels_last avoids a copy).
        U: :func:`winograd_conv_transpose2d_weight` of the ``[C_in, C_out, k, k]`` weight at this
            stride and padding, fp32 or packed by :func:`pack_bf16_pairs` (as in
            :func:`conv2d_winograd`).
        bias: ``[C_out]`` or None.
        k, stride, padding, output_padding: as in ``F.conv_transpose2d`` (k: the weight's).
    Returns:
        ``[N, C_out, (H-1)*s - 2p + k + op, (W-1)*s - 2p + k + op]`` in x's dtype, channels_last.
    """
    from .conv import _subpixel_plan
    xc = _check_x(x, "conv_transpose2d_winograd")
    s = stride
    _, lo, _, _ = _subpixel_plan(k, s, padding)
    _, _, H, W = x.shape
    Ho = (H - 1) * s - 2 * padding + k + output_padding
    Wo = (W - 1) * s - 2 * padding + k + output_padding
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv_transpose2d_winograd: empty output for x {tuple(x.shape)}")
    co = _u_cols(U, xc) // (s * s)
    return _run(xc, U, bias, 1, -lo, -(-Ho // s), -(-Wo // s), s, Ho, Wo, co)


# -- training: autograd Functions on weights that change every step -------------------------------
def _gg(t: torch.Tensor) -> torch.Tensor:
    """``[9, n]`` fp32 (3x3 taps per column) -> ``[36, n]`` = ``G g G^T`` per column: the AVX2
    kernel (``csrc/cpu/winograd.cpp``, ~4x torch's GEMM with its inner dimension of 9), else
    ``(G (x) G) @ t``."""
    K = _kernels()
    _, G, _ = _matrices32()
    if K is None or not hasattr(K, "winograd_weight") or t.device.type != "cpu":
        return torch.kron(G, G).to(t.device) @ t  # [i*6 + j, a*3 + b] = G[i, a] * G[j, b]
    t = t.contiguous()
    U = torch.empty(36, t.shape[1], dtype=torch.float32, device="cpu")
    K.winograd_weight(t.data_ptr(), G.data_ptr(), t.shape[1], U.data_ptr(),
                      torch.get_num_threads())
    return U


def transform_weight_fp32(wc: torch.Tensor) -> torch.Tensor:
    """``[C_out', K, 3, 3]`` -> ``U [36, K, C_out']`` fp32 as one GEMM ``(G (x) G) [36, 9] x
    [9, K*C_out']`` (for weights that change every training step: the float64 transform of the
    inference caches takes ~65 ms for a 192-channel 5x5/2 layer). Differs from it by fp32
    rounding. The weight is transposed first (it is 1/4 of U's size), so U is written in order."""
    co, kdim = wc.shape[0], wc.shape[1]
    t = wc.detach().to(torch.float32).permute(2, 3, 1, 0).reshape(9, kdim * co)
    return _gg(t).view(36, kdim, co)


@functools.lru_cache(maxsize=32)
def _taps_conv(k: int, s: int) -> torch.Tensor:
    """int32 ``[s*s, 9]``: phase ``p*s + q``, tap ``a*3 + b`` -> kernel tap ``(s*a + p)*k + s*b +
    q`` (-1 past the kernel), the polyphase split of :func:`_phase_weight_conv`. (A real,
    normal tensor whatever mode asks first, as it is kept for the process: ``real_tensors``.)"""
    idx = np.full((s, s, 3, 3), -1, dtype=np.int32)
    for p in range(s):
        for q in range(s):
            for a in range(3):
                for b in range(3):
                    ky, kx = s * a + p, s * b + q
                    if ky < k and kx < k:
                        idx[p, q, a, b] = ky * k + kx
    with real_tensors():
        return torch.from_numpy(idx.reshape(s * s, 9))


@functools.lru_cache(maxsize=32)
def _taps_transposed(k: int, s: int, padding: int) -> torch.Tensor:
    """int32 ``[s*s, 9]``: output phase ``ry*s + rx``, tap ``a*3 + b`` -> kernel tap (-1: none),
    the sub-pixel plan of :func:`_phase_weight_transposed` padded to 3x3."""
    from .conv import _subpixel_plan
    idx, _, _, kc = _subpixel_plan(k, s, padding)
    full = np.full((s, s, 3, 3), -1, dtype=np.int32)   # (numpy, then real: see _taps_conv)
    plan = idx.numpy().reshape(s, s, kc, kc)
    full[:, :, :kc, :kc] = np.where(plan == k * k, -1, plan)
    with real_tensors():
        return torch.from_numpy(full.reshape(s * s, 9))


def _kernel_weight(w: torch.Tensor, rows_dim: int, taps: torch.Tensor, U: torch.Tensor,
                   S36: int, Sph: int, Sc: int) -> bool:
    """The AVX2 kernel ``winograd_kernel_weight`` on ``w`` in place (any strides with each
    kernel's taps contiguous): rows = ``w``'s dim ``rows_dim`` (input channels), lanes = the other
    (output channels). False (nothing written) where it cannot run."""
    K = _kernels()
    if K is None or not hasattr(K, "winograd_kernel_weight") or w.device.type != "cpu" or \
            w.dtype != torch.float32 or w.stride(3) != 1 or w.stride(2) != w.shape[3]:
        return False
    lanes_dim = 1 - rows_dim
    _, G, _ = _matrices32()
    K.winograd_kernel_weight(w.data_ptr(), w.shape[2] * w.shape[3], w.shape[rows_dim],
                             w.shape[lanes_dim], w.stride(rows_dim), w.stride(lanes_dim),
                             taps.shape[0], taps.data_ptr(), G.data_ptr(), U.data_ptr(), S36, Sph,
                             Sc, torch.get_num_threads())
    return True


def conv2d_weight_fp32(w: torch.Tensor, stride: int) -> torch.Tensor:
    """:func:`winograd_conv2d_weight` in fp32 for training (see :func:`transform_weight_fp32`):
    ``[C_out, C_in, k, k]`` -> ``U [36, s*s*C_in, C_out]``. On AVX2 CPUs one pass of
    ``winograd_kernel_weight`` reads the weight (a slice of a larger one in place) and writes U;
    elsewhere (e.g. a channels_last weight) :func:`transform_weight_fp32` of the polyphase split
    that the inference path builds too."""
    co, ci, k, _ = w.shape
    s = stride
    w = w.detach()
    U = torch.empty(36, s * s * ci, co, dtype=torch.float32, device="cpu")
    if _kernel_weight(w, 1, _taps_conv(k, s), U, s * s * ci * co, ci * co, co):
        return U
    return transform_weight_fp32(_phase_weight_conv(w, s))


def conv_transpose2d_weight_fp32(w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """:func:`winograd_conv_transpose2d_weight` in fp32 for training: ``[C_in, C_out, k, k]`` ->
    ``U [36, C_in, s*s*C_out]`` (output channels (ry, rx, co)); on AVX2 CPUs in one pass of
    ``winograd_kernel_weight``, elsewhere :func:`transform_weight_fp32` of the sub-pixel phase
    weight that the inference path builds too."""
    ci, co, k, _ = w.shape
    s = stride
    w = w.detach()
    U = torch.empty(36, ci, s * s * co, dtype=torch.float32, device="cpu")
    if _kernel_weight(w, 0, _taps_transposed(k, s, padding), U, ci * s * s * co, co, s * s * co):
        return U
    return transform_weight_fp32(_phase_weight_transposed(w, s, padding)[0])


def _wgrad_phases(xc: torch.Tensor, gy: torch.Tensor, r: int, Qh: int, Qw: int, s: int,
                  P: int, dw: torch.Tensor, taps: torch.Tensor, strides: Tuple[int, int]
                  ) -> torch.Tensor:
    """Weight gradient of the stride-1 3x3 phase correlation behind a Winograd conv, by
    F(3x3, 4x4) (the transposition of F(4x4, 3x3): the same input transform B^T d B, the output
    gradient's 4x4 tiles transformed by A (6x4), the sum over tiles a GEMM, then G^T . G):

        dwq[c', k, a, b] = sum_{n, y, x} g[n, c', y, x] * d[n, k, y + a, x + b]

    with d the ``s*s`` polyphase images of x offset by ``P`` (as the forward's input transform)
    and g the output gradient on ``r x r`` phase grids of ``Qh x Qw`` (channels (ry, rx, co)).
    The inverse transform writes each ``dwq[c', k]`` straight to its taps of the caller's weight
    gradient (no permuting copy: 5.8 ms of 18.5 for w=192 enc2 before).

    Args:
        xc: the forward's input, ``[N, C, H, W]`` dense channels_last fp32.
        gy: the output gradient ``[N, Co, Ho, Wo]`` dense channels_last fp32.
        dw: the weight gradient to write, contiguous fp32 (``[Co, C, k, k]`` or ``[C, Co, k,
            k]``; uninitialized is fine: ``taps`` covers every offset).
        taps: int32 ``[phases, 9]``: phase (``p*s + q`` of x, or ``ry*r + rx`` of the output),
            3x3 tap -> offset in a ``[k, k]`` kernel, -1 for none; every offset exactly once
            (:func:`_taps_conv`, :func:`_taps_transposed`: true of every geometry
            :func:`winograd_geometry_ok` admits, checked by tests/ops/test_winograd.py).
        strides: ``dw``'s strides for the input channel ``c`` and the output channel ``co``.
    Returns:
        ``dw``.
    """
    K = _kernels()
    N, C, H, W = xc.shape
    co, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    th, tw = -(-Qh // TILE), -(-Qw // TILE)
    T, kdim, cp = N * th * tw, s * s * C, r * r * co
    _, G, AT = _matrices32()
    nt = torch.get_num_threads()
    ug = torch.empty(36, T, cp, dtype=torch.float32, device="cpu")
    K.winograd_grad_tiles(gy.data_ptr(), N, Ho, Wo, co, r, th, tw, AT.data_ptr(), ug.data_ptr(),
                          nt)
    M = torch.empty(36, kdim, cp, dtype=torch.float32, device="cpu")
    chunk = min(CHUNK_BYTES, max(CHUNK_MIN_BYTES, int(CHUNK_U_FACTOR * 4 * M.numel())))
    tc = min(T, max(MIN_CHUNK_TILES, chunk // (36 * 4 * kdim)))
    ws = _workspace(36 * tc * kdim)
    for t0 in range(0, T, tc):
        n = min(tc, T - t0)
        V = ws[:36 * n * kdim].view(36, n, kdim)
        K.winograd_input(xc.data_ptr(), N, H, W, C, s, P, th, tw, t0, n, V.data_ptr(), nt)
        if t0 == 0:
            torch.bmm(V.transpose(1, 2), ug[:, :n], out=M)
        else:
            M.baddbmm_(V.transpose(1, 2), ug[:, t0:t0 + n])
    assert dw.is_contiguous() and dw.dtype == torch.float32 and taps.dtype == torch.int32
    K.winograd_weight_grad(M.data_ptr(), G.data_ptr(), kdim * cp, dw.data_ptr(), nt,
                           taps.data_ptr(), cp, C, co, strides[0], strides[1])
    return dw


def conv2d_weight_grad(x: torch.Tensor, gy: torch.Tensor, k: int, stride: int,
                       padding: int) -> torch.Tensor:
    """Weight gradient of ``F.conv2d(x, w, stride, padding)`` (``w`` ``[C_out, C_in, k, k]``,
    ``ceil(k/stride) <= 3``) by Winograd F(3x3, 4x4) on the polyphase split: 2.8x fewer products
    than the direct sum. x ``[N, C_in, H, W]``, gy ``[N, C_out, H_out, W_out]`` fp32 CPU
    (channels_last avoids copies) -> ``[C_out, C_in, k, k]`` fp32."""
    xc = _check_x(x, "conv2d_weight_grad", _FP32)
    s, C, co = stride, x.shape[1], gy.shape[1]
    gy = fp32_cpu_input(gy, "conv2d_weight_grad (gy)")
    dw = torch.empty(co, C, k, k, dtype=torch.float32, device="cpu")   # every tap written once
    return _wgrad_phases(xc, gy, 1, gy.shape[2], gy.shape[3], s, padding, dw,
                         _taps_conv(k, s), (k * k, C * k * k))


def conv_transpose2d_weight_grad(x: torch.Tensor, gy: torch.Tensor, k: int, stride: int,
                                 padding: int) -> torch.Tensor:
    """Weight gradient of ``F.conv_transpose2d(x, w, stride, padding, output_padding)`` (``w``
    ``[C_in, C_out, k, k]`` with a 3-tap sub-pixel plan) by Winograd F(3x3, 4x4) over its output
    phases. x ``[N, C_in, H, W]``, gy ``[N, C_out, H_out, W_out]`` fp32 CPU -> ``[C_in, C_out,
    k, k]`` fp32."""
    from .conv import _subpixel_plan
    xc = _check_x(x, "conv_transpose2d_weight_grad", _FP32)
    s, ci, co = stride, x.shape[1], gy.shape[1]
    Ho, Wo = gy.shape[2], gy.shape[3]
    _, lo, _, _ = _subpixel_plan(k, s, padding)
    gy = fp32_cpu_input(gy, "conv_transpose2d_weight_grad (gy)")
    dw = torch.empty(ci, co, k, k, dtype=torch.float32, device="cpu")   # every tap written once
    return _wgrad_phases(xc, gy, s, -(-Ho // s), -(-Wo // s), 1, -lo, dw,
                         _taps_transposed(k, s, padding), (co * k * k, k * k))


class WinogradConv2dFunction(torch.autograd.Function):
    """Differentiable :func:`conv2d_winograd` for training in fp32 on AVX2 and AVX-512 CPUs.

    ``apply(x, w, b, stride, padding)``: x ``[N, C_in, H, W]`` fp32 CPU, w ``[C_out, C_in, k, k]``
    (a slice view of the full weight is fine: autograd scatters its gradient back), b ``[C_out]``
    or None; returns ``[N, C_out, H_out, W_out]`` fp32 channels_last. The forward and the input
    gradient (a transposed conv of the output gradient: :func:`conv_transpose2d_winograd`) run
    by Winograd F(4x4, 3x3) on weights transformed in fp32 per call
    (:func:`conv2d_weight_fp32`), the weight gradient by F(3x3, 4x4)
    (:func:`conv2d_weight_grad`). No double backward."""

    @staticmethod
    def forward(ctx, x, w, b, stride: int, padding: int):
        """``y = conv2d(x, w, b)`` (shapes in the class docstring), fp32 channels_last."""
        _require_fp32(x, "WinogradConv2dFunction")   # its backward is fp32 only
        k = w.shape[-1]
        U = conv2d_weight_fp32(w, stride)
        y = conv2d_winograd(x.detach(), U, None if b is None else b.detach(), k, stride, padding)
        ctx.save_for_backward(x, w)
        ctx.geom = (stride, padding, b is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        """``(gx, gw, gb, None, None)`` for ``gy`` ``[N, C_out, Ho, Wo]`` (fp32 after a cast):
        gx and gw in x's and w's shapes, gb ``[C_out]`` (None where not needed)."""
        x, w = ctx.saved_tensors
        s, p, has_b = ctx.geom
        k, H, Ho = w.shape[-1], x.shape[2], gy.shape[2]
        gy = fp32_cpu_input(gy.to(torch.float32), "Winograd backward (gy)")
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # d/dx of a stride-s conv: the transposed conv of gy with the same weight, viewed
            # as [C_in' = C_out, C_out' = C_in]; output_padding restores x's size
            op = H - ((Ho - 1) * s - 2 * p + k)
            if 0 <= op < s and op == x.shape[3] - ((gy.shape[3] - 1) * s - 2 * p + k):
                Ut = conv_transpose2d_weight_fp32(w, s, p)
                gx = conv_transpose2d_winograd(gy, Ut, None, k, s, p, op)
            else:  # x's height and width need different output paddings: one call cannot
                gx = torch.ops.aten.convolution_backward(
                    gy, x.detach(), w.detach(), None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                    [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = conv2d_weight_grad(x.detach(), gy, k, s, p)
        if has_b and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None


class WinogradConvTranspose2dFunction(torch.autograd.Function):
    """Differentiable :func:`conv_transpose2d_winograd` for training in fp32 on AVX2 and AVX-512
    CPUs.

    ``apply(x, w, b, stride, padding, output_padding)``: x ``[N, C_in, H, W]`` fp32 CPU, w
    ``[C_in, C_out, k, k]`` (a slice view is fine), b ``[C_out]`` or None; returns ``[N, C_out,
    (H-1)*s - 2p + k + op, ...]`` fp32 channels_last. The input gradient is a stride-s conv of
    the output gradient with the same weight (:func:`conv2d_winograd`); the weight gradient
    comes from :func:`conv_transpose2d_weight_grad`. No double backward."""

    @staticmethod
    def forward(ctx, x, w, b, stride: int, padding: int, output_padding: int):
        """``y = conv_transpose2d(x, w, b)`` (shapes in the class docstring), fp32
        channels_last."""
        _require_fp32(x, "WinogradConvTranspose2dFunction")   # its backward is fp32 only
        k = w.shape[-1]
        U = conv_transpose2d_weight_fp32(w, stride, padding)
        y = conv_transpose2d_winograd(x.detach(), U, None if b is None else b.detach(), k,
                                      stride, padding, output_padding)
        ctx.save_for_backward(x, w)
        ctx.geom = (stride, padding, output_padding, b is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        """``(gx, gw, gb, None, None, None)`` for ``gy`` ``[N, C_out, Ho, Wo]`` (fp32 after a
        cast): gx and gw in x's and w's shapes, gb ``[C_out]`` (None where not needed)."""
        x, w = ctx.saved_tensors
        s, p, op, has_b = ctx.geom
        gy = fp32_cpu_input(gy.to(torch.float32), "Winograd backward (gy)")
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            U = conv2d_weight_fp32(w, s)
            gx = conv2d_winograd(gy, U, None, w.shape[-1], s, p)
        if ctx.needs_input_grad[1]:
            gw = conv_transpose2d_weight_grad(x.detach(), gy, w.shape[-1], s, p)
        if has_b and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


# -- the same algorithm in PyTorch ops (reference; any dtype and device) -------------------------
def _round_operand(t: torch.Tensor, operands: Optional[torch.dtype]) -> torch.Tensor:
    """t rounded as the kernels round the products' operands: to fp32, then to ``operands``."""
    if operands is None:
        return t
    return t.to(torch.float32).to(operands).to(t.dtype)


def _reference(ph: torch.Tensor, wc: torch.Tensor, Qh: int, Qw: int,
               operands: Optional[torch.dtype] = None) -> torch.Tensor:
    """3x3 valid correlation of ``ph [N, K, >= 4*th + 2, >= 4*tw + 2]`` with ``wc [C', K, 3, 3]``
    by F(4x4, 3x3) -> ``[N, C', Qh, Qw]`` (``operands``: see :func:`conv2d_winograd_reference`)."""
    BT, G, AT = winograd_matrices(ph.dtype, ph.device)
    N, Kc = ph.shape[:2]
    th, tw = -(-Qh // TILE), -(-Qw // TILE)
    ph = F.pad(ph, (0, max(0, 4 * tw + 2 - ph.shape[3]), 0, max(0, 4 * th + 2 - ph.shape[2])))
    tiles = ph.unfold(2, 6, 4).unfold(3, 6, 4)[:, :, :th, :tw]          # N, K, th, tw, 6, 6
    V = torch.einsum("ik,nctwkl,jl->ijntwc", BT, tiles, BT).reshape(36, -1, Kc)
    U = torch.einsum("ik,ockl,jl->ijco", G, wc.to(ph.dtype), G).reshape(36, Kc, -1)
    V, U = _round_operand(V, operands), _round_operand(U, operands)
    M = torch.bmm(V, U).reshape(6, 6, N, th, tw, -1)
    Y = torch.einsum("ik,klntwc,jl->ntiwjc", AT, M, AT)                 # N, th, 4, tw, 4, C'
    return Y.reshape(N, th * 4, tw * 4, -1)[:, :Qh, :Qw].permute(0, 3, 1, 2)


def conv2d_winograd_reference(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor],
                              stride: int, padding: int,
                              operands: Optional[torch.dtype] = None) -> torch.Tensor:
    """Pure-PyTorch F(4x4, 3x3) conv (polyphase); x ``[N, C_in, H, W]``, w ``[C_out, C_in, k,
    k]`` -> ``[N, C_out, H_out, W_out]`` in x's dtype. ``operands=torch.bfloat16`` rounds the
    transformed input and weights (the GEMM's operands) to fp32 and then bf16, as the bf16 path
    of :func:`conv2d_winograd` does; everything else in x's dtype (float64 for a reference)."""
    N, C, H, W = x.shape
    k, s, p = w.shape[-1], stride, padding
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    th, tw = -(-Ho // TILE), -(-Wo // TILE)
    # phase (p_, q_) image: ph[t] = x[s*t + p_ - p] for t in [0, 4*th + 2)
    need_h, need_w = s * (4 * th + 2), s * (4 * tw + 2)
    xp = F.pad(x, (p, max(0, need_w - W - p), p, max(0, need_h - H - p)))
    ph = torch.cat([xp[:, :, a::s, b::s][:, :, :4 * th + 2, :4 * tw + 2]
                    for a in range(s) for b in range(s)], 1)
    y = _reference(ph, _phase_weight_conv(w, s), Ho, Wo, operands)
    return y if bias is None else y + bias.to(y.dtype)[:, None, None]


def conv_transpose2d_winograd_reference(x: torch.Tensor, w: torch.Tensor,
                                        bias: Optional[torch.Tensor], stride: int, padding: int,
                                        output_padding: int,
                                        operands: Optional[torch.dtype] = None) -> torch.Tensor:
    """Pure-PyTorch F(4x4, 3x3) transposed conv (sub-pixel phases); x ``[N, C_in, H, W]``, w
    ``[C_in, C_out, k, k]`` -> ``[N, C_out, H_out, W_out]`` in x's dtype (``operands``: see
    :func:`conv2d_winograd_reference`)."""
    N, C, H, W = x.shape
    k, s = w.shape[-1], stride
    co = w.shape[1]
    w3, lo = _phase_weight_transposed(w, s, padding)
    Ho = (H - 1) * s - 2 * padding + k + output_padding
    Wo = (W - 1) * s - 2 * padding + k + output_padding
    Qh, Qw = -(-Ho // s), -(-Wo // s)
    th, tw = -(-Qh // TILE), -(-Qw // TILE)
    # ph[t] = x[t + lo]
    top = max(0, -lo)
    xp = F.pad(x, (top, max(0, 4 * tw + 2 + lo - W), top, max(0, 4 * th + 2 + lo - H)))
    ph = xp[:, :, top + lo:, top + lo:]
    y = _reference(ph, w3, Qh, Qw, operands)                             # N, (ry, rx, co), Qh, Qw
    y = y.reshape(N, s, s, co, Qh, Qw).permute(0, 3, 4, 1, 5, 2).reshape(N, co, Qh * s, Qw * s)
    y = y[:, :, :Ho, :Wo]
    return y if bias is None else y + bias.to(y.dtype)[:, None, None]
