"""slimkernels: slimmable compressive autoencoders (SlimCAE) with fast kernels and a range coder.

Submodules: ``ops`` (functional kernels), ``nn`` (modules), ``coding`` (C++ range coder),
``container`` (the ``.slim`` file format), ``codec`` (``SlimCodec``: compress / decompress),
``models`` (``SlimCAE``), ``pretrained`` (the bundled model, model files), ``io`` (images),
``ratecontrol`` (width for a target rate), ``allocator`` (glibc malloc tuning), each imported
on first use (``slimkernels.nn`` after ``import slimkernels``); ``training``, ``evaluation`` and
``kernels`` (Triton) by name (``import slimkernels.training``).
"""
import importlib

from . import _fork  # noqa: F401  (records the importing process: see _fork.forked_since_import)
from ._version import __version__

_SUBMODULES = ("ops", "nn", "codec", "coding", "container", "models", "pretrained",
               "ratecontrol", "io", "allocator")
__all__ = ["__version__", "resolve_backend", *_SUBMODULES]


def __getattr__(name: str):
    """Import the public submodules on first use (``slimkernels.nn`` after ``import slimkernels``),
    and :func:`~slimkernels.backend.resolve_backend`: ``import slimkernels`` does not import torch
    (the command line's ``--help``, ``--version`` and ``info`` answer in ~0.1 s, not ~2.5)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "resolve_backend":
        from .backend import resolve_backend
        return resolve_backend
    raise AttributeError(f"module 'slimkernels' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
