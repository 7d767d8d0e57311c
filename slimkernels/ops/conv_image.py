"""Direct fp32 convolution for inputs with few channels (the image layer) on AVX2 / AVX-512 CPUs.

SlimCAE's first layer is a 9x9 stride-4 conv on the 3-channel image. oneDNN's fp32 kernels run it
at ~60 % of a Zen 3 core's FMA peak (few input channels give its blocked kernels short
reductions). In a channels_last image the ``k*C`` values of one tap row of an output pixel are
contiguous (27 floats for 9x9 on RGB), so ``csrc/cpu/conv_avx2.cpp`` reads them in place, without
an im2col copy: micro-tiles of output pixels x output channels accumulate in registers over the
``k`` tap rows and their ``k*C`` runs (AVX2: 6 pixels x 16 channels in 12 ymm; AVX-512: 8 x 48 in
24 zmm, :data:`FP32_AVX512`). No gradient; the reference is ``F.conv2d``.

The last layer, a 9x9 stride-4 transposed conv onto the 3 image channels, has the mirror problem
(3 output channels): oneDNN runs it as a stride-1 conv onto 48 sub-pixel phase channels with a
zero-padded 3x3 kernel, 1.8x the products of the real taps. :func:`conv_transpose2d_image`
uses only the real taps and turns the layer around: for one kernel row, an input pixel's
``k * C_out`` products (27 for 9x9 onto RGB) land on as many contiguous floats of a
channels_last output row, so micro-tiles of a few input pixels x 32 lanes accumulate over the
input channels from broadcasts of x (no horizontal sums) and are added into row buffers. In bf16
(on AVX512-BF16 CPUs) the same kernel takes two input channels per ``vdpbf16ps`` lane, sums in
fp32 and rounds each output value once: SlimCAE's bf16 output layer on a Zen 4 EPYC at 2/3 of the
products of oneDNN's sub-pixel conv and without its phase shuffle copy.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._cpu import cpu_kernels
from ._raw import bias_pointer, fp32_cpu_input, torch_avx512

__all__ = ["image_conv_available", "image_conv_bf16_available", "pack_image_conv_weight",
           "conv2d_image", "pack_image_conv_transpose_weight", "conv_transpose2d_image"]

#: The kernel keeps micro-tiles of a few pixels x 16-48 channels in registers and reads k*C
#: contiguous values per tap row; it is meant for few input channels (an image).
MAX_INPUT_CHANNELS = 8


def _kernels():
    K = cpu_kernels("gdn_avx2_available")  # None when switched off (SLIMKERNELS_CPU_KERNELS=0)
    return K if K is not None and hasattr(K, "conv_transpose_avx2_forward") else None


def _require(name: str, instead: str):
    K = _kernels()
    if K is None:
        raise RuntimeError(f"{name}: the AVX2 + FMA kernel is not available here (no AVX2, "
                           f"slimkernels._cpu_kernels not built, or SLIMKERNELS_CPU_KERNELS=0); "
                           f"use {instead}")
    return K


def _pair_rows(t: torch.Tensor) -> torch.Tensor:
    """``[..., n, m]`` -> ``[..., ceil(n/2), m, 2]``, contiguous: rows ``2i`` and ``2i + 1`` (a
    zero row for an odd ``n``) interleaved along the last axis, the operand layout of
    ``vdpbf16ps`` (two products per fp32 lane)."""
    t = F.pad(t, (0, 0, 0, t.shape[-2] % 2))
    return t.reshape(*t.shape[:-2], t.shape[-2] // 2, 2, t.shape[-1]).transpose(-1, -2).contiguous()


def _kernel_input(x: torch.Tensor, name: str, instead: str):
    """``(x as a dense channels_last CPU tensor, whether it is bf16, the kernels module)`` for
    the kernel ``name``; errors naming ``instead`` where the kernel cannot take x."""
    xc = fp32_cpu_input(x, name, (torch.float32, torch.bfloat16))
    bf16 = x.dtype == torch.bfloat16
    if bf16 and not image_conv_bf16_available():
        raise RuntimeError(f"{name}: bf16 needs AVX512-BF16 and the compiled CPU kernels (not "
                           f"here, or SLIMKERNELS_CPU_KERNELS=0); use {instead}")
    return xc, bf16, _require(name, instead)


def image_conv_available() -> bool:
    """True when the compiled AVX2 + FMA kernels can run on this CPU (and are not switched off
    by ``SLIMKERNELS_CPU_KERNELS=0``)."""
    return _kernels() is not None


def image_conv_bf16_available() -> bool:
    """True when :func:`conv2d_image` and :func:`conv_transpose2d_image` take bf16 here: the
    compiled kernels are built and on, and the CPU has AVX512-BF16."""
    K = _kernels()
    return K is not None and hasattr(K, "conv_bf16_available") and bool(K.conv_bf16_available())


def pack_image_conv_weight(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[C_out, C_in, k, k]`` (any float dtype) -> the tap layout of :func:`conv2d_image` for x
    of ``dtype``, contiguous, zero past C_out:

    - fp32: ``[ceil(C_out/16), k, k*C_in, 16]`` (``packed[p, ky, kx*C_in + c, j] =
      w[16p + j, c, ky, kx]``);
    - bf16: ``[ceil(C_out/16), k, ceil(k*C_in/2), 16, 2]`` in pairs of the ``k*C_in`` run
      (``packed[p, ky, r // 2, j, r % 2]`` with ``r = kx*C_in + c``; zero for the pad element of
      an odd ``k*C_in``)."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pack_image_conv_weight: dtype {dtype} is not float32 or bfloat16")
    co, ci, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"pack_image_conv_weight: square kernels only, got {kh}x{kw}")
    panels = -(-co // 16)
    wp = F.pad(w.detach().to(dtype), (0, 0, 0, 0, 0, 0, 0, 16 * panels - co))
    wp = wp.reshape(panels, 16, ci, kh, kw).permute(0, 3, 4, 2, 1)   # p, ky, kx, c, j
    wp = wp.reshape(panels, kh, kw * ci, 16)
    return wp.contiguous() if dtype == torch.float32 else _pair_rows(wp)


def _check_packed(wp: torch.Tensor, want: tuple, x: torch.Tensor, k: int, co: int, name: str,
                  packer: str) -> None:
    """ValueError unless ``wp`` is a CPU, contiguous, 32-byte aligned packed weight of shape
    ``want`` in x's dtype (``packer``: the function that makes one)."""
    if not wp.is_cpu or wp.shape != want or wp.dtype != x.dtype or not wp.is_contiguous() or \
            wp.data_ptr() % 32:
        raise ValueError(f"{name}: packed weight {tuple(wp.shape)} {wp.dtype} on {wp.device} "
                         f"does not fit x {tuple(x.shape)} {x.dtype}, k={k}, C_out={co} (pack "
                         f"it with {packer}(w, x.dtype))")


