"""The layers under torch.export and FakeTensorMode (torch's fake tensors): the ops take their
PyTorch paths there, and nothing built under the mode is kept for later calls. In a child
process each: the state at stake (the GDN's per-thread x^2 scratch buffer) is process-wide."""
import subprocess
import sys
import textwrap


def _child(code: str) -> None:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]


def test_an_export_leaves_later_eager_gdn_calls_real():
    """torch.export of a GDN (the first call needing the x^2 scratch at that size) kept a fake
    scratch buffer: every later eager training call returned a FakeTensor, and a second export
    failed ("a fake tensor in the exported program constant's list")."""
    _child("""
        import warnings; warnings.filterwarnings("ignore")
        import torch
        from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
        from slimkernels.nn import SlimGDN
        from slimkernels.models import SlimCAE
        torch.manual_seed(0)
        m = SlimGDN(8)
        x = torch.rand(1, 8, 16, 16)
        with torch.no_grad():
            ref = m(x).clone()
        ep = torch.export.export(m, (x,))
        assert torch.allclose(ep.module()(x), ref, rtol=1e-5, atol=1e-5)
        after = m(x)                          # eager, with gradients (the training path)
        assert type(after) is torch.Tensor and torch.allclose(after, ref, rtol=1e-5, atol=1e-5)
        torch.export.export(SlimGDN(8), (x,))   # a second export
        # a model's training forward under FakeTensorMode (shape inference), then a real one
        model = SlimCAE(widths=(16, 8)).train()
        img = torch.rand(1, 3, 64, 64)
        with FakeTensorMode(allow_non_fake_inputs=True):
            model(img, 8)
        out = model(img, 8)["x_hat"]
        assert not isinstance(out, FakeTensor) and bool(torch.isfinite(out).all())
        out.sum().backward()
        print("OK")
    """)


def test_export_without_gradients_or_with_frozen_parameters():
    """Under no_grad, or with frozen parameters, the GDN layers read their cached effective
    parameters: the cache's key walk read fake tensors' data pointers ("Cannot access data
    pointer of Tensor (e.g. FakeTensor, FunctionalTensor)")."""
    _child("""
        import warnings; warnings.filterwarnings("ignore")
        import torch
        from slimkernels.nn import SlimGDN, SlimGDNPlus, SwitchGDN
        torch.manual_seed(0)
        x = torch.rand(1, 8, 16, 16)
        for make in (lambda: SlimGDN(8), lambda: SwitchGDN([8, 4]),
                     lambda: SlimGDNPlus([8, 4], inverse=True)):
            for how in ("no_grad", "frozen"):
                m = make()
                with torch.no_grad():
                    for p in m.parameters():
                        p.add_(0.05 * torch.rand_like(p))
                    ref = m(x).clone()
                if how == "frozen":
                    m.requires_grad_(False)
                    ep = torch.export.export(m, (x,))
                else:
                    with torch.no_grad():
                        ep = torch.export.export(m, (x,))
                assert torch.allclose(ep.module()(x), ref, rtol=1e-5, atol=1e-6), (make, how)
                assert torch.allclose(m(x), ref, rtol=1e-5, atol=1e-6)   # (and eager after)
        print("OK")
    """)
