"""Fused GDN / IGDN Triton kernels (forward and backward) for any active width C.

Math, per pixel p, with ``z = x^2`` and the effective SlimGDN+ parameters
``gamma_k = s_g * gamma[:C, :C] + b_g``, ``beta_k = s_b * beta[:C] + b_b``::

    n  = beta_k + gamma_k z                  (a GEMM: pixels x C_out x C_in)
    GDN:  y = x n^(-1/2)        dn = -1/2 dy x n^(-3/2)      dx = dy n^(-1/2) + 2 x (gamma_k^T dn)
    IGDN: y = x n^(+1/2)        dn = +1/2 dy x n^(-1/2)      dx = dy n^(+1/2) + 2 x (gamma_k^T dn)
    dgamma_k = sum_p dn z^T,    dbeta_k = sum_p dn

The pure-PyTorch reference of this math is :func:`slimkernels.ops.gdn_reference` (shared with
the CPU path; the tests check these kernels against it in float64).

Kernels (see docs/kernels_gdn.md for the tiling and the bytes each one moves):

* ``_gdn_fwd_kernel``: one program per (BLOCK_P pixels, BLOCK_CO output channels); loops over the
  input channels in BLOCK_CI steps: loads x, squares it in registers, ``tl.dot`` with the gamma
  tile (tensor cores; TF32 for fp32 inputs unless ``fp32_precision="ieee"``, bf16/fp16 inputs in
  their own type), fp32 accumulation; epilogue adds beta, rsqrt/sqrt, multiplies by x, stores y.
  Programs of the same pixel block are adjacent in launch order, so the re-reads of x for other
  output-channel blocks hit L2: x is read from DRAM once and y written once.
* ``_gdn_bwd_dn_kernel``: the same GEMM to recompute n (nothing but x is saved for backward),
  then writes ``dn`` and ``dy * n^(-/+1/2)`` as fp32 ``[P, C]`` scratch.
* ``_gdn_bwd_dx_kernel``: ``dx = dx0 + 2 x (dn @ gamma_k)`` (a GEMM over the output channels).
* ``_gdn_bwd_dgamma_kernel``: ``dgamma_k = dn^T z`` and ``dbeta_k = sum dn``, the pixel reduction
  split over SPLIT programs per tile that store their fp32 partial tiles to ``[SPLIT, C, C]`` /
  ``[SPLIT, C]`` scratch, summed over the splits afterwards (deterministic: no atomics; the
  earlier atomic version issued ~SPLIT x C x C contended fp32 atomics per call).

x may be contiguous NCHW or channels_last (any layout where H and W collapse into one stride);
the pixel index p = n * H * W + hw and the strides are passed to the kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..backend import interpreter_enabled, tf32_allowed
from .interpreter import check_interpreter
from .configs import (GDN_BWD_DGAMMA_CONFIGS, GDN_BWD_DX_CONFIGS, GDN_FWD_CONFIGS,
                      GDN_INTERPRET_CONFIG, to_triton)

# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _pixel_offsets(offs_p, HW, stride_n, stride_hw, WIDE: tl.constexpr):
    """Element offset of pixel p = n * HW + hw (int64 when WIDE: tensors of >= 2^31 elements)."""
    n = offs_p // HW
    hw = offs_p - n * HW
    if WIDE:
        off = n.to(tl.int64) * stride_n + hw.to(tl.int64) * stride_hw
    else:
        off = n * stride_n + hw * stride_hw
    return off


@triton.jit
def _wide(i, WIDE: tl.constexpr):
    """int64 copy of an index tensor when WIDE (a tensor of >= 2^31 elements: its offsets
    overflow int32), else unchanged: the usual int32 address math, the same code. (The conv
    kernels call it too.)"""
    if WIDE:
        r = i.to(tl.int64)
    else:
        r = i
    return r


@triton.jit
def _gamma_tile(gamma_ptr, rows, cols, stride_r, stride_c, C):
    """fp32 tile of the raw gamma at [rows, cols]; 0 outside C x C. A plain masked load: the
    SlimGDN+ scalars are applied to the GEMM result instead (s_g * (G z) + b_g * sum(z)), which
    keeps the operand load free of arithmetic (fewer registers, direct async copies)."""
    mask = (rows[:, None] < C) & (cols[None, :] < C)
    return tl.load(gamma_ptr + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask,
                   other=0.0)


@triton.jit
def _dn_rows(dn_ptr, row, offs_i, mask_p, C):
    """dn scratch tile [BLOCK_P pixels (``row`` = p * C), BLOCK_CI channels ``offs_i``]."""
    return tl.load(dn_ptr + row + offs_i[None, :], mask=mask_p[:, None] & (offs_i[None, :] < C),
                   other=0.0)


@triton.jit
def _dn_cols(dn_ptr, offs_p, P, offs_i, mask_i, C, WIDE: tl.constexpr):
    """dn^T scratch tile [BLOCK_I channels ``offs_i``, BLOCK_P pixels ``offs_p``]."""
    return tl.load(dn_ptr + _wide(offs_p, WIDE)[None, :] * C + offs_i[:, None],
                   mask=mask_i[:, None] & (offs_p < P)[None, :], other=0.0)


@triton.jit
def _beta_vec(beta_ptr, offs, stride_b, C, bs_ptr, bb_ptr, HAS_BS: tl.constexpr,
              HAS_BB: tl.constexpr):
    """fp32 effective beta (s_b * beta + b_b) at offs; 1 outside C (keeps masked lanes finite)."""
    mask = offs < C
    b = tl.load(beta_ptr + offs * stride_b, mask=mask, other=1.0).to(tl.float32)
    if HAS_BS:
        b = tl.where(mask, b * tl.load(bs_ptr).to(tl.float32), 1.0)
    if HAS_BB:
        b = tl.where(mask, b + tl.load(bb_ptr).to(tl.float32), 1.0)
    return b


@triton.jit
def _norm_tile(x_ptr, x_off, mask_p, offs_co, C, sxc, beta_ptr, stride_b, gamma_ptr, gs0, gs1,
               gs_ptr, gb_ptr, bs_ptr, bb_ptr, HAS_GS: tl.constexpr, HAS_GB: tl.constexpr,
               HAS_BS: tl.constexpr, HAS_BB: tl.constexpr, FP32_PRECISION: tl.constexpr,
               EMULATE_HALF_DOT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr,
               BLOCK_CI: tl.constexpr, WIDE: tl.constexpr):
    """n[p, co] = beta_k[co] + sum_ci gamma_k[co, ci] x[p, ci]^2, fp32 [BLOCK_P, BLOCK_CO]."""
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    zsum = tl.zeros([BLOCK_P], dtype=tl.float32)
    for k in range(0, C, BLOCK_CI):
        offs_ci = k + tl.arange(0, BLOCK_CI)
        m = mask_p[:, None] & (offs_ci[None, :] < C)
        xk = tl.load(x_ptr + x_off[:, None] + _wide(offs_ci, WIDE)[None, :] * sxc, mask=m,
                     other=0.0)
        xf = xk.to(tl.float32)
        if HAS_GB:
            zsum += tl.sum(xf * xf, axis=1)
        z = (xf * xf).to(xk.dtype)  # half inputs: the dot runs in their type (fp32 accumulate)
        # gamma^T tile [ci, co] = gamma[co, ci]
        g = _gamma_tile(gamma_ptr, offs_ci, offs_co, gs1, gs0, C).to(xk.dtype)
        if EMULATE_HALF_DOT:  # interpreter: its bf16 tl.dot is broken; same rounding in fp32
            acc += tl.dot(z.to(tl.float32), g.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(z, g, input_precision=FP32_PRECISION)
    if HAS_GS:
        acc = acc * tl.load(gs_ptr).to(tl.float32)
    if HAS_GB:
        acc += tl.load(gb_ptr).to(tl.float32) * zsum[:, None]
    b = _beta_vec(beta_ptr, offs_co, stride_b, C, bs_ptr, bb_ptr, HAS_BS, HAS_BB)
    return acc + b[None, :]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _tile_norm(x_ptr, beta_ptr, gamma_ptr, gs_ptr, gb_ptr, bs_ptr, bb_ptr, P, C, HW, sxn, sxc,
               sxhw, gs0, gs1, stride_b, HAS_GS: tl.constexpr, HAS_GB: tl.constexpr,
               HAS_BS: tl.constexpr, HAS_BB: tl.constexpr, FP32_PRECISION: tl.constexpr,
               EMULATE_HALF_DOT: tl.constexpr, WIDE: tl.constexpr, BLOCK_P: tl.constexpr,
               BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
    """This program's [BLOCK_P pixels, BLOCK_CO channels] tile (offsets and masks), x's pixel
    offsets, and the norm n = beta + gamma x^2 on the tile (fp32)."""
    pid = tl.program_id(0)
    n_co = tl.cdiv(C, BLOCK_CO)
    pid_p = pid // n_co
    pid_co = pid - pid_p * n_co
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C
    x_off = _pixel_offsets(offs_p, HW, sxn, sxhw, WIDE)
    n = _norm_tile(x_ptr, x_off, mask_p, offs_co, C, sxc, beta_ptr, stride_b, gamma_ptr, gs0, gs1,
                   gs_ptr, gb_ptr, bs_ptr, bb_ptr, HAS_GS, HAS_GB, HAS_BS, HAS_BB, FP32_PRECISION,
                   EMULATE_HALF_DOT, BLOCK_P, BLOCK_CO, BLOCK_CI, WIDE)
    return offs_p, mask_p, offs_co, mask_co, x_off, n


@triton.jit
def _gdn_fwd_kernel(x_ptr, y_ptr, beta_ptr, gamma_ptr, gs_ptr, gb_ptr, bs_ptr, bb_ptr,
                    P, C, HW, sxn, sxc, sxhw, syn, syc, syhw, gs0, gs1, stride_b,
                    INVERSE: tl.constexpr, HAS_GS: tl.constexpr, HAS_GB: tl.constexpr,
                    HAS_BS: tl.constexpr, HAS_BB: tl.constexpr, FP32_PRECISION: tl.constexpr,
                    EMULATE_HALF_DOT: tl.constexpr, WIDE: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
    """y = x * n^(-1/2) (GDN) or x * n^(1/2) (IGDN) for one [BLOCK_P, BLOCK_CO] tile."""
    offs_p, mask_p, offs_co, mask_co, x_off, n = _tile_norm(
        x_ptr, beta_ptr, gamma_ptr, gs_ptr, gb_ptr, bs_ptr, bb_ptr, P, C, HW, sxn, sxc, sxhw,
        gs0, gs1, stride_b, HAS_GS, HAS_GB, HAS_BS, HAS_BB, FP32_PRECISION, EMULATE_HALF_DOT,
        WIDE, BLOCK_P, BLOCK_CO, BLOCK_CI)
    m = mask_p[:, None] & mask_co[None, :]
    xv = tl.load(x_ptr + x_off[:, None] + _wide(offs_co, WIDE)[None, :] * sxc, mask=m, other=0.0)
    if INVERSE:
        y = xv.to(tl.float32) * tl.sqrt(n)
    else:
        y = xv.to(tl.float32) * tl.rsqrt(n)
    y_off = _pixel_offsets(offs_p, HW, syn, syhw, WIDE)
    tl.store(y_ptr + y_off[:, None] + _wide(offs_co, WIDE)[None, :] * syc,
             y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gdn_bwd_dn_kernel(x_ptr, dy_ptr, dn_ptr, dx0_ptr, beta_ptr, gamma_ptr, gs_ptr, gb_ptr,
                       bs_ptr, bb_ptr, P, C, HW, sxn, sxc, sxhw, sdn, sdc, sdhw, gs0, gs1, stride_b,
                       INVERSE: tl.constexpr, HAS_GS: tl.constexpr, HAS_GB: tl.constexpr,
                       HAS_BS: tl.constexpr, HAS_BB: tl.constexpr, FP32_PRECISION: tl.constexpr,
                       EMULATE_HALF_DOT: tl.constexpr, WIDE: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr):
    """Recompute n; write dn and dx0 = dy * n^(-/+1/2) as fp32 [P, C] (row-major) scratch."""
    offs_p, mask_p, offs_co, mask_co, x_off, n = _tile_norm(
        x_ptr, beta_ptr, gamma_ptr, gs_ptr, gb_ptr, bs_ptr, bb_ptr, P, C, HW, sxn, sxc, sxhw,
        gs0, gs1, stride_b, HAS_GS, HAS_GB, HAS_BS, HAS_BB, FP32_PRECISION, EMULATE_HALF_DOT,
        WIDE, BLOCK_P, BLOCK_CO, BLOCK_CI)
    m = mask_p[:, None] & mask_co[None, :]
    xv = tl.load(x_ptr + x_off[:, None] + _wide(offs_co, WIDE)[None, :] * sxc, mask=m,
                 other=0.0).to(tl.float32)
    dy_off = _pixel_offsets(offs_p, HW, sdn, sdhw, WIDE)
    dy = tl.load(dy_ptr + dy_off[:, None] + _wide(offs_co, WIDE)[None, :] * sdc, mask=m,
                 other=0.0).to(tl.float32)
    r = tl.rsqrt(n)
    if INVERSE:
        dn = 0.5 * dy * xv * r
        dx0 = dy * (n * r)  # dy * sqrt(n)
    else:
        dn = -0.5 * dy * xv * (r * r * r)
        dx0 = dy * r
    dn = tl.where(m, dn, 0.0)
    s_off = _wide(offs_p, WIDE)[:, None] * C + offs_co[None, :]
    tl.store(dn_ptr + s_off, dn, mask=m)
    tl.store(dx0_ptr + s_off, dx0, mask=m)


@triton.jit
def _gdn_bwd_dx_kernel(x_ptr, dn_ptr, dx0_ptr, dx_ptr, gamma_ptr, gs_ptr, gb_ptr,
                       P, C, HW, sxn, sxc, sxhw, sdxn, sdxc, sdxhw, gs0, gs1,
                       HAS_GS: tl.constexpr, HAS_GB: tl.constexpr, FP32_PRECISION: tl.constexpr,
                       WIDE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr,
                       BLOCK_CI: tl.constexpr):
    """dx[p, j] = dx0[p, j] + 2 x[p, j] sum_i dn[p, i] gamma_k[i, j] for one tile (j = BLOCK_CO)."""
    pid = tl.program_id(0)
    n_j = tl.cdiv(C, BLOCK_CO)
    pid_p = pid // n_j
    pid_j = pid - pid_p * n_j
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_j = pid_j * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_j = offs_j < C
    row = _wide(offs_p, WIDE)[:, None] * C
    acc = tl.zeros([BLOCK_P, BLOCK_CO], dtype=tl.float32)
    dnsum = tl.zeros([BLOCK_P], dtype=tl.float32)
    if HAS_GB:
        # sum_i dn[p, i] in a loop of its own: a dn tile feeding both the tl.dot and this sum got
        # two shared-memory buffers from triton's pipeliner (3.6 and 3.9, sm_90) while its async
        # wgmma, still in flight, read the buffer the next copy was writing (the first H200 run:
        # dx 0.6-2 % off at C=192, TF32, nondeterministic; read in the TTGIR)
        for k in range(0, C, BLOCK_CI):
            dnsum += tl.sum(_dn_rows(dn_ptr, row, k + tl.arange(0, BLOCK_CI), mask_p, C), axis=1)
    for k in range(0, C, BLOCK_CI):
        offs_i = k + tl.arange(0, BLOCK_CI)
        dn = _dn_rows(dn_ptr, row, offs_i, mask_p, C)
        g = _gamma_tile(gamma_ptr, offs_i, offs_j, gs0, gs1, C).to(tl.float32)
        acc += tl.dot(dn, g, input_precision=FP32_PRECISION)
    # (dn @ gamma_k)[p, j] = s_g (dn @ gamma)[p, j] + b_g sum_i dn[p, i]
    if HAS_GS:
        acc = acc * tl.load(gs_ptr).to(tl.float32)
    if HAS_GB:
        acc += tl.load(gb_ptr).to(tl.float32) * dnsum[:, None]
    m = mask_p[:, None] & mask_j[None, :]
    x_off = _pixel_offsets(offs_p, HW, sxn, sxhw, WIDE)
    xv = tl.load(x_ptr + x_off[:, None] + _wide(offs_j, WIDE)[None, :] * sxc, mask=m,
                 other=0.0).to(tl.float32)
    dx0 = tl.load(dx0_ptr + row + offs_j[None, :], mask=m, other=0.0)
    dx = dx0 + 2.0 * xv * acc
    dx_off = _pixel_offsets(offs_p, HW, sdxn, sdxhw, WIDE)
    tl.store(dx_ptr + dx_off[:, None] + _wide(offs_j, WIDE)[None, :] * sdxc,
             dx.to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gdn_bwd_dgamma_kernel(x_ptr, dn_ptr, dgamma_ptr, dbeta_ptr, P, C, HW, sxn, sxc, sxhw,
                           FP32_PRECISION: tl.constexpr, WIDE: tl.constexpr, BLOCK_I: tl.constexpr,
                           BLOCK_J: tl.constexpr, BLOCK_P: tl.constexpr):
    """dgamma_k[s, i, j] = sum_p dn[p, i] x[p, j]^2 and dbeta_k[s, i] = sum_p dn[p, i] over the
    pixels of split s.

    Grid: (tiles of [BLOCK_I, BLOCK_J], SPLIT). Stores into fp32 ``[SPLIT, C, C]`` / ``[SPLIT, C]``
    scratch (``dgamma_ptr`` / ``dbeta_ptr``): every element is written once per split, whatever the
    tile sizes, so nothing needs zeroing and the caller's sum over splits is deterministic.
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    P_PER_SPLIT = tl.cdiv(tl.cdiv(P, tl.num_programs(1)), BLOCK_P) * BLOCK_P
    n_j = tl.cdiv(C, BLOCK_J)
    pid_i = pid // n_j
    pid_j = pid - pid_i * n_j
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_i = offs_i < C
    mask_j = offs_j < C
    acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
    p_start = split * P_PER_SPLIT
    for p0 in range(p_start, p_start + P_PER_SPLIT, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask_p = offs_p < P
        # dn^T tile [BLOCK_I, BLOCK_P] (feeds the dot only: see _gdn_bwd_dx_kernel's dnsum)
        dnt = _dn_cols(dn_ptr, offs_p, P, offs_i, mask_i, C, WIDE)
        x_off = _pixel_offsets(offs_p, HW, sxn, sxhw, WIDE)
        xv = tl.load(x_ptr + x_off[:, None] + _wide(offs_j, WIDE)[None, :] * sxc,
                     mask=mask_p[:, None] & mask_j[None, :], other=0.0).to(tl.float32)
        acc += tl.dot(dnt, xv * xv, input_precision=FP32_PRECISION)
    base = split * C  # the split's slab (int32 is enough: dgamma_splits keeps SPLIT*C*C ~2 M)
    tl.store(dgamma_ptr + (base + offs_i[:, None]) * C + offs_j[None, :], acc,
             mask=mask_i[:, None] & mask_j[None, :])
    if pid_j == 0:  # dbeta once per i tile, in a loop of its own
        dbeta = tl.zeros([BLOCK_I], dtype=tl.float32)
        for p0 in range(p_start, p_start + P_PER_SPLIT, BLOCK_P):
            dbeta += tl.sum(_dn_cols(dn_ptr, p0 + tl.arange(0, BLOCK_P), P, offs_i, mask_i, C,
                                     WIDE), axis=1)
        tl.store(dbeta_ptr + base + offs_i, dbeta, mask=mask_i)


# --------------------------------------------------------------------------------------------
# Autotuned wrappers (the raw kernels above stay available for the AOT test and the interpreter)
# --------------------------------------------------------------------------------------------

_fwd_tuned = triton.autotune(configs=to_triton(GDN_FWD_CONFIGS), key=["C", "P", "sxhw"])(
    _gdn_fwd_kernel)
_bwd_dn_tuned = triton.autotune(configs=to_triton(GDN_FWD_CONFIGS), key=["C", "P", "sxhw"])(
    _gdn_bwd_dn_kernel)
_bwd_dx_tuned = triton.autotune(configs=to_triton(GDN_BWD_DX_CONFIGS), key=["C", "P", "sxhw"])(
    _gdn_bwd_dx_kernel)
_bwd_dgamma_tuned = triton.autotune(configs=to_triton(GDN_BWD_DGAMMA_CONFIGS),
                                    key=["C", "P", "sxhw"])(_gdn_bwd_dgamma_kernel)

#: programs the dgamma reduction aims for (enough to fill an H100's 132 SMs a few times)
_DGAMMA_TARGET_PROGRAMS = 528


def dgamma_splits(P: int, C: int) -> int:
    """Pixel splits of the dgamma reduction: about ``_DGAMMA_TARGET_PROGRAMS`` programs over
    64 x 64 tiles, at least 64 pixels per split. Fixed before the launch (not per autotune
    config) because it sizes the ``[splits, C, C]`` fp32 scratch: at most ~8.7 MB."""
    tiles = triton.cdiv(C, 64) ** 2
    return max(1, min(triton.cdiv(P, 64), _DGAMMA_TARGET_PROGRAMS // tiles))


def _pick(tuned, raw, name):
    """Autotuned kernel on GPU; the raw kernel with one fixed config under the interpreter."""
    if interpreter_enabled():
        cfg = GDN_INTERPRET_CONFIG[name]
        return raw, dict(cfg["kwargs"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return tuned, {}


def _emulate_half_dot(x: torch.Tensor) -> bool:
    """Triton's interpreter computes tl.dot on bf16 operands wrongly (it multiplies the raw
    bits): there, round the operands to bf16 and multiply in fp32, which is what the tensor cores
    do. Never on a GPU."""
    return (not x.is_cuda) and interpreter_enabled() and x.dtype == torch.bfloat16


def _needs_wide(*tensors) -> bool:
    """int64 address math only when some tensor spans >= 2^31 elements."""
    return any(t.numel() + 1 >= 2 ** 31 or
               sum((s - 1) * st for s, st in zip(t.shape, t.stride())) >= 2 ** 31 - 1
               for t in tensors)


def _layout(t: torch.Tensor):
    """(tensor, stride_n, stride_c, stride_hw) with H, W collapsible into one pixel stride."""
    if t.stride(2) != t.shape[3] * t.stride(3):
        t = t.contiguous()
    return t, t.stride(0), t.stride(1), t.stride(3)


def _scalar_ptrs(x, scalars):
    """Turn the four optional scalars into (tensor-or-dummy, has) pairs on x's device."""
    out = []
    for s in scalars:
        if s is None:
            out.append((x, False))  # dummy pointer, never read
        else:
            out.append((s.reshape(()).contiguous(), True))
    return out


def gdn_fwd(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, inverse: bool = False,
            gamma_scale=None, gamma_bias=None, beta_scale=None, beta_bias=None,
            fp32_precision: str = "tf32") -> torch.Tensor:
    """Launch the forward kernel. Shapes as :func:`slimkernels.ops.gdn`; no autograd."""
    x, sxn, sxc, sxhw = _layout(x)
    N, C, H, W = x.shape
    y = torch.empty_like(x)
    _, syn, syc, syhw = _layout(y)
    P, HW = N * H * W, H * W
    if P == 0 or C == 0:
        return y
    (gs, hgs), (gb, hgb), (bs, hbs), (bb, hbb) = _scalar_ptrs(
        x, (gamma_scale, gamma_bias, beta_scale, beta_bias))
    wide = _needs_wide(x, y)
    kern, meta = _pick(_fwd_tuned, _gdn_fwd_kernel, "fwd")

    def grid(META):
        return (triton.cdiv(P, META["BLOCK_P"]) * triton.cdiv(C, META["BLOCK_CO"]),)

    kern[grid](x, y, beta, gamma, gs, gb, bs, bb, P, C, HW, sxn, sxc, sxhw, syn, syc, syhw,
               gamma.stride(0), gamma.stride(1), beta.stride(0), INVERSE=inverse, HAS_GS=hgs,
               HAS_GB=hgb, HAS_BS=hbs, HAS_BB=hbb, FP32_PRECISION=fp32_precision,
               EMULATE_HALF_DOT=_emulate_half_dot(x), WIDE=wide, **meta)
    return y


def gdn_bwd(dy: torch.Tensor, x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
            inverse: bool = False, gamma_scale=None, gamma_bias=None, beta_scale=None,
            beta_bias=None, fp32_precision: str = "tf32"):
    """Launch the three backward kernels.

    Returns:
        ``(dx, dgamma_k, dbeta_k)``: dx like x (x's dtype and layout); dgamma_k ``[C, C]`` and
        dbeta_k ``[C]`` fp32, the gradients of the EFFECTIVE (scaled, biased) parameters.
    """
    x, sxn, sxc, sxhw = _layout(x)
    dy, sdn, sdc, sdhw = _layout(dy)
    N, C, H, W = x.shape
    P, HW = N * H * W, H * W
    dx = torch.empty_like(x)
    _, sdxn, sdxc, sdxhw = _layout(dx)
    if P == 0 or C == 0:
        return (dx.zero_(), torch.zeros(C, C, device=x.device, dtype=torch.float32),
                torch.zeros(C, device=x.device, dtype=torch.float32))
    dn = torch.empty(P, C, device=x.device, dtype=torch.float32)
    dx0 = torch.empty(P, C, device=x.device, dtype=torch.float32)
    (gs, hgs), (gb, hgb), (bs, hbs), (bb, hbb) = _scalar_ptrs(
        x, (gamma_scale, gamma_bias, beta_scale, beta_bias))
    g0, g1 = gamma.stride(0), gamma.stride(1)
    wide = _needs_wide(x, dy, dx, dn)

    def grid_pc(META):
        return (triton.cdiv(P, META["BLOCK_P"]) * triton.cdiv(C, META["BLOCK_CO"]),)

    kern, meta = _pick(_bwd_dn_tuned, _gdn_bwd_dn_kernel, "fwd")
    kern[grid_pc](x, dy, dn, dx0, beta, gamma, gs, gb, bs, bb, P, C, HW, sxn, sxc, sxhw,
                  sdn, sdc, sdhw, g0, g1, beta.stride(0), INVERSE=inverse, HAS_GS=hgs,
                  HAS_GB=hgb, HAS_BS=hbs, HAS_BB=hbb, FP32_PRECISION=fp32_precision,
               EMULATE_HALF_DOT=_emulate_half_dot(x), WIDE=wide, **meta)
    kern, meta = _pick(_bwd_dx_tuned, _gdn_bwd_dx_kernel, "bwd_dx")
    kern[grid_pc](x, dn, dx0, dx, gamma, gs, gb, P, C, HW, sxn, sxc, sxhw, sdxn, sdxc, sdxhw,
                  g0, g1, HAS_GS=hgs, HAS_GB=hgb, FP32_PRECISION=fp32_precision, WIDE=wide,
                  **meta)
    del dx0

    splits = dgamma_splits(P, C)

    def grid_g(META):
        return (triton.cdiv(C, META["BLOCK_I"]) * triton.cdiv(C, META["BLOCK_J"]), splits)

    part_g = torch.empty(splits, C, C, device=x.device, dtype=torch.float32)
    part_b = torch.empty(splits, C, device=x.device, dtype=torch.float32)
    kern, meta = _pick(_bwd_dgamma_tuned, _gdn_bwd_dgamma_kernel, "bwd_dgamma")
    kern[grid_g](x, dn, part_g, part_b, P, C, HW, sxn, sxc, sxhw, FP32_PRECISION=fp32_precision,
                 WIDE=wide, **meta)
    return dx, part_g.sum(0), part_b.sum(0)


# --------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------


def _as_tensor(s, like: torch.Tensor) -> Optional[torch.Tensor]:
    """A SlimGDN+ scalar as a tensor on ``like``'s device (the kernels read it by pointer; a
    0-dim tensor elsewhere, e.g. a CPU scalar with CUDA x, is moved: differentiable)."""
    if s is None:
        return s
    if isinstance(s, torch.Tensor):
        return s if s.device == like.device else s.to(like.device)
    return torch.tensor(float(s), device=like.device, dtype=torch.float32)


def _reduce_like(g: torch.Tensor, s: Optional[torch.Tensor]):
    return None if s is None else g.reshape(s.shape).to(s.dtype)


class GDNFunction(torch.autograd.Function):
    """GDN / IGDN with Triton forward and backward.

    ``forward(x, beta, gamma, gamma_scale, gamma_bias, beta_scale, beta_bias, inverse,
    fp32_precision)``: scalars are 0-dim tensors or None. Saves only x and the parameters.
    """

    @staticmethod
    def forward(ctx, x, beta, gamma, gs, gb, bs, bb, inverse, fp32_precision):
        y = gdn_fwd(x, beta, gamma, inverse, gs, gb, bs, bb, fp32_precision)
        ctx.save_for_backward(x, beta, gamma, gs, gb, bs, bb)
        ctx.inverse = inverse
        ctx.fp32_precision = fp32_precision
        return y

    @staticmethod
    def backward(ctx, dy):
        x, beta, gamma, gs, gb, bs, bb = ctx.saved_tensors
        C = x.shape[1]
        dx, dgk, dbk = gdn_bwd(dy, x, beta, gamma, ctx.inverse, gs, gb, bs, bb,
                               ctx.fp32_precision)
        need = ctx.needs_input_grad
        dgamma = dbeta = dgs = dgb = dbs = dbb = None
        if need[2]:
            dgamma = torch.zeros_like(gamma)
            dgamma[:C, :C] = dgk * gs.float() if gs is not None else dgk
        if need[1]:
            dbeta = torch.zeros_like(beta)
            dbeta[:C] = dbk * bs.float() if bs is not None else dbk
        if gs is not None and need[3]:
            dgs = _reduce_like((dgk * gamma[:C, :C].float()).sum(), gs)
        if gb is not None and need[4]:
            dgb = _reduce_like(dgk.sum(), gb)
        if bs is not None and need[5]:
            dbs = _reduce_like((dbk * beta[:C].float()).sum(), bs)
        if bb is not None and need[6]:
            dbb = _reduce_like(dbk.sum(), bb)
        return (dx if need[0] else None), dbeta, dgamma, dgs, dgb, dbs, dbb, None, None


def _check_operands(x, beta, gamma) -> None:
    """What the kernels read: x ``[N, C, H, W]`` fp32 / fp16 / bf16, beta ``[>= C]``, gamma
    ``[>= C, >= C]`` (float, x's device). Raises ValueError naming the mismatch (a kernel
    handed a shorter beta or gamma would read past its end)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"gdn_triton: x must be a 4-D [N, C, H, W] tensor, got "
                         f"{getattr(x, 'shape', type(x))}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"gdn_triton: x is {x.dtype}; the kernels take float32 / float16 / "
                         "bfloat16 (they compute in fp32): for float64 use "
                         "slimkernels.ops.gdn (its PyTorch path) or slimkernels.ops.gdn_reference")
    c = x.shape[1]
    for name, t, dim in (("beta", beta, 1), ("gamma", gamma, 2)):
        if not isinstance(t, torch.Tensor) or t.dim() != dim or not t.is_floating_point():
            raise ValueError(f"gdn_triton: {name} must be a {dim}-D float tensor, got "
                             f"{getattr(t, 'shape', type(t))} {getattr(t, 'dtype', '')}")
        if min(t.shape) < c:
            raise ValueError(f"gdn_triton: x has {c} channels but {name} is "
                             f"{tuple(t.shape)}: it must hold at least {c} per side")
        if t.device != x.device:
            raise ValueError(f"gdn_triton: x is on {x.device} but {name} on {t.device}")
    if not x.is_cuda:
        check_interpreter("gdn_triton")


def gdn_triton(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor, *, inverse: bool = False,
               gamma_scale=None, gamma_bias=None, beta_scale=None, beta_bias=None,
               fp32_precision: Optional[str] = None) -> torch.Tensor:
    """GDN / IGDN through the Triton kernels, differentiable in x, beta, gamma and the scalars.

    Args:
        x: ``[N, C, H, W]`` NCHW or channels_last, fp32 / fp16 / bf16 (CUDA, or CPU under
            ``TRITON_INTERPRET=1``).
        beta: ``[C_max]``, gamma: ``[C_max, C_max]`` (``[C_out, C_in]``) effective parameters, any
            float dtype, read in place at ``[:C]`` / ``[:C, :C]``.
        gamma_scale, gamma_bias, beta_scale, beta_bias: None, floats or 0-dim tensors.
        fp32_precision: ``"tf32"`` (tensor cores) or ``"ieee"`` for fp32 inputs; None (default)
            follows PyTorch's switches (:func:`slimkernels.backend.tf32_allowed`: TF32 unless
            ``torch.backends.cudnn.allow_tf32`` and ``torch.backends.cuda.matmul.allow_tf32``
            are both off), as the convolution kernels do.

    Returns:
        ``[N, C, H, W]``, x's dtype and memory format.
    """
    _check_operands(x, beta, gamma)
    if fp32_precision is None:
        fp32_precision = "tf32" if tf32_allowed() else "ieee"
    if fp32_precision not in ("tf32", "ieee"):
        raise ValueError(f"fp32_precision must be 'tf32', 'ieee' or None, got {fp32_precision!r}")
    scal = [_as_tensor(s, x) for s in (gamma_scale, gamma_bias, beta_scale, beta_bias)]
    return GDNFunction.apply(x, beta, gamma, *scal, bool(inverse), fp32_precision)


# --------------------------------------------------------------------------------------------
# Ahead-of-time compilation specs (for tests/kernels/test_aot_gdn.py and docs)
# --------------------------------------------------------------------------------------------

_TL = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def gdn_torch_reference(x, beta, gamma, inverse=False, gamma_scale=None, gamma_bias=None,
                        beta_scale=None, beta_bias=None):
    """Pure-PyTorch reference of what these kernels compute: :func:`slimkernels.ops.gdn_reference`
    (kept under this name for code that imports it)."""
    from ..ops.gdn import gdn_reference
    return gdn_reference(x, beta, gamma, inverse=inverse, gamma_scale=gamma_scale,
                         gamma_bias=gamma_bias, beta_scale=beta_scale, beta_bias=beta_bias)


def aot_specs(dtype: torch.dtype = torch.float32, inverse: bool = False, all_configs: bool = True,
              layout: str = "nchw"):
    """Every (kernel, signature, constexprs, num_warps, num_stages) the CUDA path can launch.

    Args:
        dtype: x's dtype (fp32 / bf16 / fp16); parameters are fp32, scratch buffers fp32.
        inverse: IGDN instead of GDN (the forward / dn kernels' epilogue).
        all_configs: every autotune config, or only the first of each kernel.
        layout: ``"nchw"`` or ``"channels_last"``: the pixel (resp. channel) strides are 1, which
            the JIT launcher specialises as constexprs, so each layout is its own binary.

    Returns:
        list of dicts ``{"name", "kernel", "signature", "constexprs", "num_warps", "num_stages",
        "divisible_by_16", "config"}`` for :func:`slimkernels.kernels.aot.compile_for_target`. The SlimGDN+ scalars are on
        (the most work per program); pointers are marked 16-byte aligned as the launcher does for
        torch tensors; other ints are plain i32.
    """
    if layout not in ("nchw", "channels_last"):
        raise ValueError(f"layout must be 'nchw' or 'channels_last', got {layout!r}")
    t = _TL[dtype]
    i32 = "i32"
    scal = {"gs_ptr": "*fp32", "gb_ptr": "*fp32", "bs_ptr": "*fp32", "bb_ptr": "*fp32"}
    has = dict(HAS_GS=True, HAS_GB=True, HAS_BS=True, HAS_BB=True)
    fwd_sig = {"x_ptr": f"*{t}", "y_ptr": f"*{t}", "beta_ptr": "*fp32", "gamma_ptr": "*fp32",
               **scal, **{k: i32 for k in ("P", "C", "HW", "sxn", "sxc", "sxhw", "syn", "syc",
                                           "syhw", "gs0", "gs1", "stride_b")}}
    dn_sig = {"x_ptr": f"*{t}", "dy_ptr": f"*{t}", "dn_ptr": "*fp32", "dx0_ptr": "*fp32",
              "beta_ptr": "*fp32", "gamma_ptr": "*fp32", **scal,
              **{k: i32 for k in ("P", "C", "HW", "sxn", "sxc", "sxhw", "sdn", "sdc", "sdhw",
                                  "gs0", "gs1", "stride_b")}}
    dx_sig = {"x_ptr": f"*{t}", "dn_ptr": "*fp32", "dx0_ptr": "*fp32", "dx_ptr": f"*{t}",
              "gamma_ptr": "*fp32", "gs_ptr": "*fp32", "gb_ptr": "*fp32",
              **{k: i32 for k in ("P", "C", "HW", "sxn", "sxc", "sxhw", "sdxn", "sdxc", "sdxhw",
                                  "gs0", "gs1")}}
    dg_sig = {"x_ptr": f"*{t}", "dn_ptr": "*fp32", "dgamma_ptr": "*fp32", "dbeta_ptr": "*fp32",
              **{k: i32 for k in ("P", "C", "HW", "sxn", "sxc", "sxhw")}}
    norm_k = dict(INVERSE=inverse, **has, FP32_PRECISION="tf32", EMULATE_HALF_DOT=False)
    plan = [("gdn_fwd", _gdn_fwd_kernel, fwd_sig, norm_k, GDN_FWD_CONFIGS),
            ("gdn_bwd_dn", _gdn_bwd_dn_kernel, dn_sig, norm_k, GDN_FWD_CONFIGS),
            ("gdn_bwd_dx", _gdn_bwd_dx_kernel, dx_sig,
             dict(HAS_GS=True, HAS_GB=True, FP32_PRECISION="tf32"), GDN_BWD_DX_CONFIGS),
            ("gdn_bwd_dgamma", _gdn_bwd_dgamma_kernel, dg_sig, dict(FP32_PRECISION="tf32"),
             GDN_BWD_DGAMMA_CONFIGS)]
    ones = (("sxhw", "syhw", "sdhw", "sdxhw") if layout == "nchw" else
            ("sxc", "syc", "sdc", "sdxc"))
    specs = []
    for name, kern, sig, const, configs in plan:
        spec1 = {k: 1 for k in ones if k in sig}
        sig = {k: v for k, v in sig.items() if k not in spec1}
        for i, c in enumerate(configs if all_configs else configs[:1]):
            specs.append({"name": f"{name}[{i}]", "kernel": kern, "signature": dict(sig),
                          "constexprs": dict(const, WIDE=False, **spec1, **c["kwargs"]),
                          "num_warps": c["num_warps"], "num_stages": c["num_stages"],
                          "divisible_by_16": [k for k in sig if k.endswith("_ptr")],
                          "config": c})
    return specs
