"""Rate control: choose the sub-network width for a target rate or quality."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch


def rd_table(model, x: torch.Tensor, precision: str = "fp32") -> List[Dict]:
    """Compress ``x`` ``[1, 3, H, W]`` at every width: ``[{"width", "bpp", "psnr", "bytes"}]``,
    widest first (PSNR on 8-bit rounded RGB)."""
    H, W = x.shape[-2:]
    ref = x.clamp(0, 1).mul(255).round()
    out = []
    for w in model.widths:
        data = model.compress(x, w, precision=precision)
        xh = model.decompress(data, precision=precision).mul(255).round()
        mse = float(((xh - ref) ** 2).mean())
        psnr = 10 * math.log10(255 ** 2 / mse) if mse > 0 else float("inf")
        out.append({"width": w, "bpp": 8 * len(data) / (H * W), "psnr": psnr, "bytes": len(data)})
    return out


def width_for_target_bpp(model, x: torch.Tensor, target_bpp: float, precision: str = "fp32") -> int:
    """The widest width whose file is at most ``target_bpp`` (the narrowest if none is)."""
    if not target_bpp > 0:
        raise ValueError(f"target bpp must be > 0, got {target_bpp}")
    H, W = x.shape[-2:]
    for w in model.widths:  # widest first: stop at the first that fits
        if 8 * len(model.compress(x, w, precision=precision)) / (H * W) <= target_bpp:
            return w
    return model.widths[-1]


def width_for_target_psnr(model, x: torch.Tensor, target_psnr: float,
                          precision: str = "fp32") -> int:
    """The narrowest (cheapest) width whose PSNR reaches ``target_psnr`` (the widest if none)."""
    for row in reversed(rd_table(model, x, precision)):
        if row["psnr"] >= target_psnr:
            return row["width"]
    return model.widths[0]
