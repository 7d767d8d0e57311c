"""slimkernels._hooks: whether calling a module runs more than its class's forward."""
import pytest
import torch
import torch.nn as nn

from slimkernels import _hooks


def _hook(kind, m):
    """Register hook ``kind`` on ``m`` (or globally); returns its remover."""
    mm = torch.nn.modules.module
    if kind == "forward":
        return m.register_forward_hook(lambda *a: None).remove
    if kind == "forward_pre":
        return m.register_forward_pre_hook(lambda *a: None).remove
    if kind == "backward":
        return m.register_full_backward_hook(lambda *a: None).remove
    if kind == "backward_pre":
        return m.register_full_backward_pre_hook(lambda *a: None).remove
    if kind == "instance_forward":
        m.forward = lambda x: x
        return lambda: m.__dict__.pop("forward")
    if kind == "global_forward":
        return mm.register_module_forward_hook(lambda *a: None).remove
    if kind == "global_forward_pre":
        return mm.register_module_forward_pre_hook(lambda *a: None).remove
    if kind == "global_backward":
        return mm.register_module_full_backward_hook(lambda *a: None).remove
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["forward", "forward_pre", "backward", "backward_pre",
                                  "instance_forward", "global_forward", "global_forward_pre",
                                  "global_backward"])
def test_every_hook_kind_is_seen_and_its_removal_too(kind):
    m, other = nn.Linear(2, 2), nn.Linear(2, 2)
    dicts = _hooks.hook_dicts([other, m])
    assert not _hooks.runs_more_than_forward(m) and not _hooks.hooked(dicts)
    remove = _hook(kind, m)
    try:
        assert _hooks.runs_more_than_forward(m)
        assert _hooks.runs_more_than_forward(other) == kind.startswith("global")
        # the kept dicts see a module's own hook added after they were taken
        assert _hooks.hooked(dicts) == (not kind.startswith("global"))
        assert _hooks.global_hooks() == kind.startswith("global")
    finally:
        remove()
    assert not _hooks.runs_more_than_forward(m) and not _hooks.hooked(dicts)
