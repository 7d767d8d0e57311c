"""The layers under torch.func's transforms (vmap, grad, jacrev, jvp): the ops compute with plain
PyTorch there (slimkernels._cpu.functorch_transform). Before, vmap of a conv failed inside torch
("NYI: querying is_contiguous inside of vmap") and vmap / grad of a GDN with "must override the
setup_context staticmethod" (the lower bound's autograd Function)."""
import pytest
import torch

from slimkernels import _cpu
from slimkernels.models import SlimCAE
from slimkernels.nn import (SlimConv2d, SlimConvTranspose2d, SlimGDN, SlimGDNPlus, SwitchGDN,
                            lower_bound)


def _layers():
    """(name, layer, input channels): sliced widths (the weights hold more channels)."""
    torch.manual_seed(0)
    return [("conv", SlimConv2d(6, 5, 3, stride=2, padding=1), 4),
            ("tconv", SlimConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1), 3),
            ("gdn", SlimGDN(6), 4),
            ("igdn", SlimGDN(6, inverse=True), 5),
            ("switch", SwitchGDN([6, 4]), 4),
            ("slim+", SlimGDNPlus([6, 3]), 3)]


def _perturb(layer):
    with torch.no_grad():   # (GDN parameters off their initial identity: a real mixing)
        for p in layer.parameters():
            p.add_(0.05 * torch.rand_like(p))
    return layer


@pytest.mark.parametrize("name", [n for n, _, _ in _layers()])
def test_vmap_of_a_layer_matches_its_calls_one_by_one(name):
    _, layer, c = next(t for t in _layers() if t[0] == name)
    layer = _perturb(layer)
    x = torch.randn(3, c, 7, 9)
    out = torch.func.vmap(lambda xi: layer(xi[None])[0])(x)
    with torch.no_grad():   # the layer's own kernels, one sample at a time
        ref = torch.cat([layer(x[i:i + 1]) for i in range(3)])
    assert out.shape == ref.shape and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not _cpu.functorch_transform()   # (outside the transform: the ops' own paths again)


@pytest.mark.parametrize("name", [n for n, _, _ in _layers()])
def test_func_grad_of_a_layer_matches_autograd_in_float64(name):
    _, layer, c = next(t for t in _layers() if t[0] == name)
    layer = _perturb(layer).double()
    x = torch.randn(2, c, 6, 5, dtype=torch.float64)
    params = dict(layer.named_parameters())

    def loss(p):
        return torch.func.functional_call(layer, p, (x,)).square().sum()

    grads = torch.func.grad(loss)(params)
    layer.zero_grad()
    layer(x).square().sum().backward()
    used = 0
    for k, p in params.items():
        if p.grad is None:   # (another width's parameters: SwitchGDN)
            assert not grads[k].any(), k
        else:
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-10, atol=1e-12)
            used += 1
    assert used >= 2


def test_per_sample_gradients_of_a_conv():
    """vmap over grad (per-sample gradients, as in differential privacy)."""
    torch.manual_seed(1)
    conv = SlimConv2d(4, 6, 3, padding=1).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)   # 2 of its 4 input channels
    params = {k: v.detach() for k, v in conv.named_parameters()}

    def loss(p, xi):
        return torch.func.functional_call(conv, p, (xi[None],)).pow(3).sum()

    per = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(3):
        w = conv.weight.detach().clone().requires_grad_()
        b = conv.bias.detach().clone().requires_grad_()
        y = torch.nn.functional.conv2d(x[i:i + 1], w[:, :2], b, padding=1)
        y.pow(3).sum().backward()
        torch.testing.assert_close(per["weight"][i], w.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(per["bias"][i], b.grad, rtol=1e-10, atol=1e-12)


def test_jvp_and_jacrev_of_an_igdn_conv_pair():
    torch.manual_seed(2)
    tconv = SlimConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1).double()
    igdn = _perturb(SlimGDN(4, inverse=True)).double()

    def f(x):
        return tconv(igdn(x))

    x = torch.randn(1, 4, 3, 2, dtype=torch.float64)
    v = torch.randn_like(x)
    _, tangent = torch.func.jvp(f, (x,), (v,))
    jac = torch.func.jacrev(f)(x)
    ref = torch.autograd.functional.jacobian(f, x)
    torch.testing.assert_close(jac, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tangent, (ref.flatten(4) @ v.flatten()), rtol=1e-10, atol=1e-12)


