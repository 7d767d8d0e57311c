#!/usr/bin/env python
"""The plain PyTorch baseline in both memory layouts, against ours, in one run.

The end-to-end report's ``plain`` baseline (:mod:`plain_slimcae`) runs NCHW, PyTorch's default
layout and what a user writes without thinking of it. On a CPU a user who knows oneDNN would
convert the model and the input to channels_last (``model.to(memory_format=torch.channels_last)``
, ``x.contiguous(memory_format=torch.channels_last)``), which speeds up plain PyTorch's
transposed convolutions (its decoder) a good deal. This tool times, interleaved in one run
(:func:`e2e.interleaved`: rounds in a shuffled order, each timed call after ``--burst - 1``
untimed ones of the same configuration, medians), ``compress`` and ``decompress`` of ours (the
default precision and explicit fp32) and of plain PyTorch in fp32 and under bf16 autocast, NCHW
and channels_last, and gives ours' ratio to both layouts: the report's ratios against plain
NCHW, and the same against the faster plain layout.

    python bench/plain_layouts.py --widths 192,48 --threads 2 --repeats 7
    python bench/plain_layouts.py --quick      # tiny image, 2 repeats: a smoke test
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Dict, List, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import (PlainSlimCAE, default_precision, interleaved, load_image, load_model,  # noqa: E402
                 plain_compress, plain_decompress)

CL = torch.channels_last


class ChannelsLast:
    """A :class:`PlainSlimCAE` in channels_last: its weights converted once, every input
    converted on the way in (the two lines a user adds); ``encode`` / ``decode`` as the plain
    model's, so :func:`e2e.plain_compress` / :func:`e2e.plain_decompress` take it."""

    def __init__(self, plain: PlainSlimCAE):
        self.plain = copy.deepcopy(plain).to(memory_format=CL)

    def encode(self, x: torch.Tensor, width: int) -> torch.Tensor:
        return self.plain.encode(x.contiguous(memory_format=CL), width)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return self.plain.decode(y.contiguous(memory_format=CL))


def measure(model, x: torch.Tensor, widths: Sequence[int], repeats: int = 7, burst: int = 2,
            precisions: Sequence[str] = ("fp32", "bf16")) -> List[Dict]:
    """Rows ``{width, op, impl, ms}`` (median ms; ``impl``: ``ours <p>``, ``plain <p> nchw`` /
    ``plain <p> cl``), every configuration in one interleaved run."""
    plain = PlainSlimCAE.from_model(model).eval()
    plains = {"nchw": plain, "cl": ChannelsLast(plain)}
    ours_p = sorted({default_precision(), "fp32"})
    fns = {}
    for w in widths:
        for p in ours_p:
            data = model.compress(x, w, precision=p)
            fns[(w, "compress", f"ours {p}")] = lambda w=w, p=p: model.compress(x, w, precision=p)
            fns[(w, "decompress", f"ours {p}")] = \
                lambda d=data, p=p: model.decompress(d, precision=p)
        for p in precisions:
            for lay, pl in plains.items():
                data = plain_compress(pl, model, x, w, precision=p)
                fns[(w, "compress", f"plain {p} {lay}")] = \
                    lambda pl=pl, w=w, p=p: plain_compress(pl, model, x, w, precision=p)
                fns[(w, "decompress", f"plain {p} {lay}")] = \
                    lambda pl=pl, d=data, p=p: plain_decompress(pl, model, d, precision=p)
    res = interleaved({"|".join(map(str, k)): f for k, f in fns.items()}, repeats, burst=burst)
    return [{"width": w, "op": op, "impl": impl, "ms": res[f"{w}|{op}|{impl}"]["total"] * 1e3}
            for (w, op, impl) in fns]


def table(rows: List[Dict]) -> str:
    """Markdown: per (width, op) the ms of each configuration, and ours' ratios (plain fp32 /
    ours) against plain NCHW, plain channels_last and the faster of the two."""
    get = {(r["width"], r["op"], r["impl"]): r["ms"] for r in rows}
    impls = sorted({r["impl"] for r in rows}, key=lambda s: (not s.startswith("ours"), s))
    ours = [i for i in impls if i.startswith("ours")]
    head = (["width", "op"] + [f"{i} ms" for i in impls]
            + [f"{o} vs plain fp32 {lay}" for o in ours for lay in ("nchw", "cl", "faster")])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (w, op) in sorted({(r["width"], r["op"]) for r in rows}, key=lambda t: (-t[0], t[1])):
        cells = [str(w), op] + [f"{get[(w, op, i)]:.2f}" for i in impls]
        nchw, cl = get[(w, op, "plain fp32 nchw")], get[(w, op, "plain fp32 cl")]
        for o in ours:
            t = get[(w, op, o)]
            cells += [f"{nchw / t:.2f}x", f"{cl / t:.2f}x", f"{min(nchw, cl) / t:.2f}x"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="192,48")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--burst", type=int, default=2,
                    help="calls per configuration per round, the last one timed (default 2)")
    ap.add_argument("--image", default=None, help="image (default Kodak kodim01)")
    ap.add_argument("--quick", action="store_true", help="a 64x96 crop, 2 repeats: smoke test")
    ap.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    a = ap.parse_args(argv)
    try:
        widths = [int(v) for v in a.widths.split(",")]
    except ValueError:
        ap.error(f"--widths takes comma-separated ints, got {a.widths!r}")
    torch.set_num_threads(a.threads)
    model = load_model()[0]
    bad = [w for w in widths if w not in model.widths]
    if bad:
        ap.error(f"--widths {bad}: the model has {model.widths}")
    x = load_image(a.image, quick=a.quick)
    rows = measure(model, x, widths, repeats=2 if a.quick else a.repeats,
                   burst=1 if a.quick else a.burst)
    md = (f"`python bench/plain_layouts.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
          f": {a.threads} thread(s), {tuple(x.shape[-2:])} image, medians of "
          f"{2 if a.quick else a.repeats} interleaved rounds\n\n" + table(rows) + "\n")
    print(md)
    if a.out:
        with open(a.out + ".md", "w") as f:
            f.write(md)
        with open(a.out + ".json", "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
