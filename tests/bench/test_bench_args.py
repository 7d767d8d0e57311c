"""The benchmark scripts refuse bad arguments in one line (exit status 2) before they measure or
create anything, and never silently replace an output; the fixes of the benchmark audit."""
import json
import os
import runpy
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import e2e  # noqa: E402


def _refused(capsys, main, argv, *words):
    """``main(argv)`` exits with status 2 (argparse's ``error``) or returns 2, with an error
    naming ``words`` and no traceback."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


def _png(path):
    from PIL import Image
    Image.new("RGB", (32, 32)).save(path)
    return str(path)


# ------------------------------------------------------------------------ bench_coder.py
def test_coder_full_run_writes_with_compressai_rows(tmp_path):
    """The CompressAI / constriction rows carry ``indexes`` (the writer keys rows by it: the
    full run ended in a KeyError and wrote nothing); --out / --note are in the stored command."""
    import bench_coder
    if bench_coder.load_compressai_ans() is None:
        pytest.skip("compressai is not installed: no CompressAI row")
    out = tmp_path / "coder"
    rows = bench_coder.main(["--repeat", "1", "--warmup", "0", "--out", str(out),
                             "--note", "quiet machine"])
    assert all("indexes" in r for r in rows)
    assert any(r["coder"].startswith("CompressAI") for r in rows)
    res = json.loads((out / "coder.json").read_text())
    assert res["meta"]["command"].endswith(f"--out {out} --note 'quiet machine'")
    assert f"--out {out}" in (out / "coder.md").read_text()


def test_coder_refuses_existing_files_and_bad_counts(tmp_path, capsys):
    import bench_coder
    (tmp_path / "coder_slimkernels.md").write_text("tracked")
    argv = ["--repeat", "1", "--warmup", "0", "--only-slimkernels", "--out", str(tmp_path)]
    _refused(capsys, bench_coder.main, argv, "coder_slimkernels.md", "--force")
    assert (tmp_path / "coder_slimkernels.md").read_text() == "tracked"
    assert not (tmp_path / "coder_slimkernels.json").exists()
    _refused(capsys, bench_coder.main, ["--repeat", "0", "--out", str(tmp_path / "n")],
             "--repeat")
    (tmp_path / "f").write_text("")
    _refused(capsys, bench_coder.main, ["--out", str(tmp_path / "f")], "--out", "folder")
    with pytest.raises(SystemExit):
        bench_coder.main(["--help"])
    assert "bench/results/cpu" in capsys.readouterr().out   # --out says where it writes


# ------------------------------------------------------------------- e2e.py's image loading
def test_load_image_refuses_a_missing_given_path(tmp_path):
    """Only no path falls back (to Kodak, else noise); a given path that is not there is an
    error, not timings of noise."""
    with pytest.raises(FileNotFoundError, match="nope.png"):
        e2e.load_image(str(tmp_path / "nope.png"))
    assert e2e.image_source(str(tmp_path / "nope.png")) == str(tmp_path / "nope.png")
    assert e2e.load_image(_png(tmp_path / "a.png")).shape == (1, 3, 32, 32)
    assert e2e.image_error(None) is None and e2e.image_error(str(tmp_path / "a.png")) is None


def test_entropy_insitu_refuses_a_missing_image(tmp_path, capsys):
    import bench_entropy_insitu
    _refused(capsys, bench_entropy_insitu.main, ["--image", str(tmp_path / "nope.png")],
             "--image", "nope.png")


# --------------------------------------------------------------------------------- report.py
@pytest.mark.parametrize("args, words", [
    (["--repeats", "-1"], ["--repeats"]), (["--repeats", "0"], ["--repeats"]),
    (["--burst", "0"], ["--burst"]), (["--threads", "-2"], ["--threads"]),
    (["--model", "/nonexistent/m.pt"], ["--model", "no such file"]),
    (["--image", "/nonexistent/i.png"], ["--image", "no such image file"]),
    (["--widths", "50"], ["[50]"])])
def test_report_refuses_before_creating_the_folder(tmp_path, capsys, args, words):
    import report
    out = tmp_path / "out"
    _refused(capsys, report.main, ["--quick", "--no-tune-malloc", "--out", str(out)] + args,
             *words)
    assert not out.exists()


def test_report_refuses_a_damaged_model_and_an_out_file(tmp_path, capsys):
    import report
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    out = tmp_path / "out"
    base = ["--quick", "--no-tune-malloc"]
    _refused(capsys, report.main, base + ["--out", str(out), "--model", str(bad)], "--model")
    assert not out.exists()
    _refused(capsys, report.main, base + ["--out", str(bad)], "--out", "is a file")
    _refused(capsys, report.main, base + ["--out", str(bad / "sub")], "--out", "is a file")


# ----------------------------------------------------------------------------- bench_loop.py
def test_loop_refuses_bad_options(tmp_path, capsys):
    import bench_loop
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png")
    run = ["--images", str(imgs), "--threads", "1"]
    _refused(capsys, bench_loop.main, run + ["--rounds", "0"], "--rounds")
    _refused(capsys, bench_loop.main, run + ["--widths", "50"], "--widths", "[50]")
    _refused(capsys, bench_loop.main, run + ["--out", str(tmp_path / "no" / "t.md")],
             "--out", "does not exist")
    (tmp_path / "t.md").write_text("tracked")
    _refused(capsys, bench_loop.main, run + ["--out", str(tmp_path / "t.md")], "--force")
    assert (tmp_path / "t.md").read_text() == "tracked"
    assert bench_loop.main(["--dry-run", "--rounds", "1", "--threads", "1", "--out",
                            str(tmp_path / "t.md"), "--force"]) == 0
    assert "| 24 |" in (tmp_path / "t.md").read_text()


# -------------------------------------------------------------------- e2e_fp32.py, others
def test_e2e_fp32_refuses_bad_options(tmp_path, capsys):
    import e2e_fp32
    base = ["--quick", "--no-compressai", "--no-tune-malloc", "--threads", "1"]
    _refused(capsys, e2e_fp32.main, base + ["--widths", "50"], "--widths", "[50]")
    _refused(capsys, e2e_fp32.main, base + ["--repeats", "0"], "--repeats")
    _refused(capsys, e2e_fp32.main, base + ["--out", str(tmp_path / "no" / "t.md")],
             "--out", "does not exist")
    (tmp_path / "t.md").write_text("tracked")
    _refused(capsys, e2e_fp32.main, base + ["--out", str(tmp_path / "t.md")], "--force")
    assert (tmp_path / "t.md").read_text() == "tracked"


def test_width_scaling_md_checked_first(tmp_path, capsys):
    import width_scaling
    _refused(capsys, width_scaling.main, ["--md", str(tmp_path / "no" / "t.md")], "--md",
             "does not exist")
    (tmp_path / "t.md").write_text("tracked")
    _refused(capsys, width_scaling.main, ["--md", str(tmp_path / "t.md")], "--force")
    assert (tmp_path / "t.md").read_text() == "tracked"


def test_ab_checkouts_checks_widths_and_image_first(tmp_path, capsys):
    import ab_checkouts
    _refused(capsys, ab_checkouts.main, ["--base", ROOT, "--widths", "50"], "--widths", "[50]")
    _refused(capsys, ab_checkouts.main, ["--base", ROOT, "--image", str(tmp_path / "n.png")],
             "--image")


def test_train_step_and_conv_avx2_refuse_zero_counts(capsys):
    import bench_conv_avx2
    import bench_train_step
    _refused(capsys, bench_train_step.main, ["--random", "--rounds", "0"], "--rounds")
    _refused(capsys, bench_conv_avx2.main, ["--repeats", "0"], "--repeats")


def test_ab_builds_and_ab_coder_name_a_missing_extension(tmp_path, capsys):
    import ab_builds
    import ab_coder
    nope = str(tmp_path / "_coder.cpython-311-x86_64-linux-gnu.so")
    _refused(capsys, ab_coder.main, [nope, "--widths", ""], nope, "no such file")
    if ab_builds.NEW is not None:   # (else it refuses for that first, also in one line)
        _refused(capsys, ab_builds.main, [nope], nope, "no such file")
    (tmp_path / "x.so").write_text("")
    _refused(capsys, ab_coder.main, [str(tmp_path / "x.so"), "--widths", ""], "does not load")


@pytest.mark.parametrize("name, last_words", [
    ("e2e_fp32", "with the issue-8 goals."), ("bench_train_step", "in one process."),
    ("bench_conv_avx2", "per SlimCAE layer.")])
def test_help_describes_with_the_first_paragraph(capsys, name, last_words):
    mod = __import__(name)
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    assert last_words in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", ["e2e", "e2e_cuda", "plain_slimcae"])
def test_libraries_run_as_scripts_say_so(monkeypatch, capsys, name):
    monkeypatch.setattr(sys, "argv", [os.path.join(BENCH, name + ".py")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(BENCH, name + ".py"), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "library" in err and "bench/report.py" in err
    assert err.count("\n") == 1


def test_gpu_scripts_refuse_a_missing_image(tmp_path, capsys):
    """bench/e2e_cuda.py's shared options: a missing --image is refused (it timed noise)."""
    import gpu_profile
    _refused(capsys, gpu_profile.main, ["--dry-run", "--out", str(tmp_path / "o"), "--image",
                                        str(tmp_path / "n.png")], "--image", "n.png")
    assert not (tmp_path / "o").exists()


def test_a_missing_model_or_an_existing_md_is_refused_before_measuring(tmp_path, capsys):
    """(bench_loop / bench_entropy_insitu: a missing --model was torch.load's traceback after
    the set-up; ab_checkouts --md replaced an existing table after all its rounds.)"""
    import ab_checkouts
    import bench_entropy_insitu
    import bench_loop
    missing = str(tmp_path / "missing.pt")
    for main, args in ((bench_loop.main, ["--model", missing, "--rounds", "1"]),
                       (bench_entropy_insitu.main, ["--model", missing, "--repeats", "1"])):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        assert f"--model {missing}: no such file" in capsys.readouterr().err
    table = tmp_path / "ab.md"
    table.write_text("the earlier table")
    with pytest.raises(SystemExit) as e:
        ab_checkouts.main(["--base", ab_checkouts.ROOT, "--md", str(table), "--rounds", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--md {table} exists: --force to replace it" in err, err
    assert table.read_text() == "the earlier table"
