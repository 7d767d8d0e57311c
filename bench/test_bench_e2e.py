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
    # same transforms up to fp32 rounding ...
    with torch.no_grad():
        y_plain = plain.encode(x, width).float()
        y_ours = model.encode(x, width).float()
    assert torch.isfinite(y_ours).all()
    assert (y_ours - y_plain).abs().max() <= 1e-4 * y_plain.abs().max()
    # ... so the files hold the same symbols, except where that rounding tips a latent across a
    # rounding boundary (a tie at .5 up to ~1e-5): then by one, and rarely
    _, a = model.decompress_latent(data)
    _, b = model.decompress_latent(model.compress(x, width, precision="fp32"))
    d = (a - b).abs()
    assert d.max() <= 1
    flips = d > 0
    assert flips.float().mean() < 1e-3
    if flips.any():
        r = y_plain - model.entropy_bottleneck.for_width(width).medians().view(1, -1, 1, 1)
        assert ((r - r.floor() - 0.5).abs()[flips] < 1e-3).all()


@pytest.mark.parametrize("width", WIDTHS)
def test_plain_decompress(benchmark, setup, width):
    model, plain, x = setup
    data = model.compress(x, width, precision="fp32")
    x_hat = benchmark(e2e.plain_decompress, plain, model, data)
    ref = model.decompress(data, precision="fp32")
    assert (x_hat - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("width", WIDTHS)
def test_plain_bf16(benchmark, setup, width):
    """Plain PyTorch under bf16 autocast: its latents are the bf16 encoder's (same symbols as
    ours in bf16 up to rare rounding flips), its decoder ours in bf16 up to bf16 rounding."""
    model, plain, x = setup
    data = benchmark(e2e.plain_compress, plain, model, x, width, precision="bf16")
    _, sym = model.decompress_latent(data)
    _, ours = model.decompress_latent(model.compress(x, width, precision="bf16"))
    assert (sym != ours).float().mean().item() < 0.01
    a = e2e.plain_decompress(plain, model, data, precision="bf16")
    b = model.decompress(data, precision="bf16")
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert (a - b).abs().max().item() < 5e-2


def test_default_precision():
    from slimkernels.codec import resolve_precision
    assert e2e.default_precision("cpu") == resolve_precision("auto", "cpu")
    assert e2e.plain_precisions(("fp32",)) == ["fp32"]
    assert e2e.plain_precisions(("fp32", "bf16")) == ["fp32", "bf16"]


def test_compress_split_mirrors_the_api_on_an_hwc_image(setup):
    """The split's steps are the API's (same bytes) on an image with HWC strides."""
    model, _, x = setup
    xh = x[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None]   # strides (3, 1, 3W, 3)
    for p in ("fp32", "bf16"):
        assert e2e.ours_compress_split(model, xh, 48, p)[0] == model.compress(xh, 48, precision=p)


def test_compressai_compress(benchmark, setup):
    cai = e2e.make_compressai()
    if cai is None:
        pytest.skip("compressai is not installed")
    _, _, x = setup
    with torch.no_grad():
        out = benchmark(cai.compress, x)
        x_hat = cai.decompress(out["strings"], out["shape"])["x_hat"]
    assert x_hat.shape == x.shape


def test_e2e_fp32_script_prints_every_width_and_goal(tmp_path):
    """bench/e2e_fp32.py (the fp32-only end-to-end run for CPUs without native bf16): a row per
    width and op with positive times, the ratio lines, and the same table in --out."""
    import e2e_fp32
    out = tmp_path / "t.md"
    md = e2e_fp32.main(["--quick", "--widths", "192,48", "--no-compressai", "--out", str(out)])
    rows = [l for l in md.splitlines() if l.startswith("| 192 |") or l.startswith("| 48 |")]
    assert len(rows) == 4
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and cells[4].endswith("x")
    assert "compress: w=48 / w=192 = " in md and out.read_text().strip() == md.strip()