def test_lower_bound_under_vmap_and_grad():
    x = torch.tensor([[0.5, -1.0], [2.0, 0.1]])
    bound = torch.tensor(0.2)
    torch.testing.assert_close(torch.func.vmap(lambda r: lower_bound(r, bound))(x),
                               torch.max(x, bound))
    # the gradient passes where x is above the bound or the gradient pushes it up
    g = torch.func.grad(lambda t: (lower_bound(t, bound) * torch.tensor([1.0, -1.0])).sum())(
        torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(g, torch.tensor([1.0, -1.0]))
    g = torch.func.grad(lambda t: lower_bound(t, bound).sum())(torch.tensor([-1.0]))
    torch.testing.assert_close(g, torch.tensor([0.0]))


def test_func_grad_of_a_slimcae_loss_matches_autograd():
    torch.manual_seed(3)
    model = SlimCAE(widths=[16, 8]).double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    params = dict(model.named_parameters())

    def loss(p):
        torch.manual_seed(4)   # (the same training noise in both runs)
        out = torch.func.functional_call(model, p, (x,))
        return out["x_hat"].square().mean()

    grads = torch.func.grad(loss)(params)
    model.zero_grad()
    loss(params).backward()
    assert len(grads) == len(params)
    for k, p in params.items():
        if p.grad is None:
            assert not grads[k].any(), k
        else:
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-8, atol=1e-12)


def test_per_sample_training_gradients_with_noise_drawn_per_sample():
    """vmap(grad) of a training loss with randomness="different": the entropy model drew its
    noise in place on a fresh unbatched tensor, which vmap refuses for "different" ("Cannot ask
    for different inplace randomness on an unbatched tensor"). With "same" every sample gets
    the same noise; with "different" each its own."""
    from slimkernels.nn import EntropyBottleneck
    torch.manual_seed(5)
    eb = EntropyBottleneck(4).double().train()
    y = torch.randn(3, 4, 3, 5, dtype=torch.float64) * 2
    params = {k: v.detach() for k, v in eb.named_parameters()}

    def loss(p, yi):
        y_hat, lik = torch.func.functional_call(eb, p, (yi[None],))
        return -torch.log2(lik).sum(), (y_hat - yi[None]).detach()

    for randomness in ("same", "different"):
        g, noise = torch.func.vmap(torch.func.grad(loss, has_aux=True), in_dims=(None, 0),
                                   randomness=randomness)(params, y)
        assert noise.shape == (3, 1, 4, 3, 5) and noise.abs().max() <= 0.5
        assert all(torch.isfinite(v).all() for v in g.values())
        # (y_hat is float32, y float64: the noise read back carries y's float32 rounding)
        same = [torch.allclose(noise[0], noise[i], rtol=0, atol=1e-5) for i in (1, 2)]
        assert same == ([True, True] if randomness == "same" else [False, False]), randomness


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_mode_ad_through_the_layers_matches_jvp(frozen, dtype):
    """torch.autograd.forward_ad: the CPU kernels ran on a dual tensor's primal and dropped its
    tangent without a word (conv, transposed conv), or failed (GDN: "Cannot access data pointer",
    the x^2 scratch's "out= function"; with trainable parameters the lower bound's "You must
    implement the jvp function"). Compared with torch.func.jvp and, in float64, with the
    Jacobian times the tangent."""
    import torch.autograd.forward_ad as fwAD
    for name, layer, c in _layers():
        layer = _perturb(layer).to(dtype).requires_grad_(not frozen)
        x = torch.randn(1, c, 6, 5, dtype=dtype)
        v = torch.randn_like(x)
        with fwAD.dual_level():
            out = fwAD.unpack_dual(layer(fwAD.make_dual(x, v)))
        assert out.tangent is not None, name
        _, want = torch.func.jvp(layer, (x,), (v,))
        tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5,
                                                                                atol=1e-5)
        torch.testing.assert_close(out.tangent, want, **tol)
        torch.testing.assert_close(out.primal, layer(x).detach(), **tol)
        if dtype == torch.float64:
            jac = torch.autograd.functional.jacobian(lambda t: layer(t), x)
            torch.testing.assert_close(out.tangent,
                                       (jac.flatten(x.dim()) @ v.flatten()), **tol)


