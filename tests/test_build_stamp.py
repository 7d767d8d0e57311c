"""slimkernels._build_stamp: each compiled extension carries the stamp of the C++ it was built
from, and a build older than the checkout's sources is named (with the fix) instead of failing
later with a TypeError or running old kernels."""
import importlib
import os
import re
import shutil
import subprocess
import sys
import types
import warnings

import pytest

import slimkernels
from slimkernels import _build_stamp, coding

PKG = os.path.dirname(os.path.abspath(slimkernels.__file__))
ROOT = os.path.dirname(PKG)
IN_CHECKOUT = os.path.isfile(os.path.join(ROOT, "setup.py")) and \
    os.path.isdir(os.path.join(ROOT, "csrc"))
CHECKOUT = pytest.mark.skipif(not IN_CHECKOUT, reason="not a source checkout")
NAMES = ("_coder", "_state_key", "_cpu_kernels")


def _fake(stamp=None, folder=PKG, name="_cpu_kernels"):
    m = types.SimpleNamespace(__file__=os.path.join(folder, f"{name}.cpython-311-x86_64.so"))
    if stamp is not None:
        m.SOURCE_STAMP = stamp
    return m


@CHECKOUT
@pytest.mark.parametrize("name", NAMES)
def test_the_builds_here_match_the_checkouts_sources(name):
    try:
        mod = importlib.import_module(f"slimkernels.{name}")
    except ImportError:
        if name == "_coder":
            raise
        pytest.skip(f"slimkernels.{name} is not built")
    assert re.fullmatch(r"[0-9a-f]{16}", mod.SOURCE_STAMP), mod.SOURCE_STAMP
    assert mod.SOURCE_STAMP == _build_stamp.extension_stamp(ROOT, name), \
        f"slimkernels.{name} is a stale build: python setup.py build_ext --inplace"
    assert _build_stamp.stale(mod, name) is None


@CHECKOUT
def test_every_source_is_built_and_every_local_include_is_a_dependency():
    files = _build_stamp.extension_files(ROOT)
    built = {f for sources, _ in files.values() for f in sources}
    on_disk = {os.path.relpath(os.path.join(d, f), ROOT)
               for d, _, fs in os.walk(os.path.join(ROOT, "csrc")) for f in fs
               if f.endswith(".cpp") and os.path.basename(d) != "fuzz"}
    assert on_disk == built   # (csrc/fuzz: stand-alone drivers, not extensions)
    for name, (sources, headers) in files.items():
        seen, todo = set(), list(sources)
        while todo:   # the local headers each source includes, transitively
            f = todo.pop()
            with open(os.path.join(ROOT, f)) as fh:
                for inc in re.findall(r'^\s*#include\s+"([^"]+)"', fh.read(), re.M):
                    h = os.path.normpath(os.path.join(os.path.dirname(f), inc))
                    if h not in seen:
                        seen.add(h)
                        todo.append(h)
        assert seen <= set(headers), (name, sorted(seen - set(headers)))


def _tree(tmp_path):
    """A copy of the checkout's csrc/ beside an empty setup.py and package folder."""
    root = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "csrc"), root / "csrc")
    (root / "setup.py").write_text("")
    (root / "slimkernels").mkdir()
    return str(root)


@CHECKOUT
def test_the_stamp_follows_every_byte_and_name_of_the_sources(tmp_path):
    root = _tree(tmp_path)
    before = {n: _build_stamp.extension_stamp(root, n) for n in NAMES}
    assert before == {n: _build_stamp.extension_stamp(ROOT, n) for n in NAMES}
    assert len(set(before.values())) == 3
    # one byte of a header shared by two extensions: both change, the third does not
    p = os.path.join(root, "csrc", "range_coder.hpp")
    data = open(p, "rb").read()
    open(p, "wb").write(data[:-1] + bytes([data[-1] ^ 1]))
    after = {n: _build_stamp.extension_stamp(root, n) for n in NAMES}
    assert after["_coder"] != before["_coder"]
    assert after["_cpu_kernels"] != before["_cpu_kernels"]
    assert after["_state_key"] == before["_state_key"]
    open(p, "wb").write(data)
    assert {n: _build_stamp.extension_stamp(root, n) for n in NAMES} == before
    # a new source file is compiled into the extension: its stamp changes
    open(os.path.join(root, "csrc", "cpu", "new_kernel.cpp"), "w").write("")
    assert _build_stamp.extension_stamp(root, "_cpu_kernels") != before["_cpu_kernels"]


