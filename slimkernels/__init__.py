"""slimkernels: slimmable compressive autoencoders (SlimCAE) with fast kernels and a range coder.

Submodules: ``ops`` (functional kernels), ``nn`` (modules), ``coding`` (C++ range coder),
``container`` (the ``.slim`` file format), ``codec`` (``SlimCodec``: compress / decompress),
``models`` (``SlimCAE``), ``pretrained`` (the bundled model, model files), ``io`` (images),
``ratecontrol`` (width for a target rate), ``allocator`` (glibc malloc tuning), each imported
on first use (``slimkernels.nn`` after ``import slimkernels``); ``training``, ``evaluation`` and
``kernels`` (Triton) by name (``import slimkernels.training``).
"""
from . import _fork  # noqa: F401  (records the importing process: see _fork.forked_since_import)
from ._lazy import lazy_names
from ._version import __version__

_SUBMODULES = ("ops", "nn", "codec", "coding", "container", "models", "pretrained",
               "ratecontrol", "io", "allocator")
__all__ = ["__version__", "resolve_backend", *_SUBMODULES]

# The public submodules on first use (``slimkernels.nn`` after ``import slimkernels``), and
# resolve_backend: ``import slimkernels`` imports no torch (the command line's ``--help``,
# ``--version`` and ``info`` answer in ~0.1 s, not ~2.5).
__getattr__, __dir__ = lazy_names(__name__, {**dict.fromkeys(_SUBMODULES),
                                             "resolve_backend": "backend"}, globals())
