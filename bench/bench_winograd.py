#!/usr/bin/env python
"""A/B of the fp32 Winograd F(4x4, 3x3) CPU path against oneDNN's prepacked direct convs.

For each SlimCAE layer at a Kodak image's sizes (768x512) and each width: the no-grad conv op as
it runs with ``CPU_WINOGRAD`` off (oneDNN prepacked) and the Winograd functions on cached
transformed weights (``slimkernels.ops.winograd``), interleaved, medians; prints a Markdown table.

    python bench/bench_winograd.py [--threads 2] [--repeats 7] [--widths 192,144,96,72,48]
"""
import argparse
import statistics
import time

import torch

import slimkernels.ops.conv as C
from slimkernels.ops import winograd as Wg

# name, transposed, C_in (None: width), C_out (None: width), H, W of the input, k, s, p, op
LAYERS = [("enc1 9x9/4", False, 3, None, 512, 768, 9, 4, 4, 0),
          ("enc2 5x5/2", False, None, None, 128, 192, 5, 2, 2, 0),
          ("enc3 5x5/2", False, None, None, 64, 96, 5, 2, 2, 0),
          ("dec1 5x5/2T", True, None, None, 32, 48, 5, 2, 2, 1),
          ("dec2 5x5/2T", True, None, None, 64, 96, 5, 2, 2, 1),
          ("dec3 9x9/4T", True, None, 3, 128, 192, 9, 4, 4, 3)]


def _median_ms(fns, repeats):
    for f in fns:
        f()
        f()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t)
    return [1e3 * statistics.median(t) for t in times]


def _layer_fns(layer, width, scale):
    name, transposed, ci, co, H, W, k, s, p, op = layer
    ci, co = ci or width, co or width
    H, W = max(1, H // scale), max(1, W // scale)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, ci, H, W, generator=g).contiguous(memory_format=torch.channels_last)
    if transposed:
        w = torch.randn(ci, co, k, k, generator=g) / (ci * k * k) ** 0.5
        b = torch.randn(co, generator=g)
        U = Wg.winograd_conv_transpose2d_weight(w, s, p)

        def onednn():
            return C.slim_conv_transpose2d(x, w, b, stride=s, padding=p, output_padding=op)

        def wino():
            return Wg.conv_transpose2d_winograd(x, U, b, k, s, p, op)
    else:
        w = torch.randn(co, ci, k, k, generator=g) / (ci * k * k) ** 0.5
        b = torch.randn(co, generator=g)
        U = Wg.winograd_conv2d_weight(w, s)

        def onednn():
            return C.slim_conv2d(x, w, b, stride=s, padding=p)

        def wino():
            return Wg.conv2d_winograd(x, U, b, k, s, p)
    return name, onednn, wino


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--widths", default="192,144,96,72,48")
    ap.add_argument("--scale", type=int, default=1, help="divide the image sizes (quick runs)")
    a = ap.parse_args(argv)
    if not Wg.winograd_available():
        print("Winograd transforms not available here (no AVX2 + FMA, or no _cpu_kernels)")
        return 1
    torch.set_num_threads(a.threads)
    print(f"threads {a.threads}, medians of {a.repeats}, image /{a.scale}\n")
    print("| layer | width | oneDNN ms | Winograd ms | speed-up |\n|---|---|---|---|---|")
    wino_was = C.CPU_WINOGRAD
    C.CPU_WINOGRAD = False
    try:
        with torch.no_grad():
            for width in (int(v) for v in a.widths.split(",")):
                for layer in LAYERS:
                    name, f0, f1 = _layer_fns(layer, width, a.scale)
                    t0, t1 = _median_ms([f0, f1], a.repeats)
                    print(f"| {name} | {width} | {t0:.2f} | {t1:.2f} | {t0 / t1:.2f}x |",
                          flush=True)
    finally:
        C.CPU_WINOGRAD = wino_was
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
