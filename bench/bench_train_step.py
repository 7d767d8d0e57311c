"""Training steps of SlimCAE on CPU: ours with the fp32 Winograd training convs on and off, and the
same model written in plain PyTorch, timed interleaved (a new seeded order every round) in one
process.

    python bench/bench_train_step.py --crop 128 --rounds 10
    python bench/bench_train_step.py --crop 256 --rounds 5

Prints one Markdown row per configuration: median and best seconds per step, and the ratios of
"off" and "plain" to "on" (> 1: "on" is faster). "plain" is :class:`plain_slimcae.PlainSlimCAE`
(``F.conv2d`` on sliced weights, eager GDN, NCHW, fp32) with the same entropy model, loss,
gradient clipping, Adam, auxiliary step and weight average as the trainer's step
(``--no-plain`` leaves it out). The model is the bundled one (or
``--model``); the batch is a fixed random crop batch of ``../shared/data/train`` (or ``--data``),
or random pixels with ``--random`` (tests). ``slimkernels.ops.conv.CPU_WINOGRAD_TRAIN`` switches
the path; it runs only where :func:`slimkernels.ops.conv._use_winograd_grad` allows (fp32; AVX2
CPUs, and AVX-512 ones with the AVX-512 batched GEMM; wide layers with enough tiles).
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
    # (the first paragraph: its first line alone stops mid-sentence)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=os.path.join(ROOT, "slimkernels", "pretrained",
                                                    "slimcae.pt"))
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "train"))
    ap.add_argument("--random", action="store_true", help="random pixels, a fresh model (tests)")
    ap.add_argument("--widths", default=None, help="model widths with --random, e.g. 16,8")
    ap.add_argument("--no-plain", action="store_true", help="leave out the plain PyTorch step")
    ap.add_argument("--no-tune-malloc", action="store_true",
                    help="leave glibc's allocator thresholds alone (the trainer's CLI sets them, "
                         "slimkernels.allocator.tune_malloc; they apply to every step here)")
    a = ap.parse_args(argv)
    # (--rounds 0 was a ValueError from the medians after the steps were set up)
    for name, v in (("--rounds", a.rounds), ("--batch", a.batch), ("--crop", a.crop)):
        if v < 1:
            ap.error(f"{name} must be at least 1, got {v}")
    tuned = False
    if not a.no_tune_malloc:
        from slimkernels.allocator import tune_malloc
        tuned = tune_malloc()
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
    fns = {"on": step(True), "off": step(False)}
    if not a.no_plain:
        fns["plain"] = plain_step(tr, x)
    try:
        best = {}
        t = interleaved_medians(fns, a.rounds, mins=best)
    finally:
        C.CPU_WINOGRAD_TRAIN = old
    print(f"training step, batch {a.batch}, crop {a.crop}, {torch.get_num_threads()} threads, "
          f"fp32, {a.rounds} interleaved rounds, glibc malloc {'tuned' if tuned else 'untuned'} "
          f"({time.strftime('%Y-%m-%d %H:%M')})")
    names = {"on": "slimkernels (Winograd training convs on)", "off": "slimkernels (off)",
             "plain": "plain PyTorch"}
    print("| step | median s/step | best s/step |")
    print("|---|---|---|")
    for k in fns:
        print(f"| {names[k]} | {t[k] / 1e3:.3f} | {best[k] / 1e3:.3f} |")
    print()
    for k in fns:
        if k != "on":
            print(f"{k} / on: {t[k] / t['on']:.2f}x (median), {best[k] / best['on']:.2f}x (best)")
    return 0


def plain_step(tr, x):
    """A training step of the trainer's model written in plain PyTorch: the same loss
    (``rd_loss``), clipping, Adam (the trainer's ``make_adam``), auxiliary step and weight
    average, on :class:`plain_slimcae.PlainSlimCAE` transforms holding copies of the weights and
    the trainer's own entropy model (so that both steps code with the same model)."""
    import math
    import torch.nn as nn
    from plain_slimcae import PlainSlimCAE
    from slimkernels.training.trainer import make_adam, rd_loss

    plain = PlainSlimCAE.from_model(tr.model)
    eb = tr.model.entropy_bottleneck

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.plain, self.eb = plain, eb

        def forward(self, xx, w):
            y = plain.encode(xx, w)
            y_hat, lik = eb(y)
            return {"x_hat": plain.decode(y_hat), "likelihoods": {"y": lik}}

    m = Model().train()
    cfg = tr.cfg
    params = [p for n, p in m.named_parameters() if not n.endswith("quantiles")]
    opt = make_adam(params, cfg.lr)   # the trainer's Adam (fused): the transforms are compared
    aux_opt = make_adam([p for n, p in m.named_parameters() if n.endswith("quantiles")],
                        cfg.aux_lr)
    avg = [p.detach().clone() for p in params]

    def run():
        opt.zero_grad(set_to_none=True)
        loss, _ = rd_loss(m, x, cfg.widths, tr.lambdas, False)
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        aux_opt.zero_grad(set_to_none=True)
        aux = tr.model.aux_loss()
        aux.backward()
        aux_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(avg, [p.detach() for p in params], 1.0 - cfg.ema)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError("plain step: the loss is not finite")
    return run


if __name__ == "__main__":
    sys.exit(main())
