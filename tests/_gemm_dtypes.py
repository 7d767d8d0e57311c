"""A dispatch mode that records the input dtype of every convolution and GEMM a block runs."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class GemmDtypes(TorchDispatchMode):
    """``with GemmDtypes() as rec: ...``; ``rec.seen``: ``[(op name, dtype of its first input)]``
    for aten's convolutions and matrix products. (Under a dispatch mode the library's ops take
    their PyTorch paths: ``slimkernels._cpu.tracing()``.)"""

    OPS = ("convolution", "_convolution", "mkldnn_convolution", "_slow_conv2d_forward",
           "slow_conv_transpose2d", "convolution_backward", "mm", "addmm", "bmm", "baddbmm",
           "matmul")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.OPS:
            self.seen.append((func.overloadpacket.__name__, args[0].dtype))
        return func(*args, **(kwargs or {}))
