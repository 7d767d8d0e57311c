#!/usr/bin/env python
"""How ``compress`` / ``decompress`` time scales with image size at each width: the fixed cost
per call and the marginal cost per pixel, and from them what the narrow-to-wide time ratio can
reach on large images.

Issue 8 asks for w=48 at <= 15 % of w=192. A ratio measured at one image size mixes two things:
the per-call costs that do not grow with the image (Python dispatch, the model-id check, table
lookups, thread start-up) and the per-pixel work. This tool times each (width, size, op) in a
warm loop, fits ``ms = fixed + per_pixel * pixels`` over the sizes (least squares), and reports
the marginal ratio ``per_pixel(narrow) / per_pixel(wide)``: the ratio an image of unbounded size
would approach, i.e. the floor that removing every fixed cost would leave.

The sizes are centre crops of the image (default Kodak kodim01, 768x512; ``0`` = the whole
image), so that the content (and the coded rate) stays that of a photograph. Each round runs
every configuration once, in an order rotated from round to round: ``--warm`` untimed calls,
then ``--calls`` timed ones (its steady state, as when coding many images with one setting);
the table gives the median of all timed calls.

    python bench/width_scaling.py --widths 192,48 --sizes 64,256,0 --threads 2
    python bench/width_scaling.py --widths 192,144,96,72,48 --md width_scaling.md
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_switch import add_run_options, check_run, parse_ops, rotation  # noqa: E402
from e2e import output_file_error, refuse  # noqa: E402

OPS = ("compress", "decompress")


def crop(x, size: int):
    """The centre ``size x size`` crop of ``x`` ``[N, 3, H, W]`` (a contiguous copy); ``size``
    0: ``x`` itself. ValueError if the image is smaller than ``size``."""
    if size == 0:
        return x
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"a {size}x{size} crop of a {w}x{h} image: give sizes up to "
                         f"{min(h, w)} (or 0 for the whole image)")
    t, l = (h - size) // 2, (w - size) // 2
    return x[..., t:t + size, l:l + size].contiguous()


def measure(model, image, widths: Sequence[int], sizes: Sequence[int],
            ops: Sequence[str] = OPS, rounds: int = 5, warm: int = 3, calls: int = 8,
            threads: int = 2, precision: str = "auto") -> List[Dict]:
    """Rows ``{width, size, pixels, op, ms}``: the median ms of ``rounds * calls`` timed calls
    of ``model.compress(crop, width)`` / ``model.decompress(data)`` (``crop``: the centre crop
    of ``image`` ``[1, 3, H, W]`` float32 in [0, 1] for each of ``sizes``, see :func:`crop`),
    each round running every configuration in a rotated order, ``warm`` untimed calls before
    its ``calls`` timed ones. The thread count is restored afterwards."""
    import torch

    from slimkernels import allocator
    allocator.tune_malloc()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        configs: List[Tuple] = []
        for s in sizes:
            x = crop(image, s)
            for w in widths:
                data = model.compress(x, w, precision=precision)
                for op in ops:
                    fn = ((lambda x=x, w=w: model.compress(x, w, precision=precision))
                          if op == "compress" else
                          (lambda d=data: model.decompress(d, precision=precision)))
                    configs.append((w, s, x.shape[-2] * x.shape[-1], op, fn))
        times: Dict[int, List[float]] = {i: [] for i in range(len(configs))}
        for r in range(rounds):
            for i in rotation(len(configs), r):
                fn = configs[i][4]
                for _ in range(warm):
                    fn()
                for _ in range(calls):
                    t = time.perf_counter()
                    fn()
                    times[i].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(saved)
    return [{"width": w, "size": s, "pixels": p, "op": op,
             "ms": statistics.median(times[i]) * 1e3}
            for i, (w, s, p, op, _) in enumerate(configs)]


def fit(rows: List[Dict]) -> Dict[Tuple[int, str], Tuple[float, float]]:
    """``{(width, op): (fixed ms, ms per megapixel)}``: the least-squares line through each
    (width, op)'s ``(pixels, ms)`` points (at least two sizes needed)."""
    groups: Dict[Tuple[int, str], List[Tuple[float, float]]] = {}
    for r in rows:
        groups.setdefault((r["width"], r["op"]), []).append((r["pixels"] / 1e6, r["ms"]))
    out = {}
    for k, pts in groups.items():
        xs = [p for p, _ in pts]
        if len(set(xs)) < 2:
            raise ValueError("fitting the cost per pixel needs at least two image sizes")
        mx, my = statistics.fmean(xs), statistics.fmean(m for _, m in pts)
        slope = (sum((p - mx) * (m - my) for p, m in pts) /
                 sum((p - mx) ** 2 for p in xs))
        out[k] = (my - slope * mx, slope)
    return out


