"""The slimmable layers under ``torch.compile`` with gradients (CPU, inductor): the compiled
forward and backward give the eager results. Run in a child process: the first failure seen
(a transposed conv's backward) aborted the process ("double free or corruption"), which would
take pytest with it."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent("""
    import sys
    import torch
    from slimkernels.nn import SlimConv2d, SlimConvTranspose2d, SlimGDN, SwitchGDN

    torch.manual_seed(0)

    def check(name, m, x, *args):
        def run(f):
            m.zero_grad()
            xi = x.clone().requires_grad_(True)
            out = f(xi, *args)
            (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
            return [out.detach(), xi.grad] + [p.grad for p in m.parameters()
                                              if p.grad is not None]
        eager, comp = run(m), run(torch.compile(m))
        assert len(eager) == len(comp), name
        for a, b in zip(eager, comp):
            assert torch.isfinite(b).all(), name
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        print("ok", name, flush=True)

    check("tconv", SlimConvTranspose2d(16, 16, 5, stride=2, padding=2, output_padding=1,
                                       widths=[16, 8]), torch.rand(2, 8, 32, 32), 8)
    check("conv", SlimConv2d(16, 16, 5, stride=2, padding=2, widths=[16, 8]),
          torch.rand(2, 8, 32, 32), 8)
    check("gdn", SlimGDN(16), torch.rand(2, 16, 16, 16))
    check("switch", SwitchGDN([16, 8]), torch.rand(2, 8, 16, 16))
""")


def test_layers_compile_with_gradients():
    pytest.importorskip("torch._inductor")
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert r.stdout.split() == ["ok", "tconv", "ok", "conv", "ok", "gdn", "ok", "switch"]


def test_importing_the_package_does_not_import_dynamo():
    """(Making the compile workaround at import pulled in torch._dynamo: ~0.9 s more for every
    `import slimkernels`, the command line's start included.)"""
    r = subprocess.run([sys.executable, "-c", "import sys, slimkernels.models, slimkernels.cli, "
                        "slimkernels.ops; print('torch._dynamo' in sys.modules)"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr
