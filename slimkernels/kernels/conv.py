"""Width-sliced convolution and transposed convolution as Triton implicit-GEMM kernels.

Layout of the GEMM (forward conv)::

    M = N * H_out * W_out   output pixels          (program axis 0, BLOCK_M)
    N = C_out               active output channels (program axis 1, BLOCK_N)
    K = C_in * KH * KW      taps x input channels  (loop, BLOCK_K)

Every tensor is addressed through its strides, so

* the active weight slice ``W[:C_out, :C_in]`` is read in place from the full parameter (no copy),
* NCHW and channels_last inputs/outputs both work (channels_last gives unit-stride channel loads),
* any width works: partial tiles are masked, there is no cliff at widths that are not a multiple of
  the tile (the tile sizes are powers of two picked by the autotuner, masking costs one compare).

Two K orders: ``FLAT_K=False`` loops over the KHxKW taps and, inside, over channel blocks (the
fast path: the channel block is contiguous for channels_last); ``FLAT_K=True`` flattens
``(tap, channel)`` into one K axis, which is what a 3-channel input (the first encoder layer, and
the input gradient of the last decoder layer) needs to avoid padding 3 channels to a 16-wide block.

Transposed convolution uses the sub-pixel (phase) decomposition: output pixels with the same
``(oh + pad) % stride`` and ``(ow + pad) % stride`` only meet the taps ``kh = r_h + stride * t``,
so every program handles one phase and loops over ``ceil(KH / stride)^2`` taps only (a plain gather
formulation would mask away ``1 - 1/stride^2`` of its loads: 15/16 for the 9x9 stride-4 layer).

The epilogue adds the bias and, when asked, GDN / IGDN of the output tile:
``norm = beta + (y^2) @ gamma^T`` with a second tensor-core dot, then ``y * rsqrt(norm)`` (GDN) or
``y * sqrt(norm)`` (IGDN), and stores once. That needs every active output channel of a pixel in the
tile (``BLOCK_N >= C_out``). For ``BLOCK_N`` of 128 or 256 the accumulator is split (reshape/split,
in registers) into 64-column chunks and the norm of chunk q is ``sum_j (y_j^2) @ gamma[q, j]^T`` over
64 x 64 gamma operands: a 256 x 256 fp32 gamma operand would need 256 KiB of shared memory and
spills every register file (measured by the AOT test).

References (pure PyTorch) are ``conv2d_reference`` / ``conv_transpose2d_reference`` below.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..backend import interpreter_enabled, tf32_allowed
from .interpreter import check_interpreter
from .configs import (COL2IM_CONFIGS, COL2IM_INTERPRET_CONFIG, CONV_FWD_CONFIGS,
                      CONV_GDN256_CONFIGS, CONV_GDN_CONFIGS, CONV_GDN_SM80_MAX_BLOCK_M,
                      CONV_INTERPRET_CONFIG, to_triton)
from .gdn import _needs_wide, _wide   # (_wide: int64 index math past 2^31 elements)

# GDN epilogue modes
EPI_NONE, EPI_GDN, EPI_IGDN = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# shared epilogue
# ----------------------------------------------------------------------------------------------
@triton.jit
def _round_bf16(v):
    """fp32 -> nearest bf16 value (ties to even), kept in fp32 (finite inputs)."""
    u = v.to(tl.uint32, bitcast=True)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.to(tl.float32, bitcast=True)


@triton.jit
def _norm_part(norm, y, gamma_ptr, offs_j, offs_i, C, sg0, sg1, PRECISION: tl.constexpr,
               DOT16: tl.constexpr):
    """norm += y[:, j]^2 @ gamma[i, j]^T for one (j-chunk, i-chunk) pair. The square is
    recomputed per use (one FMUL) rather than kept live: fewer registers for the 256-wide tile."""
    g = tl.load(gamma_ptr + offs_j[:, None] * sg1 + offs_i[None, :] * sg0,
                mask=(offs_j[:, None] < C) & (offs_i[None, :] < C), other=0.0)
    if DOT16 == 1:  # bf16 operands (16-bit inputs only): half the registers of fp32 operands
        return tl.dot((y * y).to(tl.bfloat16), g.to(tl.bfloat16), norm)
    if DOT16 == 2:  # the same bf16 rounding, dot in fp32 (the interpreter's bf16 casts and dot
        # are broken in triton 3.9): round-to-nearest-even to bf16 on the fp32 bits
        return tl.dot(_round_bf16(y * y), _round_bf16(g.to(tl.float32)), norm)
    return tl.dot(y * y, g.to(y.dtype), norm, input_precision=PRECISION, out_dtype=norm.dtype)


@triton.jit
def _store_part(y_ptr, y, offs_n, pix_off, m_ok, C_out, syc, EPI: tl.constexpr, norm,
                WIDE: tl.constexpr):
    if EPI == 1:
        y = y * tl.math.rsqrt(norm)
    elif EPI == 2:
        y = y * tl.sqrt(norm)
    ptrs = y_ptr + pix_off[:, None] + _wide(offs_n, WIDE)[None, :] * syc
    tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (offs_n[None, :] < C_out))


@triton.jit
def _gdn_store_chunk(y_q, q, z0, z1, z2, z3, NCH: tl.constexpr, CH: tl.constexpr,
                     y_ptr, beta_ptr, gamma_ptr, pix_off, m_ok, C_out, syc, sg0, sg1,
                     EPI: tl.constexpr, PRECISION: tl.constexpr, DOT16: tl.constexpr,
                     WIDE: tl.constexpr):
    """(I)GDN of output-channel chunk q (CH columns) from the column chunks z0..z{NCH-1} of y."""
    offs_i = q * CH + tl.arange(0, CH)
    norm = tl.zeros(y_q.shape, dtype=y_q.dtype)
    norm = _norm_part(norm, z0, gamma_ptr, tl.arange(0, CH), offs_i, C_out, sg0, sg1, PRECISION, DOT16)
    if NCH > 1:
        norm = _norm_part(norm, z1, gamma_ptr, CH + tl.arange(0, CH), offs_i, C_out, sg0, sg1,
                          PRECISION, DOT16)
    if NCH > 2:
        norm = _norm_part(norm, z2, gamma_ptr, 2 * CH + tl.arange(0, CH), offs_i, C_out, sg0,
                          sg1, PRECISION, DOT16)
        norm = _norm_part(norm, z3, gamma_ptr, 3 * CH + tl.arange(0, CH), offs_i, C_out, sg0,
                          sg1, PRECISION, DOT16)
    beta = tl.load(beta_ptr + offs_i, mask=offs_i < C_out, other=1.0).to(y_q.dtype)
    _store_part(y_ptr, y_q, offs_i, pix_off, m_ok, C_out, syc, EPI, norm + beta[None, :], WIDE)


@triton.jit
def _halves(t, BLOCK_M: tl.constexpr, HALF: tl.constexpr):
    """Columns [0, HALF) and [HALF, 2*HALF) of a [BLOCK_M, 2*HALF] register tile."""
    return tl.split(tl.permute(tl.reshape(t, (BLOCK_M, 2, HALF)), (0, 2, 1)))


@triton.jit
def _epilogue(acc, y_ptr, b_ptr, beta_ptr, gamma_ptr, offs_n, pix_off, m_ok, C_out, syc, sg0, sg1,
              HAS_BIAS: tl.constexpr, EPI: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, DOT16: tl.constexpr,
              WIDE: tl.constexpr):
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=offs_n < C_out, other=0.0).to(acc.dtype)
        acc = acc + bias[None, :]
    if EPI == 0:
        _store_part(y_ptr, acc, offs_n, pix_off, m_ok, C_out, syc, 0, acc, WIDE)
    elif BLOCK_N <= 64:
        # the tile holds every active channel (offs_n starts at 0); one gamma operand
        _gdn_store_chunk(acc, 0, acc, acc, acc, acc, 1, BLOCK_N, y_ptr, beta_ptr, gamma_ptr,
                         pix_off, m_ok, C_out, syc, sg0, sg1, EPI, PRECISION, DOT16, WIDE)
    elif BLOCK_N == 128:
        # two 64-column chunks: the gamma operands stay 64 x 64 (small register/smem footprint)
        y0, y1 = _halves(acc, BLOCK_M, 64)
        _gdn_store_chunk(y0, 0, y0, y1, y0, y0, 2, 64, y_ptr, beta_ptr, gamma_ptr, pix_off, m_ok,
                         C_out, syc, sg0, sg1, EPI, PRECISION, DOT16, WIDE)
        _gdn_store_chunk(y1, 1, y0, y1, y0, y0, 2, 64, y_ptr, beta_ptr, gamma_ptr, pix_off, m_ok,
                         C_out, syc, sg0, sg1, EPI, PRECISION, DOT16, WIDE)
    else:
        # BLOCK_N == 256: four 64-column chunks
        ya, yb = _halves(acc, BLOCK_M, 128)
        y0, y1 = _halves(ya, BLOCK_M, 64)
        y2, y3 = _halves(yb, BLOCK_M, 64)
        _gdn_store_chunk(y0, 0, y0, y1, y2, y3, 4, 64, y_ptr, beta_ptr, gamma_ptr, pix_off, m_ok,
                         C_out, syc, sg0, sg1, EPI, PRECISION, DOT16, WIDE)
        _gdn_store_chunk(y1, 1, y0, y1, y2, y3, 4, 64, y_ptr, beta_ptr, gamma_ptr, pix_off, m_ok,
                         C_out, syc, sg0, sg1, EPI, PRECISION, DOT16, WIDE)
        _gdn_store_chunk(y2, 2, y0, y1, y2, y3, 4, 64, y_ptr, beta_ptr, gamma_ptr, pix_off, m_ok,
                         C_out, syc, sg0, sg1, EPI, PRECISION, DOT16, WIDE)
        _gdn_store_chunk(y3, 3, y0, y1, y2, y3, 4, 64, y_ptr, beta_ptr, gamma_ptr, pix_off, m_ok,
                         C_out, syc, sg0, sg1, EPI, PRECISION, DOT16, WIDE)


# ----------------------------------------------------------------------------------------------
# the main loop shared by the conv and transposed-conv kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _tap_channels(acc, a_ptrs, b_ptrs, pix_ok, n_ok, offs_k, C_in, sxc, swi,
                  BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
                  WIDE: tl.constexpr):
    """One kernel tap: ``acc[BLOCK_M, BLOCK_N] += x[pixels, ci] @ w[ci, outs]`` over every
    active input channel, BLOCK_K at a time (``a_ptrs``: the tap's input pixel addresses,
    ``b_ptrs``: its weight addresses per output channel)."""
    for c0 in range(0, C_in, BLOCK_K):
        ci = c0 + offs_k
        c_ok = ci < C_in
        a = tl.load(a_ptrs[:, None] + _wide(ci, WIDE)[None, :] * sxc,
                    mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
        b = tl.load(b_ptrs[None, :] + ci[:, None] * swi,
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        if DOT_UPCAST:  # the interpreter's bf16 dot is broken (triton 3.9): exact fp32 dot
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


# ----------------------------------------------------------------------------------------------
# forward convolution
# ----------------------------------------------------------------------------------------------
@triton.jit
def conv2d_fwd_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, beta_ptr, gamma_ptr,
        N, C_in, H, W, C_out, H_out, W_out, pad,
        sxn, sxc, sxh, sxw, swo, swi, swh, sww, syn, syc, syh, syw, sg0, sg1,
        STRIDE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        HAS_BIAS: tl.constexpr, EPI: tl.constexpr, FLAT_K: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, EPI_PRECISION: tl.constexpr = "ieee",
        EPI_DOT16: tl.constexpr = 0, DOT_UPCAST: tl.constexpr = False, WIDE: tl.constexpr = False):
    """y[n, co, oh, ow] = sum_{ci,kh,kw} x[n, ci, oh*S-pad+kh, ow*S-pad+kw] * w[co, ci, kh, kw]."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    M = N * H_out * W_out
    m_ok = offs_m < M
    n_ok = offs_n < C_out
    img = offs_m // (H_out * W_out)
    rem = offs_m % (H_out * W_out)
    oh = rem // W_out
    ow = rem % W_out
    ih0 = _wide(oh, WIDE) * STRIDE - pad   # (WIDE: int64 offsets within one image)
    iw0 = _wide(ow, WIDE) * STRIDE - pad
    x_base = x_ptr + img.to(tl.int64) * sxn
    w_base = w_ptr + offs_n * swo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    if FLAT_K:
        K_total = C_in * KH * KW
        for k0 in range(0, K_total, BLOCK_K):
            kk = k0 + offs_k
            ci = kk % C_in
            tap = kk // C_in
            kh = tap // KW
            kw = tap % KW
            ih = ih0[:, None] + kh[None, :]
            iw = iw0[:, None] + kw[None, :]
            ok = m_ok[:, None] & (kk[None, :] < K_total) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_base[:, None] + _wide(ci, WIDE)[None, :] * sxc + ih * sxh + iw * sxw,
                        mask=ok, other=0.0)
            b = tl.load(w_base[None, :] + (ci * swi + kh * swh + kw * sww)[:, None],
                        mask=(kk[:, None] < K_total) & n_ok[None, :], other=0.0)
            if DOT_UPCAST:  # the interpreter's bf16 dot is broken (triton 3.9): exact fp32 dot
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    else:
        for tap in range(0, KH * KW):
            kh = tap // KW
            kw = tap % KW
            ih = ih0 + kh
            iw = iw0 + kw
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            acc = _tap_channels(acc, x_base + ih * sxh + iw * sxw, w_base + kh * swh + kw * sww,
                                pix_ok, n_ok, offs_k, C_in, sxc, swi, BLOCK_K, PRECISION,
                                DOT_UPCAST, WIDE)
    pix_off = img.to(tl.int64) * syn + _wide(oh, WIDE) * syh + _wide(ow, WIDE) * syw
    _epilogue(acc, y_ptr, b_ptr, beta_ptr, gamma_ptr, offs_n, pix_off, m_ok, C_out, syc, sg0, sg1,
              HAS_BIAS, EPI, BLOCK_M, BLOCK_N, EPI_PRECISION, EPI_DOT16, WIDE)


