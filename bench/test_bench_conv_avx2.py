import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_conv_avx2  # noqa: E402


def test_conv_avx2_bench_quick_runs(capsys):
    assert bench_conv_avx2.main(["--widths", "16", "--repeats", "1", "--threads", "1",
                                "--scale", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 16 |") == len(bench_conv_avx2.LAYERS)


def test_conv_avx2_bench_quick_runs_in_bf16(capsys):
    assert bench_conv_avx2.main(["--widths", "16", "--repeats", "1", "--threads", "1",
                                "--scale", "8", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "bf16" in out and out.count("| 16 |") == len(bench_conv_avx2.LAYERS)
