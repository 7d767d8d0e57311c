"""bench/gpu_session.sh, the one-command GPU session, runs end to end in its CPU dry-run mode."""
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


SCRIPT = os.path.join(ROOT, "bench", "gpu_session.sh")


def _results_files():
    """{path: mtime} of every file under bench/results/ (the tracked tables)."""
    found = {}
    for d, _, files in os.walk(os.path.join(ROOT, "bench", "results")):
        for f in files:
            found[os.path.join(d, f)] = os.stat(os.path.join(d, f)).st_mtime_ns
    return found


def test_gpu_session_script_dry_run(tmp_path):
    out = tmp_path / "out"
    # (no kodim01 carried: the sample tiled to Kodak's size is the image)
    env = dict(os.environ, PY=sys.executable, GPU_SESSION_DRY="1", OUT=str(out),
               GPU_CARRY_IMAGE=str(tmp_path / "not_carried.png"))
    before = _results_files()
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_session.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    # every result file of a dry run goes under $OUT: none under bench/results/ is touched
    assert _results_files() == before
    lines = (out / "summary.txt").read_text().splitlines()
    names = ("env", "build", "tests", "graphs", "gdn", "conv", "report", "profile")
    steps = {ln.split()[0]: ln for ln in lines if ln.split()[:1] and ln.split()[0] in names}
    assert set(steps) == set(names), lines
    assert "image: slimkernels/assets/sample.png tiled to 768x512 (kodim01 NOT carried" in \
        "\n".join(lines)
    # three files come back, the logs inside logs.tgz
    assert sorted(p.name for p in out.iterdir()) == ["logs.tgz", "results.tgz", "summary.txt"]
    with tarfile.open(out / "logs.tgz") as t:
        logs = {os.path.basename(m.name): t.extractfile(m).read().decode() for m in t.getmembers()
                if m.isfile()}
    assert set(logs) == {f"{n}.log" for n in names}
    # env may fail without nvidia-smi / triton (its log tail then follows in the summary); every
    # other step must pass
    for name in names[1:]:
        assert " ok " in steps[name], (steps[name], logs[f"{name}.log"][-2000:])
    with tarfile.open(out / "results.tgz") as t:
        names = t.getnames()
    assert any(n.endswith(".md") for n in names) and any(n.endswith(".json") for n in names)
    # relative members under the dry_* folders (they held $OUT's absolute path, slash stripped)
    assert all(n.startswith("dry_") for n in names), names
    assert f"results.tgz: {len(names)} files" in lines[-1]


def test_gpu_session_skips_the_steps_named(tmp_path):
    """GPU_SESSION_SKIP: a later call leaves out the steps it already has (their log says so in
    the summary), the others run."""
    out = tmp_path / "out"
    env = dict(os.environ, PY=sys.executable, GPU_SESSION_DRY="1", OUT=str(out),
               GPU_SESSION_SKIP="report tests gdn conv graphs")
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_session.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    status = {ln.split()[0]: ln for ln in lines if ln.split()[:1] and
              ln.split()[0] in ("report", "tests", "gdn", "conv", "profile", "build")}
    for name in ("report", "tests", "gdn", "conv"):
        assert "skipped (GPU_SESSION_SKIP)" in status[name], status[name]
    assert " ok " in status["profile"] and " ok " in status["build"]


def test_gpu_session_budget_skips_what_does_not_fit(tmp_path):
    """GPU_SESSION_BUDGET: steps that would start with under 25 s left are skipped, so the
    archives are packed inside one device command whatever the steps take."""
    out = tmp_path / "out"
    env = dict(os.environ, PY=sys.executable, GPU_SESSION_DRY="1", OUT=str(out),
               GPU_SESSION_BUDGET="20", GPU_SESSION_SKIP="report")
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_session.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    left_out = [ln.split()[0] for ln in lines if "skipped (no time left)" in ln]
    assert {"tests", "graphs", "gdn", "conv", "profile"} <= set(left_out), lines
    assert sorted(p.name for p in out.iterdir()) == ["logs.tgz", "results.tgz", "summary.txt"]


