import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_subpixel  # noqa: E402


def test_subpixel_bench_quick_runs(capsys):
    assert bench_subpixel.main(["--quick", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("9x9/4") == 4
