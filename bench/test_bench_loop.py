import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("slimkernels._coder")
import bench_loop  # noqa: E402


def test_loop_dry_run_prints_the_table(capsys):
    assert bench_loop.main(["--dry-run", "--threads", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| 24 ") or ln.startswith("| 16 ")]
    assert len(rows) == 2
    cells = [[float(c) for c in ln.strip("|").split("|")[1:]] for ln in rows]
    n = len(bench_loop.COLUMNS)
    assert all(len(c) == 2 * n and all(v > 0 for v in c) for c in cells)
    assert cells[0][n:] == [1.0] * n                 # the first width against itself
    for i in range(n):                               # the ratios are the ms' ratios
        assert cells[1][n + i] == pytest.approx(cells[1][i] / cells[0][i], rel=0.02, abs=2e-3)


def test_measure_keeps_one_call_per_image_width_and_case(tmp_path):
    """The first of several rounds is warm-up; each kept call is one image at one width, and
    the files it decompresses are the ones its compress wrote (they decode to the image's
    size)."""
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    model = SlimCAE(widths=(24, 16)).eval()
    model.update()
    paths = bench_loop._dry_images(str(tmp_path))
    written, decoded = [], []
    compress, decompress = model.compress, model.decompress
    model.compress = lambda x, w, **k: (lambda d: written.append(d) or d)(compress(x, w, **k))
    model.decompress = lambda d, **k: decoded.append(d) or decompress(d, **k)
    for rounds, kept in ((1, 1), (3, 2)):
        times = bench_loop.measure(model, paths, [24, 16], rounds)
        for w in (24, 16):
            for op, case in bench_loop.COLUMNS:
                assert len(times[(w, op, case)]) == kept * len(paths)
        assert len(times[("read", None, None)]) == kept * len(paths) * 2 * 2
    calls = (1 + 3) * len(paths) * 2 * 2     # rounds x images x widths x (timed, again)
    assert len(written) == len(decoded) == calls
    assert set(decoded) <= set(written)       # each a file the loop's compress wrote


def test_loop_refuses_a_folder_without_images(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert bench_loop.main(["--images", str(tmp_path)]) == 2
    assert "no images" in capsys.readouterr().err
    assert bench_loop.main(["--images", str(tmp_path / "missing")]) == 2