def test_gpu_session_steps_order_and_options(tmp_path):
    """The GPU branch (not the dry run) with a stand-in python that logs its arguments:
    GPU_SESSION_STEPS picks the steps and their order, GPU_TESTS / GPU_REPORT_WIDTHS /
    GPU_REPORT_COMPILE_WIDTHS ("" = none) / GPU_CONV_LAYERS reach the commands."""
    out = tmp_path / "out"
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "py"
    stub.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {calls}\n")
    stub.chmod(0o755)
    env = dict(os.environ, PY=str(stub), OUT=str(out),
               GPU_SESSION_STEPS="tests conv report", GPU_TESTS="tests/kernels/test_conv_triton.py",
               GPU_REPORT_WIDTHS="192,48", GPU_REPORT_COMPILE_WIDTHS="", GPU_CONV_LAYERS="dec3",
               GPU_CARRY_IMAGE=str(tmp_path / "not_carried.png"))
    env.pop("GPU_SESSION_DRY", None)
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_session.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [ln.split()[0] for ln in (out / "summary.txt").read_text().splitlines()
             if ln.split()[:1] and ln.split()[0] in ("report", "tests", "gdn", "conv", "profile",
                                                     "graphs")]
    assert steps == ["tests", "conv", "report"]
    runs = [ln for ln in calls.read_text().splitlines() if "bench/" in ln or "pytest" in ln]
    # no kodim01 carried: the sample tiled to Kodak's size first, and the benchmarks time it
    tiled = runs.pop(0).split()
    assert tiled[0] == "bench/kodak_sized_sample.py" and \
        tiled[1].endswith("/sample_tiled_768x512.png")
    assert "pytest" in runs[0] and runs[0].endswith("tests/kernels/test_conv_triton.py")
    assert "bench_conv.py" in runs[1] and "--layers dec3" in runs[1]
    # the per-layer table in the GPU's own folder (the stand-in python names no GPU)
    assert runs[1].endswith("--out bench/results/cuda-unknown")
    assert "report.py" in runs[2] and "--widths 192,48" in runs[2]
    assert "--force" in runs[2]     # the GPU's table in bench/results/cuda-<gpu>/ is replaced
    assert "--compile-widths  --image" in runs[2]      # an empty list: no torch.compile rows
    assert f"--image {tiled[1]} " in runs[2]


