"""pytest-benchmark cases for GDN on CPU, plus a dry run of bench_gdn.py.

    pytest bench/test_bench_gdn.py --benchmark-enable          # timings
    pytest bench/test_bench_gdn.py                            # correctness of the harness only
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_gdn  # noqa: E402
from slimkernels.ops import gdn  # noqa: E402

SHAPE = (1, 128, 192)


@pytest.fixture(scope="module")
def params():
    return bench_gdn.make_params()


def _x(C, dtype, layout):
    x = torch.randn(SHAPE[0], C, *SHAPE[1:]).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "cl" else x


@pytest.mark.parametrize("impl", ["slimkernels", "eager"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("C", [192, 48])
def test_cpu_gdn_forward(benchmark, params, impl, layout, dtype, C):
    beta, gamma = params
    x = _x(C, dtype, layout)
    f = gdn if impl == "slimkernels" else bench_gdn.eager_gdn
    benchmark.group = f"gdn-cpu-C{C}-{layout}-{str(dtype)[6:]}"
    with torch.no_grad():
        y = benchmark(f, x, beta, gamma)
    assert torch.isfinite(y).all()


def test_dry_run_writes_tables(tmp_path):
    report = bench_gdn.main(["--dry-run", "--out", str(tmp_path)])
    assert (tmp_path / "cpu" / "gdn.json").exists()
    md = (tmp_path / "cpu" / "gdn.md").read_text()
    assert "OWED" in md or torch.cuda.is_available()
    assert len(report["static_h100"]) == 2 * 5 * 2
    for r in report["cpu"]:
        assert r["eager_ms"] > 0 and r["ours_ms"] > 0
        assert r["err_ours"] < (1e-5 if r["dtype"] == "float32" else 1e-2)
        assert r["err_ours_elem"] < (1e-5 if r["dtype"] == "float32" else 2e-2)
        assert r["torch_ms"] > 0 and r["path"] in ("fused-amx", "avx512-bf16", "avx2-fp32", "avx2-bf16", "torch")
    assert "ops.gdn vs torch path" in md
    assert all(r["fused_fwd_ms"] > 0 for r in report["cuda_dry_run"])
    assert {r["dtype"] for r in report["cpu_train"]} == {"fp32", "autocast-bf16"}
    assert all(r["eager_ms"] > 0 and r["ours_ms"] > 0 for r in report["cpu_train"])


def test_static_numbers():
    r = bench_gdn.static_row(1, 256, 384, 192)
    # read x + write y, fp32: 2 * 192 * 98304 * 4 B = 151 MB -> 0.050 ms at 3 TB/s (ANCHORS: 0.051)
    assert abs(r["fwd_MB"] - 151.1) < 0.5
    assert abs(r["fwd_floor_ms"] - 0.0504) < 0.001
    assert abs(r["fwd_GFLOP"] - 2 * 192 * 192 * 98304 / 1e9 - 4 * 192 * 98304 / 1e9) < 1e-6


def test_cuda_rows_are_written_as_they_come_and_a_cut_run_keeps_them(tmp_path):
    """As bench_conv's: the CUDA table was written only at the end of the run (73 s measured on
    the H200 against its 75 s limit in the GPU session)."""
    import json

    class Cut(Exception):
        pass

    def on_row(rows):
        bench_gdn.write_cuda(str(tmp_path), "cpu test", rows, partial=True)
        if len(rows) == 3:
            raise Cut

    def timer(fn):
        fn()
        return 1.0
    with pytest.raises(Cut):
        bench_gdn.cuda_timings([(1, 5, 7)], [8, 4], device="cpu", timer=timer,
                               use_compile=False, on_row=on_row)
    data = json.loads((tmp_path / "gdn.json").read_text())
    assert len(data["rows"]) == 3 and data["partial"]
    assert "PARTIAL: the run ended (its time limit) after these 3 rows" in \
        (tmp_path / "gdn.md").read_text()
    report = bench_gdn.main(["--dry-run", "--out", str(tmp_path / "whole")])
    data = json.loads((tmp_path / "whole" / "cuda_dry_run" / "gdn.json").read_text())
    assert not data["partial"] and len(data["rows"]) == len(report["cuda_dry_run"]) >= 4
    assert "PARTIAL" not in (tmp_path / "whole" / "cuda_dry_run" / "gdn.md").read_text()
