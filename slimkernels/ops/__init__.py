"""Functional ops: width-sliced convolutions and fused GDN/IGDN.

Every op takes the FULL parameter tensors and reads the active slice in place. The backend
(Triton on CUDA, PyTorch on CPU) is chosen by :func:`slimkernels.backend.resolve_backend`.
"""
from .gdn import gdn, gdn_reference
from .conv import clear_weight_caches, slim_conv2d, slim_conv_transpose2d

__all__ = ["gdn", "gdn_reference", "slim_conv2d", "slim_conv_transpose2d", "clear_weight_caches"]
