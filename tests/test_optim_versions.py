"""slimkernels._optim_versions: fused optimizer steps bump the parameters' version counters."""
import pytest
import torch

import slimkernels.nn  # noqa: F401  (installs the hook: slimkernels._state, the caches' keys)
from slimkernels import _optim_versions

OPTIMIZERS = [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD]


def _child(code: str) -> str:
    """``code``'s stdout, run by ``python -c`` in a child process (which must exit 0)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_importing_the_caching_modules_installs_it_once():
    assert _optim_versions.installed()
    handle = _optim_versions._HANDLE
    _optim_versions.install()
    assert _optim_versions._HANDLE is handle


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fused", [True, False])
def test_every_updated_parameter_has_a_new_version(opt, fused):
    """torch's fused kernels leave ``_version`` as it was (torch 2.13, CPU): the hook bumps it,
    as a non-fused step does; a parameter without a gradient (not updated) keeps its own."""
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))
    o = opt([a, b], lr=0.1, fused=fused)
    a.grad = torch.randn(5)
    va, vb, before = a._version, b._version, a.detach().clone()
    o.step()
    assert not torch.equal(a.detach(), before)        # (the step did update a)
    assert a._version > va and b._version == vb


def test_the_hook_comes_with_the_caches_not_with_the_bare_package():
    """``import slimkernels`` imports no torch (the command line's fast answers); the first module
    that keys a cache (``_state``, imported by ``nn``, ``ops``, ``codec``, ...) installs the hook.
    In a child process: this session imported both long ago."""
    code = (
        "import sys, slimkernels\n"
        "print('torch' in sys.modules, 'slimkernels._optim_versions' in sys.modules)\n"
        "import slimkernels.codec\n"
        "from slimkernels import _optim_versions\n"
        "print(_optim_versions.installed())\n")
    out = _child(code)
    assert out.split() == ["False", "False", "True"], out


def test_a_graph_that_saved_a_parameter_refuses_backward_after_a_fused_step():
    """The same autograd check as after a non-fused step (before: a silently wrong gradient)."""
    w = torch.nn.Parameter(torch.randn(4))
    o = torch.optim.Adam([w], lr=0.1, fused=True)
    x = torch.randn(4, requires_grad=True)
    y = (w * x).sum()                                  # saves w for x's gradient
    w.grad = torch.ones(4)
    o.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_a_torch_whose_increment_version_takes_one_tensor(monkeypatch):
    real = torch.autograd.graph.increment_version

    def one_at_a_time(t):
        if not isinstance(t, torch.Tensor):
            raise TypeError("increment_version(): argument 'tensor' must be Tensor")
        real(t)
    monkeypatch.setattr(torch.autograd.graph, "increment_version", one_at_a_time)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(5))
    o = torch.optim.Adam([a, b], lr=0.1, fused=True)
    a.grad, b.grad = torch.randn(5), torch.randn(5)
    va, vb = a._version, b._version
    o.step()
    assert a._version > va and b._version > vb


def test_a_compiled_fused_step_bumps_at_every_call():
    """torch.compile(opt.step): the hook ran once, while dynamo traced the step, and the compiled
    calls left the counters as they were (a conv after it was 9.0 off the updated weights). Run
    in a child process (compiling imports torch._dynamo, which this test session must not)."""
    code = (
        "import torch, slimkernels.nn\n"
        "p = torch.nn.Parameter(torch.randn(16))\n"
        "o = torch.optim.Adam([p], lr=0.1, fused=True)\n"
        "step = torch.compile(o.step)\n"
        "changes = []\n"
        "for _ in range(3):\n"
        "    p.grad = torch.randn(16)\n"
        "    v = p._version\n"
        "    step()\n"
        "    changes.append(p._version - v)\n"
        "print(changes)\n")
    out = _child(code)
    assert out.strip().splitlines()[-1] == "[1, 1, 1]", out


def test_reloading_the_module_keeps_one_hook():
    """importlib.reload reran ``_HANDLE = None``: a second hook, each fused step bumping twice."""
    import importlib
    handle = _optim_versions._HANDLE
    importlib.reload(_optim_versions)
    _optim_versions.install()
    assert _optim_versions._HANDLE is handle
    a = torch.nn.Parameter(torch.randn(5))
    o = torch.optim.Adam([a], lr=0.1, fused=True)
    a.grad = torch.randn(5)
    v = a._version
    o.step()
    assert a._version == v + 1
