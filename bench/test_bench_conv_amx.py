"""The AMX-vs-oneDNN conv A/B runs both paths and leaves the dispatch switches as it found them."""
import os
import sys

import pytest

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
                        lambda *a, **k: (lambda g: fused.append(g is not None) or g)(real(*a, **k)))
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


# the switch comparisons: the function watched, what each of its calls records, the values that
# show both paths ran, the width, the layers, the command-line flag
SWITCHED = {
    "windows": ("_conv2d_amx", lambda a: oc.CPU_AMX_CONV_WINDOWS, {True, False}, 16, ["enc1"],
                "--windows"),
    "pad_channels": ("_amx_conv_run", lambda a: a[-1], {32, None}, 24, ["dec1", "dec2"],
                     "--pad-channels"),
    "in_place": ("_amx_conv_run", lambda a: oc.CPU_AMX_CONV_IN_PLACE, {True, False}, 16,
                 ["enc2", "enc3", "dec1", "dec2", "dec3"], "--in-place"),
}


@pytest.mark.parametrize("kind", sorted(SWITCHED))
def test_switch_ab_runs_both_paths_and_restores_the_switches(capsys, monkeypatch, kind):
    import bench_conv_amx as bench
    fn, record, both, width, layers, flag = SWITCHED[kind]
    c = bench.COMPARISONS[kind]
    names = (c["switch"],) + tuple(c["lifted"])
    saved = tuple(getattr(oc, k) for k in names)
    seen = []
    real = getattr(oc, fn)
    monkeypatch.setattr(oc, fn, lambda *a, **k: seen.append(record(a)) or real(*a, **k))
    rows = bench.compare(kind, [width], threads=1, n=2, reps=1)
    assert tuple(getattr(oc, k) for k in names) == saved
    if oc._amx_conv_kernels() is None:
        assert rows == []
        return
    assert both <= set(seen)     # the direct kernel ran both ways
    assert [r["layer"] for r in rows] == layers
    for r in rows:
        assert r[c["off"][0]] > 0 and r[c["on"][0]] > 0 and r["speedup"] > 0
    assert bench.main([flag, "--widths", str(width), "--n", "2"]) == 0
    assert f"| {layers[-1]} | {width} |" in capsys.readouterr().out
