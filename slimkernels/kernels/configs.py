"""Autotune configurations of every Triton kernel, in one place.

Each kernel family owns a named list here (plain dicts, so this module imports without triton):
``{"kwargs": {...constexprs...}, "num_warps": w, "num_stages": s}``. Use :func:`to_triton` to turn
a list into ``triton.Config`` objects. The AOT test compiles every entry for sm_90 and sm_80.
"""
from __future__ import annotations

from typing import Dict, List


def _cfg(num_warps: int, num_stages: int, **kwargs) -> Dict:
    return {"kwargs": kwargs, "num_warps": num_warps, "num_stages": num_stages}


# ----- GDN / IGDN (slimkernels/kernels/gdn.py) -------------------------------------------------
# Forward and the backward kernel that recomputes the norm: a GEMM pixels x C_out x C_in with a
# square prologue and an rsqrt/sqrt epilogue. BLOCK_P pixels, BLOCK_CO output channels per
# program, BLOCK_CI input channels per step of the reduction. Chosen so that the fp32
# accumulator is <= 32 registers per thread (BLOCK_P * BLOCK_CO <= 32 * 32 * num_warps): the AOT
# test showed 128x64 tiles on 4 warps and 128x128 on 8 warps spill on sm_80 and sm_90.
GDN_FWD_CONFIGS: List[Dict] = [
    _cfg(4, 3, BLOCK_P=64, BLOCK_CO=64, BLOCK_CI=32),
    _cfg(8, 3, BLOCK_P=128, BLOCK_CO=64, BLOCK_CI=32),
    _cfg(8, 3, BLOCK_P=64, BLOCK_CO=128, BLOCK_CI=32),
    _cfg(4, 3, BLOCK_P=32, BLOCK_CO=128, BLOCK_CI=32),
    # BLOCK_CI=64 here (4 warps, 4 stages) used 255 registers and spilled 148-340 bytes with
    # triton 3.6 (the GPU machines' version) on sm_80 and sm_90, channels_last (fwd and bwd_dn).
    _cfg(4, 4, BLOCK_P=64, BLOCK_CO=32, BLOCK_CI=32),
]
# Backward step 2: dx = dy*n^(-1/2) + 2x (dn @ gamma) (same tiling as the forward).
GDN_BWD_DX_CONFIGS: List[Dict] = [
    _cfg(8, 3, BLOCK_P=64, BLOCK_CO=64, BLOCK_CI=32),  # 4 warps: 254 regs, spills on sm_80
    # BLOCK_CO=64 here used 255 registers and spilled in fp32 (triton 3.9: an STL / LDL pair in
    # the SASS of triton's cubin on sm_90, both layouts; a ptxas -v re-run without triton's
    # options reported none; BLOCK_CI=16 or 2 stages spilled more, on sm_80 too). CO=32: 155-178
    # registers, no spills, fp32 and bf16, sm_90 and sm_80.
    _cfg(8, 3, BLOCK_P=128, BLOCK_CO=32, BLOCK_CI=32),
    # BLOCK_CI=64 here used 242-244 registers with triton 3.9 and spilled 260-384 bytes on sm_80
    # with triton 3.6 (the GPU machines' version); CI=32: 161-198 registers, no spills, on both.
    _cfg(4, 4, BLOCK_P=64, BLOCK_CO=32, BLOCK_CI=32),
]
# Backward step 3: dgamma = dn^T z, dbeta = sum dn (reduction over pixels, split in SPLIT parts).
GDN_BWD_DGAMMA_CONFIGS: List[Dict] = [
    # 3 stages: 16 bytes spilled at 128 registers (triton 3.6, fp32 channels_last, sm_80)
    _cfg(4, 2, BLOCK_I=64, BLOCK_J=64, BLOCK_P=32),
    _cfg(8, 3, BLOCK_I=128, BLOCK_J=64, BLOCK_P=32),
    # 2 stages: with 3, storing the partial tile (no atomics since sitting 16) spilled 8 bytes at
    # 88 registers (triton 3.9, fp32 NCHW, sm_90)
    _cfg(4, 2, BLOCK_I=32, BLOCK_J=32, BLOCK_P=64),
]
# The single config used under TRITON_INTERPRET (autotuning there would only cost time).
GDN_INTERPRET_CONFIG = {
    "fwd": _cfg(4, 3, BLOCK_P=16, BLOCK_CO=64, BLOCK_CI=64),
    "bwd_dx": _cfg(4, 3, BLOCK_P=16, BLOCK_CO=64, BLOCK_CI=64),
    "bwd_dgamma": _cfg(4, 3, BLOCK_I=64, BLOCK_J=64, BLOCK_P=16),
}


