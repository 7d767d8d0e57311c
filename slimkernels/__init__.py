"""slimkernels: slimmable compressive autoencoders (SlimCAE) with fast kernels and a range coder.

Submodules: ``ops`` (functional kernels), ``nn`` (modules), ``coding`` (C++ range coder),
``container`` (the ``.slim`` file format), ``models`` (``SlimCAE``).
"""
from ._version import __version__
from .backend import resolve_backend

__all__ = ["__version__", "resolve_backend"]
