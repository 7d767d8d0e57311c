"""Exception types shared by modules that must not import torch (the container, the command
line's light commands) and the rest; each is re-exported by its public module."""
from __future__ import annotations

__all__ = ["MissingFileError"]


class MissingFileError(FileNotFoundError, ValueError):
    """A file or folder that does not exist (an image to read, a model file, a ``.slim`` file, a
    training checkpoint or data folder, an evaluation folder). Both a :class:`FileNotFoundError`
    (the usual ``except`` for a missing path) and a :class:`ValueError` (what ``read_image``,
    ``model_info`` and the trainer raised for a missing path before, while ``load_model``
    raised FileNotFoundError): either ``except`` catches it, from every function. The message
    names the path (no errno prefix)."""


MissingFileError.__module__ = "slimkernels.io"   # (its public home: slimkernels.io)
