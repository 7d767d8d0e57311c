"""The optional compiled CPU kernels (``slimkernels._cpu_kernels``, csrc/cpu/) and the one switch
that turns all of them off: the environment variable ``SLIMKERNELS_CPU_KERNELS=0`` (read at every
call), which sends every op to its PyTorch path. Also what the ops do under torch's tracing and
dispatch modes and torch.func's transforms, which the kernels cannot serve: :func:`tracing`,
:func:`functorch_transform`, :func:`real_tensors`, :func:`refuse_jit_trace`."""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from . import _build_stamp, _recording
from . import _env
from ._env import _dynamo_compiling   # (torch.compiler.is_dynamo_compiling)


@functools.lru_cache(maxsize=None)
def _module():
    try:
        from . import _cpu_kernels
    except ImportError:  # built without it (non-x86, old compiler or assembler)
        return None
    return _build_stamp.optional(_cpu_kernels, "_cpu_kernels",
                                 "every op takes its PyTorch path (slower on CPU)")


@functools.lru_cache(maxsize=None)
def _supported(probe: str) -> bool:
    ck = _module()
    return ck is not None and hasattr(ck, probe) and bool(getattr(ck, probe)())


def cpu_kernels(probe: str) -> Optional[object]:
    """The extension module when it is built, not switched off by ``SLIMKERNELS_CPU_KERNELS=0``,
    and its capability check ``probe`` (``"amx_available"`` for the AMX-BF16 GDN / conv kernels,
    ``"latents_simd_available"`` for the AVX-512 / AVX2 latent quantization) returns True on this
    CPU; else None."""
    if switched_off() or tracing():
        return None
    if not _supported(probe):
        return None
    rec = _recording.ACTIVE.get()   # a CPU replay recording (slimkernels.cpu_replay)
    return _module() if rec is None else rec.kernels(_module())


def switched_off() -> bool:
    """``SLIMKERNELS_CPU_KERNELS=0`` (or ``off``, ``false``, ``no``) in the environment now
    (read at every call, cheaply: :func:`slimkernels._env.switched_off`)."""
    return _env.switched_off("SLIMKERNELS_CPU_KERNELS")


def tracing() -> bool:
    """Whether a torch dispatch mode is active (torch.export's FakeTensorMode, make_fx's proxy
    mode, a FlopCounterMode...): the compiled kernels take data pointers, which fake tensors do
    not have and a trace cannot record, so the ops take their PyTorch paths then (under
    torch.export they had cached fake weights that broke every later call in the process).
    torch.jit.trace is refused by the ops themselves (:func:`refuse_jit_trace`). True while
    torch.compile traces (its tensors are fake too; and the getter below is opaque to dynamo, a
    graph break), so that the compiled graph holds the PyTorch paths whole."""
    if _dynamo_compiling():
        return True
    f = _dispatch_mode_getter()
    return f is not None and f() is not None


def functorch_transform(*tensors) -> bool:
    """Whether a torch.func transform (``vmap``, ``grad``, ``jacrev``, ``jvp``...) is running in
    this thread, or forward-mode AD (``torch.autograd.forward_ad``) reaches the op: the compiled
    kernels take data pointers, which the transforms' wrapper tensors (batched, gradient-tracking)
    do not have, and they compute no tangents (a dual tensor's was dropped without a word), and
    the ops' hand-written autograd Functions have no vmap rule, so the ops compute with plain
    PyTorch then (their references, :func:`slimkernels.ops.gdn_reference` and ``F.conv2d`` /
    ``F.conv_transpose2d`` on the slices), which the transforms see through. False inside
    torch.compile's tracing (it traces the ops' own paths).

    ``tensors``: the op's tensors (entries that are not tensors skipped). A forward-AD dual level is
    process-wide in torch (another thread's open level is this thread's too), so an op takes the
    PyTorch path only when one of its tensors carries a tangent; with no tensors given (the
    caches' check: building uncached costs only time) any open level counts."""
    if _dynamo_compiling():
        return False
    f = _functorch_level_getter()
    if f is not None and f() is not None:
        return True
    level = _forward_ad_level()
    if level < 0:
        return False
    if not tensors:
        return True
    return any(isinstance(t, torch.Tensor) and torch._VF._unpack_dual(t, level)[1] is not None
               for t in tensors)


def _forward_ad_level() -> int:
    # (torch.autograd.forward_ad's innermost dual level, -1 outside any; a module global there)
    fad = getattr(torch.autograd, "forward_ad", None)
    return getattr(fad, "_current_level", -1)


@functools.lru_cache(maxsize=None)
def _functorch_level_getter():
    # (private, present since torch 2.0: the innermost transform's level, None outside any)
    return getattr(getattr(torch._C, "_functorch", None), "maybe_current_level", None)


@functools.lru_cache(maxsize=None)
def _dispatch_mode_getter():
    try:   # (private, present since torch 1.13; without it nothing is detected, as before)
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:   # pragma: no cover
        return None
    return _get_current_dispatch_mode


def real_tensors():
    """A context in which new tensors are real, normal ones, whatever torch modes are active
    (torch.export's FakeTensorMode and its proxy / functional modes; inference mode): for the
    values the process-wide ``lru_cache`` s keep. Private torch helpers (the fake mode is an
    "infra" mode that ``_disable_current_modes`` alone leaves on); each skipped if a torch lacks
    it."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        stack.enter_context(unset_fake_temporarily())
    except ImportError:   # pragma: no cover
        pass
    try:
        from torch.utils._python_dispatch import _disable_current_modes
        stack.enter_context(_disable_current_modes())
    except ImportError:   # pragma: no cover
        pass
    return stack


def refuse_jit_trace(op: str) -> None:
    """RuntimeError when torch.jit traces ``op``: a trace records tensor operations, not the
    compiled kernels' calls (their outputs come from data pointers), so the traced module
    returned uninitialised memory without a word (and with gradients on, failed with C++'s
    "unordered_map::at")."""
    if torch._C._get_tracing_state() is not None:
        raise RuntimeError(f"{op}: torch.jit.trace cannot record slimkernels' ops (their "
                           f"compiled kernels are not traceable: the trace would return "
                           f"garbage); run the model eagerly, or use torch.compile or "
                           f"torch.export")
