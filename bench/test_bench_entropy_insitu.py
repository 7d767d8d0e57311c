import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("slimkernels._coder")
import bench_entropy_insitu  # noqa: E402


def test_entropy_insitu_dry_run(capsys):
    assert bench_entropy_insitu.main(["--dry-run", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for case in bench_entropy_insitu.CASES:
        assert f"| {case} |" in out
    # every cell is a positive time
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and "ms" not in ln]
    cells = [float(c) for ln in rows for c in ln.strip("|").split("|")[1:]]
    assert len(cells) == 2 * len(bench_entropy_insitu.CASES) == 12 and all(c > 0 for c in cells)
