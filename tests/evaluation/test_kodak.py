"""Folder evaluation of a SlimCAE, BD summary, goal check, plot and the ``eval`` command line."""
import argparse
import json
import os
import sys
import re

import numpy as np
import pytest
import torch

from slimkernels.evaluation import kodak
from slimkernels.evaluation.cli import add_eval_arguments, run_eval
from slimkernels.evaluation.metrics import ms_ssim, psnr
from slimkernels.evaluation.plot import rd_plot

from .conftest import needs_coder


def test_list_images(image_folder, tmp_path):
    files = kodak.list_images(image_folder)
    assert [os.path.basename(f) for f in files] == ["a.png", "b.png"]
    assert len(kodak.list_images(image_folder, limit=1)) == 1
    with pytest.raises(ValueError, match="missing does not exist"):
        kodak.list_images(str(tmp_path / "missing"))
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="file.png is not a directory"):
        kodak.list_images(str(tmp_path / "file.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        kodak.list_images(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="limit"):
        kodak.list_images(image_folder, limit=0)


def test_estimated_bpp_uses_padded_input_and_unpadded_pixels(tiny_model):
    x = torch.rand(1, 3, 40, 50)
    xp = kodak.padded_input(x)
    assert xp.shape == (1, 3, 48, 64)
    assert torch.equal(xp[..., :40, :50], x) and torch.equal(xp[0, :, 45, 50:], x[0, :, 39, 49:].expand(3, 14))
    with torch.no_grad():
        lik = tiny_model(xp, 8)["likelihoods"]["y"].double()
    bits = float(-torch.log2(lik).sum())
    assert kodak.estimated_bpp(tiny_model, x, 8) == pytest.approx(bits / (40 * 50), rel=1e-12)


def test_estimated_bpp_skips_the_synthesis_only_where_forward_is_the_codecs(tiny_model,
                                                                           monkeypatch):
    """A SlimCodec called as its class's forward: ``decode`` is not run (it raises here) and the
    value is forward's; a forward hook, or a subclass's own forward, gets the whole call."""
    x = torch.rand(1, 3, 40, 50)
    with torch.no_grad():
        lik = tiny_model(kodak.padded_input(x), 8)["likelihoods"]["y"].double()
    want = float(-torch.log2(lik).sum()) / (40 * 50)

    def no_synthesis(*a, **k):
        raise AssertionError("the synthesis transform ran")
    monkeypatch.setattr(tiny_model, "decode", no_synthesis)
    assert kodak.estimated_bpp(tiny_model, x, 8) == want
    handle = tiny_model.register_forward_hook(lambda m, i, o: None)
    with pytest.raises(AssertionError, match="the synthesis transform ran"):
        kodak.estimated_bpp(tiny_model, x, 8)
    handle.remove()
    monkeypatch.undo()

    class Halved(type(tiny_model)):
        def forward(self, x, width=None, quantization="noise"):
            out = super().forward(x, width, quantization)
            return {**out, "likelihoods": {"y": out["likelihoods"]["y"] ** 0.5}}
    tiny_model.__class__ = Halved
    try:
        assert kodak.estimated_bpp(tiny_model, x, 8) == pytest.approx(want / 2, rel=1e-6)
    finally:
        tiny_model.__class__ = Halved.__bases__[0]


@needs_coder
def test_evaluate_rates_and_quality_from_the_written_files(tiny_model, image_folder, tmp_path):
    from slimkernels import container
    from slimkernels.io import read_image

    out = tmp_path / "out"
    lines = []
    res = kodak.evaluate(tiny_model, image_folder, out_dir=str(out), progress=lines.append)
    r = res["results"]
    assert r["width"] == [8, 16] and res["images"] == ["a", "b"] and len(lines) == 4
    for key in ("bpp", "bpp-estimated", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"):
        assert len(r[key]) == 2 and all(np.isfinite(r[key])), key
    assert r["bpp"][0] < r["bpp"][1]  # the wider sub-network codes more channels
    for i, w in enumerate((8, 16)):
        bpps, psnrs, mss = [], [], []
        for name in ("a", "b"):
            path = out / "bitstreams" / f"w{w}" / f"{name}.slim"
            data = path.read_bytes()
            x, _ = read_image(os.path.join(image_folder, name + ".png"))
            H, W = x.shape[-2:]
            bpps.append(len(data) * 8 / (H * W))
            x_hat = tiny_model.decompress(data)
            psnrs.append(float(psnr(x, x_hat)[0]))
            mss.append(float(ms_ssim(x, x_hat)[0]))
            # the estimate is the payload's size up to the coder's flush and CDF quantization
            est_bits = kodak.estimated_bpp(tiny_model, x, w) * H * W
            payload_bits = len(container.unpack(data).payload) * 8
            assert 0.98 * est_bits <= payload_bits <= 1.02 * est_bits + 512
        assert r["bpp"][i] == pytest.approx(np.mean(bpps), rel=1e-12)
        assert r["psnr-rgb"][i] == pytest.approx(np.mean(psnrs), rel=1e-12)
        assert r["ms-ssim-rgb"][i] == pytest.approx(np.mean(mss), rel=1e-12)
        assert r["encode_ms"][i] == pytest.approx(1e3 * r["encoding_time"][i])
        assert res["per_width"][str(w)]["bpp"] == r["bpp"][i]
    json.dumps(res)  # serializable


@needs_coder
def test_evaluate_one_width_limit_bf16(tiny_model, image_folder):
    res = kodak.evaluate(tiny_model, image_folder, widths=[16], precision="bf16", limit=1,
                         warmup=False)
    assert res["results"]["width"] == [16] and res["images"] == ["a"]
    assert res["precision"] == "bf16" and np.isfinite(res["results"]["psnr-rgb"][0])


def test_evaluate_argument_errors(tiny_model, image_folder):
    with pytest.raises(ValueError, match="not widths of this model"):
        kodak.evaluate(tiny_model, image_folder, widths=[12])
    with pytest.raises(ValueError, match="precision"):
        kodak.evaluate(tiny_model, image_folder, precision="fp16")


def _curve(bpp, q, ms=None, width=None):
    r = {"bpp": list(bpp), "psnr-rgb": list(q)}
    if ms is not None:
        r["ms-ssim-rgb"] = list(ms)
    if width is not None:
        r["width"] = list(width)
    return {"name": "x", "results": r}


def test_bd_summary_and_goals():
    b = kodak.BALLE2017["results"]
    slim = _curve([v * 0.9 for v in b["bpp"]], b["psnr-rgb"],
                  ms=[0.90, 0.93, 0.95, 0.96, 0.97, 0.98], width=[32, 48, 72, 96, 144, 192])
    jpeg = _curve([0.3, 0.5, 0.8, 1.2, 2.0], [25.0, 27.5, 30.0, 32.0, 34.5],
                  ms=[0.85, 0.90, 0.94, 0.96, 0.975])
    far = _curve([1.0, 2.0], [50.0, 55.0])
    bd = kodak.bd_summary(slim, {"JPEG": jpeg, "Balle2017": kodak.BALLE2017, "far": far})
    # rates scaled by 0.9 against the same PSNRs -> exactly -10 % vs Balle 2017, both methods
    assert bd["Balle2017"]["bd_rate_pchip"] == pytest.approx(-10.0, abs=1e-9)
    assert bd["Balle2017"]["bd_rate_akima"] == pytest.approx(-10.0, abs=1e-9)
    assert "bd_rate_ms_ssim_pchip" not in bd["Balle2017"]  # no MS-SSIM published
    assert bd["JPEG"]["bd_rate_pchip"] < -30 and bd["JPEG"]["bd_rate_ms_ssim_pchip"] is not None
    # PSNR ranges [25, 34.5] vs [26.78, 35.82] share (34.5 - 26.78) / (35.82 - 25) = 71 % < 75 %
    assert bd["JPEG"]["overlap_psnr"] == pytest.approx((34.5 - 26.78) / (35.82 - 25))
    assert any(w.startswith("bd_rate_pchip:") for w in bd["JPEG"]["warnings"])
    assert "warnings" not in bd["Balle2017"] and bd["Balle2017"]["overlap_psnr"] == 1.0
    assert bd["far"]["bd_rate_pchip"] is None and "do not overlap" in bd["far"]["errors"]["bd_rate_pchip"]
    g = kodak.goal_check(slim, bd)
    assert g["monotone"] and g["bd_rate_vs_jpeg_below_-30"]
    # the widest point sits at 0.9 * 1.061 bpp with Balle's PSNR at 1.061: above the curve
    assert g["widest_bpp"] == pytest.approx(0.9 * 1.061)
    assert g["gap_to_balle2017_db"] < 0 and g["within_1.5dB_of_balle2017"]
    slim["results"]["psnr-rgb"][2] = 20.0
    assert not kodak.goal_check(slim, bd)["monotone"]
    md = kodak.markdown_table({"results": {**slim["results"], "bpp-estimated": slim["results"]["bpp"],
                                           "ms-ssim-db": [10.0] * 6, "encode_ms": [1.0] * 6,
                                           "decode_ms": [2.0] * 6}}, bd)
    assert "| 192 |" in md and "-10.0 %" in md and "n/a |" in md and "n/a %" not in md
    assert "| JPEG | -" in md and " %* |" in md and "is less than 75% of their union" in md


def test_rd_plot_writes_png(tmp_path):
    slim = _curve([0.1, 0.2, 0.4], [26.0, 28.0, 30.0], ms=[0.9, 0.94, 0.96], width=[8, 16, 32])
    refs = {"JPEG": _curve([0.3, 0.6, 3.0], [25.0, 29.0, 40.0], ms=[0.85, 0.93, 0.99]),
            "Balle2017": kodak.BALLE2017}
    path = rd_plot(slim, refs, str(tmp_path / "rd.png"), title="t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(path).size[0] > 1000  # two panels (PSNR, MS-SSIM)


def _args(argv):
    return add_eval_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_integer_lists_take_spaces_or_commas(capsys):
    """(--widths 192,48 was argparse's "invalid int value: '192,48'".)"""
    a = _args(["dir", "--widths", "192,48", "--jpeg-qualities", "10", "50,90"])
    assert a.widths == [192, 48] and a.jpeg_qualities == [10, 50, 90]
    assert _args(["dir", "--widths", "192", "48"]).widths == [192, 48]
    assert _args(["dir"]).widths is None
    for bad in ("a", "192,", "1.5"):
        with pytest.raises(SystemExit):
            _args(["dir", "--widths", bad])
        assert "--widths: invalid int value" in capsys.readouterr().err


def test_cli_input_errors(image_folder, tmp_path, capsys):
    assert run_eval(_args([str(tmp_path / "nope")])) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert run_eval(_args([image_folder, "--model", str(tmp_path / "none.pt")])) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_refuses_what_would_fail_late_before_any_work(image_folder, tmp_path, capsys):
    """(A quality out of range or a small image failed after the SlimCAE part had written its
    outputs, and the rerun then needed --force; --out as the image folder made the next run read
    its rd.png as a test image.)"""
    out = tmp_path / "r"
    for argv, msg in (([image_folder, "--out", image_folder], "is the image folder"),
                      ([image_folder, "--out", str(out), "--jpeg-qualities", "0", "101"],
                       r"--jpeg-qualities \[101\]: qualities are 0..100"),
                      ([image_folder, "--out", str(out), "--streams", "0"], "must be 1..255"),
                      ([image_folder, "--out", str(out), "--threads", "100000"],
                       "--threads 100000 is more than")):
        assert run_eval(_args(argv)) == 2
        assert re.search(msg, capsys.readouterr().err)
    from PIL import Image
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (200, 150)).save(small / "s.png")
    assert run_eval(_args([str(small), "--out", str(out)])) == 2
    assert "s.png: 200x150 pixels; MS-SSIM" in capsys.readouterr().err
    assert not out.exists()


def test_cli_without_the_compiled_coder_exits_1(tiny_model, image_folder, tmp_path, capsys,
                                                monkeypatch):
    from slimkernels.pretrained import save_model

    model_path = str(tmp_path / "tiny.pt")
    save_model(tiny_model, model_path)
    monkeypatch.setitem(sys.modules, "slimkernels._coder", None)   # import raises ImportError
    assert run_eval(_args([image_folder, "--model", model_path, "--out", str(tmp_path / "r"),
                           "--quiet"])) == 1
    assert "the range coder is not available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@needs_coder
def test_cli_end_to_end(tiny_model, image_folder, tmp_path, capsys):
    from slimkernels.pretrained import save_model

    model_path = str(tmp_path / "tiny.pt")
    save_model(tiny_model, model_path)
    out = tmp_path / "results"
    rc = run_eval(_args([image_folder, "--model", model_path, "--out", str(out), "--quiet",
                         "--jpeg-qualities", "10", "50", "90", "--webp-qualities", "10", "50", "90"]))
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "| 16 |" in text and "goals:" in text
    # (the goals line printed the floats unrounded: "BD-rate vs JPEG=-48.42433598720234")
    # (and "gap to Balle2017 at widest=+0.68 dB" left the sign's meaning to guess)
    assert re.search(r"BD-rate vs JPEG=(n/a|-?\d+\.\d %) widest width vs Balle2017=(n/a|"
                     r"\d+\.\d\d dB (below|above))\n", text), text[-300:]
    for name in ("slimcae.json", "jpeg.json", "webp.json", "balle2017.json", "summary.json",
                 "table.md", "rd.png"):
        assert (out / name).exists(), name
    def strict(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    s = json.loads((out / "summary.json").read_text(), parse_constant=strict)
    assert set(s["bd"]) == {"JPEG", "WebP", "Balle2017"}
    slim = json.loads((out / "slimcae.json").read_text())
    assert {"name", "description", "results"} <= set(slim)
    assert slim["results"]["width"] == [8, 16]
    assert len(list((out / "bitstreams" / "w16").glob("*.slim"))) == 2
    jpeg = json.loads((out / "jpeg.json").read_text())
    assert jpeg["results"]["quality"] == [10, 50, 90]
    from slimkernels.evaluation.kodak import OUTPUTS    # what the refusal below looks for
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)
    # a second run into the same folder is refused (nothing replaced) unless --force
    before = (out / "summary.json").read_bytes()
    again = [image_folder, "--model", model_path, "--out", str(out), "--quiet", "--no-classical"]
    assert run_eval(_args(again)) == 2
    assert "already holds an evaluation (summary.json" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before
    assert run_eval(_args(again + ["--force", "--widths", "8"])) == 0
    assert (out / "summary.json").read_bytes() != before
    # (--force left the earlier run's jpeg.json, webp.json and w16 bitstreams beside the new
    # summary, which has neither)
    assert not (out / "jpeg.json").exists() and not (out / "webp.json").exists()
    assert sorted(os.listdir(out / "bitstreams")) == ["w8"]
    # a dangling link among the outputs counts as earlier output too (the command line had
    # missed it and the library's refusal then named overwrite=True)
    os.remove(out / "rd.png")
    os.symlink(out / "nowhere.png", out / "rd.png")
    assert run_eval(_args(again)) == 2
    assert "already holds an evaluation (" in capsys.readouterr().err
    assert run_eval(_args(again + ["--force"])) == 0


def test_force_keeps_the_earlier_evaluation_when_the_new_one_fails(tiny_model, image_folder,
                                                                    tmp_path, capsys):
    """(--force deleted the earlier results first; a truncated image then failed the run and
    left an empty folder.)"""
    from slimkernels.pretrained import save_model

    model_path = str(tmp_path / "tiny.pt")
    save_model(tiny_model, model_path)
    out = tmp_path / "results"
    base = [image_folder, "--model", model_path, "--out", str(out), "--quiet", "--no-classical"]
    assert run_eval(_args(base)) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out) if (out / n).is_file()}
    bits = sorted(os.listdir(out / "bitstreams" / "w16"))
    data = open(os.path.join(image_folder, "b.png"), "rb").read()
    with open(os.path.join(image_folder, "b.png"), "wb") as f:
        f.write(data[: len(data) // 2])
    capsys.readouterr()
    assert run_eval(_args(base + ["--force"])) == 2
    assert "b.png" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in os.listdir(out) if (out / n).is_file()} == before
    assert sorted(os.listdir(out / "bitstreams" / "w16")) == bits
    assert not [n for n in os.listdir(out) if n.startswith(".")]   # (nothing set aside left)
    # into a new folder: the failed run leaves none of its outputs (a rerun needed --force)
    fresh = tmp_path / "fresh"
    assert run_eval(_args([image_folder, "--model", model_path, "--out", str(fresh), "--quiet",
                           "--no-classical"])) == 2
    assert not fresh.exists()   # (the empty folder it made stayed)


def test_a_width_the_model_lacks_is_refused_before_the_output_folder_exists(
        tiny_model, image_folder, tmp_path, capsys):
    """(--widths 100 was refused after evaluate_all had made the --out folder: it stayed,
    empty.)"""
    from slimkernels.pretrained import save_model

    model_path = str(tmp_path / "tiny.pt")
    save_model(tiny_model, model_path)
    out = tmp_path / "r"
    assert run_eval(_args([image_folder, "--model", model_path, "--out", str(out), "--quiet",
                           "--widths", "100"])) == 2
    assert "widths [100] are not widths of this model" in capsys.readouterr().err
    assert not out.exists()


def test_images_sharing_a_name_are_refused(image_folder):
    """(a.png and a.jpg wrote one bitstream a.slim, the second over the first.)"""
    from PIL import Image

    from slimkernels.evaluation.kodak import list_images
    Image.open(os.path.join(image_folder, "a.png")).save(os.path.join(image_folder, "a.jpg"))
    with pytest.raises(ValueError, match="a.jpg and a.png, which share a name"):
        list_images(image_folder)


def test_eval_command_line_errors_are_one_line_with_its_name(image_folder, tmp_path, capsys):
    """python/evaluate.py's main: an unwritable --out was a traceback; the errors named
    "slimkernels eval" whatever the program; qualities with --no-classical were ignored."""
    from slimkernels.evaluation.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main([image_folder, "--out", str(f / "res"), "--no-classical", "--quiet"],
                prog="evaluate.py") in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("evaluate.py: error:") and "Traceback" not in err
    assert main([image_folder, "--out", str(tmp_path / "o"), "--no-classical",
                 "--jpeg-qualities", "10"], prog="evaluate.py") == 2
    assert "--jpeg-qualities has no effect with --no-classical" in capsys.readouterr().err
    for limit in ("0", "-2"):   # (list_images' "limit must be an int >= 1" named no option)
        assert main([image_folder, "--out", str(tmp_path / "o"), "--no-classical", "--limit",
                     limit], prog="evaluate.py") == 2
        assert f"evaluate.py: error: --limit must be >= 1 (leave it out for every image), got " \
               f"{limit}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_plot_title_names_the_folder():
    from slimkernels.evaluation.kodak import _folder_title
    assert _folder_title("/data/kodak/") == "Kodak" and _folder_title("/x/my_set") == "my_set"


def test_eval_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    """python/evaluate.py (this main) returned 1 on Ctrl-C, `slimkernels eval` 130."""
    from slimkernels.evaluation import cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run_eval", interrupted)
    assert cli.main([str(tmp_path)], prog="evaluate.py") == 130
    assert capsys.readouterr().err == "evaluate.py: error: interrupted\n"


def test_widths_that_are_not_ints_are_refused():
    """(kodak.evaluate(model, folder, widths=[96.7]) ran width 96.)"""
    from slimkernels.evaluation.kodak import check_widths
    from slimkernels.models import SlimCAE
    m = SlimCAE(widths=(16, 8))
    with pytest.raises(ValueError, match=r"widths must be ints, got \[8.5\]"):
        check_widths(m, [16, 8.5])
    with pytest.raises(ValueError, match=r"widths \[12\] are not widths of this model"):
        check_widths(m, [12])
    assert check_widths(m, [8, 16, 8]) == [8, 16] and check_widths(m, None) == [8, 16]


@needs_coder
def test_evaluate_all_does_not_mix_two_runs(tiny_model, image_folder, tmp_path):
    """(A second evaluate_all into the same folder left the first run's JPEG / WebP results,
    plot and other widths' bitstreams beside the new ones.)"""
    out = tmp_path / "ev"
    kodak.evaluate_all(tiny_model, image_folder, str(out), classical=True, plot=False,
                       jpeg_qualities=[50], webp_qualities=[50])
    assert (out / "jpeg.json").exists() and (out / "bitstreams").is_dir()
    with pytest.raises(FileExistsError, match=r"already holds an evaluation \(summary.json, "
                                              r".*pass overwrite=True to replace it"):
        kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[8], classical=False,
                           plot=False)
    kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[8], classical=False,
                       plot=False, overwrite=True)
    assert not (out / "jpeg.json").exists() and not (out / "webp.json").exists()
    assert sorted(p.name for p in (out / "bitstreams").iterdir()) == ["w8"]


