"""The AMX-vs-oneDNN conv A/B runs both paths and leaves the dispatch switches as it found them."""
import os
import sys

import slimkernels.ops.conv as oc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def test_ab_runs_both_paths_and_restores_the_switches():
    import bench_conv_amx as bench
    saved = (oc.CPU_AMX_CONV, oc.AMX_CONV_MAX_CHANNELS, oc.AMX_CONV_MAX_PIXELS)
    rows = bench.run([16], threads=1, n=2, reps=1)
    assert (oc.CPU_AMX_CONV, oc.AMX_CONV_MAX_CHANNELS, oc.AMX_CONV_MAX_PIXELS) == saved
    if oc._amx_conv_kernels() is None:
        assert rows == []
        return
    assert [r["layer"] for r in rows] == ["enc2", "enc3", "dec1", "dec2"]
    for r in rows:
        assert r["onednn_us"] > 0 and r["amx_us"] > 0 and r["speedup"] > 0


def test_gdn_ab_runs_both_paths_and_restores_the_switches(capsys, monkeypatch):
    import bench_conv_amx as bench
    names = ("CPU_AMX_CONV_GDN", "AMX_CONV_GDN_MAX_CHANNELS", "AMX_CONV_GDN_MIN_THREADS",
             "AMX_CONV_MAX_CHANNELS", "AMX_CONV_MAX_PIXELS")
    saved = tuple(getattr(oc, k) for k in names)
    fused = []
    real = oc._amx_epilogue_gdn
    monkeypatch.setattr(oc, "_amx_epilogue_gdn",
                        lambda *a: (lambda g: fused.append(g is not None) or g)(real(*a)))
    rows = bench.run_gdn([16], threads=1, n=2, reps=1)
    assert tuple(getattr(oc, k) for k in names) == saved
    if not oc.amx_epilogue_gdn_available():
        assert rows == []
        return
    assert True in fused and False in fused     # both paths ran (one thread: limits lifted)
    assert [r["layer"] for r in rows] == ["enc2", "enc3", "dec1", "dec2"]
    for r in rows:
        assert r["two_pass_us"] > 0 and r["fused_us"] > 0 and r["speedup"] > 0
    assert bench.main(["--gdn", "--widths", "16", "--n", "2"]) == 0
    assert "| enc2 | 16 |" in capsys.readouterr().out


def test_windows_ab_runs_both_layouts_and_restores_the_switches(capsys, monkeypatch):
    import bench_conv_amx as bench
    names = ("CPU_AMX_CONV_WINDOWS", "AMX_CONV_IMAGE_MAX_CHANNELS")
    saved = tuple(getattr(oc, k) for k in names)
    seen = []
    real = oc._conv2d_amx
    monkeypatch.setattr(oc, "_conv2d_amx",
                        lambda *a: seen.append(oc.CPU_AMX_CONV_WINDOWS) or real(*a))
    rows = bench.run_windows([16], threads=1, n=2, reps=1)
    assert tuple(getattr(oc, k) for k in names) == saved
    if oc._amx_conv_kernels() is None:
        assert rows == []
        return
    assert True in seen and False in seen     # the direct kernel ran with both layouts
    assert [r["layer"] for r in rows] == ["enc1"]
    for r in rows:
        assert r["padded_us"] > 0 and r["windows_us"] > 0 and r["speedup"] > 0
    assert bench.main(["--windows", "--widths", "16", "--n", "2"]) == 0
    assert "| enc1 | 16 |" in capsys.readouterr().out


def test_pad_channels_ab_runs_both_copies_and_restores_the_switches(capsys, monkeypatch):
    import bench_conv_amx as bench
    names = ("CPU_AMX_CONV_PAD_CHANNELS", "AMX_CONV_MAX_CHANNELS", "AMX_CONV_MAX_PIXELS")
    saved = tuple(getattr(oc, k) for k in names)
    seen = []
    real = oc._amx_conv_run
    monkeypatch.setattr(oc, "_amx_conv_run", lambda *a: seen.append(a[-1]) or real(*a))
    rows = bench.run_pad_channels([24], threads=1, n=2, reps=1)
    assert tuple(getattr(oc, k) for k in names) == saved
    if oc._amx_conv_kernels() is None:
        assert rows == []
        return
    assert 32 in seen and None in seen     # the direct kernel ran with both copies
    assert [r["layer"] for r in rows] == ["dec1", "dec2"]
    for r in rows:
        assert r["plain_us"] > 0 and r["padded_us"] > 0 and r["speedup"] > 0
    assert bench.main(["--pad-channels", "--widths", "24", "--n", "2"]) == 0
    assert "| dec1 | 24 |" in capsys.readouterr().out


def test_in_place_ab_runs_both_sources_and_restores_the_switches(capsys, monkeypatch):
    import bench_conv_amx as bench
    names = ("CPU_AMX_CONV_IN_PLACE", "AMX_CONV_MAX_CHANNELS", "AMX_CONV_MAX_PIXELS",
             "AMX_CONV_IMAGE_T_MAX_CHANNELS")
    saved = tuple(getattr(oc, k) for k in names)
    seen = []
    real = oc._amx_conv_run
    monkeypatch.setattr(oc, "_amx_conv_run",
                        lambda *a: seen.append(oc.CPU_AMX_CONV_IN_PLACE) or real(*a))
    rows = bench.run_in_place([16], threads=1, n=2, reps=1)
    assert tuple(getattr(oc, k) for k in names) == saved
    if oc._amx_conv_kernels() is None:
        assert rows == []
        return
    assert True in seen and False in seen     # the direct kernel ran with both sources
    assert [r["layer"] for r in rows] == ["enc2", "enc3", "dec1", "dec2", "dec3"]
    for r in rows:
        assert r["copy_us"] > 0 and r["in_place_us"] > 0 and r["speedup"] > 0
    assert bench.main(["--in-place", "--widths", "16", "--n", "2"]) == 0
    assert "| dec3 | 16 |" in capsys.readouterr().out
