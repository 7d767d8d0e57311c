"""bench/gpu_profile.py in its CPU dry-run mode: options, and results kept case by case."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_profile  # noqa: E402


def test_dry_run_one_dtype_writes_its_cases(tmp_path):
    assert gpu_profile.main(["--dry-run", "--widths", "48", "--calls", "1", "--dtypes", "fp32",
                             "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "profile.json").read_text())
    assert res["dry_run"] and res["cases"]
    assert {c["dtype"] for c in res["cases"]} == {"float32"}
    assert {c["width"] for c in res["cases"]} == {48}
    assert all(c["wall_ms"] > 0 for c in res["cases"])
    assert "## " in (tmp_path / "profile.md").read_text()


def test_results_are_written_after_every_case(tmp_path, monkeypatch):
    """A run cut short (a device step's time limit) keeps the cases it measured."""
    real = gpu_profile.profile_case
    calls = []

    def stop_after_two(fn, dev, calls_=1, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt("time limit")
        calls.append(1)
        return real(fn, dev, calls=calls_)
    monkeypatch.setattr(gpu_profile, "profile_case",
                        lambda fn, dev, calls=1: stop_after_two(fn, dev, calls))
    with pytest.raises(KeyboardInterrupt):
        gpu_profile.main(["--dry-run", "--widths", "48", "--calls", "1", "--out", str(tmp_path)])
    assert len(json.loads((tmp_path / "profile.json").read_text())["cases"]) == 2


@pytest.mark.parametrize("argv", [["--dtypes", "fp64"], ["--dtypes", ""], ["--widths", "4x8"],
                                  ["--calls", "0"]])
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, argv):
    assert gpu_profile.main(["--dry-run", "--out", str(tmp_path)] + argv) == 2
    assert "error:" in capsys.readouterr().err
