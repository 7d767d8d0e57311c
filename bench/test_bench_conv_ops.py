"""pytest-benchmark cases for the conv ops, per SlimCAE layer and width: ours
(``slim_conv2d`` / ``slim_conv_transpose2d`` on the full weight, width selected in place) against
plain PyTorch (``F.conv2d`` / ``F.conv_transpose2d`` on the sliced weight, what a user writes
without the library), fp32 and bf16 autocast, no gradient; on CUDA too when a GPU is present.

    pytest bench/test_bench_conv_ops.py --benchmark-enable     # timings (groups: layer, width,
                                                              # dtype, device; ours vs plain)
    pytest bench/test_bench_conv_ops.py                       # the harness + values only

Each case also checks ours against plain (fp32: 2e-5 of the output's magnitude, Winograd's
bound; bf16 2e-2, two roundings apart), so a timing never comes from a wrong result; the
float64 references are in tests/ops. The shapes are one Kodak image's
(768x512) divided by ``SCALE`` (the layer table at full size is ``bench/bench_conv_avx2.py`` and
``bench/bench_conv.py``).
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv_avx2 import LAYERS  # noqa: E402
from slimkernels.ops import slim_conv2d, slim_conv_transpose2d  # noqa: E402

WIDTHS = (192, 144, 96, 72, 48)
C_MAX = 192
SCALE = 4   # 192x128 -> ... : every layer at a quarter of a Kodak image's sides
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _case(layer, width, device):
    name, transposed, ci, co, H, W, k, s, p, op = layer
    ci_max, co_max = ci or C_MAX, co or C_MAX
    g = torch.Generator().manual_seed(hash(name) % 1000)
    x = torch.randn(1, ci or width, max(1, H // SCALE), max(1, W // SCALE), generator=g)
    shape = (ci_max, co_max, k, k) if transposed else (co_max, ci_max, k, k)
    w = torch.randn(*shape, generator=g) / (ci_max * k * k) ** 0.5
    b = torch.randn(co_max, generator=g)
    x, w, b = (t.to(device) for t in (x, w, b))
    return x.contiguous(memory_format=torch.channels_last), w, b


def _fns(layer, width, device):
    """(ours, plain) callables for one layer at one width."""
    name, transposed, ci, co, H, W, k, s, p, op = layer
    x, w, b = _case(layer, width, device)
    cin, cout = ci or width, co or width
    if transposed:
        def ours():
            return slim_conv_transpose2d(x, w, b, stride=s, padding=p, output_padding=op,
                                         out_width=cout)

        def plain():
            return F.conv_transpose2d(x, w[:cin, :cout], b[:cout], stride=s, padding=p,
                                      output_padding=op)
    else:
        def ours():
            return slim_conv2d(x, w, b, stride=s, padding=p, out_width=cout)

        def plain():
            return F.conv2d(x, w[:cout, :cin], b[:cout], stride=s, padding=p)
    return ours, plain


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("layer", LAYERS, ids=[L[0].split()[0] for L in LAYERS])
@pytest.mark.parametrize("impl", ["slimkernels", "plain"])
def test_conv_op(benchmark, impl, layer, width, dtype, device):
    ours, plain = _fns(layer, width, device)
    fn = ours if impl == "slimkernels" else plain
    benchmark.group = f"conv-{layer[0].split()[0]}-w{width}-{dtype}-{device}"

    def run():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            y = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return y
    with torch.no_grad():
        y = benchmark(run)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            ref = plain()
    assert y.shape == ref.shape and torch.isfinite(y).all()
    err = ((y.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
    assert err < (2e-2 if dtype == "bf16" else 2e-5), err
