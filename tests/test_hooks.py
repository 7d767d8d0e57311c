"""slimkernels._hooks: whether calling a module runs more than its class's forward."""
import pytest
import torch
import torch.nn as nn

from slimkernels import _hooks


_MM = torch.nn.modules.module


def _instance_forward(m):
    m.forward = lambda x: x
    return lambda: m.__dict__.pop("forward")


# hook kind -> (module -> its remover)
_HOOKS = {
    "forward": lambda m: m.register_forward_hook(lambda *a: None).remove,
    "forward_pre": lambda m: m.register_forward_pre_hook(lambda *a: None).remove,
    "backward": lambda m: m.register_full_backward_hook(lambda *a: None).remove,
    "backward_pre": lambda m: m.register_full_backward_pre_hook(lambda *a: None).remove,
    "instance_forward": _instance_forward,
    "global_forward": lambda m: _MM.register_module_forward_hook(lambda *a: None).remove,
    "global_forward_pre": lambda m: _MM.register_module_forward_pre_hook(lambda *a: None).remove,
    "global_backward": lambda m: _MM.register_module_full_backward_hook(lambda *a: None).remove,
}


@pytest.mark.parametrize("kind", sorted(_HOOKS))
def test_every_hook_kind_is_seen_and_its_removal_too(kind):
    m, other = nn.Linear(2, 2), nn.Linear(2, 2)
    dicts = _hooks.hook_dicts([other, m])
    assert not _hooks.runs_more_than_forward(m) and not _hooks.hooked(dicts)
    remove = _HOOKS[kind](m)
    try:
        assert _hooks.runs_more_than_forward(m)
        assert _hooks.runs_more_than_forward(other) == kind.startswith("global")
        # the kept dicts see a module's own hook added after they were taken
        assert _hooks.hooked(dicts) == (not kind.startswith("global"))
        assert _hooks.global_hooks() == kind.startswith("global")
    finally:
        remove()
    assert not _hooks.runs_more_than_forward(m) and not _hooks.hooked(dicts)
