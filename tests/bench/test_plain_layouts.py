"""bench/plain_layouts.py: the plain baseline in channels_last computes what the NCHW one does,
and the tool's quick run writes its table with ours' ratios against both layouts."""
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import e2e  # noqa: E402
import plain_layouts  # noqa: E402


def test_the_channels_last_plain_model_matches_the_nchw_one():
    model = e2e.load_model()[0]
    plain = e2e.PlainSlimCAE.from_model(model).eval()
    cl = plain_layouts.ChannelsLast(plain)
    x = e2e.load_image(quick=True)
    with torch.no_grad():
        y, y_cl = plain.encode(x, 48), cl.encode(x, 48)
        assert y_cl.is_contiguous(memory_format=torch.channels_last) and y.is_contiguous()
        torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-4)
        yq = torch.round(y)
        torch.testing.assert_close(cl.decode(yq), plain.decode(yq), rtol=1e-5, atol=1e-5)
    assert plain.g_a[0].weight.is_contiguous()   # (the NCHW model left as it was)


def test_quick_run_writes_both_layouts_and_the_ratios(tmp_path):
    out = str(tmp_path / "layouts")
    assert plain_layouts.main(["--quick", "--widths", "48", "--threads", "1", "--out", out]) == 0
    rows = json.loads(open(out + ".json").read())
    impls = {r["impl"] for r in rows}
    assert {"plain fp32 nchw", "plain fp32 cl", "plain bf16 nchw", "plain bf16 cl",
            "ours fp32"} <= impls
    assert all(r["ms"] > 0 for r in rows) and {r["op"] for r in rows} == {"compress",
                                                                           "decompress"}
    md = open(out + ".md").read()
    assert "ours fp32 vs plain fp32 nchw" in md and "ours fp32 vs plain fp32 faster" in md
    get = {(r["op"], r["impl"]): r["ms"] for r in rows}
    line = next(ln for ln in md.splitlines() if ln.startswith("| 48 | decompress"))
    want = min(get[("decompress", "plain fp32 nchw")], get[("decompress", "plain fp32 cl")]) \
        / get[("decompress", "ours fp32")]
    assert line.rstrip(" |").endswith(f"{want:.2f}x")