def _tree(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


def _no_coding(monkeypatch, model):
    """Make ``model.compress`` fail the test: what is checked up front must not code."""
    def compress(*a, **k):
        raise AssertionError("an image was coded before the arguments were checked")
    monkeypatch.setitem(model.__dict__, "compress", compress)   # (undone: the key goes)


@needs_coder
def test_evaluate_all_overwrite_keeps_the_earlier_evaluation_when_the_new_one_fails(
        tiny_model, image_folder, tmp_path, monkeypatch):
    """evaluate_all(..., overwrite=True) removed the earlier evaluation before it checked its
    arguments: a typo in the folder's name, a width the model lacks, a JPEG quality of 200 or
    an image too small for MS-SSIM left ``out_dir`` empty (and a bad image met mid-run too)."""
    from PIL import Image

    out = tmp_path / "ev"
    kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[8], classical=False,
                       plot=False)
    before = _tree(out)
    assert "summary.json" in before and os.path.join("bitstreams", "w8", "a.slim") in before
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(small / "tiny.png")
    with monkeypatch.context() as mp:
        _no_coding(mp, tiny_model)
        for kw, what in ((dict(folder=str(tmp_path / "typo")), "typo does not exist"),
                         (dict(widths=[5]), r"widths \[5\] are not widths of this model"),
                         (dict(widths=8), "got the int 8"),
                         (dict(classical=True, jpeg_qualities=[200]),
                          r"jpeg_qualities \[200\]: jpeg qualities are ints in 0..100"),
                         (dict(folder=str(small)), "tiny.png: 40x40 pixels; MS-SSIM"),
                         (dict(limit=1.7), "limit must be an int")):
            args = dict(folder=image_folder, widths=[16], classical=False, plot=False)
            args.update(kw)
            with pytest.raises(ValueError, match=what):
                kodak.evaluate_all(tiny_model, out_dir=str(out), overwrite=True, **args)
            assert _tree(out) == before, kw
    # a bad image met after the run began: the earlier evaluation comes back, this run's
    # outputs (w16's bitstreams) go
    with open(os.path.join(image_folder, "b.png"), "r+b") as f:
        f.truncate(os.path.getsize(f.name) // 2)
    with pytest.raises(ValueError, match="b.png"):
        kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[16], classical=False,
                           plot=False, overwrite=True)
    assert _tree(out) == before
    assert not [n for n in os.listdir(out) if n.startswith(".")]   # (nothing set aside left)
    # into a new folder: a failed run leaves neither its outputs nor the folder it made
    with pytest.raises(ValueError, match="b.png"):
        kodak.evaluate_all(tiny_model, image_folder, str(tmp_path / "new"), classical=False,
                           plot=False)
    assert not (tmp_path / "new").exists()
    # ... nor the parents it made (new/sub left new/ behind); a parent that was there stays
    with pytest.raises(ValueError, match="b.png"):
        kodak.evaluate_all(tiny_model, image_folder, str(tmp_path / "new" / "a" / "sub"),
                           classical=False, plot=False)
    assert not (tmp_path / "new").exists() and tmp_path.is_dir()