# ----------------------------------------------------------------------------------------------
# forward transposed convolution (phase decomposition)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _phase_pixels(pid0, N, H_out, W_out, pad_h, pad_w, STRIDE: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """The BLOCK_M output pixels of program ``pid0`` of a transposed conv's phase grid (programs
    ``phase + STRIDE^2 * block``): image index, phase-grid coordinates (a_i, b_i), output (oh, ow),
    validity, the phase (r_h, r_w) and the input offsets (c_h, c_w) of its tap 0. Any paddings
    (negative ones too: the col2im route's bands)."""
    phase = pid0 % (STRIDE * STRIDE)
    pid_m = pid0 // (STRIDE * STRIDE)
    r_h = phase // STRIDE
    r_w = phase % STRIDE
    # first output row/col of this phase and the input offset of tap 0
    oh0 = ((r_h - pad_h) % STRIDE + STRIDE) % STRIDE
    ow0 = ((r_w - pad_w) % STRIDE + STRIDE) % STRIDE
    c_h = (oh0 + pad_h - r_h) // STRIDE
    c_w = (ow0 + pad_w - r_w) // STRIDE
    Ha = (H_out + STRIDE - 1) // STRIDE
    Wa = (W_out + STRIDE - 1) // STRIDE
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    img = offs_m // (Ha * Wa)
    rem = offs_m % (Ha * Wa)
    a_i = rem // Wa
    b_i = rem % Wa
    oh = oh0 + STRIDE * a_i
    ow = ow0 + STRIDE * b_i
    m_ok = (offs_m < N * Ha * Wa) & (oh < H_out) & (ow < W_out)
    return img, a_i, b_i, oh, ow, m_ok, r_h, r_w, c_h, c_w


@triton.jit
def conv_transpose2d_fwd_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr, beta_ptr, gamma_ptr,
        N, C_in, H, W, C_out, H_out, W_out, pad,
        sxn, sxc, sxh, sxw, swi, swo, swh, sww, syn, syc, syh, syw, sg0, sg1,
        STRIDE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        HAS_BIAS: tl.constexpr, EPI: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr, ACC_DTYPE: tl.constexpr, EPI_PRECISION: tl.constexpr = "ieee",
        EPI_DOT16: tl.constexpr = 0, DOT_UPCAST: tl.constexpr = False, WIDE: tl.constexpr = False):
    """y[n, co, oh, ow] = sum x[n, ci, ih, iw] * w[ci, co, kh, kw] over oh = ih*S - pad + kh."""
    pid_n = tl.program_id(1)
    img, a_i, b_i, oh, ow, m_ok, r_h, r_w, c_h, c_w = _phase_pixels(
        tl.program_id(0), N, H_out, W_out, pad, pad, STRIDE, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < C_out
    x_base = x_ptr + img.to(tl.int64) * sxn
    w_base = w_ptr + offs_n * swo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # taps of this phase: kh = r_h + STRIDE * th for th < ceil((KH - r_h) / STRIDE) (a runtime trip
    # count: no masked, wasted tap iterations when KH is not a multiple of STRIDE)
    n_th = (KH - r_h + STRIDE - 1) // STRIDE
    n_tw = (KW - r_w + STRIDE - 1) // STRIDE
    for t in range(0, n_th * n_tw):
        th = t // n_tw
        tw = t % n_tw
        kh = r_h + STRIDE * th
        kw = r_w + STRIDE * tw
        ih = _wide(a_i - th + c_h, WIDE)
        iw = _wide(b_i - tw + c_w, WIDE)
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        acc = _tap_channels(acc, x_base + ih * sxh + iw * sxw, w_base + kh * swh + kw * sww,
                            pix_ok, n_ok, offs_k, C_in, sxc, swi, BLOCK_K, PRECISION, DOT_UPCAST,
                            WIDE)
    pix_off = img.to(tl.int64) * syn + _wide(oh, WIDE) * syh + _wide(ow, WIDE) * syw
    _epilogue(acc, y_ptr, b_ptr, beta_ptr, gamma_ptr, offs_n, pix_off, m_ok, C_out, syc, sg0, sg1,
              HAS_BIAS, EPI, BLOCK_M, BLOCK_N, EPI_PRECISION, EPI_DOT16, WIDE)


# ----------------------------------------------------------------------------------------------
# transposed convolution with few output columns: a GEMM, then a gather (col2im)
# ----------------------------------------------------------------------------------------------
@triton.jit
def col2im_kernel(
        z_ptr, b_ptr, y_ptr, N, H, W, C_out, H_out, W_out, pad_h, pad_w,
        szn, szc, szh, szw, syn, syc, syh, syw,
        STRIDE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC_DTYPE: tl.constexpr,
        WIDE: tl.constexpr = False):
    """y[n, co, oh, ow] = b[co] + sum over the taps (th, tw) of oh's phase (r_h, r_w) of
    z[n, col(r_h, r_w, th, tw, co), ih, iw], oh = ih*S - pad + r_h + S*th: the gather half of a
    transposed conv whose GEMM half (z = w^T x per input pixel, C_out*KH*KW columns) ran as a 1x1
    convolution. The columns are phase-major (:func:`col2im_columns`): a program (one phase)
    reads one contiguous run of each input pixel's columns."""
    img, a_i, b_i, oh, ow, m_ok, r_h, r_w, c_h, c_w = _phase_pixels(
        tl.program_id(0), N, H_out, W_out, pad_h, pad_w, STRIDE, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_out
    z_base = z_ptr + img.to(tl.int64) * szn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    n_th = (KH - r_h + STRIDE - 1) // STRIDE
    n_tw = (KW - r_w + STRIDE - 1) // STRIDE
    # first column of this phase: the phases before it in (r_h, r_w) order hold
    # C_out * (A_h * KW + n_th * A_w) columns, A_h = #{kh : kh % S < r_h}, A_w likewise
    a_h = r_h * 0
    a_w = r_w * 0
    for i in tl.static_range(STRIDE):
        a_h += tl.where(i < r_h, (KH - i + STRIDE - 1) // STRIDE, 0)
        a_w += tl.where(i < r_w, (KW - i + STRIDE - 1) // STRIDE, 0)
    col0 = C_out * (a_h * KW + n_th * a_w)
    for t in range(0, n_th * n_tw):
        th = t // n_tw
        tw = t % n_tw
        ih = _wide(a_i - th + c_h, WIDE)
        iw = _wide(b_i - tw + c_w, WIDE)
        ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        col = _wide(col0 + t * C_out + offs_n, WIDE)
        v = tl.load(z_base[:, None] + (ih * szh + iw * szw)[:, None] + col[None, :] * szc,
                    mask=ok[:, None] & n_ok[None, :], other=0.0)
        acc += v.to(ACC_DTYPE)
    pix_off = img.to(tl.int64) * syn + _wide(oh, WIDE) * syh + _wide(ow, WIDE) * syw
    _epilogue(acc, y_ptr, b_ptr, b_ptr, b_ptr, offs_n, pix_off, m_ok, C_out, syc, 0, 0,
              HAS_BIAS, 0, BLOCK_M, BLOCK_N, "ieee", 0, WIDE)


# ----------------------------------------------------------------------------------------------
# pure-PyTorch references
# ----------------------------------------------------------------------------------------------
def _gdn_ref(y, beta, gamma, inverse):
    c = y.shape[1]
    norm = F.conv2d(y * y, gamma[:c, :c].to(y.dtype)[:, :, None, None], beta[:c].to(y.dtype))
    return y * torch.sqrt(norm) if inverse else y * torch.rsqrt(norm)


def conv2d_reference(x, weight, bias=None, *, stride=1, padding=0, out_width=None, gdn=None,
                     inverse=False):
    """Reference of :func:`conv2d_fwd`: ``F.conv2d`` on the slice, then optional (I)GDN.

    ``gdn`` is ``(beta[C_out], gamma[C_out, C_out])`` of effective parameters or None.
    """
    co = weight.shape[0] if out_width is None else out_width
    y = F.conv2d(x, weight[:co, :x.shape[1]], None if bias is None else bias[:co],
                 stride=stride, padding=padding)
    return y if gdn is None else _gdn_ref(y, gdn[0], gdn[1], inverse)


def conv_transpose2d_reference(x, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                               out_width=None, gdn=None, inverse=True):
    """Reference of :func:`conv_transpose2d_fwd`: ``F.conv_transpose2d`` on the slice, then
    optional (I)GDN of the OUTPUT (the fused epilogue)."""
    co = weight.shape[1] if out_width is None else out_width
    y = F.conv_transpose2d(x, weight[:x.shape[1], :co], None if bias is None else bias[:co],
                           stride=stride, padding=padding, output_padding=output_padding)
    return y if gdn is None else _gdn_ref(y, gdn[0], gdn[1], inverse)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
_TUNE_KEY = ["C_in", "C_out", "H_out", "W_out", "STRIDE", "KH"]

def gdn_configs_for(configs, block_n: int, capability_major: int):
    """The fused-GDN configs usable at ``block_n`` on a GPU of ``capability_major``: before sm_90
    only BLOCK_M <= CONV_GDN_SM80_MAX_BLOCK_M at BLOCK_N >= 128 (the others spill there)."""
    if capability_major < 9 and block_n >= 128:
        keep = [c for c in configs if _cfg_kwargs(c).get("BLOCK_M", 0) <= CONV_GDN_SM80_MAX_BLOCK_M]
        return keep or configs
    return configs


def _cfg_kwargs(c):
    return c["kwargs"] if isinstance(c, dict) else c.kwargs


def _prune_gdn(configs, named_args, **kwargs):
    bn = kwargs.get("BLOCK_N", named_args.get("BLOCK_N", 0) if isinstance(named_args, dict) else 0)
    major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 9
    return gdn_configs_for(configs, bn or 0, major)


def _tuned(kernel):
    prune = {"early_config_prune": _prune_gdn}
    return {"plain": triton.autotune(to_triton(CONV_FWD_CONFIGS), key=_TUNE_KEY)(kernel),
            "gdn": triton.autotune(to_triton(CONV_GDN_CONFIGS), key=_TUNE_KEY,
                                   prune_configs_by=prune)(kernel),
            "gdn256": triton.autotune(to_triton(CONV_GDN256_CONFIGS), key=_TUNE_KEY,
                                      prune_configs_by=prune)(kernel)}


_CONV = _tuned(conv2d_fwd_kernel)
_CONVT = _tuned(conv_transpose2d_fwd_kernel)
_COL2IM = triton.autotune(to_triton(COL2IM_CONFIGS),
                          key=["C_out", "H_out", "W_out", "STRIDE", "KH"])(col2im_kernel)

#: Transposed convolutions with at most this many output columns ``C_out * KH * KW`` (the output
#: layer: 3 x 9 x 9 = 243) run as a GEMM into a column buffer ``z = w^T x`` (a 1x1 convolution
#: with C_out*KH*KW outputs: every input read once, no padding of 3 channels to a 16-wide tile)
#: and a gather (:func:`col2im_kernel`). The phase kernel re-reads each input pixel for every tap
#: of a phase (5 of them at 9x9 / 4) for a 3-column result: on the H200 the output layer took
#: 0.24 ms there at w=192 fp32 against cuDNN's 0.07 (bench/results/gpu/conv.md, graph replays).
#: The column buffer is fp32, ``C_out*KH*KW / STRIDE^2`` (about 15 at 9x9 / 4) values per output
#: pixel; it is filled and read in bands of output rows of at most ``TCONV_COL2IM_BAND_BYTES``
#: each (Kodak's 768x512 at the output layer: 24 MB in fp32, one band), so that the route's extra
#: memory does not grow with the image. 0 switches the route off.
TCONV_COL2IM_MAX_COLS = 256
TCONV_COL2IM_BAND_BYTES = 32 << 20


def fused_gdn_supported(c_out: int, dtype: torch.dtype) -> bool:
    """Whether the fused (I)GDN epilogue handles ``c_out`` channels of ``dtype`` on the GPU:
    up to 128 channels in any dtype, up to 256 in bf16/fp16 (an fp32 256-wide epilogue spills)."""
    return c_out <= 128 or (c_out <= 256 and dtype in (torch.float16, torch.bfloat16)) or \
        (interpreter_enabled() and c_out <= 256)


def _precision(dtype: torch.dtype) -> Tuple[str, object]:
    if dtype == torch.float64:
        return "ieee", tl.float64
    if dtype == torch.float32:
        return ("tf32" if tf32_allowed() and not interpreter_enabled() else "ieee"), tl.float32
    if dtype in (torch.float16, torch.bfloat16):
        return "ieee", tl.float32
    raise ValueError(f"unsupported dtype {dtype}: use float32, float16, bfloat16 (float64 only "
                     f"under TRITON_INTERPRET=1)")


def _gdn_block_n(c_out: int) -> int:
    if c_out > 256:
        raise ValueError(f"fused GDN needs every output channel in one tile; C_out={c_out} > 256 "
                         f"is not supported: run the conv and GDN separately (gdn=None)")
    return max(16, triton.next_power_of_2(c_out))


def _empty_like_layout(x: torch.Tensor, shape) -> torch.Tensor:
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    fmt = torch.channels_last if cl else torch.contiguous_format
    return torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt)


def _prep_gdn(gdn, c_out, device):
    """(beta, gamma) effective params -> (beta[:C], gamma[:C,:C] in fp32) or dummies."""
    if gdn is None:  # never read (EPI_NONE); empty: no fill kernel launched per call
        z = torch.empty(1, device=device, dtype=torch.float32)
        return z, z.view(1, 1)
    beta, gamma = gdn
    if beta.shape[0] < c_out or gamma.shape[0] < c_out or gamma.shape[1] < c_out:
        raise ValueError(f"GDN parameters hold {beta.shape[0]} channels, the conv outputs {c_out}")
    # (contiguous: the epilogue reads beta by pointer with unit stride)
    beta = beta[:c_out].to(device=device, dtype=torch.float32 if beta.dtype != torch.float64
                           else beta.dtype).contiguous()
    gamma = gamma[:c_out, :c_out].to(device=device, dtype=beta.dtype)
    return beta, gamma


def _launch(tuned, kernel_plain, x, w, w_strides, bias, y, pad, stride,
            kh, kw, c_in, c_out, h, wd, h_out, w_out, gdn, inverse, grid_fn, flat_k=None):
    precision, acc_dtype = _precision(x.dtype)
    epi = EPI_NONE if gdn is None else (EPI_IGDN if inverse else EPI_GDN)
    beta, gamma = _prep_gdn(gdn, c_out, x.device)
    b_arg = bias if bias is not None else beta
    args = (x, w, b_arg, y, beta, gamma, x.shape[0], c_in, h, wd, c_out, h_out, w_out, pad,
            *x.stride(), *w_strides, *y.stride(), gamma.stride(0), gamma.stride(-1))
    # the GDN dot of the epilogue has fp32 operands (y^2, gamma): TF32 on the GPU unless the
    # input is fp32 with TF32 switched off
    epi_precision = "ieee" if (interpreter_enabled() or x.dtype == torch.float64 or
                               (x.dtype == torch.float32 and precision == "ieee")) else "tf32"
    meta = dict(STRIDE=stride, KH=kh, KW=kw, HAS_BIAS=bias is not None, EPI=epi,
                PRECISION=precision, ACC_DTYPE=acc_dtype, EPI_PRECISION=epi_precision,
                EPI_DOT16=((2 if interpreter_enabled() else 1)
                           if x.dtype in (torch.float16, torch.bfloat16) else 0),
                WIDE=_needs_wide(x, y))
    if flat_k is not None:
        meta["FLAT_K"] = flat_k
    if interpreter_enabled():
        meta["DOT_UPCAST"] = x.dtype in (torch.float16, torch.bfloat16)
        cfg = dict(CONV_INTERPRET_CONFIG["kwargs"])
        cfg["BLOCK_N"] = _gdn_block_n(c_out) if epi else max(16, min(64, triton.next_power_of_2(c_out)))
        kernel_plain[grid_fn(cfg)](*args, **meta, **cfg, num_warps=CONV_INTERPRET_CONFIG["num_warps"],
                                   num_stages=CONV_INTERPRET_CONFIG["num_stages"])
    elif epi:
        bn = _gdn_block_n(c_out)
        if not fused_gdn_supported(c_out, x.dtype):
            raise ValueError(f"fused GDN for C_out={c_out} in {x.dtype} is not supported (the "
                             f"256-wide fp32 epilogue spills): use bf16/fp16 or gdn=None + GDN op")
        tuned["gdn256" if bn > 128 else "gdn"][grid_fn](*args, **meta, BLOCK_N=bn)
    else:
        tuned["plain"][grid_fn](*args, **meta)
    return y


def _check_common(x, weight, bias, name):
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"{name}: x must be [N, C, H, W] and weight [A, B, k, k]; got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"{name}: x, weight and bias must share a dtype, got {x.dtype}, "
                         f"{weight.dtype}, {None if bias is None else bias.dtype}")
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        raise ValueError(f"{name}: x on {x.device} but weight on {weight.device}"
                         f"{'' if bias is None else f' and bias on {bias.device}'}")
    if not x.is_cuda:
        check_interpreter(name)


def _bias_arg(bias, c_out):
    """``bias[:c_out]`` as the kernels read it (by pointer, unit stride): a view of a contiguous
    bias, else a contiguous copy (a strided or expanded bias had been read as if contiguous:
    wrong values, or past an expanded one's single element)."""
    return None if bias is None else bias[:c_out].contiguous()


def _check_bias(bias, c_out, name):
    """bias ``[>= c_out]`` (the kernels read bias[:c_out] by pointer: a shorter one would be
    read past its end)."""
    if bias is not None and (bias.dim() != 1 or bias.shape[0] < c_out):
        raise ValueError(f"{name}: bias must be 1-D with at least C_out={c_out} entries, got "
                         f"{tuple(bias.shape)}")


def conv2d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
               stride: int = 1, padding: int = 0, out_width: Optional[int] = None,
               gdn: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
               inverse: bool = False) -> torch.Tensor:
    """Triton forward of the width-sliced convolution (no autograd; see ops.slim_conv2d).

    Args:
        x: ``[N, C_in, H, W]`` (NCHW or channels_last), fp32/fp16/bf16 (fp64 under the interpreter).
        weight: full ``[C_out_max, C_in_max, KH, KW]``; ``weight[:out_width, :C_in]`` is read in place.
        bias: full ``[C_out_max]`` or None.
        gdn: ``(beta, gamma)`` effective GDN parameters (full size) fused in the epilogue, or None.
        inverse: IGDN instead of GDN in the epilogue.

    Returns:
        ``[N, out_width, H_out, W_out]`` in x's dtype and memory format.
    """
    _check_common(x, weight, bias, "conv2d_fwd")
    n, c_in, h, wd = x.shape
    co_max, ci_max, kh, kw = weight.shape
    c_out = co_max if out_width is None else int(out_width)
    if c_in > ci_max or not 1 <= c_out <= co_max:
        raise ValueError(f"conv2d_fwd: active widths C_in={c_in}, C_out={c_out} exceed the weight "
                         f"[{co_max}, {ci_max}, ...]")
    _check_bias(bias, c_out, "conv2d_fwd")
    bias = _bias_arg(bias, c_out)
    h_out = (h + 2 * padding - kh) // stride + 1
    w_out = (wd + 2 * padding - kw) // stride + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"conv2d_fwd: input {h}x{wd} too small for kernel {kh}x{kw} pad {padding}")
    y = _empty_like_layout(x, (n, c_out, h_out, w_out))
    if n == 0:   # an empty batch: nothing to launch
        return y
    m = n * h_out * w_out

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]))

    ws = weight.stride()
    return _launch(_CONV, conv2d_fwd_kernel, x, weight, ws, bias, y,
                   padding, stride, kh, kw, c_in, c_out, h, wd, h_out, w_out, gdn, inverse, grid,
                   flat_k=c_in < 16)


