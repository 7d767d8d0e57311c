"""Triton kernels (CUDA path). Import-light: importing this package never imports triton.

Submodules (``gdn``, ``aot``, ``configs``, ...) import triton themselves; use
:func:`slimkernels.backend.triton_available` before importing them.
"""
