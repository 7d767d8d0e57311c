import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_conv_avx2  # noqa: E402


def test_conv_avx2_bench_quick_runs(capsys):
    assert bench_conv_avx2.main(["--widths", "16", "--repeats", "1", "--threads", "1",
                                "--scale", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 16 |") == len(bench_conv_avx2.LAYERS)


def test_conv_avx2_bench_quick_runs_in_bf16(capsys):
    assert bench_conv_avx2.main(["--widths", "16", "--repeats", "1", "--threads", "1",
                                "--scale", "8", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "bf16" in out and out.count("| 16 |") == len(bench_conv_avx2.LAYERS)


def _gemm_rows(capsys, extra, notice):
    """The w=16 rows of a quick ``--gemm`` run (4: one per 5x5/2 layer), or None when the run
    printed ``notice`` (no such kernel on this CPU)."""
    assert bench_conv_avx2.main(["--gemm", *extra, "--widths", "16", "--repeats", "1",
                                "--threads", "1", "--scale", "8"]) == 0
    out = capsys.readouterr().out
    if notice in out:
        return None
    rows = [r for r in out.splitlines() if r.startswith("| ") and "| 16 |" in r]
    assert len(rows) == 4
    return rows


def test_gemm_table_quick_runs(capsys):
    """The GEMM table: a row per 5x5/2 layer where the AVX-512 kernel exists (each error within
    fp32's), else the one-line notice."""
    for r in _gemm_rows(capsys, [], "do not use the AVX-512 batched GEMM here") or []:
        errs = r.split("|")[-2].split("/")
        assert all(float(e) < 1e-5 for e in errs), r


def test_gemm_table_quick_runs_in_bf16(capsys):
    """The bf16 GEMM table: a row per 5x5/2 layer where AVX512-BF16 exists (error within fp32's
    against float64 of the bf16 operands), else the one-line notice."""
    for r in _gemm_rows(capsys, ["--precision", "bf16"], "no bf16 batched GEMM here") or []:
        assert float(r.split("|")[-2]) < 1e-5, r


def test_conv_bench_opt_in_quick_runs(capsys, monkeypatch):
    """--opt-in times the bf16 transposed convs by bf16 Winograd: with the channel threshold
    lowered to this quick run's width and AMX set aside (AMX CPUs keep their own kernels), the
    timed calls reach ``conv_transpose2d_winograd`` with bf16 x; without --opt-in they do not."""
    import torch
    from slimkernels.ops import conv as C, winograd as Wg
    if not Wg.gemm_bf16_available():
        pytest.skip("no AVX512-BF16 batched GEMM here: the bf16 Winograd path does not exist")
    monkeypatch.setattr(C, "_amx", lambda: False)
    monkeypatch.setattr(C, "_amx_conv_kernels", lambda: None)
    monkeypatch.setattr(C, "WINOGRAD_BF16_MIN_C", 16)
    seen = []
    real = Wg.conv_transpose2d_winograd

    def spy(x, *a, **k):
        seen.append(x.dtype)
        return real(x, *a, **k)
    monkeypatch.setattr(Wg, "conv_transpose2d_winograd", spy)
    args = ["--widths", "16", "--repeats", "1", "--threads", "1", "--scale", "2",
            "--precision", "bf16"]   # (scale 2: enough tiles for the Winograd rule)
    assert bench_conv_avx2.main(args) == 0
    assert torch.bfloat16 not in seen
    assert capsys.readouterr().out.count("| 16 |") == len(bench_conv_avx2.LAYERS)
    assert bench_conv_avx2.main(args + ["--opt-in"]) == 0
    assert torch.bfloat16 in seen
    assert capsys.readouterr().out.count("| 16 |") == len(bench_conv_avx2.LAYERS)