def test_listing_skips_folders_named_like_images(tmp_path):
    """(A subfolder named x.png was listed as an image, then "not an image file ...
    IsADirectoryError".)"""
    from PIL import Image

    from slimkernels.training.data import list_images as train_images

    from .conftest import make_image
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(make_image(1, 32, 32)).save(d / "a.png")
    (d / "x.png").mkdir()
    assert [os.path.basename(p) for p in kodak.list_images(str(d))] == ["a.png"]
    assert [os.path.basename(p) for p in train_images(str(d))] == ["a.png"]
    os.remove(d / "a.png")
    with pytest.raises(ValueError, match="no image"):
        kodak.list_images(str(d))
    with pytest.raises(ValueError, match="no images"):
        train_images(str(d))


def test_evaluate_checks_image_sizes_and_arguments_before_coding(tiny_model, tmp_path,
                                                                 monkeypatch):
    """Images under 161 px failed only after they were coded, with "MS-SSIM needs both image
    sides > 160 pixels, got (40, 40)" not naming the image; widths=8 was "'int' object is not
    iterable", widths=[] ran every width, limit=1.7 ran 1 image and limit='2' 2."""
    from PIL import Image

    from .conftest import make_image
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(make_image(1, 176, 176)).save(d / "a.png")
    Image.fromarray(make_image(2, 40, 200)).save(d / "tiny.png")
    _no_coding(monkeypatch, tiny_model)
    with pytest.raises(ValueError, match=r"tiny.png: 200x40 pixels; MS-SSIM \(part of every "
                                         r"evaluation\) needs both sides > 160"):
        kodak.evaluate(tiny_model, str(d), out_dir=str(tmp_path / "o"), warmup=False)
    assert not (tmp_path / "o").exists()
    os.remove(d / "tiny.png")
    for kw, what in ((dict(widths=8), r"widths must be a list of widths, got the int 8: pass "
                                      r"\[8\]"),
                     (dict(widths=[]), r"widths is empty: pass some of the model's widths "
                                       r"\[16, 8\], or None for all of them"),
                     (dict(widths="16"), "widths must be a list of ints, got '16'"),
                     (dict(limit=1.7), r"limit must be an int >= 1 \(or None: every image\), "
                                       r"got 1.7"),
                     (dict(limit="2"), "limit must be an int >= 1 .*got '2'"),
                     (dict(streams=0), r"streams must be an int in 1..255 \(or None: "
                                       r"compress's choice\), got 0")):
        with pytest.raises(ValueError, match=what):
            kodak.evaluate(tiny_model, str(d), warmup=False, **kw)


