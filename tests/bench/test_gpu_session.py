"""bench/gpu_session.sh, the one-command GPU session, runs end to end in its CPU dry-run mode."""
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_session_script_dry_run(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PY=sys.executable, GPU_SESSION_DRY="1", OUT=str(out))
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_session.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (out / "summary.txt").read_text().splitlines()
    names = ("env", "build", "tests", "graphs", "gdn", "conv", "report", "profile")
    steps = {ln.split()[0]: ln for ln in lines if ln.split()[:1] and ln.split()[0] in names}
    assert set(steps) == set(names), lines
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
               GPU_REPORT_WIDTHS="192,48", GPU_REPORT_COMPILE_WIDTHS="", GPU_CONV_LAYERS="dec3")
    env.pop("GPU_SESSION_DRY", None)
    r = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_session.sh")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [ln.split()[0] for ln in (out / "summary.txt").read_text().splitlines()
             if ln.split()[:1] and ln.split()[0] in ("report", "tests", "gdn", "conv", "profile",
                                                     "graphs")]
    assert steps == ["tests", "conv", "report"]
    runs = [ln for ln in calls.read_text().splitlines() if "bench/" in ln or "pytest" in ln]
    assert "pytest" in runs[0] and runs[0].endswith("tests/kernels/test_conv_triton.py")
    assert "bench_conv.py" in runs[1] and "--layers dec3" in runs[1]
    assert "report.py" in runs[2] and "--widths 192,48" in runs[2]
    assert "--compile-widths  --image" in runs[2]      # an empty list: no torch.compile rows
