"""bench/bench_conv_avx2.py on tiny images: both modes print one complete row per case."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import bench_conv_avx2 as B  # noqa: E402
from slimkernels.ops import conv as C  # noqa: E402


def _rows(out):
    return [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_ab_table(capsys):
    assert B.main(["--widths", "48", "--repeats", "1", "--scale", "16", "--threads", "1"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r.split("|")[1].strip() for r in rows] == [layer[0] for layer in B.LAYERS]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and cells[4].endswith("x")


@pytest.mark.skipif(not any(C._winograd_here(5, 2, 2, t) for t in (False, True)),
                    reason="no Winograd path on this CPU: the sweep has no rows")
def test_round_sweep(capsys):
    # image / 2: enc3's and dec1's 24x16 grids have enough tiles for Winograd (WINOGRAD_MIN_TILES)
    assert B.main(["--widths", "64", "--repeats", "1", "--scale", "2", "--threads", "1",
                   "--round-mb", "1,4"]) == 0
    rows = _rows(capsys.readouterr().out)
    names = [r.split("|")[1].strip() for r in rows]
    assert [n.split()[0] for n in names] == ["enc2", "enc3", "dec1", "dec2"]  # not the image layers
    for r in rows:
        assert all(float(c) > 0 for c in [c.strip() for c in r.split("|")[3:-1]])


def test_gemm_table(capsys):
    """--gemm: one row per Winograd layer, torch.bmm against the GEMM the rounds run here."""
    from slimkernels.ops import winograd as Wg
    assert B.main(["--gemm", "--widths", "48", "--repeats", "1", "--scale", "16",
                   "--threads", "1"]) == 0
    out = capsys.readouterr().out
    if Wg.round_gemm() == "bmm":
        assert "use torch.bmm here" in out
        return
    assert f"GEMM: batched_gemm_{Wg.round_gemm()}" in out
    rows = _rows(out)
    assert [r.split("|")[1].strip().split()[0] for r in rows] == ["enc2", "enc3", "dec1", "dec2"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert float(cells[3]) > 0 and float(cells[4]) > 0 and cells[5].endswith("x")
        assert all(float(e) < 1e-5 for e in cells[7].split(" / "))
