"""Argument helpers shared by the ops that hand raw pointers to the compiled CPU kernels."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch


def fp32_cpu_input(x: torch.Tensor, name: str,
                   dtypes: Tuple[torch.dtype, ...] = (torch.float32,)) -> torch.Tensor:
    """x as a dense channels_last CPU tensor (a copy only when it is not one); ValueError naming
    ``name`` for anything but a non-empty 4-D CPU tensor of one of ``dtypes`` (fp32 only by
    default)."""
    if x.dim() != 4 or x.dtype not in dtypes or not x.is_cpu or x.numel() == 0:
        short = {torch.float32: "fp32", torch.bfloat16: "bf16"}
        names = " or ".join(short.get(d, str(d)) for d in dtypes)
        raise ValueError(f"{name}: x must be a non-empty 4-D {names} CPU tensor, got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    if x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous(memory_format=torch.channels_last)


def bias_pointer(bias: Optional[torch.Tensor], co: int,
                 name: str) -> Tuple[int, Optional[torch.Tensor]]:
    """``(data pointer or 0, the fp32 contiguous tensor to keep alive during the call)``."""
    if bias is None:
        return 0, None
    if bias.device.type != "cpu":
        raise ValueError(f"{name}: bias is on {bias.device}; these kernels run on CPU tensors")
    b = bias.detach().to(torch.float32).contiguous()
    if b.shape != (co,):
        raise ValueError(f"{name}: bias {tuple(bias.shape)} must be [{co}]")
    return b.data_ptr(), b


@functools.lru_cache(maxsize=1)
def cpu_capability() -> str:
    """ATen's CPU kernel level in this process: ``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...
    (``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` lowers at start;
    fixed for the process, so read once)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "DEFAULT"


def torch_avx512() -> bool:
    """Whether torch runs its CPU kernels at the AVX-512 level (:func:`cpu_capability`): the fp32
    AVX-512 variants of these kernels follow it, so that capping the capability caps them too."""
    return cpu_capability() == "AVX512"


def _probe_onednn_half(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    probe = "_is_mkldnn_bf16_supported" if dtype == torch.bfloat16 else \
        "_is_mkldnn_fp16_supported"
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):
        return False


# (read once, at import: a fact of the CPU and the torch build, which torch.compile's dynamo
# reads as a constant; it cannot trace into torch.backends.mkldnn.is_available)
_ONEDNN_HALF = {dt: _probe_onednn_half(dt) for dt in (torch.bfloat16, torch.float16)}


def onednn_half(dtype: torch.dtype) -> bool:
    """Whether torch's oneDNN computes CPU convs and GEMMs in ``dtype`` (``torch.bfloat16`` /
    ``torch.float16``) itself. Where it does not (a CPU without AVX-512, e.g. a Zen 3 EPYC),
    ``F.conv2d`` falls back to ATen's im2col convs and half-precision GEMMs: 50-100x slower than
    float32, and those convs erred beyond one rounding (the conv and GDN ops run them in float32
    and round there). False for any other dtype."""
    return _ONEDNN_HALF.get(dtype, False)
