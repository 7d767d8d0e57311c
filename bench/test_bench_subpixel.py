import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import bench_subpixel  # noqa: E402


def test_subpixel_bench_quick_runs(capsys):
    threads = torch.get_num_threads()
    assert bench_subpixel.main(["--quick", "--repeats", "1", "--threads", "2"]) == 0
    # no state leaks into the rest of the test process (it once switched autograd off globally)
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert out.count("9x9/4") == 4
