"""pytest-benchmark cases for the end-to-end pipeline (fast subset: a 128x192 crop, w=192/48).

    pytest bench/test_bench_e2e.py --benchmark-enable       # timings
    pytest bench/test_bench_e2e.py                          # correctness of the harness only

The full measurement (Kodak 768x512, every width, CompressAI, memory) is ``bench/report.py``.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402
from plain_slimcae import PlainSlimCAE  # noqa: E402

WIDTHS = (192, 48)


@pytest.fixture(scope="module")
def setup():
    model, _ = e2e.load_model(None, seed=0)
    x = e2e.load_image()[..., :128, :192].contiguous()
    return model, PlainSlimCAE.from_model(model).eval(), x


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ours_compress(benchmark, setup, width, precision):
    model, _, x = setup
    data = benchmark(model.compress, x, width, precision=precision)
    assert data == e2e.ours_compress_split(model, x, width, precision)[0]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ours_decompress(benchmark, setup, width, precision):
    model, _, x = setup
    data = model.compress(x, width, precision=precision)
    x_hat = benchmark(model.decompress, data, precision=precision)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()


@pytest.mark.parametrize("width", WIDTHS)
def test_plain_compress(benchmark, setup, width):
    model, plain, x = setup
    data = benchmark(e2e.plain_compress, plain, model, x, width)
    # same transforms up to fp32 rounding: the decoded images agree
    a = model.decompress(data)
    b = e2e.plain_decompress(plain, model, model.compress(x, width))
    assert (a - b).abs().max().item() < 1e-3


@pytest.mark.parametrize("width", WIDTHS)
def test_plain_decompress(benchmark, setup, width):
    model, plain, x = setup
    data = model.compress(x, width)
    x_hat = benchmark(e2e.plain_decompress, plain, model, data)
    ref = model.decompress(data)
    assert (x_hat - ref).abs().max().item() < 1e-4


def test_compressai_compress(benchmark, setup):
    cai = e2e.make_compressai()
    if cai is None:
        pytest.skip("compressai is not installed")
    _, _, x = setup
    with torch.no_grad():
        out = benchmark(cai.compress, x)
        x_hat = cai.decompress(out["strings"], out["shape"])["x_hat"]
    assert x_hat.shape == x.shape
