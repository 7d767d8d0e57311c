"""Checking a user-given device name before anything is moved to it.

Import-light (torch is imported by the calls that need it): the command line's parser takes
:func:`cli_device` as a type, and ``slimkernels --help`` / ``info`` do not import torch."""
from __future__ import annotations

import re

#: Names :func:`cli_device` accepts without asking torch (all of them are torch device names).
_PLAIN = re.compile(r"(cpu|cuda)(:(0|[1-9][0-9]{0,8}))?")


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device``; ValueError (what to do instead) when it is not a device
    name, or a CUDA device torch cannot use in this process."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name ({e}); use 'cpu' or "
                         f"'cuda' / 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available to this torch "
                             f"({torch.__version__}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s); use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return dev


def cli_device(text: str) -> str:
    """An argparse ``type`` for the command lines' ``--device``: ``text`` when it names a CPU or
    CUDA device (``cpu``, ``cuda``, ``cuda:N``), else ``argparse.ArgumentTypeError`` (the
    transforms run on those two; ``mps`` / ``xpu`` / ``meta`` failed deep inside). Whether the
    GPU exists is checked where the model is loaded (:func:`check_device`)."""
    import argparse
    if isinstance(text, str) and _PLAIN.fullmatch(text):   # (the default, "cpu", included)
        return text
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device the transforms run on: use "
                                         f"cpu, cuda or cuda:N")
    return text
