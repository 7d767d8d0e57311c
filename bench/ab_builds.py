#!/usr/bin/env python
"""Interleaved A/B of the Winograd transforms of two builds of ``slimkernels._cpu_kernels``.

This VM's memory speed drifts by up to 2x within minutes, so timings of two builds taken one after
the other mislead; this loads another build's extension file next to the installed one and times
both in the same loop (rounds alternate between them; medians). Build the other version in a git
worktree (``git worktree add /tmp/wt <commit> && cd /tmp/wt && python setup.py build_ext
--inplace``), then:

    python bench/ab_builds.py /tmp/wt/slimkernels/_cpu_kernels*.so [--rounds 15] [--widths ...]
"""
import argparse
import importlib.machinery
import importlib.util
import os
import sys

import torch

try:
    import slimkernels._cpu_kernels as NEW
except ImportError:  # built without the optional CPU kernels: load() still serves bench/ab_coder.py
    NEW = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv_avx2 import interleaved_ms  # noqa: E402


def load(path):
    """The extension module at ``path`` (e.g. ``.../_coder.cpython-311-x86_64-linux-gnu.so``)
    under another package name, ``ab_other.<its module name>``: same init symbol, a module of
    its own next to the installed one (loaded under its usual name, CPython would hand back the
    installed module instead). The module name comes from the file name (up to its first dot),
    so the file must keep its original name."""
    name = "ab_other." + os.path.basename(path).split(".")[0]
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def load_for(ap: argparse.ArgumentParser, path: str):
    """:func:`load`, with ``ap.error`` (one line, exit status 2) for a ``path`` that is not a
    file or does not load (a raw ImportError traceback before)."""
    if not os.path.isfile(path):
        ap.error(f"{path}: no such file: give the other build's extension file (.so)")
    try:
        return load(path)
    except ImportError as e:   # (not an extension, another Python's, or a renamed file)
        ap.error(f"{path} does not load as an extension module: {e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="the other build's _cpu_kernels extension file")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--widths", default="192,96,48")
    ap.add_argument("--scale", type=int, default=1, help="divide the image sizes (quick runs)")
    a = ap.parse_args(argv)
    if NEW is None:
        ap.error("slimkernels._cpu_kernels is not built here: nothing to compare with")
    old = load_for(ap, a.other)
    torch.set_num_threads(a.threads)
    print("| layer | width | transform | other ms | this ms | this speed-up |\n"
          "|---|---|---|---|---|---|")
    for c in (int(v) for v in a.widths.split(",")):
        # SlimCAE's enc2 (polyphase conv, s = 2) and dec2 (transposed, 4 output phases)
        for name, H, W, s, P, r, mult in [("enc2", 128, 192, 2, 2, 1, 1),
                                          ("dec2", 64, 96, 1, 1, 2, 4)]:
            H, W = max(4, H // a.scale), max(4, W // a.scale)
            x = torch.randn(1, c, H, W).contiguous(memory_format=torch.channels_last)
            Qh, Qw = (-(-H // 2), -(-W // 2)) if s == 2 else (H, W)
            th, tw = -(-Qh // 4), -(-Qw // 4)
            T = th * tw
            V = torch.empty(36, T, s * s * c)
            M = torch.randn(36, T, c * mult)
            y = torch.empty(1, c, Qh * r, Qw * r).contiguous(memory_format=torch.channels_last)
            fi = [lambda K=K: K.winograd_input(x.data_ptr(), 1, H, W, c, s, P, th, tw, 0, T,
                                               V.data_ptr(), a.threads) for K in (old, NEW)]
            fo = [lambda K=K: K.winograd_output(M.data_ptr(), 0, 1, th, tw, c, r, Qh * r, Qw * r,
                                                0, T, y.data_ptr(), a.threads) for K in (old, NEW)]
            for what, fns in (("input", fi), ("output", fo)):
                t_old, t_new = interleaved_ms(fns, a.rounds)
                print(f"| {name} | {c} | {what} | {t_old:.2f} | {t_new:.2f} | "
                      f"{t_old / t_new:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
