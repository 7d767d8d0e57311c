"""Triton kernels (CUDA path). Import-light: importing this package never imports triton.

The kernel modules ``conv`` and ``gdn`` import triton when imported; use
:func:`slimkernels.backend.triton_available` before importing them. ``aot`` and ``configs`` import
it only inside the functions that need it.
"""
