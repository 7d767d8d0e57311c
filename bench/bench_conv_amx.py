#!/usr/bin/env python
"""A/B of the CPU direct AMX-BF16 conv (``slimkernels.ops.conv.CPU_AMX_CONV``) against oneDNN's
prepacked path, per SlimCAE w -> w layer and width, no grad, bf16 x, in one process (the two
paths alternate; best of ``--reps`` medians). The size limits are lifted so every layer is
compared, which is how ``AMX_CONV_MAX_CHANNELS`` / ``AMX_CONV_MAX_PIXELS`` and the rule for
channel counts that are not multiples of 32 (``AMX_CONV_MISALIGNED_MAX_CHANNELS``) were chosen.

    python bench/bench_conv_amx.py --threads 1 --widths 48,64,72,96

``--gdn``: the GDN / IGDN that follows each layer in the direct kernel's epilogue
(``CPU_AMX_CONV_GDN``) against the direct conv then the GDN op, the same way (its channel and
thread limits lifted), which is how ``AMX_CONV_GDN_MAX_CHANNELS`` and ``AMX_CONV_GDN_MIN_THREADS``
were chosen:

    python bench/bench_conv_amx.py --gdn --threads 2 --widths 48,72,96

``--windows``: the image layer (enc1, 3 -> w, 9x9/4 on a 768x512 image) on the direct kernel
through its window layout (``CPU_AMX_CONV_WINDOWS``) against the padded copy (the image rule's
channel limit lifted):

    python bench/bench_conv_amx.py --windows --threads 2 --widths 48,72,96,144,192

``--pad-channels``: the transposed layers (dec1, dec2) on the direct kernel with the input
channels of its padded copy rounded up to a multiple of 32 (``CPU_AMX_CONV_PAD_CHANNELS``, where
``_amx_padded_channels`` takes it) against the plain copy:

    python bench/bench_conv_amx.py --pad-channels --threads 2 --widths 72,144

``--in-place``: the w -> w layers and the output layer (dec3, w -> 3, 9x9/4 transposed, onto
the image) on the direct kernel with the work groups inside x reading it in place
(``CPU_AMX_CONV_IN_PLACE``) against every group reading the padded copy:

    python bench/bench_conv_amx.py --in-place --threads 2 --widths 48,72,96
"""
import argparse
import time

import numpy as np
import torch

import slimkernels.ops.conv as oc
from slimkernels import ops

LAYERS = [("enc2", (128, 192), False), ("enc3", (64, 96), False), ("dec1", (32, 48), True),
          ("dec2", (64, 96), True)]
IMAGE_LAYERS = [("enc1", (512, 768), False)]     # 3 -> w, 9x9/4, padding 4
OUTPUT_LAYERS = [("dec3", (128, 192), True)]     # w -> 3, 9x9/4 transposed, padding 4