def test_an_out_dir_that_is_a_file_is_a_clear_error(tiny_model, image_folder, tmp_path,
                                                    monkeypatch):
    """evaluate(out_dir=<a file>) raised NotADirectoryError ".../f/bitstreams" after coding,
    evaluate_all "FileExistsError: [Errno 17] File exists" (it exists, but is no folder)."""
    f = tmp_path / "f"
    f.write_text("x")
    _no_coding(monkeypatch, tiny_model)
    with pytest.raises(ValueError, match=r"out_dir .*f exists and is not a folder"):
        kodak.evaluate(tiny_model, image_folder, out_dir=str(f), warmup=False)
    with pytest.raises(ValueError, match=r"out_dir .*f exists and is not a folder"):
        kodak.evaluate_all(tiny_model, image_folder, str(f), classical=False, plot=False)
    with pytest.raises(ValueError, match=rf"out_dir .* cannot be made: {re.escape(str(f))} is "
                                         r"not a folder"):
        kodak.evaluate_all(tiny_model, image_folder, str(f / "sub" / "res"), classical=False,
                           plot=False)
    assert f.read_text() == "x"


def test_rd_plot_checks_its_curves_and_path_first(tmp_path):
    """A results dict without 'width' was KeyError 'width'; a path in a missing folder or with
    an unknown extension was matplotlib's error after the plot was drawn."""
    slim = _curve([0.1, 0.2], [26.0, 28.0], width=[8, 16])
    png = str(tmp_path / "rd.png")
    with pytest.raises(ValueError, match=r"rd_plot: slim\['results'\] has no list 'width' .*"
                                         r"pass kodak.evaluate's output"):
        rd_plot(_curve([0.1, 0.2], [26.0, 28.0]), {}, png)
    with pytest.raises(ValueError, match=r"references\['JPEG'\]\['results'\] has no list "
                                         r"'psnr-rgb'"):
        rd_plot(slim, {"JPEG": {"results": {"bpp": [0.1]}}}, png)
    with pytest.raises(ValueError, match=r"'width' has 3, 'bpp' has 2, 'psnr-rgb' has 2 values"):
        rd_plot(_curve([0.1, 0.2], [26.0, 28.0], width=[8, 16, 32]), {}, png)
    with pytest.raises(FileNotFoundError, match=r"cannot write .*rd.png: the folder .*missing "
                                                r"does not exist"):
        rd_plot(slim, {}, str(tmp_path / "missing" / "rd.png"))
    with pytest.raises(ValueError, match=r"\.pnx is not an image format matplotlib writes"):
        rd_plot(slim, {}, str(tmp_path / "rd.pnx"))
    assert os.listdir(tmp_path) == []
    assert rd_plot(slim, {}, png) == png and os.path.exists(png)


