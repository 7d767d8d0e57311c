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
# program, BLOCK_CI input channels per step of the reduction.
GDN_FWD_CONFIGS: List[Dict] = [
    _cfg(4, 3, BLOCK_P=64, BLOCK_CO=64, BLOCK_CI=32),
    _cfg(4, 3, BLOCK_P=128, BLOCK_CO=64, BLOCK_CI=32),
    _cfg(8, 3, BLOCK_P=128, BLOCK_CO=128, BLOCK_CI=32),
    _cfg(8, 2, BLOCK_P=64, BLOCK_CO=256, BLOCK_CI=32),
    _cfg(4, 4, BLOCK_P=64, BLOCK_CO=32, BLOCK_CI=64),
]
# Backward step 2: dx = dy*n^(-1/2) + 2x (dn @ gamma) (same tiling as the forward).
GDN_BWD_DX_CONFIGS: List[Dict] = [
    _cfg(4, 3, BLOCK_P=64, BLOCK_CO=64, BLOCK_CI=32),
    _cfg(8, 3, BLOCK_P=128, BLOCK_CO=128, BLOCK_CI=32),
    _cfg(4, 4, BLOCK_P=64, BLOCK_CO=32, BLOCK_CI=64),
]
# Backward step 3: dgamma = dn^T z, dbeta = sum dn (reduction over pixels, split in SPLIT parts).
GDN_BWD_DGAMMA_CONFIGS: List[Dict] = [
    _cfg(4, 3, BLOCK_I=64, BLOCK_J=64, BLOCK_P=32),
    _cfg(8, 3, BLOCK_I=128, BLOCK_J=64, BLOCK_P=32),
    _cfg(4, 3, BLOCK_I=32, BLOCK_J=32, BLOCK_P=64),
]
# The single config used under TRITON_INTERPRET (autotuning there would only cost time).
GDN_INTERPRET_CONFIG = {
    "fwd": _cfg(4, 3, BLOCK_P=16, BLOCK_CO=32, BLOCK_CI=32),
    "bwd_dx": _cfg(4, 3, BLOCK_P=16, BLOCK_CO=32, BLOCK_CI=32),
    "bwd_dgamma": _cfg(4, 3, BLOCK_I=32, BLOCK_J=32, BLOCK_P=16),
}


def to_triton(configs: List[Dict]):
    """Turn a list of config dicts into ``triton.Config`` objects (imports triton)."""
    import triton
    return [triton.Config(dict(c["kwargs"]), num_warps=c["num_warps"], num_stages=c["num_stages"])
            for c in configs]
