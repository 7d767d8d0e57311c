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
from . import _optim_versions
from ._version import __version__
from .backend import resolve_backend

_SUBMODULES = ("ops", "nn", "codec", "coding", "container", "models", "pretrained",
               "ratecontrol", "io", "allocator")
__all__ = ["__version__", "resolve_backend", *_SUBMODULES]

# fused optimizer steps bump the parameters' version counters, which key this library's caches
_optim_versions.install()


def __getattr__(name: str):
    """Import the public submodules on first use (``slimkernels.nn`` after ``import slimkernels``)."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'slimkernels' has no attribute {name!r}")