def test_another_threads_dual_level_leaves_this_threads_ops_alone():
    """torch's forward-AD dual level is process-wide: while another thread held one, every op of
    this thread took the PyTorch path (other pixels from the same decompress, and slower). Only
    an op with a dual tensor among its inputs does now."""
    import threading

    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(6)
    model = SlimCAE(widths=[16, 8]).eval()
    model.update()
    x = torch.rand(1, 3, 32, 48)
    data = model.compress(x, 16)
    want = model.decompress(data)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with fwAD.dual_level():
            inside.set()
            release.wait(30)
    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(30)
        assert not _cpu.functorch_transform(x) and _cpu.functorch_transform()   # (caches: any)
        assert model.compress(x, 16) == data
        assert torch.equal(model.decompress(data), want)
    finally:
        release.set()
        t.join()


@pytest.mark.parametrize("cls", [SlimGDN, SlimGDNPlus])
def test_vmap_over_stacked_parameters_of_frozen_layers(cls):
    """Model ensembling (torch.func.stack_module_state, vmap over functional_call) with detached
    parameters: the effective-parameter cache walked the batched wrappers' data pointers
    ("Cannot access data pointer of Tensor that doesn't have storage")."""
    torch.manual_seed(7)
    layers = [_perturb(cls(6) if cls is SlimGDN else cls([6, 4])) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(layers)
    params = {k: v.detach() for k, v in params.items()}
    x = torch.randn(2, 4, 5, 5)

    def one(p, b):
        return torch.func.functional_call(layers[0], (p, b), (x,))
    got = torch.func.vmap(one)(params, buffers)
    with torch.no_grad():
        want = torch.stack([m(x) for m in layers])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # jvp in the parameters (detached): the same cache
    layer = layers[0].double()
    p = {k: v.detach() for k, v in layer.named_parameters()}
    tangents = {k: torch.randn_like(v) for k, v in p.items()}
    xd = x.double()
    _, jt = torch.func.jvp(lambda q: torch.func.functional_call(layer, q, (xd,)), (p,),
                           (tangents,))
    eps = 1e-6
    up = {k: v + eps * tangents[k] for k, v in p.items()}
    dn = {k: v - eps * tangents[k] for k, v in p.items()}
    with torch.no_grad():
        fd = (torch.func.functional_call(layer, up, (xd,))
              - torch.func.functional_call(layer, dn, (xd,))) / (2 * eps)
    torch.testing.assert_close(jt, fd, rtol=1e-6, atol=1e-7)


def test_func_grad_and_forward_ad_of_forward_widths():
    """SlimCodec.forward_widths (the joint multi-width training step) sliced its shared first
    layer's output through an autograd Function without setup_context, vmap rule or jvp:
    torch.func.grad and forward-mode AD of it failed."""
    import torch.autograd.forward_ad as fwAD
    torch.manual_seed(8)
    model = SlimCAE(widths=[16, 8]).double().eval()   # (eval: rounding, no noise to match)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    params = dict(model.named_parameters())

    def loss_widths(p):
        return sum(o["x_hat"].square().mean() for o in _forward_widths(model, p, x))
    g = torch.func.grad(loss_widths)(params)
    model.zero_grad()
    sum(o["x_hat"].square().mean() for o in model.forward_widths(x, [16, 8])).backward()
    for k, p in params.items():
        if p.grad is not None:
            torch.testing.assert_close(g[k], p.grad, rtol=1e-8, atol=1e-12)
    v = torch.randn_like(x)
    with fwAD.dual_level():
        outs = model.forward_widths(fwAD.make_dual(x, v), [16, 8])
        tangents = [fwAD.unpack_dual(o["x_hat"]).tangent for o in outs]
    assert all(t is not None for t in tangents)
    for w, t in zip((16, 8), tangents):
        _, want = torch.func.jvp(lambda xx: model(xx, w)["x_hat"], (x,), (v,))
        torch.testing.assert_close(t, want, rtol=1e-8, atol=1e-10)


def _forward_widths(model, p, x):
    """model.forward_widths(x, [16, 8]) with the parameters ``p`` (torch.func.functional_call
    swaps them in for the call)."""
    class Call(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_widths(x, [16, 8])
    return torch.func.functional_call(Call(model), {f"m.{k}": v for k, v in p.items()}, (x,))
