"""scan_bf16_convs.py: the scan's cases against float64 (the ops must be right on the shapes
oneDNN gets wrong), its error measure and its refusals."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scan_bf16_convs as scan  # noqa: E402


def test_a_small_grid_of_the_ops_has_no_wrong_case(monkeypatch, capsys, tmp_path):
    """Shapes of the three families oneDNN's bf16 convs get wrong (16 channels, k 4, stride 4;
    C_in * k = 64; one input column with stride 2): the ops must give none wrong."""
    monkeypatch.setattr(scan, "QUICK", {"c_in": [8, 16], "c_out": [8], "k": [4, 8],
                                        "stride": [1, 4]})
    monkeypatch.setattr(scan, "SIZES", [(24, 20), (2, 1)])
    monkeypatch.setattr(scan, "T_SIZES", [(6, 5), (8, 1)])
    out = tmp_path / "wrong.jsonl"
    assert scan.main(["--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "slim_conv2d: 0 wrong of " in text and "slim_conv_transpose2d: 0 wrong of " in text
    assert out.read_text() == ""


def test_rel_error_is_inf_for_values_that_are_not_finite():
    ref = torch.ones(3, dtype=torch.float64)
    assert scan.rel_error(torch.tensor([1.0, math.nan, 1.0]), ref) == math.inf
    assert scan.rel_error(torch.tensor([1.0, 1.5, 1.0]), ref) == pytest.approx(0.5)


@pytest.mark.parametrize("args, needle", [(["--tol", "0"], "--tol"), (["--tol", "nan"], "--tol"),
                                          (["--threads", "0"], "--threads")])
def test_bad_arguments_are_refused(capsys, args, needle):
    assert scan.main(args) == 2
    assert needle in capsys.readouterr().err


def test_an_existing_out_file_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "keep.jsonl"
    out.write_text("precious")
    assert scan.main(["--quick", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "precious"
