"""bench/width_scaling.py: centre crops, the fit of fixed and per-pixel cost, the tables, a real
(tiny) measurement, and the command line's refusals."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import width_scaling as ws  # noqa: E402


def test_crop_is_centred_and_refuses_a_crop_larger_than_the_image():
    x = torch.arange(2 * 3 * 6 * 10, dtype=torch.float32).reshape(2, 3, 6, 10)
    c = ws.crop(x, 4)
    assert c.shape == (2, 3, 4, 4) and c.is_contiguous()
    assert torch.equal(c, x[..., 1:5, 3:7])
    assert ws.crop(x, 0) is x
    with pytest.raises(ValueError, match="a 7x7 crop of a 10x6 image: give sizes up to 6"):
        ws.crop(x, 7)


def _rows(fixed, per_mp, pixels=(4096, 65536, 393216), ops=("compress",)):
    return [{"width": w, "size": i, "pixels": p, "op": op, "ms": fixed[w] + per_mp[w] * p / 1e6}
            for w in fixed for i, p in enumerate(pixels) for op in ops]


def test_fit_recovers_the_line():
    lines = ws.fit(_rows({192: 1.1, 48: 0.25}, {192: 20.0, 48: 3.5}))
    assert lines[192, "compress"] == pytest.approx((1.1, 20.0), rel=1e-9)
    assert lines[48, "compress"] == pytest.approx((0.25, 3.5), rel=1e-9)
    with pytest.raises(ValueError, match="at least two image sizes"):
        ws.fit(_rows({48: 1.0}, {48: 1.0}, pixels=(4096,)))


def test_table_gives_each_size_and_the_marginal_ratio():
    text = ws.table(_rows({192: 1.0, 48: 0.5}, {192: 20.0, 48: 4.0},
                          ops=("compress", "decompress")))
    # 64x64 crop (size index 0 here is the whole image: "whole")
    assert "| whole (0.004 MP) | compress | 1.082 | 0.516 | 0.477 |" in text
    assert "| 48 | compress | 0.500 | 4.000 | 0.200 |" in text
    assert "| 192 | decompress | 1.000 | 20.000 | 1.000 |" in text


def test_measure_times_every_configuration_and_restores_the_threads():
    from slimkernels.pretrained import load_model
    model = load_model()
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    saved = torch.get_num_threads()
    rows = ws.measure(model, x, [192, 48], [32, 0], rounds=2, warm=0, calls=1, threads=1)
    assert torch.get_num_threads() == saved
    assert sorted((r["width"], r["size"], r["op"]) for r in rows) == sorted(
        (w, s, op) for w in (192, 48) for s in (32, 0) for op in ("compress", "decompress"))
    for r in rows:
        assert r["pixels"] == (32 * 32 if r["size"] == 32 else 40 * 56)
        assert r["ms"] > 0
    assert "| 32x32 (0.001 MP) | compress |" in ws.table(rows)


def test_main_prints_and_writes_the_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ws, "measure", lambda *a, **k: _rows({192: 1.0, 48: 0.5},
                                                             {192: 20.0, 48: 4.0}))
    md = tmp_path / "ws.md"
    assert ws.main(["--sizes", "64,0", "--ops", "compress", "--md", str(md)]) == 0
    out = capsys.readouterr().out
    assert "| 48 | compress | 0.500 | 4.000 | 0.200 |" in out
    assert md.read_text() in out + "\n"


@pytest.mark.parametrize("argv, match", [
    (["--widths", "192;48"], "comma-separated integers"),
    (["--sizes", "64"], "at least two different sizes"),
    (["--sizes", "64,-1"], "at least two different sizes"),
    (["--ops", "encode"], "give compress and / or decompress"),
    (["--rounds", "0"], "at least 1"),
    (["--widths", "192,50"], r"--widths \[50\] are not the model's"),
    (["--image", "/no/such.png"], "no such file"),
    (["--model", "/no/such.pt"], "--model: model file /no/such.pt does not exist"),
    (["--sizes", "64,4096"], "a 4096x4096 crop of a"),
    (["--sizes", "512,0", "--image", os.path.join(os.path.dirname(ws.__file__), os.pardir,
                                                   "slimkernels", "assets", "sample.png")],
     "a 512x512 crop of a"),
])
def test_main_refuses_bad_arguments(argv, match, monkeypatch):
    monkeypatch.setattr(ws, "measure", lambda *a, **k: pytest.fail("measured after a refusal"))
    with pytest.raises(SystemExit, match=match):
        ws.main(argv)


def test_help_shows_the_whole_description_and_the_defaults(capsys):
    with pytest.raises(SystemExit):
        ws.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the marginal ratio ``per_pixel(narrow) / per_pixel(wide)``" in out
    assert "python bench/width_scaling.py --widths 192,48 --sizes 64,256,0" in out
    for default in ("(default 5)", "(default 3)", "(default 8)", "(default 2)", "(default auto)"):
        assert default in out, default


def test_sizes_of_one_pixel_count_are_refused_before_measuring(tmp_path, monkeypatch):
    from PIL import Image
    p = tmp_path / "sq.png"
    Image.new("RGB", (64, 64)).save(p)
    monkeypatch.setattr(ws, "measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit, match="give one pixel count on this image"):
        ws.main(["--sizes", "64,0", "--image", str(p)])
