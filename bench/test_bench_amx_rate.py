"""bench_amx_rate.py: the synthetic tile-rate program's output read back, the kernel's product
count, the refusals, and a short run where this CPU has AMX and a C++ compiler."""
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_amx_rate as bench  # noqa: E402
from slimkernels.ops.conv import amx_conv_available  # noqa: E402


def test_parse_reads_every_case_and_refuses_other_lines():
    text = "\n".join(f"{k} {i + 1.5}" for i, k in enumerate(bench.CASES)) + "\n\n"
    got = bench.parse(text)
    assert got == {k: i + 1.5 for i, k in enumerate(bench.CASES)}
    with pytest.raises(ValueError, match="unexpected output line"):
        bench.parse("no_loads 5.0\nwarning: something\n")
    with pytest.raises(ValueError, match="unexpected output line"):
        bench.parse("l3_1mb 9.0\n")


def test_kernel_products_counts_blocks_taps_chunks_and_tiles():
    # 64 rows x 8 blocks of 16 pixels x 5 tap rows x K chunks (5*C/32 rounded up) x 4 tiles
    assert bench.kernel_products(64) == 64 * 8 * 5 * 10 * 4
    assert bench.kernel_products(48) == 64 * 8 * 5 * 8 * 4      # 240 elements: 8 chunks
    assert bench.kernel_products(48, co=48, wo=120) == 64 * 8 * 5 * 8 * 3


@pytest.mark.parametrize("args, needle", [(["--runs", "0"], "--runs"),
                                          (["--repeats", "0"], "--repeats"),
                                          (["--scale", "0"], "--scale"),
                                          (["--scale", "nan"], "--scale")])
def test_bad_counts_are_refused(capsys, args, needle):
    assert bench.main(args) == 2
    assert needle in capsys.readouterr().err


def test_no_compiler_is_a_one_line_error(capsys, monkeypatch):
    import slimkernels.ops.conv as oc
    monkeypatch.setattr(oc, "amx_conv_available", lambda: True)
    monkeypatch.setattr(bench, "compiler", lambda: None)
    assert bench.main(["--runs", "1"]) == 2
    assert "no C++ compiler found" in capsys.readouterr().err


def test_the_compiler_is_picked_as_setup_py_picks_it(monkeypatch):
    """$CXX may hold arguments (its program is looked up on PATH, as setup.py does); a $CXX
    whose program is missing is no compiler; without $CXX the first of c++ / g++ / clang++."""
    import shutil
    monkeypatch.setattr(shutil, "which", lambda n: f"/usr/bin/{n}" if n == "g++" else None)
    monkeypatch.setenv("CXX", "g++ -m64")
    assert bench.compiler() == ["g++", "-m64"]
    monkeypatch.setenv("CXX", "nosuch++")
    assert bench.compiler() is None
    monkeypatch.delenv("CXX")
    assert bench.compiler() == ["/usr/bin/g++"]


def test_a_cpu_without_amx_is_refused(capsys, monkeypatch):
    import slimkernels.ops.conv as oc
    monkeypatch.setattr(oc, "amx_conv_available", lambda: False)
    assert bench.main(["--runs", "1"]) == 2
    assert "no AMX-BF16" in capsys.readouterr().err


def test_existing_results_are_kept_without_force(tmp_path, capsys):
    (tmp_path / "amx_rate.md").write_text("kept")
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert "already holds amx_rate.md" in capsys.readouterr().err
    assert (tmp_path / "amx_rate.md").read_text() == "kept"
    f = tmp_path / "file"
    f.write_text("")
    assert bench.main(["--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(not amx_conv_available() or bench.compiler() is None,
                    reason="needs AMX-BF16 and a C++ compiler")
def test_short_run_writes_every_row(tmp_path, capsys):
    assert bench.main(["--runs", "1", "--scale", "0.02", "--repeats", "3",
                       "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "amx_rate.json").read_text())
    cases = [r["case"] for r in res["rows"]]
    assert cases == list(bench.CASES) + [f"kernel_c{c}" for c in bench.KERNEL_CHANNELS]
    for r in res["rows"]:
        assert math.isfinite(r["ns"]) and r["ns"] > 0 and math.isfinite(r["vs_peak"])
    assert res["rows"][0]["vs_peak"] == 1.0
    md = (tmp_path / "amx_rate.md").read_text()
    assert md.count("\n| ") == len(cases) + 1 and "kernel_c48" in md
