"""The slimmable layers under ``torch.compile`` with gradients (CPU, inductor): the compiled
forward and backward give the eager results, each layer compiled whole (``fullgraph=True``: no
graph break). Run in a child process: the first failure seen (a transposed conv's backward)
aborted the process ("double free or corruption"), which would take pytest with it."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = textwrap.dedent("""
    import sys
    import torch
    from slimkernels.nn import (SlimConv2d, SlimConvTranspose2d, SlimEntropyBottleneck, SlimGDN,
                                SlimGDNPlus, SwitchGDN)

    torch.manual_seed(0)

    def check(name, m, x, *args):
        def run(f):
            m.zero_grad()
            xi = x.clone().requires_grad_(True)
            out = f(xi, *args)
            (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
            return [out.detach(), xi.grad] + [p.grad for p in m.parameters()
                                              if p.grad is not None]
        eager, comp = run(m), run(torch.compile(m, fullgraph=True))
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
    # (shapes the eager fp32 training takes through Winograd: WINOGRAD_TRAIN_MIN_N channels,
    # WINOGRAD_TRAIN_MIN_TILES tiles)
    check("conv_wino", SlimConv2d(96, 96, 5, stride=2, padding=2), torch.rand(1, 96, 96, 96), 96)
    check("tconv_wino", SlimConvTranspose2d(96, 96, 5, stride=2, padding=2, output_padding=1),
          torch.rand(1, 96, 48, 48), 96)
    check("igdn", SlimGDN(16, inverse=True), torch.rand(2, 16, 16, 16))
    check("gdnplus", SlimGDNPlus([16, 8]), torch.rand(2, 8, 16, 16))

    class Likelihoods(torch.nn.Module):   # (the entropy model's likelihoods: one tensor)
        def __init__(self):
            super().__init__()
            self.eb = SlimEntropyBottleneck([16, 8]).eval()   # (eval: rounding, no noise)

        def forward(self, y):
            return self.eb(y)[1]

    check("entropy", Likelihoods(), torch.randn(2, 8, 8, 8) * 3)
""")


def test_layers_compile_with_gradients():
    pytest.importorskip("torch._inductor")
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert r.stdout.split() == ["ok", "tconv", "ok", "conv", "ok", "gdn", "ok", "switch",
                                "ok", "conv_wino", "ok", "tconv_wino", "ok", "igdn",
                                "ok", "gdnplus", "ok", "entropy"]


def test_importing_the_package_does_not_import_dynamo():
    """(Making the compile workaround at import pulled in torch._dynamo: ~0.9 s more for every
    `import slimkernels`, the command line's start included.)"""
    r = subprocess.run([sys.executable, "-c", "import sys, slimkernels.models, slimkernels.cli, "
                        "slimkernels.ops; print('torch._dynamo' in sys.modules)"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr


MODEL_CHILD = textwrap.dedent("""
    import torch
    from slimkernels.models import SlimCAE

    for gdn in ("switch", "slim", "slim+"):
        torch.manual_seed(0)
        m = SlimCAE(widths=(16, 8), gdn=gdn)
        x = torch.rand(1, 3, 64, 48)
        for train in (False, True):
            m.train(train)

            def run(f):
                m.zero_grad()
                torch.manual_seed(1)   # (the training noise: the same draws in both runs)
                out = f(x, 8)
                loss = out["x_hat"].square().mean() + sum(
                    -torch.log2(v).mean() for v in out["likelihoods"].values())
                loss.backward()
                return [out["x_hat"].detach(), loss.detach()] + [
                    p.grad.clone() for p in m.parameters() if p.grad is not None]

            # the model whole (fullgraph: no graph break) through dynamo alone (backend
            # "eager": the same ops and random draws as eager, so the same values)
            eager = run(m)
            comp = run(torch.compile(m, fullgraph=True, backend="eager"))
            assert len(eager) == len(comp) > 2, (gdn, train)
            for a, b in zip(eager, comp):
                assert torch.isfinite(b).all(), (gdn, train)
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{gdn} {train}")
            torch._dynamo.reset()
        # bf16 autocast without gradients (the codec's default on CPU): the compiled graph's
        # PyTorch ops round apart from the eager CPU kernels, within bf16's precision
        m.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            eager = m(x, 8)
            comp = torch.compile(m, fullgraph=True, backend="eager")(x, 8)
        a, b = eager["x_hat"].float(), comp["x_hat"].float()
        assert torch.isfinite(b).all(), gdn
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-2 * float(a.abs().max()), msg=gdn)
        torch._dynamo.reset()
        print("ok", gdn, flush=True)

    # the joint training step of several widths (its first layer once, checked for hooks)
    m = SlimCAE(widths=(16, 8)).train()
    x = torch.rand(2, 3, 64, 48)

    def step(x):
        return sum(o["x_hat"].square().mean() + sum(-torch.log2(v).mean()
                                                    for v in o["likelihoods"].values())
                   for o in m.forward_widths(x, [16, 8]))

    def run(f):
        m.zero_grad()
        torch.manual_seed(1)
        loss = f(x)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in m.parameters() if p.grad is not None]

    eager, comp = run(step), run(torch.compile(step, fullgraph=True, backend="eager"))
    assert len(eager) == len(comp) > 1
    for a, b in zip(eager, comp):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    print("ok", "widths", flush=True)

    # the codec's transforms alone (what compress / decompress run), without gradients
    m.eval()
    y = torch.randn(1, 8, 4, 3).round()
    with torch.no_grad():
        for f, a in ((lambda t: m.encode(t, 8), x[:1]), (m.decode, y)):
            torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="eager")(a), f(a),
                                       rtol=1e-5, atol=1e-6)
            torch._dynamo.reset()
    print("ok", "transforms", flush=True)
""")


def test_the_model_compiles_whole_in_eval_and_training():
    """SlimCAE's forward at a width, and its joint step of several widths, compile without a
    graph break (``fullgraph=True``: its switches, caches, hook checks, image check and lower
    bound are invisible to dynamo) and give eager's outputs and gradients, in eval and in
    training (noise)."""
    pytest.importorskip("torch._dynamo")
    r = subprocess.run([sys.executable, "-c", MODEL_CHILD], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert r.stdout.split() == ["ok", "switch", "ok", "slim", "ok", "slim+", "ok", "widths",
                                "ok", "transforms"]


def test_the_fused_gdn_paths_compile_whole():
    """With SlimSequential's fuse_gdn switch on (a GDN folded into its conv), encode and decode
    without gradients compile whole, fp32 and bf16 (the no-gradient GDN of the fused op reached
    oneDNN's availability check, opaque to dynamo), and give eager's values."""
    from slimkernels.models import SlimCAE

    torch.manual_seed(0)
    m = SlimCAE(widths=(32, 16)).eval()
    m.g_a.fuse_gdn = True
    m.g_s.fuse_gdn = True
    x, y = torch.rand(1, 3, 64, 64), torch.randn(1, 16, 4, 4).round()
    for f, a in ((lambda t: m.encode(t, 16), x), (m.decode, y)):
        for bf16 in (False, True):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                want = f(a).float()
                got = torch.compile(f, fullgraph=True, backend="eager")(a).float()
            tol = 1e-2 * float(want.abs().max()) if bf16 else 1e-6
            torch.testing.assert_close(got, want, rtol=1e-2 if bf16 else 1e-5, atol=tol)
            torch._dynamo.reset()


def test_another_thread_compiling_leaves_this_thread_eager():
    """torch.compiler.is_compiling() reads a process-wide flag (torch 2.13 holds it through a
    whole compile, in any thread): while another thread compiled, this thread's eager calls took
    the traced paths (the CPU kernels bypassed: compress ~10x slower, other bf16 bytes; forward
    AD through the lower bound refused for want of a jvp). The checks are dynamo's own now."""
    import threading
    from slimkernels import _cpu
    from slimkernels.models import SlimCAE
    from slimkernels.nn import SlimEntropyBottleneck

    torch.manual_seed(0)
    m = SlimCAE(widths=(16, 12)).eval()
    m.update()
    x = torch.rand(1, 3, 64, 64)
    want = {p: m.compress(x, 12, precision=p) for p in ("fp32", "bf16")}
    eb = SlimEntropyBottleneck([8]).eval()
    yl = torch.randn(1, 8, 4, 4) * 3
    started, done = threading.Event(), threading.Event()

    def slow_backend(gm, example):   # (holds the other thread's compile open meanwhile)
        started.set()
        done.wait(60)
        return gm

    t = threading.Thread(target=lambda: torch.compile(lambda v: v.sin() + 1,
                                                      backend=slow_backend)(torch.ones(3)))
    t.start()
    try:
        assert started.wait(60)
        assert not _cpu.tracing()
        for p in ("fp32", "bf16"):
            assert m.compress(x, 12, precision=p) == want[p], p
        torch.func.jvp(lambda v: eb(v)[1], (yl,), (torch.ones_like(yl),))
    finally:
        done.set()
        t.join()
