"""The source distribution builds on its own: every C++ source and header, the licence, the
bundled model and sample image are in it (setuptools leaves out the headers, which are not
extension sources, unless MANIFEST.in names them)."""
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_files():
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")):
        pytest.skip("needs a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_sdist_holds_what_a_build_needs(tmp_path):
    src = tmp_path / "src"
    tracked = _tracked_files()
    for rel in tracked:   # a clean copy: no egg-info whose SOURCES.txt would hide a gap
        if os.path.exists(os.path.join(ROOT, rel)):
            os.makedirs(src / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), src / rel)
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                       cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (tarball,) = (tmp_path / "dist").iterdir()
    with tarfile.open(tarball) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    needed = [p for p in tracked if p.startswith("csrc/") and p.endswith((".cpp", ".hpp"))]
    needed += ["LICENSE", "README.md", "pyproject.toml", "setup.py",
               "slimkernels/pretrained/slimcae.pt", "slimkernels/assets/sample.png",
               "slimkernels/assets/README.md",
               # what the sdist's Makefile runs (make demo / make test)
               "python/demo.py", "tests/conftest.py", "tests/_env.py", "tests/nn/test_gdn.py",
               # what tests/test_docs.py reads
               "docs/api.md", "docs/format.md", "docs/build_api.py"]
    assert any(p.endswith(".hpp") for p in needed)
    missing = sorted(p for p in needed if p not in names)
    assert not missing, f"not in the sdist: {missing}"



def test_installed_package_holds_every_package_file(tmp_path):
    """What a wheel / pip install copies (build_py: the modules and package_data) holds every
    tracked file of the package that is not Python source (the sample image's licence note
    was only in the sdist)."""
    tracked = [p for p in _tracked_files() if p.startswith("slimkernels/")
               and not p.endswith((".py", ".pyi"))]
    assert "slimkernels/assets/README.md" in tracked
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path / "b")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    missing = sorted(p for p in tracked if not (tmp_path / "b" / p).exists())
    assert not missing, f"not installed: {missing}"


def test_setup_names_a_missing_cxx(tmp_path):
    """(CXX=/nonexistent passed the check when g++ was on the PATH, then failed with a raw
    "No such file or directory" from the build.)"""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"))
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace",
                        "--build-temp", str(tmp_path / "t")], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "which is not found" in (r.stderr + r.stdout)
