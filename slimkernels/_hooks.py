"""Whether calling a module runs more than its class's ``forward``: hooks (its own or global ones)
or an instance-level ``forward``. The fused paths (a GDN folded into its conv's epilogue, the image
written by the last layer) and the CPU replay check it before they skip or repeat module calls."""
from typing import Iterable, List, Tuple

import torch

from ._state import _STATE_KEY

_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


def global_hooks() -> bool:
    """Whether any module-global hook (``torch.nn.modules.module.register_module_*_hook``) is
    registered."""
    mm = torch.nn.modules.module
    return any(bool(getattr(mm, n, None)) for n in _GLOBAL_HOOKS)


def hook_dicts(modules: Iterable[torch.nn.Module]) -> List[Tuple[dict, ...]]:
    """Per module, the dicts that say whether calling it does more than its class's forward: its
    forward (pre-)hooks, its backward (pre-)hooks and its instance ``__dict__`` (an instance-level
    ``forward``). Kept by a caller that checks the same modules often (:func:`hooked`)."""
    return [(m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks,
             m.__dict__) for m in modules]


#: The compiled module-tree helpers (``slimkernels._state_key``), None where not built.
_COMPILED = _STATE_KEY


def hooked(dicts: Iterable[Tuple[dict, ...]]) -> bool:
    """Whether one of the modules of :func:`hook_dicts` has a hook or its own ``forward`` now.
    A list goes to the compiled check (``slimkernels._state_key.hooked``: the same answer, its
    ~1000 dicts prefetched first: the CPU replay asks it before every replay, right after a
    transform or an image read has evicted them). While torch.compile traces, the Python form
    (the compiled check is opaque to dynamo: a graph break)."""
    if _COMPILED is not None and type(dicts) is list and not torch.compiler.is_dynamo_compiling():
        return _COMPILED.hooked(dicts)
    return any(f or p or b or q or "forward" in d for f, p, b, q, d in dicts)


def runs_more_than_forward(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones), an instance-level
    ``forward``, or a ``forward`` other than the one its class declares as what its fused form
    computes (the class attribute ``_op_forward``, where a class sets one: a subclass that
    overrides ``forward``, or a ``forward`` patched onto the class, differs): a fused path that
    skips the call must not be taken then."""
    cls = type(module)
    return global_hooks() or hooked(hook_dicts((module,))) or \
        cls.forward is not getattr(cls, "_op_forward", cls.forward)