def conv_transpose2d_fwd(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         *, stride: int = 1, padding: int = 0, output_padding: int = 0,
                         out_width: Optional[int] = None,
                         gdn: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                         inverse: bool = True) -> torch.Tensor:
    """Triton forward of the width-sliced transposed convolution (no autograd).

    Args:
        x: ``[N, C_in, H, W]``; weight: full ``[C_in_max, C_out_max, KH, KW]`` (slice read in place);
        bias: full ``[C_out_max]`` or None.
        gdn: ``(beta, gamma)`` fused on the OUTPUT in the epilogue (IGDN by default, ``inverse``).

    Returns:
        ``[N, out_width, (H-1)*stride - 2*padding + KH + output_padding, ...]``.
    """
    _check_common(x, weight, bias, "conv_transpose2d_fwd")
    n, c_in, h, wd = x.shape
    ci_max, co_max, kh, kw = weight.shape
    c_out = co_max if out_width is None else int(out_width)
    if c_in > ci_max or not 1 <= c_out <= co_max:
        raise ValueError(f"conv_transpose2d_fwd: active widths C_in={c_in}, C_out={c_out} exceed "
                         f"the weight [{ci_max}, {co_max}, ...]")
    _check_bias(bias, c_out, "conv_transpose2d_fwd")
    bias = _bias_arg(bias, c_out)
    if output_padding < 0 or output_padding >= max(stride, 1):
        raise ValueError(f"output_padding={output_padding} must be smaller than stride={stride}")
    h_out = (h - 1) * stride - 2 * padding + kh + output_padding
    w_out = (wd - 1) * stride - 2 * padding + kw + output_padding
    if h_out < 1 or w_out < 1:
        raise ValueError(f"conv_transpose2d_fwd: output size {h_out}x{w_out} is empty")
    y = _empty_like_layout(x, (n, c_out, h_out, w_out))
    if n == 0:   # an empty batch: nothing to launch
        return y
    ha, wa = triton.cdiv(h_out, stride), triton.cdiv(w_out, stride)
    m = n * ha * wa

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * stride * stride,
                triton.cdiv(c_out, meta["BLOCK_N"]))

    if gdn is None and _col2im_applies(weight, c_out):
        return _conv_transpose2d_col2im(x, weight, bias, y, stride, padding, c_in, c_out)
    s = weight.stride()
    return _launch(_CONVT, conv_transpose2d_fwd_kernel, x, weight,
                   (s[0], s[1], s[2], s[3]), bias, y, padding, stride, kh, kw, c_in, c_out, h, wd,
                   h_out, w_out, gdn, inverse, grid)


