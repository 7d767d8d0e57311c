"""Rate-distortion evaluation: metrics, BD-rate, classical codecs, Kodak runs and RD plots.

Import-light: submodules load matplotlib / scipy / Pillow (and torch) only when used; the names
below are imported on first use (the command line builds its ``eval`` options from
:mod:`slimkernels.evaluation.cli` without importing torch).
"""
import importlib

#: public name -> the submodule that defines it
_LAZY = {"bd_rate": "bdrate", "bd_psnr": "bdrate", "psnr": "metrics", "ms_ssim": "metrics"}

__all__ = ["bd_rate", "bd_psnr", "psnr", "ms_ssim"]


def __getattr__(name: str):
    """:data:`__all__`'s functions, imported from their submodule on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
