import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slimkernels import __version__
from slimkernels.cli import main
from slimkernels.models import SlimCAE
from slimkernels.pretrained import load_model, save_model

pytest.importorskip("slimkernels._coder")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    m = SlimCAE(widths=(16, 8)).eval()
    m.update()
    p = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(m, str(p), info={"note": "random weights"})
    return str(p)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    paths = {}
    for mode in ("RGB", "L", "RGBA", "P"):
        p = tmp_path / f"img_{mode}.png"
        Image.fromarray(rgb).convert(mode).save(p)
        paths[mode] = str(p)
    p16 = tmp_path / "img16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(p16)
    paths["I;16"] = str(p16)
    return paths


def test_version_and_env(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "compiled range coder: yes" in out and "backend for CPU tensors: torch" in out


def test_help_version_info_and_usage_errors_do_not_import_torch():
    """``--help``, ``--version``, each light command's ``--help``, ``info`` and a mistyped command
    line answer without importing torch (~0.1 s against ~2.5 with it), with their usual output
    and exit codes; ``train --help`` and ``eval --help`` still show their full options (built
    from modules that import torch). In a child process: this session imported torch."""
    import json
    sample = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                          "sample_64x80_w48.slim")
    code = (
        "import contextlib, io, json, sys\n"
        "from slimkernels.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):\n"
        "        try:\n"
        "            rc = main(argv)\n"
        "        except SystemExit as e:\n"
        "            rc = e.code\n"
        "    print(json.dumps([rc, 'torch' in sys.modules, out.getvalue()]))\n")
    light = [([], 2, "usage: slimkernels"), (["--version"], 0, "slimkernels "),
             (["--help"], 0, "decompress"), (["compress", "--help"], 0, "--target-bpp"),
             (["decompress", "--help"], 0, "--max-pixels"), (["info", "--help"], 0, "FILE"),
             (["info", sample], 0, "width 48, image 80x64"),
             (["compress", "a.png"], 2, "give the output after the input"),
             (["bogus"], 2, "invalid choice")]
    # (a device name other than cpu / cuda[:N] is checked by torch.device)
    heavy = [(["train", "--help"], 0, "--lambdas"), (["eval", "--help"], 0, "--no-classical"),
             (["compress", "a.png", "b.slim", "--device", "mps"], 2, "not a device")]
    runs = light + heavy
    r = subprocess.run([sys.executable, "-c", code, json.dumps([a for a, _, _ in runs])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert len(results) == len(runs), r.stdout
    for (argv, want_rc, want_text), (rc, torch_in, text) in zip(runs, results):
        assert rc == want_rc and want_text in text, (argv, rc, text)
        if (argv, want_rc, want_text) in light:
            assert not torch_in, argv


def test_roundtrip_and_info(model_file, images, tmp_path, capsys):
    slim = str(tmp_path / "a.slim")
    png = str(tmp_path / "a.png")
    assert main(["compress", images["RGB"], slim, "--model", model_file, "--width", "8"]) == 0
    assert main(["decompress", slim, png, "--model", model_file]) == 0
    assert main(["info", slim]) == 0
    out = capsys.readouterr().out
    assert "width 8" in out and "image 30x20" in out
    m = load_model(model_file)
    ref = m.decompress(open(slim, "rb").read()).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0)
    assert np.array_equal(np.asarray(Image.open(png)), ref.numpy())


def test_quality_and_target_bpp(model_file, images, tmp_path):
    for flag in (["--quality", "1"], ["--quality", "2"], ["--target-bpp", "1000"]):
        out = str(tmp_path / f"q{flag[1]}.slim")
        assert main(["compress", images["RGB"], out, "--model", model_file, "-q"] + flag) == 0
    from slimkernels.container import read
    assert read(str(tmp_path / "q1.slim")).width == 8
    assert read(str(tmp_path / "q2.slim")).width == 16
    assert read(str(tmp_path / "q1000.slim")).width == 16
    assert main(["compress", images["RGB"], str(tmp_path / "x.slim"), "--model", model_file,
                 "--quality", "3"]) == 1


def test_unreachable_target_bpp_is_reported(model_file, images, tmp_path, capsys):
    out = tmp_path / "t.slim"
    assert main(["compress", images["RGB"], str(out), "--model", model_file,
                 "--target-bpp", "1e-6"]) == 0
    from slimkernels.container import read
    assert read(str(out)).width == 8                       # the narrowest
    assert "no width reaches --target-bpp 1e-06" in capsys.readouterr().err
    # -q silences the per-file lines, not the warning
    assert main(["compress", images["RGB"], str(out), "--model", model_file, "-f", "-q",
                 "--target-bpp", "1e-6"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "no width reaches --target-bpp 1e-06" in cap.err


def test_missing_output_folder_is_an_error_before_any_work(model_file, images, tmp_path, capsys):
    for cmd, src in (("compress", images["RGB"]), ("decompress", None)):
        if src is None:
            src = str(tmp_path / "ok.slim")
            assert main(["compress", images["RGB"], src, "--model", model_file, "-q"]) == 0
        dst = tmp_path / "no" / "such" / ("x.slim" if cmd == "compress" else "x.png")
        assert main([cmd, src, str(dst), "--model", model_file]) == 1
        err = capsys.readouterr().err
        assert "does not exist (create it first)" in err and str(tmp_path / "no" / "such") in err
        assert not (tmp_path / "no").exists()


def test_an_output_folder_that_is_a_file_is_named_as_one(model_file, images, tmp_path, capsys):
    """(compress a.png a.png/x.slim said "the folder .../a.png does not exist (create it
    first)": it exists, as a file.)"""
    a = tmp_path / "a.png"
    a.write_bytes(Path(images["RGB"]).read_bytes())
    for dst in (a / "x.slim", a / "q" / "r" / "x.slim"):
        assert main(["compress", images["RGB"], str(dst), "--model", model_file]) == 1
        assert capsys.readouterr().err == (f"slimkernels: error: cannot write {dst}: {a} is a "
                                           f"file, not a folder\n")
    assert a.read_bytes() == Path(images["RGB"]).read_bytes()


def test_refuses_overwrite_without_force(model_file, images, tmp_path, capsys):
    out = tmp_path / "a.slim"
    out.write_bytes(b"precious")
    assert main(["compress", images["RGB"], str(out), "--model", model_file]) == 1
    assert out.read_bytes() == b"precious"
    assert "--force" in capsys.readouterr().err
    assert main(["compress", images["RGB"], str(out), "--model", model_file, "--force"]) == 0
    assert out.read_bytes()[:4] == b"SLIM"


def test_conversions_are_reported(model_file, images, tmp_path, capsys):
    for mode in ("L", "RGBA", "P", "I;16"):
        out = tmp_path / f"{mode.replace(';', '')}.slim"
        assert main(["compress", images[mode], str(out), "--model", model_file]) == 0
    err = capsys.readouterr().err
    assert "converted L to RGB" in err and "alpha" in err and "16-bit" in err
    assert "converted P to RGB" in err


def test_several_inputs_into_a_folder(model_file, images, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert main(["compress", images["RGB"], images["L"], str(outdir), "--model", model_file,
                 "-q"]) == 0
    assert sorted(os.listdir(outdir)) == ["img_L.slim", "img_RGB.slim"]
    assert main(["compress", images["RGB"], images["L"], str(tmp_path / "nofolder"),
                 "--model", model_file]) == 1


def test_errors_exit_1_and_leave_no_partial_files(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["compress", str(bad), str(tmp_path / "o.slim"), "--model", model_file]) == 1
    assert "not an image file" in capsys.readouterr().err
    corrupt = tmp_path / "c.slim"
    corrupt.write_bytes(b"SLIM\x01garbage")
    assert main(["decompress", str(corrupt), str(tmp_path / "c.png"), "--model", model_file]) == 1
    assert "c.slim" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["bad.png", "c.slim"]
    assert main(["compress", str(tmp_path / "missing.png"), str(tmp_path / "m.slim"),
                 "--model", model_file]) == 1
    assert main(["decompress", str(corrupt), str(tmp_path / "c.png"),
                 "--model", str(tmp_path / "nomodel.pt")]) == 1


def test_image_over_pillows_bomb_limit_is_a_clear_error(model_file, images, tmp_path, capsys,
                                                        monkeypatch):
    # Pillow raises DecompressionBombError (not an OSError) over 2x MAX_IMAGE_PIXELS: a one-line
    # error and exit code 1, no traceback, no output file
    import PIL.Image
    from slimkernels.io import read_image

    w, h = PIL.Image.open(images["RGB"]).size
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", (w * h) // 2 - 1)
    with pytest.raises(ValueError, match="too large to read safely"):
        read_image(images["RGB"])
    out = tmp_path / "o.slim"
    assert main(["compress", images["RGB"], str(out), "--model", model_file, "-q"]) == 1
    err = capsys.readouterr().err
    assert "too large to read safely" in err and "Traceback" not in err
    assert not out.exists()


def test_negative_threads_is_a_clear_error(model_file, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for cmd in (["compress", images["RGB"], str(out / "o.slim")],
                ["decompress", str(out / "o.slim"), str(out / "o.png")]):
        assert main(cmd + ["--model", model_file, "--threads", "-2"]) == 1
        err = capsys.readouterr().err
        assert "--threads must be >= 0" in err and "Traceback" not in err
    assert os.listdir(out) == []


def test_inputs_with_the_same_name_are_refused_naming_both(model_file, images, tmp_path, capsys):
    import shutil
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    a, b = str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")
    shutil.copy(images["RGB"], a)
    shutil.copy(images["L"], b)
    assert main(["compress", a, b, str(out), "--model", model_file, "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{a} and {b} would both write {out / 'x.slim'}" in err
    assert os.listdir(out) == []


def test_usage_errors_exit_2():
    r = subprocess.run([sys.executable, "-m", "slimkernels", "compress"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run([sys.executable, "-m", "slimkernels"], capture_output=True, text=True)
    assert r.returncode == 2


def test_precision_option(model_file, images, tmp_path, capsys):
    """--precision auto (the default) is the library default; fp32 / bf16 files decode in any
    precision to the same latents; the CLI's decoder writes the library's image."""
    from slimkernels.codec import resolve_precision
    from slimkernels.io import read_image

    m = load_model(model_file)
    x, _ = read_image(images["RGB"])
    files = {}
    for p in ("auto", "fp32", "bf16"):
        files[p] = str(tmp_path / f"{p}.slim")
        assert main(["compress", images["RGB"], files[p], "--model", model_file, "--width", "8",
                     "--precision", p, "-q"]) == 0
        data = open(files[p], "rb").read()
        assert data == m.compress(x, 8, precision=resolve_precision(p, "cpu"))
    assert open(files["auto"], "rb").read() == open(files["fp32" if resolve_precision(
        "auto", "cpu") == "fp32" else "bf16"], "rb").read()
    for p in ("fp32", "bf16"):
        for q in ("fp32", "bf16"):
            png = str(tmp_path / f"{p}_{q}.png")
            assert main(["decompress", files[p], png, "--model", model_file, "--precision", q,
                         "-q"]) == 0
            ref = m.decompress(open(files[p], "rb").read(), precision=q)
            ref = ref.mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
            assert np.array_equal(np.asarray(Image.open(png)), ref)
    with pytest.raises(SystemExit) as e:
        main(["compress", images["RGB"], str(tmp_path / "x.slim"), "--model", model_file,
              "--precision", "fp16"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["env"]) == 0
    assert f"default precision (--precision auto): CPU {resolve_precision('auto', 'cpu')}" in \
        capsys.readouterr().out


# -- from an audit of the command line (sitting 31) ------------------------------------------
def test_threads_beyond_a_few_per_cpu_are_refused_before_any_work(model_file, images, tmp_path,
                                                                 capsys):
    """(--threads 100000 crashed OpenMP: a segfault; 20000 failed to start its threads.)"""
    from slimkernels.cli import MAX_THREADS_PER_CPU
    too_many = MAX_THREADS_PER_CPU * (os.cpu_count() or 1) + 1
    out = tmp_path / "a.slim"
    for cmd in (["compress", images["RGB"], str(out)], ["decompress", str(out), str(out) + ".png"]):
        assert main(cmd + ["--model", model_file, "--threads", str(too_many)]) == 1
        assert f"--threads {too_many} is more than" in capsys.readouterr().err
    assert not out.exists()


def test_an_output_that_is_the_input_through_a_link_is_refused(model_file, images, tmp_path,
                                                              capsys):
    """(--force wrote the .slim file over the input image reached through a linked folder.)"""
    real = tmp_path / "real"
    real.mkdir()
    photo = real / "photo.png"
    photo.write_bytes(open(images["RGB"], "rb").read())
    (tmp_path / "link").symlink_to(real)
    before = photo.read_bytes()
    for out in (tmp_path / "link" / "photo.png",):
        assert main(["compress", str(photo), str(out), "-f", "--model", model_file]) == 1
        assert "is the input file" in capsys.readouterr().err
    os.link(photo, tmp_path / "hard.png")
    assert main(["compress", str(photo), str(tmp_path / "hard.png"), "-f",
                 "--model", model_file]) == 1
    assert "is the input file" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_force_does_not_replace_a_fifo_or_folder(model_file, images, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["compress", images["RGB"], str(fifo), "-f", "--model", model_file]) == 1
    assert "is not a regular file" in capsys.readouterr().err
    assert not os.path.isfile(fifo) and os.path.exists(fifo)


def test_inputs_are_checked_before_any_output_is_written(model_file, images, tmp_path, capsys):
    """(A batch stopped at its first missing input after writing the ones before it; the
    rerun then needed --force.)"""
    out = tmp_path / "out"
    out.mkdir()
    assert main(["compress", images["RGB"], str(tmp_path / "nope.png"), images["L"], str(out),
                 "--model", model_file]) == 1
    assert "nope.png does not exist" in capsys.readouterr().err
    assert os.listdir(out) == []
    # a link to nothing, or a loop, is named as such (it read "does not exist" as well)
    os.symlink(tmp_path / "nope.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    for name in ("dangling.png", "loop.png"):
        assert main(["compress", str(tmp_path / name), str(out), "--model", model_file]) == 1
        assert (f"{name} is a symbolic link that leads nowhere (to a missing file, or in a loop)"
                in capsys.readouterr().err)
    assert os.listdir(out) == []
    # an output name longer than the file system takes: refused before the work (the rename
    # failed after it, naming the temporary file)
    long_out = str(out / ("x" * 251 + ".slim"))
    assert main(["compress", images["RGB"], long_out, "--model", model_file]) == 1
    assert "its name is longer than the 255 bytes the file system in" in capsys.readouterr().err
    assert os.listdir(out) == []
    assert main(["compress", images["RGB"], str(tmp_path / "newdir") + os.sep,
                 "--model", model_file]) == 1
    assert "is not an existing folder (create it first" in capsys.readouterr().err
    assert main(["compress", images["RGB"], "", "--model", model_file]) == 1
    assert "the output path is empty" in capsys.readouterr().err


def test_a_big_file_that_is_not_slim_is_refused_from_its_first_bytes(model_file, tmp_path,
                                                                     capsys, monkeypatch):
    """(info / decompress read the whole file first: /dev/zero ran out of memory.)"""
    import builtins
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (1 << 20))
    reads = []
    real_open = builtins.open

    def tracking_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if str(path) == str(big):
            real_read = f.read
            f = _Reads(f, real_read, reads)
        return f
    monkeypatch.setattr(builtins, "open", tracking_open)
    assert main(["info", str(big)]) == 1
    assert main(["decompress", str(big), str(tmp_path / "x.png"), "--model", model_file]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err.count("magic bytes 'SLIM' are missing") == 2
    assert reads and max(reads) <= 4
    assert main(["info", str(tmp_path)]) == 1
    assert "not a .slim file: a folder" in capsys.readouterr().err


class _Reads:
    """A file whose ``read(n)`` sizes are logged (``-1``: the rest)."""

    def __init__(self, f, read, log):
        self._f, self._read, self._log = f, read, log

    def read(self, n=-1):
        data = self._read(n)
        self._log.append(len(data) if n != -1 else 1 << 62)
        return data

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return self._f.__exit__(*a)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_env_reports_a_backend_this_machine_cannot_run(monkeypatch, capsys):
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "nonsense")
    assert main(["env"]) == 0
    assert "backend for CPU tensors: unusable (" in capsys.readouterr().out


def test_webp_output_is_lossless(model_file, images, tmp_path):
    slim, png, webp = (str(tmp_path / f"a.{e}") for e in ("slim", "png", "webp"))
    assert main(["compress", images["RGB"], slim, "--model", model_file, "-q"]) == 0
    assert main(["decompress", slim, png, "--model", model_file, "-q"]) == 0
    assert main(["decompress", slim, webp, "--model", model_file, "-q"]) == 0
    a = np.asarray(Image.open(png).convert("RGB"))
    assert np.array_equal(a, np.asarray(Image.open(webp).convert("RGB")))


@pytest.mark.parametrize("kind", ["float", "int32"])
def test_32_bit_pixels_are_refused_not_blackened(model_file, tmp_path, capsys, kind):
    """(A float TIFF was coded all black; 32-bit ints were clipped at 65535.)"""
    arr = (np.random.default_rng(0).random((12, 10)).astype(np.float32) if kind == "float"
           else (np.arange(120).reshape(12, 10) * 1000 + 70000).astype(np.int32))
    src = tmp_path / "img.tif"
    Image.fromarray(arr).save(src)
    assert main(["compress", str(src), str(tmp_path / "a.slim"), "--model", model_file]) == 1
    assert "pixels (Pillow mode" in capsys.readouterr().err
    assert not (tmp_path / "a.slim").exists()


def test_compress_refuses_an_image_extension_for_its_output(model_file, images, tmp_path,
                                                           capsys):
    """(compress a.png b.png wrote .slim bytes into b.png.)"""
    assert main(["compress", images["RGB"], str(tmp_path / "b.png"), "--model", model_file]) == 1
    assert "compress writes a .slim file, not an image" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize("op", ["compress", "decompress"])
def test_a_batch_with_one_unreadable_input_writes_nothing(model_file, images, tmp_path, capsys,
                                                         op):
    out = tmp_path / "out"
    out.mkdir()
    junk = tmp_path / ("junk.png" if op == "compress" else "junk.slim")
    junk.write_text("not what it says")
    if op == "compress":
        good = [images["RGB"], images["L"]]
    else:
        good = [str(tmp_path / "a.slim")]
        assert main(["compress", images["RGB"], good[0], "--model", model_file, "-q"]) == 0
    assert main([op, *good, str(junk), str(out), "--model", model_file]) == 1
    assert f"{junk}: not a" in capsys.readouterr().err
    assert os.listdir(out) == []


def test_target_bpp_measures_the_file_it_writes(model_file, images, tmp_path, capsys):
    """--target-bpp measured files with the API's streams=None and wrote them with --streams:
    a width that fitted was skipped (or one over the target written, with a note saying the
    narrowest)."""
    from slimkernels.container import read
    from slimkernels.io import read_image
    m = load_model(model_file)
    x, _ = read_image(images["RGB"])
    H, W = x.shape[-2:]
    one = 8 * len(m.compress(x, 16, streams=1)) / (H * W)
    two = 8 * len(m.compress(x, 16, streams=2)) / (H * W)
    assert two > one                                      # a second substream costs bytes
    target = (one + two) / 2
    for streams, width in (("1", 16), ("2", 8)):
        out = tmp_path / f"s{streams}.slim"
        assert main(["compress", images["RGB"], str(out), "--model", model_file, "-q",
                     "--target-bpp", repr(target), "--streams", streams]) == 0
        f = read(str(out))
        assert (f.width, f.streams) == (width, int(streams))
        assert 8 * out.stat().st_size / (H * W) <= target
    assert "no width reaches" not in capsys.readouterr().err
    for bad in ("0", "nan", "-1"):
        assert main(["compress", images["RGB"], str(tmp_path / "b.slim"), "--model", model_file,
                     "--target-bpp", bad]) == 1
        assert "--target-bpp must be a finite number > 0" in capsys.readouterr().err
    assert not (tmp_path / "b.slim").exists()


@pytest.mark.parametrize("op", ["compress", "decompress"])
def test_a_batch_that_fails_past_its_checks_removes_what_it_wrote(model_file, images, tmp_path,
                                                                  capsys, op):
    """An input that passes the header checks but fails later (a truncated PNG, a .slim with a
    corrupt payload) stopped the batch with the earlier outputs written: its rerun then failed
    without --force."""
    out = tmp_path / "out"
    out.mkdir()
    if op == "compress":
        data = open(images["RGB"], "rb").read()
        bad = tmp_path / "trunc.png"
        bad.write_bytes(data[:len(data) // 2])
        good = [images["L"]]
    else:
        good = [str(tmp_path / "a.slim")]
        assert main(["compress", images["RGB"], good[0], "--model", model_file, "-q"]) == 0
        blob = bytearray(open(good[0], "rb").read())
        blob[-3] ^= 0xFF
        bad = tmp_path / "bad.slim"
        bad.write_bytes(bytes(blob))
    keep = out / ("other.slim" if op == "compress" else "other.png")
    keep.write_bytes(b"kept")                      # (not this batch's: left alone)
    assert main([op, *good, str(bad), str(out), "--model", model_file]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "removed the 1 file(s) it had written" in err
    assert sorted(os.listdir(out)) == [keep.name] and keep.read_bytes() == b"kept"


@pytest.mark.parametrize("name", ["b.pgm", "b.jfif", "b.tga", "b.PNM"])
def test_compress_refuses_any_image_extension_even_with_force(model_file, images, tmp_path,
                                                              capsys, name):
    """(compress a.png b.pgm -f replaced the image b.pgm with .slim bytes.)"""
    dst = tmp_path / name
    dst.write_bytes(b"an image")
    assert main(["compress", images["RGB"], str(dst), "--model", model_file, "-f"]) == 1
    assert "compress writes a .slim file, not an image" in capsys.readouterr().err
    # without --force too (it said "exists: not overwriting it (use --force)", then this)
    assert main(["compress", images["RGB"], str(dst), "--model", model_file]) == 1
    assert "compress writes a .slim file, not an image" in capsys.readouterr().err
    assert dst.read_bytes() == b"an image"


def test_out_of_memory_is_one_line(model_file, images, tmp_path, capsys, monkeypatch):
    import slimkernels.io as sio

    def boom(*a, **k):
        raise MemoryError()
    monkeypatch.setattr(sio, "read_image", boom)
    assert main(["compress", images["RGB"], str(tmp_path / "a.slim"), "--model", model_file]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "Traceback" not in err
    assert not (tmp_path / "a.slim").exists()


def test_torchs_allocation_failure_is_the_out_of_memory_line(model_file, images, tmp_path,
                                                                capsys, monkeypatch):
    """torch's CPU allocator raises RuntimeError, not MemoryError: the user read "RuntimeError:
    [enforce fail at alloc_cpu.cpp:...] ... DefaultCPUAllocator: can't allocate memory"."""
    import torch

    from slimkernels.codec import SlimCodec

    def compress(self, *a, **k):   # what a too-large activation raises on the CPU
        torch.empty(1 << 50, dtype=torch.uint8)
    monkeypatch.setattr(SlimCodec, "compress", compress)
    assert main(["compress", images["RGB"], str(tmp_path / "a.slim"), "--model", model_file]) == 1
    err = capsys.readouterr().err
    assert "out of memory" in err and "enforce fail" not in err and "Traceback" not in err
    assert not (tmp_path / "a.slim").exists()


def test_other_runtime_errors_keep_their_message(model_file, images, tmp_path, capsys,
                                                 monkeypatch):
    from slimkernels.codec import SlimCodec

    def compress(self, *a, **k):
        raise RuntimeError("something else")
    monkeypatch.setattr(SlimCodec, "compress", compress)
    assert main(["compress", images["RGB"], str(tmp_path / "a.slim"), "--model", model_file]) == 1
    assert "RuntimeError: something else" in capsys.readouterr().err


def test_sigterm_removes_the_batch_outputs_and_exits_143(model_file, images, tmp_path, capsys,
                                                         monkeypatch):
    """SIGTERM ended the process at once: a hidden temporary file (and a batch's outputs) stayed.
    Now it runs the cleanups of a Ctrl-C and exits 128 + 15."""
    import signal
    import slimkernels.io as sio
    real = sio.atomic_write_bytes
    calls = []

    def write_then_term(path, data, overwrite=False):
        calls.append(path)
        if len(calls) == 2:   # (the second output: the first one is written)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path, data, overwrite=overwrite)
    monkeypatch.setattr(sio, "atomic_write_bytes", write_then_term)
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["compress", images["RGB"], images["L"], str(out), "--model", model_file, "-q"])
    assert rc == 143 and "stopped by signal 15" in capsys.readouterr().err
    assert os.listdir(out) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_env_reports_the_optional_extensions(capsys):
    """(a build that skipped the optional extensions looked the same as a full one.)"""
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "compiled CPU kernels: " in out and "model state key: " in out


def _run_on_terminal(args):
    """``(returncode, output)`` of ``python -m slimkernels *args`` with stdout and stderr on one
    pseudo-terminal (the progress bar is drawn only on a terminal)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    leader, follower = pty.openpty()
    # a terminal of 24 x 160 (a new pseudo-terminal is 0 x 0, where tqdm draws nothing)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "slimkernels", *args], stdout=follower,
                            stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        r, _, _ = select.select([leader], [], [], 120)
        if not r:
            proc.kill()
            raise AssertionError("no output for 120 s")
        try:
            data = os.read(leader, 4096)
        except OSError:   # (EIO: the child closed the terminal)
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(), b"".join(chunks).decode().replace("\r\n", "\n")


def test_batch_lines_print_above_the_progress_bar(model_file, images, tmp_path):
    """With several inputs the progress bar (stderr) and the per-file lines (stdout) share a
    terminal: each line is printed above the bar (tqdm.write), not after the bar's text on its
    line ("compress:   0%|...| 0/2 [...]img_RGB.png -> ...")."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    srcs = [images["RGB"], images["L"]]
    for cmd, ins, ext in (("compress", srcs, ".slim"),
                          ("decompress", [str(outdir / "img_RGB.slim"),
                                          str(outdir / "img_L.slim")], ".png")):
        rc, text = _run_on_terminal([cmd, *ins, str(outdir), "--model", model_file])
        assert rc == 0, text
        assert f"{cmd}: 100%" in text, text                         # the bar was drawn
        shown = [line.split("\r")[-1] for line in text.split("\n")]   # what a terminal keeps
        lines = [s for s in shown if " -> " in s]
        assert len(lines) == 2, text
        for s, src in zip(lines, ins):
            assert s.startswith(f"{src} -> "), (cmd, s)
        assert sorted(p for p in os.listdir(outdir) if p.endswith(ext)) == \
            ["img_L" + ext, "img_RGB" + ext]


def test_no_progress_bar_when_stderr_is_not_a_terminal(model_file, images, tmp_path):
    """(a log file got the bar's redraws: lines of carriage returns and counts.)"""
    r = subprocess.run([sys.executable, "-m", "slimkernels", "compress", images["RGB"],
                        images["L"], str(tmp_path), "--model", model_file],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "it/s" not in r.stderr and "%|" not in r.stderr, r.stderr
    assert r.stdout.count(" -> ") == 2

def test_output_as_an_option(model_file, images, tmp_path, capsys):
    """``-o OUT``: every positional argument is then an input (``compress a.png -o a.slim`` was
    "unrecognized arguments: -o")."""
    slim, png = tmp_path / "a.slim", tmp_path / "a.png"
    assert main(["compress", images["RGB"], "-o", str(slim), "--model", model_file]) == 0
    assert main(["decompress", "-o", str(png), str(slim), "--model", model_file]) == 0
    assert Image.open(png).size == (30, 20)
    outdir = tmp_path / "many"
    outdir.mkdir()
    assert main(["compress", images["RGB"], images["L"], "--output", str(outdir), "--model",
                 model_file, "-q"]) == 0
    assert sorted(os.listdir(outdir)) == ["img_L.slim", "img_RGB.slim"]
    capsys.readouterr()
    assert main(["compress", images["RGB"]]) == 2
    assert "compress: give the output after the input (slimkernels compress IN OUT, or -o OUT)" \
        in capsys.readouterr().err


def test_streams_are_checked_before_anything_else(model_file, images, tmp_path, capsys):
    out = tmp_path / "a.slim"
    out.write_bytes(b"old")
    assert main(["compress", images["RGB"], str(out), "--streams", "0", "--model",
                 model_file]) == 1
    err = capsys.readouterr().err
    assert "error: --streams must be 1..255 (coder substreams), got 0" in err, err
    assert "ValueError" not in err and out.read_bytes() == b"old"


def test_a_dangling_link_as_output_needs_force(model_file, images, tmp_path, capsys):
    link = tmp_path / "dangling.slim"
    os.symlink(tmp_path / "nowhere", link)
    assert main(["compress", images["RGB"], str(link), "--model", model_file]) == 1
    err = capsys.readouterr().err
    assert f"{link} exists: not overwriting it (use --force)" in err
    assert "overwrite=True" not in err and os.path.islink(link)


def test_a_slim_file_given_to_compress_points_to_decompress(model_file, images, tmp_path,
                                                           capsys):
    slim = tmp_path / "a.slim"
    assert main(["compress", images["RGB"], str(slim), "--model", model_file, "-q"]) == 0
    assert main(["compress", str(slim), str(tmp_path / "b.slim"), "--model", model_file]) == 1
    assert f"{slim} is a .slim file, not an image: `slimkernels decompress` turns it back" in \
        capsys.readouterr().err


def test_another_models_file_names_the_model_option(model_file, images, tmp_path, capsys):
    slim = tmp_path / "a.slim"
    assert main(["compress", images["RGB"], str(slim), "--model", model_file, "-q"]) == 0
    torch.manual_seed(1)
    other = SlimCAE(widths=(16, 8)).eval()
    other.update()
    other_file = str(tmp_path / "other.pt")
    save_model(other, other_file)
    assert main(["decompress", str(slim), str(tmp_path / "a.png"), "--model", other_file]) == 1
    err = capsys.readouterr().err
    assert "written with a different model" in err and "(--model MODEL picks the model file)" in err


def _stop_compress_at(monkeypatch, n: int, stop):
    """Make the ``n``-th ``SlimCAE.compress`` call raise ``stop``; returns the list that
    counts the calls."""
    calls, real = [], SlimCAE.compress

    def flaky(self, *a, **k):
        calls.append(1)
        if len(calls) == n:
            raise stop("stopped")
        return real(self, *a, **k)
    monkeypatch.setattr(SlimCAE, "compress", flaky)
    return calls


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_batch_stopped_on_a_file_it_has_not_replaced_yet_leaves_no_copy(
        model_file, images, tmp_path, monkeypatch, capsys, stop):
    """The copy of a file is a hard link to it until the file is replaced: a batch stopped in
    between left the copy behind (rename() between two links of one file does nothing)."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    srcs = [images["RGB"], images["L"]]
    for name in ("img_RGB.slim", "img_L.slim"):
        (outdir / name).write_bytes(b"old " + name.encode())
    _stop_compress_at(monkeypatch, 2, stop)
    assert main(["compress", *srcs, str(outdir), "--model", model_file, "-f", "-q"]) in (1, 130)
    # (the second had not been replaced yet: only the first is put back, and said)
    assert "put back the 1 file(s) it had replaced" in capsys.readouterr().err
    assert sorted(os.listdir(outdir)) == ["img_L.slim", "img_RGB.slim"]
    for name in ("img_RGB.slim", "img_L.slim"):
        assert (outdir / name).read_bytes() == b"old " + name.encode()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_a_stopped_forced_batch_puts_back_what_it_replaced(model_file, images, tmp_path,
                                                          monkeypatch, capsys, stop):
    """A --force batch stopped half-way (Ctrl-C, an error) had left some outputs replaced and
    the rest old: it now puts the replaced ones back and removes the new ones, so the folder is
    as before; a finished batch leaves no copies behind."""
    outdir = tmp_path / "out"
    outdir.mkdir()
    srcs = [images["RGB"], images["L"], images["RGBA"]]
    (outdir / "img_RGB.slim").write_bytes(b"old RGB")
    (outdir / "img_L.slim").write_bytes(b"old L")
    real = SlimCAE.compress
    calls = _stop_compress_at(monkeypatch, 3, stop)
    rc = main(["compress", *srcs, str(outdir), "--model", model_file, "-f", "-q"])
    assert rc == (130 if stop is KeyboardInterrupt else 1) and len(calls) == 3
    err = capsys.readouterr().err
    assert "put back the 2 file(s) it had replaced" in err, err
    assert sorted(os.listdir(outdir)) == ["img_L.slim", "img_RGB.slim"]   # (no copies left)
    assert (outdir / "img_RGB.slim").read_bytes() == b"old RGB"
    assert (outdir / "img_L.slim").read_bytes() == b"old L"
    monkeypatch.setattr(SlimCAE, "compress", real)
    assert main(["compress", *srcs, str(outdir), "--model", model_file, "-f", "-q"]) == 0
    assert sorted(os.listdir(outdir)) == ["img_L.slim", "img_RGB.slim", "img_RGBA.slim"]
    assert (outdir / "img_RGB.slim").read_bytes()[:4] != b"old "


def test_train_errors_read_without_the_exception_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "no_such_folder", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert f"--data no_such_folder: the image folder does not exist (relative to {tmp_path})" \
        in err and "ValueError" not in err, err


def test_options_between_the_inputs_and_the_output(model_file, images, tmp_path):
    """(With -o the output became optional and argparse stopped at the first option:
    `compress a.png --width 8 z.slim` was "unrecognized arguments: z.slim".)"""
    from slimkernels.container import read
    z = tmp_path / "z.slim"
    assert main(["compress", images["RGB"], "--width", "8", str(z), "--model", model_file,
                 "-q"]) == 0
    assert read(str(z)).width == 8
    png = tmp_path / "z.png"
    assert main(["decompress", str(z), "--model", model_file, str(png), "-q"]) == 0
    assert Image.open(png).size == (30, 20)
    outdir = tmp_path / "o"
    outdir.mkdir()
    assert main(["compress", images["RGB"], "-o", str(outdir), images["L"], "--model",
                 model_file, "-q"]) == 0
    assert sorted(os.listdir(outdir)) == ["img_L.slim", "img_RGB.slim"]
    with pytest.raises(SystemExit) as e:   # an unknown option is still a usage error
        main(["compress", images["RGB"], "--wdith", "8", str(z)])
    assert e.value.code == 2


def test_signals_are_deferred_with_other_threads_running():
    """(A thread's signal mask does not stop a signal sent to the process: another thread took
    it and Python raised in the main thread inside the "deferred" block.)"""
    import signal
    import threading
    import time
    from slimkernels.cli import _SignalsDeferred
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    inside = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with _SignalsDeferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
                inside.append("finished")
        assert inside == ["finished"]
        with _SignalsDeferred(reraise=False):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        stop.set()
        other.join()


def test_ctrl_c_while_the_copies_are_removed_removes_them_all(model_file, images, tmp_path,
                                                             monkeypatch, capsys):
    import signal
    import slimkernels.cli as cli
    outdir = tmp_path / "out"
    outdir.mkdir()
    srcs = [images["RGB"], images["L"], images["RGBA"]]
    for s in srcs:
        (outdir / (os.path.basename(s)[:-4] + ".slim")).write_bytes(b"old")
    real = cli._remove_quietly
    sent = []

    def remove(path):
        if ".backup" in path and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        real(path)
    monkeypatch.setattr(cli, "_remove_quietly", remove)
    assert main(["compress", *srcs, str(outdir), "--model", model_file, "-f", "-q"]) == 130
    assert sent and sorted(os.listdir(outdir)) == ["img_L.slim", "img_RGB.slim", "img_RGBA.slim"]
    for name in os.listdir(outdir):   # (the batch had finished: every file is new)
        assert (outdir / name).read_bytes() != b"old"


def test_a_stopped_batch_leaves_a_dangling_link_output_alone(model_file, images, tmp_path,
                                                            monkeypatch, capsys):
    """(os.path.samefile followed the link: "could not put back", its copy left behind.)"""
    outdir = tmp_path / "out"
    outdir.mkdir()
    os.symlink(tmp_path / "nowhere.slim", outdir / "img_L.slim")
    monkeypatch.setattr(SlimCAE, "compress", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("stopped")))
    assert main(["compress", images["L"], images["RGB"], str(outdir), "--model", model_file,
                 "-f", "-q"]) == 1     # (stopped on the link's own step)
    err = capsys.readouterr().err
    # (stopped before the link was replaced: nothing to put back, nothing said about it)
    assert "put back" not in err, err
    assert os.listdir(outdir) == ["img_L.slim"] and os.path.islink(outdir / "img_L.slim")


def test_an_output_written_before_the_failure_is_removed(model_file, images, tmp_path,
                                                        monkeypatch, capsys):
    """(An output was recorded as the batch's only after its step returned: a failure after
    the write, e.g. printing its line to a full disk, left it.)"""
    import errno
    import slimkernels.io as sio
    real = sio.atomic_write_bytes

    def write_then_fail(path, data, **k):
        real(path, data, **k)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(sio, "atomic_write_bytes", write_then_fail)
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert main(["compress", images["RGB"], images["L"], str(outdir), "--model", model_file,
                 "-q"]) == 1
    assert os.listdir(outdir) == []
    assert "removed the 1 file(s) it had written" in capsys.readouterr().err


def test_a_copy_that_cannot_be_made_is_not_left_half_written(model_file, images, tmp_path,
                                                            monkeypatch, capsys):
    import errno
    import shutil
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "a.slim"
    out.write_bytes(b"x" * 1000)

    def no_link(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    def half_copy(src, dst, **k):
        with open(dst, "wb") as f:
            f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copy2", half_copy)
    assert main(["compress", images["RGB"], str(out), "--model", model_file, "-f"]) == 1
    assert "cannot keep a copy of" in capsys.readouterr().err
    assert os.listdir(tmp_path / "o") == ["a.slim"] and out.read_bytes() == b"x" * 1000


def test_compress_of_a_damaged_png_is_one_error_line_not_a_traceback(tmp_path, capsys):
    """The CLI's `compress` passes the header check (_check_images opens the header only), then
    read_image's SyntaxError was not one of the types main() turns into an error line: the user
    got a Python traceback (exit code 1 from the interpreter, not slimkernels' message)."""
    from tests.test_io import _broken_chunk_png

    torch.manual_seed(0)
    m = SlimCAE(widths=(16, 8)).eval()
    m.update()
    model = tmp_path / "tiny.pt"
    save_model(m, str(model), info={"note": "random weights"})
    p = tmp_path / "damaged.png"
    _broken_chunk_png(p)
    assert main(["compress", str(p), str(tmp_path / "out.slim"), "--model", str(model)]) == 1
    assert "damaged.png" in capsys.readouterr().err
    assert not (tmp_path / "out.slim").exists()


def test_gpu_out_of_memory_says_gpu_and_keeps_torchs_line(model_file, images, tmp_path, capsys,
                                                          monkeypatch):
    import torch

    from slimkernels.codec import SlimCodec
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

    def compress(self, *a, **k):
        raise oom("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    monkeypatch.setattr(SlimCodec, "compress", compress)
    assert main(["compress", images["RGB"], str(tmp_path / "a.slim"), "--model", model_file]) == 1
    err = capsys.readouterr().err
    assert "out of GPU memory" in err and "Tried to allocate 2.00 GiB" in err, err


@pytest.mark.parametrize("device", ["meta", "mps", "xpu", "banana"])
def test_device_options_take_cpu_and_cuda_only(device, images, tmp_path, capsys):
    """(compress / decompress took --device cpu or cuda only, so cuda:1 was refused although
    eval and train take it; eval and train took any name: mps, xpu or meta failed deep inside
    with torch's "not linked with support" or an AssertionError.) The parsers take cpu, cuda and
    cuda:N and refuse the rest with the option's name; whether the GPU exists is checked when
    the model loads."""
    import argparse
    from slimkernels.evaluation.cli import add_eval_arguments
    from slimkernels.training.cli import build_parser as train_parser

    def eval_parser():
        return add_eval_arguments(argparse.ArgumentParser())
    out = tmp_path / "x.slim"
    for argv, parse in ((["compress", images["RGB"], str(out)], main),
                        (["decompress", str(out), str(tmp_path / "y.png")], main),
                        ([str(tmp_path)], eval_parser().parse_args),
                        ([], train_parser().parse_args)):
        with pytest.raises(SystemExit) as e:
            parse(argv + ["--device", device])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --device: {device!r} is not a device the transforms run on" in err
        assert "cpu, cuda or cuda:N" in err
    assert not out.exists()
    for ok in ("cpu", "cuda", "cuda:1"):
        assert eval_parser().parse_args([str(tmp_path), "--device", ok]).device == ok
        assert train_parser().parse_args(["--device", ok]).device == ok
    if not torch.cuda.is_available():
        assert main(["compress", images["RGB"], str(out), "--device", "cuda:1"]) == 1
        assert "no CUDA GPU is available" in capsys.readouterr().err


def test_info_reports_the_substreams_the_payload_holds_and_every_file(model_file, images,
                                                                      tmp_path, capsys):
    """(info printed the header's requested substream count, 255, for a payload that holds
    fewer; and it stopped at the first unreadable file, never showing the ones after it.)"""
    from slimkernels import coding, container
    many, one = str(tmp_path / "many.slim"), str(tmp_path / "one.slim")
    assert main(["compress", images["RGB"], many, "--model", model_file, "--width", "8",
                 "--streams", "255", "-q"]) == 0
    assert main(["compress", images["RGB"], one, "--model", model_file, "--width", "8",
                 "-q"]) == 0
    held = coding.stream_count(container.read(many).payload)
    assert held < 255
    capsys.readouterr()
    assert main(["info", many, images["RGB"], str(tmp_path / "missing.slim"), one]) == 1
    r = capsys.readouterr()
    lines = r.out.splitlines()
    assert f"{held} substream(s) (the header asked 255)" in lines[0]
    assert lines[1].startswith(one) and ", 1 substream(s)," in lines[1]
    assert f"{images['RGB']}: " in r.err and "missing.slim does not exist" in r.err


def test_info_of_a_dash_says_what_compress_says_and_goes_on(model_file, images, tmp_path, capsys):
    """(info - said "- does not exist"; compress and decompress say '-' is not supported.)"""
    ok = str(tmp_path / "ok.slim")
    assert main(["compress", images["RGB"], ok, "--model", model_file, "--width", "8",
                 "-q"]) == 0
    capsys.readouterr()
    assert main(["info", "-", ok]) == 1
    r = capsys.readouterr()
    assert r.err == ("slimkernels: error: '-' (standard input) is not supported: give file paths "
                     "(/dev/stdin for a pipe, ./- for a file named '-')\n")
    assert r.out.startswith(ok + ": .slim format v1")


def test_info_goes_on_after_any_unreadable_path(model_file, images, tmp_path, capsys):
    """A folder, a path through a file and a name too long are each named with the reason, and
    the files after them are still shown (any OSError but a missing file ended the command with
    its bare name before: 'NotADirectoryError: [Errno 20] ...')."""
    ok = str(tmp_path / "ok.slim")
    assert main(["compress", images["RGB"], ok, "--model", model_file, "--width", "8",
                 "-q"]) == 0
    capsys.readouterr()
    long_name = str(tmp_path / ("a" * 300 + ".slim"))
    assert main(["info", ok + "/x", long_name, ok]) == 1
    r = capsys.readouterr()
    assert r.out.startswith(ok + ": .slim format v1") and len(r.out.splitlines()) == 1
    assert f"{ok}/x: cannot read it (Not a directory)" in r.err
    assert "cannot read it (File name too long)" in r.err


def _cli(args, cwd, **kw):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")   # (strict, as in an en_US.UTF-8 locale)
    return subprocess.run([sys.executable, "-m", "slimkernels", *args], cwd=cwd, env=env,
                          timeout=120, **kw)


def test_a_name_stdout_cannot_encode_is_escaped_not_a_failure(model_file, images, tmp_path):
    """A file name with bytes that are not UTF-8, on a strict UTF-8 stdout: the progress and info
    lines escape them, and the batch keeps its outputs (printing the line raised, and the
    batch then removed every file it had written, the good ones too)."""
    name = os.fsdecode(b"bad\xff.png")
    with open(images["RGB"], "rb") as f, open(tmp_path / name, "wb") as g:
        g.write(f.read())
    out = tmp_path / "o"
    out.mkdir()
    r = _cli(["compress", name, images["L"], "-o", "o/", "--model", model_file, "--width", "8"],
             tmp_path, capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(os.listdir(out)) == sorted([os.fsdecode(b"bad\xff.slim"), "img_L.slim"])
    assert b"bad\\udcff.png -> o/bad\\udcff.slim: width 8" in r.stdout
    r = _cli(["info", os.path.join("o", os.fsdecode(b"bad\xff.slim")), "o/img_L.slim"],
             tmp_path, capture_output=True)
    assert r.returncode == 0 and r.stdout.count(b".slim format v1") == 2, r.stderr.decode()


def test_a_closed_stdout_keeps_the_batch(model_file, images, tmp_path):
    """stdout closed after the first progress line (``| head -n1``): the batch finishes and
    keeps every output, exit status 0 (the BrokenPipeError failed it and removed them all)."""
    out = tmp_path / "o"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "slimkernels", "compress", images["RGB"],
                             images["L"], images["RGBA"], "-o", "o/", "--model", model_file,
                             "--width", "8"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()   # (the reader is gone: the next line meets a broken pipe)
    _, err = proc.communicate(timeout=120)
    assert b" -> o/img_RGB.slim" in first
    assert proc.returncode == 0, err.decode()
    assert sorted(os.listdir(out)) == ["img_L.slim", "img_RGB.slim", "img_RGBA.slim"]
    if os.path.exists("/dev/full"):   # (a full disk under stdout: the same)
        with open("/dev/full", "w") as full:
            r = _cli(["compress", images["P"], "-o", "o/", "--model", model_file, "--width",
                      "8"], tmp_path, stdout=full, stderr=subprocess.PIPE)
        assert r.returncode == 0, r.stderr.decode()
        assert os.path.exists(out / "img_P.slim")


def test_decompress_max_pixels_and_webp_sides_are_checked_before_decoding(model_file, images,
                                                                         tmp_path, capsys,
                                                                         monkeypatch):
    """--max-pixels refuses a file whose image has more pixels (default DECODE_MAX_PIXELS; 0:
    none), and a WebP output of an image wider than WebP holds (16383 pixels) is refused from
    the header, before the decoding (it failed after it, without naming the file)."""
    slim, wide = str(tmp_path / "a.slim"), str(tmp_path / "wide.slim")
    assert main(["compress", images["RGB"], slim, "--model", model_file, "--width", "8",
                 "-q"]) == 0
    capsys.readouterr()
    png = str(tmp_path / "a.png")
    assert main(["decompress", slim, png, "--model", model_file, "--max-pixels", "599"]) == 1
    err = capsys.readouterr().err
    assert f"{slim}: the file's image is 30x20 = 600 pixels, more than the limit of 599" in err
    assert "--max-pixels N raises the limit (0: none)" in err and not os.path.exists(png)
    for limit in ("600", "0"):
        assert main(["decompress", slim, png, "--model", model_file, "--max-pixels", limit,
                     "-q", "-f"]) == 0
        assert Image.open(png).size == (30, 20)
    assert main(["decompress", slim, png, "--model", model_file, "--max-pixels", "-1"]) == 1
    assert "--max-pixels must be >= 0" in capsys.readouterr().err
    Image.fromarray(np.zeros((1, 16400, 3), np.uint8)).save(tmp_path / "wide.png")
    assert main(["compress", str(tmp_path / "wide.png"), wide, "--model", model_file, "--width",
                 "8", "-q"]) == 0
    capsys.readouterr()
    import slimkernels.codec as codec_mod
    real, calls = codec_mod.SlimCodec.decompress, []
    monkeypatch.setattr(codec_mod.SlimCodec, "decompress",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["decompress", wide, str(tmp_path / "w.webp"), "--model", model_file]) == 1
    assert (f"{wide}: its image is 16400x1, and WebP holds at most 16383 pixels a side"
            in capsys.readouterr().err)
    assert calls == [] and not os.path.exists(tmp_path / "w.webp")


def test_the_first_file_s_time_is_labelled_as_the_first_call(model_file, images, tmp_path,
                                                              capsys):
    """(a one-image compress printed ~470 ms against the README's tens: the first call prepares
    the weights; its time is labelled so now, the later files' are not.)"""
    out = tmp_path / "o"
    out.mkdir()
    for argv in (["compress", images["RGB"], images["L"], "-o", f"{out}/"],
                 ["decompress", str(out / "img_RGB.slim"), str(out / "img_L.slim"), "-o",
                  f"{out}/"]):
        assert main(argv + ["--model", model_file]) == 0
        lines = [ln for ln in capsys.readouterr().out.splitlines() if " -> " in ln]
        assert len(lines) == 2
        assert lines[0].endswith(" ms (first call: includes preparing the weights)")
        assert lines[1].endswith(" ms"), lines


def test_info_line_for_an_unreadable_payload_header_reads_as_a_sentence(tmp_path, capsys):
    from slimkernels import container
    f = container.SlimFile(model_id=bytes(16), width=8, height=20, img_width=30, streams=3,
                           payload=b"\x07garbage")
    p = tmp_path / "bad.slim"
    p.write_bytes(container.pack(f))
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert ", 3 substream(s) asked (the payload's header is unreadable), payload 8 bytes" in out


def test_a_forced_decompress_of_a_corrupt_file_says_one_line(model_file, images, tmp_path,
                                                             capsys):
    """(--force onto an existing output whose input failed to decode printed "the batch stopped:
    put back the 1 file(s) it had replaced" before the error: nothing had been replaced.)"""
    slim = tmp_path / "a.slim"
    assert main(["compress", images["RGB"], str(slim), "--model", model_file, "-q"]) == 0
    data = bytearray(slim.read_bytes())
    data[-3] ^= 0x10                        # (the container's checksum then refuses it)
    slim.write_bytes(bytes(data))
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    capsys.readouterr()
    assert main(["decompress", str(slim), str(out), "--model", model_file, "--force", "-q"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert out.read_bytes() == b"old"
    assert len(err) == 1 and err[0].startswith("slimkernels: error: "), err


@pytest.mark.parametrize("cmd", ["compress", "decompress"])
def test_a_pipe_as_input_is_refused_before_any_work(model_file, images, tmp_path, capsys, cmd):
    """A pipe (/dev/stdin, <(...)) could not be read twice: its first bytes went to the type
    check, so a good .slim file was called "not a .slim file" and an image "not an image"."""
    import threading
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)   # (never opened: a read of it waits for a writer; the type check did)

    def unblock():   # (a reader left waiting there gets end of file: the test fails, not hangs)
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    timer = threading.Timer(20.0, unblock)
    timer.start()
    first = tmp_path / ("a.slim" if cmd == "decompress" else "a.png")
    if cmd == "decompress":
        assert main(["compress", images["RGB"], str(first), "--model", model_file]) == 0
    else:
        first.write_bytes(open(images["RGB"], "rb").read())
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    assert main([cmd, str(first), str(fifo), str(out), "--model", model_file]) == 1
    err = capsys.readouterr().err
    timer.cancel()
    assert f"{fifo} is not a regular file (a pipe or a device)" in err and "save it to a file" in err
    assert os.listdir(out) == []   # (not even the first input's output)


def test_dash_for_standard_input_or_output_is_refused(model_file, images, tmp_path, capsys,
                                                      monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for args in (["compress", images["RGB"], "-"], ["compress", "--", "-", "x.slim"],
                 ["decompress", "--", "-", "x.png"]):
        assert main([*args, "--model", model_file]) == 1, args
        assert "'-' (standard input / output) is not supported" in capsys.readouterr().err
    assert os.listdir(work) == []   # (no file named '-' or x.*)


def test_info_reads_a_pipe_once_and_reports_its_size(model_file, images, tmp_path):
    slim = tmp_path / "a.slim"
    assert main(["compress", images["RGB"], str(slim), "--model", model_file]) == 0
    data = slim.read_bytes()
    r = subprocess.run([sys.executable, "-m", "slimkernels", "info", "/dev/stdin"], input=data,
                       capture_output=True)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert f"file {len(data)} bytes, {8 * len(data) / 600:.4f} bpp" in out   # (30x20 pixels)