def _col2im_applies(weight: torch.Tensor, c_out: int) -> bool:
    """The col2im route (``TCONV_COL2IM_MAX_COLS``) for this transposed-conv weight
    ``[C_in, C_out, KH, KW]``: few output columns, and (C_out, KH, KW) one strided axis."""
    _, _, kh, kw = weight.shape
    s = weight.stride()
    return c_out * kh * kw <= TCONV_COL2IM_MAX_COLS and s[1] == kh * s[2] and s[2] == kw * s[3]


def col2im_columns(c_out: int, kh: int, kw: int, stride: int) -> torch.Tensor:
    """The column order of the col2im route: ``cols[j]`` is the flat ``(co*KH + kh)*KW + kw``
    index of column j, phase-major: columns ordered by (kh % S, kw % S, kh // S, kw // S, co), so
    that the taps of one output phase are one contiguous run (what :func:`col2im_kernel`
    reads). int64 ``[C_out*KH*KW]`` on the CPU."""
    order = []
    for r_h in range(stride):
        for r_w in range(stride):
            for kh_ in range(r_h, kh, stride):
                for kw_ in range(r_w, kw, stride):
                    order += [(co * kh + kh_) * kw + kw_ for co in range(c_out)]
    return torch.tensor(order, dtype=torch.int64)


