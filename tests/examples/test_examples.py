"""Run each example program of python/ in a subprocess on tiny inputs and check what it prints
and writes (the examples must keep working as the library changes)."""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests._scripts import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(ROOT, "python")


def run(script, *args, timeout=120):
    # one thread: tiny inputs gain nothing from more, and CI machines are shared
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for k in ("TRITON_INTERPRET", "SLIMKERNELS_BACKEND"):   # run as a user would
        env.pop(k, None)
    return subprocess.run([sys.executable, os.path.join(PY, script), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def load_script(name):
    return load_file(f"python/{name}", f"example_{name}")


# -- custom_codec.py ----------------------------------------------------------------------------
def test_custom_codec_tiny(tmp_path):
    r = run("custom_codec.py", "--tiny", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    rows = re.findall(r"^\s*(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+|inf)\s*$", r.stdout, re.M)
    assert [int(w) for w, *_ in rows] == [128, 64, 32], r.stdout
    sizes = [int(b) for _, b, _, _ in rows]
    assert sizes == sorted(sizes, reverse=True), "narrower widths must code fewer symbols"
    for _, b, bpp, psnr in rows:
        assert float(bpp) == pytest.approx(8 * int(b) / (72 * 80), abs=1e-3)
        assert math.isfinite(float(psnr)) and float(psnr) > 0
    from slimkernels import container
    for w in (128, 64, 32):
        f = container.read(str(tmp_path / f"image_w{w}.slim"))
        assert (f.width, f.height, f.img_width) == (w, 80, 72)
        assert f.metadata == {"codec": b"four-layer-gdn+"}
    # (it replaced an earlier run's files silently:) refused before the training, or --force
    before = (tmp_path / "image_w128.slim").read_bytes()
    r = run("custom_codec.py", "--tiny", "--out", tmp_path)
    assert r.returncode == 1 and "trained in" not in r.stdout, r.stdout + r.stderr
    assert f"{tmp_path / 'image_w128.slim'} exists: not replacing it (use --force" in r.stderr
    assert (tmp_path / "image_w128.slim").read_bytes() == before
    assert run("custom_codec.py", "--tiny", "--out", tmp_path, "--force").returncode == 0
    r = run("custom_codec.py", "--tiny", "--out", tmp_path / "image_w128.slim", "--force")
    assert r.returncode == 1 and "trained in" not in r.stdout and "Traceback" not in r.stderr
    assert "cannot be made a folder (File exists)" in r.stderr, r.stderr


def test_custom_codec_is_short():
    with open(os.path.join(PY, "custom_codec.py")) as f:
        assert len(f.read().splitlines()) <= 170


@pytest.mark.parametrize("args,msg", [
    (["--tiny", "--steps", "-1"], "--steps >= 0"), (["--tiny", "--crop", "7"], "multiple of 16"),
    (["--tiny", "--widths", "a,b"], "comma-separated integers"),
    (["--data", "/nonexistent-folder"], "does not exist")])
def test_custom_codec_refuses_bad_arguments_in_one_line(args, msg, capsys):
    try:
        rc = load_script("custom_codec.py").main(args)
    except SystemExit as e:        # argparse's usage errors: exit code 2
        rc = e.code
    err = capsys.readouterr().err
    assert rc in (1, 2) and msg in err and "Traceback" not in err, err


# -- accelerate_compressai.py -------------------------------------------------------------------
def test_accelerate_compressai_tiny():
    r = run("accelerate_compressai.py", "--tiny")
    assert r.returncode == 0, r.stdout + r.stderr
    if importlib.util.find_spec("compressai") is None:
        assert "SKIP: compressai is not installed" in r.stdout
        return
    assert "swapped 6 GDN layers" in r.stdout
    assert len(re.findall(r" ok$", r.stdout, re.M)) == 3, r.stdout
    assert "PASS" in r.stdout and "MISMATCH" not in r.stdout


@pytest.mark.parametrize("args,msg", [
    (["--size", "100"], "--size 100: must be a positive multiple"),
    (["--reps", "0"], "--reps 0: must be >= 1"),
    (["--tiny", "--checkpoint", "/nonexistent.pt"], "--checkpoint /nonexistent.pt: FileNotFound")])
def test_accelerate_compressai_refuses_bad_arguments_in_one_line(args, msg):
    r = run("accelerate_compressai.py", *args)     # a subprocess: it stubs compressai's imports
    if "--checkpoint" in args and importlib.util.find_spec("compressai") is None:
        assert r.returncode == 0 and "SKIP" in r.stdout   # it stops before loading anything
        return
    assert r.returncode in (1, 2) and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_accelerate_compressai_names_why_a_checkpoint_does_not_load(tmp_path):
    """Only the first line of torch's message was printed ("Error(s) in loading state_dict for
    FactorizedPrior:"): the keys or shapes that differ, the reason, were left out."""
    torch = pytest.importorskip("torch")
    mod = load_script("accelerate_compressai.py")
    models = mod.import_compressai_models()
    if models is None:
        pytest.skip("compressai is not installed")
    model = models.FactorizedPrior(8, 12)
    sd = model.state_dict()
    other = dict(sd)
    del other["g_a.0.weight"]
    other["extra.weight"] = torch.zeros(1)
    torch.save(other, tmp_path / "keys.pt")
    msg = mod.load_checkpoint(models.FactorizedPrior(8, 12), str(tmp_path / "keys.pt"))
    assert msg.startswith("1 missing key(s) (e.g. ['g_a.0.weight']), 1 unexpected (e.g. "
                          "['extra.weight'])"), msg
    torch.save(models.FactorizedPrior(16, 12).state_dict(), tmp_path / "n16.pt")
    msg = mod.load_checkpoint(models.FactorizedPrior(8, 12), str(tmp_path / "n16.pt"))
    assert "size mismatch for g_a.0.weight" in msg and "other --N / --M" in msg, msg
    torch.save([1, 2], tmp_path / "list.pt")
    assert mod.load_checkpoint(model, str(tmp_path / "list.pt")) == \
        "holds a list, not a state_dict"
    torch.save(sd, tmp_path / "ok.pt")
    assert mod.load_checkpoint(models.FactorizedPrior(8, 12), str(tmp_path / "ok.pt")) == ""
    # an older CompressAI's entropy-model keys (_matrix0, ...): its load_state_dict renames them
    old = {re.sub(r"entropy_bottleneck\.(matrices|biases|factors)\.(\d+)",
                  lambda g: "entropy_bottleneck._" + {"matrices": "matrix", "biases": "bias",
                                                      "factors": "factor"}[g[1]] + g[2], k): v
           for k, v in sd.items()}
    assert any("_matrix0" in k for k in old)
    torch.save(old, tmp_path / "old.pt")
    assert mod.load_checkpoint(models.FactorizedPrior(8, 12), str(tmp_path / "old.pt")) == ""
    assert mod.import_compressai_models() is models   # (a second call: the same classes)


def test_accelerate_compressai_swap_is_used():
    """The swapped model really runs SlimGDN: changing its gamma changes the output."""
    torch = pytest.importorskip("torch")
    mod = load_script("accelerate_compressai.py")
    models = mod.import_compressai_models()
    if models is None:
        pytest.skip("compressai is not installed")
    from slimkernels.nn import SlimGDN
    torch.manual_seed(0)
    ref = models.FactorizedPrior(8, 12).eval()
    mod.randomize_gdn(ref)
    x = torch.rand(1, 3, 32, 32)
    y_ref = ref.g_a(x)
    assert mod.swap_gdn(ref) == 6
    assert sum(isinstance(m, SlimGDN) for m in ref.modules()) == 6
    assert not any(type(m).__name__ == "GDN" for m in ref.modules())
    with torch.no_grad():
        torch.testing.assert_close(ref.g_a(x), y_ref, rtol=1e-5, atol=1e-6)
        ref.g_a[1].gamma.mul_(1.5)
        assert (ref.g_a(x) - y_ref).abs().max() > 1e-4


# -- rate_control.py ----------------------------------------------------------------------------
def _check_rules(res, bpp=None, psnr=None):
    def rule(rows):
        if bpp is not None:
            fits = [r["width"] for r in rows if r["bpp"] <= bpp]
            return fits[0] if fits else rows[-1]["width"]
        good = [r["width"] for r in rows if r["psnr"] >= psnr]
        return good[-1] if good else rows[0]["width"]
    for name, rows in res["per_image"].items():
        assert [r["width"] for r in rows] == res["widths"]
        assert res["chosen"][name] == rule(rows)
    assert res["folder_width"] == rule(res["folder_means"])


def test_rate_control_tiny_bpp(tmp_path):
    out = tmp_path / "rc.json"
    r = run("rate_control.py", "--tiny", "--target-bpp", 0.7,
            "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["widths"] == [24, 16, 8] and len(res["per_image"]) == 3
    _check_rules(res, bpp=0.7)
    means = {m["width"]: m["bpp"] for m in res["folder_means"]}
    assert means[24] > means[16] > means[8]
    macs = {int(k): v for k, v in res["macs_per_pixel"].items()}
    assert macs[24] > macs[16] > macs[8] > 0
    assert f"folder width for target 0.7 bpp: {res['folder_width']}" in r.stdout


def test_rate_control_unreachable_target_is_noted(tmp_path):
    out = tmp_path / "rc.json"
    r = run("rate_control.py", "--tiny", "--target-bpp", 1e-6, "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["folder_width"] == res["widths"][-1]
    assert "note: no width reaches the target 1e-06 bpp on average" in r.stdout
    r = run("rate_control.py", "--tiny", "--target-bpp", 100)
    assert r.returncode == 0 and "note:" not in r.stdout


def test_rate_control_tiny_removes_its_generated_images(tmp_path, monkeypatch, capsys):
    """(Every --tiny run without a folder left a rate-control-* folder of images in /tmp.)"""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert load_script("rate_control.py").main(["--tiny", "--target-bpp", "0.7"]) == 0
    assert "folder width for target 0.7 bpp" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_rate_control_json_it_cannot_write_is_refused_before_the_work(tmp_path, capsys,
                                                                        monkeypatch):
    """(--json into a folder nobody can write printed a PermissionError traceback after all the
    work; --json naming a folder said "-f replaces a file".)"""
    main = load_script("rate_control.py").main
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for target, msg in ((tmp_path, "is a folder: give a file path"),
                        (tmp_path / "missing" / "rc.json", "its folder does not exist")):
        with pytest.raises(SystemExit) as e:
            main(["--tiny", "--target-bpp", "0.7", "--json", str(target)])
        assert e.value.code == 2 and msg in capsys.readouterr().err
    if os.geteuid() != 0:   # (root may write anywhere: the check after the work below)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(SystemExit):
            main(["--tiny", "--target-bpp", "0.7", "--json", str(ro / "rc.json")])
        assert "is not writable" in capsys.readouterr().err
    else:   # a write refused all the same (/proc: no file can be made there): one line, exit 2
        assert main(["--tiny", "--target-bpp", "0.7", "--json", "/proc/rc.json"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --json: ") and len(err.strip().splitlines()) == 1, err


def test_rate_control_without_model_says_what_to_do(tmp_path):
    from slimkernels.pretrained import bundled_model_path
    (tmp_path / "a.png").write_bytes(b"")
    if bundled_model_path() is None:
        r = run("rate_control.py", tmp_path, "--target-psnr", 30)
        assert r.returncode == 2
        assert "no bundled pretrained model" in r.stderr and "--model" in r.stderr
    missing = str(tmp_path / "missing.pt")
    r = run("rate_control.py", tmp_path, "--target-psnr", 30, "--model", missing)
    assert r.returncode == 2
    assert missing in r.stderr and "does not exist" in r.stderr


def test_accelerate_compressai_skips_without_compressai():
    """Where compressai cannot be found, the script says so and exits 0 (a skip, not a crash)."""
    script = os.path.join(PY, "accelerate_compressai.py")
    code = ("import sys, runpy; sys.modules['compressai'] = None; "
            "sys.argv = [sys.argv[0], '--tiny']; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "SKIP: compressai is not installed" in r.stdout


# -- train.py -> evaluate.py -> demo.py on a tiny model ----------------------------------------
def test_train_evaluate_demo_chain(tmp_path):
    """The three programs of the main workflow, chained on generated images: train a tiny
    SlimCAE for 2 steps, evaluate its checkpoint, run the demo with it."""
    torch = pytest.importorskip("torch")
    from PIL import Image
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):   # MS-SSIM in the evaluation needs sides > 160
        low = torch.rand(1, 3, 8, 10, generator=g)
        im = torch.nn.functional.interpolate(low, size=(176, 192), mode="bilinear")[0]
        Image.fromarray(im.mul(255).round().byte().permute(1, 2, 0).numpy()).save(
            imgs / f"g{i}.png")
    run_dir = tmp_path / "run"
    r = run("train.py", "--data", imgs, "--out", run_dir, "--widths", 16, 8, "--lambdas", 0.01,
            0.005, "--batch", 2, "--crop", 32, "--crop-large", 32, "--steps", 2,
            "--val-every", 1000, "--val-size", 32, "--val-split", 2, "--no-bf16",
            "--no-channels-last", "--threads", 1, "--no-progress")
    assert r.returncode == 0, r.stderr
    ckpt = run_dir / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=False, map_location="cpu")["step"] == 2

    ev = tmp_path / "eval"
    r = run("evaluate.py", imgs, "--model", ckpt, "--no-classical", "--out", ev, "--threads", 1)
    assert r.returncode == 0, r.stderr
    res = json.loads((ev / "slimcae.json").read_text())
    assert sorted(res["results"]["width"]) == [8, 16]
    assert all(b > 0 for b in res["results"]["bpp"])

    demo = tmp_path / "demo"
    r = run("demo.py", "--model", ckpt, "--image", imgs / "g0.png", "--out", demo)
    assert r.returncode == 0, r.stderr
    rows = re.findall(r"^\s*(16|8)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", r.stdout, re.M)
    assert [int(w) for w, *_ in rows] == [16, 8], r.stdout
    from slimkernels import container
    for w, nbytes, _, _ in rows:
        f = container.read(str(demo / f"g0_w{w}.slim"))       # (named after the image)
        assert (f.width, f.height, f.img_width) == (int(w), 176, 192)
        assert len(container.pack(f)) == int(nbytes)
    # a second run into the same folder replaces nothing without --force, checked before the work
    before = {p.name: p.read_bytes() for p in demo.iterdir()}
    r = run("demo.py", "--model", ckpt, "--image", imgs / "g0.png", "--out", demo)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{demo / 'g0_w16.slim'} exists (and 3 more of this demo's files): not replacing " \
           f"them (use --force, or another --out)" in r.stderr, r.stderr
    assert "width" not in r.stdout and {p.name: p.read_bytes() for p in demo.iterdir()} == before
    r = run("demo.py", "--model", ckpt, "--image", imgs / "g0.png", "--out", demo, "--force")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in demo.iterdir()) == sorted(before)


def test_demo_names_a_bad_path_in_one_line(tmp_path):
    """(A missing image or model file printed a traceback.)"""
    for args, msg in ((("--image", tmp_path / "nope.png"), "nope.png does not exist"),
                      (("--model", tmp_path / "nope.pt"), "nope.pt does not exist")):
        r = run("demo.py", *args, "--out", tmp_path / "o")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("demo.py: error: ") and msg in r.stderr, r.stderr


def test_rate_control_checks_its_target_and_json_before_the_work(tmp_path):
    """(--target-psnr nan picked the widest width with exit 0; --json overwrote a file, or
    failed with a traceback after the work.)"""
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    for args, msg in ((("--target-psnr", "nan"), "--target-psnr must be a finite number > 0"),
                      (("--target-psnr", "-5"), "--target-psnr must be a finite number > 0"),
                      (("--target-bpp", "inf"), "--target-bpp must be a finite number > 0"),
                      (("--target-bpp", "1", "--json", keep), "exists: not overwriting it"),
                      (("--target-bpp", "1", "--json", tmp_path / "no" / "x.json"),
                       "its folder does not exist")):
        r = run("rate_control.py", "--tiny", *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert keep.read_text() == "precious"


def test_rate_control_counts_every_gdn_variant_once():
    """A SwitchGDN runs its width's GDN itself (its SlimGDN children are not called): the count
    left out all GDN mixing of the bundled model (gdn="switch"), which every variant has alike."""
    import torch

    from slimkernels.models import SlimCAE
    rc = load_script("rate_control.py")
    torch.manual_seed(0)
    counts = {g: rc.macs_per_pixel(SlimCAE(widths=(16, 8), gdn=g).eval(), 16)
              for g in ("switch", "slim", "slim+")}
    assert counts["switch"] == counts["slim"] == counts["slim+"] > 0


def test_rate_control_takes_eval_s_limit_and_force_for_its_json(tmp_path):
    """(it named the image count --max-images where eval says --limit, and an existing --json
    could not be replaced at all: "not overwriting it", no -f as the other tools have.)"""
    out = tmp_path / "rc.json"
    out.write_text("keep")
    r = run("rate_control.py", "--tiny", "--target-bpp", 0.7, "--limit", 2, "--json", out)
    assert r.returncode == 2 and "not overwriting it (-f replaces a file)" in r.stderr
    assert out.read_text() == "keep"
    r = run("rate_control.py", "--tiny", "--target-bpp", 0.7, "--limit", 2, "--json", out, "-f")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(out.read_text())["per_image"]) == 2
    r = run("rate_control.py", "--tiny", "--target-bpp", 0.7, "--max-images", 1)
    assert r.returncode == 0 and "1 images in" in r.stdout
    r = run("rate_control.py", "--tiny", "--target-bpp", 0.7, "--limit", -1)
    assert r.returncode == 2 and "--limit must be >= 1 (or 0: every image), got -1" in r.stderr


@pytest.mark.parametrize("script", ["evaluate.py", "rate_control.py", "custom_codec.py",
                                    "accelerate_compressai.py", "demo.py", "train.py"])
def test_examples_use_the_slimkernels_that_is_installed(tmp_path, script):
    """(Four examples put the checkout's root first on sys.path: a wheel installed beside an
    unbuilt checkout was shadowed, and they failed with "_coder ... is not built".) A package
    found first on the path, here a stub, is the one they import."""
    stub = tmp_path / "stub" / "slimkernels"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise SystemExit('the installed slimkernels was used')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "stub"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(PY, script), "--help"], cwd=str(tmp_path),
                       env=env, capture_output=True, text=True, timeout=120)
    assert "the installed slimkernels was used" in r.stderr, (r.stdout[-500:], r.stderr[-500:])


@pytest.mark.parametrize("script", sorted(f for f in os.listdir(PY) if f.endswith(".py")))
def test_examples_run_from_a_checkout_that_is_not_installed(tmp_path, script):
    """(demo.py, train.py and export_model.py did not look in the checkout: built in place but
    not installed, they failed with "No module named 'slimkernels'" where the other examples
    ran.) Python without its site hooks (-S; the site-packages on PYTHONPATH, whose .pth files,
    the editable install's among them, are then not read), from another folder: each example's
    --help still imports this checkout's slimkernels."""
    import site
    import slimkernels
    if os.path.dirname(os.path.dirname(os.path.abspath(slimkernels.__file__))) != ROOT:
        pytest.skip("slimkernels is imported from an installed copy, not this checkout")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(site.getsitepackages()),
               OMP_NUM_THREADS="1")
    probe = subprocess.run([sys.executable, "-S", "-c", "import slimkernels"], cwd=str(tmp_path),
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode != 0 and "No module named 'slimkernels'" in probe.stderr, probe.stderr
    r = subprocess.run([sys.executable, "-S", os.path.join(PY, script), "--help"],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout, (r.stdout[-500:], r.stderr[-500:])


def test_demo_and_custom_codec_name_an_out_they_cannot_make(tmp_path):
    """(A file on the --out path was a NotADirectoryError traceback; custom_codec.py's came after
    the training, and --widths 100000 tried to allocate 40 GB.)"""
    (tmp_path / "afile").write_text("")
    bad = str(tmp_path / "afile" / "sub")
    r = run("demo.py", "--out", bad)
    assert r.returncode == 1 and "error: --out" in r.stderr and "cannot be made" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("custom_codec.py", "--tiny", "--out", bad)
    assert r.returncode == 1 and "cannot be made" in r.stderr and "trained in" not in r.stdout
    r = run("custom_codec.py", "--tiny", "--widths", "100000,8")
    assert r.returncode == 2 and "--widths: comma-separated integers <= 512" in r.stderr


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
def test_rate_control_refuses_a_json_path_it_cannot_take_before_the_work(tmp_path, capsys):
    """(--json on a link leading nowhere, or -f with /dev/null, ran every image and then failed
    writing no JSON; --json "" wrote nothing silently; --tiny --model X ignored the model.)"""
    main = load_script("rate_control.py").main
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "nowhere" / "x.json")
    cases = ((["--json", str(link)], "exists: not overwriting it"),
             (["--json", os.devnull, "-f"], "is not a regular file"),
             (["--json", ""], "--json: give a file path"),
             (["--model", "m.pt"], "--tiny uses a random-weight model"))
    for extra, msg in cases:
        with pytest.raises(SystemExit) as e:
            main(["--tiny", "--target-bpp", "0.7", *extra])
        captured = capsys.readouterr()
        assert e.value.code == 2 and msg in captured.err, captured.err
        assert "folder width" not in captured.out   # (refused before the work)


def test_rate_control_reads_every_image_before_the_work(tmp_path):
    """(A text file named zz.png after the images stopped the run when its turn came: the
    others' work lost.)"""
    from PIL import Image
    for i in range(2):
        Image.new("RGB", (24, 16), (40 * i, 90, 200)).save(tmp_path / f"a{i}.png")
    (tmp_path / "zz.png").write_text("not an image")
    r = run("rate_control.py", tmp_path, "--tiny", "--target-bpp", 1)
    assert r.returncode == 2 and "zz.png" in r.stderr and "Traceback" not in r.stderr
    assert "a0.png" not in r.stdout   # (no image's table printed first)


def test_rate_control_names_a_folder_it_cannot_list(tmp_path, monkeypatch, capsys):
    """(A folder without read permission was os.listdir's PermissionError traceback; as root,
    which lists any folder, the refusal is made by hand.)"""
    folder = tmp_path / "locked"
    folder.mkdir()
    listdir = os.listdir

    def refuse(path="."):
        if os.path.abspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)
    monkeypatch.setattr(os, "listdir", refuse)
    assert load_script("rate_control.py").main([str(folder), "--tiny", "--target-bpp", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read (Permission denied)" in err and str(folder) in err


def test_demo_and_custom_codec_refuse_an_output_name_force_cannot_replace(tmp_path):
    """(--force with a FIFO or folder at an output name wrote the first widths' files, then
    died with a FileExistsError traceback: a half-replaced set of files.)"""
    out = tmp_path / "demo"
    out.mkdir()
    os.mkfifo(out / "sample_w96.png")
    r = run("demo.py", "--out", out, "--force")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "sample_w96.png is not a regular file" in r.stderr and "width" not in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["sample_w96.png"]
    cc = tmp_path / "cc"
    (cc / "image_w64.slim").mkdir(parents=True)
    r = run("custom_codec.py", "--tiny", "--out", cc, "--force")
    assert r.returncode == 1 and "trained in" not in r.stdout and "Traceback" not in r.stderr
    assert "image_w64.slim exists: not replacing it" in r.stderr


def test_custom_codec_makes_no_folder_before_its_arguments_pass(tmp_path):
    """(The --out folder, or a new temporary one, was made before --data / --image were
    checked: every error left an empty folder behind.)"""
    env_tmp = tmp_path / "tmp"
    env_tmp.mkdir()
    for args in (["--data", str(tmp_path / "missing")],
                 ["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "new")]):
        r = subprocess.run([sys.executable, os.path.join(PY, "custom_codec.py"), *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1",
                                    TMPDIR=str(env_tmp)))
        assert r.returncode == 1 and "does not exist" in r.stderr, r.stderr
    assert list(env_tmp.iterdir()) == [] and not (tmp_path / "new").exists()


@pytest.mark.parametrize("args,msg", [
    (["--device", "CPU"], "--device CPU: use cpu, cuda or cuda:N"),
    (["--device", "meta"], "--device meta: use cpu, cuda or cuda:N"),
    (["--N", "200000"], "--N 200000: must be at most 1024"),
    (["--size", "640000"], "at most 4096")])
def test_accelerate_compressai_refuses_devices_and_sizes_in_one_line(args, msg):
    """(A device torch does not know, or meta, and huge --N / --size were raw tracebacks:
    torch's "Expected one of cpu, cuda, ...", load_state_dict's, the allocator's.)"""
    r = run("accelerate_compressai.py", *args)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_accelerate_compressai_says_a_text_file_is_not_a_checkpoint(tmp_path):
    """(A text file as --checkpoint printed "KeyError: 105".)"""
    text = tmp_path / "notes.pt"
    text.write_text("hi\n")
    mod = load_script("accelerate_compressai.py")
    assert "not a file written by torch.save" in mod.load_checkpoint(None, str(text))


def test_export_model_names_a_fifo_checkpoint_as_such(tmp_path):
    """(A FIFO given as the checkpoint was said not to exist.)"""
    fifo = tmp_path / "checkpoint.pt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        load_script("export_model.py").load_checkpoint(str(fifo))
