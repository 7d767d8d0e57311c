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
