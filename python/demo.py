#!/usr/bin/env python
"""The main job in one command: compress and decompress the bundled sample image with the
bundled SlimCAE at every width, and print a table (rate, quality, time).

    python python/demo.py [--image PATH] [--model PATH] [--precision auto|fp32|bf16] [--out DIR]
                          [--force]

Writes <image name>_w<width>.slim and .png per width into --out (default: a new temporary
folder); existing files there are not replaced without --force.
"""
import argparse
import math
import statistics
import os
import sys
import tempfile
import time

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels.allocator import tune_from_env  # noqa: E402
from slimkernels.cli import env_report  # noqa: E402
from slimkernels.io import atomic_write_bytes, image_to_png_bytes, read_image  # noqa: E402
from slimkernels.pretrained import bundled_model_path, load_model  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__import__("slimkernels").__file__)),
                      "assets", "sample.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--image", default=SAMPLE)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--out", default=None, help="folder for the .slim files and decoded PNGs "
                                                "(default: a new temporary folder)")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace the files of an earlier run in --out")
    args = p.parse_args(argv)
    tune_from_env()   # glibc thresholds for repeated calls (slimkernels/allocator.py)
    if args.model is None and bundled_model_path() is None:
        print(env_report())
        print("\nNo bundled pretrained model in this install yet: the demo needs one "
              "(train with python/train.py, then pass --model).")
        return 0
    try:
        model = load_model(args.model)
        x, note = read_image(args.image)
    except (ValueError, FileNotFoundError) as e:
        p.exit(1, f"{p.prog}: error: {e}\n")
    if note:
        print(f"{args.image}: {note}")
    H, W = x.shape[-2:]
    name = os.path.splitext(os.path.basename(args.image))[0]
    if args.out is not None:   # (checked before any work: no half-replaced set of files)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            p.exit(1, f"{p.prog}: error: --out {args.out} is a file: give a folder\n")
        taken = [f for w in model.widths for f in (f"{name}_w{w}.slim", f"{name}_w{w}.png")
                 if os.path.lexists(os.path.join(args.out, f))]
        if taken and not args.force:
            p.exit(1, f"{p.prog}: error: {os.path.join(args.out, taken[0])} exists (and "
                      f"{len(taken) - 1} more of this demo's files): not replacing them "
                      f"(use --force, or another --out)\n")
        odd = [f for f in taken if not os.path.isfile(os.path.join(args.out, f))]
        if odd:   # (--force wrote the first widths' files, then failed on it: a traceback)
            p.exit(1, f"{p.prog}: error: {os.path.join(args.out, odd[0])} is not a regular "
                      f"file (a folder, a FIFO, a link leading nowhere): --force does not "
                      f"replace those; remove it or use another --out\n")
    out = args.out or tempfile.mkdtemp(prefix="slimkernels-demo-")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:   # (a file on the path, no permission: a traceback before)
        p.exit(1, f"{p.prog}: error: --out {out} cannot be made ({e.strerror})\n")
    if not os.access(out, os.W_OK | os.X_OK):   # (a PermissionError traceback after the work)
        p.exit(1, f"{p.prog}: error: --out {out} is not writable\n")
    print(f"image {args.image} ({W}x{H}), model {args.model or bundled_model_path()}, "
          f"precision {args.precision}, outputs in {out}\n")
    print(f"{'width':>5} {'bytes':>7} {'bpp':>7} {'PSNR dB':>8} {'encode ms':>10} "
          f"{'decode ms':>10}")
    ref = x.mul(255).round()
    files = []   # written after the work: (path, bytes)
    for w in model.widths:
        # untimed: the first call at a width prepares (casts, packs, caches) its weights, the
        # second records its CPU replay (slimkernels.cpu_replay, where the transform is all
        # compiled kernels), the third checks the replay against the eager call
        for _ in range(3):
            model.decompress(model.compress(x, w, precision=args.precision),
                             precision=args.precision)
        enc, dec = [], []
        for _ in range(5):                                          # median of 5 calls
            t0 = time.perf_counter()
            data = model.compress(x, w, precision=args.precision)
            t1 = time.perf_counter()
            xh = model.decompress(data, precision=args.precision)
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
        mse = float(((xh.mul(255).round() - ref) ** 2).mean())
        psnr = 10 * math.log10(255 ** 2 / mse) if mse > 0 else float("inf")
        stem = os.path.join(out, f"{name}_w{w}")
        files += [(stem + ".slim", data), (stem + ".png", image_to_png_bytes(xh))]
        print(f"{w:>5} {len(data):>7} {8 * len(data) / (H * W):>7.3f} {psnr:>8.2f} "
              f"{statistics.median(enc) * 1e3:>10.1f} {statistics.median(dec) * 1e3:>10.1f}")
    for path, data in files:
        try:   # (a folder that refuses the write all the same, e.g. a read-only file system)
            atomic_write_bytes(path, data, overwrite=args.force)
        except OSError as e:
            p.exit(1, f"{p.prog}: error: {path}: {e.strerror or e}\n")
    print(f"\nEvery width decoded from its own .slim file; see {out}.")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