@CHECKOUT
def test_a_build_of_other_sources_is_named_with_the_fix(tmp_path):
    root = _tree(tmp_path)
    folder = os.path.join(root, "slimkernels")
    want = _build_stamp.extension_stamp(root, "_cpu_kernels")
    assert _build_stamp.stale(_fake(want, folder), "_cpu_kernels") is None
    msg = _build_stamp.stale(_fake("0123456789abcdef", folder), "_cpu_kernels")
    assert msg is not None
    for part in ("slimkernels._cpu_kernels", "0123456789abcdef", want,
                 "python setup.py build_ext --inplace", root, "SLIMKERNELS_BUILD_CHECK=0"):
        assert part in msg, (part, msg)
    msg = _build_stamp.stale(_fake(None, folder), "_cpu_kernels")   # built before the stamps
    assert msg is not None and "before builds were stamped" in msg


def test_installed_packages_and_the_switch_are_not_checked(tmp_path, monkeypatch):
    # an extension outside a checkout (site-packages: no setup.py and csrc/ beside the package)
    folder = tmp_path / "site-packages" / "slimkernels"
    folder.mkdir(parents=True)
    assert _build_stamp.stale(_fake("0" * 16, str(folder)), "_cpu_kernels") is None
    if IN_CHECKOUT:
        assert _build_stamp.stale(_fake("0" * 16), "_cpu_kernels") is not None
        for off in ("0", "off", " False "):
            monkeypatch.setenv("SLIMKERNELS_BUILD_CHECK", off)
            assert _build_stamp.stale(_fake("0" * 16), "_cpu_kernels") is None
        monkeypatch.setenv("SLIMKERNELS_BUILD_CHECK", "1")
        assert _build_stamp.stale(_fake("0" * 16), "_cpu_kernels") is not None


@CHECKOUT
def test_a_stale_optional_extension_is_not_used_and_says_why():
    ok = _fake(_build_stamp.extension_stamp(ROOT, "_cpu_kernels"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build_stamp.optional(ok, "_cpu_kernels", "slower") is ok
    with pytest.warns(RuntimeWarning, match=r"stamped 0{16}.*Until then slower\."):
        assert _build_stamp.optional(_fake("0" * 16), "_cpu_kernels", "slower") is None


@CHECKOUT
def test_a_stale_coder_is_refused_with_the_fix(monkeypatch, tmp_path, capsys):
    import numpy as np
    import torch
    from PIL import Image
    from slimkernels import cli
    real = _build_stamp.stale
    monkeypatch.setattr(_build_stamp, "stale",
                        lambda m, n: "STALE " + n if n == "_coder" else real(m, n))
    monkeypatch.setattr(coding, "_CODER", None)
    with pytest.raises(ImportError, match="STALE _coder"):
        coding.pmf_to_quantized_cdf([0.5, 0.5], 16)
    assert coding._CODER is None   # (refused each time, not kept)
    assert "compiled range coder: NO (STALE _coder)" in cli.env_report()
    # the command line says so in one line (no traceback), exit code 1, no output file
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((16, 24, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "x.slim"
    with torch.no_grad():
        rc = cli.main(["compress", str(img), str(out), "--width", "48"])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_ERROR and "STALE _coder" in err and "Traceback" not in err, err
    assert not out.exists()
    monkeypatch.undo()
    assert coding._ext() is importlib.import_module("slimkernels._coder")


@CHECKOUT
def test_compress_runs_on_the_pytorch_paths_when_the_kernels_are_stale(tmp_path):
    # a fresh process whose check finds the CPU kernels and the state-key walk stale: both
    # warned about, neither used, and compress / decompress still give the image
    code = r"""
import warnings, torch
from slimkernels import _build_stamp
real = _build_stamp.stale
_build_stamp.stale = lambda m, n: None if n == "_coder" else "STALE " + n
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    from slimkernels import _cpu, _state
    from slimkernels.models import SlimCAE
    assert _cpu._module() is None and _state._STATE_KEY is None
    torch.manual_seed(0)
    m = SlimCAE(widths=(8, 4)).eval()
    m.update()
    x = torch.rand(1, 3, 32, 48)
    y = m.decompress(m.compress(x, 4, precision="fp32"), precision="fp32")
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
print(sorted({str(x.message).split(".")[0] for x in w if issubclass(x.category, RuntimeWarning)}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "STALE _cpu_kernels" in r.stdout and "STALE _state_key" in r.stdout, r.stdout
