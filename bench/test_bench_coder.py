"""pytest-benchmark tests of the entropy coder on a slice of the Kodak-like workload.

Run the timings with ``pytest bench/test_bench_coder.py --benchmark-enable``; under the default
``--benchmark-disable`` each case runs once as a quick correctness check. The full comparison with
CompressAI and constriction is ``python bench/bench_coder.py``.
"""
import numpy as np
import pytest

from bench_coder import kodak_like_workload
from slimkernels import coding


@pytest.fixture(scope="module")
def work():
    # 48 channels x 32 x 48 = 73,728 symbols: a quarter of the Kodak latent.
    return kodak_like_workload(seed=1, channels=48)


@pytest.mark.parametrize("streams", [1, 2])
def test_bench_encode(benchmark, work, streams):
    sym, idx, cdfs, lengths, offsets = work
    data = benchmark(coding.encode, sym, idx, cdfs, lengths, offsets, streams=streams,
                     threads=streams)
    np.testing.assert_array_equal(coding.decode(data, idx, cdfs, lengths, offsets), sym)


@pytest.mark.parametrize("streams", [1, 2])
def test_bench_decode(benchmark, work, streams):
    sym, idx, cdfs, lengths, offsets = work
    data = coding.encode(sym, idx, cdfs, lengths, offsets, streams=streams)
    out = benchmark(coding.decode, data, idx, cdfs, lengths, offsets, threads=streams)
    np.testing.assert_array_equal(out, sym)


def test_bench_script_writes_results(tmp_path):
    """bench_coder.py end to end (slimkernels only, one repeat): table, ratios, time split."""
    import json

    import bench_coder
    rows = bench_coder.main(["--repeat", "1", "--warmup", "0", "--only-slimkernels",
                             "--out", str(tmp_path)])
    assert [(r["streams"], r["threads"], r["indexes"]) for r in rows] == \
        list(bench_coder.SLIM_CONFIGS)
    assert len({r["size_bytes"] for r in rows if r["streams"] == 2}) == 1   # same bytes
    assert len({r["size_bytes"] for r in rows if r["streams"] == 1}) == 1   # halves included
    res = json.loads((tmp_path / "coder_slimkernels.json").read_text())
    split = res["meta"]["time_split"]
    assert set(split) == {"1_stream", "2_stream"}
    for sp in split.values():
        for key in ("encode_python_s", "encode_cxx_s", "encode_new_tables_s", "decode_python_s",
                    "decode_cxx_s", "decode_new_tables_s"):
            assert sp[key] > 0
    md = (tmp_path / "coder_slimkernels.md").read_text()
    assert "--only-slimkernels" in md and "Time split" in md
    assert "1 stream on 2 threads (the encoder's lane halves) vs 1 thread" in md
    assert "same bytes: True" in md
