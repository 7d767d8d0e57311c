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


def _fp32_precision(*path: str) -> Optional[str]:
    """PyTorch's ``fp32_precision`` switch (torch >= 2.9) of backend ``torch.backends.<path>``,
    e.g. ``("cudnn", "conv")``: its own value, else (``"none"``) its parents' inward out, else
    ``"ieee"``; None where this torch has no such switch (the ``allow_tf32`` ones only)."""
    chain, obj = [torch.backends], torch.backends
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
        chain.append(obj)
    if not isinstance(getattr(obj, "fp32_precision", None), str):
        return None
    for o in reversed(chain):
        v = getattr(o, "fp32_precision", None)
        if isinstance(v, str) and v != "none":
            return v
    return "ieee"


def tf32_allowed() -> bool:
    """Whether fp32 GPU kernels may use TF32 tensor cores: PyTorch's own switches for
    convolutions (on by default) and matrix products; either allowing TF32 allows it, as for the
    convolutions and 1x1 channel mixing these kernels replace; both asking for IEEE fp32 gets
    full fp32. Read from ``torch.backends.cudnn.conv.fp32_precision`` and
    ``torch.backends.cuda.matmul.fp32_precision`` where this torch has them (with their parents'
    values where they say ``"none"``; the legacy ``allow_tf32`` getters raise once those were
    set: every fp32 Triton conv and GDN then failed), else from ``torch.backends.cudnn.allow_tf32``
    and ``torch.backends.cuda.matmul.allow_tf32``."""
    conv, mm = _fp32_precision("cudnn", "conv"), _fp32_precision("cuda", "matmul")
    if conv is not None and mm is not None:
        return "tf32" in (conv, mm)
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
            with an interpreter that cannot run the kernels here
            (:func:`slimkernels.kernels.interpreter.interpreter_problem`), or Triton not
            installed.
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
        if not cuda:   # (the interpreter: can it run the kernels with this NumPy?)
            from .kernels.interpreter import check_interpreter
            check_interpreter("the Triton backend")
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
