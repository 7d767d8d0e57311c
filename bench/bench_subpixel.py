#!/usr/bin/env python
"""A/B of the CPU sub-pixel path for transposed convs with few output channels.

Times, in one run and interleaved (medians): SlimCAE's 9x9/4 image layer as
``F.conv_transpose2d`` vs ``slimkernels.ops.conv.conv_transpose2d_subpixel`` (the autograd-capable
function), the op without gradient (prepacked cached weights) with the sub-pixel path off and on,
and the whole ``decompress`` of a Kodak image with the sub-pixel path off and on.

    python bench/bench_subpixel.py [--threads 2] [--repeats 5] [--model PATH] [--image PATH]
"""
import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import slimkernels.ops.conv as C

HERE = os.path.dirname(os.path.abspath(__file__))
KODIM01 = os.path.join(HERE, "..", "..", "shared", "data", "kodak", "kodim01.png")


def _ab(fns, repeats):
    for f in fns.values():
        f()                                           # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


@torch.no_grad()  # not torch.set_grad_enabled(False): tests call main() inside the test process
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default=None)
    p.add_argument("--image", default=KODIM01)
    p.add_argument("--quick", action="store_true", help="tiny shapes (tests)")
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        return _run(a)
    finally:
        torch.set_num_threads(threads)


def _run(a):
    H, W = (8, 12) if a.quick else (128, 192)
    print("| layer | dtype | conv_transpose2d ms | sub-pixel ms | speed-up "
          "| op, prepacked direct ms | op, prepacked sub-pixel ms | speed-up |\n"
          "|---|---|---|---|---|---|---|---|")
    old = C.SUBPIXEL_MAX_PHASE_CHANNELS
    try:
        for ci in (192, 48):
            for dt in (torch.float32, torch.bfloat16):
                x = torch.randn(1, ci, H, W).to(dt).contiguous(memory_format=torch.channels_last)
                w = torch.randn(ci, 3, 9, 9).to(dt)
                b = torch.randn(3).to(dt)

                def op(v):
                    C.SUBPIXEL_MAX_PHASE_CHANNELS = v   # the op without grad: cached weights
                    return C.slim_conv_transpose2d(x, w, b, stride=4, padding=4, output_padding=3)
                r = _ab({"direct": lambda: F.conv_transpose2d(x, w, b, stride=4, padding=4,
                                                              output_padding=3),
                         "sub": lambda: C.conv_transpose2d_subpixel(x, w, b, 4, 4, 3),
                         "op_direct": lambda: op(0), "op_sub": lambda: op(64)}, a.repeats)
                print(f"| {ci}->3 9x9/4 | {str(dt)[6:]} | {r['direct']:.1f} | {r['sub']:.1f} | "
                      f"{r['direct'] / r['sub']:.2f}x | {r['op_direct']:.1f} | {r['op_sub']:.1f} | "
                      f"{r['op_direct'] / r['op_sub']:.2f}x |")
    finally:
        C.SUBPIXEL_MAX_PHASE_CHANNELS = old
    if a.quick:
        return 0
    from slimkernels.io import read_image
    from slimkernels.pretrained import load_model
    model = load_model(a.model)
    x, _ = read_image(a.image)
    old = C.SUBPIXEL_MAX_PHASE_CHANNELS
    print("\n| decompress | width | direct ms | sub-pixel ms | speed-up |\n|---|---|---|---|---|")
    try:
        for prec in ("fp32", "bf16"):
            for wd in (model.widths[0], model.widths[-1]):
                data = model.compress(x, wd, precision=prec)

                def run(v):
                    C.SUBPIXEL_MAX_PHASE_CHANNELS = v
                    model.decompress(data, precision=prec)
                r = _ab({"direct": lambda: run(0), "sub": lambda: run(64)}, a.repeats)
                print(f"| {prec} | {wd} | {r['direct']:.1f} | {r['sub']:.1f} | "
                      f"{r['direct'] / r['sub']:.2f}x |")
    finally:
        C.SUBPIXEL_MAX_PHASE_CHANNELS = old
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
