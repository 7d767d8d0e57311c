"""Version counters after the steps of torch's fused optimizers.

This library's caches (the conv ops' cast and prepacked weights, the GDN layers' effective
parameters, :meth:`SlimCodec.model_id`, the CPU replays, the CUDA graphs) are keyed by the
tensors' version counters, which every in-place update bumps: optimizer steps included, except
those of torch's fused optimizers (``fused=True``: Adam, AdamW, SGD, ...). Their kernels write
the parameters without bumping the counters (torch 2.13 on CPU: ``p._version`` is the same
before and after an ``Adam(fused=True)`` step), so the caches kept the weights of before the
step: stale forward and validation results, and ``compress`` writing files with the old
convolution weights. :func:`install` registers, once per process, an optimizer step post-hook
that bumps the counters of the parameters a fused parameter group has just updated, as a
non-fused step does (the same effect on autograd: a graph that saved a parameter before the
step refuses a backward after it). It is installed when :mod:`slimkernels._state` (the caches'
keys: imported by ``slimkernels.nn``, ``.ops``, ``.codec``, ...) is imported; a bare ``import
slimkernels`` imports no torch.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional

import torch

__all__ = ["install", "installed"]

_LOCK = threading.Lock()
#: the registered hook's handle; kept by ``importlib.reload`` (which reruns this module in its own
#: namespace), so that a reload does not register a second hook
_HANDLE: Optional[object] = globals().get("_HANDLE")


def _bump_fused(optimizer, args, kwargs) -> None:
    """The post-hook: ``increment_version`` of every parameter with a gradient in the
    optimizer's fused groups (``group["fused"]`` true; torch picks fused kernels only when
    asked)."""
    params = [p for g in optimizer.param_groups if g.get("fused")
              for p in g["params"] if p.grad is not None and not p.is_inference()]
    if not params:
        return
    if torch.compiler.is_dynamo_compiling():
        # a compiled step: a graph break, so that the bump runs at every call of the compiled
        # step, not once while dynamo traces it (made at the first compiled step: disable()
        # imports dynamo, which importing slimkernels must not)
        _eager_increment()(params)
    else:
        _increment(params)


def _increment(params) -> None:
    try:
        torch.autograd.graph.increment_version(params)
    except TypeError:   # (older torch: one tensor per call)
        for p in params:
            torch.autograd.graph.increment_version(p)


@functools.lru_cache(maxsize=None)
def _eager_increment():
    """:func:`_increment` behind ``torch.compiler.disable`` (a graph break), made at the first
    compiled step (as ``slimkernels.ops.conv._subpixel_weight_eager``)."""
    return torch.compiler.disable(_increment)


def install() -> None:
    """Register the post-hook (once per process; later calls do nothing)."""
    global _HANDLE
    with _LOCK:
        if _HANDLE is None:
            from torch.optim.optimizer import register_optimizer_step_post_hook
            _HANDLE = register_optimizer_step_post_hook(_bump_fused)


def installed() -> bool:
    """Whether the post-hook is registered in this process."""
    return _HANDLE is not None