def test_cli_threads_zero_is_torch_s_choice_as_in_compress(image_folder, tmp_path, capsys,
                                                            monkeypatch):
    """(eval refused --threads 0, "must be >= 1", where compress, decompress and train take 0 as
    "torch's default"; eval had no -q either.)"""
    import torch
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    out = tmp_path / "r"
    # (stopped right after the thread setting: a folder without images)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_eval(_args([str(empty), "--out", str(out), "--threads", "0", "-q"])) == 2
    err = capsys.readouterr().err
    assert "--threads" not in err and calls == []
    assert run_eval(_args([str(empty), "--out", str(out), "--threads", "-1"])) == 2
    assert "--threads must be >= 0 (0: torch's choice), got -1" in capsys.readouterr().err
    assert run_eval(_args([str(empty), "--out", str(out), "--threads", "1"])) == 2
    assert calls == [1]


def test_a_killed_run_s_set_aside_evaluation_comes_back(tiny_model, image_folder, tmp_path):
    """A run killed where no cleanup runs (SIGKILL, an out-of-memory kill, python/evaluate.py's
    default SIGTERM) left the earlier evaluation in a hidden .earlier-* folder beside its own
    partial outputs; the next run (API or CLI) puts it back first and says so. Before: the next
    run saw the partial outputs as 'an evaluation', and --force then hid them in a second
    .earlier-* folder, the original results never coming back."""
    import shutil
    import subprocess
    import sys
    import time
    out = tmp_path / "ev"
    kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[8], classical=False,
                       plot=False)
    before = _tree(out)

    def killed_twice():   # (as a killed --force run leaves it: the earlier results set aside,
        a = out / ".earlier-a"          # partial outputs beside them; killed again: a second)
        a.mkdir()
        for n in os.listdir(out):
            if n in kodak.OUTPUTS:
                shutil.move(str(out / n), str(a / n))
        time.sleep(0.05)
        b = out / ".earlier-b"
        b.mkdir()
        (b / "slimcae.json").write_text("{\"partial\": 1}")
        (out / "slimcae.json").write_text("{\"partial\": 2}")
        (out / "bitstreams").mkdir()
        os.utime(a, (1, 1))          # (the older one holds the evaluation from before)

    killed_twice()
    with pytest.warns(RuntimeWarning, match=r"\.earlier-a: put back \(balle2017\.json, "
                                            r"bitstreams, slimcae\.json, summary\.json"):
        with pytest.raises(FileExistsError, match="already holds an evaluation"):
            kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[8], classical=False,
                               plot=False)
    assert _tree(out) == before
    assert not [n for n in os.listdir(out) if n.startswith(".")]
    killed_twice()
    from slimkernels.pretrained import save_model
    save_model(tiny_model, str(tmp_path / "tiny.pt"))
    r = subprocess.run([sys.executable, "-m", "slimkernels", "eval", image_folder, "--out",
                        str(out), "--model", str(tmp_path / "tiny.pt"), "--widths", "8",
                        "--no-classical", "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "note: " in r.stderr and ".earlier-a: put back" in r.stderr
    assert "already holds an evaluation" in r.stderr
    assert _tree(out) == before
    assert kodak.recover_interrupted(str(out)) is None   # (nothing left to recover)


def test_an_interrupted_set_aside_leaves_the_earlier_evaluation_in_place(tmp_path, monkeypatch):
    """(the earlier outputs were set aside outside the try: a Ctrl-C between two moves left the
    moved ones in a hidden .earlier-* folder, never put back.)"""
    from slimkernels.models import SlimCAE
    out = tmp_path / "ev"
    (out / "bitstreams" / "w8").mkdir(parents=True)
    (out / "bitstreams" / "w8" / "a.slim").write_bytes(b"x")
    for n in ("summary.json", "slimcae.json", "table.md"):
        (out / n).write_text(n)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    before = sorted(os.listdir(out))
    real, calls = os.replace, []

    def replace(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        kodak.evaluate_all(SlimCAE([16, 8]), str(imgs), str(out), widths=[8], classical=False,
                           plot=False, overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == before, os.listdir(out)


@needs_coder
def test_evaluate_takes_streams_none_as_compress_does(tiny_model, image_folder):
    """(the streams check took ints 1..255 only: None, compress's automatic count, which
    evaluate passed through before, was refused.)"""
    r = kodak.evaluate(tiny_model, image_folder, widths=[tiny_model.widths[-1]], streams=None,
                       limit=1)
    assert len(r["results"]["bpp"]) == 1
    with pytest.raises(ValueError, match=r"streams must be an int in 1..255 \(or None"):
        kodak.evaluate(tiny_model, image_folder, streams=0)


def test_rd_plot_writes_to_a_file_object():
    """(the path checks ran os.path.abspath on it: a BytesIO, which matplotlib writes to, was a
    TypeError.)"""
    import io
    slim = {"name": "s", "results": {"width": [8, 16], "bpp": [0.1, 0.2], "psnr-rgb": [25, 28]}}
    b = io.BytesIO()
    rd_plot(slim, {}, b)
    assert b.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
def _lossless_results():
    r = {"width": [48, 192], "bpp": [0.15, 9.0], "bpp-estimated": [0.15, 9.0],
         "psnr-rgb": [27.0, float("inf")], "ms-ssim-rgb": [0.93, 1.0],
         "ms-ssim-db": [11.5, float("inf")], "encode_ms": [1, 1], "decode_ms": [1, 1]}
    return {"name": "SlimCAE", "results": r}


def test_results_read_back_with_null_table_plot_and_goal_check(tmp_path):
    """(json_finite writes a lossless point's inf as null: reading the file back, rd_plot,
    markdown_table and goal_check failed with TypeErrors.)"""
    from slimkernels.evaluation.kodak import goal_check, json_finite, markdown_table
    from slimkernels.evaluation.plot import rd_plot
    slim = json.loads(json.dumps(json_finite(_lossless_results())))
    assert slim["results"]["psnr-rgb"][1] is None
    table = markdown_table(slim, {})
    assert "| 192 | 9.0000 | 9.0000 | n/a | 1.0000 | n/a | 1 | 1 |" in table
    assert goal_check(slim, {})["monotone"] is False
    rd_plot(slim, {}, str(tmp_path / "rd.png"))
    assert (tmp_path / "rd.png").stat().st_size > 0


def test_the_fold_mark_goes_on_the_cells_of_the_curve_that_folds():
    """(Only the MS-SSIM curve folded back, and every cell of the row got the ^ mark.)"""
    from slimkernels.evaluation.kodak import bd_summary, markdown_table
    test = {"results": {"width": [48, 72, 96, 144, 192], "bpp": [0.2, 0.35, 0.5, 0.7, 1.0],
                        "bpp-estimated": [0.2, 0.35, 0.5, 0.7, 1.0],
                        "psnr-rgb": [27.0, 28.5, 30.0, 31.5, 33.0],
                        "ms-ssim-rgb": [0.93, 0.95, 0.94, 0.97, 0.98],   # folds back
                        "ms-ssim-db": [0.0] * 5, "encode_ms": [1] * 5, "decode_ms": [1] * 5}}
    anchor = {"results": {"bpp": [0.15, 0.3, 0.5, 0.8, 1.2], "psnr-rgb": [26, 28, 30, 32, 34],
                          "ms-ssim-rgb": [0.92, 0.94, 0.96, 0.975, 0.985]}}
    bd = bd_summary(test, {"JPEG": anchor})
    assert bd["JPEG"]["folded"] and all("ms_ssim" in k for k in bd["JPEG"]["folded"])
    row = next(ln for ln in markdown_table(test, bd).splitlines() if ln.startswith("| JPEG"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4].endswith("^") and not any(c.endswith("^") for c in cells[1:4]), row


@needs_coder
def test_one_evaluation_into_a_folder_at_a_time(tiny_model, image_folder, tmp_path, capsys):
    """(A second evaluation into a folder where one was running took the running one's
    set-aside results for a killed run's: it removed that run's outputs so far and put the
    earlier results back under them; both then wrote the same files.) The folder is locked
    while a run goes on; the second is refused by name and touches nothing."""
    out = tmp_path / "ev"
    kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[8], classical=False,
                       plot=False)
    # as a running --force run leaves it: the earlier results set aside, its own beside them
    aside = out / ".earlier-running"
    aside.mkdir()
    for n in os.listdir(out):
        if n in kodak.OUTPUTS:
            os.replace(out / n, aside / n)
    (out / "slimcae.json").write_text("{\"running\": 1}")
    before = _tree(out)
    with kodak.folder_lock(str(out)):   # (that run's lock; another open of it is refused)
        with pytest.raises(kodak.EvaluationBusyError, match="another evaluation is running"):
            kodak.recover_interrupted(str(out))
        for overwrite in (False, True):
            with pytest.raises(kodak.EvaluationBusyError, match=str(out)):
                kodak.evaluate_all(tiny_model, image_folder, str(out), widths=[8],
                                   classical=False, plot=False, overwrite=overwrite)
        assert run_eval(_args([image_folder, "--out", str(out), "--widths", "8",
                               "--no-classical", "-q", "--force"])) == 2
        assert "another evaluation is running into this folder" in capsys.readouterr().err
        assert _tree(out) == before and aside.is_dir()
    # released (the run ended, or was killed): its leftovers are recovered
    assert ".earlier-running: put back" in kodak.recover_interrupted(str(out))


def test_evaluate_all_holds_the_folder_lock_while_it_runs(tmp_path, monkeypatch):
    from slimkernels.models import SlimCAE
    imgs, out, seen = tmp_path / "imgs", tmp_path / "ev", []
    imgs.mkdir()

    def run(model, folder, out_dir, *a):
        with pytest.raises(kodak.EvaluationBusyError):
            kodak.recover_interrupted(out_dir)
        seen.append(out_dir)
        raise KeyboardInterrupt
    monkeypatch.setattr(kodak, "_evaluate_all", run)
    with pytest.raises(KeyboardInterrupt):
        kodak.evaluate_all(SlimCAE([16, 8]), str(imgs), str(out), widths=[8], classical=False,
                           plot=False)
    assert seen == [str(out)] and not out.exists()   # (the folder it made goes)
    out.mkdir()
    with kodak.folder_lock(str(out)):   # (released after the failed run)
        pass
