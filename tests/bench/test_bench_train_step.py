"""bench/bench_train_step.py on a tiny random model: one row per configuration, the ratio line,
and the Winograd switch restored afterwards."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_train_step as B  # noqa: E402
from slimkernels.ops import conv as C  # noqa: E402


def test_table(capsys):
    before = C.CPU_WINOGRAD_TRAIN
    assert B.main(["--random", "--widths", "16,8", "--crop", "32", "--batch", "2",
                   "--rounds", "2", "--threads", "1", "--no-tune-malloc"]) == 0
    out = capsys.readouterr().out
    assert "glibc malloc untuned" in out   # this test process's allocator left alone
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == [
        "slimkernels (Winograd training convs on)", "slimkernels (off)", "plain PyTorch"]
    for r in rows:
        med, best = (float(c) for c in r.split("|")[2:4])
        assert 0 < best <= med
    assert "off / on:" in out and "plain / on:" in out
    assert C.CPU_WINOGRAD_TRAIN == before
