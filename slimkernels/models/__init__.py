"""Models built from slimkernels' layers."""
from .slimcae import DEFAULT_WIDTHS, SlimCAE

__all__ = ["SlimCAE", "DEFAULT_WIDTHS"]
