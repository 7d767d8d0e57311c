import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_checkouts  # noqa: E402


def test_ab_checkouts_runs_against_itself(capsys, tmp_path):
    md = tmp_path / "ab.md"
    assert ab_checkouts.main(["--base", ab_checkouts.ROOT, "--rounds", "1", "--sizes", "32",
                              "--widths", "48", "--calls", "2", "--threads", "1",
                              "--md", str(md)]) == 0
    out = capsys.readouterr().out
    row = [ln for ln in out.splitlines() if ln.startswith("| 32x32 | 48 |")]
    assert len(row) == 1 and md.read_text().count("| 32x32 | 48 |") == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    new_c, base_c = (float(v) for v in cells[2].split(" / "))
    # the speed-up of the unrounded medians: within the cells' rounding of their ratio
    assert new_c > 0 and base_c > 0 and cells[3].endswith("x")
    assert abs(float(cells[3][:-1]) - base_c / new_c) <= 0.002 * base_c / new_c + 1e-3


def test_ab_checkouts_refuses_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        ab_checkouts.main([])                               # no --base
    with pytest.raises(SystemExit):
        ab_checkouts.main(["--base", str(tmp_path)])        # not a checkout
    with pytest.raises(SystemExit):
        ab_checkouts.main(["--base", ab_checkouts.ROOT, "--sizes", "-1"])
