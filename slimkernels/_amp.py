"""Switching autocast off around a computation on any device."""
from __future__ import annotations

import contextlib

import torch

__all__ = ["no_autocast"]


def no_autocast(device_type: str):
    """A context that runs its block without autocast on ``device_type`` (a ``torch.device``'s
    ``type``, e.g. ``"cpu"``, ``"cuda"``, ``"mps"``): ``torch.autocast(device_type,
    enabled=False)`` where that device has autocast, else a null context (``"meta"`` has none:
    ``torch.autocast("meta", enabled=False)`` raises "unsupported scalarType", which broke shape
    inference on meta tensors)."""
    # (cpu and cuda have autocast: not asked, torch 2.11's dynamo cannot trace the check)
    if device_type not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)
