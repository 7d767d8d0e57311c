#!/usr/bin/env python
"""Scan the CPU conv ops in bf16 against float64: forward and gradients, over many shapes.

torch's oneDNN bf16 convs return wrong results on some shapes (docs/kernels_conv.md, "Other
shapes oneDNN's bf16 convs get wrong"); ``slimkernels.ops`` routes the ones found to float32
(``ops.conv._onednn_bf16_wrong``). This scan re-checks that rule, e.g. after a torch upgrade:
each case runs ``slim_conv2d`` / ``slim_conv_transpose2d`` under bf16 autocast with fp32 leaves
that record gradients, and without a gradient, and compares the output and the gradients of x,
the weight and the bias with float64 ``F.conv2d`` / ``F.conv_transpose2d`` on the same values
(relative error: max |error| / max |reference|; wrong above ``--tol`` or when not finite).
``--raw`` scans ``F.conv2d`` / ``F.conv_transpose2d`` themselves on bf16 tensors instead (what
oneDNN gives without the library's routing: where to look for new rules).

    python bench/scan_bf16_convs.py                      # the default grid, conv and transposed
    python bench/scan_bf16_convs.py --quick              # a few hundred cases (~10 s)
    python bench/scan_bf16_convs.py --raw --out /tmp/raw.jsonl

Prints the counts, and each wrong case as a JSON line (also into ``--out``); exits 1 when a case
is wrong (0 otherwise), 2 on a bad argument.
"""
import argparse
import itertools
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels import ops  # noqa: E402

SIZES = [(24, 20), (20, 17), (16, 1), (2, 1), (1, 1), (16, 2), (2, 16), (32, 32)]
T_SIZES = [(6, 5), (5, 4), (8, 1), (2, 1), (1, 1), (4, 2), (2, 4), (9, 7)]
GRID = {"c_in": [1, 3, 8, 12, 16, 20, 24, 28, 32, 64, 192], "c_out": [3, 8, 16, 24],
        "k": [1, 2, 3, 4, 5, 8, 9, 12], "stride": [1, 2, 4, 8]}
QUICK = {"c_in": [3, 8, 16, 24], "c_out": [8, 16], "k": [3, 4, 8], "stride": [1, 2, 4]}
OUTPUTS = ("forward", "forward_no_grad", "x_grad", "weight_grad", "bias_grad")


def rel_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| in float64; inf when ``a`` is not finite."""
    a = a.double()
    if not torch.isfinite(a).all():
        return math.inf
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def case(transposed: bool, ci: int, co: int, k: int, s: int, p: int, op: int, hw, raw: bool,
         seed: int = 0):
    """The relative errors (:data:`OUTPUTS` order; ``forward_no_grad`` equals ``forward`` with
    ``raw``) of one conv, or None for a geometry without output."""
    H, W = hw
    if transposed:
        if min((n - 1) * s - 2 * p + k + op for n in hw) < 1:
            return None
    elif H + 2 * p < k or W + 2 * p < k:
        return None
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, ci, H, W, generator=g).bfloat16().float()
    w = (torch.randn((ci, co, k, k) if transposed else (co, ci, k, k), generator=g)
         / (ci * k) ** 0.5).bfloat16().float()
    b = (0.1 * torch.randn(co, generator=g)).bfloat16().float()

    def conv(x, w, b, lib):
        if transposed:
            f = ops.slim_conv_transpose2d if lib else F.conv_transpose2d
            return f(x, w, b, stride=s, padding=p, output_padding=op)
        return (ops.slim_conv2d if lib else F.conv2d)(x, w, b, stride=s, padding=p)

    if raw:   # bf16 tensors straight into torch
        leaves = [t.bfloat16().requires_grad_() for t in (x, w, b)]
        y = conv(*leaves, lib=False)
        y0 = y.detach()
    else:     # the ops under autocast, fp32 leaves (a training step's setting)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        with torch.autocast("cpu", torch.bfloat16):
            y = conv(*leaves, lib=True)
            with torch.no_grad():
                y0 = conv(x, w, b, lib=True)
    gy = torch.randn(y.shape, generator=g).bfloat16()
    y.backward(gy.to(y.dtype))
    ref_leaves = [t.double().requires_grad_() for t in (x, w, b)]
    ref = conv(*ref_leaves, lib=False)
    ref.backward(gy.double())
    return [rel_error(y.detach(), ref.detach()), rel_error(y0, ref.detach())] + \
        [rel_error(t.grad, r.grad) for t, r in zip(leaves, ref_leaves)]


def scan(grid, transposed: bool, raw: bool, tol: float, sink=None):
    """Every case of ``grid`` (paddings 0 and k // 2; output_padding 0 and s - 1 for the
    transposed conv); returns ``(cases, wrong)`` and writes each wrong case to ``sink``."""
    n = bad = 0
    for ci, co, k, s, hw in itertools.product(grid["c_in"], grid["c_out"], grid["k"],
                                              grid["stride"], T_SIZES if transposed else SIZES):
        ops_ = sorted({0, s - 1}) if transposed else [0]
        for p, op in sorted({(p, op) for p in (0, k // 2) for op in ops_}):
            r = case(transposed, ci, co, k, s, p, op, hw, raw)
            if r is None:
                continue
            n += 1
            if max(r) > tol:
                bad += 1
                if sink is not None:
                    sink(json.dumps({"transposed": transposed, "c_in": ci, "c_out": co, "k": k,
                                     "stride": s, "padding": p, "output_padding": op,
                                     "size": list(hw), **{o: e for o, e in zip(OUTPUTS, r)}}))
    return n, bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small grid (a few hundred cases)")
    ap.add_argument("--raw", action="store_true",
                    help="scan F.conv2d / F.conv_transpose2d on bf16 tensors, not the ops")
    ap.add_argument("--only", choices=["conv", "transposed"], default=None)
    ap.add_argument("--tol", type=float, default=0.05,
                    help="relative error above which a case is wrong (default 0.05; bf16's "
                         "own error is 2-4e-3 here)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", default=None, help="also write the wrong cases (JSON lines) here")
    a = ap.parse_args(argv)
    if not (a.tol > 0 and math.isfinite(a.tol)):
        print(f"error: --tol must be a finite number > 0, got {a.tol}", file=sys.stderr)
        return 2
    if a.threads < 1:
        print(f"error: --threads must be at least 1, got {a.threads}", file=sys.stderr)
        return 2
    if a.out is not None and os.path.exists(a.out):
        print(f"error: --out {a.out} exists: not replacing it", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    grid = QUICK if a.quick else GRID
    out = open(a.out, "w") if a.out is not None else None
    try:
        def sink(line):
            print(line)
            if out is not None:
                out.write(line + "\n")
        total_bad = 0
        for transposed in (False, True):
            if a.only is not None and (a.only == "transposed") != transposed:
                continue
            n, bad = scan(grid, transposed, a.raw, a.tol, sink)
            total_bad += bad
            what = ("F.conv_transpose2d" if transposed else "F.conv2d") if a.raw else \
                ("slim_conv_transpose2d" if transposed else "slim_conv2d")
            print(f"{what}: {bad} wrong of {n} cases (torch {torch.__version__})", flush=True)
    finally:
        if out is not None:
            out.close()
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