def _median_us(f, n):
    for _ in range(max(3, n // 8)):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


def _ab(widths, threads, n, reps, switch, lifted, gdn, layers=LAYERS):
    """``{layer, width, off_us, on_us}`` per SlimCAE layer of ``layers`` (``LAYERS``: the w -> w
    5x5/2 ones; ``IMAGE_LAYERS``: enc1; ``OUTPUT_LAYERS``: dec3) and width: the layer (with the GDN / IGDN that follows
    it when ``gdn``) timed with the module switch ``switch`` off and on, alternating, best of
    ``reps`` medians; the constants in ``lifted`` (name -> value) set meanwhile, and everything
    restored after."""
    torch.set_num_threads(threads)
    names = (switch,) + tuple(lifted)
    saved = tuple(getattr(oc, k) for k in names)
    for k, v in lifted.items():
        setattr(oc, k, v)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(192, 192, 5, 5, generator=g) * 0.05
    W1 = torch.randn(192, 3, 9, 9, generator=g) * 0.05             # enc1's
    W3 = torch.randn(192, 3, 9, 9, generator=g) * 0.05             # dec3's
    b = torch.randn(192, generator=g)
    beta = torch.rand(192, generator=g) + 0.5
    gamma = torch.rand(192, 192, generator=g) * 0.1
    conv_kw = {"gdn": (beta, gamma)} if gdn else {}             # GDN after the conv
    tconv_kw = {"out_igdn": (beta, gamma)} if gdn else {}       # IGDN after the transposed one
    rows = []
    try:
        for w in widths:
            for name, hw, transposed in layers:
                image = name == "enc1"
                x = torch.randn(1, 3 if image else w, *hw, generator=g).to(torch.bfloat16)
                x = x.contiguous(memory_format=torch.channels_last)
                if image:
                    def f():
                        return ops.slim_conv2d(x, W1, b, stride=4, padding=4, out_width=w,
                                               **conv_kw)
                elif name == "dec3":
                    def f():
                        return ops.slim_conv_transpose2d(x, W3, b[:3], stride=4, padding=4,
                                                         output_padding=3)
                elif transposed:
                    def f():
                        return ops.slim_conv_transpose2d(x, W, b, stride=2, padding=2,
                                                         output_padding=1, out_width=w,
                                                         **tconv_kw)
                else:
                    def f():
                        return ops.slim_conv2d(x, W, b, stride=2, padding=2, out_width=w,
                                               **conv_kw)
                t = {False: [], True: []}
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    for _ in range(reps):
                        for on in (False, True):
                            setattr(oc, switch, on)
                            t[on].append(_median_us(f, n))
                rows.append({"layer": name, "width": w, "off_us": min(t[False]),
                             "on_us": min(t[True])})
    finally:
        for k, v in zip(names, saved):
            setattr(oc, k, v)
    return rows


_LIFT_SIZES = {"AMX_CONV_MAX_CHANNELS": 1 << 20, "AMX_CONV_MAX_PIXELS": 1 << 40}

#: The comparisons: the switch flipped, the limits lifted meanwhile, with the GDN after each
#: layer, the layers, whether it can run here, the table's first column, and the row keys and
#: column titles of the switch off / on.
COMPARISONS = {
    "onednn": dict(switch="CPU_AMX_CONV", lifted=_LIFT_SIZES, gdn=False, layers=LAYERS,
                   available=lambda: oc._amx_conv_kernels() is not None, head="layer",
                   off=("onednn_us", "oneDNN us"), on=("amx_us", "direct AMX us")),
    "gdn": dict(switch="CPU_AMX_CONV_GDN",
                lifted={"AMX_CONV_GDN_MAX_CHANNELS": 1 << 20, "AMX_CONV_GDN_MIN_THREADS": 1,
                        **_LIFT_SIZES},
                gdn=True, layers=LAYERS, available=lambda: oc.amx_epilogue_gdn_available(),
                head="layer + GDN", off=("two_pass_us", "conv, then GDN op us"),
                on=("fused_us", "GDN in the epilogue us")),
    "windows": dict(switch="CPU_AMX_CONV_WINDOWS", lifted={"AMX_CONV_IMAGE_MAX_CHANNELS": 1 << 20},
                    gdn=False, layers=IMAGE_LAYERS,
                    available=lambda: oc._amx_conv_kernels() is not None, head="layer",
                    off=("padded_us", "padded copy us"), on=("windows_us", "window layout us")),
    "pad_channels": dict(switch="CPU_AMX_CONV_PAD_CHANNELS", lifted=_LIFT_SIZES, gdn=False,
                         layers=[t for t in LAYERS if t[2]],
                         available=lambda: oc._amx_conv_kernels() is not None, head="layer",
                         off=("plain_us", "plain copy us"), on=("padded_us", "padded channels us")),
    "in_place": dict(switch="CPU_AMX_CONV_IN_PLACE",
                     lifted={**_LIFT_SIZES, "AMX_CONV_IMAGE_T_MAX_CHANNELS": 1 << 20}, gdn=False,
                     layers=LAYERS + OUTPUT_LAYERS,
                     available=lambda: oc._amx_conv_kernels() is not None, head="layer",
                     off=("copy_us", "padded copy us"), on=("in_place_us", "x in place us")),
}


def compare(kind, widths, threads=1, n=60, reps=2):
    """Rows ``{layer, width, <off key>, <on key>, speedup}`` of comparison ``kind`` (see
    ``COMPARISONS``; ``[]`` where its kernels are not there)."""
    c = COMPARISONS[kind]
    if not c["available"]():
        return []
    rows = _ab(widths, threads, n, reps, c["switch"], c["lifted"], c["gdn"], c["layers"])
    return [{"layer": r["layer"], "width": r["width"], c["off"][0]: r["off_us"],
             c["on"][0]: r["on_us"], "speedup": r["off_us"] / r["on_us"]} for r in rows]


def run(widths, threads=1, n=60, reps=2):
    """Rows ``{layer, width, onednn_us, amx_us, speedup}`` (``[]`` without the AMX kernel)."""
    return compare("onednn", widths, threads, n, reps)


def run_gdn(widths, threads=1, n=60, reps=2):
    """Rows ``{layer, width, two_pass_us, fused_us, speedup}``: each layer with the GDN (IGDN
    after the transposed ones) that follows it in SlimCAE, on the direct AMX kernel, the GDN in
    its epilogue or as the GDN op after it (``[]`` without the AMX kernels)."""
    return compare("gdn", widths, threads, n, reps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--widths", default="48,64,72,96")
    ap.add_argument("--n", type=int, default=60, help="timed calls per median")
    which = ap.add_mutually_exclusive_group()   # the comparison (default: against oneDNN)
    for flag, kind, help_ in [
            ("--gdn", "gdn", "the GDN in the epilogue against the conv then the GDN op"),
            ("--windows", "windows", "enc1 through the window layout against the padded copy"),
            ("--pad-channels", "pad_channels", "transposed layers with the copy's channels "
             "padded to a multiple of 32 against the plain copy"),
            ("--in-place", "in_place", "the groups inside x reading it in place against the "
             "padded copy")]:
        which.add_argument(flag, dest="kind", action="store_const", const=kind, help=help_)
    ap.set_defaults(kind="onednn")
    a = ap.parse_args(argv)
    widths = [int(v) for v in a.widths.split(",")]
    rows = compare(a.kind, widths, a.threads, a.n)
    if not rows:
        print("no AMX-BF16 here (or slimkernels._cpu_kernels not built): nothing to compare")
        return 0
    c = COMPARISONS[a.kind]
    (off, off_title), (on, on_title) = c["off"], c["on"]
    print(f"| {c['head']} | width | {off_title} | {on_title} | speedup |  ({a.threads} thread(s))")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['layer']} | {r['width']} | {r[off]:.1f} | {r[on]:.1f} | {r['speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