_COLUMN_INDEX: dict = {}


def _column_index(c_out, kh, kw, stride, device) -> torch.Tensor:
    """:func:`col2im_columns` on ``device``, made once (before any CUDA-graph capture, whose
    warm-up calls run first: a host-to-device copy cannot be captured)."""
    key = (c_out, kh, kw, stride, str(device))
    idx = _COLUMN_INDEX.get(key)
    if idx is None:
        idx = _COLUMN_INDEX[key] = col2im_columns(c_out, kh, kw, stride).to(device)
    return idx


def col2im_bands(h: int, h_out: int, k: int, stride: int, padding: int, rows_per_band: int):
    """Bands of the col2im route: ``(o0, o1, r0, r1, pad_h)`` per band, output rows [o0, o1)
    (o0 a multiple of ``stride``) computed from input rows [r0, r1) as a transposed conv of its
    own with row padding ``pad_h``; at most ``rows_per_band`` input rows per band (at least
    what one phase row of output needs)."""
    halo = -(-k // stride) + 1
    step = stride * max(1, rows_per_band - halo)
    bands = []
    for o0 in range(0, h_out, step):
        o1 = min(h_out, o0 + step)
        r0 = max(0, -(-(o0 + padding - k + 1) // stride))
        r1 = min(h, (o1 - 1 + padding) // stride + 1)
        # (oh - o0) + pad_h = (ih - r0) * s + kh  <=>  oh + padding = ih * s + kh; in
        # (k - 1 - s, k - 1] unless clipped at row 0, negative where k < s + 1: the phase
        # arithmetic of _phase_pixels takes any padding
        bands.append((o0, o1, r0, max(r0, r1), padding + o0 - r0 * stride))
    return bands


def _conv_transpose2d_col2im(x, weight, bias, y, stride, padding, c_in, c_out):
    """y = conv_transpose2d(x, weight[:c_in, :c_out], bias) as z = 1x1 conv of x with the
    C_out*KH*KW columns of the weight in phase-major order (conv kernel, fp32 column buffer,
    channels_last) and :func:`col2im_kernel` (sum of each output pixel's taps, bias, one rounding
    to y's dtype), in bands of output rows (:func:`col2im_bands`, ``TCONV_COL2IM_BAND_BYTES``).
    The columns' weight ``[cols, C_in]`` (input channels at unit stride, what the conv kernel's
    pipelined main loop wants) is gathered per call: C_out*KH*KW x C_in values."""
    n, _, h, wd = x.shape
    ci_max, co_max, kh, kw = weight.shape
    cols = c_out * kh * kw
    zdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = weight.stride()
    # [(co, kh, kw) flattened, ci] view of the weight (collapsible: _col2im_applies), rows
    # gathered into phase-major order; contiguous [cols, ci_max]
    flat = weight.as_strided((co_max * kh * kw, ci_max), (s[3], s[0]))
    wc = flat.index_select(0, _column_index(c_out, kh, kw, stride, x.device))
    row_bytes = n * wd * cols * (8 if zdt == torch.float64 else 4)
    bands = col2im_bands(h, y.shape[2], kh, stride, padding,
                         max(1, TCONV_COL2IM_BAND_BYTES // row_bytes))
    rows = max(r1 - r0 for _, _, r0, r1, _ in bands)
    zbuf = torch.empty((n, cols, rows, wd), device=x.device, dtype=zdt,
                       memory_format=torch.channels_last)
    w_out = y.shape[3]
    wa = triton.cdiv(w_out, stride)
    meta = dict(STRIDE=stride, KH=kh, KW=kw, HAS_BIAS=bias is not None,
                BLOCK_N=triton.next_power_of_2(c_out),
                ACC_DTYPE=tl.float64 if zdt == torch.float64 else tl.float32,
                WIDE=_needs_wide(zbuf, y))
    for o0, o1, r0, r1, pad_h in bands:
        yb = y[:, :, o0:o1]
        if r1 == r0:  # no input row reaches these output rows: bias only
            yb.copy_((bias[:c_out] if bias is not None else y.new_zeros(c_out))
                     .view(1, c_out, 1, 1).expand_as(yb))
            continue
        xb, z = x[:, :, r0:r1], zbuf[:, :, :r1 - r0]
        m = n * (r1 - r0) * wd

        def grid(cfg, m=m):
            return (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(cols, cfg["BLOCK_N"]))
        # conv weight [out = column, in = ci, 1, 1]
        _launch(_CONV, conv2d_fwd_kernel, xb, wc, (wc.stride(0), wc.stride(1), 0, 0), None, z,
                0, 1, 1, 1, c_in, cols, r1 - r0, wd, r1 - r0, wd, None, False, grid,
                flat_k=c_in < 16)
        ha = triton.cdiv(o1 - o0, stride)
        args = (z, bias if bias is not None else z, yb, n, r1 - r0, wd, c_out, o1 - o0, w_out,
                pad_h, padding, *z.stride(), *yb.stride())

        def grid2(cfg, ha=ha):
            return (triton.cdiv(n * ha * wa, cfg["BLOCK_M"]) * stride * stride,)
        if interpreter_enabled():
            cfg = COL2IM_INTERPRET_CONFIG
            col2im_kernel[grid2(cfg["kwargs"])](*args, **meta, **cfg["kwargs"],
                                                num_warps=cfg["num_warps"],
                                                num_stages=cfg["num_stages"])
        else:
            _COL2IM[grid2](*args, **meta)
    return y


# ----------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------
def _scatter_full(full_like: torch.Tensor, part: torch.Tensor, idx) -> torch.Tensor:
    g = torch.zeros_like(full_like)
    g[idx] = part
    return g


def _weight_grad(dy, x, w_slice, stride, padding, output_padding, transposed):
    """Gradient of the active weight slice: ATen's convolution_backward (cuDNN on CUDA) on the
    sliced views (weight grad is a reduction over all pixels; see docs/kernels_conv.md)."""
    return torch.ops.aten.convolution_backward(
        dy, x, w_slice, None, [stride, stride], [padding, padding], [1, 1], transposed,
        [output_padding, output_padding], 1, [False, True, False])[1]


class SlimConv2dFunction(torch.autograd.Function):
    """Autograd of the Triton width-sliced conv: dx by the transposed-conv kernel on the same
    weight, dW (active slice only, rest zero) by ATen's convolution_backward, db by a sum."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, out_width):
        y = conv2d_fwd(x, weight, bias, stride=stride, padding=padding, out_width=out_width)
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, y.shape[1], bias is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        stride, padding, co, has_bias = ctx.conf
        ci = x.shape[1]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            kh = weight.shape[2]
            op = x.shape[2] - ((dy.shape[2] - 1) * stride - 2 * padding + kh)
            opw = x.shape[3] - ((dy.shape[3] - 1) * stride - 2 * padding + weight.shape[3])
            if op == opw and 0 <= op < max(stride, 1):
                # conv weight [C_out_max, C_in_max] read as a transposed-conv weight [C_in, C_out]
                dx = conv_transpose2d_fwd(dy, weight, None, stride=stride, padding=padding,
                                          output_padding=op, out_width=ci)
            else:  # unequal row/column remainders: fall back to ATen on the slice
                dx = torch.ops.aten.convolution_backward(
                    dy, x, weight[:co, :ci], None, [stride] * 2, [padding] * 2, [1, 1], False,
                    [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            dws = _weight_grad(dy, x, weight[:co, :ci], stride, padding, 0, False)
            dw = _scatter_full(weight, dws, (slice(0, co), slice(0, ci)))
        if has_bias and ctx.needs_input_grad[2]:
            db = torch.zeros(weight.shape[0], dtype=dy.dtype, device=dy.device)
            db[:co] = dy.sum(dim=(0, 2, 3))
        return dx, dw, db, None, None, None


class SlimConvTranspose2dFunction(torch.autograd.Function):
    """Autograd of the Triton width-sliced transposed conv: dx by the conv kernel on the same
    weight, dW (active slice only) by ATen's convolution_backward, db by a sum."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, out_width):
        y = conv_transpose2d_fwd(x, weight, bias, stride=stride, padding=padding,
                                 output_padding=output_padding, out_width=out_width)
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, output_padding, y.shape[1], bias is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        stride, padding, op, co, has_bias = ctx.conf
        ci = x.shape[1]
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # transposed weight [C_in_max, C_out_max] read as a conv weight [out=C_in, in=C_out]
            dx = conv2d_fwd(dy, weight, None, stride=stride, padding=padding, out_width=ci)
        if ctx.needs_input_grad[1]:
            dws = _weight_grad(dy, x, weight[:ci, :co], stride, padding, op, True)
            dw = _scatter_full(weight, dws, (slice(0, ci), slice(0, co)))
        if has_bias and ctx.needs_input_grad[2]:
            db = torch.zeros(weight.shape[1], dtype=dy.dtype, device=dy.device)
            db[:co] = dy.sum(dim=(0, 2, 3))
        return dx, dw, db, None, None, None, None