# ----- width-sliced conv / transposed conv (slimkernels/kernels/conv.py) ----------------------
# Implicit GEMM: BLOCK_M output pixels x BLOCK_N output channels, BLOCK_K input channels per step
# of the reduction (inside each tap). Small BLOCK_N / BLOCK_K entries exist for the narrow widths
# (48, 72) and the 3-channel layers so that masking wastes little.
CONV_FWD_CONFIGS: List[Dict] = [
    _cfg(4, 3, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32),
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
    _cfg(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32),
    _cfg(4, 3, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=32, BLOCK_K=16),
    _cfg(4, 3, BLOCK_M=128, BLOCK_N=16, BLOCK_K=64),
]
# Conv + fused GDN epilogue: BLOCK_N is set by the launcher to next_pow2(C_out) (every active
# output channel in one tile), so these configs leave it out. 8 warps: the epilogue's second dot
# (y^2 @ gamma^T in 64 x 64 chunks) needs the registers (4 warps spill at BLOCK_N=128). On sm_80
# (mma.sync, more registers per thread than wgmma) BLOCK_M=64 spills at BLOCK_N >= 128: the
# launcher prunes those configs there (``CONV_GDN_SM80_MAX_BLOCK_M``), the AOT test checks it.
CONV_GDN_CONFIGS: List[Dict] = [          # BLOCK_N <= 128 (widths up to 128)
    _cfg(8, 3, BLOCK_M=64, BLOCK_K=32),
    _cfg(8, 3, BLOCK_M=32, BLOCK_K=32),
    _cfg(8, 4, BLOCK_M=64, BLOCK_K=16),
]
CONV_GDN256_CONFIGS: List[Dict] = [       # BLOCK_N = 256 (widths 129..256; bf16/fp16 only)
    _cfg(8, 3, BLOCK_M=64, BLOCK_K=32),
    _cfg(8, 4, BLOCK_M=64, BLOCK_K=16),
    _cfg(8, 3, BLOCK_M=32, BLOCK_K=32),
]
CONV_GDN_SM80_MAX_BLOCK_M = 32            # for BLOCK_N >= 128 on compute capability < 9
# Under TRITON_INTERPRET (CI on CPU) one small config; BLOCK_N is chosen by the launcher.
CONV_INTERPRET_CONFIG: Dict = _cfg(4, 1, BLOCK_M=64, BLOCK_K=32)
# The gather half of a transposed conv with few output columns (kernels/conv.py, col2im route):
# BLOCK_M output pixels of one phase per program, every output channel (BLOCK_N = next_pow2(C_out),
# set by the launcher); no dot, a few loads per tap: memory-bound, so wide pixel blocks.
COL2IM_CONFIGS: List[Dict] = [
    _cfg(4, 1, BLOCK_M=128),
    _cfg(4, 1, BLOCK_M=256),   # 86 registers on sm_90; 512 pixels on 4 warps took 186
    _cfg(8, 1, BLOCK_M=512),
]
COL2IM_INTERPRET_CONFIG: Dict = _cfg(4, 1, BLOCK_M=32)


def autotune_enabled() -> bool:
    """False when ``SLIMKERNELS_AUTOTUNE=0`` (or ``off``, ``false``, ``no``): :func:`to_triton` then keeps each list's first
    config, so that no kernel autotunes (read when the kernels are built, at import). For quick
    GPU test runs and debugging: one compile per kernel specialisation instead of one per config;
    the benchmarks autotune."""
    from .._env import switched_off
    return not switched_off("SLIMKERNELS_AUTOTUNE")


def to_triton(configs: List[Dict]):
    """Turn a list of config dicts into ``triton.Config`` objects (imports triton); only the
    first one when :func:`autotune_enabled` is False."""
    import triton
    if not autotune_enabled():
        configs = configs[:1]
    return [triton.Config(dict(c["kwargs"]), num_warps=c["num_warps"], num_stages=c["num_stages"])
            for c in configs]
