"""The entropy step of ``compress`` in situ (right after the analysis transform) vs on its own.

Why this exists: inside ``compress`` the quantization and the range coder run ~1.5x slower than in
a loop of their own (issue 8's "entropy share" goal). This script measures, in one process and
interleaved, for 1 and 2 coder streams:

* ``in situ``: ``encode`` right after ``model.encode`` with one index per channel
  (``channel_indexes``), its substreams on the coder's own worker pool (``pool="coder"``);
* ``in situ, OpenMP pool``: the same on torch's OpenMP threads (``pool="openmp"``, what
  ``compress`` runs where torch runs on OpenMP and ``slimkernels._cpu_kernels`` is built; the
  row repeats ``pool="coder"`` elsewhere) with ``compress``'s thread count,
  ``torch.get_num_threads()`` (one substream on 2 threads: the encoder's lane halves; the other
  rows give the coder one thread per substream);
* ``in situ, per-symbol indexes``: the same with the per-symbol index array
  (``latent_indexes``: 4 more bytes read per symbol, as ``compress`` did before);
* ``in situ, indexes warm``: per-symbol indexes read once just before (outside the timing), to
  show how much of the gap is that cold array;
* ``alone``: ``encode`` of the same symbols (per-channel indexes) in a tight loop.

Usage: ``python bench/bench_entropy_insitu.py [--width 192] [--threads 2] [--repeats 20]``
(``--dry-run``: a random tiny model on a 64x96 image, to check that the code runs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import e2e  # noqa: E402
from slimkernels import coding  # noqa: E402
from slimkernels.codec import (_autocast, _quantize, _tables, channel_indexes,  # noqa: E402
                               coder_pool, latent_indexes, resolve_precision)


#: The rows of the table, in order.
CASES = ("quantize", "in situ", "in situ, OpenMP pool", "in situ, per-symbol indexes",
         "in situ, indexes warm", "alone")


def measure(model, x: torch.Tensor, width: int, repeats: int, precision: str = "auto"):
    """``{(case, streams): median ms}`` for case in :data:`CASES` and streams in (1, 2);
    ``x``: ``[1, 3, H, W]`` float32 in [0, 1] (H, W multiples of the model's downsampling)."""
    eb = model.entropy_bottleneck.for_width(width)
    tabs = _tables(eb)
    dev = next(model.parameters()).device
    precision = resolve_precision(precision, dev)
    xin = model._image_input(x.to(dev), precision)
    times = {}
    openmp = coder_pool()            # what compress gives the coder here

    def add(key, v):
        times.setdefault(key, []).append(v * 1e3)

    with torch.no_grad():
        for _ in range(repeats):
            for streams in (1, 2):
                for case in CASES[1:5]:
                    with _autocast(dev, precision):
                        y = model.encode(xin, width)
                    t0 = time.perf_counter()
                    sym = _quantize(eb, y)
                    t1 = time.perf_counter()
                    _, C, h, w = sym.shape
                    idx = latent_indexes(C, h, w) if "indexes" in case else channel_indexes(C)
                    if case == "in situ, indexes warm":
                        int(idx.sum())            # read once, outside the timing
                    t2 = time.perf_counter()
                    as_compress = case == "in situ, OpenMP pool"
                    coding.encode(sym.numpy(), idx, *tabs, precision=eb.precision,
                                  streams=streams,
                                  threads=torch.get_num_threads() if as_compress else None,
                                  pool=openmp if as_compress else "coder")
                    t3 = time.perf_counter()
                    if case == "in situ":
                        add(("quantize", streams), t1 - t0)
                    add((case, streams), t3 - t2)
        s = sym.numpy()
        idx = channel_indexes(C)
        for streams in (1, 2):
            for _ in range(repeats):
                t = time.perf_counter()
                coding.encode(s, idx, *tabs, precision=eb.precision, streams=streams)
                add(("alone", streams), time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def markdown(res) -> str:
    lines = ["| case | 1 stream ms | 2 streams ms |", "|---|---|---|"]
    for case in CASES:
        lines.append(f"| {case} | {res[(case, 1)]:.3f} | {res[(case, 2)]:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--image", default=None, help="image (default: Kodak kodim01, as bench/report.py)")
    ap.add_argument("--dry-run", action="store_true", help="random tiny model, 64x96 image")
    a = ap.parse_args(argv)
    if not a.dry_run:   # (a missing --image was silently noise)
        e2e.refuse(ap, e2e.image_error(a.image), e2e.model_error(a.model))
    if a.repeats < 1 or a.threads < 1:
        ap.error(f"--repeats and --threads must be at least 1, got {a.repeats} / {a.threads}")
    torch.set_num_threads(a.threads)
    if a.dry_run:
        from slimkernels.models import SlimCAE
        torch.manual_seed(0)
        model = SlimCAE(widths=(16, 8)).eval()
        model.update()
        x = torch.rand(1, 3, 64, 96)
        width, repeats = 16, 2
    else:
        model, _ = e2e.load_model(a.model)       # the report's loaders: same defaults
        x = e2e.load_image(a.image)
        width, repeats = a.width, a.repeats
    res = measure(model, x, width, repeats)
    print(f"w={width}, {a.threads} threads, medians of {repeats}:")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