def table(rows: List[Dict]) -> str:
    """Markdown: ms per (size, op) and width, the narrowest / widest ratio per size; then the
    fit per (width, op) and the marginal ratio of each width to the widest."""
    widths = sorted({r["width"] for r in rows}, reverse=True)
    ops = [o for o in OPS if any(r["op"] == o for r in rows)]
    sizes = []
    for r in rows:
        if (r["size"], r["pixels"]) not in sizes:
            sizes.append((r["size"], r["pixels"]))
    ms = {(r["width"], r["size"], r["op"]): r["ms"] for r in rows}
    wide, narrow = widths[0], widths[-1]
    out = ["| image | op | " + " | ".join(f"w={w} ms" for w in widths) +
           f" | w={narrow} / w={wide} |", "|" + " --- |" * (len(widths) + 3)]
    for s, p in sizes:
        name = "whole" if s == 0 else f"{s}x{s}"
        for op in ops:
            cells = " | ".join(f"{ms[w, s, op]:.3f}" for w in widths)
            out.append(f"| {name} ({p / 1e6:.3f} MP) | {op} | {cells} | "
                       f"{ms[narrow, s, op] / ms[wide, s, op]:.3f} |")
    lines = fit(rows)
    out += ["", "| width | op | fixed ms per call | ms per megapixel | marginal ratio to "
            f"w={wide} |", "| --- | --- | --- | --- | --- |"]
    for op in ops:
        for w in widths:
            f, s = lines[w, op]
            out.append(f"| {w} | {op} | {f:.3f} | {s:.3f} | {s / lines[wide, op][1]:.3f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,   # the whole docstring, as written
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap, "192,48", 5, "rounds over every configuration")
    ap.add_argument("--sizes", default="64,256,0",
                    help="centre-crop sides, 0 = the whole image (default 64,256,0)")
    ap.add_argument("--warm", type=int, default=3,
                    help="untimed calls before each block (default 3)")
    ap.add_argument("--calls", type=int, default=8, help="timed calls per block (default 8)")
    ap.add_argument("--model", default=None, help="model file (default: the bundled model)")
    ap.add_argument("--md", default=None, help="also write the tables to this Markdown file")
    ap.add_argument("--force", action="store_true",
                    help="replace the --md file if it exists (refused without it)")
    a = ap.parse_args(argv)
    try:
        widths = [int(v) for v in a.widths.split(",")]
        sizes = [int(v) for v in a.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"width_scaling: --widths {a.widths!r} / --sizes {a.sizes!r}: give "
                         f"comma-separated integers, e.g. --widths 192,48 --sizes 64,256,0"
                         ) from None
    ops = parse_ops("width_scaling", a.ops)
    if len(set(sizes)) < 2 or any(s < 0 for s in sizes):
        raise SystemExit(f"width_scaling: --sizes {a.sizes!r}: give at least two different "
                         f"sizes >= 0 (the cost per pixel is a fit over them)")
    if min(a.rounds, a.calls, a.threads) < 1 or a.warm < 0:
        raise SystemExit("width_scaling: --rounds, --calls and --threads must be at least 1, "
                         "--warm at least 0")
    # (a missing folder failed only after the run; a file there was replaced)
    refuse(ap, a.md and output_file_error(a.md, "--md", a.force))
    from slimkernels.pretrained import load_model
    try:
        model = load_model(a.model)
    except (OSError, ValueError) as e:
        raise SystemExit(f"width_scaling: --model: {e}") from None
    image = check_run("width_scaling", model, widths, a.image)
    try:
        pixels = {c.shape[-2] * c.shape[-1] for c in (crop(image, s) for s in sizes)}
    except ValueError as e:
        raise SystemExit(f"width_scaling: --sizes: {e}") from None
    if len(pixels) < 2:   # (0 is the whole image: 256 and 0 on a 256x256 image are one size)
        raise SystemExit(f"width_scaling: --sizes {a.sizes!r} give one pixel count on this "
                         f"image: give at least two different sizes")
    rows = measure(model, image, widths, sizes, ops, a.rounds, a.warm, a.calls, a.threads,
                   a.precision)
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"`python bench/width_scaling.py {cmd}`: {a.threads} thread(s), precision "
            f"{a.precision}, medians of {a.rounds} x {a.calls} calls, each block after {a.warm} "
            f"untimed calls, configurations rotated per round\n\n{table(rows)}\n")
    print(text)
    if a.md:
        with open(a.md, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
