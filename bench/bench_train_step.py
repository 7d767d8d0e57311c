"""Training steps of SlimCAE on CPU with the fp32 Winograd training convs on and off, timed
interleaved (a new seeded order every round) in one process.

    python bench/bench_train_step.py --crop 128 --rounds 10
    python bench/bench_train_step.py --crop 256 --rounds 5

Prints one Markdown row per configuration: median and best seconds per step, and the ratio of
"off" to "on" (> 1: the Winograd convs make a step faster). The model is the bundled one (or
``--model``); the batch is a fixed random crop batch of ``../shared/data/train`` (or ``--data``),
or random pixels with ``--random`` (tests). ``slimkernels.ops.conv.CPU_WINOGRAD_TRAIN`` switches
the path; it runs only where :func:`slimkernels.ops.conv._use_winograd_grad` allows (fp32, AVX2
without AVX-512, wide layers with enough tiles).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv import interleaved_medians  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=os.path.join(ROOT, "slimkernels", "pretrained",
                                                    "slimcae.pt"))
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "train"))
    ap.add_argument("--random", action="store_true", help="random pixels, a fresh model (tests)")
    ap.add_argument("--widths", default=None, help="model widths with --random, e.g. 16,8")
    a = ap.parse_args(argv)
    from slimkernels.ops import conv as C
    from slimkernels.training.trainer import TrainConfig, Trainer
    if a.threads:
        torch.set_num_threads(a.threads)
    kw = dict(out=os.path.join("/tmp", "bench_train_step"), steps=10 ** 9, threads=a.threads,
              bf16=False, progress=False, val_every=10 ** 9, batch=a.batch)
    if a.random:
        if a.widths:
            kw["widths"] = [int(w) for w in a.widths.split(",")]
            kw["lambdas"] = [0.01] * len(kw["widths"])
    else:
        kw.update(init=a.model, data=a.data)
    tr = Trainer(TrainConfig(**kw), log=lambda *_: None)
    if a.random:
        x = torch.rand(a.batch, 3, a.crop, a.crop, generator=torch.Generator().manual_seed(0))
    else:
        tr.load_data()
        x = tr.sampler.sample(a.batch, a.crop)
    old = C.CPU_WINOGRAD_TRAIN

    def step(on):
        def run():
            C.CPU_WINOGRAD_TRAIN = on
            tr.train_step(x)
        return run
    try:
        best = {}
        t = interleaved_medians({"on": step(True), "off": step(False)}, a.rounds, mins=best)
    finally:
        C.CPU_WINOGRAD_TRAIN = old
    print(f"training step, batch {a.batch}, crop {a.crop}, {torch.get_num_threads()} threads, "
          f"fp32, {a.rounds} interleaved rounds ({time.strftime('%Y-%m-%d %H:%M')})")
    print("| Winograd training convs | median s/step | best s/step |")
    print("|---|---|---|")
    for k in ("on", "off"):
        print(f"| {k} | {t[k] / 1e3:.3f} | {best[k] / 1e3:.3f} |")
    print(f"\noff / on: {t['off'] / t['on']:.2f}x (median), {best['off'] / best['on']:.2f}x (best)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
