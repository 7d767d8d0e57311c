"""The optional compiled CPU kernels (``slimkernels._cpu_kernels``, csrc/cpu/) and the one switch
that turns all of them off: the environment variable ``SLIMKERNELS_CPU_KERNELS=0`` (read at every
call), which sends every op to its PyTorch path."""
from __future__ import annotations

import functools
from typing import Optional

from . import _recording
from . import _env


@functools.lru_cache(maxsize=None)
def _module():
    try:
        from . import _cpu_kernels
    except ImportError:  # built without it (non-x86, old compiler or assembler)
        return None
    return _cpu_kernels


@functools.lru_cache(maxsize=None)
def _supported(probe: str) -> bool:
    ck = _module()
    return ck is not None and hasattr(ck, probe) and bool(getattr(ck, probe)())


def cpu_kernels(probe: str) -> Optional[object]:
    """The extension module when it is built, not switched off by ``SLIMKERNELS_CPU_KERNELS=0``,
    and its capability check ``probe`` (``"amx_available"`` for the AMX-BF16 GDN / conv kernels,
    ``"latents_simd_available"`` for the AVX-512 / AVX2 latent quantization) returns True on this
    CPU; else None."""
    if switched_off():
        return None
    if not _supported(probe):
        return None
    rec = _recording.ACTIVE.get()   # a CPU replay recording (slimkernels.cpu_replay)
    return _module() if rec is None else rec.kernels(_module())


def switched_off() -> bool:
    """``SLIMKERNELS_CPU_KERNELS=0`` (or ``off``, ``false``, ``no``) in the environment now
    (read at every call, cheaply: :func:`slimkernels._env.switched_off`)."""
    return _env.switched_off("SLIMKERNELS_CPU_KERNELS")
