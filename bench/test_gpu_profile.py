"""bench/gpu_profile.py runs every case on CPU (dry run) and writes its table."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_profile  # noqa: E402


def test_dry_run_profiles_every_case(tmp_path):
    assert gpu_profile.main(["--dry-run", "--out", str(tmp_path), "--widths", "48",
                             "--calls", "1"]) == 0
    res = json.loads((tmp_path / "profile.json").read_text())
    assert res["dry_run"]
    names = ["enc_ours", "enc_eager", "dec_ours", "dec_eager", "gdn_fwdbwd_ours",
             "gdn_fwdbwd_eager"]
    assert [(c["case"], c["dtype"]) for c in res["cases"]] == \
        [(n, d) for d in ("float32", "bfloat16") for n in names]
    for c in res["cases"]:
        assert c["wall_ms"] > 0 and c["kernels"], c["case"]
        shares = [k["share"] for k in c["kernels"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    md = (tmp_path / "profile.md").read_text()
    assert "**Dry run on CPU**" in md and "## gdn_fwdbwd_ours w=48 bfloat16" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU paths")
def test_refusals(tmp_path, capsys):
    assert gpu_profile.main(["--dry-run", "--widths", "48", "--calls", "1"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert gpu_profile.main(["--dry-run", "--out", str(tmp_path), "--widths", "4x"]) == 2
    with pytest.raises(SystemExit, match="not widths of the model"):
        gpu_profile.main(["--dry-run", "--out", str(tmp_path), "--widths", "50"])
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu_profile.main(["--widths", "48"])
    assert not (tmp_path / "profile.json").exists()


def test_dtypes_option_and_bad_values(tmp_path, capsys):
    assert gpu_profile.main(["--dry-run", "--widths", "48", "--calls", "1", "--dtypes", "fp32",
                             "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "profile.json").read_text())
    assert res["cases"] and {c["dtype"] for c in res["cases"]} == {"float32"}
    for bad in ("fp64", "", "fp32,int8"):
        assert gpu_profile.main(["--dry-run", "--out", str(tmp_path), "--dtypes", bad]) == 2
        assert "--dtypes takes fp32 and/or bf16" in capsys.readouterr().err


def test_results_are_written_after_every_case(tmp_path, monkeypatch):
    """A run cut short (a device step's time limit) keeps the cases it measured."""
    real, done = gpu_profile.profile_case, []

    def stop_after_two(fn, dev, calls=1):
        if len(done) == 2:
            raise KeyboardInterrupt("time limit")
        done.append(1)
        return real(fn, dev, calls=calls)
    monkeypatch.setattr(gpu_profile, "profile_case", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        gpu_profile.main(["--dry-run", "--widths", "48", "--calls", "1", "--out", str(tmp_path)])
    assert len(json.loads((tmp_path / "profile.json").read_text())["cases"]) == 2
