"""Rate-distortion evaluation: metrics, BD-rate, classical codecs, Kodak runs and RD plots.

Import-light: submodules load matplotlib / scipy / Pillow only when used.
"""
from .bdrate import bd_psnr, bd_rate
from .metrics import ms_ssim, psnr

__all__ = ["bd_rate", "bd_psnr", "psnr", "ms_ssim"]
