"""The conv benchmark's every code path runs (tiny shapes, CPU) and writes its JSON/Markdown."""
import json
import os
import sys

import pytest
import torch

# without a GPU the device section runs the Triton kernels under the interpreter (set before
# triton is imported, as tests/conftest.py does)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def test_static_table_numbers():
    import bench_conv as B
    rows = {(r["layer"], r["width"], r["dtype"]): r for r in B.static_table()}
    enc2 = rows[("enc2", 192, "fp32")]
    # 1x192x128x192 -> 64x96, 5x5: 2 * 192*192*25*64*96 FLOPs
    assert abs(enc2["gflop"] - 2 * 192 * 192 * 25 * 64 * 96 / 1e9) < 1e-9
    # the SlimCAE MAC count (Yang et al. 2021): 18.8 GMAC at w=192 and 1.6 at w=48 (enc + dec,
    # convs + 6 GDN/IGDN layers of w^2 MACs per pixel at 128x192, 64x96, 32x48, twice)
    for w, gmac in ((192, 18.8), (48, 1.6)):
        tot = sum(r["gflop"] for k, r in rows.items() if k[1] == w and k[2] == "fp32"
                  and k[0] != "anchor_5x5s2") / 2
        tot += 2 * w * w * (128 * 192 + 64 * 96 + 32 * 48) / 1e9
        assert abs(tot - gmac) / gmac < 0.03, (w, tot)
    a = rows[("anchor_5x5s2", 192, "fp32")]
    assert 120 < a["cudnn_tflops"] < 135  # ANCHORS.md: 127 TFLOP/s


def test_dry_run_writes_results(tmp_path):
    import bench_conv as B
    res = B.main(["--dry-run", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "conv.json").read_text())
    md = (tmp_path / "conv.md").read_text()
    assert len(data["cpu"]) == 24 and len(data["device"]) == 12
    for r in data["device"]:
        assert r["rel_err_vs_cudnn"] < 1e-4
        assert r["ours_ms"] > 0 and r["cudnn_ms"] > 0 and r["compile_ms"] > 0
    assert all("ours_fused_gdn_ms" in r for r in data["device"] if r["layer"] != "dec3")
    assert "speedup_cl_vs_plain" in md and "Device" in md
    for r in data["cpu"]:   # the fastest plain variant (any layout) is the one the ratio takes
        best = min(r["plain_contig_ms"], r["plain_view_ms"], r["plain_cl_ms"])
        assert abs(r["speedup_cl_vs_plain_best"] - best / r["ours_cl_ms"]) < 1e-9
    assert res["cpu_goals"]
    from slimkernels.backend import interpreter_enabled
    assert torch.cuda.is_available() or interpreter_enabled()  # the Triton path ran


def test_transforms_section_tiny():
    import bench_conv as B
    rows = B.transforms_section(widths=(8,), rounds=1, h=32, w=48)
    assert len(rows) == 2 and all(r["enc_ours_ms"] > 0 and r["dec_ours_ms"] > 0 for r in rows)


def test_transforms_breakdown_tiny():
    import bench_conv as B
    rows = B.transforms_breakdown(widths=(8, 4), rounds=1, h=32, w=48)
    assert [r["layer"] for r in rows[:6]] == ["enc1", "enc2", "enc3", "dec1", "dec2", "dec3"]
    assert len(rows) == 12 and all(r["conv_ms_w8"] > 0 and r["w_ratio"] > 0 for r in rows)
    ratios = B.transforms_ratios(B.transforms_section(widths=(8, 4), rounds=1, h=32, w=48))
    assert len(ratios) == 2 and all(r["enc_ratio"] > 0 for r in ratios)


def test_device_section_without_compile_column():
    """compile_mode=None (--compile-mode none, for a short GPU lease): rows without the compile
    column, ours still checked against the PyTorch convolution."""
    import bench_conv
    rows = bench_conv.device_section("cpu", shapes=((1, 16, 16),), widths=[8],
                                     dtypes=(torch.float32,), compile_backend="eager",
                                     compile_mode=None, rounds=1, layers=["enc2", "dec1"])
    assert [r["layer"] for r in rows] == ["enc2", "dec1"]
    for r in rows:
        assert "compile_ms" not in r and "speedup_vs_compile" not in r
        assert r["ours_ms"] > 0 and r["cudnn_ms"] > 0
        assert r["rel_err_vs_cudnn"] < 1e-5


def test_device_flag_needs_a_gpu(capsys):
    import pytest

    import bench_conv
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU path")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench_conv.main(["--device", "--no-cpu", "--shapes", "1x32x32"])


def test_device_rows_are_written_as_they_come_and_a_cut_run_keeps_them(tmp_path):
    """The GPU session's time limit cuts bench_conv's device section: its table was written only
    at the end, so a cut run left nothing. Now each row rewrites the files (marked PARTIAL
    until the end)."""
    import bench_conv as B

    class Cut(Exception):
        pass

    res = {"machine": "test", "device_name": "cpu test"}

    def on_row(rows):
        B.write(str(tmp_path), {**res, "device": rows, "device_partial": True})
        if len(rows) == 2:
            raise Cut   # (the time limit, after the second row)
    with pytest.raises(Cut):
        B.device_section("cpu", shapes=((1, 16, 16),), widths=[8], dtypes=(torch.float32,),
                         compile_backend="eager", compile_mode=None, rounds=1,
                         layers=["enc2", "dec1", "dec2"], on_row=on_row)
    data = json.loads((tmp_path / "conv.json").read_text())
    assert [r["layer"] for r in data["device"]] == ["enc2", "dec1"] and data["device_partial"]
    assert "PARTIAL: the run ended (its time limit) after these 2 rows" in \
        (tmp_path / "conv.md").read_text()
    # a whole run's files say nothing of the kind
    B.main(["--dry-run", "--out", str(tmp_path / "whole")])
    data = json.loads((tmp_path / "whole" / "conv.json").read_text())
    assert "device_partial" not in data and len(data["device"]) == 12
    assert "PARTIAL" not in (tmp_path / "whole" / "conv.md").read_text()
