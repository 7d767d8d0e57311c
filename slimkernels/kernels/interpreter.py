"""Whether Triton's interpreter (``TRITON_INTERPRET=1``: the kernels on CPU tensors) runs here.

The interpreter runs a kernel as Python over NumPy arrays, and a loop over a runtime bound
(``for k in range(0, C, BLOCK)``: every GEMM loop of :mod:`.conv` and :mod:`.gdn`) converts the
bound with ``int()`` of a one-element array. NumPy 2.4 refuses that ("only 0-dimensional
arrays can be converted to Python scalars"), and Triton's interpreter did it until
triton-lang/triton#9171 was fixed (triton 3.6 still does; 3.9 does not). Seen here with torch
2.11, triton 3.6 and NumPy 2.4.6 / 2.5.5 on Python 3.12: every kernel call raised that
``InterpreterError`` deep inside triton (198 failing tests); NumPy 2.3.5 ran all of them.

:func:`check_interpreter` turns that into one clear error at the kernels' entry points and in
:func:`slimkernels.backend.resolve_backend`, from a probe kernel run once per process. Compiled
kernels (CUDA) never take this path.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ..backend import interpreter_enabled

__all__ = ["interpreter_problem", "check_interpreter"]


@triton.jit
def _runtime_bound_loop_kernel(out_ptr, n, STEP: tl.constexpr):
    """``out[0] = len(range(0, n, STEP))``, counted by a loop over the runtime bound ``n``."""
    count = 0
    for _ in range(0, n, STEP):
        count += 1
    tl.store(out_ptr, count)


@functools.lru_cache(maxsize=None)
def interpreter_problem() -> Optional[str]:
    """Why Triton's interpreter cannot run the kernels in this process (a sentence naming the
    versions and what to change), or None when it can, or when the interpreter is off (CUDA
    kernels are compiled, not interpreted). Runs a probe kernel once per process (the first
    interpreted launch: 0.1-0.2 s)."""
    if not interpreter_enabled():
        return None
    import numpy
    versions = f"triton {triton.__version__}, NumPy {numpy.__version__}"
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _runtime_bound_loop_kernel[(1,)](out, 5, STEP=2)
    except Exception as e:   # (InterpreterError wrapping the NumPy TypeError)
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        return (f"Triton's interpreter (TRITON_INTERPRET=1) cannot run a loop over a runtime "
                f"bound with {versions} ({type(cause).__name__}: {cause}); NumPy >= 2.4 needs "
                f"a triton with the fix of triton-lang/triton#9171 (triton 3.9 has it): "
                f"pip install 'numpy<2.4', or a newer triton, or use backend='torch'")
    if int(out.item()) != 3:
        return (f"Triton's interpreter (TRITON_INTERPRET=1) counted {int(out.item())} steps of "
                f"range(0, 5, 2) instead of 3 with {versions}: use another triton or "
                f"backend='torch'")
    return None


def check_interpreter(name: str) -> None:
    """Raise ``RuntimeError("<name>: <why>")`` when :func:`interpreter_problem` finds one; called
    by the kernels' entry points for CPU tensors (``name``: the entry point)."""
    problem = interpreter_problem()
    if problem is not None:
        raise RuntimeError(f"{name}: {problem}")
