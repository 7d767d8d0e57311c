import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_winograd  # noqa: E402
from slimkernels.ops import winograd as Wg  # noqa: E402


@pytest.mark.skipif(not Wg.winograd_available(), reason="no AVX2 Winograd transforms here")
def test_winograd_bench_quick_runs(capsys):
    assert bench_winograd.main(["--widths", "16", "--repeats", "1", "--threads", "1",
                                "--scale", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 16 |") == len(bench_winograd.LAYERS)
