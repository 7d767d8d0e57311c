"""Set PyTorch's TF32 switches for a block and put them back after."""
from contextlib import contextmanager

import torch


@contextmanager
def tf32_switches(cudnn: bool, matmul: bool):
    """``torch.backends.cudnn.allow_tf32`` / ``torch.backends.cuda.matmul.allow_tf32`` set to
    ``cudnn`` / ``matmul`` inside the block (properties of module objects: monkeypatch cannot set
    them), restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


_PRECISION_SWITCHES = (("",), ("cudnn",), ("cudnn", "conv"), ("cudnn", "rnn"),
                       ("cuda", "matmul"))


def _switch(path):
    obj = torch.backends
    for name in path:
        if name:
            obj = getattr(obj, name)
    return obj


@contextmanager
def fp32_precisions(values):
    """PyTorch's ``fp32_precision`` switches (torch >= 2.9) set inside the block: ``values``
    maps a path (``("cudnn", "conv")``, ``("",)`` for ``torch.backends`` itself) to its value;
    every switch is put back after, parents first (setting a parent writes its children)."""
    saved = [(p, _switch(p).fp32_precision) for p in _PRECISION_SWITCHES]
    try:
        for p, v in values.items():
            _switch(p).fp32_precision = v
        yield
    finally:
        for p, v in saved:
            _switch(p).fp32_precision = v
