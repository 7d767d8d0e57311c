"""Benchmark of the width-sliced convolutions, per SlimCAE layer and width.

Three sections:

1. ``static``: per layer and width, FLOPs, minimum bytes (x read once, weight slice, y written
   once) and the H100 floor ``max(bytes / 3.0 TB/s, FLOPs / peak)`` with peak ~400 TFLOP/s (TF32)
   or ~800 TFLOP/s (bf16), beside the cuDNN times of ANCHORS.md (5x5 stride-2 conv, 1 x w x 256 x 384).
2. ``cpu``: every layer at every width on this CPU, fp32 and bf16 autocast, ``slim_conv2d`` (sliced
   view, NCHW and channels_last) against the plain ``F.conv2d(x, W[:o, :i].contiguous())`` in the same
   run; encoder layers also conv+GDN (ours, fused passes) against conv + eager GDN. Rounds are
   interleaved (one call of every variant per round) and the median over rounds is reported.
3. ``device``: every layer and width at ``1x3x512x768`` and ``8x3x256x256``, fp32 / bf16, ours
   (Triton) vs cuDNN (``cudnn.benchmark=True``, sliced weight) vs ``torch.compile(max-autotune)``,
   and fused conv+GDN vs cuDNN + eager GDN. Runs on CUDA; ``--dry-run`` exercises the same code on
   CPU with tiny shapes (Triton under the interpreter when ``TRITON_INTERPRET=1``).

Usage::

    python bench/bench_conv.py                 # static + cpu  -> bench/results/cpu/conv.{json,md}
    python bench/bench_conv.py --device        # + CUDA section -> bench/results/gpu/conv.{json,md}
    python bench/bench_conv.py --dry-run --out /tmp/x   # tiny, CPU, every code path once
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from slimkernels.ops import gdn as gdn_op  # noqa: E402
from slimkernels.ops import slim_conv2d, slim_conv_transpose2d  # noqa: E402
from slimkernels.io import atomic_write_bytes  # noqa: E402

WIDTHS = [192, 144, 96, 72, 48]
HBM_BPS = 3.0e12
PEAK = {"fp32": 400e12, "bf16": 800e12}  # TF32 / bf16 dense tensor-core peaks (H100 SXM, approx.)
# ANCHORS.md: single 5x5 stride-2 conv, input 1 x w x 256 x 384, H100, cuDNN (TF32) and fp16 ms
ANCHOR_CUDNN = {192: (0.356, 0.176), 144: (0.273, 0.165), 96: (0.111, 0.081), 72: (0.132, 0.092),
                48: (0.090, 0.052)}


# --------------------------------------------------------------------------------------- layers
def slimcae_layers(n: int, h: int, w: int, width: int) -> List[Dict]:
    """The six SlimCAE transforms for an ``n x 3 x h x w`` image at ``width``: name, kind, input
    shape, weight shape (full, 192 max), stride, padding, output_padding, output channels, gdn."""
    W = 192
    return [
        dict(name="enc1", tr=False, x=(n, 3, h, w), wshape=(W, 3, 9, 9), s=4, p=4, op=0, co=width,
             gdn=True),
        dict(name="enc2", tr=False, x=(n, width, h // 4, w // 4), wshape=(W, W, 5, 5), s=2, p=2,
             op=0, co=width, gdn=True),
        dict(name="enc3", tr=False, x=(n, width, h // 8, w // 8), wshape=(W, W, 5, 5), s=2, p=2,
             op=0, co=width, gdn=True),
        dict(name="dec1", tr=True, x=(n, width, h // 16, w // 16), wshape=(W, W, 5, 5), s=2, p=2,
             op=1, co=width, gdn=True),
        dict(name="dec2", tr=True, x=(n, width, h // 8, w // 8), wshape=(W, W, 5, 5), s=2, p=2,
             op=1, co=width, gdn=True),
        dict(name="dec3", tr=True, x=(n, width, h // 4, w // 4), wshape=(W, 3, 9, 9), s=4, p=4,
             op=3, co=3, gdn=False),
    ]


def out_hw(L) -> tuple:
    _, _, h, w = L["x"]
    k = L["wshape"][2]
    if L["tr"]:
        return ((h - 1) * L["s"] - 2 * L["p"] + k + L["op"], (w - 1) * L["s"] - 2 * L["p"] + k + L["op"])
    return ((h + 2 * L["p"] - k) // L["s"] + 1, (w + 2 * L["p"] - k) // L["s"] + 1)


def layer_cost(L, bytes_per_el: int) -> Dict:
    n, ci, h, w = L["x"]
    k = L["wshape"][2]
    ho, wo = out_hw(L)
    co = L["co"]
    if L["tr"]:
        macs = n * h * w * ci * co * k * k  # every input pixel meets every tap once
    else:
        macs = n * ho * wo * ci * co * k * k
    byts = bytes_per_el * (n * ci * h * w + ci * co * k * k + n * co * ho * wo)
    return {"flops": 2 * macs, "bytes": byts}


# ----------------------------------------------------------------------------------------- static
def static_table(n=1, h=512, w=768) -> List[Dict]:
    rows = []
    for width in WIDTHS:
        for L in slimcae_layers(n, h, w, width):
            for dt, bpe in (("fp32", 4), ("bf16", 2)):
                c = layer_cost(L, bpe)
                floor = max(c["bytes"] / HBM_BPS, c["flops"] / PEAK[dt])
                rows.append({"layer": L["name"], "width": width, "dtype": dt, "x": list(L["x"]),
                             "gflop": c["flops"] / 1e9, "mbytes": c["bytes"] / 1e6,
                             "h100_floor_us": floor * 1e6,
                             "bound": "memory" if c["bytes"] / HBM_BPS > c["flops"] / PEAK[dt]
                             else "compute"})
    # the ANCHORS.md shape: 5x5 s2 conv on 1 x w x 256 x 384
    for width, (t32, t16) in ANCHOR_CUDNN.items():
        L = dict(name="anchor_5x5s2", tr=False, x=(1, width, 256, 384), wshape=(192, 192, 5, 5), s=2,
                 p=2, op=0, co=width)
        for dt, bpe, t in (("fp32", 4, t32), ("bf16", 2, t16)):
            c = layer_cost(L, bpe)
            floor = max(c["bytes"] / HBM_BPS, c["flops"] / PEAK[dt])
            rows.append({"layer": "anchor_5x5s2", "width": width, "dtype": dt, "x": list(L["x"]),
                         "gflop": c["flops"] / 1e9, "mbytes": c["bytes"] / 1e6,
                         "h100_floor_us": floor * 1e6, "cudnn_ms": t,
                         "cudnn_tflops": c["flops"] / (t * 1e-3) / 1e12,
                         "cudnn_over_floor": t * 1e3 / (floor * 1e6)})
    return rows


# ------------------------------------------------------------------------------------- timing
def interleaved_medians(fns: Dict[str, Callable], rounds: int, warmup: int = 1,
                        sync: Callable = lambda: None, mins: Dict[str, float] = None,
                        shuffle: bool = True, before: Callable = None) -> Dict[str, float]:
    """Median wall time (ms) of every fn, timed one call each per round, rounds interleaved.
    ``mins`` (optional dict) receives the best time of each fn (robust to a busy machine).
    ``shuffle``: a new call order every round (fixed seed), so that no fn always runs after the
    same neighbour (on CPU a small conv is ~20 % faster right after a call that left its weight
    in cache than after one that evicted it). ``before`` (optional): called, untimed, before
    every timed call (e.g. the work that precedes the timed step in real use)."""
    import random
    rng = random.Random(0)
    for _ in range(warmup):
        for f in fns.values():
            f()
    sync()
    ts = {k: [] for k in fns}
    order = list(fns.items())
    for _ in range(rounds):
        if shuffle:
            rng.shuffle(order)
        for k, f in order:
            if before is not None:
                before()
                sync()
            t0 = time.perf_counter()
            f()
            sync()
            ts[k].append((time.perf_counter() - t0) * 1e3)
    if mins is not None:
        mins.update({k: min(v) for k, v in ts.items()})
    return {k: statistics.median(v) for k, v in ts.items()}


def _make(L, device, dtype=torch.float32, cl=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L["x"], generator=g).to(device, dtype)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    wt = (torch.randn(L["wshape"], generator=g) * 0.02).to(device, dtype)
    co_max = L["wshape"][1] if L["tr"] else L["wshape"][0]
    b = torch.randn(co_max, generator=g).to(device, dtype)
    beta = (torch.rand(192, generator=g) + 0.5).to(device)
    gamma = (torch.rand(192, 192, generator=g) * 0.1 / 192).to(device)
    return x, wt, b, beta, gamma


def _ours(L, x, wt, b, gdn=None, backend=None):
    if L["tr"]:
        return lambda: slim_conv_transpose2d(x, wt, b, stride=L["s"], padding=L["p"],
                                             output_padding=L["op"], out_width=L["co"],
                                             out_igdn=gdn, backend=backend)
    return lambda: slim_conv2d(x, wt, b, stride=L["s"], padding=L["p"], out_width=L["co"], gdn=gdn,
                               backend=backend)


def _plain(L, x, wt, b, contiguous=True):
    """The composition users write: F.conv on the (copied) slice."""
    ci, co = x.shape[1], L["co"]
    if L["tr"]:
        def f():
            w = wt[:ci, :co]
            return F.conv_transpose2d(x, w.contiguous() if contiguous else w, b[:co], stride=L["s"],
                                      padding=L["p"], output_padding=L["op"])
    else:
        def f():
            w = wt[:co, :ci]
            return F.conv2d(x, w.contiguous() if contiguous else w, b[:co], stride=L["s"],
                            padding=L["p"])
    return f


def _eager_gdn(f, beta, gamma, inverse):
    return lambda: gdn_op(f(), beta, gamma, inverse=inverse, backend="torch")


def cpu_section(n=1, h=512, w=768, widths=WIDTHS, rounds=5, layers=None, gdn=True) -> List[Dict]:
    rows = []
    for width in widths:
        for L in slimcae_layers(n, h, w, width):
            if layers and L["name"] not in layers:
                continue
            x, wt, b, beta, gamma = _make(L, "cpu")
            xcl = x.to(memory_format=torch.channels_last)
            with torch.no_grad():
                fns = {"plain_contig": _plain(L, x, wt, b, True),
                       "plain_view": _plain(L, x, wt, b, False),
                       # plain PyTorch as a user who converted model and input to channels_last
                       "plain_cl": _plain(L, xcl, wt.contiguous(memory_format=torch.channels_last),
                                          b, False),
                       "ours_nchw": _ours(L, x, wt, b),
                       "ours_cl": _ours(L, xcl, wt, b)}
                if gdn and L["gdn"]:
                    g = (beta, gamma)
                    fns["plain_contig+gdn"] = _eager_gdn(_plain(L, x, wt, b, True), beta, gamma,
                                                         L["tr"])
                    fns["ours_cl+gdn"] = _ours(L, xcl, wt, b, gdn=g)
                m32, m16 = {}, {}
                t32 = interleaved_medians(fns, rounds, mins=m32)

                def bf(f):
                    def g_():
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            return f()
                    return g_
                f16 = {k: bf(f) for k, f in fns.items()}
                # in a bf16 model every layer but the first gets bf16 activations (the previous
                # layer's autocast output): the same op without the per-call fp32->bf16 cast of x
                f16["ours_cl_bf16x"] = bf(_ours(L, xcl.to(torch.bfloat16), wt, b))
                t16 = interleaved_medians(f16, rounds, mins=m16)
            for dt, t, mn in (("fp32", t32, m32), ("bf16", t16, m16)):
                row = {"layer": L["name"], "width": width, "dtype": dt, "x": list(L["x"]),
                       **{f"{k}_ms": v for k, v in t.items()},
                       **{f"{k}_min_ms": v for k, v in mn.items()}}
                row["speedup_cl_vs_plain"] = t["plain_contig"] / t["ours_cl"]
                # against the fastest plain variant of this run (any layout, view or copy)
                row["speedup_cl_vs_plain_best"] = min(
                    t["plain_contig"], t["plain_view"], t["plain_cl"]) / t["ours_cl"]
                row["speedup_view_vs_contig"] = t["plain_contig"] / t["plain_view"]
                if "ours_cl+gdn" in t:
                    row["speedup_gdn_fused_vs_eager"] = t["plain_contig+gdn"] / t["ours_cl+gdn"]
                rows.append(row)
                print(f"{L['name']:5s} w={width:3d} {dt}: " + "  ".join(
                    f"{k}={v:7.2f}" for k, v in t.items()), flush=True)
    return rows


def transforms_section(widths=(192, 48), rounds=3, n=1, h=512, w=768) -> List[Dict]:
    """Whole SlimCAE encoder (3 conv + GDN) and decoder (3 IGDN + transposed conv) on one image,
    fp32 and bf16 autocast, ours (channels_last, fused passes) vs the plain composition (NCHW,
    contiguous slices, eager GDN) in the same run - the ANCHORS.md CPU-baseline workload."""
    rows = []
    for width in widths:
        Ls = slimcae_layers(n, h, w, width)
        mk = [_make(L, "cpu", seed=i) for i, L in enumerate(Ls)]
        x0 = mk[0][0]
        y0 = mk[3][0]

        def enc_plain():
            t = x0
            for L, (_, wt, b, beta, gamma) in zip(Ls[:3], mk[:3]):
                t = _eager_gdn(_plain(L, t, wt, b), beta, gamma, False)()
            return t

        def enc_ours():
            t = x0
            for L, (_, wt, b, beta, gamma) in zip(Ls[:3], mk[:3]):
                t = _ours(L, t, wt, b, gdn=(beta, gamma))()
            return t

        def dec_plain():
            t = y0
            for L, (_, wt, b, beta, gamma) in zip(Ls[3:], mk[3:]):
                t = gdn_op(t, beta, gamma, inverse=True, backend="torch")
                t = _plain(L, t, wt, b)()
            return t

        def dec_ours():
            t = y0
            for L, (_, wt, b, beta, gamma) in zip(Ls[3:], mk[3:]):
                t = slim_conv_transpose2d(t, wt, b, stride=L["s"], padding=L["p"],
                                          output_padding=L["op"], out_width=L["co"],
                                          igdn=(beta, gamma))
            return t

        fns = {"enc_plain": enc_plain, "enc_ours": enc_ours, "dec_plain": dec_plain,
               "dec_ours": dec_ours}
        with torch.no_grad():
            for dt in ("fp32", "bf16"):
                def wrap(f):
                    def g_():
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == "bf16"):
                            return f()
                    return g_
                mins = {}
                t = interleaved_medians({k: wrap(f) for k, f in fns.items()}, rounds, mins=mins)
                row = {"width": width, "dtype": dt, **{f"{k}_ms": v for k, v in t.items()},
                       **{f"{k}_min_ms": v for k, v in mins.items()},
                       "enc_speedup": t["enc_plain"] / t["enc_ours"],
                       "dec_speedup": t["dec_plain"] / t["dec_ours"]}
                rows.append(row)
                print(f"transforms w={width} {dt}: " + "  ".join(f"{k}={v:.1f}" for k, v in t.items()),
                      flush=True)
    return rows


def transforms_ratios(rows) -> List[Dict]:
    """Narrowest over widest width time of the whole encoder / decoder, per dtype."""
    out = []
    ws = sorted({r["width"] for r in rows})
    for dt in ("fp32", "bf16"):
        g = {r["width"]: r for r in rows if r["dtype"] == dt}
        if ws[0] in g and ws[-1] in g:
            out.append({"dtype": f"{dt} w{ws[0]}/w{ws[-1]}",
                        "enc_ratio": g[ws[0]]["enc_ours_ms"] / g[ws[-1]]["enc_ours_ms"],
                        "dec_ratio": g[ws[0]]["dec_ours_ms"] / g[ws[-1]]["dec_ours_ms"]})
    return out


def transforms_breakdown(widths=(192, 48), rounds=3, n=1, h=512, w=768) -> List[Dict]:
    """Where the transforms' time goes: every layer of our encoder / decoder timed alone, with
    its input as the chain produces it (fp32 NCHW image, then the previous layer's output: bf16
    under autocast), conv alone and conv + its GDN / IGDN; interleaved rounds, best of rounds
    (robust to a busy machine; the GDN share is a difference of two timings)."""
    res = {}
    for width in widths:
        Ls = slimcae_layers(n, h, w, width)
        mk = [_make(L, "cpu", seed=i) for i, L in enumerate(Ls)]
        for dt in ("fp32", "bf16"):
            fns = {}
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                 enabled=dt == "bf16"):
                t = mk[0][0]
                for L, (_, wt, b, beta, gamma) in zip(Ls[:3], mk[:3]):
                    fns[(L["name"], "conv")] = _ours(L, t, wt, b)
                    fns[(L["name"], "gdn")] = _ours(L, t, wt, b, gdn=(beta, gamma))
                    t = fns[(L["name"], "gdn")]()
                t = mk[3][0]
                for L, (_, wt, b, beta, gamma) in zip(Ls[3:], mk[3:]):
                    def f(L=L, t=t, wt=wt, b=b, g=None):
                        return lambda: slim_conv_transpose2d(
                            t, wt, b, stride=L["s"], padding=L["p"], output_padding=L["op"],
                            out_width=L["co"], igdn=g)
                    fns[(L["name"], "conv")] = f()
                    fns[(L["name"], "gdn")] = f(g=(beta, gamma))
                    t = fns[(L["name"], "gdn")]()

                def wrap(fn):
                    def g_():
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == "bf16"):
                            return fn()
                    return g_
                mins = {}
                interleaved_medians({k: wrap(v) for k, v in fns.items()}, rounds, mins=mins)
                tm = mins  # best of the rounds: the split is a difference of two timings
            for (name, part), v in tm.items():
                res[(name, dt, width, part)] = v
            print(f"breakdown w={width} {dt}: " + "  ".join(
                f"{k[0]}/{k[1]}={v:.2f}" for k, v in tm.items()), flush=True)
    rows = []
    ws = sorted(widths, reverse=True)
    for dt in ("fp32", "bf16"):
        for name in ("enc1", "enc2", "enc3", "dec1", "dec2", "dec3"):
            r = {"layer": name, "dtype": dt}
            for wd in ws:
                c, g = res[(name, dt, wd, "conv")], res[(name, dt, wd, "gdn")]
                r[f"conv_ms_w{wd}"], r[f"gdn_ms_w{wd}"] = c, g - c
            if len(ws) > 1:
                r["w_ratio"] = res[(name, dt, ws[-1], "gdn")] / res[(name, dt, ws[0], "gdn")]
            rows.append(r)
    return rows


def cpu_goals(rows) -> Dict:
    """Goal checks: w->w layers at the narrowest width under twice their work share of the widest
    (w=48 vs 192: work 1/16, goal 1/8); bf16 >= 1.8x fp32 at the widest width. bf16 is checked
    twice: ``bf16`` (fp32 x cast per call, as the per-layer table has always measured) and
    ``bf16x`` (bf16 activations, as every layer after the first sees them in a bf16 model)."""
    get = {(r["layer"], r["width"], r["dtype"]): r for r in rows}
    ws = sorted({r["width"] for r in rows})
    out = {}
    if not ws:
        return out
    hi, lo = ws[-1], ws[0]
    for name in ("enc2", "enc3", "dec1", "dec2"):
        for dt, col in (("fp32", "ours_cl"), ("bf16", "ours_cl"), ("bf16x", "ours_cl_bf16x")):
            a, z = get.get((name, hi, dt[:4])), get.get((name, lo, dt[:4]))
            if a and z and hi != lo and f"{col}_ms" in a:
                ratio = z[f"{col}_ms"] / a[f"{col}_ms"]
                rmin = z.get(f"{col}_min_ms", 0) / a.get(f"{col}_min_ms", 1)
                goal = 2 * (lo / hi) ** 2
                out[f"{name}_{dt}_w{lo}_over_w{hi}"] = {"ratio": ratio, "ratio_of_mins": rmin,
                                                        "goal": goal, "met": ratio < goal,
                                                        "met_on_mins": rmin < goal}
        a32, a16 = get.get((name, hi, "fp32")), get.get((name, hi, "bf16"))
        if a32 and a16:
            s_ = a32["ours_cl_ms"] / a16["ours_cl_ms"]
            smin = a32.get("ours_cl_min_ms", 0) / a16.get("ours_cl_min_ms", 1)
            out[f"{name}_bf16_speedup_w{hi}"] = {"ratio": s_, "ratio_of_mins": smin, "goal": 1.8,
                                                 "met": s_ >= 1.8, "met_on_mins": smin >= 1.8}
    return out


# ------------------------------------------------------------------------------ device section
def device_section(device="cuda", shapes=((1, 512, 768), (8, 256, 256)), widths=WIDTHS,
                   dtypes=(torch.float32, torch.bfloat16), compile_mode="max-autotune",
                   compile_backend="inductor", rounds=None, layers=None,
                   on_row: Callable = None) -> List[Dict]:
    """Ours (Triton) vs cuDNN vs torch.compile, and fused conv+GDN vs cuDNN + eager GDN.

    ``shapes``: (N, H, W) images; ``compile_mode`` None leaves the torch.compile column out (each
    layer, width and dtype is a fresh compile: minutes in max-autotune mode). ``on_row(rows)``:
    called with the rows so far after each one (the caller writes them: a cut run keeps them)."""
    on_cuda = device == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        from triton.testing import do_bench, do_bench_cudagraph

        def bench(fns):
            t = {k: do_bench(f, warmup=25, rep=100, return_mode="median") for k, f in fns.items()}
            # device time without the host: the calls replayed from a CUDA graph (a call of ours
            # costs >= ~0.08 ms from the host on the H200 machine, longer than most layers run)
            for k in ("ours", "cudnn"):
                try:
                    t[f"{k}_graph"] = do_bench_cudagraph(fns[k], rep=25, return_mode="median")
                except Exception as e:  # a call the graph cannot hold: say so, keep the row
                    print(f"  {k}: no CUDA-graph timing ({type(e).__name__}: {e})", flush=True)
            return t
        backend = "triton"
    else:
        def bench(fns):
            return interleaved_medians(fns, rounds or 1)
        from slimkernels.backend import interpreter_enabled
        backend = "triton" if interpreter_enabled() else "torch"
    rows = []
    for (n, h, w) in shapes:
        for width in widths:
            for L in slimcae_layers(n, h, w, width):
                if layers and L["name"] not in layers:
                    continue
                for dtype in dtypes:
                    x, wt, b, beta, gamma = _make(L, device, dtype, cl=True)
                    # channels_last weights (unit channel stride -> vectorized in-place weight
                    # loads in our kernel; cuDNN gets the same tensor)
                    wt = wt.to(memory_format=torch.channels_last)
                    with torch.no_grad():
                        plain = _plain(L, x, wt, b, contiguous=False)
                        fns = {"ours": _ours(L, x, wt, b, backend=backend), "cudnn": plain}
                        if compile_mode is not None:
                            fns["compile"] = torch.compile(
                                plain, mode=compile_mode if compile_backend == "inductor" else None,
                                backend=compile_backend, dynamic=False)
                        if L["gdn"]:
                            fns["ours_fused_gdn"] = _ours(L, x, wt, b, gdn=(beta, gamma),
                                                          backend=backend)
                            fns["cudnn+eager_gdn"] = _eager_gdn(plain, beta, gamma, L["tr"])
                        # correctness of ours against cuDNN before timing
                        ref, got = plain().float(), fns["ours"]().float()
                        err = ((got - ref).abs().max() / ref.abs().max()).item()
                        t = bench(fns)
                    c = layer_cost(L, 4 if dtype == torch.float32 else 2)
                    dt = "fp32" if dtype == torch.float32 else "bf16"
                    row = {"layer": L["name"], "width": width, "dtype": dt, "x": list(L["x"]),
                           "rel_err_vs_cudnn": err, **{f"{k}_ms": v for k, v in t.items()},
                           "speedup_vs_cudnn": t["cudnn"] / t["ours"],
                           **({"speedup_vs_cudnn_graph": t["cudnn_graph"] / t["ours_graph"]}
                              if "ours_graph" in t and "cudnn_graph" in t else {}),
                           **({"speedup_vs_compile": t["compile"] / t["ours"]}
                              if "compile" in t else {}),
                           "ours_tflops": c["flops"] / (t["ours"] * 1e-3) / 1e12}
                    if L["gdn"]:
                        row["speedup_fused_gdn"] = t["cudnn+eager_gdn"] / t["ours_fused_gdn"]
                    rows.append(row)
                    if on_row is not None:
                        on_row(rows)
                    print(f"{n}x3x{h}x{w} {L['name']} w={width} {dt}: " + "  ".join(
                        f"{k}={v:.4f}" for k, v in t.items()), flush=True)
    return rows


# ------------------------------------------------------------------------------------- output
def _md_table(rows, cols) -> str:
    head = "| " + " | ".join(cols) + " |\n| " + " | ".join("---" for _ in cols) + " |\n"
    body = ""
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        body += "| " + " | ".join(cells) + " |\n"
    return head + body


def _command_line() -> str:
    return (f"<!-- python bench/bench_conv.py {' '.join(sys.argv[1:])} "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) -->\n")


def write(out_dir, result, name="conv") -> None:
    """``<out_dir>/<name>.json`` and ``.md`` of ``result``, each replaced in one step (written
    again after every device row: a run cut by its time limit keeps complete files)."""
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_bytes(os.path.join(out_dir, f"{name}.json"),
                       json.dumps(result, indent=1).encode(), overwrite=True)
    md = [_command_line(), "# Width-sliced conv benchmark\n", f"Machine: {result['machine']}\n"]
    if result.get("static"):
        md.append("\n## Static: FLOPs, bytes, H100 floor (1x3x512x768 image; anchor rows: "
                  "ANCHORS.md cuDNN)\n\n")
        md.append(_md_table(result["static"], ["layer", "width", "dtype", "gflop", "mbytes",
                                               "h100_floor_us", "bound", "cudnn_ms",
                                               "cudnn_tflops", "cudnn_over_floor"]))
    if result.get("cpu"):
        md.append(f"\n## CPU ({result['cpu_threads']} threads), median ms over interleaved "
                  "rounds, no grad\n\n")
        cols = ["layer", "width", "dtype", "plain_contig_ms", "plain_view_ms", "plain_cl_ms",
                "ours_nchw_ms", "ours_cl_ms", "ours_cl_bf16x_ms", "plain_contig_min_ms",
                "ours_cl_min_ms", "speedup_cl_vs_plain", "speedup_cl_vs_plain_best",
                "speedup_view_vs_contig",
                "plain_contig+gdn_ms", "ours_cl+gdn_ms", "speedup_gdn_fused_vs_eager"]
        md.append(_md_table(result["cpu"], cols))
        md.append("\n`ours_cl_bf16x`: bf16 rows only, x already bf16 (what every layer after the "
                  "first gets in a bf16 model); the other bf16 columns cast an fp32 x per call.\n"
                  "\n### CPU goals\n\n")
        md.append(_md_table([{"check": k, **v} for k, v in result["cpu_goals"].items()],
                            ["check", "ratio", "ratio_of_mins", "goal", "met", "met_on_mins"]))
    if result.get("device"):
        md.append(f"\n## Device ({result.get('device_name')})\n\n")
        if result.get("device_partial"):
            md.append(f"PARTIAL: the run ended (its time limit) after these "
                      f"{len(result['device'])} rows.\n\n")
        md.append("`*_ms`: `triton.testing.do_bench` medians (the host's launch cost included "
                  "where it exceeds the kernel's); `*_graph_ms`: the same calls replayed from a "
                  "CUDA graph (`do_bench_cudagraph`): device time.\n\n")
        md.append(_md_table(result["device"], ["layer", "width", "dtype", "x", "ours_ms",
                                               "cudnn_ms", "ours_graph_ms", "cudnn_graph_ms",
                                               "speedup_vs_cudnn_graph", "compile_ms",
                                               "speedup_vs_cudnn", "speedup_vs_compile",
                                               "ours_fused_gdn_ms", "cudnn+eager_gdn_ms",
                                               "speedup_fused_gdn", "rel_err_vs_cudnn"]))
    else:
        md.append("\n## GPU\n\nOwed: no GPU in the session that produced this file. Run "
                  "`python bench/bench_conv.py --device` on an H100.\n")
    atomic_write_bytes(os.path.join(out_dir, f"{name}.md"), "".join(md).encode(),
                       overwrite=True)


def aot_section(out_dir) -> List[Dict]:
    """Compile every conv autotune config for sm_90 and sm_80 (tests/kernels/test_aot_conv.py's
    sweep, no GPU needed) and write conv_aot.{json,md}: registers, spills, shared memory,
    tensor-core and 128-bit load instruction counts; and the col2im gather's configs (registers,
    spills)."""
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "test_aot_conv", os.path.join(here, "..", "tests", "kernels", "test_aot_conv.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod._run(True)
    from slimkernels.kernels.aot import run_in_subprocess
    col2im = run_in_subprocess(mod._COL2IM_CODE, timeout=1200)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "conv_aot.json"), "w") as f:
        json.dump(rows + [dict(r, kernel="col2im_kernel") for r in col2im], f, indent=1)
    for r in rows:
        r["kernel"] = "conv" if r["kernel"].startswith("conv2d") else "convT"
        r["epi"] = ["none", "GDN", "IGDN"][r["epi"]]
        r["smem_KiB"] = r["shared"] / 1024
    md = ("# Conv kernels compiled ahead of time (bf16 channels_last unless fp32; 16-divisible "
          "widths)\n\n" + _md_table(rows, ["kernel", "arch", "dtype", "epi", "BLOCK_M", "BLOCK_N",
                                           "BLOCK_K", "num_warps", "num_stages", "n_regs",
                                           "n_spills", "spill_ops", "smem_KiB", "HGMMA", "HMMA",
                                           "tc_before_store", "LDG128", "LDGSTS128"]))
    md += ("\n## col2im_kernel (the gather of the output layer's GEMM + col2im route: 3 channels, "
           "9x9 / 4, fp32 column buffer)\n\n" +
           _md_table(col2im, ["arch", "y", "BLOCK_M", "num_warps", "n_regs", "n_spills",
                              "spill_ops", "local"]))
    with open(os.path.join(out_dir, "conv_aot.md"), "w") as f:
        f.write(md)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, every code path once")
    ap.add_argument("--device", action="store_true", help="run the CUDA section")
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--aot", action="store_true", help="only the AOT compile table (no GPU)")
    ap.add_argument("--transforms", action="store_true",
                    help="only whole encoder/decoder timings -> conv_transforms.{json,md}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--widths", type=str, default="")
    ap.add_argument("--layers", type=str, default="", help="comma list, e.g. enc2,enc3")
    ap.add_argument("--no-gdn", action="store_true", help="skip the conv+GDN columns")
    ap.add_argument("--breakdown", action="store_true",
                    help="with --transforms: also per-layer ms of the transforms")
    ap.add_argument("--name", type=str, default="",
                    help="output file stem (default conv / conv_transforms)")
    ap.add_argument("--out", type=str, default="")
    ap.add_argument("--compile-mode", default="max-autotune",
                    help="--device: torch.compile mode of the compile column (max-autotune, "
                         "default, reduce-overhead) or 'none' to leave the column out")
    ap.add_argument("--shapes", default="1x512x768,8x256x256",
                    help="--device: comma-separated NxHxW images (default 1x512x768,8x256x256)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    widths = [int(v) for v in a.widths.split(",")] if a.widths else WIDTHS
    here = os.path.dirname(os.path.abspath(__file__))
    if a.aot:
        return aot_section(a.out or os.path.join(here, "results", "cpu"))
    if a.transforms:
        rows = transforms_section(widths=widths if a.widths else (192, 48), rounds=a.rounds)
        brk = transforms_breakdown(widths=widths if a.widths else (192, 48),
                                   rounds=a.rounds) if a.breakdown else []
        out = a.out or os.path.join(here, "results", "cpu")
        name = a.name or "conv_transforms"
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump({"threads": torch.get_num_threads(), "rows": rows, "breakdown": brk}, f,
                      indent=1)
        md = (_command_line() + f"# SlimCAE transforms on CPU ({torch.get_num_threads()} threads, "
              "median ms)\n\n" + _md_table(rows, ["width", "dtype", "enc_plain_ms", "enc_ours_ms",
                                                  "enc_speedup", "dec_plain_ms", "dec_ours_ms",
                                                  "dec_speedup", "enc_ours_min_ms",
                                                  "dec_ours_min_ms"]))
        ws = sorted({r["width"] for r in rows})
        if len(ws) > 1:
            md += "\n" + _md_table(transforms_ratios(rows), ["dtype", "enc_ratio", "dec_ratio"])
        if brk:
            md += ("\n## Per layer (ours, inputs as in the chain, best of rounds; conv_ms "
                   "without GDN, gdn_ms = with - without; w_ratio: narrowest over widest, both "
                   "with GDN)\n\n" + _md_table(brk, [
                       "layer", "dtype", *[f"{c}_w{w}" for w in sorted({r['width'] for r in rows},
                                                                      reverse=True)
                                           for c in ("conv_ms", "gdn_ms")], "w_ratio"]))
        with open(os.path.join(out, f"{name}.md"), "w") as f:
            f.write(md)
        return rows
    res = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
           "cpu_threads": torch.get_num_threads(), "static": static_table()}
    if a.dry_run:
        widths = [int(v) for v in a.widths.split(",")] if a.widths else [8, 5]
        res["cpu"] = cpu_section(1, 32, 48, widths, rounds=1)
        res["cpu_goals"] = cpu_goals(res["cpu"])
        out = a.out or os.path.join("/tmp", "bench_conv_dry")
        res["device_name"] = "cpu dry run"
        res["device"] = device_section(
            "cpu", shapes=((1, 32, 32),), widths=widths, dtypes=(torch.float32,),
            compile_backend="eager", rounds=1,
            on_row=lambda rows: write(out, {**res, "device": rows, "device_partial": True}))
        write(out, res)
        return res
    if not a.no_cpu:
        res["cpu"] = cpu_section(widths=widths, rounds=a.rounds,
                                 layers=a.layers.split(",") if a.layers else None,
                                 gdn=not a.no_gdn)
        res["cpu_goals"] = cpu_goals(res["cpu"])
    out = a.out or os.path.join(here, "results", "cpu")
    if a.device:
        if not torch.cuda.is_available():
            raise SystemExit("--device needs a CUDA GPU")
        try:
            shapes = tuple(tuple(int(v) for v in sh.split("x")) for sh in a.shapes.split(","))
        except ValueError:
            shapes = ()
        if not shapes or any(len(sh) != 3 or min(sh) < 1 for sh in shapes):
            raise SystemExit(f"--shapes takes comma-separated NxHxW, got {a.shapes!r}")
        out = a.out or os.path.join(here, "results", "gpu")
        res["device_name"] = torch.cuda.get_device_name()
        res["device"] = device_section(
            "cuda", shapes=shapes, widths=widths,
            compile_mode=None if a.compile_mode == "none" else a.compile_mode,
            layers=a.layers.split(",") if a.layers else None,
            on_row=lambda rows: write(out, {**res, "device": rows, "device_partial": True},
                                      a.name or "conv"))
    write(out, res, a.name or "conv")
    return res


if __name__ == "__main__":
    main()
