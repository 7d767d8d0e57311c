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


@pytest.fixture(params=["compiled", "python"])
def check(request, monkeypatch):
    """Which :func:`_hooks.hooked` answers: the compiled one (``slimkernels._state_key``) or the
    Python one (the same answers)."""
    if request.param == "compiled":
        if _hooks._COMPILED is None:
            pytest.skip("slimkernels._state_key not built")
    else:
        monkeypatch.setattr(_hooks, "_COMPILED", None)
    return request.param


@pytest.mark.parametrize("kind", sorted(_HOOKS))
def test_every_hook_kind_is_seen_and_its_removal_too(kind, check):
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


def test_the_compiled_check_answers_as_the_python_one_over_a_tree(check):
    """Every module of a SlimCAE-sized tree, a hook on each in turn (the last module too: the
    compiled check must read the whole list)."""
    from slimkernels.models import SlimCAE
    mods = list(SlimCAE(widths=(16, 8)).modules())
    dicts = _hooks.hook_dicts(mods)
    assert len(dicts) > 50 and not _hooks.hooked(dicts)
    for i in (0, len(mods) // 2, len(mods) - 1):
        for kind in ("forward", "backward_pre", "instance_forward"):
            remove = _HOOKS[kind](mods[i])
            try:
                assert _hooks.hooked(dicts), (i, kind)
            finally:
                remove()
            assert not _hooks.hooked(dicts)


def test_the_compiled_check_refuses_what_is_not_hook_dicts():
    if _hooks._COMPILED is None:
        pytest.skip("slimkernels._state_key not built")
    with pytest.raises(TypeError, match="5-tuples of slimkernels._hooks.hook_dicts"):
        _hooks.hooked([({}, {}, {}, {})])
    with pytest.raises(TypeError, match="5-tuples"):
        _hooks.hooked([1])
    assert _hooks.hooked(tuple(_hooks.hook_dicts([nn.Linear(1, 1)]))) is False   # (Python's)