def conv2d_image(x: torch.Tensor, wp: torch.Tensor, bias: Optional[torch.Tensor], k: int,
                 stride: int, padding: int, out_channels: int) -> torch.Tensor:
    """``F.conv2d(x, w, bias, stride, padding)`` for few-channel x, no gradient, in x's dtype
    (fp32 on AVX2 + FMA; bf16 on AVX512-BF16, with fp32 sums and one rounding per output value).

    Args:
        x: ``[N, C_in, H, W]`` fp32 or bf16 CPU, ``C_in <= MAX_INPUT_CHANNELS`` (channels_last
            avoids a copy).
        wp: :func:`pack_image_conv_weight` of the ``[C_out, C_in, k, k]`` weight for x's dtype.
        bias: ``[C_out]`` or None (used in fp32).
        out_channels: ``C_out``.
    Returns:
        ``[N, C_out, (H + 2p - k)//s + 1, (W + 2p - k)//s + 1]`` in x's dtype, channels_last.
    """
    name = "conv2d_image"
    xc, bf16, K = _kernel_input(x, name, "F.conv2d")
    N, C, H, W = x.shape
    co = int(out_channels)
    if C > MAX_INPUT_CHANNELS:
        raise ValueError(f"{name}: x has {C} channels; this kernel is for <= "
                         f"{MAX_INPUT_CHANNELS} (use F.conv2d)")
    panels = -(-co // 16)
    want = (panels, k, -(-(k * C) // 2), 16, 2) if bf16 else (panels, k, k * C, 16)
    _check_packed(wp, want, x, k, co, name, "pack_image_conv_weight")
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{name}: x {tuple(x.shape)} is smaller than the {k}x{k} kernel "
                         f"with padding {padding}")
    b, _keep = bias_pointer(bias, co, name)
    y = torch.empty((N, co, Ho, Wo), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    run = K.conv_bf16_forward if bf16 else \
        K.conv_avx512_forward if _fp32_avx512() else K.conv_avx2_forward
    run(xc.data_ptr(), N, H, W, C, wp.data_ptr(), b, co, k, stride, padding, Ho, Wo,
        y.data_ptr(), torch.get_num_threads())
    return y


#: The transposed kernel is for the image layer: a pixel's products of one kernel row fill
#: ``k * C_out`` lanes (27 of 32 for 9x9 onto RGB); more output channels belong to the GEMM paths.
MAX_OUTPUT_CHANNELS = 3


#: fp32 kernels: the AVX-512 variants (16-lane vectors, 32 registers) where the CPU has AVX-512F,
#: else the AVX2 ones. The conv (:func:`conv2d_image`): 8-pixel x 3-panel tiles (24 zmm
#: accumulators) against 6 x 1 (12 ymm), the same packing; on Zen 4 both reach the FMA peak
#: (enc1 at C = 48-192: 0.98-1.03x, ``conv.CPU_IMAGE_CONV_AVX512``). The transposed conv: Zen 4
#: EPYC (double-pumped AVX-512), kodim01's dec3, 2 threads, medians of 20: AVX2 4.3 / 6.9 / 13.6
#: ms, AVX-512 3.4 / 6.9 / 13.3 at C = 48 / 96 / 192 (``/tmp/tb5.py``-style; oneDNN's fp32
#: sub-pixel conv 4.9 / 10.5 / 19.3).
FP32_AVX512 = True


def _fp32_avx512() -> bool:
    """Whether the fp32 kernels run their AVX-512 variants (:data:`FP32_AVX512`, the CPU, and
    torch's own CPU capability: ``ATEN_CPU_CAPABILITY=avx2`` keeps them to AVX2)."""
    K = _kernels()
    return FP32_AVX512 and K is not None and hasattr(K, "conv_avx512_forward") and \
        bool(K.conv_avx512_available()) and torch_avx512()


def _lanes(k: int, co: int, dtype=torch.float32) -> int:
    """``k * co`` rounded up to the transposed kernel's vector: 16 lanes in bf16 and for the
    AVX-512 fp32 variant (:data:`FP32_AVX512`), 8 for the AVX2 one."""
    v = 16 if dtype == torch.bfloat16 or _fp32_avx512() else 8
    return -(-(k * co) // v) * v


#: The transposed kernel adds pixel ix's lanes into row buffer ix % nb, nb = ceil(lanes / (s*C_out))
#: (3 for 9x9/4 onto RGB); it keeps at most this many.
MAX_ROW_BUFFERS = 64


def transposed_geometry_ok(k: int, stride: int, out_channels: int,
                           dtype: torch.dtype = torch.float32) -> bool:
    """Whether :func:`conv_transpose2d_image` takes a ``k x k`` stride-``stride`` transposed conv
    onto ``out_channels`` channels in ``dtype`` (1 to ``MAX_OUTPUT_CHANNELS``; a very large
    kernel at a small stride needs more row buffers than the kernel keeps)."""
    s, co = int(stride), int(out_channels)
    return 1 <= co <= MAX_OUTPUT_CHANNELS and k >= 1 and s >= 1 and \
        -(-_lanes(k, co, dtype) // (s * co)) <= MAX_ROW_BUFFERS


def pack_image_conv_transpose_weight(w: torch.Tensor,
                                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[C_in, C_out, k, k]`` (any float dtype) -> the tap layout of
    :func:`conv_transpose2d_image` for x of ``dtype``, contiguous, ``L`` = ``k * C_out`` rounded
    up to the kernel's vector (:func:`_lanes`), zero past ``k * C_out``:

    - fp32: ``[k, C_in, L]`` (``packed[ky, c, kx*C_out + o] = w[c, o, ky, kx]``; ``L`` for the
      variant this CPU runs, :data:`FP32_AVX512`);
    - bf16: ``[k, ceil(C_in/2), L, 2]`` in input-channel pairs
      (``packed[ky, c // 2, kx*C_out + o, c % 2] = w[c, o, ky, kx]``, zero for the pad channel
      of an odd ``C_in``)."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"pack_image_conv_transpose_weight: dtype {dtype} is not float32 or "
                         f"bfloat16")
    ci, co, kh, kw = w.shape
    if kh != kw:
        raise ValueError(f"pack_image_conv_transpose_weight: square kernels only, got {kh}x{kw}")
    wp = w.detach().to(dtype).permute(2, 0, 3, 1).reshape(kh, ci, kw * co)  # ky, c, kx*o
    wp = F.pad(wp, (0, _lanes(kw, co, dtype) - kw * co))
    return wp.contiguous() if dtype == torch.float32 else _pair_rows(wp)


def conv_transpose2d_image(x: torch.Tensor, wp: torch.Tensor, bias: Optional[torch.Tensor],
                           k: int, stride: int, padding: int, output_padding: int,
                           out_channels: int) -> torch.Tensor:
    """``F.conv_transpose2d(x, w, bias, stride, padding, output_padding)`` onto 1-3 output
    channels, no gradient, in x's dtype (fp32 on AVX2 + FMA; bf16 on AVX512-BF16, with fp32 sums
    and one rounding per output value).

    Args:
        x: ``[N, C_in, H, W]`` fp32 or bf16 CPU (channels_last avoids a copy).
        wp: :func:`pack_image_conv_transpose_weight` of the ``[C_in, C_out, k, k]`` weight for
            x's dtype.
        bias: ``[C_out]`` or None (used in fp32).
        out_channels: ``C_out`` (1 to ``MAX_OUTPUT_CHANNELS``).
    Returns:
        ``[N, C_out, (H-1)*s - 2p + k + op, (W-1)*s - 2p + k + op]`` in x's dtype, channels_last.
    """
    name = "conv_transpose2d_image"
    xc, bf16, K = _kernel_input(x, name, "F.conv_transpose2d")
    N, C, H, W = x.shape
    co, s = int(out_channels), int(stride)
    if not 1 <= co <= MAX_OUTPUT_CHANNELS:
        raise ValueError(f"{name}: {co} output channels; this kernel is for 1 to "
                         f"{MAX_OUTPUT_CHANNELS} (use F.conv_transpose2d)")
    L = _lanes(k, co, x.dtype)
    want = (k, -(-C // 2), L, 2) if bf16 else (k, C, L)
    _check_packed(wp, want, x, k, co, name, "pack_image_conv_transpose_weight")
    if s >= 1 and not transposed_geometry_ok(k, s, co, x.dtype):
        raise ValueError(f"{name}: a {k}x{k} kernel at stride {s} onto {co} channels needs more "
                         f"than {MAX_ROW_BUFFERS} row buffers (use F.conv_transpose2d)")
    if s < 1 or padding < 0 or not 0 <= output_padding < max(s, 1):
        raise ValueError(f"{name}: stride={s}, padding={padding}, output_padding="
                         f"{output_padding} are not a valid geometry")
    Ho = (H - 1) * s - 2 * padding + k + output_padding
    Wo = (W - 1) * s - 2 * padding + k + output_padding
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{name}: empty output for x {tuple(x.shape)}")
    b, _keep = bias_pointer(bias, co, name)
    y = torch.empty((N, co, Ho, Wo), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    run = K.conv_transpose_bf16_forward if bf16 else \
        K.conv_transpose_avx512_forward if _fp32_avx512() else K.conv_transpose_avx2_forward
    run(xc.data_ptr(), N, H, W, C, wp.data_ptr(), L, b, co, k, s, padding, Ho, Wo, y.data_ptr(),
        torch.get_num_threads())
    return y
