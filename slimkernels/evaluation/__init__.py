"""Rate-distortion evaluation: metrics, BD-rate, classical codecs, Kodak runs and RD plots.

Import-light: submodules load matplotlib / scipy / Pillow (and torch) only when used; the names
below are imported on first use (the command line builds its ``eval`` options from
:mod:`slimkernels.evaluation.cli` without importing torch).
"""
from .._lazy import lazy_names

__all__ = ["bd_rate", "bd_psnr", "psnr", "ms_ssim"]

__getattr__, __dir__ = lazy_names(__name__, {"bd_rate": "bdrate", "bd_psnr": "bdrate",
                                             "psnr": "metrics", "ms_ssim": "metrics"}, globals())
