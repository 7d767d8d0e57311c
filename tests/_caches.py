"""Test helper: the ops' process-wide caches emptied, so that the next call builds them."""
import importlib

import torch

from slimkernels import ops

# (the modules: ``slimkernels.ops.gdn`` as an attribute of the package is the function)
conv_ops = importlib.import_module("slimkernels.ops.conv")
gdn_ops = importlib.import_module("slimkernels.ops.gdn")


def fresh_op_caches() -> None:
    """Drop the conv ops' weight caches, the sub-pixel tap plans (an ``lru_cache``) and this
    thread's GDN x^2 scratch buffer (so that a test's first call is the one that makes them,
    e.g. under ``torch.inference_mode()``)."""
    ops.clear_weight_caches()
    conv_ops._subpixel_plan.cache_clear()
    gdn_ops._SCRATCH.__dict__.pop("bufs", None)
    assert torch.is_grad_enabled()   # (a test calls this outside any no_grad / inference block)