def test_kodak_sized_sample_tiles_the_sample_to_768x512(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import kodak_sized_sample as K
    from PIL import Image
    import numpy as np
    assert K.main([str(tmp_path / "t.png")]) == 0
    t = np.asarray(Image.open(tmp_path / "t.png"))
    s = np.asarray(Image.open(K.SAMPLE).convert("RGB"))
    h, w = s.shape[:2]
    assert t.shape == (512, 768, 3) and (h, w) == (192, 256)
    assert (t[:h, :w] == s).all() and (t[h:2 * h, w:2 * w] == s).all()
    assert (t[2 * h:, :w] == s[:512 - 2 * h]).all()   # the last row of tiles cut at the bottom
    assert K.main([]) == 2


def _no_cuda_env(tmp_path, **kw):
    env = dict(os.environ, OUT=str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="", **kw)
    env.pop("GPU_SESSION_DRY", None)
    return env


def test_gpu_session_refuses_a_machine_without_cuda(tmp_path):
    """Not a dry run, and torch sees no GPU: one line naming PY and the dry run's command, exit
    status 2, nothing written (the steps used to fail one by one, exit 0, and the gdn step
    rewrote the tracked CPU table bench/results/cpu/gdn.*)."""
    before = _results_files()
    r = subprocess.run(["bash", SCRIPT], env=_no_cuda_env(tmp_path, PY=sys.executable),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and not r.stdout, r.stderr
    assert f"no CUDA GPU visible to {sys.executable}" in r.stderr
    assert "GPU_SESSION_DRY=1" in r.stderr
    assert not (tmp_path / "out").exists()
    assert _results_files() == before


def test_gpu_session_refuses_a_python_without_torch(tmp_path):
    """PY that cannot import torch (here: this python without site-packages): named, with the
    reason, exit status 2, nothing written; the same in a dry run."""
    py = tmp_path / "py"
    py.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -I -S \"$@\"\n")
    py.chmod(0o755)
    for dry in ({}, {"GPU_SESSION_DRY": "1"}):
        r = subprocess.run(["bash", SCRIPT], env=_no_cuda_env(tmp_path, PY=str(py), **dry),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"PY={py} cannot import torch (ModuleNotFoundError" in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()


def test_gpu_session_default_python_falls_back_to_the_venv(tmp_path):
    """PY unset and python3 without torch: ./.venv/bin/python when the checkout has one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text("#!/usr/bin/env bash\nexit 1\n")   # no torch here
    (bin_dir / "python3").chmod(0o755)
    env = _no_cuda_env(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("PY", None)
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    if os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")):
        assert "no CUDA GPU visible to .venv/bin/python" in r.stderr, r.stderr
    else:
        assert "PY=python3" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_session_exit_status_is_1_when_a_step_failed(tmp_path):
    """A failed step: exit status 1, after the summary and both archives are written; a skipped
    step is no failure."""
    out = tmp_path / "out"
    stub = tmp_path / "py"     # a python that passes the CUDA check and fails the tests
    stub.write_text("#!/usr/bin/env bash\ncase \"$*\" in *pytest*) echo 'E 1 failed'; "
                    "exit 1 ;; esac\nexit 0\n")
    stub.chmod(0o755)
    env = dict(os.environ, PY=str(stub), OUT=str(out), GPU_SESSION_STEPS="tests conv")
    env.pop("GPU_SESSION_DRY", None)
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    status = {ln.split()[0]: ln for ln in lines if ln.split()[:1]}
    assert "FAILED (exit 1)" in status["tests"] and " ok " in status["conv"]
    assert "failed: tests (exit status 1)" in lines
    assert lines[-1].startswith("results.tgz:")
    assert sorted(p.name for p in out.iterdir()) == ["logs.tgz", "results.tgz", "summary.txt"]
    env["GPU_SESSION_SKIP"] = "tests"
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    env["GPU_SESSION_STEPS"] = "conv no_such_step"       # a step name it does not know
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "unknown step in GPU_SESSION_STEPS: no_such_step" in r.stdout


def test_gpu_session_report_running_out_of_time_is_not_a_failure(tmp_path):
    """The report writes its table row by row and is expected to be cut at its last rows on the
    GPU machine: a time-out there shows in the summary but keeps exit status 0 (another step's
    time-out is a failure)."""
    out = tmp_path / "out"
    stub = tmp_path / "py"     # passes the CUDA check; the report and the conv step hang
    stub.write_text("#!/usr/bin/env bash\ncase \"$*\" in *report.py*|*bench_conv*) sleep 30 ;; "
                    "esac\nexit 0\n")
    stub.chmod(0o755)
    env = dict(os.environ, PY=str(stub), OUT=str(out), GPU_SESSION_STEPS="report",
               GPU_T_REPORT="1")
    env.pop("GPU_SESSION_DRY", None)
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TIMED OUT after 1 s" in (out / "summary.txt").read_text()
    env.update(GPU_SESSION_STEPS="conv", GPU_T_CONV="1")
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "failed: conv (exit status 1)" in r.stdout, r.stdout


def _stub_run(tmp_path, **env_extra):
    """The GPU branch with a stand-in python that logs its arguments: (summary lines, calls)."""
    out = tmp_path / "out"
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "py"
    stub.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {calls}\n")
    stub.chmod(0o755)
    env = dict(os.environ, PY=str(stub), OUT=str(out), **env_extra)
    env.pop("GPU_SESSION_DRY", None)
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_session.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    return r, (out / "summary.txt").read_text().splitlines(), calls.read_text().splitlines()


def test_gpu_session_builds_the_extensions_in_parallel(tmp_path):
    """setuptools copies the built extensions into the package only after the last one: the
    serial build cut by its 60 s limit (45-80 s expected now on the GPU machine) left none, and
    every step that codes an image failed."""
    r, lines, calls = _stub_run(tmp_path, GPU_SESSION_STEPS="profile")
    assert r.returncode == 0, r.stdout + r.stderr
    build = [c for c in calls if "setup.py" in c]
    assert build == ["setup.py -q build_ext --inplace -j 3"], calls


def test_gpu_session_skips_a_step_left_less_than_half_its_limit(tmp_path):
    """A step started with far less than its limit could only time out and count as failed
    (the gdn step with 15 s left); the report, which keeps the rows it wrote, still runs."""
    r, lines, calls = _stub_run(tmp_path, GPU_SESSION_STEPS="tests report",
                                GPU_SESSION_BUDGET="60")
    status = {ln.split()[0]: ln for ln in lines if ln.split()[:1]}
    assert "skipped (no time left)" in status["tests"], lines
    assert " ok " in status["report"], lines
    assert not any("pytest" in c for c in calls)


def _pytest_stub(tmp_path, line, no_gpu):
    """A stand-in python: the CUDA check answers 3 (torch, no GPU) or 0, pytest prints
    ``line`` as its summary, everything else passes."""
    stub = tmp_path / "py"
    stub.write_text("#!/usr/bin/env bash\ncase \"$*\" in *pytest*) echo '" + line + "' ;; "
                    "*'else 3)'*) exit " + ("3" if no_gpu else "0") + " ;; esac\nexit 0\n")
    stub.chmod(0o755)
    return str(stub)


def _tests_status(tmp_path, line, dry):
    out = tmp_path / "out"
    env = dict(os.environ, PY=_pytest_stub(tmp_path, line, no_gpu=dry), OUT=str(out),
               GPU_SESSION_SKIP="report graphs gdn conv profile", GPU_SESSION_STEPS="tests")
    env.pop("GPU_SESSION_DRY", None)
    if dry:
        env["GPU_SESSION_DRY"] = "1"
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    lines = (out / "summary.txt").read_text().splitlines()
    return r, next(ln for ln in lines if ln.split()[:1] == ["tests"])


def test_gpu_session_dry_run_says_when_every_test_skipped(tmp_path):
    """Without a GPU every CUDA test of the dry run skips: the summary says so instead of a
    bare "ok" that read as passed kernels; tests that passed, and the GPU run, keep "ok"."""
    r, status = _tests_status(tmp_path, "12 skipped, 900 deselected in 3.10s", dry=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok (dry: all skipped, no GPU)" in status, status
    r, status = _tests_status(tmp_path, "2 passed, 10 skipped in 3.10s", dry=True)
    assert r.returncode == 0 and " ok " in status and "skipped" not in status, status
    r, status = _tests_status(tmp_path, "12 skipped in 3.10s", dry=False)
    assert r.returncode == 0 and " ok " in status and "skipped" not in status, status
