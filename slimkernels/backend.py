"""The one place that decides which implementation an op runs.

Rules, in order:
1. an explicit ``backend=`` argument of an op (``"triton"`` or ``"torch"``);
2. the environment variable ``SLIMKERNELS_BACKEND`` (``triton`` | ``torch``);
3. the tensor's device: CUDA tensors run the Triton kernels, CPU tensors the PyTorch path
   (the CPU kernels of ``slimkernels._cpu_kernels`` where they apply); the PyTorch path on
   any other device (or on CUDA when forced) runs PyTorch's own ops on the weight slices.

Triton kernels on CPU tensors are only possible under Triton's interpreter
(``TRITON_INTERPRET=1`` set before ``triton`` is imported); that is how CI tests them.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional

import torch

from ._env import getenv

__all__ = ["resolve_backend", "current_backend", "triton_available", "interpreter_enabled",
           "BACKENDS", "ENV_VAR"]

BACKENDS = ("triton", "torch")
ENV_VAR = "SLIMKERNELS_BACKEND"


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (looked up once per process: before
    triton is imported the search walks ``sys.path``, ~40 us, and every op on a CUDA tensor
    asks)."""
    return importlib.util.find_spec("triton") is not None


#: The values of a Triton boolean environment variable that mean "on" (any case; triton's
#: ``getenv_bool``, 3.x): anything else, ``false`` / ``off`` / ``no`` included, is off.
_TRITON_TRUE = ("1", "true", "on", "yes", "y")


def interpreter_enabled() -> bool:
    """True when Triton's interpreter mode is switched on (``TRITON_INTERPRET=1``, ``true``,
    ``on``, ``yes`` or ``y``, as triton itself reads it; ``false`` was taken for "on")."""
    return getenv("TRITON_INTERPRET", "0").lower() in _TRITON_TRUE


def tf32_allowed() -> bool:
    """Whether fp32 GPU kernels may use TF32 tensor cores: PyTorch's own switches
    (``torch.backends.cudnn.allow_tf32``, on by default, governs convolutions;
    ``torch.backends.cuda.matmul.allow_tf32`` matrix products). Either on allows it, as for the
    convolutions and 1x1 channel mixing these kernels replace; both off asks for full fp32."""
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


def _check_name(name, where: str) -> str:
    if not isinstance(name, str):   # (an int said "'int' object has no attribute 'strip'")
        raise ValueError(f"backend from {where} must be one of {BACKENDS} or None, got "
                         f"{type(name).__name__} {name!r}")
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} from {where}: use one of {BACKENDS}")
    return name


def resolve_backend(x: torch.Tensor, backend: Optional[str] = None) -> str:
    """Pick the backend for an op whose main input is ``x``.

    Args:
        x: the op's input tensor (any shape / dtype); only its device is read.
        backend: ``"triton"``, ``"torch"`` or ``None`` (then ``SLIMKERNELS_BACKEND``, then the device).

    Returns:
        ``"triton"`` or ``"torch"``.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: Triton asked for on a CPU tensor without ``TRITON_INTERPRET=1``, or
            Triton not installed.
    """
    if not isinstance(x, torch.Tensor):   # (a numpy array: "no attribute 'is_cuda'")
        raise ValueError(f"resolve_backend: x must be a torch.Tensor, got {type(x).__name__}")
    return _resolve(x.is_cuda, backend)


def _resolve(cuda: bool, backend: Optional[str]) -> str:
    """:func:`resolve_backend` for an input on a CUDA device (``cuda``) or not."""
    if backend is not None:
        name = _check_name(backend, "the backend= argument")
    elif (env := getenv(ENV_VAR)) and env.strip():   # (blank: unset, as empty)
        name = _check_name(env, f"${ENV_VAR}")
    else:
        name = "triton" if (cuda and triton_available()) else "torch"
    if name == "triton":
        if not triton_available():
            raise RuntimeError("the Triton backend was requested but triton is not installed: "
                               "pip install triton, or use backend='torch'")
        if not cuda and not interpreter_enabled():
            raise RuntimeError(
                "the Triton backend needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 "
                "before importing triton (slow, for testing) or use backend='torch'")
    return name


def current_backend(device: str | torch.device | None = "cpu") -> str:
    """The backend (``"triton"`` or ``"torch"``) an op would use for a tensor on ``device`` (a
    ``torch.device`` or its name, e.g. ``"cpu"``, ``"cuda:0"``; None: torch's default device)
    with no explicit argument: read from the device's type and the settings, without allocating
    there (so ``"cuda"`` answers on a machine without CUDA too).

    Raises:
        ValueError: ``device`` is not a device name, or ``$SLIMKERNELS_BACKEND`` is not a
            backend name.
        RuntimeError: as :func:`resolve_backend` (``SLIMKERNELS_BACKEND=triton`` without
            triton, or for a CPU device without ``TRITON_INTERPRET=1``).
    """
    if device is None:   # (as torch.empty(0, device=None): the default device)
        device = torch.get_default_device()
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"current_backend: device must be a torch.device or its name (e.g. "
                         f"'cpu', 'cuda:0'), got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"current_backend: {device!r} is not a device name ({e}); pass e.g. "
                         f"'cpu' or 'cuda:0'") from None
    return _resolve(dev.type == "cuda", None)
