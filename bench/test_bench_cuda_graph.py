"""bench/bench_cuda_graph.py runs on CPU (dry run: cuda_graph is ignored there) and writes its
table; bad options are refused."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_cuda_graph  # noqa: E402


def test_dry_run_writes_the_table(tmp_path):
    assert bench_cuda_graph.main(["--dry-run", "--widths", "48", "--repeats", "2",
                                  "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cuda_graph.json").read_text())
    assert res["dry_run"] and [(r["width"], r["precision"]) for r in res["rows"]] == \
        [(48, "fp32"), (48, "bf16")]
    for r in res["rows"]:
        assert r["compress_ms"] > 0 and r["compress_graph_ms"] > 0
        assert r["decompress_speedup"] > 0
    assert "**Dry run on CPU**" in (tmp_path / "cuda_graph.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU paths")
def test_refusals(tmp_path, capsys):
    assert bench_cuda_graph.main(["--dry-run"]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert bench_cuda_graph.main(["--dry-run", "--out", str(tmp_path), "--widths", "4x"]) == 2
    assert bench_cuda_graph.main(["--dry-run", "--out", str(tmp_path), "--repeats", "0"]) == 2
    with pytest.raises(SystemExit, match="not widths of the model"):
        bench_cuda_graph.main(["--dry-run", "--out", str(tmp_path), "--widths", "50"])
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        bench_cuda_graph.main(["--widths", "48"])
    assert not (tmp_path / "cuda_graph.json").exists()


def test_a_run_cut_by_a_time_limit_keeps_its_finished_rows(tmp_path, monkeypatch):
    """The table was written after the last row only: the session's time limit (60 s against
    55 s measured) lost every row."""
    real = bench_cuda_graph.timed_ms
    calls = []

    def cut_after_first(*a, **k):
        if calls:
            raise KeyboardInterrupt("time limit (simulated)")
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(bench_cuda_graph, "timed_ms", cut_after_first)
    with pytest.raises(KeyboardInterrupt):
        bench_cuda_graph.main(["--dry-run", "--widths", "48", "--repeats", "1",
                               "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "cuda_graph.json").read_text())["rows"]
    assert [(r["width"], r["precision"]) for r in rows] == [(48, "fp32")]
    assert "| 48 | fp32 |" in (tmp_path / "cuda_graph.md").read_text()
